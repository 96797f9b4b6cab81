//! The state database: what pgfanout must remember across restarts that is not in the change
//! log — today the slot checkpoint — kept in one schema (default `pgfanout`) of a PostgreSQL
//! database (default: the source database).
//!
//! ```text
//! StateDb::connect ──▶ migrate (one transaction, pg_advisory_xact_lock, checksums)
//!        │
//!        ├──▶ CheckpointStore: load(slot) / save(slot, checkpoint) — never moves backwards
//!        ├──▶ DestinationStore: the destinations' last reports (for `status`)
//!        ├──▶ HoldStore: destinations held back (`failed`, `needs resync`) until cleared
//!        └──▶ DaemonStore: the running daemon's heartbeat (is one running at all?)
//! ```
//!
//! - The schema's SQL lives in `migrations/NNNN_name.sql`, embedded in the binary
//!   ([`MIGRATIONS`]) and applied at connect by [`migrate`]: one transaction on one connection,
//!   serialised across processes by an advisory lock keyed on the schema name, each migration
//!   recorded with the SHA-256 of its text. A changed applied migration, or one this binary does
//!   not know (a newer pgfanout migrated the schema), stops start-up instead of guessing.
//! - The schema name comes from configuration: it is quoted everywhere (`sql::quote_ident`), and
//!   the migration files use unqualified names under `SET LOCAL search_path`.
//! - [`StateError::is_transient`] is the one place that decides whether a retry can help.
//! - Must not know about the stream, the change log or destinations' internals: it stores
//!   what it is given.
//!
//! Connections honour the URL's `sslmode` through [`ConnInfo::connect_sql`] (rustls, as the
//! replication session).

mod checkpoint;
mod daemon;
mod destinations;
mod holds;
mod migrations;
mod snapshots;

use std::sync::Arc;

use crate::disposition::{pg_error_kind, Classify, ErrorKind};
use crate::pgconn::{ConnInfo, PgError, SqlConnectError};
use crate::sql::quote_ident;

pub use checkpoint::{Binding, Checkpoint, CheckpointStore};
pub use daemon::{DaemonIdentity, DaemonStore, Heartbeat, HEARTBEAT_EVERY, STALE_AFTER_BEATS};
pub use destinations::{DestinationReport, DestinationStore};
pub use holds::{Hold, HoldKind, HoldStore, StoredHold};
pub use migrations::{migrate, MigrateReport, Migration, MIGRATIONS};
pub use snapshots::{
    Coverage, NewSnapshot, RangeProgress, SnapshotRow, SnapshotState, SnapshotStore, TableProgress,
};

/// The schema pgfanout keeps its state in unless configured otherwise.
pub const DEFAULT_SCHEMA: &str = "pgfanout";

/// A connection to the state database with its schema migrated.
///
/// If the connection drops, operations fail with a transient [`StateError`]; connect again.
pub struct StateDb {
    schema: String,
    report: MigrateReport,
    checkpoints: CheckpointStore,
    destinations: DestinationStore,
    holds: HoldStore,
    snapshots: SnapshotStore,
    daemon: DaemonStore,
}

impl StateDb {
    /// Connects, then brings `schema` up to date with [`MIGRATIONS`] before returning.
    pub async fn connect(conninfo: &ConnInfo, schema: &str) -> Result<StateDb, StateError> {
        validate_schema(schema)?;
        let mut client = conninfo.connect_sql().await.map_err(|e| match e {
            SqlConnectError::Tls(e) => StateError::Tls(e),
            SqlConnectError::Connect { target, source } => StateError::Connect { target, source },
            other => StateError::Hosts(other),
        })?;
        let report = migrate(&mut client, schema, MIGRATIONS).await?;
        let client = Arc::new(client);
        Ok(StateDb {
            schema: schema.to_owned(),
            report,
            checkpoints: CheckpointStore::new(client.clone(), schema),
            destinations: DestinationStore::new(client.clone(), schema),
            holds: HoldStore::new(client.clone(), schema),
            snapshots: SnapshotStore::new(client.clone(), schema),
            daemon: DaemonStore::new(client, schema),
        })
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// What the migration run at connect did.
    pub fn migrations(&self) -> &MigrateReport {
        &self.report
    }

    /// What the destinations' writers last reported.
    pub fn destinations(&self) -> &DestinationStore {
        &self.destinations
    }

    /// Destinations held back: `failed` until resumed, `needs resync` until resynced.
    pub fn holds(&self) -> &HoldStore {
        &self.holds
    }

    /// Snapshot requests and their progress, and what each destination was given.
    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// The daemon's heartbeat.
    pub fn daemon(&self) -> &DaemonStore {
        &self.daemon
    }

    /// The slot checkpoints (clone it to hand it to another task).
    pub fn checkpoints(&self) -> &CheckpointStore {
        &self.checkpoints
    }
}

/// Everything that can go wrong in the state layer. Messages name what was being done and the
/// schema; they never contain connection strings or passwords.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid state schema name {}: {reason}\nHINT: use a non-empty name of at most 63 bytes, for example \"pgfanout\"", quote_ident(.schema))]
    InvalidSchema { schema: String, reason: String },

