//! One destination's writer: batches its operations and applies them through its sink,
//! reading from the dispatcher's queue while attached and from the change log itself while
//! catching up.
//!
//! **The chunk rule.** The worker keeps `next_seq`, the first seq it has not taken into a
//! batch yet (the watermark + 1 after a flush). A chunk covering seqs `from..=to`:
//! - `to < next_seq`: already taken; dropped.
//! - `from > next_seq`: the dispatcher routed `next_seq..from` without this destination
//!   (it was detached); those changes are read from the log first. The empty chunk sent at
//!   re-attachment exists for this alone.
//! - otherwise its ops at or after `next_seq` are taken and `next_seq = to + 1`.
//!
//! So a chunk may be dropped or arrive late without losing or repeating anything, and the
//! hand-over between the dispatcher and the worker's own reading needs no lock-step.
//!
//! **Connections.** A session holds its writer's connection only while it has something to
//! write: it takes a permit of the shared cap (`[fanout] max_connections`, see
//! `connections.rs`) before connecting, and an idle session (no ops taken, nothing to flush)
//! disconnects — its TOAST refill's source connection too — after `idle_timeout`, or at once
//! when another destination waits for a permit. It keeps everything else (`next_seq`, the
//! batch) and connects again when a batch is due; the watermark it reads then must be the
//! one it last wrote, else the session starts over from the stored one. A closed session
//! writes a watermark that only moved (changes routed past it that were not for it) every
//! [`CLOSED_WATERMARK_EVERY`] (so retention and a restart need not go back far), not every
//! [`IDLE_WATERMARK_EVERY`], and not at a stop. While it waits for a permit it keeps taking
//! chunks until its batch is full; then its queue fills and the dispatcher detaches it (it
//! catches up from the log once connected).
//!
//! Any failure (connection, statement, schema) ends the session: the batch in memory is
//! dropped and the destination detaches. What then is `disposition`'s call:
//! - *retry*: wait with capped jittered backoff, reconnect and resume from the watermark
//!   stored in the destination. That is the crash path, so it is the only path back.
//! - *stop this destination*: hold it `failed` (destination, table, column and seq in the
//!   reason, never a value) and wait until the hold is cleared (`pgfanout destination
//!   resume`) or becomes `needs resync`; then start over as after a retry.
//! - *needs resync* (the log lost changes it had not applied): hold it so and start over at
//!   once. A session that starts below the log's oldest change skips to it (the watermark
//!   follows with the next write): the destination streams on with a gap, held `needs
//!   resync` until resumed or resynced.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, error, info, warn};

use crate::changelog::{LogError, LogReader, LogRecord, Readers};
use crate::disposition::{disposition, Backoff, Classify, Disposition, ErrorKind, Scope};
use crate::fanout::route::{PartialOps, Planned, Routed};
use crate::progress::Progress;
use crate::report::Chain;
use crate::sink::{Batch, SinkError, TargetTable, Writer};
use crate::state::{Hold, HoldKind};
use crate::telemetry;
use crate::value::Timestamp;

use super::connections::{ConnectionCap, Permit};
use super::dispatch::Chunk;
use super::router::Router;
use super::setup::{DestinationPlan, Setup};
use super::toast::Refill;
use super::{read_step, until_stopped, DestShared, DestinationState, FanoutError};

/// Records read from the log per step while catching up.
const CATCH_UP_READ: usize = 4096;
/// While idle, the watermark of an attached destination moves at most this often.
const IDLE_WATERMARK_EVERY: Duration = Duration::from_secs(5);
/// …and this often when its connection is closed: a write then costs a connection (1,000
/// destinations: about three connections a second).
const CLOSED_WATERMARK_EVERY: Duration = Duration::from_secs(300);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Short enough that a destination back from an outage resumes soon after.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Shortest pause of the stream that flushes a batch early (see `Worker::pause_flush`).
const PAUSE_FLUSH_MIN: Duration = Duration::from_millis(50);
/// A session that lasted this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

