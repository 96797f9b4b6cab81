//! `pgfanout replay`: re-apply history from a seq to one destination (optionally one tenant),
//! whether the daemon runs or not. Replayed batches never move the watermark (it says what the
//! daemon's worker applied, in order, for all the destination's tenants: moving it forward
//! would make the worker skip changes, backward only repeat them); the per-row version guard
//! keeps rows the destination already has at a newer version.
//!
//! **Replaying on through the watermark.** The log is replayed to its end E as it was when
//! replay opened it. A running daemon may meanwhile apply a change D > E that removes a row
//! (a delete, a truncate, a row leaving the filter or its tenant): when replay then writes an
//! older version of that row, a PostgreSQL destination has nothing left to compare `_seq`
//! with and the row comes back, and nothing would remove it again. So after its last commit
//! replay reads the destination's *settled* watermark W ([`Writer::settled_watermark`]: the
//! daemon commits data and watermark in one transaction that locks the watermark row first,
//! and the read waits for a transaction in flight). Replay writing a removed row again means
//! the removal committed before replay's write finished (the row was absent; an insert
//! conflicting with an uncommitted delete waits for it), or ran its statements before replay
//! committed (so did not see the row) — either way its transaction has the watermark row
//! locked or committed before the read, so D ≤ W. When W is past what replay applied, replay
//! reopens the log (the daemon applied W from it, so it holds W) and replays on to its new
//! end, then reads W again; it stops once W is not past what it applied. The changes the
//! daemon applied are then applied again after replay's older writes, in log order. Changes
//! the daemon has not applied are after W: it applies them after replay's writes anyway.
//!
//! ClickHouse keeps deleted rows as tombstones at the delete's (or truncate's) seq, which an
//! older version replayed later does not outrank, so a row cannot come back there; the same
//! loop runs for it anyway (one rule for both kinds; it only re-applies what is already
//! there, and also restores tombstones an operator's cleanup merge removed).
//!
//! With `--tenant`, the rounds replay that tenant's changes only, which is enough: replay
//! wrote only rows of that tenant's changes, and whatever removes such a row from this
//! destination is routed to it under that tenant too — its delete or filter rejection (read
//! from the old tuple's tenant key), the move of the row to another tenant (a delete from the
//! old tenant's destinations; seq-guarded, so it removes nothing newer), or a truncate (routed
//! to every destination with the mapping).

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::changelog::{LogReader, LogRecord};
use crate::config::Config;
use crate::disposition::{disposition, Backoff, Classify, Disposition, Scope};
use crate::fanout::route::{PartialOps, Planned, Routed};
use crate::progress::Progress;
use crate::report::Chain;
use crate::sink::{Batch, SinkError, TargetTable, Writer};

use super::setup::{DestinationPlan, Setup};
use super::toast::Refill;
use super::{read_step, FanoutError};

/// Records read from the log per step.
const REPLAY_READ: usize = 4096;
/// Attempts at connecting or at one batch while the destination's error is one a retry can
/// fix: a command waits out a blip, not an outage.
const REPLAY_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    /// Changes read from the log.
    pub changes: u64,
    /// Row operations (and truncates) applied to the destination.
    pub ops: u64,
    /// The last seq read (0 when the log held nothing from `from_seq`).
    pub last_seq: u64,
    /// Passes over the log: 1, plus one per time the destination's watermark was found past
    /// what replay had applied (see the module comment).
    pub rounds: u32,
}