    #[error("TLS setup for the state database failed")]
    Tls(#[source] crate::pgconn::tls::TlsConfigError),

    #[error("could not connect to the state database {target}")]
    Connect {
        target: String,
        #[source]
        source: PgError,
    },

    /// Several hosts, or a host that `target_session_attrs` passed over.
    #[error("could not connect to the state database")]
    Hosts(#[source] SqlConnectError),

    #[error("{what} (state schema {})", quote_ident(.schema))]
    Query {
        what: String,
        schema: String,
        #[source]
        source: PgError,
    },

    #[error("applying migration {name} to state schema {} failed\nHINT: nothing of it was kept (the migration transaction rolled back)", quote_ident(.schema))]
    Apply {
        name: String,
        schema: String,
        #[source]
        source: PgError,
    },

    #[error("migration {name} was changed after it was applied to state schema {} (recorded checksum {recorded}, file checksum {file})\nHINT: restore the file as it was when applied and put the change in a new migration, or use a fresh state schema", quote_ident(.schema))]
    ChecksumMismatch {
        name: String,
        schema: String,
        recorded: String,
        file: String,
    },

    #[error("state schema {} has migration {version} ({name}) applied, but this pgfanout knows migrations only up to {}\nHINT: a newer pgfanout has migrated this schema; run that version, or configure a different state schema", quote_ident(.schema), latest_known.map_or_else(|| "none".to_owned(), |v| v.to_string()))]
    UnknownMigration {
        version: i32,
        name: String,
        schema: String,
        latest_known: Option<i32>,
    },

    #[error("migration {name} is not applied to state schema {}, but the later migration {latest_applied} is\nHINT: new migrations must be numbered after the last released one", quote_ident(.schema))]
    OutOfOrder {
        name: String,
        schema: String,
        latest_applied: i32,
    },

    #[error("invalid migration list: {0}")]
    InvalidMigrations(String),

    #[error("{what} in state schema {}: {detail}", quote_ident(.schema))]
    InvalidValue {
        what: String,
        schema: String,
        detail: String,
    },
}

impl Classify for StateError {
    /// A lost or refused connection, a server shutting down or starting up, a serialization
    /// failure or deadlock, exhausted resources are transient. Not: permissions, a changed or
    /// unknown migration, bad SQL, bad values.
    fn kind(&self) -> ErrorKind {
        match self {
            StateError::Connect { source, .. }
            | StateError::Query { source, .. }
            | StateError::Apply { source, .. } => pg_error_kind(source.inner()),
            StateError::Hosts(e) => e.kind(),
            StateError::InvalidSchema { .. }
            | StateError::Tls(_)
            | StateError::ChecksumMismatch { .. }
            | StateError::UnknownMigration { .. }
            | StateError::OutOfOrder { .. }
            | StateError::InvalidMigrations(_)
            | StateError::InvalidValue { .. } => ErrorKind::Definite,
        }
    }
}

impl StateError {
    /// The SQLSTATE of the server error behind this one, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            StateError::Connect { source, .. }
            | StateError::Query { source, .. }
            | StateError::Apply { source, .. } => source.inner().code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// A server error in PostgreSQL's own layout (`ERROR: …`, DETAIL, HINT) with its SQLSTATE;
/// otherwise tokio-postgres's description with its cause (which tokio-postgres's Display omits).
fn validate_schema(schema: &str) -> Result<(), StateError> {
    match crate::sql::identifier_problem(schema) {
        None => Ok(()),
        Some(reason) => Err(StateError::InvalidSchema {
            schema: schema.to_owned(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_validated() {
        assert!(validate_schema("pgfanout").is_ok());
        assert!(validate_schema("pg\"fanout; drop").is_ok());
        for bad in ["", "a\0b", &"x".repeat(64)] {
            let e = validate_schema(bad).unwrap_err();
            assert!(!e.is_transient());
            assert!(e.to_string().contains("invalid state schema name"), "{e}");
        }
    }

    #[test]
    fn definite_errors_are_not_transient_and_quote_the_schema() {
        let e = StateError::ChecksumMismatch {
            name: "0001_state.sql".into(),
            schema: "my\"schema".into(),
            recorded: "aa".into(),
            file: "bb".into(),
        };
        assert!(!e.is_transient());
        let msg = e.to_string();
        assert!(
            msg.contains("0001_state.sql") && msg.contains("\"my\"\"schema\""),
            "{msg}"
        );
        let e = StateError::UnknownMigration {
            version: 7,
            name: "0007_x.sql".into(),
            schema: "pgfanout".into(),
            latest_known: Some(1),
        };
        assert!(!e.is_transient());
        assert!(e.to_string().contains("up to 1"), "{e}");
    }
}
