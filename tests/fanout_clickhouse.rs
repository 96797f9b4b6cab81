//! The ClickHouse destination end to end: `pgfanout run` with a Stack-Auth-shaped source
//! (tenancies; users, contact channels, teams and team members keyed by their tenancy) mapped
//! into one shared ClickHouse database, compared per tenant with the source projected through
//! the mappings — `SELECT … FINAL WHERE sync_is_deleted = 0` on one side, SQL on the other.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgfanout_testkit::localch::LocalClickHouse;
use support::*;

const TENANCIES: [(&str, &str, &str); 4] = [
    ("00000000-0000-0000-0000-00000000000a", "proj-a", "main"),
    ("00000000-0000-0000-0000-00000000000b", "proj-b", "main"),
    ("00000000-0000-0000-0000-00000000000c", "proj-b", "dev"),
    ("00000000-0000-0000-0000-00000000000d", "proj-d", "main"),
];

const SOURCE_SCHEMA: &str = "
    CREATE TABLE tenancy (id uuid PRIMARY KEY, project_id text NOT NULL, branch_id text NOT NULL);
    CREATE TABLE project_user (
        tenancy_id uuid NOT NULL,
        project_user_id uuid NOT NULL,
        display_name text,
        primary_email text,
        is_anonymous boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now(),
        profile_image_url text,
        server_metadata jsonb,
        PRIMARY KEY (tenancy_id, project_user_id)
    );
    CREATE TABLE contact_channel (
        tenancy_id uuid NOT NULL,
        project_user_id uuid NOT NULL,
        id uuid NOT NULL,
        type text NOT NULL,
        value text NOT NULL,
        is_primary boolean,
        is_verified boolean NOT NULL DEFAULT false,
        PRIMARY KEY (tenancy_id, project_user_id, id)
    );
    CREATE TABLE team (
        tenancy_id uuid NOT NULL,
        team_id uuid NOT NULL,
        display_name text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenancy_id, team_id)
    );
    CREATE TABLE team_member (
        tenancy_id uuid NOT NULL,
        project_user_id uuid NOT NULL,
        team_id uuid NOT NULL,
        display_name text,
        profile_image_url text,
        PRIMARY KEY (tenancy_id, project_user_id, team_id)
    );
    -- Unchanged TOAST values come from the old tuple here, from ClickHouse for project_user.
    ALTER TABLE team_member REPLICA IDENTITY FULL;";

const MAPPINGS: &str = r#"
[tenants]
query = "SELECT id AS tenant, project_id, branch_id FROM public.tenancy"
table = "public.tenancy"

[[mappings]]
name = "users"
source = "public.project_user"
tenant_key = "tenancy_id"
target = "users"
key = ["project_id", "branch_id", "id"]
[mappings.columns]
project_id = "tenant.project_id"
branch_id = "tenant.branch_id"
id = "project_user_id"
display_name = "display_name"
primary_email = "lower(primary_email)"
is_anonymous = "is_anonymous"
signed_up_at = "created_at"
profile_image_url = "profile_image_url"
server_metadata = "server_metadata"

[[mappings]]
name = "contact_channels"
source = "public.contact_channel"
tenant_key = "tenancy_id"
target = "contact_channels"
key = ["project_id", "branch_id", "user_id", "id"]
[mappings.columns]
project_id = "tenant.project_id"
branch_id = "tenant.branch_id"
user_id = "project_user_id"
id = "id"
type = "type"
value = "value"
is_primary = "is_primary"
is_verified = "is_verified"

[[mappings]]
name = "teams"
source = "public.team"
tenant_key = "tenancy_id"
target = "teams"
key = ["project_id", "branch_id", "id"]
[mappings.columns]
project_id = "tenant.project_id"
branch_id = "tenant.branch_id"
id = "team_id"
display_name = "display_name"
created_at = "created_at"

[[mappings]]
name = "team_member_profiles"
source = "public.team_member"
tenant_key = "tenancy_id"
target = "team_member_profiles"
key = ["project_id", "branch_id", "team_id", "user_id"]
[mappings.columns]
project_id = "tenant.project_id"
branch_id = "tenant.branch_id"
team_id = "team_id"
user_id = "project_user_id"
display_name = "display_name"
profile_image_url = "profile_image_url"
"#;

const SOURCE_TABLES: [&str; 5] = [
    "public.tenancy",
    "public.project_user",
    "public.contact_channel",
    "public.team",
    "public.team_member",
];

