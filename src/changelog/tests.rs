//! Tests of the change log: round trips, recovery, rolling, readers, retention, and a
//! model-based property test of crash safety.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::change::{
    Column, Datum, OldTuple, Op, Relation, ReplicaIdentity, RowChange, SequencedChange, Tuple,
};

fn relation(n: u32) -> Arc<Relation> {
    let col = |name: &str, type_oid, is_key| Column {
        name: name.into(),
        type_oid,
        type_modifier: -1,
        is_key,
    };
    Arc::new(Relation {
        oid: 16384 + n,
        schema: "public".into(),
        name: format!("t{n}"),
        replica_identity: if n.is_multiple_of(2) {
            ReplicaIdentity::Default
        } else {
            ReplicaIdentity::Full
        },
        columns: vec![
            col("id", 23, true),
            col("body", 25, false),
            col("note", 25, false),
        ],
    })
}

fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// A change whose content is a deterministic function of `seq`, covering every op and every
/// value state.
fn change(seq: u64, xid: u32) -> SequencedChange {
    let id = text(&seq.to_string());
    let op = match seq % 6 {
        0 => Op::Insert {
            new: Tuple(vec![id, text("hello"), Datum::Null]),
        },
        1 => Op::Update {
            old: None,
            new: Tuple(vec![id, text("x"), Datum::UnchangedToast]),
        },
        2 => Op::Update {
            old: Some(OldTuple::Key(Tuple(vec![
                id.clone(),
                Datum::Null,
                Datum::Null,
            ]))),
            new: Tuple(vec![id, text(""), text("\u{e9}\n")]),
        },
        3 => Op::Delete {
            old: OldTuple::Full(Tuple(vec![id, text("gone"), Datum::Null])),
        },
        4 => Op::Delete {
            old: OldTuple::Key(Tuple(vec![id, Datum::Null, Datum::Null])),
        },
        _ => Op::Truncate {
            cascade: seq % 4 == 1,
            restart_identity: true,
        },
    };
    SequencedChange {
        seq,
        change: RowChange {
            lsn: Lsn(0x1000 + seq * 16),
            xid,
            commit_time: Timestamp::from_pg_epoch_micros(1_000_000 * xid as i64),
            relation: relation((seq / 5 % 2) as u32),
            op,
        },
    }
}

fn commit(xid: u32, last_seq: u64) -> CommitInfo {
    CommitInfo {
        xid,
        commit_lsn: Lsn(0x1000 + last_seq * 16 + 8),
        end_lsn: Lsn(0x1000 + last_seq * 16 + 9),
        commit_time: Timestamp::from_pg_epoch_micros(1_000_000 * xid as i64),
        last_seq,
    }
}

/// Appends a committed transaction of `k` changes after `last_seq`; returns its records.
fn append_tx(log: &mut ChangeLog, last_seq: u64, xid: u32, k: u64) -> Vec<LogRecord> {
    let mut out = Vec::new();
    for seq in last_seq + 1..=last_seq + k {
        let c = change(seq, xid);
        log.append_change(&c).unwrap();
        out.push(LogRecord::Change(c));
    }
    let c = commit(xid, last_seq + k);
    log.append_commit(&c).unwrap();
    out.push(LogRecord::Commit(c));
    out
}

fn read_all(reader: &mut LogReader) -> Vec<LogRecord> {
    let mut out = Vec::new();
    while let Some(r) = reader.next_record().unwrap() {
        out.push(r);
    }
    out
}

/// The records of `all` from the change `from` on (commits of earlier transactions skipped).
fn from_seq(all: &[LogRecord], from: u64) -> Vec<LogRecord> {
    match all
        .iter()
        .position(|r| matches!(r, LogRecord::Change(c) if c.seq >= from))
    {
        Some(i) => all[i..].to_vec(),
        None => Vec::new(),
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    segment::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|s| segment::segment_path(dir, s))
        .collect()
}

fn opts(segment_bytes: u64, index_every: u32) -> LogOptions {
    LogOptions {
        segment_bytes,
        index_every,
        ..LogOptions::default()
    }
}

