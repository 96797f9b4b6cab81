//! Segment files: naming, sequential frame reading, scanning (recovery and verification) and
//! the sealed-segment index file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use prost::Message;

use super::frame::{self, FrameError, HEADER_LEN};
use super::record::{proto, LogRecord, RecordDecoder, RecordError};
use super::{CommitInfo, LogError};
use crate::value::Timestamp;

pub const SEGMENT_EXT: &str = "seg";
pub const INDEX_EXT: &str = "idx";

pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.{SEGMENT_EXT}"))
}

pub fn index_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.{INDEX_EXT}"))
}

/// What the log knows about one segment.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub first_seq: u64,
    /// Seq of the last change durable in the segment (`first_seq - 1` while it has none).
    pub last_seq: u64,
    /// Durable size in bytes.
    pub len: u64,
    /// Commit time of the last durable commit in the segment.
    pub last_commit_time: Option<Timestamp>,
    /// Sparse index: `(seq, offset)` of every K-th change, ascending, first change included.
    pub index: Vec<(u64, u64)>,
}

impl SegmentInfo {
    pub fn new(first_seq: u64) -> Self {
        SegmentInfo {
            first_seq,
            last_seq: first_seq.saturating_sub(1),
            len: 0,
            last_commit_time: None,
            index: Vec::new(),
        }
    }

    /// Byte offset from which to scan for `seq`: the nearest indexed change at or before it.
    pub fn seek_offset(&self, seq: u64) -> u64 {
        match self.index.partition_point(|&(s, _)| s <= seq) {
            0 => 0,
            i => self.index[i - 1].1,
        }
    }
}

