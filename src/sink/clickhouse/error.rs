//! What can go wrong writing to a ClickHouse destination, and which server texts may be
//! quoted: never a row value. ClickHouse's exception texts can quote one ("Cannot parse
//! string 'x' as UInt64", a violated constraint's "Column values: …", a syntax error's piece
//! of a statement that holds key literals), so a server text is kept only for exception
//! codes whose texts name objects, settings, limits or users ([`message_is_safe`], the
//! counterpart of `disposition::sqlstate_message_is_safe`); otherwise the error carries the
//! code and its name. Messages name the destination, table, column and seq where known.

use crate::disposition::{Classify, ErrorKind};
use crate::problems::Problems;

#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    #[error("the ClickHouse tables of destination {destination:?} do not match their specification:{problems}")]
    Schema {
        destination: String,
        problems: Problems,
    },

    #[error("{what}{}: {message}", at(.table))]
    Server {
        what: String,
        table: Option<String>,
        /// The client's message, or the server's when its code says it quotes no value
        /// (see [`server_error`]); never credentials.
        message: String,
        /// ClickHouse's exception code, when the server answered with one.
        code: Option<u32>,
        transient: bool,
    },

    #[error(transparent)]
    Rejected(Box<RejectedValue>),

    #[error("invalid batch for destination {destination:?}, table {table}: {reason}")]
    InvalidBatch {
        destination: String,
        table: String,
        reason: String,
    },
}

/// A value its ClickHouse column cannot hold (found while encoding, before anything is sent).
/// Names where it is, never the value: `pgfanout log read` shows the change to whoever may
/// read the data.
#[derive(Debug, thiserror::Error)]
#[error("ClickHouse cannot hold a value of destination {destination:?}, table {table}, column {column} (seq {seq}): {reason}\nHINT: pgfanout log read --from-seq {seq} --limit 1 shows the change; change the column's type or the mapping, then `pgfanout destination resume {destination}`; this destination stopped at its watermark")]
pub struct RejectedValue {
    pub destination: String,
    pub table: String,
    pub column: String,
    pub seq: u64,
    /// Why, in words about the type (never the value).
    pub reason: String,
}

fn at(table: &Option<String>) -> String {
    table
        .as_ref()
        .map(|t| format!(" (table {t})"))
        .unwrap_or_default()
}

impl Classify for ClickHouseError {
    /// The server unreachable, restarting, overloaded or timing out is transient. A rejected
    /// value, a schema problem or a refused statement is the destination's refusal; a batch
    /// that does not fit its tables is a bug.
    fn kind(&self) -> ErrorKind {
        match self {
            ClickHouseError::Server {
                transient: true, ..
            } => ErrorKind::Transient,
            ClickHouseError::Server { .. }
            | ClickHouseError::Schema { .. }
            | ClickHouseError::Rejected(_) => ErrorKind::Rejected,
            ClickHouseError::InvalidBatch { .. } => ErrorKind::Definite,
        }
    }
}

/// Exception codes that say "not now" rather than "never".
fn transient_code(code: u32) -> bool {
    matches!(
        code,
        159 // TIMEOUT_EXCEEDED
        | 164 // READONLY (a replica starting)
        | 202 // TOO_MANY_SIMULTANEOUS_QUERIES
        | 209 // SOCKET_TIMEOUT
        | 210 // NETWORK_ERROR
        | 241 // MEMORY_LIMIT_EXCEEDED
        | 242 // TABLE_IS_READ_ONLY
        | 252 // TOO_MANY_PARTS
        | 319 // UNKNOWN_STATUS_OF_INSERT
        | 394 // QUERY_WAS_CANCELLED (server shutting down)
    )
}