/// Writes transactions of `sizes` changes and syncs; returns all records.
fn write_log(dir: &Path, o: LogOptions, sizes: &[u64]) -> Vec<LogRecord> {
    let (mut log, rec) = ChangeLog::open(dir, o).unwrap();
    let mut last = rec.last_seq;
    let mut all = Vec::new();
    for (i, &k) in sizes.iter().enumerate() {
        all.extend(append_tx(&mut log, last, 100 + i as u32, k));
        last += k;
    }
    let durable = log.sync().unwrap();
    assert_eq!(durable.map(|c| c.last_seq), Some(last));
    all
}

#[test]
fn append_sync_reopen_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let all = write_log(dir.path(), LogOptions::default(), &[1, 6, 3, 12]);
    let (log, rec) = ChangeLog::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(rec.last_seq, 22);
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(rec.last_commit, Some(commit(103, 22)));
    assert_eq!(log.oldest_seq(), Some(1));
    assert_eq!(log.last_durable(), Some(commit(103, 22)));
    let read = read_all(&mut LogReader::open(dir.path(), 1).unwrap());
    assert_eq!(read, all);
    // Consecutive changes of one table share their relation.
    let rels: Vec<_> = read
        .iter()
        .filter_map(|r| match r {
            LogRecord::Change(c) => Some(c.change.relation.clone()),
            _ => None,
        })
        .collect();
    assert!(Arc::ptr_eq(&rels[1], &rels[2]));
    assert_eq!(verify(dir.path()).unwrap().changes, 22);
}

#[test]
fn large_records_go_around_the_write_buffer_and_read_back_in_order() {
    // Index points every 2 changes; a 4 KiB write buffer: the 20 KiB record (nothing spliced)
    // and the records with values of SPLICE_AT bytes and more are written straight to the
    // file, between small ones still buffered.
    let o = LogOptions {
        write_buffer_bytes: 4096,
        ..opts(DEFAULT_SEGMENT_BYTES, 2)
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = ChangeLog::open(dir.path(), o.clone()).unwrap();
    let value = |len: usize, seed: u8| {
        Datum::Text(Bytes::from(
            (0..len)
                .map(|i| b'a' + (i as u8 ^ seed) % 26)
                .collect::<Vec<u8>>(),
        ))
    };
    let huge = record::SPLICE_AT * 3 + 5;
    let rows = [
        vec![text("1"), text("small"), Datum::Null],
        vec![text("2"), value(20 * 1024, 1), Datum::Null],
        vec![text("3"), value(huge, 2), value(huge + 1, 3)],
        vec![text("4"), text("between"), value(record::SPLICE_AT, 4)],
        vec![text("5"), Datum::Null, text("last")],
    ];
    let mut all = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let mut c = change(seq, 7);
        c.change.op = Op::Insert { new: Tuple(row) };
        log.append_change(&c).unwrap();
        all.push(LogRecord::Change(c));
    }
    log.append_commit(&commit(7, 5)).unwrap();
    all.push(LogRecord::Commit(commit(7, 5)));
    assert!(log.scratch.bytes.capacity() <= o.write_buffer_bytes);
    assert!(log.buf.capacity() <= 2 * o.write_buffer_bytes);
    log.sync().unwrap();
    for from in 1..=5 {
        let read = read_all(&mut log.reader(from).unwrap());
        assert_eq!(read, from_seq(&all, from), "from seq {from}");
    }
    drop(log);
    let (_, rec) = ChangeLog::open(dir.path(), o).unwrap();
    assert_eq!((rec.last_seq, rec.truncated_bytes), (5, 0));
    assert_eq!(verify(dir.path()).unwrap().changes, 5);
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = ChangeLog::open(dir.path(), LogOptions::default()).unwrap();
    let err = ChangeLog::open(dir.path(), LogOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, LogError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("another pgfanout process"),
        "{err}"
    );
    // Readers take no lock.
    LogReader::open(dir.path(), 1).unwrap();
    drop(first);
    ChangeLog::open(dir.path(), LogOptions::default()).unwrap();
}

