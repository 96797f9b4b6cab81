//! Connection strings as libpq takes them, against a real private server: the `key=value`
//! form, the `PG*` environment variables alone, the password file; and the errors `check`
//! and `run` print when a connection is refused, which must say the server's reason (never a
//! bare "db error"), name the connection, and never show the password.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// The password in `key=value` quoting (`'…'`, `\` before `'` and `\`).
fn quoted(pw: &str) -> String {
    format!("'{}'", pw.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A `key=value` string for `user` on `db` over TCP, without TLS, followed by `extra`.
fn kv(db: &str, user: &str, extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={} dbname={db} user={user} sslmode=disable {extra}",
        server().port()
    )
}

/// A configuration with `source` as the source's connection string and `rest` appended.
fn write_config(dir: &Path, source: &str, rest: &str) -> PathBuf {
    let path = dir.join("pgfanout.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = {}\nslot = \"s_{}\"\n[log]\ndir = {}\n{rest}",
            toml_str(source),
            dir.file_name()
                .unwrap()
                .to_string_lossy()
                .replace(['.', '-'], "_")
                .to_lowercase(),
            toml_str(&dir.join("log").display().to_string()),
        ),
    )
    .unwrap();
    path
}

/// `pgfanout ARGS --config CONFIG` with `env` added and every `PG*` variable of the test's
/// own environment removed; its stdout and stderr together.
async fn pgfanout(args: &[&str], config: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = base_command(config, env);
    cmd.args(args).arg("--config").arg(config);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn base_command(_config: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgfanout"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    cmd
}

/// `pgfanout run` until its output has a line containing `needle` (without one: until it
/// exits), or [`WAIT`] passes; everything it printed up to then.
async fn run_until(config: &Path, env: &[(&str, &str)], needle: Option<&str>) -> String {
    let mut cmd = base_command(config, env);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let needle = needle.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut child = Spawned(cmd.spawn().unwrap());
        let stderr = child.0.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        let mut out = String::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    out.push_str(&line);
                    out.push('\n');
                    if needle.as_ref().is_some_and(|n| line.contains(n)) {
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        out
    })
    .await
    .unwrap()
}

fn assert_says(what: &str, out: &str, parts: &[&str]) {
    eprintln!("--- {what}:\n{out}");
    for part in parts {
        assert!(out.contains(part), "{what}: no {part:?} in:\n{out}");
    }
    assert!(
        !out.contains(PASSWORD),
        "{what}: the password is shown:\n{out}"
    );
    assert!(
        !out.lines().any(|l| l.trim_end().ends_with("db error")),
        "{what}: a bare \"db error\":\n{out}"
    );
}

