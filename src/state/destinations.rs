//! What each destination's writer last reported (`<schema>.destinations`), for
//! `pgfanout status`. The destination's own watermark table stays the truth for resuming; this
//! is a view for operators, written by the daemon every few seconds.

use std::sync::Arc;

use tokio_postgres::Client;

use super::StateError;
use crate::sql::quote_ident;

/// One destination as its writer last saw itself.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationReport {
    pub name: String,
    /// `streaming`, `catching up`, `retrying`, `needs resync`, `stopped`, `starting`.
    pub state: String,
    pub watermark: u64,
    /// Commit time of the last applied source transaction, microseconds since 2000-01-01 UTC
    /// (PostgreSQL's epoch).
    pub applied_commit_time: Option<i64>,
    pub last_error: Option<String>,
    /// Seconds since the report was written.
    pub age_seconds: f64,
}

/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct DestinationStore {
    client: Arc<Client>,
    schema: String,
    table: String,
}

/// Seconds between 1970-01-01 and 2000-01-01.
const PG_EPOCH_UNIX_SECONDS: f64 = 946_684_800.0;

impl DestinationStore {
    /// A store over `client`; the schema must be migrated for [`DestinationStore::save`]
    /// (`status` reads without migrating and treats a missing table as no reports).
    pub fn new(client: Arc<Client>, schema: &str) -> Self {
        DestinationStore {
            client,
            schema: schema.to_owned(),
            table: format!("{}.destinations", quote_ident(schema)),
        }
    }

    /// Writes `reports` (their `age_seconds` is ignored: now is the time), in one statement:
    /// a round trip per destination every report period adds up with 1,000 destinations.
    pub async fn save(&self, reports: &[DestinationReport]) -> Result<(), StateError> {
        let statement = format!(
            "INSERT INTO {} AS d (name, state, watermark, applied_commit_time, last_error, updated_at) \
             SELECT r.name, r.state, r.watermark, CASE WHEN r.commit IS NULL THEN NULL \
                    ELSE to_timestamp(r.commit + {PG_EPOCH_UNIX_SECONDS}) END, r.last_error, now() \
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::float8[], $5::text[]) \
                  AS r(name, state, watermark, commit, last_error) \
             ON CONFLICT (name) DO UPDATE SET state = excluded.state, \
                 watermark = excluded.watermark, applied_commit_time = excluded.applied_commit_time, \
                 last_error = excluded.last_error, updated_at = excluded.updated_at",
            self.table
        );
        let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
        let states: Vec<&str> = reports.iter().map(|r| r.state.as_str()).collect();
        let watermarks: Vec<i64> = reports
            .iter()
            .map(|r| i64::try_from(r.watermark).unwrap_or(i64::MAX))
            .collect();
        let commits: Vec<Option<f64>> = reports
            .iter()
            .map(|r| r.applied_commit_time.map(|us| us as f64 / 1e6))
            .collect();
        let errors: Vec<Option<&str>> = reports.iter().map(|r| r.last_error.as_deref()).collect();
        self.client
            .execute(
                &statement,
                &[&names, &states, &watermarks, &commits, &errors],
            )
            .await
            .map_err(|source: tokio_postgres::Error| StateError::Query {
                what: format!("saving the status of {} destinations", reports.len()),
                schema: self.schema.clone(),
                source: source.into(),
            })?;
        Ok(())
    }

    /// Every stored report, by name.
    pub async fn load_all(&self) -> Result<Vec<DestinationReport>, StateError> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT name, state, watermark, \
                        ((extract(epoch FROM applied_commit_time) - {PG_EPOCH_UNIX_SECONDS}) * 1e6)::float8, \
                        last_error, extract(epoch FROM now() - updated_at)::float8 \
                     FROM {} ORDER BY name",
                    self.table
                ),
                &[],
            )
            .await
            .map_err(|source: tokio_postgres::Error| StateError::Query {
                what: format!("reading destination status from {}", self.table),
                schema: self.schema.clone(),
                source: source.into(),
            })?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let get_err = |source: tokio_postgres::Error| StateError::Query {
                what: format!("reading destination status from {}", self.table),
                schema: self.schema.clone(),
                source: source.into(),
            };
            let watermark: i64 = row.try_get(2).map_err(get_err)?;
            let commit: Option<f64> = row.try_get(3).map_err(get_err)?;
            out.push(DestinationReport {
                name: row.try_get(0).map_err(get_err)?,
                state: row.try_get(1).map_err(get_err)?,
                watermark: u64::try_from(watermark).unwrap_or(0),
                applied_commit_time: commit.map(|us| us.round() as i64),
                last_error: row.try_get(4).map_err(get_err)?,
                age_seconds: row.try_get(5).map_err(get_err)?,
            });
        }
        Ok(out)
    }
}

impl std::fmt::Debug for DestinationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationStore")
            .field("table", &self.table)
            .finish()
    }
}
