//! What can go wrong writing to a PostgreSQL destination, and which server errors may be
//! quoted (never a row value).

use crate::binding::ForeignLineage;
use std::fmt;

use tokio_postgres::error::SqlState;

use crate::disposition::{
    pg_error_is_transient, sqlstate_description, sqlstate_destination_kind,
    sqlstate_message_is_safe, sqlstate_object_vanished, Classify, ErrorKind,
};
use crate::pgconn::ServerMessage;
use crate::problems::Problems;
use crate::sql::{quote_ident, QualifiedName};

/// What went wrong writing to a destination. Messages name the destination, the table and
/// column where known, and what was being done; they never contain row values (server errors
/// that may quote a value are reduced to their SQLSTATE and the identifiers they name).
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("the destination tables do not match their specification:{problems}")]
    Schema { problems: Problems },

    #[error("{what}{at}: {message}")]
    Query {
        what: &'static str,
        at: Box<Location>,
        /// Safe to log: no row values.
        message: String,
        code: Option<SqlState>,
        transient: bool,
    },

    #[error("invalid batch for destination {destination:?}, table {table}: {reason}")]
    InvalidBatch {
        destination: String,
        table: String,
        reason: String,
    },

    #[error("the watermark of destination {destination:?} in {table} is {value}, not a seq\nHINT: the watermark table was changed by hand; restore it or resync the destination")]
    BadWatermark {
        destination: String,
        table: QualifiedName,
        value: i64,
    },

    /// Checked again in every batch transaction: two writers of different logs never mix.
    #[error(transparent)]
    ForeignLineage(Box<ForeignLineage>),
}

impl Classify for PostgresError {
    /// A server error is what [`sqlstate_destination_kind`] says of its SQLSTATE: connection,
    /// serialization, deadlock, resources and shutdown are transient; data (22), constraint
    /// (23), schema and access (42), a vanished table, column or schema (42P01, 42703, 3F000)
    /// and everything else the server refuses stop this destination. An error without a
    /// SQLSTATE is transient when the connection underneath failed. A table that does not
    /// match its specification or a bad watermark is rejected too; a batch that does not fit
    /// its tables is a bug.
    fn kind(&self) -> ErrorKind {
        match self {
            PostgresError::Query {
                transient: true, ..
            } => ErrorKind::Transient,
            PostgresError::Query { code: Some(c), .. } => sqlstate_destination_kind(c.code()),
            PostgresError::Query { .. }
            | PostgresError::Schema { .. }
            | PostgresError::BadWatermark { .. }
            | PostgresError::ForeignLineage(_) => ErrorKind::Rejected,
            PostgresError::InvalidBatch { .. } => ErrorKind::Definite,
        }
    }
}

impl PostgresError {
    /// The SQLSTATE of the server error behind this one, if any.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PostgresError::Query { code, .. } => code.as_ref().map(SqlState::code),
            _ => None,
        }
    }

    /// The column a value error was traced to, if any.
    pub fn column(&self) -> Option<&str> {
        match self {
            PostgresError::Query { at, .. } => at.column.as_deref(),
            _ => None,
        }
    }

    /// Where it failed, as far as known (a server error only).
    pub fn location(&self) -> Option<&Location> {
        match self {
            PostgresError::Query { at, .. } => Some(at),
            _ => None,
        }
    }
}

/// Where a query failed: the destination, table and column, and the seq of the change whose
/// value it refused, as far as known. Never a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub destination: Option<String>,
    pub table: Option<QualifiedName>,
    pub column: Option<String>,
    pub seq: Option<u64>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.destination {
            write!(f, " for destination {d:?}")?;
        }
        if let Some(t) = &self.table {
            write!(f, ", table {t}")?;
        }
        if let Some(c) = &self.column {
            write!(f, ", column {c}")?;
        }
        if let Some(s) = self.seq {
            write!(f, ", change {s}")?;
        }
        Ok(())
    }
}

pub(super) fn query_error(
    what: &'static str,
    destination: Option<&str>,
    table: Option<&QualifiedName>,
    e: tokio_postgres::Error,
) -> PostgresError {
    let code = e.code().cloned();
    let transient = pg_error_is_transient(&e);
    // The message holds what is safe of the driver's error; the error itself is not chained
    // (its text is "db error", and its server message may quote row values).
    let message = match e.as_db_error() {
        Some(db) if sqlstate_object_vanished(db.code().code()) => format!(
            "{}\nHINT: it vanished from the destination; restore it (or recreate it and replay the destination), then run `pgfanout destination resume`",
            ServerMessage(db)
        ),
        Some(db) if sqlstate_message_is_safe(db.code().code()) => ServerMessage(db).to_string(),
        Some(db) => {
            // Data exceptions, constraint violations, raised exceptions: their text and detail
            // may quote the offending value. Keep the SQLSTATE and the identifiers.
            let mut m = format!(
                "{} (SQLSTATE {})",
                sqlstate_description(db.code().code()),
                db.code().code()
            );
            if let Some(c) = db.column() {
                m.push_str(&format!(", column {}", quote_ident(c)));
            }
            if let Some(c) = db.constraint() {
                m.push_str(&format!(", constraint {}", quote_ident(c)));
            }
            if db.code().code().starts_with("22") {
                m.push_str("\nHINT: a value does not fit its target column's type; widen the column (or fix the mapping), then run `pgfanout destination resume`");
            }
            m
        }
        None => match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    };
    PostgresError::Query {
        what,
        at: Box::new(Location {
            destination: destination.map(str::to_owned),
            table: table.cloned(),
            column: None,
            seq: None,
        }),
        message,
        code,
        transient,
    }
}

/// A failure of the connection underneath while doing `what` (tokio-postgres's "error
/// communicating with the server"): transient, like a lost connection. For errors that do not
/// come from tokio-postgres (a failpoint's).
pub(super) fn io_error(
    what: &'static str,
    destination: Option<&str>,
    table: Option<&QualifiedName>,
    e: std::io::Error,
) -> PostgresError {
    PostgresError::Query {
        what,
        at: Box::new(Location {
            destination: destination.map(str::to_owned),
            table: table.cloned(),
            column: None,
            seq: None,
        }),
        message: format!("error communicating with the server: {e}"),
        code: None,
        transient: true,
    }
}

pub(super) fn to_i64(destination: &str, table: &str, seq: u64) -> Result<i64, PostgresError> {
    i64::try_from(seq).map_err(|_| PostgresError::InvalidBatch {
        destination: destination.to_owned(),
        table: table.to_owned(),
        reason: format!("seq {seq} does not fit a bigint"),
    })
}
