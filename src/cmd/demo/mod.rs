//! `pgfanout demo`: the whole mission on private servers, then removed.
//!
//! ```text
//!  source PostgreSQL (app) ──slot──▶ pgfanout run (a child process) ──▶ tenant_acme   (acme)
//!     ▲ workload: inserts, updates,        change log in a temp dir   ├─▶ tenant_globex (globex)
//!     │ deletes across 3 tenants                                      └─▶ ClickHouse analytics
//!                                                                         (every tenant)
//! ```
//!
//! It starts the testkit's PostgreSQL (the source and two tenant databases) and ClickHouse
//! when installed, writes a configuration, runs the daemon with a workload while a live view
//! shows each destination's state, applied seq, lag and rows, kills the daemon with SIGKILL
//! and starts it again, damages a tenant database and repairs it with `pgfanout replay` while
//! the workload goes on, then
//! stops the workload, waits for every destination to catch up and checks each target
//! against its projection of the source. Compiled into the binary only (`src/main.rs`).

mod compare;
mod stack;
mod view;
mod workload;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use pgfanout::cmd::status::Status;
use pgfanout::config::{Config, ConfigError};

use compare::{CompareError, Comparison, Target};
use stack::{Stack, StackError, Store, TENANTS};
use view::{Header, Row, Screen};
use workload::Workload;

/// How long the view is refreshed between two looks at the world.
const TICK: Duration = Duration::from_secs(1);
/// Longest wait for the initial snapshot, a restart, a repair or the final catch-up.
const WAIT: Duration = Duration::from_secs(120);
/// How long the daemon stays dead after SIGKILL while the workload goes on.
const DEAD_FOR: Duration = Duration::from_secs(2);
/// The destination the replay demonstration damages and repairs.
const DAMAGED: &str = "tenant_acme";

