//! The fault-injection suite: every named failpoint of `src/failpoint.rs`, hit once with a
//! crash (the process ends as under SIGKILL) and once with an I/O error, while pgfanout streams
//! a mixed workload into a PostgreSQL and a ClickHouse destination. After each fault pgfanout
//! is started again without failpoints (when the fault ended it) and runs to an end marker;
//! then
//! - the change log holds exactly the changes of an undisturbed reference run over the same
//!   WAL, with the same seqs (from the oldest segment retention kept) — invariants 2, 9;
//! - every destination equals the source projected through its mappings (PostgreSQL: its
//!   rows; ClickHouse: the live rows under FINAL, each key once) and its watermark is the log's
//!   last seq — invariants 11, 13, 16. The PostgreSQL destination writes over two connections
//!   (parallel apply), so its points strike between their shares too — invariant 35;
//! - the slot's `confirmed_flush_lsn`, read once each process is gone, never passed what the
//!   log holds on disk: its last commit or the position its META file recorded — invariants
//!   8, 22, 23 (each restart is also accepted by start-up's resume rules).
//!
//! The reference reads the WAL with pgoutput protocol 1 and every case with protocol 2, on a
//! source whose `logical_decoding_work_mem` is 64 kB: the workload's larger transactions (one
//! with a subtransaction rolled back) are streamed to the cases before they commit, and each
//! fault strikes around them too — invariant 38.
//!
//! All cases share one source database, and every slot is created before the first change,
//! so each case reads the same WAL as the reference. The reference and the retention cases run
//! while the workload writes (retention deletes a segment only once the destinations reported
//! that they are past it, and that takes seconds); the others read their slot's backlog
//! afterwards, a few at a time.
//!
//! Compiled only with the `failpoints` feature; the test command (`scripts/test.sh`, which CI
//! runs) always enables it, so this suite is never skipped there.
#![cfg(feature = "failpoints")]

mod support;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfanout::change::{Op, SequencedChange};
use pgfanout::changelog::LogRecord;
use pgfanout::failpoint::{self, CRASH};
use pgfanout::lsn::Lsn;
use support::*;

/// `(id, project, branch)`. The PostgreSQL destination serves the first two, ClickHouse all.
const TENANCIES: [(&str, &str, &str); 3] = [
    ("00000000-0000-0000-0000-00000000000a", "proj-a", "main"),
    ("00000000-0000-0000-0000-00000000000b", "proj-b", "main"),
    ("00000000-0000-0000-0000-00000000000c", "proj-b", "dev"),
];

const SOURCE_SCHEMA: &str = "
    CREATE TABLE tenancy (id uuid PRIMARY KEY, project_id text NOT NULL, branch_id text NOT NULL);
    CREATE TABLE project_user (
        tenancy_id uuid NOT NULL, id int NOT NULL, name text, email text, bio text,
        PRIMARY KEY (tenancy_id, id)
    );
    CREATE TABLE team (
        tenancy_id uuid NOT NULL, id int NOT NULL, name text NOT NULL,
        PRIMARY KEY (tenancy_id, id)
    );
    -- Its transactions have nothing to log.
    CREATE TABLE unpublished (x int);
    CREATE PUBLICATION pgfanout FOR TABLE tenancy, project_user, team;";

const MAPPINGS: &str = r#"
[tenants]
query = "SELECT id AS tenant, project_id, branch_id FROM public.tenancy"
table = "public.tenancy"

[[mappings]]
name = "users"
source = "public.project_user"
tenant_key = "tenancy_id"
target = "users"
key = ["project_id", "branch_id", "id"]
[mappings.columns]
project_id = "tenant.project_id"
branch_id = "tenant.branch_id"
id = "id"
name = "name"
email = "lower(email)"
bio = "bio"

[[mappings]]
name = "teams"
source = "public.team"
tenant_key = "tenancy_id"
target = "teams"
key = ["project_id", "branch_id", "id"]
[mappings.columns]
project_id = "tenant.project_id"
branch_id = "tenant.branch_id"
id = "id"
name = "name"
"#;

/// Per target table: the PostgreSQL destination's rows, ClickHouse's live columns, and the
/// source projection printing the same text (both destinations map the same way).
const TABLES: [(&str, &str, &str, &str); 2] = [
    (
        "users",
        "SELECT project_id, branch_id, id::text, name, email, md5(bio) FROM users",
        "project_id, branch_id, toString(id), name, email, lower(hex(MD5(bio)))",
        "SELECT t.project_id, t.branch_id, u.id::text, u.name, lower(u.email), md5(u.bio)
         FROM project_user u JOIN tenancy t ON t.id = u.tenancy_id
         WHERE u.tenancy_id = ANY($1::text[]::uuid[])",
    ),
    (
        "teams",
        "SELECT project_id, branch_id, id::text, name FROM teams",
        "project_id, branch_id, toString(id), name",
        "SELECT t.project_id, t.branch_id, m.id::text, m.name
         FROM team m JOIN tenancy t ON t.id = m.tenancy_id
         WHERE m.tenancy_id = ANY($1::text[]::uuid[])",
    ),
];

