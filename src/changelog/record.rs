//! Records: the prost messages of `proto/changelog.proto` and their conversions to and from
//! the pipeline's types. Encoding cannot fail; decoding is fallible and never panics.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use crate::change::{
    Column, Datum, OldTuple, Op, Relation, ReplicaIdentity, RowChange, SequencedChange,
    SnapshotMark, SnapshotScope, Tuple,
};
use crate::lsn::Lsn;
use crate::value::Timestamp;

use super::CommitInfo;

/// The generated prost types.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/pgfanout.changelog.rs"));
}

/// Why a record's payload could not be turned back into a change or a commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not a valid protobuf record")]
    Protobuf(#[from] prost::DecodeError),
    #[error("the record has no body (neither change nor commit)")]
    NoBody,
    #[error("change {seq} has no {field}")]
    Missing { seq: u64, field: &'static str },
    #[error("change {seq}: {field} has the unknown value {value}")]
    InvalidEnum {
        seq: u64,
        field: &'static str,
        value: i32,
    },
    #[error("change {seq}: a tuple has {states} value states but {texts} texts for {text_states} text values")]
    TextCount {
        seq: u64,
        states: usize,
        texts: usize,
        text_states: usize,
    },
    #[error("change {seq}")]
    Shape {
        seq: u64,
        #[source]
        source: crate::change::TupleShapeError,
    },
    #[error("change {seq}: an insert carries an old tuple")]
    UnexpectedOld { seq: u64 },
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum LogRecord {
    Change(SequencedChange),
    Commit(CommitInfo),
}

impl LogRecord {
    /// The seq this record carries: a change's own, a commit's last.
    pub fn seq(&self) -> u64 {
        match self {
            LogRecord::Change(c) => c.seq,
            LogRecord::Commit(c) => c.last_seq,
        }
    }
}

// ---- encoding ---------------------------------------------------------------------------

fn relation_to_proto(rel: &Relation) -> proto::Relation {
    proto::Relation {
        oid: rel.oid,
        schema: rel.schema.clone(),
        name: rel.name.clone(),
        replica_identity: replica_identity_to_proto(rel.replica_identity) as i32,
        columns: rel
            .columns
            .iter()
            .map(|c| proto::Column {
                name: c.name.clone(),
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                is_key: c.is_key,
            })
            .collect(),
    }
}

fn replica_identity_to_proto(r: ReplicaIdentity) -> proto::ReplicaIdentity {
    match r {
        ReplicaIdentity::Default => proto::ReplicaIdentity::Default,
        ReplicaIdentity::Nothing => proto::ReplicaIdentity::Nothing,
        ReplicaIdentity::Full => proto::ReplicaIdentity::Full,
        ReplicaIdentity::Index => proto::ReplicaIdentity::Index,
    }
}

fn tuple_to_proto(t: &Tuple) -> proto::Tuple {
    let mut states = Vec::with_capacity(t.0.len());
    let mut texts = Vec::with_capacity(t.0.len());
    for d in &t.0 {
        let state = match d {
            Datum::Null => proto::ValueState::ValueNull,
            Datum::UnchangedToast => proto::ValueState::ValueUnchangedToast,
            Datum::Text(b) => {
                texts.push(b.clone());
                proto::ValueState::ValueText
            }
        };
        states.push(state as i32);
    }
    proto::Tuple { states, texts }
}

/// The record of one change.
///
/// `relation` is the already-converted relation of the change, so that a writer appending many
/// changes of one table converts it once (see [`RelationEncoder`]).
pub fn change_to_proto(c: &SequencedChange, relation: proto::Relation) -> proto::Record {
    let mut p = change_body(c, true);
    p.relation = Some(relation);
    proto::Record {
        body: Some(proto::record::Body::Change(p)),
    }
}

/// The record of one change appended to `out`, with the relation's encoding spliced in from
/// `relations`' cache: the hot path of the writer, which would otherwise clone and re-encode
/// the relation (a third of the record) for every change. The bytes are exactly what
/// `encode_record(change_to_proto(..))` produces, up to field order, which protobuf ignores.
///
/// The relation goes in when `describe_relation` (a segment start or sparse-index point) or when
/// it differs from the previous change's; otherwise the record names it by oid only.
pub fn encode_change(
    c: &SequencedChange,
    relations: &mut RelationEncoder,
    describe_relation: bool,
    encoded: &mut Encoded,
) {
    let out = &mut encoded.bytes;
    use prost::encoding::{encode_varint, encoded_len_varint};
    // Field keys: (number << 3) | 2 (length-delimited).
    const RECORD_CHANGE: u8 = (1 << 3) | 2;
    const CHANGE_OLD: u8 = (8 << 3) | 2;
    const CHANGE_NEW: u8 = (9 << 3) | 2;
    const CHANGE_RELATION: u8 = (5 << 3) | 2;
    let field_len = |len: usize| 1 + encoded_len_varint(len as u64) + len;

    const CHANGE_SCOPE: u8 = (13 << 3) | 2;
    let scope = match &c.change.op {
        Op::Snapshot { scope, .. } => relations.scope(scope).to_vec(),
        _ => Vec::new(),
    };
    let describe = describe_relation || !relations.is_last(&c.change.relation);
    let rel = relations.encoded(&c.change.relation);
    let rel = if describe { rel } else { &[][..] };
    // The scalar fields through prost; the tuples by hand, straight from the change's Bytes
    // (no per-value clone and drop of a shared buffer's refcount on the writer thread).
    let body = change_body(c, false);
    let (old_t, new_t) = tuples_of(&c.change.op);
    let old_len = old_t.map(tuple_len);
    let new_len = new_t.map(tuple_len);
    let total = body.encoded_len()
        + old_len.map_or(0, field_len)
        + new_len.map_or(0, field_len)
        + if describe { field_len(rel.len()) } else { 0 }
        + if scope.is_empty() {
            0
        } else {
            field_len(scope.len())
        };
    // Spliced values are not copied into `out`: no room for them.
    let spliced: usize = [old_t, new_t].into_iter().flatten().map(spliced_len).sum();
    out.reserve(1 + encoded_len_varint(total as u64) + total - spliced);
    out.push(RECORD_CHANGE);
    encode_varint(total as u64, out);
    // Encoding into a Vec grows it as needed and cannot fail.
    let _ = body.encode(out);
    for (key, tuple, len) in [(CHANGE_OLD, old_t, old_len), (CHANGE_NEW, new_t, new_len)] {
        if let (Some(t), Some(len)) = (tuple, len) {
            encoded.bytes.push(key);
            encode_varint(len as u64, &mut encoded.bytes);
            encode_tuple(t, encoded);
        }
    }
    if describe {
        let out = &mut encoded.bytes;
        out.push(CHANGE_RELATION);
        encode_varint(rel.len() as u64, out);
        out.extend_from_slice(rel);
    }
    if !scope.is_empty() {
        let out = &mut encoded.bytes;
        out.push(CHANGE_SCOPE);
        encode_varint(scope.len() as u64, out);
        out.extend_from_slice(&scope);
    }
}

/// Text values of at least this many bytes are not copied into an encoded record: the writer
/// splices them in from the change's own buffer when it writes the record, so a huge value
/// is never copied on its way into the log. Smaller values are copied (cheaper than keeping
/// a reference to them).
pub const SPLICE_AT: usize = 64 * 1024;

/// An encoded record: `bytes`, with each value of `spliced` inserted at its offset in them.
#[derive(Debug, Default)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// `(offset in bytes, value)`, in offset order.
    pub spliced: Vec<(usize, Bytes)>,
}

impl Encoded {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spliced.clear();
    }

    /// The record's length.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.spliced.iter().map(|(_, v)| v.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record's bytes in order, as slices of `bytes` and of the spliced values.
    pub fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = 0;
        self.spliced
            .iter()
            .flat_map(move |(offset, value)| {
                let before = &self.bytes[at..*offset];
                at = *offset;
                [before, &value[..]]
            })
            .chain(std::iter::once_with(move || {
                let last = self.spliced.last().map_or(0, |(offset, _)| *offset);
                &self.bytes[last..]
            }))
    }

    /// The whole record in one buffer (tests).
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        self.pieces().flatten().copied().collect()
    }
}