impl Classify for WorkerError {
    /// A change log that no longer holds the destination's next seq needs a resync; a failed
    /// log read (I/O, corruption) or a mapping that no longer compiles is definite; a
    /// writer's error is what its sink says; a lost reader thread is worth another attempt.
    fn kind(&self) -> ErrorKind {
        match self {
            WorkerError::Writer(e) => e.kind(),
            WorkerError::Log(LogError::SeqTooOld { .. }) => ErrorKind::LogGone,
            WorkerError::Log(_) => ErrorKind::Definite,
            WorkerError::Route(e) => e.kind(),
            WorkerError::ReaderGone => ErrorKind::Transient,
            WorkerError::WatermarkMoved { .. } => ErrorKind::Transient,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum WorkerError {
    #[error(transparent)]
    Writer(#[from] SinkError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Route(#[from] FanoutError),
    #[error("the change log reader thread failed")]
    ReaderGone,
    #[error("reconnecting, the destination's watermark is {found}, not {written} as this session wrote it (was it restored or changed by hand?); starting over from the stored one")]
    WatermarkMoved { written: u64, found: u64 },
}

impl WorkerError {
    /// The target table, column and seq it failed at, as far as the writer knows.
    fn location(&self) -> (Option<String>, Option<String>, Option<u64>) {
        match self {
            WorkerError::Writer(e) => e.location(),
            _ => (None, None, None),
        }
    }
}

pub(super) struct Worker {
    pub index: usize,
    /// The destination's tables as its writer last brought them to (`plan.tables` until a
    /// schema barrier changed one): what a connection prepares, across sessions.
    pub tables: Vec<TargetTable>,
    pub plan: DestinationPlan,
    pub setup: Arc<Setup>,
    pub readers: Readers,
    pub rx: mpsc::Receiver<Chunk>,
    pub shared: Arc<DestShared>,
    pub stop: watch::Receiver<bool>,
    pub catch_up_permits: Arc<Semaphore>,
    /// The cap on open destination connections, shared by every worker.
    pub connections: Arc<ConnectionCap>,
    pub idle_timeout: Duration,
    pub metrics: BatchMetrics,
}

/// An open destination connection and the permit it holds.
struct Conn {
    writer: Writer,
    _permit: Permit,
    /// When it connected or last wrote rows: idle since.
    used: Instant,
}

/// A destination's per-batch metrics, their handles taken once.
pub(super) struct BatchMetrics {
    rows: metrics::Histogram,
    seconds: metrics::Histogram,
    applied: metrics::Counter,
}

impl BatchMetrics {
    pub(super) fn new(destination: &str) -> Self {
        let label = || ("destination", destination.to_owned());
        BatchMetrics {
            rows: metrics::histogram!(telemetry::DEST_BATCH_ROWS, &[label()]),
            seconds: metrics::histogram!(telemetry::DEST_BATCH_SECONDS, &[label()]),
            applied: metrics::counter!(telemetry::DEST_ROWS_APPLIED_TOTAL, &[label()]),
        }
    }
}

/// The log reader (and a router for this destination alone) used while catching up and to
/// fill gaps.
struct OwnReader {
    reader: Option<LogReader>,
    router: Router,
}

/// The batch being built and what was written.
struct Pending {
    batch: Batch<'static>,
    /// The batch's upserts with unchanged TOAST values, and what re-reading them takes.
    partial: PartialOps,
    /// Reads those the destination has no copy of from the source (kept here, with the batch
    /// it fills: one source connection per session, opened when first needed).
    refill: Refill,
    rows: usize,
    started: Option<Instant>,
    next_seq: u64,
    commit_time: Option<Timestamp>,
    written: u64,
    last_write: Instant,
    /// When ops were last taken: a batch whose stream paused is flushed early.
    last_push: Instant,
    /// The tables as the ops taken so far leave them (schema barriers included).
    ends: Vec<TargetTable>,
    /// A schema barrier taken and every op after it: the batch ends before the barrier
    /// (`cut`), which is acted on once the batch is written ([`Worker::flush`]).
    held: Vec<(usize, Planned)>,
    /// The first barrier's seq, while `held` is not empty.
    cut: Option<u64>,
    /// The last seq taken behind the barrier (the batch's `last_seq` once it is crossed).
    held_last: u64,
}

impl Worker {
    fn name(&self) -> &str {
        &self.plan.config.name
    }

    /// What the writer's connections take of the shared cap.
    fn writer_connections(&self) -> u32 {
        u32::try_from(self.plan.config.connections()).unwrap_or(u32::MAX)
    }

    pub async fn run(mut self) {
        if let Some(reason) = self.plan.broken.clone() {
            // A mapping of it does not compile against the source: nothing can be written
            // until the configuration (or the source) is fixed and pgfanout restarted.
            loop {
                error!(destination = %self.name(), reason = %reason, "destination stopped: one of its mappings does not compile against its source table; fix the mapping (or the source table) and restart pgfanout");
                self.shared
                    .set_state(DestinationState::Failed, Some(reason.clone()));
                self.shared.set_hold(
                    Hold {
                        kind: HoldKind::Failed,
                        reason: reason.clone(),
                        seq: None,
                    },
                    None,
                    None,
                );
                if !self.wait_for_resume().await {
                    self.shared.set_state(DestinationState::Stopped, None);
                    return;
                }
            }
        }
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF, HEALTHY_SESSION);
        // Held `failed` (a start-over after a transient failure keeps the hold): wait.
        if self.shared.hold_kind() == Some(HoldKind::Failed) {
            self.shared.set_state(DestinationState::Failed, None);
            if !self.wait_for_resume().await {
                self.shared.set_state(DestinationState::Stopped, None);
                return;
            }
        }
        loop {
            let started = Instant::now();
            let result = self.session().await;
            // Started over, it reads from its watermark again.
            let watermark = self.shared.status().watermark;
            if self.shared.needs_from.load(Ordering::Relaxed) != 0 {
                self.shared.set_needs_from(watermark + 1);
            }
            let stopping = *self.stop.borrow();
            if stopping {
                self.shared.set_state(DestinationState::Stopped, None);
                return;
            }
            let e = match result {
                Ok(()) => {
                    self.shared.set_state(DestinationState::Stopped, None);
                    return;
                }
                Err(e) => e,
            };
            self.shared.detached.store(true, Ordering::SeqCst);
            let (kind, then) = (e.kind(), disposition(e.kind(), Scope::Destination));
            metrics::counter!(telemetry::DEST_ERRORS_TOTAL,
                "destination" => self.name().to_owned(),
                "kind" => kind.as_str(),
                "disposition" => then.as_str())
            .increment(1);
            match then {
                Disposition::NeedsResync => {
                    if self.shared.hold_kind() != Some(HoldKind::NeedsResync) {
                        error!(destination = %self.name(), error = %Chain(&e), "destination needs a resync: the change log no longer holds the changes after its watermark; it streams on from the oldest change the log holds");
                        self.shared.set_hold(
                            Hold {
                                kind: HoldKind::NeedsResync,
                                reason: Chain(&e).to_string(),
                                seq: Some(watermark + 1),
                            },
                            None,
                            None,
                        );
                    }
                    // Start over (after the backoff's delay): the new session skips the gap.
                }
                Disposition::StopDestination | Disposition::Fatal => {
                    let (table, column, seq) = e.location();
                    let seq = seq.unwrap_or(watermark + 1);
                    error!(destination = %self.name(), seq, error = %Chain(&e), "destination stopped: retrying cannot fix this; fix it, then run `pgfanout destination resume` (or restart pgfanout)");
                    self.shared
                        .set_state(DestinationState::Failed, Some(Chain(&e).to_string()));
                    self.shared.set_hold(
                        Hold {
                            kind: HoldKind::Failed,
                            reason: Chain(&e).to_string(),
                            seq: Some(seq),
                        },
                        table,
                        column,
                    );
                    if !self.wait_for_resume().await {
                        self.shared.set_state(DestinationState::Stopped, None);
                        return;
                    }
                    info!(destination = %self.name(), "destination resumed; starting over from its watermark");
                    backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF, HEALTHY_SESSION);
                    continue;
                }
                Disposition::Retry => {}
            }
            let delay = backoff.next_delay(started.elapsed());
            warn!(destination = %self.name(), error = %Chain(&e), retry_in = ?delay, "destination failed; retrying from its watermark");
            self.shared
                .set_state(DestinationState::Retrying, Some(Chain(&e).to_string()));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = until_stopped(&mut self.stop) => {}
            }
        }
    }

    /// Waits until the `failed` hold is gone (resumed, or turned into `needs resync`);
    /// false when pgfanout stops first.
    async fn wait_for_resume(&mut self) -> bool {
        loop {
            tokio::select! {
                _ = self.shared.resume.notified() => {}
                _ = until_stopped(&mut self.stop) => return false,
            }
            if self.shared.hold_kind() != Some(HoldKind::Failed) {
                return true;
            }
        }
    }

    /// A writer connected to the destination, and its watermark.
    async fn connect(&self) -> Result<(Writer, u64), WorkerError> {
        let cfg = &self.plan.config;
        let mut sink = Writer::connect(cfg, &self.tables).await?;
        let watermark = sink.watermark(&cfg.name).await?;
        self.bind(&mut sink, watermark).await?;
        Ok((sink, watermark))
    }

    /// A writer connected again within a session, and the destination's watermark: its tables
    /// were created (or found) and its lineage bound when the session started, so they are
    /// only checked, never created — a table dropped meanwhile stops the destination instead
    /// of coming back empty — which also makes the connect of an idle destination cheaper.
    async fn connect_again(&self) -> Result<(Writer, u64), WorkerError> {
        let mut cfg = self.plan.config.clone();
        cfg.create_tables = false;
        let mut sink = Writer::connect(&cfg, &self.tables).await?;
        let watermark = sink.watermark(&cfg.name).await?;
        Ok((sink, watermark))
    }

    /// Binds the destination's watermark to this change log's lineage, and warns when it is
    /// ahead of the log.
    async fn bind(&self, sink: &mut Writer, watermark: u64) -> Result<(), WorkerError> {
        let cfg = &self.plan.config;
        // The watermark counts seqs of one numbering: refuse one of another (invariant 21).
        if let Some(ours) = self.readers.lineage() {
            if sink.bind_lineage(&cfg.name, ours).await? && watermark > 0 {
                warn!(destination = %cfg.name, watermark, lineage = %ours, "the destination's watermark has no lineage (an older pgfanout wrote it): binding it to this change log");
            }
        }
        // Start-up proved that what the log lacks past its end is resent by PostgreSQL with
        // the same seqs (invariant 22), so a watermark ahead of the log is waited for; say so,
        // since nothing reaches this destination until the log passes it.
        let durable = self.readers.durable_seq();
        if watermark > durable {
            warn!(destination = %cfg.name, watermark, log_end = durable, "the destination's watermark is ahead of the change log's end: waiting for PostgreSQL to resend the changes in between");
        }
        Ok(())
    }

    async fn session(&mut self) -> Result<(), WorkerError> {
        let cap = self.connections.clone();
        let mut stop = self.stop.clone();
        let permit = tokio::select! {
            permit = cap.acquire(self.writer_connections()) => permit,
            _ = until_stopped(&mut stop) => return Ok(()),
        };
        let (writer, watermark) = self.connect().await?;
        let mut conn = Some(Conn {
            writer,
            _permit: permit,
            used: Instant::now(),
        });
        let cfg = &self.plan.config;
        info!(destination = %cfg.name, watermark, "destination connected");
        self.shared.record_write(watermark, None);
        let next_seq = self.skip_lost(watermark + 1);
        self.shared.set_needs_from(next_seq);
        let mut p = Pending {
            batch: Batch::new(next_seq - 1),
            partial: PartialOps::new(),
            refill: Refill::new(self.setup.source.clone(), self.setup.routing.clone()),
            rows: 0,
            started: None,
            next_seq,
            commit_time: None,
            written: watermark,
            last_write: Instant::now(),
            last_push: Instant::now(),
            ends: self.tables.clone(),
            held: Vec::new(),
            cut: None,
            held_last: 0,
        };
        let mut own: Option<OwnReader> = None;
        // While detached: how far the catch-up from the log has come (log lines every ten
        // seconds), from the seq it started at.
        let mut catch_up: Option<(Progress, u64)> = None;
        loop {
            let stopping = *self.stop.borrow();
            if stopping {
                self.flush_at_end(&mut conn, &mut p, &mut own).await?;
                return Ok(());
            }
            if self.shared.detached.load(Ordering::SeqCst) {
                self.shared.set_state(DestinationState::CatchingUp, None);
                // Queued chunks predate the detachment; the log has all of it.
                while self.rx.try_recv().is_ok() {}
                let (progress, from) = catch_up.get_or_insert_with(|| {
                    let what = format!(
                        "destination {}: catching up from the change log",
                        self.name()
                    );
                    let total = self.readers.durable_seq().saturating_sub(p.next_seq) + 1;
                    (Progress::logged(what, "changes", Some(total)), p.next_seq)
                });
                let at_end = self.read_own(&mut own, &mut p, None).await?;
                progress.update(
                    p.next_seq.saturating_sub(*from),
                    Some(self.readers.durable_seq().saturating_sub(*from) + 1),
                );
                if self.due(&p, conn.is_some()) {
                    self.flush(&mut conn, &mut p, &mut own).await?;
                }
                self.close_if_idle(&mut conn, &mut p, &mut own).await?;
                if at_end {
                    if let Some((progress, _)) = catch_up.take() {
                        progress.finish();
                    }
                    self.shared.reattach.store(true, Ordering::SeqCst);
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        _ = until_stopped(&mut stop) => {}
                    }
                }
                continue;
            }
            self.shared.set_state(DestinationState::Streaming, None);
            let deadline = self.deadline(&p, conn.as_ref());
            let mut stop = self.stop.clone();
            // Enabled before `wanted` is read: a wait that starts after it still wakes us.
            let wanted = cap.notified();
            tokio::pin!(wanted);
            wanted.as_mut().enable();
            let idle = conn.is_some() && p.started.is_none();
            if idle && cap.wanted() {
                self.close_if_idle(&mut conn, &mut p, &mut own).await?;
                continue;
            }
            tokio::select! {
                chunk = self.rx.recv() => match chunk {
                    Some(chunk) => self.take_chunk(&mut conn, &mut own, &mut p, chunk).await?,
                    None => {
                        self.flush_at_end(&mut conn, &mut p, &mut own).await?;
                        return Ok(());
                    }
                },
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = &mut wanted, if idle => {}
                _ = until_stopped(&mut stop) => {}
            }
            // What piled up while the last batch was written goes into this one: batches grow
            // with the load, not with a timer.
            while p.rows < self.plan.config.batch_rows {
                match self.rx.try_recv() {
                    Ok(chunk) => self.take_chunk(&mut conn, &mut own, &mut p, chunk).await?,
                    Err(_) => break,
                }
            }
            if self.due(&p, conn.is_some()) {
                self.flush(&mut conn, &mut p, &mut own).await?;
            }
            self.close_if_idle(&mut conn, &mut p, &mut own).await?;
        }
    }

