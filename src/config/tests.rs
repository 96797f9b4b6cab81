//! config's own rules, with the stages' rules stubbed out (see `OwnRulesOnly`).

use super::raw::expand;
use super::*;
use crate::target::DEFAULT_VERSION_COLUMN;

fn env(name: &str) -> Option<String> {
    (name == "PGPASS").then(|| "s3cret".to_owned())
}

/// Accepts every expression and store block: these tests hold config to its own rules;
/// the stages' rules are tested with theirs, and together in tests/config.rs.
struct OwnRulesOnly;

impl StageRules for OwnRulesOnly {
    fn expression(&self, _: &str, _: bool, _: bool) -> Result<(), String> {
        Ok(())
    }
    fn store(&self, _: &StoreSettings<'_>, _: &mut dyn FnMut(&str, String)) {}
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", &env, &OwnRulesOnly)
}

#[test]
fn full_source_section() {
    let c = parse(
        r#"
        [source]
        url = "postgres://app:${PGPASS}@127.0.0.1:5432/app?sslmode=prefer"
        slot = "pgfanout"
        publication = "pgfanout"
        tables = ["public.users", "contact_channels"]
        manage = false
        status_interval = "2s"
        "#,
    )
    .unwrap();
    assert_eq!(c.source.conn.password.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(
        c.source.tables.unwrap(),
        vec![
            QualifiedName::new("public", "users"),
            QualifiedName::new("public", "contact_channels")
        ]
    );
    assert!(!c.source.manage);
    assert_eq!(c.source.status_interval, Duration::from_secs(2));
}

#[test]
fn defaults() {
    let c = parse("[source]\nurl = \"postgres://u@h/db\"").unwrap();
    assert_eq!(c.source.slot, DEFAULT_SLOT);
    assert_eq!(c.source.publication, DEFAULT_PUBLICATION);
    assert!(c.source.tables.is_none());
    assert_eq!(c.source.manage, DEFAULT_MANAGE);
    assert_eq!(c.source.protocol, Protocol::Auto);
}

#[test]
fn source_protocol_is_auto_1_or_2_and_anything_else_names_the_key() {
    let protocol = |v: &str| {
        parse(&format!(
            "[source]\nurl = \"postgres://u@h/db\"\nprotocol = {v}"
        ))
    };
    assert_eq!(
        protocol("\"auto\"").unwrap().source.protocol,
        Protocol::Auto
    );
    assert_eq!(protocol("1").unwrap().source.protocol, Protocol::V1);
    assert_eq!(protocol("2").unwrap().source.protocol, Protocol::V2);
    assert_eq!(protocol("\"2\"").unwrap().source.protocol, Protocol::V2);
    for bad in ["3", "\"v2\"", "true", "0"] {
        let p = only_problem(&format!(
            "[source]\nurl = \"postgres://u@h/db\"\nprotocol = {bad}"
        ));
        assert_eq!(p.key, "source.protocol", "{bad}");
        assert!(p.message.contains("\"auto\""), "{}", p.message);
    }
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let e = parse(
        r#"
        [source]
        url = "postgres://u@h/db?sslmode=sometimes"
        slot = "Bad-Slot"
        tables = ["a.b.c", "ok"]
        status_interval = "soon"
        "#,
    )
    .unwrap_err()
    .to_string();
    for key in [
        "source.url",
        "source.slot",
        "source.tables[0]",
        "source.status_interval",
    ] {
        assert!(e.contains(key), "{key} missing from: {e}");
    }
    assert!(e.contains("test.toml"));
}

#[test]
fn unknown_keys_and_missing_env_are_errors_that_name_the_key() {
    let e = parse("[source]\nurl = \"postgres://u@h/db\"\nslto = \"x\"").unwrap_err();
    assert!(e.to_string().contains("slto"), "{e}");
    let e = parse("[source]\nurl = \"postgres://u:${NOPE}@h/db\"").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("source.url") && msg.contains("NOPE"), "{msg}");
    let e = parse("[source]\nurl = 5").unwrap_err();
    assert!(e.to_string().contains("source.url"), "{e}");
}

#[test]
fn log_and_state_sections() {
    let c = parse(
        r#"
        [source]
        url = "postgres://u@h/db"
        [log]
        dir = "/var/lib/pgfanout"
        segment_mb = 8
        sync_interval = "5ms"
        retention_age = "forever"
        retention_mb = 100
        [state]
        url = "postgres://u:${PGPASS}@other/state"
        schema = "cdc_state"
        checkpoint_interval = "1s"
        "#,
    )
    .unwrap();
    assert_eq!(c.log.dir, PathBuf::from("/var/lib/pgfanout"));
    assert_eq!(c.log.segment_bytes, 8 * 1024 * 1024);
    assert_eq!(c.log.sync_interval, Duration::from_millis(5));
    assert_eq!(c.log.retention_age, None);
    assert_eq!(c.log.retention_bytes, Some(100 * 1024 * 1024));
    assert_eq!(c.state.conn.dbname, "state");
    assert_eq!(c.state.schema, "cdc_state");
    assert_eq!(c.state.checkpoint_interval, Duration::from_secs(1));

    // Defaults: the state lives in the source database.
    let c = parse("[source]\nurl = \"postgres://u@h/db\"").unwrap();
    assert_eq!(
        c.state.conn.clone().labelled("source", "source.url"),
        c.source.conn
    );
    assert_eq!(c.state.conn.label.as_deref(), Some("state"));
    assert_eq!(c.state.schema, DEFAULT_STATE_SCHEMA);
    assert_eq!(c.log.dir, PathBuf::from(DEFAULT_LOG_DIR));
    assert_eq!(c.log.retention_age, Some(DEFAULT_RETENTION_AGE));
}

#[test]
fn log_and_state_problems_name_their_keys() {
    let e = parse(
        r#"
        [source]
        url = "postgres://u@h/db"
        tables = ["pgfanout.checkpoints"]
        [log]
        segment_mb = 0
        sync_interval = "soon"
        [state]
        url = "mysql://x"
        "#,
    )
    .unwrap_err()
    .to_string();
    for key in [
        "source.tables[0]",
        "log.segment_mb",
        "log.sync_interval",
        "state.url",
    ] {
        assert!(e.contains(key), "{key} missing from: {e}");
    }
    let e = parse("[source]\nurl = \"postgres://u@h/db\"\n[log]\ndri = \"x\"").unwrap_err();
    assert!(e.to_string().contains("dri"), "{e}");
}

const FULL: &str = r#"
    [source]
    url = "postgres://u@h/db"
    tables = ["public.project_user", "public.tenancy", "public.projects"]

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
    id = "project_user_id"
    project_id = "tenant.project_id"
    "Display Name" = "coalesce(display_name, lower(email), 'anonymous')"
    created = "created_at::date"
    [mappings.types]
    "Display Name" = "varchar(200)"
    id = "uuid"

