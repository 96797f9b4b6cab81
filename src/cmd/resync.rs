//! `pgfanout resync --destination D [--tenant T] [--mapping M]`: asks the running daemon for
//! a snapshot of what D is given (narrowed to a tenant or a mapping), and follows it.
//!
//! The request goes through the state database; the daemon's snapshot coordinator takes it
//! within a second, copies the rows consistently with the stream (see `src/snapshot`), and
//! a full resync clears the destination's `needs resync` hold once done. Progress is read from
//! the state database: a bar on a terminal, a plain line every few seconds otherwise.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Config, Tenants};
use crate::disposition::{Classify, ErrorKind};
use crate::progress::Progress;
use crate::state::{NewSnapshot, SnapshotRow, SnapshotState, SnapshotStore, StateDb, StateError};

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("no destination named {name:?} in the configuration; configured: {known}")]
    UnknownDestination { name: String, known: String },
    #[error("destination {destination:?} does not serve tenant {tenant:?} (it serves: {served})\nHINT: name a tenant its `tenants` lists")]
    TenantNotServed {
        destination: String,
        tenant: String,
        served: String,
    },
    #[error("destination {destination:?} has no mapping {mapping:?} (it has: {has})")]
    UnknownMapping {
        destination: String,
        mapping: String,
        has: String,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("snapshot {id} failed: {error}\nHINT: fix the cause and run `pgfanout resync` again")]
    Failed { id: u64, error: String },
    #[error("snapshot {id} was cancelled")]
    Cancelled { id: u64 },
}

impl Classify for ResyncError {
    fn kind(&self) -> ErrorKind {
        match self {
            ResyncError::State(e) => e.kind(),
            _ => ErrorKind::Definite,
        }
    }
}

/// Where a snapshot stands, as `resync` and `status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotProgress {
    pub id: u64,
    pub reason: String,
    pub state: String,
    pub destinations: Vec<String>,
    pub tenants: Option<Vec<String>>,
    pub mappings: Option<Vec<String>>,
    pub tables: usize,
    pub tables_done: usize,
    pub rows: u64,
    /// The planner's estimate of the rows to read (0 when the tables were never analyzed).
    pub estimated_rows: u64,
    pub running_seconds: Option<f64>,
    /// The seq of its last change: a destination whose watermark reached it holds it all.
    pub done_seq: Option<u64>,
    pub error: Option<String>,
}

impl SnapshotProgress {
    pub fn rows_per_second(&self) -> Option<f64> {
        self.running_seconds
            .filter(|&s| s > 0.5)
            .map(|s| self.rows as f64 / s)
    }

    /// Seconds left at the current rate, from the estimate.
    pub fn eta_seconds(&self) -> Option<f64> {
        let rate = self.rows_per_second().filter(|&r| r > 0.0)?;
        (self.estimated_rows > self.rows).then(|| (self.estimated_rows - self.rows) as f64 / rate)
    }
}

/// The progress of snapshot `s`.
pub async fn progress(
    store: &SnapshotStore,
    s: &SnapshotRow,
) -> Result<SnapshotProgress, StateError> {
    let tables = store.tables(s.id).await?;
    Ok(SnapshotProgress {
        id: s.id,
        reason: s.request.reason.clone(),
        state: s.state.as_str().to_owned(),
        destinations: s.request.destinations.clone(),
        tenants: s.request.tenants.clone(),
        mappings: s.request.mappings.clone(),
        tables: tables.len(),
        tables_done: tables.iter().filter(|t| t.done).count(),
        rows: tables.iter().flat_map(|t| &t.ranges).map(|r| r.rows).sum(),
        estimated_rows: tables.iter().map(|t| t.estimated_rows).sum(),
        running_seconds: s.running_seconds,
        done_seq: s.done_seq,
        error: s.error.clone(),
    })
}

