//! A batch planned per table (collapse per key, unchanged cells, key changes) and written with
//! the prepared statements.

use tokio_postgres::types::ToSql;

use super::error::{to_i64, PostgresError};
use super::statements::Prepared;
use crate::failpoint;
use crate::sink::{checked_key, seq_in_batch, Batch, Cell, RowOp};

/// One collapsed upsert: a seq and one cell per column.
pub(super) struct Upsert<'b, 'a> {
    pub(super) seq: i64,
    pub(super) cells: Vec<&'b Cell<'a>>,
    /// For a row whose key changed (deleted at its old key under the same seq): the old key,
    /// whose row holds the values of the `Unchanged` cells.
    pub(super) moved_from: Option<Vec<&'b Cell<'a>>>,
    /// Index into the batch's ops of the last op collapsed into this one.
    pub(super) op: usize,
    /// The batch deleted this key before (and no moved row carries the values): the target's
    /// row is not this row's past, so it holds no copy of the `Unchanged` cells.
    pub(super) after_delete: bool,
}

pub(super) struct Delete<'b, 'a> {
    pub(super) seq: i64,
    pub(super) key: Vec<&'b Cell<'a>>,
}

/// What a batch writes, after checking and collapsing.
pub(super) struct BatchPlan<'b, 'a> {
    /// Row changes, one entry per table that has any.
    pub(super) tables: Vec<TablePlan<'b, 'a>>,
    /// `(table, seq)`: at most one per table, its highest-seq truncate in the batch.
    pub(super) truncates: Vec<(usize, i64)>,
}

/// What one table gets from a batch, after collapsing.
pub(super) struct TablePlan<'b, 'a> {
    pub(super) table: usize,
    pub(super) upserts: Vec<Upsert<'b, 'a>>,
    pub(super) deletes: Vec<Delete<'b, 'a>>,
}

