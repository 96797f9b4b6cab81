//! The dispatcher: reads the change log once, routes each change, and hands every attached
//! destination its operations in [`Chunk`]s through a bounded queue. It never makes one
//! destination wait for another: a full queue detaches its destination (which then reads the
//! log itself, see `worker.rs`) as long as another attached destination has room. When none
//! has, waiting for room delays nobody, so the dispatcher waits: a destination that is merely
//! busy is not made to read and route the log a second time. A destination that asks to be
//! attached again is, at the next round.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::changelog::{LogReader, LogRecord};
use crate::fanout::route::{Planned, Routed};
use crate::value::Timestamp;

use super::router::Router;
use super::{DestShared, FanoutError};

/// Ops per chunk before it is sent even mid-transaction (bounds the dispatcher's memory).
const CHUNK_OPS: usize = 1024;
/// Longest routed ops wait in the dispatcher while the log keeps coming.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// How often an attached destination with nothing to do hears how far the log went (so its
/// watermark, and retention, can move on).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Changes between two heartbeats while a transaction goes on (`round` beats otherwise).
const BEAT_EVERY_CHANGES: u64 = 4096;
/// Longest wait for new records before looking at the stop flag and re-attach requests.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// How often a full queue is looked at again while the dispatcher waits for room.
const ROOM_POLL: Duration = Duration::from_micros(500);

/// A destination's queue holds up to two of its batches in chunks (and at least
/// [`super::QUEUE_CHUNKS`] chunks, for small ones): the dispatcher routes on while the worker
/// writes one batch, so a destination that keeps up with the log on average never detaches
/// just because one write takes a while (a ClickHouse insert). What the queue may hold in
/// memory is bounded by [`queue_ops`].
pub(super) fn queue_chunks(batch_rows: usize) -> usize {
    (2 * batch_rows.div_ceil(CHUNK_OPS)).max(super::QUEUE_CHUNKS)
}

/// The ops a destination's queue holds at most, whatever the chunks' sizes: one batch (at
/// least one full chunk). The worker writes one batch while the next one queues up; a
/// destination that writes a batch faster than the log brings one never needs more, and rows
/// are the daemon's memory (a few hundred bytes each, every destination its own copy), so a
/// queue counted in chunks of up to 1,024 ops held far more than a batch (invariant 37).
pub(super) fn queue_ops(batch_rows: usize) -> usize {
    batch_rows.max(CHUNK_OPS)
}

/// A destination's share of the log from `from_seq` to `to_seq` (inclusive): every change in
/// that range was routed, and `ops` are all of it that concerns the destination. The chunk
/// sent at re-attachment is empty (`to_seq = from_seq - 1`): it only marks where the gap the
/// worker fills from the log ends.
#[derive(Debug)]
pub(super) struct Chunk {
    pub from_seq: u64,
    pub to_seq: u64,
    pub ops: Vec<(usize, Planned)>,
    /// Commit time of the last transaction that ended at or before `to_seq`.
    pub commit_time: Option<Timestamp>,
    /// The ops' share of the destination's queue budget ([`queue_ops`]), given back when the
    /// worker has taken them (the chunk is dropped).
    pub _budget: Option<OwnedSemaphorePermit>,
}

/// The dispatcher's side of one destination.
pub(super) struct Link {
    pub name: String,
    pub tx: mpsc::Sender<Chunk>,
    pub shared: Arc<DestShared>,
    /// Permits for the ops queued ([`queue_ops`]).
    budget: Arc<Semaphore>,
    /// The budget's size.
    queue_ops: usize,
    attached: bool,
    /// Last seq routed for this destination while attached.
    covered: u64,
    pending: Vec<(usize, Planned)>,
    last_sent: Instant,
}

impl Link {
    /// Every destination starts detached: it first catches up from its own watermark.
    /// `queue_ops` bounds the ops its queue holds ([`queue_ops`]).
    pub fn new(
        name: String,
        tx: mpsc::Sender<Chunk>,
        shared: Arc<DestShared>,
        queue_ops: usize,
    ) -> Self {
        shared.detached.store(true, Ordering::SeqCst);
        Link {
            name,
            tx,
            shared,
            budget: Arc::new(Semaphore::new(queue_ops)),
            queue_ops,
            attached: false,
            covered: 0,
            pending: Vec::new(),
            last_sent: Instant::now(),
        }
    }
}