#[test]
fn appends_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = ChangeLog::open(dir.path(), LogOptions::default()).unwrap();
    log.append_change(&change(5, 1)).unwrap();
    assert!(matches!(
        log.append_change(&change(7, 1)),
        Err(LogError::NotDense {
            expected: 6,
            got: 7
        })
    ));
    assert!(matches!(
        log.append_change(&change(6, 2)),
        Err(LogError::BadAppend { .. })
    ));
    assert!(matches!(
        log.append_commit(&commit(1, 4)),
        Err(LogError::BadAppend { .. })
    ));
    log.append_commit(&commit(1, 5)).unwrap();
    // A transaction without changes is not logged.
    log.append_commit(&commit(2, 5)).unwrap();
    assert_eq!(log.sync().unwrap(), Some(commit(1, 5)));
    assert_eq!(verify(dir.path()).unwrap().commits, 1);
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn a_torn_last_record_recovers_to_the_last_complete_commit() {
    let dir = tempfile::tempdir().unwrap();
    let all = write_log(dir.path(), LogOptions::default(), &[2, 3]);
    let seg = &segments(dir.path())[0];
    let len = fs::metadata(seg).unwrap().len();
    truncate(seg, len - 3);
    assert!(verify(dir.path()).unwrap().tail_bytes > 0);
    let (mut log, rec) = ChangeLog::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(rec.last_commit, Some(commit(100, 2)));
    assert_eq!(rec.last_seq, 2);
    assert!(rec.truncated_bytes > 0);
    // PostgreSQL resends the lost transaction; it gets the same seqs again.
    let again = append_tx(&mut log, 2, 101, 3);
    log.sync().unwrap();
    assert_eq!(again, all[3..]);
    assert_eq!(read_all(&mut log.reader(1).unwrap()), all);
    assert_eq!(verify(dir.path()).unwrap().tail_bytes, 0);
}

#[test]
fn a_trailing_transaction_without_its_commit_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = ChangeLog::open(dir.path(), LogOptions::default()).unwrap();
    let first = append_tx(&mut log, 0, 7, 2);
    log.append_change(&change(3, 8)).unwrap();
    log.append_change(&change(4, 8)).unwrap();
    log.sync().unwrap();
    // A live reader never sees the open transaction.
    assert_eq!(read_all(&mut log.reader(1).unwrap()), first);
    drop(log);
    let (log, rec) = ChangeLog::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(rec.last_seq, 2);
    assert!(rec.truncated_bytes > 0);
    assert_eq!(read_all(&mut log.reader(1).unwrap()), first);
    drop(log);

    // Same when the uncommitted transaction is alone in a fresh segment: the segment goes.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = ChangeLog::open(dir.path(), opts(1, 4)).unwrap();
    let first = append_tx(&mut log, 0, 7, 2);
    log.append_change(&change(3, 8)).unwrap();
    log.sync().unwrap();
    assert_eq!(segments(dir.path()).len(), 2);
    drop(log);
    let (mut log, rec) = ChangeLog::open(dir.path(), opts(1, 4)).unwrap();
    assert_eq!((rec.last_seq, rec.last_commit), (2, Some(commit(7, 2))));
    assert_eq!(segments(dir.path()).len(), 1);
    let second = append_tx(&mut log, 2, 8, 1);
    log.sync().unwrap();
    assert_eq!(segments(dir.path()).len(), 2);
    assert_eq!(
        read_all(&mut log.reader(1).unwrap()),
        [first, second].concat()
    );
}

#[test]
fn a_flipped_bit_in_a_middle_record_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), LogOptions::default(), &[2, 2, 2]);
    let seg = segments(dir.path())[0].clone();
    let mut bytes = fs::read(&seg).unwrap();
    // The second frame starts after the first: flip a bit in its payload.
    let Ok(Frame::Complete { len, .. }) = decode_frame(&bytes) else {
        panic!("first frame")
    };
    bytes[len + 10] ^= 0x04;
    fs::write(&seg, &bytes).unwrap();
    for err in [
        ChangeLog::open(dir.path(), LogOptions::default()).err(),
        verify(dir.path()).err(),
        LogReader::open(dir.path(), 1).err(),
    ] {
        match err {
            Some(LogError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, seg);
                assert_eq!(offset, len as u64);
            }
            other => panic!("{other:?}"),
        }
    }
    let msg = crate::report::Chain(&verify(dir.path()).unwrap_err()).to_string();
    assert!(
        msg.contains(&format!("byte offset {len}")) && msg.contains("CRC"),
        "{msg}"
    );
}