    /// At a stop, or when the dispatcher is gone: writes what was taken. A watermark that only
    /// moved is not worth a connection then (a restart reads those changes again, applying
    /// none of them).
    async fn flush_at_end(
        &mut self,
        conn: &mut Option<Conn>,
        p: &mut Pending,
        own: &mut Option<OwnReader>,
    ) -> Result<(), WorkerError> {
        if conn.is_some() || p.started.is_some() {
            self.flush(conn, p, own).await?;
        }
        Ok(())
    }

    /// Closes an idle connection (no ops taken): after `idle_timeout` without rows to write
    /// (moving the watermark first), or at once when another destination waits for a permit.
    async fn close_if_idle(
        &mut self,
        conn: &mut Option<Conn>,
        p: &mut Pending,
        own: &mut Option<OwnReader>,
    ) -> Result<(), WorkerError> {
        let Some(c) = conn.as_ref() else {
            return Ok(());
        };
        if p.started.is_some() {
            return Ok(());
        }
        let wanted = self.connections.wanted();
        if !wanted && c.used.elapsed() < self.idle_timeout {
            return Ok(());
        }
        if !wanted {
            self.flush(conn, p, own).await?;
        }
        *conn = None;
        p.refill.disconnect();
        if !self.shared.detached.load(Ordering::SeqCst) {
            // Its reader and router are only needed again to fill a gap: let them go too.
            *own = None;
        }
        debug!(destination = %self.name(), wanted, "closed the idle destination connection");
        Ok(())
    }

