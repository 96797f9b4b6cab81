//! The README, followed as a reader would: its SQL blocks run against a private PostgreSQL, its
//! TOML blocks make up one configuration that `pgfanout check` must pass against that server
//! and a private ClickHouse, and every `pgfanout …` command line it shows names a real command
//! and real flags. The README cannot drift from the code without this failing.
//!
//! Fenced blocks carry their role in the info string: ` ```sql source` runs on the source
//! database `app`, ` ```sql destination` on the tenant's server, ` ```toml pgfanout.toml` is a
//! part of the configuration (parts are joined in order); any other ` ```toml` block must at
//! least parse. The configuration is used as written except for the three things a reader
//! changes for their own machines, each replaced here by the private servers' equivalent: the
//! source's address (`db.internal:5432`) and CA file, the ClickHouse address, and the log
//! directory.

mod support;

use std::path::Path;
use std::process::Command;

use pgfanout_testkit::localpg::{LocalPostgres, Options};

struct Block {
    /// The fence's info string: language, then the role.
    info: String,
    body: String,
    /// 1-based line of the opening fence, for messages.
    line: usize,
}

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some(Block {
                        info: info.trim().to_owned(),
                        body: String::new(),
                        line: i + 1,
                    });
                }
            }
            Some(mut b) => {
                if trimmed.starts_with("```") {
                    out.push(b);
                } else {
                    b.body.push_str(line);
                    b.body.push('\n');
                    open = Some(b);
                }
            }
        }
    }
    assert!(open.is_none(), "README.md: a code block is never closed");
    out
}

fn with_info<'a>(blocks: &'a [Block], info: &str) -> Vec<&'a Block> {
    blocks.iter().filter(|b| b.info == info).collect()
}

/// The statements of a SQL block, one by one (CREATE DATABASE cannot run in the implicit
/// transaction of a multi-statement query). The README's SQL has no `;` inside a statement.
fn statements(body: &str) -> Vec<String> {
    body.split(";\n")
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|s| !s.trim().is_empty())
        .collect()
}

/// The password a `CREATE ROLE name … PASSWORD '…'` in the README's SQL gives `role`.
fn password_of(sql: &[&Block], role: &str) -> String {
    let prefix = format!("CREATE ROLE {role} ");
    for b in sql {
        for stmt in statements(&b.body) {
            if let Some(rest) = stmt.trim().strip_prefix(&prefix) {
                let at = rest.find("PASSWORD '").expect("a password") + "PASSWORD '".len();
                let end = rest[at..].find('\'').expect("a closed quote");
                return rest[at..at + end].to_owned();
            }
        }
    }
    panic!("README.md creates no role {role} with a password");
}

async fn run_sql(client: &tokio_postgres::Client, blocks: &[&Block]) {
    for b in blocks {
        for stmt in statements(&b.body) {
            if let Err(e) = client.batch_execute(&stmt).await {
                panic!(
                    "README.md line {}: {stmt}\nfails: {}",
                    b.line,
                    pgfanout::pgconn::PgError(e)
                );
            }
        }
    }
}

