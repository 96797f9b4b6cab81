//! `pgfanout run`: the change log under crashes. SIGKILL at random moments during a concurrent
//! workload must leave a log with every committed change exactly once, in commit order, with
//! exactly the seqs of an uninterrupted reference run over the same WAL; the slot never
//! confirms past what the log holds durably.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgfanout::change::{Datum, Op, SequencedChange};
use pgfanout::changelog::LogRecord;
use pgfanout::lsn::Lsn;
use support::*;

/// A fresh database's client with the two tables every test here publishes.
async fn db_with_tables(db: &str) -> tokio_postgres::Client {
    let client = sql(db).await;
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             CREATE TABLE events (id serial PRIMARY KEY, item int, kind text);",
        )
        .await
        .unwrap();
    client
}

fn write_config(dir: &Path, db: &str, slot: &str, log_dir: &Path) -> PathBuf {
    let pg = server();
    let path = dir.join(format!("{slot}.toml"));
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = \"postgres://postgres@/{db}?host={}&port={}\"\nslot = \"{slot}\"\ntables = [\"items\", \"events\"]\nstatus_interval = \"100ms\"\n\
             [log]\ndir = \"{}\"\nsync_interval = \"20ms\"\nsegment_mb = 1\n\
             [state]\ncheckpoint_interval = \"200ms\"\n",
            pg.socket_dir().display(),
            pg.port(),
            log_dir.display()
        ),
    )
    .unwrap();
    path
}

fn commits(dir: &Path) -> Vec<pgfanout::changelog::CommitInfo> {
    records(dir)
        .into_iter()
        .filter_map(|r| match r {
            LogRecord::Commit(c) => Some(c),
            LogRecord::Change(_) => None,
        })
        .collect()
}

/// Inserts, updates, deletes and multi-row transactions from two connections.
async fn workload(db: String, rounds: u32, stop_marker: bool) {
    let a = sql(&db).await;
    let b = sql(&db).await;
    for r in 0..rounds {
        let base = r * 10;
        let (x, y) = if r % 2 == 0 { (&a, &b) } else { (&b, &a) };
        x.batch_execute(&format!(
            "BEGIN;
             INSERT INTO items SELECT g, 'v' || g FROM generate_series({base}, {base} + 9) g;
             UPDATE items SET v = v || '+' WHERE id = {base} + 3;
             INSERT INTO events (item, kind) VALUES ({base}, 'created');
             COMMIT;"
        ))
        .await
        .unwrap();
        y.batch_execute(&format!(
            "DELETE FROM items WHERE id = {base} + 9; UPDATE items SET v = 'u' WHERE id = {base};"
        ))
        .await
        .unwrap();
        if r % 7 == 0 {
            // A transaction with nothing for the publication still moves the slot.
            y.batch_execute("INSERT INTO unpublished VALUES (1)")
                .await
                .unwrap();
        }
    }
    if stop_marker {
        a.batch_execute("INSERT INTO events (item, kind) VALUES (-1, 'end')")
            .await
            .unwrap();
    }
}

fn is_end_marker(c: &SequencedChange) -> bool {
    c.change.relation.name == "events"
        && matches!(&c.change.op, Op::Insert { new } if new.0.get(2) == Some(&Datum::Text("end".into())))
}

