//! `pgfanout demo`: the embedded default. Starts a private PostgreSQL, creates a small
//! multi-tenant schema, writes changes from a background task and tails them live until Ctrl-C
//! (or until `max_changes` changes were shown); then stops and removes everything.

use std::future::Future;
use std::time::Duration;

use tracing::{info, warn};

use pgfanout::cmd::tail::{tail, TailError, TailOptions, TailSummary};
use pgfanout::config::{SourceConfig, DEFAULT_PUBLICATION};
use pgfanout::pgconn::ConnInfoError;
use pgfanout::report::Chain;
use pgfanout::source::SlotSpec;
use pgfanout_testkit::localpg::{LocalPgError, LocalPostgres, Options};

const DATABASE: &str = "demo";

const SCHEMA: &str = "
CREATE TABLE tenancy (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id text NOT NULL,
    branch_id text NOT NULL DEFAULT 'main'
);
CREATE TABLE users (
    id bigserial PRIMARY KEY,
    tenancy_id uuid NOT NULL REFERENCES tenancy(id),
    email text NOT NULL,
    display_name text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE contact_channels (
    id bigserial PRIMARY KEY,
    tenancy_id uuid NOT NULL REFERENCES tenancy(id),
    user_id bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind text NOT NULL,
    value text NOT NULL,
    is_verified boolean NOT NULL DEFAULT false
);
INSERT INTO tenancy (project_id) VALUES ('acme'), ('globex'), ('initech');
";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the demo's PostgreSQL")]
    Server(#[from] LocalPgError),
    #[error("demo database setup failed")]
    Sql(#[from] tokio_postgres::Error),
    #[error("the demo server's URL is not valid")]
    Url(#[from] ConnInfoError),
    #[error(transparent)]
    Tail(#[from] TailError),
    #[error("the demo's server task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs the demo, writing JSON lines to `out`.
pub async fn run<W: std::io::Write>(
    out: &mut W,
    max_changes: Option<u64>,
    shutdown: impl Future<Output = ()>,
) -> Result<TailSummary, DemoError> {
    info!("starting a private PostgreSQL (wal_level = logical)");
    let pg = tokio::task::spawn_blocking(|| LocalPostgres::start(&Options::default())).await??;
    pg.create_database(DATABASE).await?;
    pg.sql(DATABASE).await?.batch_execute(SCHEMA).await?;
    info!(
        port = pg.port(),
        "PostgreSQL ready; tailing changes (Ctrl-C stops and removes everything)"
    );

    let source = SourceConfig {
        conn: pg.socket_url(DATABASE).parse()?,
        slot: String::new(),
        publication: DEFAULT_PUBLICATION.to_owned(),
        tables: None,
        manage: true,
        status_interval: Duration::from_secs(1),
        heartbeat_interval: None,
    };
    let writer = pg.sql(DATABASE).await?;
    let workload = tokio::spawn(async move {
        if let Err(e) = write_changes(&writer).await {
            warn!(error = %Chain(&e), "demo workload stopped");
        }
    });
    let result = tail(
        &source,
        TailOptions {
            limit: max_changes,
            slot: SlotSpec::Temporary,
        },
        out,
        shutdown,
    )
    .await;
    workload.abort();
    drop(pg);
    Ok(result?)
}

/// A burst of sign-ups, profile edits, verifications and deletions across the tenants.
async fn write_changes(db: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    // The slot is created right after the tail connects; give it a moment before writing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0u64.. {
        db.batch_execute(&format!(
            "BEGIN;
             WITH t AS (SELECT id FROM tenancy ORDER BY project_id OFFSET {tenant} LIMIT 1),
                  u AS (INSERT INTO users (tenancy_id, email, display_name)
                        SELECT id, 'user{round}@example.com', 'User {round}' FROM t RETURNING id, tenancy_id)
             INSERT INTO contact_channels (tenancy_id, user_id, kind, value)
                  SELECT tenancy_id, id, 'email', 'user{round}@example.com' FROM u;
             UPDATE contact_channels SET is_verified = true WHERE id = (SELECT max(id) - 1 FROM contact_channels);
             COMMIT;",
            tenant = round % 3
        ))
        .await?;
        if round % 5 == 4 {
            db.batch_execute(
                "UPDATE users SET display_name = display_name || ' (renamed)' WHERE id = (SELECT min(id) FROM users);
                 DELETE FROM users WHERE id = (SELECT min(id) FROM users);",
            )
            .await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}
