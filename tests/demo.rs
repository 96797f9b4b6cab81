//! `pgfanout demo` end to end: a short run must pass every check it prints (each target
//! equals its projection of the source, the SIGKILL resume, the replay, the log), and bare
//! `pgfanout` prints the help instead of starting anything.

use std::process::Command;

fn pgfanout(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgfanout"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pgfanout")
}

#[test]
fn a_short_demo_passes_every_check_it_prints() {
    let out = pgfanout(&["demo", "--duration", "5s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let (_, report) = stdout
        .rsplit_once("\nchecks\n")
        .unwrap_or_else(|| panic!("no checks section in:\n{stdout}"));
    let lines: Vec<&str> = report.lines().collect();
    let (summary, checks) = lines.split_last().expect("a summary line");
    for line in checks {
        assert!(
            line.starts_with("ok "),
            "a check did not pass: {line}\n{stdout}"
        );
    }
    // Every demonstration and every target is among them.
    let mut expected = vec![
        "kill -9 and resume",
        "replay",
        "watermarks",
        "shutdown",
        "log verify",
        "tenant_acme.users",
        "tenant_acme.contact_channels",
        "tenant_globex.users",
        "tenant_globex.contact_channels",
    ];
    if !stdout.contains("ClickHouse is not installed") {
        expected.extend(["analytics.users", "analytics.contact_channels"]);
    }
    for what in &expected {
        assert!(
            checks.iter().any(|l| l
                .trim_start_matches("ok")
                .trim_start()
                .starts_with(&format!("{what}:"))),
            "no check for {what}:\n{report}"
        );
    }
    // Each target compared a number of rows, and the summary adds them up.
    let mut sum = 0;
    for line in checks
        .iter()
        .filter(|l| l.contains(" rows equal the projection"))
    {
        let n: usize = line
            .split_once(": ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no row count in {line}"));
        assert!(n > 0, "a target compared no rows: {line}");
        sum += n;
    }
    let compared: usize = summary
        .split_once("checks passed; ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no row count in the summary: {summary}"));
    assert_eq!(
        summary.split_whitespace().nth(1),
        Some(checks.len().to_string().as_str()),
        "{summary}"
    );
    assert!(
        compared > 0 && compared == sum,
        "{summary}: the lines add up to {sum}"
    );
    // The replay brought rows back.
    let replay = checks.iter().find(|l| l.contains(" replay: ")).unwrap();
    assert!(!replay.starts_with("ok      replay: 0 of"), "{replay}");

    // Nothing is left behind: the servers are stopped, the files removed.
    let servers = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("private servers: "))
        .unwrap_or_else(|| panic!("the demo names no servers:\n{stdout}"));
    let port: u16 = servers
        .split_once("127.0.0.1:")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no PostgreSQL port in {servers}"));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the demo's PostgreSQL on port {port} still answers"
    );
    let dir = servers
        .split_once("files in ")
        .and_then(|(_, rest)| rest.split_once(" (all removed"))
        .map(|(d, _)| std::path::PathBuf::from(d))
        .unwrap_or_else(|| panic!("no directory in {servers}"));
    assert!(!dir.exists(), "{} is still there", dir.display());
}

#[test]
fn bare_pgfanout_prints_the_help() {
    let out = pgfanout(&[]);
    // clap's status for a missing subcommand, with the help on stderr.
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let help = String::from_utf8_lossy(&out.stderr);
    assert!(help.contains("Usage: pgfanout"), "{help}");
    for command in ["run", "check", "status", "replay", "demo"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "the help lists no {command}:\n{help}"
        );
    }
    assert!(out.stdout.is_empty(), "bare pgfanout started something");
}