    [[mappings]]
    name = "projects"
    source = "projects"
    tenant_key = "tenancy_id"
    target = "projects"
    [mappings.columns]
    zeta = "name"
    alpha = "id"

    [[destinations]]
    name = "acme"
    kind = "postgres"
    url = "postgres://acme:${PGPASS}@acme-db/app"
    tenants = ["6d6c1f3e-0000-4000-8000-000000000001", "6d6c1f3e-0000-4000-8000-000000000002"]
    mappings = ["projects", "users"]
    schema = "cdc"
    create_tables = false
    soft_delete = true
    version_column = "_version"
    batch_rows = 500
    flush_interval = "1s"
    apply_connections = 4

    [[destinations]]
    name = "shared"
    kind = "postgres"
    url = "postgres://u@shared/all"
    tenants = "*"
    mappings = ["users"]
"#;

#[test]
fn tenants_mappings_and_destinations() {
    let c = parse(FULL).unwrap();
    let t = c.tenants.as_ref().unwrap();
    assert!(t.query.starts_with("SELECT id AS tenant"));
    assert_eq!(t.table, Some(QualifiedName::new("public", "tenancy")));

    assert_eq!(c.mappings.len(), 2);
    let users = &c.mappings[0];
    assert_eq!(users.name, "users");
    assert_eq!(users.source, QualifiedName::new("public", "project_user"));
    assert_eq!(users.tenant_key, "tenancy_id");
    assert_eq!(users.target, "users");
    assert_eq!(users.key, Some(vec!["id".to_owned()]));
    assert_eq!(users.filter.as_deref(), Some("is_anonymous = false"));
    // Columns keep the order they are written in, not alphabetical order.
    let columns: Vec<(&str, &str)> = users
        .columns
        .iter()
        .map(|(n, e)| (n.as_str(), e.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("id", "project_user_id"),
            ("project_id", "tenant.project_id"),
            (
                "Display Name",
                "coalesce(display_name, lower(email), 'anonymous')"
            ),
            ("created", "created_at::date"),
        ]
    );
    assert_eq!(
        users.types,
        [
            (
                "Display Name".to_owned(),
                ColumnType::Named("varchar(200)".into())
            ),
            ("id".to_owned(), ColumnType::Named("uuid".into())),
        ]
    );
    let projects = &c.mappings[1];
    assert_eq!(projects.source, QualifiedName::new("public", "projects"));
    assert_eq!(projects.key, None);
    assert!(projects.filter.is_none() && projects.types.is_empty());
    let names: Vec<&str> = projects.columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha"]);

    assert_eq!(c.destinations.len(), 2);
    let acme = &c.destinations[0];
    assert_eq!(acme.name, "acme");
    assert_eq!(acme.kind(), DestinationKind::Postgres);
    let StoreConfig::Postgres(acme_pg) = &acme.store else {
        panic!("{acme:?}")
    };
    assert_eq!(acme_pg.conn.password.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(acme_pg.conn.dbname, "app");
    assert_eq!(
        acme.tenants,
        Tenants::Some(
            [
                "6d6c1f3e-0000-4000-8000-000000000001".to_owned(),
                "6d6c1f3e-0000-4000-8000-000000000002".to_owned()
            ]
            .into()
        )
    );
    assert_eq!(acme.mappings, [1, 0], "in the order listed");
    assert_eq!(acme_pg.schema, "cdc");
    assert!(!acme.create_tables);
    assert!(acme_pg.soft_delete);
    assert_eq!(acme.version_column, "_version");
    assert_eq!(acme.batch_rows, 500);
    assert_eq!(acme.flush_interval, Duration::from_secs(1));
    assert_eq!(acme_pg.apply_connections, 4);

    // Defaults.
    let shared = &c.destinations[1];
    assert_eq!(shared.tenants, Tenants::All);
    assert_eq!(shared.mappings, [0]);
    let StoreConfig::Postgres(shared_pg) = &shared.store else {
        panic!("{shared:?}")
    };
    assert_eq!(shared_pg.schema, DEFAULT_DESTINATION_SCHEMA);
    assert!(shared.create_tables);
    assert!(!shared_pg.soft_delete);
    assert_eq!(shared.version_column, DEFAULT_VERSION_COLUMN);
    assert_eq!(shared.batch_rows, DEFAULT_BATCH_ROWS);
    assert_eq!(shared.flush_interval, DEFAULT_FLUSH_INTERVAL);
    assert_eq!(shared_pg.apply_connections, DEFAULT_APPLY_CONNECTIONS);

    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cret"), "{shown}");

    // Without the new sections nothing changes.
    let c = parse("[source]\nurl = \"postgres://u@h/db\"").unwrap();
    assert!(c.tenants.is_none() && c.mappings.is_empty() && c.destinations.is_empty());
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text).unwrap_err() {
        ConfigError::Invalid { problems, .. } => problems,
        e => panic!("{e}"),
    }
}

/// Asserts that `problems` holds exactly `expected` (key, part of the message), in any order.
#[test]
fn keys_of_the_other_kind_are_refused() {
    let text = FULL.replacen(
        "soft_delete = true",
        "soft_delete = true\ntenant_columns = [\"a\"]",
        1,
    );
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "destinations[0].tenant_columns");
    assert!(
        found[0].message.contains("does not apply to postgres"),
        "{found:?}"
    );
}

