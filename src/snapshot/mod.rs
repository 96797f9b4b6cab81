//! Snapshots: the rows that already exist, copied into destinations while the stream flows.
//!
//! ```text
//!   coordinator (requests in the state DB) ──▶ range workers (≤ parallelism, own SQL connection each)
//!        per chunk:  L watermark ─▶ read chunk (keyset, REPEATABLE READ) ─▶ rows to the Exchange ─▶ H watermark
//!                                                                              │
//!   stream ──▶ Intake: L opens a window, changes of the table fill it, H ─▶ Merger: drop changed keys
//!                  ─▶ the rest as `Op::Snapshot` changes + an `Op::SnapshotMark`, in the H transaction
//!                  ─▶ sequencer ─▶ change log ─▶ fan-out (only to the scope's destinations)
//!   worker: outcome ─▶ waits until the log made it durable ─▶ saves the range's position
//! ```
//!
//! The algorithm is Netflix's DBLog (also Debezium's incremental snapshots); `window.rs` says
//! why it is consistent and how a commit the chunk could not see is caught. What this shape
//! buys: snapshot rows are change-log records numbered by the one sequencer at the high
//! watermark, so delivery, the `_seq` guard, watermarks, `replay`, `status` and lag work for
//! them unchanged, and a destination applies them in order with the stream's own changes.
//!
//! - **Scope.** Rows carry the destinations, tenants and mappings they are for; routing
//!   gives them to no one else.
//! - **Resumable.** A range's position is saved once its chunk is durable in the log; after a
//!   crash the range continues from there (at most the chunks in flight are read again, and a
//!   chunk read twice is harmless: its second copy is the rows' state at a later position).
//! - **Deletes.** A table's last mark carries `sweep_below`: a destination removes its rows
//!   whose version is not above the snapshot's start (neither read nor changed since, so gone
//!   from the source). Only for snapshots of whole destinations or mappings: a snapshot of
//!   some tenants cannot tell other tenants' rows apart, so it removes nothing.
//! - **Where requests come from.** `[snapshot] mode = "initial"`: every destination on first
//!   start, and what a destination is given later (coverage, kept in the state DB);
//!   `pgfanout resync`; `auto_resync`: a destination held `needs resync` (the hold clears
//!   once done).

pub mod read;
pub mod window;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::change::{Op, Relation, RowChange, SnapshotMark, SnapshotScope};
use crate::changelog::{LogRecord, Readers};
use crate::config::{Config, SnapshotMode, Tenants};
use crate::disposition::{Backoff, Classify, ErrorKind};
use crate::lsn::Lsn;
use crate::pgconn::SqlConnectError;
use crate::report::Chain;
use crate::source::catalog::{self, CatalogError};
use crate::sql::QualifiedName;
use crate::state::{
    Coverage, DestinationStore, HoldKind, HoldStore, NewSnapshot, RangeProgress, SnapshotRow,
    SnapshotState, SnapshotStore, StateError, TableProgress,
};
use crate::value::Timestamp;
use read::{Chunk, TableKey, Watermark};
use window::{ChunkTable, Merger, Retry};

/// Snapshots looked at for a destination's resync (newest first).
const RECENT: i64 = 100;
/// How often the coordinator looks for new requests and `needs resync` holds.
const POLL: Duration = Duration::from_secs(1);
/// A chunk read again this many times in a row stops its snapshot (something keeps changing
/// under it that the stream cannot account for).
const MAX_RETRIES: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("could not connect to the source for a snapshot")]
    Connect(#[source] SqlConnectError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("table {table} does not exist\nHINT: fix the mapping's source or create the table")]
    NoTable { table: String },
    #[error("table {table} has no primary key and no replica identity index: a snapshot cannot read it in chunks\nHINT: add a primary key, or ALTER TABLE {table} REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns>")]
    NoKey { table: String },
    #[error("the snapshot names destination {name:?}, which is not configured")]
    UnknownDestination { name: String },
    #[error("the snapshot names mapping {name:?}, which none of its destinations has")]
    UnknownMapping { name: String },
    #[error("a chunk of {table} was read {MAX_RETRIES} times and every time changed under it")]
    Unsettled { table: String },
    #[error("the stream stopped")]
    Stopped,
}

impl Classify for SnapshotError {
    fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::Connect(e) => e.kind(),
            SnapshotError::Catalog(e) => e.kind(),
            SnapshotError::State(e) => e.kind(),
            SnapshotError::Stopped => ErrorKind::Transient,
            _ => ErrorKind::Definite,
        }
    }
}