struct Dispatcher<'s> {
    stop: &'s std::sync::atomic::AtomicBool,
    links: Vec<Link>,
    /// Links with pending ops.
    dirty: Vec<usize>,
    /// Links whose pending ops reached [`CHUNK_OPS`].
    full: Vec<usize>,
    last_seq: u64,
    commit_time: Option<Timestamp>,
    last_flush: Instant,
    last_progress: Instant,
    /// Beats with each round (idle or between commits), not per record.
    heartbeat: crate::telemetry::live::Task,
}

/// Runs until `stop` is set or routing fails. `reader` starts where the attached
/// destinations are to be served from (the durable end at start: everyone catches up first).
pub(super) fn run(
    mut reader: LogReader,
    mut router: Router,
    links: Vec<Link>,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), FanoutError> {
    let mut d = Dispatcher {
        stop,
        links,
        dirty: Vec::new(),
        full: Vec::new(),
        last_seq: reader.next_seq().saturating_sub(1),
        commit_time: None,
        last_flush: Instant::now(),
        last_progress: Instant::now(),
        heartbeat: crate::telemetry::live::task("fanout-dispatch", PROGRESS_EVERY),
    };
    let mut routed: Vec<Routed> = Vec::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            d.flush_dirty();
            return Ok(());
        }
        match reader.next_record()? {
            None => {
                d.flush_dirty();
                d.round();
                reader.wait(IDLE_WAIT);
            }
            Some(LogRecord::Change(c)) => {
                router.route(&c, &mut routed)?;
                d.last_seq = c.seq;
                for r in routed.drain(..) {
                    d.push(r);
                }
                // Only now, with every op of this change pending: a chunk ends at a change
                // boundary (a tenant move or key change yields two ops with one seq).
                d.send_full();
                // Inside a huge transaction no round comes: beat every so many changes
                // (seqs are dense), never a clock read per change.
                if c.seq % BEAT_EVERY_CHANGES == 0 {
                    d.heartbeat.beat();
                }
            }
            Some(LogRecord::Commit(ci)) => {
                d.last_seq = ci.last_seq;
                d.commit_time = Some(ci.commit_time);
                if d.last_flush.elapsed() >= FLUSH_EVERY {
                    d.flush_dirty();
                    d.round();
                } else {
                    d.flush_to_waiting();
                }
            }
        }
    }
}

