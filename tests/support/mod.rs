//! Shared by the integration tests: one private PostgreSQL (and, on demand, one private
//! ClickHouse) per test binary, a database per test, and helpers that read the stream with a deadline (never a fixed sleep).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgfanout::change::RowChange;
use pgfanout::config::SourceConfig;
use pgfanout::pgconn::ConnInfo;
use pgfanout::source::{LogicalStream, SourceEvent};
use pgfanout::sql::QualifiedName;
use pgfanout_testkit::localch::LocalClickHouse;
use pgfanout_testkit::localpg::{LocalPostgres, Options};

/// Deadline for anything the tests wait on.
pub const WAIT: Duration = Duration::from_secs(60);

pub const SCRAM_USER: &str = "scram_user";
pub const MD5_USER: &str = "md5_user";
pub const PLAIN_USER: &str = "plain_user";
pub const PASSWORD: &str = "p@ss word'\"";

static SERVER: OnceLock<LocalPostgres> = OnceLock::new();

/// The test binary's server: logical WAL, TLS with a throw-away CA, and password-authenticated
/// TCP users for SCRAM, MD5 and cleartext.
pub fn server() -> &'static LocalPostgres {
    SERVER.get_or_init(|| {
        let hba = vec![
            format!("host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256"),
            format!("host all {MD5_USER} 127.0.0.1/32 md5"),
            format!("host all {PLAIN_USER} 127.0.0.1/32 password"),
        ];
        let pg = LocalPostgres::start(&Options {
            conf: vec![
                "max_replication_slots = 60".into(),
                "max_wal_senders = 60".into(),
            ],
            hba,
            tls: true,
        })
        .expect("start the private PostgreSQL");
        // Roles are cluster-wide: create them once. MD5 needs an md5-hashed password.
        let port = pg.port();
        let dir = pg.socket_dir().to_owned();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut cfg = tokio_postgres::Config::new();
                cfg.host_path(&dir)
                    .port(port)
                    .user("postgres")
                    .dbname("postgres");
                let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                let pw = PASSWORD.replace('\'', "''");
                client
                    .batch_execute(&format!(
                        "SET password_encryption = 'scram-sha-256';
                         CREATE ROLE {SCRAM_USER} LOGIN REPLICATION PASSWORD '{pw}';
                         CREATE ROLE {PLAIN_USER} LOGIN REPLICATION PASSWORD '{pw}';
                         SET password_encryption = 'md5';
                         CREATE ROLE {MD5_USER} LOGIN REPLICATION PASSWORD '{pw}';
                         CREATE ROLE no_repl LOGIN;"
                    ))
                    .await
                    .unwrap();
            })
        })
        .join()
        .unwrap();
        pg
    })
}

/// A new, empty database for one test.
pub async fn fresh_db(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("{prefix}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    server()
        .create_database(&name)
        .await
        .expect("create test database");
    name
}

static CLICKHOUSE: OnceLock<LocalClickHouse> = OnceLock::new();

/// The test binary's ClickHouse server, started on first use (a static is never dropped: its
/// watchdog stops it and removes its directory when the test binary exits).
pub fn clickhouse() -> &'static LocalClickHouse {
    CLICKHOUSE.get_or_init(|| LocalClickHouse::start().expect("start the private ClickHouse"))
}

