//! The configuration as `pgfanout` loads it: config's own rules together with the stages'
//! (the mapping language's, each destination kind's), every problem at once with its key.

use pgfanout::cmd::StageRules;
use pgfanout::config::{
    Config, ConfigError, DestinationKind, Problem, StoreConfig, DEFAULT_CLICKHOUSE_BATCH_ROWS,
    DEFAULT_CLICKHOUSE_DATABASE, DEFAULT_CLICKHOUSE_FLUSH_INTERVAL,
};
use pgfanout::target::DEFAULT_VERSION_COLUMN;

fn env(name: &str) -> Option<String> {
    (name == "PGPASS").then(|| "s3cret".to_owned())
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", &env, &StageRules)
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text).unwrap_err() {
        ConfigError::Invalid { problems, .. } => problems,
        e => panic!("{e}"),
    }
}

fn assert_problems(problems: &[Problem], expected: &[(&str, &str)]) {
    for (key, part) in expected {
        assert!(
            problems
                .iter()
                .any(|p| p.key == *key && p.message.contains(part)),
            "no problem at {key} mentioning {part:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
}

const CLICKHOUSE: &str = r#"
    [source]
    url = "postgres://u@h/db"
    [tenants]
    query = "SELECT id, project_id, branch_id FROM tenancy"
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
    [[destinations]]
    name = "analytics"
    kind = "clickhouse"
    url = "http://127.0.0.1:8123"
    user = "writer"
    password = "${PGPASS}"
    database = "analytics_internal"
    tenants = "*"
    mappings = ["users"]
    version_column = "sync_sequence_id"
    deleted_column = "sync_is_deleted"
    views_database = "default"
    reader_user = "limited_user"
    tenant_columns = ["project_id", "branch_id"]
"#;

#[test]
fn every_mapping_and_destination_problem_is_reported_with_its_key() {
    let long = "x".repeat(64);
    let text = format!(
        r#"
        [source]
        url = "postgres://u@h/db"
        tables = ["public.users", "pgfanout.checkpoints"]

        [[mappings]]
        name = "users"
        source = "public.users"
        tenant_key = ""
        target = "{long}"
        key = ["id", "nope", "id"]
        filter = "is_anonymous = "
        [mappings.columns]
        id = "id"
        project_id = "tenant.project_id"
        bad = "lower(email"
        "" = "x"
        [mappings.types]
        id = "int; DROP TABLE users"
        missing = "text"
        bad = " "

        [[mappings]]
        name = "users"
        source = "public.orders"
        tenant_key = "t"
        target = "users"
        filter = "tenant.plan = 'pro'"
        [mappings.columns]

        [[mappings]]
        name = "state"
        source = "pgfanout.checkpoints"
        tenant_key = "t"
        target = "{long}"
        [mappings.columns]
        _seq = "a"

        [[destinations]]
        name = "acme"
        kind = "clickhouse"
        url = "mysql://x"
        tenants = []
        mappings = ["users", "ghost", "users", "state"]
        batch_rows = 0
        flush_interval = "soon"

        [[destinations]]
        name = "acme"
        kind = "pg"
        url = "postgres://u@h/db"
        tenants = ["a", "", 7, "*"]
        mappings = []
        schema = ""

        [[destinations]]
        name = "{long}"
        kind = "postgres"
        url = "postgres://u@h/db"
        tenants = "acme"
        mappings = ["state"]
        soft_delete = true
        version_column = "_deleted"
        "#
    );
    let found = problems(&text);
    assert_problems(
        &found,
        &[
            ("source.tables[1]", "state schema"),
            ("mappings[0].tenant_key", "is empty"),
            ("mappings[0].target", "63 bytes"),
            ("mappings[0].columns.project_id", "[tenants]"),
            ("mappings[0].columns.bad", "cannot parse the expression"),
            ("mappings[0].columns.\"\"", "is empty"),
            ("mappings[0].filter", "cannot parse the filter"),
            ("mappings[0].key[1]", "not a target column"),
            ("mappings[0].key[2]", "listed twice"),
            ("mappings[0].types.id", "\";\""),
            ("mappings[0].types.missing", "not a target column"),
            ("mappings[0].types.bad", "is empty"),
            ("mappings[1].name", "mappings[0]"),
            ("mappings[1].source", "not listed in source.tables"),
            ("mappings[1].columns", "is empty"),
            ("mappings[1].filter", "tenant.plan"),
            ("mappings[2].source", "state schema"),
            ("destinations[0].url", "mysql"),
            ("destinations[0].tenants", "is empty"),
            (
                "destinations[0].mappings[1]",
                "no [[mappings]] entry named \"ghost\"",
            ),
            ("destinations[0].mappings[2]", "listed twice"),
            ("mappings[2].target", "63 bytes"),
            ("destinations[0].mappings[3]", "as mapping \"users\""),
            ("destinations[0].version_column", "mapping \"state\""),
            ("destinations[0].batch_rows", "at least 1"),
            ("destinations[0].flush_interval", "duration"),
            ("destinations[1].name", "destinations[0]"),
            ("destinations[1].kind", "unknown destination kind"),
            ("destinations[1].tenants[1]", "is empty"),
            ("destinations[1].tenants[2]", "of type integer"),
            ("destinations[1].tenants[3]", "not a wildcard"),
            ("destinations[1].mappings", "is empty"),
            ("destinations[2].name", "63 bytes"),
            ("destinations[2].tenants", "[\"acme\"]"),
            ("destinations[2].version_column", "soft-delete marker"),
        ],
    );
    let e = parse(&text).unwrap_err().to_string();
    assert!(
        e.contains("test.toml") && e.contains("35 problem(s)"),
        "{e}"
    );
}

#[test]
fn clickhouse_destinations() {
    let c = parse(CLICKHOUSE).unwrap();
    let d = &c.destinations[0];
    assert_eq!(d.kind(), DestinationKind::ClickHouse);
    assert_eq!(d.version_column, "sync_sequence_id");
    assert_eq!(d.batch_rows, DEFAULT_CLICKHOUSE_BATCH_ROWS);
    assert_eq!(d.flush_interval, DEFAULT_CLICKHOUSE_FLUSH_INTERVAL);
    let StoreConfig::ClickHouse(ch) = &d.store else {
        panic!("{d:?}")
    };
    assert_eq!(ch.url, "http://127.0.0.1:8123");
    assert_eq!(ch.user, "writer");
    assert_eq!(ch.password.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(ch.database, "analytics_internal");
    assert_eq!(ch.deleted_column, "sync_is_deleted");
    assert_eq!(ch.views_database.as_deref(), Some("default"));
    assert_eq!(ch.reader_user.as_deref(), Some("limited_user"));
    assert_eq!(ch.tenant_columns, ["project_id", "branch_id"]);
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cret"), "{shown}");

    // Defaults.
    let minimal = CLICKHOUSE
        .lines()
        .filter(|l| {
            ![
                "user =",
                "password",
                "database =",
                "_column =",
                "views_",
                "reader_",
                "tenant_columns",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let c = parse(&minimal).unwrap();
    let d = &c.destinations[0];
    assert_eq!(d.version_column, DEFAULT_VERSION_COLUMN);
    let StoreConfig::ClickHouse(ch) = &d.store else {
        panic!("{d:?}")
    };
    assert_eq!(ch.user, "default");
    assert!(ch.password.is_none());
    assert_eq!(ch.database, DEFAULT_CLICKHOUSE_DATABASE);
    assert_eq!(ch.deleted_column, pgfanout::target::DEFAULT_DELETED_COLUMN);
    assert!(ch.views_database.is_none() && ch.reader_user.is_none());
    assert!(ch.tenant_columns.is_empty());
}

#[test]
fn clickhouse_problems_are_reported_with_their_keys() {
    let text = CLICKHOUSE
        .replace(
            "http://127.0.0.1:8123",
            "http://writer:pw@127.0.0.1:8123/db",
        )
        .replace(
            "views_database = \"default\"",
            "views_database = \"analytics_internal\"\nschema = \"x\"\nsoft_delete = true",
        )
        .replace(
            "deleted_column = \"sync_is_deleted\"",
            "deleted_column = \"sync_sequence_id\"",
        )
        .replace(
            "[\"project_id\", \"branch_id\"]",
            "[\"project_id\", \"team\", \"project_id\"]",
        );
    let found = problems(&text);
    assert_problems(
        &found,
        &[
            ("destinations[0].schema", "use database"),
            ("destinations[0].soft_delete", "deleted_column"),
            ("destinations[0].url", "credentials"),
            ("destinations[0].deleted_column", "also the version_column"),
            ("destinations[0].views_database", "database of their own"),
            (
                "destinations[0].tenant_columns[1]",
                "not a target column of mapping \"users\"",
            ),
            ("destinations[0].tenant_columns[2]", "listed twice"),
        ],
    );
    assert!(
        found.iter().all(|p| !p.message.contains("pw@")),
        "the URL's password is never echoed: {found:?}"
    );
}

/// The command line is where an error reaches a person: its message, then each cause once,
/// without colour codes when stderr is not a terminal; under `--log-format json`, one JSON
/// line like every other log line.
#[test]
fn a_missing_file_is_reported_once_per_cause_as_text_or_json() {
    let missing = std::env::temp_dir().join("pgfanout-no-such-config.toml");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgfanout"))
            .args(args)
            .arg("--config")
            .arg(&missing)
            .output()
            .expect("run pgfanout")
    };

    let out = run(&["check"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.starts_with(&format!(
            "error: cannot read config file {}\n  caused by: No such file",
            missing.display()
        )),
        "{text}"
    );
    assert_eq!(text.matches("No such file").count(), 1, "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes into a pipe: {text:?}"
    );

    let out = run(&["--log-format", "json", "check"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().expect("a log line");
    assert_eq!(last["level"], "ERROR", "{last}");
    let error = last["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot read config file") && error.contains("No such file"),
        "{last}"
    );
}

/// What reaches a person for a file with a syntax error on a line holding a password: where
/// it is and what is wrong, never the value, as text and as a JSON log line.
#[test]
fn a_syntax_error_on_a_password_line_never_shows_the_password() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, line) in [
        (
            "unterminated.toml",
            "[source]\nurl = \"postgres://u@h/db\"\n[[destinations]]\nname = \"a\"\npassword = \"s3cr3t\n",
            5,
        ),
        (
            "url.toml",
            "[source]\nurl = \"postgres://u:s3cr3t@h/db\" sslmode\n",
            2,
        ),
        (
            "multiline.toml",
            "[source]\nurl = \"\"\"postgres://u:\ns3cr3t\\x@h/db\"\"\"\n",
            3,
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        for format in ["text", "json"] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgfanout"))
                .args(["--log-format", format, "check", "--config"])
                .arg(&path)
                .output()
                .expect("run pgfanout");
            assert!(!out.status.success());
            let all = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(!all.contains("s3cr3t"), "{name} ({format}): {all}");
            assert!(
                all.contains(&format!("TOML syntax error at line {line}, column ")),
                "{name} ({format}): {all}"
            );
        }
    }
}
