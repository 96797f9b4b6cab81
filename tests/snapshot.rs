//! Snapshots against real servers: rows that existed before the slot reach the destinations,
//! consistently with a workload running while they are read (DBLog watermarks), across
//! SIGKILLs, and when a destination's coverage grows or a resync is asked for.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const TABLES: [&str; 3] = ["accounts", "orders", "notes"];
const TENANTS: [&str; 4] = ["t1", "t2", "t3", "t4"];

/// Three tables keyed by (tenant, id), with a value and a large column.
async fn source_with_rows(prefix: &str, rows_per_table: i32) -> (String, tokio_postgres::Client) {
    let db = fresh_db(prefix).await;
    let source = sql(&db).await;
    for t in TABLES {
        source
            .batch_execute(&format!(
                "CREATE TABLE {t} (tenant text NOT NULL, id int NOT NULL, v text, big text,
                                   PRIMARY KEY (tenant, id));
                 INSERT INTO {t} SELECT 't' || (1 + g % 4), g, 'v' || g,
                        CASE WHEN g % 500 = 0
                             THEN (SELECT string_agg(md5(g::text || k), '') FROM generate_series(1, 200) k)
                        END
                 FROM generate_series(1, {rows_per_table}) g;"
            ))
            .await
            .unwrap();
    }
    (db, source)
}

fn mappings_toml() -> String {
    TABLES
        .iter()
        .map(|t| {
            format!(
                "\n[[mappings]]\nname = \"{t}\"\nsource = \"public.{t}\"\ntenant_key = \"tenant\"\n\
                 target = \"{t}\"\n[mappings.columns]\ntenant = \"tenant\"\nid = \"id\"\nv = \"v\"\nbig = \"big\"\n"
            )
        })
        .collect()
}

fn pg_destination(name: &str, db: &str, tenants: &[&str], mappings: &[&str]) -> String {
    let list = |xs: &[&str]| {
        xs.iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\n[[destinations]]\nname = \"{name}\"\nkind = \"postgres\"\nurl = \"{}\"\n\
         tenants = [{}]\nmappings = [{}]\nflush_interval = \"50ms\"\n",
        url_on(server(), db),
        list(tenants),
        list(mappings)
    )
}

fn write_config(dir: &Path, db: &str, snapshot: &str, destinations: &str) -> PathBuf {
    let path = dir.join("pgfanout.toml");
    let tables: Vec<String> = TABLES.iter().map(|t| format!("\"public.{t}\"")).collect();
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = {}\nslot = \"s_{db}\"\ntables = [{}]\nstatus_interval = \"100ms\"\n\
             [log]\ndir = {}\nsync_interval = \"20ms\"\n\
             [state]\ncheckpoint_interval = \"200ms\"\n\
             [snapshot]\n{snapshot}\n{}{destinations}",
            toml_str(&url_on(server(), db)),
            tables.join(", "),
            toml_str(&dir.join("log").display().to_string()),
            mappings_toml(),
        ),
    )
    .unwrap();
    path
}

type TableRows = Vec<(String, i32, Option<String>, Option<String>)>;

async fn rows_of(
    client: &tokio_postgres::Client,
    table: &str,
    tenants: &[&str],
) -> Option<TableRows> {
    let tenants: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
    match client
        .query(
            &format!(
                "SELECT tenant, id, v, md5(big) FROM {table} WHERE tenant = ANY($1) ORDER BY tenant, id"
            ),
            &[&tenants],
        )
        .await
    {
        Ok(rows) => Some(
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect(),
        ),
        Err(e) if e.code().is_some_and(|c| c.code() == "42P01") => None,
        Err(e) => panic!("reading {table}: {e}"),
    }
}

