//! The DBLog merge, pure: which rows of a chunk may be emitted when the stream reaches the
//! chunk's high watermark.
//!
//! A chunk is read between two watermarks the snapshot writes into the WAL. When the stream
//! reaches the low one, a window opens for the chunk's table; every change of that table the
//! stream carries until the high one adds its key(s) to the window. At the high one, the rows
//! of the chunk whose key is in the window are dropped (the stream has a newer version, or
//! deleted them) and the rest are emitted there: each is the row's state at that position.
//!
//! **Commit order is not visibility order.** A transaction's commit record is written before
//! it becomes visible to new snapshots; in between, another session can commit the low
//! watermark and read the chunk without seeing it. Such a transaction precedes the low
//! watermark in the stream (no window saw it) yet is missing from the chunk: emitting the
//! chunk would undo it. To rule that out, the low watermark carries the snapshot taken just
//! before it commits (`S_L`), the chunk the snapshot it was read under (`S`). A transaction
//! that can be such a case is invisible to both, and committed before the low watermark. The
//! stream knows the last [`RECENT_COMMITS`] commits: at the low watermark the window keeps
//! those invisible to `S_L` ("suspects"); at the high one, a suspect invisible to `S` too
//! means the chunk is read again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::change::{Datum, Op, Relation, RowChange, Tuple};

/// Commits remembered for the suspect check: far more than can commit between the low
/// watermark's snapshot and its commit (one statement).
pub const RECENT_COMMITS: usize = 65_536;

/// A `pg_current_snapshot()`: who was invisible to it. Xids are compared as the stream
/// carries them, 32-bit with wraparound.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XidSnapshot {
    pub xmax: u32,
    pub xip: HashSet<u32>,
}

impl XidSnapshot {
    /// Parses `pg_snapshot`'s text form, `xmin:xmax:xip,…` (64-bit xids).
    pub fn parse(text: &str) -> Option<XidSnapshot> {
        let mut parts = text.trim().split(':');
        let _xmin: u64 = parts.next()?.parse().ok()?;
        let xmax: u64 = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => HashSet::new(),
            list => list
                .split(',')
                .map(|x| x.parse::<u64>().ok().map(|x| x as u32))
                .collect::<Option<_>>()?,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(XidSnapshot {
            xmax: xmax as u32,
            xip,
        })
    }

    /// Whether transaction `xid` (committed or not) was invisible to this snapshot.
    pub fn invisible(&self, xid: u32) -> bool {
        self.xip.contains(&xid) || (xid.wrapping_sub(self.xmax) as i32) >= 0
    }
}

/// What the stream needs to know of a chunk when it reaches the low watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkTable {
    pub oid: u32,
    /// The key the chunk is ordered by (primary key or replica identity index), by name.
    pub key_columns: Vec<String>,
}

/// A key's values as text; `None` for NULL.
type Key = Vec<Option<Bytes>>;

/// Per (relation oid, key columns): the description last seen and the key's positions in it.
type PositionCache = HashMap<(u32, Vec<String>), (Arc<Relation>, Option<Vec<usize>>)>;

#[derive(Debug)]
struct Window {
    table: Arc<ChunkTable>,
    changed: HashSet<Key>,
    /// A change whose key could not be read (a TRUNCATE, a key column missing or unchanged
    /// TOAST): every row of the chunk may be stale.
    all_changed: bool,
    suspects: Vec<u32>,
}

/// Why a chunk cannot be emitted; it is read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The stream never saw its low watermark (a restart in between).
    NoWindow,
    /// A transaction committed before the low watermark is invisible to the chunk.
    InvisibleCommit,
    /// The table changed shape or was truncated while the chunk was read.
    Changed,
}

/// The open windows and the recent commits. Lives with the stream.
#[derive(Debug, Default)]
pub struct Merger {
    windows: HashMap<u64, Window>,
    recent: VecDeque<u32>,
    /// Key positions per relation description, resolved once per description.
    positions: PositionCache,
}

impl Merger {
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// A transaction of the stream committed.
    pub fn committed(&mut self, xid: u32) {
        if self.recent.len() == RECENT_COMMITS {
            self.recent.pop_front();
        }
        self.recent.push_back(xid);
    }

