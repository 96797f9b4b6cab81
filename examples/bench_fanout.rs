//! End-to-end benchmark of a PostgreSQL destination against PostgreSQL's own logical
//! replication (CREATE SUBSCRIPTION) applying the same WAL on the same machine, in one run.
//! Run it with `scripts/bench-fanout.sh`. `BENCH_PG_SETTINGS` (TOML lines, for example
//! `apply_connections = 2`) is appended to the destination's table.
//!
//! For each workload (insert-only, update-heavy, mixed; `BENCH_ROWS` row changes each) a
//! fresh source database gets two slots at the same LSN: one for a native subscription in
//! database `native`, one for `pgfanout run` with one tenant and an identity mapping into
//! database `fanout`. A preload phase (untimed) brings both targets to the same starting rows;
//! then the workload is written with both consumers stopped, and each consumer is timed from
//! its start until the workload's final marker row is visible in its target — both apply in
//! commit order, so the marker means everything before it is applied.

mod bench_common;

use std::process::Child;
use std::time::{Duration, Instant};

use bench_common::{
    bench_rows, bench_workloads, check_running, pgfanout_bin, setup_source,
    source_and_mappings_toml, spawn, start_source, stop, write_preload, write_workload, BoxError,
    MARKER_TIMEOUT, TABLES, TENANT,
};
use pgfanout_testkit::localpg::LocalPostgres;
use tokio_postgres::Client;

fn main() -> Result<(), BoxError> {
    let rows = bench_rows();
    let only = bench_workloads();
    let pgfanout = pgfanout_bin();
    let rt = tokio::runtime::Runtime::new()?;
    let pg = start_source(&[
        "max_logical_replication_workers = 8",
        // The launcher starts an enabled subscription's worker on this cycle (default 5s).
        "wal_retrieve_retry_interval = '100ms'",
    ])?;
    let mut results = Vec::new();
    for (i, workload) in only.split(',').enumerate() {
        let r = rt.block_on(bench(&pg, &pgfanout, workload, rows, i % 2 == 1))?;
        results.push((workload.to_owned(), r));
    }
    println!("{rows} row changes per workload, one tenant, same WAL for both consumers:");
    for (w, (native, fanout)) in &results {
        let rate = |d: &Duration| rows as f64 / d.as_secs_f64();
        println!(
            "  {w:7} native {:>9.0} rows/s ({:.2}s)  pgfanout {:>9.0} rows/s ({:.2}s)  ratio {:.2}",
            rate(native),
            native.as_secs_f64(),
            rate(fanout),
            fanout.as_secs_f64(),
            rate(fanout) / rate(native)
        );
    }
    Ok(())
}

