//! `pgfanout run`: wires source → sequencer → change log, and feeds durability back to the slot.
//!
//! ```text
//!   LogicalStream ──▶ sequencer ──▶ bounded channel ──▶ writer thread (ChangeLog: append, fsync)
//!        ▲                                                     │ durable end LSN (watch)
//!        └──────────── standby status: flushed = durable ◀─────┘
//!   checkpoint timer ──▶ state DB: (slot, durable end LSN, last seq)
//! ```
//!
//! Resume: the change log is the truth. On start, [`recovery::plan`] checks that the log, the
//! checkpoint and the slot belong to one stream and that nothing confirmed is missing from the
//! log; only then is the log recovered (torn tail and unfinished transaction cut off),
//! numbering continues after its last seq, and any transaction the slot sends again that the
//! log already holds (its commit LSN is below what the log vouches for) is skipped, so every
//! change keeps the seq it had.

mod liveness;
pub mod recovery;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::change::SequencedChange;
use crate::changelog::{
    read_meta, ChangeLog, CommitInfo, LogError, LogOptions, Position, Recovered, Retention,
};
use crate::config::Config;
use crate::disposition::{disposition, Backoff, Classify, Disposition, ErrorKind, Scope};
use crate::failpoint;
use crate::fanout::{Fanout, FanoutError, Setup};
use crate::lsn::Lsn;
use crate::report::Chain;
use crate::sequencer::Sequencer;
use crate::snapshot::{self, Coordinator, Exchange, InTxn, Intake};
use crate::source::{LogicalStream, Preflight, SlotPlan, SourceError, SourceEvent};
use crate::state::{Binding, Checkpoint, Hold, HoldKind, StateDb, StateError};
use crate::telemetry::{self, live};
use recovery::{Observed, RecoveryError, Resume};

/// Changes handed to the writer in one message (amortises the channel per change).
const WRITER_BATCH: usize = 256;
/// Messages in flight to the writer: bounds memory to about this many batches.
const WRITER_QUEUE: usize = 64;
/// When the queue runs dry the writer syncs, but not sooner than this (at most
/// `log.sync_interval`) after its previous sync: the commits that arrive meanwhile share the
/// fsync. Without the gap a stream of small transactions costs one fdatasync each; with the
/// log on PostgreSQL's disk that took a third of pgbench's TPS on a 2-core machine
/// (BENCHMARKS.md, "Cost to the source"). A commit that arrives after a quiet moment is synced
/// at once; one that follows a sync closely waits at most this long.
const SYNC_GAP: Duration = Duration::from_millis(2);
/// The change log's subdirectory where protocol 2 spools transactions in progress.
pub const STREAMING_SPOOL_DIR: &str = "streaming";
/// Age-based retention runs this often; the size cap also whenever a segment was added.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Fanout(Box<FanoutError>),
    #[error(transparent)]
    Recovery(Box<RecoveryError>),
    #[error("the change-log writer stopped unexpectedly")]
    WriterGone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    pub last_seq: u64,
    pub durable_lsn: Lsn,
}

/// What the writer has made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Durable {
    /// May be confirmed to PostgreSQL.
    lsn: Lsn,
    last_seq: u64,
}

enum ToWriter {
    Changes(Vec<SequencedChange>),
    Commit(CommitInfo),
    /// A transaction with nothing to log: confirmable once everything before it is durable.
    Empty(Lsn),
    /// Sync now and answer.
    Flush(oneshot::Sender<()>),
}

impl From<FanoutError> for RunError {
    fn from(e: FanoutError) -> Self {
        RunError::Fanout(Box::new(e))
    }
}

impl From<RecoveryError> for RunError {
    fn from(e: RecoveryError) -> Self {
        match e {
            RecoveryError::Source(e) => RunError::Source(e),
            e => RunError::Recovery(Box::new(e)),
        }
    }
}