/// What became of a chunk or table mark the stream reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Numbered: durable once the log's durable seq reaches `last_seq`.
    Emitted {
        last_seq: u64,
        rows: u64,
    },
    Retry(Retry),
}

struct PendingChunk {
    table: Arc<ChunkTable>,
    scope: Arc<SnapshotScope>,
    mark: SnapshotMark,
    read: Option<(Arc<Relation>, Chunk)>,
    reply: Option<oneshot::Sender<Outcome>>,
}

struct PendingDone {
    relation: Arc<Relation>,
    scope: Arc<SnapshotScope>,
    mark: SnapshotMark,
    reply: oneshot::Sender<Outcome>,
}

/// Chunks between their watermarks: filled by the range workers, taken by the stream.
#[derive(Clone, Default)]
pub struct Exchange(Arc<Mutex<ExchangeInner>>);

#[derive(Default)]
struct ExchangeInner {
    chunks: HashMap<u64, PendingChunk>,
    done: HashMap<u64, PendingDone>,
}

impl Exchange {
    fn lock(&self) -> std::sync::MutexGuard<'_, ExchangeInner> {
        // A panic while holding it cannot leave the maps half-updated (single inserts and
        // removals), so a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Ids of chunks and table marks: random start, so a watermark a previous process wrote
/// (resent after a restart) never matches a chunk of this one.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let _ = NEXT.compare_exchange(
        0,
        rand::random::<u64>() >> 2 | 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The stream's side: watches changes for open windows and turns watermarks into changes.
pub struct Intake {
    exchange: Exchange,
    merger: Merger,
}

/// Changes a watermark adds to its transaction; report their last seq with
/// [`Emission::numbered`] once the sequencer numbered them.
pub struct Emission {
    pub changes: Vec<RowChange>,
    rows: u64,
    reply: Option<oneshot::Sender<Outcome>>,
}

impl Emission {
    pub fn numbered(self, last_seq: u64) {
        if let Some(r) = self.reply {
            let _ = r.send(Outcome::Emitted {
                last_seq,
                rows: self.rows,
            });
        }
    }
}

/// The transaction a watermark arrived in.
#[derive(Debug, Clone, Copy)]
pub struct InTxn {
    pub lsn: Lsn,
    pub xid: u32,
    pub commit_time: Timestamp,
}

impl Intake {
    pub fn new(exchange: Exchange) -> Self {
        Intake {
            exchange,
            merger: Merger::default(),
        }
    }

    pub fn observe(&mut self, change: &RowChange) {
        self.merger.observe(change);
    }

    pub fn committed(&mut self, xid: u32) {
        self.merger.committed(xid);
    }

