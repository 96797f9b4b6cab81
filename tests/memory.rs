//! Memory of `pgfanout run` with a PostgreSQL and a ClickHouse destination:
//! - one huge value: a single row with a 50 MB text value goes from the source through the
//!   change log and the dispatcher into both destinations, and the peak RSS stays within three
//!   times the value plus a constant (what it took before the value, and 32 MiB)
//!   (ARCHITECTURE.md, invariant 24);
//! - one big transaction: 1,000,000 rows of a seven-column table in one transaction, with the
//!   destinations' default batch sizes, peak within a fixed bound (invariant 37).
//!
//! `scripts/bench-memory.sh` measures both in a release build (200 MB; the row bound of the
//! release build).

mod support;

use std::path::{Path, PathBuf};

/// The bound of invariant 37 holds for protocol 1. Under protocol 2 the same transaction, handed
/// out from the spool at its commit, peaked at 135–145 MiB in the debug build (issue 14's
/// closing note): not yet within it, so this test pins protocol 1 rather than hide that.
const PROTOCOL: u32 = 1;

use support::*;

/// The value's size; `PGFANOUT_HUGE_VALUE_MB` overrides it (measurements only).
const VALUE_MB: u64 = 50;
/// What the daemon may take besides what it had before the value (its runtime, connections,
/// buffers) and three times the value: the allocator's and the buffers' slack. Small enough
/// that a fourth copy of the value fails the test.
const SLACK_MB: u64 = 32;

const SOURCE_SCHEMA: &str = "
    CREATE TABLE blob (tenant text, id int, body text, PRIMARY KEY (tenant, id));";

const MAPPING: &str = r#"
[[mappings]]
name = "blobs"
source = "public.blob"
tenant_key = "tenant"
target = "blobs"
key = ["tenant", "id"]
[mappings.columns]
id = "id"
tenant = "tenant"
body = "body"
"#;