/// Whether the server's text for this exception code can never quote a row value: unknown or
/// existing objects, settings, authentication and access, limits and the transient codes.
/// Parse and conversion failures, type mismatches, constraint violations, `throwIf`, syntax
/// errors (which quote the statement, and with it key literals) and every code not listed
/// may quote one.
pub fn message_is_safe(code: u32) -> bool {
    transient_code(code)
        || matches!(
            code,
            16 // NO_SUCH_COLUMN_IN_TABLE
            | 57 // TABLE_ALREADY_EXISTS
            | 60 // UNKNOWN_TABLE
            | 81 // UNKNOWN_DATABASE
            | 82 // DATABASE_ALREADY_EXISTS
            | 115 // UNKNOWN_SETTING
            | 192 // UNKNOWN_USER
            | 193 // WRONG_PASSWORD
            | 194 // REQUIRED_PASSWORD
            | 195 // IP_ADDRESS_NOT_ALLOWED
            | 243 // NOT_ENOUGH_SPACE
            | 291 // DATABASE_ACCESS_DENIED
            | 497 // ACCESS_DENIED
            | 516 // AUTHENTICATION_FAILED
        )
}

/// The names of exception codes whose texts are withheld, where a name says what happened.
fn exception_name(code: u32) -> Option<&'static str> {
    Some(match code {
        6 => "CANNOT_PARSE_TEXT",
        26 => "CANNOT_PARSE_QUOTED_STRING",
        27 => "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
        33 => "CANNOT_READ_ALL_DATA",
        36 => "BAD_ARGUMENTS",
        38 => "CANNOT_PARSE_DATE",
        41 => "CANNOT_PARSE_DATETIME",
        43 => "ILLEGAL_TYPE_OF_ARGUMENT",
        47 => "UNKNOWN_IDENTIFIER",
        53 => "TYPE_MISMATCH",
        62 => "SYNTAX_ERROR",
        69 => "ARGUMENT_OUT_OF_BOUND",
        70 => "CANNOT_CONVERT_TYPE",
        72 => "CANNOT_PARSE_NUMBER",
        117 => "INCORRECT_DATA",
        131 => "TOO_LARGE_STRING_SIZE",
        321 => "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        349 => "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
        376 => "CANNOT_PARSE_UUID",
        395 => "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO",
        407 => "DECIMAL_OVERFLOW",
        467 => "CANNOT_PARSE_BOOL",
        469 => "VIOLATED_CONSTRAINT",
        _ => return None,
    })
}

/// Longest text kept of an answer without an exception code (a proxy's error page, say).
const MAX_UNCODED_TEXT: usize = 200;

/// The text of a server answer as this error may carry it: kept for [`message_is_safe`]
/// codes; otherwise the code and its name. An answer without a code (a proxy, an HTTP status)
/// keeps its first line, cut short, unless it looks like an exception.
fn server_text(text: &str, code: Option<u32>) -> String {
    match code {
        Some(c) if message_is_safe(c) => text.to_owned(),
        Some(c) => format!(
            "ClickHouse exception {c}{}; its text is withheld because it can quote row values (the server's log has it)",
            exception_name(c).map(|n| format!(" ({n})")).unwrap_or_default()
        ),
        None if text.contains("Exception") => {
            "a ClickHouse exception without a code; its text is withheld because it can quote row values (the server's log has it)".to_owned()
        }
        None => {
            let line = text.lines().next().unwrap_or_default();
            let mut end = line.len().min(MAX_UNCODED_TEXT);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line[..end].to_owned()
        }
    }
}