impl TablePlan<'_, '_> {
    async fn run(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        t: &Prepared,
    ) -> Result<(), (&'static str, tokio_postgres::Error)> {
        let n = t.spec.columns.len();
        let unchanged_flags = |rows: &[&Upsert]| -> Vec<Vec<bool>> {
            (0..n)
                .filter(|i| !t.key_idx.contains(i))
                .map(|i| {
                    rows.iter()
                        .map(|u| matches!(u.cells[i], Cell::Unchanged))
                        .collect()
                })
                .collect()
        };
        let carry_rows: Vec<&Upsert> = self
            .upserts
            .iter()
            .filter(|u| u.moved_from.is_some())
            .collect();
        if let (Some(carry), false) = (&t.carry, carry_rows.is_empty()) {
            let values = column_arrays(n, &carry_rows);
            let flags = unchanged_flags(&carry_rows);
            let old_keys: Vec<Vec<Option<&str>>> = (0..t.key_idx.len())
                .map(|j| {
                    carry_rows
                        .iter()
                        .map(|u| u.moved_from.as_ref().and_then(|k| k[j].as_str()))
                        .collect()
                })
                .collect();
            let seqs: Vec<i64> = carry_rows.iter().map(|u| u.seq).collect();
            let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(3 * n + 1);
            params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.extend(flags.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.extend(old_keys.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.push(&seqs);
            tx.execute(carry, &params)
                .await
                .map_err(|e| ("moving rows with unchanged values to their new key", e))?;
        }
        let keep_rows: Vec<&Upsert> = self
            .upserts
            .iter()
            .filter(|u| u.cells.iter().any(|c| matches!(c, Cell::Unchanged)))
            .collect();
        if let (Some(keep), false) = (&t.keep, keep_rows.is_empty()) {
            let values = column_arrays(n, &keep_rows);
            let flags = unchanged_flags(&keep_rows);
            let seqs: Vec<i64> = keep_rows.iter().map(|u| u.seq).collect();
            let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(2 * n + 1);
            params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.extend(flags.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.push(&seqs);
            tx.execute(keep, &params)
                .await
                .map_err(|e| ("updating rows with unchanged values", e))?;
        }
        if !self.upserts.is_empty() {
            let rows: Vec<&Upsert> = self.upserts.iter().collect();
            let values = column_arrays(n, &rows);
            let seqs: Vec<i64> = rows.iter().map(|u| u.seq).collect();
            let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(n + 1);
            params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.push(&seqs);
            tx.execute(&t.upsert, &params)
                .await
                .map_err(|e| ("upserting rows", e))?;
        }
        if !self.deletes.is_empty() {
            let keys: Vec<Vec<Option<&str>>> = (0..t.key_idx.len())
                .map(|j| self.deletes.iter().map(|d| d.key[j].as_str()).collect())
                .collect();
            let seqs: Vec<i64> = self.deletes.iter().map(|d| d.seq).collect();
            let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(keys.len() + 1);
            params.extend(keys.iter().map(|v| v as &(dyn ToSql + Sync)));
            params.push(&seqs);
            tx.execute(&t.delete, &params)
                .await
                .map_err(|e| ("deleting rows", e))?;
        }
        Ok(())
    }
}

/// A statement of a batch that failed.
pub(super) struct WriteFailure {
    /// Index of the table written.
    pub(super) table: usize,
    /// Index into [`BatchPlan::tables`] when the table's row changes failed, None for a truncate.
    pub(super) rows: Option<usize>,
    pub(super) what: &'static str,
    pub(super) error: WriteError,
}

/// What failed a batch's write: the server's answer, or the connection underneath (a failpoint
/// injects the latter; tokio-postgres builds no such error from outside).
pub(super) enum WriteError {
    Server(tokio_postgres::Error),
    Io(std::io::Error),
}

/// Writes a batch's row changes, then its truncates, in `tx`: the statements both
/// [`PostgresSink::apply`] and [`PostgresSink::replay`] run.
pub(super) async fn write(
    tx: &tokio_postgres::Transaction<'_>,
    tables: &[Prepared],
    plan: &BatchPlan<'_, '_>,
) -> Result<(), WriteFailure> {
    for (i, p) in plan.tables.iter().enumerate() {
        if i > 0 {
            // Between two tables' writes of one batch transaction.
            failpoint::hit(failpoint::PG_MID_BATCH).map_err(|error| WriteFailure {
                table: p.table,
                rows: None,
                what: "writing the batch",
                error: WriteError::Io(error),
            })?;
        }
        p.run(tx, &tables[p.table])
            .await
            .map_err(|(what, error)| WriteFailure {
                table: p.table,
                rows: Some(i),
                what,
                error: WriteError::Server(error),
            })?;
    }
    // Truncates run after all row changes, although in the batch they may sit between them.
    // The seq guard makes that equivalent to seq order: a row last written by a change newer
    // than the truncate has a higher `_seq` and survives it; one written by an older change
    // has a lower `_seq` and is removed, as it would have been had the truncate come later.
    for &(ti, seq) in &plan.truncates {
        tx.execute(&tables[ti].truncate, &[&seq])
            .await
            .map_err(|error| WriteFailure {
                table: ti,
                rows: None,
                what: "truncating rows",
                error: WriteError::Server(error),
            })?;
    }
    Ok(())
}

/// Column-major text arrays (NULL for both NULL and unchanged cells).
pub(super) fn column_arrays<'c>(
    n: usize,
    rows: &[&'c Upsert<'_, '_>],
) -> Vec<Vec<Option<&'c str>>> {
    (0..n)
        .map(|i| rows.iter().map(|u| u.cells[i].as_str()).collect())
        .collect()
}

pub(super) enum Latest<'b, 'a> {
    Upsert(Upsert<'b, 'a>),
    Delete(Delete<'b, 'a>),
}

/// Checks a batch against the tables and collapses repeated changes to one key into the last
/// one (an upsert over an upsert inherits the earlier cells where it has `Unchanged`), and the
/// truncates of one table into the last one (a truncate removes everything an earlier one
/// would, and its seq is the newer tombstone for soft deletes).
pub(super) fn plan<'b, 'a>(
    destination: &str,
    tables: &[Prepared],
    batch: &'b Batch<'a>,
) -> Result<BatchPlan<'b, 'a>, PostgresError> {
    let invalid = |table: &str, reason: String| PostgresError::InvalidBatch {
        destination: destination.to_owned(),
        table: table.to_owned(),
        reason,
    };
    // The table at an index, and a seq checked against the batch's last_seq and the bigint
    // range; the same rules for row changes and truncates.
    let table_at = |ti: usize| {
        tables.get(ti).ok_or_else(|| {
            invalid(
                &format!("#{ti}"),
                format!("table index {ti} out of range ({} tables)", tables.len()),
            )
        })
    };
    let checked_seq = |tname: &str, what: &str, seq: u64| {
        seq_in_batch(what, seq, batch).map_err(|reason| invalid(tname, reason))?;
        to_i64(destination, tname, seq)
    };
    // Per table: key text → slot in `latest`.
    let mut index: Vec<rustc_hash::FxHashMap<Vec<&'b str>, usize>> =
        vec![Default::default(); tables.len()];
    let mut latest: Vec<Vec<Latest<'b, 'a>>> = (0..tables.len()).map(|_| Vec::new()).collect();
    // The last delete: (table, seq, key, the cells it replaced when the batch wrote the row).
    type Replaced<'b, 'a> = (Vec<&'b Cell<'a>>, Option<Vec<&'b Cell<'a>>>, bool);
    type LastDelete<'b, 'a> = (usize, i64, Vec<&'b Cell<'a>>, Option<Replaced<'b, 'a>>);
    let mut last_delete: Option<LastDelete<'b, 'a>> = None;
    for (op_index, (ti, op)) in batch.ops.iter().enumerate() {
        let t = table_at(*ti)?;
        let tname = t.name.to_string();
        let seq = checked_seq(&tname, "change", op.seq())?;
        let (key_cells, key_text) =
            checked_key(op, &t.spec, &t.key_idx).map_err(|reason| invalid(&tname, reason))?;
        let new = match op {
            RowOp::Upsert { cells, .. } => {
                let mut u = Upsert {
                    seq,
                    cells: cells.iter().collect(),
                    moved_from: None,
                    op: op_index,
                    after_delete: false,
                };
                // A key change: the delete of the old key came just before, under this seq.
                if let Some((dt, dseq, old_key, replaced)) = last_delete.take() {
                    let unchanged = u.cells.iter().any(|c| matches!(c, Cell::Unchanged));
                    if dt == *ti && dseq == seq && unchanged && !index[*ti].contains_key(&key_text)
                    {
                        match replaced {
                            // Moved again: still unknown cells come from where the earlier
                            // write's do.
                            Some((prev, prev_moved_from, prev_after_delete)) => {
                                for (cell, p) in u.cells.iter_mut().zip(prev) {
                                    if matches!(cell, Cell::Unchanged) {
                                        *cell = p;
                                    }
                                }
                                u.after_delete = prev_after_delete;
                                u.moved_from = if prev_after_delete {
                                    prev_moved_from
                                } else {
                                    prev_moved_from.or(Some(old_key))
                                };
                            }
                            None => u.moved_from = Some(old_key),
                        }
                    }
                }
                Latest::Upsert(u)
            }
            RowOp::Delete { .. } => {
                let replaced =
                    index[*ti]
                        .get(&key_text)
                        .and_then(|&slot| match &latest[*ti][slot] {
                            Latest::Upsert(u) => {
                                Some((u.cells.clone(), u.moved_from.clone(), u.after_delete))
                            }
                            _ => None,
                        });
                last_delete = Some((*ti, seq, key_cells.clone(), replaced));
                Latest::Delete(Delete {
                    seq,
                    key: key_cells,
                })
            }
        };
        match index[*ti].get(&key_text) {
            None => {
                index[*ti].insert(key_text, latest[*ti].len());
                latest[*ti].push(new);
            }
            Some(&slot) => {
                let old = &mut latest[*ti][slot];
                let old_seq = match old {
                    Latest::Upsert(u) => u.seq,
                    Latest::Delete(d) => d.seq,
                };
                if seq < old_seq {
                    continue;
                }
                let mut new = new;
                match (&mut new, &*old) {
                    (Latest::Upsert(n), Latest::Upsert(o)) => {
                        for (cell, prev) in n.cells.iter_mut().zip(&o.cells) {
                            if matches!(cell, Cell::Unchanged) {
                                *cell = prev;
                            }
                        }
                        // Cells still unchanged come from where the earlier upsert's do.
                        if n.moved_from.is_none() {
                            n.moved_from = o.moved_from.clone();
                            n.after_delete = o.after_delete;
                        }
                    }
                    // The delete is collapsed away: the target's row is what it removed.
                    (Latest::Upsert(n), Latest::Delete(_)) if n.moved_from.is_none() => {
                        n.after_delete = true;
                    }
                    _ => {}
                }
                *old = new;
            }
        }
    }
    let mut truncates: Vec<(usize, i64)> = Vec::new();
    for &(ti, seq) in &batch.truncates {
        let t = table_at(ti)?;
        let seq = checked_seq(&t.name.to_string(), "truncate", seq)?;
        match truncates.iter_mut().find(|(other, _)| *other == ti) {
            Some((_, last)) => *last = (*last).max(seq),
            None => truncates.push((ti, seq)),
        }
    }
    let tables = latest
        .into_iter()
        .enumerate()
        .filter(|(_, ops)| !ops.is_empty())
        .map(|(table, ops)| {
            let mut p = TablePlan {
                table,
                upserts: Vec::new(),
                deletes: Vec::new(),
            };
            for op in ops {
                match op {
                    Latest::Upsert(u) => p.upserts.push(u),
                    Latest::Delete(d) => p.deletes.push(d),
                }
            }
            p
        })
        .collect();
    Ok(BatchPlan { tables, truncates })
}

/// Which of `n` apply connections writes the row with this key: CRC32C over the key's text.
/// Fixed across processes and versions, because the partition watermarks a crash leaves
/// behind are read by the next process (see `PostgresSink::apply`).
pub(super) fn partition_of<'c>(key: impl Iterator<Item = Option<&'c str>>, n: usize) -> usize {
    let mut crc = 0u32;
    for cell in key {
        crc = match cell {
            Some(text) => crc32c::crc32c_append(crc32c::crc32c_append(crc, text.as_bytes()), &[0]),
            None => crc32c::crc32c_append(crc, &[1]),
        };
    }
    (crc as usize) % n.max(1)
}

impl<'b, 'a> Upsert<'b, 'a> {
    fn key<'k>(&'k self, key_idx: &'k [usize]) -> impl Iterator<Item = Option<&'k str>> + 'k {
        key_idx.iter().map(|&i| self.cells[i].as_str())
    }
}

