//! What an operator asks pgfanout, against real servers: `check` finds what `run` would trip
//! on (and passes once it is fixed), `status` tells the truth with the daemon up and down,
//! and `replay` refuses what would replay nothing or skip changes.

mod support;

use std::path::{Path, PathBuf};

use support::*;

const TENANT_A: &str = "00000000-0000-0000-0000-00000000000a";
const TENANT_B: &str = "00000000-0000-0000-0000-00000000000b";
/// No tenant has this id.
const NO_TENANT: &str = "00000000-0000-0000-0000-0000000000ff";

/// `project_user`'s primary key leaves out the tenant key: its replica identity (DEFAULT)
/// does not carry the tenant of a deleted row.
const SOURCE_SCHEMA: &str = "
    CREATE TABLE tenancy (id uuid PRIMARY KEY, project_id text NOT NULL);
    CREATE TABLE project_user (
        tenancy_id uuid NOT NULL,
        id int PRIMARY KEY,
        email text
    );";

const MAPPING: &str = r#"
[tenants]
query = "SELECT id AS tenant, project_id FROM public.tenancy"

[[mappings]]
name = "users"
source = "public.project_user"
tenant_key = "tenancy_id"
target = "users"
key = ["id"]
[mappings.columns]
id = "id"
project_id = "tenant.project_id"
email = "lower(email)"
"#;

/// `[source]` … `[state]` for `db`; `source_extra` goes into `[source]`, `rest` at the end.
fn write_config(dir: &Path, db: &str, source_extra: &str, rest: &str) -> PathBuf {
    let path = dir.join("pgfanout.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = {}\nslot = \"s_{db}\"\npublication = \"pub_{db}\"\n\
             status_interval = \"100ms\"\n{source_extra}\n\
             [log]\ndir = {}\nsync_interval = \"20ms\"\nsegment_mb = 1\n\
             [state]\ncheckpoint_interval = \"200ms\"\n\
             [snapshot]\nmode = \"never\"\nauto_resync = false\n{MAPPING}{rest}",
            toml_str(&url_on(server(), db)),
            toml_str(&dir.join("log").display().to_string()),
        ),
    )
    .unwrap();
    path
}

fn destination(name: &str, db: &str, tenants: &[&str], create_tables: bool) -> String {
    let list: Vec<String> = tenants.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "\n[[destinations]]\nname = \"{name}\"\nkind = \"postgres\"\nurl = {}\n\
         tenants = [{}]\nmappings = [\"users\"]\ncreate_tables = {create_tables}\n\
         flush_interval = \"50ms\"\n",
        toml_str(&url_on(server(), db)),
        list.join(", ")
    )
}

async fn source_db(prefix: &str) -> (String, tokio_postgres::Client) {
    let db = fresh_db(prefix).await;
    let source = sql(&db).await;
    source.batch_execute(SOURCE_SCHEMA).await.unwrap();
    source
        .batch_execute(&format!(
            "INSERT INTO tenancy VALUES ('{TENANT_A}', 'proj-a'), ('{TENANT_B}', 'proj-b')"
        ))
        .await
        .unwrap();
    (db, source)
}