/// The old and new tuples of an op, as `change_body` records them.
fn tuples_of(op: &Op) -> (Option<&Tuple>, Option<&Tuple>) {
    match op {
        Op::Insert { new } => (None, Some(new)),
        Op::Update { old, new } => (old.as_ref().map(OldTuple::tuple), Some(new)),
        Op::Delete { old } => (Some(old.tuple()), None),
        Op::Snapshot { new, .. } => (None, Some(new)),
        Op::Truncate { .. } | Op::SnapshotMark { .. } => (None, None),
    }
}

const TUPLE_STATES: u8 = (1 << 3) | 2;
const TUPLE_TEXTS: u8 = (2 << 3) | 2;

fn state_of(d: &Datum) -> u8 {
    (match d {
        Datum::Null => proto::ValueState::ValueNull,
        Datum::UnchangedToast => proto::ValueState::ValueUnchangedToast,
        Datum::Text(_) => proto::ValueState::ValueText,
    }) as u8
}

/// Encoded length of a `Tuple` message (every state is a one-byte varint).
fn tuple_len(t: &Tuple) -> usize {
    use prost::encoding::encoded_len_varint;
    let n = t.0.len();
    let states = if n == 0 {
        0
    } else {
        1 + encoded_len_varint(n as u64) + n
    };
    let texts: usize =
        t.0.iter()
            .map(|d| match d {
                Datum::Text(b) => 1 + encoded_len_varint(b.len() as u64) + b.len(),
                _ => 0,
            })
            .sum();
    states + texts
}