    /// A new connection for a session whose connection was closed: after waiting for a permit
    /// (taking chunks meanwhile while the batch has room). The destination's watermark must be
    /// what this session last wrote.
    async fn reconnect(
        &mut self,
        p: &mut Pending,
        own: &mut Option<OwnReader>,
    ) -> Result<Conn, WorkerError> {
        let cap = self.connections.clone();
        let acquire = cap.acquire(self.writer_connections());
        tokio::pin!(acquire);
        let mut open = true;
        let permit = loop {
            let take = open
                && !*self.stop.borrow()
                && p.rows < self.plan.config.batch_rows
                && !self.shared.detached.load(Ordering::SeqCst);
            tokio::select! {
                permit = &mut acquire => break permit,
                chunk = self.rx.recv(), if take => match chunk {
                    Some(chunk) => self.take_chunk_unwritten(own, p, chunk).await?,
                    None => open = false,
                },
            }
        };
        let (writer, watermark) = self.connect_again().await?;
        if watermark != p.written {
            return Err(WorkerError::WatermarkMoved {
                written: p.written,
                found: watermark,
            });
        }
        debug!(destination = %self.name(), watermark, "destination connected again");
        Ok(Conn {
            writer,
            _permit: permit,
            used: Instant::now(),
        })
    }