    /// A message with [`read::PREFIX`] in a transaction the log does not hold yet.
    pub fn message(&mut self, content: &[u8], at: InTxn) -> Option<Emission> {
        let mut x = self.exchange.lock();
        // Windows of chunks whose reader gave up (an error after the low watermark).
        self.merger.retain(|id| x.chunks.contains_key(&id));
        match Watermark::parse(content)? {
            Watermark::Low { chunk, snapshot } => {
                if let Some(p) = x.chunks.get(&chunk) {
                    self.merger.low(chunk, p.table.clone(), &snapshot);
                }
                None
            }
            Watermark::High { chunk } => {
                let Some(mut p) = x.chunks.remove(&chunk) else {
                    self.merger.close(chunk);
                    return None;
                };
                let reply = p.reply.take();
                let Some((relation, read)) = p.read.take() else {
                    self.merger.close(chunk);
                    if let Some(r) = reply {
                        let _ = r.send(Outcome::Retry(Retry::NoWindow));
                    }
                    return None;
                };
                match self
                    .merger
                    .high(chunk, &relation, read.rows, &read.snapshot)
                {
                    Err(retry) => {
                        if let Some(r) = reply {
                            let _ = r.send(Outcome::Retry(retry));
                        }
                        None
                    }
                    Ok((rows, dropped)) => {
                        let n = rows.len() as u64;
                        debug!(table = %relation.name, rows = n, dropped, "snapshot chunk emitted");
                        metrics::counter!(crate::telemetry::SNAPSHOT_CHUNKS_TOTAL).increment(1);
                        metrics::counter!(crate::telemetry::SNAPSHOT_ROWS_TOTAL).increment(n);
                        let change = |op| RowChange {
                            lsn: at.lsn,
                            xid: at.xid,
                            commit_time: at.commit_time,
                            relation: relation.clone(),
                            op,
                        };
                        let mut changes: Vec<RowChange> = rows
                            .into_iter()
                            .map(|new| {
                                change(Op::Snapshot {
                                    new,
                                    scope: p.scope.clone(),
                                })
                            })
                            .collect();
                        p.mark.rows = n;
                        changes.push(change(Op::SnapshotMark {
                            scope: p.scope,
                            mark: p.mark,
                        }));
                        Some(Emission {
                            changes,
                            rows: n,
                            reply,
                        })
                    }
                }
            }
            Watermark::Done { token } => {
                let d = x.done.remove(&token)?;
                Some(Emission {
                    changes: vec![RowChange {
                        lsn: at.lsn,
                        xid: at.xid,
                        commit_time: at.commit_time,
                        relation: d.relation,
                        op: Op::SnapshotMark {
                            scope: d.scope,
                            mark: d.mark,
                        },
                    }],
                    rows: 0,
                    reply: Some(d.reply),
                })
            }
        }
    }
}

/// Everything the coordinator works with.
pub struct Coordinator {
    pub cfg: Arc<Config>,
    pub store: SnapshotStore,
    pub holds: HoldStore,
    /// The destinations' reported watermarks: a resync clears `needs resync` once applied.
    pub reports: DestinationStore,
    pub exchange: Exchange,
    /// The last seq the change log made durable.
    pub durable: watch::Receiver<u64>,
    /// The log was started by this run (nothing streamed before): an initial snapshot is due.
    pub fresh: bool,
    /// The change log, for marks made durable but not recorded before a crash.
    pub log: Readers,
}

impl Coordinator {
    /// Runs until dropped (the pipeline aborts it at shutdown; progress is in the state DB).
    pub async fn run(self) {
        if let Err(e) = self.plan_coverage().await {
            warn!(error = %Chain(&e), "could not plan the snapshots the configuration asks for; retrying at the next start");
        }
        let mut tick = tokio::time::interval(POLL);
        let mut backoff = Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
            Duration::from_secs(60),
        );
        loop {
            tick.tick().await;
            if let Err(e) = self.clear_resynced().await {
                warn!(error = %Chain(&e), "could not clear the holds of resynced destinations");
            }
            if self.cfg.snapshot.auto_resync {
                if let Err(e) = self.request_resyncs().await {
                    warn!(error = %Chain(&e), "could not read the destinations' holds");
                }
            }
            let open = match self.store.open().await {
                Ok(o) => o,
                Err(e) => {
                    warn!(error = %Chain(&e), "could not read the snapshot requests");
                    continue;
                }
            };
            let Some(next) = open.into_iter().next() else {
                continue;
            };
            let started = std::time::Instant::now();
            match self.execute(&next).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Transient => {
                    let delay = backoff.next_delay(started.elapsed());
                    warn!(snapshot = next.id, error = %Chain(&e), retry_in = ?delay, "snapshot interrupted; continuing from its last durable chunk");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    let message = Chain(&e).to_string();
                    tracing::error!(snapshot = next.id, error = %message, "snapshot failed");
                    if let Err(e) = self
                        .store
                        .finish(next.id, SnapshotState::Failed, None, Some(&message))
                        .await
                    {
                        warn!(error = %Chain(&e), "could not record the snapshot's failure");
                    }
                }
            }
        }
    }

    /// Requests what the configuration gives destinations that they were not given yet.
    async fn plan_coverage(&self) -> Result<(), SnapshotError> {
        let have: BTreeSet<Coverage> = self.store.coverage().await?.into_iter().collect();
        let mut want = Vec::new();
        let mut requests = Vec::new();
        let upgrade = have.is_empty() && !self.fresh;
        let mut initial = Vec::new();
        for d in &self.cfg.destinations {
            let names: Vec<String> = d
                .mappings
                .iter()
                .filter_map(|&m| self.cfg.mappings.get(m).map(|m| m.name.clone()))
                .collect();
            let tenants: Vec<String> = match &d.tenants {
                Tenants::All => vec!["*".into()],
                Tenants::Some(set) => {
                    let mut v: Vec<String> = set.iter().cloned().collect();
                    v.sort();
                    v
                }
            };
            let covered = |m: &str, t: &str| {
                have.contains(&Coverage {
                    destination: d.name.clone(),
                    mapping: m.into(),
                    tenant: t.into(),
                })
            };
            let known = have.iter().any(|c| c.destination == d.name);
            for m in &names {
                for t in &tenants {
                    want.push(Coverage {
                        destination: d.name.clone(),
                        mapping: m.clone(),
                        tenant: t.clone(),
                    });
                }
            }
            if upgrade || self.cfg.snapshot.mode == SnapshotMode::Never {
                continue;
            }
            if !known {
                initial.push(d.name.clone());
                continue;
            }
            let star = tenants == ["*"];
            let new_mappings: Vec<String> = names
                .iter()
                .filter(|m| {
                    !have
                        .iter()
                        .any(|c| c.destination == d.name && &c.mapping == *m)
                })
                .cloned()
                .collect();
            let old_mappings: Vec<String> = names
                .iter()
                .filter(|m| !new_mappings.contains(m))
                .cloned()
                .collect();
            if !new_mappings.is_empty() {
                requests.push(NewSnapshot {
                    reason: "coverage: new mappings".into(),
                    destinations: vec![d.name.clone()],
                    tenants: None,
                    mappings: Some(new_mappings),
                    clears_hold: false,
                });
            }
            if old_mappings.is_empty() {
                continue;
            }
            if star {
                if old_mappings.iter().any(|m| !covered(m, "*")) {
                    requests.push(NewSnapshot {
                        reason: "coverage: every tenant".into(),
                        destinations: vec![d.name.clone()],
                        tenants: None,
                        mappings: Some(old_mappings),
                        clears_hold: false,
                    });
                }
            } else {
                let new_tenants: Vec<String> = tenants
                    .iter()
                    .filter(|t| {
                        old_mappings
                            .iter()
                            .any(|m| !covered(m, t) && !covered(m, "*"))
                    })
                    .cloned()
                    .collect();
                if !new_tenants.is_empty() {
                    requests.push(NewSnapshot {
                        reason: "coverage: new tenants".into(),
                        destinations: vec![d.name.clone()],
                        tenants: Some(new_tenants),
                        mappings: Some(old_mappings),
                        clears_hold: false,
                    });
                }
            }
        }
        if !initial.is_empty() {
            requests.insert(
                0,
                NewSnapshot {
                    reason: if self.fresh {
                        "initial"
                    } else {
                        "coverage: new destination"
                    }
                    .into(),
                    destinations: initial,
                    tenants: None,
                    mappings: None,
                    clears_hold: false,
                },
            );
        }
        if upgrade && !want.is_empty() {
            info!("recording what each destination serves (first start with snapshots); nothing is copied for it: from now on, what a destination is given later is backfilled");
        }
        for r in &requests {
            let id = self.store.request(r).await?;
            info!(snapshot = id, reason = %r.reason, destinations = ?r.destinations, tenants = ?r.tenants, mappings = ?r.mappings, "snapshot requested");
        }
        let missing: Vec<Coverage> = want.into_iter().filter(|c| !have.contains(c)).collect();
        self.store.add_coverage(&missing).await?;
        Ok(())
    }

    /// Destinations held `needs resync` (configured ones), with the hold's age in seconds.
    async fn needing_resync(&self) -> Result<Vec<(String, f64)>, SnapshotError> {
        Ok(self
            .holds
            .load_all()
            .await?
            .into_iter()
            .filter(|h| h.hold.kind == HoldKind::NeedsResync || h.resync_reason.is_some())
            .filter(|h| self.cfg.destinations.iter().any(|d| d.name == h.name))
            .map(|h| (h.name, h.age_seconds))
            .collect())
    }

    /// The newest full snapshot of `name` requested after its hold was set (`hold_age`
    /// seconds ago), if any. A failed one counts too: it is not requested again on its own
    /// (the error needs a human; `pgfanout resync` asks again).
    fn resync_of<'a>(
        snapshots: &'a [SnapshotRow],
        name: &str,
        hold_age: f64,
    ) -> Option<&'a SnapshotRow> {
        snapshots.iter().find(|s| {
            s.request.clears_hold
                && s.request.destinations.iter().any(|d| d == name)
                && s.age_seconds < hold_age
                && s.state != SnapshotState::Cancelled
        })
    }

    /// Clears `needs resync` once a full snapshot requested after it is done *and* the
    /// destination has applied it (its watermark reached the snapshot's last seq).
    async fn clear_resynced(&self) -> Result<(), SnapshotError> {
        let needing = self.needing_resync().await?;
        if needing.is_empty() {
            return Ok(());
        }
        let snapshots = self.store.recent(RECENT).await?;
        let reports = self.reports.load_all().await?;
        for (name, hold_age) in needing {
            let Some(s) = Self::resync_of(&snapshots, &name, hold_age) else {
                continue;
            };
            let (SnapshotState::Done, Some(done_seq)) = (s.state, s.done_seq) else {
                continue;
            };
            let applied = reports
                .iter()
                .any(|r| r.name == name && r.watermark >= done_seq);
            if applied && self.holds.clear_resync(&name).await? {
                info!(destination = %name, snapshot = s.id, seq = done_seq, "resynced: the destination applied the snapshot; `needs resync` cleared");
            }
        }
        Ok(())
    }

    /// A full snapshot for each destination held `needs resync` that has none since its hold.
    async fn request_resyncs(&self) -> Result<(), SnapshotError> {
        let needing = self.needing_resync().await?;
        if needing.is_empty() {
            return Ok(());
        }
        let snapshots = self.store.recent(RECENT).await?;
        for (name, hold_age) in needing {
            if Self::resync_of(&snapshots, &name, hold_age).is_some() {
                continue;
            }
            let id = self
                .store
                .request(&NewSnapshot {
                    reason: "auto resync".into(),
                    destinations: vec![name.clone()],
                    tenants: None,
                    mappings: None,
                    clears_hold: true,
                })
                .await?;
            info!(
                snapshot = id,
                destination = %name,
                "destination needs a resync: snapshot requested (snapshot.auto_resync)"
            );
        }
        Ok(())
    }

    /// The mappings (by source table) snapshot `s` covers, checked against the configuration.
    fn tables_of(
        &self,
        s: &SnapshotRow,
    ) -> Result<Vec<(QualifiedName, Vec<String>)>, SnapshotError> {
        let mut by_table: Vec<(QualifiedName, Vec<String>)> = Vec::new();
        let mut seen = BTreeSet::new();
        for name in &s.request.destinations {
            let d = self
                .cfg
                .destinations
                .iter()
                .find(|d| &d.name == name)
                .ok_or_else(|| SnapshotError::UnknownDestination { name: name.clone() })?;
            for &m in &d.mappings {
                let Some(m) = self.cfg.mappings.get(m) else {
                    continue;
                };
                if s.request
                    .mappings
                    .as_ref()
                    .is_some_and(|only| !only.contains(&m.name))
                {
                    continue;
                }
                seen.insert(m.name.clone());
                match by_table.iter_mut().find(|(t, _)| *t == m.source) {
                    Some((_, ms)) if !ms.contains(&m.name) => ms.push(m.name.clone()),
                    Some(_) => {}
                    None => by_table.push((m.source.clone(), vec![m.name.clone()])),
                }
            }
        }
        if let Some(only) = &s.request.mappings {
            if let Some(name) = only.iter().find(|m| !seen.contains(*m)) {
                return Err(SnapshotError::UnknownMapping { name: name.clone() });
            }
        }
        Ok(by_table)
    }

    /// A large table is read as several key ranges at once (up to `parallelism`), each at
    /// least two chunks long; bounds come from a sample of its keys.
    async fn ranges(
        &self,
        client: &tokio_postgres::Client,
        rel: &Relation,
        key: &TableKey,
        estimated: u64,
    ) -> Result<Vec<RangeProgress>, SnapshotError> {
        let per_range = 2 * self.cfg.snapshot.chunk_rows as u64;
        let wanted = (estimated / per_range.max(1)).min(self.cfg.snapshot.parallelism as u64);
        let points = if wanted >= 2 {
            read::split_points(client, rel, key, estimated, wanted as usize).await?
        } else {
            Vec::new()
        };
        let mut ranges = Vec::with_capacity(points.len() + 1);
        let mut lower = None;
        for (i, p) in points
            .iter()
            .chain(std::iter::once(&Vec::new()))
            .enumerate()
        {
            let upper = (!p.is_empty()).then(|| p.clone());
            ranges.push(RangeProgress {
                range_no: i as u32,
                lower: lower.clone(),
                upper: upper.clone(),
                ..RangeProgress::default()
            });
            lower = upper;
        }
        Ok(ranges)
    }

    async fn execute(&self, s: &SnapshotRow) -> Result<(), SnapshotError> {
        let tables = self.tables_of(s)?;
        let client = connect(&self.cfg.source.conn).await?;
        let mut relations = HashMap::new();
        let mut keys = HashMap::new();
        for (name, _) in &tables {
            let rel =
                catalog::relation(&client, name)
                    .await?
                    .ok_or_else(|| SnapshotError::NoTable {
                        table: name.to_string(),
                    })?;
            let key =
                read::table_key(&client, &rel)
                    .await?
                    .ok_or_else(|| SnapshotError::NoKey {
                        table: name.to_string(),
                    })?;
            relations.insert(name.to_string(), Arc::new(rel));
            keys.insert(name.to_string(), key);
        }
        let (start_seq, progress) = match (s.state, s.start_seq) {
            (SnapshotState::Running, Some(start)) => {
                let mut tables = self.store.tables(s.id).await?;
                self.catch_up_from_log(s.id, start, &mut tables).await?;
                (start, tables)
            }
            _ => {
                let start = *self.durable.borrow();
                let mut plan = Vec::new();
                for (name, mappings) in &tables {
                    let rel = &relations[&name.to_string()];
                    let key = &keys[&name.to_string()];
                    let estimated = read::estimated_rows(&client, rel).await?;
                    plan.push(TableProgress {
                        source_table: name.to_string(),
                        mappings: mappings.clone(),
                        key_columns: key.columns.clone(),
                        estimated_rows: estimated,
                        done: false,
                        ranges: self.ranges(&client, rel, key, estimated).await?,
                    });
                }
                self.store.start(s.id, start, &plan).await?;
                info!(snapshot = s.id, tables = plan.len(), reason = %s.request.reason, "snapshot started");
                (start, plan)
            }
        };
        drop(client);
        // Rows of the snapshot's destinations not above this were written before it began.
        let sweep_below = if s.request.tenants.is_none() {
            start_seq + 1
        } else {
            0
        };
        let limits = Arc::new(Semaphore::new(self.cfg.snapshot.parallelism));
        let mut workers = JoinSet::new();
        let mut done_seq = 0u64;
        for t in progress.iter() {
            let rel = relations[&t.source_table].clone();
            let key = &keys[&t.source_table];
            if key.columns != t.key_columns {
                // The key changed since the snapshot started: positions are in the old key.
                return Err(SnapshotError::NoKey {
                    table: t.source_table.clone(),
                });
            }
            if t.done {
                continue;
            }
            let scope = scope_of(s, t);
            for r in t.ranges.iter().filter(|r| !r.done) {
                // A snapshot of some tenants reads only their rows when the table's mappings
                // agree on the tenant column (routing filters the rest anyway).
                let tenant_keys: BTreeSet<&str> = self
                    .cfg
                    .mappings
                    .iter()
                    .filter(|m| t.mappings.contains(&m.name))
                    .map(|m| m.tenant_key.as_str())
                    .collect();
                let only = match (&s.request.tenants, tenant_keys.len()) {
                    (Some(values), 1) => tenant_keys.first().map(|c| read::OnlyTenants {
                        column: (*c).to_owned(),
                        values: values.clone(),
                    }),
                    _ => None,
                };
                let job = RangeJob {
                    only,
                    snapshot: s.id,
                    table: t.source_table.clone(),
                    relation: rel.clone(),
                    key: key.clone(),
                    scope: scope.clone(),
                    range: r.clone(),
                    store: self.store.clone(),
                    exchange: self.exchange.clone(),
                    durable: self.durable.clone(),
                    conn: self.cfg.source.conn.clone(),
                    limits: (self.cfg.snapshot.chunk_rows, self.cfg.snapshot.chunk_bytes),
                    permits: limits.clone(),
                };
                workers.spawn(job.run());
            }
        }
        while let Some(joined) = workers.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(SnapshotError::Stopped),
            }
        }
        // Every range is durable: close each table with its mark (and sweep).
        let client = connect(&self.cfg.source.conn).await?;
        for t in progress.iter().filter(|t| !t.done) {
            let relation = relations[&t.source_table].clone();
            let scope = scope_of(s, t);
            let token = next_id();
            let (reply, outcome) = oneshot::channel();
            self.exchange.lock().done.insert(
                token,
                PendingDone {
                    relation,
                    scope,
                    mark: SnapshotMark {
                        table_done: true,
                        sweep_below,
                        ..SnapshotMark::default()
                    },
                    reply,
                },
            );
            read::emit(&client, 'D', token).await?;
            match outcome.await.map_err(|_| SnapshotError::Stopped)? {
                Outcome::Emitted { last_seq, .. } => {
                    durable_at(&self.durable, last_seq).await?;
                    done_seq = done_seq.max(last_seq);
                }
                Outcome::Retry(_) => return Err(SnapshotError::Stopped),
            }
            self.store.table_done(s.id, &t.source_table).await?;
        }
        let done_seq = if done_seq == 0 {
            *self.durable.borrow()
        } else {
            done_seq
        };
        self.store
            .finish(s.id, SnapshotState::Done, Some(done_seq), None)
            .await?;
        info!(
            snapshot = s.id,
            seq = done_seq,
            "snapshot complete in the change log; the destinations apply it in order"
        );
        // A `needs resync` hold clears once the destination has applied it (`clear_resynced`).
        Ok(())
    }
}