impl Classify for RunError {
    /// Starting over (reconnect, reopen the log) can help only where the source, the state
    /// database or the fan-out's start-up say so. The change log's errors never are: a failed
    /// fsync or a corrupt record needs a human.
    fn kind(&self) -> ErrorKind {
        match self {
            RunError::Source(e) => e.kind(),
            RunError::State(e) => e.kind(),
            RunError::Fanout(e) => e.kind(),
            RunError::Recovery(e) => e.kind(),
            RunError::Log(_) | RunError::WriterGone => ErrorKind::Definite,
        }
    }
}

/// First retry delay after a transient failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run that lasted this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs until `shutdown`, starting over after transient failures (connection lost, slot still
/// held by a dying session, server restart) with capped, jittered exponential backoff.
/// Starting over is the crash path: the log is reopened and recovered, and streaming resumes
/// from it, so a reconnect can neither lose nor renumber a change.
/// How `run` ends besides a shutdown signal.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop cleanly once the log holds everything up to this WAL position (like
    /// pg_recvlogical's `--endpos`).
    pub endpos: Option<Lsn>,
    /// Create the slot again over existing progress (it is missing, or confirmed past what the
    /// log holds): numbering continues, and every destination is marked needs resync.
    pub recreate_slot: bool,
}

pub async fn run(
    cfg: &Config,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopper = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    // Recreating the slot is done once: a restart after it resumes the new slot.
    let recreate_slot = AtomicBool::new(opts.recreate_slot);
    let runner = async {
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF, HEALTHY_RUN);
        // A start of pgfanout retries failed destinations once; starting over after a
        // transient failure does not.
        let mut first = true;
        loop {
            let started = Instant::now();
            let mut stop = stop_rx.clone();
            let retry_failed = std::mem::replace(&mut first, false);
            let result = run_once(cfg, opts, &recreate_slot, retry_failed, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
            match &result {
                Ok(_) => live::set_not_streaming("stopped"),
                Err(e) => {
                    let kind = e.kind();
                    metrics::counter!(telemetry::SOURCE_ERRORS_TOTAL,
                        "kind" => kind.as_str(),
                        "disposition" => disposition(kind, Scope::Source).as_str())
                    .increment(1);
                    live::set_not_streaming(format!("not streaming: {}", Chain(e)));
                }
            }
            match result {
                Err(e)
                    if disposition(e.kind(), Scope::Source) == Disposition::Retry
                        && !*stop_rx.borrow() =>
                {
                    let delay = backoff.next_delay(started.elapsed());
                    warn!(error = %Chain(&e), retry_in = ?delay, "transient failure; starting over");
                    let mut stop = stop_rx.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return Err(e),
                    }
                }
                other => return other,
            }
        }
    };
    let liveness = liveness::Liveness::start(cfg);
    tokio::pin!(stopper);
    tokio::pin!(runner);
    let result = tokio::select! {
        result = &mut runner => result,
        // The signal came and the runner sees the flag: drive it to its clean end.
        _ = &mut stopper => runner.await,
    };
    liveness.stop().await;
    result
}