#[test]
fn unknown_keys_in_the_new_sections_name_their_path() {
    for (insert_after, line, path, field) in [
        (
            "table = \"public.tenancy\"",
            "refresh = true",
            "tenants",
            "refresh",
        ),
        (
            "name = \"projects\"",
            "sources = \"x\"",
            "mappings[1]",
            "sources",
        ),
        (
            "name = \"shared\"",
            "tenant = \"*\"",
            "destinations[1]",
            "tenant",
        ),
    ] {
        let text = FULL.replacen(insert_after, &format!("{insert_after}\n{line}"), 1);
        assert_ne!(text, FULL);
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, format!("{path}.{field}"), "{found:?}");
        assert!(found[0].message.contains("unknown field"), "{found:?}");
    }
    // A column expression must be a string, and the key says which one.
    let text = FULL.replace("zeta = \"name\"", "zeta = 5");
    let found = problems(&text);
    assert_eq!(found[0].key, "mappings[1].columns.zeta", "{found:?}");
    let text = FULL.replace("batch_rows = 500", "batch_rows = \"500\"");
    let found = problems(&text);
    assert_eq!(found[0].key, "destinations[0].batch_rows", "{found:?}");
    // Parallel apply: a connection at least, a bounded number of them.
    for bad in ["0", "33"] {
        let text = FULL.replace(
            "apply_connections = 4",
            &format!("apply_connections = {bad}"),
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].key, "destinations[0].apply_connections",
            "{found:?}"
        );
        assert!(found[0].message.contains("between 1 and 32"), "{found:?}");
    }
    // A destination's connections come out of the shared cap together.
    let text = format!("{FULL}\n[fanout]\nmax_connections = 3\n");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].key, "destinations[0].apply_connections",
        "{found:?}"
    );
    assert!(
        found[0].message.contains("fanout.max_connections"),
        "{found:?}"
    );
}