pub async fn replay(
    cfg: &Config,
    destination: &str,
    from_seq: u64,
    tenant: Option<&str>,
) -> Result<ReplayReport, FanoutError> {
    let index = cfg
        .destinations
        .iter()
        .position(|d| d.name == destination)
        .ok_or_else(|| FanoutError::UnknownDestination {
            name: destination.to_owned(),
            known: cfg
                .destinations
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    // Refuse a seq outside what the log holds before touching anything: past the end would
    // replay nothing and report success; before the oldest would silently skip changes.
    let dir = cfg.log.dir.clone();
    let (mut reader, oldest) = tokio::task::spawn_blocking(move || {
        let summary = crate::changelog::summary(&dir)?;
        let Some(oldest) = summary.oldest_seq else {
            return Err(FanoutError::EmptyLog {
                dir: dir.display().to_string(),
            });
        };
        let end = summary.last_seq;
        if from_seq > end {
            return Err(FanoutError::BeyondLog {
                from_seq,
                oldest,
                end,
            });
        }
        if from_seq.max(1) < oldest {
            return Err(FanoutError::BeforeLog {
                from_seq,
                oldest,
                end,
            });
        }
        Ok((LogReader::open(&dir, from_seq)?, oldest))
    })
    .await
    .map_err(|_| FanoutError::Gone)??;
    let end = reader.durable_seq();
    let first = from_seq.max(oldest);
    if let (Some(t), crate::config::Tenants::Some(served)) =
        (tenant, &cfg.destinations[index].tenants)
    {
        if !served.contains(t) {
            let mut served: Vec<&str> = served.iter().map(String::as_str).collect();
            served.sort_unstable();
            return Err(FanoutError::TenantNotServed {
                destination: destination.to_owned(),
                tenant: t.to_owned(),
                served: served.join(", "),
            });
        }
    }
    let setup = Setup::load(cfg).await?;
    if let Some(t) = tenant {
        // With `[tenants]`, the registry knows every tenant there is.
        if cfg.tenants.is_some() && setup.registry.attributes(t).is_none() {
            return Err(FanoutError::UnknownTenant {
                tenant: t.to_owned(),
            });
        }
    }
    let plan = &setup.destinations[index];
    if let Some(reason) = &plan.broken {
        return Err(FanoutError::Setup {
            problems: vec![reason.clone()].into(),
        });
    }
    // The tables as the writer has them: they follow the source across schema barriers.
    let mut tables = plan.tables.clone();
    let mut router = setup.router(Some(index), tenant);
    let dest_err = |source| FanoutError::Destination {
        destination: destination.to_owned(),
        source,
    };
    // Connected (and the tables checked) before anything is read.
    let mut sink: Option<Writer> = None;
    retrying(&mut sink, plan, &tables, destination, Step::Connect)
        .await
        .map_err(dest_err)?;
    // History of another numbering would land under versions that mean other changes.
    if let (Some(ours), Some(writer)) = (reader.lineage(), sink.as_mut()) {
        writer
            .bind_lineage(destination, ours)
            .await
            .map_err(dest_err)?;
    }
    let started = Instant::now();
    let mut report = ReplayReport {
        changes: 0,
        ops: 0,
        last_seq: 0,
        rounds: 0,
    };
    let mut batch = Batch::new(0);
    let mut partial = PartialOps::new();
    let mut refill = Refill::new(setup.source.clone(), setup.routing.clone());
    let mut rows = 0usize;
    let mut routed: Vec<Routed> = Vec::new();
    let mut progress = Progress::start(
        format!("replay into {destination}"),
        "changes",
        Some(end.saturating_sub(first) + 1),
    );
    let mut gate = true;
    loop {
        report.rounds += 1;
        loop {
            // The log is read in steps off the runtime; each step is routed, then applied.
            let (r, records, _) = read_step(reader, REPLAY_READ, None)
                .await
                .map_err(|_| FanoutError::Gone)??;
            reader = r;
            let done = records.is_empty();
            // Writes the batch (what is routed so far).
            macro_rules! write_batch {
                () => {
                    if std::mem::take(&mut gate) {
                        // Tests hold replay here: its end fixed, nothing written yet.
                        tokio::task::spawn_blocking(|| {
                            crate::failpoint::hit(crate::failpoint::REPLAY_BEFORE_APPLY)
                        })
                        .await
                        .map_err(|_| FanoutError::Gone)?
                        .map_err(|source| FanoutError::Failpoint {
                            point: crate::failpoint::REPLAY_BEFORE_APPLY,
                            source,
                        })?;
                    }
                    // Unchanged TOAST values the destination has no copy of, from the source, as
                    // a running destination reads them (invariant 25).
                    if let (false, Some(writer)) = (partial.is_empty(), sink.as_mut()) {
                        let unknown = writer
                            .unknown_unchanged(destination, &batch)
                            .await
                            .map_err(dest_err)?;
                        if !unknown.is_empty() {
                            refill
                                .fill(destination, &mut batch, &partial, &unknown)
                                .await?;
                        }
                    }
                    partial.clear();
                    retrying(&mut sink, plan, &tables, destination, Step::Apply(&batch))
                        .await
                        .map_err(dest_err)?;
                    report.ops += rows as u64;
                    batch = Batch::new(batch.last_seq);
                    rows = 0;
                };
            }
            for rec in records {
                let LogRecord::Change(c) = rec else { continue };
                report.changes += 1;
                report.last_seq = c.seq;
                router.route(&c, &mut routed)?;
                if routed.iter().any(|r| r.op.is_barrier()) {
                    // A schema barrier: what came before is written with the table as it
                    // was, then the table follows the source (as a running destination does).
                    if rows > 0 {
                        write_batch!();
                    }
                    for r in routed.iter().filter(|r| r.op.is_barrier()) {
                        match &r.op {
                            Planned::Schema { shape, .. } => {
                                let next = tables[r.table].reshaped(shape);
                                if next != tables[r.table] {
                                    let step = Step::Evolve {
                                        table: r.table,
                                        prev: &tables[r.table],
                                        next: &next,
                                        drop_gone: shape.drop_gone,
                                    };
                                    retrying(&mut sink, plan, &tables, destination, step)
                                        .await
                                        .map_err(dest_err)?;
                                    tables[r.table] = next;
                                }
                            }
                            Planned::Fail {
                                seq,
                                mapping,
                                reason,
                            } => {
                                return Err(FanoutError::MappingStopped {
                                    mapping: mapping.to_string(),
                                    seq: *seq,
                                    reason: reason.to_string(),
                                })
                            }
                            _ => {}
                        }
                    }
                }
                for r in routed.drain(..) {
                    if !r.op.is_barrier() {
                        r.op.add_to(r.table, &mut batch, &mut partial);
                        rows += 1;
                    }
                }
                batch.last_seq = c.seq;
            }
            if rows >= plan.config.batch_rows || (done && rows > 0) {
                write_batch!();
            }
            // The log may grow while a daemon runs: so does the total.
            progress.update(
                report.changes,
                Some(reader.durable_seq().saturating_sub(first) + 1),
            );
            if done {
                break;
            }
        }
        // Everything up to `applied` is written and committed; see the module comment.
        let applied = reader.durable_seq();
        let settled = retrying(
            &mut sink,
            plan,
            &tables,
            destination,
            Step::SettledWatermark,
        )
        .await
        .map_err(dest_err)?;
        if settled <= applied {
            break;
        }
        info!(
            destination,
            applied,
            watermark = settled,
            "the destination applied changes past what replay read; replaying on through them"
        );
        let dir = cfg.log.dir.clone();
        reader = tokio::task::spawn_blocking(move || LogReader::open(&dir, applied + 1))
            .await
            .map_err(|_| FanoutError::Gone)??;
    }
    progress.finish();
    info!(destination, from_seq, changes = report.changes, ops = report.ops, passes = report.rounds, elapsed = ?started.elapsed(), "replay finished");
    Ok(report)
}

/// What [`retrying`] does once connected.
enum Step<'b, 'a> {
    Connect,
    Apply(&'b Batch<'a>),
    SettledWatermark,
    /// See `Writer::evolve`: state-based, so a retry is harmless.
    Evolve {
        table: usize,
        prev: &'b TargetTable,
        next: &'b TargetTable,
        drop_gone: bool,
    },
}

/// Connects when not connected, then does `step` (returning the watermark it read, 0 for the
/// others), asking the error policy what to do after a failure: a transient one reconnects and
/// tries again, up to [`REPLAY_ATTEMPTS`]; anything else ends the replay with that error.
/// Replaying a batch twice is harmless: the version guard keeps what is newer.
async fn retrying(
    sink: &mut Option<Writer>,
    plan: &DestinationPlan,
    tables: &[TargetTable],
    destination: &str,
    step: Step<'_, '_>,
) -> Result<u64, SinkError> {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF, MAX_BACKOFF);
    let mut attempt = 1;
    loop {
        let result = async {
            let writer = match sink {
                Some(w) => w,
                None => sink.insert(Writer::connect(&plan.config, tables).await?),
            };
            match step {
                Step::Connect => Ok(0),
                Step::Apply(b) => writer.replay(destination, b).await.map(|()| 0),
                Step::SettledWatermark => writer.settled_watermark(destination).await,
                Step::Evolve {
                    table,
                    prev,
                    next,
                    drop_gone,
                } => writer
                    .evolve(
                        destination,
                        table,
                        prev,
                        next,
                        drop_gone,
                        plan.config.create_tables,
                    )
                    .await
                    .map(|()| 0),
            }
        }
        .await;
        match result {
            Ok(seq) => return Ok(seq),
            Err(e)
                if attempt < REPLAY_ATTEMPTS
                    && disposition(e.kind(), Scope::Destination) == Disposition::Retry =>
            {
                let delay = backoff.next_delay(Duration::ZERO);
                warn!(destination, attempt, error = %Chain(&e), retry_in = ?delay, "replay: retrying");
                *sink = None;
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