/// Bytes of the values of `t` that [`encode_tuple`] splices.
fn spliced_len(t: &Tuple) -> usize {
    t.0.iter()
        .map(|d| match d {
            Datum::Text(b) if b.len() >= SPLICE_AT => b.len(),
            _ => 0,
        })
        .sum()
}

/// A `Tuple` message, byte for byte what prost writes for `tuple_to_proto(t)`; values of at
/// least [`SPLICE_AT`] bytes are spliced, not copied.
fn encode_tuple(t: &Tuple, encoded: &mut Encoded) {
    use prost::encoding::encode_varint;
    let out = &mut encoded.bytes;
    if !t.0.is_empty() {
        out.push(TUPLE_STATES);
        encode_varint(t.0.len() as u64, out);
        out.extend(t.0.iter().map(state_of));
    }
    for d in &t.0 {
        if let Datum::Text(b) = d {
            out.push(TUPLE_TEXTS);
            encode_varint(b.len() as u64, out);
            if b.len() >= SPLICE_AT {
                encoded.spliced.push((out.len(), b.clone()));
            } else {
                out.extend_from_slice(b);
            }
        }
    }
}

/// A change's record without its relation, and without its tuples unless `with_tuples`.
fn change_body(c: &SequencedChange, with_tuples: bool) -> proto::Change {
    let rc = &c.change;
    let mut p = proto::Change {
        seq: c.seq,
        lsn: rc.lsn.0,
        xid: rc.xid,
        commit_time: rc.commit_time.pg_epoch_micros(),
        relation: None,
        relation_oid: rc.relation.oid,
        ..Default::default()
    };
    let convert = |t: &Tuple| with_tuples.then(|| tuple_to_proto(t));
    let old = |o: &OldTuple| match o {
        OldTuple::Key(t) => (proto::OldTupleKind::OldTupleKey, convert(t)),
        OldTuple::Full(t) => (proto::OldTupleKind::OldTupleFull, convert(t)),
    };
    match &rc.op {
        Op::Insert { new } => {
            p.op = proto::Op::Insert as i32;
            p.new = convert(new);
        }
        Op::Update { old: o, new } => {
            p.op = proto::Op::Update as i32;
            p.new = convert(new);
            if let Some(o) = o {
                let (kind, t) = old(o);
                p.old_kind = kind as i32;
                p.old = t;
            }
        }
        Op::Delete { old: o } => {
            p.op = proto::Op::Delete as i32;
            let (kind, t) = old(o);
            p.old_kind = kind as i32;
            p.old = t;
        }
        Op::Truncate {
            cascade,
            restart_identity,
        } => {
            p.op = proto::Op::Truncate as i32;
            p.truncate_cascade = *cascade;
            p.truncate_restart_identity = *restart_identity;
        }
        Op::Snapshot { new, scope } => {
            p.op = proto::Op::Snapshot as i32;
            p.new = convert(new);
            // The writer's hot path splices in the scope's cached encoding instead.
            if with_tuples {
                p.scope = Some(scope_to_proto(scope));
            }
        }
        Op::SnapshotMark { scope, mark } => {
            p.op = proto::Op::SnapshotMark as i32;
            p.scope = Some(scope_to_proto(scope));
            p.mark = Some(proto::SnapshotMark {
                range: mark.range,
                chunk: mark.chunk,
                end_key: mark.end_key.clone(),
                rows: mark.rows,
                sweep_below: mark.sweep_below,
                table_done: mark.table_done,
            });
        }
    }
    p
}