async fn wait_for_end(log_dir: &Path) -> Vec<SequencedChange> {
    let dir = log_dir.to_owned();
    wait_for("the end marker in the change log", || {
        let dir = dir.clone();
        async move {
            let changes = tokio::task::spawn_blocking(move || read_log(&dir))
                .await
                .unwrap();
            changes.iter().any(is_end_marker).then_some(changes)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_keeps_every_change_once_with_reference_seqs() {
    const KILLS: u32 = 20;
    let db = fresh_db("run_crash").await;
    let client = db_with_tables(&db).await;
    client
        .batch_execute("CREATE TABLE unpublished (x int)")
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let crash_log = tmp.path().join("crash-log");
    let ref_log = tmp.path().join("reference-log");
    let crash_slot = format!("crash_{db}");
    let ref_slot = format!("reference_{db}");
    // Both slots start at the same point, before any change: they see the same WAL.
    for slot in [&crash_slot, &ref_slot] {
        create_slot(&client, slot).await;
    }
    client
        .batch_execute("CREATE PUBLICATION pgfanout FOR TABLE items, events")
        .await
        .unwrap();
    let crash_cfg = write_config(tmp.path(), &db, &crash_slot, &crash_log);
    let ref_cfg = write_config(tmp.path(), &db, &ref_slot, &ref_log);

    let writer = tokio::spawn(workload(db.clone(), 300, true));
    let mut daemon = Daemon::start(&crash_cfg);
    // (confirmed_flush_lsn while paused, xids durable in the log at that moment)
    let mut pauses = Vec::new();
    for i in 0..KILLS {
        // Random moments: 50–400 ms of running, sometimes right after start.
        let ms = 50 + (rand::random::<u64>() % 350);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if i % 5 == 4 {
            // Paused: the slot must not be confirmed past the log's last durable commit.
            daemon.signal("-STOP");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let confirmed = confirmed_flush(&client, &crash_slot).await;
            let dir = crash_log.clone();
            let durable: std::collections::HashSet<u32> =
                tokio::task::spawn_blocking(move || commits(&dir).iter().map(|c| c.xid).collect())
                    .await
                    .unwrap();
            pauses.push((confirmed, durable));
            daemon.signal("-CONT");
        }
        daemon.kill9();
        daemon = Daemon::start(&crash_cfg);
    }
    writer.await.unwrap();
    let crashed = wait_for_end(&crash_log).await;
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM should exit 0, got {status}");

    let reference = Daemon::start(&ref_cfg);
    let expected = wait_for_end(&ref_log).await;
    assert!(reference.stop().success());

    assert_eq!(
        crashed.len(),
        expected.len(),
        "same number of changes as the uninterrupted run"
    );
    let seqs: Vec<u64> = crashed.iter().map(|c| c.seq).collect();
    assert_eq!(
        seqs,
        (1..=crashed.len() as u64).collect::<Vec<_>>(),
        "dense seqs from 1"
    );
    for (got, want) in crashed.iter().zip(&expected) {
        assert_eq!(comparable(got), comparable(want));
    }
    // 300 rounds × (10 inserts + 1 update + 1 insert + 1 delete + 1 update) + the end marker.
    assert_eq!(crashed.len(), 300 * 14 + 1);
    pgfanout::changelog::verify(&crash_log).unwrap();

    // Whatever the slot had confirmed while paused was durable in the log at that moment.
    let all_commits = commits(&crash_log);
    assert!(!pauses.is_empty());
    for (confirmed, durable) in &pauses {
        for c in all_commits.iter().filter(|c| c.end_lsn <= *confirmed) {
            assert!(
                durable.contains(&c.xid),
                "slot confirmed {confirmed} while transaction {} (end {}) was not durable in the log",
                c.xid,
                c.end_lsn
            );
        }
    }

    // The checkpoint in the state database matches the log's end.
    let row = client
        .query_one(
            "SELECT last_seq, commit_end_lsn::text FROM pgfanout.checkpoints WHERE slot = $1",
            &[&crash_slot],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0) as u64, crashed.len() as u64);
    drop_slot(&client, &crash_slot).await;
    drop_slot(&client, &ref_slot).await;
}

fn pgfanout(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgfanout"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_to_endpos_then_read_verify_and_migrate_from_the_cli() {
    let db = fresh_db("run_cli").await;
    let client = db_with_tables(&db).await;
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("log");
    let slot = format!("cli_{db}");
    let cfg = write_config(tmp.path(), &db, &slot, &log_dir);

    // pgoutput reads publications as of each change's WAL position: publish before writing.
    client
        .batch_execute("CREATE PUBLICATION pgfanout FOR TABLE items, events")
        .await
        .unwrap();
    let migrate = pgfanout(&["migrate"], &cfg);
    let said = String::from_utf8_lossy(&migrate.stderr);
    assert!(migrate.status.success(), "{said}");
    let versions: Vec<String> = pgfanout::state::MIGRATIONS
        .iter()
        .map(|m| m.version.to_string())
        .collect();
    let last = versions.last().unwrap();
    assert!(
        said.contains(&format!(
            "applied migration(s) {}; now at version {last}",
            versions.join(", ")
        )),
        "{said}"
    );
    let again = pgfanout(&["migrate"], &cfg);
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        said.contains(&format!("is up to date (version {last})")),
        "{said}"
    );
    create_slot(&client, &slot).await;
    client
        .batch_execute("INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 10) g; DELETE FROM items WHERE id = 10;")
        .await
        .unwrap();
    // The insert position: the test server runs with synchronous_commit = off, so the write
    // position (pg_current_wal_lsn) can still be before the commit.
    let endpos = wal_insert_lsn(&client).await.to_string();
    let run = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || pgfanout(&["run", "--endpos", &endpos], &cfg)
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "run --endpos must stop by itself: {}",
        String::from_utf8_lossy(&run.stderr)
    );

    let status = pgfanout(&["status", "--json"], &cfg);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["log"]["oldest_seq"], 1);
    assert_eq!(status["log"]["last_seq"], 11);
    assert_eq!(status["checkpoint"]["last_seq"], 11);
    // The log's binding: this database and slot, the cluster's identifier, one lineage.
    let binding = &status["log"]["binding"];
    assert_eq!(binding["database"], db.as_str(), "{binding}");
    assert_eq!(binding["slot"], slot.as_str(), "{binding}");
    assert_eq!(binding["timeline"], 1, "{binding}");
    let system: String = client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(binding["system_identifier"], system.as_str(), "{binding}");
    assert_eq!(
        binding["lineage"].as_str().map(str::len),
        Some(32),
        "{binding}"
    );
    assert_eq!(status["slot"]["active"], false);
    let confirmed: Lsn = status["slot"]["confirmed_flush_lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let logged: Lsn = status["log"]["last_commit_end_lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        confirmed >= logged,
        "the slot was told everything the log holds: {status}"
    );
    let text = pgfanout(&["status"], &cfg);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("seq 1 to 11"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    let read = pgfanout(&["log", "read", "--from-seq", "3", "--limit", "2"], &cfg);
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let lines = json_lines(&read.stdout);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["seq"].as_u64(), lines[1]["seq"].as_u64()),
        (Some(3), Some(4))
    );
    assert_eq!(lines[0]["new"]["id"], "3");

    let to = pgfanout(&["log", "read", "--from-seq", "9", "--to-seq", "11"], &cfg);
    let tail: Vec<&str> = std::str::from_utf8(&to.stdout).unwrap().lines().collect();
    assert_eq!(tail.len(), 3, "seqs 9, 10 and the delete as 11");
    assert!(tail[2].contains("\"op\":\"delete\""), "{}", tail[2]);

    let beyond = pgfanout(&["log", "read", "--from-seq", "1000"], &cfg);
    assert!(beyond.status.success());
    assert!(beyond.stdout.is_empty(), "nothing beyond the end");

    let verify = pgfanout(&["log", "verify"], &cfg);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(report.contains("11 changes, seq 1 to 11"), "{report}");
    assert!(
        report.contains("ok      resume: log, checkpoint at seq 11 and slot"),
        "{report}"
    );

    // A flipped byte in the middle of the log is found and named.
    let seg = std::fs::read_dir(&log_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    let verify = pgfanout(&["log", "verify"], &cfg);
    assert!(!verify.status.success());
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(
        report.contains("PROBLEM records")
            && report.contains(&seg.file_name().unwrap().to_string_lossy().to_string()),
        "{report}"
    );
    drop_slot(&client, &slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_writes_logical_messages_while_idle() {
    let db = fresh_db("run_heartbeat").await;
    let client = db_with_tables(&db).await;
    client
        .batch_execute("CREATE PUBLICATION pgfanout FOR TABLE items, events")
        .await
        .unwrap();
    // A second slot only to watch what the daemon writes into this database's WAL.
    let watcher = format!("watch_{db}");
    create_slot(&client, &watcher).await;
    let tmp = tempfile::tempdir().unwrap();
    let slot = format!("hb_{db}");
    let cfg = write_config(tmp.path(), &db, &slot, &tmp.path().join("log"));
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace("[log]", "heartbeat_interval = \"100ms\"\n[log]");
    std::fs::write(&cfg, text).unwrap();
    let daemon = Daemon::start(&cfg);
    let heartbeats = wait_for("heartbeat messages in the WAL", || async {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
                     'proto_version', '1', 'publication_names', 'pgfanout', 'messages', 'true')
                 WHERE position('pgfanout_heartbeat'::bytea in data) > 0",
                &[&watcher],
            )
            .await
            .unwrap()
            .get(0);
        (n >= 3).then_some(n)
    })
    .await;
    assert!(heartbeats >= 3);
    assert!(daemon.stop().success());
    drop_slot(&client, &watcher).await;
    drop_slot(&client, &slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_problem_at_once_and_passes_once_set_up() {
    let db = fresh_db("run_check").await;
    let client = db_with_tables(&db).await;
    let tmp = tempfile::tempdir().unwrap();
    let slot = format!("check_{db}");
    let cfg = write_config(tmp.path(), &db, &slot, &tmp.path().join("log"));

    // Unmanaged, with a table that does not exist: three problems in one report.
    let broken = tmp.path().join("broken.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "tables = [\"items\", \"events\"]",
        "tables = [\"items\", \"nope\"]\nmanage = false",
    );
    std::fs::write(&broken, text).unwrap();
    let out = pgfanout(&["check"], &broken);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{report}");
    for line in [
        "PROBLEM tables",
        "PROBLEM publication",
        "PROBLEM slot",
        "public.nope",
        "3 problem(s)",
    ] {
        assert!(report.contains(line), "{line:?} missing from:\n{report}");
    }

    // Managed: what is missing will be created; nothing is a problem.
    let out = pgfanout(&["check"], &cfg);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("note    slot") && report.contains("all checks passed"),
        "{report}"
    );

    // After a run everything exists.
    client
        .batch_execute("CREATE PUBLICATION pgfanout FOR TABLE items, events")
        .await
        .unwrap();
    create_slot(&client, &slot).await;
    let out = pgfanout(&["migrate"], &cfg);
    assert!(out.status.success());
    let out = pgfanout(&["check"], &cfg);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("ok      slot") && report.contains("ok      state database"),
        "{report}"
    );
    drop_slot(&client, &slot).await;
}

// ---- Recovery: what a restart cannot see by itself is refused, or healed where provable ----

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A source database with published tables, a config for it, and a first run that logged
/// `rounds` of the workload; returns (client, tempdir, config, log dir, slot).
async fn logged_source(
    prefix: &str,
    rounds: u32,
) -> (
    tokio_postgres::Client,
    tempfile::TempDir,
    PathBuf,
    PathBuf,
    String,
) {
    let db = fresh_db(prefix).await;
    let client = db_with_tables(&db).await;
    client
        .batch_execute(
            "CREATE PUBLICATION pgfanout FOR TABLE items, events; CREATE TABLE unpublished (x int)",
        )
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("log");
    let slot = format!("rec_{db}");
    let cfg = write_config(tmp.path(), &db, &slot, &log_dir);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[source]", "[source]\nmanage = true");
    std::fs::write(&cfg, text).unwrap();
    // The first run creates the slot; only what commits after it is decoded.
    let first = run_to_now(&client, &cfg, &[]).await;
    assert!(first.status.success(), "{}", stderr(&first));
    workload(db.clone(), rounds, false).await;
    let run = run_to_now(&client, &cfg, &[]).await;
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(!read_log(&log_dir).is_empty());
    (client, tmp, cfg, log_dir, slot)
}

/// Every file of the log directory and its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("LOCK") && p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_while_stopped_is_refused_until_recreate_slot_continues_the_numbering() {
    let (client, _tmp, cfg, log_dir, slot) = logged_source("rec_slot", 5).await;
    let before = read_log(&log_dir);
    let last = before.last().unwrap().seq;
    drop_slot(&client, &slot).await;
    client
        .batch_execute("INSERT INTO items VALUES (100000, 'lost while the slot was gone')")
        .await
        .unwrap();

    let refused = run_to_now(&client, &cfg, &[]).await;
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains(&format!("replication slot \"{slot}\" does not exist"))
            && err.contains(&format!("holds seqs up to {last}"))
            && err.contains("--recreate-slot"),
        "{err}"
    );
    // Refusing created nothing: no slot, no new change.
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
    // `log verify` and `check` say the same before anything runs.
    for args in [&["log", "verify"][..], &["check"][..]] {
        let out = pgfanout(args, &cfg);
        assert!(!out.status.success());
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            report.contains("PROBLEM resume") && report.contains("--recreate-slot"),
            "{args:?}: {report}"
        );
    }

    // The way out: numbering continues after the last seq, never reusing one.
    let recreated = run_to_now(&client, &cfg, &["--recreate-slot"]).await;
    assert!(recreated.status.success(), "{}", stderr(&recreated));
    client
        .batch_execute("INSERT INTO items VALUES (100001, 'after')")
        .await
        .unwrap();
    let again = run_to_now(&client, &cfg, &[]).await;
    assert!(
        again.status.success(),
        "a restart resumes the new slot: {}",
        stderr(&again)
    );
    let after = read_log(&log_dir);
    assert_eq!(after[..before.len()], before[..]);
    let new: Vec<_> = after[before.len()..].iter().collect();
    assert_eq!(new.len(), 1, "only the row written after the new slot");
    assert_eq!(new[0].seq, last + 1);
    let verify = pgfanout(&["log", "verify"], &cfg);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    drop_slot(&client, &slot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_in_half_or_with_a_bad_last_commit_is_refused_and_left_as_it_was() {
    let (client, _tmp, cfg, log_dir, slot) = logged_source("rec_cut", 8).await;
    let seg = segments_of(&log_dir).pop().unwrap();
    let intact = std::fs::read(&seg).unwrap();

    // A flipped byte in the last commit record: its CRC fails where a torn write would end,
    // but the slot was confirmed past it.
    let mut flipped = intact.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x10;
    std::fs::write(&seg, &flipped).unwrap();
    let files = snapshot(&log_dir);
    let refused = run_to_now(&client, &cfg, &[]).await;
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(err.contains("this is damage, not a torn write"), "{err}");
    assert_eq!(snapshot(&log_dir), files, "a refusal changes nothing");
    assert!(!pgfanout(&["log", "verify"], &cfg).status.success());

    // The last segment cut in half.
    std::fs::write(&seg, &intact[..intact.len() / 2]).unwrap();
    let files = snapshot(&log_dir);
    let refused = run_to_now(&client, &cfg, &[]).await;
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("the change log in")
            && err.contains("ends at seq")
            && err.contains("was logged"),
        "{err}"
    );
    assert_eq!(snapshot(&log_dir), files);
    let verify = pgfanout(&["log", "verify"], &cfg);
    assert!(!verify.status.success());

    // Restored, it resumes.
    std::fs::write(&seg, &intact).unwrap();
    let resumed = run_to_now(&client, &cfg, &[]).await;
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    drop_slot(&client, &slot).await;
}

