//! `pgfanout log read`: the change log as JSON lines, in the `tail` format.

use std::io::Write;
use std::path::Path;

use crate::change::JsonError;
use crate::changelog::{LogError, LogReader, LogRecord};

#[derive(Debug, thiserror::Error)]
pub enum LogReadError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot format a change")]
    Json(#[from] JsonError),
    #[error("cannot write output")]
    Output(#[from] std::io::Error),
}

/// Prints the changes with seq in `from_seq..=to_seq` (at most `limit`) that are in the log now.
pub fn read(
    dir: &Path,
    from_seq: u64,
    to_seq: Option<u64>,
    limit: Option<u64>,
    out: &mut impl Write,
) -> Result<u64, LogReadError> {
    let mut reader = LogReader::open(dir, from_seq)?;
    let mut buf = Vec::with_capacity(256 * 1024);
    let mut printed = 0;
    let limit = limit.unwrap_or(u64::MAX);
    while printed < limit {
        let Some(record) = reader.next_record()? else {
            break;
        };
        let LogRecord::Change(change) = record else {
            continue;
        };
        if to_seq.is_some_and(|t| change.seq > t) {
            break;
        }
        change.write_json_line(&mut buf)?;
        printed += 1;
        if buf.len() >= 256 * 1024 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    out.flush()?;
    Ok(printed)
}
