//! Fan-out end to end: `pgfanout run` with tenants, mappings and PostgreSQL destinations,
//! each target compared row by row with the source projected through its mapping.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfanout_testkit::localpg::{LocalPostgres, Options};
use support::*;

const TENANT_A: &str = "00000000-0000-0000-0000-00000000000a";
const TENANT_B: &str = "00000000-0000-0000-0000-00000000000b";
const TENANT_C: &str = "00000000-0000-0000-0000-00000000000c";
/// No destination serves it.
const TENANT_D: &str = "00000000-0000-0000-0000-00000000000d";

const SOURCE_SCHEMA: &str = "
    CREATE TABLE tenancy (id uuid PRIMARY KEY, project_id text NOT NULL, branch_id text);
    CREATE TABLE project_user (
        tenancy_id uuid NOT NULL,
        id int NOT NULL,
        display_name text,
        email text,
        is_anonymous boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now(),
        bio text,
        PRIMARY KEY (tenancy_id, id)
    );";

/// The source projected through the `users` mapping for some tenants, as text rows.
const SOURCE_PROJECTION: &str = "
    SELECT pu.id::text, t.project_id, pu.display_name, lower(pu.email), pu.created_at::text,
           md5(pu.bio)
    FROM project_user pu LEFT JOIN tenancy t ON t.id = pu.tenancy_id
    WHERE pu.tenancy_id = ANY($1::text[]::uuid[]) AND NOT pu.is_anonymous
    ORDER BY pu.id";

const TARGET_ROWS: &str = "
    SELECT id::text, project_id, display_name, email, signed_up_at::text, md5(bio)
    FROM users ORDER BY users.id";

fn mapping_toml() -> String {
    r#"
[tenants]
query = "SELECT id AS tenant, project_id, branch_id FROM public.tenancy"
table = "public.tenancy"

[[mappings]]
name = "users"
source = "public.project_user"
tenant_key = "tenancy_id"
target = "users"
key = ["id"]
filter = "is_anonymous = false"
[mappings.columns]
id = "id"
project_id = "tenant.project_id"
display_name = "display_name"
email = "lower(email)"
signed_up_at = "created_at"
bio = "bio"
"#
    .to_owned()
}

fn destination_toml(name: &str, db: &str, tenants: &[&str]) -> String {
    destination_toml_on(server(), name, db, tenants)
}

/// A destination receiving the `users` mapping of `tenants` into `db` on `pg`.
fn destination_toml_on(pg: &LocalPostgres, name: &str, db: &str, tenants: &[&str]) -> String {
    let list: Vec<String> = tenants.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "\n[[destinations]]\nname = \"{name}\"\nkind = \"postgres\"\n\
         url = \"{}\"\ntenants = [{}]\n\
         mappings = [\"users\"]\nflush_interval = \"50ms\"\n",
        url_on(pg, db),
        list.join(", ")
    )
}

fn write_config(dir: &Path, db: &str, destinations: &str) -> PathBuf {
    write_config_with(
        dir,
        db,
        &["public.tenancy", "public.project_user"],
        &(mapping_toml() + destinations),
    )
}

/// A configuration streaming `tables` of `db` into `dir/log`, followed by `rest` (tenants,
/// mappings, destinations). Without snapshots: these tests count the stream's own changes
/// and holds (tests/snapshot.rs tests snapshots, initial ones and resyncs).
fn write_config_with(dir: &Path, db: &str, tables: &[&str], rest: &str) -> PathBuf {
    let path = dir.join("pgfanout.toml");
    let tables: Vec<String> = tables.iter().map(|t| toml_str(t)).collect();
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = {}\nslot = \"s_{db}\"\n\
             tables = [{}]\nstatus_interval = \"100ms\"\n\
             [log]\ndir = {}\nsync_interval = \"20ms\"\n\
             [state]\ncheckpoint_interval = \"200ms\"\n\
             [snapshot]\nmode = \"never\"\nauto_resync = false\n{rest}",
            toml_str(&url_on(server(), db)),
            tables.join(", "),
            toml_str(&dir.join("log").display().to_string()),
        ),
    )
    .unwrap();
    path
}

