//! Server checks, publication and slot management, run on the replication session before
//! streaming starts (a `replication=database` session also accepts plain SQL). The read-only
//! inspectors (`wal_level`, `publication_state`, `slot_state`) serve both start-up and
//! `pgfanout check`; only `ensure_publication` and `prepare_slot` change anything.

use tracing::{info, warn};

use super::session::Session;
use super::SourceError;
use crate::config::SourceConfig;
use crate::lsn::Lsn;
use crate::sql::{quote_ident, quote_literal, QualifiedName};

/// Which slot to stream from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotSpec {
    /// A slot that lives only as long as this session (`pgfanout tail` without `--slot`).
    Temporary,
    /// A persistent slot, created when missing if the configuration allows it.
    Named(String),
}

/// What the publication looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicationState {
    Missing,
    /// Exists; `missing` lists configured tables it does not cover (empty for FOR ALL TABLES).
    Exists {
        missing: Vec<QualifiedName>,
    },
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRow {
    pub slot_type: String,
    pub plugin: String,
    pub database: String,
    /// Where streaming resumes: transactions ending at or before it are not sent again.
    pub confirmed_flush_lsn: Option<Lsn>,
}

/// The server as `IDENTIFY_SYSTEM` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    pub system_identifier: u64,
    pub timeline: u32,
    pub database: String,
    /// The server's current WAL flush position.
    pub wal_position: Lsn,
}

/// What to do with the slot before streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotPlan {
    /// A slot that lives only as long as this session.
    Temporary,
    /// Stream from the existing slot's confirmed position.
    Resume(String),
    /// Create the slot (it must not exist) and stream from its consistent point.
    Create(String),
    /// Drop the slot if it exists, then create it: the WAL in between is never decoded.
    Recreate(String),
}

pub async fn wal_level(session: &mut Session) -> Result<String, SourceError> {
    let rows = session.simple_query("SHOW wal_level").await?;
    Ok(rows
        .first()
        .and_then(|r| r.get(0))
        .unwrap_or("unknown")
        .to_owned())
}

/// `server_version_num` (for example 150018), which says whether the server streams
/// in-progress transactions.
pub async fn server_version_num(session: &mut Session) -> Result<u32, SourceError> {
    let rows = session.simple_query("SHOW server_version_num").await?;
    rows.first()
        .and_then(|r| r.get(0))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(SourceError::Order(
            "SHOW server_version_num returned no number",
        ))
}

pub(super) async fn check_wal_level(session: &mut Session) -> Result<(), SourceError> {
    let actual = wal_level(session).await?;
    if actual != "logical" {
        return Err(SourceError::WalLevel { actual });
    }
    Ok(())
}

pub async fn publication_state(
    session: &mut Session,
    cfg: &SourceConfig,
) -> Result<PublicationState, SourceError> {
    let pub_lit = quote_literal(&cfg.publication);
    let rows = session
        .simple_query(&format!(
            "SELECT puballtables::text FROM pg_catalog.pg_publication WHERE pubname = {pub_lit}"
        ))
        .await?;
    let Some(row) = rows.first() else {
        return Ok(PublicationState::Missing);
    };
    let all_tables = row.get(0) == Some("true");
    let missing = match (&cfg.tables, all_tables) {
        (Some(tables), false) => {
            let published = session
                .simple_query(&format!(
                    "SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = {pub_lit}"
                ))
                .await?;
            tables
                .iter()
                .filter(|t| {
                    !published.iter().any(|r| {
                        r.get(0) == Some(t.schema.as_str()) && r.get(1) == Some(t.name.as_str())
                    })
                })
                .cloned()
                .collect()
        }
        _ => Vec::new(),
    };
    Ok(PublicationState::Exists { missing })
}

pub(super) async fn ensure_publication(
    session: &mut Session,
    cfg: &SourceConfig,
) -> Result<(), SourceError> {
    match publication_state(session, cfg).await? {
        PublicationState::Missing if !cfg.manage => Err(SourceError::PublicationMissing {
            publication: cfg.publication.clone(),
        }),
        PublicationState::Missing => {
            let target = match &cfg.tables {
                Some(tables) => format!(
                    "FOR TABLE {}",
                    tables
                        .iter()
                        .map(|t| t.quoted())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "FOR ALL TABLES".to_owned(),
            };
            session
                .simple_query(&format!(
                    "CREATE PUBLICATION {} {target}",
                    quote_ident(&cfg.publication)
                ))
                .await?;
            info!(publication = %cfg.publication, "created publication");
            Ok(())
        }
        // An existing publication managed by us must cover every configured table.
        PublicationState::Exists { missing } if cfg.manage && !missing.is_empty() => {
            let list = missing
                .iter()
                .map(|t| t.quoted())
                .collect::<Vec<_>>()
                .join(", ");
            session
                .simple_query(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {list}",
                    quote_ident(&cfg.publication)
                ))
                .await?;
            info!(publication = %cfg.publication, tables = %list, "added tables to publication");
            Ok(())
        }
        PublicationState::Exists { .. } => Ok(()),
    }
}

