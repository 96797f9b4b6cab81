//! Fan-out: from the change log to every destination, through the tenants' mappings.
//!
//! ```text
//!                      ┌─ Router (mappings, tenant registry, destination index)
//!   change log ──▶ dispatcher thread ──chunk──▶ bounded queue ──▶ worker "acme"  ──▶ PostgresSink
//!        │                             ──chunk──▶ bounded queue ──▶ worker "globex" ──▶ …
//!        │                                        (full: detach)        │
//!        └──────────── own reader while detached / catching up ◀────────┘
//! ```
//!
//! - The dispatcher reads the log once and routes each change once for all destinations. It
//!   never blocks on a destination: a full queue detaches that destination.
//! - A detached destination (at start, after a failure, or after falling behind) reads the
//!   log itself from its watermark, with a router of its own, until it reaches the durable
//!   end; then it asks to be attached again. `worker.rs` states the rule that makes the
//!   hand-over lossless.
//! - Workers run as tasks on one runtime thread; the dispatcher is a thread of its own
//!   because log reads block. An idle destination costs a task and a queue, no connection:
//!   at most `[fanout] max_connections` destinations are connected at once, and an idle one
//!   disconnects (`connections.rs`, `worker.rs`).
//! - The watermark in each destination is the truth for resuming; what the workers report
//!   goes to the state database every few seconds for `pgfanout status`, and the lowest
//!   watermark protects the log from age-based retention.
//! - A mapping that no longer compiles after a schema change (or does not at start) stops
//!   only its destinations, held `failed` naming mapping and column; an expression that fails
//!   on a row stops the fan-out with the seq, table and column. A row whose tenant key is NULL
//!   belongs to no tenant and is routed nowhere.
//! - **Holds** (`state::HoldStore`): a destination stopped by an error retrying cannot fix is
//!   held `failed` — its worker waits, the others go on — until `pgfanout destination resume`
//!   deletes the hold; the reporter polls the holds with every report (every
//!   [`REPORT_EVERY`], so a resume takes effect within about two seconds) and wakes the
//!   worker. A restart retries a failed destination once ([`load_holds`]); failing again
//!   holds it again. A destination the change log lost changes for (the size cap
//!   `log.retention_mb` deleted what it had not taken, stopped, retrying or catching up
//!   alike) is held `needs resync`, loudly: it skips to the oldest change the log still
//!   holds and streams on, showing `needs resync` until resumed (accepting the gap) or
//!   resynced.

mod connections;
mod dispatch;
mod replay;
pub mod route;
mod router;
mod setup;
mod toast;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tracing::{info, warn};

use crate::changelog::{LogError, LogReader, LogRecord, Readers};
use crate::config::Config;
use crate::config::Tenants;
use crate::disposition::{Classify, ErrorKind};
use crate::fanout::route::{RouteError, SetupError};
use crate::pgconn::SqlConnectError;
use crate::problems::Problems;
use crate::report::Chain;
use crate::source::catalog::CatalogError;
use crate::state::{DestinationReport, Hold, HoldKind, StateDb, StateError, StoredHold};
use crate::telemetry::{self, live};
use crate::value::Timestamp;

pub use replay::{replay, ReplayReport};
pub use router::{Router, Routing, Tenancy};
pub use setup::{DestinationPlan, Setup};

