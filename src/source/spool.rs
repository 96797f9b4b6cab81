//! Transactions that pgoutput protocol 2 streams before they commit, kept on disk until their
//! Stream Commit (then handed out as one transaction, in commit order) or Stream Abort.
//!
//! ```text
//!  Stream Start(xid, first) ─▶ <dir>/<xid>.spool  [u32 LE length][u64 LE WAL start][message]…
//!  changes of the block     ─▶   appended as received (the message keeps its xid)
//!  Stream Stop              ─▶   flushed, closed
//!  Stream Abort(xid, sub)   ─▶   sub == xid: file removed; else the records from the
//!                                subtransaction's first one on are marked aborted
//!  Stream Commit(xid)       ─▶ Replay: the records read back in order, then the file removed
//! ```
//!
//! Why a file per transaction and no fsync: only one block is open at a time, so memory is one
//! write buffer plus, per open transaction, its length and where each subtransaction with
//! streamed changes began — however many transactions are open and however large. Nothing in
//! the spool is trusted across a restart: [`Spool::open`] empties the directory, and PostgreSQL
//! sends every transaction whose commit the slot has not confirmed again from its first block
//! (Stream Start with the first-segment flag), which its own apply worker — whose spool files
//! are temporary — relies on too. The spool never confirms anything: the slot moves only by
//! what the consumer made durable after the commit.
//!
//! A subtransaction's abort drops the records from its first one to the end, as PostgreSQL's
//! apply worker does (`stream_abort` truncates at the subtransaction's offset): changes of a
//! session after `SAVEPOINT` belong to it or to subtransactions nested in it until it ends.
//! Relation and type messages in that range are kept ([`Spooled::aborted`] tells them apart),
//! because pgoutput does not describe a relation twice in one streamed transaction.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use super::pgoutput::{self, DecodeError};
use crate::lsn::Lsn;