/// The segment files of `dir` (by first seq, ascending). Other files are ignored.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let io = |source| LogError::Io {
        action: "listing the change log directory",
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(seq) = stem.parse() {
                out.push(seq);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Why reading the next frame stopped.
#[derive(Debug)]
pub enum ReadStop {
    /// Clean end of file at a frame boundary.
    End,
    /// The file ends inside the frame at this offset.
    Torn {
        offset: u64,
    },
    /// The frame at this offset fails its CRC; `last` tells whether it ends exactly at EOF.
    Crc {
        offset: u64,
        last: bool,
        error: FrameError,
    },
    Io(io::Error),
}

/// Sequential reader of the frames of one segment file.
pub struct FrameReader {
    file: BufReader<File>,
    pub offset: u64,
    file_len: u64,
}

impl FrameReader {
    pub fn open(path: &Path, offset: u64) -> io::Result<Self> {
        let mut file = File::open(path)?;
        let file_len = file.metadata()?.len();
        io::Seek::seek(&mut file, io::SeekFrom::Start(offset))?;
        Ok(FrameReader {
            file: BufReader::with_capacity(256 * 1024, file),
            offset,
            file_len,
        })
    }

    /// The next frame's payload and its offset.
    pub fn next_frame(&mut self) -> Result<(u64, Bytes), ReadStop> {
        let mut header = [0u8; HEADER_LEN];
        match read_full(&mut self.file, &mut header) {
            Ok(0) => return Err(ReadStop::End),
            Ok(n) if n < HEADER_LEN => {
                return Err(ReadStop::Torn {
                    offset: self.offset,
                })
            }
            Ok(_) => {}
            Err(e) => return Err(ReadStop::Io(e)),
        }
        let (len, stored) = frame::decode_header(&header);
        // The file may still grow (a live segment); refresh the length before judging.
        let end = self.offset + (HEADER_LEN + len) as u64;
        if end > self.file_len {
            if let Ok(m) = self.file.get_ref().metadata() {
                self.file_len = m.len();
            }
            if end > self.file_len {
                return Err(ReadStop::Torn {
                    offset: self.offset,
                });
            }
        }
        let mut payload = BytesMut::zeroed(len);
        match read_full(&mut self.file, &mut payload) {
            Ok(n) if n == len => {}
            Ok(_) => {
                return Err(ReadStop::Torn {
                    offset: self.offset,
                })
            }
            Err(e) => return Err(ReadStop::Io(e)),
        }
        let actual = crc32c::crc32c(&payload);
        if actual != stored {
            return Err(ReadStop::Crc {
                offset: self.offset,
                last: end == self.file_len,
                error: FrameError::Crc {
                    stored,
                    actual,
                    len,
                },
            });
        }
        let at = self.offset;
        self.offset = end;
        Ok((at, payload.freeze()))
    }
}

/// Reads until `buf` is full or EOF; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The result of scanning one segment from its start.
#[derive(Debug)]
pub struct Scan {
    /// What is known about the committed prefix of the segment.
    pub info: SegmentInfo,
    /// The last commit in the segment.
    pub last_commit: Option<CommitInfo>,
    /// Records (changes and commits) in the committed prefix.
    pub records: u64,
    pub commits: u64,
    /// Bytes after the committed prefix: a torn frame and/or a transaction without its commit.
    pub tail_bytes: u64,
    /// In the last segment: a frame inside the file that fails its CRC or does not decode,
    /// where the scan stopped (everything from the last commit before it is in `tail_bytes`).
    /// Whether cutting it is safe depends on what was confirmed (see `ChangeLog::open_checked`).
    pub tail_damage: Option<TailDamage>,
}

/// Damage in the last segment past its last intact commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path} is damaged at byte offset {offset}: {problem}")]
pub struct TailDamage {
    pub path: PathBuf,
    pub offset: u64,
    pub problem: String,
}

/// Scans the segment starting at `first_seq`, checking every frame's CRC, that every record
/// decodes, that seqs are dense from `first_seq`, and that every commit closes a non-empty
/// transaction. With `allow_torn_tail` (the last segment), a torn or CRC-failing final frame
/// and a trailing transaction without its commit are reported as `tail_bytes`, and a frame
/// inside the file that fails its CRC or does not decode as `tail_damage` (after a failed
/// fsync the kernel may have lost any page written since the last good one); otherwise they
/// are errors. Anything else wrong is an error naming the file and offset.
pub fn scan(
    dir: &Path,
    first_seq: u64,
    index_every: u32,
    allow_torn_tail: bool,
) -> Result<Scan, LogError> {
    let path = segment_path(dir, first_seq);
    let mut reader = FrameReader::open(&path, 0).map_err(|source| LogError::Io {
        action: "opening a segment to scan it",
        path: path.clone(),
        source,
    })?;
    let corrupt = |offset, problem| LogError::Corrupt {
        path: path.clone(),
        offset,
        problem,
    };
    let mut info = SegmentInfo::new(first_seq);
    let mut last_commit = None;
    let (mut records, mut commits) = (0u64, 0u64);
    let mut committed_len = 0u64;
    let mut committed_records = 0u64;
    let mut next_seq = first_seq;
    let mut tx_changes = 0u64;
    let mut tx_xid = 0u32;
    let mut index = Vec::new();
    let every = u64::from(index_every.max(1));
    let mut decoder = RecordDecoder::default();
    let mut tail_damage = None;
    loop {
        let (offset, payload) = match reader.next_frame() {
            Ok(f) => f,
            Err(ReadStop::End) => break,
            Err(ReadStop::Torn { offset }) if allow_torn_tail => {
                let _ = offset;
                break;
            }
            Err(ReadStop::Crc { last: true, .. }) if allow_torn_tail => break,
            Err(ReadStop::Crc { offset, error, .. }) if allow_torn_tail => {
                tail_damage = Some(TailDamage {
                    path: path.clone(),
                    offset,
                    problem: error.to_string(),
                });
                break;
            }
            Err(ReadStop::Torn { offset }) => {
                return Err(corrupt(offset, Problem::Torn));
            }
            Err(ReadStop::Crc { offset, error, .. }) => {
                return Err(corrupt(offset, Problem::Frame(error)));
            }
            Err(ReadStop::Io(source)) => {
                return Err(LogError::Io {
                    action: "reading a segment",
                    path: path.clone(),
                    source,
                })
            }
        };
        let record = match decoder.decode(payload) {
            Ok(r) => r,
            Err(e) if allow_torn_tail => {
                tail_damage = Some(TailDamage {
                    path: path.clone(),
                    offset,
                    problem: Problem::Record(e).to_string(),
                });
                break;
            }
            Err(e) => return Err(corrupt(offset, Problem::Record(e))),
        };
        records += 1;
        match record {
            LogRecord::Change(c) => {
                if c.seq != next_seq {
                    return Err(corrupt(
                        offset,
                        Problem::Sequence(format!(
                            "change seq {} where seq {next_seq} was expected",
                            c.seq
                        )),
                    ));
                }
                if tx_changes > 0 && c.change.xid != tx_xid {
                    return Err(corrupt(
                        offset,
                        Problem::Sequence(format!(
                            "change {} of xid {} inside transaction {tx_xid} before its commit",
                            c.seq, c.change.xid
                        )),
                    ));
                }
                // Only records that describe their relation can start a reader (invariant 7);
                // with the writer's cadence that is every index point anyway.
                if (c.seq - first_seq).is_multiple_of(every) && decoder.described_relation() {
                    index.push((c.seq, offset));
                }
                tx_xid = c.change.xid;
                tx_changes += 1;
                next_seq += 1;
            }
            LogRecord::Commit(c) => {
                if tx_changes == 0 || c.last_seq != next_seq - 1 || c.xid != tx_xid {
                    return Err(corrupt(
                        offset,
                        Problem::Sequence(format!(
                            "commit of xid {} with last seq {} follows {tx_changes} changes of xid {tx_xid} ending at seq {}",
                            c.xid,
                            c.last_seq,
                            next_seq - 1
                        )),
                    ));
                }
                commits += 1;
                tx_changes = 0;
                committed_len = reader.offset;
                committed_records = records;
                info.last_seq = c.last_seq;
                info.last_commit_time = Some(c.commit_time);
                last_commit = Some(c);
            }
        }
    }
    // The file may have grown while we read it (a writer in another process): measure the tail
    // against what the reader saw last.
    let tail_bytes = reader.file_len.saturating_sub(committed_len);
    if tail_bytes > 0 && !allow_torn_tail {
        return Err(corrupt(
            committed_len,
            Problem::Sequence("a sealed segment ends inside a transaction".into()),
        ));
    }
    index.retain(|&(s, _)| s <= info.last_seq);
    info.index = index;
    info.len = committed_len;
    Ok(Scan {
        info,
        last_commit,
        records: committed_records,
        commits,
        tail_bytes,
        tail_damage,
    })
}

/// What is wrong at a given place in a segment.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("the file ends inside a record")]
    Torn,
    #[error(transparent)]
    Frame(FrameError),
    #[error("the record does not decode: {0}")]
    Record(RecordError),
    #[error("{0}")]
    Sequence(String),
    /// A frame that fails its check, found where a torn tail was allowed.
    #[error("{0}")]
    Damaged(String),
}