fn value_mb() -> u64 {
    std::env::var("PGFANOUT_HUGE_VALUE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(VALUE_MB)
}

/// The peak resident set size of process `pid` (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

/// A size in `/proc/PID/status` (`VmHWM:`, `VmRSS:`), in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A configuration streaming `table` through `mapping` (named `name`) into a PostgreSQL
/// destination `pg` and a ClickHouse destination `ch`, each with `extra` destination keys, and
/// `ch_extra` for `ch` alone.
#[allow(clippy::too_many_arguments)]
fn write_config(
    dir: &Path,
    db: &str,
    table: &str,
    name: &str,
    mapping: &str,
    extra: &str,
    ch_extra: &str,
    pg_target: &str,
    ch_database: &str,
) -> PathBuf {
    let path = dir.join("pgfanout.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = {}\nslot = \"s_{db}\"\ntables = [\"{table}\"]\n\
             status_interval = \"100ms\"\nprotocol = {PROTOCOL}\n\
             [log]\ndir = {}\nsync_interval = \"20ms\"\n\
             [state]\ncheckpoint_interval = \"200ms\"\n{mapping}\
             \n[[destinations]]\nname = \"pg\"\nkind = \"postgres\"\nurl = {}\n\
             tenants = \"*\"\nmappings = [\"{name}\"]\n{extra}\
             \n[[destinations]]\nname = \"ch\"\nkind = \"clickhouse\"\nurl = {}\n\
             database = {}\ntenants = \"*\"\nmappings = [\"{name}\"]\n{extra}{ch_extra}",
            toml_str(&url_on(server(), db)),
            toml_str(&dir.join("log").display().to_string()),
            toml_str(&url_on(server(), pg_target)),
            toml_str(&clickhouse().url()),
            toml_str(ch_database),
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_value_takes_at_most_three_times_its_size_in_memory() {
    let mb = value_mb();
    let value_bytes = mb * 1024 * 1024;
    let db = fresh_db("mem_huge").await;
    let source = sql(&db).await;
    source.batch_execute(SOURCE_SCHEMA).await.unwrap();
    let pg_target = fresh_db("mem_huge_pg").await;
    let ch_database = tokio::task::spawn_blocking(|| fresh_ch_db("mem_huge_ch"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &db,
        "public.blob",
        "blobs",
        MAPPING,
        "flush_interval = \"50ms\"\n",
        "",
        &pg_target,
        &ch_database,
    );
    let mut daemon = Daemon::start(&config);
    let pid = daemon.0.id();
    wait_streaming(&mut daemon, &source, &db).await;
    // A small row first: both destinations have created their tables and written once, so
    // what follows measures the huge value, not start-up.
    source
        .batch_execute("INSERT INTO blob VALUES ('t', 0, 'small')")
        .await
        .unwrap();
    let target = sql(&pg_target).await;
    wait_for("the small row in PostgreSQL", || async {
        target
            .query_opt("SELECT 1 FROM blobs WHERE id = 0", &[])
            .await
            .ok()
            .flatten()
            .map(|_| ())
    })
    .await;
    let ch = clickhouse();
    let ch_count = |id: i32| {
        let sql = format!("SELECT count() FROM `{ch_database}`.blobs FINAL WHERE id = {id}");
        move || {
            let sql = sql.clone();
            async move {
                let out = tokio::task::spawn_blocking(move || ch.query(&sql))
                    .await
                    .unwrap();
                out.ok().filter(|c| c.trim() == "1").map(|_| ())
            }
        }
    };
    wait_for("the small row in ClickHouse", ch_count(0)).await;
    let before = peak_rss(pid).expect("the daemon's peak RSS");

    // 32 hex digits repeated (the md5 of the whole tells a damaged copy).
    source
        .execute(
            "INSERT INTO blob SELECT 't', 1, repeat(md5('huge'), ($1::bigint / 32)::int)",
            &[&(value_bytes as i64)],
        )
        .await
        .unwrap();
    let expected = source
        .query_one(
            "SELECT length(body)::bigint, md5(body) FROM blob WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    let (length, md5): (i64, String) = (expected.get(0), expected.get(1));
    assert_eq!(length as u64, value_bytes);

    wait_for("the huge row in PostgreSQL", || async {
        target
            .query_opt(
                "SELECT 1 FROM blobs WHERE id = 1 AND length(body) = $1 AND md5(body) = $2",
                &[&(length as i32), &md5],
            )
            .await
            .ok()
            .flatten()
            .map(|_| ())
    })
    .await;
    wait_for("the huge row in ClickHouse", ch_count(1)).await;
    let sql = format!(
        "SELECT length(body), lower(hex(MD5(body))) FROM `{ch_database}`.blobs FINAL WHERE id = 1"
    );
    let in_ch = tokio::task::spawn_blocking(move || ch.query(&sql))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        in_ch.trim(),
        format!("{length}\t{md5}"),
        "the value arrived intact in ClickHouse"
    );

    let peak = peak_rss(pid).expect("the daemon's peak RSS");
    let now = status_bytes(pid, "VmRSS:").expect("the daemon's RSS");
    let bound = before + 3 * value_bytes + SLACK_MB * 1024 * 1024;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "{mb} MiB value: peak RSS {:.1} MiB ({:.1} MiB before it, {:.1} MiB after), {:.2}× the value; bound {:.0} MiB",
        mib(peak),
        mib(before),
        mib(now),
        peak as f64 / value_bytes as f64,
        mib(bound)
    );
    assert!(
        peak <= bound,
        "peak RSS {:.1} MiB for a {mb} MiB value: more than {:.1} MiB before it + 3× the value + {SLACK_MB} MiB",
        mib(peak),
        mib(before)
    );
    assert!(daemon.stop().success());
}

/// Rows of the big transaction; `PGFANOUT_MEMORY_ROWS` overrides it (measurements only).
const BIG_ROWS: u64 = 1_000_000;
/// The bound on the daemon's peak RSS while the big transaction goes through, in MiB
/// (invariant 37). A release build meets 100 MiB (`scripts/bench-memory.sh`: 72.6 MiB on
/// 2026-11-28); the debug build's larger code takes about 12 MiB more at idle (83.0 MiB).
const BIG_BOUND_MB: u64 = if cfg!(debug_assertions) { 110 } else { 100 };

const BIG_SCHEMA: &str = "
    CREATE TABLE big (tenant text, id bigint, a text, b text, c int, d timestamptz,
                      e numeric, PRIMARY KEY (tenant, id));";

const BIG_MAPPING: &str = r#"
[[mappings]]
name = "bigs"
source = "public.big"
tenant_key = "tenant"
target = "big"
key = ["tenant", "id"]
[mappings.columns]
tenant = "tenant"
id = "id"
a = "a"
b = "b"
c = "c"
d = "d"
e = "e"
"#;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_peaks_within_a_fixed_bound() {
    let rows = env_u64("PGFANOUT_MEMORY_ROWS", BIG_ROWS);
    let bound = env_u64("PGFANOUT_MEMORY_BOUND_MB", BIG_BOUND_MB) * 1024 * 1024;
    let db = fresh_db("mem_big").await;
    let source = sql(&db).await;
    source.batch_execute(BIG_SCHEMA).await.unwrap();
    let pg_target = fresh_db("mem_big_pg").await;
    let ch_database = tokio::task::spawn_blocking(|| fresh_ch_db("mem_big_ch"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The destinations' default batch sizes and flush intervals: what is measured is the
    // configuration users get (`PGFANOUT_MEMORY_CH_SETTINGS` adds TOML lines to the
    // ClickHouse destination: experiments only).
    let ch_settings = std::env::var("PGFANOUT_MEMORY_CH_SETTINGS")
        .map(|s| s + "\n")
        .unwrap_or_default();
    let config = write_config(
        dir.path(),
        &db,
        "public.big",
        "bigs",
        BIG_MAPPING,
        "",
        &ch_settings,
        &pg_target,
        &ch_database,
    );
    let mut daemon = Daemon::start(&config);
    let pid = daemon.0.id();
    wait_streaming(&mut daemon, &source, &db).await;
    let target = sql(&pg_target).await;
    let ch = clickhouse();
    let pg_count = || async {
        target
            .query_one("SELECT count(*) FROM big", &[])
            .await
            .ok()
            .map(|r| r.get::<_, i64>(0) as u64)
    };
    let ch_count = || async {
        let sql = format!("SELECT count() FROM `{ch_database}`.big FINAL");
        tokio::task::spawn_blocking(move || ch.query(&sql))
            .await
            .unwrap()
            .ok()
            .and_then(|c| c.trim().parse::<u64>().ok())
    };
    // One row first: both destinations created their tables and wrote once, so the idle
    // figure is the daemon at work, not at start-up.
    source
        .batch_execute("INSERT INTO big VALUES ('t0', 0, 'a', 'b', 0, now(), 0)")
        .await
        .unwrap();
    wait_for("the first row in PostgreSQL", || async {
        pg_count().await.filter(|&n| n == 1)
    })
    .await;
    wait_for("the first row in ClickHouse", || async {
        ch_count().await.filter(|&n| n == 1)
    })
    .await;
    let idle = status_bytes(pid, "VmRSS:").expect("the daemon's RSS");

    source
        .batch_execute(&format!(
            "INSERT INTO big SELECT 't' || (g % 10), g, md5(g::text) || md5((g + 1)::text),
                 repeat('x', 40), g % 1000, now(), g * 1.5
             FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(1800);
    for (what, count) in [("PostgreSQL", true), ("ClickHouse", false)] {
        loop {
            let n = if count {
                pg_count().await
            } else {
                ch_count().await
            };
            if n == Some(rows + 1) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what} holds {n:?} of {} rows after {:?}",
                rows + 1,
                started.elapsed()
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    let took = started.elapsed();
    let peak = peak_rss(pid).expect("the daemon's peak RSS");
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "{rows}-row transaction: peak RSS {:.1} MiB (idle before it {:.1} MiB), both destinations complete after {:.1} s; bound {:.0} MiB",
        mib(peak),
        mib(idle),
        took.as_secs_f64(),
        mib(bound)
    );
    assert!(
        peak <= bound,
        "peak RSS {:.1} MiB for a {rows}-row transaction: more than {:.0} MiB",
        mib(peak),
        mib(bound)
    );
    assert!(daemon.stop().success());
}
