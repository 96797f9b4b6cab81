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
//!   because log reads block. An idle destination costs a task, a queue and a connection.
//! - The watermark in each destination is the truth for resuming; what the workers report
//!   goes to the state database every few seconds for `pgfanout status`, and the lowest
//!   watermark protects the log from age-based retention.
//! - Routing failures (a mapping that no longer compiles after a schema change, an expression
//!   that fails on a row) stop the fan-out with the seq, table and column: fail fast on
//!   schema. A row whose tenant key is NULL belongs to no tenant and is routed nowhere.

mod dispatch;
mod replay;
pub mod route;
mod router;
mod setup;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{info, warn};

use crate::changelog::{LogError, LogReader, LogRecord, Readers};
use crate::config::Config;
use crate::disposition::{Classify, ErrorKind};
use crate::fanout::route::{RouteError, SetupError};
use crate::pgconn::SqlConnectError;
use crate::problems::Problems;
use crate::report::Chain;
use crate::source::catalog::CatalogError;
use crate::state::{DestinationReport, StateDb};
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
    #[error("destination {destination}")]
    Destination {
        destination: String,
        #[source]
        source: crate::sink::SinkError,
    },
    #[error("the fan-out thread stopped unexpectedly")]
    Gone,
}

impl Classify for FanoutError {
    /// Starting over helps when the source database was unreachable at start-up.
    fn kind(&self) -> ErrorKind {
        match self {
            FanoutError::Connect { source, .. } => source.kind(),
            FanoutError::Catalog(e) => e.kind(),
            FanoutError::Destination { source, .. } => source.kind(),
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

/// A destination writer's state, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationState {
    Starting,
    Streaming,
    CatchingUp,
    Retrying,
    NeedsResync,
    /// Stopped by an error retrying cannot fix (a rejected value); the daemon runs on.
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
            DestinationState::NeedsResync => "needs resync",
            DestinationState::Failed => "failed",
            DestinationState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone)]
struct Status {
    state: DestinationState,
    watermark: u64,
    applied_commit_time: Option<Timestamp>,
    last_error: Option<String>,
}

/// What the dispatcher and one worker share.
#[derive(Debug)]
pub(crate) struct DestShared {
    /// The dispatcher does not send (set by either side).
    detached: AtomicBool,
    /// The worker reached the durable end on its own and wants chunks again.
    reattach: AtomicBool,
    status: Mutex<Status>,
}

impl DestShared {
    fn new() -> Self {
        DestShared {
            detached: AtomicBool::new(true),
            reattach: AtomicBool::new(false),
            status: Mutex::new(Status {
                state: DestinationState::Starting,
                watermark: 0,
                applied_commit_time: None,
                last_error: None,
            }),
        }
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
    pub fn start(
        cfg: &Config,
        setup: Arc<Setup>,
        readers: Readers,
        keep_from: Arc<AtomicU64>,
    ) -> Result<Fanout, FanoutError> {
        let (stop, stop_rx) = watch::channel(false);
        let stop_flag = Arc::new(AtomicBool::new(false));
        let (failed_tx, failed) = oneshot::channel();
        let mut links = Vec::new();
        let mut workers = Vec::new();
        let permits = Arc::new(Semaphore::new(CATCH_UP_CONCURRENCY));
        let mut shared_all = Vec::new();
        for (index, plan) in setup.destinations.iter().enumerate() {
            let (tx, rx) = mpsc::channel(dispatch::queue_chunks(plan.config.batch_rows));
            let shared = Arc::new(DestShared::new());
            links.push(dispatch::Link::new(
                plan.config.name.clone(),
                tx,
                shared.clone(),
            ));
            shared_all.push((plan.config.name.clone(), shared.clone()));
            workers.push(worker::Worker {
                index,
                plan: plan.clone(),
                setup: setup.clone(),
                readers: readers.clone(),
                rx,
                shared,
                stop: stop_rx.clone(),
                catch_up_permits: permits.clone(),
            });
        }
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
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(error = %Chain(&e), "could not start the destination writers' runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let tasks: Vec<_> =
                        workers.into_iter().map(|w| tokio::spawn(w.run())).collect();
                    let mut reporter = Reporter {
                        state_conn,
                        state: None,
                        shared: shared_all,
                        keep_from,
                    };
                    let mut stop = stop_rx;
                    while !*stop.borrow() {
                        reporter.report().await;
                        tokio::select! {
                            _ = tokio::time::sleep(REPORT_EVERY) => {}
                            _ = until_stopped(&mut stop) => {}
                        }
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                    reporter.report().await;
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
/// reachable (a status view must not stop the writers).
struct Reporter {
    state_conn: (crate::pgconn::ConnInfo, String),
    state: Option<StateDb>,
    shared: Vec<(String, Arc<DestShared>)>,
    keep_from: Arc<AtomicU64>,
}

impl Reporter {
    async fn report(&mut self) {
        let reports: Vec<DestinationReport> = self
            .shared
            .iter()
            .map(|(name, s)| {
                let s = s.status().clone();
                DestinationReport {
                    name: name.clone(),
                    state: s.state.as_str().to_owned(),
                    watermark: s.watermark,
                    applied_commit_time: s.applied_commit_time.map(|t| t.pg_epoch_micros()),
                    last_error: s.last_error,
                    age_seconds: 0.0,
                }
            })
            .collect();
        // Destinations that need a resync no longer hold the log back: they cannot use it.
        let floor = reports
            .iter()
            .filter(|r| r.state != DestinationState::NeedsResync.as_str())
            .map(|r| r.watermark + 1)
            .min()
            .unwrap_or(u64::MAX);
        self.keep_from.store(floor, Ordering::Relaxed);
        if self.state.is_none() {
            match StateDb::connect(&self.state_conn.0, &self.state_conn.1).await {
                Ok(s) => self.state = Some(s),
                Err(e) => {
                    warn!(error = %Chain(&e), "cannot report destination status to the state database")
                }
            }
        }
        if let Some(s) = &self.state {
            if let Err(e) = s.destinations().save(&reports).await {
                warn!(error = %Chain(&e), "cannot report destination status to the state database");
                self.state = None;
            }
        }
    }
}