/// Writes the index file of a sealed segment (temporary file, fsync, rename). The caller
/// fsyncs the directory.
pub fn write_index(dir: &Path, info: &SegmentInfo) -> Result<(), LogError> {
    let msg = proto::SegmentIndex {
        first_seq: info.first_seq,
        last_seq: info.last_seq,
        segment_len: info.len,
        last_commit_time: info
            .last_commit_time
            .map_or(i64::MIN, |t| t.pg_epoch_micros()),
        seqs: info.index.iter().map(|e| e.0).collect(),
        offsets: info.index.iter().map(|e| e.1).collect(),
    };
    let mut out = Vec::new();
    frame::encode_frame(&msg.encode_to_vec(), &mut out);
    // An index only saves a scan (a missing one is rebuilt), so the directory is not synced.
    replace_file(dir, &index_path(dir, info.first_seq), &out, false, None)
}

/// Replaces `path` (in `dir`) with `bytes` as a whole: a temporary file, fsync, rename, and
/// with `sync_dir` an fsync of the directory, so a crash leaves the old file or the new one.
/// `before_rename`: the failpoint between the temporary file's fsync and the rename.
pub fn replace_file(
    dir: &Path,
    path: &Path,
    bytes: &[u8],
    sync_dir: bool,
    before_rename: Option<&'static str>,
) -> Result<(), LogError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let io = |action, p: &Path| {
        let p = p.to_owned();
        move |source| LogError::Io {
            action,
            path: p,
            source,
        }
    };
    let mut f = create_private(&tmp, true).map_err(io("creating a file", &tmp))?;
    f.write_all(bytes).map_err(io("writing a file", &tmp))?;
    f.sync_data().map_err(io("syncing a file", &tmp))?;
    before_rename
        .map_or(Ok(()), crate::failpoint::hit)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(io("renaming a file into place", path))?;
    if sync_dir {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the change log directory", dir))?;
    }
    Ok(())
}

/// Opens `path` for writing, created readable by its owner only (row values live here).
/// `truncate` replaces an existing file; otherwise the file must not exist yet.
pub fn create_private(path: &Path, truncate: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = OpenOptions::new();
    o.write(true).mode(0o600);
    if truncate {
        o.create(true).truncate(true);
    } else {
        o.create_new(true).append(true);
    }
    o.open(path)
}

/// Reads the index file of the sealed segment `first_seq`, if there is a valid one that
/// describes a segment of `segment_len` bytes.
pub fn read_index(dir: &Path, first_seq: u64, segment_len: u64) -> Option<SegmentInfo> {
    let bytes = fs::read(index_path(dir, first_seq)).ok()?;
    let frame::Frame::Complete { payload, len } = frame::decode_frame(&bytes).ok()? else {
        return None;
    };
    if len != bytes.len() {
        return None;
    }
    let m = proto::SegmentIndex::decode(payload).ok()?;
    let sorted = m.seqs.windows(2).all(|w| w[0] < w[1])
        && m.offsets.windows(2).all(|w| w[0] < w[1])
        && m.offsets.iter().all(|&o| o < segment_len);
    if m.first_seq != first_seq
        || m.segment_len != segment_len
        || m.last_seq < first_seq
        || m.seqs.len() != m.offsets.len()
        || m.seqs.first() != Some(&first_seq)
        || !sorted
    {
        return None;
    }
    Some(SegmentInfo {
        first_seq,
        last_seq: m.last_seq,
        len: segment_len,
        last_commit_time: (m.last_commit_time != i64::MIN)
            .then(|| Timestamp::from_pg_epoch_micros(m.last_commit_time)),
        index: m.seqs.into_iter().zip(m.offsets).collect(),
    })
}