fn scope_to_proto(s: &SnapshotScope) -> proto::SnapshotScope {
    proto::SnapshotScope {
        snapshot: s.snapshot,
        destinations: s.destinations.clone(),
        some_tenants: s.tenants.is_some(),
        tenants: s.tenants.clone().unwrap_or_default(),
        mappings: s.mappings.clone(),
    }
}

fn scope_from_proto(p: proto::SnapshotScope) -> SnapshotScope {
    SnapshotScope {
        snapshot: p.snapshot,
        destinations: p.destinations,
        tenants: p.some_tenants.then_some(p.tenants),
        mappings: p.mappings,
    }
}

pub fn commit_to_proto(c: &CommitInfo) -> proto::Record {
    proto::Record {
        body: Some(proto::record::Body::Commit(proto::Commit {
            xid: c.xid,
            commit_lsn: c.commit_lsn.0,
            end_lsn: c.end_lsn.0,
            commit_time: c.commit_time.pg_epoch_micros(),
            last_seq: c.last_seq,
        })),
    }
}

/// Converts each distinct relation once while consecutive changes share it.
#[derive(Default)]
pub struct RelationEncoder {
    last: Option<(Arc<Relation>, proto::Relation)>,
    /// The protobuf encoding of the last relation, for [`encode_change`].
    last_bytes: Option<(Arc<Relation>, Vec<u8>)>,
    /// The encoding of the last snapshot scope: every row of a chunk shares it.
    last_scope: Option<(Arc<SnapshotScope>, Vec<u8>)>,
}

impl RelationEncoder {
    /// The protobuf encoding of `scope` (cached while consecutive rows share it).
    fn scope(&mut self, scope: &Arc<SnapshotScope>) -> &[u8] {
        let cached =
            matches!(&self.last_scope, Some((s, _)) if Arc::ptr_eq(s, scope) || **s == **scope);
        if !cached {
            let mut bytes = Vec::new();
            // Encoding into a Vec cannot fail.
            let _ = scope_to_proto(scope).encode(&mut bytes);
            self.last_scope = Some((scope.clone(), bytes));
        }
        match &self.last_scope {
            Some((_, bytes)) => bytes,
            None => &[],
        }
    }

    /// Whether `rel` is the relation encoded last (that is, of the previous change).
    pub fn is_last(&self, rel: &Arc<Relation>) -> bool {
        matches!(&self.last_bytes, Some((cached, _)) if Arc::ptr_eq(cached, rel) || **cached == **rel)
    }

    /// The protobuf encoding of `rel` (cached while consecutive changes share it).
    pub fn encoded(&mut self, rel: &Arc<Relation>) -> &[u8] {
        if !self.is_last(rel) {
            let mut bytes = Vec::new();
            // Encoding into a Vec cannot fail.
            let _ = relation_to_proto(rel).encode(&mut bytes);
            self.last_bytes = Some((rel.clone(), bytes));
        }
        match &self.last_bytes {
            Some((_, bytes)) => bytes,
            None => &[],
        }
    }

    pub fn encode(&mut self, rel: &Arc<Relation>) -> proto::Relation {
        match &self.last {
            Some((cached, p)) if Arc::ptr_eq(cached, rel) || **cached == **rel => p.clone(),
            _ => {
                let p = relation_to_proto(rel);
                self.last = Some((rel.clone(), p.clone()));
                p
            }
        }
    }
}

/// Encodes `record` (a change or commit) as a protobuf payload appended to `out`.
pub fn encode_record(record: &proto::Record, out: &mut Vec<u8>) {
    out.reserve(record.encoded_len());
    // Encoding into a Vec grows it as needed and cannot fail.
    let _ = record.encode(out);
}

// ---- decoding ---------------------------------------------------------------------------

/// Decodes records, reusing the `Arc<Relation>` of the previous change when the next one
/// carries an identical relation (the common case: runs of changes to one table).
#[derive(Default)]
pub struct RecordDecoder {
    last_relation: Option<Arc<Relation>>,
    described: bool,
    /// Shared by the rows of one snapshot chunk, like the relation.
    last_scope: Option<Arc<SnapshotScope>>,
}

impl RecordDecoder {
    /// Whether the change decoded last carried its relation's full description (a reader may
    /// start there).
    pub fn described_relation(&self) -> bool {
        self.described
    }