/// Per ClickHouse table: its live rows under FINAL as ClickHouse prints them, and the source
/// projection printing the same text (NULL as `\N`, booleans as 0/1, timestamps to the
/// second in UTC, large values by their md5). `{P}`/`{B}` select one tenant.
const TABLES: [(&str, &str, &str); 4] = [
    (
        "users",
        "project_id, branch_id, toString(id), display_name, primary_email, is_anonymous, \
         toString(signed_up_at), lower(hex(MD5(profile_image_url))), server_metadata",
        "SELECT t.project_id, t.branch_id, u.project_user_id::text, coalesce(u.display_name, '\\N'),
                coalesce(lower(u.primary_email), '\\N'), u.is_anonymous::int::text,
                to_char(u.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                coalesce(md5(u.profile_image_url), '\\N'), coalesce(u.server_metadata::text, '\\N')
         FROM project_user u JOIN tenancy t ON t.id = u.tenancy_id
         WHERE t.project_id = $1 AND t.branch_id = $2 ORDER BY 3",
    ),
    (
        "contact_channels",
        "project_id, branch_id, toString(user_id), toString(id), type, value, is_primary, is_verified",
        "SELECT t.project_id, t.branch_id, c.project_user_id::text, c.id::text, c.type, c.value,
                coalesce(c.is_primary::int::text, '\\N'), c.is_verified::int::text
         FROM contact_channel c JOIN tenancy t ON t.id = c.tenancy_id
         WHERE t.project_id = $1 AND t.branch_id = $2 ORDER BY 3, 4",
    ),
    (
        "teams",
        "project_id, branch_id, toString(id), display_name, toString(created_at)",
        "SELECT t.project_id, t.branch_id, m.team_id::text, m.display_name,
                to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
         FROM team m JOIN tenancy t ON t.id = m.tenancy_id
         WHERE t.project_id = $1 AND t.branch_id = $2 ORDER BY 3",
    ),
    (
        "team_member_profiles",
        "project_id, branch_id, toString(team_id), toString(user_id), display_name, \
         lower(hex(MD5(profile_image_url)))",
        "SELECT t.project_id, t.branch_id, m.team_id::text, m.project_user_id::text,
                coalesce(m.display_name, '\\N'), coalesce(md5(m.profile_image_url), '\\N')
         FROM team_member m JOIN tenancy t ON t.id = m.tenancy_id
         WHERE t.project_id = $1 AND t.branch_id = $2 ORDER BY 3, 4",
    ),
];

fn ch_destination(name: &str, ch: &LocalClickHouse, database: &str, views: Option<&str>) -> String {
    let views = views
        .map(|v| format!("views_database = {}\n", toml_str(v)))
        .unwrap_or_default();
    format!(
        "\n[[destinations]]\nname = \"{name}\"\nkind = \"clickhouse\"\nurl = {}\n\
         database = {}\ntenants = \"*\"\n\
         mappings = [\"users\", \"contact_channels\", \"teams\", \"team_member_profiles\"]\n\
         version_column = \"sync_sequence_id\"\ndeleted_column = \"sync_is_deleted\"\n\
         tenant_columns = [\"project_id\", \"branch_id\"]\nflush_interval = \"100ms\"\n{views}",
        toml_str(&ch.url()),
        toml_str(database),
    )
}

fn write_config(dir: &Path, db: &str, destinations: &str) -> PathBuf {
    let path = dir.join("pgfanout.toml");
    let tables: Vec<String> = SOURCE_TABLES.iter().map(|t| toml_str(t)).collect();
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = {}\nslot = \"s_{db}\"\ntables = [{}]\nstatus_interval = \"100ms\"\n\
             [log]\ndir = {}\nsync_interval = \"20ms\"\n\
             [state]\ncheckpoint_interval = \"200ms\"\n{MAPPINGS}{destinations}",
            toml_str(&url_on(server(), db)),
            tables.join(", "),
            toml_str(&dir.join("log").display().to_string()),
        ),
    )
    .unwrap();
    path
}

async fn source(prefix: &str) -> (String, tokio_postgres::Client) {
    let db = fresh_db(prefix).await;
    let c = sql(&db).await;
    c.batch_execute(SOURCE_SCHEMA).await.unwrap();
    for (id, project, branch) in TENANCIES {
        c.execute(
            "INSERT INTO tenancy VALUES ($1::text::uuid, $2, $3)",
            &[&id, &project, &branch],
        )
        .await
        .unwrap();
    }
    (db, c)
}