#[test]
fn damage_inside_the_last_segment_is_shown_to_the_check_before_anything_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), LogOptions::default(), &[2, 2, 2]);
    let seg = segments(dir.path())[0].clone();
    let intact = fs::read(&seg).unwrap();
    // Zero a page-sized run in the middle, as a lost page after a failed fsync reads back.
    let mut bytes = intact.clone();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..(middle + 64).min(intact.len() - 1)] {
        *b = 0;
    }
    fs::write(&seg, &bytes).unwrap();
    // A refusing check leaves every byte where it was.
    let err = ChangeLog::open_checked(dir.path(), LogOptions::default(), |found| {
        let damage = found.tail_damage.as_ref().expect("damage reported");
        assert_eq!(damage.path, seg);
        assert!(found.truncated_bytes > 0);
        assert!(found.last_seq < 6, "only commits before the damage count");
        Err(LogError::Poisoned)
    });
    assert!(matches!(err, Err(LogError::Poisoned)));
    assert_eq!(fs::read(&seg).unwrap(), bytes);
    // Plain open refuses it; an accepting check cuts back to the last intact commit.
    assert!(matches!(
        ChangeLog::open(dir.path(), LogOptions::default()),
        Err(LogError::Corrupt { .. })
    ));
    let (log, rec) =
        ChangeLog::open_checked(
            dir.path(),
            LogOptions::default(),
            |_| Ok::<(), LogError>(()),
        )
        .unwrap();
    drop(log);
    assert!(rec.last_seq < 6);
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        intact.len() as u64 - rec.truncated_bytes
    );
    verify(dir.path()).unwrap();
}

#[test]
fn the_log_directory_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("a").join("log");
    let (mut log, _) = ChangeLog::open(&dir, opts(200, 2)).unwrap();
    log.bind(super::LogMeta {
        lineage: crate::binding::Lineage::random(),
        source: crate::binding::SourceId {
            system_identifier: 1,
            timeline: 1,
            database: "d".into(),
            slot: "s".into(),
        },
        position: super::Position::default(),
        base_seq: 0,
    })
    .unwrap();
    append_tx(&mut log, 0, 1, 3);
    append_tx(&mut log, 3, 2, 3);
    log.sync().unwrap();
    drop(log);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&parent.path().join("a")), 0o700);
    let files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.iter().any(|p| p.ends_with("META")), "{files:?}");
    assert!(
        files
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "idx")),
        "{files:?}"
    );
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

#[test]
fn segments_roll_only_at_commit_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    // Tiny segments: every commit reaches the size, so each transaction gets its own
    // segment, however large it is.
    let sizes = [3, 1, 40, 2];
    let all = write_log(dir.path(), opts(1, 4), &sizes);
    let names: Vec<String> = segments(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "00000000000000000001.seg",
            "00000000000000000004.seg",
            "00000000000000000005.seg",
            "00000000000000000045.seg"
        ]
    );
    for (i, p) in segments(dir.path()).iter().enumerate() {
        let first = segment::list_segments(dir.path()).unwrap()[i];
        let scan = segment::scan(dir.path(), first, 4, false).unwrap();
        assert_eq!(scan.info.last_seq - first + 1, sizes[i], "{p:?}");
        assert_eq!(scan.commits, 1);
    }
    // Sealed segments have index files; reopening uses them.
    assert!(segment::index_path(dir.path(), 5).exists());
    assert!(!segment::index_path(dir.path(), 45).exists());
    let report = verify(dir.path()).unwrap();
    assert_eq!(
        (report.segments, report.changes, report.commits),
        (4, 46, 4)
    );
    let (log, _) = ChangeLog::open(dir.path(), opts(200, 4)).unwrap();
    assert_eq!(read_all(&mut log.reader(1).unwrap()), all);
}

