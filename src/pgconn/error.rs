//! A tokio-postgres error as pgfanout shows it.

use std::fmt;

/// A driver error whose text says what happened: the server's message with its SQLSTATE, or
/// what failed underneath (refused, reset, timed out). tokio-postgres's own text ("db error",
/// "error connecting to server") keeps that in its source chain; this folds it into one
/// message and ends the chain there, so that it is printed once. Only for connections and
/// statements whose server messages cannot quote row values (connecting, the state schema):
/// the sinks and the catalog reduce such errors to their SQLSTATE themselves.
#[derive(Debug)]
pub struct PgError(pub tokio_postgres::Error);

impl PgError {
    pub fn inner(&self) -> &tokio_postgres::Error {
        &self.0
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError(e)
    }
}

/// A server error as PostgreSQL's own clients show it: `SEVERITY: message (SQLSTATE code)`,
/// then its DETAIL and HINT lines. Only for errors whose text cannot quote row values (see
/// `disposition::sqlstate_message_is_safe`).
pub struct ServerMessage<'a>(pub &'a tokio_postgres::error::DbError);

impl fmt::Display for ServerMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let db = self.0;
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        )?;
        if let Some(detail) = db.detail() {
            write!(f, "\nDETAIL: {detail}")?;
        }
        if let Some(hint) = db.hint() {
            write!(f, "\nHINT: {hint}")?;
        }
        Ok(())
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(db) = self.0.as_db_error() {
            return ServerMessage(db).fmt(f);
        }
        write!(f, "{}", self.0)?;
        let mut cause = std::error::Error::source(&self.0);
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl std::error::Error for PgError {}
