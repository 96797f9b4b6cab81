//! Row changes: the unit that flows from the source through every later stage.
//!
//! Values stay as PostgreSQL text output in zero-copy [`Bytes`] slices of the frame they arrived
//! in; typed conversion ([`crate::value`]) happens only where a stage needs it.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;

use crate::lsn::Lsn;
use crate::value::Timestamp;

/// A table as the last `Relation` message described it. Shared by every change decoded after
/// that message, so a schema change mid-stream applies exactly to the changes that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the replica identity (every column for REPLICA IDENTITY FULL).
    pub is_key: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    Default,
    Nothing,
    Full,
    Index,
}

impl ReplicaIdentity {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(Self::Default),
            b'n' => Some(Self::Nothing),
            b'f' => Some(Self::Full),
            b'i' => Some(Self::Index),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {op} change of {schema}.{table} carries {got} columns but the relation has {expected}")]
pub struct TupleShapeError {
    pub op: &'static str,
    pub schema: String,
    pub table: String,
    pub got: usize,
    pub expected: usize,
}

impl Relation {
    /// Every tuple of `op` has one value per column: later stages index by column position.
    pub fn check_op(&self, op: &Op) -> Result<(), TupleShapeError> {
        let tuples: [Option<&Tuple>; 2] = match op {
            Op::Insert { new } => [Some(new), None],
            Op::Update { old, new } => [Some(new), old.as_ref().map(OldTuple::tuple)],
            Op::Delete { old } => [Some(old.tuple()), None],
            Op::Snapshot { new, .. } => [Some(new), None],
            Op::Truncate { .. } | Op::SnapshotMark { .. } => [None, None],
        };
        for t in tuples.into_iter().flatten() {
            if t.0.len() != self.columns.len() {
                return Err(TupleShapeError {
                    op: op.name(),
                    schema: self.schema.clone(),
                    table: self.name.clone(),
                    got: t.0.len(),
                    expected: self.columns.len(),
                });
            }
        }
        Ok(())
    }
}

/// One column of a tuple, in the three states pgoutput distinguishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value the update did not change; PostgreSQL does not resend it.
    UnchangedToast,
    /// The value in PostgreSQL's text output format.
    Text(Bytes),
}

/// The columns of one row, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<Datum>);

/// The old row an update or delete carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// Only the replica-identity columns are meaningful (`K`); the others are null.
    Key(Tuple),
    /// The whole old row (`O`, REPLICA IDENTITY FULL).
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Insert {
        new: Tuple,
    },
    Update {
        old: Option<OldTuple>,
        new: Tuple,
    },
    Delete {
        old: OldTuple,
    },
    /// One relation of a TRUNCATE statement; a statement over several tables yields one each.
    Truncate {
        cascade: bool,
        restart_identity: bool,
    },
    /// A row as a snapshot chunk read it (DBLog; Debezium's `op = r`): the row's state at this
    /// position of the stream, for the destinations, tenants and mappings `scope` names
    /// only. Destinations write it as an upsert.
    Snapshot {
        new: Tuple,
        scope: Arc<SnapshotScope>,
    },
    /// A snapshot chunk of this table is complete up to `mark`: what resuming it needs.
    SnapshotMark {
        scope: Arc<SnapshotScope>,
        mark: SnapshotMark,
    },
}

/// Which destinations (and tenants, mappings) a snapshot's rows are for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotScope {
    /// The snapshot's id in the state database.
    pub snapshot: u64,
    pub destinations: Vec<String>,
    /// `None`: every tenant the destinations serve.
    pub tenants: Option<Vec<String>>,
    /// The mappings (of this table) the rows are for.
    pub mappings: Vec<String>,
}

impl SnapshotScope {
    pub fn has_destination(&self, name: &str) -> bool {
        self.destinations.iter().any(|d| d == name)
    }

    pub fn has_mapping(&self, name: &str) -> bool {
        self.mappings.iter().any(|m| m == name)
    }

    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.tenants
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == tenant))
    }
}

