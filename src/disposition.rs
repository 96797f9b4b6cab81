//! What happens after an error: one policy for every stage, decided here and nowhere else.
//!
//! ```text
//!   each layer's error ──Classify::kind──▶ ErrorKind ──disposition(kind, scope)──▶ Disposition
//!   (session, catalog,                     Transient     the source / pipeline      Retry
//!    state, change log,                    Rejected      a destination's worker     StopDestination
//!    sinks, fan-out)                       LogGone                                  NeedsResync
//!                                          Definite                                 Fatal
//! ```
//!
//! A layer knows what its error *is* (a lost connection, a value the destination refuses, a
//! change log that no longer holds a seq); only this module says what to *do* about it, so the
//! pipeline, the destination workers and `replay` cannot disagree, and both sinks follow one
//! policy. The SQLSTATE tables (which codes a retry can fix, which may quote row values) live
//! here too.

/// What kind of failure an error is, as far as what happens next is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A connection refused, lost or timed out; a server starting, restarting or shutting
    /// down; a serialization failure or deadlock; exhausted resources. A later attempt can
    /// succeed.
    Transient,
    /// A destination refuses what it was given: a value that does not fit its column, a table
    /// that does not match its specification, a statement it rejects. Retrying the same
    /// changes cannot succeed; the other destinations are not affected.
    Rejected,
    /// The change log no longer holds the changes a reader needs (retention removed them).
    LogGone,
    /// Nothing a retry can fix and not confined to one destination: configuration,
    /// permissions, a corrupt change log, a protocol violation, a bug.
    Definite,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Start over with capped, jittered backoff ([`Backoff`]).
    Retry,
    /// Stop this destination (`failed` in status); the others keep going.
    StopDestination,
    /// Mark this destination `needs resync`, loudly; the others keep going.
    NeedsResync,
    /// Stop pgfanout with the error.
    Fatal,
}

impl ErrorKind {
    /// Its name in metrics (`kind` label) and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Rejected => "rejected",
            ErrorKind::LogGone => "log_gone",
            ErrorKind::Definite => "definite",
        }
    }
}

impl Disposition {
    /// Its name in metrics (`disposition` label) and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Retry => "retry",
            Disposition::StopDestination => "stop_destination",
            Disposition::NeedsResync => "needs_resync",
            Disposition::Fatal => "fatal",
        }
    }
}

/// Where the error happened: in the source's pipeline (the slot, the change log, the state
/// database) or in one destination's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Source,
    Destination,
}

/// Every layer's error says what kind it is.
pub trait Classify {
    fn kind(&self) -> ErrorKind;

    /// Whether a later attempt can succeed.
    fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }
}

/// The one policy. A destination's trouble never stops the source or the other destinations
/// (a definite error there stops that destination only); in the source's pipeline anything a
/// retry cannot fix is fatal.
pub fn disposition(kind: ErrorKind, scope: Scope) -> Disposition {
    match (kind, scope) {
        (ErrorKind::Transient, _) => Disposition::Retry,
        (ErrorKind::LogGone, Scope::Destination) => Disposition::NeedsResync,
        (ErrorKind::Rejected | ErrorKind::Definite, Scope::Destination) => {
            Disposition::StopDestination
        }
        (ErrorKind::Rejected | ErrorKind::LogGone | ErrorKind::Definite, Scope::Source) => {
            Disposition::Fatal
        }
    }
}

/// Whether this SQLSTATE says an object a statement named is gone: 42P01 undefined table,
/// 42703 undefined column, 3F000 invalid schema name.
pub fn sqlstate_object_vanished(code: &str) -> bool {
    matches!(code, "42P01" | "42703" | "3F000")
}

