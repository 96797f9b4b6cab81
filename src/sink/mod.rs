//! Destination writers: the last stage, where mapped rows land in a tenant's database.
//!
//! ```text
//!   change log ──(dispatcher, later)──▶ Batch { ops: [(table, RowOp)], truncates, last_seq }
//!                                          │
//!                                          ▼  one transaction per batch
//!                               lock watermark row ─▶ last_seq <= watermark? ─yes─▶ no-op
//!                                          │ no
//!                                          ▼
//!                      collapse per key ─▶ set-based upserts / deletes (seq-guarded)
//!                                          │
//!                                          ▼
//!                              truncates (seq-guarded, after the row changes)
//!                                          │
//!                                          ▼
//!                           watermark := last_seq ─▶ COMMIT
//! ```
//!
//! **The contract every destination keeps.**
//! - *Delivery is at-least-once.* The change log is replayed from the destination's watermark
//!   after any restart, so a writer sees changes again that it may already have applied.
//! - *Each change takes effect exactly once.* A batch is applied in one transaction together
//!   with the destination's watermark (the last seq applied), which lives in the destination
//!   itself: either both the rows and the watermark are durable or neither is. A batch whose
//!   `last_seq` is not beyond the watermark is skipped.
//! - *`_seq` is the row version.* Every target row carries the seq of the change that wrote it
//!   (column [`TargetTable::version_column`], `_seq` by default), and a row is never replaced
//!   or deleted by a change with a lower or equal seq — also during replay.
//! - *The watermark only moves forward*, and only in the transaction that applied the changes
//!   up to it.
//! - A batch holds changes in seq order; repeated changes to one key inside a batch collapse to
//!   the last one before anything is written.
//! - *A truncate removes the target table's rows older than it.* Every row of a destination's
//!   target table belongs to that destination's tenants, so a TRUNCATE of the source table
//!   means all of them — but, like every other change, only rows whose `_seq` is below the
//!   truncate's seq: a row written by a later change survives. With soft deletes the rows are
//!   marked deleted (and take the truncate's seq) instead. A batch's truncates run after its
//!   row changes, in the same transaction.
//! - *Replay re-applies history without the watermark.* [`PostgresSink::replay`] writes a
//!   batch whose seqs may be at or below the watermark, in one transaction, leaving the
//!   watermark alone; the `_seq` guard still keeps newer rows newer. A row removed by a hard
//!   delete or truncate leaves no `_seq` behind, so an older change replayed alone writes it
//!   again; replaying on through the later delete or truncate removes it once more.
//!
//! Values travel as PostgreSQL text ([`Cell`]), the form pgoutput delivers and the transformers
//! produce; the writer casts them to each column's type on the server.

pub mod clickhouse;
pub mod postgres;

use std::borrow::Cow;

pub use self::clickhouse::{ClickHouseError, ClickHouseSink};
use crate::binding::ForeignLineage;
use crate::config::{StoreConfig, StoreSettings};
use crate::disposition::{Classify, ErrorKind};
use crate::sql::quote_ident;
pub use crate::target::{
    ColumnType, TargetColumn, TargetTable, DEFAULT_DELETED_COLUMN, DEFAULT_VERSION_COLUMN,
    DELETED_COLUMN, WATERMARK_TABLE,
};
pub use crate::transform::{Cell, SharedText};
pub use postgres::{ApplyOutcome, Location, PostgresError, PostgresSink};

/// One row change for one target table.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOp<'a> {
    /// Insert or update the row. `cells` has one cell per [`TargetTable::columns`], in column
    /// order. [`Cell::Unchanged`] keeps the target's current value; when the row does not
    /// exist yet the column is written as NULL. (The fan-out fills such cells from the source
    /// first, see [`Writer::unknown_unchanged`]: what is left unchanged then belongs to a row
    /// the source no longer has either.) Key cells must be text.
    Upsert { seq: u64, cells: Vec<Cell<'a>> },
    /// Delete the row with this key: one text cell per [`TargetTable::key`] column, in key
    /// order.
    Delete { seq: u64, key: Vec<Cell<'a>> },
}

impl RowOp<'_> {
    pub fn seq(&self) -> u64 {
        match self {
            RowOp::Upsert { seq, .. } | RowOp::Delete { seq, .. } => *seq,
        }
    }

    pub fn into_owned(self) -> RowOp<'static> {
        let owned = |cells: Vec<Cell<'_>>| cells.into_iter().map(Cell::into_owned).collect();
        match self {
            RowOp::Upsert { seq, cells } => RowOp::Upsert {
                seq,
                cells: owned(cells),
            },
            RowOp::Delete { seq, key } => RowOp::Delete {
                seq,
                key: owned(key),
            },
        }
    }
}