impl Coordinator {
    /// Brings `tables` up to the marks of snapshot `id` the change log holds: a crash between
    /// a chunk becoming durable and its position being saved must not read it twice.
    async fn catch_up_from_log(
        &self,
        id: u64,
        start_seq: u64,
        tables: &mut [TableProgress],
    ) -> Result<(), SnapshotError> {
        let from = tables
            .iter()
            .flat_map(|t| t.ranges.iter().filter(|_| !t.done))
            .filter(|r| !r.done)
            .map(|r| {
                if r.mark_seq > 0 {
                    r.mark_seq
                } else {
                    start_seq
                }
            })
            .min();
        let Some(from) = from else {
            return Ok(());
        };
        let log = self.log.clone();
        let marks = tokio::task::spawn_blocking(move || {
            let mut reader = log.open(from + 1)?;
            let mut marks = Vec::new();
            while let Some(r) = reader.next_record()? {
                if let LogRecord::Change(c) = r {
                    if let Op::SnapshotMark { scope, mark } = c.change.op {
                        if scope.snapshot == id {
                            let rel = &c.change.relation;
                            marks.push((format!("{}.{}", rel.schema, rel.name), mark, c.seq));
                        }
                    }
                }
            }
            Ok::<_, crate::changelog::LogError>(marks)
        })
        .await
        .map_err(|_| SnapshotError::Stopped)?;
        let marks = match marks {
            Ok(m) => m,
            Err(e) => {
                warn!(snapshot = id, error = %Chain(&e), "could not read the change log for the snapshot's latest chunks; they are read again");
                return Ok(());
            }
        };
        for (table, mark, seq) in marks {
            let Some(t) = tables.iter_mut().find(|t| t.source_table == table) else {
                continue;
            };
            if mark.table_done {
                t.done = true;
                self.store.table_done(id, &table).await?;
                continue;
            }
            let Some(r) = t.ranges.iter_mut().find(|r| r.range_no == mark.range) else {
                continue;
            };
            if mark.chunk <= r.chunks || r.done {
                continue;
            }
            r.chunks = mark.chunk;
            r.rows += mark.rows;
            r.mark_seq = seq;
            if mark.end_key.is_empty() {
                r.done = true;
            } else {
                r.position = Some(mark.end_key);
            }
            info!(snapshot = id, table = %table, range = r.range_no, chunk = r.chunks, "snapshot progress recovered from the change log");
            self.store.save_range(id, &table, r).await?;
        }
        Ok(())
    }
}

