//! Unchanged TOAST values no copy of is known, read from the source.
//!
//! ```text
//!   batch + its partial ops (an upsert with Cell::Unchanged, and its SourceRow)
//!      │  Writer::unknown_unchanged: which have no copy — not the old row (the planner filled
//!      │  those), not earlier in the batch, not in the destination's current row
//!      ▼  none ─▶ done (an update of a row the destination holds never reaches the source)
//!   per source table: SELECT key, missing columns FROM t WHERE (key) IN ((…), …)
//!      │  (source::rows: set-based, text output exactly as pgoutput sends it)
//!      ▼
//!   the change's tuple with those values ─▶ the same mapping, the same tenant attributes
//!      ▼
//!   the op's Unchanged cells := what that evaluation gives
//! ```
//!
//! **Why the source's current value is right.** PostgreSQL leaves a value out of an update
//! only when the update did not change it, so the change's value is the value before it. The
//! source row read now is at least as new as the change: when a later change altered the
//! value, that change is in the log after this one and is applied after it, replacing what
//! is written now; when none did, it is the change's value. A row the source no longer has
//! was deleted (or moved to another key) by a later change, which the log also holds: the op
//! is written as it is (those columns NULL) and that later change settles it.
//!
//! Only the missing cells are taken from the new evaluation: every other cell is the change's
//! own. One SQL connection to the source per writer, opened when first needed and dropped on
//! any error (the next attempt connects again); a lost connection is transient, so the
//! destination retries from its watermark.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio_postgres::Client;
use tracing::debug;

use crate::change::{Datum, Relation};
use crate::fanout::route::{PartialOps, RouteError, SourceRow};
use crate::pgconn::ConnInfo;
use crate::sink::{Batch, Cell, RowOp};
use crate::source::rows;
use crate::transform::CompiledMapping;

use super::router::Routing;
use super::FanoutError;

/// Reads a writer's unknown unchanged values from the source and fills them in.
pub(super) struct Refill {
    source: ConnInfo,
    routing: Arc<Routing>,
    client: Option<Client>,
    /// Per mapping id: the relation it was compiled for, and the mapping.
    compiled: HashMap<usize, (Arc<Relation>, CompiledMapping)>,
    /// Per relation oid: the description and the columns that find one of its rows.
    keys: HashMap<u32, (Arc<Relation>, Option<Vec<usize>>)>,
}

/// Ops of one source table to read.
type Group<'p> = (Arc<Relation>, Vec<&'p (usize, Arc<SourceRow>)>);

impl Refill {
    pub(super) fn new(source: ConnInfo, routing: Arc<Routing>) -> Self {
        Refill {
            source,
            routing,
            client: None,
            compiled: HashMap::default(),
            keys: HashMap::default(),
        }
    }

    /// Closes the source connection, if open (an idle destination holds none; the next fill
    /// connects again).
    pub(super) fn disconnect(&mut self) {
        self.client = None;
    }

    /// Fills the [`Cell::Unchanged`] cells of the ops of `batch` at the indexes `unknown`
    /// (ascending; see [`crate::sink::Writer::unknown_unchanged`]) that are partial ops
    /// (`partial`), from their rows' current values in the source. Returns how many ops it
    /// filled. An op whose row the source no longer has stays as it is.
    pub(super) async fn fill(
        &mut self,
        destination: &str,
        batch: &mut Batch<'static>,
        partial: &PartialOps,
        unknown: &[usize],
    ) -> Result<usize, FanoutError> {
        let mut groups: Vec<Group<'_>> = Vec::new();
        for p in partial {
            if unknown.binary_search(&p.0).is_err() {
                continue;
            }
            let rel = &p.1.relation;
            match groups
                .iter_mut()
                .find(|(r, _)| Arc::ptr_eq(r, rel) || **r == **rel)
            {
                Some((_, ops)) => ops.push(p),
                None => groups.push((rel.clone(), vec![p])),
            }
        }
        let mut filled = 0;
        for (rel, ops) in groups {
            let result = self.fill_table(destination, batch, &rel, &ops).await;
            if result.is_err() {
                // Whatever went wrong, the next attempt starts from a new connection.
                self.client = None;
            }
            filled += result?;
        }
        Ok(filled)
    }