/// `pgfanout check`: its report, and whether it passed.
async fn check(config: &Path) -> (bool, String) {
    let out = cli(&["check"], config).await;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// The report's PROBLEM lines (with the lines that continue them).
fn problems(report: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in report.lines() {
        if line.starts_with("PROBLEM") {
            inside = true;
        } else if !line.starts_with(' ') && !line.starts_with("HINT") {
            inside = false;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn assert_problems(report: &str, expected: &[&str]) {
    let found = problems(report);
    for e in expected {
        assert!(
            found.contains(e),
            "expected a problem containing {e:?}; report:\n{report}"
        );
    }
}

/// Each thing `check` used to pass that `run` trips on: a replica identity without the
/// tenant key, a publication (not managed) that lacks a mapped table, a tenant id that
/// matches no tenant, a missing and then a mismatched PostgreSQL target table. Each is
/// reported with what to do, and `check` passes once all are fixed — having changed nothing
/// in the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_what_run_would_trip_on_and_passes_once_fixed() {
    let (db, source) = source_db("chk").await;
    let target_db = fresh_db("chk_target").await;
    let target = sql(&target_db).await;
    let dir = tempfile::tempdir().unwrap();
    source
        .batch_execute(&format!("CREATE PUBLICATION pub_{db} FOR TABLE tenancy"))
        .await
        .unwrap();
    create_slot(&source, &format!("s_{db}")).await;
    let source_extra =
        "tables = [\"public.tenancy\", \"public.project_user\"]\nmanage = false".to_owned();
    let config = write_config(
        dir.path(),
        &db,
        &source_extra,
        &destination("alpha", &target_db, &[TENANT_A, NO_TENANT], false),
    );

    // 1. The replica identity and the publication.
    let (ok, report) = check(&config).await;
    assert!(!ok, "{report}");
    assert_problems(
        &report,
        &[
            "tenant key column tenancy_id is not part of the replica identity of public.project_user",
            "ALTER TABLE \"public\".\"project_user\" REPLICA IDENTITY FULL",
            &format!("publication pub_{db} does not publish public.project_user"),
            &format!("ALTER PUBLICATION \"pub_{db}\" ADD TABLE \"public\".\"project_user\""),
        ],
    );
    source
        .batch_execute(&format!(
            "ALTER TABLE project_user REPLICA IDENTITY FULL;
             ALTER PUBLICATION pub_{db} ADD TABLE project_user"
        ))
        .await
        .unwrap();

    // 2. With the mappings compiling: the unknown tenant id and the missing target table.
    let (ok, report) = check(&config).await;
    assert!(!ok, "{report}");
    assert_problems(
        &report,
        &[
            &format!("destination alpha: tenant id(s) \"{NO_TENANT}\" match no tenant"),
            "table \"public\".\"users\" does not exist; create it or set create_tables = true",
        ],
    );
    assert!(
        !problems(&report).contains("replica identity")
            && !problems(&report).contains("publication"),
        "fixed problems are still reported:\n{report}"
    );
    let config = write_config(
        dir.path(),
        &db,
        &source_extra,
        &destination("alpha", &target_db, &[TENANT_A], false),
    );

    // 3. A target table with a column of the wrong type, one missing, no version column; a
    //    watermark table the batch transaction cannot use.
    target
        .batch_execute(
            "CREATE TABLE users (id int, project_id text, email int);
             CREATE TABLE _pgfanout_watermarks (destination text, seq text)",
        )
        .await
        .unwrap();
    let (ok, report) = check(&config).await;
    assert!(!ok, "{report}");
    assert_problems(
        &report,
        &[
            "column \"public\".\"users\".\"email\" has type integer but the mapping writes text",
            "column \"public\".\"users\".\"_seq\" does not exist; add it (ALTER TABLE \"public\".\"users\" ADD COLUMN \"_seq\" bigint NOT NULL)",
            "column \"public\".\"_pgfanout_watermarks\".\"seq\" must be bigint",
            "table \"public\".\"_pgfanout_watermarks\" has no primary key or unique index on (destination)",
        ],
    );
    target
        .batch_execute("DROP TABLE _pgfanout_watermarks")
        .await
        .unwrap();
    assert!(!problems(&report).contains("tenant"), "{report}");

    // 4. Columns right, but no key the upsert can conflict on.
    target
        .batch_execute(
            "ALTER TABLE users ALTER COLUMN email TYPE text; ALTER TABLE users ADD COLUMN _seq bigint NOT NULL",
        )
        .await
        .unwrap();
    let (ok, report) = check(&config).await;
    assert!(!ok, "{report}");
    assert_problems(
        &report,
        &["table \"public\".\"users\" has no primary key or unique index on exactly (\"id\")"],
    );

    // 5. Fixed: check passes.
    target
        .batch_execute("ALTER TABLE users ADD PRIMARY KEY (id)")
        .await
        .unwrap();
    let (ok, report) = check(&config).await;
    assert!(ok, "{report}");
    assert!(
        report.contains("alpha: reachable; its tables match"),
        "{report}"
    );
    assert!(
        report.contains("every tenant id the destinations list is a known tenant"),
        "{report}"
    );

    // check is read-only: no watermark table appeared in the target.
    let watermarks: bool = target
        .query_one(
            "SELECT to_regclass('public._pgfanout_watermarks') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!watermarks, "check created the watermark table");

    // A publication that does not exist, not managed: a problem naming it.
    source
        .batch_execute(&format!("DROP PUBLICATION pub_{db}"))
        .await
        .unwrap();
    let (ok, report) = check(&config).await;
    assert!(!ok, "{report}");
    assert_problems(&report, &[&format!("pub_{db}")]);
    drop_slot(&source, &format!("s_{db}")).await;
}

/// Without `source.tables`, `run` leaves an existing publication alone whatever `manage`
/// says: a mapped table it lacks is a problem; a target table `run` would create is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_a_mapped_table_an_existing_publication_lacks() {
    let (db, source) = source_db("chk_pub").await;
    let target_db = fresh_db("chk_pub_target").await;
    let dir = tempfile::tempdir().unwrap();
    source
        .batch_execute(&format!(
            "ALTER TABLE project_user REPLICA IDENTITY FULL;
             CREATE PUBLICATION pub_{db} FOR TABLE tenancy"
        ))
        .await
        .unwrap();
    let config = write_config(
        dir.path(),
        &db,
        "manage = true",
        &destination("alpha", &target_db, &[TENANT_A], true),
    );
    let (ok, report) = check(&config).await;
    assert!(!ok, "{report}");
    assert_problems(
        &report,
        &[&format!(
            "publication pub_{db} does not publish the mapped table(s) public.project_user"
        )],
    );
    assert!(!problems(&report).contains("users"), "{report}");
    source
        .batch_execute(&format!(
            "ALTER PUBLICATION pub_{db} ADD TABLE project_user"
        ))
        .await
        .unwrap();
    let (ok, report) = check(&config).await;
    assert!(ok, "{report}");
}

/// `status` with the daemon running, stopped cleanly, and killed with its last report
/// stale (the issue's `starting, watermark 0, 13 behind`): it says whether a daemon runs,
/// and without one shows the watermark the destination itself stores, with per-tenant lag.
/// `replay` refuses a seq outside the log (naming the range) and a tenant no one has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_whether_a_daemon_runs_and_reads_watermarks_from_the_destinations() {
    let (db, source) = source_db("st").await;
    source
        .batch_execute("ALTER TABLE project_user REPLICA IDENTITY FULL")
        .await
        .unwrap();
    let target_db = fresh_db("st_target").await;
    let target = sql(&target_db).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &db,
        "tables = [\"public.tenancy\", \"public.project_user\"]",
        &destination("alpha", &target_db, &[TENANT_A], true),
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    // Four transactions of about 400 KB each: more than one 1 MiB segment.
    for batch in 0..4 {
        source
            .execute(
                "INSERT INTO project_user
                 SELECT $1::text::uuid, g, repeat(md5(g::text), 12) FROM generate_series($2::int, $2::int + 999) g",
                &[&TENANT_A, &(batch * 1000)],
            )
            .await
            .unwrap();
    }
    wait_for("the destination to apply all 4000 changes", || async {
        (own_watermark(&target).await >= 4000).then_some(())
    })
    .await;

    // Running: the daemon's heartbeat is fresh.
    let status = status_json(&config).await;
    assert_eq!(status["daemon"]["running"], true, "{status:#}");
    assert_eq!(
        status["daemon"]["pid"].as_u64(),
        Some(u64::from(daemon.0 .0.id())),
        "{status:#}"
    );
    let text = status_text(&config).await;
    assert!(text.starts_with("daemon: running (pid"), "{text}");

    // Stopped cleanly: no daemon, watermarks read from the destination.
    assert!(daemon.stop().success());
    let wm = own_watermark(&target).await;
    let status = status_json(&config).await;
    assert_eq!(status["daemon"]["running"], false, "{status:#}");
    assert!(status["daemon"]["stopped_at"].is_string(), "{status:#}");
    let alpha = &status["destinations"][0];
    assert_eq!(alpha["state"], "stopped", "{status:#}");
    assert_eq!(alpha["watermark"].as_u64(), Some(wm), "{status:#}");
    assert_eq!(alpha["watermark_source"], "destination", "{status:#}");
    let tenants = status["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 1, "{status:#}");
    assert_eq!(tenants[0]["tenant"], TENANT_A);
    assert_eq!(tenants[0]["watermark"].as_u64(), Some(wm));
    assert_eq!(tenants[0]["lag_changes"].as_u64(), Some(0));
    let text = status_text(&config).await;
    assert!(
        text.starts_with("daemon: no daemon running (stopped at"),
        "{text}"
    );

    // Killed, with a stale report saying `starting, watermark 0` and a heartbeat a minute
    // old (what a kill leaves once time passes): status reads the destination.
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    daemon.kill9();
    let state = sql(&db).await;
    state
        .batch_execute(
            "UPDATE pgfanout.daemon_heartbeats SET beat_at = now() - interval '1 minute';
             UPDATE pgfanout.destinations SET state = 'starting', watermark = 0,
                    updated_at = now() - interval '1 minute'",
        )
        .await
        .unwrap();
    let status = status_json(&config).await;
    assert_eq!(status["daemon"]["running"], false, "{status:#}");
    assert!(status["daemon"]["stopped_at"].is_null(), "{status:#}");
    assert!(
        status["daemon"]["last_heartbeat_age_seconds"].as_f64() >= Some(59.0),
        "{status:#}"
    );
    let alpha = &status["destinations"][0];
    assert_eq!(alpha["watermark"].as_u64(), Some(wm), "{status:#}");
    assert_eq!(alpha["state"], "stopped", "{status:#}");
    assert_eq!(
        alpha["lag_changes"].as_u64(),
        Some(status["log"]["last_seq"].as_u64().unwrap() - wm),
        "{status:#}"
    );
    let text = status_text(&config).await;
    // Shown with --nocapture: what an operator reads.
    eprintln!("{text}");
    assert!(
        text.starts_with("daemon: no daemon running (last heartbeat 6"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "destination alpha: stopped, watermark {wm}, 0 changes"
        )),
        "{text}"
    );

    // A destination behind the log: its lag counts from its own watermark, in changes and
    // in seconds (the commit of its last applied change, from the log).
    target
        .batch_execute("UPDATE public._pgfanout_watermarks SET seq = 2000")
        .await
        .unwrap();
    let status = status_json(&config).await;
    let alpha = &status["destinations"][0];
    assert_eq!(alpha["watermark"].as_u64(), Some(2000), "{status:#}");
    assert_eq!(alpha["lag_changes"].as_u64(), Some(wm - 2000), "{status:#}");
    assert!(
        alpha["lag_seconds"].as_f64().is_some_and(|s| s > 0.0),
        "{status:#}"
    );
    assert_eq!(
        status["tenants"][0]["lag_changes"].as_u64(),
        Some(wm - 2000)
    );

    // replay: past the end, before the oldest retained seq, an unknown tenant.
    let log_dir = dir.path().join("log");
    let summary = summary(&log_dir);
    let last = summary.last_seq;
    let first_segment = std::fs::read_dir(&log_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .min()
        .unwrap();
    std::fs::remove_file(&first_segment).unwrap();
    let oldest = support::summary(&log_dir).oldest_seq.unwrap();
    assert!(oldest > 1, "more than one segment: {summary:?}");
    for (args, expected) in [
        (
            vec!["--from-seq".to_owned(), (last + 10).to_string()],
            format!(
                "seq {} is beyond the change log's end: the log holds seq {oldest} to {last}",
                last + 10
            ),
        ),
        (
            vec!["--from-seq".to_owned(), "1".into()],
            format!("seq 1 is no longer in the change log: the log holds seq {oldest} to {last}"),
        ),
        (
            vec![
                "--from-seq".to_owned(),
                oldest.to_string(),
                "--tenant".into(),
                NO_TENANT.into(),
            ],
            format!("destination \"alpha\" does not serve tenant \"{NO_TENANT}\""),
        ),
    ] {
        let mut all = vec!["replay", "--destination", "alpha"];
        all.extend(args.iter().map(String::as_str));
        let out = cli(&all, &config).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&expected),
            "{all:?}: expected {expected:?} in: {err}"
        );
    }
    // A destination given every tenant: a tenant [tenants].query does not return is refused.
    let all_tenants = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("tenants = [\"{TENANT_A}\"]"), "tenants = \"*\"");
    let config_all = dir.path().join("all-tenants.toml");
    std::fs::write(&config_all, all_tenants).unwrap();
    let out = cli(
        &[
            "replay",
            "--destination",
            "alpha",
            "--from-seq",
            &oldest.to_string(),
            "--tenant",
            NO_TENANT,
        ],
        &config_all,
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "tenant \"{NO_TENANT}\" is not among the tenants [tenants].query returns"
            )),
        "{err}"
    );

    // In range: replays, and says how many.
    let out = cli(
        &[
            "replay",
            "--destination",
            "alpha",
            "--from-seq",
            &oldest.to_string(),
        ],
        &config,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop_slot(&source, &format!("s_{db}")).await;
}