#[test]
fn dollar_escapes_and_secrets_stay_hidden() {
    assert_eq!(expand("a$${b}$c", &env).unwrap(), "a${b}$c");
    let c = parse("[source]\nurl = \"postgres://u:${PGPASS}@h/db\"").unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
}

/// The single problem of `text`.
fn only_problem(text: &str) -> Problem {
    match parse(text) {
        Err(ConfigError::Invalid { mut problems, .. }) if problems.len() == 1 => problems.remove(0),
        other => panic!("one problem expected for {text:?}, got {other:?}"),
    }
}

#[test]
fn syntax_errors_never_echo_a_value() {
    let head = "[source]\nurl = \"postgres://u@h/db\"\n";
    // (the rest of the file, the line of the error, what of that line is shown)
    let cases: &[(&str, usize, &str)] = &[
        ("[[destinations]]\npassword = \"s3cr3t\n", 4, "password = …"),
        (
            "[[destinations]]\npassword = \"s3cr3t\\q\"\n",
            4,
            "password = …",
        ),
        (
            "[[destinations]]\npassword = \"s3cr3t\\uZZZZ\"\n",
            4,
            "password = …",
        ),
        ("[[destinations]]\npassword = s3cr3t\n", 4, "password = …"),
        (
            "[[destinations]]\npassword = \"s3cr3t\" junk\n",
            4,
            "password = …",
        ),
        (
            "[[destinations]]\npassword = 12345s3cr3t\n",
            4,
            "password = …",
        ),
        (
            "[[destinations]]\npassword = 1979-05-27Ts3cr3t\n",
            4,
            "password = …",
        ),
        ("[state]\nurl = \"postgres://u:s3cr3t@h/db\n", 4, "url = …"),
        ("[state]\nurl = 'postgres://u:s3cr3t@h/db\n", 4, "url = …"),
        (
            "[state]\nurl = \"\"\"postgres://u:\ns3cr3t@h/db\\q\"\"\"\n",
            5,
            "…",
        ),
        ("[state]\nurl = '''x\ns3cr3t\n", 6, "…"),
        ("[state]\nx = [\n  \"a\",\n  \"s3cr3t\" junk\n]\n", 6, "…"),
        ("[state]\nx = { password = \"s3cr3t\" junk }\n", 4, "x = …"),
        ("[state]\ns3cr3t\n", 4, "…"),
        ("[state] password = \"s3cr3t\"\n", 3, "[state] …"),
    ];
    for (tail, line, shown) in cases {
        let text = format!("{head}{tail}");
        let p = only_problem(&text);
        let full = parse(&text).unwrap_err().to_string();
        assert_eq!(p.key, "(file)");
        assert!(
            !full.contains("s3cr3t"),
            "{tail:?} echoes the value: {full}"
        );
        assert!(
            p.message
                .starts_with(&format!("TOML syntax error at line {line}, column ")),
            "{tail:?}: {}",
            p.message
        );
        assert!(
            p.message.ends_with(&format!("\n{line} | {shown}")),
            "{tail:?}: {}",
            p.message
        );
    }
    // A header is shown whole (an unterminated one is not: it may be anything); the message
    // keeps the grammar's words and the key.
    let p = only_problem(&format!("{head}[source]\n"));
    assert!(
        p.message.contains("duplicate key `source`"),
        "{}",
        p.message
    );
    assert!(p.message.ends_with("\n3 | [source]"), "{}", p.message);
    let p = only_problem(&format!("{head}[state\n"));
    assert!(p.message.ends_with("\n3 | …"), "{}", p.message);
}