/// Changes for one destination, in seq order, applied atomically with the watermark.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch<'a> {
    /// `(index into the tables given to ensure_tables, change)`.
    pub ops: Vec<(usize, RowOp<'a>)>,
    /// `(index into the tables given to ensure_tables, seq of the truncate)`: every row of the
    /// table with a lower `_seq` is removed (soft delete: marked deleted), after `ops`.
    pub truncates: Vec<(usize, u64)>,
    /// The destination's watermark once this batch is applied: the last seq the batch covers
    /// (it may be beyond the last op when changes in between concern no table here).
    pub last_seq: u64,
}

impl<'a> Batch<'a> {
    pub fn new(last_seq: u64) -> Self {
        Batch {
            ops: Vec::new(),
            truncates: Vec::new(),
            last_seq,
        }
    }

    pub fn upsert(&mut self, table: usize, seq: u64, cells: Vec<Cell<'a>>) -> &mut Self {
        self.ops.push((table, RowOp::Upsert { seq, cells }));
        self
    }

    pub fn delete(&mut self, table: usize, seq: u64, key: Vec<Cell<'a>>) -> &mut Self {
        self.ops.push((table, RowOp::Delete { seq, key }));
        self
    }

    /// A TRUNCATE of the source table behind `table`, at `seq`.
    pub fn truncate(&mut self, table: usize, seq: u64) -> &mut Self {
        self.truncates.push((table, seq));
        self
    }

    /// Bytes of the batch's shared (huge) values: [`Cell::Shared`] cells.
    pub fn shared_bytes(&self) -> usize {
        let shared = |op: &RowOp<'_>| -> usize {
            let (RowOp::Upsert { cells, .. } | RowOp::Delete { key: cells, .. }) = op;
            cells
                .iter()
                .map(|c| match c {
                    Cell::Shared(t) => t.bytes().len(),
                    _ => 0,
                })
                .sum()
        };
        self.ops.iter().map(|(_, op)| shared(op)).sum()
    }

    /// The truncates that matter: per table, the one with the highest seq (it removes all an
    /// earlier one would), in the order tables were first truncated.
    pub fn last_truncates(&self) -> Vec<(usize, u64)> {
        let mut last: Vec<(usize, u64)> = Vec::new();
        for &(table, seq) in &self.truncates {
            match last.iter_mut().find(|(t, _)| *t == table) {
                Some((_, s)) => *s = (*s).max(seq),
                None => last.push((table, seq)),
            }
        }
        last
    }
}

/// The one check of a batch's seqs (both writers call it): a change or truncate (`what`) at
/// `seq` must not pass the batch's `last_seq`, the watermark the batch moves to.
pub(crate) fn seq_in_batch(what: &str, seq: u64, batch: &Batch<'_>) -> Result<(), String> {
    if seq > batch.last_seq {
        return Err(format!(
            "{what} seq {seq} is beyond the batch's last_seq {}",
            batch.last_seq
        ));
    }
    Ok(())
}

