//! Destinations held back (`<schema>.destination_holds`): `failed` ones the daemon does not
//! run until `pgfanout destination resume` clears them, and `needs resync` ones whose tables
//! miss changes the change log no longer holds. Unlike the reports of `destinations.rs`, a hold
//! is a decision: it outlives restarts and is cleared only on purpose.
//!
//! One row per destination, and a resync is never forgotten:
//!
//! | stored | set `failed` | set `needs resync` |
//! |---|---|---|
//! | none | failed | needs resync |
//! | failed | failed (the new failure) | needs resync (its reason the earlier resync's, if any) |
//! | needs resync | failed, the resync kept aside (`resync_reason`) | needs resync (the first one kept, the lower seq) |
//!
//! [`HoldStore::clear_failed`] (a restart retrying a failed destination) turns a failed
//! destination that also needs a resync back into `needs resync`; [`HoldStore::clear`]
//! (`pgfanout destination resume`) removes everything, accepting the gap.

use std::sync::Arc;

use tokio_postgres::Client;

use super::StateError;
use crate::sql::quote_ident;

/// Why a destination is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldKind {
    /// Stopped by an error retrying cannot fix; not run until resumed.
    Failed,
    /// The change log lost changes it had not applied; it streams on, with a gap.
    NeedsResync,
}

impl HoldKind {
    /// As stored and as `status` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldKind::Failed => "failed",
            HoldKind::NeedsResync => "needs resync",
        }
    }

    fn parse(s: &str) -> Option<HoldKind> {
        match s {
            "failed" => Some(HoldKind::Failed),
            "needs resync" => Some(HoldKind::NeedsResync),
            _ => None,
        }
    }
}

/// A hold: what, why (destination, table, column and seq named; never a row value) and the
/// seq — for `failed` the change it stopped at, for `needs resync` the first change it missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub kind: HoldKind,
    pub reason: String,
    pub seq: Option<u64>,
}

/// A stored hold with where it happened and since when.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredHold {
    pub name: String,
    pub hold: Hold,
    /// The target table and column it failed at, when known.
    pub table: Option<String>,
    pub column: Option<String>,
    /// A failed destination that also needs a resync: why.
    pub resync_reason: Option<String>,
    /// When it was set, ISO 8601 in UTC.
    pub since: String,
    /// Seconds since it was set.
    pub age_seconds: f64,
}

/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct HoldStore {
    client: Arc<Client>,
    schema: String,
    table: String,
}

impl HoldStore {
    /// A store over `client`; the schema must be migrated to write (`status` reads without
    /// migrating and treats a missing table as no holds).
    pub fn new(client: Arc<Client>, schema: &str) -> Self {
        HoldStore {
            client,
            schema: schema.to_owned(),
            table: format!("{}.destination_holds", quote_ident(schema)),
        }
    }