/// The kind of a destination's server error with this SQLSTATE, class by class. A destination
/// stops alone on what a retry cannot fix and says why; it retries what time can heal.
///
/// | SQLSTATE | kind | why |
/// |---|---|---|
/// | 08 connection, 40001 serialization, 40P01 deadlock, 53 resources, 57P01/02/03/05 shutdown, crash, starting up, idle timeout | transient | the same statement can succeed later ([`sqlstate_is_transient`]) |
/// | 22 data exception (22001 too long, 22003 out of range, 22P02 invalid text …) | rejected | the same value meets the same column on every attempt |
/// | 23 integrity constraint (23502 NULL, 23505 unique, 23514 check …) | rejected | the constraint refuses the same row every time |
/// | 42 syntax or access rule (42501 permission, 42804 datatype …) | rejected | a grant or the schema must change first |
/// | 42P01 table, 42703 column, 3F000 schema vanished | rejected | someone dropped or renamed it in the destination. Retrying would either fail on every attempt (without `create_tables`) or silently create an empty table and resume at the watermark, so the rows below it would be missing without a word. Stop and say which object; restore it (or replay), then `pgfanout destination resume` |
/// | 57P04 database dropped, 0A, 25, 28, XX and the rest | rejected | nothing a retry changes; the destination stops, the others go on |
///
/// Only the first row is [`ErrorKind::Transient`]; every other code is
/// [`ErrorKind::Rejected`]: the destination refuses the batch and stops until fixed.
pub fn sqlstate_destination_kind(code: &str) -> ErrorKind {
    if sqlstate_is_transient(code) {
        ErrorKind::Transient
    } else {
        ErrorKind::Rejected
    }
}

/// The kind of a server error with this SQLSTATE: [`sqlstate_is_transient`] ones are
/// transient, every other is definite.
pub fn sqlstate_kind(code: &str) -> ErrorKind {
    if sqlstate_is_transient(code) {
        ErrorKind::Transient
    } else {
        ErrorKind::Definite
    }
}

/// The same for a tokio-postgres error ([`pg_error_is_transient`]).
pub fn pg_error_kind(e: &tokio_postgres::Error) -> ErrorKind {
    if pg_error_is_transient(e) {
        ErrorKind::Transient
    } else {
        ErrorKind::Definite
    }
}

/// Whether retrying can fix an error with this SQLSTATE: 08 connection exception; 40001
/// serialization failure, 40P01 deadlock; 53 insufficient resources (too many connections,
/// out of memory, disk full); 57P01/02/03/05 shutdown, crash, starting up, idle-session
/// timeout. Not 57P04 (database dropped): retrying cannot bring the database back.
pub fn sqlstate_is_transient(code: &str) -> bool {
    code.starts_with("08")
        || code == "40001"
        || code == "40P01"
        || code.starts_with("53")
        || (code.starts_with("57P0") && code != "57P04")
}

/// The same for a tokio-postgres error, where a closed connection or an I/O error underneath
/// (refused, reset, timed out) is transient too.
pub fn pg_error_is_transient(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return sqlstate_is_transient(code.code());
    }
    if e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Whether a server message with this SQLSTATE can never quote a row value: connection,
/// feature not supported, transaction state, authorization, catalog/database, rollback
/// (serialization, deadlock), syntax or access rule, resources, limits, object state,
/// operator intervention, system. Data exceptions, constraint violations and raised
/// exceptions may quote the offending value.
pub fn sqlstate_message_is_safe(code: &str) -> bool {
    const SAFE_CLASSES: &[&str] = &[
        "08", "0A", "21", "25", "28", "3D", "3F", "40", "42", "53", "54", "55", "57", "58",
    ];
    code.get(..2)
        .is_some_and(|class| SAFE_CLASSES.contains(&class))
}

/// A value-free description of a SQLSTATE, for errors whose server message may quote a value.
pub fn sqlstate_description(code: &str) -> &'static str {
    match code {
        "22P02" => "invalid input syntax for the column's type",
        "22003" => "numeric value out of range",
        "22001" => "value too long for the column's type",
        "22007" => "invalid datetime format",
        "22008" => "datetime field out of range",
        "22021" => "invalid byte sequence for the encoding",
        "22P05" => "untranslatable character",
        "23502" => "NULL in a NOT NULL column",
        "23505" => "unique constraint violated",
        "23503" => "foreign key constraint violated",
        "23514" => "check constraint violated",
        c if c.starts_with("22") => "data exception",
        c if c.starts_with("23") => "integrity constraint violated",
        _ => "server error",
    }
}

