//! The private ClickHouse server (`pgfanout_testkit::localch`) against the real binary.

mod support;

use std::path::Path;

use pgfanout_testkit::localch::{LocalChError, LocalClickHouse};

fn start() -> LocalClickHouse {
    LocalClickHouse::start().unwrap_or_else(|e| panic!("start the private ClickHouse: {e}"))
}

fn process_alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would have an empty command line.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

#[test]
fn starts_answers_survives_a_pause_and_cleans_up() {
    let ch = start();
    assert!(ch.url().starts_with("http://127.0.0.1:"));
    assert_eq!(ch.url(), format!("http://127.0.0.1:{}", ch.http_port()));
    assert_ne!(ch.http_port(), ch.tcp_port());

    let version = ch.query("SELECT version()").unwrap();
    let major: u32 = version.trim().split('.').next().unwrap().parse().unwrap();
    assert!(major >= 18, "version {version:?}");

    ch.query("CREATE DATABASE t").unwrap();
    ch.query("CREATE TABLE t.kv (id UInt64, v String) ENGINE = MergeTree() ORDER BY id")
        .unwrap();
    ch.query("INSERT INTO t.kv VALUES (1, 'one'), (2, 'two\\ttab')")
        .unwrap();
    assert_eq!(
        ch.query("SELECT id, v FROM t.kv ORDER BY id").unwrap(),
        "1\tone\n2\ttwo\\ttab\n"
    );

    // Errors carry the server's message.
    match ch.query("SELECT no_such_function()") {
        Err(LocalChError::Query { status, message }) => {
            assert_ne!(status, 200);
            assert!(message.contains("no_such_function"), "{message}");
        }
        other => panic!("expected a query error, got {other:?}"),
    }

    // Outage: the server stops, keeps its data and comes back on the same ports.
    let pid = ch.pid().expect("running");
    let port = ch.http_port();
    ch.pause().unwrap();
    assert_eq!(ch.pid(), None);
    assert!(!process_alive(pid));
    assert!(ch.query("SELECT 1").is_err());
    ch.resume().unwrap();
    assert_eq!(ch.http_port(), port);
    assert_eq!(ch.query("SELECT count() FROM t.kv").unwrap(), "2\n");

    // Drop stops the server and removes the directory.
    let dir = ch.dir().to_owned();
    let pid = ch.pid().expect("running again");
    assert!(dir.join("config.xml").exists());
    drop(ch);
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(!process_alive(pid), "server {pid} still runs");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn the_password_user_needs_its_password_which_stays_out_of_the_logs() {
    let ch = support::clickhouse();
    let (user, password) = LocalClickHouse::PASSWORD_USER;
    assert_eq!(ch.query_as(user, password, "SELECT 1").unwrap(), "1\n");
    for wrong in ["", "wrong"] {
        match ch.query_as(user, wrong, "SELECT 1") {
            Err(LocalChError::Query { status, message }) => {
                assert_ne!(status, 200);
                assert!(message.contains(user), "{message}");
            }
            other => panic!("password {wrong:?}: expected a refusal, got {other:?}"),
        }
    }
    // The default user has no password.
    assert_eq!(ch.query_as("default", "", "SELECT 1").unwrap(), "1\n");
    assert_no_file_contains(&ch.log_dir(), password);
}

#[test]
fn fresh_ch_db_makes_distinct_databases_on_the_shared_server() {
    let a = support::fresh_ch_db("localch");
    let b = support::fresh_ch_db("localch");
    assert_ne!(a, b);
    let ch = support::clickhouse();
    let listed = ch
        .query(&format!(
            "SELECT name FROM system.databases WHERE name IN ('{a}', '{b}') ORDER BY name"
        ))
        .unwrap();
    assert_eq!(listed, format!("{a}\n{b}\n"));
    assert!(std::ptr::eq(ch, support::clickhouse()));
}

fn assert_no_file_contains(dir: &Path, needle: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        assert!(
            !text.contains(needle),
            "{} contains the password",
            path.display()
        );
    }
}