async fn run_once(
    cfg: &Config,
    opts: RunOptions,
    recreate_slot: &AtomicBool,
    retry_failed: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    let state = StateDb::connect(&cfg.state.conn, &cfg.state.schema).await?;
    // Mappings are compiled against the source catalog before anything streams: a mapping
    // that names a missing column stops start-up with every problem listed.
    let setup = if cfg.destinations.is_empty() {
        None
    } else {
        Some(Arc::new(Setup::load(cfg).await?))
    };
    let slot = cfg.source.slot.clone();
    let checkpoint = state.checkpoints().load(&slot).await?;
    // Read the server, the slot and the timeline history before the log is touched, so a
    // failure here (often transient: the slot still held by a dying session) leaves it alone.
    let mut preflight = Preflight::connect(&cfg.source, Some(&slot)).await?;
    let log_dir = cfg.log.dir.clone();
    let log_timeline = read_meta(&log_dir)?.map(|m| m.source.timeline);
    let timeline_switch = match log_timeline {
        Some(t) if t != preflight.server.timeline => preflight
            .timeline_history()
            .await?
            .and_then(|h| recovery::timeline_switch_point(&h, t)),
        _ => None,
    };
    let log_opts = LogOptions {
        segment_bytes: cfg.log.segment_bytes,
        ..LogOptions::default()
    };
    let (server, slot_row) = (preflight.server.clone(), preflight.slot.clone());
    let (manage_slot, recreate) = (cfg.source.manage, recreate_slot.load(Ordering::Relaxed));
    let (slot_name, checkpoint_seen) = (slot.clone(), checkpoint.clone());
    let opened = tokio::task::spawn_blocking(move || {
        let mut plan = None;
        let (mut log, recovered) =
            ChangeLog::open_checked(&log_dir, log_opts, |found: &Recovered| {
                plan = Some(recovery::plan(&Observed {
                    log_dir: &log_dir,
                    log: found,
                    server: &server,
                    timeline_switch,
                    slot_name: &slot_name,
                    slot: slot_row.as_ref(),
                    checkpoint: checkpoint_seen.as_ref(),
                    manage_slot,
                    recreate_slot: recreate,
                })?);
                Ok::<(), RunError>(())
            })?;
        let plan = plan.ok_or(RunError::WriterGone)?;
        if recovered.meta.as_ref() != Some(&plan.meta) {
            log.bind(plan.meta.clone())?;
        }
        Ok::<_, RunError>((log, recovered, plan))
    })
    .await
    .map_err(|_| RunError::WriterGone)?;
    let (mut log, recovered, plan) = opened?;
    if recovered.truncated_bytes > 0 {
        warn!(
            bytes = recovered.truncated_bytes,
            "change log recovery cut off an unfinished tail; PostgreSQL resends it"
        );
    }
    for note in &plan.notes {
        warn!("{note}");
    }
    let resume = plan.resume;
    let created = matches!(plan.slot, SlotPlan::Create(_) | SlotPlan::Recreate(_));
    info!(slot = %slot, seq = resume.last_seq, lsn = %resume.logged_end, lineage = %plan.meta.lineage, "resuming");
    // Protocol 2's transactions in progress wait beside the segments they are copied into at
    // their commit (`source::spool`); nothing there outlives a restart.
    let spool_dir = cfg.log.dir.join(STREAMING_SPOOL_DIR);
    let mut stream = preflight
        .stream(&cfg.source, plan.slot, Some(&spool_dir))
        .await?;
    if created {
        // The new slot starts at its consistent point: record that the log vouches for the
        // stream up to there (nothing before it will ever arrive), so the next start does not
        // take the slot for one moved past the log.
        let position = Position {
            lsn: stream.flushed(),
            last_seq: resume.last_seq,
        };
        let (l, recorded) = tokio::task::spawn_blocking(move || {
            let r = log.record_position(position);
            (log, r)
        })
        .await
        .map_err(|_| RunError::WriterGone)?;
        recorded?;
        log = l;
        recreate_slot.store(false, Ordering::Relaxed);
    }
    if plan.resync_all {
        mark_all_need_resync(cfg, &state, resume.last_seq).await?;
    }
    let binding = Binding {
        lineage: plan.meta.lineage,
        source: plan.meta.source.clone(),
    };

    let (durable_tx, durable_rx) = watch::channel(Durable {
        lsn: resume.logged_end,
        last_seq: resume.last_seq,
    });
    let (lsn_tx, lsn_rx) = watch::channel(resume.logged_end);
    let (to_writer, from_main) = mpsc::channel(WRITER_QUEUE);
    let retention = Retention {
        max_age: cfg.log.retention_age,
        max_bytes: cfg.log.retention_bytes,
    };
    let (writer_done_tx, writer_done) = std_mpsc::channel();
    let readers = log.readers();
    let snapshot_log = readers.clone();
    // Until the destinations report their watermarks, retention keeps everything.
    let keep_from = Arc::new(AtomicU64::new(if setup.is_some() { 1 } else { u64::MAX }));
    let writer_keep_from = keep_from.clone();
    let sync_interval = cfg.log.sync_interval;
    let durable_start = *durable_rx.borrow();
    std::thread::Builder::new()
        .name("changelog-writer".into())
        .spawn(move || {
            let result = write_loop(
                log,
                from_main,
                durable_tx,
                lsn_tx,
                durable_start,
                sync_interval,
                (retention, &writer_keep_from),
            );
            let _ = writer_done_tx.send(result);
        })
        .map_err(|_| RunError::WriterGone)?;

    let mut fanout = match setup {
        Some(setup) => {
            let holds = crate::fanout::load_holds(cfg, &state, retry_failed).await?;
            Some(Fanout::start(cfg, setup, readers, keep_from, holds)?)
        }
        None => None,
    };
    // Snapshots run beside the stream when there are destinations to fill.
    let mut intake = None;
    let _snapshots = if fanout.is_some() {
        let exchange = Exchange::default();
        intake = Some(Intake::new(exchange.clone()));
        let (seq_tx, seq_rx) = watch::channel(resume.last_seq);
        let mut durable_seen = durable_rx.clone();
        let coordinator = Coordinator {
            cfg: Arc::new(cfg.clone()),
            store: state.snapshots().clone(),
            holds: state.holds().clone(),
            reports: state.destinations().clone(),
            exchange,
            durable: seq_rx,
            fresh: created && resume.last_seq == 0 && !recreate,
            log: snapshot_log,
        };
        Some((
            AbortOnDrop(tokio::spawn(async move {
                while durable_seen.changed().await.is_ok() {
                    let seq = durable_seen.borrow().last_seq;
                    seq_tx.send_replace(seq);
                }
            })),
            AbortOnDrop(tokio::spawn(coordinator.run())),
        ))
    } else {
        None
    };
    stream.confirm_from(lsn_rx);
    // Start-up's checks passed and the slot streams: ready (as far as the pipeline goes).
    live::set_streaming();
    let _heartbeat = cfg
        .source
        .heartbeat_interval
        .map(|every| AbortOnDrop(tokio::spawn(heartbeat(cfg.source.conn.clone(), every))));
    let ctx = StreamCtx {
        cfg,
        opts,
        to_writer: &to_writer,
        durable: &durable_rx,
        state: &state,
        binding: &binding,
        resume,
    };
    let mut fanout_failure = None;
    let streamed = {
        let fanout_failed = async {
            match fanout.as_mut() {
                Some(f) => fanout_failure = Some(f.failed().await),
                None => std::future::pending().await,
            }
        };
        let stop = async {
            tokio::select! {
                _ = shutdown => {}
                _ = fanout_failed => {}
            }
        };
        stream_into_log(&ctx, &mut stream, intake.as_mut(), stop).await
    };

    // Shut down in order: make everything appended durable, confirm it, checkpoint it.
    let (ack_tx, ack_rx) = oneshot::channel();
    let flushed = to_writer.send(ToWriter::Flush(ack_tx)).await.is_ok() && ack_rx.await.is_ok();
    drop(to_writer);
    let writer_result = tokio::task::spawn_blocking(move || writer_done.recv())
        .await
        .map_err(|_| RunError::WriterGone)?
        .unwrap_or(Err(RunError::WriterGone));
    let durable = *durable_rx.borrow();
    if flushed {
        if let Err(e) = stream.close().await {
            warn!(error = %Chain(&e), "could not report the final position to PostgreSQL; it resends from the last report");
        }
        save_checkpoint(&state, &binding, durable).await;
    }
    let fanout_stopped = match fanout {
        Some(f) => f.stop().await,
        None => Ok(()),
    };
    if let Some(e) = fanout_failure {
        return Err(e.into());
    }
    // The writer's own error (a failed fsync, a full disk) explains a stream that stopped with
    // WriterGone; report it first.
    writer_result?;
    fanout_stopped?;
    streamed?;
    info!(seq = durable.last_seq, lsn = %durable.lsn, "stopped");
    Ok(RunSummary {
        last_seq: durable.last_seq,
        durable_lsn: durable.lsn,
    })
}