#[test]
fn every_toml_block_parses() {
    let all = blocks(&readme());
    let toml_blocks: Vec<&Block> = all.iter().filter(|b| b.info.starts_with("toml")).collect();
    assert!(toml_blocks.len() >= 5, "README.md lost its configuration");
    for b in toml_blocks {
        if let Err(e) = b.body.parse::<toml::Table>() {
            panic!(
                "README.md line {}: the TOML block does not parse: {e}",
                b.line
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_passes_check() {
    let all = blocks(&readme());
    let source_sql = with_info(&all, "sql source");
    let destination_sql = with_info(&all, "sql destination");
    let config_parts = with_info(&all, "toml pgfanout.toml");
    assert!(
        !source_sql.is_empty() && !destination_sql.is_empty() && !config_parts.is_empty(),
        "README.md lost the walkthrough's tagged blocks"
    );

    // One server plays both the source and the tenant's server: TLS with a throw-away CA (the
    // configuration says verify-full), and the README's roles authenticate with passwords.
    let pg = tokio::task::spawn_blocking(|| {
        LocalPostgres::start(&Options {
            conf: vec![],
            hba: vec![
                "hostssl all replicator 127.0.0.1/32 scram-sha-256".into(),
                "hostssl replication replicator 127.0.0.1/32 scram-sha-256".into(),
                "host all replicator 127.0.0.1/32 reject".into(),
                "hostssl all pgfanout_writer 127.0.0.1/32 scram-sha-256".into(),
            ],
            tls: true,
        })
    })
    .await
    .unwrap()
    .expect("start the private PostgreSQL");
    pg.create_database("app")
        .await
        .expect("create database app");
    run_sql(&pg.sql("app").await.unwrap(), &source_sql).await;
    run_sql(&pg.sql("postgres").await.unwrap(), &destination_sql).await;

    let ch = tokio::task::spawn_blocking(support::clickhouse)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_parts
        .iter()
        .map(|b| b.body.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for (from, to) in [
        ("db.internal:5432", format!("localhost:{}", pg.port())),
        ("/etc/ssl/ca.pem", pg.ca_cert().display().to_string()),
        ("127.0.0.1:8123", format!("127.0.0.1:{}", ch.http_port())),
        (
            "/var/lib/pgfanout/log",
            dir.path().join("log").display().to_string(),
        ),
    ] {
        assert!(
            config.contains(from),
            "README.md's configuration no longer has {from}: update this test's replacements"
        );
        config = config.replace(from, &to);
    }
    let path = dir.path().join("pgfanout.toml");
    std::fs::write(&path, &config).unwrap();

    let writer_password = password_of(&destination_sql, "pgfanout_writer");
    let env = [
        ("PGPASSWORD", password_of(&source_sql, "replicator")),
        (
            "ACME_DB_URL",
            format!(
                "postgres://pgfanout_writer:{writer_password}@127.0.0.1:{}/acme?sslmode=require",
                pg.port()
            ),
        ),
        ("CH_PASSWORD", String::new()),
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_pgfanout"))
        .args(["check", "--config"])
        .arg(&path)
        .envs(env.clone())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgfanout check fails on the README's configuration:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It checked the destinations, not only the file.
    for name in ["acme", "analytics"] {
        assert!(
            stdout.contains(name),
            "check did not report {name}:\n{stdout}"
        );
    }
    // CH_PASSWORD is empty here: an empty password is no password, nothing to warn about.
    assert!(
        !stdout.contains("destination analytics: a password is configured"),
        "{stdout}"
    );

    // Step 8: the configuration runs. A user that exists before the first start arrives by the
    // snapshot, one written afterwards by the stream, in the tenant's database and in ClickHouse.
    let app = pg.sql("app").await.unwrap();
    let tenant = "6d6c1f3e-8a51-4a8e-9d7c-1b0a2f6e4c11";
    app.batch_execute(&format!(
        "INSERT INTO public.project_user (tenancy_id, project_user_id, email) VALUES ('{tenant}', 1, 'Ada@Example.org')"
    ))
    .await
    .unwrap();
    let daemon = support::Daemon(support::Spawned(
        Command::new(env!("CARGO_BIN_EXE_pgfanout"))
            .args(["run", "--config"])
            .arg(&path)
            .envs(env)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ));
    app.batch_execute(&format!(
        "INSERT INTO public.project_user (tenancy_id, project_user_id, email) VALUES ('{tenant}', 2, 'Grace@Example.org');
         INSERT INTO public.contact_channels VALUES ('{tenant}', 1, 2, 'email', 'grace@example.org')"
    ))
    .await
    .unwrap();
    let acme = pg.sql("acme").await.unwrap();
    let users = support::wait_for("both users in acme", || async {
        let rows = acme
            .query("SELECT id, email FROM public.users ORDER BY id", &[])
            .await
            .ok()?;
        let users: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        (users.len() == 2).then_some(users)
    })
    .await;
    assert_eq!(
        users,
        [
            (1, "ada@example.org".to_owned()),
            (2, "grace@example.org".to_owned())
        ]
    );
    support::wait_for("the users and the channel in ClickHouse", || async {
        let q = "SELECT (SELECT count() FROM analytics_internal.users FINAL WHERE sync_is_deleted = 0) \
                 + (SELECT count() FROM analytics_internal.contact_channels FINAL WHERE sync_is_deleted = 0)";
        let n = tokio::task::spawn_blocking(move || ch.query(q)).await.ok()?.ok()?;
        (n.trim() == "3").then_some(())
    })
    .await;
    daemon.signal("-TERM");
    assert!(
        daemon.exited().await.success(),
        "pgfanout run did not stop cleanly"
    );
}

/// Every `pgfanout …` line in a shell block names a real command, and each of its flags is one
/// that command's help lists; every script it runs exists and is executable.
#[test]
fn every_command_line_exists() {
    let all = blocks(&readme());
    let mut seen = 0;
    for b in all.iter().filter(|b| b.info == "sh") {
        for line in b.body.lines() {
            let line = line.split(" #").next().unwrap_or("").trim();
            let Some(rest) = line.strip_prefix("pgfanout ") else {
                if let Some(script) = line
                    .split_whitespace()
                    .next()
                    .filter(|w| w.starts_with("scripts/"))
                {
                    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
                    let meta = std::fs::metadata(&path)
                        .unwrap_or_else(|e| panic!("README.md line {}: {script}: {e}", b.line));
                    use std::os::unix::fs::PermissionsExt;
                    assert!(
                        meta.permissions().mode() & 0o111 != 0,
                        "{script} is not executable"
                    );
                }
                continue;
            };
            let words: Vec<&str> = rest.split_whitespace().collect();
            let path: Vec<&str> = words
                .iter()
                .copied()
                .take_while(|w| !w.starts_with('-') && !w.starts_with('['))
                .collect();
            let out = Command::new(env!("CARGO_BIN_EXE_pgfanout"))
                .args(&path)
                .arg("--help")
                .output()
                .unwrap();
            let help = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "README.md line {}: `pgfanout {}` is not a command: {}",
                b.line,
                path.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            for flag in words
                .iter()
                .map(|w| w.trim_matches(|c| c == '[' || c == ']'))
                .filter(|w| w.starts_with("--"))
            {
                assert!(
                    help.contains(flag),
                    "README.md line {}: `pgfanout {}` has no flag {flag}",
                    b.line,
                    path.join(" ")
                );
            }
            seen += 1;
        }
    }
    assert!(
        seen >= 10,
        "README.md shows only {seen} pgfanout command lines"
    );
}