/// Where a snapshot of one table stands once the change carrying this mark is durable.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotMark {
    /// The key range of the table (ranges are read in parallel).
    pub range: u32,
    /// The chunk's number within its range.
    pub chunk: u64,
    /// The last key the chunk covered (the key columns' text), empty when the range is done.
    pub end_key: Vec<String>,
    /// Rows the chunk emitted.
    pub rows: u64,
    /// Set on the table's last mark: the table is complete, and each destination in scope
    /// removes its rows of the mapped tables whose version is below this seq (they were
    /// neither read by the snapshot nor changed since it began: gone from the source).
    /// 0: nothing to remove (a snapshot of some tenants only).
    pub sweep_below: u64,
    pub table_done: bool,
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Insert { .. } => "insert",
            Op::Update { .. } => "update",
            Op::Delete { .. } => "delete",
            Op::Truncate { .. } => "truncate",
            Op::Snapshot { .. } => "snapshot",
            Op::SnapshotMark { .. } => "snapshot_mark",
        }
    }
}

/// A row change with the transaction facts every later stage needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    /// WAL position of the change record itself.
    pub lsn: Lsn,
    pub xid: u32,
    pub commit_time: Timestamp,
    pub relation: Arc<Relation>,
    pub op: Op,
}

/// A row change numbered by the sequencer.
#[derive(Debug, Clone, PartialEq)]
pub struct SequencedChange {
    pub seq: u64,
    pub change: RowChange,
}

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("column {column} of {schema}.{table} is not valid UTF-8; pgfanout requests client_encoding UTF8, so the server sent something unexpected")]
    NotUtf8 {
        schema: String,
        table: String,
        column: String,
    },
    #[error(transparent)]
    TupleShape(#[from] TupleShapeError),
}