    /// Decodes one payload. `payload` is usually a slice of a larger read buffer; text values
    /// become zero-copy slices of it.
    pub fn decode(&mut self, payload: Bytes) -> Result<LogRecord, RecordError> {
        let record = proto::Record::decode(payload)?;
        match record.body {
            None => Err(RecordError::NoBody),
            Some(proto::record::Body::Commit(c)) => Ok(LogRecord::Commit(CommitInfo {
                xid: c.xid,
                commit_lsn: Lsn(c.commit_lsn),
                end_lsn: Lsn(c.end_lsn),
                commit_time: Timestamp::from_pg_epoch_micros(c.commit_time),
                last_seq: c.last_seq,
            })),
            Some(proto::record::Body::Change(c)) => self.change(c).map(LogRecord::Change),
        }
    }

    fn relation(&mut self, seq: u64, p: proto::Relation) -> Result<Arc<Relation>, RecordError> {
        if let Some(last) = &self.last_relation {
            if relation_matches(last, &p) {
                return Ok(last.clone());
            }
        }
        let replica_identity = match proto::ReplicaIdentity::try_from(p.replica_identity) {
            Ok(proto::ReplicaIdentity::Default) => ReplicaIdentity::Default,
            Ok(proto::ReplicaIdentity::Nothing) => ReplicaIdentity::Nothing,
            Ok(proto::ReplicaIdentity::Full) => ReplicaIdentity::Full,
            Ok(proto::ReplicaIdentity::Index) => ReplicaIdentity::Index,
            Ok(proto::ReplicaIdentity::Unspecified) | Err(_) => {
                return Err(RecordError::InvalidEnum {
                    seq,
                    field: "relation.replica_identity",
                    value: p.replica_identity,
                })
            }
        };
        let rel = Arc::new(Relation {
            oid: p.oid,
            schema: p.schema,
            name: p.name,
            replica_identity,
            columns: p
                .columns
                .into_iter()
                .map(|c| Column {
                    name: c.name,
                    type_oid: c.type_oid,
                    type_modifier: c.type_modifier,
                    is_key: c.is_key,
                })
                .collect(),
        });
        self.last_relation = Some(rel.clone());
        Ok(rel)
    }

    fn scope(&mut self, p: proto::SnapshotScope) -> Arc<SnapshotScope> {
        let scope = scope_from_proto(p);
        match &self.last_scope {
            Some(last) if **last == scope => last.clone(),
            _ => {
                let scope = Arc::new(scope);
                self.last_scope = Some(scope.clone());
                scope
            }
        }
    }

    fn change(&mut self, c: proto::Change) -> Result<SequencedChange, RecordError> {
        let seq = c.seq;
        let missing = |field| RecordError::Missing { seq, field };
        self.described = c.relation.is_some();
        let relation = match c.relation {
            Some(p) => self.relation(seq, p)?,
            // Described by an earlier record since the reader's starting point.
            None => match &self.last_relation {
                Some(r) if r.oid == c.relation_oid => r.clone(),
                _ => return Err(missing("relation")),
            },
        };
        let old = match proto::OldTupleKind::try_from(c.old_kind) {
            Ok(proto::OldTupleKind::OldTupleAbsent) => None,
            Ok(kind) => {
                let t = tuple(seq, c.old.ok_or_else(|| missing("old tuple"))?)?;
                Some(if kind == proto::OldTupleKind::OldTupleKey {
                    OldTuple::Key(t)
                } else {
                    OldTuple::Full(t)
                })
            }
            Err(_) => {
                return Err(RecordError::InvalidEnum {
                    seq,
                    field: "old_kind",
                    value: c.old_kind,
                })
            }
        };
        let op = match proto::Op::try_from(c.op) {
            Ok(proto::Op::Insert) => {
                if old.is_some() {
                    return Err(RecordError::UnexpectedOld { seq });
                }
                Op::Insert {
                    new: tuple(seq, c.new.ok_or_else(|| missing("new tuple"))?)?,
                }
            }
            Ok(proto::Op::Update) => Op::Update {
                old,
                new: tuple(seq, c.new.ok_or_else(|| missing("new tuple"))?)?,
            },
            Ok(proto::Op::Delete) => Op::Delete {
                old: old.ok_or_else(|| missing("old tuple"))?,
            },
            Ok(proto::Op::Truncate) => Op::Truncate {
                cascade: c.truncate_cascade,
                restart_identity: c.truncate_restart_identity,
            },
            Ok(proto::Op::Snapshot) => {
                if old.is_some() {
                    return Err(RecordError::UnexpectedOld { seq });
                }
                Op::Snapshot {
                    new: tuple(seq, c.new.ok_or_else(|| missing("new tuple"))?)?,
                    scope: self.scope(c.scope.ok_or_else(|| missing("snapshot scope"))?),
                }
            }
            Ok(proto::Op::SnapshotMark) => {
                let m = c.mark.ok_or_else(|| missing("snapshot mark"))?;
                Op::SnapshotMark {
                    scope: self.scope(c.scope.ok_or_else(|| missing("snapshot scope"))?),
                    mark: SnapshotMark {
                        range: m.range,
                        chunk: m.chunk,
                        end_key: m.end_key,
                        rows: m.rows,
                        sweep_below: m.sweep_below,
                        table_done: m.table_done,
                    },
                }
            }
            Ok(proto::Op::Unspecified) | Err(_) => {
                return Err(RecordError::InvalidEnum {
                    seq,
                    field: "op",
                    value: c.op,
                })
            }
        };
        relation
            .check_op(&op)
            .map_err(|source| RecordError::Shape { seq, source })?;
        Ok(SequencedChange {
            seq,
            change: RowChange {
                lsn: Lsn(c.lsn),
                xid: c.xid,
                commit_time: Timestamp::from_pg_epoch_micros(c.commit_time),
                relation,
                op,
            },
        })
    }
}