/// The one check of an op against its table (both writers call it): the cell counts fit the
/// table, and every key cell is text. Returns the key cells and their texts, in key order;
/// `key_idx` are the key columns' indexes in `table.columns`.
pub(crate) fn checked_key<'b, 'a>(
    op: &'b RowOp<'a>,
    table: &TargetTable,
    key_idx: &[usize],
) -> Result<(Vec<&'b Cell<'a>>, Vec<&'b str>), String> {
    let cells = key_cells(op, table.columns.len(), key_idx)?;
    let texts = cells
        .iter()
        .enumerate()
        .map(|(j, c)| {
            c.as_str().ok_or_else(|| {
                let name = table.key.get(j).map_or("?", String::as_str);
                format!("key column {} is NULL or unchanged", quote_ident(name))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((cells, texts))
}

/// The key cells of `op` for a table of `columns` columns keyed by the columns at `key_idx`,
/// or why the op does not fit that table.
fn key_cells<'b, 'a>(
    op: &'b RowOp<'a>,
    columns: usize,
    key_idx: &[usize],
) -> Result<Vec<&'b Cell<'a>>, String> {
    match op {
        RowOp::Upsert { cells, .. } if cells.len() != columns => Err(format!(
            "upsert with {} cells for {columns} columns",
            cells.len()
        )),
        RowOp::Upsert { cells, .. } => Ok(key_idx.iter().map(|&i| &cells[i]).collect()),
        RowOp::Delete { key, .. } if key.len() != key_idx.len() => Err(format!(
            "delete with {} key cells for {} key columns",
            key.len(),
            key_idx.len()
        )),
        RowOp::Delete { key, .. } => Ok(key.iter().collect()),
    }
}

/// Reports each problem of a destination's store block (see each kind's `config` module).
pub fn check_store(settings: &StoreSettings<'_>, problem: &mut dyn FnMut(&str, String)) {
    match settings.store {
        StoreConfig::Postgres(store) => postgres::config::check(store, settings, problem),
        StoreConfig::ClickHouse(store) => clickhouse::config::check(store, settings, problem),
    }
}

/// A text cell, for building batches by hand.
pub fn text(s: impl Into<Cow<'static, str>>) -> Cell<'static> {
    Cell::Text(s.into())
}

/// See [`Writer::keeps_buffers_after`].
pub const RECONNECT_AFTER_SHARED_BYTES: usize = 16 * 1024 * 1024;

/// A connected destination writer of either kind.
#[derive(Debug)]
pub enum Writer {
    Postgres(Box<PostgresSink>),
    ClickHouse(Box<ClickHouseSink>),
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Connect(#[from] crate::pgconn::SqlConnectError),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error(transparent)]
    ForeignLineage(Box<ForeignLineage>),
    /// A change of the source's schema this destination's table cannot follow by itself.
    #[error("table {table}, column {column}: {reason}")]
    SchemaChange {
        table: String,
        column: String,
        reason: String,
    },
}

impl Classify for SinkError {
    fn kind(&self) -> ErrorKind {
        match self {
            SinkError::Connect(e) => e.kind(),
            SinkError::Postgres(e) => e.kind(),
            SinkError::ClickHouse(e) => e.kind(),
            SinkError::ForeignLineage(_) | SinkError::SchemaChange { .. } => ErrorKind::Rejected,
        }
    }
}

impl SinkError {
    /// The target table, column and seq of the change it failed at, as far as known (never
    /// a value).
    pub fn location(&self) -> (Option<String>, Option<String>, Option<u64>) {
        match self {
            SinkError::Postgres(e) => match e.location() {
                Some(at) => (
                    at.table.as_ref().map(|t| t.to_string()),
                    at.column.clone(),
                    at.seq,
                ),
                None => (None, None, None),
            },
            SinkError::ClickHouse(ClickHouseError::Rejected(r)) => {
                (Some(r.table.clone()), Some(r.column.clone()), Some(r.seq))
            }
            SinkError::ClickHouse(ClickHouseError::Server { table, .. }) => {
                (table.clone(), None, None)
            }
            SinkError::SchemaChange { table, column, .. } => {
                (Some(table.clone()), Some(column.clone()), None)
            }
            _ => (None, None, None),
        }
    }
}

impl Writer {
    /// Connects to the destination and makes `tables` the tables batches refer to (see each
    /// kind's `ensure_tables`).
    pub async fn connect(
        cfg: &crate::config::DestinationConfig,
        tables: &[TargetTable],
    ) -> Result<Writer, SinkError> {
        use crate::config::StoreConfig;
        match &cfg.store {
            StoreConfig::Postgres(pg) => {
                let client = pg.conn.connect_sql().await?;
                let mut sink = PostgresSink::new(client, pg.schema.clone());
                sink.ensure_tables(tables, cfg.create_tables).await?;
                for _ in 1..pg.apply_connections {
                    sink.add_apply_connection(pg.conn.connect_sql().await?)
                        .await?;
                }
                Ok(Writer::Postgres(Box::new(sink)))
            }
            StoreConfig::ClickHouse(ch) => {
                clickhouse::config::warn_if_plaintext(&cfg.name, ch);
                let mut sink = ClickHouseSink::connect(ch).await?;
                sink.ensure_tables(&cfg.name, tables, cfg.create_tables)
                    .await?;
                Ok(Writer::ClickHouse(Box::new(sink)))
            }
        }
    }

    /// The last seq applied to `destination`; 0 when it has applied nothing yet.
    pub async fn watermark(&mut self, destination: &str) -> Result<u64, SinkError> {
        Ok(match self {
            Writer::Postgres(s) => s.watermark(destination).await?,
            Writer::ClickHouse(s) => s.watermark(destination).await?,
        })
    }

    /// The watermark once no batch of the destination's own writer is in flight: PostgreSQL
    /// waits for the batch transaction holding the watermark row (see
    /// [`PostgresSink::settled_watermark`]); ClickHouse has no transactions to wait for and
    /// reads [`watermark`](Self::watermark).
    pub async fn settled_watermark(&mut self, destination: &str) -> Result<u64, SinkError> {
        Ok(match self {
            Writer::Postgres(s) => s.settled_watermark(destination).await?,
            Writer::ClickHouse(s) => s.watermark(destination).await?,
        })
    }

    /// Refuses a destination whose watermark counts the seqs of another numbering than
    /// `ours` (see `crate::binding`), then writes `ours` with every watermark from now on. A
    /// watermark without a lineage (an older pgfanout's) is bound to `ours`; returns whether
    /// that happened, for the caller to say so.
    pub async fn bind_lineage(
        &mut self,
        destination: &str,
        ours: crate::binding::Lineage,
    ) -> Result<bool, SinkError> {
        let stored = match self {
            Writer::Postgres(s) => s.lineage(destination).await?,
            Writer::ClickHouse(s) => s.lineage(destination).await?,
        };
        if let Some(stored) = &stored {
            if *stored != ours.to_string() {
                return Err(SinkError::ForeignLineage(Box::new(ForeignLineage {
                    destination: destination.to_owned(),
                    stored: stored.clone(),
                    ours,
                })));
            }
        }
        match self {
            Writer::Postgres(s) => s.bind_lineage(ours),
            Writer::ClickHouse(s) => s.bind_lineage(ours),
        }
        Ok(stored.is_none())
    }

    /// Applies `batch` and moves the watermark to its `last_seq`; skipped when the watermark
    /// is already there.
    pub async fn apply(&mut self, destination: &str, batch: &Batch<'_>) -> Result<(), SinkError> {
        match self {
            Writer::Postgres(s) => {
                s.apply(destination, batch).await?;
            }
            Writer::ClickHouse(s) => s.apply(destination, batch).await?,
        }
        Ok(())
    }

    /// Whether this writer keeps buffers as big as what `batch` held after applying it, so
    /// that only a new connection lets them go. tokio-postgres serialises each statement into
    /// a buffer of the client and copies it into one of the connection, and neither shrinks:
    /// after a batch with [`RECONNECT_AFTER_SHARED_BYTES`] or more of huge values the
    /// PostgreSQL writer is replaced by a new one. (The ClickHouse writer sends huge values
    /// from the buffers they came in.)
    pub fn keeps_buffers_after(&self, batch: &Batch<'_>) -> bool {
        matches!(self, Writer::Postgres(_)) && batch.shared_bytes() >= RECONNECT_AFTER_SHARED_BYTES
    }

    /// The ops of `batch` (indexes into its ops, ascending) whose [`Cell::Unchanged`] cells the
    /// destination knows no copy of — not earlier in the batch, not in its current row — so
    /// that writing them as they are would leave those columns NULL. Costs one read per
    /// table holding such upserts, nothing for a batch without unchanged cells.
    pub async fn unknown_unchanged(
        &mut self,
        destination: &str,
        batch: &Batch<'_>,
    ) -> Result<Vec<usize>, SinkError> {
        let partial = batch.ops.iter().any(|(_, op)| {
            matches!(op, RowOp::Upsert { cells, .. } if cells.iter().any(|c| matches!(c, Cell::Unchanged)))
        });
        if !partial {
            return Ok(Vec::new());
        }
        Ok(match self {
            Writer::Postgres(s) => s.unknown_unchanged(destination, batch).await?,
            Writer::ClickHouse(s) => s.unknown_unchanged(destination, batch).await?,
        })
    }

    /// Brings table `table` (an index into the tables given at connect) from `prev` to
    /// `next` (the mapping's new shape, see [`crate::target::TableShape`]) before any op
    /// written with `next`: adds the columns it lacks (nullable), widens types
    /// ([`crate::target::widens`]), and for columns `prev` had and `next` lacks drops them
    /// (`drop_gone`) or lets them be NULL. A column whose existing type already holds the new
    /// one is left alone (replaying older history into a widened table). Anything else — a
    /// type change that is not a widening, a changed key, a change needing DDL while `alter`
    /// (`create_tables`) is off — is [`SinkError::SchemaChange`], naming table, column and
    /// what to do; nothing is changed then.
    pub async fn evolve(
        &mut self,
        destination: &str,
        table: usize,
        prev: &TargetTable,
        next: &TargetTable,
        drop_gone: bool,
        alter: bool,
    ) -> Result<(), SinkError> {
        if prev.key != next.key {
            let column = next
                .key
                .iter()
                .chain(&prev.key)
                .find(|k| !(prev.key.contains(k) && next.key.contains(k)))
                .cloned()
                .unwrap_or_default();
            return Err(SinkError::SchemaChange {
                table: next.qualified_name().to_string(),
                column,
                reason: format!(
                    "the target key changed from ({}) to ({}); pgfanout does not change a target's key: recreate the table (or set the mapping's key), then `pgfanout destination resume` and resync it",
                    prev.key.join(", "),
                    next.key.join(", ")
                ),
            });
        }
        match self {
            Writer::Postgres(s) => s.evolve(table, prev, next, drop_gone, alter).await,
            Writer::ClickHouse(s) => {
                s.evolve(destination, table, prev, next, drop_gone, alter)
                    .await
            }
        }
    }

    /// Re-applies history without reading or moving the watermark.
    pub async fn replay(&mut self, destination: &str, batch: &Batch<'_>) -> Result<(), SinkError> {
        match self {
            Writer::Postgres(s) => s.replay(destination, batch).await?,
            Writer::ClickHouse(s) => s.replay(destination, batch).await?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_cells_must_be_text_and_seqs_within_the_batch() {
        use crate::value::PgType;
        let table = TargetTable::new(
            "s",
            "t",
            vec![
                TargetColumn::new("k", PgType::Text, false),
                TargetColumn::new("v", PgType::Text, true),
            ],
            vec!["k".into()],
        );
        let ok = RowOp::Upsert {
            seq: 1,
            cells: vec![text("a"), Cell::Null],
        };
        assert_eq!(checked_key(&ok, &table, &[0]).unwrap().1, ["a"]);
        let null_key = RowOp::Delete {
            seq: 2,
            key: vec![Cell::Null],
        };
        assert_eq!(
            checked_key(&null_key, &table, &[0]).unwrap_err(),
            "key column \"k\" is NULL or unchanged"
        );
        let batch = Batch::new(5);
        assert!(seq_in_batch("change", 5, &batch).is_ok());
        assert_eq!(
            seq_in_batch("truncate", 6, &batch).unwrap_err(),
            "truncate seq 6 is beyond the batch's last_seq 5"
        );
    }

    #[test]
    fn shared_bytes_count_only_shared_cells() {
        let shared = |n: usize| {
            Cell::Shared(Box::new(
                SharedText::new(bytes::Bytes::from(vec![b'v'; n])).unwrap(),
            ))
        };
        let mut batch = Batch::new(3);
        batch
            .upsert(0, 1, vec![text("k"), shared(100), Cell::Null])
            .delete(1, 2, vec![shared(7)])
            .upsert(0, 3, vec![text("long text, but copied"), Cell::Unchanged]);
        assert_eq!(batch.shared_bytes(), 107);
        assert_eq!(Batch::new(0).shared_bytes(), 0);
    }

    #[test]
    fn an_op_is_checked_against_its_table() {
        let upsert = RowOp::Upsert {
            seq: 1,
            cells: vec![text("k"), Cell::Null, text("v")],
        };
        assert_eq!(key_cells(&upsert, 3, &[0]), Ok(vec![&text("k")]));
        assert_eq!(
            key_cells(&upsert, 2, &[0]).unwrap_err(),
            "upsert with 3 cells for 2 columns"
        );
        let delete = RowOp::Delete {
            seq: 2,
            key: vec![text("a"), text("b")],
        };
        assert_eq!(key_cells(&delete, 3, &[0, 2]).unwrap().len(), 2);
        assert_eq!(
            key_cells(&delete, 3, &[0]).unwrap_err(),
            "delete with 2 key cells for 1 key columns"
        );
    }
}