/// Why each mapped table could not be snapshotted (a missing table, no key to read it by);
/// empty when every one can. For `pgfanout check`.
pub async fn check_tables(cfg: &Config) -> Result<Vec<SnapshotError>, SnapshotError> {
    let client = cfg
        .source
        .conn
        .connect_sql()
        .await
        .map_err(SnapshotError::Connect)?;
    let mut tables: Vec<&QualifiedName> = cfg.mappings.iter().map(|m| &m.source).collect();
    tables.sort_by_key(|t| t.to_string());
    tables.dedup();
    let mut problems = Vec::new();
    for name in tables {
        let table = name.to_string();
        match catalog::relation(&client, name).await? {
            None => problems.push(SnapshotError::NoTable { table }),
            Some(rel) => {
                if read::table_key(&client, &rel).await?.is_none() {
                    problems.push(SnapshotError::NoKey { table });
                }
            }
        }
    }
    Ok(problems)
}

/// What the rows of table `t` in snapshot `s` are for.
fn scope_of(s: &SnapshotRow, t: &TableProgress) -> Arc<SnapshotScope> {
    Arc::new(SnapshotScope {
        snapshot: s.id,
        destinations: s.request.destinations.clone(),
        tenants: s.request.tenants.clone(),
        mappings: t.mappings.clone(),
    })
}

