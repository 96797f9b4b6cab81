//! The migration runner: brings a state schema up to date with an ordered list of SQL files.
//!
//! One transaction on one connection (a pool could hand each statement to a different
//! session; the advisory lock and `SET LOCAL` belong to this one):
//!
//! 1. `pg_advisory_xact_lock(key)`, the key derived from "pgfanout migrations" and the schema
//!    name: processes migrating the same schema queue here; the second sees the first's work.
//! 2. create the schema and the history table `migrations` if missing;
//! 3. check every applied migration against the embedded list (same checksum, known version);
//! 4. apply the missing ones in order, each under `SET LOCAL search_path TO <schema>`, and
//!    record them; commit (which releases the lock).
//!
//! The transaction runs at READ COMMITTED whatever the database's default: each statement then
//! sees what was committed before it started, so once the lock is granted the history read
//! after it includes the previous holder's work. (At REPEATABLE READ the snapshot would date
//! from the lock statement, taken before the wait ended.)

use sha2::{Digest, Sha256};

use crate::digest::sha256_hex;
use tokio_postgres::{Client, IsolationLevel};
use tracing::info;

use super::{validate_schema, StateError};
use crate::sql::quote_ident;

/// One numbered SQL file. `sql` may hold several statements; it must not use transaction
/// control or statements that cannot run in a transaction, and should use unqualified names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Strictly increasing from one migration to the next, starting at 1.
    pub version: i32,
    /// The file name, e.g. `0001_state.sql` (recorded in the history and named in errors).
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// SHA-256 of the SQL text, lower-case hex: what the history records.
    pub fn checksum(&self) -> String {
        sha256_hex(self.sql.as_bytes())
    }
}

/// The state schema's migrations, embedded at build time, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_state.sql",
        sql: include_str!("../../migrations/0001_state.sql"),
    },
    Migration {
        version: 2,
        name: "0002_destinations.sql",
        sql: include_str!("../../migrations/0002_destinations.sql"),
    },
    Migration {
        version: 3,
        name: "0003_destination_holds.sql",
        sql: include_str!("../../migrations/0003_destination_holds.sql"),
    },
    Migration {
        version: 4,
        name: "0004_checkpoint_binding.sql",
        sql: include_str!("../../migrations/0004_checkpoint_binding.sql"),
    },
    Migration {
        version: 5,
        name: "0005_snapshots.sql",
        sql: include_str!("../../migrations/0005_snapshots.sql"),
    },
    Migration {
        version: 6,
        name: "0006_daemon_heartbeat.sql",
        sql: include_str!("../../migrations/0006_daemon_heartbeat.sql"),
    },
];

/// What a [`migrate`] run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Versions applied by this run, in order (empty when the schema was up to date).
    pub applied: Vec<i32>,
    /// The schema's latest version after the run.
    pub current: Option<i32>,
}

/// Brings `schema` up to date with `migrations` (see the module comment). `client` must be a
/// connection of its own, not in a transaction.
pub async fn migrate(
    client: &mut Client,
    schema: &str,
    migrations: &[Migration],
) -> Result<MigrateReport, StateError> {
    validate_schema(schema)?;
    validate_list(migrations)?;
    let query = |what: &str| {
        let what = what.to_owned();
        let schema = schema.to_owned();
        move |source: tokio_postgres::Error| StateError::Query {
            what,
            schema,
            source: source.into(),
        }
    };
    let q_schema = quote_ident(schema);
    let history = format!("{q_schema}.migrations");

    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(query("starting the migration transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(schema)])
        .await
        .map_err(query("waiting for the migration lock"))?;
    // IF NOT EXISTS needs CREATE privilege even when the object exists, so look first: a role
    // that may only use an existing schema can still run pgfanout.
    let schema_exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(query("looking up the state schema"))?;
    if !schema_exists {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {q_schema}"))
            .await
            .map_err(query("creating the state schema"))?;
    }
    let history_exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = 'migrations')",
            &[&schema],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(query("looking up the migration history table"))?;
    if !history_exists {
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {history} (
                 version int PRIMARY KEY,
                 name text NOT NULL,
                 checksum text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )"
        ))
        .await
        .map_err(query("creating the migration history table"))?;
    }

    let rows = tx
        .query(
            &format!("SELECT version, name, checksum FROM {history} ORDER BY version"),
            &[],
        )
        .await
        .map_err(query("reading the migration history"))?;
    let mut applied = Vec::with_capacity(rows.len());
    for row in rows {
        let read = |i| row.try_get::<_, String>(i);
        let version: i32 = row
            .try_get(0)
            .map_err(query("reading the migration history"))?;
        let name = read(1).map_err(query("reading the migration history"))?;
        let checksum = read(2).map_err(query("reading the migration history"))?;
        applied.push((version, name, checksum));
    }
    check_applied(schema, migrations, &applied)?;
    let latest_applied = applied.last().map(|(v, _, _)| *v);
    let pending: Vec<&Migration> = migrations
        .iter()
        .filter(|m| !applied.iter().any(|(v, _, _)| *v == m.version))
        .collect();
    if let (Some(first), Some(latest)) = (pending.first(), latest_applied) {
        if first.version < latest {
            return Err(StateError::OutOfOrder {
                name: first.name.to_owned(),
                schema: schema.to_owned(),
                latest_applied: latest,
            });
        }
    }

    let mut report = MigrateReport {
        applied: Vec::with_capacity(pending.len()),
        current: latest_applied,
    };
    for m in pending {
        let apply = |source: tokio_postgres::Error| StateError::Apply {
            name: m.name.to_owned(),
            schema: schema.to_owned(),
            source: source.into(),
        };
        // Again before each file, so one migration's settings do not leak into the next.
        tx.batch_execute(&format!(
            "SET LOCAL search_path TO {q_schema}; SET LOCAL client_min_messages TO warning"
        ))
        .await
        .map_err(apply)?;
        tx.batch_execute(m.sql).await.map_err(apply)?;
        tx.execute(
            &format!("INSERT INTO {history} (version, name, checksum) VALUES ($1, $2, $3)"),
            &[&m.version, &m.name, &m.checksum()],
        )
        .await
        .map_err(query("recording an applied migration"))?;
        info!(
            schema,
            version = m.version,
            name = m.name,
            "applied state migration"
        );
        report.applied.push(m.version);
        report.current = Some(m.version);
    }
    tx.commit()
        .await
        .map_err(query("committing the migration transaction"))?;
    Ok(report)
}

