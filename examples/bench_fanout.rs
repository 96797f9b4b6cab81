//! End-to-end benchmark of a PostgreSQL destination against PostgreSQL's own logical
//! replication (CREATE SUBSCRIPTION) applying the same WAL on the same machine, in one run.
//! Run it with `scripts/bench-fanout.sh`.
//!
//! For each workload (insert-only, update-heavy, mixed; `BENCH_ROWS` row changes each) a
//! fresh source database gets two slots at the same LSN: one for a native subscription in
//! database `native`, one for `pgfanout run` with one tenant and an identity mapping into
//! database `fanout`. A preload phase (untimed) brings both targets to the same starting rows;
//! then the workload is written with both consumers stopped, and each consumer is timed from
//! its start until the workload's final marker row is visible in its target — both apply in
//! commit order, so the marker means everything before it is applied.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgfanout::localpg::{LocalPostgres, Options};
use tokio_postgres::Client;

const ROWS: u64 = 1_000_000;
const ROWS_PER_TXN: u64 = 10_000;
/// Rows present before the update-heavy and mixed workloads.
const PRELOAD: u64 = 100_000;
const TENANT: &str = "00000000-0000-0000-0000-000000000001";

const TABLES: &str = "
    CREATE TABLE bench (id bigint NOT NULL, tenant uuid NOT NULL, email text, name text,
                        score int, balance numeric(12,2), active bool, created_at timestamptz,
                        note text, tags text[], PRIMARY KEY (tenant, id));
    CREATE TABLE marker (id int NOT NULL, tenant uuid NOT NULL, PRIMARY KEY (tenant, id));";

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    let rows: u64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROWS);
    let only = std::env::var("BENCH_WORKLOADS").unwrap_or_else(|_| "insert,update,mixed".into());
    let pgfanout =
        std::env::var("PGFANOUT_BIN").unwrap_or_else(|_| "target/release/pgfanout".into());
    let rt = tokio::runtime::Runtime::new()?;
    let pg = LocalPostgres::start(&Options {
        conf: vec![
            "max_wal_size = '8GB'".into(),
            "logical_decoding_work_mem = '64MB'".into(),
            "max_replication_slots = 20".into(),
            "max_wal_senders = 20".into(),
            "max_logical_replication_workers = 8".into(),
            // The launcher starts an enabled subscription's worker on this cycle (default 5s).
            "wal_retrieve_retry_interval = '100ms'".into(),
        ],
        ..Default::default()
    })?;
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
    source
        .batch_execute(&format!(
            "{TABLES} CREATE PUBLICATION bench FOR TABLE bench, marker;"
        ))
        .await?;
    // Each in its own transaction: a slot cannot be created after writes in the same one.
    for slot in [format!("native_{workload}"), format!("pgf_{workload}")] {
        source
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await?;
    }
    native_db.batch_execute(TABLES).await?;
    native_db
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION sub_{workload}
                 CONNECTION 'host={} port={} dbname={src} user=postgres'
                 PUBLICATION bench
                 WITH (create_slot = false, slot_name = 'native_{workload}', copy_data = false,
                       enabled = false)",
            pg.socket_dir().display(),
            pg.port()
        ))
        .await?;
    let work = tempfile::tempdir()?;
    let config = work.path().join("pgfanout.toml");
    let url = |db: &str| {
        format!(
            "postgres://postgres@/{db}?host={}&port={}",
            pg.socket_dir().display(),
            pg.port()
        )
    };
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\npublication = \"bench\"\nmanage = false\nslot = \"pgf_{workload}\"\n\
             [log]\ndir = \"{}\"\n\
             [[mappings]]\nname = \"bench\"\nsource = \"public.bench\"\ntenant_key = \"tenant\"\ntarget = \"bench\"\n\
             [mappings.columns]\nid = \"id\"\ntenant = \"tenant\"\nemail = \"email\"\nname = \"name\"\nscore = \"score\"\n\
             balance = \"balance\"\nactive = \"active\"\ncreated_at = \"created_at\"\nnote = \"note\"\ntags = \"tags\"\n\
             [[mappings]]\nname = \"marker\"\nsource = \"public.marker\"\ntenant_key = \"tenant\"\ntarget = \"marker\"\n\
             [mappings.columns]\nid = \"id\"\ntenant = \"tenant\"\n\
             [[destinations]]\nname = \"bench\"\nkind = \"postgres\"\nurl = \"{}\"\ntenants = [\"{TENANT}\"]\n\
             mappings = [\"bench\", \"marker\"]\n",
            url(&src),
            work.path().join("log").display(),
            url(&fanout),
        ),
    )?;

    // Preload (untimed): both targets reach the same starting rows through their consumer.
    if workload != "insert" {
        insert(&source, 1, PRELOAD).await?;
    }
    source
        .execute("INSERT INTO marker VALUES (1, $1::text::uuid)", &[&TENANT])
        .await?;
    enable(&native_db, workload, true).await?;
    wait_marker(&native_db, 1, None).await?;
    enable(&native_db, workload, false).await?;
    let mut daemon = spawn(pgfanout, &config)?;
    wait_marker(&fanout_db, 1, Some(&mut daemon)).await?;
    stop(daemon)?;

    eprintln!("{workload}: writing {rows} row changes");
    match workload {
        "insert" => insert(&source, PRELOAD + 1, rows).await?,
        "update" => {
            let mut done = 0;
            while done < rows {
                let n = ROWS_PER_TXN.min(rows - done);
                let from = done % PRELOAD + 1;
                source
                    .batch_execute(&format!(
                        "UPDATE bench SET score = score + 1, note = 'updated ' || id
                         WHERE id BETWEEN {from} AND {}",
                        from + n - 1
                    ))
                    .await?;
                done += n;
            }
        }
        "mixed" => {
            // Per transaction: half inserts of new rows, 30% updates, 20% deletes.
            let mut done = 0;
            let mut next_new = PRELOAD + 1;
            let mut next_old = 1;
            while done < rows {
                let n = ROWS_PER_TXN.min(rows - done);
                let (ins, upd) = (n / 2, n * 3 / 10);
                let del = n - ins - upd;
                source
                    .batch_execute(&format!(
                        "BEGIN;
                         {}
                         UPDATE bench SET score = score + 1, note = 'mixed' WHERE id BETWEEN {next_old} AND {};
                         DELETE FROM bench WHERE id BETWEEN {} AND {};
                         COMMIT;",
                        insert_sql(next_new, ins),
                        next_old + upd - 1,
                        next_old + upd,
                        next_old + upd + del - 1
                    ))
                    .await?;
                next_new += ins;
                next_old += upd + del;
                done += n;
            }
        }
        other => return Err(format!("unknown workload {other}").into()),
    }
    source
        .execute("INSERT INTO marker VALUES (2, $1::text::uuid)", &[&TENANT])
        .await?;

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