    /// Where a session starting at `from` begins: there, or at the oldest change the log
    /// holds when it lost changes before it — then the destination is held `needs resync`,
    /// loudly, and its watermark moves past the gap with its next write.
    fn skip_lost(&self, from: u64) -> u64 {
        let Some(oldest) = self.readers.oldest_seq().filter(|&o| o > from) else {
            return from;
        };
        if self.shared.hold_kind() != Some(HoldKind::NeedsResync) {
            warn!(destination = %self.name(), first_missed = from, oldest_in_log = oldest, "destination needs a resync: the change log no longer holds changes it had not applied; it streams on from the oldest change the log holds");
            self.shared.set_hold(
                Hold {
                    kind: HoldKind::NeedsResync,
                    reason: format!(
                        "the change log no longer holds changes {from} to {} that destination {:?} had not applied; its tables miss them until it is resynced",
                        oldest - 1,
                        self.name()
                    ),
                    seq: Some(from),
                },
                None,
                None,
            );
        } else {
            info!(destination = %self.name(), from, oldest_in_log = oldest, "destination needs a resync; skipping to the oldest change the log holds");
        }
        oldest
    }

    /// Takes `chunk` into the batch, first filling the gap before it from the log, writing
    /// batches as they fill: a gap can be most of a huge transaction, when the dispatcher
    /// re-attached the destination only at its commit.
    async fn take_chunk(
        &mut self,
        conn: &mut Option<Conn>,
        own: &mut Option<OwnReader>,
        p: &mut Pending,
        chunk: Chunk,
    ) -> Result<(), WorkerError> {
        while chunk.to_seq >= p.next_seq && chunk.from_seq > p.next_seq {
            debug!(destination = %self.name(), from = p.next_seq, to = chunk.from_seq - 1, "filling a gap from the change log");
            self.read_own(own, p, Some(chunk.from_seq)).await?;
            if p.rows >= self.plan.config.batch_rows {
                self.flush(conn, p, own).await?;
            }
        }
        self.take_chunk_unwritten(own, p, chunk).await
    }