impl Dispatcher<'_> {
    fn push(&mut self, r: Routed) {
        let i = r.destination.0;
        let Some(link) = self.links.get_mut(i) else {
            return;
        };
        if !link.attached {
            return;
        }
        if link.pending.is_empty() {
            self.dirty.push(i);
        }
        link.pending.push((r.table, r.op));
        if link.pending.len() == CHUNK_OPS {
            self.full.push(i);
        }
    }

    /// Sends the chunks that reached [`CHUNK_OPS`].
    fn send_full(&mut self) {
        while let Some(i) = self.full.pop() {
            if !self.links[i].pending.is_empty() {
                self.send(i);
            }
        }
    }

    /// Sends pending ops at once to destinations whose queue is empty: their worker waits
    /// for work, and holding a committed change back only adds latency. A busy worker's ops
    /// keep gathering into fuller chunks.
    fn flush_to_waiting(&mut self) {
        let mut i = 0;
        while i < self.dirty.len() {
            let l = self.dirty[i];
            let link = &self.links[l];
            if !link.pending.is_empty() && link.tx.capacity() == link.tx.max_capacity() {
                self.send(l);
                self.dirty.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            if !self.links[i].pending.is_empty() {
                self.send(i);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
        self.last_flush = Instant::now();
    }

    /// Re-attaches destinations that caught up, and tells idle attached ones how far the log
    /// went.
    fn round(&mut self) {
        let progress = self.last_progress.elapsed() >= PROGRESS_EVERY;
        if progress {
            self.last_progress = Instant::now();
            self.heartbeat.beat();
        }
        for i in 0..self.links.len() {
            let link = &mut self.links[i];
            if link.attached && link.shared.detached.load(Ordering::SeqCst) {
                // The worker detached itself (a failed session, a hold): it reads the log on
                // its own from its watermark and asks to be attached again when caught up.
                link.attached = false;
                link.pending.clear();
                info!(destination = %link.name, seq = self.last_seq, "destination detached itself from the dispatcher");
            }
            if !link.attached {
                if link.shared.reattach.swap(false, Ordering::SeqCst) {
                    // Everything up to here was routed without this destination; it fills
                    // that gap from the log itself (the chunk rule in worker.rs).
                    link.attached = true;
                    link.covered = self.last_seq;
                    link.shared.detached.store(false, Ordering::SeqCst);
                    info!(destination = %link.name, seq = self.last_seq, "destination attached to the dispatcher");
                    // An empty chunk starting after `last_seq` tells the worker where the gap
                    // ends now, even if no change for it ever follows.
                    self.send(i);
                }
                continue;
            }
            if progress
                && link.covered < self.last_seq
                && link.last_sent.elapsed() >= PROGRESS_EVERY
            {
                self.send(i);
            }
        }
    }

    /// Whether the dispatcher may wait for room in destination `i`'s full queue: only while
    /// it is still attached, pgfanout is not stopping, and no other attached destination has
    /// room (so the wait holds back no destination that could take work).
    fn may_wait_for(&self, i: usize) -> bool {
        let link = &self.links[i];
        if self.stop.load(Ordering::Relaxed) || link.shared.detached.load(Ordering::SeqCst) {
            return false;
        }
        !self.links.iter().enumerate().any(|(j, other)| {
            j != i
                && other.attached
                && !other.shared.detached.load(Ordering::SeqCst)
                && other.tx.capacity() > 0
                && other.budget.available_permits() > 0
        })
    }

    /// Sleeps while waiting for room in a queue; the dispatcher is alive, held back by the
    /// destinations, so it keeps beating.
    fn wait_a_moment(&mut self, waiting_since: &mut Option<Instant>) {
        let since = waiting_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= PROGRESS_EVERY {
            self.heartbeat.beat();
            *since = Instant::now();
        }
        std::thread::sleep(ROOM_POLL);
    }

    fn send(&mut self, i: usize) {
        let link = &mut self.links[i];
        let ops = std::mem::take(&mut link.pending);
        // A queue that holds its budget of ops is full, however few chunks it holds; it is
        // waited for like a full queue (see `may_wait_for`), else the destination detaches.
        let budget = match u32::try_from(ops.len()) {
            Ok(0) => None,
            Ok(n) => {
                let mut waiting_since: Option<Instant> = None;
                loop {
                    let link = &self.links[i];
                    if let Ok(permit) = link.budget.clone().try_acquire_many_owned(n) {
                        break Some(permit);
                    }
                    // More than the whole budget never fits: only detaching helps.
                    if n as usize > link.queue_ops || !self.may_wait_for(i) {
                        self.links[i].detach_full(self.last_seq);
                        return;
                    }
                    self.wait_a_moment(&mut waiting_since);
                }
            }
            Err(_) => {
                self.links[i].detach_full(self.last_seq);
                return;
            }
        };
        let link = &mut self.links[i];
        let mut chunk = Chunk {
            from_seq: link.covered + 1,
            to_seq: self.last_seq,
            ops,
            commit_time: self.commit_time,
            _budget: budget,
        };
        let mut waiting_since: Option<Instant> = None;
        let result = loop {
            match self.links[i].tx.try_send(chunk) {
                Err(mpsc::error::TrySendError::Full(back)) if self.may_wait_for(i) => {
                    chunk = back;
                    self.wait_a_moment(&mut waiting_since);
                }
                other => break other,
            }
        };
        let link = &mut self.links[i];
        match result {
            Ok(()) => {
                link.covered = self.last_seq;
                link.last_sent = Instant::now();
            }
            Err(mpsc::error::TrySendError::Full(_)) => link.detach_full(self.last_seq),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                link.attached = false;
                link.shared.detached.store(true, Ordering::SeqCst);
            }
        }
    }
}

impl Link {
    /// The queue is full: the destination reads the log itself from here on.
    fn detach_full(&mut self, seq: u64) {
        self.attached = false;
        self.shared.detached.store(true, Ordering::SeqCst);
        warn!(destination = %self.name, seq, "destination fell behind; detached, it catches up from the change log");
    }
}
