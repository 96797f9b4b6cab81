//! The demo's background workload on the source: sign-ups with a contact channel, profile
//! edits, verifications, users turning anonymous and back (rows leaving and entering the
//! `users` mapping through its filter) and deletions (cascading to the channels), spread over
//! every tenant, one transaction at a time until stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Pause between two transactions: a steady, readable stream of a few dozen per second.
const PAUSE: Duration = Duration::from_millis(25);

/// What the workload did so far.
#[derive(Default)]
pub struct Counts {
    pub transactions: AtomicU64,
    pub inserts: AtomicU64,
    pub updates: AtomicU64,
    pub deletes: AtomicU64,
}

impl Counts {
    pub fn line(&self) -> String {
        format!(
            "{} transactions: {} inserts, {} updates, {} deletes",
            self.transactions.load(Ordering::Relaxed),
            self.inserts.load(Ordering::Relaxed),
            self.updates.load(Ordering::Relaxed),
            self.deletes.load(Ordering::Relaxed)
        )
    }
}

pub struct Workload {
    pub counts: Arc<Counts>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Workload {
    /// Starts writing through `db`; tenants are taken in turn from `tenant_ids`.
    pub fn start(db: tokio_postgres::Client, tenant_ids: Vec<&'static str>) -> Workload {
        let counts = Arc::new(Counts::default());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(db, tenant_ids, counts.clone(), stopped));
        Workload { counts, stop, task }
    }

    /// Stops after the transaction in flight; its error, if it stopped on one.
    pub async fn stop(self) -> Result<(), tokio_postgres::Error> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(r) => r,
            // Only a panic ends the task otherwise; nothing to report beyond stopping.
            Err(_) => Ok(()),
        }
    }
}

async fn run(
    mut db: tokio_postgres::Client,
    tenant_ids: Vec<&'static str>,
    counts: Arc<Counts>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), tokio_postgres::Error> {
    for round in 0u64.. {
        if *stopped.borrow() {
            break;
        }
        let tenant = tenant_ids[round as usize % tenant_ids.len()];
        let (inserts, updates, deletes) = one_round(&mut db, tenant, round).await?;
        counts.transactions.fetch_add(1, Ordering::Relaxed);
        counts.inserts.fetch_add(inserts, Ordering::Relaxed);
        counts.updates.fetch_add(updates, Ordering::Relaxed);
        counts.deletes.fetch_add(deletes, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(PAUSE) => {}
            _ = stopped.changed() => {}
        }
    }
    Ok(())
}

/// One transaction for `tenant`; the rows it inserted, updated and deleted.
async fn one_round(
    db: &mut tokio_postgres::Client,
    tenant: &str,
    round: u64,
) -> Result<(u64, u64, u64), tokio_postgres::Error> {
    // A random user of this tenant, picked inside the statement.
    const SOME_USER: &str =
        "(SELECT id FROM users WHERE tenancy_id = $1::text::uuid ORDER BY random() LIMIT 1)";
    let db = db.transaction().await?;
    let mut counts = (0, 0, 0);
    let inserted = db
        .execute(
            "WITH u AS (
                 INSERT INTO users (tenancy_id, email, display_name)
                 VALUES ($1::text::uuid, 'User' || $2::text || '@Example.com', 'User ' || $2::text)
                 RETURNING tenancy_id, id)
             INSERT INTO contact_channels (tenancy_id, user_id, kind, value)
             SELECT tenancy_id, id, 'email', 'user' || $2::text || '@example.com' FROM u",
            &[&tenant, &round.to_string()],
        )
        .await?;
    counts.0 += 2 * inserted;
    counts.1 += db
        .execute(
            &format!(
                "UPDATE users SET display_name = 'User ' || id || ' (edit {round})'
                 WHERE tenancy_id = $1::text::uuid AND id = {SOME_USER}"
            ),
            &[&tenant],
        )
        .await?;
    if round.is_multiple_of(3) {
        counts.1 += db
            .execute(
                "UPDATE contact_channels SET is_verified = NOT is_verified
                 WHERE tenancy_id = $1::text::uuid
                   AND id = (SELECT id FROM contact_channels WHERE tenancy_id = $1::text::uuid
                             ORDER BY random() LIMIT 1)",
                &[&tenant],
            )
            .await?;
    }
    if round % 4 == 1 {
        counts.1 += db
            .execute(
                &format!(
                    "UPDATE users SET is_anonymous = NOT is_anonymous
                     WHERE tenancy_id = $1::text::uuid AND id = {SOME_USER}"
                ),
                &[&tenant],
            )
            .await?;
    }
    if round % 5 == 2 {
        counts.2 += db
            .execute(
                &format!(
                    "DELETE FROM users WHERE tenancy_id = $1::text::uuid AND id = {SOME_USER}"
                ),
                &[&tenant],
            )
            .await?;
    }
    db.commit().await?;
    Ok(counts)
}
