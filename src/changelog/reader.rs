//! Reading the log: [`LogReader`] from any retained seq up to the durable end, and [`verify`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::record::{LogRecord, RecordDecoder};
use super::segment::{self, FrameReader, Problem, ReadStop};
use super::{load, LogError, Shared, DEFAULT_INDEX_EVERY};

struct Position {
    first_seq: u64,
    path: PathBuf,
    frames: FrameReader,
}

/// Reads durable records in log order, starting at the change `from_seq`.
///
/// Returns changes and the commits that close them; commits of transactions that ended before
/// `from_seq` are skipped. A reader never returns a record beyond the durable end (the last
/// durable commit), so it never sees a transaction that recovery could remove.
pub struct LogReader {
    shared: Arc<Shared>,
    next_seq: u64,
    /// A change was returned and its transaction's commit not yet.
    in_tx: bool,
    pos: Option<Position>,
    decoder: RecordDecoder,
}

impl LogReader {
    /// The numbering the log's seqs belong to (`None` for an unbound log).
    pub fn lineage(&self) -> Option<crate::binding::Lineage> {
        self.shared.lock().lineage
    }

    /// A reader of the log in `dir` as it is on disk now (no writer in this process: the
    /// durable end is the last commit found). To follow a live log use
    /// [`super::ChangeLog::reader`].
    pub fn open(dir: &Path, from_seq: u64) -> Result<LogReader, LogError> {
        let (mut state, _, damage) = load(dir, DEFAULT_INDEX_EVERY, false)?;
        if let Some(d) = damage {
            return Err(d.into());
        }
        state.closed = true;
        state.lineage = super::read_meta(dir)?.map(|m| m.lineage);
        LogReader::live(Shared::new(dir.to_owned(), state), from_seq)
    }

    pub(super) fn live(shared: Arc<Shared>, from_seq: u64) -> Result<LogReader, LogError> {
        let reader = LogReader {
            shared,
            next_seq: from_seq.max(1),
            in_tx: false,
            pos: None,
            decoder: RecordDecoder::default(),
        };
        reader.check_retained()?;
        Ok(reader)
    }

    /// Seq of the next change this reader will return.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last durable seq of the log.
    pub fn durable_seq(&self) -> u64 {
        self.shared.lock().durable.map_or(0, |c| c.last_seq)
    }

    fn check_retained(&self) -> Result<(), LogError> {
        let st = self.shared.lock();
        let oldest = st
            .segments
            .iter()
            .find(|s| s.last_seq >= s.first_seq)
            .map(|s| s.first_seq);
        match oldest {
            Some(oldest) if self.next_seq < oldest => Err(LogError::SeqTooOld {
                requested: self.next_seq,
                oldest,
            }),
            _ => Ok(()),
        }
    }

