//! The durable change log: every sequenced change and every transaction commit, appended to
//! segment files, fsync'd in groups, read back from any retained seq.
//!
//! ```text
//!  sequencer ──append_change/append_commit──▶ ChangeLog ──sync()──▶ Some(CommitInfo): tell
//!                                              │  (buffer)          PostgreSQL end_lsn is flushed
//!                                              ▼
//!  dir/00000000000000000001.seg   [frame][frame]…[frame]      sealed (+ .idx)
//!  dir/00000000000000000001.idx   sparse index of the sealed segment above
//!  dir/00000000000000052341.seg   [frame][frame]…             active (last), appended to
//!                                              │
//!          LogReader::open / ChangeLog::reader ◀┘ reads durable records from any retained seq
//!
//!  frame   = [u32 LE payload length][u32 LE CRC32C(payload)][payload]
//!  payload = protobuf `Record` (proto/changelog.proto): a Change or a Commit
//!  segment = Change(s)…Commit  Change(s)…Commit  …   (whole transactions only)
//! ```
//!
//! # Invariants
//!
//! 1. **A segment is named by the seq of its first change** (20 digits, zero-padded), and the
//!    first record of a segment is that change. Segments hold whole transactions: the log
//!    rolls to a new segment only after a commit, once the active segment has reached
//!    `segment_bytes` — a transaction larger than that makes one large segment, never two.
//! 2. **Change seqs are dense across the whole log** (each segment starts at the previous
//!    one's last seq + 1; only retention removes segments, and only from the oldest end).
//!    Every commit closes a non-empty transaction and carries the seq of its last change.
//! 3. **Durable means fsync'd**: [`ChangeLog::sync`] writes the buffered frames, fsyncs the
//!    active segment and, after a segment was created, the directory. Rolling fsyncs the old
//!    segment before the new one is created, so only the last segment can have a torn tail.
//!    What `sync` returns (the last durable commit) is what may be confirmed to PostgreSQL.
//!    (`tests/faults.rs`: crashes and errors between the write and the fsync, and between the
//!    fsync and the slot's feedback.)
//! 4. **Readers see only committed, durable records**: the durable watermark is the last seq
//!    of the last durable commit; a reader never returns a change beyond it, so it never sees
//!    a transaction that recovery could still remove.
//! 5. **Recovery** ([`ChangeLog::open`]) scans the last segment only: a torn final frame (the
//!    file ends inside it, or its CRC fails and it is the last frame) and the records of a
//!    trailing transaction without its commit are truncated away — PostgreSQL resends that
//!    transaction, since its end LSN was never confirmed. A frame inside the last segment that
//!    fails its CRC or does not decode is *tail damage* (after a failed fsync the kernel may
//!    lose any page written since the last good one): [`ChangeLog::open`] refuses it, and
//!    [`ChangeLog::open_checked`] shows it to a check that knows what was confirmed before
//!    anything is cut (`pipeline::recovery`). Anywhere else such a frame is an error naming
//!    the file and byte offset; the log never silently skips data. Sealed segments are trusted
//!    through their index file (rebuilt by a scan when missing or stale); [`verify`] checks
//!    every record of every segment. Recovery fsyncs the last segment and the directory before
//!    anything it read is trusted. A crash or an error during recovery's own cut (before it,
//!    or before its fsync) leaves a log the next start recovers (`tests/faults.rs`).
//! 6. **After an I/O error the writer is poisoned and heals**: a failed write or fsync leaves
//!    the file in an unknown state (the kernel may keep pages it could not write, marked
//!    clean, and serve them to a later read), so the active segment is cut back to its last
//!    fsync'd length at once, and every later call fails until the log is reopened.
//!    (`tests/faults.rs`: an injected fsync or META error; the restart receives the rest.)
//! 7. **Every reader meets a relation's description before its changes**: a change record
//!    describes its relation in full at the first change of a segment, at every sparse-index
//!    point, and whenever the relation differs from the previous change's; other records name
//!    it by oid only (about half the bytes of a typical change). Readers start only at index
//!    points, so they always see the description first.
//! 8. **The META file binds the log** to its source and lineage and records how far past the
//!    last commit it vouches for the stream ([`LogMeta`], written whole with a directory
//!    fsync; a crash between its temporary copy and the rename leaves the old one:
//!    `tests/faults.rs`). The directory is created 0700 and every file 0600: the log holds row
//!    values.
//!
//! # The sparse index
//!
//! For each segment the log keeps `(seq, byte offset)` of every `index_every`-th change
//! (the first change always), built while appending and while recovering. Finding seq N is a
//! binary search over segments by first seq, a binary search in that segment's index, and a
//! scan of at most `index_every` records. When a segment is sealed its index goes to
//! `<first seq>.idx` (one CRC-framed protobuf), so opening the log or a reader does not scan
//! sealed segments. Memory: 16 bytes per `index_every` changes (default 256: ~64 KiB per
//! million changes).
//!
//! # Large records
//!
//! Appends are framed into a write buffer of `write_buffer_bytes`, written out when full. A
//! record at least that large, or one with values of [`record::SPLICE_AT`] bytes or more, goes
//! around it: the buffer is written first, then the record's frame straight to the segment,
//! its large values spliced in from the change's own buffers (the CRC is computed over the
//! pieces). Memory for a huge value is therefore the change that carries it, never a copy.
//!
//! A torn-write caveat inherent to the frame format: a corrupted *length* field that points
//! past the end of the last segment is indistinguishable from a torn write and is truncated
//! like one (`Recovered::truncated_bytes` reports how much).

