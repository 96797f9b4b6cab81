//! Slot checkpoints: the (commit end LSN, last seq) pair of the last transaction boundary
//! pgfanout made durable, one row per slot in `<schema>.checkpoints`.

use std::sync::Arc;

use tokio_postgres::Client;

use super::StateError;
use crate::binding::{Lineage, SourceId};
use crate::lsn::Lsn;
use crate::sql::quote_ident;

/// Where the stream stood at a transaction boundary: restarting from `commit_end_lsn` with the
/// sequencer at `last_seq` gives every later change the seq it had before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub commit_end_lsn: Lsn,
    pub last_seq: u64,
    /// What the seqs count; `None` for a checkpoint saved before bindings existed.
    pub binding: Option<Binding>,
}

/// The stream and numbering a checkpoint's seqs belong to (see `crate::binding`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub lineage: Lineage,
    pub source: SourceId,
}

/// Reads and writes checkpoints. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct CheckpointStore {
    client: Arc<Client>,
    schema: String,
    /// `"schema".checkpoints`, quoted.
    table: String,
}

impl CheckpointStore {
    /// `client` must be connected to a state database whose `schema` is migrated (`status`
    /// and `log verify` read without migrating: an unmigrated schema is an error then).
    pub fn new(client: Arc<Client>, schema: &str) -> Self {
        CheckpointStore {
            client,
            schema: schema.to_owned(),
            table: format!("{}.checkpoints", quote_ident(schema)),
        }
    }

    /// The checkpoint saved for `slot`, if any.
    pub async fn load(&self, slot: &str) -> Result<Option<Checkpoint>, StateError> {
        let what = || {
            format!(
                "loading the checkpoint of slot {slot:?} from {}",
                self.table
            )
        };
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT commit_end_lsn::text, last_seq, system_identifier, timeline, database, lineage \
                     FROM {} WHERE slot = $1",
                    self.table
                ),
                &[&slot],
            )
            .await
            .map_err(|source| self.query_error(what(), source))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let lsn: String = row
            .try_get(0)
            .map_err(|source| self.query_error(what(), source))?;
        let seq: i64 = row
            .try_get(1)
            .map_err(|source| self.query_error(what(), source))?;
        let invalid = |detail: String| StateError::InvalidValue {
            what: format!("checkpoint of slot {slot:?}"),
            schema: self.schema.clone(),
            detail,
        };
        let commit_end_lsn = lsn
            .parse::<Lsn>()
            .map_err(|e| invalid(format!("commit_end_lsn: {e}")))?;
        let last_seq =
            u64::try_from(seq).map_err(|_| invalid(format!("last_seq {seq} is negative")))?;
        let system: Option<String> = row
            .try_get(2)
            .map_err(|source| self.query_error(what(), source))?;
        let timeline: Option<i32> = row
            .try_get(3)
            .map_err(|source| self.query_error(what(), source))?;
        let database: Option<String> = row
            .try_get(4)
            .map_err(|source| self.query_error(what(), source))?;
        let lineage: Option<String> = row
            .try_get(5)
            .map_err(|source| self.query_error(what(), source))?;
        let binding = match (system, timeline, database, lineage) {
            (Some(system), Some(timeline), Some(database), Some(lineage)) => Some(Binding {
                lineage: lineage
                    .parse()
                    .map_err(|e| invalid(format!("lineage: {e}")))?,
                source: SourceId {
                    system_identifier: system
                        .parse()
                        .map_err(|_| invalid("system_identifier is not a number".into()))?,
                    timeline: u32::try_from(timeline)
                        .map_err(|_| invalid("timeline is negative".into()))?,
                    database,
                    slot: slot.to_owned(),
                },
            }),
            (None, None, None, None) => None,
            _ => return Err(invalid("its binding columns are partly NULL".into())),
        };
        Ok(Some(Checkpoint {
            commit_end_lsn,
            last_seq,
            binding,
        }))
    }

    /// Saves `checkpoint` for `slot` unless the stored one is further along; returns whether it
    /// was written.
    ///
    /// Never moves backwards: saves can arrive out of order (the periodic save and the one at
    /// shutdown, or a process that lost its slot to a newer one and does not know it yet). A
    /// checkpoint older than the slot's `confirmed_flush_lsn` is worse than none: PostgreSQL
    /// resumes the stream at the slot's position, not at the checkpoint's, so the sequencer
    /// would restart from a smaller `last_seq` and give changes seqs that earlier changes
    /// already carry — destinations, which keep the higher version, would drop them.
    ///
    /// A checkpoint of another lineage replaces the stored one whatever its numbers: start-up
    /// allows that only when the operator started a new numbering on purpose.
    ///
    /// The guard compares (last_seq, commit_end_lsn) as a pair: an equal `last_seq` with a later
    /// LSN is progress too (transactions without published row changes advance the LSN but no
    /// seq) and is written; the same checkpoint again is written (only `updated_at` changes).
    pub async fn save(&self, slot: &str, checkpoint: &Checkpoint) -> Result<bool, StateError> {
        let seq = i64::try_from(checkpoint.last_seq).map_err(|_| StateError::InvalidValue {
            what: format!("saving the checkpoint of slot {slot:?}"),
            schema: self.schema.clone(),
            detail: format!(
                "last_seq {} does not fit the bigint column",
                checkpoint.last_seq
            ),
        })?;
        let b = checkpoint.binding.as_ref();
        let system = b.map(|b| b.source.system_identifier.to_string());
        let timeline = b.map(|b| i32::try_from(b.source.timeline).unwrap_or(i32::MAX));
        let database = b.map(|b| b.source.database.clone());
        let lineage = b.map(|b| b.lineage.to_string());
        let written = self
            .client
            .execute(
                &format!(
                    "INSERT INTO {} AS c (slot, commit_end_lsn, last_seq, updated_at, \
                         system_identifier, timeline, database, lineage) \
                     VALUES ($1, $2::text::pg_lsn, $3, now(), $4, $5, $6, $7) \
                     ON CONFLICT (slot) DO UPDATE \
                     SET commit_end_lsn = excluded.commit_end_lsn, \
                         last_seq = excluded.last_seq, \
                         updated_at = excluded.updated_at, \
                         system_identifier = excluded.system_identifier, \
                         timeline = excluded.timeline, \
                         database = excluded.database, \
                         lineage = excluded.lineage \
                     WHERE (c.last_seq, c.commit_end_lsn) <= (excluded.last_seq, excluded.commit_end_lsn) \
                        OR c.lineage IS DISTINCT FROM excluded.lineage",
                    self.table
                ),
                &[
                    &slot,
                    &checkpoint.commit_end_lsn.to_string(),
                    &seq,
                    &system,
                    &timeline,
                    &database,
                    &lineage,
                ],
            )
            .await
            .map_err(|source| {
                self.query_error(
                    format!("saving the checkpoint of slot {slot:?} to {}", self.table),
                    source,
                )
            })?;
        Ok(written > 0)
    }

    fn query_error(&self, what: String, source: tokio_postgres::Error) -> StateError {
        StateError::Query {
            what,
            schema: self.schema.clone(),
            source: source.into(),
        }
    }
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}