pub struct DemoOptions {
    /// How long the workload runs (the kill and the replay happen within it).
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("the demo's queries failed")]
    Sql(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Compare(#[from] CompareError),
    #[error("the demo's configuration is refused (a bug in the demo)")]
    Config(#[from] ConfigError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not complete within {}s: {detail}; the last lines of pgfanout run's log:\n{log}", WAIT.as_secs())]
    Timeout {
        what: String,
        detail: String,
        log: String,
    },
    #[error("pgfanout run exited on its own ({status}); the last lines of its log:\n{log}")]
    DaemonExited { status: ExitStatus, log: String },
    #[error("the workload stopped")]
    Workload(#[source] tokio_postgres::Error),
    #[error("interrupted; everything the demo started is stopped and removed")]
    Interrupted,
    #[error("{failed} of {total} check(s) failed (the daemon's log, with the servers, is removed; run again with RUST_LOG=debug to see more)")]
    ChecksFailed { failed: usize, total: usize },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// One line of the closing report.
struct CheckLine {
    ok: bool,
    what: String,
    text: String,
}

/// `pgfanout run` as a child process in its own process group (a Ctrl-C in the terminal is
/// the demo's to handle), its log (JSON lines) appended to a file. Killed when dropped.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(exe: &Path, config: &Path, log: &Path) -> Result<Daemon, DemoError> {
        use std::os::unix::process::CommandExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(format!("opening {}", log.display())))?;
        let child = std::process::Command::new(exe)
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,tokio_postgres=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .process_group(0)
            .spawn()
            .map_err(io(format!("starting {} run", exe.display())))?;
        Ok(Daemon { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, as an operator stops it; SIGKILL if it is still there after [`WAIT`].
    async fn terminate(mut self) -> Option<ExitStatus> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGKILL (std's kill), then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts Ctrl-C and SIGTERM: the first ends the workload early (the demo still checks
/// what it did), the next one ends the demo.
fn interrupts() -> watch::Receiver<u32> {
    let (tx, rx) = watch::channel(0);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        loop {
            let term_recv = async {
                match term.as_mut() {
                    Some(t) => t.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
                _ = term_recv => {}
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    rx
}

/// Where a destination's rows are read, kept open for the whole demo.
enum Conn {
    Postgres(tokio_postgres::Client),
    ClickHouse,
}

struct Demo {
    // Dropped first (field order): the daemon and the workload go before the servers.
    daemon: Option<Daemon>,
    workload: Option<Workload>,
    counts: Option<std::sync::Arc<workload::Counts>>,
    source: tokio_postgres::Client,
    conns: Vec<Conn>,
    stack: Stack,
    config: Config,
    config_path: PathBuf,
    daemon_log: PathBuf,
    exe: PathBuf,
    screen: Screen,
    started: Instant,
    phase: String,
    interrupts: watch::Receiver<u32>,
    checks: Vec<CheckLine>,
    /// Rows the final comparisons looked at.
    compared_rows: usize,
    // Removed last: the change log, the configuration and the daemon's log.
    _dir: tempfile::TempDir,
}

/// Runs the demo; Ok once every check passed.
pub async fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let interrupts = interrupts();
    let mut screen = Screen::new(std::io::stdout().is_terminal());
    screen.event("pgfanout demo: one PostgreSQL source fanned out per tenant into PostgreSQL and ClickHouse, on private servers that are removed at the end");
    screen.event("▶ starting a private PostgreSQL (source database `app`, tenant databases tenant_acme and tenant_globex) and ClickHouse");
    let (stack, skipped) = stack::start().await?;
    if let Some(note) = skipped {
        screen.event(&format!("  note: {note}"));
    }
    let dir = tempfile::Builder::new()
        .prefix("pgfanout-demo-")
        .tempdir()
        .map_err(io("creating the demo's temporary directory"))?;
    let config_path = stack.write_config(dir.path())?;
    screen.event(&format!(
        "  private servers: PostgreSQL on 127.0.0.1:{}{}; files in {} (all removed at the end)",
        stack.pg.port(),
        stack
            .ch
            .as_ref()
            .map_or_else(String::new, |c| format!(", ClickHouse on {}", c.url())),
        dir.path().display()
    ));
    let config = pgfanout::cmd::load_config(&config_path)?;
    let source = stack.sql(stack::SOURCE_DB).await?;
    let mut conns = Vec::new();
    for d in &stack.destinations {
        conns.push(match &d.store {
            Store::Postgres { database } => Conn::Postgres(stack.sql(database).await?),
            Store::ClickHouse => Conn::ClickHouse,
        });
    }
    screen.event(&format!(
        "  source: 3 tenants (acme, globex, initech) with users and contact channels; destinations: {}",
        stack
            .destinations
            .iter()
            .map(|d| format!("{} ({}, {})", d.name, d.kind(), d.projects().join("+")))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut demo = Demo {
        daemon: None,
        workload: None,
        counts: None,
        source,
        conns,
        stack,
        config,
        daemon_log: dir.path().join("pgfanout-run.log"),
        config_path,
        exe: std::env::current_exe().map_err(io("finding the pgfanout binary"))?,
        screen,
        started: Instant::now(),
        phase: "starting".into(),
        interrupts,
        checks: Vec::new(),
        compared_rows: 0,
        _dir: dir,
    };
    let result = demo.run(opts).await;
    demo.screen.keep();
    result
}

impl Demo {
    async fn run(&mut self, opts: DemoOptions) -> Result<(), DemoError> {
        // The daemon, and the initial snapshot of the rows that exist.
        self.start_daemon()?;
        self.event(&format!(
            "▶ pgfanout run started (pid {}): it creates the slot, copies the rows that exist (initial snapshot) and streams; its status page is http://{}/ (metrics at /metrics)",
            self.daemon.as_ref().map_or(0, Daemon::pid),
            self.stack.admin,
        ));
        self.phase = "initial snapshot".into();
        let Some(copied) = self.wait_equal("the initial snapshot", None).await? else {
            return Err(DemoError::Interrupted);
        };
        self.event(&format!(
            "  every destination holds its tenants' rows that existed before the slot ({copied} rows compared)"
        ));

        // The workload, with a SIGKILL and a replay in the middle.
        let writer = self.stack.sql(stack::SOURCE_DB).await?;
        let workload = Workload::start(writer, TENANTS.iter().map(|t| t.id).collect());
        self.counts = Some(workload.counts.clone());
        self.workload = Some(workload);
        self.event(&format!(
            "▶ workload started for {}: sign-ups, edits, verifications, users turning anonymous and back, deletions (Ctrl-C ends it early)",
            humantime::format_duration(opts.duration)
        ));
        self.phase = "streaming".into();
        let begin = Instant::now();
        if self.sleep_until(begin + opts.duration / 3).await? {
            self.sigkill_and_resume().await?;
            self.phase = "streaming".into();
            if self.sleep_until(begin + opts.duration * 2 / 3).await? {
                self.damage_and_replay().await?;
                self.phase = "streaming".into();
                self.sleep_until(begin + opts.duration).await?;
            }
        }
        if self.interrupted() > 0 {
            self.event("▶ interrupted: the workload ends now and the demonstrations not yet shown are skipped; the checks still run (interrupt again to stop at once)");
        }
        if let Some(w) = self.workload.take() {
            w.stop().await.map_err(DemoError::Workload)?;
        }
        self.event(&format!(
            "▶ workload stopped after {}",
            self.counts.as_ref().map_or_else(String::new, |c| c.line())
        ));

        // Catch-up, a clean stop, then the checks.
        self.phase = "catching up".into();
        self.catch_up().await?;
        let Some(daemon) = self.daemon.take() else {
            return Err(DemoError::Interrupted);
        };
        let status = daemon.terminate().await;
        self.check(
            status.is_some_and(|s| s.success()),
            "shutdown",
            match status {
                Some(s) if s.success() => {
                    "pgfanout run stopped on SIGTERM with exit status 0".into()
                }
                Some(s) => format!("pgfanout run stopped on SIGTERM with {s}"),
                None => "pgfanout run did not stop on SIGTERM".into(),
            },
        );
        self.phase = "stopped".into();
        self.refresh(true).await;
        self.screen.keep();
        self.final_checks().await?;

        let failed = self.checks.iter().filter(|c| !c.ok).count();
        self.event("\nchecks");
        for c in &self.checks {
            let mark = if c.ok { "ok     " } else { "PROBLEM" };
            println!("{mark} {}: {}", c.what, c.text);
        }
        if failed > 0 {
            println!(
                "the last lines of pgfanout run's log:\n{}",
                self.daemon_log_tail()
            );
            return Err(DemoError::ChecksFailed {
                failed,
                total: self.checks.len(),
            });
        }
        println!(
            "all {} checks passed; {} rows compared. Stopping the servers and removing their files.",
            self.checks.len(),
            self.compared_rows
        );
        Ok(())
    }

    fn event(&mut self, text: &str) {
        self.screen.event(text);
    }

    fn check(&mut self, ok: bool, what: impl Into<String>, text: impl Into<String>) {
        self.checks.push(CheckLine {
            ok,
            what: what.into(),
            text: text.into(),
        });
    }

    fn interrupted(&self) -> u32 {
        *self.interrupts.borrow()
    }

    fn start_daemon(&mut self) -> Result<(), DemoError> {
        self.daemon = Some(Daemon::start(
            &self.exe,
            &self.config_path,
            &self.daemon_log,
        )?);
        Ok(())
    }

    /// Fails when the daemon ended by itself.
    fn daemon_alive(&mut self) -> Result<(), DemoError> {
        if let Some(status) = self.daemon.as_mut().and_then(Daemon::exited) {
            self.daemon = None;
            return Err(DemoError::DaemonExited {
                status,
                log: self.daemon_log_tail(),
            });
        }
        Ok(())
    }

    fn daemon_log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.daemon_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Shows the world as `pgfanout status` and the targets see it.
    async fn refresh(&mut self, force: bool) {
        let status = pgfanout::cmd::status::status(&self.config).await;
        let mut rows = Vec::new();
        for (d, conn) in self.stack.destinations.iter().zip(&self.conns) {
            let reported = status
                .as_ref()
                .ok()
                .and_then(|s| s.destinations.iter().find(|x| x.name == d.name));
            let live = match (conn, &self.stack.ch) {
                (Conn::Postgres(db), _) => compare::live_rows(Target::Postgres(db)).await,
                (Conn::ClickHouse, Some(ch)) => {
                    compare::live_rows(Target::ClickHouse(ch, stack::CH_DATABASE)).await
                }
                (Conn::ClickHouse, None) => Vec::new(),
            };
            rows.push(Row {
                name: d.name.clone(),
                kind: d.kind(),
                state: reported.map_or_else(|| "-".into(), |r| r.state.clone()),
                applied: reported.map_or(0, |r| r.watermark),
                lag_changes: reported.map_or(0, |r| r.lag_changes),
                lag_seconds: reported.map_or(0.0, |r| r.lag_seconds),
                rows: live,
            });
        }
        let (log_seq, log_bytes, slot_lag) = match &status {
            Ok(s) => (
                s.log.last_seq,
                s.log.bytes,
                s.slot.as_ref().and_then(|s| s.lag_bytes),
            ),
            Err(_) => (0, 0, None),
        };
        let mut phase = self.phase.clone();
        if self.daemon.is_none() && self.phase != "stopped" {
            phase.push_str(" · pgfanout run is down");
        }
        let header = Header {
            elapsed: self.started.elapsed(),
            phase,
            workload: self
                .counts
                .as_ref()
                .map_or_else(|| "not started".into(), |c| c.line()),
            log_seq,
            log_bytes,
            slot_lag_bytes: slot_lag,
        };
        self.screen.table(&header, &rows, force);
    }

    /// Refreshes the view until `at`; false when interrupted first.
    async fn sleep_until(&mut self, at: Instant) -> Result<bool, DemoError> {
        loop {
            self.daemon_alive()?;
            if self.interrupted() > 0 {
                return Ok(false);
            }
            self.refresh(false).await;
            let now = Instant::now();
            if now >= at {
                return Ok(true);
            }
            let mut interrupts = self.interrupts.clone();
            tokio::select! {
                _ = tokio::time::sleep(TICK.min(at - now)) => {}
                _ = interrupts.changed() => {}
            }
        }
    }

    /// Every destination compared with its projection of the source.
    async fn comparisons(&self) -> Result<Vec<(String, Vec<Comparison>)>, DemoError> {
        let mut out = Vec::new();
        for (d, conn) in self.stack.destinations.iter().zip(&self.conns) {
            let target = match (conn, &self.stack.ch) {
                (Conn::Postgres(db), _) => Target::Postgres(db),
                (Conn::ClickHouse, Some(ch)) => Target::ClickHouse(ch, stack::CH_DATABASE),
                (Conn::ClickHouse, None) => continue,
            };
            out.push((
                d.name.clone(),
                compare::compare(&self.source, target, &d.projects()).await?,
            ));
        }
        Ok(out)
    }

    /// Waits until every destination (or only `only`) equals its projection: the rows
    /// compared; None when interrupted; an error after [`WAIT`].
    async fn wait_equal(
        &mut self,
        what: &str,
        only: Option<&str>,
    ) -> Result<Option<usize>, DemoError> {
        let deadline = Instant::now() + WAIT;
        let at = self.interrupted();
        loop {
            self.daemon_alive()?;
            self.refresh(false).await;
            let all = self.comparisons().await?;
            let relevant = all
                .iter()
                .filter(|(name, _)| only.is_none_or(|o| o == name));
            let mut rows = 0;
            let mut equal = true;
            for (_, tables) in relevant {
                for t in tables {
                    equal &= t.equal();
                    rows += t.expected;
                }
            }
            if equal {
                return Ok(Some(rows));
            }
            if self.interrupted() > at {
                return Ok(None);
            }
            if Instant::now() >= deadline {
                let detail: Vec<String> = all
                    .iter()
                    .flat_map(|(name, tables)| {
                        tables
                            .iter()
                            .filter(|t| !t.equal())
                            .map(move |t| format!("{name}.{}: {}", t.table, t.describe()))
                    })
                    .collect();
                return Err(DemoError::Timeout {
                    what: what.to_owned(),
                    detail: detail.join("; "),
                    log: self.daemon_log_tail(),
                });
            }
            tokio::time::sleep(TICK / 2).await;
        }
    }

    /// kill -9, a pause while the workload goes on, a restart: the daemon resumes after the
    /// last commit durable in its change log and the slot resends the rest.
    async fn sigkill_and_resume(&mut self) -> Result<(), DemoError> {
        self.phase = "SIGKILL and resume".into();
        let before = pgfanout::cmd::status::status(&self.config).await.ok();
        let (seq, checkpoint) = before.as_ref().map_or((0, None), |s| {
            (s.log.last_seq, s.checkpoint.as_ref().map(|c| c.last_seq))
        });
        let Some(daemon) = self.daemon.take() else {
            return Ok(());
        };
        let pid = daemon.pid();
        drop(daemon); // SIGKILL
        self.event(&format!(
            "▶ kill -9 {pid}: pgfanout run is gone without a chance to flush or checkpoint (its change log was at seq {seq}, its last checkpoint at seq {}); the workload keeps writing",
            checkpoint.map_or_else(|| "-".into(), |c| c.to_string())
        ));
        // Interrupted or not, it starts again: the checks need it.
        self.sleep_until(Instant::now() + DEAD_FOR).await?;
        let offset = std::fs::metadata(&self.daemon_log).map_or(0, |m| m.len());
        self.start_daemon()?;
        let deadline = Instant::now() + WAIT;
        let resumed = loop {
            self.daemon_alive()?;
            if self.interrupted() > 1 {
                return Err(DemoError::Interrupted);
            }
            if let Some(seq) = resumed_after(&self.daemon_log, offset) {
                break Some(seq);
            }
            if Instant::now() >= deadline {
                break None;
            }
            self.refresh(false).await;
            tokio::time::sleep(TICK / 4).await;
        };
        let pid = self.daemon.as_ref().map_or(0, Daemon::pid);
        match resumed {
            Some(r) => {
                self.event(&format!(
                    "▶ pgfanout run started again (pid {pid}): it resumed after seq {r}, the last transaction durable in its change log; PostgreSQL resends the rest from the slot and each destination continues from its own watermark"
                ));
                // The checkpoint records only what the log held durably: a resume never falls behind it.
                let ok = checkpoint.is_none_or(|c| r as i64 >= c);
                self.check(
                    ok,
                    "kill -9 and resume",
                    format!(
                        "killed with the log at seq {seq} (checkpoint {}), resumed after seq {r}: nothing durable was lost, nothing is numbered twice (the log check and the comparisons below cover every change)",
                        checkpoint.map_or_else(|| "-".into(), |c| c.to_string())
                    ),
                );
            }
            None => self.check(
                false,
                "kill -9 and resume",
                format!(
                    "pgfanout run did not log that it resumed within {}s",
                    WAIT.as_secs()
                ),
            ),
        }
        Ok(())
    }

    /// Deletes rows of a tenant database behind pgfanout's back, then repairs it with
    /// `pgfanout replay` from the oldest seq the log holds, while everything keeps running.
    async fn damage_and_replay(&mut self) -> Result<(), DemoError> {
        let database = self.stack.destinations.iter().find_map(|d| match &d.store {
            Store::Postgres { database } if d.name == DAMAGED => Some(database.clone()),
            _ => None,
        });
        let Some(database) = database else {
            return Ok(());
        };
        let db = &self.stack.sql(&database).await?;
        self.phase = "replay".into();
        let project = TENANTS[0].project;
        let mut deleted = Vec::new();
        for table in compare::TABLES {
            let ids: Vec<i64> = db
                .query(
                    &format!("DELETE FROM {table} WHERE id % 3 = 0 RETURNING id"),
                    &[],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            deleted.push((table, ids));
        }
        let count = |deleted: &[(&str, Vec<i64>)]| {
            deleted
                .iter()
                .map(|(t, ids)| format!("{} {t}", ids.len()))
                .collect::<Vec<_>>()
                .join(" and ")
        };
        self.event(&format!(
            "▶ damage: deleted {} rows from {DAMAGED} behind pgfanout's back (nothing changed in the source, so the daemon has nothing to apply)",
            count(&deleted)
        ));
        let from = pgfanout::cmd::status::status(&self.config)
            .await
            .ok()
            .and_then(|s| s.log.oldest_seq)
            .unwrap_or(1);
        self.refresh(false).await;
        let out = tokio::process::Command::new(&self.exe)
            .args(["replay", "--config"])
            .arg(&self.config_path)
            .args(["--destination", DAMAGED, "--from-seq", &from.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io("running pgfanout replay"))?;
        let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        self.event(&format!(
            "▶ pgfanout replay --destination {DAMAGED} --from-seq {from}: {said}"
        ));
        if !out.status.success() {
            self.check(
                false,
                "replay",
                format!("pgfanout replay failed ({})", out.status),
            );
            return Ok(());
        }
        // Every deleted row the source still has is back. The workload goes on meanwhile, so
        // a row may leave the source between the two reads: asked again until none is missing.
        let deadline = Instant::now() + WAIT;
        let (restored, missing) = loop {
            let (mut restored, mut missing) = (0, 0);
            for (table, ids) in &deleted {
                let (want, got) = compare::present(&self.source, db, table, project, ids).await?;
                restored += got.len();
                missing += want.difference(&got).count();
            }
            if missing == 0 || Instant::now() >= deadline {
                break (restored, missing);
            }
            if self.interrupted() > 1 {
                return Err(DemoError::Interrupted);
            }
            self.refresh(false).await;
            tokio::time::sleep(TICK / 2).await;
        };
        let total: usize = deleted.iter().map(|(_, ids)| ids.len()).sum();
        let text = format!(
            "{restored} of the {total} rows deleted from {DAMAGED} are back{}",
            if missing == 0 {
                ", and every one the source still has".to_owned()
            } else {
                format!("; {missing} the source still has are missing")
            }
        );
        self.event(&format!("  {text}; the workload goes on"));
        self.check(missing == 0 && restored > 0, "replay", text);
        Ok(())
    }

    /// Waits until every destination equals its projection and has applied the whole log.
    async fn catch_up(&mut self) -> Result<(), DemoError> {
        let at = self.interrupted();
        let deadline = Instant::now() + WAIT;
        loop {
            self.daemon_alive()?;
            self.refresh(false).await;
            let status = pgfanout::cmd::status::status(&self.config).await.ok();
            let behind = status.as_ref().map_or_else(
                || vec!["(status unavailable)".to_owned()],
                |s| behind(s, &self.stack),
            );
            if behind.is_empty() {
                let equal = self
                    .comparisons()
                    .await?
                    .iter()
                    .all(|(_, t)| t.iter().all(Comparison::equal));
                if equal {
                    let last = status.map_or(0, |s| s.log.last_seq);
                    self.check(
                        true,
                        "watermarks",
                        format!(
                            "every destination applied the change log up to its last seq, {last}"
                        ),
                    );
                    return Ok(());
                }
            }
            if self.interrupted() > at {
                return Err(DemoError::Interrupted);
            }
            if Instant::now() >= deadline {
                self.check(
                    false,
                    "watermarks",
                    format!(
                        "not caught up within {}s: {}",
                        WAIT.as_secs(),
                        if behind.is_empty() {
                            "watermarks at the end, but a target differs".into()
                        } else {
                            behind.join(", ")
                        }
                    ),
                );
                return Ok(());
            }
            tokio::time::sleep(TICK / 2).await;
        }
    }

    /// The comparisons of record, and `pgfanout log verify`.
    async fn final_checks(&mut self) -> Result<(), DemoError> {
        for (name, tables) in self.comparisons().await? {
            let d = self.stack.destinations.iter().find(|d| d.name == name);
            let (kind, projects) = d.map_or(("", Vec::new()), |d| (d.kind(), d.projects()));
            for t in tables {
                self.compared_rows += t.expected;
                let how = if kind == "clickhouse" {
                    " (live rows under FINAL, one per key)"
                } else {
                    ""
                };
                self.check(
                    t.equal(),
                    format!("{name}.{}", t.table),
                    format!("{}{how}; tenants {}", t.describe(), projects.join(", ")),
                );
            }
        }
        let out = tokio::process::Command::new(&self.exe)
            .args(["log", "verify", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io("running pgfanout log verify"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let problems: Vec<&str> = text.lines().filter(|l| l.starts_with("PROBLEM")).collect();
        self.check(
            out.status.success(),
            "log verify",
            if out.status.success() {
                "every record of the change log is intact, its seqs dense (no gap, none twice), and it may be resumed with its slot".to_owned()
            } else {
                format!(
                    "{}{}",
                    problems.join("; "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            },
        );
        Ok(())
    }
}

/// The destinations whose reported watermark is not the log's last seq.
fn behind(status: &Status, stack: &Stack) -> Vec<String> {
    stack
        .destinations
        .iter()
        .filter_map(|d| {
            let r = status.destinations.iter().find(|r| r.name == d.name);
            match r {
                Some(r) if r.watermark == status.log.last_seq => None,
                Some(r) => Some(format!(
                    "{} at seq {} of {}",
                    d.name, r.watermark, status.log.last_seq
                )),
                None => Some(format!("{} never reported", d.name)),
            }
        })
        .collect()
}

/// The seq `pgfanout run` said it resumed after, in the JSON log lines written past `offset`.
fn resumed_after(log: &Path, offset: u64) -> Option<u64> {
    let text = std::fs::read(log).ok()?;
    let from = usize::try_from(offset).ok()?.min(text.len());
    text[from..]
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "resuming")
        .and_then(|v| v["fields"]["seq"].as_u64())
}