/// `s` as a PostgreSQL quoted identifier (written here, not taken from the code under test).
fn qi(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

async fn source_rows(source: &tokio_postgres::Client, tenants: &[&str]) -> Rows {
    text_rows(&source.query(SOURCE_PROJECTION, &[&tenants]).await.unwrap())
}

/// The target's rows; none before the destination first connected and created its table.
async fn target_rows(target: &tokio_postgres::Client) -> Rows {
    match target.query(TARGET_ROWS, &[]).await {
        Ok(rows) => text_rows(&rows),
        Err(e) if e.code().is_some_and(|c| c.code() == "42P01") => Vec::new(),
        Err(e) => panic!("reading the target: {e}"),
    }
}

/// What tells `want` and `got` apart: counts, and a few missing and extra rows.
fn diff(want: &Rows, got: &Rows) -> String {
    use std::collections::HashMap;
    let count = |rows: &Rows| {
        let mut m: HashMap<Vec<Option<String>>, usize> = HashMap::new();
        for r in rows {
            *m.entry(r.clone()).or_default() += 1;
        }
        m
    };
    let (w, g) = (count(want), count(got));
    let short = |r: &Vec<Option<String>>| {
        r.iter()
            .map(|c| match c {
                Some(c) if c.len() > 40 => format!("{}…", &c[..40]),
                Some(c) => c.clone(),
                None => "NULL".into(),
            })
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let missing: Vec<String> = w
        .iter()
        .filter(|(r, n)| g.get(*r).unwrap_or(&0) < n)
        .map(|(r, _)| short(r))
        .take(5)
        .collect();
    let extra: Vec<String> = g
        .iter()
        .filter(|(r, n)| w.get(*r).unwrap_or(&0) < n)
        .map(|(r, _)| short(r))
        .take(5)
        .collect();
    format!(
        "{} rows expected, {} found; missing (first 5): {missing:#?}; extra or stale (first 5): {extra:#?}",
        want.len(),
        got.len()
    )
}

/// Waits until `target` holds exactly the projection of `tenants`; returns its row count.
async fn wait_equal(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    what: &str,
    tenants: &[&str],
) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let want = source_rows(source, tenants).await;
        let got = target_rows(target).await;
        if want == got {
            return want.len();
        }
        if std::env::var("PGFANOUT_TEST_DIFF").is_ok() {
            eprintln!("{what}: {}", diff(&want, &got));
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} to equal the projection of {tenants:?}: {}",
            diff(&want, &got)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every target holds exactly its tenant's projection; returns the row counts.
async fn wait_converged(source: &tokio_postgres::Client, targets: &[(&str, &str)]) -> Vec<usize> {
    let mut counts = Vec::new();
    for &(db, tenant) in targets {
        let target = sql(db).await;
        counts.push(wait_equal(source, &target, db, &[tenant]).await);
    }
    counts
}

/// The seq a destination recorded in `schema`'s watermark table (None before it has one).
async fn watermark(
    target: &tokio_postgres::Client,
    schema: &str,
    destination: &str,
) -> Option<i64> {
    let query = format!(
        "SELECT seq FROM {}._pgfanout_watermarks WHERE destination = $1",
        qi(schema)
    );
    match target.query_opt(&query, &[&destination]).await {
        Ok(row) => row.map(|r| r.get(0)),
        Err(e) if e.code().is_some_and(|c| c.code() == "42P01") => None,
        Err(e) => panic!("reading the watermark of {destination}: {e}"),
    }
}

/// Waits until each (target, schema, destination) records the change log's last seq as its
/// watermark (idle destinations move theirs every few seconds); returns that seq.
async fn wait_watermarks(log_dir: &Path, targets: &[(&tokio_postgres::Client, &str, &str)]) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = log_last_seq(log_dir).await;
        let mut marks = Vec::new();
        for (client, schema, destination) in targets {
            marks.push(watermark(client, schema, destination).await);
        }
        if last > 0 && marks.iter().all(|m| *m == Some(last as i64)) {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the watermarks to reach the change log's last seq {last}: {marks:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A source database with the schema and the tenancies; its name and a connection.
async fn seeded_source(prefix: &str) -> (String, tokio_postgres::Client) {
    let db = fresh_db(prefix).await;
    let source = sql(&db).await;
    source.batch_execute(SOURCE_SCHEMA).await.unwrap();
    seed(&source).await;
    (db, source)
}

/// Databases `PREFIX_a`, `_b`, `_c`, each a destination of one tenant (A, B, C), and the
/// configuration streaming `db` into them.
async fn three_tenant_databases(
    prefix: &str,
    dir: &Path,
    db: &str,
) -> (String, String, String, PathBuf) {
    let (a, b, c) = (
        fresh_db(&format!("{prefix}_a")).await,
        fresh_db(&format!("{prefix}_b")).await,
        fresh_db(&format!("{prefix}_c")).await,
    );
    // b writes its batches over three connections (parallel apply, invariant 35): the SIGKILL
    // and fault tests built on these databases strike it between their shares too.
    let destinations = destination_toml("a", &a, &[TENANT_A])
        + &destination_toml("b", &b, &[TENANT_B])
        + "apply_connections = 3\n"
        + &destination_toml("c", &c, &[TENANT_C]);
    let config = write_config(dir, db, &destinations);
    (a, b, c, config)
}

async fn seed(source: &tokio_postgres::Client) {
    source
        .batch_execute(&format!(
            "INSERT INTO tenancy VALUES ('{TENANT_A}', 'proj-a', 'main'), ('{TENANT_B}', 'proj-b', NULL),
                                        ('{TENANT_C}', 'proj-c', 'dev'), ('{TENANT_D}', 'proj-d', NULL);"
        ))
        .await
        .unwrap();
}

/// Inserts, updates, deletes, a key change, a tenant move, a filter flip, a large
/// transaction and unchanged TOAST values.
async fn mixed_workload(source: &tokio_postgres::Client) {
    let tenants = [TENANT_A, TENANT_B, TENANT_C, TENANT_D];
    for (i, t) in tenants.iter().enumerate() {
        source
            .execute(
                "INSERT INTO project_user (tenancy_id, id, display_name, email, is_anonymous, bio)
                 SELECT $1::text::uuid, g, 'User ' || g, 'U' || g || '@Example.com', g % 10 = 0,
                        -- Large values PostgreSQL stores out of line (random hex does not
                        -- compress), also on rows that enter a target later (a filter flip, a
                        -- move to another destination) with the value unchanged: the
                        -- destination reads it from the source (invariant 25).
                        CASE WHEN g % 7 = 0
                             THEN (SELECT string_agg(md5(random()::text || k), '') FROM generate_series(1, 300) AS k)
                             ELSE 'short' END
                 FROM generate_series(1, $2::int) g",
                &[t, &(200 + 50 * i as i32)],
            )
            .await
            .unwrap();
    }
    source
        .batch_execute(&format!(
            "UPDATE project_user SET display_name = display_name || ' (edited)' WHERE id % 3 = 0;
             -- unchanged TOAST: bio is large and not touched
             UPDATE project_user SET email = 'changed' || id || '@x.org' WHERE id % 7 = 0;
             DELETE FROM project_user WHERE id % 11 = 0;
             -- filter flips both ways
             UPDATE project_user SET is_anonymous = NOT is_anonymous WHERE id % 20 = 0 OR id = 13;
             -- key change
             UPDATE project_user SET id = id + 10000 WHERE id % 17 = 0;
             -- tenant move, A to B and C to the unserved D
             UPDATE project_user SET tenancy_id = '{TENANT_B}', id = id + 20000 WHERE tenancy_id = '{TENANT_A}' AND id BETWEEN 100 AND 110;
             UPDATE project_user SET tenancy_id = '{TENANT_D}', id = id + 20000 WHERE tenancy_id = '{TENANT_C}' AND id BETWEEN 100 AND 105;
             -- a tenant attribute changes: later rows carry the new project id
             UPDATE tenancy SET project_id = 'proj-a2' WHERE id = '{TENANT_A}';
             UPDATE project_user SET display_name = 'after rename' WHERE tenancy_id = '{TENANT_A}';
             BEGIN;
             INSERT INTO project_user (tenancy_id, id, display_name, email)
                 SELECT '{TENANT_C}', g, 'bulk', 'b@x' FROM generate_series(50000, 70000) g;
             UPDATE project_user SET display_name = 'bulk2' WHERE id BETWEEN 60000 AND 61000;
             COMMIT;"
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_database_equals_its_projection() {
    let (db, source) = seeded_source("fan_src").await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, config) = three_tenant_databases("fan", dir.path(), &db).await;
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    mixed_workload(&source).await;
    let counts = wait_converged(&source, &[(&a, TENANT_A), (&b, TENANT_B), (&c, TENANT_C)]).await;
    assert!(counts.iter().all(|&n| n > 100), "{counts:?}");

    // A truncate empties every target.
    source.batch_execute("TRUNCATE project_user").await.unwrap();
    source
        .execute(
            "INSERT INTO project_user (tenancy_id, id, display_name) VALUES ($1::text::uuid, 1, 'after truncate')",
            &[&TENANT_B],
        )
        .await
        .unwrap();
    wait_converged(&source, &[(&a, TENANT_A), (&b, TENANT_B), (&c, TENANT_C)]).await;
    assert!(daemon.stop().success());
}

/// A PostgreSQL destination that refuses a value (here a CHECK constraint added to its table)
/// stops with the constraint named, like a ClickHouse one: retrying the same change cannot
/// succeed. The other destinations keep streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_value_stops_only_its_postgres_destination() {
    let (db, source) = seeded_source("fan_rej_src").await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, config) = three_tenant_databases("fan_rej", dir.path(), &db).await;
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    source
        .execute(
            "INSERT INTO project_user (tenancy_id, id, display_name) VALUES ($1::text::uuid, 1, 'first')",
            &[&TENANT_A],
        )
        .await
        .unwrap();
    wait_converged(&source, &[(&a, TENANT_A), (&b, TENANT_B), (&c, TENANT_C)]).await;
    sql(&a)
        .await
        .batch_execute(
            "ALTER TABLE users ADD CONSTRAINT short_names CHECK (length(display_name) < 40)",
        )
        .await
        .unwrap();

    source
        .execute(
            "INSERT INTO project_user (tenancy_id, id, display_name) VALUES ($1::text::uuid, 2, repeat('x', 50))",
            &[&TENANT_A],
        )
        .await
        .unwrap();
    let status = wait_for("destination a to fail", || async {
        let s = destination_status(&config).await;
        (s["a"]["state"] == "failed").then_some(s)
    })
    .await;
    let error = status["a"]["last_error"].as_str().unwrap().to_owned();
    for part in ["short_names", "23514", "users"] {
        assert!(error.contains(part), "{part:?} in {error}");
    }
    assert!(
        !error.contains("xxxxx"),
        "the value is not in the error: {error}"
    );

    for (tenant, id) in [(TENANT_B, 3), (TENANT_C, 4)] {
        source
            .execute(
                "INSERT INTO project_user (tenancy_id, id, display_name) VALUES ($1::text::uuid, $2, 'after')",
                &[&tenant, &id],
            )
            .await
            .unwrap();
    }
    wait_converged(&source, &[(&b, TENANT_B), (&c, TENANT_C)]).await;
    let s = destination_status(&config).await;
    assert_eq!(s["a"]["state"], "failed", "{s:?}");
    assert!(daemon.stop().success());
}

/// The `users` mapping with `display_name` written as `varchar(200)`: a destination whose
/// column is narrower still validates (same type), and refuses long values when writing.
fn varchar_mapping_toml() -> String {
    mapping_toml() + "[mappings.types]\ndisplay_name = \"varchar(200)\"\n"
}

async fn insert_user(source: &tokio_postgres::Client, id: i32, name: &str) {
    source
        .execute(
            "INSERT INTO project_user (tenancy_id, id, display_name) VALUES ($1::text::uuid, $2, $3)",
            &[&TENANT_A, &id, &name],
        )
        .await
        .unwrap();
}

/// `(hold, reason, seq, table, column)` of `name` in the state schema of `db`, if held.
async fn stored_hold(
    db: &str,
    name: &str,
) -> Option<(String, String, Option<i64>, Option<String>, Option<String>)> {
    sql(db)
        .await
        .query_opt(
            "SELECT hold, reason, seq, target_table, target_column FROM pgfanout.destination_holds WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
}

/// Issue 11: a 22001 (value too long, which PostgreSQL attributes to no column) on one of two
/// PostgreSQL destinations holds that one `failed` — table, column and seq in `status` and in
/// the state database, never the value — while the other keeps applying; widening the column
/// and `pgfanout destination resume` bring it back without a restart, caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_long_fails_one_of_two_destinations_until_resumed() {
    const SECRET: &str = "secret-value-far-too-long";
    let (db, source) = seeded_source("fan_long_src").await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (fresh_db("fan_long_a").await, fresh_db("fan_long_b").await);
    let tenants = [TENANT_A, TENANT_B];
    let config = write_config_with(
        dir.path(),
        &db,
        &["public.tenancy", "public.project_user"],
        &(varchar_mapping_toml()
            + &destination_toml("a", &a, &tenants)
            + &destination_toml("b", &b, &tenants)),
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    insert_user(&source, 1, "first").await;
    let (target_a, target_b) = (sql(&a).await, sql(&b).await);
    wait_equal(&source, &target_a, "a", &tenants).await;
    wait_equal(&source, &target_b, "b", &tenants).await;
    target_a
        .batch_execute("ALTER TABLE users ALTER COLUMN display_name TYPE varchar(5)")
        .await
        .unwrap();

    insert_user(&source, 2, "short").await;
    insert_user(&source, 3, SECRET).await;
    let status = wait_for("destination a to fail", || async {
        let s = destination_status(&config).await;
        (s["a"]["state"] == "failed").then_some(s)
    })
    .await;
    // The insert of 3 is the last change: the one refused.
    let bad_seq = log_last_seq(&dir.path().join("log")).await;
    let hold = &status["a"]["hold"];
    assert_eq!(hold["kind"], "failed", "{hold}");
    assert_eq!(hold["column"], "display_name", "{hold}");
    assert_eq!(hold["seq"], bad_seq, "{hold}");
    assert!(hold["table"].as_str().unwrap().contains("users"), "{hold}");
    let reason = hold["reason"].as_str().unwrap();
    for part in [
        "\"a\"",
        "users",
        "column display_name",
        &format!("change {bad_seq}"),
        "22001",
    ] {
        assert!(reason.contains(part), "{part:?} in {reason}");
    }
    let (kind, stored_reason, seq, table, column) = stored_hold(&db, "a").await.unwrap();
    assert_eq!(
        (kind.as_str(), seq, column.as_deref()),
        ("failed", Some(bad_seq as i64), Some("display_name"))
    );
    assert!(table.unwrap().contains("users"));
    let text = cli(&["status"], &config).await;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("destination a: failed"), "{text}");
    assert!(text.contains("column display_name"), "{text}");
    for shown in [stored_reason.as_str(), reason, text.as_ref()] {
        assert!(!shown.contains("secret"), "the value is not shown: {shown}");
    }

    // The other destination keeps applying; the failed one stays put.
    insert_user(&source, 4, "after").await;
    wait_equal(&source, &target_b, "b", &tenants).await;
    let s = destination_status(&config).await;
    assert_eq!(s["a"]["state"], "failed", "{s:?}");
    assert_eq!(s["b"]["state"], "streaming", "{s:?}");
    assert!(s["b"]["hold"].is_null(), "{s:?}");

    // A restart retries it once; unfixed, it fails again and is held again.
    assert!(daemon.stop().success());
    let log = dir.path().join("restart.log");
    let mut daemon = Daemon::start_logging(&config, "warn", &log);
    wait_streaming(&mut daemon, &source, &db).await;
    wait_for("the restart to retry a once and hold it again", || async {
        let written = std::fs::read_to_string(&log).unwrap_or_default();
        let s = destination_status(&config).await;
        (written.contains("retrying it once")
            && written.contains("destination stopped")
            && s["a"]["state"] == "failed")
            .then_some(())
    })
    .await;
    let (kind, _, seq, _, _) = stored_hold(&db, "a").await.unwrap();
    assert_eq!((kind.as_str(), seq), ("failed", Some(bad_seq as i64)));
    assert!(!std::fs::read_to_string(&log).unwrap().contains("secret"));

    // Resume: an unknown name is refused; after widening the column, `a` catches up.
    let unknown = cli(&["destination", "resume", "nope"], &config).await;
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("\"nope\"") && err.contains("\"a\", \"b\""),
        "{err}"
    );
    target_a
        .batch_execute("ALTER TABLE users ALTER COLUMN display_name TYPE varchar(200)")
        .await
        .unwrap();
    let resumed = cli(&["destination", "resume", "a"], &config).await;
    let out = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(
        out.contains("cleared failed") && out.contains("column display_name"),
        "{out}"
    );
    wait_equal(&source, &target_a, "a after resume", &tenants).await;
    wait_for("destination a to stream again", || async {
        let s = destination_status(&config).await;
        (s["a"]["state"] == "streaming" && s["a"]["hold"].is_null()).then_some(())
    })
    .await;
    assert_eq!(stored_hold(&db, "a").await, None);
    let again = cli(&["destination", "resume", "a"], &config).await;
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to clear"));
    assert!(daemon.stop().success());
}

/// Issue 11: the size cap `log.retention_mb` is not held back by a stopped destination: when
/// it deletes changes a `failed` destination (and one retrying against a stopped server) had
/// not applied, both are held `needs resync` with a warning naming them, and stream on from
/// the oldest change the log holds; the destination that kept up is not affected.
/// `destination resume` accepts the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_cap_holds_stopped_and_retrying_destinations_needs_resync_not_the_others() {
    let mut pg2 = tokio::task::spawn_blocking(|| {
        LocalPostgres::start(&Options::default()).expect("start a second PostgreSQL")
    })
    .await
    .unwrap();
    let (db, source) = seeded_source("fan_cap_src").await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (fresh_db("fan_cap_a").await, fresh_db("fan_cap_b").await);
    let c = "fan_cap_c";
    pg2.create_database(c).await.unwrap();
    let tenants = [TENANT_A];
    let config = write_config_with(
        dir.path(),
        &db,
        &["public.tenancy", "public.project_user"],
        &(varchar_mapping_toml()
            + &destination_toml("a", &a, &tenants)
            + &destination_toml("b", &b, &tenants)
            + &destination_toml_on(&pg2, "c", c, &tenants)),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("[log]\n", "[log]\nsegment_mb = 1\nretention_mb = 1\n", 1),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let mut daemon = Daemon::start_logging(&config, "warn", &log);
    wait_streaming(&mut daemon, &source, &db).await;
    insert_user(&source, 1, "first").await;
    let (target_a, target_b) = (sql(&a).await, sql(&b).await);
    wait_equal(&source, &target_a, "a", &tenants).await;
    wait_equal(&source, &target_b, "b", &tenants).await;
    wait_equal(&source, &pg2.sql(c).await.unwrap(), "c", &tenants).await;

    // a fails on a long value; c's server goes away (c retries).
    target_a
        .batch_execute("ALTER TABLE users ALTER COLUMN display_name TYPE varchar(5)")
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || {
        pg2.stop().unwrap();
        pg2
    })
    .await
    .unwrap();
    insert_user(&source, 2, "far too long").await;
    let missed = wait_for("a to fail and c to retry", || async {
        let s = destination_status(&config).await;
        (s["a"]["state"] == "failed" && s["c"]["state"] == "retrying").then_some(s)
    })
    .await;
    let a_missed = missed["a"]["hold"]["seq"].as_u64().unwrap();
    let c_missed = missed["c"]["watermark"].as_u64().unwrap() + 1;
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .all(|l| !l.contains("needs a resync")),
        "nothing lost yet"
    );

    // About 4 MB of changes in 1 MB segments: the cap deletes what a and c had not taken. b
    // keeps up (each transaction waits for it), so it never needs what the cap deletes.
    for round in 0..5 {
        source
            .execute(
                "INSERT INTO project_user (tenancy_id, id, display_name, bio)
                 SELECT $1::text::uuid, g, 'bulk', repeat(md5(g::text), 100)
                 FROM generate_series($2::int, $2::int + 299) g",
                &[&TENANT_A, &(1000 + round * 300)],
            )
            .await
            .unwrap();
        wait_equal(&source, &target_b, "b", &tenants).await;
    }
    let status = wait_for("a and c to need a resync", || async {
        let s = destination_status(&config).await;
        (s["a"]["state"] == "needs resync" && s["c"]["state"] == "needs resync").then_some(s)
    })
    .await;
    let oldest = log_oldest_seq(&dir.path().join("log")).await;
    assert!(
        oldest > a_missed && oldest > c_missed,
        "{oldest} {status:?}"
    );
    for (name, first_missed) in [("a", a_missed), ("c", c_missed)] {
        let hold = &status[name]["hold"];
        assert_eq!(hold["kind"], "needs resync", "{hold}");
        assert_eq!(hold["seq"], first_missed, "{hold}");
        let reason = hold["reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("changes {first_missed} to ")),
            "{reason}"
        );
        let (kind, _, seq, _, _) = stored_hold(&db, name).await.unwrap();
        assert_eq!(
            (kind.as_str(), seq),
            ("needs resync", Some(first_missed as i64))
        );
    }
    let warnings = std::fs::read_to_string(&log).unwrap();
    for name in ["a", "c"] {
        assert!(
            warnings.lines().any(|l| l.contains("WARN")
                && l.contains("needs a resync")
                && l.contains(&format!("destination={name}"))),
            "a warning names {name}: {warnings}"
        );
    }
    assert_eq!(status["b"]["state"], "streaming", "{status:?}");
    assert!(status["b"]["hold"].is_null(), "{status:?}");

    // a streams on past the gap (the long value went with the deleted changes), still
    // showing `needs resync`; resuming accepts the gap.
    insert_user(&source, 5000, "new").await;
    wait_for("a to apply a change after the gap", || async {
        let row = target_a
            .query_opt("SELECT 1 FROM users WHERE id = 5000", &[])
            .await
            .unwrap();
        row.map(|_| ())
    })
    .await;
    assert_eq!(
        destination_status(&config).await["a"]["state"],
        "needs resync"
    );
    let resumed = cli(&["destination", "resume", "a"], &config).await;
    let out = String::from_utf8_lossy(&resumed.stdout);
    assert!(resumed.status.success(), "{out}");
    assert!(
        out.contains("cleared needs resync") && out.contains("accepting the gap"),
        "{out}"
    );
    wait_for("a to stream without a hold", || async {
        let s = destination_status(&config).await;
        (s["a"]["state"] == "streaming").then_some(())
    })
    .await;
    assert!(daemon.stop().success());
}