pub async fn slot_state(session: &mut Session, name: &str) -> Result<Option<SlotRow>, SourceError> {
    let rows = session
        .simple_query(&format!(
            "SELECT slot_type, plugin, database, confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote_literal(name)
        ))
        .await?;
    Ok(rows.first().map(|row| SlotRow {
        slot_type: row.get(0).unwrap_or_default().to_owned(),
        plugin: row.get(1).unwrap_or_default().to_owned(),
        database: row.get(2).unwrap_or_default().to_owned(),
        confirmed_flush_lsn: row.get(3).and_then(|s| s.parse().ok()),
    }))
}

pub(super) async fn identify_system(session: &mut Session) -> Result<ServerIdentity, SourceError> {
    let rows = session.simple_query("IDENTIFY_SYSTEM").await?;
    let bad = |what: &str| {
        SourceError::Session(super::session::SessionError::Protocol(format!(
            "IDENTIFY_SYSTEM returned no valid {what}"
        )))
    };
    let row = rows.first().ok_or_else(|| bad("row"))?;
    // Columns: systemid, timeline, xlogpos, dbname.
    Ok(ServerIdentity {
        system_identifier: row
            .get(0)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("systemid"))?,
        timeline: row
            .get(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("timeline"))?,
        wal_position: row
            .get(2)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("xlogpos"))?,
        database: row.get(3).ok_or_else(|| bad("dbname"))?.to_owned(),
    })
}

/// Whether an existing slot can serve `cfg`: logical, pgoutput, this database.
pub fn check_slot(name: &str, row: &SlotRow, cfg: &SourceConfig) -> Result<(), SourceError> {
    if row.slot_type != "logical" {
        return Err(SourceError::SlotPhysical {
            slot: name.to_owned(),
        });
    }
    if row.plugin != "pgoutput" {
        return Err(SourceError::SlotPlugin {
            slot: name.to_owned(),
            plugin: row.plugin.clone(),
        });
    }
    if row.database != cfg.conn.dbname {
        return Err(SourceError::SlotDatabase {
            slot: name.to_owned(),
            actual: row.database.clone(),
            expected: cfg.conn.dbname.clone(),
        });
    }
    Ok(())
}

/// What `tail` and other callers without a change log do with a slot: a temporary one, or the
/// named one resumed, or created when missing if the configuration allows it.
pub(super) fn default_plan(
    cfg: &SourceConfig,
    spec: &SlotSpec,
    existing: Option<&SlotRow>,
) -> Result<SlotPlan, SourceError> {
    Ok(match (spec, existing) {
        (SlotSpec::Temporary, _) => SlotPlan::Temporary,
        (SlotSpec::Named(name), Some(_)) => SlotPlan::Resume(name.clone()),
        (SlotSpec::Named(name), None) if cfg.manage => SlotPlan::Create(name.clone()),
        (SlotSpec::Named(name), None) => {
            return Err(SourceError::SlotMissing { slot: name.clone() })
        }
    })
}

/// Carries out `plan`; returns the slot's name and the LSN to start streaming from.
pub(super) async fn prepare_slot(
    session: &mut Session,
    cfg: &SourceConfig,
    plan: &SlotPlan,
    existing: Option<&SlotRow>,
) -> Result<(String, Lsn), SourceError> {
    match plan {
        SlotPlan::Temporary => {
            let name = format!(
                "pgfanout_tail_{}_{:08x}",
                std::process::id(),
                rand::random::<u32>()
            );
            let lsn = create_slot(session, &name, true).await?;
            Ok((name, lsn))
        }
        SlotPlan::Resume(name) => {
            let row = existing.ok_or_else(|| SourceError::SlotMissing { slot: name.clone() })?;
            check_slot(name, row, cfg)?;
            // 0/0: resume from the slot's confirmed_flush_lsn.
            Ok((name.clone(), Lsn::ZERO))
        }
        SlotPlan::Create(name) => {
            let lsn = create_slot(session, name, false).await?;
            info!(slot = %name, lsn = %lsn, "created replication slot");
            Ok((name.clone(), lsn))
        }
        SlotPlan::Recreate(name) => {
            if existing.is_some() {
                session
                    .simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(name)))
                    .await?;
                warn!(slot = %name, "dropped replication slot to create it again");
            }
            let lsn = create_slot(session, name, false).await?;
            warn!(slot = %name, lsn = %lsn, "created replication slot again: the WAL before this position was never decoded");
            Ok((name.clone(), lsn))
        }
    }
}

async fn create_slot(
    session: &mut Session,
    name: &str,
    temporary: bool,
) -> Result<Lsn, SourceError> {
    // The pre-15 spelling (NOEXPORT_SNAPSHOT) is still accepted by current servers.
    let rows = session
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            quote_ident(name),
            if temporary { " TEMPORARY" } else { "" }
        ))
        .await?;
    // Columns: slot_name, consistent_point, snapshot_name, output_plugin.
    let lsn = rows
        .first()
        .and_then(|r| r.get(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(Lsn::ZERO);
    Ok(lsn)
}