/// What the streaming loop works with.
struct StreamCtx<'a> {
    cfg: &'a Config,
    opts: RunOptions,
    to_writer: &'a mpsc::Sender<ToWriter>,
    durable: &'a watch::Receiver<Durable>,
    state: &'a StateDb,
    binding: &'a Binding,
    resume: Resume,
}

async fn stream_into_log(
    ctx: &StreamCtx<'_>,
    stream: &mut LogicalStream,
    mut intake: Option<&mut Intake>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let StreamCtx {
        cfg,
        opts,
        to_writer,
        durable,
        state,
        binding,
        resume,
    } = *ctx;
    let mut sequencer = Sequencer::resume_after(resume.last_seq);
    let mut batch: Vec<SequencedChange> = Vec::with_capacity(WRITER_BATCH);
    let mut skipping = false;
    let mut in_txn = false;
    let mut txn_changes = 0u64;
    let mut txn = InTxn {
        lsn: Lsn(0),
        xid: 0,
        commit_time: crate::value::Timestamp::from_pg_epoch_micros(0),
    };
    let mut checkpoint_timer = tokio::time::interval(cfg.state.checkpoint_interval);
    checkpoint_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The loop is alive while its timer fires (it does under load too: `biased` below); a
    // writer that stopped taking changes blocks it, and so shows as stale.
    let heartbeat = live::task("stream", cfg.state.checkpoint_interval);
    // Handles taken once: recording at a commit is then an atomic add.
    let received = metrics::counter!(telemetry::CHANGES_RECEIVED_TOTAL);
    let received_bytes = metrics::counter!(telemetry::RECEIVED_BYTES_TOTAL);
    let slot_lag = metrics::gauge!(telemetry::SLOT_LAG_BYTES);
    let streaming = metrics::gauge!(telemetry::STREAMING_TRANSACTIONS);
    let spooled = metrics::gauge!(telemetry::STREAMING_SPOOL_BYTES);
    let mut bytes_counted = stream.bytes_received();
    let mut last_checkpoint = *durable.borrow();
    // The state schema lives in the source database by default: its own writes must not
    // become changes (they would also make seq depend on checkpoint timing).
    let state_schema =
        (cfg.state.conn.dbname == cfg.source.conn.dbname).then_some(cfg.state.schema.as_str());
    tokio::pin!(shutdown);
    let reached = |lsn: Lsn| opts.endpos.is_some_and(|end| lsn >= end);
    if reached(resume.logged_end) {
        return Ok(());
    }

    loop {
        let event = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = checkpoint_timer.tick() => {
                heartbeat.beat();
                let now = *durable.borrow();
                slot_lag.set(stream.received().0.saturating_sub(now.lsn.0) as f64);
                streaming.set(stream.open_streamed_transactions() as f64);
                spooled.set(stream.spooled_bytes() as f64);
                if now != last_checkpoint {
                    save_checkpoint(state, binding, now).await;
                    last_checkpoint = now;
                }
                continue;
            }
            event = stream.next() => event?,
        };
        match event {
            SourceEvent::Begin {
                final_lsn,
                xid,
                commit_time,
            } => {
                txn = InTxn {
                    lsn: final_lsn,
                    xid,
                    commit_time,
                };
                skipping = final_lsn < resume.logged_end;
                if skipping {
                    debug!(xid, lsn = %final_lsn, "skipping a transaction the change log already holds");
                }
                txn_changes = 0;
                in_txn = true;
            }
            SourceEvent::Change(change) => {
                if skipping || Some(change.relation.schema.as_str()) == state_schema {
                    continue;
                }
                if let Some(i) = intake.as_deref_mut() {
                    i.observe(&change);
                }
                txn_changes += 1;
                batch.push(sequencer.assign(change));
                if batch.len() >= WRITER_BATCH {
                    send(to_writer, ToWriter::Changes(std::mem::take(&mut batch))).await?;
                }
            }
            SourceEvent::Message {
                transactional: true,
                lsn,
                prefix,
                content,
            } if prefix == snapshot::read::PREFIX && !skipping => {
                let Some(i) = intake.as_deref_mut() else {
                    continue;
                };
                let Some(mut emission) = i.message(&content, InTxn { lsn, ..txn }) else {
                    continue;
                };
                for change in std::mem::take(&mut emission.changes) {
                    txn_changes += 1;
                    batch.push(sequencer.assign(change));
                    if batch.len() >= WRITER_BATCH {
                        send(to_writer, ToWriter::Changes(std::mem::take(&mut batch))).await?;
                    }
                }
                emission.numbered(sequencer.last());
            }
            SourceEvent::Commit {
                xid,
                commit_lsn,
                end_lsn,
                commit_time,
            } => {
                in_txn = false;
                if let Some(i) = intake.as_deref_mut() {
                    i.committed(xid);
                }
                if skipping {
                    continue;
                }
                received.increment(txn_changes);
                let bytes = stream.bytes_received();
                received_bytes.increment(bytes - bytes_counted);
                bytes_counted = bytes;
                let done = reached(end_lsn);
                if !batch.is_empty() {
                    send(to_writer, ToWriter::Changes(std::mem::take(&mut batch))).await?;
                }
                let msg = if txn_changes > 0 {
                    ToWriter::Commit(CommitInfo {
                        xid,
                        commit_lsn,
                        end_lsn,
                        commit_time,
                        last_seq: sequencer.last(),
                    })
                } else {
                    ToWriter::Empty(end_lsn)
                };
                send(to_writer, msg).await?;
                if done {
                    debug!(lsn = %end_lsn, "reached the end position");
                    break;
                }
            }
            SourceEvent::Keepalive { wal_end } if !in_txn => {
                slot_lag.set(wal_end.0.saturating_sub(durable.borrow().lsn.0) as f64);
                // Nothing in flight: the WAL up to the server's end holds nothing for us. The
                // writer records that before the slot may move past it.
                send(to_writer, ToWriter::Empty(wal_end)).await?;
                if reached(wal_end) {
                    debug!(lsn = %wal_end, "reached the end position");
                    break;
                }
            }
            SourceEvent::Relation(_)
            | SourceEvent::Type { .. }
            | SourceEvent::Origin { .. }
            | SourceEvent::Message { .. }
            | SourceEvent::Keepalive { .. } => {}
        }
    }
    // Changes of an unfinished transaction are not sent: without their commit, recovery would
    // cut them off anyway, and PostgreSQL resends the whole transaction.
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes a non-transactional logical message every `every`: WAL of our own database that the
/// slot decodes, so its position moves even when the published tables are idle.
async fn heartbeat(conn: crate::pgconn::ConnInfo, every: Duration) {
    let mut client = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if client.is_none() {
            match conn.connect_sql().await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    warn!(error = %Chain(&e), "heartbeat: cannot connect; retrying at the next tick");
                    continue;
                }
            }
        }
        if let Some(c) = &client {
            if let Err(e) = c
                .batch_execute("SELECT pg_logical_emit_message(false, 'pgfanout_heartbeat', '')")
                .await
            {
                warn!(error = %Chain(&e), "heartbeat failed; reconnecting at the next tick");
                client = None;
            }
        }
    }
}

