//! `pgfanout replay`: re-apply history from a seq to one destination (optionally one tenant),
//! whether the daemon runs or not. Replayed batches neither read nor move the watermark; the
//! per-row version guard keeps rows the destination already has at a newer version.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::changelog::{LogReader, LogRecord};
use crate::config::Config;
use crate::disposition::{disposition, Backoff, Classify, Disposition, Scope};
use crate::fanout::route::{PartialOps, Routed};
use crate::progress::Progress;
use crate::report::Chain;
use crate::sink::{Batch, SinkError, Writer};

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
    let mut router = setup.router(Some(index), tenant);
    let dest_err = |source| FanoutError::Destination {
        destination: destination.to_owned(),
        source,
    };
    // Connected (and the tables checked) before anything is read.
    let mut sink: Option<Writer> = None;
    apply_retrying(&mut sink, plan, destination, None)
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
    loop {
        // The log is read in steps off the runtime; each step is routed, then applied.
        let (r, records, _) = read_step(reader, REPLAY_READ, None)
            .await
            .map_err(|_| FanoutError::Gone)??;
        reader = r;
        let done = records.is_empty();
        for rec in records {
            let LogRecord::Change(c) = rec else { continue };
            report.changes += 1;
            report.last_seq = c.seq;
            router.route(&c, &mut routed)?;
            for r in routed.drain(..) {
                r.op.add_to(r.table, &mut batch, &mut partial);
                rows += 1;
            }
            batch.last_seq = c.seq;
        }
        if rows >= plan.config.batch_rows || (done && rows > 0) {
            // Unchanged TOAST values the destination has no copy of, from the source, as a
            // running destination reads them (invariant 25).
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
            apply_retrying(&mut sink, plan, destination, Some(&batch))
                .await
                .map_err(dest_err)?;
            report.ops += rows as u64;
            batch = Batch::new(batch.last_seq);
            rows = 0;
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
    progress.finish();
    info!(destination, from_seq, changes = report.changes, ops = report.ops, elapsed = ?started.elapsed(), "replay finished");
    Ok(report)
}

/// Connects when not connected, then replays `batch` (if any), asking the error policy what
/// to do after a failure: a transient one reconnects and tries again, up to
/// [`REPLAY_ATTEMPTS`]; anything else ends the replay with that error. Replaying a batch
/// twice is harmless: the version guard keeps what is newer.
async fn apply_retrying(
    sink: &mut Option<Writer>,
    plan: &DestinationPlan,
    destination: &str,
    batch: Option<&Batch<'_>>,
) -> Result<(), SinkError> {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF, MAX_BACKOFF);
    let mut attempt = 1;
    loop {
        let result = async {
            let writer = match sink {
                Some(w) => w,
                None => sink.insert(Writer::connect(&plan.config, &plan.tables).await?),
            };
            match batch {
                Some(b) => writer.replay(destination, b).await,
                None => Ok(()),
            }
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
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