    async fn fill_table(
        &mut self,
        destination: &str,
        batch: &mut Batch<'static>,
        rel: &Arc<Relation>,
        ops: &[&(usize, Arc<SourceRow>)],
    ) -> Result<usize, FanoutError> {
        let table = format!("{}.{}", rel.schema, rel.name);
        let Some(key) = self.row_key(rel).await? else {
            debug!(
                destination,
                table, "no unique key to read unchanged TOAST values by"
            );
            return Ok(0);
        };
        // The columns missing from any of these rows, and each row's key text.
        let mut columns: Vec<usize> = (0..rel.columns.len())
            .filter(|&c| {
                ops.iter()
                    .any(|(_, s)| matches!(s.tuple.0.get(c), Some(Datum::UnchangedToast)))
            })
            .collect();
        columns.sort_unstable();
        let key_text = |s: &SourceRow| -> Option<Vec<String>> {
            key.iter()
                .map(|&k| match s.tuple.0.get(k) {
                    Some(Datum::Text(b)) => std::str::from_utf8(b).ok().map(str::to_owned),
                    _ => None,
                })
                .collect()
        };
        let texts: Vec<Option<Vec<String>>> = ops.iter().map(|(_, s)| key_text(s)).collect();
        let mut keys: Vec<Vec<&str>> = texts
            .iter()
            .flatten()
            .map(|k| k.iter().map(String::as_str).collect())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() || columns.is_empty() {
            return Ok(0);
        }
        let client = self.client().await?;
        let found = rows::current_values(client, rel, &key, &columns, &keys).await?;
        // As shared buffers (no copy): one value may fill the ops of several target tables.
        let found: HashMap<Vec<String>, Vec<Option<Bytes>>> = found
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().map(|v| v.map(Bytes::from)).collect()))
            .collect();
        debug!(
            destination,
            table,
            rows = keys.len(),
            found = found.len(),
            "read unchanged TOAST values from the source"
        );
        let routing = self.routing.clone();
        let mut filled = 0;
        for ((index, source), text) in ops.iter().map(|p| (&p.0, &p.1)).zip(&texts) {
            let Some(values) = text.as_ref().and_then(|t| found.get(t)) else {
                // Gone from the source: a later change in the log deleted or moved it.
                continue;
            };
            let mut tuple = source.tuple.clone();
            for (&c, v) in columns.iter().zip(values) {
                if let Some(d @ Datum::UnchangedToast) = tuple.0.get_mut(c) {
                    *d = v.clone().map_or(Datum::Null, Datum::Text);
                }
            }
            let mapping = self.mapping(source.mapping, rel)?;
            let Some((_, RowOp::Upsert { seq, cells })) = batch.ops.get_mut(*index) else {
                continue;
            };
            let row = match mapping.eval(&tuple, &source.attributes) {
                Ok(Some(row)) => row,
                // The filter reads no unchanged value (that is an error when routing), so it
                // decides as it did; nothing to fill if it does not.
                Ok(None) => continue,
                Err(e) => {
                    return Err(FanoutError::Route {
                        seq: *seq,
                        mapping: routing.mappings[source.mapping].name.clone(),
                        source: RouteError::Eval(e),
                    })
                }
            };
            for (cell, new) in cells.iter_mut().zip(row) {
                if matches!(cell, Cell::Unchanged) {
                    // A huge value stays a slice of the buffer it was read into.
                    *cell = new.into_static(&tuple);
                }
            }
            filled += 1;
        }
        Ok(filled)
    }

    async fn client(&mut self) -> Result<&Client, FanoutError> {
        let client = match self.client.take() {
            Some(c) => c,
            None => self
                .source
                .connect_sql()
                .await
                .map_err(|source| FanoutError::Connect {
                    what: "the source database (for unchanged TOAST values)".into(),
                    source,
                })?,
        };
        Ok(self.client.insert(client))
    }

    /// The columns that find one row of `rel` (see [`rows::row_key`]), looked up once per
    /// description.
    async fn row_key(&mut self, rel: &Arc<Relation>) -> Result<Option<Vec<usize>>, FanoutError> {
        if let Some((r, key)) = self.keys.get(&rel.oid) {
            if Arc::ptr_eq(r, rel) || **r == **rel {
                return Ok(key.clone());
            }
        }
        let client = self.client().await?;
        let key = rows::row_key(client, rel).await?;
        self.keys.insert(rel.oid, (rel.clone(), key.clone()));
        Ok(key)
    }

    /// Mapping `m` compiled for `rel` (the description the change carried).
    fn mapping(&mut self, m: usize, rel: &Arc<Relation>) -> Result<&CompiledMapping, FanoutError> {
        use std::collections::hash_map::Entry;
        let compile = || -> Result<_, FanoutError> {
            Ok((rel.clone(), self.routing.compile(m, rel, None)?.mapping))
        };
        let (_, mapping) = match self.compiled.entry(m) {
            Entry::Occupied(mut e) => {
                let (r, _) = e.get();
                if !(Arc::ptr_eq(r, rel) || **r == **rel) {
                    e.insert(compile()?);
                }
                e.into_mut()
            }
            Entry::Vacant(v) => v.insert(compile()?),
        };
        Ok(mapping)
    }
}