async fn send(to_writer: &mpsc::Sender<ToWriter>, msg: ToWriter) -> Result<(), RunError> {
    to_writer.send(msg).await.map_err(|_| RunError::WriterGone)
}

async fn save_checkpoint(state: &StateDb, binding: &Binding, durable: Durable) {
    let slot = binding.source.slot.as_str();
    let cp = Checkpoint {
        commit_end_lsn: durable.lsn,
        last_seq: durable.last_seq,
        binding: Some(binding.clone()),
    };
    // A failed checkpoint costs only a longer replay after a crash with a lost log; keep going.
    match state.checkpoints().save(slot, &cp).await {
        Ok(_) => debug!(seq = cp.last_seq, lsn = %cp.commit_end_lsn, "checkpoint saved"),
        Err(e) => warn!(error = %Chain(&e), "could not save the checkpoint"),
    }
}

/// The writer thread: appends, syncs when the queue runs dry (but not within [`SYNC_GAP`] of
/// the previous sync) or `sync_interval` has passed since the oldest unsynced commit (group
/// commit), publishes what is durable.
///
/// Transactions with nothing to log and idle keepalives move the confirmable position past
/// the last commit; that is published only once the log has recorded it
/// ([`ChangeLog::record_position`]), so start-up can tell a slot confirmed over idle WAL from
/// one that lost WAL. Like syncs, records happen when the queue runs dry, so they coalesce.
fn write_loop(
    mut log: ChangeLog,
    mut rx: mpsc::Receiver<ToWriter>,
    durable_tx: watch::Sender<Durable>,
    lsn_tx: watch::Sender<Lsn>,
    durable: Durable,
    sync_interval: Duration,
    // With the oldest seq a destination still needs (see `apply_retention`).
    (retention, keep_from): (Retention, &AtomicU64),
) -> Result<(), RunError> {
    let mut w = Published {
        durable,
        pending: None,
        idle: None,
        durable_tx,
        lsn_tx,
        metrics: LogMetrics::new(),
        last_sync: Instant::now(),
    };
    let gap = sync_interval.min(SYNC_GAP);
    w.metrics.record(&log, durable.last_seq);
    let mut oldest_unsynced: Option<Instant> = None;
    let mut last_retention = Instant::now();
    let mut segments = log.segment_count();
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => Some(m),
            Err(mpsc::error::TryRecvError::Empty) => {
                if w.pending.is_some() {
                    let wait = gap.saturating_sub(w.last_sync.elapsed());
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                        continue;
                    }
                }
                // Idle: make what we have durable before waiting.
                w.settle(&mut log)?;
                oldest_unsynced = None;
                // The log grows past a size cap by whole segments: check it when one was
                // added, not only every minute.
                let grew = retention.max_bytes.is_some() && log.segment_count() > segments;
                if grew || last_retention.elapsed() >= RETENTION_EVERY {
                    last_retention = Instant::now();
                    let keep = keep_from.load(Ordering::Relaxed);
                    apply_retention(&mut log, &retention, (keep != u64::MAX).then_some(keep));
                    segments = log.segment_count();
                }
                rx.blocking_recv()
            }
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        };
        let Some(msg) = msg else {
            w.settle(&mut log)?;
            return Ok(());
        };
        match msg {
            ToWriter::Changes(changes) => {
                for c in &changes {
                    log.append_change(c)?;
                }
            }
            ToWriter::Commit(info) => {
                log.append_commit(&info)?;
                w.pending = Some(Durable {
                    lsn: info.end_lsn,
                    last_seq: info.last_seq,
                });
                oldest_unsynced.get_or_insert_with(Instant::now);
            }
            ToWriter::Empty(lsn) => {
                w.idle = Some(w.idle.map_or(lsn, |i| i.max(lsn)));
            }
            ToWriter::Flush(ack) => {
                w.settle(&mut log)?;
                oldest_unsynced = None;
                let _ = ack.send(());
            }
        }
        if oldest_unsynced.is_some_and(|t| t.elapsed() >= sync_interval) {
            w.sync(&mut log)?;
            oldest_unsynced = None;
        }
    }
}

