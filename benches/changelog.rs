//! Change-log append throughput against a raw sequential write of the same bytes.
//!
//! Both write `CHANGES` realistic 10-column inserts (transactions of `TX` changes) and fsync
//! every `SYNC_EVERY` changes (group commit); the raw reference writes the log's byte count
//! with `write_all` at the same fsync cadence. The ratio of the two is the log's overhead
//! (encoding, framing, CRC, index). Run with `cargo bench --bench changelog`.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgfanout::change::{
    Column, Datum, Op, Relation, ReplicaIdentity, RowChange, SequencedChange, Tuple,
};
use pgfanout::changelog::{ChangeLog, CommitInfo, LogOptions};
use pgfanout::lsn::Lsn;
use pgfanout::value::Timestamp;

const CHANGES: u64 = 20_000;
const TX: u64 = 10;
const SYNC_EVERY: u64 = 1_000;

fn relation() -> Arc<Relation> {
    let cols = [
        ("id", 20),
        ("tenant_id", 20),
        ("email", 25),
        ("name", 25),
        ("created_at", 1184),
        ("updated_at", 1184),
        ("balance", 1700),
        ("active", 16),
        ("plan", 25),
        ("notes", 25),
    ];
    Arc::new(Relation {
        oid: 16384,
        schema: "public".into(),
        name: "accounts".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: cols
            .iter()
            .map(|&(name, type_oid)| Column {
                name: name.into(),
                type_oid,
                type_modifier: -1,
                is_key: name == "id",
            })
            .collect(),
    })
}

fn changes() -> Vec<SequencedChange> {
    let rel = relation();
    (1..=CHANGES)
        .map(|seq| {
            let t = |s: String| Datum::Text(Bytes::from(s));
            let new = Tuple(vec![
                t(seq.to_string()),
                t((seq % 97).to_string()),
                t(format!("user{seq}@example.com")),
                t(format!("User Number {seq}")),
                t("2024-05-01 12:34:56.789012+00".into()),
                t("2024-05-01 12:34:56.789012+00".into()),
                t(format!("{}.{:02}", seq * 37 % 100_000, seq % 100)),
                t("t".into()),
                t("enterprise".into()),
                if seq % 3 == 0 {
                    Datum::Null
                } else {
                    t("a short free-text note about this account".into())
                },
            ]);
            SequencedChange {
                seq,
                change: RowChange {
                    lsn: Lsn(0x1_0000_0000 + seq * 200),
                    xid: 1000 + ((seq - 1) / TX) as u32,
                    commit_time: Timestamp::from_pg_epoch_micros(800_000_000_000_000),
                    relation: rel.clone(),
                    op: Op::Insert { new },
                },
            }
        })
        .collect()
}

/// Appends all changes to a fresh log; returns the elapsed time and the bytes written.
fn run_log(changes: &[SequencedChange]) -> (Duration, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = ChangeLog::open(dir.path(), LogOptions::default()).unwrap();
    let start = Instant::now();
    for c in changes {
        log.append_change(c).unwrap();
        if c.seq % TX == 0 {
            log.append_commit(&CommitInfo {
                xid: c.change.xid,
                commit_lsn: Lsn(c.change.lsn.0 + 100),
                end_lsn: Lsn(c.change.lsn.0 + 101),
                commit_time: c.change.commit_time,
                last_seq: c.seq,
            })
            .unwrap();
        }
        if c.seq % SYNC_EVERY == 0 {
            log.sync().unwrap();
        }
    }
    log.sync().unwrap();
    let elapsed = start.elapsed();
    let bytes = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    (elapsed, bytes)
}

fn run_raw(bytes: u64) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let mut f = File::create(dir.path().join("raw")).unwrap();
    let batches = CHANGES / SYNC_EVERY;
    let chunk = vec![0x5au8; (bytes / batches) as usize];
    let start = Instant::now();
    for _ in 0..batches {
        f.write_all(&chunk).unwrap();
        f.sync_data().unwrap();
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let changes = changes();
    let (_, bytes) = run_log(&changes);
    eprintln!(
        "changelog bench: {CHANGES} changes in transactions of {TX}, fsync every {SYNC_EVERY}: {bytes} bytes ({} per change)",
        bytes / CHANGES
    );
    let mut g = c.benchmark_group("changelog_append");
    g.sample_size(10);
    // Records counted as changes (commits are extra records, one per TX changes).
    g.throughput(Throughput::Elements(CHANGES));
    g.bench_function("log_changes", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run_log(&changes).0).sum())
    });
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("log_bytes", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run_log(&changes).0).sum())
    });
    g.bench_function("raw_write_same_bytes", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run_raw(bytes)).sum())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
