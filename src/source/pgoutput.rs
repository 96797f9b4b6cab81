//! Decoder for the streaming replication protocol's CopyData payloads and the `pgoutput`
//! logical messages inside them (protocol versions 1 and 2).
//!
//! ```text
//! CopyData ──▶ 'w' XLogData { wal_start, wal_end, send_time, data } ──▶ decode_message(data)
//!          └─▶ 'k' PrimaryKeepalive { wal_end, send_time, reply_requested }
//! ```
//!
//! Protocol version 2 adds in-progress transactions: Stream Start, Stream Stop, Stream Commit
//! and Stream Abort, and between Stream Start and Stop the row, relation, type and message
//! messages carry the (sub)transaction's xid after their tag ([`decode_streamed`]).
//!
//! Pure functions over [`Bytes`]: every read is bounds-checked, every error names the message
//! type and the byte offset, and tuple values are zero-copy slices of the input frame.

use std::fmt;

use bytes::Bytes;

use crate::change::{Column, Datum, OldTuple, Relation, ReplicaIdentity, Tuple};
use crate::lsn::Lsn;

/// A CopyData payload of a `START_REPLICATION` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    PrimaryKeepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutput {
    Begin {
        final_lsn: Lsn,
        /// Microseconds since 2000-01-01 (PostgreSQL's epoch).
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        schema: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Tuple,
    },
    Update {
        relation: u32,
        old: Option<OldTuple>,
        new: Tuple,
    },
    Delete {
        relation: u32,
        old: OldTuple,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    /// Protocol 2: a block of an in-progress transaction's changes begins.
    StreamStart {
        xid: u32,
        /// The transaction's first block: anything kept of it from earlier is stale.
        first_segment: bool,
    },
    /// Protocol 2: the block ends.
    StreamStop,
    /// Protocol 2: a streamed transaction committed.
    StreamCommit {
        xid: u32,
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    /// Protocol 2: a streamed transaction (`subxid == xid`) or one of its subtransactions
    /// aborted.
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
}

impl PgOutput {
    pub fn kind(&self) -> &'static str {
        match self {
            PgOutput::Begin { .. } => "Begin",
            PgOutput::Commit { .. } => "Commit",
            PgOutput::Origin { .. } => "Origin",
            PgOutput::Relation(_) => "Relation",
            PgOutput::Type { .. } => "Type",
            PgOutput::Insert { .. } => "Insert",
            PgOutput::Update { .. } => "Update",
            PgOutput::Delete { .. } => "Delete",
            PgOutput::Truncate { .. } => "Truncate",
            PgOutput::Message { .. } => "Message",
            PgOutput::StreamStart { .. } => "Stream Start",
            PgOutput::StreamStop => "Stream Stop",
            PgOutput::StreamCommit { .. } => "Stream Commit",
            PgOutput::StreamAbort { .. } => "Stream Abort",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {message} message at byte {offset}: {reason}")]
pub struct DecodeError {
    /// The message being decoded, e.g. `pgoutput Insert` or `XLogData`.
    pub message: &'static str,
    pub offset: usize,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Truncated { needed: usize, available: usize },
    UnknownTag(u8),
    InvalidUtf8,
    Invalid(&'static str),
    TrailingBytes(usize),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Truncated { needed, available } => {
                write!(f, "needs {needed} more bytes but only {available} remain")
            }
            Reason::UnknownTag(t) => write!(f, "unknown tag {}", printable(*t)),
            Reason::InvalidUtf8 => f.write_str("name is not valid UTF-8"),
            Reason::Invalid(what) => f.write_str(what),
            Reason::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the message"),
        }
    }
}

fn printable(t: u8) -> String {
    if t.is_ascii_graphic() {
        format!("'{}'", t as char)
    } else {
        format!("0x{t:02x}")
    }
}

/// Bounds-checked big-endian reader over a frame; slices share the frame's allocation.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a Bytes, message: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            message,
        }
    }

    fn error(&self, reason: Reason) -> DecodeError {
        DecodeError {
            message: self.message,
            offset: self.pos,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let available = self.buf.len() - self.pos;
        if n > available {
            return Err(self.error(Reason::Truncated {
                needed: n,
                available,
            }));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array()?)))
    }

    /// A length-prefixed byte string as a zero-copy slice.
    fn bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(len)?;
        Ok(self.buf.slice(start..start + len))
    }

    fn cstr(&mut self) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(self.error(Reason::Invalid("string without a terminating NUL")));
        };
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| self.error(Reason::InvalidUtf8))?
            .to_owned();
        self.pos += nul + 1;
        Ok(s)
    }

    fn finish(self) -> Result<(), DecodeError> {
        let left = self.buf.len() - self.pos;
        if left != 0 {
            return Err(self.error(Reason::TrailingBytes(left)));
        }
        Ok(())
    }
}