    /// The stream reached chunk `id`'s low watermark, written under `before_low`.
    pub fn low(&mut self, id: u64, table: Arc<ChunkTable>, before_low: &XidSnapshot) {
        let suspects = self
            .recent
            .iter()
            .copied()
            .filter(|&x| before_low.invisible(x))
            .collect();
        self.windows.insert(
            id,
            Window {
                table,
                changed: HashSet::new(),
                all_changed: false,
                suspects,
            },
        );
    }

    /// A change of the stream (between any low and high watermarks).
    pub fn observe(&mut self, change: &RowChange) {
        if self.windows.is_empty() {
            return;
        }
        let oid = change.relation.oid;
        let Merger {
            windows, positions, ..
        } = self;
        for w in windows.values_mut().filter(|w| w.table.oid == oid) {
            let pos = key_positions(positions, &change.relation, &w.table.key_columns);
            let Some(pos) = pos else {
                w.all_changed = true;
                continue;
            };
            let tuples: [Option<&Tuple>; 2] = match &change.op {
                Op::Insert { new } | Op::Snapshot { new, .. } => [Some(new), None],
                Op::Update { old, new } => [Some(new), old.as_ref().map(|o| o.tuple())],
                Op::Delete { old } => [Some(old.tuple()), None],
                Op::Truncate { .. } => {
                    w.all_changed = true;
                    continue;
                }
                Op::SnapshotMark { .. } => [None, None],
            };
            for t in tuples.into_iter().flatten() {
                match key_of(t, &pos) {
                    Some(k) => {
                        w.changed.insert(k);
                    }
                    None => w.all_changed = true,
                }
            }
        }
    }

    /// The stream reached chunk `id`'s high watermark: the rows to emit, or why the chunk
    /// must be read again. `relation` describes `rows`; `read_under` is the chunk's snapshot.
    pub fn high(
        &mut self,
        id: u64,
        relation: &Arc<Relation>,
        rows: Vec<Tuple>,
        read_under: &XidSnapshot,
    ) -> Result<(Vec<Tuple>, usize), Retry> {
        let w = self.windows.remove(&id).ok_or(Retry::NoWindow)?;
        if w.suspects.iter().any(|&x| read_under.invisible(x)) {
            return Err(Retry::InvisibleCommit);
        }
        if w.all_changed {
            return Err(Retry::Changed);
        }
        let pos = key_positions(&mut self.positions, relation, &w.table.key_columns)
            .ok_or(Retry::Changed)?;
        let before = rows.len();
        let kept: Vec<Tuple> = rows
            .into_iter()
            .filter(|t| key_of(t, &pos).is_some_and(|k| !w.changed.contains(&k)))
            .collect();
        let dropped = before - kept.len();
        Ok((kept, dropped))
    }

    /// Forgets chunk `id` (its reader gave up).
    pub fn close(&mut self, id: u64) {
        self.windows.remove(&id);
    }

    /// Keeps only the windows of chunks still being read.
    pub fn retain(&mut self, mut live: impl FnMut(u64) -> bool) {
        self.windows.retain(|id, _| live(*id));
    }
}

fn key_positions(
    cache: &mut PositionCache,
    rel: &Arc<Relation>,
    key_columns: &[String],
) -> Option<Vec<usize>> {
    let k = (rel.oid, key_columns.to_vec());
    if let Some((r, pos)) = cache.get(&k) {
        if Arc::ptr_eq(r, rel) || **r == **rel {
            return pos.clone();
        }
    }
    let pos: Option<Vec<usize>> = key_columns
        .iter()
        .map(|c| rel.columns.iter().position(|rc| &rc.name == c))
        .collect();
    cache.insert(k, (rel.clone(), pos.clone()));
    pos
}