    /// Waits until there is something new to read (or the writer is gone, or `timeout`).
    /// Returns whether there is.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let ready = |st: &super::State| {
            self.in_tx || st.durable.is_some_and(|c| c.last_seq >= self.next_seq)
        };
        let mut st = self.shared.lock();
        loop {
            if ready(&st) {
                return true;
            }
            let now = Instant::now();
            if st.closed || now >= deadline {
                return false;
            }
            st = match self.shared.changed.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// The next durable record, or `None` at the durable end (call again later, or
    /// [`LogReader::wait`] first).
    pub fn next_record(&mut self) -> Result<Option<LogRecord>, LogError> {
        loop {
            let durable = self.durable_seq();
            if !self.in_tx && self.next_seq > durable {
                return Ok(None);
            }
            let pos = match &mut self.pos {
                Some(p) => p,
                None => {
                    let p = self.position(None)?;
                    self.pos.insert(p)
                }
            };
            let corrupt = |path: &Path, offset, problem| LogError::Corrupt {
                path: path.to_owned(),
                offset,
                problem,
            };
            match pos.frames.next_frame() {
                Ok((offset, payload)) => {
                    let record = self
                        .decoder
                        .decode(payload)
                        .map_err(|e| corrupt(&pos.path, offset, Problem::Record(e)))?;
                    match &record {
                        LogRecord::Change(c) if c.seq < self.next_seq => {}
                        LogRecord::Change(c) if c.seq == self.next_seq => {
                            self.next_seq += 1;
                            self.in_tx = true;
                            return Ok(Some(record));
                        }
                        LogRecord::Change(c) => {
                            return Err(corrupt(
                                &pos.path,
                                offset,
                                Problem::Sequence(format!(
                                    "change seq {} where seq {} was expected",
                                    c.seq, self.next_seq
                                )),
                            ))
                        }
                        LogRecord::Commit(_) if !self.in_tx => {}
                        LogRecord::Commit(_) => {
                            self.in_tx = false;
                            return Ok(Some(record));
                        }
                    }
                }
                Err(ReadStop::End) if !self.in_tx => {
                    // Segment done: the next change is at the start of the next one.
                    let done = pos.first_seq;
                    let next = self.position(Some(done))?;
                    self.pos = Some(next);
                }
                Err(ReadStop::End) => {
                    let offset = pos.frames.offset;
                    return Err(corrupt(&pos.path, offset, Problem::Torn));
                }
                Err(ReadStop::Torn { offset }) => {
                    return Err(corrupt(&pos.path, offset, Problem::Torn))
                }
                Err(ReadStop::Crc { offset, error, .. }) => {
                    return Err(corrupt(&pos.path, offset, Problem::Frame(error)))
                }
                Err(ReadStop::Io(source)) => {
                    return Err(LogError::Io {
                        action: "reading a segment",
                        path: pos.path.clone(),
                        source,
                    })
                }
            }
        }
    }

    /// Opens the segment holding `next_seq` at the nearest indexed offset. `finished` is the
    /// segment just read to its end, which must not be chosen again.
    fn position(&self, finished: Option<u64>) -> Result<Position, LogError> {
        self.check_retained()?;
        let (first_seq, offset) = {
            let st = self.shared.lock();
            let i = st
                .segments
                .partition_point(|s| s.first_seq <= self.next_seq);
            let seg = i.checked_sub(1).and_then(|i| st.segments.get(i));
            match seg {
                Some(s) if Some(s.first_seq) != finished => {
                    (s.first_seq, s.seek_offset(self.next_seq))
                }
                _ => {
                    let path = finished
                        .map(|f| segment::segment_path(&self.shared.dir, f))
                        .unwrap_or_else(|| self.shared.dir.clone());
                    return Err(LogError::Corrupt {
                        path,
                        offset: 0,
                        problem: Problem::Sequence(format!(
                            "no segment holds durable seq {}",
                            self.next_seq
                        )),
                    });
                }
            }
        };
        let path = segment::segment_path(&self.shared.dir, first_seq);
        let frames = FrameReader::open(&path, offset).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                // Retention removed it between the check and the open.
                if let Err(e) = self.check_retained() {
                    return e;
                }
            }
            LogError::Io {
                action: "opening a segment to read it",
                path: path.clone(),
                source,
            }
        })?;
        Ok(Position {
            first_seq,
            path,
            frames,
        })
    }
}

/// What [`verify`] checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: usize,
    pub records: u64,
    pub changes: u64,
    pub commits: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Bytes at the end of the last segment that opening the log would truncate (a torn
    /// frame or a transaction without its commit, left by a crash).
    pub tail_bytes: u64,
}

/// Checks every record of every segment: CRC, decodability, dense seqs within and across
/// segments, commits closing their changes. Returns the first problem with file and offset.
pub fn verify(dir: &Path) -> Result<VerifyReport, LogError> {
    let firsts = segment::list_segments(dir)?;
    let mut report = VerifyReport::default();
    let mut prev_last: Option<u64> = None;
    for (i, &first) in firsts.iter().enumerate() {
        let is_last = i + 1 == firsts.len();
        if let Some(prev) = prev_last {
            if prev + 1 != first {
                return Err(LogError::Gap {
                    path: segment::segment_path(dir, first),
                    expected: prev + 1,
                    found: first,
                });
            }
        }
        let scan = segment::scan(dir, first, DEFAULT_INDEX_EVERY, is_last)?;
        if let Some(d) = scan.tail_damage {
            // Damage is damage here; whether a restart may cut it is start-up's question.
            return Err(d.into());
        }
        report.segments += 1;
        report.records += scan.records;
        report.commits += scan.commits;
        report.tail_bytes += scan.tail_bytes;
        if scan.info.last_seq >= first {
            report.changes += scan.info.last_seq - first + 1;
            report.first_seq.get_or_insert(first);
            report.last_seq = Some(scan.info.last_seq);
            prev_last = Some(scan.info.last_seq);
        }
    }
    Ok(report)
}