async fn source_text(
    source: &tokio_postgres::Client,
    sql: &str,
    project: &str,
    branch: &str,
) -> String {
    let rows = source.query(sql, &[&project, &branch]).await.unwrap();
    let text: String = rows
        .iter()
        .map(|r| {
            let cells: Vec<String> = (0..r.len()).map(|i| r.get::<_, String>(i)).collect();
            cells.join("\t") + "\n"
        })
        .collect();
    sorted(&text)
}

fn ch_query(ch: &LocalClickHouse, sql: &str) -> Option<String> {
    ch.query(sql).ok()
}

fn ch_text(
    ch: &LocalClickHouse,
    database: &str,
    table: &str,
    columns: &str,
    project: &str,
    branch: &str,
) -> Option<String> {
    ch_query(
        ch,
        &format!(
            "SELECT {columns} FROM `{database}`.`{table}` FINAL \
             WHERE sync_is_deleted = 0 AND project_id = '{project}' AND branch_id = '{branch}'"
        ),
    )
    .map(|t| sorted(&t))
}

/// Waits until every table equals the projection for every tenant; returns the live rows
/// per table.
async fn wait_equal(
    source: &tokio_postgres::Client,
    ch: &LocalClickHouse,
    database: &str,
) -> Vec<usize> {
    let deadline = Instant::now() + WAIT;
    'again: loop {
        let mut counts = vec![0; TABLES.len()];
        for (i, (table, columns, projection)) in TABLES.iter().enumerate() {
            for (_, project, branch) in TENANCIES {
                let want = source_text(source, projection, project, branch).await;
                let got = ch_text(ch, database, table, columns, project, branch);
                if got.as_deref() != Some(want.as_str()) {
                    assert!(
                        Instant::now() < deadline,
                        "timed out waiting for {table} of {project}/{branch} to equal the projection:\n\
                         want {} rows, got {:?} rows; first differing line: {:?}",
                        want.lines().count(),
                        got.as_ref().map(|g| g.lines().count()),
                        got.as_ref().and_then(|g| g.lines().zip(want.lines()).find(|(a, b)| a != b))
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'again;
                }
                counts[i] += want.lines().count();
            }
        }
        return counts;
    }
}

/// Under FINAL each key appears once: no change was applied twice as two rows.
fn assert_each_key_once(ch: &LocalClickHouse, database: &str) {
    for (table, key) in [
        ("users", "project_id, branch_id, id"),
        ("contact_channels", "project_id, branch_id, user_id, id"),
        ("teams", "project_id, branch_id, id"),
        (
            "team_member_profiles",
            "project_id, branch_id, team_id, user_id",
        ),
    ] {
        let r = ch
            .query(&format!(
                "SELECT count(), uniqExact({key}) FROM `{database}`.`{table}` FINAL"
            ))
            .unwrap();
        let (n, distinct) = r.trim().split_once('\t').unwrap();
        assert_eq!(n, distinct, "{table}: rows under FINAL vs distinct keys");
    }
}

/// A large value PostgreSQL keeps out of line (TOAST): random hex does not compress.
const BIG: &str = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 300))";