/// Workload rounds: about 14,000 row changes and 10 MiB of log. A backlog that size reaches a
/// destination in several batches (a catch-up reads 4096 records at a time), so the sink
/// points fire mid-run.
const ROUNDS: u32 = 1000;
/// Each writer's pause between rounds until the live cases' points fired: about 0.5 MiB of log
/// a second, so segments roll while the destinations keep up and report it (retention deletes
/// only what they are past).
const ROUND_PAUSE: Duration = Duration::from_millis(30);
/// Cases reading their backlog at once (two cores: each is a daemon and two destinations).
const PARALLEL: usize = 3;
/// SIGABRT: what `return(crash)` ends the process with.
const SIGABRT: i32 = 6;

/// What the armed process does when its point fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fired {
    /// Ends at once, as under SIGKILL (abort).
    Aborts,
    /// Stops with the injected error: exit status 1.
    Exits,
    /// Logs the injected error on a line with this text and goes on (a destination retries
    /// from its watermark; retention tries again with the next segment).
    GoesOn(&'static str),
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    point: &'static str,
    actions: String,
    fired: Fired,
    /// Runs while the workload writes (retention needs it).
    live: bool,
    /// Recovery: a crash first leaves an unsynced tail, then a torn frame is appended to it,
    /// so the armed start has a tail to cut.
    torn_tail: bool,
    retention: bool,
}

const DESTINATION_RETRIES: Fired = Fired::GoesOn("retrying from its watermark");

/// Every point × {crash, error}: `(point, calls it lets pass before it fires, what an error
/// does)`. Counts put each fault mid-run: at the sixth fsync; at the third META write (the
/// first binds the log at start, the others record idle positions, which the heartbeat
/// makes steady); at a destination's second batch (the backlog reaches it in several);
/// at the first segment retention deletes (it deletes only mid-run); in recovery before its
/// cut (0) and between the cut and its fsync (1).
fn cases() -> Vec<Case> {
    use failpoint::*;
    let points: [(&str, u32, Fired); 11] = [
        (LOG_AFTER_WRITE_BEFORE_FSYNC, 5, Fired::Exits),
        (PIPELINE_AFTER_FSYNC_BEFORE_FEEDBACK, 5, Fired::Exits),
        (LOG_AFTER_META_TMP_BEFORE_RENAME, 2, Fired::Exits),
        (PG_AFTER_DATA_BEFORE_WATERMARK, 1, DESTINATION_RETRIES),
        (PG_MID_BATCH, 1, DESTINATION_RETRIES),
        (PG_BETWEEN_PARTITIONS, 1, DESTINATION_RETRIES),
        (CH_AFTER_DATA_BEFORE_WATERMARK, 1, DESTINATION_RETRIES),
        (CH_MID_BATCH, 1, DESTINATION_RETRIES),
        (LOG_DURING_RETENTION, 0, Fired::GoesOn("retention failed")),
        (LOG_DURING_RECOVERY, 0, Fired::Exits),
        (LOG_DURING_RECOVERY, 1, Fired::Exits),
    ];
    let mut out = Vec::new();
    for (point, passes, on_error) in points {
        for (mode, fired) in [(CRASH, Fired::Aborts), (ERROR, on_error)] {
            let fire = format!("1*return({mode})");
            out.push(Case {
                name: format!("{}_{mode}_{passes}", point.replace("::", "_")),
                point,
                actions: match passes {
                    0 => fire,
                    n => format!("{n}*off->{fire}"),
                },
                fired,
                live: point == LOG_DURING_RETENTION,
                torn_tail: point == LOG_DURING_RECOVERY,
                retention: point == LOG_DURING_RETENTION,
            });
        }
    }
    out
}

/// What every case shares.
struct Shared {
    tmp: PathBuf,
    db: String,
    /// Each slot's `confirmed_flush_lsn` at its creation, before any change.
    created_at: HashMap<String, Lsn>,
    /// Live cases whose point has fired (the workload may stop once all have).
    live_fired: AtomicUsize,
}

fn slot_name(case: &str) -> String {
    format!("f_{case}")
}