/// Chunks queued per destination before it is detached, at least; see
/// [`dispatch::queue_chunks`].
const QUEUE_CHUNKS: usize = 64;
/// Destinations reading the log on their own at the same time.
const CATCH_UP_CONCURRENCY: usize = 4;
/// How often worker reports go to the state database and retention's floor is updated.
const REPORT_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("the destinations cannot be set up:{problems}")]
    Setup { problems: Problems },
    #[error("could not connect to {what}")]
    Connect {
        what: String,
        #[source]
        source: SqlConnectError,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("mapping {mapping}{}", seq.map(|s| format!(" (at change {s})")).unwrap_or_default())]
    Mapping {
        mapping: String,
        seq: Option<u64>,
        source: SetupError,
    },
    #[error("mapping {mapping} stopped at change {seq}: its source table changed and the mapping no longer fits it: {reason}\nHINT: fix the mapping (or the source table), then run `pgfanout destination resume` or restart; the destination resumes at this change")]
    MappingStopped {
        mapping: String,
        seq: u64,
        reason: String,
    },
    #[error("change {seq}, mapping {mapping}\nHINT: fix the mapping (a filter or coalesce) and restart; routing resumes at this change")]
    Route {
        seq: u64,
        mapping: String,
        source: RouteError,
    },
    #[error("change {seq}: the tenancy table {table} no longer has the columns [tenants].query reads; fix the query or the table and restart")]
    TenancyColumns { seq: u64, table: String },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("no destination named {name:?}; configured: {known}")]
    UnknownDestination { name: String, known: String },
    #[error("seq {from_seq} is beyond the change log's end: the log holds seq {oldest} to {end}; there is nothing to replay\nHINT: replay from a seq in that range (`pgfanout status` shows it)")]
    BeyondLog {
        from_seq: u64,
        oldest: u64,
        end: u64,
    },
    #[error("seq {from_seq} is no longer in the change log: the log holds seq {oldest} to {end} (retention removed what came before)\nHINT: replay from seq {oldest} or later; for older changes, resync the destination (`pgfanout resync`)")]
    BeforeLog {
        from_seq: u64,
        oldest: u64,
        end: u64,
    },
    #[error("the change log in {dir} holds no changes: there is nothing to replay")]
    EmptyLog { dir: String },
    #[error("destination {destination:?} does not serve tenant {tenant:?} (it serves: {served})\nHINT: replay a tenant the destination's `tenants` lists")]
    TenantNotServed {
        destination: String,
        tenant: String,
        served: String,
    },
    #[error("tenant {tenant:?} is not among the tenants [tenants].query returns\nHINT: check the tenant id (`--tenant` takes the value of the mappings' tenant_key)")]
    UnknownTenant { tenant: String },
    #[error("destination {destination}")]
    Destination {
        destination: String,
        #[source]
        source: crate::sink::SinkError,
    },
    #[error("the fan-out thread stopped unexpectedly")]
    Gone,
    /// Only with the `failpoints` feature (tests).
    #[error("stopped at failpoint {point}")]
    Failpoint {
        point: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for FanoutError {
    /// Starting over helps when the source database was unreachable at start-up.
    fn kind(&self) -> ErrorKind {
        match self {
            FanoutError::Connect { source, .. } => source.kind(),
            FanoutError::Catalog(e) => e.kind(),
            FanoutError::Destination { source, .. } => source.kind(),
            // Only the mapping's destinations stop (its router told each of them).
            FanoutError::MappingStopped { .. } => ErrorKind::Rejected,
            _ => ErrorKind::Definite,
        }
    }
}

/// Resolves once the stop flag is set. (Holds no borrow of the value across awaits, unlike
/// `wait_for`'s guard.)
/// Reads up to `max` records off the runtime (the log is synchronous file I/O), stopping
/// early before seq `until` or at the log's end. Returns the reader to continue with, the
/// records, and whether the end was reached. The one read loop of the workers catching up and
/// of `replay`.
async fn read_step(
    mut reader: LogReader,
    max: usize,
    until: Option<u64>,
) -> Result<Result<(LogReader, Vec<LogRecord>, bool), LogError>, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        let mut records = Vec::new();
        while records.len() < max {
            if until.is_some_and(|u| reader.next_seq() >= u) {
                return Ok((reader, records, false));
            }
            match reader.next_record()? {
                Some(r) => records.push(r),
                None => return Ok((reader, records, true)),
            }
        }
        Ok((reader, records, false))
    })
    .await
}

async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A destination writer's state, as `status` shows it (a hold, `failed` or `needs resync`,
/// shows instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationState {
    Starting,
    Streaming,
    CatchingUp,
    Retrying,
    /// Stopped by an error retrying cannot fix (a rejected value); waits for a resume while
    /// the daemon runs on.
    Failed,
    Stopped,
}

impl DestinationState {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationState::Starting => "starting",
            DestinationState::Streaming => "streaming",
            DestinationState::CatchingUp => "catching up",
            DestinationState::Retrying => "retrying",
            DestinationState::Failed => "failed",
            DestinationState::Stopped => "stopped",
        }
    }
}