fn segments_of(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_from_another_cluster_is_refused_naming_the_system_identifier() {
    let (client, tmp, cfg, log_dir, slot) = logged_source("rec_foreign", 3).await;
    // A second cluster with a database of the same name, the same tables and slot name.
    let other = tokio::task::spawn_blocking(|| {
        pgfanout_testkit::localpg::LocalPostgres::start(&Default::default()).unwrap()
    })
    .await
    .unwrap();
    let db: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    other.create_database(&db).await.unwrap();
    let oc = other.sql(&db).await.unwrap();
    oc.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         CREATE TABLE events (id serial PRIMARY KEY, item int, kind text);
         CREATE PUBLICATION pgfanout FOR TABLE items, events;",
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let url = url_on(server(), &db);
    assert!(text.contains(&url));
    let foreign_cfg = tmp.path().join("foreign.toml");
    std::fs::write(&foreign_cfg, text.replace(&url, &url_on(&other, &db))).unwrap();
    let files = snapshot(&log_dir);
    let refused = run_to_now(&oc, &foreign_cfg, &[]).await;
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("was written from another source: its system identifier"),
        "{err}"
    );
    assert_eq!(snapshot(&log_dir), files);
    let slots: i64 = oc
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "nothing was created on the foreign cluster");
    drop_slot(&client, &slot).await;
}