/// Parses one CopyData payload of the replication stream.
pub fn parse_replication_message(frame: &Bytes) -> Result<ReplicationMessage, DecodeError> {
    let mut r = Reader::new(frame, "replication");
    match r.u8()? {
        b'w' => {
            r.message = "XLogData";
            let wal_start = r.lsn()?;
            let wal_end = r.lsn()?;
            let send_time = r.i64()?;
            let data = frame.slice(r.pos..);
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                send_time,
                data,
            })
        }
        b'k' => {
            r.message = "PrimaryKeepalive";
            let wal_end = r.lsn()?;
            let send_time = r.i64()?;
            let reply_requested = r.u8()? != 0;
            r.finish()?;
            Ok(ReplicationMessage::PrimaryKeepalive {
                wal_end,
                send_time,
                reply_requested,
            })
        }
        tag => {
            r.pos = 0;
            Err(r.error(Reason::UnknownTag(tag)))
        }
    }
}

/// Decodes one pgoutput message (the `data` of an XLogData) outside a stream block.
pub fn decode_message(data: &Bytes) -> Result<PgOutput, DecodeError> {
    decode(data, false).map(|(_, msg)| msg)
}

/// Decodes one message inside a stream block (between Stream Start and Stream Stop): a row
/// change, relation, type or transactional message, with the xid of the (sub)transaction it
/// belongs to.
pub fn decode_streamed(data: &Bytes) -> Result<(u32, PgOutput), DecodeError> {
    decode(data, true)
}

/// The xid a streamed message's tag is followed by, without decoding the rest: what the
/// spool needs to file the message under its subtransaction.
pub fn streamed_xid(data: &Bytes) -> Result<u32, DecodeError> {
    let mut r = Reader::new(data, "pgoutput stream block");
    let tag = r.u8()?;
    if !carries_streamed_xid(tag) {
        r.pos = 0;
        return Err(r.error(Reason::Invalid(
            "only row changes, relations, types and messages may be streamed",
        )));
    }
    r.u32()
}