fn key_of(t: &Tuple, pos: &[usize]) -> Option<Key> {
    pos.iter()
        .map(|&p| match t.0.get(p)? {
            Datum::Text(b) => Some(Some(b.clone())),
            Datum::Null => Some(None),
            Datum::UnchangedToast => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Column, OldTuple, ReplicaIdentity};
    use crate::lsn::Lsn;
    use crate::value::Timestamp;

    fn rel() -> Arc<Relation> {
        Arc::new(Relation {
            oid: 7,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: ["id", "v"]
                .iter()
                .map(|n| Column {
                    name: (*n).into(),
                    type_oid: 25,
                    type_modifier: -1,
                    is_key: *n == "id",
                })
                .collect(),
        })
    }

    fn row(id: &str, v: &str) -> Tuple {
        Tuple(vec![
            Datum::Text(Bytes::from(id.to_owned())),
            Datum::Text(Bytes::from(v.to_owned())),
        ])
    }

    fn change(op: Op) -> RowChange {
        RowChange {
            lsn: Lsn(1),
            xid: 1,
            commit_time: Timestamp::from_pg_epoch_micros(0),
            relation: rel(),
            op,
        }
    }

    fn table() -> Arc<ChunkTable> {
        Arc::new(ChunkTable {
            oid: 7,
            key_columns: vec!["id".into()],
        })
    }

    fn snap(text: &str) -> XidSnapshot {
        XidSnapshot::parse(text).unwrap()
    }

    #[test]
    fn keys_changed_inside_the_window_are_dropped_and_the_rest_emitted() {
        let mut m = Merger::default();
        m.observe(&change(Op::Delete {
            old: OldTuple::Key(row("1", "")),
        }));
        m.low(1, table(), &snap("10:12:10"));
        m.observe(&change(Op::Update {
            old: Some(OldTuple::Key(row("2", ""))),
            new: row("20", "x"),
        }));
        m.observe(&change(Op::Delete {
            old: OldTuple::Key(row("3", "")),
        }));
        let rows = vec![row("1", "a"), row("2", "b"), row("3", "c"), row("4", "d")];
        let (kept, dropped) = m.high(1, &rel(), rows, &snap("12:12:")).unwrap();
        // 1 changed before the window (the chunk is newer), 2 moved away (old key), 3 deleted.
        assert_eq!(kept, vec![row("1", "a"), row("4", "d")]);
        assert_eq!(dropped, 2);
        assert_eq!(m.open_windows(), 0);
    }

    #[test]
    fn a_chunk_without_its_low_watermark_or_after_a_truncate_is_read_again() {
        let mut m = Merger::default();
        assert_eq!(
            m.high(9, &rel(), vec![], &XidSnapshot::default()),
            Err(Retry::NoWindow)
        );
        m.low(2, table(), &snap("1:5:"));
        m.observe(&change(Op::Truncate {
            cascade: false,
            restart_identity: false,
        }));
        assert_eq!(
            m.high(2, &rel(), vec![row("1", "a")], &snap("5:5:")),
            Err(Retry::Changed)
        );
    }

    #[test]
    fn a_commit_before_the_low_watermark_the_chunk_could_not_see_forces_a_reread() {
        let mut m = Merger::default();
        // 100 committed before the low watermark but was running when its snapshot was taken.
        m.committed(99);
        m.committed(100);
        m.low(3, table(), &snap("99:101:100"));
        // Still invisible to the chunk's snapshot: the chunk misses it.
        assert_eq!(
            m.high(3, &rel(), vec![row("1", "a")], &snap("100:102:100")),
            Err(Retry::InvisibleCommit)
        );
        // Visible to the chunk's snapshot: safe.
        m.low(4, table(), &snap("99:101:100"));
        assert!(m
            .high(4, &rel(), vec![row("1", "a")], &snap("101:102:"))
            .is_ok());
    }

    #[test]
    fn snapshots_parse_and_compare_with_wraparound() {
        let s = snap("4294967290:4294967300:4294967295");
        assert!(s.invisible(u32::MAX));
        assert!(s.invisible(4)); // 4294967300 mod 2^32 = 4 = xmax
        assert!(!s.invisible(3));
        assert!(!s.invisible(u32::MAX - 1));
        assert_eq!(XidSnapshot::parse("1:2"), None);
        assert_eq!(XidSnapshot::parse("a:2:"), None);
    }
}