/// Without snapshots: each case's log is compared with the reference run's, and a snapshot's
/// rows land wherever its chunks happen to meet the stream (tests/snapshot.rs kills snapshots).
fn write_config(dir: &Path, shared: &Shared, case: &Case, pg_db: &str, ch_db: &str) -> PathBuf {
    let path = dir.join("pgfanout.toml");
    let tables = ["public.tenancy", "public.project_user", "public.team"].map(toml_str);
    // Age-based retention with the size cap as trigger: checked whenever a segment is added.
    let retention = if case.retention {
        "retention_age = \"1s\"\nretention_mb = 1024\n"
    } else {
        "retention_age = \"forever\"\n"
    };
    let tenants: Vec<String> = TENANCIES[..2].iter().map(|t| toml_str(t.0)).collect();
    // The reference reads the WAL with protocol 1, every case with protocol 2: each case's
    // log must equal the reference's, so streamed transactions are checked at every point.
    let protocol = if case.name == reference_case().name {
        1
    } else {
        2
    };
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = {}\nslot = {}\ntables = [{}]\nstatus_interval = \"100ms\"\n\
             heartbeat_interval = \"200ms\"\nprotocol = {protocol}\n\
             [log]\ndir = {}\nsync_interval = \"20ms\"\nsegment_mb = 1\n{retention}\
             [state]\nschema = {}\ncheckpoint_interval = \"200ms\"\n\
             [snapshot]\nmode = \"never\"\nauto_resync = false\n{MAPPINGS}\n\
             [[destinations]]\nname = \"pg\"\nkind = \"postgres\"\nurl = {}\n\
             tenants = [{}]\nmappings = [\"users\", \"teams\"]\n\
             flush_interval = \"50ms\"\nbatch_rows = 200\napply_connections = 2\n\n\
             [[destinations]]\nname = \"ch\"\nkind = \"clickhouse\"\nurl = {}\ndatabase = {}\n\
             tenants = \"*\"\nmappings = [\"users\", \"teams\"]\n\
             version_column = \"sync_sequence_id\"\ndeleted_column = \"sync_is_deleted\"\n\
             tenant_columns = [\"project_id\", \"branch_id\"]\n\
             flush_interval = \"100ms\"\nbatch_rows = 500\n",
            toml_str(&url_on(server(), &shared.db)),
            toml_str(&slot_name(&case.name)),
            tables.join(", "),
            toml_str(&dir.join("log").display().to_string()),
            toml_str(&format!("st_{}", case.name)),
            toml_str(&url_on(server(), pg_db)),
            tenants.join(", "),
            toml_str(&clickhouse().url()),
            toml_str(ch_db),
        ),
    )
    .unwrap();
    path
}

/// One round of the workload: a multi-row transaction over both tables, a single-row update
/// and delete, a transaction updating both tables, every third round a transaction with
/// nothing to log, every tenth a team deleted. Returns the row changes it made.
async fn round(c: &tokio_postgres::Client, r: u32) -> u32 {
    let t = TENANCIES[r as usize % TENANCIES.len()].0;
    let b = r * 8;
    c.batch_execute(&format!(
        "BEGIN;
         INSERT INTO project_user (tenancy_id, id, name, email, bio)
             SELECT '{t}', g, 'User ' || g, 'U' || g || '@Example.com',
                    (SELECT string_agg(md5(g || '-' || k), '') FROM generate_series(1, 24) k)
             FROM generate_series({b} + 1, {b} + 8) g;
         INSERT INTO team (tenancy_id, id, name) VALUES ('{t}', {r}, 'Team {r}');
         COMMIT;"
    ))
    .await
    .unwrap();
    c.batch_execute(&format!(
        "UPDATE project_user SET name = name || ' (edited)' WHERE tenancy_id = '{t}' AND id = {b} + 1"
    ))
    .await
    .unwrap();
    c.batch_execute(&format!(
        "DELETE FROM project_user WHERE tenancy_id = '{t}' AND id = {b} + 2"
    ))
    .await
    .unwrap();
    c.batch_execute(&format!(
        "BEGIN;
         UPDATE project_user SET email = 'Moved' || id || '@Y.org'
             WHERE tenancy_id = '{t}' AND id IN ({b} + 3, {b} + 4);
         UPDATE team SET name = name || '!' WHERE tenancy_id = '{t}' AND id = {r};
         COMMIT;"
    ))
    .await
    .unwrap();
    let mut changes = 8 + 1 + 1 + 1 + 2 + 1;
    if r % 25 == 5 {
        // Past the source's 64 kB logical_decoding_work_mem: protocol 2 streams it before its
        // commit (the reference, on protocol 1, gets it at the commit), with a subtransaction
        // rolled back in the middle.
        let big = 1_000_000 + r * 1000;
        c.batch_execute(&format!(
            "BEGIN;
             INSERT INTO project_user (tenancy_id, id, name, email, bio)
                 SELECT '{t}', g, 'Big ' || g, 'B' || g || '@Example.com',
                        (SELECT string_agg(md5(g || '+' || k), '') FROM generate_series(1, 24) k)
                 FROM generate_series({big} + 1, {big} + 60) g;
             SAVEPOINT s;
             INSERT INTO project_user (tenancy_id, id, name, email, bio)
                 SELECT '{t}', g, 'Rolled back ' || g, 'R' || g || '@Example.com', repeat('r', 800)
                 FROM generate_series({big} + 61, {big} + 100) g;
             ROLLBACK TO s;
             INSERT INTO project_user (tenancy_id, id, name, email, bio)
                 SELECT '{t}', g, 'Big ' || g, 'B' || g || '@Example.com', repeat('b', 800)
                 FROM generate_series({big} + 101, {big} + 140) g;
             COMMIT;"
        ))
        .await
        .unwrap();
        changes += 100;
    }
    if r.is_multiple_of(3) {
        c.batch_execute("INSERT INTO unpublished VALUES (1)")
            .await
            .unwrap();
    }
    if r % 10 == 9 {
        c.batch_execute(&format!(
            "DELETE FROM team WHERE tenancy_id = '{t}' AND id = {r}"
        ))
        .await
        .unwrap();
        changes += 1;
    }
    changes
}

