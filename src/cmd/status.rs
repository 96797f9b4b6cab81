//! `pgfanout status`: where the slot, the change log and the last checkpoint stand. Read-only:
//! it applies no migrations and takes no lock.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::changelog::{self, LogError};
use crate::cmd::resync::{progress, progress_line, SnapshotProgress};
use crate::config::{Config, DestinationConfig, StoreConfig, Tenants};
use crate::pgconn::{PgError, SqlConnectError};
use crate::report::Chain;
use crate::sink::{ClickHouseError, ClickHouseSink, PostgresSink};
use crate::sql::quote_ident;
use crate::state::{
    DaemonStore, DestinationStore, Heartbeat, HoldKind, HoldStore, SnapshotStore, StateError,
    StoredHold, HEARTBEAT_EVERY, STALE_AFTER_BEATS,
};

#[derive(Debug, Serialize)]
pub struct Status {
    /// Whether a daemon runs for this slot, from its heartbeat in the state database.
    pub daemon: DaemonStatus,
    pub slot: Option<SlotStatus>,
    pub log: LogStatus,
    pub checkpoint: Option<CheckpointStatus>,
    pub destinations: Vec<DestinationStatus>,
    /// Open snapshots, then the latest finished ones (at most [`RECENT_SNAPSHOTS`] in all).
    pub snapshots: Vec<SnapshotProgress>,
    /// Tenants that have destinations of their own (a destination whose `tenants` is a list),
    /// one entry per (tenant, destination), by tenant.
    pub tenants: Vec<TenantStatus>,
}

/// The daemon streaming this configuration's slot, as its heartbeat says.
#[derive(Debug, Serialize)]
pub struct DaemonStatus {
    /// A heartbeat younger than `stale_after_seconds`, and no clean stop since.
    pub running: bool,
    pub pid: Option<u32>,
    pub host: Option<String>,
    pub version: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: Option<String>,
    /// Seconds since the last heartbeat; `None` when no daemon ever wrote one.
    pub last_heartbeat_age_seconds: Option<f64>,
    /// When it stopped cleanly (RFC 3339, UTC); `None` while it runs, or after a kill.
    pub stopped_at: Option<String>,
    /// A heartbeat older than this means no daemon is running.
    pub stale_after_seconds: f64,
}

/// One tenant's place in one of the destinations that list it. A destination applies changes
/// in seq order, so every tenant it serves stands at its watermark; the lag counts the log's
/// changes past it (an upper bound for the tenant's own).
#[derive(Debug, Clone, Serialize)]
pub struct TenantStatus {
    pub tenant: String,
    pub destination: String,
    pub state: String,
    pub watermark: u64,
    pub lag_changes: u64,
    pub lag_seconds: f64,
}

const RECENT_SNAPSHOTS: i64 = 5;

/// One configured destination, as its writer last reported it.
#[derive(Debug, Serialize)]
pub struct DestinationStatus {
    pub name: String,
    /// `streaming`, `catching up`, `retrying`, `needs resync`, `failed`, `stopped`, `starting`, or
    /// `never reported` (no daemon has run it yet).
    pub state: String,
    pub watermark: u64,
    /// Changes in the log beyond the watermark.
    pub lag_changes: u64,
    /// Commit time of the log's last transaction minus that of the last applied one.
    pub lag_seconds: f64,
    pub last_error: Option<String>,
    /// Seconds since the daemon wrote this report (it writes every few seconds while running).
    pub report_age_seconds: Option<f64>,
    /// Where `watermark` comes from: `report` (the running daemon's report) or `destination`
    /// (read from the destination's own watermark table, because no daemon is running or
    /// its report is stale; never lower than the report).
    pub watermark_source: String,
    /// Why the destination's own watermark could not be read, when it was tried.
    pub destination_error: Option<String>,
    /// What holds it back, if anything (`state` is then `failed` or `needs resync`).
    pub hold: Option<HoldStatus>,
    /// The open snapshot filling it, if any.
    pub snapshot: Option<SnapshotProgress>,
}