mod frame;
mod meta;
mod reader;
pub mod record;
mod segment;

#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::change::SequencedChange;
use crate::failpoint;
use crate::lsn::Lsn;
use crate::value::Timestamp;

pub use frame::{decode_frame, Frame, FrameError};
pub use meta::{read_meta, LogMeta, Position};
pub use reader::{verify, LogReader, VerifyReport};
pub use record::{LogRecord, RecordDecoder, RecordError};
pub use segment::{Problem, TailDamage};

use record::{Encoded, RelationEncoder};
use segment::SegmentInfo;

/// Default size at which the active segment is sealed (at the next commit boundary).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Default spacing of sparse-index entries, in changes.
pub const DEFAULT_INDEX_EVERY: u32 = 256;
/// Default size of the write buffer; when full it is written out (not fsync'd).
pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Seal the active segment after the first commit that brings it to this size.
    pub segment_bytes: u64,
    /// One sparse-index entry every this many changes.
    pub index_every: u32,
    /// Buffered bytes that trigger a write (without fsync) between syncs, bounding memory.
    pub write_buffer_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            index_every: DEFAULT_INDEX_EVERY,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
        }
    }
}

/// A transaction boundary as logged: what a `Commit` record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    pub xid: u32,
    pub commit_lsn: Lsn,
    /// The LSN that may be confirmed to PostgreSQL once this commit is durable.
    pub end_lsn: Lsn,
    pub commit_time: Timestamp,
    /// Seq of the transaction's last change.
    pub last_seq: u64,
}

/// What [`ChangeLog::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Seq of the last change in the log (that of `last_commit`), 0 for an empty log.
    pub last_seq: u64,
    pub last_commit: Option<CommitInfo>,
    /// Bytes removed from the end of the last segment (torn frame, uncommitted transaction);
    /// for [`ChangeLog::open_checked`]'s check, the bytes recovery is about to remove.
    pub truncated_bytes: u64,
    /// The META file: the source the log is bound to and its position (`None` for a new log).
    pub meta: Option<LogMeta>,
    /// A frame inside the last segment that fails its check; the tail from the last intact
    /// commit before it is in `truncated_bytes`. [`ChangeLog::open`] refuses it;
    /// [`ChangeLog::open_checked`]'s check decides (safe to cut only past what was confirmed).
    pub tail_damage: Option<TailDamage>,
}

/// What the log may delete.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    /// Delete sealed segments whose last commit is older than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_segments: Vec<PathBuf>,
    pub deleted_bytes: u64,
    /// Oldest seq still in the log afterwards.
    pub oldest_seq: Option<u64>,
    /// `max_bytes` forced deleting changes at or after `keep_from_seq`: whoever needed them
    /// must resync.
    pub dropped_needed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the change log in {dir} is in use by another pgfanout process\nHINT: stop the other process, or give this one its own log.dir")]
    Locked { dir: PathBuf },
    #[error("change log I/O error while {action} ({path})")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("change log is corrupt at {path}, byte offset {offset}\nHINT: run `verify`; the log cannot be read past this point")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        #[source]
        problem: Problem,
    },
    #[error(
        "change log segments are not contiguous: {path} starts at seq {found}, expected {expected}"
    )]
    Gap {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("seq {requested} is no longer in the change log (oldest retained seq is {oldest})\nHINT: the destination reading from it needs a resync")]
    SeqTooOld { requested: u64, oldest: u64 },
    #[error(
        "cannot append change {got}: the change log's next seq is {expected}; seqs must be dense"
    )]
    NotDense { expected: u64, got: u64 },
    #[error("cannot append {what}: {detail}")]
    BadAppend { what: &'static str, detail: String },
    #[error("change {seq} encodes to {bytes} bytes, more than a record can hold (4 GiB)")]
    RecordTooLarge { seq: u64, bytes: usize },
    #[error("the change log writer failed earlier and must be reopened (which recovers from what is on disk)")]
    Poisoned,
    #[error("the change log's META file {path} is damaged: {detail}\nHINT: it binds the log to its source; restore it from a backup of the log directory, or move the directory aside and start a new log")]
    BadMeta { path: PathBuf, detail: String },
    #[error("cannot record a position in a change log that is not bound to a source yet")]
    Unbound,
}