/// The oldest seq in the change log at `dir`.
async fn log_oldest_seq(dir: &Path) -> u64 {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || pgfanout::changelog::summary(&dir))
        .await
        .unwrap()
        .unwrap()
        .oldest_seq
        .unwrap()
}

const TENANTS: [&str; 4] = [TENANT_A, TENANT_B, TENANT_C, TENANT_D];

/// Rounds of inserts, updates, deletes, filter flips, key changes and tenant moves across all
/// four tenants, in transactions of their own, until `stop` or `max_rounds`; returns the
/// rounds done. Ids are unique across tenants and workers (a moved row keeps its id), so one
/// target table can hold several tenants.
async fn churn(db: String, worker: i32, stop: Arc<AtomicBool>, max_rounds: i32) -> i32 {
    let c = sql(&db).await;
    let mut r = 0;
    while r < max_rounds && !stop.load(Ordering::Relaxed) {
        let base = 1_000_000 * (worker + 1) + r * 10;
        let t = TENANTS[(r + worker) as usize % 4];
        let other = TENANTS[(r + worker + 1) as usize % 4];
        let statements = [
            format!(
                "BEGIN;
                 INSERT INTO project_user (tenancy_id, id, display_name, email, is_anonymous, bio)
                     SELECT '{t}', g, 'u' || g, 'E' || g || '@X.org', g % 10 = 5, 'bio ' || g
                     FROM generate_series({base}, {base} + 9) g;
                 UPDATE project_user SET display_name = display_name || ' edited' WHERE id = {base} + 1;
                 COMMIT;"
            ),
            // A tenant move.
            format!("UPDATE project_user SET tenancy_id = '{other}', display_name = 'moved' WHERE id = {base} + 2"),
            format!("DELETE FROM project_user WHERE id = {base} + 3"),
            // The filter flips both ways (id % 10 = 5 starts anonymous).
            format!("UPDATE project_user SET is_anonymous = NOT is_anonymous WHERE id IN ({base} + 4, {base} + 5)"),
            // A key change.
            format!("UPDATE project_user SET id = id + 500000 WHERE id = {base} + 6"),
            // Rows of an earlier round, wherever they are now; two statements, one transaction.
            format!(
                "UPDATE project_user SET email = 'r{r}@x.org' WHERE id IN ({base} - 20 + 7, {base} - 20 + 2);
                 DELETE FROM project_user WHERE id = {base} - 20 + 8;"
            ),
        ];
        for s in &statements {
            c.batch_execute(s).await.unwrap();
        }
        r += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    const KILLS: u32 = 12;
    let (db, source) = seeded_source("fan_kill").await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, config) = three_tenant_databases("fan_kill", dir.path(), &db).await;
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(churn(db.clone(), w, stop.clone(), i32::MAX)))
        .collect();
    let daemon = kill_at_random_moments(daemon, &config, KILLS, 100).await;
    let rounds = stop_workload(&stop, writers).await;
    eprintln!("{KILLS} kills during {rounds} workload rounds");
    assert!(rounds >= 50, "the workload ran only {rounds} rounds");

    let counts = wait_converged(&source, &[(&a, TENANT_A), (&b, TENANT_B), (&c, TENANT_C)]).await;
    assert!(counts.iter().all(|&n| n > 20), "{counts:?}");
    let targets = [sql(&a).await, sql(&b).await, sql(&c).await];
    let last = wait_watermarks(
        &dir.path().join("log"),
        &[
            (&targets[0], "public", "a"),
            (&targets[1], "public", "b"),
            (&targets[2], "public", "c"),
        ],
    )
    .await;
    // Every change of the workload is in the log once: per round 10 inserts + 1 update, a
    // move, a delete, 2 flips, a key change, then 2 updates + 1 delete of rows two rounds
    // back (which exist from each worker's third round on). The seed predates the slot.
    assert_eq!(
        last,
        19 * rounds as u64 - 2 * 2 * 3,
        "changes in the log after {rounds} rounds"
    );
    pgfanout::changelog::verify(&dir.path().join("log")).unwrap();
    assert!(daemon.stop().success());
}