#[test]
fn type_errors_never_echo_a_value() {
    for (text, key) in [
        (
            "[source]\nurl = \"postgres://u@h/db\"\nmanage = \"s3cr3t\\\"quoted\"",
            "source.manage",
        ),
        ("[source]\nurl = 12345", "source.url"),
        ("[source]\nurl = 1.2345", "source.url"),
        ("[source]\nurl = true", "source.url"),
    ] {
        let p = only_problem(text);
        assert_eq!(p.key, key, "{text}");
        assert!(
            p.message.starts_with("invalid type: a"),
            "{text}: {}",
            p.message
        );
        assert!(p.message.contains(", expected"), "{text}: {}", p.message);
        for secret in ["s3cr3t", "quoted", "12345", "1.2345", "true"] {
            assert!(!p.message.contains(secret), "{text}: {}", p.message);
        }
    }
    assert_eq!(
        super::raw::without_values("invalid value: character ```, expected a digit"),
        "invalid value: a character, expected a digit"
    );
    assert_eq!(
        super::raw::without_values("missing field `url`"),
        "missing field `url`"
    );
}

#[test]
fn admin_listen_defaults_to_loopback_turns_off_and_names_its_key() {
    let c = parse("[source]\nurl = \"postgres://u@h/db\"").unwrap();
    assert_eq!(c.admin.listen, Some(DEFAULT_ADMIN_LISTEN));
    assert!(c.admin.listen.unwrap().ip().is_loopback());
    let c = parse("[source]\nurl = \"postgres://u@h/db\"\n[admin]\nlisten = \"off\"").unwrap();
    assert_eq!(c.admin.listen, None);
    let c =
        parse("[source]\nurl = \"postgres://u@h/db\"\n[admin]\nlisten = \"0.0.0.0:9000\"").unwrap();
    assert_eq!(c.admin.listen, Some("0.0.0.0:9000".parse().unwrap()));
    let p = problems("[source]\nurl = \"postgres://u@h/db\"\n[admin]\nlisten = \"localhost\"");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "admin.listen");
    assert!(p[0].message.contains("\"off\""), "{}", p[0].message);
}

