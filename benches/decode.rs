//! Decoder and JSON-line throughput on a realistic 10-column row.
//!
//! ```text
//! cargo bench --bench decode -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use pgfanout::change::{Column, Op, Relation, ReplicaIdentity, RowChange, SequencedChange};
use pgfanout::lsn::Lsn;
use pgfanout::source::pgoutput::{
    decode_message, decode_streamed, parse_replication_message, PgOutput, ReplicationMessage,
};
use pgfanout::source::spool::Spool;
use pgfanout::value::Timestamp;

/// (name, type oid, typmod, text value) of a typical application row.
const ROW: [(&str, u32, i32, &str); 10] = [
    ("id", 20, -1, "9223372036854"),
    ("tenant_id", 23, -1, "4711"),
    ("uuid", 2950, -1, "3f2a9c1e-8b7d-4e6f-a1b2-c3d4e5f60718"),
    ("email", 1043, 259, "alice.smith@example.com"),
    ("created_at", 1184, -1, "2026-03-14 15:09:26.535897+00"),
    ("name", 25, -1, "Alice Smith"),
    ("status", 25, -1, "active"),
    ("score", 1700, -1, "1234.56"),
    ("is_admin", 16, -1, "f"),
    ("note", 25, -1, "prefers email contact"),
];

const RELID: u32 = 16384;

/// `logicalrep_write_tuple` in text mode: int16 count, then `'t'` + int32 length + text.
fn write_tuple(out: &mut Vec<u8>, values: &[&str]) {
    out.extend_from_slice(&(values.len() as u16).to_be_bytes());
    for v in values {
        out.push(b't');
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
}

fn insert_bytes() -> Vec<u8> {
    let mut out = vec![b'I'];
    out.extend_from_slice(&RELID.to_be_bytes());
    out.push(b'N');
    write_tuple(&mut out, &ROW.map(|c| c.3));
    out
}

/// An update of `status` with REPLICA IDENTITY DEFAULT after the key changed: a `'K'` old
/// tuple (key column set, the rest null) and the full new row.
fn update_key_bytes() -> Vec<u8> {
    let mut out = vec![b'U'];
    out.extend_from_slice(&RELID.to_be_bytes());
    out.push(b'K');
    out.extend_from_slice(&10u16.to_be_bytes());
    out.push(b't');
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(b"9223372036853");
    out.extend_from_slice(&[b'n'; 9]);
    out.push(b'N');
    let mut new = ROW.map(|c| c.3);
    new[6] = "suspended";
    write_tuple(&mut out, &new);
    out
}

/// `'w'`, WAL start, WAL end, send time, then the pgoutput message.
fn xlogdata_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b'w'];
    out.extend_from_slice(&0x16_B374_D848u64.to_be_bytes());
    out.extend_from_slice(&0x16_B374_D900u64.to_be_bytes());
    out.extend_from_slice(&784_111_213_456_789i64.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn relation() -> Relation {
    Relation {
        oid: RELID,
        schema: "public".into(),
        name: "users".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: ROW
            .iter()
            .map(|&(name, type_oid, type_modifier, _)| Column {
                name: name.into(),
                type_oid,
                type_modifier,
                is_key: name == "id",
            })
            .collect(),
    }
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");

    let insert = Bytes::from(insert_bytes());
    assert!(matches!(
        decode_message(&insert),
        Ok(PgOutput::Insert { ref new, .. }) if new.0.len() == 10
    ));
    g.throughput(Throughput::Bytes(insert.len() as u64));
    g.bench_function("insert_10_columns", |b| {
        b.iter(|| decode_message(black_box(&insert)))
    });

    let update = Bytes::from(update_key_bytes());
    assert!(matches!(
        decode_message(&update),
        Ok(PgOutput::Update { old: Some(_), .. })
    ));
    g.throughput(Throughput::Bytes(update.len() as u64));
    g.bench_function("update_key_old_tuple_10_columns", |b| {
        b.iter(|| decode_message(black_box(&update)))
    });

    let frame = Bytes::from(xlogdata_frame(&insert));
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("xlogdata_frame_insert_10_columns", |b| {
        b.iter(|| {
            let msg = parse_replication_message(black_box(&frame)).unwrap();
            let ReplicationMessage::XLogData { data, .. } = msg else {
                unreachable!("built as XLogData")
            };
            decode_message(&data)
        })
    });
    g.finish();
}

fn json(c: &mut Criterion) {
    let new = match decode_message(&Bytes::from(insert_bytes())).unwrap() {
        PgOutput::Insert { new, .. } => new,
        other => panic!("{other:?}"),
    };
    let change = SequencedChange {
        seq: 1_234_567,
        change: RowChange {
            lsn: Lsn(0x16_B374_D848),
            xid: 741,
            commit_time: Timestamp::from_pg_epoch_micros(784_111_213_456_789),
            relation: Arc::new(relation()),
            op: Op::Insert { new },
        },
    };
    let mut out = Vec::with_capacity(1024);
    change.write_json_line(&mut out).unwrap();
    serde_json::from_slice::<serde_json::Value>(&out).expect("valid JSON");

    let mut g = c.benchmark_group("json");
    g.throughput(Throughput::Elements(1));
    g.bench_function("write_json_line_insert_10_columns", |b| {
        b.iter(|| {
            out.clear();
            black_box(&change).write_json_line(&mut out).unwrap();
            black_box(out.len())
        })
    });
    g.finish();
}

/// Protocol 2's hand-out of a streamed transaction: its messages read back from the spool file
/// and decoded (what `LogicalStream` does at the Stream Commit before numbering).
fn spool(c: &mut Criterion) {
    const MESSAGES: usize = 10_000;
    let mut streamed = vec![b'I'];
    streamed.extend_from_slice(&7u32.to_be_bytes());
    streamed.extend_from_slice(&insert_bytes()[1..]);
    let streamed = Bytes::from(streamed);
    let dir = tempfile::tempdir().unwrap();
    // Both closures of `iter_batched` use it, one after the other.
    let spool = std::cell::RefCell::new(Spool::open(dir.path()).unwrap());
    let mut g = c.benchmark_group("spool");
    g.throughput(Throughput::Elements(MESSAGES as u64));
    g.bench_function("append_10k_inserts", |b| {
        b.iter(|| {
            let mut spool = spool.borrow_mut();
            spool.start(7, true).unwrap();
            for _ in 0..MESSAGES {
                spool.append(Lsn(1), black_box(&streamed)).unwrap();
            }
            spool.stop().unwrap();
        })
    });
    g.bench_function("replay_and_decode_10k_inserts", |b| {
        b.iter_batched(
            || {
                let mut spool = spool.borrow_mut();
                spool.start(7, true).unwrap();
                for _ in 0..MESSAGES {
                    spool.append(Lsn(1), &streamed).unwrap();
                }
                spool.stop().unwrap();
            },
            |()| {
                let mut replay = spool.borrow_mut().commit(7).unwrap();
                while let Some(m) = replay.next_message().unwrap() {
                    black_box(decode_streamed(&m.message).unwrap());
                }
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, decode, json, spool);
criterion_main!(benches);