/// Inserts rows of about 1.4 kB (not compressed, not TOASTed) for all four tenants until
/// `stop`: about a megabyte of WAL a second. Returns the rounds done.
async fn insert_load(db: String, stop: Arc<AtomicBool>) -> i32 {
    let c = sql(&db).await;
    let mut r = 0;
    while !stop.load(Ordering::Relaxed) {
        let base = 5_000_000 + r * 10;
        let t = TENANTS[r as usize % 4];
        c.execute(
            "INSERT INTO project_user (tenancy_id, id, display_name, email, bio)
             SELECT $1::text::uuid, g, 'load ' || g, 'L' || g || '@x.org',
                    (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 44))
             FROM generate_series($2::int, $2::int + 9) g",
            &[&t, &base],
        )
        .await
        .unwrap();
        r += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r
}

async fn current_wal_lsn(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

async fn wal_bytes_since(client: &tokio_postgres::Client, lsn: &str) -> i64 {
    client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint",
            &[&lsn],
        )
        .await
        .unwrap()
        .get(0)
}

/// WAL the slot holds back: from its confirmed position to the server's current one.
async fn slot_retained_wal(client: &tokio_postgres::Client, slot: &str) -> i64 {
    client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_target_does_not_hold_back_the_others() {
    const OUTAGE: Duration = Duration::from_secs(30);
    const MAX_LAG: Duration = Duration::from_secs(2);
    const MAX_RETAINED: i64 = 16 * 1024 * 1024;
    let pg2 = tokio::task::spawn_blocking(|| {
        LocalPostgres::start(&Options::default()).expect("start a second PostgreSQL")
    })
    .await
    .unwrap();
    let (db, source) = seeded_source("fan_stall").await;
    let (a, b) = (fresh_db("fan_stall_a").await, fresh_db("fan_stall_b").await);
    let c = "fan_stall_c";
    pg2.create_database(c).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let destinations = destination_toml("sa", &a, &[TENANT_A])
        + &destination_toml("sb", &b, &[TENANT_B])
        + &destination_toml_on(&pg2, "sc", c, &[TENANT_C]);
    let config = write_config(dir.path(), &db, &destinations);
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(insert_load(db.clone(), stop.clone()));
    {
        let target_c = pg2.sql(c).await.unwrap();
        wait_for("destination c to receive rows", || async {
            (!target_rows(&target_c).await.is_empty()).then_some(())
        })
        .await;
    }

    // The outage.
    let slot = format!("s_{db}");
    let wal_at_stop = current_wal_lsn(&source).await;
    pg2.pause().unwrap();
    let stopped = Instant::now();
    let served = [(TENANT_A, sql(&a).await), (TENANT_B, sql(&b).await)];
    let mut lags = Vec::new();
    let mut retained = Vec::new();
    let mut c_during_outage = None;
    let mut marker = 0;
    while stopped.elapsed() < OUTAGE {
        marker += 1;
        let id = 9_000_000 + marker;
        let (tenant, target) = &served[marker as usize % 2];
        let inserted = Instant::now();
        source
            .execute(
                "INSERT INTO project_user (tenancy_id, id, display_name) VALUES ($1::text::uuid, $2, 'marker')",
                &[tenant, &id],
            )
            .await
            .unwrap();
        loop {
            let found = match target
                .query_opt("SELECT 1 FROM users WHERE id = $1", &[&id])
                .await
            {
                Ok(row) => row.is_some(),
                Err(e) => panic!("reading the target of {tenant}: {e}"),
            };
            if found {
                break;
            }
            assert!(
                inserted.elapsed() < WAIT,
                "marker {id} for {tenant} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lags.push(inserted.elapsed());
        retained.push(slot_retained_wal(&source, &slot).await);
        if c_during_outage.is_none() && stopped.elapsed() > Duration::from_secs(3) {
            let status = destination_status(&config).await;
            let d = &status["sc"];
            let state = d["state"].as_str().unwrap_or_default();
            if (state == "retrying" || state == "catching up") && d["last_error"].is_string() {
                c_during_outage = Some(d.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let wal_during_outage = wal_bytes_since(&source, &wal_at_stop).await;
    pg2.resume().unwrap();
    stop.store(true, Ordering::Relaxed);
    let rounds = load.await.unwrap();
    eprintln!(
        "outage: {} markers, lags {lags:?}; retained WAL {retained:?}; {wal_during_outage} bytes of WAL written; {rounds} load rounds",
        lags.len()
    );

    assert!(lags.len() >= 5, "only {} markers", lags.len());
    let slow: Vec<_> = lags.iter().filter(|l| **l >= MAX_LAG).collect();
    assert!(
        slow.is_empty(),
        "served tenants fell behind during the outage: {lags:?}"
    );
    // The bound means something only if the outage wrote more WAL than it.
    assert!(
        wal_during_outage > 2 * MAX_RETAINED,
        "the load wrote only {wal_during_outage} bytes of WAL"
    );
    let most = retained.iter().max().copied().unwrap_or_default();
    assert!(
        most < MAX_RETAINED,
        "the slot retained {most} bytes of WAL during the outage: {retained:?}"
    );
    let during = c_during_outage.expect("status never showed c retrying with an error");
    eprintln!("c during the outage: {during}");

    // Recovery: c catches up, everyone equals the projection, and status says so.
    let target_c = pg2.sql(c).await.unwrap();
    wait_equal(&source, &target_c, "c (after the restart)", &[TENANT_C]).await;
    let counts = wait_converged(&source, &[(&a, TENANT_A), (&b, TENANT_B)]).await;
    assert!(counts.iter().all(|&n| n > 100), "{counts:?}");
    let deadline = Instant::now() + WAIT;
    loop {
        let status = destination_status(&config).await;
        let done = ["sa", "sb", "sc"]
            .iter()
            .all(|n| status[*n]["state"] == "streaming" && status[*n]["lag_changes"] == 0);
        if done {
            assert!(status["sc"]["last_error"].is_null(), "{:?}", status["sc"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed every destination streaming without lag: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_a_wiped_target() {
    let (db, source) = seeded_source("fan_replay").await;
    let (a, bc) = (
        fresh_db("fan_replay_a").await,
        fresh_db("fan_replay_bc").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let destinations = destination_toml("alpha", &a, &[TENANT_A])
        + &destination_toml("bravo_charlie", &bc, &[TENANT_B, TENANT_C]);
    let config = write_config(dir.path(), &db, &destinations);
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    let never = Arc::new(AtomicBool::new(false));
    let (w0, w1) = tokio::join!(
        churn(db.clone(), 0, never.clone(), 60),
        churn(db.clone(), 1, never.clone(), 60)
    );
    assert_eq!((w0, w1), (60, 60));
    let target_a = sql(&a).await;
    let target_bc = sql(&bc).await;
    let n_a = wait_equal(&source, &target_a, "alpha", &[TENANT_A]).await;
    let n_bc = wait_equal(&source, &target_bc, "bravo_charlie", &[TENANT_B, TENANT_C]).await;
    let n_b = source_rows(&source, &[TENANT_B]).await.len();
    assert!(
        n_a > 50 && n_b > 50 && n_bc > n_b + 50,
        "{n_a} {n_b} {n_bc}"
    );
    let log = dir.path().join("log");
    let last = wait_watermarks(
        &log,
        &[
            (&target_a, "public", "alpha"),
            (&target_bc, "public", "bravo_charlie"),
        ],
    )
    .await;

    // Wiped, then replayed from the start while the daemon runs.
    target_a.batch_execute("DELETE FROM users").await.unwrap();
    assert!(target_rows(&target_a).await.is_empty());
    let out = cli(
        &["replay", "--destination", "alpha", "--from-seq", "1"],
        &config,
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay failed: {err}");
    assert!(err.contains(&format!("up to seq {last}")), "{err}");
    let want = source_rows(&source, &[TENANT_A]).await;
    let got = target_rows(&target_a).await;
    assert!(want == got, "alpha after replay: {}", diff(&want, &got));
    assert_eq!(
        watermark(&target_a, "public", "alpha").await,
        Some(last as i64),
        "replay leaves the watermark alone"
    );

    // What would replay nothing is refused, not reported as a success with 0 operations.
    let unknown = "00000000-0000-0000-0000-00000000dead";
    for (destination, args, expected) in [
        (
            "alpha",
            vec!["--from-seq".to_owned(), (last + 1000).to_string()],
            format!("seq {} is beyond the change log's end", last + 1000),
        ),
        (
            "alpha",
            vec![
                "--from-seq".into(),
                "1".into(),
                "--tenant".into(),
                TENANT_B.into(),
            ],
            format!("destination \"alpha\" does not serve tenant \"{TENANT_B}\""),
        ),
        (
            "bravo_charlie",
            vec![
                "--from-seq".into(),
                "1".into(),
                "--tenant".into(),
                unknown.into(),
            ],
            "does not serve tenant".to_owned(),
        ),
    ] {
        let mut all = vec![
            "replay".to_owned(),
            "--destination".into(),
            destination.into(),
        ];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = cli(&all, &config).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&expected),
            "{all:?}: {err}"
        );
    }

    // An unknown destination is refused with the configured names.
    let out = cli(
        &["replay", "--destination", "nosuch", "--from-seq", "1"],
        &config,
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for name in ["nosuch", "alpha", "bravo_charlie"] {
        assert!(err.contains(name), "{name} missing from: {err}");
    }

    // One tenant of a two-tenant destination: only its rows come back.
    target_bc.batch_execute("DELETE FROM users").await.unwrap();
    let out = cli(
        &[
            "replay",
            "--destination",
            "bravo_charlie",
            "--from-seq",
            "1",
            "--tenant",
            TENANT_B,
        ],
        &config,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = source_rows(&source, &[TENANT_B]).await;
    let got = target_rows(&target_bc).await;
    assert!(
        want == got,
        "bravo_charlie after replaying {TENANT_B}: {}",
        diff(&want, &got)
    );
    let out = cli(
        &[
            "replay",
            "--destination",
            "bravo_charlie",
            "--from-seq",
            "1",
            "--tenant",
            TENANT_C,
        ],
        &config,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = source_rows(&source, &[TENANT_B, TENANT_C]).await;
    let got = target_rows(&target_bc).await;
    assert!(
        want == got,
        "bravo_charlie after replaying both tenants: {}",
        diff(&want, &got)
    );
    assert!(daemon.stop().success());
}

/// A row the daemon removes while `replay` runs stays removed (invariant 34). Replay is held
/// at a gate once it has fixed the end of the log it reads, before its first write; the daemon
/// applies the row's removal meanwhile (a change past that end). Replay then writes the row's
/// older insert again — on its own that would bring the row back for good — and must replay
/// on through the removal the destination's watermark shows applied. Once a delete with the
/// whole destination replayed, once a move of the row to a tenant the destination does not
/// serve with `--tenant` (the narrowed passes must carry the move as a delete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_keeps_a_row_deleted_while_it_ran_deleted() {
    let (db, source) = seeded_source("fan_replay_race").await;
    let a = fresh_db("fan_replay_race_a").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &db, &destination_toml("alpha", &a, &[TENANT_A]));
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    let target = sql(&a).await;
    let cases: [(i32, String, &[&str]); 2] = [
        (
            990_001,
            "DELETE FROM project_user WHERE id = $1".into(),
            &["--from-seq", "1"],
        ),
        (
            990_002,
            format!("UPDATE project_user SET tenancy_id = '{TENANT_B}' WHERE id = $1"),
            &["--from-seq", "1", "--tenant", TENANT_A],
        ),
    ];
    for (row, removal, args) in cases {
        source
            .execute(
                "INSERT INTO project_user (tenancy_id, id, display_name, email, bio)
                 VALUES ($1::text::uuid, $2, 'replayed', 'R@example.com', 'b')",
                &[&TENANT_A, &row],
            )
            .await
            .unwrap();
        wait_equal(&source, &target, "alpha (the row inserted)", &[TENANT_A]).await;
        let id = row.to_string();
        let has_row = |rows: &Rows| rows.iter().any(|r| r[0].as_deref() == Some(id.as_str()));
        assert!(has_row(&target_rows(&target).await));

        let gate = dir.path().join(format!("gate-{row}"));
        let mut replay = held_replay(&config, &gate, args).await;
        let end = log_last_seq(&dir.path().join("log")).await;
        // The removal, past replay's end, applied by the daemon while replay waits.
        source.execute(&removal, &[&row]).await.unwrap();
        wait_equal(&source, &target, "alpha (the row removed)", &[TENANT_A]).await;
        let removed_at = watermark(&target, "public", "alpha").await.unwrap() as u64;
        assert!(removed_at > end, "{removed_at} {end}");

        std::fs::write(&gate, "").unwrap();
        let out = tokio::task::spawn_blocking(move || replay.wait_output())
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "replay {args:?} failed: {err}");
        let got = target_rows(&target).await;
        assert!(
            !has_row(&got),
            "replay {args:?} brought the removed row back: {err}"
        );
        let want = source_rows(&source, &[TENANT_A]).await;
        assert!(want == got, "alpha after replay: {}", diff(&want, &got));
        // It says it read every change from 1 through the removal, in a second pass.
        let said = err
            .lines()
            .find(|l| l.starts_with("replayed "))
            .unwrap_or_else(|| panic!("no report in: {err}"));
        let numbers: Vec<u64> = said
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        let [changes, last_seq, ops, passes] = numbers[..] else {
            panic!("unexpected report: {said}")
        };
        assert!(last_seq >= removed_at && changes == last_seq, "{said}");
        assert!(passes >= 2 && ops > 1, "{said}");
        assert_eq!(
            watermark(&target, "public", "alpha").await,
            Some(removed_at as i64),
            "replay leaves the watermark alone"
        );
    }
    assert!(daemon.stop().success());
}

/// `pgfanout replay ARGS` for destination alpha, held at the failpoint gate `gate` (it has
/// fixed the end of the log it reads and written nothing): returns once it waits there.
async fn held_replay(config: &Path, gate: &Path, args: &[&str]) -> Spawned {
    let mut reached = gate.as_os_str().to_owned();
    reached.push(".reached");
    let reached = PathBuf::from(reached);
    let mut replay = Spawned(
        Command::new(env!("CARGO_BIN_EXE_pgfanout"))
            .args(["replay", "--destination", "alpha"])
            .args(args)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .env(
                "FAILPOINTS",
                format!(
                    "fanout::replay::before_apply=return(gate:{})",
                    gate.display()
                ),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + WAIT;
    while !reached.exists() {
        if replay.0.try_wait().unwrap().is_some() {
            let out = replay.wait_output();
            panic!(
                "replay {args:?} ended before its gate: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            Instant::now() < deadline,
            "replay {args:?} never reached its gate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replay
}

/// The schemas and the (schema, table) pairs of a database, without the system catalogs.
async fn user_objects(client: &tokio_postgres::Client) -> (Vec<String>, Vec<(String, String)>) {
    let schemas: Vec<String> = client
        .query(
            "SELECT schema_name::text FROM information_schema.schemata
             WHERE schema_name NOT LIKE 'pg\\_%' AND schema_name <> 'information_schema'
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let tables: Vec<(String, String)> = client
        .query(
            "SELECT table_schema::text, table_name::text FROM information_schema.tables
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
             ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    (schemas, tables)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_work_and_inject_nothing() {
    const TABLE: &str = "Weird; \"Table\"";
    const SCHEMA: &str = "Sch ema; \"x\"";
    const TARGET: &str = "Tar get; \"T\" --";
    const DESTINATION: &str = "d'; DROP TABLE canary; --";
    const MAPPING: &str = "wei;rd \"m\"";
    const SERVED: &str = "acme'); DROP TABLE canary; --";
    const UNSERVED: &str = "other\"; DROP SCHEMA public CASCADE; --";
    let db = fresh_db("fan_hostile").await;
    let source = sql(&db).await;
    let table = format!("public.{}", qi(TABLE));
    source
        .batch_execute(&format!(
            "CREATE TABLE {table} (\"Tenant Id\" text NOT NULL, \"Ke\"\"y\" int NOT NULL,
                 \"Na;me\" text, \"UPPER\" text, PRIMARY KEY (\"Tenant Id\", \"Ke\"\"y\"));
             CREATE TABLE canary (x int); INSERT INTO canary VALUES (1);"
        ))
        .await
        .unwrap();
    let target_db = fresh_db("fan_hostile_t").await;
    let target = sql(&target_db).await;
    target
        .batch_execute("CREATE TABLE canary (x int); INSERT INTO canary VALUES (1);")
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let rest = format!(
        "\n[[mappings]]\nname = {}\nsource = {}\ntenant_key = {}\ntarget = {}\nkey = [{}]\n\
         filter = {}\n[mappings.columns]\n{} = {}\n{} = {}\n{} = {}\n{} = {}\n\
         \n[[destinations]]\nname = {}\nkind = \"postgres\"\nurl = {}\ntenants = [{}]\n\
         mappings = [{}]\nschema = {}\nversion_column = {}\nflush_interval = \"50ms\"\n",
        toml_str(MAPPING),
        toml_str(&table),
        toml_str("Tenant Id"),
        toml_str(TARGET),
        toml_str("I\"d"),
        toml_str("\"UPPER\" IS NOT NULL"),
        toml_str("I\"d"),
        toml_str("\"Ke\"\"y\""),
        toml_str("Na me;"),
        toml_str("\"Na;me\""),
        toml_str("UP\"PER'"),
        toml_str("\"UPPER\""),
        toml_str("lo;wer"),
        toml_str("lower(\"Na;me\")"),
        toml_str(DESTINATION),
        toml_str(&url_on(server(), &target_db)),
        toml_str(SERVED),
        toml_str(MAPPING),
        toml_str(SCHEMA),
        toml_str("v\"er; sion"),
    );
    let config = write_config_with(dir.path(), &db, &[&table], &rest);
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;

    let insert = format!(
        "INSERT INTO {table} (\"Tenant Id\", \"Ke\"\"y\", \"Na;me\", \"UPPER\") VALUES ($1, $2, $3, $4)"
    );
    for (tenant, offset) in [(SERVED, 0), (UNSERVED, 100)] {
        for i in 1..=40 {
            let name = format!("n{i} '; DROP TABLE canary; -- \"q\" \\ $$ ü ï");
            let upper = (i % 5 != 0).then(|| format!("U'{i}\";"));
            source
                .execute(&insert, &[&tenant, &(i + offset), &name, &upper])
                .await
                .unwrap();
        }
    }
    source
        .batch_execute(&format!(
            "UPDATE {table} SET \"Na;me\" = \"Na;me\" || ' ''edited''; --' WHERE \"Ke\"\"y\" % 3 = 0;
             DELETE FROM {table} WHERE \"Ke\"\"y\" % 7 = 0;
             UPDATE {table} SET \"Ke\"\"y\" = \"Ke\"\"y\" + 1000 WHERE \"Ke\"\"y\" % 11 = 0;
             UPDATE {table} SET \"UPPER\" = NULL WHERE \"Ke\"\"y\" IN (2, 3, 102);
             UPDATE {table} SET \"UPPER\" = 'back' WHERE \"Ke\"\"y\" IN (5, 105);"
        ))
        .await
        .unwrap();
    source
        .execute(
            &format!("UPDATE {table} SET \"Tenant Id\" = $1 WHERE \"Ke\"\"y\" = 4"),
            &[&UNSERVED],
        )
        .await
        .unwrap();
    source
        .execute(
            &format!("UPDATE {table} SET \"Tenant Id\" = $1 WHERE \"Ke\"\"y\" = 104"),
            &[&SERVED],
        )
        .await
        .unwrap();

    let projection = format!(
        "SELECT \"Ke\"\"y\"::text, \"Na;me\", \"UPPER\", lower(\"Na;me\") FROM {table}
         WHERE \"Tenant Id\" = $1 AND \"UPPER\" IS NOT NULL ORDER BY \"Ke\"\"y\""
    );
    let target_query = format!(
        "SELECT {}::text, {}, {}, {} FROM {}.{} ORDER BY {}",
        qi("I\"d"),
        qi("Na me;"),
        qi("UP\"PER'"),
        qi("lo;wer"),
        qi(SCHEMA),
        qi(TARGET),
        qi("I\"d")
    );
    let deadline = Instant::now() + WAIT;
    let rows = loop {
        let want = text_rows(&source.query(&projection, &[&SERVED]).await.unwrap());
        let got = match target.query(&target_query, &[]).await {
            Ok(rows) => text_rows(&rows),
            Err(e)
                if e.code()
                    .is_some_and(|c| c.code() == "42P01" || c.code() == "3F000") =>
            {
                Vec::new()
            }
            Err(e) => panic!("reading the hostile target: {e}"),
        };
        if want == got {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the hostile target: {}",
            diff(&want, &got)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(rows.len() > 20, "{rows:?}");
    assert!(
        rows.iter().any(|r| r[0].as_deref() == Some("104")),
        "the row moved in is there"
    );
    wait_watermarks(&dir.path().join("log"), &[(&target, SCHEMA, DESTINATION)]).await;

    // Nothing else was created, dropped or renamed, in the target or in the source.
    let (schemas, tables) = user_objects(&target).await;
    let mut want_schemas = vec!["public".to_owned(), SCHEMA.to_owned()];
    want_schemas.sort();
    assert_eq!(schemas, want_schemas);
    let mut want_tables = vec![
        ("public".to_owned(), "canary".to_owned()),
        (SCHEMA.to_owned(), TARGET.to_owned()),
        (SCHEMA.to_owned(), "_pgfanout_watermarks".to_owned()),
    ];
    want_tables.sort();
    assert_eq!(tables, want_tables);
    let (schemas, tables) = user_objects(&source).await;
    assert_eq!(schemas, ["pgfanout", "public"]);
    let user_tables: Vec<_> = tables.iter().filter(|(s, _)| s != "pgfanout").collect();
    assert_eq!(
        user_tables,
        [
            &("public".to_owned(), TABLE.to_owned()),
            &("public".to_owned(), "canary".to_owned())
        ]
    );
    let published: Vec<(String, String)> = source
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = 'pgfanout'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(published, [("public".to_owned(), TABLE.to_owned())]);
    for client in [&source, &target] {
        let n: i64 = client
            .query_one("SELECT count(*) FROM canary", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    }
    assert!(daemon.stop().success());
}

/// Runs `pgfanout ARGS --config CONFIG`, failing the test if it has not exited after `limit`.
async fn cli_within(args: &[&str], config: &Path, limit: Duration) -> std::process::Output {
    let mut child = Spawned(
        Command::new(env!("CARGO_BIN_EXE_pgfanout"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < limit,
            "pgfanout {args:?} still runs after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::spawn_blocking(move || child.wait_output())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_naming_a_missing_column_holds_only_its_destination_failed_listing_every_problem()
{
    let (db, source) = seeded_source("fan_badmap").await;
    let target_db = fresh_db("fan_badmap_t").await;
    let good_db = fresh_db("fan_badmap_g").await;
    let dir = tempfile::tempdir().unwrap();
    let rest = format!(
        r#"
[tenants]
query = "SELECT id AS tenant, project_id FROM public.tenancy"
table = "public.tenancy"

[[mappings]]
name = "first_bad"
source = "public.project_user"
tenant_key = "tenancy_id"
target = "one"
key = ["id"]
[mappings.columns]
id = "id"
ghost = "no_such_column"
name = "display_name"

[[mappings]]
name = "second_bad"
source = "public.project_user"
tenant_key = "display_name"
target = "two"
key = ["id"]
[mappings.columns]
id = "id"
phantom = "lower(missing_col)"

[[mappings]]
name = "good"
source = "public.project_user"
tenant_key = "tenancy_id"
target = "three"
key = ["id"]
[mappings.columns]
id = "id"

[[destinations]]
name = "d"
kind = "postgres"
url = {}
tenants = "*"
mappings = ["first_bad", "second_bad"]

[[destinations]]
name = "e"
kind = "postgres"
url = {}
tenants = "*"
mappings = ["good"]
"#,
        toml_str(&url_on(server(), &target_db)),
        toml_str(&url_on(server(), &good_db))
    );
    let config = write_config_with(
        dir.path(),
        &db,
        &["public.tenancy", "public.project_user"],
        &rest,
    );

    // `check` lists every problem and fails.
    let check = cli_within(&["check"], &config, Duration::from_secs(20)).await;
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{report}");
    assert!(report.contains("PROBLEM mappings"), "{report}");
    for part in [
        "first_bad",
        "no_such_column",
        "second_bad",
        "missing_col",
        "tenant key column display_name",
    ] {
        assert!(
            report.contains(part),
            "{part:?} missing from check's report:\n{report}"
        );
    }

    // `run` starts: the broken mappings' destination is held failed naming them, the other
    // streams.
    let daemon = Daemon::start(&config);
    let status = wait_for("d failed and e streaming", || async {
        let s = destination_status(&config).await;
        (s["d"]["state"] == "failed" && s["e"]["state"] == "streaming").then_some(s)
    })
    .await;
    let error = status["d"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("first_bad") || error.contains("second_bad"),
        "{error}"
    );
    // The good mapping's destination takes the changes from then on.
    source
        .execute(
            "INSERT INTO project_user (tenancy_id, id, display_name, email, is_anonymous, bio)
             VALUES ($1::text::uuid, 1, 'User 1', 'u1@example.com', false, 'short')",
            &[&TENANT_A],
        )
        .await
        .unwrap();
    let good = sql(&good_db).await;
    wait_for("the good mapping's rows", || async {
        let n: Option<i64> = good
            .query_one("SELECT count(*) FROM three", &[])
            .await
            .ok()
            .map(|r| r.get(0));
        n.filter(|n| *n > 0)
    })
    .await;
    assert!(daemon.stop().success());
    // Nothing was set up in the failed destination.
    let target = sql(&target_db).await;
    let tables: i64 = target
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "no target table was created");
}

/// Issue 11: a slot dropped while pgfanout is stopped is refused; `--recreate-slot` continues
/// and holds every destination `needs resync` (they keep streaming what comes after); and a
/// destination whose watermark was written from another change log (another lineage) is held
/// `failed` instead of being taken to be up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_slot_holds_every_destination_needs_resync_and_a_foreign_watermark_fails() {
    let (db, source) = seeded_source("fan_recreate").await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        fresh_db("fan_recreate_a").await,
        fresh_db("fan_recreate_b").await,
    );
    let destinations =
        destination_toml("a", &a, &[TENANT_A]) + &destination_toml("b", &b, &[TENANT_B]);
    let config = write_config(dir.path(), &db, &destinations);
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    insert_user(&source, 1, "before").await;
    wait_converged(&source, &[(&a, TENANT_A), (&b, TENANT_B)]).await;
    assert!(daemon.stop().success());

    // The slot is dropped while stopped: start-up refuses and changes nothing.
    drop_slot(&source, &format!("s_{db}")).await;
    let refused = Daemon::start(&config).exited().await;
    assert!(!refused.success());
    assert_eq!(stored_hold(&db, "a").await, None);

    // --recreate-slot: both destinations are held needs resync, and keep streaming.
    let mut daemon = Daemon::start_with(&config, &["--recreate-slot"]);
    wait_streaming(&mut daemon, &source, &db).await;
    for name in ["a", "b"] {
        // Stored by the fan-out as it starts, which may be just after the slot streams.
        let (hold, reason, ..) = wait_for("the needs resync hold", || stored_hold(&db, name)).await;
        assert_eq!(hold, "needs resync");
        assert!(reason.contains("--recreate-slot"), "{reason}");
    }
    insert_user(&source, 2, "after").await;
    wait_converged(&source, &[(&a, TENANT_A), (&b, TENANT_B)]).await;
    let status = destination_status(&config).await;
    assert_eq!(status["a"]["hold"]["kind"], "needs resync", "{status:?}");
    assert!(daemon.stop().success());

    // Another pgfanout, with its own log (another lineage) and state, pointed at `a`.
    let other_dir = tempfile::tempdir().unwrap();
    let other = write_config(
        other_dir.path(),
        &db,
        &destination_toml("a", &a, &[TENANT_A]),
    );
    let text = std::fs::read_to_string(&other)
        .unwrap()
        .replace(&format!("slot = \"s_{db}\""), &format!("slot = \"o_{db}\""))
        .replace("[state]\n", "[state]\nschema = \"other\"\n");
    std::fs::write(&other, text).unwrap();
    let daemon = Daemon::start(&other);
    let failed = wait_for("the foreign destination to fail", || async {
        let s = destination_status(&other).await;
        (s["a"]["state"] == "failed").then_some(s)
    })
    .await;
    let error = failed["a"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("holds the seqs of another change log"),
        "{error}"
    );
    assert!(daemon.stop().success());
    drop_slot(&source, &format!("o_{db}")).await;
    drop_slot(&source, &format!("s_{db}")).await;
}

/// A large value PostgreSQL keeps out of line (TOAST): about 9.6 kB of random hex, which does
/// not compress.
const TOASTED: &str =
    "(SELECT string_agg(md5(random()::text || k), '') FROM generate_series(1, 300) AS k)";

/// Rows that enter a destination through an update leaving their large value alone — a filter
/// flip, a move from a tenant no destination serves or from another destination's tenant, a
/// flip back in after the value changed while the row was out — carry that value, which the
/// change does not (REPLICA IDENTITY DEFAULT) and no destination holds: it is read from the
/// source (invariant 25). With FULL the old row carries it, as the log shows.
async fn rows_entering_a_destination_keep_unchanged_toast_values(identity: &str) {
    let prefix = format!("toast_{}", identity.to_lowercase());
    let (db, source) = seeded_source(&format!("{prefix}_src")).await;
    source
        .batch_execute(&format!(
            "ALTER TABLE project_user REPLICA IDENTITY {identity}"
        ))
        .await
        .unwrap();
    let (a, b) = (
        fresh_db(&format!("{prefix}_a")).await,
        fresh_db(&format!("{prefix}_b")).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let destinations =
        destination_toml("a", &a, &[TENANT_A]) + &destination_toml("b", &b, &[TENANT_B]);
    let config = write_config(dir.path(), &db, &destinations);
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;

    // Every row has a large value; a third are filtered out (anonymous). Ids are distinct
    // across tenants, so a row moves between tenants with its id (the target's key).
    for (tenant, first) in [(TENANT_A, 1), (TENANT_B, 1001), (TENANT_C, 2001)] {
        source
            .execute(
                &format!(
                    "INSERT INTO project_user (tenancy_id, id, display_name, email, is_anonymous, bio)
                     SELECT $1::text::uuid, g, 'User ' || g, 'u' || g || '@x.org', g % 3 = 0, {TOASTED}
                     FROM generate_series($2::int, $2::int + 29) g"
                ),
                &[&tenant, &first],
            )
            .await
            .unwrap();
    }
    let (target_a, target_b) = (sql(&a).await, sql(&b).await);
    // The targets hold the inserted rows before the updates come: no insert in the same batch
    // supplies the values.
    wait_equal(&source, &target_a, "a", &[TENANT_A]).await;
    wait_equal(&source, &target_b, "b", &[TENANT_B]).await;

    source
        .batch_execute(&format!(
            "-- filter flips into both destinations
             UPDATE project_user SET is_anonymous = false WHERE is_anonymous AND id % 2 = 0;
             -- moves from a tenant no destination serves (C), and from A's destination to B's
             UPDATE project_user SET tenancy_id = '{TENANT_B}' WHERE tenancy_id = '{TENANT_C}' AND id < 2020;
             UPDATE project_user SET tenancy_id = '{TENANT_B}' WHERE tenancy_id = '{TENANT_A}' AND id <= 10;
             -- out of the filter, the large value changed while out, back in unchanged
             UPDATE project_user SET is_anonymous = true, bio = {TOASTED} WHERE id BETWEEN 11 AND 16;
             UPDATE project_user SET is_anonymous = false WHERE id BETWEEN 11 AND 16;
             -- rows the targets hold: their own copy is kept (no source read needed)
             UPDATE project_user SET display_name = 'edited' WHERE id % 5 = 1;"
        ))
        .await
        .unwrap();
    // And in later transactions, each in a batch of its own.
    for statement in [
        "UPDATE project_user SET is_anonymous = false WHERE is_anonymous AND id < 1000".to_owned(),
        format!(
            "UPDATE project_user SET tenancy_id = '{TENANT_A}' WHERE tenancy_id = '{TENANT_C}'"
        ),
    ] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        source.batch_execute(&statement).await.unwrap();
    }
    let n_a = wait_equal(&source, &target_a, "a", &[TENANT_A]).await;
    let n_b = wait_equal(&source, &target_b, "b", &[TENANT_B]).await;
    assert!(n_a > 20 && n_b > 40, "{n_a} {n_b}");
    for (target, name) in [(&target_a, "a"), (&target_b, "b")] {
        let missing: i64 = target
            .query_one(
                "SELECT count(*) FROM users WHERE bio IS NULL OR length(bio) < 9000",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(missing, 0, "{name}: rows without their large value");
    }
    assert!(daemon.stop().success());

    // Whether the log's updates carried the value in the old row: never with DEFAULT (pgoutput
    // sends only the key), always with FULL (PostgreSQL logs the whole old row, its TOASTed
    // values inlined).
    let out = cli(&["log", "read", "--from-seq", "1"], &config).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut unchanged = 0;
    for change in json_lines(&out.stdout) {
        let leaves_bio = change["unchanged"]
            .as_array()
            .is_some_and(|u| u.iter().any(|c| c == "bio"));
        if change["op"] != "update" || !leaves_bio {
            continue;
        }
        unchanged += 1;
        let old_has_bio = change["old"].get("bio").is_some_and(|b| b.is_string());
        assert_eq!(
            old_has_bio,
            identity == "FULL",
            "{identity}: {}",
            change["old"]
        );
    }
    assert!(unchanged > 30, "{unchanged} updates left bio unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_entering_a_destination_keep_unchanged_toast_values_replica_identity_default() {
    rows_entering_a_destination_keep_unchanged_toast_values("DEFAULT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_entering_a_destination_keep_unchanged_toast_values_replica_identity_full() {
    rows_entering_a_destination_keep_unchanged_toast_values("FULL").await;
}