impl SequencedChange {
    /// Appends this change as one JSON line (the `tail` / `log read` format) to `out`.
    ///
    /// Written by hand rather than through a serde tree: this runs once per change on the hot
    /// path, and building a `serde_json::Value` per row would allocate every key and value.
    pub fn write_json_line(&self, out: &mut Vec<u8>) -> Result<(), JsonError> {
        let c = &self.change;
        let rel = &*c.relation;
        out.extend_from_slice(b"{\"seq\":");
        push_u64(out, self.seq);
        // Writing into a Vec cannot fail.
        let _ = write!(out, ",\"lsn\":\"{}\",\"xid\":", c.lsn);
        push_u64(out, u64::from(c.xid));
        let _ = write!(out, ",\"commit_time\":\"{}\",\"op\":\"", c.commit_time);
        out.extend_from_slice(c.op.name().as_bytes());
        out.extend_from_slice(b"\",\"schema\":");
        push_json_str(out, &rel.schema);
        out.extend_from_slice(b",\"table\":");
        push_json_str(out, &rel.name);

        let (key_source, new, old) = match &c.op {
            Op::Insert { new } => (Some(new), Some(new), None),
            Op::Update { old, new } => (Some(new), Some(new), old.as_ref()),
            Op::Delete { old } => (Some(old.tuple()), None, Some(old)),
            Op::Snapshot { new, .. } => (Some(new), Some(new), None),
            Op::Truncate { .. } | Op::SnapshotMark { .. } => (None, None, None),
        };
        rel.check_op(&c.op)?;

        out.extend_from_slice(b",\"key\":");
        match key_source {
            Some(t) => write_object(out, rel, t, |col, d| {
                col.is_key && !matches!(d, Datum::UnchangedToast)
            })?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"new\":");
        match new {
            Some(t) => write_object(out, rel, t, |_, d| !matches!(d, Datum::UnchangedToast))?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"old\":");
        match old {
            // A key-only old tuple carries nulls for the non-key columns: they are not facts.
            Some(OldTuple::Key(t)) => write_object(out, rel, t, |col, _| col.is_key)?,
            Some(OldTuple::Full(t)) => {
                write_object(out, rel, t, |_, d| !matches!(d, Datum::UnchangedToast))?
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"unchanged\":[");
        if let Some(t) = new {
            let mut first = true;
            for (col, d) in rel.columns.iter().zip(&t.0) {
                if matches!(d, Datum::UnchangedToast) {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    push_json_str(out, &col.name);
                }
            }
        }
        out.extend_from_slice(b"]}\n");
        Ok(())
    }
}

fn write_object(
    out: &mut Vec<u8>,
    rel: &Relation,
    tuple: &Tuple,
    include: impl Fn(&Column, &Datum) -> bool,
) -> Result<(), JsonError> {
    out.push(b'{');
    let mut first = true;
    for (col, datum) in rel.columns.iter().zip(&tuple.0) {
        if !include(col, datum) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        push_json_str(out, &col.name);
        out.push(b':');
        match datum {
            Datum::Text(text) => {
                let s = std::str::from_utf8(text).map_err(|_| JsonError::NotUtf8 {
                    schema: rel.schema.clone(),
                    table: rel.name.clone(),
                    column: col.name.clone(),
                })?;
                push_json_str(out, s);
            }
            Datum::Null | Datum::UnchangedToast => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    Ok(())
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A JSON string. Most values need no escaping and are copied in one piece; the rest go
/// through serde_json's escaper (measured: the fast path halves the cost of a typical line).
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Serializing a &str into a Vec is infallible.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation() -> Arc<Relation> {
        let col = |name: &str, is_key| Column {
            name: name.into(),
            type_oid: 25,
            type_modifier: -1,
            is_key,
        };
        Arc::new(Relation {
            oid: 16384,
            schema: "public".into(),
            name: "users".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![col("id", true), col("email", false), col("bio", false)],
        })
    }

    fn text(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn line(op: Op) -> serde_json::Value {
        let change = SequencedChange {
            seq: 7,
            change: RowChange {
                lsn: Lsn(0x1A2B3C8),
                xid: 741,
                commit_time: Timestamp::from_pg_epoch_micros(0),
                relation: relation(),
                op,
            },
        };
        let mut out = Vec::new();
        change.write_json_line(&mut out).unwrap();
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn insert_line_has_every_field() {
        let v = line(Op::Insert {
            new: Tuple(vec![text("7"), text("a\"@x.io\n"), Datum::Null]),
        });
        assert_eq!(
            v,
            serde_json::json!({"seq":7,"lsn":"0/1A2B3C8","xid":741,
                "commit_time":"2000-01-01T00:00:00.000000Z","op":"insert","schema":"public",
                "table":"users","key":{"id":"7"},"new":{"id":"7","email":"a\"@x.io\n","bio":null},
                "old":null,"unchanged":[]})
        );
    }

    #[test]
    fn update_lists_unchanged_toast_and_omits_it_from_new() {
        let v = line(Op::Update {
            old: Some(OldTuple::Key(Tuple(vec![
                text("6"),
                Datum::Null,
                Datum::Null,
            ]))),
            new: Tuple(vec![text("7"), text("b"), Datum::UnchangedToast]),
        });
        assert_eq!(v["new"], serde_json::json!({"id":"7","email":"b"}));
        assert_eq!(v["old"], serde_json::json!({"id":"6"}));
        assert_eq!(v["key"], serde_json::json!({"id":"7"}));
        assert_eq!(v["unchanged"], serde_json::json!(["bio"]));
    }

    #[test]
    fn delete_takes_key_from_old_and_truncate_has_none() {
        let v = line(Op::Delete {
            old: OldTuple::Full(Tuple(vec![text("7"), text("e"), Datum::Null])),
        });
        assert_eq!(v["key"], serde_json::json!({"id":"7"}));
        assert_eq!(v["new"], serde_json::Value::Null);
        assert_eq!(
            v["old"],
            serde_json::json!({"id":"7","email":"e","bio":null})
        );

        let v = line(Op::Truncate {
            cascade: true,
            restart_identity: false,
        });
        assert_eq!(v["op"], "truncate");
        assert_eq!(v["key"], serde_json::Value::Null);
    }

    #[test]
    fn column_count_mismatch_is_an_error_naming_the_table() {
        let change = SequencedChange {
            seq: 1,
            change: RowChange {
                lsn: Lsn(1),
                xid: 1,
                commit_time: Timestamp::from_pg_epoch_micros(0),
                relation: relation(),
                op: Op::Insert {
                    new: Tuple(vec![text("1")]),
                },
            },
        };
        let err = change.write_json_line(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("public.users"), "{err}");
    }

    #[test]
    fn invalid_utf8_names_the_column() {
        let change = SequencedChange {
            seq: 1,
            change: RowChange {
                lsn: Lsn(1),
                xid: 1,
                commit_time: Timestamp::from_pg_epoch_micros(0),
                relation: relation(),
                op: Op::Insert {
                    new: Tuple(vec![
                        text("1"),
                        Datum::Text(Bytes::from_static(b"\xff")),
                        Datum::Null,
                    ]),
                },
            },
        };
        let err = change.write_json_line(&mut Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("column email of public.users"),
            "{err}"
        );
    }
}