    /// [`take_chunk`](Self::take_chunk) without writing: while waiting for a connection
    /// permit, a gap goes into the batch whole.
    async fn take_chunk_unwritten(
        &self,
        own: &mut Option<OwnReader>,
        p: &mut Pending,
        chunk: Chunk,
    ) -> Result<(), WorkerError> {
        debug!(destination = %self.name(), from = chunk.from_seq, to = chunk.to_seq, ops = chunk.ops.len(), next_seq = p.next_seq, "chunk");
        if chunk.to_seq < p.next_seq {
            return Ok(());
        }
        while chunk.from_seq > p.next_seq {
            debug!(destination = %self.name(), from = p.next_seq, to = chunk.from_seq - 1, "filling a gap from the change log");
            self.read_own(own, p, Some(chunk.from_seq)).await?;
        }
        let rows_before = p.rows;
        for (table, op) in chunk.ops {
            if op.seq() >= p.next_seq {
                p.push(table, op);
            }
        }
        p.took(rows_before);
        p.advance(chunk.to_seq, chunk.commit_time);
        self.shared.set_needs_from(p.next_seq);
        Ok(())
    }

    /// Reads up to [`CATCH_UP_READ`] records from the log at `next_seq` (stopping before
    /// `until` when given) and routes them for this destination. Returns whether it reached
    /// the durable end of the log.
    async fn read_own(
        &self,
        own: &mut Option<OwnReader>,
        p: &mut Pending,
        until: Option<u64>,
    ) -> Result<bool, WorkerError> {
        let o = own.get_or_insert_with(|| OwnReader {
            reader: None,
            router: self.setup.router(Some(self.index), None),
        });
        let reader = match o.reader.take() {
            Some(r) if r.next_seq() == p.next_seq => r,
            _ => self.readers.open(p.next_seq)?,
        };
        let _permit = self.catch_up_permits.acquire().await;
        let (reader, records, at_end) = read_step(reader, CATCH_UP_READ, until)
            .await
            .map_err(|_| WorkerError::ReaderGone)??;
        debug!(destination = %self.name(), from = p.next_seq, records = records.len(), at_end, until, "read the log");
        let mut routed: Vec<Routed> = Vec::new();
        let rows_before = p.rows;
        for record in records {
            match record {
                LogRecord::Change(c) => {
                    o.router.route(&c, &mut routed)?;
                    for r in routed.drain(..) {
                        p.push(r.table, r.op);
                    }
                    p.advance(c.seq, None);
                }
                LogRecord::Commit(ci) => p.advance(ci.last_seq, Some(ci.commit_time)),
            }
        }
        p.took(rows_before);
        self.shared.set_needs_from(p.next_seq);
        if until.is_some_and(|u| reader.next_seq() < u) && at_end {
            // The dispatcher routed up to `until`, so the log holds it durably: only a reader
            // of a closed log ends early. Nothing more can come.
            return Err(WorkerError::ReaderGone);
        }
        o.reader = Some(reader);
        Ok(at_end)
    }