/// Returns (native, pgfanout) apply times of the workload.
async fn bench(
    pg: &LocalPostgres,
    pgfanout: &str,
    workload: &str,
    rows: u64,
    fanout_first: bool,
) -> Result<(Duration, Duration), BoxError> {
    let (src, native, fanout) = (
        format!("src_{workload}"),
        format!("native_{workload}"),
        format!("fanout_{workload}"),
    );
    for db in [&src, &native, &fanout] {
        pg.create_database(db).await?;
    }
    let source = pg.sql(&src).await?;
    let native_db = pg.sql(&native).await?;
    let fanout_db = pg.sql(&fanout).await?;
    setup_source(
        &source,
        &[format!("native_{workload}"), format!("pgf_{workload}")],
    )
    .await?;
    native_db.batch_execute(TABLES).await?;
    native_db
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION sub_{workload}
                 CONNECTION '{}'
                 PUBLICATION bench
                 WITH (create_slot = false, slot_name = 'native_{workload}', copy_data = false,
                       enabled = false)",
            pg.conninfo_string(&src)
        ))
        .await?;
    let work = tempfile::tempdir()?;
    let config = work.path().join("pgfanout.toml");
    std::fs::write(
        &config,
        format!(
            "{}[[destinations]]\nname = \"bench\"\nkind = \"postgres\"\nurl = \"{}\"\ntenants = [\"{TENANT}\"]\n\
             mappings = [\"bench\", \"marker\"]\n{}\n",
            source_and_mappings_toml(&pg.socket_url(&src), &format!("pgf_{workload}"), &work.path().join("log")),
            pg.socket_url(&fanout),
            // For experiments (e.g. `apply_connections = 2`): the reported runs say which.
            std::env::var("BENCH_PG_SETTINGS").unwrap_or_default().replace("\\n", "\n"),
        ),
    )?;

    // Preload (untimed): both targets reach the same starting rows through their consumer.
    write_preload(&source, workload).await?;
    enable(&native_db, workload, true).await?;
    wait_marker(&native_db, 1, None).await?;
    enable(&native_db, workload, false).await?;
    let mut daemon = spawn(pgfanout, &config)?;
    wait_marker(&fanout_db, 1, Some(&mut daemon)).await?;
    stop(daemon)?;

    eprintln!("{workload}: writing {rows} row changes");
    write_workload(&source, workload, rows).await?;

    let time_native = async {
        enable(&native_db, workload, true).await?;
        // Timed from when the apply worker runs: the launcher's start-up delay is not apply.
        while native_db
            .query_opt(
                "SELECT 1 FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL",
                &[&format!("sub_{workload}")],
            )
            .await?
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let start = Instant::now();
        wait_marker(&native_db, 2, None).await?;
        let took = start.elapsed();
        enable(&native_db, workload, false).await?;
        Ok::<_, BoxError>(took)
    };
    let time_fanout = async {
        let start = Instant::now();
        let mut daemon = spawn(pgfanout, &config)?;
        wait_marker(&fanout_db, 2, Some(&mut daemon)).await?;
        let took = start.elapsed();
        stop(daemon)?;
        Ok::<_, BoxError>(took)
    };
    let (native_took, fanout_took) = if fanout_first {
        let f = time_fanout.await?;
        (time_native.await?, f)
    } else {
        let n = time_native.await?;
        (n, time_fanout.await?)
    };
    eprintln!(
        "{workload}: native {:.2}s, pgfanout {:.2}s",
        native_took.as_secs_f64(),
        fanout_took.as_secs_f64()
    );
    // Both targets must hold the same rows, or the comparison means nothing.
    let digest = "SELECT count(*)::text || ':' || coalesce(sum(score)::text, '') || ':' ||
                         coalesce(md5(string_agg(id::text || note, ',' ORDER BY id)), '')
                  FROM bench";
    let a: String = native_db.query_one(digest, &[]).await?.get(0);
    let b: String = fanout_db.query_one(digest, &[]).await?.get(0);
    if a != b {
        return Err(format!("{workload}: targets differ: native {a}, pgfanout {b}").into());
    }
    native_db
        .batch_execute(&format!("DROP SUBSCRIPTION sub_{workload}"))
        .await?;
    Ok((native_took, fanout_took))
}

async fn enable(client: &Client, workload: &str, on: bool) -> Result<(), BoxError> {
    let verb = if on { "ENABLE" } else { "DISABLE" };
    client
        .batch_execute(&format!("ALTER SUBSCRIPTION sub_{workload} {verb}"))
        .await?;
    if !on {
        // The apply worker exits asynchronously; its slot must be free before the next start.
        while client
            .query_opt(
                "SELECT 1 FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL",
                &[&format!("sub_{workload}")],
            )
            .await?
            .is_some()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Waits for marker `id` in the target; fails when `daemon` exits first.
async fn wait_marker(
    client: &Client,
    id: i32,
    mut daemon: Option<&mut Child>,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + MARKER_TIMEOUT;
    loop {
        let found = client
            .query_opt("SELECT 1 FROM marker WHERE id = $1", &[&id])
            .await;
        if matches!(found, Ok(Some(_))) {
            return Ok(());
        }
        if let Some(d) = daemon.as_mut() {
            check_running(d, &format!("marker {id}"))?;
        }
        if Instant::now() > deadline {
            return Err(format!("marker {id} never arrived").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