/// A source connection for snapshot work.
async fn connect(conn: &crate::pgconn::ConnInfo) -> Result<tokio_postgres::Client, SnapshotError> {
    let client = conn.connect_sql().await.map_err(SnapshotError::Connect)?;
    read::prepare_session(&client).await?;
    Ok(client)
}

/// Waits until the change log has made `seq` durable.
async fn durable_at(durable: &watch::Receiver<u64>, seq: u64) -> Result<(), SnapshotError> {
    let mut rx = durable.clone();
    rx.wait_for(|&d| d >= seq)
        .await
        .map(|_| ())
        .map_err(|_| SnapshotError::Stopped)
}

/// One key range of one table, read chunk by chunk.
struct RangeJob {
    only: Option<read::OnlyTenants>,
    snapshot: u64,
    table: String,
    relation: Arc<Relation>,
    key: TableKey,
    scope: Arc<SnapshotScope>,
    range: RangeProgress,
    store: SnapshotStore,
    exchange: Exchange,
    durable: watch::Receiver<u64>,
    conn: crate::pgconn::ConnInfo,
    limits: (usize, usize),
    permits: Arc<Semaphore>,
}

impl RangeJob {
    async fn run(mut self) -> Result<(), SnapshotError> {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SnapshotError::Stopped)?;
        let client = connect(&self.conn).await?;
        let table = Arc::new(ChunkTable {
            oid: self.relation.oid,
            key_columns: self.key.columns.clone(),
        });
        let (save, mut to_save) = tokio::sync::mpsc::unbounded_channel::<(u64, RangeProgress)>();
        let saver = {
            let (store, durable) = (self.store.clone(), self.durable.clone());
            let (snapshot, name) = (self.snapshot, self.table.clone());
            tokio::spawn(async move {
                while let Some((seq, range)) = to_save.recv().await {
                    durable_at(&durable, seq).await?;
                    store.save_range(snapshot, &name, &range).await?;
                }
                Ok::<(), SnapshotError>(())
            })
        };
        let read = self.read_chunks(&client, table, &save).await;
        drop(save);
        let saved = saver.await.map_err(|_| SnapshotError::Stopped)?;
        read?;
        saved
    }

    /// Reads the range's chunks, handing each emitted one to `save`.
    async fn read_chunks(
        &mut self,
        client: &tokio_postgres::Client,
        table: Arc<ChunkTable>,
        save: &tokio::sync::mpsc::UnboundedSender<(u64, RangeProgress)>,
    ) -> Result<(), SnapshotError> {
        let mut retries = 0;
        while !self.range.done {
            let id = next_id();
            let (reply, outcome) = oneshot::channel();
            self.exchange.lock().chunks.insert(
                id,
                PendingChunk {
                    table: table.clone(),
                    scope: self.scope.clone(),
                    mark: SnapshotMark::default(),
                    read: None,
                    reply: Some(reply),
                },
            );
            let read = async {
                read::emit(client, 'L', id).await?;
                let chunk = read::read_chunk(
                    client,
                    &self.relation,
                    &self.key,
                    (
                        self.range
                            .position
                            .as_deref()
                            .or(self.range.lower.as_deref()),
                        self.range.upper.as_deref(),
                    ),
                    self.only.as_ref(),
                    self.limits,
                )
                .await?;
                Ok::<_, SnapshotError>(chunk)
            }
            .await;
            let chunk = match read {
                Ok(c) => c,
                Err(e) => {
                    self.exchange.lock().chunks.remove(&id);
                    return Err(e);
                }
            };
            let (last_key, exhausted) = (chunk.last_key.clone(), chunk.exhausted);
            if let Some(p) = self.exchange.lock().chunks.get_mut(&id) {
                p.mark = SnapshotMark {
                    range: self.range.range_no,
                    chunk: self.range.chunks + 1,
                    end_key: if exhausted {
                        Vec::new()
                    } else {
                        last_key.clone().unwrap_or_default()
                    },
                    ..SnapshotMark::default()
                };
                p.read = Some((self.relation.clone(), chunk));
            }
            if let Err(e) = read::emit(client, 'H', id).await {
                self.exchange.lock().chunks.remove(&id);
                return Err(e.into());
            }
            match outcome.await.map_err(|_| SnapshotError::Stopped)? {
                Outcome::Emitted { last_seq, rows } => {
                    retries = 0;
                    self.range.chunks += 1;
                    self.range.rows += rows;
                    if last_key.is_some() {
                        self.range.position = last_key;
                    }
                    self.range.done = exhausted;
                    self.range.mark_seq = last_seq;
                    // The next chunk is read while this one is made durable; its position is
                    // saved only then, in chunk order.
                    if save.send((last_seq, self.range.clone())).is_err() {
                        break;
                    }
                }
                Outcome::Retry(why) => {
                    retries += 1;
                    debug!(table = %self.table, ?why, "snapshot chunk read again");
                    if retries >= MAX_RETRIES {
                        return Err(SnapshotError::Unsettled {
                            table: self.table.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}