/// Every applied migration must be in the list, unchanged.
fn check_applied(
    schema: &str,
    migrations: &[Migration],
    applied: &[(i32, String, String)],
) -> Result<(), StateError> {
    for (version, name, recorded) in applied {
        let Some(m) = migrations.iter().find(|m| m.version == *version) else {
            return Err(StateError::UnknownMigration {
                version: *version,
                name: name.clone(),
                schema: schema.to_owned(),
                latest_known: migrations.last().map(|m| m.version),
            });
        };
        let file = m.checksum();
        if *recorded != file {
            return Err(StateError::ChecksumMismatch {
                name: m.name.to_owned(),
                schema: schema.to_owned(),
                recorded: recorded.clone(),
                file,
            });
        }
    }
    Ok(())
}

fn validate_list(migrations: &[Migration]) -> Result<(), StateError> {
    let mut previous = 0;
    for m in migrations {
        if m.version <= previous {
            return Err(StateError::InvalidMigrations(format!(
                "{} has version {} after version {previous}; versions must start at 1 and increase",
                m.name, m.version
            )));
        }
        previous = m.version;
    }
    Ok(())
}

/// The advisory-lock key for migrating `schema`: the first 8 bytes of SHA-256 over a fixed tag
/// and the name. Stable across builds and platforms (unlike `std`'s hashers), so every pgfanout
/// version takes the same lock for the same schema.
pub(super) fn lock_key(schema: &str) -> i64 {
    let mut h = Sha256::new();
    h.update(b"pgfanout migrations\0");
    h.update(schema.as_bytes());
    let digest = h.finalize();
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disposition::Classify;

    #[test]
    fn embedded_migrations_are_numbered_in_order_and_named_after_their_version() {
        validate_list(MIGRATIONS).unwrap();
        for m in MIGRATIONS {
            let prefix = format!("{:04}_", m.version);
            assert!(m.name.starts_with(&prefix), "{}", m.name);
            assert!(m.name.ends_with(".sql"), "{}", m.name);
            assert!(!m.sql.trim().is_empty(), "{}", m.name);
            // The runner owns schema placement: files must not name one.
            assert!(!m.sql.contains("pgfanout."), "{}", m.name);
        }
    }

    #[test]
    fn checksum_is_sha256_hex() {
        // SHA-256 of the empty string.
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let m = Migration {
            version: 1,
            name: "0001_x.sql",
            sql: "SELECT 1",
        };
        assert_eq!(m.checksum().len(), 64);
        assert_ne!(
            m.checksum(),
            Migration {
                sql: "SELECT 2",
                ..m
            }
            .checksum()
        );
    }

    #[test]
    fn lock_key_is_fixed_per_schema() {
        assert_eq!(lock_key("pgfanout"), lock_key("pgfanout"));
        assert_ne!(lock_key("pgfanout"), lock_key("pgfanout2"));
        assert_ne!(lock_key("pgfanout"), lock_key("other"));
    }

    #[test]
    fn list_must_increase_from_one() {
        let m = |version, name| Migration {
            version,
            name,
            sql: "",
        };
        assert!(validate_list(&[]).is_ok());
        assert!(validate_list(&[m(1, "a"), m(2, "b"), m(5, "c")]).is_ok());
        for bad in [
            vec![m(0, "a")],
            vec![m(1, "a"), m(1, "b")],
            vec![m(2, "a"), m(1, "b")],
        ] {
            let e = validate_list(&bad).unwrap_err();
            assert!(!e.is_transient());
        }
    }

    #[test]
    fn applied_migrations_are_checked() {
        let list = [Migration {
            version: 1,
            name: "0001_a.sql",
            sql: "CREATE TABLE a ()",
        }];
        let ok = vec![(1, "0001_a.sql".to_owned(), list[0].checksum())];
        assert!(check_applied("s", &list, &ok).is_ok());
        let changed = vec![(1, "0001_a.sql".to_owned(), "00".repeat(32))];
        assert!(matches!(
            check_applied("s", &list, &changed),
            Err(StateError::ChecksumMismatch { .. })
        ));
        let newer = vec![ok[0].clone(), (2, "0002_b.sql".to_owned(), "x".into())];
        assert!(matches!(
            check_applied("s", &list, &newer),
            Err(StateError::UnknownMigration {
                version: 2,
                latest_known: Some(1),
                ..
            })
        ));
    }
}