impl<'b, 'a> Delete<'b, 'a> {
    fn key(&self) -> impl Iterator<Item = Option<&str>> + '_ {
        self.key.iter().map(|c| c.as_str())
    }
}

impl<'b, 'a> BatchPlan<'b, 'a> {
    /// Whether several connections may write this plan at once, each its own keys: not with
    /// a truncate (it touches every key) nor with a row moved to a new key (its carry reads
    /// the old key's row, which another connection may be deleting).
    pub(super) fn splittable(&self) -> bool {
        self.truncates.is_empty()
            && self
                .tables
                .iter()
                .all(|t| t.upserts.iter().all(|u| u.moved_from.is_none()))
    }

    /// Keeps the rows for which `keep(table, partition of the key under layout n, seq)` holds,
    /// for every layout `n` in `layouts`; drops tables left without rows.
    pub(super) fn retain(
        &mut self,
        tables: &[Prepared],
        layouts: &[usize],
        keep: impl Fn(usize, usize, i64) -> bool,
    ) {
        let keep_row = |key: &[Option<&str>], seq: i64| {
            layouts
                .iter()
                .all(|&n| keep(n, partition_of(key.iter().copied(), n), seq))
        };
        for p in &mut self.tables {
            let key_idx = &tables[p.table].key_idx;
            p.upserts
                .retain(|u| keep_row(&u.key(key_idx).collect::<Vec<_>>(), u.seq));
            p.deletes
                .retain(|d| keep_row(&d.key().collect::<Vec<_>>(), d.seq));
        }
        self.tables
            .retain(|p| !p.upserts.is_empty() || !p.deletes.is_empty());
    }

