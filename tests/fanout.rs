//! Fan-out end to end: `pgfanout run` with tenants, mappings and PostgreSQL destinations,
//! each target compared row by row with the source projected through its mapping.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::*;

const TENANT_A: &str = "00000000-0000-0000-0000-00000000000a";
const TENANT_B: &str = "00000000-0000-0000-0000-00000000000b";
const TENANT_C: &str = "00000000-0000-0000-0000-00000000000c";
/// No destination serves it.
const TENANT_D: &str = "00000000-0000-0000-0000-00000000000d";

/// A `pgfanout` process, killed when dropped.
struct Daemon(Spawned);

impl Daemon {
    fn start(config: &Path) -> Daemon {
        Daemon(Spawned(
            Command::new(env!("CARGO_BIN_EXE_pgfanout"))
                .arg("run")
                .arg("--config")
                .arg(config)
                .env(
                    "RUST_LOG",
                    std::env::var("PGFANOUT_TEST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        ))
    }

    fn stop(mut self) -> std::process::ExitStatus {
        self.0.signal("-TERM");
        self.0.wait().unwrap()
    }
}

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

/// The source projected through the `users` mapping for one tenant, as text rows.
const SOURCE_PROJECTION: &str = "
    SELECT pu.id::text, t.project_id, pu.display_name, lower(pu.email), pu.created_at::text,
           md5(pu.bio)
    FROM project_user pu LEFT JOIN tenancy t ON t.id = pu.tenancy_id
    WHERE pu.tenancy_id = $1::text::uuid AND NOT pu.is_anonymous
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
    let pg = server();
    let list: Vec<String> = tenants.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "\n[[destinations]]\nname = \"{name}\"\nkind = \"postgres\"\n\
         url = \"postgres://postgres@/{db}?host={}&port={}\"\ntenants = [{}]\n\
         mappings = [\"users\"]\nflush_interval = \"50ms\"\n",
        pg.socket_dir().display(),
        pg.port(),
        list.join(", ")
    )
}

fn write_config(dir: &Path, db: &str, destinations: &str) -> PathBuf {
    let pg = server();
    let path = dir.join("pgfanout.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = \"postgres://postgres@/{db}?host={}&port={}\"\nslot = \"s_{db}\"\n\
             tables = [\"public.tenancy\", \"public.project_user\"]\nstatus_interval = \"100ms\"\n\
             [log]\ndir = \"{}\"\nsync_interval = \"20ms\"\n\
             [state]\ncheckpoint_interval = \"200ms\"\n{}{destinations}",
            pg.socket_dir().display(),
            pg.port(),
            dir.join("log").display(),
            mapping_toml(),
        ),
    )
    .unwrap();
    path
}

type Rows = Vec<Vec<Option<String>>>;

fn text_rows(rows: &[tokio_postgres::Row]) -> Rows {
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

async fn source_rows(source: &tokio_postgres::Client, tenant: &str) -> Rows {
    text_rows(&source.query(SOURCE_PROJECTION, &[&tenant]).await.unwrap())
}

/// The target's rows; none before the destination first connected and created its table.
async fn target_rows(target: &tokio_postgres::Client) -> Rows {
    match target.query(TARGET_ROWS, &[]).await {
        Ok(rows) => text_rows(&rows),
        Err(e) if e.code().is_some_and(|c| c.code() == "42P01") => Vec::new(),
        Err(e) => panic!("reading the target: {e}"),
    }
}

/// Waits until every target holds exactly its tenant's projection; returns the row counts.
async fn wait_converged(source: &tokio_postgres::Client, targets: &[(&str, &str)]) -> Vec<usize> {
    let mut counts = Vec::new();
    for &(db, tenant) in targets {
        let target = sql(db).await;
        let n = wait_for(
            &format!("{db} to equal tenant {tenant}'s projection"),
            || async {
                let want = source_rows(source, tenant).await;
                let got = target_rows(&target).await;
                if want != got && std::env::var("PGFANOUT_TEST_DIFF").is_ok() {
                    let missing: Vec<_> =
                        want.iter().filter(|r| !got.contains(r)).take(3).collect();
                    let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).take(3).collect();
                    eprintln!(
                        "{db}: {} vs {} rows; missing {missing:?}; extra {extra:?}",
                        want.len(),
                        got.len()
                    );
                }
                (want == got).then_some(want.len())
            },
        )
        .await;
        counts.push(n);
    }
    counts
}

/// Waits until the daemon streams from its slot: changes from then on reach it.
async fn wait_streaming(source: &tokio_postgres::Client, db: &str) {
    let slot = format!("s_{db}");
    wait_for("the daemon to stream from its slot", || async {
        let row = source
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await
            .unwrap();
        row.map(|_| ())
    })
    .await;
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
                        CASE WHEN g % 7 = 0 THEN repeat(md5(g::text), 4000) ELSE 'short' END
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
    let db = fresh_db("fan_src").await;
    let source = sql(&db).await;
    source.batch_execute(SOURCE_SCHEMA).await.unwrap();
    seed(&source).await;
    let (a, b, c) = (
        fresh_db("fan_a").await,
        fresh_db("fan_b").await,
        fresh_db("fan_c").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let destinations = destination_toml("a", &a, &[TENANT_A])
        + &destination_toml("b", &b, &[TENANT_B])
        + &destination_toml("c", &c, &[TENANT_C]);
    let config = write_config(dir.path(), &db, &destinations);
    let daemon = Daemon::start(&config);
    wait_streaming(&source, &db).await;
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
