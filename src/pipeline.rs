//! `pgfanout run`: wires source → sequencer → change log, and feeds durability back to the slot.
//!
//! ```text
//!   LogicalStream ──▶ sequencer ──▶ bounded channel ──▶ writer thread (ChangeLog: append, fsync)
//!        ▲                                                     │ durable end LSN (watch)
//!        └──────────── standby status: flushed = durable ◀─────┘
//!   checkpoint timer ──▶ state DB: (slot, durable end LSN, last seq)
//! ```
//!
//! Resume: the change log is the truth. On start it is recovered (torn tail and unfinished
//! transaction cut off), numbering continues after its last seq, and any transaction the slot
//! sends again that the log already holds (its commit LSN is below the log's last commit end)
//! is skipped, so every change keeps the seq it had. With an empty log, the checkpoint in the
//! state database supplies the last seq and position.

use std::future::Future;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::change::SequencedChange;
use crate::changelog::{ChangeLog, CommitInfo, LogError, LogOptions, Retention};
use crate::config::Config;
use crate::lsn::Lsn;
use crate::sequencer::Sequencer;
use crate::source::{LogicalStream, SlotSpec, SourceError, SourceEvent};
use crate::state::{Checkpoint, StateDb, StateError};

/// Changes handed to the writer in one message (amortises the channel per change).
const WRITER_BATCH: usize = 256;
/// Messages in flight to the writer: bounds memory to about this many batches.
const WRITER_QUEUE: usize = 64;
const RETENTION_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    State(#[from] StateError),
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

/// Where streaming resumes.
#[derive(Debug, Clone, Copy)]
struct Resume {
    last_seq: u64,
    /// Transactions whose commit LSN is below this are already in the log.
    logged_end: Lsn,
}

pub async fn run(cfg: &Config, shutdown: impl Future<Output = ()>) -> Result<RunSummary, RunError> {
    let state = StateDb::connect(&cfg.state.conn, &cfg.state.schema).await?;
    let slot = cfg.source.slot.clone();
    let log_dir = cfg.log.dir.clone();
    let opts = LogOptions {
        segment_bytes: cfg.log.segment_bytes,
        ..LogOptions::default()
    };
    let (log, recovered) = tokio::task::spawn_blocking(move || ChangeLog::open(&log_dir, opts))
        .await
        .map_err(|_| RunError::WriterGone)??;
    if recovered.truncated_bytes > 0 {
        warn!(
            bytes = recovered.truncated_bytes,
            "change log recovery cut off an unfinished tail; PostgreSQL resends it"
        );
    }
    let checkpoint = state.checkpoints().load(&slot).await?;
    let resume = match (recovered.last_commit, checkpoint) {
        (Some(c), _) => Resume {
            last_seq: c.last_seq,
            logged_end: c.end_lsn,
        },
        (None, Some(cp)) => {
            warn!(seq = cp.last_seq, lsn = %cp.commit_end_lsn, "change log is empty; continuing numbering from the checkpoint");
            Resume {
                last_seq: cp.last_seq,
                logged_end: cp.commit_end_lsn,
            }
        }
        (None, None) => Resume {
            last_seq: 0,
            logged_end: Lsn::ZERO,
        },
    };
    info!(slot = %slot, seq = resume.last_seq, lsn = %resume.logged_end, "resuming");

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
                retention,
            );
            let _ = writer_done_tx.send(result);
        })
        .map_err(|_| RunError::WriterGone)?;

    let mut stream = LogicalStream::start(&cfg.source, SlotSpec::Named(slot.clone())).await?;
    stream.confirm_from(lsn_rx);
    let _heartbeat = cfg
        .source
        .heartbeat_interval
        .map(|every| AbortOnDrop(tokio::spawn(heartbeat(cfg.source.conn.clone(), every))));
    let streamed = stream_into_log(
        cfg,
        &mut stream,
        &to_writer,
        &durable_rx,
        &state,
        resume,
        shutdown,
    )
    .await;

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
            warn!(error = %e, "could not report the final position to PostgreSQL; it resends from the last report");
        }
        save_checkpoint(&state, &slot, durable).await;
    }
    streamed?;
    writer_result?;
    info!(seq = durable.last_seq, lsn = %durable.lsn, "stopped");
    Ok(RunSummary {
        last_seq: durable.last_seq,
        durable_lsn: durable.lsn,
    })
}