#[test]
fn readers_start_anywhere_and_follow_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(2_000, 3);
    let all = write_log(dir.path(), o.clone(), &[5, 17, 4, 30, 1, 9]);
    assert!(segments(dir.path()).len() >= 3);
    let (mut log, rec) = ChangeLog::open(dir.path(), o).unwrap();
    assert_eq!(rec.last_seq, 66);
    for from in [1, 2, 6, 13, 22, 23, 40, 66] {
        assert_eq!(
            read_all(&mut log.reader(from).unwrap()),
            from_seq(&all, from),
            "from {from}"
        );
        assert_eq!(
            read_all(&mut LogReader::open(dir.path(), from).unwrap()),
            from_seq(&all, from),
            "standalone from {from}"
        );
    }
    // The last seq: its change, then its commit.
    assert_eq!(read_all(&mut log.reader(66).unwrap()).len(), 2);

    // Beyond the end: nothing until it exists, and the reader can wait for it.
    let mut tail = log.reader(67).unwrap();
    assert_eq!(tail.next_record().unwrap(), None);
    assert!(!tail.wait(Duration::from_millis(10)));
    let mut rx = log.subscribe();
    let more = append_tx(&mut log, 66, 500, 2);
    assert_eq!(tail.next_record().unwrap(), None, "not durable yet");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        log.sync().unwrap();
        log
    });
    assert!(tail.wait(Duration::from_secs(10)));
    assert_eq!(read_all(&mut tail), more);
    let log = writer.join().unwrap();
    assert_eq!(*rx.borrow_and_update(), 68);
    drop(log);
    assert!(!tail.wait(Duration::from_secs(10)), "writer gone");
}

fn old(dir: &Path, o: LogOptions) -> (ChangeLog, Vec<LogRecord>) {
    // Ten transactions of 5 changes at xids 100.. (commit times 100 s .. 109 s), one segment
    // each.
    let all = write_log(dir, o.clone(), &[5; 10]);
    (ChangeLog::open(dir, o).unwrap().0, all)
}

/// Retention's failpoint is global to the test binary: the tests that apply retention take
/// turns, so an armed point fires only in the test that armed it.
static RETENTION: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn retention_by_age_respects_keep_from_seq() {
    let _turn = RETENTION.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (mut log, all) = old(dir.path(), opts(1, 2));
    assert_eq!(segments(dir.path()).len(), 10);
    let at = |secs: i64| Timestamp::from_pg_epoch_micros(secs * 1_000_000);
    let policy = Retention {
        max_age: Some(Duration::from_secs(5)),
        max_bytes: None,
    };
    // now = 110 s: transactions committed before 105 s are old (xids 100..=104).
    let report = log.apply_retention_at(&policy, Some(13), at(110)).unwrap();
    assert_eq!(report.deleted_segments.len(), 2, "seq 13 is in the third");
    assert!(!report.dropped_needed);
    assert_eq!(report.oldest_seq, Some(11));
    let report = log.apply_retention_at(&policy, None, at(110)).unwrap();
    assert_eq!(report.deleted_segments.len(), 3);
    assert_eq!(log.oldest_seq(), Some(26));
    // Never the active segment, however old.
    let report = log.apply_retention_at(&policy, None, at(1_000)).unwrap();
    assert_eq!(report.oldest_seq, Some(46));
    assert_eq!(segments(dir.path()).len(), 1);

    // Readers of deleted seqs are told to resync; retained seqs still read.
    match log.reader(45) {
        Err(e @ LogError::SeqTooOld { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("oldest retained seq is 46") && msg.contains("resync"));
        }
        other => panic!("{:?}", other.err()),
    }
    assert!(matches!(
        LogReader::open(dir.path(), 1),
        Err(LogError::SeqTooOld {
            requested: 1,
            oldest: 46
        })
    ));
    assert_eq!(read_all(&mut log.reader(46).unwrap()), from_seq(&all, 46));
    drop(log);
    let (log, rec) = ChangeLog::open(dir.path(), opts(1, 2)).unwrap();
    assert_eq!((log.oldest_seq(), rec.last_seq), (Some(46), 50));
    assert_eq!(verify(dir.path()).unwrap().first_seq, Some(46));
}