fn insert_sql(from: u64, n: u64) -> String {
    format!(
        "INSERT INTO bench SELECT g, '{TENANT}', 'user' || g || '@example.com', 'User number ' || g,
                g % 1000, (g % 100000) / 100.0, g % 2 = 0, now(), repeat('n', 20), ARRAY['a', 'b' || (g % 10)]
         FROM generate_series({from}, {}) g;",
        from + n - 1
    )
}

async fn insert(client: &Client, from: u64, rows: u64) -> Result<(), BoxError> {
    let mut done = 0;
    while done < rows {
        let n = ROWS_PER_TXN.min(rows - done);
        client.batch_execute(&insert_sql(from + done, n)).await?;
        done += n;
    }
    Ok(())
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
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let found = client
            .query_opt("SELECT 1 FROM marker WHERE id = $1", &[&id])
            .await;
        if matches!(found, Ok(Some(_))) {
            return Ok(());
        }
        if let Some(d) = daemon.as_mut() {
            if let Some(status) = d.try_wait()? {
                return Err(format!("pgfanout run exited with {status} before marker {id}").into());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("marker {id} never arrived").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn(pgfanout: &str, config: &std::path::Path) -> Result<Child, BoxError> {
    Ok(Command::new(pgfanout)
        .args(["run", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()?)
}

fn stop(mut daemon: Child) -> Result<(), BoxError> {
    let pid = daemon.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let status = daemon.wait()?;
    if !status.success() {
        return Err(format!("pgfanout run exited with {status}").into());
    }
    Ok(())
}