/// Buffer for the block being written and for reading a transaction back.
const BUFFER_BYTES: usize = 256 * 1024;
/// Record header: message length and WAL start.
const HEADER_BYTES: u64 = 12;
/// Suffix of spool files; nothing else in the directory is touched.
const SUFFIX: &str = ".spool";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot {op} streamed-transaction spool file {}\nHINT: check the free space and permissions of the log directory (log.dir); pgfanout starts over and the server sends the transaction again", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool file {} is damaged at byte {offset}: {reason}\nHINT: something else wrote to the log directory's streaming/ folder; pgfanout empties it when it starts over and the server sends the transaction again", path.display())]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error("protocol 2 stream out of order: {0}")]
    Order(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl SpoolError {
    /// Whether starting the stream again can get past it: I/O trouble (a full disk, say) can
    /// clear, and the server sends the transaction again; a malformed stream does not change.
    pub fn is_io(&self) -> bool {
        matches!(self, SpoolError::Io { .. } | SpoolError::Damaged { .. })
    }
}

fn io_error<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> SpoolError + 'p {
    move |source| SpoolError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// One open (streamed, not yet committed or aborted) transaction.
#[derive(Debug)]
struct OpenTxn {
    path: PathBuf,
    /// Bytes written to its file.
    len: u64,
    /// Each subtransaction with streamed changes and the offset of its first record, in
    /// order of offset.
    subxacts: Vec<(u32, u64)>,
    /// Ranges of records whose subtransaction aborted, sorted and disjoint.
    aborted: Vec<Range<u64>>,
}

/// The stream block being received.
struct Block {
    xid: u32,
    file: BufWriter<File>,
}

pub struct Spool {
    dir: PathBuf,
    /// A spool of its own for a consumer without a change log (`tail`), removed on drop.
    _temporary: Option<tempfile::TempDir>,
    open: HashMap<u32, OpenTxn>,
    block: Option<Block>,
}

impl Spool {
    /// The spool in `dir` (created 0700: it holds row values), emptied of what an earlier
    /// stream left.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error("create the directory of", dir))?;
        for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
            let path = entry.map_err(io_error("list", dir))?.path();
            if path.to_str().is_some_and(|p| p.ends_with(SUFFIX)) {
                fs::remove_file(&path).map_err(io_error("remove", &path))?;
            }
        }
        Ok(Spool {
            dir: dir.to_owned(),
            _temporary: None,
            open: HashMap::new(),
            block: None,
        })
    }

    /// A spool in a new temporary directory, removed when the spool is dropped.
    pub fn temporary() -> Result<Spool, SpoolError> {
        let temp = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix("pgfanout-spool-")
            .tempdir()
            .map_err(io_error("create a temporary directory in", &temp))?;
        let mut spool = Spool::open(dir.path())?;
        spool._temporary = Some(dir);
        Ok(spool)
    }

    /// Transactions streamed and not yet committed or aborted.
    pub fn open_transactions(&self) -> usize {
        self.open.len()
    }

    /// Bytes the open transactions hold on disk.
    pub fn bytes(&self) -> u64 {
        self.open.values().map(|t| t.len).sum()
    }

    /// Whether a stream block is being received (between Stream Start and Stream Stop).
    pub fn in_block(&self) -> bool {
        self.block.is_some()
    }

    /// Stream Start: appends the block to the transaction's file; a first block starts it
    /// over.
    pub fn start(&mut self, xid: u32, first_segment: bool) -> Result<(), SpoolError> {
        if let Some(block) = &self.block {
            return Err(SpoolError::Order(format!(
                "Stream Start of transaction {xid} inside the block of transaction {}",
                block.xid
            )));
        }
        if first_segment {
            let path = self.dir.join(format!("{xid}{SUFFIX}"));
            self.open.insert(
                xid,
                OpenTxn {
                    path,
                    len: 0,
                    subxacts: Vec::new(),
                    aborted: Vec::new(),
                },
            );
        }
        let Some(txn) = self.open.get(&xid) else {
            return Err(SpoolError::Order(format!(
                "Stream Start continues transaction {xid}, whose first block never came"
            )));
        };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(first_segment)
            .append(!first_segment)
            .mode(0o600)
            .open(&txn.path)
            .map_err(io_error("open", &txn.path))?;
        self.block = Some(Block {
            xid,
            file: BufWriter::with_capacity(BUFFER_BYTES, file),
        });
        Ok(())
    }

    /// A message of the open block, as received (tag, xid, body).
    pub fn append(&mut self, wal_start: Lsn, message: &Bytes) -> Result<(), SpoolError> {
        let Some(block) = &mut self.block else {
            return Err(SpoolError::Order(
                "a streamed change outside a stream block".into(),
            ));
        };
        let subxid = pgoutput::streamed_xid(message)?;
        let Some(txn) = self.open.get_mut(&block.xid) else {
            return Err(SpoolError::Order(format!(
                "stream block of unknown transaction {}",
                block.xid
            )));
        };
        let len = u32::try_from(message.len()).map_err(|_| {
            SpoolError::Order(format!(
                "a streamed message of {} bytes (more than a protocol message can hold)",
                message.len()
            ))
        })?;
        if subxid != block.xid && !txn.subxacts.iter().any(|&(x, _)| x == subxid) {
            txn.subxacts.push((subxid, txn.len));
        }
        let mut header = [0u8; HEADER_BYTES as usize];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&wal_start.0.to_le_bytes());
        block
            .file
            .write_all(&header)
            .and_then(|()| block.file.write_all(message))
            .map_err(io_error("write", &txn.path))?;
        txn.len += HEADER_BYTES + u64::from(len);
        Ok(())
    }

    /// Stream Stop: the block is written out.
    pub fn stop(&mut self) -> Result<(), SpoolError> {
        let Some(mut block) = self.block.take() else {
            return Err(SpoolError::Order("Stream Stop without Stream Start".into()));
        };
        let path = self.open.get(&block.xid).map(|t| t.path.clone());
        block.file.flush().map_err(|source| SpoolError::Io {
            op: "write",
            path: path.unwrap_or_default(),
            source,
        })
    }

    /// Stream Abort of the transaction (`subxid == xid`) or of one of its subtransactions.
    /// A transaction never streamed here is ignored: nothing of it is kept.
    pub fn abort(&mut self, xid: u32, subxid: u32) -> Result<(), SpoolError> {
        self.outside_block("Stream Abort")?;
        if xid == subxid {
            if let Some(txn) = self.open.remove(&xid) {
                remove(&txn.path)?;
            }
            return Ok(());
        }
        let Some(txn) = self.open.get_mut(&xid) else {
            return Ok(());
        };
        if let Some(i) = txn.subxacts.iter().position(|&(x, _)| x == subxid) {
            let from = txn.subxacts[i].1;
            // Subtransactions that began later are nested in this one or began after it.
            txn.subxacts.truncate(i);
            txn.aborted.retain(|r| r.start < from);
            txn.aborted.push(from..txn.len);
        }
        Ok(())
    }

    /// Stream Commit: the transaction's records, read back in the order they came. The file
    /// is removed when the replay is dropped.
    pub fn commit(&mut self, xid: u32) -> Result<Replay, SpoolError> {
        self.outside_block("Stream Commit")?;
        let Some(txn) = self.open.remove(&xid) else {
            return Err(SpoolError::Order(format!(
                "Stream Commit of transaction {xid}, of which no block was streamed"
            )));
        };
        let file = File::open(&txn.path).map_err(io_error("open", &txn.path))?;
        Ok(Replay {
            file: BufReader::with_capacity(BUFFER_BYTES, file),
            path: txn.path,
            pos: 0,
            len: txn.len,
            aborted: txn.aborted,
        })
    }

    fn outside_block(&self, what: &str) -> Result<(), SpoolError> {
        match &self.block {
            Some(block) => Err(SpoolError::Order(format!(
                "{what} inside the stream block of transaction {}",
                block.xid
            ))),
            None => Ok(()),
        }
    }
}

