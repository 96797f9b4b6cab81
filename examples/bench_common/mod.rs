//! What the destination benchmarks share (`bench_fanout`, `bench_clickhouse`,
//! `bench_snapshot`, `bench_latency`, `bench_streaming`, and `bench_e2e` for finding
//! `pg_recvlogical`): the bench table, the preload, the three workloads with their marker rows,
//! the source and mapping parts of the pgfanout configuration, starting, watching and stopping
//! `pgfanout run`, the latency table's percentiles, and finding PostgreSQL's client programs.
//!
//! Included by each example with `mod bench_common;`; each uses only part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pgfanout_testkit::localpg::{LocalPostgres, Options};
use tokio_postgres::Client;

pub const ROWS: u64 = 1_000_000;
pub const ROWS_PER_TXN: u64 = 10_000;
/// Rows present before the update-heavy and mixed workloads.
pub const PRELOAD: u64 = 100_000;
pub const TENANT: &str = "00000000-0000-0000-0000-000000000001";
pub const WORKLOADS: &str = "insert,update,mixed";

pub const TABLES: &str = "
    CREATE TABLE bench (id bigint NOT NULL, tenant uuid NOT NULL, email text, name text,
                        score int, balance numeric(12,2), active bool, created_at timestamptz,
                        note text, tags text[], PRIMARY KEY (tenant, id));
    CREATE TABLE marker (id int NOT NULL, tenant uuid NOT NULL, PRIMARY KEY (tenant, id));";

pub type BoxError = Box<dyn std::error::Error>;

/// `BENCH_ROWS`, default [`ROWS`].
/// The source server's settings both benchmarks need: room for a million-row workload's WAL
/// and several slots; `extra` adds a benchmark's own.
pub fn start_source(extra: &[&str]) -> Result<LocalPostgres, BoxError> {
    let conf: Vec<String> = [
        "max_wal_size = '8GB'",
        "logical_decoding_work_mem = '64MB'",
        "max_replication_slots = 20",
        "max_wal_senders = 20",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    Ok(LocalPostgres::start(&Options {
        conf,
        ..Default::default()
    })?)
}

pub fn bench_rows() -> u64 {
    std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROWS)
}

/// `BENCH_WORKLOADS`, default [`WORKLOADS`].
pub fn bench_workloads() -> String {
    std::env::var("BENCH_WORKLOADS").unwrap_or_else(|_| WORKLOADS.into())
}

/// `PGFANOUT_BIN`, default `target/release/pgfanout`.
pub fn pgfanout_bin() -> String {
    std::env::var("PGFANOUT_BIN").unwrap_or_else(|_| "target/release/pgfanout".into())
}

/// Creates the tables and publication `bench` in the (empty) source database, then one
/// `pgoutput` slot per name, all at the same LSN: nothing is written between them.
pub async fn setup_source(source: &Client, slots: &[String]) -> Result<(), BoxError> {
    source
        .batch_execute(&format!(
            "{TABLES} CREATE PUBLICATION bench FOR TABLE bench, marker;"
        ))
        .await?;
    // Each in its own transaction: a slot cannot be created after writes in the same one.
    for slot in slots {
        source
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[slot],
            )
            .await?;
    }
    Ok(())
}

/// `[source]`, `[log]` and the two identity mappings (`bench`, `marker`) of the pgfanout
/// configuration; the caller appends its `[[destinations]]` with `mappings = ["bench",
/// "marker"]`.
pub fn source_and_mappings_toml(source_url: &str, slot: &str, log_dir: &Path) -> String {
    source_and_mappings_toml_with(source_url, slot, log_dir, "")
}

/// [`source_and_mappings_toml`] with more `[source]` keys (`extra`, whole lines).
pub fn source_and_mappings_toml_with(
    source_url: &str,
    slot: &str,
    log_dir: &Path,
    extra: &str,
) -> String {
    format!(
        "[source]\nurl = \"{source_url}\"\npublication = \"bench\"\nmanage = false\nslot = \"{slot}\"\n{extra}\
         [log]\ndir = \"{}\"\n{MAPPINGS}",
        log_dir.display()
    )
}

/// The two identity mappings, `bench` and `marker`.
pub const MAPPINGS: &str =
    "[[mappings]]\nname = \"bench\"\nsource = \"public.bench\"\ntenant_key = \"tenant\"\ntarget = \"bench\"\n\
     [mappings.columns]\nid = \"id\"\ntenant = \"tenant\"\nemail = \"email\"\nname = \"name\"\nscore = \"score\"\n\
     balance = \"balance\"\nactive = \"active\"\ncreated_at = \"created_at\"\nnote = \"note\"\ntags = \"tags\"\n\
     [[mappings]]\nname = \"marker\"\nsource = \"public.marker\"\ntenant_key = \"tenant\"\ntarget = \"marker\"\n\
     [mappings.columns]\nid = \"id\"\ntenant = \"tenant\"\n";