/// Waits until every table of `target` equals the source's rows of `tenants`.
async fn wait_projection(
    source: &tokio_postgres::Client,
    target_db: &str,
    tables: &[&str],
    tenants: &[&str],
) {
    let target = sql(target_db).await;
    let deadline = Instant::now() + WAIT * 3;
    for t in tables {
        loop {
            let want = rows_of(source, t, tenants).await.unwrap();
            let got = rows_of(&target, t, tenants).await.unwrap_or_default();
            if want == got {
                // Only the destination's tenants, nothing else.
                let all = rows_of(&target, t, &TENANTS).await.unwrap_or_default();
                assert_eq!(
                    all.len(),
                    got.len(),
                    "{target_db}.{t} holds rows of tenants it does not serve"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {target_db}.{t} to equal the source's rows of {tenants:?}: {} expected, {} found; first missing {:?}; first extra {:?}",
                want.len(),
                got.len(),
                want.iter().find(|r| !got.contains(r)),
                got.iter().find(|r| !want.contains(r)),
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Writes aimed at the keys being read: updates, deletes, inserts, key changes and tenant
/// moves, in small transactions, until `stop`. Returns the rounds run.
async fn churn(db: String, worker: i32, max_id: i32, stop: Arc<AtomicBool>) -> u64 {
    let client = sql(&db).await;
    let mut rounds = 0u64;
    let mut next_new = 1_000_000 + worker * 100_000;
    while !stop.load(Ordering::Relaxed) {
        let t = TABLES[(rounds % 3) as usize];
        let id = 1 + (rand::random::<u32>() % max_id as u32) as i32;
        let statement = match rounds % 6 {
            0 => format!("UPDATE {t} SET v = v || '+' WHERE id BETWEEN {id} AND {id} + 20"),
            1 => format!("DELETE FROM {t} WHERE id BETWEEN {id} AND {id} + 3"),
            2 => {
                next_new += 1;
                format!("INSERT INTO {t} VALUES ('t{}', {next_new}, 'new', NULL)", 1 + next_new % 4)
            }
            // A key change: the row leaves its place in the key order.
            3 => format!("UPDATE {t} SET id = id + 2000000 WHERE id = {id}"),
            // A tenant move: into another destination's tenants, and into one no one serves.
            4 => format!("UPDATE {t} SET tenant = CASE tenant WHEN 't1' THEN 't2' WHEN 't2' THEN 't4' ELSE 't1' END WHERE id BETWEEN {id} AND {id} + 2"),
            _ => format!("UPDATE {t} SET big = NULL, v = 'cleared' WHERE id = {id}"),
        };
        // Key changes may collide with an earlier one; that transaction just fails.
        let _ = client.batch_execute(&statement).await;
        rounds += 1;
    }
    rounds
}

async fn snapshots_done(state: &tokio_postgres::Client) -> bool {
    match state
        .query_one(
            "SELECT count(*) FILTER (WHERE state IN ('pending', 'running')), count(*) FROM pgfanout.snapshots",
            &[],
        )
        .await
    {
        Ok(r) => r.get::<_, i64>(0) == 0 && r.get::<_, i64>(1) > 0,
        Err(_) => false,
    }
}

async fn wait_snapshots_done(state: &tokio_postgres::Client) {
    wait_for("the snapshots to complete", || async {
        snapshots_done(state).await.then_some(())
    })
    .await;
}

/// The initial snapshot of 3 × 34,000 pre-existing rows, while a workload changes, deletes,
/// re-keys and moves the rows being read: every destination ends equal to its tenants'
/// projection, nothing lost, doubled, stale or resurrected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_under_write_load_equals_the_source() {
    let (db, source) = source_with_rows("snap_init", 34_000).await;
    let (a, b) = (fresh_db("snap_init_a").await, fresh_db("snap_init_b").await);
    let dir = tempfile::tempdir().unwrap();
    let destinations = pg_destination("a", &a, &["t1"], &TABLES)
        + &pg_destination("b", &b, &["t2", "t3"], &TABLES);
    let config = write_config(
        dir.path(),
        &db,
        "chunk_rows = 2000\nparallelism = 3",
        &destinations,
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(churn(db.clone(), w, 34_000, stop.clone())))
        .collect();
    wait_snapshots_done(&source).await;
    // Changes keep coming after the snapshot too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rounds = stop_workload(&stop, workers).await;
    assert!(rounds > 100, "the workload ran {rounds} rounds");
    wait_projection(&source, &a, &TABLES, &["t1"]).await;
    wait_projection(&source, &b, &TABLES, &["t2", "t3"]).await;

    // Every chunk was emitted into the log once: each (table, range, chunk) mark appears once.
    let mut marks = std::collections::HashSet::new();
    let mut snapshot_rows = 0;
    for c in read_log(&dir.path().join("log")) {
        match &c.change.op {
            pgfanout::change::Op::SnapshotMark { mark, .. } if !mark.table_done => {
                assert!(
                    marks.insert((c.change.relation.name.clone(), mark.range, mark.chunk)),
                    "chunk {:?} emitted twice",
                    (c.change.relation.name.clone(), mark.range, mark.chunk)
                );
            }
            pgfanout::change::Op::Snapshot { .. } => snapshot_rows += 1,
            _ => {}
        }
    }
    assert!(
        snapshot_rows > 90_000,
        "{snapshot_rows} snapshot rows in the log"
    );
    assert!(daemon.stop().success());
}