/// Users with contact channels, teams with members, then updates (some leaving the large
/// values unchanged), deletes, key changes and tenant moves.
async fn workload(source: &tokio_postgres::Client) {
    for (i, (tenancy, _, _)) in TENANCIES.iter().enumerate() {
        let n = 40 + 10 * i as i32;
        source
            .batch_execute(&format!(
                "INSERT INTO project_user (tenancy_id, project_user_id, display_name, primary_email,
                                           is_anonymous, profile_image_url, server_metadata)
                 SELECT '{tenancy}', md5('u' || {i} || '-' || g)::uuid, 'User ' || g, 'U' || g || '@Example.com',
                        g % 9 = 0, CASE WHEN g % 4 = 0 THEN {BIG} ELSE 'https://img/' || g END,
                        CASE WHEN g % 3 = 0 THEN jsonb_build_object('plan', 'pro', 'seats', g) END
                 FROM generate_series(1, {n}) g;
                 INSERT INTO contact_channel (tenancy_id, project_user_id, id, type, value, is_primary, is_verified)
                 SELECT '{tenancy}', md5('u' || {i} || '-' || g)::uuid, md5('c' || {i} || '-' || g || '-' || k)::uuid,
                        'email', 'c' || g || '.' || k || '@x.org', CASE WHEN k = 1 THEN true END, g % 2 = 0
                 FROM generate_series(1, {n}) g, generate_series(1, 2) k;
                 INSERT INTO team (tenancy_id, team_id, display_name)
                 SELECT '{tenancy}', md5('t' || {i} || '-' || g)::uuid, 'Team ' || g FROM generate_series(1, 5) g;
                 INSERT INTO team_member (tenancy_id, project_user_id, team_id, display_name, profile_image_url)
                 SELECT '{tenancy}', md5('u' || {i} || '-' || g)::uuid, md5('t' || {i} || '-' || (g % 5 + 1))::uuid,
                        'Member ' || g, {BIG}
                 FROM generate_series(1, {n}) g;"
            ))
            .await
            .unwrap();
    }
    let (a, b, c) = (TENANCIES[0].0, TENANCIES[1].0, TENANCIES[2].0);
    source
        .batch_execute(&format!(
            "-- unchanged TOAST: the large values are not touched (ClickHouse's row fills them)
             UPDATE project_user SET display_name = display_name || ' (edited)' WHERE display_name LIKE '%2';
             -- and with REPLICA IDENTITY FULL (the old tuple fills them)
             UPDATE team_member SET display_name = 'renamed' WHERE display_name LIKE '%3';
             UPDATE contact_channel SET is_verified = true, is_primary = NULL WHERE value LIKE 'c1%';
             DELETE FROM contact_channel WHERE value LIKE '%.2@x.org' AND value LIKE 'c2%';
             DELETE FROM project_user WHERE display_name = 'User 7';
             DELETE FROM team_member WHERE display_name = 'Member 8';
             -- a key change
             UPDATE team SET team_id = md5(team_id::text)::uuid, display_name = 'rekeyed' WHERE display_name = 'Team 2';
             -- tenant moves: to a tenancy of the same project, and of another project
             UPDATE project_user SET tenancy_id = '{c}' WHERE tenancy_id = '{b}' AND display_name LIKE 'User 1_';
             UPDATE project_user SET tenancy_id = '{b}', display_name = 'moved' WHERE tenancy_id = '{a}' AND display_name LIKE 'User 2_';
             UPDATE team SET display_name = display_name || '!' WHERE tenancy_id = '{a}';
             BEGIN;
             INSERT INTO project_user (tenancy_id, project_user_id, display_name)
                 SELECT '{c}', md5('bulk' || g)::uuid, 'bulk' FROM generate_series(1, 5000) g;
             UPDATE project_user SET display_name = 'bulk2' WHERE display_name = 'bulk' AND primary_email IS NULL
                 AND project_user_id < '80000000-0000-0000-0000-000000000000';
             COMMIT;"
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenant_equals_its_projection_under_final_and_in_the_views() {
    let ch = clickhouse();
    let (db, source) = source("chfan_src").await;
    let database = format!("{db}_internal");
    let views = format!("{db}_views");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &db,
        &ch_destination("analytics", ch, &database, Some(&views)),
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    workload(&source).await;
    let counts = wait_equal(&source, ch, &database).await;
    eprintln!("live rows per table: {counts:?}");
    assert!(counts.iter().all(|&n| n > 15), "{counts:?}");
    assert_each_key_once(ch, &database);
    // Deleted rows exist as versions but are not live.
    let deleted = ch
        .query(&format!(
            "SELECT count() FROM `{database}`.users FINAL WHERE sync_is_deleted = 1"
        ))
        .unwrap();
    assert!(deleted.trim().parse::<u32>().unwrap() > 0, "{deleted}");

    // The views: exactly the live rows, without the sync columns.
    for (table, columns, _) in TABLES {
        let cols = ch
            .query(&format!(
                "SELECT name FROM system.columns WHERE database = '{views}' AND table = '{table}'"
            ))
            .unwrap();
        assert!(!cols.contains("sync_"), "{table}: {cols}");
        let live = ch
            .query(&format!(
                "SELECT {columns} FROM `{database}`.`{table}` FINAL WHERE sync_is_deleted = 0"
            ))
            .unwrap();
        let viewed = ch
            .query(&format!("SELECT {columns} FROM `{views}`.`{table}`"))
            .unwrap();
        assert_eq!(sorted(&viewed), sorted(&live), "view {table}");
    }

    // A TRUNCATE hides every row of the table.
    source
        .batch_execute("TRUNCATE contact_channel")
        .await
        .unwrap();
    let counts = wait_equal(&source, ch, &database).await;
    assert_eq!(counts[1], 0);
    assert!(daemon.stop().success());

    // `check` reaches the destination; `replay` rebuilds a wiped table, watermark untouched.
    let out = cli(&["check"], &config).await;
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        report.contains("analytics: reachable (ClickHouse "),
        "{report}"
    );
    let watermark = |ch: &LocalClickHouse| {
        ch.query(&format!(
            "SELECT max(seq) FROM `{database}`._pgfanout_watermarks WHERE destination = 'analytics'"
        ))
        .unwrap()
    };
    let before = watermark(ch);
    ch.query(&format!("TRUNCATE TABLE `{database}`.users"))
        .unwrap();
    let out = cli(
        &["replay", "--destination", "analytics", "--from-seq", "1"],
        &config,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_equal(&source, ch, &database).await;
    assert_each_key_once(ch, &database);
    assert_eq!(watermark(ch), before);
    // A tenant id [tenants].query does not know is refused, not replayed as nothing.
    let out = cli(
        &[
            "replay",
            "--destination",
            "analytics",
            "--from-seq",
            "1",
            "--tenant",
            "00000000-0000-0000-0000-00000000dead",
        ],
        &config,
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not among the tenants [tenants].query returns"),
        "{err}"
    );
}

/// Rounds of user inserts, updates, deletes and tenant moves until `stop`.
async fn churn(db: String, worker: usize, stop: Arc<AtomicBool>) -> u32 {
    let c = sql(&db).await;
    let mut r = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let (t, _, _) = TENANCIES[(r as usize + worker) % 4];
        let (other, _, _) = TENANCIES[(r as usize + worker + 1) % 4];
        let tag = format!("w{worker}r{r}");
        c.batch_execute(&format!(
            "BEGIN;
             INSERT INTO project_user (tenancy_id, project_user_id, display_name, primary_email)
                 SELECT '{t}', md5('{tag}-' || g)::uuid, '{tag} ' || g, '{tag}@X.org' FROM generate_series(1, 10) g;
             INSERT INTO contact_channel (tenancy_id, project_user_id, id, type, value)
                 SELECT '{t}', md5('{tag}-' || g)::uuid, md5('{tag}-c' || g)::uuid, 'email', '{tag}.' || g FROM generate_series(1, 10) g;
             COMMIT;
             UPDATE project_user SET display_name = 'edited' WHERE project_user_id = md5('{tag}-1')::uuid;
             UPDATE project_user SET tenancy_id = '{other}' WHERE project_user_id = md5('{tag}-2')::uuid;
             DELETE FROM project_user WHERE project_user_id = md5('{tag}-3')::uuid;
             DELETE FROM contact_channel WHERE id = md5('{tag}-c4')::uuid;"
        ))
        .await
        .unwrap();
        r += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_inserts_loses_and_duplicates_nothing() {
    const KILLS: u32 = 10;
    let ch = clickhouse();
    let (db, source) = source("chfan_kill").await;
    let database = format!("{db}_internal");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &db,
        &ch_destination("analytics", ch, &database, None),
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(churn(db.clone(), w, stop.clone())))
        .collect();
    let daemon = kill_at_random_moments(daemon, &config, KILLS, 150).await;
    let rounds = stop_workload(&stop, writers).await;
    eprintln!("{KILLS} kills during {rounds} workload rounds");
    assert!(rounds >= 30, "the workload ran only {rounds} rounds");
    let counts = wait_equal(&source, ch, &database).await;
    assert!(counts[0] > 100, "{counts:?}");
    assert_each_key_once(ch, &database);
    // The watermark reaches the log's last seq.
    let log = dir.path().join("log");
    wait_for("the ClickHouse watermark to reach the log's end", || async {
        let last = log_last_seq(&log).await;
        let wm = ch
            .query(&format!(
                "SELECT max(seq) FROM `{database}`._pgfanout_watermarks WHERE destination = 'analytics'"
            ))
            .ok()?;
        (wm.trim() == last.to_string()).then_some(())
    })
    .await;
    assert!(daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_clickhouse_does_not_hold_back_postgres_destinations() {
    const OUTAGE: Duration = Duration::from_secs(30);
    const MAX_LAG: Duration = Duration::from_secs(2);
    // Its own server: the shared one serves the other tests meanwhile.
    let ch = tokio::task::spawn_blocking(|| LocalClickHouse::start().expect("start a ClickHouse"))
        .await
        .unwrap();
    let (db, source) = source("chfan_stall").await;
    let database = format!("{db}_internal");
    let pg_target = fresh_db("chfan_stall_pg").await;
    let dir = tempfile::tempdir().unwrap();
    let destinations = ch_destination("analytics", &ch, &database, None)
        + &format!(
            "\n[[destinations]]\nname = \"tenant_a\"\nkind = \"postgres\"\nurl = {}\n\
             tenants = [\"{}\"]\nmappings = [\"users\"]\nflush_interval = \"50ms\"\n",
            toml_str(&url_on(server(), &pg_target)),
            TENANCIES[0].0
        );
    let config = write_config(dir.path(), &db, &destinations);
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    workload(&source).await;
    wait_equal(&source, &ch, &database).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(churn(db.clone(), 0, stop.clone()));
    ch.pause().unwrap();
    let stopped = Instant::now();
    let target = sql(&pg_target).await;
    let mut lags = Vec::new();
    let mut seen_retrying = None;
    let mut marker = 0;
    while stopped.elapsed() < OUTAGE {
        marker += 1;
        let inserted = Instant::now();
        source
            .execute(
                "INSERT INTO project_user (tenancy_id, project_user_id, display_name)
                 VALUES ($1::text::uuid, md5('marker' || $2::int)::uuid, 'marker')",
                &[&TENANCIES[0].0, &marker],
            )
            .await
            .unwrap();
        loop {
            let found = target
                .query_opt(
                    "SELECT 1 FROM users WHERE id = md5('marker' || $1::int)::uuid",
                    &[&marker],
                )
                .await
                .unwrap()
                .is_some();
            if found {
                break;
            }
            assert!(inserted.elapsed() < WAIT, "marker {marker} never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lags.push(inserted.elapsed());
        if seen_retrying.is_none() && stopped.elapsed() > Duration::from_secs(3) {
            let status = destination_status(&config).await;
            let d = &status["analytics"];
            if d["state"] == "retrying" && d["last_error"].is_string() {
                seen_retrying = Some(d.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    ch.resume().unwrap();
    stop.store(true, Ordering::Relaxed);
    let rounds = load.await.unwrap();
    eprintln!(
        "ClickHouse outage: {} markers, lags {lags:?}; {rounds} load rounds",
        lags.len()
    );
    assert!(lags.len() >= 5, "only {} markers", lags.len());
    assert!(
        lags.iter().all(|l| *l < MAX_LAG),
        "the PostgreSQL destination fell behind during the ClickHouse outage: {lags:?}"
    );
    let during = seen_retrying.expect("status never showed the ClickHouse destination retrying");
    eprintln!("analytics during the outage: {during}");
    // ClickHouse catches up.
    let counts = wait_equal(&source, &ch, &database).await;
    assert!(counts[0] > 100, "{counts:?}");
    assert_each_key_once(&ch, &database);
    assert!(daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_value_stops_only_that_destination_and_credentials_stay_out_of_logs() {
    let ch = clickhouse();
    let (db, source) = source("chfan_reject").await;
    let database = format!("{db}_internal");
    let pg_target = fresh_db("chfan_reject_pg").await;
    let (user, password) = LocalClickHouse::PASSWORD_USER;
    let dir = tempfile::tempdir().unwrap();
    let destinations = ch_destination("analytics", ch, &database, None).replace(
        "kind = \"clickhouse\"\n",
        &format!(
            "kind = \"clickhouse\"\nuser = {}\npassword = \"${{CH_TEST_PASSWORD}}\"\n",
            toml_str(user)
        ),
    ) + &format!(
        "\n[[destinations]]\nname = \"tenant_a\"\nkind = \"postgres\"\nurl = {}\n\
         tenants = [\"{}\"]\nmappings = [\"users\"]\nflush_interval = \"50ms\"\n",
        toml_str(&url_on(server(), &pg_target)),
        TENANCIES[0].0
    );
    let config = write_config(dir.path(), &db, &destinations);
    let log = dir.path().join("daemon.log");
    std::env::set_var("CH_TEST_PASSWORD", password);
    let mut daemon = Daemon::start_logging(&config, "debug", &log);
    wait_streaming(&mut daemon, &source, &db).await;
    // ClickHouse's DateTime starts in 1970: this row cannot be written there.
    source
        .batch_execute(&format!(
            "INSERT INTO project_user (tenancy_id, project_user_id, display_name, created_at)
             VALUES ('{}', md5('old')::uuid, 'old', '1969-07-20 20:17:40+00')",
            TENANCIES[0].0
        ))
        .await
        .unwrap();
    let status = wait_for("the ClickHouse destination to fail", || async {
        let s = destination_status(&config).await;
        (s["analytics"]["state"] == "failed").then_some(s)
    })
    .await;
    let error = status["analytics"]["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    for part in ["users", "signed_up_at", "seq "] {
        assert!(error.contains(part), "{part:?} in {error}");
    }
    assert!(
        !error.contains("1969-07-20"),
        "the value is not in the error: {error}"
    );
    let hold = &status["analytics"]["hold"];
    assert_eq!(hold["kind"], "failed", "{hold}");
    assert_eq!(hold["column"], "signed_up_at", "{hold}");
    // The PostgreSQL destination goes on.
    source
        .batch_execute(&format!(
            "INSERT INTO project_user (tenancy_id, project_user_id, display_name) VALUES ('{}', md5('after')::uuid, 'after')",
            TENANCIES[0].0
        ))
        .await
        .unwrap();
    let target = sql(&pg_target).await;
    wait_for("the PostgreSQL destination to get the next row", || async {
        target
            .query_opt("SELECT 1 FROM users WHERE display_name = 'after'", &[])
            .await
            .unwrap()
            .map(|_| ())
    })
    .await;
    assert!(daemon.stop().success());
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(written.contains("destination stopped"), "{written}");
    assert!(
        !written.contains(password),
        "the ClickHouse password is in the log"
    );
    // The password goes over http:// here: said once, at start, naming the destination.
    assert_eq!(
        written
            .matches(
                "destination analytics: a password is configured, but the ClickHouse URL http://"
            )
            .count(),
        1,
        "{written}"
    );
}

/// Rows that enter a ClickHouse destination through an update leaving their large value alone
/// — a filter flip, a move from a tenant the destination does not serve, a flip back in after
/// the value changed while the row was out — carry that value, which the change does not
/// (REPLICA IDENTITY DEFAULT) and ClickHouse does not hold: it is read from the source
/// (invariant 25). With FULL the old row carries it.
async fn rows_entering_clickhouse_keep_unchanged_toast_values(identity: &str) {
    let ch = clickhouse();
    let prefix = format!("chtoast_{}", identity.to_lowercase());
    let (db, source) = source(&prefix).await;
    source
        .batch_execute(&format!(
            "ALTER TABLE project_user REPLICA IDENTITY {identity}"
        ))
        .await
        .unwrap();
    let database = format!("{db}_internal");
    let dir = tempfile::tempdir().unwrap();
    let (a, b, d) = (TENANCIES[0].0, TENANCIES[1].0, TENANCIES[3].0);
    let path = dir.path().join("pgfanout.toml");
    std::fs::write(
        &path,
        format!(
            r#"[source]
url = {}
slot = "s_{db}"
tables = ["public.tenancy", "public.project_user"]
status_interval = "100ms"
[log]
dir = {}
sync_interval = "20ms"
[state]
checkpoint_interval = "200ms"
[snapshot]
mode = "never"
auto_resync = false
[tenants]
query = "SELECT id AS tenant, project_id, branch_id FROM public.tenancy"
table = "public.tenancy"
[[mappings]]
name = "users"
source = "public.project_user"
tenant_key = "tenancy_id"
target = "users"
key = ["project_id", "branch_id", "id"]
filter = "is_anonymous = false"
[mappings.columns]
project_id = "tenant.project_id"
branch_id = "tenant.branch_id"
id = "project_user_id"
display_name = "display_name"
profile_image_url = "profile_image_url"
[[destinations]]
name = "analytics"
kind = "clickhouse"
url = {}
database = {}
tenants = ["{b}"]
mappings = ["users"]
tenant_columns = ["project_id", "branch_id"]
version_column = "sync_sequence_id"
deleted_column = "sync_is_deleted"
flush_interval = "100ms"
"#,
            toml_str(&url_on(server(), &db)),
            toml_str(&dir.path().join("log").display().to_string()),
            toml_str(&ch.url()),
            toml_str(&database),
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(&path);
    wait_streaming(&mut daemon, &source, &db).await;

    // Every row has a large value; a third are filtered out (anonymous).
    for (tenancy, first) in [(a, 1), (b, 1001), (d, 2001)] {
        source
            .execute(
                &format!(
                    "INSERT INTO project_user (tenancy_id, project_user_id, display_name, is_anonymous,
                                               profile_image_url)
                     SELECT $1::text::uuid, md5('u' || g)::uuid, 'User ' || g, g % 3 = 0, {BIG}
                     FROM generate_series($2::int, $2::int + 29) g"
                ),
                &[&tenancy, &first],
            )
            .await
            .unwrap();
    }
    let projection = "SELECT u.project_user_id::text, md5(u.profile_image_url)
                      FROM project_user u WHERE u.tenancy_id = $1::text::uuid AND NOT u.is_anonymous";
    let live = format!(
        "SELECT toString(id), lower(hex(MD5(profile_image_url))) FROM `{database}`.users FINAL \
         WHERE sync_is_deleted = 0"
    );
    let wait = |min: usize| {
        let (source, live) = (&source, &live);
        async move {
            let deadline = Instant::now() + WAIT;
            loop {
                let rows = source.query(projection, &[&b]).await.unwrap();
                let want: String = rows
                    .iter()
                    .map(|r| format!("{}\t{}\n", r.get::<_, String>(0), r.get::<_, String>(1)))
                    .collect();
                let got = ch_query(ch, live).map(|t| sorted(&t));
                if got.as_deref() == Some(sorted(&want).as_str()) && rows.len() >= min {
                    return rows.len();
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for ClickHouse to equal the projection: want {} rows, got {:?}; first differing line: {:?}",
                    rows.len(),
                    got.as_ref().map(|g| g.lines().count()),
                    got.as_ref().and_then(|g| g.lines().zip(sorted(&want).lines()).find(|(x, y)| x != y).map(|(x, y)| (x.to_owned(), y.to_owned())))
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // ClickHouse holds the inserted rows before the updates come.
    wait(20).await;

    source
        .batch_execute(&format!(
            "-- filter flips
             UPDATE project_user SET is_anonymous = false WHERE is_anonymous AND tenancy_id = '{b}'
                 AND display_name IN ('User 1003', 'User 1009', 'User 1015');
             -- moves from tenants the destination does not serve
             UPDATE project_user SET tenancy_id = '{b}' WHERE tenancy_id = '{a}' AND display_name < 'User 2';
             UPDATE project_user SET tenancy_id = '{b}' WHERE tenancy_id = '{d}' AND display_name < 'User 2010';
             -- out of the filter, the large value changed while out, back in unchanged
             UPDATE project_user SET is_anonymous = true, profile_image_url = {BIG}
                 WHERE display_name IN ('User 1001', 'User 1002', 'User 1004');
             UPDATE project_user SET is_anonymous = false
                 WHERE display_name IN ('User 1001', 'User 1002', 'User 1004');
             -- rows ClickHouse holds: its own copy is kept
             UPDATE project_user SET display_name = display_name || ' (edited)' WHERE display_name LIKE '%7';"
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    source
        .batch_execute(&format!(
            "UPDATE project_user SET is_anonymous = false WHERE is_anonymous AND tenancy_id = '{b}'"
        ))
        .await
        .unwrap();
    let n = wait(40).await;
    let missing = ch_query(
        ch,
        &format!(
            "SELECT count() FROM `{database}`.users FINAL \
             WHERE sync_is_deleted = 0 AND length(ifNull(profile_image_url, '')) < 9000"
        ),
    )
    .unwrap();
    assert_eq!(
        missing.trim(),
        "0",
        "rows without their large value ({n} rows)"
    );
    assert!(daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_entering_clickhouse_keep_unchanged_toast_values_replica_identity_default() {
    rows_entering_clickhouse_keep_unchanged_toast_values("DEFAULT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_entering_clickhouse_keep_unchanged_toast_values_replica_identity_full() {
    rows_entering_clickhouse_keep_unchanged_toast_values("FULL").await;
}
