//! Latency benchmark: commit → visible in a PostgreSQL target, for pgfanout and for
//! PostgreSQL's own logical replication (CREATE SUBSCRIPTION) reading the same WAL at the same
//! time on the same server. Run it with `scripts/bench-latency.sh`.
//!
//! A writer inserts single-tenant rows at fixed rates (`BENCH_RATES`, row changes per second,
//! default 200,1000,5000,20000), `BENCH_SECONDS` each (default 60), in small transactions
//! every 5 ms with `synchronous_commit = on` (the walsender sends only flushed WAL; the private
//! server's default `off` would add the WAL writer's delay to both consumers). Each row
//! carries `written_at = clock_timestamp()`, taken just before its commit; each target fills
//! `arrived` with `clock_timestamp()` when its consumer inserts the row, and the row is visible
//! when that transaction commits, right after. One server, one clock: `arrived - written_at`
//! is the latency of each change, reported as p50 / p99 / max per rate and consumer.

mod bench_common;

use std::time::{Duration, Instant};

use bench_common::{
    latency, pgfanout_bin, spawn, start_source, stop, wait_until, BoxError, ARRIVED, LAT_TABLE,
    TENANT,
};
use tokio_postgres::Client;

const TICK: Duration = Duration::from_millis(5);

fn main() -> Result<(), BoxError> {
    let rates: Vec<u64> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "200,1000,5000,20000".into())
        .split(',')
        .map(|r| r.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("BENCH_RATES: {e}"))?;
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .map(|s| s.parse())
        .transpose()
        .map_err(|e| format!("BENCH_SECONDS: {e}"))?
        .unwrap_or(60);
    let pgfanout = pgfanout_bin();
    let rt = tokio::runtime::Runtime::new()?;
    let pg = start_source(&[
        "max_logical_replication_workers = 8",
        "wal_retrieve_retry_interval = '100ms'",
    ])?;
    rt.block_on(async {
        for db in ["src", "native", "fanout"] {
            pg.create_database(db).await?;
        }
        let source = pg.sql("src").await?;
        source
            .batch_execute(&format!("{LAT_TABLE}; CREATE PUBLICATION lat FOR TABLE lat;"))
            .await?;
        let native = pg.sql("native").await?;
        native
            .batch_execute(&format!("{LAT_TABLE}; {ARRIVED}"))
            .await?;
        // The slot is made beforehand: a subscription creating its slot on its own server
        // waits for its own transaction and never finishes.
        source
            .execute(
                "SELECT pg_create_logical_replication_slot('native', 'pgoutput')",
                &[],
            )
            .await?;
        native
            .batch_execute(&format!(
                "CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION lat
                     WITH (create_slot = false, slot_name = 'native', copy_data = false)",
                pg.conninfo_string("src")
            ))
            .await?;

        let work = tempfile::tempdir()?;
        let config = work.path().join("pgfanout.toml");
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = \"{}\"\npublication = \"lat\"\nmanage = true\nslot = \"pgf\"\n\
                 [log]\ndir = \"{}\"\n[snapshot]\nmode = \"never\"\n[admin]\nlisten = \"off\"\n\
                 [[mappings]]\nname = \"lat\"\nsource = \"public.lat\"\ntenant_key = \"tenant\"\ntarget = \"lat\"\n\
                 [mappings.columns]\nid = \"id\"\ntenant = \"tenant\"\nwritten_at = \"written_at\"\n\
                 [[destinations]]\nname = \"lat\"\nkind = \"postgres\"\nurl = \"{}\"\ntenants = [\"{TENANT}\"]\n\
                 mappings = [\"lat\"]\n",
                pg.socket_url("src"),
                work.path().join("log").display(),
                pg.socket_url("fanout"),
            ),
        )?;
        let mut daemon = spawn(&pgfanout, &config)?;
        eprintln!("waiting for pgfanout to create its target table");
        let fanout = pg.sql("fanout").await?;
        // The writer creates its table at start; the column that timestamps arrival is added
        // before anything is written (the writer names its columns, so the default fills it).
        wait_until(&mut daemon, "pgfanout to create its table", || async {
            fanout
                .query_opt("SELECT 1 FROM pg_tables WHERE tablename = 'lat'", &[])
                .await
                .is_ok_and(|r| r.is_some())
        })
        .await?;
        fanout.batch_execute(ARRIVED).await?;
        source.batch_execute("SET synchronous_commit = on").await?;

        eprintln!("writing at each rate; both consumers stream the whole time");
        println!(
            "commit → visible in the target, {seconds} s per rate, one server (ms: p50 / p99 / max)"
        );
        let mut next_id = 0i64;
        for rate in rates {
            let first = next_id + 1;
            let written = write_at(&source, rate, Duration::from_secs(seconds), &mut next_id).await?;
            let last = next_id;
            for (target, label) in [(&native, "native"), (&fanout, "pgfanout")] {
                wait_until(&mut daemon, &format!("{label} to apply rate {rate}"), || async {
                    target
                        .query_one(
                            "SELECT count(*) FROM lat WHERE id BETWEEN $1 AND $2",
                            &[&first, &last],
                        )
                        .await
                        .is_ok_and(|r| r.get::<_, i64>(0) == last - first + 1)
                })
                .await?;
            }
            let n = latency(&native, first, last).await?;
            let f = latency(&fanout, first, last).await?;
            println!(
                "  {rate:>6}/s (achieved {written:>7.0}/s)  native {:>7.2} / {:>7.2} / {:>8.2}   pgfanout {:>7.2} / {:>7.2} / {:>8.2}   p99 ratio {:.1}",
                n.0, n.1, n.2, f.0, f.1, f.2, f.1 / n.1
            );
        }
        stop(daemon)?;
        Ok::<_, BoxError>(())
    })
}

/// Inserts at `rate` rows per second for `span`, one transaction per [`TICK`]; returns the
/// rate achieved (a writer that cannot keep up says so instead of bursting).
async fn write_at(
    source: &Client,
    rate: u64,
    span: Duration,
    next_id: &mut i64,
) -> Result<f64, BoxError> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let per_tick = rate as f64 * TICK.as_secs_f64();
    let (mut owed, mut rows) = (0.0f64, 0u64);
    while start.elapsed() < span {
        tick.tick().await;
        owed += per_tick;
        let n = owed.floor() as i64;
        if n == 0 {
            continue;
        }
        owed -= n as f64;
        source
            .execute(
                "INSERT INTO lat SELECT g, $3::text::uuid, clock_timestamp() FROM generate_series($1::bigint, $2::bigint) g",
                &[&(*next_id + 1), &(*next_id + n), &TENANT],
            )
            .await?;
        *next_id += n;
        rows += n as u64;
    }
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}