impl From<TailDamage> for LogError {
    fn from(d: TailDamage) -> LogError {
        LogError::Corrupt {
            path: d.path,
            offset: d.offset,
            problem: Problem::Damaged(d.problem),
        }
    }
}

/// The durable state shared between the writer and its readers.
#[derive(Debug)]
struct State {
    segments: Vec<SegmentInfo>,
    durable: Option<CommitInfo>,
    /// The writer is gone (readers stop waiting).
    closed: bool,
    /// The numbering the log's seqs belong to (its META file's), once bound.
    lineage: Option<crate::binding::Lineage>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
    watch: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn new(dir: PathBuf, state: State) -> Arc<Shared> {
        let last = state.durable.map_or(0, |c| c.last_seq);
        Arc::new(Shared {
            dir,
            state: Mutex::new(state),
            changed: Condvar::new(),
            watch: tokio::sync::watch::Sender::new(last),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way readers
        // could misuse beyond what they re-check, so recover from poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Opens live readers of one [`ChangeLog`]; cheap to clone and `Send`. Once the writer is
/// dropped, readers still return what is durable but no longer wait for more.
#[derive(Debug, Clone)]
pub struct Readers(Arc<Shared>);

impl Readers {
    pub fn open(&self, from_seq: u64) -> Result<LogReader, LogError> {
        LogReader::live(self.0.clone(), from_seq)
    }

    /// The last durable seq (0 for an empty log).
    pub fn durable_seq(&self) -> u64 {
        self.0.lock().durable.map_or(0, |c| c.last_seq)
    }

    /// The last durable commit.
    pub fn last_durable(&self) -> Option<CommitInfo> {
        self.0.lock().durable
    }

    /// The numbering this log's seqs belong to (`None` until it is bound).
    pub fn lineage(&self) -> Option<crate::binding::Lineage> {
        self.0.lock().lineage
    }

    /// Oldest retained seq.
    pub fn oldest_seq(&self) -> Option<u64> {
        let st = self.0.lock();
        st.segments
            .iter()
            .find(|s| s.last_seq >= s.first_seq)
            .map(|s| s.first_seq)
    }
}

/// The segment being appended to.
struct Active {
    file: File,
    path: PathBuf,
    first_seq: u64,
    /// Bytes written to the file (maybe not yet fsync'd).
    written: u64,
    /// Index entries not yet published to readers.
    pending_index: Vec<(u64, u64)>,
    /// Changes appended to this segment so far (durable or not).
    changes: u64,
    last_commit_time: Option<Timestamp>,
}

/// The writer. One per directory, enforced by an exclusive lock on `dir/LOCK` (readers take
/// none); not shared across threads.
pub struct ChangeLog {
    dir: PathBuf,
    /// Held for the writer's lifetime; the OS releases it when the process dies.
    _lock: File,
    opts: LogOptions,
    shared: Arc<Shared>,
    active: Option<Active>,
    buf: Vec<u8>,
    /// The record being appended.
    scratch: Encoded,
    encoder: RelationEncoder,
    /// Seq of the last appended change (0 before any).
    last_seq: u64,
    /// Xid of the open transaction (changes appended since the last commit).
    open_tx: Option<u32>,
    /// Last appended commit, durable or not.
    last_commit: Option<CommitInfo>,
    roll_pending: bool,
    dir_dirty: bool,
    poisoned: bool,
    meta: Option<LogMeta>,
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LogError {
    let path = path.to_owned();
    move |source| LogError::Io {
        action,
        path,
        source,
    }
}

/// Creates `dir` (and missing parents) readable by its owner only: the log holds row values.
fn create_private_dir(dir: &Path) -> Result<(), LogError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("creating the change log directory", dir))
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing the change log directory", dir))
}

/// Now, as a PostgreSQL timestamp.
fn now() -> Timestamp {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    Timestamp::from_pg_epoch_micros(unix - 946_684_800_000_000)
}

/// Loads the segment list of `dir`. Sealed segments come from their index files (or a scan);
/// the last one is always scanned. With `repair`, the last segment's uncommitted tail is
/// truncated (and an emptied last segment removed); without, it is only left out.
fn load(
    dir: &Path,
    index_every: u32,
    repair: bool,
) -> Result<(State, u64, Option<TailDamage>), LogError> {
    let firsts = segment::list_segments(dir)?;
    let mut segments: Vec<SegmentInfo> = Vec::with_capacity(firsts.len());
    let mut durable = None;
    let mut truncated = 0;
    let mut damage = None;
    let mut i = 0;
    while i < firsts.len() {
        let first = firsts[i];
        let path = segment::segment_path(dir, first);
        let is_last = i + 1 == firsts.len();
        if let Some(prev) = segments.last() {
            if prev.last_seq + 1 != first {
                return Err(LogError::Gap {
                    path,
                    expected: prev.last_seq + 1,
                    found: first,
                });
            }
        }
        if !is_last {
            let len = fs::metadata(&path)
                .map_err(io_err("reading a segment's size", &path))?
                .len();
            let info = match segment::read_index(dir, first, len) {
                Some(info) => info,
                None => {
                    let scan = segment::scan(dir, first, index_every, false)?;
                    if repair {
                        segment::write_index(dir, &scan.info)?;
                    }
                    scan.info
                }
            };
            segments.push(info);
            i += 1;
            continue;
        }
        let scan = segment::scan(dir, first, index_every, true)?;
        truncated = scan.tail_bytes;
        damage = scan.tail_damage;
        if scan.last_commit.is_some() {
            durable = scan.last_commit;
        }
        if scan.info.len == 0 {
            // Nothing committed in the last segment: it was created for a transaction that
            // never committed. The previous segment (if any) becomes the active one.
            if repair {
                failpoint::hit(failpoint::LOG_DURING_RECOVERY)
                    .and_then(|()| fs::remove_file(&path))
                    .and_then(|()| failpoint::hit(failpoint::LOG_DURING_RECOVERY))
                    .map_err(io_err("removing an empty last segment", &path))?;
                let _ = fs::remove_file(segment::index_path(dir, first));
                sync_dir(dir)?;
            }
            if durable.is_none() {
                if let Some(prev) = segments.last() {
                    // The previous segment ends with a commit (it is sealed); recover it.
                    let prev_scan = segment::scan(dir, prev.first_seq, index_every, false)?;
                    durable = prev_scan.last_commit;
                }
            }
        } else {
            if repair && scan.tail_bytes > 0 {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("opening the last segment to truncate it", &path))?;
                // The failpoint before the cut, and between the cut and its fsync.
                failpoint::hit(failpoint::LOG_DURING_RECOVERY)
                    .and_then(|()| f.set_len(scan.info.len))
                    .and_then(|()| failpoint::hit(failpoint::LOG_DURING_RECOVERY))
                    .and_then(|()| f.sync_all())
                    .map_err(io_err("truncating the last segment's torn tail", &path))?;
            }
            segments.push(scan.info);
        }
        i += 1;
    }
    if durable.is_none() {
        // The last segment was empty and dropped above, or there are no segments.
        if let Some(last) = segments.last() {
            let scan = segment::scan(dir, last.first_seq, index_every, false)?;
            durable = scan.last_commit;
        }
    }
    Ok((
        State {
            segments,
            durable,
            closed: false,
            lineage: None,
        },
        truncated,
        damage,
    ))
}

/// What is in a log directory, read without taking the writer's lock (for `pgfanout status`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogSummary {
    pub segments: usize,
    pub bytes: u64,
    pub oldest_seq: Option<u64>,
    /// 0 for an empty log.
    pub last_seq: u64,
    pub last_commit: Option<CommitInfo>,
    pub meta: Option<LogMeta>,
}

/// Summarises the log in `dir` (an absent directory is an empty log).
pub fn summary(dir: &Path) -> Result<LogSummary, LogError> {
    if !dir.exists() {
        return Ok(LogSummary::default());
    }
    let (state, _, _) = load(dir, DEFAULT_INDEX_EVERY, false)?;
    Ok(LogSummary {
        segments: state.segments.len(),
        bytes: state.segments.iter().map(|s| s.len).sum(),
        oldest_seq: state
            .segments
            .iter()
            .find(|s| s.last_seq >= s.first_seq)
            .map(|s| s.first_seq),
        last_seq: state.durable.map_or(0, |c| c.last_seq),
        last_commit: state.durable,
        meta: read_meta(dir)?,
    })
}

impl ChangeLog {
    /// Opens the log in `dir` (created if needed) and recovers it; see the module comment.
    /// Damage inside the last segment is an error: only a caller that knows what was
    /// confirmed ([`ChangeLog::open_checked`]) can tell an unsynced tail from lost data.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<(ChangeLog, Recovered), LogError> {
        Self::open_checked(dir, opts, |found| match &found.tail_damage {
            Some(d) => Err(LogError::from(d.clone())),
            None => Ok(()),
        })
    }