fn relation_matches(r: &Relation, p: &proto::Relation) -> bool {
    r.oid == p.oid
        && r.schema == p.schema
        && r.name == p.name
        && replica_identity_to_proto(r.replica_identity) as i32 == p.replica_identity
        && r.columns.len() == p.columns.len()
        && r.columns.iter().zip(&p.columns).all(|(a, b)| {
            a.name == b.name
                && a.type_oid == b.type_oid
                && a.type_modifier == b.type_modifier
                && a.is_key == b.is_key
        })
}

fn tuple(seq: u64, p: proto::Tuple) -> Result<Tuple, RecordError> {
    let text_states = p
        .states
        .iter()
        .filter(|&&s| s == proto::ValueState::ValueText as i32)
        .count();
    if text_states != p.texts.len() {
        return Err(RecordError::TextCount {
            seq,
            states: p.states.len(),
            texts: p.texts.len(),
            text_states,
        });
    }
    let mut texts = p.texts.into_iter();
    let mut out = Vec::with_capacity(p.states.len());
    for s in p.states {
        out.push(match proto::ValueState::try_from(s) {
            Ok(proto::ValueState::ValueNull) => Datum::Null,
            Ok(proto::ValueState::ValueUnchangedToast) => Datum::UnchangedToast,
            Ok(proto::ValueState::ValueText) => {
                // Counted above: there is one text per text state.
                Datum::Text(texts.next().unwrap_or_default())
            }
            Err(_) => {
                return Err(RecordError::InvalidEnum {
                    seq,
                    field: "tuple value state",
                    value: s,
                })
            }
        });
    }
    Ok(Tuple(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel() -> Arc<Relation> {
        Arc::new(Relation {
            oid: 7,
            schema: "s".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![
                Column {
                    name: "a".into(),
                    type_oid: 23,
                    type_modifier: -1,
                    is_key: true,
                },
                Column {
                    name: "b".into(),
                    type_oid: 25,
                    type_modifier: 4,
                    is_key: false,
                },
            ],
        })
    }

    fn change(seq: u64, op: Op) -> SequencedChange {
        SequencedChange {
            seq,
            change: RowChange {
                lsn: Lsn(100 + seq),
                xid: 9,
                commit_time: Timestamp::from_pg_epoch_micros(-5),
                relation: rel(),
                op,
            },
        }
    }

    #[test]
    fn spliced_encoding_decodes_like_the_plain_one() {
        let mut enc = RelationEncoder::default();
        let ops = [
            Op::Insert {
                new: Tuple(vec![Datum::Text("1".into()), Datum::Null]),
            },
            Op::Update {
                old: Some(OldTuple::Full(Tuple(vec![
                    Datum::Text("1".into()),
                    Datum::Text("x".into()),
                ]))),
                new: Tuple(vec![Datum::Text("1".into()), Datum::UnchangedToast]),
            },
            Op::Delete {
                old: OldTuple::Key(Tuple(vec![Datum::Text("1".into()), Datum::Null])),
            },
            Op::Insert {
                new: Tuple(vec![
                    Datum::Text(Bytes::from(vec![b'x'; 300])),
                    Datum::Text("".into()),
                ]),
            },
            // Values of SPLICE_AT bytes and more are spliced, in both tuples, in order.
            Op::Update {
                old: Some(OldTuple::Full(Tuple(vec![
                    Datum::Text(Bytes::from(vec![b'a'; SPLICE_AT])),
                    Datum::Text("small".into()),
                ]))),
                new: Tuple(vec![
                    Datum::Text(Bytes::from(vec![b'b'; SPLICE_AT + 7])),
                    Datum::Text(Bytes::from(vec![b'c'; SPLICE_AT - 1])),
                ]),
            },
            Op::Truncate {
                cascade: true,
                restart_identity: false,
            },
            // Snapshot rows carry their scope (cached by the encoder); marks theirs and the mark.
            Op::Snapshot {
                new: Tuple(vec![Datum::Text("1".into()), Datum::Null]),
                scope: Arc::new(SnapshotScope {
                    snapshot: 9,
                    destinations: vec!["a".into(), "b".into()],
                    tenants: Some(vec!["t".into()]),
                    mappings: vec!["m".into()],
                }),
            },
            Op::Snapshot {
                new: Tuple(vec![Datum::Text("2".into()), Datum::Text("y".into())]),
                scope: Arc::new(SnapshotScope {
                    snapshot: 9,
                    destinations: vec!["a".into()],
                    tenants: None,
                    mappings: vec![],
                }),
            },
            Op::SnapshotMark {
                scope: Arc::new(SnapshotScope::default()),
                mark: SnapshotMark {
                    range: 2,
                    chunk: 7,
                    end_key: vec!["k".into(), "1".into()],
                    rows: 10,
                    sweep_below: 3,
                    table_done: true,
                },
            },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let c = change(i as u64 + 1, op);
            let mut spliced = Encoded::default();
            encode_change(&c, &mut enc, true, &mut spliced);
            let huge = spliced.spliced.len();
            assert_eq!(huge, if i == 4 { 2 } else { 0 }, "values spliced in op {i}");
            assert!(
                spliced.bytes.len() < SPLICE_AT * 2,
                "{}",
                spliced.bytes.len()
            );
            let spliced = spliced.to_vec();
            let mut plain = Vec::new();
            encode_record(
                &change_to_proto(&c, relation_to_proto(&c.change.relation)),
                &mut plain,
            );
            let decode = |b: Vec<u8>| RecordDecoder::default().decode(Bytes::from(b)).unwrap();
            assert_eq!(spliced.len(), plain.len(), "same fields, same sizes");
            assert_eq!(decode(spliced), decode(plain));
            assert_eq!(
                decode({
                    let mut again = Encoded::default();
                    encode_change(&c, &mut enc, true, &mut again);
                    again.to_vec()
                }),
                LogRecord::Change(c)
            );
        }
    }

    #[test]
    fn a_repeated_relation_is_named_by_oid_only() {
        let mut enc = RelationEncoder::default();
        let first = change(
            1,
            Op::Truncate {
                cascade: false,
                restart_identity: false,
            },
        );
        let second = change(
            2,
            Op::Truncate {
                cascade: false,
                restart_identity: false,
            },
        );
        let (mut a, mut b, mut c) = (Encoded::default(), Encoded::default(), Encoded::default());
        encode_change(&first, &mut enc, false, &mut a);
        encode_change(&second, &mut enc, false, &mut b);
        encode_change(&second, &mut enc, true, &mut c);
        let (a, b, c) = (a.to_vec(), b.to_vec(), c.to_vec());
        assert!(
            b.len() + 20 < a.len(),
            "no relation in the second record: {} vs {}",
            b.len(),
            a.len()
        );
        assert_eq!(c.len(), a.len(), "an index point describes it again");

        let mut dec = RecordDecoder::default();
        assert_eq!(
            dec.decode(Bytes::from(a)).unwrap(),
            LogRecord::Change(first)
        );
        assert_eq!(
            dec.decode(Bytes::from(b.clone())).unwrap(),
            LogRecord::Change(second)
        );
        // Without the describing record before it, the change is unreadable, not misread.
        let err = RecordDecoder::default().decode(Bytes::from(b)).unwrap_err();
        assert!(err.to_string().contains("relation"), "{err}");
    }

    fn round_trip(dec: &mut RecordDecoder, c: &SequencedChange) -> SequencedChange {
        let mut buf = Vec::new();
        encode_record(
            &change_to_proto(c, RelationEncoder::default().encode(&c.change.relation)),
            &mut buf,
        );
        match dec.decode(Bytes::from(buf)).unwrap() {
            LogRecord::Change(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_op_and_value_state_round_trips_and_relations_are_shared() {
        let t = |a: Datum, b: Datum| Tuple(vec![a, b]);
        let text = |s: &'static str| Datum::Text(Bytes::from_static(s.as_bytes()));
        let ops = [
            Op::Insert {
                new: t(text("1"), Datum::Null),
            },
            Op::Update {
                old: None,
                new: t(text("1"), Datum::UnchangedToast),
            },
            Op::Update {
                old: Some(OldTuple::Key(t(text("1"), Datum::Null))),
                new: t(text("2"), text("")),
            },
            Op::Delete {
                old: OldTuple::Full(t(text("2"), text("x"))),
            },
            Op::Truncate {
                cascade: true,
                restart_identity: false,
            },
        ];
        let mut dec = RecordDecoder::default();
        let mut first_rel = None;
        for (i, op) in ops.into_iter().enumerate() {
            let c = change(i as u64 + 1, op);
            let back = round_trip(&mut dec, &c);
            assert_eq!(back, c);
            let r = first_rel.get_or_insert_with(|| back.change.relation.clone());
            assert!(Arc::ptr_eq(r, &back.change.relation));
        }
    }

    #[test]
    fn commit_round_trips() {
        let c = CommitInfo {
            xid: 3,
            commit_lsn: Lsn(10),
            end_lsn: Lsn(11),
            commit_time: Timestamp::PosInfinity,
            last_seq: 42,
        };
        let mut buf = Vec::new();
        encode_record(&commit_to_proto(&c), &mut buf);
        assert_eq!(
            RecordDecoder::default().decode(Bytes::from(buf)).unwrap(),
            LogRecord::Commit(c)
        );
    }

    #[test]
    fn invalid_records_are_typed_errors() {
        let mut dec = RecordDecoder::default();
        let decode = |dec: &mut RecordDecoder, r: proto::Record| {
            dec.decode(Bytes::from(r.encode_to_vec())).unwrap_err()
        };
        assert_eq!(
            decode(&mut dec, proto::Record { body: None }),
            RecordError::NoBody
        );
        let base = match change_to_proto(
            &change(
                5,
                Op::Insert {
                    new: Tuple(vec![Datum::Null, Datum::Null]),
                },
            ),
            relation_to_proto(&rel()),
        )
        .body
        {
            Some(proto::record::Body::Change(c)) => c,
            _ => unreachable!(),
        };
        let with = |f: &dyn Fn(&mut proto::Change)| {
            let mut c = base.clone();
            f(&mut c);
            proto::Record {
                body: Some(proto::record::Body::Change(c)),
            }
        };
        assert!(matches!(
            decode(&mut dec, with(&|c| c.relation = None)),
            RecordError::Missing {
                seq: 5,
                field: "relation"
            }
        ));
        assert!(matches!(
            decode(&mut dec, with(&|c| c.new = None)),
            RecordError::Missing {
                field: "new tuple",
                ..
            }
        ));
        assert!(matches!(
            decode(&mut dec, with(&|c| c.op = 99)),
            RecordError::InvalidEnum { field: "op", .. }
        ));
        assert!(matches!(
            decode(&mut dec, with(&|c| c.new.as_mut().unwrap().states.push(2))),
            RecordError::TextCount { .. }
        ));
        assert!(matches!(
            decode(
                &mut dec,
                with(&|c| c.new.as_mut().unwrap().states.pop().map(drop).unwrap_or(()))
            ),
            RecordError::Shape { .. }
        ));
        assert!(matches!(
            decode(&mut dec, with(&|c| c.op = proto::Op::Delete as i32)),
            RecordError::Missing {
                field: "old tuple",
                ..
            }
        ));
        assert!(matches!(
            decode(
                &mut dec,
                with(&|c| c.relation.as_mut().unwrap().replica_identity = 0)
            ),
            RecordError::InvalidEnum {
                field: "relation.replica_identity",
                ..
            }
        ));
        assert!(matches!(
            dec.decode(Bytes::from_static(b"\xff\xff")).unwrap_err(),
            RecordError::Protobuf(_)
        ));
    }
}