/// One of the writers taking rounds until [`ROUNDS`], paced until `unpaced`; returns the row
/// changes it made.
async fn writer(db: String, next: Arc<AtomicU32>, unpaced: Arc<AtomicBool>) -> u64 {
    let c = sql(&db).await;
    let mut changes = 0u64;
    loop {
        let r = next.fetch_add(1, Ordering::Relaxed);
        if r >= ROUNDS {
            return changes;
        }
        changes += u64::from(round(&c, r).await);
        if !unpaced.load(Ordering::Relaxed) {
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }
}

const END_MARKER: &str = "end";

fn is_end_marker(c: &SequencedChange) -> bool {
    c.change.relation.name == "team"
        && matches!(&c.change.op, Op::Insert { new } if text(&c.change, new, "name") == Some(END_MARKER))
}

/// Whether the log's last change is the end marker (the workload's last). Read while the
/// daemon writes and deletes segments: a read that loses that race is a "not yet".
async fn log_has_end_marker(log_dir: &Path) -> bool {
    let dir = log_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let last = match pgfanout::changelog::summary(&dir) {
            Ok(s) if s.last_seq > 0 => s.last_seq,
            _ => return false,
        };
        let Ok(mut reader) = pgfanout::changelog::LogReader::open(&dir, last) else {
            return false;
        };
        matches!(reader.next_record(), Ok(Some(LogRecord::Change(c))) if is_end_marker(&c))
    })
    .await
    .unwrap()
}

/// Whether one line of the daemon's log holds every one of `texts`.
fn logged(log: &Path, texts: &[&str]) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .any(|l| texts.iter().all(|t| l.contains(t)))
}

fn injected(point: &str) -> String {
    format!("fault injected at failpoint {point}")
}

fn start(config: &Path, dir: &Path, failpoints: Option<&str>) -> Daemon {
    let env: Vec<(&str, &str)> = failpoints.map(|f| ("FAILPOINTS", f)).into_iter().collect();
    Daemon::start_logging_in(config, "warn", &dir.join("daemon.log"), Some(dir), &env)
}

