//! Issue 14, part 2: schema changes of the source reach the destinations. `pgfanout run`
//! streams one source table through `columns = "*"` and explicit mappings into PostgreSQL and
//! ClickHouse destinations while the test changes the table: ADD COLUMN under write load,
//! DROP COLUMN (kept, or dropped with `on_drop_column = "drop"`), a widening type change, one
//! that is refused, a column an explicit mapping reads going away; and `replay` across the
//! changes. Every comparison is of the target's rows with the source's, as text.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

fn write_config(dir: &Path, db: &str, rest: &str) -> PathBuf {
    let path = dir.join("pgfanout.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = {}\nslot = \"s_{db}\"\n\
             tables = [\"public.item\"]\nstatus_interval = \"100ms\"\n\
             [log]\ndir = {}\nsync_interval = \"20ms\"\n\
             [state]\ncheckpoint_interval = \"200ms\"\n\
             [snapshot]\nmode = \"never\"\nauto_resync = false\n{rest}",
            toml_str(&url_on(server(), db)),
            toml_str(&dir.join("log").display().to_string()),
        ),
    )
    .unwrap();
    path
}

fn mapping(name: &str, target: &str, body: &str) -> String {
    format!(
        "\n[[mappings]]\nname = \"{name}\"\nsource = \"public.item\"\ntenant_key = \"tenant\"\n\
         target = \"{target}\"\n{body}\n"
    )
}

fn pg_destination(name: &str, db: &str, mappings: &[&str]) -> String {
    let mappings: Vec<String> = mappings.iter().map(|m| toml_str(m)).collect();
    format!(
        "\n[[destinations]]\nname = \"{name}\"\nkind = \"postgres\"\nurl = {}\ntenants = \"*\"\n\
         mappings = [{}]\nflush_interval = \"50ms\"\n",
        toml_str(&url_on(server(), db)),
        mappings.join(", ")
    )
}

fn ch_destination(name: &str, database: &str, mappings: &[&str]) -> String {
    let mappings: Vec<String> = mappings.iter().map(|m| toml_str(m)).collect();
    format!(
        "\n[[destinations]]\nname = \"{name}\"\nkind = \"clickhouse\"\nurl = {}\n\
         database = {}\ntenants = \"*\"\nmappings = [{}]\nflush_interval = \"50ms\"\n",
        toml_str(&clickhouse().url()),
        toml_str(database),
        mappings.join(", ")
    )
}

/// Rows as sorted text lines, tab-separated, NULL as `\N` (ClickHouse's TabSeparated).
async fn pg_text(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let rows = match client.query(sql, &[]).await {
        Ok(rows) => rows,
        Err(e)
            if e.code()
                .is_some_and(|c| ["42P01", "42703"].contains(&c.code())) =>
        {
            return None
        }
        Err(e) => panic!("{sql}: {e}"),
    };
    let text: String = rows
        .iter()
        .map(|r| {
            let cells: Vec<String> = (0..r.len())
                .map(|i| {
                    r.get::<_, Option<String>>(i)
                        .unwrap_or_else(|| "\\N".into())
                })
                .collect();
            cells.join("\t") + "\n"
        })
        .collect();
    Some(sorted(&text))
}

fn ch_text(sql: &str) -> Option<String> {
    clickhouse().query(sql).ok().map(|t| sorted(&t))
}

