//! `pgfanout tail`: the source and sequencer stages with a JSON-lines consumer.
//!
//! Output is buffered in memory and written when the buffer is large or the stream has nothing more
//! buffered, so a busy stream costs few writes and an idle one shows every change at once. A
//! transaction is confirmed to PostgreSQL only after its last line has been written out.

use std::future::Future;

use std::io::Write;
use tracing::{info, warn};

use crate::change::JsonError;
use crate::config::SourceConfig;
use crate::lsn::Lsn;
use crate::sequencer::Sequencer;
use crate::source::{LogicalStream, SlotSpec, SourceError, SourceEvent};

/// Bytes of output gathered before a write.
const OUTPUT_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Stop after this many row changes.
    pub limit: Option<u64>,
    pub slot: SlotSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailSummary {
    pub changes: u64,
    /// End LSN of the last transaction written out completely.
    pub confirmed: Lsn,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot format a change")]
    Json(#[from] JsonError),
    #[error("cannot write output")]
    Output(#[source] std::io::Error),
}

/// Streams changes as JSON lines into `out` until `limit` changes, an error, or `shutdown`.
pub async fn tail<W: Write>(
    cfg: &SourceConfig,
    opts: TailOptions,
    out: &mut W,
    shutdown: impl Future<Output = ()>,
) -> Result<TailSummary, TailError> {
    let mut stream = LogicalStream::start(cfg, opts.slot).await?;
    let mut sequencer = Sequencer::resume_after(0);
    let mut buf = Vec::with_capacity(OUTPUT_CHUNK + 64 * 1024);
    let mut unconfirmed: Option<Lsn> = None;
    let mut confirmed = stream.flushed();
    let limit = opts.limit.unwrap_or(u64::MAX);
    tokio::pin!(shutdown);

    while sequencer.last() < limit {
        let event = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            event = stream.next() => event?,
        };
        match event {
            SourceEvent::Change(change) => {
                sequencer.assign(change).write_json_line(&mut buf)?;
            }
            SourceEvent::Commit { end_lsn, .. } => unconfirmed = Some(end_lsn),
            _ => {}
        }
        if buf.len() >= OUTPUT_CHUNK
            || (!stream.has_buffered() && (!buf.is_empty() || unconfirmed.is_some()))
        {
            write_out(out, &mut buf)?;
            if let Some(lsn) = unconfirmed.take() {
                stream.confirm(lsn);
                confirmed = lsn;
            }
        }
    }
    write_out(out, &mut buf)?;
    if let Some(lsn) = unconfirmed.take() {
        stream.confirm(lsn);
        confirmed = lsn;
    }
    let changes = sequencer.last();
    info!(changes, confirmed = %confirmed, slot = stream.slot(), "tail finished");
    if let Err(e) = stream.close().await {
        // The output is complete; a failed goodbye only delays the slot's progress report.
        warn!(error = %crate::report::Chain(&e), "could not close the replication session cleanly");
    }
    Ok(TailSummary { changes, confirmed })
}

/// A plain blocking write: the output is what this command produces, so a slow reader should
/// slow the stream down (as with pg_recvlogical), and it avoids a thread hop per chunk.
fn write_out<W: Write>(out: &mut W, buf: &mut Vec<u8>) -> Result<(), TailError> {
    if !buf.is_empty() {
        out.write_all(buf).map_err(TailError::Output)?;
        buf.clear();
    }
    out.flush().map_err(TailError::Output)
}