/// Reads the holds at start-up. With `retry_failed` (a start of pgfanout, not a start-over
/// after a transient failure) each `failed` destination is retried once: its hold is cleared
/// (a resync it also needed stays) and failing again holds it again. Returns what is held
/// after that.
pub async fn load_holds(
    cfg: &Config,
    state: &StateDb,
    retry_failed: bool,
) -> Result<Vec<StoredHold>, StateError> {
    for h in state.holds().load_all().await? {
        let configured = cfg.destinations.iter().any(|d| d.name == h.name);
        if retry_failed && configured && h.hold.kind == HoldKind::Failed {
            warn!(destination = %h.name, since = %h.since, reason = %h.hold.reason, "destination failed before this start; retrying it once (failing again holds it again)");
            state.holds().clear_failed(&h.name).await?;
        }
    }
    state.holds().load_all().await
}

#[derive(Debug, Clone)]
struct Status {
    state: DestinationState,
    watermark: u64,
    applied_commit_time: Option<Timestamp>,
    last_error: Option<String>,
}

/// A destination's hold as this process knows it, and the changes to it not stored yet.
#[derive(Debug, Default)]
struct HoldSlot {
    current: Option<Hold>,
    /// In order: the hold, and the target table and column it failed at.
    unsaved: Vec<(Hold, Option<String>, Option<String>)>,
}

/// What the dispatcher, one worker and the reporter share.
#[derive(Debug)]
pub(crate) struct DestShared {
    /// The dispatcher does not send (set by either side).
    detached: AtomicBool,
    /// The worker reached the durable end on its own and wants chunks again.
    reattach: AtomicBool,
    status: Mutex<Status>,
    hold: Mutex<HoldSlot>,
    /// The first seq the destination would read from the log if it started over now: what
    /// it has taken while a session runs, its watermark + 1 otherwise; 0 before it is known.
    needs_from: AtomicU64,
    /// Wakes a `failed` worker: its hold was cleared, or became `needs resync`.
    resume: Notify,
    /// Wakes the reporter to store a new hold at once.
    wake_reporter: Arc<Notify>,
}

impl DestShared {
    fn new(hold: Option<Hold>, wake_reporter: Arc<Notify>) -> Self {
        DestShared {
            detached: AtomicBool::new(true),
            reattach: AtomicBool::new(false),
            status: Mutex::new(Status {
                state: DestinationState::Starting,
                watermark: 0,
                applied_commit_time: None,
                last_error: None,
            }),
            hold: Mutex::new(HoldSlot {
                current: hold,
                unsaved: Vec::new(),
            }),
            needs_from: AtomicU64::new(0),
            resume: Notify::new(),
            wake_reporter,
        }
    }

    fn hold_slot(&self) -> std::sync::MutexGuard<'_, HoldSlot> {
        self.hold.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hold_kind(&self) -> Option<HoldKind> {
        self.hold_slot().current.as_ref().map(|h| h.kind)
    }

    /// Holds the destination (stored by the reporter, at once).
    fn set_hold(&self, hold: Hold, table: Option<String>, column: Option<String>) {
        let mut slot = self.hold_slot();
        slot.current = Some(hold.clone());
        slot.unsaved.push((hold, table, column));
        drop(slot);
        self.wake_reporter.notify_one();
    }

    fn set_needs_from(&self, seq: u64) {
        self.needs_from.store(seq, Ordering::Relaxed);
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, state: DestinationState, error: Option<String>) {
        let mut s = self.status();
        s.state = state;
        if error.is_some() || matches!(state, DestinationState::Streaming) {
            s.last_error = error;
        }
    }

    fn record_write(&self, watermark: u64, commit_time: Option<Timestamp>) {
        let mut s = self.status();
        s.watermark = watermark;
        if commit_time.is_some() {
            s.applied_commit_time = commit_time;
        }
    }
}

/// The running fan-out. Dropping it without [`Fanout::stop`] detaches its threads, which end
/// at the next stop check.
pub struct Fanout {
    stop: watch::Sender<bool>,
    stop_flag: Arc<AtomicBool>,
    dispatcher: Option<std::thread::JoinHandle<()>>,
    writers: Option<std::thread::JoinHandle<()>>,
    failed: oneshot::Receiver<FanoutError>,
}