    fn err(&self, what: String) -> impl FnOnce(tokio_postgres::Error) -> StateError + '_ {
        move |source| StateError::Query {
            what,
            schema: self.schema.clone(),
            source: source.into(),
        }
    }

    /// Holds `name` back (see the module comment for what happens to a hold it replaces).
    pub async fn set(&self, name: &str, hold: &Hold) -> Result<(), StateError> {
        self.set_at(name, hold, None, None).await
    }

    /// [`HoldStore::set`] naming the target table and column it failed at.
    pub async fn set_at(
        &self,
        name: &str,
        hold: &Hold,
        table: Option<&str>,
        column: Option<&str>,
    ) -> Result<(), StateError> {
        let seq = match hold.seq {
            None => None,
            Some(s) => Some(i64::try_from(s).map_err(|_| StateError::InvalidValue {
                what: format!("the hold of destination {name:?}"),
                schema: self.schema.clone(),
                detail: format!("seq {s} does not fit a bigint"),
            })?),
        };
        let statement = format!(
            "INSERT INTO {} AS h (name, hold, reason, seq, target_table, target_column) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET \
               resync_reason = CASE WHEN excluded.hold = 'failed' THEN \
                   coalesce(h.resync_reason, CASE WHEN h.hold = 'needs resync' THEN h.reason END) END, \
               reason = CASE \
                   WHEN excluded.hold = 'needs resync' AND h.hold = 'needs resync' THEN h.reason \
                   WHEN excluded.hold = 'needs resync' THEN coalesce(h.resync_reason, excluded.reason) \
                   ELSE excluded.reason END, \
               seq = CASE WHEN excluded.hold = 'needs resync' AND h.hold = 'needs resync' \
                   THEN least(h.seq, excluded.seq) ELSE excluded.seq END, \
               since = CASE WHEN excluded.hold = 'needs resync' AND h.hold = 'needs resync' \
                   THEN h.since ELSE now() END, \
               target_table = excluded.target_table, target_column = excluded.target_column, \
               hold = excluded.hold",
            self.table
        );
        self.client
            .execute(
                &statement,
                &[
                    &name,
                    &hold.kind.as_str(),
                    &hold.reason,
                    &seq,
                    &table,
                    &column,
                ],
            )
            .await
            .map_err(self.err(format!("holding destination {name:?}")))?;
        Ok(())
    }

    /// Removes every hold of `name`, a resync included (`pgfanout destination resume`);
    /// whether there was one.
    pub async fn clear(&self, name: &str) -> Result<bool, StateError> {
        let n = self
            .client
            .execute(
                &format!("DELETE FROM {} WHERE name = $1", self.table),
                &[&name],
            )
            .await
            .map_err(self.err(format!("clearing the hold of destination {name:?}")))?;
        Ok(n > 0)
    }

    /// Clears the `needs resync` of `name` (a resync completed), keeping a failure: a failed
    /// destination forgets only the resync it also needed. Whether there was one.
    pub async fn clear_resync(&self, name: &str) -> Result<bool, StateError> {
        let t = &self.table;
        let row = self
            .client
            .query_one(
                &format!(
                    "WITH d AS (DELETE FROM {t} WHERE name = $1 AND hold = 'needs resync' RETURNING 1), \
                          u AS (UPDATE {t} SET resync_reason = NULL \
                                WHERE name = $1 AND hold = 'failed' \
                                  AND resync_reason IS NOT NULL RETURNING 1) \
                     SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM u)"
                ),
                &[&name],
            )
            .await
            .map_err(self.err(format!("clearing the resync of destination {name:?}")))?;
        let n: i64 = row
            .try_get(0)
            .map_err(self.err(format!("clearing the resync of destination {name:?}")))?;
        Ok(n > 0)
    }

    /// Clears a `failed` hold of `name` (a restart retrying it) but not a resync: a failed
    /// destination that also needs one becomes `needs resync`. Whether it was failed.
    pub async fn clear_failed(&self, name: &str) -> Result<bool, StateError> {
        let t = &self.table;
        let row = self
            .client
            .query_one(
                &format!(
                    "WITH d AS (DELETE FROM {t} WHERE name = $1 AND hold = 'failed' \
                                  AND resync_reason IS NULL RETURNING 1), \
                          u AS (UPDATE {t} SET hold = 'needs resync', reason = resync_reason, \
                                  seq = NULL, target_table = NULL, target_column = NULL, \
                                  resync_reason = NULL, since = now() \
                                WHERE name = $1 AND hold = 'failed' \
                                  AND resync_reason IS NOT NULL RETURNING 1) \
                     SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM u)"
                ),
                &[&name],
            )
            .await
            .map_err(self.err(format!("clearing the failure of destination {name:?}")))?;
        let n: i64 = row
            .try_get(0)
            .map_err(self.err(format!("clearing the failure of destination {name:?}")))?;
        Ok(n > 0)
    }

    /// Every hold, by name.
    pub async fn load_all(&self) -> Result<Vec<StoredHold>, StateError> {
        let what = || format!("reading destination holds from {}", self.table);
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT name, hold, reason, seq, target_table, target_column, resync_reason, \
                        to_char(since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                        extract(epoch FROM now() - since)::float8 \
                     FROM {} ORDER BY name",
                    self.table
                ),
                &[],
            )
            .await
            .map_err(self.err(what()))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get(0).map_err(self.err(what()))?;
            let kind: String = row.try_get(1).map_err(self.err(what()))?;
            let kind = HoldKind::parse(&kind).ok_or_else(|| StateError::InvalidValue {
                what: format!("the hold of destination {name:?}"),
                schema: self.schema.clone(),
                detail: format!("unknown hold {kind:?}"),
            })?;
            let seq: Option<i64> = row.try_get(3).map_err(self.err(what()))?;
            out.push(StoredHold {
                hold: Hold {
                    kind,
                    reason: row.try_get(2).map_err(self.err(what()))?,
                    seq: seq.and_then(|s| u64::try_from(s).ok()),
                },
                table: row.try_get(4).map_err(self.err(what()))?,
                column: row.try_get(5).map_err(self.err(what()))?,
                resync_reason: row.try_get(6).map_err(self.err(what()))?,
                since: row.try_get(7).map_err(self.err(what()))?,
                age_seconds: row.try_get(8).map_err(self.err(what()))?,
                name,
            });
        }
        Ok(out)
    }
}

impl std::fmt::Debug for HoldStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldStore")
            .field("table", &self.table)
            .finish()
    }
}
