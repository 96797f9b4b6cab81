//! Slot checkpoints: the (commit end LSN, last seq) pair of the last transaction boundary
//! pgfanout made durable, one row per slot in `<schema>.checkpoints`.

use std::sync::Arc;

use tokio_postgres::Client;

use super::StateError;
use crate::lsn::Lsn;
use crate::sql::quote_ident;

/// Where the stream stood at a transaction boundary: restarting from `commit_end_lsn` with the
/// sequencer at `last_seq` gives every later change the seq it had before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub commit_end_lsn: Lsn,
    pub last_seq: u64,
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
    /// `client` must be connected to a state database whose `schema` is migrated.
    pub(super) fn new(client: Arc<Client>, schema: &str) -> Self {
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
                    "SELECT commit_end_lsn::text, last_seq FROM {} WHERE slot = $1",
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
        Ok(Some(Checkpoint {
            commit_end_lsn,
            last_seq,
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
        let written = self
            .client
            .execute(
                &format!(
                    "INSERT INTO {} AS c (slot, commit_end_lsn, last_seq, updated_at) \
                     VALUES ($1, $2::text::pg_lsn, $3, now()) \
                     ON CONFLICT (slot) DO UPDATE \
                     SET commit_end_lsn = excluded.commit_end_lsn, \
                         last_seq = excluded.last_seq, \
                         updated_at = excluded.updated_at \
                     WHERE (c.last_seq, c.commit_end_lsn) <= (excluded.last_seq, excluded.commit_end_lsn)",
                    self.table
                ),
                &[&slot, &checkpoint.commit_end_lsn.to_string(), &seq],
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