    /// Whether to write now; `connected`: whether the connection is open.
    fn due(&self, p: &Pending, connected: bool) -> bool {
        let cfg = &self.plan.config;
        if p.rows >= cfg.batch_rows {
            return true;
        }
        match p.started {
            Some(t) => {
                t.elapsed() >= cfg.flush_interval || p.last_push.elapsed() >= self.pause_flush()
            }
            None => {
                p.batch.last_seq > p.written && p.last_write.elapsed() >= watermark_every(connected)
            }
        }
    }

    /// A batch whose stream paused this long is written without waiting out the flush
    /// interval: waiting longer only adds latency. Longer than the dispatcher's own flush
    /// period, so a steady stream still fills batches; never longer than the interval (zero:
    /// write as soon as the writer is free).
    fn pause_flush(&self) -> Duration {
        let interval = self.plan.config.flush_interval;
        (interval / 10).max(PAUSE_FLUSH_MIN).min(interval)
    }

    fn deadline(&self, p: &Pending, conn: Option<&Conn>) -> Instant {
        let idle_close = conn.map(|c| c.used + self.idle_timeout);
        let at = match p.started {
            Some(t) => {
                return (t + self.plan.config.flush_interval).min(p.last_push + self.pause_flush())
            }
            None if p.batch.last_seq > p.written => p.last_write + watermark_every(conn.is_some()),
            None => Instant::now() + Duration::from_secs(3600),
        };
        idle_close.map_or(at, |c| c.min(at))
    }

    /// Writes the batch; past a schema barrier, acts on it and writes what follows, up to
    /// the next barrier, and so on.
    async fn flush(
        &mut self,
        conn: &mut Option<Conn>,
        p: &mut Pending,
        own: &mut Option<OwnReader>,
    ) -> Result<(), WorkerError> {
        loop {
            self.flush_batch(conn, p, own).await?;
            if p.held.is_empty() {
                return Ok(());
            }
            self.cross_barrier(conn, p, own).await?;
        }
    }

    /// Acts on the schema barrier at the head of `p.held` (the batch before it is written):
    /// brings the table to its new shape, or stops for a mapping that no longer compiles;
    /// then takes the ops behind it into the batch, up to the next barrier.
    async fn cross_barrier(
        &mut self,
        conn: &mut Option<Conn>,
        p: &mut Pending,
        own: &mut Option<OwnReader>,
    ) -> Result<(), WorkerError> {
        // A connection first: chunks taken while waiting for one still queue behind the
        // barrier.
        let mut c = match conn.take() {
            Some(c) => c,
            None => self.reconnect(p, own).await?,
        };
        let held = std::mem::take(&mut p.held);
        p.cut = None;
        let mut rest = held.into_iter();
        match rest.next() {
            Some((table, Planned::Schema { seq, shape })) => {
                let prev = &self.tables[table];
                let next = prev.reshaped(&shape);
                info!(destination = %self.name(), mapping = %shape.mapping, table = %next.qualified_name(), seq, "the mapping's source table changed: bringing the target table along");
                c.writer
                    .evolve(
                        &self.plan.config.name,
                        table,
                        prev,
                        &next,
                        shape.drop_gone,
                        self.plan.config.create_tables,
                    )
                    .await?;
                self.tables[table] = next;
            }
            Some((
                _,
                Planned::Fail {
                    seq,
                    mapping,
                    reason,
                },
            )) => {
                return Err(WorkerError::Route(FanoutError::MappingStopped {
                    mapping: mapping.to_string(),
                    seq,
                    reason: reason.to_string(),
                }))
            }
            Some((table, op)) => p.requeue(table, op),
            None => {}
        }
        *conn = Some(c);
        for (table, op) in rest {
            p.requeue(table, op);
        }
        if p.cut.is_none() {
            p.batch.last_seq = p.batch.last_seq.max(p.held_last);
        }
        p.rows = p.batch.ops.len() + p.batch.truncates.len() + p.held.len();
        p.started = (p.rows > 0).then(Instant::now);
        Ok(())
    }

