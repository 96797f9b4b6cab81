//! Many tenant databases: 24 PostgreSQL destinations (one database each on the test server)
//! under `[fanout] max_connections = 3`. The destination connections pgfanout holds are
//! sampled from `pg_stat_activity` while a workload over every tenant runs: never more than
//! the cap; after `idle_timeout` none; a write for a tenant whose destination went idle
//! reaches it (it connects again and resumes from its watermark).

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const DESTINATIONS: usize = 24;
const CAP: i64 = 3;
/// Set on pgfanout's destination connections, to tell them from the test's own.
const APP: &str = "pgfanout_many_test";

fn tenant(i: usize) -> String {
    format!("tenant{i}")
}

fn write_config(dir: &Path, source_db: &str, targets: &[String]) -> std::path::PathBuf {
    let mut destinations = String::new();
    for (i, db) in targets.iter().enumerate() {
        destinations.push_str(&format!(
            "\n[[destinations]]\nname = \"d{i}\"\nkind = \"postgres\"\nurl = {}\n\
             tenants = [\"{}\"]\nmappings = [\"items\"]\n",
            toml_str(&format!("{}&application_name={APP}", url_on(server(), db))),
            tenant(i)
        ));
    }
    let path = dir.join("pgfanout.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = {}\nslot = \"s_{source_db}\"\ntables = [\"public.items\"]\n\
             status_interval = \"100ms\"\n\
             [log]\ndir = {}\nsync_interval = \"20ms\"\n\
             [state]\ncheckpoint_interval = \"200ms\"\n\
             [snapshot]\nmode = \"never\"\nauto_resync = false\n\
             [admin]\nlisten = \"off\"\n\
             [fanout]\nmax_connections = {CAP}\nidle_timeout = \"1s\"\n\
             [[mappings]]\nname = \"items\"\nsource = \"public.items\"\ntenant_key = \"tenant\"\n\
             target = \"items\"\n[mappings.columns]\nid = \"id\"\nv = \"v\"\n{destinations}",
            toml_str(&url_on(server(), source_db)),
            toml_str(&dir.join("log").display().to_string()),
        ),
    )
    .unwrap();
    path
}

/// pgfanout's connections to the target databases now.
async fn destination_connections(client: &tokio_postgres::Client, targets: &[String]) -> i64 {
    destination_backends(client, targets).await.len() as i64
}

/// The backend pids of pgfanout's connections to the target databases.
async fn destination_backends(client: &tokio_postgres::Client, targets: &[String]) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1) AND application_name = $2",
            &[&targets, &APP],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// How many of `pids` are still connected.
async fn still_connected(client: &tokio_postgres::Client, pids: &[i32]) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
            &[&pids],
        )
        .await
        .unwrap()
        .get(0)
}

async fn source_rows(source: &tokio_postgres::Client, tenant: &str) -> Rows {
    text_rows(
        &source
            .query(
                "SELECT id::text, v FROM items WHERE tenant = $1 ORDER BY id",
                &[&tenant],
            )
            .await
            .unwrap(),
    )
}

async fn target_rows(target: &tokio_postgres::Client) -> Rows {
    match target
        .query("SELECT id::text, v FROM items ORDER BY id", &[])
        .await
    {
        Ok(rows) => text_rows(&rows),
        Err(e) if e.code().is_some_and(|c| c.code() == "42P01") => Vec::new(),
        Err(e) => panic!("reading a target: {e}"),
    }
}

/// Waits until every target holds exactly its tenant's rows of the source.
async fn wait_all_equal(source: &tokio_postgres::Client, targets: &[tokio_postgres::Client]) {
    let deadline = Instant::now() + WAIT;
    for (i, target) in targets.iter().enumerate() {
        loop {
            let want = source_rows(source, &tenant(i)).await;
            let got = target_rows(target).await;
            if want == got {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for destination d{i} to equal its tenant's rows: {} expected, {} found",
                want.len(),
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_destinations_share_a_capped_set_of_connections_and_idle_ones_hold_none() {
    let source_db = fresh_db("many_src").await;
    let source = sql(&source_db).await;
    source
        .batch_execute(
            "CREATE TABLE items (tenant text NOT NULL, id int NOT NULL, v text,
                                 PRIMARY KEY (tenant, id))",
        )
        .await
        .unwrap();
    let mut targets = Vec::new();
    let mut target_clients = Vec::new();
    for _ in 0..DESTINATIONS {
        let db = fresh_db("many_t").await;
        target_clients.push(sql(&db).await);
        targets.push(db);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &source_db, &targets);
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &source_db).await;

    // Sample pgfanout's destination connections until the end of the test.
    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (done, most, targets) = (done.clone(), most.clone(), targets.clone());
        let client = sql("postgres").await;
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let pids = destination_backends(&client, &targets).await;
                let mut n = pids.len() as i64;
                if n > CAP {
                    // A backend whose client just closed lingers in pg_stat_activity until it
                    // has exited, while the permit already let another connect: count only
                    // the backends still there a moment later (one open past the cap stays
                    // open at least until idle_timeout).
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    n = still_connected(&client, &pids).await;
                }
                most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // Every tenant in every round: inserts, then updates and deletes of some of them.
    let n = DESTINATIONS as i32;
    for round in 0..20 {
        let base = round * 1000;
        source
            .batch_execute(&format!(
                "BEGIN;
                 INSERT INTO items SELECT 'tenant' || (g % {n}), g, 'v' || g
                   FROM generate_series({base}, {base} + 199) g;
                 UPDATE items SET v = v || '+' WHERE id % 7 = {round} % 7;
                 DELETE FROM items WHERE id % 13 = {round} % 13 AND id < {base};
                 COMMIT;"
            ))
            .await
            .unwrap();
    }
    wait_all_equal(&source, &target_clients).await;
    let during = most.load(Ordering::SeqCst);
    assert!(
        during > 0,
        "no destination connection was ever seen (the sampler counts nothing)"
    );
    assert!(
        during <= CAP,
        "pgfanout held {during} destination connections at once; the cap is {CAP}"
    );

    // Idle for longer than idle_timeout: no destination connection is left.
    wait_for(
        "every destination connection to close after idle_timeout",
        || {
            let (source, targets) = (&source, &targets);
            async move { (destination_connections(source, targets).await == 0).then_some(()) }
        },
    )
    .await;

    // A write for one cold tenant reaches its destination, which connects again and resumes
    // from its watermark; others stay closed.
    let cold = 7;
    source
        .execute(
            "INSERT INTO items VALUES ($1, 1000000, 'after the quiet')",
            &[&tenant(cold)],
        )
        .await
        .unwrap();
    wait_all_equal(&source, &target_clients).await;
    assert!(
        target_rows(&target_clients[cold])
            .await
            .iter()
            .any(|r| r[1].as_deref() == Some("after the quiet")),
        "the cold tenant's new row is missing"
    );
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let overall = most.load(Ordering::SeqCst);
    assert!(
        overall <= CAP,
        "pgfanout held {overall} destination connections at once; the cap is {CAP}"
    );
    assert!(daemon.stop().success());
}