fn remove(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SpoolError::Io {
            op: "remove",
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// One spooled message.
#[derive(Debug)]
pub struct Spooled {
    pub wal_start: Lsn,
    /// The pgoutput message as received, xid included ([`pgoutput::decode_streamed`]).
    pub message: Bytes,
    /// Its subtransaction aborted: only a relation or type description of it still counts.
    pub aborted: bool,
}

/// A committed transaction read back from its spool file.
pub struct Replay {
    file: BufReader<File>,
    path: PathBuf,
    pos: u64,
    len: u64,
    aborted: Vec<Range<u64>>,
}

impl Replay {
    /// The next message, or `None` after the last.
    pub fn next_message(&mut self) -> Result<Option<Spooled>, SpoolError> {
        if self.pos >= self.len {
            return Ok(None);
        }
        let at = self.pos;
        let damaged = |reason| SpoolError::Damaged {
            path: self.path.clone(),
            offset: at,
            reason,
        };
        if self.len - at < HEADER_BYTES {
            return Err(damaged("a record header runs past what was written"));
        }
        let mut header = [0u8; HEADER_BYTES as usize];
        self.file
            .read_exact(&mut header)
            .map_err(io_error("read", &self.path))?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut lsn = [0u8; 8];
        lsn.copy_from_slice(&header[4..]);
        if u64::from(len) > self.len - at - HEADER_BYTES {
            return Err(damaged("a record runs past what was written"));
        }
        let mut message = BytesMut::zeroed(len as usize);
        self.file
            .read_exact(&mut message)
            .map_err(io_error("read", &self.path))?;
        self.pos = at + HEADER_BYTES + u64::from(len);
        Ok(Some(Spooled {
            wal_start: Lsn(u64::from_le_bytes(lsn)),
            message: message.freeze(),
            aborted: self.aborted.iter().any(|r| r.contains(&at)),
        }))
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        // A file left behind is removed by the next `Spool::open`.
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(xid: u32, id: u8) -> Bytes {
        // 'I', xid, relation 1, 'N', one text column holding `id`.
        let mut m = vec![b'I'];
        m.extend_from_slice(&xid.to_be_bytes());
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(b"N\0\x01t\0\0\0\x01");
        m.push(b'0' + id);
        Bytes::from(m)
    }

    fn relation(xid: u32) -> Bytes {
        let mut m = vec![b'R'];
        m.extend_from_slice(&xid.to_be_bytes());
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(b"public\0t\0d\0\x01\x01id\0\0\0\0\x17\xff\xff\xff\xff");
        Bytes::from(m)
    }

    fn read_all(mut replay: Replay) -> Vec<(u8, bool)> {
        let mut out = Vec::new();
        while let Some(m) = replay.next_message().unwrap() {
            pgoutput::decode_streamed(&m.message).unwrap();
            out.push((m.message[0], m.aborted));
            if m.message[0] == b'I' {
                let last = out.len() - 1;
                out[last].0 = *m.message.last().unwrap();
            }
        }
        out
    }

    #[test]
    fn blocks_of_interleaved_transactions_come_back_per_transaction_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        spool.start(10, true).unwrap();
        spool.append(Lsn(1), &relation(10)).unwrap();
        spool.append(Lsn(2), &insert(10, 1)).unwrap();
        spool.stop().unwrap();
        spool.start(20, true).unwrap();
        spool.append(Lsn(3), &insert(20, 7)).unwrap();
        spool.stop().unwrap();
        spool.start(10, false).unwrap();
        spool.append(Lsn(4), &insert(10, 2)).unwrap();
        spool.stop().unwrap();
        assert_eq!(spool.open_transactions(), 2);

        let replay = spool.commit(10).unwrap();
        assert_eq!(
            read_all(replay),
            vec![(b'R', false), (b'1', false), (b'2', false)]
        );
        spool.abort(20, 20).unwrap();
        assert_eq!(spool.open_transactions(), 0);
        // Committed and aborted transactions leave no file.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_subtransaction_abort_drops_its_changes_and_nested_ones_but_keeps_relations() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        spool.start(10, true).unwrap();
        spool.append(Lsn(1), &insert(10, 1)).unwrap();
        spool.append(Lsn(2), &relation(11)).unwrap(); // SAVEPOINT a (xid 11)
        spool.append(Lsn(3), &insert(11, 2)).unwrap();
        spool.append(Lsn(4), &insert(12, 3)).unwrap(); // SAVEPOINT b, nested (xid 12)
        spool.stop().unwrap();
        spool.abort(10, 11).unwrap(); // ROLLBACK TO a
        spool.start(10, false).unwrap();
        spool.append(Lsn(5), &insert(10, 4)).unwrap();
        spool.append(Lsn(6), &insert(13, 5)).unwrap(); // SAVEPOINT c, released
        spool.stop().unwrap();
        spool.abort(10, 12).unwrap(); // already dropped with a: changes nothing
        let got = read_all(spool.commit(10).unwrap());
        assert_eq!(
            got,
            vec![
                (b'1', false),
                (b'R', true),
                (b'2', true),
                (b'3', true),
                (b'4', false),
                (b'5', false)
            ]
        );
    }

    #[test]
    fn a_first_block_starts_the_transaction_over_and_open_empties_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("99.spool"), b"left by a crash").unwrap();
        fs::write(dir.path().join("keep.txt"), b"not ours").unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        assert!(!dir.path().join("99.spool").exists());
        assert!(dir.path().join("keep.txt").exists());
        spool.start(10, true).unwrap();
        spool.append(Lsn(1), &insert(10, 1)).unwrap();
        spool.stop().unwrap();
        // The server sends the transaction again from its first block.
        spool.start(10, true).unwrap();
        spool.append(Lsn(1), &insert(10, 1)).unwrap();
        spool.stop().unwrap();
        assert_eq!(read_all(spool.commit(10).unwrap()), vec![(b'1', false)]);
    }

    #[test]
    fn out_of_order_messages_are_errors_naming_the_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        let e = spool.start(10, false).unwrap_err();
        assert!(e.to_string().contains("transaction 10"), "{e}");
        assert!(spool.append(Lsn(1), &insert(10, 1)).is_err());
        assert!(spool.stop().is_err());
        let e = spool.commit(10).err().unwrap();
        assert!(e.to_string().contains("transaction 10"), "{e}");
        spool.start(10, true).unwrap();
        assert!(spool.start(11, true).is_err());
        assert!(spool.commit(10).is_err());
        assert!(spool.abort(10, 10).is_err());
        // A Begin is no streamed message.
        let begin = Bytes::from_static(b"B\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x02\0\0\0\x0a");
        assert!(spool.append(Lsn(1), &begin).is_err());
        // Aborting what was never streamed keeps nothing and is no error.
        spool.stop().unwrap();
        spool.abort(77, 77).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::with_cases(256)
        })]

        /// Whatever the file came to hold (a disk that lies, someone else's file), reading it
        /// back gives errors, never a panic or a read past what was written.
        #[test]
        fn any_file_content_replays_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            written in 0u64..400,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut spool = Spool::open(dir.path()).unwrap();
            spool.start(10, true).unwrap();
            spool.append(Lsn(1), &insert(10, 1)).unwrap();
            spool.stop().unwrap();
            fs::write(dir.path().join("10.spool"), &bytes).unwrap();
            spool.open.get_mut(&10).unwrap().len = written;
            let mut replay = spool.commit(10).unwrap();
            let mut read = 0;
            while let Ok(Some(m)) = replay.next_message() {
                read += HEADER_BYTES + m.message.len() as u64;
                let _ = pgoutput::decode_streamed(&m.message);
            }
            proptest::prop_assert!(read <= written);
        }
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        spool.start(10, true).unwrap();
        spool.append(Lsn(1), &insert(10, 1)).unwrap();
        spool.stop().unwrap();
        let path = dir.path().join("10.spool");
        // Cut the file: the record it promised is not all there.
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let mut replay = spool.commit(10).unwrap();
        let e = replay.next_message().unwrap_err();
        assert!(e.to_string().contains("10.spool"), "{e}");
        assert!(e.is_io());
    }
}