#[test]
fn retention_by_size_overrides_keep_from_seq_and_says_so() {
    let _turn = RETENTION.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (mut log, all) = old(dir.path(), opts(1, 2));
    let sizes: Vec<u64> = segments(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .collect();
    let newest = |n: usize| sizes[sizes.len() - n..].iter().sum::<u64>();
    let policy = Retention {
        max_age: None,
        max_bytes: Some(newest(7) + 1),
    };
    let report = log.apply_retention(&policy, Some(30)).unwrap();
    assert_eq!(report.deleted_segments.len(), 3);
    assert!(!report.dropped_needed);
    let policy = Retention {
        max_age: None,
        max_bytes: Some(newest(5)),
    };
    let report = log.apply_retention(&policy, Some(16)).unwrap();
    assert_eq!(report.deleted_segments.len(), 2);
    assert!(report.dropped_needed, "seqs 16..=25 were needed");
    assert_eq!(report.oldest_seq, Some(26));
    let total: u64 = segments(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(total, newest(5));
    // Nothing to do: same policy again.
    assert_eq!(log.apply_retention(&policy, None).unwrap().deleted_bytes, 0);
    assert_eq!(read_all(&mut log.reader(26).unwrap()), from_seq(&all, 26));
}

#[cfg(feature = "failpoints")]
#[test]
fn a_retention_that_fails_midway_keeps_listing_what_it_did_not_delete() {
    let _turn = RETENTION.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (mut log, all) = old(dir.path(), opts(1, 2));
    let at = |secs: i64| Timestamp::from_pg_epoch_micros(secs * 1_000_000);
    let policy = Retention {
        max_age: Some(Duration::from_secs(5)),
        max_bytes: None,
    };
    // Five segments are old (seqs 1..=25); the point fires after the first is deleted.
    let point = crate::failpoint::LOG_DURING_RETENTION;
    crate::failpoint::arm(&format!("{point}=1*return(error)")).unwrap();
    let err = log.apply_retention_at(&policy, None, at(110));
    crate::failpoint::arm(&format!("{point}=off")).unwrap();
    let err = err.unwrap_err();
    assert!(
        matches!(&err, LogError::Io { action, .. } if *action == "deleting a segment for retention"),
        "{err:?}"
    );
    assert_eq!(segments(dir.path()).len(), 9, "one segment deleted");
    // The four it did not delete are still listed and read; the next retention deletes them.
    assert_eq!(log.oldest_seq(), Some(6));
    assert_eq!(read_all(&mut log.reader(6).unwrap()), from_seq(&all, 6));
    let report = log.apply_retention_at(&policy, None, at(110)).unwrap();
    assert_eq!(report.deleted_segments.len(), 4);
    assert_eq!(log.oldest_seq(), Some(26));
    assert_eq!(segments(dir.path()).len(), 5);
}

// ---- model-based property test -----------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    /// Append a committed transaction of this many changes.
    Append(u64),
    Sync,
    /// Append `open` changes of a transaction that never commits (synced or not), drop the
    /// log without syncing, cut the active segment's unsynced tail at `cut`/1000 of its
    /// length, and reopen.
    Crash {
        open: u64,
        sync_open: bool,
        cut: u16,
    },
    /// Read everything from the seq at `at`/1000 of the way through the log (+2 past it).
    Read(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u64..6).prop_map(Step::Append),
        2 => Just(Step::Sync),
        1 => (0u64..4, any::<bool>(), 0u16..=1000)
            .prop_map(|(open, sync_open, cut)| Step::Crash { open, sync_open, cut }),
        2 => (0u16..=1000).prop_map(Step::Read),
    ]
}

fn model_opts() -> LogOptions {
    LogOptions {
        segment_bytes: 700,
        index_every: 3,
        write_buffer_bytes: 300,
    }
}