impl Fanout {
    /// Starts the dispatcher and one worker per destination. `keep_from` receives the lowest
    /// seq a destination still needs (for retention); `state` gets the workers' reports.
    /// `holds` are the destinations' holds at start ([`load_holds`]).
    pub fn start(
        cfg: &Config,
        setup: Arc<Setup>,
        readers: Readers,
        keep_from: Arc<AtomicU64>,
        holds: Vec<StoredHold>,
    ) -> Result<Fanout, FanoutError> {
        let (stop, stop_rx) = watch::channel(false);
        let stop_flag = Arc::new(AtomicBool::new(false));
        let (failed_tx, failed) = oneshot::channel();
        let mut links = Vec::new();
        let mut workers = Vec::new();
        let permits = Arc::new(Semaphore::new(CATCH_UP_CONCURRENCY));
        let connections = connections::ConnectionCap::new(cfg.fanout.max_connections);
        let mut shared_all = Vec::new();
        let wake_reporter = Arc::new(Notify::new());
        for (index, plan) in setup.destinations.iter().enumerate() {
            let (tx, rx) = mpsc::channel(dispatch::queue_chunks(plan.config.batch_rows));
            let hold = holds
                .iter()
                .find(|h| h.name == plan.config.name)
                .map(|h| h.hold.clone());
            let shared = Arc::new(DestShared::new(hold, wake_reporter.clone()));
            links.push(dispatch::Link::new(
                plan.config.name.clone(),
                tx,
                shared.clone(),
                dispatch::queue_ops(plan.config.batch_rows),
            ));
            shared_all.push((plan.config.name.clone(), shared.clone()));
            workers.push(worker::Worker {
                index,
                tables: plan.tables.clone(),
                plan: plan.clone(),
                setup: setup.clone(),
                readers: readers.clone(),
                rx,
                shared,
                stop: stop_rx.clone(),
                catch_up_permits: permits.clone(),
                connections: connections.clone(),
                idle_timeout: cfg.fanout.idle_timeout,
                metrics: worker::BatchMetrics::new(&plan.config.name),
            });
        }
        let reporter_readers = readers.clone();
        // Per-tenant series only for the tenants a destination lists by name, up to the cap.
        let (listed_tenants, left_out) = telemetry::cap_tenant_series(
            setup
                .destinations
                .iter()
                .map(|p| match &p.config.tenants {
                    Tenants::All => Vec::new(),
                    Tenants::Some(list) => {
                        let mut list: Vec<String> = list.iter().cloned().collect();
                        list.sort();
                        list
                    }
                })
                .collect(),
        );
        if left_out > 0 {
            warn!(
                cap = telemetry::TENANT_SERIES_CAP,
                left_out,
                "more tenants have a destination of their own than get per-tenant metrics; the destinations' own series cover the rest"
            );
        }
        // Built before any thread starts: without it no destination would ever be written, so its failure stops
        // the fan-out instead of leaving a thread that does nothing.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|_| FanoutError::Gone)?;
        let reader = readers.open(readers.durable_seq() + 1)?;
        let router = setup.router(None, None);
        let flag = stop_flag.clone();
        let dispatcher = std::thread::Builder::new()
            .name("fanout-dispatch".into())
            .spawn(move || {
                if let Err(e) = dispatch::run(reader, router, links, &flag) {
                    let _ = failed_tx.send(e);
                }
            })
            .map_err(|_| FanoutError::Gone)?;
        let state_conn = (cfg.state.conn.clone(), cfg.state.schema.clone());
        let writers = std::thread::Builder::new()
            .name("fanout-writers".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let tasks: Vec<_> =
                        workers.into_iter().map(|w| tokio::spawn(w.run())).collect();
                    let mut reporter = Reporter {
                        state_conn,
                        state: None,
                        shared: shared_all,
                        keep_from,
                        readers: reporter_readers,
                        listed_tenants,
                        heartbeat: live::task("fanout-reporter", REPORT_EVERY),
                    };
                    let mut stop = stop_rx;
                    let mut next = tokio::time::Instant::now();
                    while !*stop.borrow() {
                        let polled = tokio::time::Instant::now() >= next;
                        if polled {
                            next = tokio::time::Instant::now() + REPORT_EVERY;
                        }
                        reporter.report(polled).await;
                        tokio::select! {
                            _ = tokio::time::sleep_until(next) => {}
                            _ = wake_reporter.notified() => {}
                            _ = until_stopped(&mut stop) => {}
                        }
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                    reporter.report(false).await;
                    info!("destination writers stopped");
                });
            })
            .map_err(|_| FanoutError::Gone)?;
        Ok(Fanout {
            stop,
            stop_flag,
            dispatcher: Some(dispatcher),
            writers: Some(writers),
            failed,
        })
    }

    /// Resolves when the dispatcher fails (routing or the log); never while it runs.
    pub async fn failed(&mut self) -> FanoutError {
        match (&mut self.failed).await {
            Ok(e) => e,
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops the dispatcher and the workers (each applies what it holds first) and returns
    /// the dispatcher's failure, if it had one.
    pub async fn stop(mut self) -> Result<(), FanoutError> {
        self.stop_flag.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
        let dispatcher = self.dispatcher.take();
        let writers = self.writers.take();
        tokio::task::spawn_blocking(move || {
            if let Some(d) = dispatcher {
                let _ = d.join();
            }
            if let Some(w) = writers {
                let _ = w.join();
            }
        })
        .await
        .map_err(|_| FanoutError::Gone)?;
        match self.failed.try_recv() {
            Ok(e) => Err(e),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        self.stop_flag.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
    }
}

/// Publishes the workers' states: retention's floor, and the state database when it is
/// reachable (a status view must not stop the writers). Stores the holds the workers set,
/// holds `needs resync` the destinations the change log lost changes for, and notices holds
/// cleared by `pgfanout destination resume`.
struct Reporter {
    state_conn: (crate::pgconn::ConnInfo, String),
    state: Option<StateDb>,
    shared: Vec<(String, Arc<DestShared>)>,
    keep_from: Arc<AtomicU64>,
    readers: Readers,
    /// Per destination (in `shared`'s order), the tenants it lists by name, sorted, that get
    /// series of their own ([`telemetry::cap_tenant_series`]).
    listed_tenants: Vec<Vec<String>>,
    heartbeat: live::Task,
}

impl Reporter {
    /// One round; `poll` also reads the holds back (every [`REPORT_EVERY`]; a round woken
    /// to store a new hold does not).
    async fn report(&mut self, poll: bool) {
        let oldest = self.readers.oldest_seq();
        self.mark_lost(oldest);
        if self.state.is_none() {
            match StateDb::connect(&self.state_conn.0, &self.state_conn.1).await {
                Ok(s) => self.state = Some(s),
                Err(e) => {
                    warn!(error = %Chain(&e), "cannot report destination status to the state database")
                }
            }
        }
        if let Err(e) = self.sync_holds(poll).await {
            warn!(error = %Chain(&e), "cannot store or read destination holds in the state database");
            self.state = None;
        }
        let reports: Vec<DestinationReport> = self
            .shared
            .iter()
            .map(|(name, s)| {
                let st = s.status().clone();
                let hold = s.hold_slot().current.clone();
                DestinationReport {
                    name: name.clone(),
                    state: match &hold {
                        Some(h) => h.kind.as_str().to_owned(),
                        None => st.state.as_str().to_owned(),
                    },
                    watermark: st.watermark,
                    applied_commit_time: st.applied_commit_time.map(|t| t.pg_epoch_micros()),
                    last_error: match hold {
                        Some(h) if h.kind == HoldKind::Failed => Some(h.reason),
                        _ => st.last_error,
                    },
                    age_seconds: 0.0,
                }
            })
            .collect();
        // Age-based retention keeps what each destination still needs, except for one that
        // already lost changes: it resumes at whatever the log then holds.
        let floor = self
            .shared
            .iter()
            .zip(&reports)
            .filter(|((_, s), r)| {
                !(s.hold_kind() == Some(HoldKind::NeedsResync)
                    && oldest.is_some_and(|o| r.watermark + 1 < o))
            })
            .map(|(_, r)| r.watermark + 1)
            .min()
            .unwrap_or(u64::MAX);
        self.keep_from.store(floor, Ordering::Relaxed);
        self.publish(&reports);
        self.heartbeat.beat();
        if let Some(s) = &self.state {
            if let Err(e) = s.destinations().save(&reports).await {
                warn!(error = %Chain(&e), "cannot report destination status to the state database");
                self.state = None;
            }
        }
    }

    /// The destinations' metrics and their view for `/ready` and the status page: once per
    /// round, never per batch.
    fn publish(&self, reports: &[DestinationReport]) {
        let last = self.readers.last_durable();
        let log_seq = last.map_or(0, |c| c.last_seq);
        let log_time = last.map(|c| c.commit_time.pg_epoch_micros());
        let mut views = Vec::with_capacity(reports.len());
        for (r, tenants) in reports.iter().zip(&self.listed_tenants) {
            let lag_changes = log_seq.saturating_sub(r.watermark);
            // As `status` computes it: commit time of the log's last transaction minus that
            // of the last one applied.
            let lag_seconds = match (lag_changes, log_time, r.applied_commit_time) {
                (0, _, _) => 0.0,
                (_, Some(last), Some(applied)) => (last - applied).max(0) as f64 / 1e6,
                _ => 0.0,
            };
            let dest = || ("destination", r.name.clone());
            metrics::gauge!(telemetry::DEST_APPLIED_SEQ, &[dest()]).set(r.watermark as f64);
            metrics::gauge!(telemetry::DEST_LAG_CHANGES, &[dest()]).set(lag_changes as f64);
            metrics::gauge!(telemetry::DEST_LAG_SECONDS, &[dest()]).set(lag_seconds);
            for state in telemetry::DESTINATION_STATES {
                let on = if *state == r.state { 1.0 } else { 0.0 };
                metrics::gauge!(
                    telemetry::DEST_STATE,
                    &[dest(), ("state", (*state).to_owned())]
                )
                .set(on);
            }
            for tenant in tenants {
                let labels = [dest(), ("tenant", tenant.clone())];
                metrics::gauge!(telemetry::TENANT_LAG_CHANGES, &labels).set(lag_changes as f64);
                metrics::gauge!(telemetry::TENANT_LAG_SECONDS, &labels).set(lag_seconds);
            }
            views.push(live::DestinationView {
                name: r.name.clone(),
                state: r.state.clone(),
                applied_seq: r.watermark,
                lag_changes,
                lag_seconds,
            });
        }
        live::set_destinations(views);
    }

    /// A destination that needs changes the log no longer holds (the size cap deleted them)
    /// needs a resync: held so, loudly, and a stopped one is woken to stream on from what the
    /// log still holds. Stopped, retrying and catching-up destinations alike; the others are
    /// not affected.
    fn mark_lost(&self, oldest: Option<u64>) {
        let Some(oldest) = oldest else { return };
        for (name, s) in &self.shared {
            let from = s.needs_from.load(Ordering::Relaxed);
            if from == 0 || from >= oldest || s.hold_kind() == Some(HoldKind::NeedsResync) {
                continue;
            }
            let reason = format!(
                "the change log no longer holds changes {from} to {} that destination {name:?} had not applied (log.retention_mb deleted them); its tables miss them until it is resynced",
                oldest - 1
            );
            warn!(destination = %name, first_missed = from, oldest_in_log = oldest, "destination needs a resync: the change log size cap deleted changes it had not applied; it streams on from the oldest change the log holds");
            let hold = Hold {
                kind: HoldKind::NeedsResync,
                reason,
                seq: Some(from),
            };
            s.set_hold(hold, None, None);
            s.resume.notify_one();
        }
    }

    /// Stores the holds set since the last round; with `poll`, adopts what the state database
    /// holds: a hold cleared there (`pgfanout destination resume`) wakes its worker.
    async fn sync_holds(&mut self, poll: bool) -> Result<(), StateError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        for (name, s) in &self.shared {
            let unsaved = std::mem::take(&mut s.hold_slot().unsaved);
            for (i, (hold, table, column)) in unsaved.iter().enumerate() {
                if let Err(e) = state
                    .holds()
                    .set_at(name, hold, table.as_deref(), column.as_deref())
                    .await
                {
                    // Keep what is not stored yet, in order, for the next round.
                    let mut slot = s.hold_slot();
                    let newer = std::mem::take(&mut slot.unsaved);
                    slot.unsaved = unsaved[i..].to_vec();
                    slot.unsaved.extend(newer);
                    return Err(e);
                }
            }
        }
        if !poll {
            return Ok(());
        }
        let stored = state.holds().load_all().await?;
        for (name, s) in &self.shared {
            let mut slot = s.hold_slot();
            if !slot.unsaved.is_empty() {
                continue;
            }
            let now = stored
                .iter()
                .find(|h| &h.name == name)
                .map(|h| h.hold.clone());
            if slot.current == now {
                continue;
            }
            let was = slot.current.take();
            slot.current = now.clone();
            drop(slot);
            match (&was, &now) {
                (Some(w), None) => {
                    info!(destination = %name, hold = w.kind.as_str(), "destination hold cleared; resuming it");
                }
                (_, Some(n)) => {
                    info!(destination = %name, hold = n.kind.as_str(), "destination hold set in the state database");
                }
                (None, None) => {}
            }
            if was.is_some_and(|w| w.kind == HoldKind::Failed)
                && now.is_none_or(|n| n.kind != HoldKind::Failed)
            {
                s.resume.notify_one();
            }
        }
        Ok(())
    }
}