/// What the writer has appended, made durable and published.
struct Published {
    /// Published: may be confirmed to PostgreSQL.
    durable: Durable,
    /// Commits appended, not yet synced.
    pending: Option<Durable>,
    /// Past the last commit (nothing to log up to here), not yet recorded by the log.
    idle: Option<Lsn>,
    durable_tx: watch::Sender<Durable>,
    lsn_tx: watch::Sender<Lsn>,
    metrics: LogMetrics,
    /// When the last sync finished (see [`SYNC_GAP`]).
    last_sync: Instant,
}

/// The change log's metrics, recorded by the writer once per sync (group commit).
struct LogMetrics {
    logged: metrics::Counter,
    last_seq: metrics::Gauge,
    oldest_seq: metrics::Gauge,
    size: metrics::Gauge,
    segments: metrics::Gauge,
    counted_seq: u64,
}

impl LogMetrics {
    fn new() -> Self {
        LogMetrics {
            logged: metrics::counter!(telemetry::CHANGES_LOGGED_TOTAL),
            last_seq: metrics::gauge!(telemetry::LOG_LAST_SEQ),
            oldest_seq: metrics::gauge!(telemetry::LOG_OLDEST_SEQ),
            size: metrics::gauge!(telemetry::LOG_SIZE_BYTES),
            segments: metrics::gauge!(telemetry::LOG_SEGMENTS),
            counted_seq: 0,
        }
    }

