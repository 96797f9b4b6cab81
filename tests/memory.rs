//! Memory for one huge value: `pgfanout run` carries a single row with a 50 MB text value from
//! the source through the change log and the dispatcher into a PostgreSQL and a ClickHouse
//! destination, and its peak RSS stays within three times the value plus a constant (what it
//! took before the value, and 32 MiB)
//! (ARCHITECTURE.md, invariant 24). `scripts/bench-memory.sh` measures the same with 200 MB.

mod support;

use std::path::{Path, PathBuf};

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

fn write_config(dir: &Path, db: &str, pg_target: &str, ch_database: &str) -> PathBuf {
    let path = dir.join("pgfanout.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = {}\nslot = \"s_{db}\"\ntables = [\"public.blob\"]\n\
             status_interval = \"100ms\"\n\
             [log]\ndir = {}\nsync_interval = \"20ms\"\n\
             [state]\ncheckpoint_interval = \"200ms\"\n{MAPPING}\
             \n[[destinations]]\nname = \"pg\"\nkind = \"postgres\"\nurl = {}\n\
             tenants = \"*\"\nmappings = [\"blobs\"]\nflush_interval = \"50ms\"\n\
             \n[[destinations]]\nname = \"ch\"\nkind = \"clickhouse\"\nurl = {}\n\
             database = {}\ntenants = \"*\"\nmappings = [\"blobs\"]\nflush_interval = \"50ms\"\n",
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
    let config = write_config(dir.path(), &db, &pg_target, &ch_database);
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