/// A destination held back: `failed` (stopped until `pgfanout destination resume`) or
/// `needs resync` (streaming, with a gap). Never a row value.
#[derive(Debug, Serialize)]
pub struct HoldStatus {
    /// `failed` or `needs resync`.
    pub kind: String,
    pub reason: String,
    /// The target table and column it failed at, when known.
    pub table: Option<String>,
    pub column: Option<String>,
    /// `failed`: the change it stopped at; `needs resync`: the first change it missed.
    pub seq: Option<u64>,
    /// A failed destination that also needs a resync: why.
    pub resync_reason: Option<String>,
    pub since: String,
}

impl From<&StoredHold> for HoldStatus {
    fn from(h: &StoredHold) -> Self {
        HoldStatus {
            kind: h.hold.kind.as_str().to_owned(),
            reason: h.hold.reason.clone(),
            table: h.table.clone(),
            column: h.column.clone(),
            seq: h.hold.seq,
            resync_reason: h.resync_reason.clone(),
            since: h.since.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub confirmed_flush_lsn: Option<String>,
    pub restart_lsn: Option<String>,
    pub server_wal_lsn: String,
    /// WAL the slot still holds back behind the server's current position.
    pub lag_bytes: Option<i64>,
    pub wal_status: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LogStatus {
    pub dir: String,
    pub segments: usize,
    pub bytes: u64,
    pub oldest_seq: Option<u64>,
    pub last_seq: u64,
    pub last_commit_end_lsn: Option<String>,
    pub last_commit_time: Option<String>,
    /// What the log is bound to (its META file; `None` before the first run).
    pub binding: Option<LogBinding>,
}

/// A change log's binding, as `status` shows it.
#[derive(Debug, Serialize)]
pub struct LogBinding {
    /// The cluster's system identifier, as text (it is an unsigned 64-bit number).
    pub system_identifier: String,
    pub timeline: u32,
    pub database: String,
    pub slot: String,
    pub lineage: String,
    /// How far past its last commit the log vouches for the stream.
    pub position_lsn: String,
}

#[derive(Debug, Serialize)]
pub struct CheckpointStatus {
    pub last_seq: i64,
    pub commit_end_lsn: String,
    pub age_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot reach the source database")]
    Source(#[source] SqlConnectError),
    #[error("cannot reach the state database")]
    State(#[source] SqlConnectError),
    #[error("querying {what} failed")]
    Query {
        what: &'static str,
        #[source]
        source: PgError,
    },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("reading destination status")]
    Destinations(#[source] StateError),
}

/// Not migrated yet: nothing was ever written.
fn never_written(e: &StateError) -> bool {
    matches!(e, StateError::Query { source, .. }
        if source.inner().code().is_some_and(|c| c.code() == "42P01" || c.code() == "3F000"))
}

pub async fn status(cfg: &Config) -> Result<Status, StatusError> {
    let source = cfg
        .source
        .conn
        .connect_sql()
        .await
        .map_err(StatusError::Source)?;
    let slot = source
        .query_opt(
            "SELECT active, active_pid, confirmed_flush_lsn::text, restart_lsn::text,
                    pg_current_wal_lsn()::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                    wal_status
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&cfg.source.slot],
        )
        .await
        .map_err(|source| StatusError::Query {
            what: "the replication slot",
            source: source.into(),
        })?
        .map(|r| SlotStatus {
            name: cfg.source.slot.clone(),
            active: r.get(0),
            active_pid: r.get(1),
            confirmed_flush_lsn: r.get(2),
            restart_lsn: r.get(3),
            server_wal_lsn: r.get(4),
            lag_bytes: r.get(5),
            wal_status: r.get(6),
        });

    let dir = cfg.log.dir.clone();
    let summary = tokio::task::spawn_blocking(move || changelog::summary(&dir))
        .await
        .unwrap_or_else(|_| Ok(changelog::LogSummary::default()))?;
    let log = LogStatus {
        dir: cfg.log.dir.display().to_string(),
        segments: summary.segments,
        bytes: summary.bytes,
        oldest_seq: summary.oldest_seq,
        last_seq: summary.last_seq,
        last_commit_end_lsn: summary.last_commit.map(|c| c.end_lsn.to_string()),
        last_commit_time: summary.last_commit.map(|c| c.commit_time.to_string()),
        binding: summary.meta.as_ref().map(|m| LogBinding {
            system_identifier: m.source.system_identifier.to_string(),
            timeline: m.source.timeline,
            database: m.source.database.clone(),
            slot: m.source.slot.clone(),
            lineage: m.lineage.to_string(),
            position_lsn: m.position.lsn.to_string(),
        }),
    };

    let state = cfg
        .state
        .conn
        .connect_sql()
        .await
        .map_err(StatusError::State)?;
    let checkpoint = match state
        .query_opt(
            &format!(
                "SELECT last_seq, commit_end_lsn::text, extract(epoch FROM now() - updated_at)::float8
                 FROM {}.checkpoints WHERE slot = $1",
                quote_ident(&cfg.state.schema)
            ),
            &[&cfg.source.slot],
        )
        .await
    {
        Ok(row) => row.map(|r| CheckpointStatus {
            last_seq: r.get(0),
            commit_end_lsn: r.get(1),
            age_seconds: r.get(2),
        }),
        // Not migrated yet: no checkpoint was ever written.
        Err(e) if e.code().is_some_and(|c| c.code() == "42P01" || c.code() == "3F000") => None,
        Err(source) => {
            return Err(StatusError::Query {
                what: "the checkpoint",
                source: source.into(),
            })
        }
    };
    let state = Arc::new(state);
    let reports = match DestinationStore::new(state.clone(), &cfg.state.schema)
        .load_all()
        .await
    {
        Ok(r) => r,
        Err(e) if never_written(&e) => Vec::new(),
        Err(e) => return Err(StatusError::Destinations(e)),
    };
    let holds = match HoldStore::new(state.clone(), &cfg.state.schema)
        .load_all()
        .await
    {
        Ok(h) => h,
        Err(e) if never_written(&e) => Vec::new(),
        Err(e) => return Err(StatusError::Destinations(e)),
    };
    let heartbeat = match DaemonStore::new(state.clone(), &cfg.state.schema)
        .load(&cfg.source.slot)
        .await
    {
        Ok(h) => h,
        Err(e) if never_written(&e) => None,
        Err(e) => return Err(StatusError::Destinations(e)),
    };
    let daemon = daemon_status(heartbeat.as_ref());
    let store = SnapshotStore::new(state, &cfg.state.schema);
    let mut snapshots = Vec::new();
    match store.recent(RECENT_SNAPSHOTS).await {
        Ok(mut rows) => {
            // Open ones first, each group newest first.
            rows.sort_by_key(|r| (!r.state.is_open(), std::cmp::Reverse(r.id)));
            for r in &rows {
                snapshots.push(
                    progress(&store, r)
                        .await
                        .map_err(StatusError::Destinations)?,
                );
            }
        }
        Err(e) if never_written(&e) => {}
        Err(e) => return Err(StatusError::Destinations(e)),
    }
    // Without a live daemon (or with its report stale) the reports may be far behind: ask
    // each destination for its own watermark.
    let stale = |r: Option<&crate::state::DestinationReport>| {
        !daemon.running || r.is_none_or(|r| r.age_seconds > daemon.stale_after_seconds)
    };
    let mut own = read_own_watermarks(
        cfg.destinations
            .iter()
            .filter(|d| stale(reports.iter().find(|r| r.name == d.name)))
            .cloned()
            .collect(),
        cfg.fanout.max_connections,
    )
    .await;
    let mut destinations: Vec<DestinationStatus> = cfg
        .destinations
        .iter()
        .map(|d| {
            let hold = holds.iter().find(|h| h.name == d.name);
            let report = reports.iter().find(|r| r.name == d.name);
            let mut status = destination_status(d, report, &summary);
            if report.is_some() && !daemon.running {
                status.state = "stopped".into();
            }
            match own.remove(&d.name) {
                Some(Ok(wm)) if wm > status.watermark || report.is_none() => {
                    status.watermark = wm;
                    status.lag_changes = summary.last_seq.saturating_sub(wm);
                    // Recomputed from the log below.
                    status.lag_seconds = f64::NAN;
                    status.watermark_source = "destination".into();
                }
                Some(Ok(_)) => status.watermark_source = "destination".into(),
                Some(Err(e)) => status.destination_error = Some(e),
                None => {}
            }
            if let Some(h) = hold {
                status.state = h.hold.kind.as_str().to_owned();
                if h.hold.kind == HoldKind::Failed {
                    status.last_error = Some(h.hold.reason.clone());
                }
                status.hold = Some(h.into());
            }
            status.snapshot = snapshots
                .iter()
                .find(|p| {
                    matches!(p.state.as_str(), "pending" | "running")
                        && p.destinations.contains(&d.name)
                })
                .cloned();
            status
        })
        .collect();
    let last_commit_us = summary.last_commit.map(|c| c.commit_time.pg_epoch_micros());
    for d in destinations.iter_mut().filter(|d| d.lag_seconds.is_nan()) {
        d.lag_seconds = 0.0;
        if d.lag_changes == 0 || d.watermark == 0 {
            continue;
        }
        if let (Some(last), Some(applied)) = (
            last_commit_us,
            commit_time_of(&cfg.log.dir, d.watermark).await,
        ) {
            d.lag_seconds = (last - applied).max(0) as f64 / 1e6;
        }
    }
    let tenants = tenant_status(cfg, &destinations);
    Ok(Status {
        daemon,
        slot,
        log,
        checkpoint,
        destinations,
        snapshots,
        tenants,
    })
}

/// How long `status` waits for one destination's own watermark.
const OWN_WATERMARK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Records read past a watermark looking for its transaction's commit.
const COMMIT_LOOKUP_RECORDS: usize = 10_000;

fn daemon_status(h: Option<&Heartbeat>) -> DaemonStatus {
    let stale_after = STALE_AFTER_BEATS * HEARTBEAT_EVERY.as_secs_f64();
    match h {
        None => DaemonStatus {
            running: false,
            pid: None,
            host: None,
            version: None,
            started_at: None,
            last_heartbeat_age_seconds: None,
            stopped_at: None,
            stale_after_seconds: stale_after,
        },
        Some(h) => DaemonStatus {
            running: h.alive(),
            pid: Some(h.identity.pid),
            host: Some(h.identity.host.clone()),
            version: Some(h.identity.version.clone()),
            started_at: Some(h.started_at.clone()),
            last_heartbeat_age_seconds: Some(h.age_seconds),
            stopped_at: h.stopped_at.clone(),
            stale_after_seconds: STALE_AFTER_BEATS * h.interval_seconds,
        },
    }
}

/// Each destination's watermark as the destination itself stores it (the sinks' own read),
/// `at_once` at a time (`[fanout] max_connections`: 1,000 tenant databases on one server must
/// not take 1,000 connections), each bounded by [`OWN_WATERMARK_TIMEOUT`] once connecting; an
/// error as its message.
async fn read_own_watermarks(
    destinations: Vec<DestinationConfig>,
    at_once: usize,
) -> HashMap<String, Result<u64, String>> {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(at_once.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for d in destinations {
        let permits = permits.clone();
        tasks.spawn(async move {
            // Never closed.
            let _permit = permits.acquire_owned().await;
            let read = tokio::time::timeout(OWN_WATERMARK_TIMEOUT, own_watermark(&d)).await;
            let result = match read {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no answer within {} s",
                    OWN_WATERMARK_TIMEOUT.as_secs()
                )),
            };
            (d.name, result)
        });
    }
    let mut out = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok((name, result)) = done {
            out.insert(name, result);
        }
    }
    out
}

async fn own_watermark(d: &DestinationConfig) -> Result<u64, String> {
    match &d.store {
        StoreConfig::Postgres(pg) => {
            let client = pg
                .conn
                .connect_sql()
                .await
                .map_err(|e| Chain(&e).to_string())?;
            match PostgresSink::new(client, pg.schema.clone())
                .watermark(&d.name)
                .await
            {
                Ok(wm) => Ok(wm),
                // No watermark table (or schema) yet: nothing applied.
                Err(e) if matches!(e.sqlstate(), Some("42P01" | "3F000")) => Ok(0),
                Err(e) => Err(Chain(&e).to_string()),
            }
        }
        StoreConfig::ClickHouse(ch) => {
            let mut sink = ClickHouseSink::connect(ch)
                .await
                .map_err(|e| Chain(&e).to_string())?;
            match sink.watermark(&d.name).await {
                Ok(wm) => Ok(wm),
                // UNKNOWN_TABLE, UNKNOWN_DATABASE: nothing applied yet.
                Err(ClickHouseError::Server {
                    code: Some(60 | 81),
                    ..
                }) => Ok(0),
                Err(e) => Err(Chain(&e).to_string()),
            }
        }
    }
}

/// The commit time (microseconds since 2000-01-01) of the transaction holding change `seq`,
/// from the change log; `None` when the log no longer (or not yet) holds it.
async fn commit_time_of(dir: &std::path::Path, seq: u64) -> Option<i64> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut reader = changelog::LogReader::open(&dir, seq).ok()?;
        for _ in 0..COMMIT_LOOKUP_RECORDS {
            match reader.next_record().ok()?? {
                changelog::LogRecord::Commit(c) if c.last_seq >= seq => {
                    return Some(c.commit_time.pg_epoch_micros())
                }
                _ => {}
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// Per tenant listed by a destination, that destination's standing.
fn tenant_status(cfg: &Config, destinations: &[DestinationStatus]) -> Vec<TenantStatus> {
    let mut out = Vec::new();
    for (d, status) in cfg.destinations.iter().zip(destinations) {
        let Tenants::Some(listed) = &d.tenants else {
            continue;
        };
        for t in listed {
            out.push(TenantStatus {
                tenant: t.clone(),
                destination: d.name.clone(),
                state: status.state.clone(),
                watermark: status.watermark,
                lag_changes: status.lag_changes,
                lag_seconds: status.lag_seconds,
            });
        }
    }
    out.sort_by(|a, b| (&a.tenant, &a.destination).cmp(&(&b.tenant, &b.destination)));
    out
}

/// One destination as its last report says (`never reported` without one).
fn destination_status(
    d: &crate::config::DestinationConfig,
    report: Option<&crate::state::DestinationReport>,
    summary: &changelog::LogSummary,
) -> DestinationStatus {
    let last_commit_us = summary.last_commit.map(|c| c.commit_time.pg_epoch_micros());
    match report {
        None => DestinationStatus {
            name: d.name.clone(),
            state: "never reported".into(),
            watermark: 0,
            lag_changes: summary.last_seq,
            lag_seconds: 0.0,
            last_error: None,
            report_age_seconds: None,
            watermark_source: "report".into(),
            destination_error: None,
            hold: None,
            snapshot: None,
        },
        Some(r) => {
            let lag_changes = summary.last_seq.saturating_sub(r.watermark);
            let lag_seconds = match (lag_changes, last_commit_us, r.applied_commit_time) {
                (0, _, _) => 0.0,
                (_, Some(last), Some(applied)) => (last - applied).max(0) as f64 / 1e6,
                _ => 0.0,
            };
            DestinationStatus {
                name: r.name.clone(),
                state: r.state.clone(),
                watermark: r.watermark,
                lag_changes,
                lag_seconds,
                last_error: r.last_error.clone(),
                report_age_seconds: Some(r.age_seconds),
                watermark_source: "report".into(),
                destination_error: None,
                hold: None,
                snapshot: None,
            }
        }
    }
}

impl fmt::Display for DaemonStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match (self.pid, &self.host) {
            (Some(pid), Some(host)) => format!("pid {pid} on {host}"),
            _ => String::new(),
        };
        match (self.running, self.last_heartbeat_age_seconds, &self.stopped_at) {
            (true, Some(age), _) => write!(
                f,
                "daemon: running ({who}, version {}, since {}; last heartbeat {age:.1} s ago)",
                self.version.as_deref().unwrap_or("?"),
                self.started_at.as_deref().unwrap_or("?")
            ),
            (_, None, _) => write!(f, "daemon: no daemon running (no heartbeat: `pgfanout run` never ran with this state schema and slot)"),
            (_, Some(age), Some(at)) => write!(
                f,
                "daemon: no daemon running (stopped at {at}; last heartbeat {age:.1} s ago, {who})"
            ),
            (_, Some(age), None) => write!(
                f,
                "daemon: no daemon running (last heartbeat {age:.1} s ago, {who}; it was killed or lost its state database)\n  destination watermarks below are read from the destinations"
            ),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.daemon)?;
        match &self.slot {
            Some(s) => {
                write!(f, "slot {}: ", s.name)?;
                match s.active_pid {
                    Some(pid) if s.active => write!(f, "active (pid {pid})")?,
                    _ => write!(f, "inactive")?,
                }
                if let Some(c) = &s.confirmed_flush_lsn {
                    write!(f, ", confirmed {c}")?;
                }
                if let Some(lag) = s.lag_bytes {
                    write!(
                        f,
                        ", {lag} bytes behind the server's WAL ({})",
                        s.server_wal_lsn
                    )?;
                }
                if let Some(w) = &s.wal_status {
                    write!(f, ", wal_status {w}")?;
                }
                writeln!(f)?;
            }
            None => writeln!(
                f,
                "slot: does not exist yet (pgfanout run creates it when source.manage is on)"
            )?,
        }
        let l = &self.log;
        match l.oldest_seq {
            Some(oldest) => writeln!(
                f,
                "change log {}: seq {oldest} to {}, {} segment(s), {} bytes, last commit {} at {}",
                l.dir,
                l.last_seq,
                l.segments,
                l.bytes,
                l.last_commit_end_lsn.as_deref().unwrap_or("-"),
                l.last_commit_time.as_deref().unwrap_or("-"),
            )?,
            None => writeln!(f, "change log {}: empty", l.dir)?,
        }
        if let Some(b) = &l.binding {
            writeln!(
                f,
                "  bound to system {}, timeline {}, database {}, slot {}; lineage {}",
                b.system_identifier, b.timeline, b.database, b.slot, b.lineage
            )?;
        }
        match &self.checkpoint {
            Some(c) => writeln!(
                f,
                "checkpoint: seq {} at {}, {:.1} s ago",
                c.last_seq, c.commit_end_lsn, c.age_seconds
            )?,
            None => writeln!(f, "checkpoint: none yet")?,
        }
        for d in &self.destinations {
            write!(
                f,
                "destination {}: {}, watermark {}, {} changes / {:.1} s behind",
                d.name, d.state, d.watermark, d.lag_changes, d.lag_seconds
            )?;
            if d.watermark_source == "destination" {
                write!(f, " (watermark read from the destination)")?;
            } else if let Some(age) = d.report_age_seconds {
                write!(f, " (reported {age:.1} s ago)")?;
            }
            if let Some(e) = &d.destination_error {
                write!(f, "\n  cannot read its own watermark: {e}")?;
            }
            match &d.hold {
                Some(h) => {
                    write!(f, "; {} since {}", h.kind, h.since)?;
                    for (what, v) in [("table", &h.table), ("column", &h.column)] {
                        if let Some(v) = v {
                            write!(f, ", {what} {v}")?;
                        }
                    }
                    if let Some(seq) = h.seq {
                        write!(f, ", seq {seq}")?;
                    }
                    write!(f, ": {}", h.reason)?;
                    if let Some(r) = &h.resync_reason {
                        write!(f, "\n  it also needs a resync: {r}")?;
                    }
                    let hint = if h.kind == "failed" {
                        "fix the cause, then `pgfanout destination resume` it"
                    } else {
                        "resync it, or `pgfanout destination resume` it to accept the gap"
                    };
                    write!(f, "\n  HINT: {hint}")?;
                }
                None => {
                    if let Some(e) = &d.last_error {
                        write!(f, "; last error: {e}")?;
                    }
                }
            }
            if let Some(p) = &d.snapshot {
                write!(
                    f,
                    "\n  snapshot {} ({}): {}",
                    p.id,
                    p.reason,
                    progress_line(p, std::time::Duration::ZERO)
                )?;
            }
            writeln!(f)?;
        }
        for t in &self.tenants {
            writeln!(
                f,
                "tenant {} in {}: {}, watermark {}, {} changes / {:.1} s behind",
                t.tenant, t.destination, t.state, t.watermark, t.lag_changes, t.lag_seconds
            )?;
        }
        for p in &self.snapshots {
            write!(
                f,
                "snapshot {} ({}, {}): {}",
                p.id,
                p.reason,
                p.destinations.join(", "),
                p.state
            )?;
            if let Some(t) = &p.tenants {
                write!(f, ", tenants {}", t.join(", "))?;
            }
            if let Some(m) = &p.mappings {
                write!(f, ", mappings {}", m.join(", "))?;
            }
            write!(
                f,
                "; tables {}/{}, {} rows",
                p.tables_done, p.tables, p.rows
            )?;
            if let Some(seq) = p.done_seq {
                write!(f, ", in the log up to seq {seq}")?;
            }
            if let Some(e) = &p.error {
                write!(f, "; error: {e}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