    /// Like [`ChangeLog::open`], but shows `check` what recovery found before it changes
    /// anything on disk: an error from `check` leaves the log as it was (a tail that recovery
    /// would cut as torn may be evidence of damage; see `pipeline::recovery`).
    pub fn open_checked<E: From<LogError>>(
        dir: &Path,
        opts: LogOptions,
        check: impl FnOnce(&Recovered) -> Result<(), E>,
    ) -> Result<(ChangeLog, Recovered), E> {
        create_private_dir(dir)?;
        // A second writer would "recover" (truncate) the tail the first is still appending.
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("opening the change log's lock file", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(LogError::Locked {
                    dir: dir.to_owned(),
                }
                .into())
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(io_err("locking the change log", &lock_path)(e).into())
            }
        }
        let meta = read_meta(dir)?;
        let (state, would_truncate, tail_damage) = load(dir, opts.index_every, false)?;
        check(&Recovered {
            last_seq: state.durable.map_or(0, |c| c.last_seq),
            last_commit: state.durable,
            truncated_bytes: would_truncate,
            meta: meta.clone(),
            tail_damage: tail_damage.clone(),
        })?;
        let (mut state, truncated_bytes, _) = load(dir, opts.index_every, true)?;
        state.lineage = meta.as_ref().map(|m| m.lineage);
        let last_commit = state.durable;
        let last_seq = last_commit.map_or(0, |c| c.last_seq);
        // Continue appending to the last segment. Its index file (if it had been sealed
        // before a crash emptied its successor) would go stale: remove it.
        let active = match state.segments.last() {
            Some(last) => {
                let path = segment::segment_path(dir, last.first_seq);
                let _ = fs::remove_file(segment::index_path(dir, last.first_seq));
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_err("opening the last segment for appending", &path))?;
                // What recovery read may have come from the page cache only (the process died
                // before its fsync, or an fsync failed and the kernel kept the pages): make it
                // durable before anything is confirmed from it, or fail here.
                file.sync_all()
                    .map_err(io_err("syncing the recovered last segment", &path))?;
                Some(Active {
                    file,
                    path,
                    first_seq: last.first_seq,
                    written: last.len,
                    pending_index: Vec::new(),
                    changes: last.last_seq + 1 - last.first_seq,
                    last_commit_time: last.last_commit_time,
                })
            }
            None => None,
        };
        // The segment list recovery trusts must itself be durable.
        sync_dir(dir)?;
        let roll_pending = active
            .as_ref()
            .is_some_and(|a| a.written >= opts.segment_bytes);
        let log = ChangeLog {
            dir: dir.to_owned(),
            _lock: lock,
            shared: Shared::new(dir.to_owned(), state),
            opts,
            active,
            buf: Vec::new(),
            scratch: Encoded::default(),
            encoder: RelationEncoder::default(),
            last_seq,
            open_tx: None,
            last_commit,
            roll_pending,
            dir_dirty: false,
            poisoned: false,
            meta: meta.clone(),
        };
        Ok((
            log,
            Recovered {
                last_seq,
                last_commit,
                truncated_bytes,
                meta,
                tail_damage,
            },
        ))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The META file's contents (`None` until [`ChangeLog::bind`]).
    pub fn meta(&self) -> Option<&LogMeta> {
        self.meta.as_ref()
    }

    /// Binds the log to `meta` (written durably before this returns).
    pub fn bind(&mut self, meta: LogMeta) -> Result<(), LogError> {
        self.check()?;
        meta::write_meta(&self.dir, &meta)?;
        self.shared.lock().lineage = Some(meta.lineage);
        self.meta = Some(meta);
        Ok(())
    }

    /// Records durably that the log holds everything with row changes up to `position`; only
    /// then may the slot be confirmed that far past the last commit. The caller must have
    /// made every change up to `position.last_seq` durable ([`ChangeLog::sync`]).
    pub fn record_position(&mut self, position: Position) -> Result<(), LogError> {
        self.check()?;
        let Some(meta) = &self.meta else {
            return Err(LogError::Unbound);
        };
        if position.lsn <= meta.position.lsn {
            return Ok(());
        }
        let next = LogMeta {
            position,
            ..meta.clone()
        };
        self.guard(|log| {
            meta::write_meta(&log.dir, &next)?;
            log.meta = Some(next);
            Ok(())
        })
    }

    fn check(&self) -> Result<(), LogError> {
        if self.poisoned {
            Err(LogError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Runs `f`; an error poisons the writer (invariant 6).
    fn guard<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        self.check()?;
        let r = f(self);
        if r.is_err() {
            self.poisoned = true;
            self.heal();
        }
        r
    }

    /// After a failed write or fsync the kernel may keep pages it could not write, marked
    /// clean, and serve them to a later read that recovery would trust. Cut the active
    /// segment back to its last durable length (dropping those pages) and sync that, so a
    /// restart sees only what was fsync'd; PostgreSQL resends the rest, never confirmed.
    fn heal(&mut self) {
        let Some(a) = self.active.as_ref() else {
            return;
        };
        let durable_len = {
            let st = self.shared.lock();
            match st.segments.last() {
                Some(seg) if seg.first_seq == a.first_seq => seg.len,
                _ => return,
            }
        };
        self.buf.clear();
        let healed = OpenOptions::new()
            .write(true)
            .open(&a.path)
            .and_then(|f| f.set_len(durable_len).and_then(|()| f.sync_all()));
        match healed {
            Ok(()) => tracing::warn!(
                path = %a.path.display(),
                durable_bytes = durable_len,
                "change log write failed: cut the segment back to what was fsync'd"
            ),
            Err(e) => tracing::error!(
                path = %a.path.display(),
                durable_bytes = durable_len,
                error = %e,
                "change log write failed and the segment could not be cut back to what was fsync'd; the next start syncs it again before trusting it"
            ),
        }
    }

    /// Buffers a change. Its seq must follow the last appended one (any seq for an empty log).
    pub fn append_change(&mut self, change: &SequencedChange) -> Result<(), LogError> {
        self.check()?;
        let expected = self.last_seq + 1;
        if (self.last_seq != 0 && change.seq != expected) || change.seq == 0 {
            return Err(LogError::NotDense {
                expected,
                got: change.seq,
            });
        }
        if let Some(xid) = self.open_tx {
            if xid != change.change.xid {
                return Err(LogError::BadAppend {
                    what: "a change",
                    detail: format!(
                        "change {} belongs to xid {} but transaction {xid} has not committed",
                        change.seq, change.change.xid
                    ),
                });
            }
        }
        self.guard(|log| {
            if log.active.is_none() || (log.roll_pending && log.open_tx.is_none()) {
                log.roll(change.seq)?;
            }
            let every = u64::from(log.opts.index_every.max(1));
            // roll() leaves an active segment; without one the writer's state is broken.
            let Some(active) = log.active.as_mut() else {
                return Err(LogError::Poisoned);
            };
            // Index points (the segment's first change included) describe their relation in
            // full: a reader starts only at one of them.
            let index_point = active.changes % every == 0;
            log.scratch.clear();
            record::encode_change(change, &mut log.encoder, index_point, &mut log.scratch);
            let len = log.scratch.len();
            if u32::try_from(len).is_err() {
                return Err(LogError::RecordTooLarge {
                    seq: change.seq,
                    bytes: len,
                });
            }
            if index_point {
                let offset = active.written + log.buf.len() as u64;
                active.pending_index.push((change.seq, offset));
            }
            active.changes += 1;
            if log.scratch.spliced.is_empty() && len < log.opts.write_buffer_bytes {
                frame::encode_frame(&log.scratch.bytes, &mut log.buf);
            } else {
                // A large record goes around the write buffer, its huge values straight from
                // the change: neither buffer grows to hold it (and stays that big).
                log.write_buf()?;
                log.write_scratch()?;
            }
            if log.scratch.bytes.capacity() > log.opts.write_buffer_bytes {
                log.scratch.bytes = Vec::new();
            }
            log.last_seq = change.seq;
            log.open_tx = Some(change.change.xid);
            log.maybe_flush()
        })
    }

    /// Buffers the commit of the open transaction. A commit of a transaction without changes
    /// (`last_seq` equal to the last commit's) is not logged.
    pub fn append_commit(&mut self, commit: &CommitInfo) -> Result<(), LogError> {
        self.check()?;
        let Some(xid) = self.open_tx else {
            if commit.last_seq == self.last_seq {
                return Ok(());
            }
            return Err(LogError::BadAppend {
                what: "a commit",
                detail: format!(
                    "no transaction is open, and its last seq {} is not the log's last seq {}",
                    commit.last_seq, self.last_seq
                ),
            });
        };
        if commit.xid != xid || commit.last_seq != self.last_seq {
            return Err(LogError::BadAppend {
                what: "a commit",
                detail: format!(
                    "commit of xid {} with last seq {} does not close transaction {xid} ending at seq {}",
                    commit.xid, commit.last_seq, self.last_seq
                ),
            });
        }
        self.scratch.clear();
        record::encode_record(&record::commit_to_proto(commit), &mut self.scratch.bytes);
        self.guard(|log| {
            frame::encode_frame(&log.scratch.bytes, &mut log.buf);
            log.open_tx = None;
            log.last_commit = Some(*commit);
            if let Some(a) = log.active.as_mut() {
                a.last_commit_time = Some(commit.commit_time);
                if a.written + log.buf.len() as u64 >= log.opts.segment_bytes {
                    log.roll_pending = true;
                }
            }
            log.maybe_flush()
        })
    }

    fn maybe_flush(&mut self) -> Result<(), LogError> {
        if self.buf.len() >= self.opts.write_buffer_bytes {
            self.write_buf()?;
        }
        Ok(())
    }

    fn write_buf(&mut self) -> Result<(), LogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        a.file
            .write_all(&self.buf)
            .map_err(io_err("writing to the active segment", &a.path))?;
        a.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes the record in `scratch` as a frame straight to the active segment (after
    /// [`write_buf`](Self::write_buf): frames stay in order).
    fn write_scratch(&mut self) -> Result<(), LogError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let pieces = || self.scratch.pieces();
        let len = self.scratch.len();
        let written = frame::write_frame(pieces, len, &mut a.file)
            .map_err(io_err("writing to the active segment", &a.path))?;
        a.written += written;
        Ok(())
    }

    /// Seals the active segment (write, fsync, index file) and creates the one starting at
    /// `first_seq`.
    fn roll(&mut self, first_seq: u64) -> Result<(), LogError> {
        if self.active.is_some() {
            self.sync_inner()?;
            if let Some(info) = self.shared.lock().segments.last() {
                segment::write_index(&self.dir, info)?;
            }
        }
        let path = segment::segment_path(&self.dir, first_seq);
        let file = segment::create_private(&path, false)
            .map_err(io_err("creating a new segment", &path))?;
        self.active = Some(Active {
            file,
            path,
            first_seq,
            written: 0,
            pending_index: Vec::new(),
            changes: 0,
            last_commit_time: None,
        });
        self.roll_pending = false;
        self.dir_dirty = true;
        self.shared
            .lock()
            .segments
            .push(SegmentInfo::new(first_seq));
        Ok(())
    }

    /// Writes everything buffered and fsyncs it. Returns the last durable commit: its
    /// `end_lsn` may now be confirmed to PostgreSQL. Call it once per batch of appends.
    pub fn sync(&mut self) -> Result<Option<CommitInfo>, LogError> {
        self.guard(|log| log.sync_inner())
    }

    fn sync_inner(&mut self) -> Result<Option<CommitInfo>, LogError> {
        self.write_buf()?;
        let Some(a) = self.active.as_mut() else {
            return Ok(self.last_commit);
        };
        failpoint::hit(failpoint::LOG_AFTER_WRITE_BEFORE_FSYNC)
            .and_then(|()| a.file.sync_data())
            .map_err(io_err("syncing the active segment", &a.path))?;
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        // Publish: everything written is durable; readers may go up to the last commit.
        let durable_seq = self.last_commit.map_or(0, |c| c.last_seq);
        {
            let mut st = self.shared.lock();
            st.durable = self.last_commit;
            if let Some(seg) = st.segments.last_mut() {
                debug_assert_eq!(seg.first_seq, a.first_seq);
                seg.len = a.written;
                seg.index.append(&mut a.pending_index);
                if durable_seq >= seg.first_seq {
                    seg.last_seq = durable_seq;
                    seg.last_commit_time = a.last_commit_time;
                }
            }
        }
        self.shared.changed.notify_all();
        self.shared.watch.send_replace(durable_seq);
        Ok(self.last_commit)
    }

    /// Oldest seq in the log.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.readers().oldest_seq()
    }

    /// Segment files in the log, the active one included.
    pub fn segment_count(&self) -> usize {
        self.shared.lock().segments.len()
    }

    /// Bytes of the segment files, as of the last sync.
    pub fn size_bytes(&self) -> u64 {
        self.shared.lock().segments.iter().map(|s| s.len).sum()
    }

    /// The last durable commit.
    pub fn last_durable(&self) -> Option<CommitInfo> {
        self.shared.lock().durable
    }

    /// The last durable seq, for async readers (`changed().await`).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.watch.subscribe()
    }

    /// A reader of this log's durable records from `from_seq`, which can wait for more.
    pub fn reader(&self, from_seq: u64) -> Result<LogReader, LogError> {
        LogReader::live(self.shared.clone(), from_seq)
    }

    /// Opens live readers from other threads while this writer lives on its own.
    pub fn readers(&self) -> Readers {
        Readers(self.shared.clone())
    }

    /// Deletes whole sealed segments per `policy`; see [`Retention`]. `keep_from_seq` protects
    /// segments holding that seq or later from age-based deletion (not from `max_bytes`). A
    /// deletion that fails leaves the segments it did not delete listed (and read) as before;
    /// the next call tries again.
    pub fn apply_retention(
        &mut self,
        policy: &Retention,
        keep_from_seq: Option<u64>,
    ) -> Result<RetentionReport, LogError> {
        self.apply_retention_at(policy, keep_from_seq, now())
    }

    /// [`ChangeLog::apply_retention`] with an explicit "now" (tests).
    pub fn apply_retention_at(
        &mut self,
        policy: &Retention,
        keep_from_seq: Option<u64>,
        now: Timestamp,
    ) -> Result<RetentionReport, LogError> {
        self.check()?;
        let cutoff = policy.max_age.map(|age| {
            Timestamp::from_pg_epoch_micros(
                now.pg_epoch_micros()
                    .saturating_sub(i64::try_from(age.as_micros()).unwrap_or(i64::MAX)),
            )
        });
        let mut report = RetentionReport::default();
        let victims: Vec<SegmentInfo> = {
            let mut st = self.shared.lock();
            let mut total: u64 = st.segments.iter().map(|s| s.len).sum();
            // The active (last) segment is never deleted.
            let sealed = st.segments.len().saturating_sub(1);
            let mut n = 0;
            while n < sealed {
                let s = &st.segments[n];
                let needed = keep_from_seq.is_some_and(|k| s.last_seq >= k);
                let too_big = policy.max_bytes.is_some_and(|m| total > m);
                let too_old =
                    cutoff.is_some_and(|c| s.last_commit_time.is_some_and(|t| t < c)) && !needed;
                if !(too_big || too_old) {
                    break;
                }
                report.dropped_needed |= needed;
                total -= s.len;
                n += 1;
            }
            st.segments.drain(..n).collect()
        };
        for (i, s) in victims.iter().enumerate() {
            let path = segment::segment_path(&self.dir, s.first_seq);
            let _ = fs::remove_file(segment::index_path(&self.dir, s.first_seq));
            let removed = fs::remove_file(&path).map(|()| {
                report.deleted_bytes += s.len;
                report.deleted_segments.push(path.clone());
            });
            let kept = if removed.is_ok() { i + 1 } else { i };
            if let Err(e) = removed.and_then(|()| failpoint::hit(failpoint::LOG_DURING_RETENTION)) {
                // The segments not deleted are still on disk and whole: list them again, so
                // readers and the next retention see what is there.
                self.shared
                    .lock()
                    .segments
                    .splice(0..0, victims[kept..].iter().cloned());
                return Err(io_err("deleting a segment for retention", &path)(e));
            }
        }
        if !victims.is_empty() {
            sync_dir(&self.dir)?;
        }
        report.oldest_seq = self.oldest_seq();
        Ok(report)
    }

    /// The active segment and how many of its bytes are fsync'd (crash tests).
    #[cfg(test)]
    fn durable_tail(&self) -> Option<(PathBuf, u64)> {
        let st = self.shared.lock();
        let a = self.active.as_ref()?;
        st.segments
            .last()
            .filter(|s| s.first_seq == a.first_seq)
            .map(|s| (a.path.clone(), s.len))
    }
}

impl Drop for ChangeLog {
    fn drop(&mut self) {
        // Unsynced appends are dropped on purpose: only `sync` makes anything durable.
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}