/// Waits until `got` (re-read each time) equals the source's rows read with `source_sql`.
async fn wait_equal<F, Fut>(what: &str, source: &tokio_postgres::Client, source_sql: &str, got: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let want = pg_text(source, source_sql).await.unwrap();
        let have = got().await;
        if have.as_deref() == Some(want.as_str()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} to equal the source: want {} rows, got {:?} rows; first difference {:?}",
            want.lines().count(),
            have.as_ref().map(|h| h.lines().count()),
            have.as_ref()
                .and_then(|h| h.lines().zip(want.lines()).find(|(a, b)| a != b))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Upserts and deletes over 300 keys in 3 tenants until stopped; `with_b` also writes `b`.
fn workload(
    db: String,
    stop: Arc<AtomicBool>,
    offset: i32,
    with_b: bool,
) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let c = sql(&db).await;
        let mut rounds = 0u32;
        let mut i = offset;
        while !stop.load(Ordering::Relaxed) {
            let tenant = format!("t{}", i % 3);
            let id = i % 300;
            let stmt = if i % 11 == 0 {
                format!("DELETE FROM item WHERE tenant = '{tenant}' AND id = {id}")
            } else if with_b {
                format!(
                    "INSERT INTO item (tenant, id, a, b) VALUES ('{tenant}', {id}, {i}, 'b{i}') \
                     ON CONFLICT (tenant, id) DO UPDATE SET a = excluded.a, b = excluded.b"
                )
            } else {
                format!(
                    "INSERT INTO item (tenant, id, a) VALUES ('{tenant}', {id}, {i}) \
                     ON CONFLICT (tenant, id) DO UPDATE SET a = excluded.a"
                )
            };
            c.batch_execute(&stmt).await.unwrap();
            i += 7;
            rounds += 1;
        }
        rounds
    })
}

