//! Server checks, publication and slot management, run on the replication session before
//! streaming starts (a `replication=database` session also accepts plain SQL).

use tracing::info;

use super::session::Session;
use super::SourceError;
use crate::config::SourceConfig;
use crate::lsn::Lsn;
use crate::sql::{quote_ident, quote_literal};

/// Which slot to stream from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotSpec {
    /// A slot that lives only as long as this session (`pgfanout tail` without `--slot`).
    Temporary,
    /// A persistent slot, created when missing if the configuration allows it.
    Named(String),
}

pub(super) async fn check_wal_level(session: &mut Session) -> Result<(), SourceError> {
    let rows = session.simple_query("SHOW wal_level").await?;
    let actual = rows
        .first()
        .and_then(|r| r.get(0))
        .unwrap_or("unknown")
        .to_owned();
    if actual != "logical" {
        return Err(SourceError::WalLevel { actual });
    }
    Ok(())
}

pub(super) async fn ensure_publication(
    session: &mut Session,
    cfg: &SourceConfig,
) -> Result<(), SourceError> {
    let pub_lit = quote_literal(&cfg.publication);
    let exists = !session
        .simple_query(&format!(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {pub_lit}"
        ))
        .await?
        .is_empty();
    if !exists {
        if !cfg.manage {
            return Err(SourceError::PublicationMissing {
                publication: cfg.publication.clone(),
            });
        }
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
        return Ok(());
    }
    // An existing publication managed by us must cover every configured table.
    if let (true, Some(tables)) = (cfg.manage, &cfg.tables) {
        let rows = session
            .simple_query(&format!(
                "SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = {pub_lit}"
            ))
            .await?;
        let all_tables = !session
            .simple_query(&format!(
                "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {pub_lit} AND puballtables"
            ))
            .await?
            .is_empty();
        let missing: Vec<_> = tables
            .iter()
            .filter(|t| {
                !rows.iter().any(|r| {
                    r.get(0) == Some(t.schema.as_str()) && r.get(1) == Some(t.name.as_str())
                })
            })
            .collect();
        if !all_tables && !missing.is_empty() {
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
        }
    }
    Ok(())
}

/// Creates or checks the slot; returns its name and the LSN to start streaming from.
pub(super) async fn prepare_slot(
    session: &mut Session,
    cfg: &SourceConfig,
    spec: &SlotSpec,
) -> Result<(String, Lsn), SourceError> {
    match spec {
        SlotSpec::Temporary => {
            let name = format!(
                "pgfanout_tail_{}_{:08x}",
                std::process::id(),
                rand::random::<u32>()
            );
            let lsn = create_slot(session, &name, true).await?;
            Ok((name, lsn))
        }
        SlotSpec::Named(name) => {
            let rows = session
                .simple_query(&format!(
                    "SELECT slot_type, plugin, database FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
                    quote_literal(name)
                ))
                .await?;
            match rows.first() {
                Some(row) => {
                    if row.get(0) != Some("logical") {
                        return Err(SourceError::SlotPhysical { slot: name.clone() });
                    }
                    let plugin = row.get(1).unwrap_or_default();
                    if plugin != "pgoutput" {
                        return Err(SourceError::SlotPlugin {
                            slot: name.clone(),
                            plugin: plugin.to_owned(),
                        });
                    }
                    let database = row.get(2).unwrap_or_default();
                    if database != cfg.conn.dbname {
                        return Err(SourceError::SlotDatabase {
                            slot: name.clone(),
                            actual: database.to_owned(),
                            expected: cfg.conn.dbname.clone(),
                        });
                    }
                    // 0/0: resume from the slot's confirmed_flush_lsn.
                    Ok((name.clone(), Lsn::ZERO))
                }
                None if cfg.manage => {
                    let lsn = create_slot(session, name, false).await?;
                    info!(slot = %name, lsn = %lsn, "created replication slot");
                    Ok((name.clone(), lsn))
                }
                None => Err(SourceError::SlotMissing { slot: name.clone() }),
            }
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