/// Tags that carry an xid when sent inside a stream block (proto.c: "transaction ID (if not
/// valid, we're not streaming)").
fn carries_streamed_xid(tag: u8) -> bool {
    matches!(tag, b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M')
}

/// Decodes a message; inside a stream block (`in_stream`) only the tags that carry an xid are
/// accepted and the xid is returned, else it is 0 (PostgreSQL's InvalidTransactionId).
fn decode(data: &Bytes, in_stream: bool) -> Result<(u32, PgOutput), DecodeError> {
    let mut r = Reader::new(data, "pgoutput");
    let tag = r.u8()?;
    r.message = match tag {
        b'B' => "pgoutput Begin",
        b'C' => "pgoutput Commit",
        b'O' => "pgoutput Origin",
        b'R' => "pgoutput Relation",
        b'Y' => "pgoutput Type",
        b'I' => "pgoutput Insert",
        b'U' => "pgoutput Update",
        b'D' => "pgoutput Delete",
        b'T' => "pgoutput Truncate",
        b'M' => "pgoutput Message",
        b'S' => "pgoutput Stream Start",
        b'E' => "pgoutput Stream Stop",
        b'c' => "pgoutput Stream Commit",
        b'A' => "pgoutput Stream Abort",
        _ => {
            r.pos = 0;
            return Err(r.error(Reason::UnknownTag(tag)));
        }
    };
    let xid = if in_stream {
        if !carries_streamed_xid(tag) {
            r.pos = 0;
            return Err(r.error(Reason::Invalid(
                "only row changes, relations, types and messages may be streamed",
            )));
        }
        r.u32()?
    } else {
        0
    };
    let msg = match tag {
        b'B' => PgOutput::Begin {
            final_lsn: r.lsn()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => PgOutput::Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.i64()?,
        },
        b'O' => PgOutput::Origin {
            commit_lsn: r.lsn()?,
            name: r.cstr()?,
        },
        b'R' => PgOutput::Relation(relation(&mut r)?),
        b'Y' => PgOutput::Type {
            oid: r.u32()?,
            schema: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => {
            let relation = r.u32()?;
            expect_tag(&mut r, b'N', "expected 'N' before the new tuple")?;
            PgOutput::Insert {
                relation,
                new: tuple(&mut r)?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut next = r.u8()?;
            if next == b'K' || next == b'O' {
                let t = tuple(&mut r)?;
                old = Some(if next == b'K' {
                    OldTuple::Key(t)
                } else {
                    OldTuple::Full(t)
                });
                next = r.u8()?;
            }
            if next != b'N' {
                r.pos -= 1;
                return Err(r.error(Reason::Invalid("expected 'N' before the new tuple")));
            }
            PgOutput::Update {
                relation,
                old,
                new: tuple(&mut r)?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' => OldTuple::Key(tuple(&mut r)?),
                b'O' => OldTuple::Full(tuple(&mut r)?),
                _ => {
                    r.pos -= 1;
                    return Err(
                        r.error(Reason::Invalid("expected 'K' or 'O' before the old tuple"))
                    );
                }
            };
            PgOutput::Delete { relation, old }
        }
        b'T' => {
            let count = r.u32()? as usize;
            let options = r.u8()?;
            // Each oid takes 4 bytes: reject an absurd count before allocating for it.
            let available = data.len() - r.pos;
            if count.saturating_mul(4) > available {
                return Err(r.error(Reason::Truncated {
                    needed: count.saturating_mul(4),
                    available,
                }));
            }
            let relations = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
            PgOutput::Truncate {
                relations,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            }
        }
        b'M' => {
            let transactional = r.u8()? & 1 != 0;
            let lsn = r.lsn()?;
            let prefix = r.cstr()?;
            let len = r.u32()? as usize;
            PgOutput::Message {
                transactional,
                lsn,
                prefix,
                content: r.bytes(len)?,
            }
        }
        b'S' => PgOutput::StreamStart {
            xid: r.u32()?,
            first_segment: match r.u8()? {
                0 => false,
                1 => true,
                _ => {
                    r.pos -= 1;
                    return Err(r.error(Reason::Invalid("first-segment flag is neither 0 nor 1")));
                }
            },
        },
        b'E' => PgOutput::StreamStop,
        b'c' => PgOutput::StreamCommit {
            xid: r.u32()?,
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.i64()?,
        },
        b'A' => PgOutput::StreamAbort {
            xid: r.u32()?,
            subxid: r.u32()?,
        },
        _ => unreachable!("tags are matched above"),
    };
    r.finish()?;
    Ok((xid, msg))
}

fn expect_tag(r: &mut Reader<'_>, tag: u8, reason: &'static str) -> Result<(), DecodeError> {
    if r.u8()? != tag {
        r.pos -= 1;
        return Err(r.error(Reason::Invalid(reason)));
    }
    Ok(())
}

fn relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let oid = r.u32()?;
    let schema = r.cstr()?;
    let name = r.cstr()?;
    let ident = r.u8()?;
    let replica_identity = ReplicaIdentity::from_byte(ident).ok_or_else(|| {
        r.pos -= 1;
        r.error(Reason::Invalid("unknown replica identity"))
    })?;
    let count = r.u16()?;
    if count > i16::MAX as u16 {
        r.pos -= 2;
        return Err(r.error(Reason::Invalid("negative column count")));
    }
    // Each column needs at least 10 bytes; bound the allocation by what the frame can hold.
    let mut columns = Vec::with_capacity(usize::from(count).min((r.buf.len() - r.pos) / 10));
    for _ in 0..count {
        let flags = r.u8()?;
        columns.push(Column {
            is_key: flags & 1 != 0,
            name: r.cstr()?,
            type_oid: r.u32()?,
            type_modifier: r.i32()?,
        });
    }
    Ok(Relation {
        oid,
        schema,
        name,
        replica_identity,
        columns,
    })
}

fn tuple(r: &mut Reader<'_>) -> Result<Tuple, DecodeError> {
    let count = r.u16()?;
    if count > i16::MAX as u16 {
        r.pos -= 2;
        return Err(r.error(Reason::Invalid("negative column count")));
    }
    // Every column takes at least one byte.
    let mut datums = Vec::with_capacity(usize::from(count).min(r.buf.len() - r.pos));
    for _ in 0..count {
        let datum = match r.u8()? {
            b'n' => Datum::Null,
            b'u' => Datum::UnchangedToast,
            b't' => {
                let len = r.i32()?;
                if len < 0 {
                    r.pos -= 4;
                    return Err(r.error(Reason::Invalid("negative value length")));
                }
                Datum::Text(r.bytes(len as usize)?)
            }
            b'b' => {
                r.pos -= 1;
                return Err(r.error(Reason::Invalid(
                    "binary column value, but the stream was started in text mode",
                )));
            }
            tag => {
                r.pos -= 1;
                return Err(r.error(Reason::UnknownTag(tag)));
            }
        };
        datums.push(datum);
    }
    Ok(Tuple(datums))
}

#[cfg(test)]
#[path = "pgoutput_tests.rs"]
mod tests;
