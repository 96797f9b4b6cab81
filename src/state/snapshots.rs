//! Snapshots (`<schema>.snapshots`, `snapshot_tables`, `snapshot_ranges`) and coverage
//! (`<schema>.coverage`): see `migrations/0005_snapshots.sql` for what each column means.
//!
//! A request is written by whoever wants it (`pgfanout resync`, the daemon for the initial
//! snapshot, a coverage change or a `needs resync` hold); the daemon starts it (its tables and
//! key ranges), records each range's progress once the chunk is durable in the change log, and
//! marks it done. Keys are stored as text arrays in key-column order.

use std::sync::Arc;

use tokio_postgres::{Client, Row};

use super::StateError;
use crate::sql::quote_ident;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Pending => "pending",
            SnapshotState::Running => "running",
            SnapshotState::Done => "done",
            SnapshotState::Failed => "failed",
            SnapshotState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => SnapshotState::Pending,
            "running" => SnapshotState::Running,
            "done" => SnapshotState::Done,
            "failed" => SnapshotState::Failed,
            "cancelled" => SnapshotState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_open(self) -> bool {
        matches!(self, SnapshotState::Pending | SnapshotState::Running)
    }
}

/// A snapshot to request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSnapshot {
    pub reason: String,
    pub destinations: Vec<String>,
    pub tenants: Option<Vec<String>>,
    pub mappings: Option<Vec<String>>,
    pub clears_hold: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRow {
    pub id: u64,
    pub request: NewSnapshot,
    pub state: SnapshotState,
    pub start_seq: Option<u64>,
    pub done_seq: Option<u64>,
    pub error: Option<String>,
    /// Seconds since it was requested / started.
    pub age_seconds: f64,
    pub running_seconds: Option<f64>,
}

/// One key range of a table: `(lower, upper]`, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeProgress {
    pub range_no: u32,
    pub lower: Option<Vec<String>>,
    pub upper: Option<Vec<String>>,
    pub position: Option<Vec<String>>,
    pub chunks: u64,
    pub rows: u64,
    pub done: bool,
    /// The seq of the last chunk's mark in the change log (0: none yet).
    pub mark_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableProgress {
    pub source_table: String,
    pub mappings: Vec<String>,
    pub key_columns: Vec<String>,
    pub estimated_rows: u64,
    pub done: bool,
    pub ranges: Vec<RangeProgress>,
}

/// One row of `coverage`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Coverage {
    pub destination: String,
    pub mapping: String,
    /// `*`: every tenant the destination serves.
    pub tenant: String,
}