async fn status_json(config: &Path) -> serde_json::Value {
    let out = cli(&["status", "--json"], config).await;
    assert!(
        out.status.success(),
        "pgfanout status --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn status_text(config: &Path) -> String {
    let out = cli(&["status"], config).await;
    assert!(
        out.status.success(),
        "pgfanout status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The watermark the destination stores for `alpha` (0 before it has one).
async fn own_watermark(target: &tokio_postgres::Client) -> u64 {
    target
        .query_opt(
            "SELECT seq FROM public._pgfanout_watermarks WHERE destination = 'alpha'",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map_or(0, |r| r.get::<_, i64>(0) as u64)
}

/// Without a daemon, `status` reads a ClickHouse destination's watermark from its own table
/// (none yet is 0, not an error), and says why it could not read an unreachable one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_watermarks_from_clickhouse_and_names_an_unreachable_destination() {
    let (db, _source) = source_db("st_ch").await;
    let ch = clickhouse();
    let ch_db = fresh_ch_db("st_ch");
    let dir = tempfile::tempdir().unwrap();
    let unreachable = "postgresql://nobody@127.0.0.1:1/nothing".to_owned();
    let config = write_config(
        dir.path(),
        &db,
        "",
        &format!(
            "\n[[destinations]]\nname = \"analytics\"\nkind = \"clickhouse\"\nurl = {}\n\
             database = {}\ntenants = [\"{TENANT_A}\"]\nmappings = [\"users\"]\n\
             \n[[destinations]]\nname = \"gone\"\nkind = \"postgres\"\nurl = {}\n\
             tenants = [\"{TENANT_B}\"]\nmappings = [\"users\"]\n",
            toml_str(&ch.url()),
            toml_str(&ch_db),
            toml_str(&unreachable),
        ),
    );
    let by_name = |status: &serde_json::Value, name: &str| {
        status["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no destination {name} in {status:#}"))
    };

    // Never run: no watermark table in ClickHouse is watermark 0, not an error.
    let status = status_json(&config).await;
    assert_eq!(status["daemon"]["running"], false, "{status:#}");
    assert!(status["daemon"]["last_heartbeat_age_seconds"].is_null());
    let analytics = by_name(&status, "analytics");
    assert_eq!(analytics["watermark"].as_u64(), Some(0), "{status:#}");
    assert!(analytics["destination_error"].is_null(), "{status:#}");
    let gone = by_name(&status, "gone");
    assert!(
        gone["destination_error"]
            .as_str()
            .is_some_and(|e| e.contains("127.0.0.1")),
        "{status:#}"
    );

    // A watermark stored in ClickHouse is what status shows.
    ch.query(&format!(
        "CREATE TABLE `{ch_db}`._pgfanout_watermarks (destination String, seq UInt64, lineage String) \
         ENGINE = MergeTree ORDER BY destination"
    ))
    .unwrap();
    ch.query(&format!(
        "INSERT INTO `{ch_db}`._pgfanout_watermarks VALUES ('analytics', 42, '')"
    ))
    .unwrap();
    let status = status_json(&config).await;
    let analytics = by_name(&status, "analytics");
    assert_eq!(analytics["watermark"].as_u64(), Some(42), "{status:#}");
    assert_eq!(analytics["watermark_source"], "destination", "{status:#}");
    let tenant_a = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == TENANT_A)
        .cloned()
        .unwrap_or_else(|| panic!("no tenant {TENANT_A} in {status:#}"));
    assert_eq!(tenant_a["destination"], "analytics");
    assert_eq!(tenant_a["watermark"].as_u64(), Some(42));
    let text = status_text(&config).await;
    assert!(
        text.contains("daemon: no daemon running (no heartbeat"),
        "{text}"
    );
    assert!(text.contains("cannot read its own watermark"), "{text}");
}

/// A destination role that may not write its target table, nor create the watermark table,
/// fails `check` with the GRANTs to run; it passes once they are granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_privileges_a_destination_role_lacks() {
    let (db, source) = source_db("chk_priv").await;
    source
        .batch_execute("ALTER TABLE project_user REPLICA IDENTITY FULL")
        .await
        .unwrap();
    let target_db = fresh_db("chk_priv_target").await;
    let target = sql(&target_db).await;
    target
        .batch_execute(
            "CREATE TABLE users (id int PRIMARY KEY, project_id text, email text, _seq bigint NOT NULL);
             REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = url_on(server(), &target_db).replace("postgres@", &format!("{SCRAM_USER}@"));
    let config = write_config(
        dir.path(),
        &db,
        "",
        &format!(
            "\n[[destinations]]\nname = \"alpha\"\nkind = \"postgres\"\nurl = {}\n\
             tenants = [\"{TENANT_A}\"]\nmappings = [\"users\"]\ncreate_tables = false\n",
            toml_str(&url)
        ),
    );
    let (ok, report) = check(&config).await;
    assert!(!ok, "{report}");
    assert_problems(
        &report,
        &[
            "this role lacks SELECT, INSERT, UPDATE, DELETE on table \"public\".\"users\"",
            "table \"public\".\"_pgfanout_watermarks\" does not exist and this role may not create it",
        ],
    );
    target
        .batch_execute(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON users TO {SCRAM_USER};
             GRANT CREATE ON SCHEMA public TO {SCRAM_USER}"
        ))
        .await
        .unwrap();
    let (ok, report) = check(&config).await;
    assert!(ok, "{report}");

    // With create_tables, a missing table is fine only where the role may create it.
    target
        .batch_execute(&format!(
            "DROP TABLE users; REVOKE CREATE ON SCHEMA public FROM {SCRAM_USER}"
        ))
        .await
        .unwrap();
    let creating = std::fs::read_to_string(&config)
        .unwrap()
        .replace("create_tables = false", "create_tables = true");
    std::fs::write(&config, creating).unwrap();
    let (ok, report) = check(&config).await;
    assert!(!ok, "{report}");
    assert_problems(
        &report,
        &["tables pgfanout would create in schema \"public\" cannot be created: this role has no CREATE on it"],
    );
    target
        .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {SCRAM_USER}"))
        .await
        .unwrap();
    let (ok, report) = check(&config).await;
    assert!(ok, "{report}");
}