    /// The log is durable up to `last_seq`.
    fn record(&mut self, log: &ChangeLog, last_seq: u64) {
        if last_seq > self.counted_seq {
            self.logged.increment(last_seq - self.counted_seq);
        }
        self.counted_seq = last_seq;
        self.last_seq.set(last_seq as f64);
        self.oldest_seq.set(log.oldest_seq().unwrap_or(0) as f64);
        self.size.set(log.size_bytes() as f64);
        self.segments.set(log.segment_count() as f64);
    }
}

impl Published {
    /// Syncs the appended commits and publishes them.
    fn sync(&mut self, log: &mut ChangeLog) -> Result<(), RunError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        log.sync()?;
        self.last_sync = Instant::now();
        // An error here stands for an fsync that reported failure after the data reached the
        // disk: handled as `sync`'s own error (nothing published; the writer stops).
        failpoint::hit(failpoint::PIPELINE_AFTER_FSYNC_BEFORE_FEEDBACK).map_err(|source| {
            LogError::Io {
                action: "syncing the active segment",
                path: log.dir().to_owned(),
                source,
            }
        })?;
        self.publish(p);
        self.metrics.record(log, p.last_seq);
        Ok(())
    }

    /// Syncs, then records and publishes an idle position past the last commit.
    fn settle(&mut self, log: &mut ChangeLog) -> Result<(), RunError> {
        self.sync(log)?;
        let Some(lsn) = self.idle.take() else {
            return Ok(());
        };
        if lsn <= self.durable.lsn {
            return Ok(());
        }
        let at = Durable {
            lsn,
            last_seq: self.durable.last_seq,
        };
        log.record_position(Position {
            lsn,
            last_seq: at.last_seq,
        })?;
        self.publish(at);
        Ok(())
    }

    fn publish(&mut self, d: Durable) {
        self.durable = Durable {
            lsn: self.durable.lsn.max(d.lsn),
            last_seq: d.last_seq,
        };
        self.durable_tx.send_replace(self.durable);
        self.lsn_tx.send_replace(self.durable.lsn);
    }
}