/// Waits until the armed process exits, or (for [`Fired::GoesOn`]) logs that its point fired.
async fn wait_fired(daemon: &mut Daemon, case: &Case, log: &Path) -> Option<ExitStatus> {
    // A live case's point may fire only late in the workload.
    let deadline = Instant::now() + if case.live { WAIT * 3 } else { WAIT };
    loop {
        if let Some(status) = daemon.0 .0.try_wait().unwrap() {
            return Some(status);
        }
        if let Fired::GoesOn(line) = case.fired {
            if logged(log, &[line, &injected(case.point)]) {
                return None;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}: failpoint {}={} did not fire within {WAIT:?}",
            case.name,
            case.point,
            case.actions
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The process that held the slot is gone: the slot may not be confirmed past what the log
/// holds on disk (its last commit, or the META position), unless it never moved at all.
/// Returns what it saw, for the report.
async fn slot_within_log(
    shared: &Shared,
    source: &tokio_postgres::Client,
    case: &Case,
    when: &str,
) -> String {
    let slot = slot_name(&case.name);
    wait_for("the slot to be released", || async {
        let row = source
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        (!row.get::<_, bool>(0)).then_some(())
    })
    .await;
    let confirmed = confirmed_flush(source, &slot).await;
    let log_dir = shared.tmp.join(&case.name).join("log");
    let on_disk = log_end(&log_dir).await;
    assert!(
        Some(&confirmed) == shared.created_at.get(&slot) || confirmed <= on_disk,
        "{}, {when}: slot {slot} is confirmed up to {confirmed}, past what the change log holds on disk ({on_disk})",
        case.name
    );
    format!(
        "{when}: log on disk to seq {}, {on_disk}, slot confirmed {confirmed}",
        log_last_seq(&log_dir).await
    )
}

/// Appends a torn frame (a header cut short) to the last segment, as a write cut by a crash.
fn tear_tail(log_dir: &Path) {
    use std::io::Write;
    let last = std::fs::read_dir(log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .expect("the crashed run left a segment");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    f.write_all(&[0x40, 0x00, 0x00]).unwrap();
}

async fn ch_query(sql: String) -> Option<String> {
    tokio::task::spawn_blocking(move || clickhouse().query(&sql).ok())
        .await
        .unwrap()
}

/// What still differs between the destinations and the projection, or None when both hold
/// exactly the projection and their watermarks are the log's last seq.
async fn difference(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    ch_db: &str,
    log_dir: &Path,
) -> Option<String> {
    let last = log_last_seq(log_dir).await;
    let pg_mark = match target
        .query_opt(
            "SELECT seq FROM public._pgfanout_watermarks WHERE destination = 'pg'",
            &[],
        )
        .await
    {
        Ok(row) => row.map(|r| r.get::<_, i64>(0)),
        Err(_) => None,
    };
    if pg_mark != i64::try_from(last).ok() {
        return Some(format!(
            "the PostgreSQL watermark is {pg_mark:?}, the log's last seq {last}"
        ));
    }
    let ch_mark = ch_query(format!(
        "SELECT max(seq) FROM `{ch_db}`._pgfanout_watermarks WHERE destination = 'ch'"
    ))
    .await;
    if ch_mark.as_deref().map(str::trim) != Some(last.to_string().as_str()) {
        return Some(format!(
            "the ClickHouse watermark is {ch_mark:?}, the log's last seq {last}"
        ));
    }
    let pg_tenants: Vec<&str> = TENANCIES[..2].iter().map(|t| t.0).collect();
    let all_tenants: Vec<&str> = TENANCIES.iter().map(|t| t.0).collect();
    for (table, pg_rows, ch_columns, projection) in TABLES {
        let order = " ORDER BY 1, 2, 3";
        let want = text_rows(
            &source
                .query(&format!("{projection}{order}"), &[&pg_tenants])
                .await
                .unwrap(),
        );
        let got = match target.query(&format!("{pg_rows}{order}"), &[]).await {
            Ok(rows) => text_rows(&rows),
            Err(e) => return Some(format!("PostgreSQL {table}: {e}")),
        };
        if want != got || want.is_empty() {
            return Some(format!(
                "PostgreSQL {table}: {} rows, the projection {}; first difference {:?}",
                got.len(),
                want.len(),
                got.iter().zip(&want).find(|(g, w)| g != w)
            ));
        }
        let want: String = text_rows(
            &source
                .query(&format!("{projection}{order}"), &[&all_tenants])
                .await
                .unwrap(),
        )
        .iter()
        .map(|r| {
            let cells: Vec<&str> = r.iter().map(|c| c.as_deref().unwrap_or("\\N")).collect();
            cells.join("\t") + "\n"
        })
        .collect();
        let got = ch_query(format!(
            "SELECT {ch_columns} FROM `{ch_db}`.`{table}` FINAL WHERE sync_is_deleted = 0"
        ))
        .await
        .map(|t| sorted(&t));
        let want = sorted(&want);
        if got.as_deref() != Some(want.as_str()) {
            return Some(format!(
                "ClickHouse {table}: {:?} live rows, the projection {}; first difference {:?}",
                got.as_ref().map(|g| g.lines().count()),
                want.lines().count(),
                got.as_ref()
                    .and_then(|g| g.lines().zip(want.lines()).find(|(a, b)| a != b))
            ));
        }
        // Under FINAL each key once: no change became two rows.
        let once = ch_query(format!(
            "SELECT count() = uniqExact(project_id, branch_id, id) FROM `{ch_db}`.`{table}` FINAL"
        ))
        .await;
        if once.as_deref().map(str::trim) != Some("1") {
            return Some(format!(
                "ClickHouse {table}: a key appears more than once under FINAL"
            ));
        }
    }
    None
}

/// A case run to its end: its change log's directory, and what it saw.
type CaseRun = (PathBuf, Vec<String>);

/// Runs one case to its end.
async fn run_case(case: Case, shared: Arc<Shared>) -> CaseRun {
    let mut notes = Vec::new();
    let started = Instant::now();
    let dir = shared.tmp.join(&case.name);
    std::fs::create_dir_all(&dir).unwrap();
    let log_dir = dir.join("log");
    let daemon_log = dir.join("daemon.log");
    let pg_db = fresh_db(&format!("t_{}", case.name)).await;
    let ch_db = tokio::task::spawn_blocking({
        let name = format!("t_{}", case.name);
        move || fresh_ch_db(&name)
    })
    .await
    .unwrap();
    let config = write_config(&dir, &shared, &case, &pg_db, &ch_db);
    let source = sql(&shared.db).await;

    if case.torn_tail {
        let first = Case {
            point: failpoint::LOG_AFTER_WRITE_BEFORE_FSYNC,
            actions: format!("3*off->1*return({CRASH})"),
            fired: Fired::Aborts,
            ..case.clone()
        };
        let arm = format!("{}={}", first.point, first.actions);
        let mut daemon = start(&config, &dir, Some(&arm));
        let status = wait_fired(&mut daemon, &first, &daemon_log)
            .await
            .expect("a crash ends the process");
        assert_eq!(status.signal(), Some(SIGABRT), "{}: {status}", case.name);
        notes.push(slot_within_log(&shared, &source, &case, "crashed before the fsync").await);
        tear_tail(&log_dir);
        notes.push("a torn frame appended to the last segment".into());
    }

    let arm = format!("{}={}", case.point, case.actions);
    let mut daemon = start(&config, &dir, Some(&arm));
    if let Some(status) = wait_fired(&mut daemon, &case, &daemon_log).await {
        match case.fired {
            Fired::Aborts => {
                assert_eq!(
                    status.signal(),
                    Some(SIGABRT),
                    "{}: expected the crash, got {status}",
                    case.name
                );
                assert!(
                    logged(
                        &daemon_log,
                        &["failpoint: crashing the process", case.point]
                    ),
                    "{}: the log does not say which point crashed",
                    case.name
                );
                notes.push("aborted".into());
            }
            Fired::Exits => {
                assert_eq!(
                    status.code(),
                    Some(1),
                    "{}: expected exit 1 after the error, got {status}",
                    case.name
                );
                assert!(
                    logged(&daemon_log, &[&injected(case.point)]),
                    "{}: the process stopped, but not with the injected error",
                    case.name
                );
                notes.push("exited 1 with the injected error".into());
            }
            Fired::GoesOn(_) => panic!(
                "{}: the process should have gone on after the error, but ended with {status}",
                case.name
            ),
        }
        notes.push(slot_within_log(&shared, &source, &case, "after the fault").await);
        daemon = start(&config, &dir, None);
        notes.push("restarted without failpoints".into());
    } else {
        notes.push("logged the injected error and went on".into());
    }

    // To the end marker, and the destinations to the projection.
    let target = sql(&pg_db).await;
    let deadline = Instant::now() + if case.live { WAIT * 3 } else { WAIT };
    loop {
        if let Some(status) = daemon.0 .0.try_wait().unwrap() {
            panic!(
                "{}: pgfanout stopped with {status} after the fault",
                case.name
            );
        }
        let diff = if log_has_end_marker(&log_dir).await {
            difference(&source, &target, &ch_db, &log_dir).await
        } else {
            Some("the end marker is not in the change log yet".into())
        };
        let Some(diff) = diff else { break };
        assert!(
            Instant::now() < deadline,
            "{}: not converged within {WAIT:?}: {diff}",
            case.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = daemon.stop();
    assert!(
        status.success(),
        "{}: SIGTERM ended it with {status}",
        case.name
    );
    notes.push(slot_within_log(&shared, &source, &case, "stopped").await);
    notes.push(format!(
        "destinations equal to the projection; {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    (log_dir, notes)
}

/// Reads the case's log and compares it with the reference from its oldest change on.
fn compare_with_reference(
    name: &str,
    log_dir: &Path,
    reference: &[SequencedChange],
    retention: bool,
) -> Result<String, String> {
    pgfanout::changelog::verify(log_dir).map_err(|e| format!("{name}: verify: {e}"))?;
    let got = read_log(log_dir);
    let first = got.first().map_or(0, |c| c.seq);
    if !retention && first != 1 {
        return Err(format!("{name}: the log starts at seq {first}, not 1"));
    }
    if retention && first <= 1 {
        return Err(format!("{name}: retention deleted nothing"));
    }
    let want = reference
        .get(first.saturating_sub(1) as usize..)
        .unwrap_or(&[]);
    if got.len() != want.len() {
        return Err(format!(
            "{name}: {} changes from seq {first}, the reference {}",
            got.len(),
            want.len()
        ));
    }
    match got
        .iter()
        .zip(want)
        .find(|(g, w)| comparable(g) != comparable(w))
    {
        Some((g, w)) => Err(format!(
            "{name}: seq {} differs from the reference: {:?} vs {:?}",
            g.seq,
            comparable(g),
            comparable(w)
        )),
        None => Ok(format!(
            "log equal to the reference from seq {first} ({} changes)",
            got.len()
        )),
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failpoint_crashed_and_failed_ends_like_the_reference_and_the_projection() {
    let suite = Instant::now();
    // Both servers first (ClickHouse takes a few seconds to start).
    tokio::task::spawn_blocking(|| {
        clickhouse();
    })
    .await
    .unwrap();
    let db = fresh_db("faults").await;
    let client = sql(&db).await;
    client.batch_execute(SOURCE_SCHEMA).await.unwrap();
    // Walsenders of this database stream (protocol 2) or spill (protocol 1) any transaction
    // past 64 kB of decoded changes.
    client
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET logical_decoding_work_mem = '64kB'"
        ))
        .await
        .unwrap();
    for (id, project, branch) in TENANCIES {
        client
            .execute(
                "INSERT INTO tenancy VALUES ($1::text::uuid, $2, $3)",
                &[&id, &project, &branch],
            )
            .await
            .unwrap();
    }
    let reference = reference_case();
    // PGFANOUT_FAULT_CASES=text runs only the cases whose name contains it (to debug one).
    let only = std::env::var("PGFANOUT_FAULT_CASES").unwrap_or_default();
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| c.name.contains(&only))
        .collect();
    assert!(!cases.is_empty(), "no case matches {only:?}");
    // Every slot is created before the first change: they all see the same changes.
    let mut created_at = HashMap::new();
    for case in cases.iter().chain([&reference]) {
        let slot = slot_name(&case.name);
        create_slot(&client, &slot).await;
        let at = confirmed_flush(&client, &slot).await;
        created_at.insert(slot, at);
    }
    let tmp = tempfile::tempdir().unwrap();
    let shared = Arc::new(Shared {
        tmp: tmp.path().to_owned(),
        db: db.clone(),
        created_at,
        live_fired: AtomicUsize::new(0),
    });

    // The reference and the live cases while the workload writes.
    let mut results: Vec<(Case, Result<CaseRun, String>)> = Vec::new();
    let live: Vec<Case> = cases.iter().filter(|c| c.live).cloned().collect();
    let reference_run = tokio::spawn(run_reference(shared.clone()));
    let live_runs: Vec<_> = live
        .iter()
        .map(|c| {
            let (case, shared) = (c.clone(), shared.clone());
            tokio::spawn(async move {
                let fired = shared.clone();
                let name = case.name.clone();
                let point = case.point;
                let log = shared.tmp.join(&name).join("daemon.log");
                // Tells the workload once the point fired (it need not pace itself after).
                let watch = tokio::spawn(async move {
                    while !logged(&log, &[point]) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    fired.live_fired.fetch_add(1, Ordering::Relaxed);
                });
                let result = run_case(case, shared).await;
                watch.abort();
                result
            })
        })
        .collect();
    let next = Arc::new(AtomicU32::new(0));
    let unpaced = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(writer(db.clone(), next.clone(), unpaced.clone())))
        .collect();
    while !writers.iter().all(|w| w.is_finished()) {
        if shared.live_fired.load(Ordering::Relaxed) == live.len() {
            unpaced.store(true, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut expected = 0;
    for w in writers {
        expected += w.await.unwrap();
    }
    client
        .execute(
            "INSERT INTO team (tenancy_id, id, name) VALUES ($1::text::uuid, -1, $2)",
            &[&TENANCIES[0].0, &END_MARKER],
        )
        .await
        .unwrap();
    expected += 1;
    eprintln!(
        "workload: {ROUNDS} rounds, {expected} row changes, written in {:.1}s",
        suite.elapsed().as_secs_f64()
    );
    for (case, run) in live.into_iter().zip(live_runs) {
        results.push((case, run.await.map_err(panic_text)));
    }
    let reference_log = reference_run.await.map_err(panic_text);

    // The others from their slots' backlog, a few at a time.
    let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let backlog: Vec<_> = cases
        .iter()
        .filter(|c| !c.live)
        .cloned()
        .map(|case| {
            let (shared, permits) = (shared.clone(), permits.clone());
            let c = case.clone();
            (
                c,
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await.unwrap();
                    run_case(case, shared).await
                }),
            )
        })
        .collect();
    for (case, run) in backlog {
        results.push((case, run.await.map_err(panic_text)));
    }

    // Every log against the reference.
    let mut failures = Vec::new();
    match &reference_log {
        Ok(dir) => {
            let reference = read_log(dir);
            let seqs: Vec<u64> = reference.iter().map(|c| c.seq).collect();
            if seqs != (1..=reference.len() as u64).collect::<Vec<_>>()
                || reference.len() as u64 != expected
            {
                failures.push(format!(
                    "reference: {} changes (dense from 1: {}), the workload made {expected}",
                    reference.len(),
                    seqs.first() == Some(&1)
                ));
            }
            for (case, result) in &results {
                match result {
                    Ok((log, notes)) => {
                        match compare_with_reference(&case.name, log, &reference, case.retention) {
                            Ok(note) => eprintln!(
                                "{}={}: {}; {note}",
                                case.point,
                                case.actions,
                                notes.join("; ")
                            ),
                            Err(e) => failures.push(e),
                        }
                    }
                    Err(e) => failures.push(format!("{}: {e}", case.name)),
                }
            }
        }
        Err(e) => failures.push(format!("reference: {e}")),
    }
    // The cases streamed transactions in progress and the reference did not: the suite
    // covers protocol 2 as it claims (the statistics reach the view within a second or so).
    let streamed = wait_for("the slots' streaming statistics", || {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT coalesce(sum(stream_txns) FILTER (WHERE slot_name <> $1), 0)::int8,
                            coalesce(sum(stream_txns) FILTER (WHERE slot_name = $1), 0)::int8
                     FROM pg_stat_replication_slots WHERE slot_name LIKE 'f\\_%'",
                    &[&slot_name(&reference_case().name)],
                )
                .await
                .unwrap();
            let (cases, reference): (i64, i64) = (row.get(0), row.get(1));
            (cases > 0).then_some(reference)
        }
    })
    .await;
    if streamed != 0 {
        failures.push(format!(
            "the reference (protocol 1) streamed {streamed} transactions"
        ));
    }
    eprintln!(
        "{} cases in {:.1}s",
        results.len(),
        suite.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        // Keep the logs and daemon logs to look at.
        let kept = tmp.keep();
        panic!(
            "{} of {} cases failed (logs kept in {}):\n{}",
            failures.len(),
            results.len(),
            kept.display(),
            failures.join("\n")
        );
    }
    for case in cases.iter().chain([&reference]) {
        drop_slot(&client, &slot_name(&case.name)).await;
    }
}

/// The undisturbed run (no point armed), as a case for the helpers.
fn reference_case() -> Case {
    Case {
        name: "reference".into(),
        point: "",
        actions: String::new(),
        fired: Fired::Aborts,
        live: true,
        torn_tail: false,
        retention: false,
    }
}

/// The undisturbed run: no failpoint, to the end marker; its log is what every case's must be.
async fn run_reference(shared: Arc<Shared>) -> PathBuf {
    let case = reference_case();
    let dir = shared.tmp.join(&case.name);
    std::fs::create_dir_all(&dir).unwrap();
    let pg_db = fresh_db("t_reference").await;
    let ch_db = tokio::task::spawn_blocking(|| fresh_ch_db("t_reference"))
        .await
        .unwrap();
    let config = write_config(&dir, &shared, &case, &pg_db, &ch_db);
    let source = sql(&shared.db).await;
    let target = sql(&pg_db).await;
    let log_dir = dir.join("log");
    let mut daemon = start(&config, &dir, None);
    let deadline = Instant::now() + WAIT * 3;
    loop {
        if let Some(status) = daemon.0 .0.try_wait().unwrap() {
            panic!("the reference run stopped with {status}");
        }
        let diff = if log_has_end_marker(&log_dir).await {
            difference(&source, &target, &ch_db, &log_dir).await
        } else {
            Some("the end marker is not in the change log yet".into())
        };
        let Some(diff) = diff else { break };
        assert!(
            Instant::now() < deadline,
            "reference: not converged: {diff}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(daemon.stop().success());
    slot_within_log(&shared, &source, &case, "after the reference run").await;
    log_dir
}