/// The untimed starting rows: [`PRELOAD`] rows before the update-heavy and mixed workloads
/// (none before insert-only), then marker 1.
pub async fn write_preload(source: &Client, workload: &str) -> Result<(), BoxError> {
    if workload != "insert" {
        insert(source, 1, PRELOAD).await?;
    }
    insert_marker(source, 1).await
}

/// The workload's `rows` row changes in transactions of [`ROWS_PER_TXN`], then marker 2.
pub async fn write_workload(source: &Client, workload: &str, rows: u64) -> Result<(), BoxError> {
    match workload {
        "insert" => insert(source, PRELOAD + 1, rows).await?,
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
    insert_marker(source, 2).await
}

async fn insert_marker(source: &Client, id: i32) -> Result<(), BoxError> {
    source
        .execute(
            "INSERT INTO marker VALUES ($1, $2::text::uuid)",
            &[&id, &TENANT],
        )
        .await?;
    Ok(())
}

/// Inserts rows `from..from + n` of the bench table (one tenant) in one statement.
pub fn insert_sql(from: u64, n: u64) -> String {
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

/// Starts `pgfanout run --config CONFIG`, logging at `BENCH_LOG` (default `warn`) to stderr.
pub fn spawn(pgfanout: &str, config: &Path) -> Result<Child, BoxError> {
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

/// SIGTERM, then waits; an unsuccessful exit is an error.
pub fn stop(mut daemon: Child) -> Result<(), BoxError> {
    let pid = daemon.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let status = daemon.wait()?;
    if !status.success() {
        return Err(format!("pgfanout run exited with {status}").into());
    }
    Ok(())
}

/// Fails when `daemon` has exited (it should run until stopped).
pub fn check_running(daemon: &mut Child, waiting_for: &str) -> Result<(), BoxError> {
    if let Some(status) = daemon.try_wait()? {
        return Err(format!("pgfanout run exited with {status} before {waiting_for}").into());
    }
    Ok(())
}

/// Polls `check` every 10 ms until it holds; fails when `daemon` exits or after 10 minutes.
pub async fn wait_until<F, Fut>(
    daemon: &mut Child,
    what: &str,
    mut check: F,
) -> Result<(), BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while !check().await {
        check_running(daemon, what)?;
        if std::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The latency table both latency benchmarks write into: `written_at` is set at the source
/// just before the commit; each target adds `arrived` (see [`ARRIVED`]).
pub const LAT_TABLE: &str = "CREATE TABLE lat (id bigint NOT NULL, tenant uuid NOT NULL,
                                       written_at timestamptz NOT NULL, PRIMARY KEY (tenant, id))";

/// Added to a target's `lat` before anything is written: the consumer names its columns, so
/// the default stamps when it inserts the row (visible when that transaction commits, right
/// after).
pub const ARRIVED: &str =
    "ALTER TABLE lat ADD COLUMN arrived timestamptz DEFAULT clock_timestamp()";

/// p50, p99 and max of `arrived - written_at` in milliseconds over `lat` ids `first..=last`.
pub async fn latency(c: &Client, first: i64, last: i64) -> Result<(f64, f64, f64), BoxError> {
    let r = c
        .query_one(
            "WITH l AS (SELECT extract(epoch FROM arrived - written_at)::float8 * 1000 AS ms
                        FROM lat WHERE id BETWEEN $1 AND $2)
             SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms) FROM l",
            &[&first, &last],
        )
        .await?;
    Ok((r.get(0), r.get(1), r.get(2)))
}

/// How long a consumer may take to reach a marker before the run fails.
pub const MARKER_TIMEOUT: Duration = Duration::from_secs(1800);

/// The newest installed `pg_recvlogical`.
pub fn find_recvlogical() -> Option<String> {
    find_pg_bin("pg_recvlogical")
}

/// PostgreSQL's program `name` (`psql`, `pgbench`, …): the newest
/// `/usr/lib/postgresql/*/bin/NAME`, else `NAME` in PATH.
pub fn find_pg_bin(name: &str) -> Option<String> {
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    // Numerically: 9.6 < 10 < 16.
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .or_else(|| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|d| Path::new(d).join(name))
                .find(|p| p.exists())
        })
        .map(|p| p.display().to_string())
}