/// Checks the request against the configuration and writes it; its id.
pub async fn request(
    cfg: &Config,
    destination: &str,
    tenant: Option<&str>,
    mapping: Option<&str>,
) -> Result<u64, ResyncError> {
    let Some(d) = cfg.destinations.iter().find(|d| d.name == destination) else {
        let known: Vec<String> = cfg
            .destinations
            .iter()
            .map(|d| format!("{:?}", d.name))
            .collect();
        return Err(ResyncError::UnknownDestination {
            name: destination.to_owned(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    };
    if let (Some(t), Tenants::Some(served)) = (tenant, &d.tenants) {
        if !served.contains(t) {
            let mut list: Vec<&String> = served.iter().collect();
            list.sort();
            return Err(ResyncError::TenantNotServed {
                destination: d.name.clone(),
                tenant: t.to_owned(),
                served: list
                    .iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let names: Vec<&str> = d
        .mappings
        .iter()
        .filter_map(|&m| cfg.mappings.get(m).map(|m| m.name.as_str()))
        .collect();
    if let Some(m) = mapping {
        if !names.contains(&m) {
            return Err(ResyncError::UnknownMapping {
                destination: d.name.clone(),
                mapping: m.to_owned(),
                has: names.join(", "),
            });
        }
    }
    let state = StateDb::connect(&cfg.state.conn, &cfg.state.schema).await?;
    let id = state
        .snapshots()
        .request(&NewSnapshot {
            reason: "resync".into(),
            destinations: vec![d.name.clone()],
            tenants: tenant.map(|t| vec![t.to_owned()]),
            mappings: mapping.map(|m| vec![m.to_owned()]),
            // Only a resync of everything it has makes a destination whole again.
            clears_hold: tenant.is_none() && mapping.is_none(),
        })
        .await?;
    Ok(id)
}

/// Follows snapshot `id` until it ends, showing its progress (`crate::progress`: a bar on a
/// terminal, else a log line every few seconds). Returns its last progress.
pub async fn follow(cfg: &Config, id: u64) -> Result<SnapshotProgress, ResyncError> {
    let state = StateDb::connect(&cfg.state.conn, &cfg.state.schema).await?;
    let store = state.snapshots();
    let started = Instant::now();
    let mut bar = Progress::start(format!("snapshot {id}"), "rows", None);
    loop {
        let Some(s) = store.get(id).await? else {
            return Err(ResyncError::Cancelled { id });
        };
        let p = progress(store, &s).await?;
        match s.state {
            SnapshotState::Done => {
                bar.finish();
                return Ok(p);
            }
            SnapshotState::Failed => {
                bar.finish();
                return Err(ResyncError::Failed {
                    id,
                    error: p.error.unwrap_or_else(|| "no reason recorded".into()),
                });
            }
            SnapshotState::Cancelled => return Err(ResyncError::Cancelled { id }),
            SnapshotState::Pending | SnapshotState::Running => {}
        }
        if p.state == "pending" {
            bar.set_detail(progress_line(&p, started.elapsed()));
        } else {
            bar.set_detail(format!("tables {}/{}", p.tables_done, p.tables));
        }
        bar.update(p.rows, (p.estimated_rows > 0).then_some(p.estimated_rows));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One line of progress: a bar (by rows against the estimate, else by tables), tables,
/// rows, rate and ETA.
pub fn progress_line(p: &SnapshotProgress, waited: Duration) -> String {
    if p.state == "pending" {
        let hint = if waited > Duration::from_secs(5) {
            " (is `pgfanout run` running? it takes requests within a second)"
        } else {
            ""
        };
        return format!(
            "snapshot {}: waiting for the daemon to start it{hint}",
            p.id
        );
    }
    let fraction = if p.estimated_rows > 0 {
        (p.rows as f64 / p.estimated_rows as f64).min(1.0)
    } else if p.tables > 0 {
        p.tables_done as f64 / p.tables as f64
    } else {
        0.0
    };
    const WIDTH: usize = 24;
    let filled = (fraction * WIDTH as f64).round() as usize;
    let mut line = format!(
        "[{}{}] {:>3.0}%  tables {}/{}  rows {}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        fraction * 100.0,
        p.tables_done,
        p.tables,
        p.rows
    );
    if p.estimated_rows > 0 {
        line.push_str(&format!(" of ~{}", p.estimated_rows));
    }
    if let Some(r) = p.rows_per_second() {
        line.push_str(&format!("  {r:.0} rows/s"));
    }
    if let Some(eta) = p.eta_seconds() {
        line.push_str(&format!(
            "  ETA {}",
            humantime::format_duration(Duration::from_secs(eta.ceil() as u64))
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(rows: u64, estimated: u64, secs: Option<f64>) -> SnapshotProgress {
        SnapshotProgress {
            id: 3,
            reason: "resync".into(),
            state: "running".into(),
            destinations: vec!["a".into()],
            tenants: None,
            mappings: None,
            tables: 2,
            tables_done: 1,
            rows,
            estimated_rows: estimated,
            running_seconds: secs,
            done_seq: None,
            error: None,
        }
    }

    #[test]
    fn the_progress_line_shows_bar_tables_rows_rate_and_eta() {
        let line = progress_line(&p(500, 1000, Some(10.0)), Duration::ZERO);
        assert_eq!(
            line,
            "[############............]  50%  tables 1/2  rows 500 of ~1000  50 rows/s  ETA 10s"
        );
        // Without an estimate the bar follows the tables, and there is no ETA.
        let line = progress_line(&p(500, 0, None), Duration::ZERO);
        assert_eq!(
            line,
            "[############............]  50%  tables 1/2  rows 500"
        );
        let mut pending = p(0, 0, None);
        pending.state = "pending".into();
        assert!(
            progress_line(&pending, Duration::from_secs(6)).contains("is `pgfanout run` running?")
        );
    }
}