async fn pg_columns(client: &tokio_postgres::Client, table: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn ch_columns(database: &str, table: &str) -> Vec<(String, String)> {
    clickhouse()
        .query(&format!(
            "SELECT name, type FROM system.columns WHERE database = '{database}' AND table = '{table}'"
        ))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
}

fn has(columns: &[(String, String)], name: &str, ty: &str) -> bool {
    columns.iter().any(|(n, t)| n == name && t == ty)
}

async fn wait_failed(config: &Path, name: &str) -> String {
    let s = wait_for(&format!("destination {name} to fail"), || async {
        let s = destination_status(config).await;
        (s[name]["state"] == "failed").then_some(s)
    })
    .await;
    s[name]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

const SOURCE_ABC: &str = "SELECT tenant, id::text, a::text, b, c::text FROM item";
const PG_ABC: &str = "SELECT tenant, id::text, a::text, b, c::text FROM items";

/// ADD COLUMN while a workload writes reaches a PostgreSQL and a ClickHouse destination
/// through `columns = "*"` before the first change carrying the column (no value lost: the
/// targets equal the source at the end, new columns typed by the type mapping); the change log
/// holds each change with the columns it had, and `replay` of everything into emptied targets
/// applies each change with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_column_under_write_load_reaches_both_kinds_and_replays() {
    let db = fresh_db("schema_add_src").await;
    let source = sql(&db).await;
    source
        .batch_execute(
            "CREATE TABLE item (tenant text NOT NULL, id int NOT NULL, a int, PRIMARY KEY (tenant, id))",
        )
        .await
        .unwrap();
    let pg = fresh_db("schema_add_pg").await;
    let ch = fresh_ch_db("schema_add_ch");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &db,
        &(mapping("items", "items", "columns = \"*\"")
            + &pg_destination("pg", &pg, &["items"])
            // Parallel apply: every connection prepares its statements again after a change.
            + "apply_connections = 2\n"
            + &ch_destination("ch", &ch, &["items"])),
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;

    let stop = Arc::new(AtomicBool::new(false));
    let first = vec![workload(db.clone(), stop.clone(), 0, false)];
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Under load: the writer keeps writing `a` across both ALTERs.
    source
        .batch_execute("ALTER TABLE item ADD COLUMN b text")
        .await
        .unwrap();
    let second = vec![workload(db.clone(), stop.clone(), 1, true)];
    tokio::time::sleep(Duration::from_millis(300)).await;
    source
        .batch_execute("ALTER TABLE item ADD COLUMN c numeric(10, 2)")
        .await
        .unwrap();
    source
        .batch_execute("UPDATE item SET c = id + 0.25 WHERE id % 4 = 0")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rounds = stop_workload(&stop, first.into_iter().chain(second).collect()).await;
    assert!(rounds > 50, "the workload wrote only {rounds} rounds");
    source
        .batch_execute("UPDATE item SET c = -id - 0.5 WHERE id % 5 = 0")
        .await
        .unwrap();

    let target = sql(&pg).await;
    wait_equal("the PostgreSQL target", &source, SOURCE_ABC, || {
        pg_text(&target, PG_ABC)
    })
    .await;
    let ch_sql = format!(
        "SELECT tenant, toString(id), toString(a), b, toString(c) FROM `{ch}`.items FINAL WHERE _is_deleted = 0"
    );
    let source_ch = "SELECT tenant, id::text, a::text, b, coalesce(c::text, '\\N') FROM item";
    wait_equal("the ClickHouse target", &source, source_ch, || async {
        ch_text(&ch_sql)
    })
    .await;
    let cols = pg_columns(&target, "items").await;
    assert!(
        has(&cols, "b", "text") && has(&cols, "c", "numeric"),
        "{cols:?}"
    );
    let cols = ch_columns(&ch, "items");
    assert!(
        has(&cols, "b", "Nullable(String)") && has(&cols, "c", "Nullable(Decimal(10, 2))"),
        "{cols:?}"
    );
    assert!(daemon.stop().success());

    // The change log: every change with the columns it had when it was made.
    let changes = read_log(&dir.path().join("log"));
    let widths: Vec<usize> = changes
        .iter()
        .map(|c| c.change.relation.columns.len())
        .collect();
    let first_b = widths
        .iter()
        .position(|&w| w == 4)
        .expect("a change with b");
    let first_c = widths
        .iter()
        .position(|&w| w == 5)
        .expect("a change with c");
    assert!(
        widths[..first_b].iter().all(|&w| w == 3)
            && widths[first_b..first_c].iter().all(|&w| w == 4)
            && widths[first_c..].iter().all(|&w| w == 5)
            && first_b > 0,
        "relation widths along the log: {widths:?}"
    );

    // Replay of everything into emptied targets: the old changes with their columns.
    target.batch_execute("DELETE FROM items").await.unwrap();
    clickhouse()
        .query(&format!("TRUNCATE TABLE `{ch}`.items"))
        .unwrap();
    for destination in ["pg", "ch"] {
        let out = cli(
            &["replay", "--destination", destination, "--from-seq", "1"],
            &config,
        )
        .await;
        assert!(
            out.status.success(),
            "replay {destination}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        pg_text(&target, PG_ABC).await,
        pg_text(&source, SOURCE_ABC).await
    );
    assert_eq!(ch_text(&ch_sql), pg_text(&source, source_ch).await);

    // Changed while pgfanout was stopped: the next start brings both targets along before
    // writing (a new column, a widened one).
    source
        .batch_execute(
            "ALTER TABLE item ADD COLUMN d int; ALTER TABLE item ALTER COLUMN a TYPE bigint; \
             INSERT INTO item VALUES ('t0', 1000, 9000000000, 'new', 1.5, 4); \
             UPDATE item SET d = id WHERE id % 3 = 0;",
        )
        .await
        .unwrap();
    // `check` reports nothing the start aligns by itself (invariant 32).
    let out = cli(&["check"], &config).await;
    assert!(
        out.status.success(),
        "check after the source changed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    let source_d = "SELECT tenant, id::text, a::text, b, c::text, d::text FROM item";
    wait_equal(
        "the PostgreSQL target after a restart",
        &source,
        source_d,
        || {
            pg_text(
                &target,
                "SELECT tenant, id::text, a::text, b, c::text, d::text FROM items",
            )
        },
    )
    .await;
    let ch_d = format!(
        "SELECT tenant, toString(id), toString(a), b, toString(c), toString(d) FROM `{ch}`.items FINAL WHERE _is_deleted = 0"
    );
    let source_ch_d =
        "SELECT tenant, id::text, a::text, b, coalesce(c::text, '\\N'), coalesce(d::text, '\\N') FROM item";
    wait_equal(
        "the ClickHouse target after a restart",
        &source,
        source_ch_d,
        || async { ch_text(&ch_d) },
    )
    .await;
    assert!(has(&pg_columns(&target, "items").await, "a", "bigint"));
    assert!(has(&ch_columns(&ch, "items"), "a", "Nullable(Int64)"));
    assert!(daemon.stop().success());
}

/// DROP COLUMN: a `columns = "*"` mapping keeps the column (values written before stay, rows
/// written after have none), one with `on_drop_column = "drop"` drops it, on both kinds; an
/// explicit mapping that does not read it goes on, one that reads it stops only its
/// destination, naming mapping and column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_column_is_kept_or_dropped_and_stops_only_an_explicit_mapping_reading_it() {
    let db = fresh_db("schema_drop_src").await;
    let source = sql(&db).await;
    source
        .batch_execute(
            "CREATE TABLE item (tenant text NOT NULL, id int NOT NULL, a int, x text, \
             PRIMARY KEY (tenant, id))",
        )
        .await
        .unwrap();
    let (pg_all, pg_explicit, pg_x) = (
        fresh_db("schema_drop_all").await,
        fresh_db("schema_drop_explicit").await,
        fresh_db("schema_drop_x").await,
    );
    let ch = fresh_ch_db("schema_drop_ch");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &db,
        &(mapping("keep", "items_keep", "columns = \"*\"")
            + &mapping(
                "drop",
                "items_drop",
                "columns = \"*\"\non_drop_column = \"drop\"",
            )
            + &mapping(
                "explicit",
                "items",
                "[mappings.columns]\ntenant = \"tenant\"\nid = \"id\"\na = \"a\"",
            )
            + &mapping(
                "explicit_x",
                "items_x",
                "[mappings.columns]\ntenant = \"tenant\"\nid = \"id\"\nx = \"upper(x)\"",
            )
            + &pg_destination("all", &pg_all, &["keep", "drop"])
            + &ch_destination("ch", &ch, &["keep", "drop"])
            + &pg_destination("explicit", &pg_explicit, &["explicit"])
            + &pg_destination("x", &pg_x, &["explicit_x"])),
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    source
        .batch_execute(
            "INSERT INTO item SELECT 't' || (i % 2), i, i * 10, 'x' || i FROM generate_series(1, 20) i",
        )
        .await
        .unwrap();
    let all = sql(&pg_all).await;
    let with_x = "SELECT tenant, id::text, a::text, x FROM item";
    wait_equal("items_keep before the drop", &source, with_x, || {
        pg_text(&all, "SELECT tenant, id::text, a::text, x FROM items_keep")
    })
    .await;

    source
        .batch_execute(
            "ALTER TABLE item DROP COLUMN x; \
             UPDATE item SET a = a + 1 WHERE id <= 5; \
             INSERT INTO item VALUES ('t0', 100, 1000), ('t1', 101, 1010); \
             DELETE FROM item WHERE id = 20;",
        )
        .await
        .unwrap();

    // The explicit mapping reading x stops its destination alone.
    let error = wait_failed(&config, "x").await;
    for part in ["explicit_x", "x"] {
        assert!(error.contains(part), "{part:?} in {error}");
    }
    let explicit = sql(&pg_explicit).await;
    let abc = "SELECT tenant, id::text, a::text FROM item";
    wait_equal("the explicit mapping's target", &source, abc, || {
        pg_text(&explicit, "SELECT tenant, id::text, a::text FROM items")
    })
    .await;
    for table in ["items_keep", "items_drop"] {
        let pg_sql = format!("SELECT tenant, id::text, a::text FROM {table}");
        wait_equal(table, &source, abc, || pg_text(&all, &pg_sql)).await;
        let ch_sql = format!(
            "SELECT tenant, toString(id), toString(a) FROM `{ch}`.{table} FINAL WHERE _is_deleted = 0"
        );
        wait_equal(&format!("ClickHouse {table}"), &source, abc, || async {
            ch_text(&ch_sql)
        })
        .await;
    }
    // Kept: the column stays, nullable; what was written before the drop stays.
    let keep = pg_columns(&all, "items_keep").await;
    assert!(has(&keep, "x", "text"), "{keep:?}");
    let xs = pg_text(
        &all,
        "SELECT id::text, x FROM items_keep WHERE id IN (7, 100)",
    )
    .await
    .unwrap();
    assert_eq!(xs, "100\t\\N\n7\tx7\n");
    assert!(has(&ch_columns(&ch, "items_keep"), "x", "Nullable(String)"));
    // Dropped.
    let dropped = pg_columns(&all, "items_drop").await;
    assert!(!dropped.iter().any(|(n, _)| n == "x"), "{dropped:?}");
    let dropped = ch_columns(&ch, "items_drop");
    assert!(!dropped.iter().any(|(n, _)| n == "x"), "{dropped:?}");
    let s = destination_status(&config).await;
    for d in ["all", "ch", "explicit"] {
        assert_ne!(s[d]["state"], "failed", "{d}: {s:?}");
    }
    assert!(daemon.stop().success());

    // A restart with the mapping unfixed: `check` names it, `run` starts, holds that
    // destination `failed` again and streams on into the others.
    let out = cli(&["check"], &config).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success() && text.contains("explicit_x") && text.contains("\"x\""),
        "check: {text}"
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    source
        .batch_execute("INSERT INTO item VALUES ('t0', 200, 2000)")
        .await
        .unwrap();
    wait_equal(
        "the explicit mapping's target after a restart",
        &source,
        abc,
        || pg_text(&explicit, "SELECT tenant, id::text, a::text FROM items"),
    )
    .await;
    let error = wait_failed(&config, "x").await;
    for part in ["explicit_x", "\"x\""] {
        assert!(error.contains(part), "{part:?} in {error}");
    }
    assert!(daemon.stop().success());
}

/// `int` → `bigint` is applied to both kinds of target (PostgreSQL ALTER COLUMN TYPE,
/// ClickHouse MODIFY COLUMN) before the first value that needs it; `text` → `integer` is not a
/// widening and stops each destination writing it, naming table, column and both types, while
/// a destination whose mapping does not read the column goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_widening_is_applied_and_another_type_change_stops_only_its_destinations() {
    let db = fresh_db("schema_type_src").await;
    let source = sql(&db).await;
    source
        .batch_execute(
            "CREATE TABLE item (tenant text NOT NULL, id int NOT NULL, a int, b text, \
             PRIMARY KEY (tenant, id))",
        )
        .await
        .unwrap();
    let (pg_all, pg_explicit) = (
        fresh_db("schema_type_all").await,
        fresh_db("schema_type_explicit").await,
    );
    let ch = fresh_ch_db("schema_type_ch");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &db,
        &(mapping("all", "items", "columns = \"*\"")
            + &mapping(
                "explicit",
                "items",
                "[mappings.columns]\ntenant = \"tenant\"\nid = \"id\"\na = \"a\"",
            )
            + &pg_destination("pg", &pg_all, &["all"])
            + &ch_destination("ch", &ch, &["all"])
            + &pg_destination("explicit", &pg_explicit, &["explicit"])),
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    source
        .batch_execute(
            "INSERT INTO item SELECT 't' || (i % 2), i, i, 'b' || i FROM generate_series(1, 10) i",
        )
        .await
        .unwrap();
    let all = sql(&pg_all).await;
    let explicit = sql(&pg_explicit).await;
    let ab = "SELECT tenant, id::text, a::text, b FROM item";
    wait_equal("the PostgreSQL target", &source, ab, || {
        pg_text(&all, "SELECT tenant, id::text, a::text, b FROM items")
    })
    .await;

    source
        .batch_execute(
            "ALTER TABLE item ALTER COLUMN a TYPE bigint; \
             INSERT INTO item VALUES ('t0', 100, 5000000000, 'big');",
        )
        .await
        .unwrap();
    wait_equal(
        "the PostgreSQL target after int -> bigint",
        &source,
        ab,
        || pg_text(&all, "SELECT tenant, id::text, a::text, b FROM items"),
    )
    .await;
    let ch_sql = format!(
        "SELECT tenant, toString(id), toString(a), b FROM `{ch}`.items FINAL WHERE _is_deleted = 0"
    );
    wait_equal(
        "the ClickHouse target after int -> bigint",
        &source,
        ab,
        || async { ch_text(&ch_sql) },
    )
    .await;
    let a = "SELECT tenant, id::text, a::text FROM item";
    wait_equal(
        "the explicit target after int -> bigint",
        &source,
        a,
        || pg_text(&explicit, "SELECT tenant, id::text, a::text FROM items"),
    )
    .await;
    assert!(has(&pg_columns(&all, "items").await, "a", "bigint"));
    assert!(has(&pg_columns(&explicit, "items").await, "a", "bigint"));
    assert!(has(&ch_columns(&ch, "items"), "a", "Nullable(Int64)"));

    source
        .batch_execute(
            "ALTER TABLE item ALTER COLUMN b TYPE integer USING length(b); \
             INSERT INTO item VALUES ('t1', 101, 7, 3);",
        )
        .await
        .unwrap();
    for d in ["pg", "ch"] {
        let error = wait_failed(&config, d).await;
        for part in ["items", "column b", "text", "int4"] {
            assert!(error.contains(part), "{d}: {part:?} in {error}");
        }
    }
    wait_equal(
        "the explicit target after text -> integer",
        &source,
        a,
        || pg_text(&explicit, "SELECT tenant, id::text, a::text FROM items"),
    )
    .await;
    // Nothing of the refused change was applied.
    assert!(has(&pg_columns(&all, "items").await, "b", "text"));
    assert_eq!(
        pg_text(&all, "SELECT count(*)::text FROM items WHERE id = 101").await,
        Some("0\n".into())
    );
    assert!(daemon.stop().success());
}

/// Without DDL capture a rename is a drop and an add (README): the old column stays with the
/// values it had, the new one is added and filled by the changes that come after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_without_capture_is_a_drop_and_an_add() {
    let db = fresh_db("schema_rename_src").await;
    let source = sql(&db).await;
    source
        .batch_execute(
            "CREATE TABLE item (tenant text NOT NULL, id int NOT NULL, x text, PRIMARY KEY (tenant, id))",
        )
        .await
        .unwrap();
    let pg = fresh_db("schema_rename_pg").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &db,
        &(mapping("items", "items", "columns = \"*\"") + &pg_destination("pg", &pg, &["items"])),
    );
    let mut daemon = Daemon::start(&config);
    wait_streaming(&mut daemon, &source, &db).await;
    source
        .batch_execute("INSERT INTO item SELECT 't0', i, 'x' || i FROM generate_series(1, 5) i")
        .await
        .unwrap();
    let target = sql(&pg).await;
    wait_equal(
        "the target",
        &source,
        "SELECT tenant, id::text, x FROM item",
        || pg_text(&target, "SELECT tenant, id::text, x FROM items"),
    )
    .await;
    source
        .batch_execute(
            "ALTER TABLE item RENAME COLUMN x TO y; UPDATE item SET y = 'y' || id WHERE id <= 2;",
        )
        .await
        .unwrap();
    let got = "SELECT tenant, id::text, y FROM items";
    wait_equal(
        "the renamed column",
        &source,
        "SELECT tenant, id::text, CASE WHEN id <= 2 THEN y END FROM item",
        || pg_text(&target, got),
    )
    .await;
    // The old column keeps what it had (an update leaves it alone).
    assert_eq!(
        pg_text(&target, "SELECT id::text, x FROM items")
            .await
            .unwrap(),
        "1\tx1\n2\tx2\n3\tx3\n4\tx4\n5\tx5\n"
    );
    assert!(daemon.stop().success());
}