/// The exception code in a ClickHouse error text (`Code: 62, e.displayText() = …` before
/// 21.x, `Code: 62. DB::Exception: …` after, or `Code: 62` from the exception header).
fn exception_code(text: &str) -> Option<u32> {
    text.split_once("Code: ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
}

/// A failure of the connection underneath while doing `what`, as the client reports one (a
/// network error: transient). For errors that do not come from the client (a failpoint's).
pub(super) fn io_error(
    what: impl Into<String>,
    table: Option<&str>,
    e: std::io::Error,
) -> ClickHouseError {
    server_error(what, table, clickhouse::error::Error::Network(Box::new(e)))
}

pub(super) fn server_error(
    what: impl Into<String>,
    table: Option<&str>,
    e: clickhouse::error::Error,
) -> ClickHouseError {
    use clickhouse::error::Error as E;
    let (message, code) = match &e {
        E::BadResponse(text) => {
            let code = exception_code(text);
            (server_text(text, code), code)
        }
        _ => {
            // The client's messages stop at "client error (Connect)"; the causes (refused,
            // TLS certificate not trusted, …) are in the source chain. None of them holds
            // credentials or values.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !message.contains(&text) {
                    message.push_str(": ");
                    message.push_str(&text);
                }
                source = cause.source();
            }
            (message, None)
        }
    };
    let transient = match &e {
        E::Network(_) | E::TimedOut => true,
        // No exception code: a proxy or a server going away answered.
        E::BadResponse(_) => code.is_none_or(transient_code),
        _ => false,
    };
    ClickHouseError::Server {
        what: what.into(),
        table: table.map(str::to_owned),
        message,
        code,
        transient,
    }
}

pub(super) fn timed_out(
    what: impl Into<String>,
    table: Option<&str>,
    after: std::time::Duration,
) -> ClickHouseError {
    ClickHouseError::Server {
        what: what.into(),
        table: table.map(str::to_owned),
        message: format!("no answer within {after:?}"),
        code: None,
        transient: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_response(text: &str) -> ClickHouseError {
        server_error(
            "inserting",
            Some("t"),
            clickhouse::error::Error::BadResponse(text.into()),
        )
    }

    #[test]
    fn server_codes_decide_transience() {
        let e = bad_response("Code: 252, e.displayText() = DB::Exception: Too many parts");
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains("Too many parts"), "{e}");
        let e = bad_response("Code: 53, e.displayText() = DB::Exception: Type mismatch");
        assert!(!e.is_transient(), "{e}");
        assert!(matches!(e, ClickHouseError::Server { code: Some(53), .. }));
    }

    #[test]
    fn texts_that_can_quote_values_are_withheld() {
        for (text, code, name) in [
            (
                "Code: 6, e.displayText() = DB::Exception: Cannot parse string 's3cr3t' as UInt64: syntax error at begin of string, e.what() = DB::Exception",
                6,
                Some("CANNOT_PARSE_TEXT"),
            ),
            (
                "Code: 469. DB::Exception: Constraint `c` for table db.t is violated at row 1. Expression: (x != 's3cr3t'). Column values: x = 's3cr3t'. (VIOLATED_CONSTRAINT) (version 23.8.1)",
                469,
                Some("VIOLATED_CONSTRAINT"),
            ),
            (
                "Code: 62. DB::Exception: Syntax error: failed at position 40 ('s3cr3t'): s3cr3t') FINAL. (SYNTAX_ERROR)",
                62,
                Some("SYNTAX_ERROR"),
            ),
            ("Code: 1002. DB::Exception: s3cr3t", 1002, None),
        ] {
            let e = bad_response(text);
            let msg = e.to_string();
            assert!(!msg.contains("s3cr3t"), "{msg}");
            assert!(
                msg.contains(&format!("ClickHouse exception {code}")),
                "{msg}"
            );
            if let Some(name) = name {
                assert!(msg.contains(name), "{msg}");
            }
            assert!(matches!(e, ClickHouseError::Server { code: Some(c), .. } if c == code));
        }
        let e = bad_response("DB::Exception: Cannot parse 's3cr3t'");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        // Texts that name objects or users only are kept.
        let e =
            bad_response("Code: 60, e.displayText() = DB::Exception: Table db.t doesn't exist.");
        assert!(e.to_string().contains("Table db.t doesn't exist"), "{e}");
        // A proxy's answer: its first line, cut short.
        let e = bad_response(&format!(
            "502 Bad Gateway\n<html>{}</html>",
            "x".repeat(500)
        ));
        assert!(e.to_string().ends_with("502 Bad Gateway"), "{e}");
        assert!(e.is_transient());
    }
}