    /// Splits a [`splittable`](Self::splittable) plan into `n` plans by
    /// [`partition_of`] each row's key.
    pub(super) fn split(self, tables: &[Prepared], n: usize) -> Vec<BatchPlan<'b, 'a>> {
        let mut parts: Vec<BatchPlan<'b, 'a>> = (0..n)
            .map(|_| BatchPlan {
                tables: Vec::new(),
                truncates: Vec::new(),
            })
            .collect();
        for p in self.tables {
            let key_idx = &tables[p.table].key_idx;
            let mut split: Vec<TablePlan<'b, 'a>> = (0..n)
                .map(|_| TablePlan {
                    table: p.table,
                    upserts: Vec::new(),
                    deletes: Vec::new(),
                })
                .collect();
            for u in p.upserts {
                let at = partition_of(u.key(key_idx), n);
                split[at].upserts.push(u);
            }
            for d in p.deletes {
                let at = partition_of(d.key(), n);
                split[at].deletes.push(d);
            }
            for (part, t) in parts.iter_mut().zip(split) {
                if !t.upserts.is_empty() || !t.deletes.is_empty() {
                    part.tables.push(t);
                }
            }
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::partition_of;

    /// The partition of a key must never change between versions: a crash's partition
    /// watermarks are read by the next process, possibly a newer pgfanout.
    #[test]
    fn a_keys_partition_is_fixed() {
        let of = |key: &[Option<&str>], n| partition_of(key.iter().copied(), n);
        let got: Vec<usize> = vec![
            of(&[Some("1")], 2),
            of(&[Some("2")], 2),
            of(&[Some("1")], 7),
            of(&[Some("a"), Some("b")], 7),
            of(&[Some("ab"), None], 7),
            of(&[Some("a"), Some("b")], 1),
        ];
        assert_eq!(got, vec![0, 1, 3, 3, 5, 0]);
    }
}