fn run_model(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = ChangeLog::open(dir.path(), model_opts()).unwrap();
    // The model: committed transactions appended (records), and how many are synced.
    let mut txs: Vec<Vec<LogRecord>> = Vec::new();
    let mut synced = 0usize;
    let last_of = |txs: &[Vec<LogRecord>]| txs.last().map_or(0, |t| t.last().unwrap().seq());
    let mut xid = 1u32;
    for step in steps {
        match step {
            Step::Append(k) => {
                xid += 1;
                txs.push(append_tx(&mut log, last_of(&txs), xid, k));
            }
            Step::Sync => {
                let durable = log.sync().unwrap();
                synced = txs.len();
                prop_assert_eq!(durable.map_or(0, |c| c.last_seq), last_of(&txs));
            }
            Step::Crash {
                open,
                sync_open,
                cut,
            } => {
                xid += 1;
                for seq in last_of(&txs) + 1..=last_of(&txs) + open {
                    log.append_change(&change(seq, xid)).unwrap();
                }
                if sync_open {
                    log.sync().unwrap();
                    synced = txs.len();
                }
                let tail = log.durable_tail();
                drop(log);
                if let Some((path, durable_len)) = tail {
                    let len = fs::metadata(&path).unwrap().len();
                    let keep = durable_len + (len - durable_len) * u64::from(cut) / 1000;
                    truncate(&path, keep);
                }
                let (l, rec) = ChangeLog::open(dir.path(), model_opts()).unwrap();
                log = l;
                // Everything synced survives; nothing uncommitted does; what survives is a
                // prefix of whole transactions.
                let n = (0..=txs.len())
                    .find(|&n| last_of(&txs[..n]) == rec.last_seq)
                    .ok_or_else(|| {
                        TestCaseError::fail(format!("recovered seq {} is no commit", rec.last_seq))
                    })?;
                prop_assert!(n >= synced, "lost synced transactions: {n} < {synced}");
                txs.truncate(n);
                synced = n;
            }
            Step::Read(at) => {
                // Rolling a segment makes it durable: the durable end may be past `synced`.
                let d = log.last_durable().map_or(0, |c| c.last_seq);
                let n = (0..=txs.len())
                    .find(|&n| last_of(&txs[..n]) == d)
                    .unwrap_or(usize::MAX);
                prop_assert!(
                    n >= synced && n <= txs.len(),
                    "durable seq {} is no commit",
                    d
                );
                synced = n;
                let durable: Vec<LogRecord> = txs[..synced].concat();
                let last = last_of(&txs[..synced]);
                let from = 1 + (last + 2) * u64::from(at) / 1000;
                let got = read_all(&mut log.reader(from).unwrap());
                prop_assert_eq!(got, from_seq(&durable, from));
            }
        }
    }
    log.sync().unwrap();
    let all: Vec<LogRecord> = txs.concat();
    prop_assert_eq!(read_all(&mut log.reader(1).unwrap()), all.clone());
    let report = verify(dir.path()).unwrap();
    prop_assert_eq!(report.changes, last_of(&txs));
    prop_assert_eq!(report.tail_bytes, 0);
    Ok(())
}

/// Cases from the environment variable `var`, else `default`: `PGFANOUT_FUZZ_CASES` for the
/// cheap never-panic properties, `PGFANOUT_MODEL_CASES` for the crash model (each case writes
/// and reopens a log on disk).
fn cases(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases("PGFANOUT_MODEL_CASES", 64),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn synced_transactions_survive_crashes_exactly_once(steps in prop::collection::vec(step(), 1..40)) {
        run_model(steps)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases("PGFANOUT_FUZZ_CASES", 2_000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn frame_and_record_decoding_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut dec = RecordDecoder::default();
        let _ = decode_frame(&bytes);
        let _ = dec.decode(Bytes::from(bytes));
    }

    #[test]
    fn corrupted_valid_records_never_panic(seq in 1u64..100, flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4), cut in any::<prop::sample::Index>()) {
        let mut payload = Vec::new();
        let c = change(seq, 1);
        record::encode_record(&record::change_to_proto(&c, record::RelationEncoder::default().encode(&c.change.relation)), &mut payload);
        let mut framed = Vec::new();
        frame::encode_frame(&payload, &mut framed);
        for (i, bit) in &flips {
            let i = i.index(framed.len());
            framed[i] ^= 1 << bit;
        }
        framed.truncate(cut.index(framed.len() + 1));
        let _ = decode_frame(&framed);
        let mut dec = RecordDecoder::default();
        if framed.len() > frame::HEADER_LEN {
            let _ = dec.decode(Bytes::copy_from_slice(&framed[frame::HEADER_LEN..]));
        }
    }
}