/// Capped exponential backoff with jitter: each delay is 50–100% of the current step, the
/// step doubles up to `max`, and an attempt that ran at least `healthy` starts over at
/// `first`. One policy for the source's restarts and the destinations' reconnects.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: std::time::Duration,
    max: std::time::Duration,
    healthy: std::time::Duration,
    step: std::time::Duration,
}

impl Backoff {
    pub fn new(
        first: std::time::Duration,
        max: std::time::Duration,
        healthy: std::time::Duration,
    ) -> Self {
        Backoff {
            first,
            max,
            healthy,
            step: first,
        }
    }

    /// The wait before the next attempt, after one that ran for `ran` and failed.
    pub fn next_delay(&mut self, ran: std::time::Duration) -> std::time::Duration {
        if ran >= self.healthy {
            self.step = self.first;
        }
        let delay = self.step.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        self.step = (self.step * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_capacity_errors_are_transient_definite_ones_are_not() {
        for code in [
            "08006", "08001", "40001", "40P01", "53300", "57P01", "57P03",
        ] {
            assert!(sqlstate_is_transient(code), "{code}");
        }
        for code in [
            "42501", "42P01", "42703", "42804", "28P01", "22P02", "23505", "57P04", "3D000",
            "XX000",
        ] {
            assert!(!sqlstate_is_transient(code), "{code}");
        }
    }

    #[test]
    fn a_destination_stops_alone_and_the_source_stops_on_what_retrying_cannot_fix() {
        use Disposition::*;
        use ErrorKind::*;
        let at = |k| {
            (
                disposition(k, Scope::Source),
                disposition(k, Scope::Destination),
            )
        };
        assert_eq!(at(Transient), (Retry, Retry));
        assert_eq!(at(Rejected), (Fatal, StopDestination));
        assert_eq!(at(LogGone), (Fatal, NeedsResync));
        assert_eq!(at(Definite), (Fatal, StopDestination));
    }

    #[test]
    fn a_destination_stops_on_data_constraint_schema_and_vanished_objects_and_retries_the_rest() {
        for code in [
            "22001", "22003", "22P02", "22007", "23502", "23505", "23514", "42501", "42804",
            "42P01", "42703", "3F000", "57P04", "XX000", "0A000",
        ] {
            assert_eq!(
                sqlstate_destination_kind(code),
                ErrorKind::Rejected,
                "{code}"
            );
            assert_eq!(
                disposition(sqlstate_destination_kind(code), Scope::Destination),
                Disposition::StopDestination,
                "{code}"
            );
        }
        for code in [
            "08006", "08001", "40001", "40P01", "53100", "53300", "57P01", "57P03",
        ] {
            assert_eq!(
                sqlstate_destination_kind(code),
                ErrorKind::Transient,
                "{code}"
            );
        }
        assert!(sqlstate_object_vanished("42P01") && !sqlstate_object_vanished("42501"));
    }

    #[test]
    fn messages_of_data_and_constraint_errors_are_not_safe() {
        for code in ["08006", "42P01", "40001", "57P01", "0A000"] {
            assert!(sqlstate_message_is_safe(code), "{code}");
        }
        for code in ["22001", "23505", "P0001", "XX000", "", "2"] {
            assert!(!sqlstate_message_is_safe(code), "{code}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets_after_a_healthy_attempt() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let mut b = super::Backoff::new(ms(100), ms(400), ms(1000));
        for step in [100, 200, 400, 400] {
            let d = b.next_delay(ms(0));
            assert!(d >= ms(step / 2) && d <= ms(step), "{d:?} for step {step}");
        }
        let d = b.next_delay(ms(1000));
        assert!(d >= ms(50) && d <= ms(100), "{d:?} after a healthy attempt");
    }
}