/// An ext4 filesystem on a loop device whose backing file lives on a small tmpfs: once the tmpfs is full, writes to
/// the loop device fail and fsync returns EIO, as on a thin-provisioned disk that ran out.
/// Unmounted and detached when dropped.
struct FillingDisk {
    root: tempfile::TempDir,
    loop_dev: String,
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed (this test needs root and loop devices): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl FillingDisk {
    fn new(backing_mb: u32) -> FillingDisk {
        let root = tempfile::tempdir().unwrap();
        let back = root.path().join("back");
        let mnt = root.path().join("mnt");
        std::fs::create_dir_all(&back).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let p = |p: &Path| p.to_str().unwrap().to_owned();
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={backing_mb}m"),
                "tmpfs",
                &p(&back),
            ],
        );
        let img = back.join("disk.img");
        sh("truncate", &["-s", "256M", &p(&img)]);
        sh("mkfs.ext4", &["-q", "-F", &p(&img)]);
        let loop_dev = sh("losetup", &["-f", "--show", &p(&img)]);
        sh("mount", &["-o", "errors=continue", &loop_dev, &p(&mnt)]);
        FillingDisk { root, loop_dev }
    }

    fn mnt(&self) -> PathBuf {
        self.root.path().join("mnt")
    }

    /// Gives the backing store room.
    fn grow(&self, backing_mb: u32) {
        let back = self.root.path().join("back");
        sh(
            "mount",
            &[
                "-o",
                &format!("remount,size={backing_mb}m"),
                back.to_str().unwrap(),
            ],
        );
    }

    /// Drops the filesystem's page cache by mounting it again, after the check an operator
    /// runs (exit code 1 means "errors corrected"): what a reboot would find on disk.
    fn remount(&self) {
        sh("umount", &[self.mnt().to_str().unwrap()]);
        let _ = Command::new("e2fsck")
            .args(["-fy", &self.loop_dev])
            .output();
        sh(
            "mount",
            &[
                "-o",
                "errors=continue",
                &self.loop_dev,
                self.mnt().to_str().unwrap(),
            ],
        );
    }
}