    async fn flush_batch(
        &mut self,
        conn: &mut Option<Conn>,
        p: &mut Pending,
        own: &mut Option<OwnReader>,
    ) -> Result<(), WorkerError> {
        if p.batch.last_seq <= p.written {
            return Ok(());
        }
        // Taken out while writing: a failure ends the session, and the connection with it.
        let mut c = match conn.take() {
            Some(c) => c,
            None => self.reconnect(p, own).await?,
        };
        let sink = &mut c.writer;
        let started = Instant::now();
        let last_seq = p.batch.last_seq;
        let mut batch = std::mem::replace(&mut p.batch, Batch::new(last_seq));
        let partial = std::mem::take(&mut p.partial);
        if !partial.is_empty() {
            // Only upserts whose unchanged values the destination knows no copy of go to
            // the source (invariant 25).
            let unknown = sink.unknown_unchanged(self.name(), &batch).await?;
            if !unknown.is_empty() {
                let filled = p
                    .refill
                    .fill(self.name(), &mut batch, &partial, &unknown)
                    .await?;
                debug!(destination = %self.name(), unknown = unknown.len(), filled, "filled unchanged TOAST values from the source");
            }
        }
        // The tuples kept for re-reading hold log record buffers: let them go now.
        drop(partial);
        sink.apply(self.name(), &batch).await?;
        // A write that only moves the watermark is not a batch of rows.
        if !batch.ops.is_empty() {
            self.metrics.rows.record(batch.ops.len() as f64);
            self.metrics.applied.increment(batch.ops.len() as u64);
            self.metrics.seconds.record(started.elapsed().as_secs_f64());
        }
        if sink.keeps_buffers_after(&batch) {
            // Buffers the size of this batch's huge values would stay with the connection.
            debug!(destination = %self.name(), bytes = batch.shared_bytes(), "reconnecting to let go of the buffers of a batch with huge values");
            // The old connection goes first: the permit covers one.
            let Conn {
                writer, _permit, ..
            } = c;
            drop(writer);
            c = Conn {
                writer: self.connect_again().await?.0,
                _permit,
                used: Instant::now(),
            };
        }
        if !batch.ops.is_empty() {
            c.used = Instant::now();
        }
        *conn = Some(c);
        debug!(destination = %self.name(), ops = batch.ops.len(), first_op = ?batch.ops.first().map(|(_, o)| o.seq()), last_op = ?batch.ops.last().map(|(_, o)| o.seq()), last_seq = batch.last_seq, "applied a batch");
        p.written = batch.last_seq;
        p.rows = 0;
        p.started = None;
        p.last_write = Instant::now();
        self.shared.record_write(p.written, p.commit_time);
        Ok(())
    }
}

/// How often a watermark that only moved is written (see the module's comment).
fn watermark_every(connected: bool) -> Duration {
    if connected {
        IDLE_WATERMARK_EVERY
    } else {
        CLOSED_WATERMARK_EVERY
    }
}

impl Pending {
    fn push(&mut self, table: usize, op: Planned) {
        if let Planned::Schema { shape, .. } = &op {
            let Some(end) = self.ends.get_mut(table) else {
                return;
            };
            let next = end.reshaped(shape);
            // A router announcing the shape the table already has (its first change of it).
            if next == *end {
                return;
            }
            *end = next;
        }
        self.requeue(table, op);
        self.rows += 1;
    }

    /// Takes `op` into the batch, or behind the barrier the batch ends at; a barrier ends
    /// the batch before its seq.
    fn requeue(&mut self, table: usize, op: Planned) {
        if self.cut.is_none() && op.is_barrier() {
            let seq = op.seq();
            self.cut = Some(seq);
            self.batch.last_seq = seq - 1;
            // Crossing a barrier requeues ops behind it: what was taken stays taken.
            self.held_last = self.held_last.max(seq - 1);
        }
        if self.cut.is_some() {
            self.held.push((table, op));
        } else {
            op.add_to(table, &mut self.batch, &mut self.partial);
        }
    }

    /// Notes when ops were last taken (once per chunk or log read, not per op: a clock read per
    /// op is measurable on the hot path); `rows_before` is the count before taking them.
    fn took(&mut self, rows_before: usize) {
        if self.rows > rows_before {
            let now = Instant::now();
            self.started.get_or_insert(now);
            self.last_push = now;
        }
    }

    /// Everything up to `seq` is taken.
    fn advance(&mut self, seq: u64, commit_time: Option<Timestamp>) {
        if seq >= self.next_seq {
            self.next_seq = seq + 1;
            if self.cut.is_some() {
                self.held_last = seq;
            } else {
                self.batch.last_seq = seq;
            }
        }
        if commit_time.is_some() {
            self.commit_time = commit_time;
        }
    }
}