/// A new, empty ClickHouse database for one test, on [`clickhouse`]. Blocking (a short HTTP
/// request).
pub fn fresh_ch_db(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("{prefix}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    clickhouse()
        .query(&format!("CREATE DATABASE `{name}`"))
        .unwrap_or_else(|e| panic!("create ClickHouse database {name}: {e}"));
    name
}

/// pgfanout's connection info for `db` on the shared test server, over its unix socket.
pub fn conninfo(db: &str) -> ConnInfo {
    pg_conninfo(server(), db)
}

/// pgfanout's connection info for `db` on `pg`, over its unix socket.
pub fn pg_conninfo(pg: &LocalPostgres, db: &str) -> ConnInfo {
    pg.socket_url(db)
        .parse()
        .expect("the private server's URL parses")
}

pub async fn sql(db: &str) -> tokio_postgres::Client {
    server()
        .sql(db)
        .await
        .expect("connect to the test database")
}

/// Source configuration for `db` over the unix socket; `tables` None publishes all tables.
pub fn source_config(db: &str, tables: Option<&[&str]>) -> SourceConfig {
    SourceConfig {
        conn: conninfo(db),
        slot: format!("slot_{db}"),
        publication: "pgfanout".into(),
        tables: tables.map(|t| t.iter().map(|n| QualifiedName::parse(n).unwrap()).collect()),
        manage: true,
        status_interval: Duration::from_millis(200),
        heartbeat_interval: None,
        protocol: pgfanout::config::Protocol::Auto,
    }
}

/// Reads events until `done` says so, failing the test after [`WAIT`].
pub async fn events_until(
    stream: &mut LogicalStream,
    mut done: impl FnMut(&[SourceEvent]) -> bool,
) -> Vec<SourceEvent> {
    let mut events = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !done(&events) {
            events.push(stream.next().await.expect("stream error"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; got {} events: {:#?}", events.len(), events));
    events
}

/// Reads until `n` row changes arrived; returns them.
pub async fn changes(stream: &mut LogicalStream, n: usize) -> Vec<RowChange> {
    let events = events_until(stream, |evs| {
        evs.iter()
            .filter(|e| matches!(e, SourceEvent::Change(_)))
            .count()
            >= n
    })
    .await;
    events
        .into_iter()
        .filter_map(|e| match e {
            SourceEvent::Change(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// The text of column `name` in a tuple of `change`'s relation.
pub fn text<'a>(
    change: &'a RowChange,
    tuple: &'a pgfanout::change::Tuple,
    name: &str,
) -> Option<&'a str> {
    let i = change
        .relation
        .columns
        .iter()
        .position(|c| c.name == name)
        .unwrap_or_else(|| panic!("no column {name} in {}", change.relation.name));
    match &tuple.0[i] {
        pgfanout::change::Datum::Text(b) => Some(std::str::from_utf8(b).unwrap()),
        _ => None,
    }
}

/// Polls `check` until it returns Some, failing after [`WAIT`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a pgoutput slot through SQL (its start point is now).
pub async fn create_slot(client: &tokio_postgres::Client, slot: &str) {
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap_or_else(|e| panic!("creating slot {slot}: {e}"));
}

/// Drops a slot once its walsender has let go of it.
pub async fn drop_slot(client: &tokio_postgres::Client, slot: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
        {
            Ok(_) => return,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "slot {slot} stays active"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("dropping slot {slot}: {e}"),
        }
    }
}

/// A child process killed when the test ends, also when it fails: a blocked reader of its
/// output must never hang the test binary.
pub struct Spawned(pub std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Spawned {
    /// Reads stdout and stderr to their ends and waits for the exit status.
    pub fn wait_output(&mut self) -> std::process::Output {
        use std::io::Read;
        let mut stderr = self.0.stderr.take().expect("stderr piped");
        let err = std::thread::spawn(move || {
            let mut buf = Vec::new();
            stderr.read_to_end(&mut buf).unwrap();
            buf
        });
        let mut stdout = Vec::new();
        if let Some(mut out) = self.0.stdout.take() {
            out.read_to_end(&mut stdout).unwrap();
        }
        let status = self.0.wait().unwrap();
        std::process::Output {
            status,
            stdout,
            stderr: err.join().unwrap(),
        }
    }

    /// Sends a signal (`-TERM`, `-KILL`, `-STOP`, `-CONT`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill {sig} failed");
    }
}

impl std::ops::Deref for Spawned {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// The JSON lines a command printed.
pub fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// A `pgfanout run` process, killed when dropped. `PGFANOUT_TEST_LOG` sets its log filter
/// (default `warn`).
pub struct Daemon(pub Spawned);

impl Daemon {
    pub fn start(config: &std::path::Path) -> Daemon {
        Daemon::start_with(config, &[])
    }

    /// `pgfanout run --config CONFIG ARGS`.
    pub fn start_with(config: &std::path::Path, args: &[&str]) -> Daemon {
        Daemon(Spawned(
            std::process::Command::new(env!("CARGO_BIN_EXE_pgfanout"))
                .arg("run")
                .arg("--config")
                .arg(config)
                .args(args)
                .env(
                    "RUST_LOG",
                    std::env::var("PGFANOUT_TEST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .unwrap(),
        ))
    }

    /// With the log filter `filter`, its stderr (the log) appended to `log`.
    pub fn start_logging(config: &std::path::Path, filter: &str, log: &std::path::Path) -> Daemon {
        Daemon::start_logging_in(config, filter, log, None, &[])
    }

    /// Like [`Daemon::start_logging`], running in `cwd` (where a crash would leave a core
    /// file) when given, with `env` added to its environment (`FAILPOINTS`).
    pub fn start_logging_in(
        config: &std::path::Path,
        filter: &str,
        log: &std::path::Path,
        cwd: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> Daemon {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgfanout"));
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", filter)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(file);
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        Daemon(Spawned(cmd.spawn().unwrap()))
    }

    pub fn signal(&self, sig: &str) {
        self.0.signal(sig);
    }

    /// Waits (off the runtime) for the daemon to exit by itself, failing the test after
    /// [`WAIT`]; its exit status.
    pub async fn exited(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.0 .0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "pgfanout run did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill9(mut self) {
        self.signal("-KILL");
        let _ = self.0.wait();
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.0.wait().unwrap()
    }
}

/// A `postgres://` URL for `db` on `pg`, over its unix socket.
pub fn url_on(pg: &LocalPostgres, db: &str) -> String {
    format!(
        "postgres://postgres@/{db}?host={}&port={}",
        pg.socket_dir().display(),
        pg.port()
    )
}

/// `s` as a TOML basic string (also usable as a quoted key).
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The last seq in the change log at `dir`.
pub async fn log_last_seq(dir: &Path) -> u64 {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || summary(&dir).last_seq)
        .await
        .unwrap()
}

/// The summary of the change log at `dir`, read while a daemon may be writing it: retention
/// can delete a segment between listing the directory and reading the segment, so a failed
/// read is tried again (a few times: a damaged log still fails).
pub fn summary(dir: &Path) -> pgfanout::changelog::LogSummary {
    for _ in 0..10 {
        if let Ok(s) = pgfanout::changelog::summary(dir) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    pgfanout::changelog::summary(dir).unwrap()
}

/// Runs `pgfanout ARGS --config CONFIG` to its end, off the runtime.
pub async fn cli(args: &[&str], config: &Path) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgfanout"));
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// The server's WAL insert position: everything committed so far lies before it (the test
/// server runs `synchronous_commit = off`, so the flushed position may not yet).
pub async fn wal_insert_lsn(client: &tokio_postgres::Client) -> pgfanout::lsn::Lsn {
    client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap()
}

/// Runs `pgfanout run ARGS --endpos <now>`: until everything written so far is in the log.
pub async fn run_to_now(
    client: &tokio_postgres::Client,
    cfg: &Path,
    args: &[&str],
) -> std::process::Output {
    let endpos = wal_insert_lsn(client).await.to_string();
    let mut all = vec!["run", "--endpos", &endpos];
    all.extend_from_slice(args);
    cli(&all, cfg).await
}

/// `pgfanout status --json`; its destinations by name.
pub async fn destination_status(config: &Path) -> serde_json::Map<String, serde_json::Value> {
    let out = cli(&["status", "--json"], config).await;
    assert!(
        out.status.success(),
        "pgfanout status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["destinations"]
        .as_array()
        .unwrap_or_else(|| panic!("no destinations in {status}"))
        .iter()
        .map(|d| (d["name"].as_str().unwrap().to_owned(), d.clone()))
        .collect()
}

/// Waits until the daemon streams from its slot: changes from then on reach it. Fails at once
/// if the daemon exits instead.
pub async fn wait_streaming(daemon: &mut Daemon, source: &tokio_postgres::Client, db: &str) {
    let slot = format!("s_{db}");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = daemon.0 .0.try_wait().unwrap() {
            panic!("pgfanout run exited with {status} before streaming");
        }
        let row = source
            .query_opt(
                // A slot being created is already active but decodes only transactions
                // that commit after its consistent point: wait for START_REPLICATION, which
                // comes after creation found that point.
                "SELECT 1 FROM pg_replication_slots s
                 JOIN pg_stat_replication r ON r.pid = s.active_pid
                 WHERE s.slot_name = $1 AND s.confirmed_flush_lsn IS NOT NULL
                   AND r.state IN ('catchup', 'streaming')",
                &[&slot],
            )
            .await
            .unwrap();
        if row.is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the daemon to stream from its slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGKILLs the daemon `kills` times at random moments (`min_ms` to `min_ms + 600` ms apart),
/// starting it again each time; returns the last one, running.
pub async fn kill_at_random_moments(
    mut daemon: Daemon,
    config: &Path,
    kills: u32,
    min_ms: u64,
) -> Daemon {
    for _ in 0..kills {
        let ms = min_ms + rand::random::<u64>() % 600;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        daemon.kill9();
        daemon = Daemon::start(config);
    }
    daemon
}

/// Stops the workload tasks and returns the rounds they ran, in all.
pub async fn stop_workload<T: std::iter::Sum<T>>(
    stop: &std::sync::atomic::AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<T>>,
) -> T {
    stop.store(true, Ordering::Relaxed);
    let mut rounds = Vec::with_capacity(tasks.len());
    for t in tasks {
        rounds.push(t.await.unwrap());
    }
    rounds.into_iter().sum()
}

/// Every durable record of the change log in `dir`, from the oldest it retains (none if it
/// does not exist yet).
pub fn records(dir: &Path) -> Vec<pgfanout::changelog::LogRecord> {
    if !dir.exists() {
        return Vec::new();
    }
    let oldest = summary(dir).oldest_seq.unwrap_or(1);
    let mut reader = pgfanout::changelog::LogReader::open(dir, oldest).unwrap();
    std::iter::from_fn(|| reader.next_record().unwrap()).collect()
}

/// The changes of the change log in `dir` (see [`records`]).
pub fn read_log(dir: &Path) -> Vec<pgfanout::change::SequencedChange> {
    records(dir)
        .into_iter()
        .filter_map(|r| match r {
            pgfanout::changelog::LogRecord::Change(c) => Some(c),
            pgfanout::changelog::LogRecord::Commit(_) => None,
        })
        .collect()
}

/// What two runs over the same WAL must agree on for a change: seq, LSN, xid, relation, op
/// and its tuples.
pub fn comparable(
    c: &pgfanout::change::SequencedChange,
) -> (u64, pgfanout::lsn::Lsn, u32, String, String, String) {
    let op = format!("{:?}", c.change.op);
    (
        c.seq,
        c.change.lsn,
        c.change.xid,
        c.change.relation.name.clone(),
        c.change.op.name().to_owned(),
        op,
    )
}

/// The slot's `confirmed_flush_lsn`.
pub async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> pgfanout::lsn::Lsn {
    client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap()
}

/// How far the log at `dir` vouches for the stream: its last commit's end, or the position
/// its META file recorded past it (transactions with nothing to log, an idle server).
pub async fn log_end(dir: &Path) -> pgfanout::lsn::Lsn {
    use pgfanout::lsn::Lsn;
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let summary = summary(&dir);
        let commit = summary.last_commit.map_or(Lsn::ZERO, |c| c.end_lsn);
        commit.max(summary.meta.map_or(Lsn::ZERO, |m| m.position.lsn))
    })
    .await
    .unwrap()
}

/// Rows of text cells (every column selected as text).
pub type Rows = Vec<Vec<Option<String>>>;

pub fn text_rows(rows: &[tokio_postgres::Row]) -> Rows {
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

/// Lines sorted (each ending in a newline): the two servers order uuids differently.
pub fn sorted(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines.iter().map(|l| format!("{l}\n")).collect()
}