impl Drop for FillingDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mnt()).status();
        let _ = Command::new("losetup")
            .args(["-d", &self.loop_dev])
            .status();
        let _ = Command::new("umount")
            .arg(self.root.path().join("back"))
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_never_confirms_what_a_restart_could_lose() {
    let disk = FillingDisk::new(12);
    let db = fresh_db("rec_fsync").await;
    let client = db_with_tables(&db).await;
    client
        .batch_execute("CREATE PUBLICATION pgfanout FOR TABLE items, events")
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = disk.mnt().join("log");
    let slot = format!("s_{db}");
    let cfg = write_config(tmp.path(), &db, &slot, &log_dir);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[source]", "[source]\nmanage = true");
    std::fs::write(&cfg, text).unwrap();
    let daemon_log = tmp.path().join("daemon.log");
    let mut daemon = Daemon::start_logging(&cfg, "warn", &daemon_log);
    wait_streaming(&mut daemon, &client, &db).await;

    // About 40 MB of changes in 200 KB rows: more than the disk can take.
    const ROWS: i32 = 200;
    for i in 0..ROWS {
        client
            .execute(
                "INSERT INTO items VALUES ($1::int, repeat(md5($1::int::text), 6400))",
                &[&i],
            )
            .await
            .unwrap();
    }
    let status = tokio::task::spawn_blocking(move || daemon.0.wait().unwrap())
        .await
        .unwrap();
    assert!(!status.success(), "the writer must stop when fsync fails");
    let logged = std::fs::read_to_string(&daemon_log).unwrap();
    assert!(
        logged.contains("Input/output error") || logged.contains("No space"),
        "{logged}"
    );
    // Room is made and the filesystem mounted again (ext4 turns read-only after a failed
    // write even with errors=continue): the page cache is gone, and what is on disk is what
    // fsync made durable. The slot was never confirmed past it.
    let confirmed = confirmed_flush(&client, &slot).await;
    disk.grow(512);
    disk.remount();
    assert!(
        confirmed <= log_end(&log_dir).await,
        "the slot was confirmed to {confirmed}, past the log end on disk"
    );

    // The restart receives the rest again: every row once, in commit order, dense seqs.
    client
        .batch_execute("INSERT INTO events (item, kind) VALUES (-1, 'end')")
        .await
        .unwrap();
    let mut daemon = Daemon::start_logging(&cfg, "warn", &daemon_log);
    wait_streaming(&mut daemon, &client, &db).await;
    let changes = wait_for_end(&log_dir).await;
    assert!(daemon.stop().success());
    assert!(confirmed_flush(&client, &slot).await <= log_end(&log_dir).await);
    pgfanout::changelog::verify(&log_dir).unwrap();
    let ids: Vec<i32> = changes
        .iter()
        .filter(|c| c.change.relation.name == "items")
        .map(|c| match &c.change.op {
            Op::Insert { new } => match &new.0[0] {
                Datum::Text(t) => std::str::from_utf8(t).unwrap().parse().unwrap(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ids,
        (0..ROWS).collect::<Vec<_>>(),
        "every row once, in commit order"
    );
    let seqs: Vec<u64> = changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (1..=changes.len() as u64).collect::<Vec<_>>());
    pgfanout::changelog::verify(&log_dir).unwrap();
    drop_slot(&client, &slot).await;
}

/// Issue 11: a server restored from a backup is the same cluster on a new timeline. Where its
/// history forked before the log's end, the log holds transactions that server never had:
/// refused, naming the fork. Where it forked after, the timeline is accepted (and here its
/// slot, which a base backup does not carry, is what start-up refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restored_from_a_backup_taken_before_the_logs_end_is_refused_by_its_timeline() {
    use pgfanout_testkit::localpg::LocalPostgres;
    let primary =
        tokio::task::spawn_blocking(|| LocalPostgres::start(&Default::default()).unwrap())
            .await
            .unwrap();
    let db = "app";
    primary.create_database(db).await.unwrap();
    let client = primary.sql(db).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text);
             CREATE TABLE events (id serial PRIMARY KEY, item int, kind text);
             CREATE PUBLICATION pgfanout FOR TABLE items, events;",
        )
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("log");
    let on = |pg: &LocalPostgres, name: &str| {
        let cfg = write_config(tmp.path(), db, "s", &log_dir);
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(&url_on(server(), db), &url_on(pg, db))
            .replace("[source]", "[source]\nmanage = true");
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cfg = on(&primary, "primary.toml");
    let first = run_to_now(&client, &cfg, &[]).await;
    assert!(first.status.success(), "{}", stderr(&first));
    client
        .batch_execute("INSERT INTO items SELECT g, 'a' FROM generate_series(1, 5) g")
        .await
        .unwrap();
    assert!(run_to_now(&client, &cfg, &[]).await.status.success());
    let early = primary.restore_backup().unwrap();
    client
        .batch_execute("INSERT INTO items SELECT g, 'b' FROM generate_series(6, 9) g")
        .await
        .unwrap();
    assert!(run_to_now(&client, &cfg, &[]).await.status.success());
    let late = primary.restore_backup().unwrap();

    let early_client = early.sql(db).await.unwrap();
    let refused = run_to_now(&early_client, &on(&early, "early.toml"), &[]).await;
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains(
            "was written on timeline 1, but the server is on timeline 2, which left timeline 1 at"
        ) && err.contains("before the log's end"),
        "{err}"
    );
    let late_client = late.sql(db).await.unwrap();
    let refused = run_to_now(&late_client, &on(&late, "late.toml"), &[]).await;
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("replication slot \"s\" does not exist, but the change log")
            && !err.contains("timeline"),
        "{err}"
    );
}