async fn stream_into_log(
    cfg: &Config,
    stream: &mut LogicalStream,
    to_writer: &mpsc::Sender<ToWriter>,
    durable: &watch::Receiver<Durable>,
    state: &StateDb,
    resume: Resume,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let mut sequencer = Sequencer::resume_after(resume.last_seq);
    let mut batch: Vec<SequencedChange> = Vec::with_capacity(WRITER_BATCH);
    let mut skipping = false;
    let mut txn_changes = 0u64;
    let mut checkpoint_timer = tokio::time::interval(cfg.state.checkpoint_interval);
    checkpoint_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = *durable.borrow();
    // The state schema lives in the source database by default: its own writes must not
    // become changes (they would also make seq depend on checkpoint timing).
    let state_schema =
        (cfg.state.conn.dbname == cfg.source.conn.dbname).then_some(cfg.state.schema.as_str());
    tokio::pin!(shutdown);

    loop {
        let event = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = checkpoint_timer.tick() => {
                let now = *durable.borrow();
                if now != last_checkpoint {
                    save_checkpoint(state, &cfg.source.slot, now).await;
                    last_checkpoint = now;
                }
                continue;
            }
            event = stream.next() => event?,
        };
        match event {
            SourceEvent::Begin { final_lsn, xid, .. } => {
                skipping = final_lsn < resume.logged_end;
                if skipping {
                    debug!(xid, lsn = %final_lsn, "skipping a transaction the change log already holds");
                }
                txn_changes = 0;
            }
            SourceEvent::Change(change) => {
                if skipping || Some(change.relation.schema.as_str()) == state_schema {
                    continue;
                }
                txn_changes += 1;
                batch.push(sequencer.assign(change));
                if batch.len() >= WRITER_BATCH {
                    send(to_writer, ToWriter::Changes(std::mem::take(&mut batch))).await?;
                }
            }
            SourceEvent::Commit {
                xid,
                commit_lsn,
                end_lsn,
                commit_time,
            } => {
                if skipping {
                    continue;
                }
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
async fn heartbeat(conn: crate::source::conninfo::ConnInfo, every: Duration) {
    let mut client = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if client.is_none() {
            match conn.sql_config().connect(tokio_postgres::NoTls).await {
                Ok((c, connection)) => {
                    tokio::spawn(connection);
                    client = Some(c);
                }
                Err(e) => {
                    warn!(error = %e, "heartbeat: cannot connect; retrying at the next tick");
                    continue;
                }
            }
        }
        if let Some(c) = &client {
            if let Err(e) = c
                .batch_execute("SELECT pg_logical_emit_message(false, 'pgfanout_heartbeat', '')")
                .await
            {
                warn!(error = %e, "heartbeat failed; reconnecting at the next tick");
                client = None;
            }
        }
    }
}

async fn send(to_writer: &mpsc::Sender<ToWriter>, msg: ToWriter) -> Result<(), RunError> {
    to_writer.send(msg).await.map_err(|_| RunError::WriterGone)
}

async fn save_checkpoint(state: &StateDb, slot: &str, durable: Durable) {
    let cp = Checkpoint {
        commit_end_lsn: durable.lsn,
        last_seq: durable.last_seq,
    };
    // A failed checkpoint costs only a longer replay after a crash with a lost log; keep going.
    match state.checkpoints().save(slot, &cp).await {
        Ok(_) => debug!(seq = cp.last_seq, lsn = %cp.commit_end_lsn, "checkpoint saved"),
        Err(e) => warn!(error = %e, "could not save the checkpoint"),
    }
}

/// The writer thread: appends, syncs when the queue runs dry or `sync_interval` has passed
/// since the oldest unsynced commit (group commit), publishes what is durable.
fn write_loop(
    mut log: ChangeLog,
    mut rx: mpsc::Receiver<ToWriter>,
    durable_tx: watch::Sender<Durable>,
    lsn_tx: watch::Sender<Lsn>,
    mut durable: Durable,
    sync_interval: Duration,
    retention: Retention,
) -> Result<(), RunError> {
    let mut pending: Option<Durable> = None;
    let mut oldest_unsynced: Option<Instant> = None;
    let mut last_retention = Instant::now();
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => Some(m),
            Err(mpsc::error::TryRecvError::Empty) => {
                // Idle: make what we have durable before waiting.
                if pending.is_some() {
                    sync(&mut log, &mut pending, &mut durable, &durable_tx, &lsn_tx)?;
                    oldest_unsynced = None;
                }
                if last_retention.elapsed() >= RETENTION_EVERY {
                    last_retention = Instant::now();
                    apply_retention(&mut log, &retention);
                }
                rx.blocking_recv()
            }
            Err(mpsc::error::TryRecvError::Disconnected) => None,
        };
        let Some(msg) = msg else {
            if pending.is_some() {
                sync(&mut log, &mut pending, &mut durable, &durable_tx, &lsn_tx)?;
            }
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
                pending = Some(Durable {
                    lsn: info.end_lsn,
                    last_seq: info.last_seq,
                });
                oldest_unsynced.get_or_insert_with(Instant::now);
            }
            ToWriter::Empty(lsn) => {
                let base = pending.unwrap_or(durable);
                let next = Durable {
                    lsn: base.lsn.max(lsn),
                    last_seq: base.last_seq,
                };
                if pending.is_some() {
                    pending = Some(next);
                } else {
                    // Nothing unsynced before it: confirmable at once.
                    durable = next;
                    durable_tx.send_replace(durable);
                    lsn_tx.send_replace(durable.lsn);
                }
            }
            ToWriter::Flush(ack) => {
                sync(&mut log, &mut pending, &mut durable, &durable_tx, &lsn_tx)?;
                oldest_unsynced = None;
                let _ = ack.send(());
            }
        }
        if oldest_unsynced.is_some_and(|t| t.elapsed() >= sync_interval) {
            sync(&mut log, &mut pending, &mut durable, &durable_tx, &lsn_tx)?;
            oldest_unsynced = None;
        }
    }
}

fn sync(
    log: &mut ChangeLog,
    pending: &mut Option<Durable>,
    durable: &mut Durable,
    durable_tx: &watch::Sender<Durable>,
    lsn_tx: &watch::Sender<Lsn>,
) -> Result<(), RunError> {
    log.sync()?;
    if let Some(p) = pending.take() {
        *durable = p;
        durable_tx.send_replace(p);
        lsn_tx.send_replace(p.lsn);
    }
    Ok(())
}

fn apply_retention(log: &mut ChangeLog, retention: &Retention) {
    if retention.max_age.is_none() && retention.max_bytes.is_none() {
        return;
    }
    match log.apply_retention(retention, None) {
        Ok(r) if !r.deleted_segments.is_empty() => {
            info!(segments = r.deleted_segments.len(), bytes = r.deleted_bytes, oldest_seq = ?r.oldest_seq, "retention deleted old segments")
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "retention failed"),
    }
}