#[test]
fn fanout_connections_default_for_a_small_machine_and_problems_name_their_keys() {
    let c = parse("[source]\nurl = \"postgres://u@h/db\"").unwrap();
    assert_eq!(c.fanout.max_connections, DEFAULT_FANOUT_MAX_CONNECTIONS);
    assert_eq!(c.fanout.idle_timeout, DEFAULT_FANOUT_IDLE_TIMEOUT);
    let c = parse(
        "[source]\nurl = \"postgres://u@h/db\"\n[fanout]\nmax_connections = 50\nidle_timeout = \"2s\"",
    )
    .unwrap();
    assert_eq!(c.fanout.max_connections, 50);
    assert_eq!(c.fanout.idle_timeout, Duration::from_secs(2));
    let p = problems(
        "[source]\nurl = \"postgres://u@h/db\"\n[fanout]\nmax_connections = 0\nidle_timeout = \"soon\"",
    );
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["fanout.max_connections", "fanout.idle_timeout"],
        "{p:?}"
    );
    let p = problems("[source]\nurl = \"postgres://u@h/db\"\n[fanout]\nmax_connections = 10001");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].message.contains("10000"), "{}", p[0].message);
}

#[test]
fn every_connection_key_takes_both_forms_and_several_hosts_need_read_write() {
    let c = parse(
        r#"
        [source]
        url = "host=a,b port=5432,5433 dbname=app user=rep password='${PGPASS}' target_session_attrs=read-write"
        [state]
        url = "postgres://st@s1:5432,s2:5432/state?target_session_attrs=primary"
        "#,
    )
    .unwrap();
    assert_eq!(c.source.conn.password.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(c.source.conn.more_hosts.len(), 1);
    assert_eq!(c.state.conn.key.as_deref(), Some("state.url"));
    assert!(
        c.state.conn.to_string().ends_with("; state.url)"),
        "{}",
        c.state.conn
    );

    let e = parse("[source]\nurl = \"host=a,b password=${PGPASS}\"").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("source.url") && msg.contains("target_session_attrs=read-write"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");
    let e = parse("[source]\nurl = \"host=a password='${PGPASS}\"").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("source.url") && msg.contains("no closing quote"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");
}

#[test]
fn all_columns_exclude_and_on_drop_column() {
    let base = "[source]\nurl = \"postgres://u@h/db\"\n[[mappings]]\nname = \"m\"\nsource = \"public.t\"\ntenant_key = \"tenant\"\ntarget = \"t\"\n";
    let c = parse(&format!(
        "{base}columns = \"*\"\nexclude = [\"secret\"]\non_drop_column = \"drop\"\n"
    ))
    .unwrap();
    let m = &c.mappings[0];
    assert!(m.all_columns && m.columns.is_empty());
    assert_eq!(m.exclude, ["secret"]);
    assert_eq!(m.on_drop_column, OnDropColumn::Drop);
    let c = parse(&format!("{base}columns = \"*\"\n")).unwrap();
    assert_eq!(c.mappings[0].on_drop_column, OnDropColumn::Keep);

    for (text, key, words) in [
        ("columns = \"all\"\n", "mappings[0].columns", "\"*\""),
        (
            "columns = \"*\"\non_drop_column = \"delete\"\n",
            "mappings[0].on_drop_column",
            "\"keep\"",
        ),
        (
            "exclude = [\"x\"]\n[mappings.columns]\nid = \"id\"\n",
            "mappings[0].exclude",
            "only to columns = \"*\"",
        ),
        (
            "on_drop_column = \"drop\"\n[mappings.columns]\nid = \"id\"\n",
            "mappings[0].on_drop_column",
            "only to columns = \"*\"",
        ),
        (
            "columns = \"*\"\nexclude = [\"tenant\"]\n",
            "mappings[0].exclude[0]",
            "tenant key",
        ),
        (
            "columns = \"*\"\nexclude = [\"a\", \"a\"]\n",
            "mappings[0].exclude[1]",
            "twice",
        ),
    ] {
        let p = problems(&format!("{base}{text}"));
        assert!(
            p.iter().any(|p| p.key == key && p.message.contains(words)),
            "{text}: {key} with {words:?} in {p:?}"
        );
    }
}