#[cfg(unix)]
fn private_file(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn key_value_string_connects_source_and_state() {
    let db = fresh_db("kv").await;
    let dir = tempfile::tempdir().unwrap();
    let source = kv(&db, SCRAM_USER, &format!("password={}", quoted(PASSWORD)));
    let config = write_config(dir.path(), &source, "");
    let (_, out) = pgfanout(&["check"], &config, &[]).await;
    assert_says("key=value", &out, &["ok      source", "all checks passed"]);
}

#[tokio::test]
async fn pg_environment_variables_alone() {
    let db = fresh_db("env").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let port = server().port().to_string();
    let env = [
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", port.as_str()),
        ("PGUSER", SCRAM_USER),
        ("PGPASSWORD", PASSWORD),
        ("PGDATABASE", db.as_str()),
        ("PGSSLMODE", "disable"),
        ("PGAPPNAME", "from_env"),
    ];
    let (_, out) = pgfanout(&["check"], &config, &env).await;
    assert_says(
        "PG* only",
        &out,
        &[
            "ok      source",
            "all checks passed",
            &format!("127.0.0.1:{port}"),
        ],
    );

    // The string wins over the environment.
    let config = write_config(dir.path(), &format!("dbname={db}_missing"), "");
    let (ok, out) = pgfanout(&["check"], &config, &env).await;
    assert!(!ok);
    assert_says(
        "string over env",
        &out,
        &[
            &format!("database \"{db}_missing\" does not exist"),
            "3D000",
        ],
    );
}

#[cfg(unix)]
#[tokio::test]
async fn password_file_from_home_or_pgpassfile() {
    let db = fresh_db("pgpass").await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let port = server().port();
    // The password has no ':' or '\': written as is.
    let line = format!("# pgfanout test\n127.0.0.1:{port}:{db}:{SCRAM_USER}:{PASSWORD}\n");
    private_file(&home.join(".pgpass"), &line, 0o600);
    let config = write_config(dir.path(), &kv(&db, SCRAM_USER, ""), "");
    let home_env = [("HOME", home.to_str().unwrap())];
    let (_, out) = pgfanout(&["check"], &config, &home_env).await;
    assert_says(
        "~/.pgpass",
        &out,
        &[
            "ok      source",
            "all checks passed",
            "warning encryption: source: a password is configured",
        ],
    );

    let elsewhere = dir.path().join("passwords");
    private_file(&elsewhere, &line, 0o600);
    let (_, out) = pgfanout(
        &["check"],
        &config,
        &[
            ("HOME", "/nonexistent"),
            ("PGPASSFILE", elsewhere.to_str().unwrap()),
        ],
    )
    .await;
    assert_says("PGPASSFILE", &out, &["ok      source", "all checks passed"]);

    // Readable by others: ignored with a warning, as libpq does; then no password at all.
    private_file(&home.join(".pgpass"), &line, 0o644);
    let (ok, out) = pgfanout(&["check"], &config, &home_env).await;
    assert!(!ok, "{out}");
    assert_says(
        "group-readable .pgpass",
        &out,
        &[
            "WARN",
            "group or world access",
            ".pgpass",
            "PROBLEM source: pgfanout refused to authenticate to 127.0.0.1",
            "PROBLEM state database: could not connect to 127.0.0.1",
            "asked for SCRAM-SHA-256, but no password was given",
            "HINT: add a line for this server to ~/.pgpass",
        ],
    );
}

#[tokio::test]
async fn wrong_source_password_missing_database_and_refused_connection() {
    let db = fresh_db("refused").await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = "not-the-password";
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (what, source, says) in [
        (
            "wrong password",
            kv(&db, SCRAM_USER, &format!("password={wrong}")),
            vec![
                format!("password authentication failed for user \"{SCRAM_USER}\""),
                "28P01".to_owned(),
            ],
        ),
        (
            "missing database",
            kv(
                &format!("{db}_nope"),
                SCRAM_USER,
                &format!("password={}", quoted(PASSWORD)),
            ),
            vec![
                format!("database \"{db}_nope\" does not exist"),
                "3D000".to_owned(),
            ],
        ),
        (
            "refused",
            format!("postgres://{SCRAM_USER}:{wrong}@127.0.0.1:{closed}/{db}?sslmode=disable"),
            vec![
                "onnection refused".to_owned(),
                format!("127.0.0.1:{closed}"),
            ],
        ),
    ] {
        let config = write_config(dir.path(), &source, "");
        let mut says: Vec<&str> = says.iter().map(String::as_str).collect();
        let (ok, out) = pgfanout(&["check"], &config, &[]).await;
        assert!(!ok, "{what}: check passed:\n{out}");
        says.push("source.url");
        assert_says(&format!("check, {what}"), &out, &says);
        assert!(!out.contains(wrong), "{what}: {out}");

        // The refused connection is retried (transient): read until the reason shows.
        let out = run_until(&config, &[], Some(says[0])).await;
        assert_says(&format!("run, {what}"), &out, &says);
        assert!(!out.contains(wrong), "{what}: {out}");
    }
}

#[tokio::test]
async fn wrong_state_password() {
    let db = fresh_db("statepw").await;
    let dir = tempfile::tempdir().unwrap();
    let state = kv(&db, SCRAM_USER, "password=wrong-state-pw");
    let config = write_config(
        dir.path(),
        &server().socket_url(&db),
        &format!("[state]\nurl = {}\n", toml_str(&state)),
    );
    let says = [
        &format!("password authentication failed for user \"{SCRAM_USER}\"") as &str,
        "28P01",
        "state.url",
    ];
    let (ok, out) = pgfanout(&["check"], &config, &[]).await;
    assert!(!ok, "{out}");
    assert_says("check", &out, &says);
    assert!(!out.contains("wrong-state-pw"), "{out}");
    let out = run_until(&config, &[], None).await;
    assert_says("run", &out, &says);
    assert!(!out.contains("wrong-state-pw"), "{out}");
}

#[tokio::test]
async fn wrong_destination_password() {
    let db = fresh_db("destpw").await;
    let target = fresh_db("destpw_target").await;
    sql(&db)
        .await
        .batch_execute(
            "CREATE TABLE tenancy (id text PRIMARY KEY);
             CREATE TABLE items (tenancy_id text, id int, name text, PRIMARY KEY (tenancy_id, id));
             INSERT INTO tenancy VALUES ('t1');",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = kv(&target, SCRAM_USER, "password=wrong-dest-pw");
    let config = write_config(
        dir.path(),
        &server().socket_url(&db),
        &format!(
            r#"
[snapshot]
mode = "never"
[tenants]
query = "SELECT id AS tenant FROM public.tenancy"
[[mappings]]
name = "items"
source = "public.items"
tenant_key = "tenancy_id"
target = "items"
key = ["id"]
[mappings.columns]
id = "id"
name = "name"
[[destinations]]
name = "tenant_one"
kind = "postgres"
url = {}
tenants = ["t1"]
mappings = ["items"]
"#,
            toml_str(&dest)
        ),
    );
    let says = [
        &format!("password authentication failed for user \"{SCRAM_USER}\"") as &str,
        "28P01",
        "tenant_one",
    ];
    let (ok, out) = pgfanout(&["check"], &config, &[]).await;
    assert!(!ok, "{out}");
    assert_says("check", &out, &says);
    assert!(!out.contains("wrong-dest-pw"), "{out}");
    let out = run_until(&config, &[], Some("28P01")).await;
    assert_says("run", &out, &says);
    assert!(!out.contains("wrong-dest-pw"), "{out}");
}

/// Several hosts: tried in order, settling on the first that accepts writes. The "standby" is
/// a second private server whose sessions are read-only (`default_transaction_read_only`),
/// which is what `target_session_attrs=read-write` tests for, as libpq.
#[tokio::test]
async fn several_hosts_settle_on_the_first_that_accepts_writes() {
    use pgfanout_testkit::localpg::{LocalPostgres, Options};
    let db = fresh_db("multi").await;
    let read_only = tokio::task::spawn_blocking(|| {
        LocalPostgres::start(&Options {
            conf: vec!["wal_level = logical".into()],
            ..Options::default()
        })
        .expect("start a second private PostgreSQL")
    })
    .await
    .unwrap();
    let client = read_only.sql("postgres").await.unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    for sql in [
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "SELECT pg_reload_conf()",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ro, rw) = (read_only.port(), server().port());
    let dir = tempfile::tempdir().unwrap();

    // Refused, read-only, then the writable one; the state database follows the source.
    let hosts = format!(
        "host=127.0.0.1,127.0.0.1,127.0.0.1 port={closed},{ro},{rw} dbname={db} user=postgres sslmode=disable"
    );
    let config = write_config(
        dir.path(),
        &format!("{hosts} target_session_attrs=read-write"),
        "",
    );
    let (ok, out) = pgfanout(&["check"], &config, &[]).await;
    assert!(ok, "{out}");
    assert_says("read-write", &out, &["ok      source", "all checks passed"]);
    // The state schema lands on the writable server.
    let (ok, out) = pgfanout(&["migrate"], &config, &[]).await;
    assert!(ok, "{out}");
    let schema = "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgfanout'";
    let on = |c: tokio_postgres::Row| c.get::<_, i64>(0);
    assert_eq!(on(sql(&db).await.query_one(schema, &[]).await.unwrap()), 1);
    let ro_db = read_only.sql(&db).await.unwrap();
    assert_eq!(on(ro_db.query_one(schema, &[]).await.unwrap()), 0);

    // As a URL, without the writable host: each host's reason, in order.
    let url = format!(
        "postgres://postgres@127.0.0.1:{closed},127.0.0.1:{ro}/{db}?sslmode=disable&target_session_attrs=read-write"
    );
    let config = write_config(dir.path(), &url, "");
    let (ok, out) = pgfanout(&["check"], &config, &[]).await;
    assert!(!ok, "{out}");
    assert_says(
        "no writable host",
        &out,
        &[
            "could not connect to any of the 2 hosts",
            "onnection refused",
            &format!("127.0.0.1:{ro} (database {db}, user postgres; source.url) is not what target_session_attrs=read-write asks for"),
        ],
    );

    // Several hosts without read-write: refused before connecting, saying what to add.
    let config = write_config(dir.path(), &hosts, "");
    let (ok, out) = pgfanout(&["check"], &config, &[]).await;
    assert!(!ok, "{out}");
    assert_says(
        "any",
        &out,
        &["source.url", "3 hosts", "target_session_attrs=read-write"],
    );
}