/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct SnapshotStore {
    client: Arc<Client>,
    schema: String,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SnapshotStore {
    pub fn new(client: Arc<Client>, schema: &str) -> Self {
        SnapshotStore {
            client,
            schema: schema.to_owned(),
        }
    }

    fn t(&self, table: &str) -> String {
        format!("{}.{table}", quote_ident(&self.schema))
    }

    fn err(&self, what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> StateError {
        let (what, schema) = (what.into(), self.schema.clone());
        move |source| StateError::Query {
            what,
            schema,
            source: source.into(),
        }
    }

    /// Writes a request; its id.
    pub async fn request(&self, r: &NewSnapshot) -> Result<u64, StateError> {
        let row = self
            .client
            .query_one(
                &format!(
                    "INSERT INTO {} (reason, destinations, tenants, mappings, clears_hold) \
                     VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    self.t("snapshots")
                ),
                &[
                    &r.reason,
                    &r.destinations,
                    &r.tenants,
                    &r.mappings,
                    &r.clears_hold,
                ],
            )
            .await
            .map_err(self.err("requesting a snapshot"))?;
        let id: i64 = row.try_get(0).map_err(self.err("requesting a snapshot"))?;
        Ok(to_u64(id))
    }

    const COLUMNS: &'static str = "id, reason, destinations, tenants, mappings, clears_hold, \
        state, start_seq, done_seq, error, \
        extract(epoch FROM now() - requested_at)::float8, \
        extract(epoch FROM now() - started_at)::float8";

    fn snapshot(&self, row: &Row) -> Result<SnapshotRow, StateError> {
        let get = |e| StateError::Query {
            what: "reading a snapshot".into(),
            schema: self.schema.clone(),
            source: crate::pgconn::PgError::from(e),
        };
        let state: String = row.try_get(6).map_err(get)?;
        Ok(SnapshotRow {
            id: to_u64(row.try_get(0).map_err(get)?),
            request: NewSnapshot {
                reason: row.try_get(1).map_err(get)?,
                destinations: row.try_get(2).map_err(get)?,
                tenants: row.try_get(3).map_err(get)?,
                mappings: row.try_get(4).map_err(get)?,
                clears_hold: row.try_get(5).map_err(get)?,
            },
            state: SnapshotState::parse(&state).ok_or_else(|| StateError::InvalidValue {
                what: "a snapshot's state".into(),
                schema: self.schema.clone(),
                detail: format!("unknown state {state:?}"),
            })?,
            start_seq: row.try_get::<_, Option<i64>>(7).map_err(get)?.map(to_u64),
            done_seq: row.try_get::<_, Option<i64>>(8).map_err(get)?.map(to_u64),
            error: row.try_get(9).map_err(get)?,
            age_seconds: row
                .try_get::<_, Option<f64>>(10)
                .map_err(get)?
                .unwrap_or(0.0),
            running_seconds: row.try_get(11).map_err(get)?,
        })
    }

    /// Pending and running snapshots, oldest first.
    pub async fn open(&self) -> Result<Vec<SnapshotRow>, StateError> {
        self.select("WHERE state IN ('pending', 'running') ORDER BY id")
            .await
    }

    /// Every snapshot, newest first, at most `limit`.
    pub async fn recent(&self, limit: i64) -> Result<Vec<SnapshotRow>, StateError> {
        self.select(&format!("ORDER BY id DESC LIMIT {limit}"))
            .await
    }

    pub async fn get(&self, id: u64) -> Result<Option<SnapshotRow>, StateError> {
        Ok(self
            .select(&format!("WHERE id = {}", to_i64(id)))
            .await?
            .pop())
    }

    async fn select(&self, tail: &str) -> Result<Vec<SnapshotRow>, StateError> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {} FROM {} {tail}",
                    Self::COLUMNS,
                    self.t("snapshots")
                ),
                &[],
            )
            .await
            .map_err(self.err("reading the snapshots"))?;
        rows.iter().map(|r| self.snapshot(r)).collect()
    }

    /// Starts snapshot `id`: its tables and their ranges (any left by a start that did not
    /// finish are replaced), and `start_seq`.
    pub async fn start(
        &self,
        id: u64,
        start_seq: u64,
        tables: &[TableProgress],
    ) -> Result<(), StateError> {
        let what = format!("starting snapshot {id}");
        let id = to_i64(id);
        self.client
            .execute(
                &format!(
                    "DELETE FROM {} WHERE snapshot = $1",
                    self.t("snapshot_tables")
                ),
                &[&id],
            )
            .await
            .map_err(self.err(what.clone()))?;
        for t in tables {
            self.client
                .execute(
                    &format!(
                        "INSERT INTO {} (snapshot, source_table, mappings, key_columns, estimated_rows) \
                         VALUES ($1, $2, $3, $4, $5)",
                        self.t("snapshot_tables")
                    ),
                    &[&id, &t.source_table, &t.mappings, &t.key_columns, &to_i64(t.estimated_rows)],
                )
                .await
                .map_err(self.err(what.clone()))?;
            for r in &t.ranges {
                self.client
                    .execute(
                        &format!(
                            "INSERT INTO {} (snapshot, source_table, range_no, lower_key, upper_key) \
                             VALUES ($1, $2, $3, $4, $5)",
                            self.t("snapshot_ranges")
                        ),
                        &[&id, &t.source_table, &(r.range_no as i32), &r.lower, &r.upper],
                    )
                    .await
                    .map_err(self.err(what.clone()))?;
            }
        }
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET state = 'running', start_seq = $2, started_at = now() WHERE id = $1",
                    self.t("snapshots")
                ),
                &[&id, &to_i64(start_seq)],
            )
            .await
            .map_err(self.err(what))?;
        Ok(())
    }

    /// The tables of snapshot `id` with their ranges, in table order.
    pub async fn tables(&self, id: u64) -> Result<Vec<TableProgress>, StateError> {
        let what = format!("reading the progress of snapshot {id}");
        let id = to_i64(id);
        let get = |e| StateError::Query {
            what: what.clone(),
            schema: self.schema.clone(),
            source: crate::pgconn::PgError::from(e),
        };
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT source_table, mappings, key_columns, estimated_rows, done \
                     FROM {} WHERE snapshot = $1 ORDER BY source_table",
                    self.t("snapshot_tables")
                ),
                &[&id],
            )
            .await
            .map_err(get)?;
        let mut tables = Vec::with_capacity(rows.len());
        for r in &rows {
            tables.push(TableProgress {
                source_table: r.try_get(0).map_err(get)?,
                mappings: r.try_get(1).map_err(get)?,
                key_columns: r.try_get(2).map_err(get)?,
                estimated_rows: to_u64(r.try_get(3).map_err(get)?),
                done: r.try_get(4).map_err(get)?,
                ranges: Vec::new(),
            });
        }
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT source_table, range_no, lower_key, upper_key, position, chunks, rows, done, mark_seq \
                     FROM {} WHERE snapshot = $1 ORDER BY source_table, range_no",
                    self.t("snapshot_ranges")
                ),
                &[&id],
            )
            .await
            .map_err(get)?;
        for r in &rows {
            let table: String = r.try_get(0).map_err(get)?;
            let range_no: i32 = r.try_get(1).map_err(get)?;
            let range = RangeProgress {
                range_no: u32::try_from(range_no).unwrap_or(0),
                lower: r.try_get(2).map_err(get)?,
                upper: r.try_get(3).map_err(get)?,
                position: r.try_get(4).map_err(get)?,
                chunks: to_u64(r.try_get(5).map_err(get)?),
                rows: to_u64(r.try_get(6).map_err(get)?),
                done: r.try_get(7).map_err(get)?,
                mark_seq: to_u64(r.try_get(8).map_err(get)?),
            };
            if let Some(t) = tables.iter_mut().find(|t| t.source_table == table) {
                t.ranges.push(range);
            }
        }
        Ok(tables)
    }

    /// Records a range's progress: a chunk is durable in the change log.
    pub async fn save_range(
        &self,
        id: u64,
        table: &str,
        range: &RangeProgress,
    ) -> Result<(), StateError> {
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET position = $4, chunks = $5, rows = $6, done = $7, mark_seq = $8 \
                     WHERE snapshot = $1 AND source_table = $2 AND range_no = $3",
                    self.t("snapshot_ranges")
                ),
                &[
                    &to_i64(id),
                    &table,
                    &(range.range_no as i32),
                    &range.position,
                    &to_i64(range.chunks),
                    &to_i64(range.rows),
                    &range.done,
                    &to_i64(range.mark_seq),
                ],
            )
            .await
            .map_err(self.err(format!("saving the progress of snapshot {id} on {table}")))?;
        Ok(())
    }

    pub async fn table_done(&self, id: u64, table: &str) -> Result<(), StateError> {
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET done = true WHERE snapshot = $1 AND source_table = $2",
                    self.t("snapshot_tables")
                ),
                &[&to_i64(id), &table],
            )
            .await
            .map_err(self.err(format!("saving the progress of snapshot {id} on {table}")))?;
        Ok(())
    }

    /// Ends snapshot `id` in `state` (done: at `done_seq`; failed: with `error`).
    pub async fn finish(
        &self,
        id: u64,
        state: SnapshotState,
        done_seq: Option<u64>,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET state = $2, done_seq = $3, error = $4, finished_at = now() WHERE id = $1",
                    self.t("snapshots")
                ),
                &[&to_i64(id), &state.as_str(), &done_seq.map(to_i64), &error],
            )
            .await
            .map_err(self.err(format!("ending snapshot {id}")))?;
        Ok(())
    }

    /// Everything the destinations were given.
    pub async fn coverage(&self) -> Result<Vec<Coverage>, StateError> {
        let what = "reading the coverage";
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT destination, mapping, tenant FROM {}",
                    self.t("coverage")
                ),
                &[],
            )
            .await
            .map_err(self.err(what))?;
        rows.iter()
            .map(|r| {
                Ok(Coverage {
                    destination: r.try_get(0).map_err(self.err(what))?,
                    mapping: r.try_get(1).map_err(self.err(what))?,
                    tenant: r.try_get(2).map_err(self.err(what))?,
                })
            })
            .collect()
    }

    pub async fn add_coverage(&self, rows: &[Coverage]) -> Result<(), StateError> {
        for c in rows {
            self.client
                .execute(
                    &format!(
                        "INSERT INTO {} (destination, mapping, tenant) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING",
                        self.t("coverage")
                    ),
                    &[&c.destination, &c.mapping, &c.tenant],
                )
                .await
                .map_err(self.err("recording the coverage"))?;
        }
        Ok(())
    }
}