/// `keep_from_seq`: the oldest seq a destination still needs (age-based retention keeps it).
fn apply_retention(log: &mut ChangeLog, retention: &Retention, keep_from_seq: Option<u64>) {
    if retention.max_age.is_none() && retention.max_bytes.is_none() {
        return;
    }
    match log.apply_retention(retention, keep_from_seq) {
        Ok(r) if r.dropped_needed => {
            warn!(segments = r.deleted_segments.len(), oldest_seq = ?r.oldest_seq, keep_from_seq = ?keep_from_seq, "log.retention_mb forced deleting changes a destination still needs; the fan-out holds each such destination `needs resync`")
        }
        Ok(r) if !r.deleted_segments.is_empty() => {
            info!(segments = r.deleted_segments.len(), bytes = r.deleted_bytes, oldest_seq = ?r.oldest_seq, "retention deleted old segments")
        }
        Ok(_) => {}
        Err(e) => warn!(error = %Chain(&e), "retention failed"),
    }
}

/// The slot was created over existing progress: what happened between the log's end and the
/// new slot never reaches any destination, so each is held `needs resync` (persisted; shown
/// by `status`; cleared by a resync or `pgfanout destination resume`).
async fn mark_all_need_resync(
    cfg: &Config,
    state: &StateDb,
    after_seq: u64,
) -> Result<(), RunError> {
    let reason = format!(
        "replication slot {:?} was created again (run --recreate-slot): changes between the change log's end (seq {after_seq}) and the new slot were not captured",
        cfg.source.slot
    );
    for d in &cfg.destinations {
        warn!(destination = %d.name, "{reason}; it needs a resync");
        let hold = Hold {
            kind: HoldKind::NeedsResync,
            reason: reason.clone(),
            seq: Some(after_seq),
        };
        state.holds().set(&d.name, &hold).await?;
    }
    Ok(())
}
