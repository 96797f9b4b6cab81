//! `pgfanout tail` as a user runs it: the JSON-lines format, `--limit`, SIGTERM, bounded
//! memory on a single 1,000,000-row transaction, and protocol 2 spooling in a temporary
//! directory.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn write_config(db: &str, tables: &str) -> tempfile::NamedTempFile {
    let pg = server();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "[source]\nurl = \"postgres://postgres@/{db}?host={}&port={}\"\npublication = \"pgfanout\"\ntables = [{tables}]\nstatus_interval = \"500ms\"\n",
            pg.socket_dir().display(),
            pg.port()
        ),
    )
    .unwrap();
    file
}

fn spawn_tail(config: &std::path::Path, args: &[&str]) -> Spawned {
    Spawned(
        Command::new(env!("CARGO_BIN_EXE_pgfanout"))
            .arg("tail")
            .arg("--config")
            .arg(config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Waits until the tail's walsender runs START_REPLICATION, so later writes are captured. (A
/// slot is already "active" while it is being created, and creation waits for every running
/// transaction of the cluster to end; a commit before that is not decoded.)
async fn wait_streaming(client: &tokio_postgres::Client, db: &str) {
    wait_for("tail to start streaming", || async {
        let rows = client
            .query(
                "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
                 WHERE s.slot_name LIKE 'pgfanout_tail_%' AND s.database = $1 AND r.state IN ('catchup', 'streaming')",
                &[&db],
            )
            .await
            .unwrap();
        (!rows.is_empty()).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_one_json_line_per_change_and_stops_at_the_limit() {
    let db = fresh_db("tail_json").await;
    let client = sql(&db).await;
    client
        .batch_execute("CREATE TABLE users (id int PRIMARY KEY, email text, bio text); ALTER TABLE users ALTER bio SET STORAGE EXTERNAL;")
        .await
        .unwrap();
    let config = write_config(&db, "\"public.users\"");
    let child = spawn_tail(config.path(), &["--limit", "5"]);
    wait_streaming(&client, &db).await;
    client
        .batch_execute(
            "INSERT INTO users VALUES (7, 'a@x.io', repeat('z', 10000));
             UPDATE users SET email = 'b@x.io' WHERE id = 7;
             UPDATE users SET id = 8 WHERE id = 7;
             DELETE FROM users WHERE id = 8;
             TRUNCATE users;
             INSERT INTO users VALUES (9, 'beyond the limit', NULL);",
        )
        .await
        .unwrap();
    let mut child = child;
    let out = tokio::task::spawn_blocking(move || child.wait_output())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 5, "--limit 5");
    let field = |i: usize, k: &str| lines[i][k].clone();
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["seq"], i as u64 + 1);
        assert_eq!(line["schema"], "public");
        assert_eq!(line["table"], "users");
        let lsn = line["lsn"].as_str().unwrap();
        assert!(lsn.parse::<pgfanout::lsn::Lsn>().is_ok(), "{lsn}");
        let t = line["commit_time"].as_str().unwrap();
        assert!(
            t.len() == 27 && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
        assert!(line["xid"].as_u64().unwrap() > 0);
    }
    assert_eq!(field(0, "op"), "insert");
    assert_eq!(field(0, "key"), serde_json::json!({"id": "7"}));
    assert_eq!(field(0, "new")["email"], "a@x.io");
    assert_eq!(field(0, "old"), serde_json::Value::Null);
    assert_eq!(field(1, "op"), "update");
    assert_eq!(
        field(1, "new"),
        serde_json::json!({"id": "7", "email": "b@x.io"})
    );
    assert_eq!(field(1, "unchanged"), serde_json::json!(["bio"]));
    assert_eq!(field(2, "key"), serde_json::json!({"id": "8"}));
    assert_eq!(field(2, "old"), serde_json::json!({"id": "7"}));
    assert_eq!(field(3, "op"), "delete");
    assert_eq!(field(3, "key"), serde_json::json!({"id": "8"}));
    assert_eq!(field(3, "new"), serde_json::Value::Null);
    assert_eq!(field(4, "op"), "truncate");
    assert_eq!(field(4, "key"), serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_and_exits_zero() {
    let db = fresh_db("tail_term").await;
    let client = sql(&db).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let config = write_config(&db, "\"t\"");
    let mut child = spawn_tail(config.path(), &[]);
    wait_streaming(&client, &db).await;
    client
        .batch_execute("INSERT INTO t SELECT generate_series(1, 3)")
        .await
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let first_three = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for _ in 0..3 {
            let mut l = String::new();
            stdout.read_line(&mut l).unwrap();
            lines.push(l);
        }
        (lines, stdout)
    });
    let (lines, mut stdout) = tokio::time::timeout(WAIT, first_three)
        .await
        .unwrap()
        .unwrap();
    assert!(lines.iter().all(|l| l.ends_with('\n')), "{lines:?}");
    child.signal("-TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "tail should exit 0 on SIGTERM, got {status}"
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "nothing after the three lines");
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Memory must not grow with transaction size: one transaction of 1,000,000 rows of ~150 bytes
/// (~150 MB of row text) streams through in a few tens of MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_streams_in_bounded_memory() {
    const ROWS: u64 = 1_000_000;
    const LIMIT_KIB: u64 = 64 * 1024;
    let db = fresh_db("tail_big").await;
    let client = sql(&db).await;
    client
        .batch_execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, a text, b text, c int, d timestamptz)",
        )
        .await
        .unwrap();
    let config = write_config(&db, "\"big\"");
    let mut child = spawn_tail(config.path(), &["--limit", &ROWS.to_string()]);
    let pid = child.id();
    wait_streaming(&client, &db).await;

    let mut stdout = child.stdout.take().unwrap();
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let (mut lines, mut bytes) = (0u64, 0u64);
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                return (lines, bytes);
            }
            bytes += n as u64;
            lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        }
    });
    client
        .batch_execute(&format!(
            "INSERT INTO big SELECT g, md5(g::text) || md5((g + 1)::text), repeat('x', 40), g % 1000, now() FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .unwrap();

    let mut peak = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while child.try_wait().unwrap().is_none() {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        assert!(std::time::Instant::now() < deadline, "tail did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (lines, bytes) = counter.join().unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(lines, ROWS);
    println!("1,000,000-row transaction: {bytes} bytes of JSON, peak RSS {peak} KiB");
    assert!(peak > 0, "could not read the peak RSS");
    assert!(
        bytes / 1024 > 2 * LIMIT_KIB,
        "the output must dwarf the memory limit for the test to mean anything"
    );
    assert!(
        peak < LIMIT_KIB,
        "peak RSS {peak} KiB: memory grows with the transaction"
    );
}

/// `pgfanout-spool-*` directories in the system's temporary directory.
fn temporary_spools() -> std::collections::BTreeSet<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pgfanout-spool-"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_2_spools_in_a_temporary_directory_and_prints_only_what_committed() {
    let db = fresh_db("tail_v2").await;
    let client = sql(&db).await;
    client
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET logical_decoding_work_mem = '64kB';
             CREATE TABLE t (id int PRIMARY KEY, v text);"
        ))
        .await
        .unwrap();
    let config = write_config(&db, "\"public.t\"");
    let text = std::fs::read_to_string(config.path()).unwrap() + "protocol = 2\n";
    std::fs::write(config.path(), text).unwrap();
    let before = temporary_spools();
    let child = spawn_tail(config.path(), &["--limit", "3001"]);
    wait_streaming(&client, &db).await;
    let big = sql(&db).await;
    // Streamed while in progress (past 64 kB), with a subtransaction rolled back; a small
    // transaction commits meanwhile and is printed first.
    big.batch_execute(
        "BEGIN; INSERT INTO t SELECT g, 'big' FROM generate_series(1, 3000) g;
         SAVEPOINT s; INSERT INTO t SELECT g, 'rolled back' FROM generate_series(3001, 3500) g;
         ROLLBACK TO s;",
    )
    .await
    .unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (0, 'small')")
        .await
        .unwrap();
    // The open transaction waits in a spool file of a new temporary directory.
    wait_for("the open transaction in a temporary spool", || {
        let before = before.clone();
        async move {
            temporary_spools()
                .difference(&before)
                .filter_map(|d| std::fs::read_dir(d).ok())
                .flatten()
                .filter_map(Result::ok)
                .any(|f| f.path().extension().is_some_and(|e| e == "spool"))
                .then_some(())
        }
    })
    .await;
    big.batch_execute("COMMIT").await.unwrap();
    let mut child = child;
    let out = tokio::task::spawn_blocking(move || child.wait_output())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 3001);
    assert_eq!(lines[0]["new"]["v"], "small");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["seq"], i as u64 + 1);
        if i > 0 {
            assert_eq!(line["new"]["v"], "big", "{line}");
        }
    }
    // The spool went with the process.
    let left: Vec<_> = temporary_spools().difference(&before).cloned().collect();
    assert!(left.is_empty(), "{left:?}");
}
