//! Configuration: one TOML file, `${ENV}` interpolation for secrets, and a `validate` step that
//! turns the raw file into checked types and reports every problem with its key path.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pgconn::ConnInfo;
pub use crate::pgconn::Secret;
use crate::problems::Problems;
use crate::sql::QualifiedName;
use crate::target::{ColumnType, DEFAULT_VERSION_COLUMN};

pub const DEFAULT_SLOT: &str = "pgfanout";
pub const DEFAULT_PUBLICATION: &str = "pgfanout";
/// Like PostgreSQL's own `wal_receiver_status_interval`.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Creating the slot and publication when missing is what a first run needs.
pub const DEFAULT_MANAGE: bool = true;
pub const DEFAULT_LOG_DIR: &str = "pgfanout-log";
pub const DEFAULT_SEGMENT_MB: u64 = 64;
/// Longest a committed transaction waits for the group-commit fsync while changes keep coming.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(50);
pub const DEFAULT_RETENTION_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_STATE_SCHEMA: &str = "pgfanout";
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
/// A destination writes a batch once it holds this many row operations…
pub const DEFAULT_BATCH_ROWS: usize = 10_000;
/// …or once its oldest operation has waited this long.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
pub const DEFAULT_DESTINATION_SCHEMA: &str = "public";
/// ClickHouse wants few large inserts: every insert makes a part that merges later.
pub const DEFAULT_CLICKHOUSE_BATCH_ROWS: usize = 100_000;
pub const DEFAULT_CLICKHOUSE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_CLICKHOUSE_DATABASE: &str = "default";
/// ClickHouse identifiers have no length limit that matters; this only catches mistakes.
/// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1).

#[derive(Debug, Clone)]
pub struct Config {
    pub source: SourceConfig,
    pub log: LogConfig,
    pub state: StateConfig,
    /// `[tenants]`: where tenant attributes (`tenant.x` in expressions) come from.
    pub tenants: Option<TenantsConfig>,
    /// `[[mappings]]`, in file order; [`DestinationConfig::mappings`] indexes into it.
    pub mappings: Vec<MappingConfig>,
    /// `[[destinations]]`, in file order.
    pub destinations: Vec<DestinationConfig>,
}

/// `[tenants]`: the tenant registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantsConfig {
    /// Returns one row per tenant: the tenant id, then its attributes.
    pub query: String,
    /// When set, changes to this (published) table refresh the registry while running.
    pub table: Option<QualifiedName>,
}

/// One `[[mappings]]` entry: how rows of a source table become rows of a target table.
#[derive(Debug, Clone, PartialEq)]
pub struct MappingConfig {
    pub name: String,
    pub source: QualifiedName,
    /// The source column holding the tenant id.
    pub tenant_key: String,
    /// The target table, in the destination's schema.
    pub target: String,
    /// Target key columns, each one of `columns`; `None`: derived from the source primary key.
    pub key: Option<Vec<String>>,
    /// The row filter's text (the mapping language, checked by [`StageRules::expression`]).
    pub filter: Option<String>,
    /// Target column = expression text, in the order written in the file.
    pub columns: Vec<(String, String)>,
    /// Explicit target column types, in the order written; each names one of `columns`.
    pub types: Vec<(String, ColumnType)>,
}

/// What kind of store a destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    Postgres,
    ClickHouse,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Postgres => "postgres",
            DestinationKind::ClickHouse => "clickhouse",
        }
    }
}

impl fmt::Display for DestinationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[destinations]]` entry: a store that receives some mappings for some tenants.
/// Which tenants a destination serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenants {
    /// `tenants = "*"`: every tenant (a shared store).
    All,
    Some(HashSet<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DestinationConfig {
    pub name: String,
    pub tenants: Tenants,
    /// Indexes into [`Config::mappings`], in the order listed.
    pub mappings: Vec<usize>,
    pub create_tables: bool,
    pub version_column: String,
    /// Flush a batch at this many row operations (at least 1).
    pub batch_rows: usize,
    pub flush_interval: Duration,
    /// The kind of store and how to reach it.
    pub store: StoreConfig,
}

impl DestinationConfig {
    pub fn kind(&self) -> DestinationKind {
        match self.store {
            StoreConfig::Postgres(_) => DestinationKind::Postgres,
            StoreConfig::ClickHouse(_) => DestinationKind::ClickHouse,
        }
    }
}

/// The settings that differ between kinds of destination.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    Postgres(PostgresStore),
    ClickHouse(ClickHouseStore),
}

/// A tenant-owned PostgreSQL database.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresStore {
    pub conn: ConnInfo,
    /// Where the target tables are.
    pub schema: String,
    pub soft_delete: bool,
}

/// A shared ClickHouse database (HTTP interface).
#[derive(Debug, Clone, PartialEq)]
pub struct ClickHouseStore {
    /// `http(s)://host:port`, without credentials (they are `user` and `password`), as
    /// written; the ClickHouse sink checks and normalizes it.
    pub url: String,
    pub user: String,
    pub password: Option<Secret>,
    /// Where the target tables and the watermark table are.
    pub database: String,
    /// `UInt8`: 1 marks a deleted row (the version column orders the row's versions).
    pub deleted_column: String,
    /// Where FINAL views over the target tables go, without the version and deleted columns.
    pub views_database: Option<String>,
    /// A user restricted by row policies to its tenant and granted SELECT on the views only.
    pub reader_user: Option<String>,
    /// Columns that identify a row's tenant in every target table: they lead `ORDER BY` and
    /// the row policies filter on them.
    pub tenant_columns: Vec<String>,
}

/// `[log]`: the local change log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub sync_interval: Duration,
    pub retention_age: Option<Duration>,
    pub retention_bytes: Option<u64>,
}

/// `[state]`: where checkpoints and migration history live.
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub conn: ConnInfo,
    pub schema: String,
    pub checkpoint_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub conn: ConnInfo,
    pub slot: String,
    pub publication: String,
    /// `None`: all tables.
    pub tables: Option<Vec<QualifiedName>>,
    pub manage: bool,
    pub status_interval: Duration,
    /// Emit a tiny logical message this often so an idle database does not hold WAL.
    pub heartbeat_interval: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    source: RawSource,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    state: RawState,
    tenants: Option<RawTenants>,
    #[serde(default)]
    mappings: Vec<RawMapping>,
    #[serde(default)]
    destinations: Vec<RawDestination>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenants {
    query: String,
    table: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    name: String,
    source: String,
    tenant_key: String,
    target: String,
    key: Option<Vec<String>>,
    filter: Option<String>,
    columns: Entries,
    #[serde(default)]
    types: Entries,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    name: String,
    kind: String,
    url: String,
    /// `"*"` or a list of tenant ids; checked by `validate` so that every mistake is reported.
    tenants: toml::Value,
    mappings: Vec<String>,
    schema: Option<String>,
    create_tables: Option<bool>,
    soft_delete: Option<bool>,
    version_column: Option<String>,
    // ClickHouse only.
    user: Option<String>,
    password: Option<String>,
    database: Option<String>,
    deleted_column: Option<String>,
    views_database: Option<String>,
    reader_user: Option<String>,
    tenant_columns: Option<Vec<String>>,
    /// Signed so that `0` and negative values reach `validate` and get a helpful message.
    batch_rows: Option<i64>,
    flush_interval: Option<String>,
}

/// A TOML table of `name = "text"`, in the order written (toml's `preserve_order` keeps it).
#[derive(Debug, Default)]
struct Entries(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of name = \"text\" entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<String, String>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    dir: Option<PathBuf>,
    segment_mb: Option<u64>,
    sync_interval: Option<String>,
    /// A duration, or "forever".
    retention_age: Option<String>,
    retention_mb: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    url: Option<String>,
    schema: Option<String>,
    checkpoint_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: String,
    slot: Option<String>,
    publication: Option<String>,
    tables: Option<Vec<String>>,
    manage: Option<bool>,
    status_interval: Option<String>,
    heartbeat_interval: Option<String>,
}

/// A problem with one key of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {}", format_problems(.problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn format_problems(problems: &[Problem]) -> String {
    let list: Problems = problems
        .iter()
        .map(|p| format!("{}: {}", p.key, p.message))
        .collect();
    format!("{} problem(s) in the configuration{list}", problems.len())
}

/// The rules of the stages that own parts of the configuration: the mapping language (the
/// transform stage) and each kind of destination's store block (its sink). `config` knows the
/// shape of every key and the rules that span sections; what a mapping expression or a store
/// setting must look like is decided by the stage that uses it, which implements this trait
/// (`cmd::StageRules` wires them), so that config imports no stage and every problem is still
/// reported at once, with its key.
pub trait StageRules {
    /// Why a mapping expression (`filter`: the mapping's row filter) cannot be used, or
    /// `Ok`. `has_tenants`: the configuration has a `[tenants]` section to supply tenant
    /// attributes.
    fn expression(&self, text: &str, filter: bool, has_tenants: bool) -> Result<(), String>;

    /// Reports each problem of a destination's store block: `problem(field, message)` with
    /// the field's path inside the destination (`"url"`, `"tenant_columns[1]"`).
    fn store(&self, store: &StoreSettings<'_>, problem: &mut dyn FnMut(&str, String));
}

/// What a store block's rules see: the block, the destination's version column, and the
/// target columns of each mapping the destination receives.
pub struct StoreSettings<'a> {
    pub store: &'a StoreConfig,
    pub version_column: &'a str,
    pub mappings: &'a [MappedColumns<'a>],
}

/// A mapping's name and target column names, in the order written.
pub struct MappedColumns<'a> {
    pub name: &'a str,
    pub columns: Vec<&'a str>,
}

impl MappedColumns<'_> {
    pub fn maps(&self, column: &str) -> bool {
        self.columns.contains(&column)
    }
}

impl Config {
    pub fn load(path: &Path, rules: &dyn StageRules) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(
            &text,
            &path.display().to_string(),
            &|name| std::env::var(name).ok(),
            rules,
        )
    }

    /// Parses and validates `text`; `origin` names it in errors, `env` resolves `${NAME}`.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
        rules: &dyn StageRules,
    ) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            origin: origin.to_owned(),
            problems,
        };
        let mut value: toml::Value = toml::from_str(text).map_err(|e| {
            invalid(vec![Problem {
                key: "(file)".into(),
                message: e.to_string().trim_end().to_owned(),
            }])
        })?;
        let mut problems = Vec::new();
        interpolate(&mut value, &mut String::new(), env, &mut problems);
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            invalid(vec![Problem {
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: e.into_inner().to_string(),
            }])
        })?;
        raw.validate(rules).map_err(invalid)
    }
}

/// Replaces `${NAME}` in every string value; `$${` stays a literal `${`.
fn interpolate(
    value: &mut toml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        toml::Value::String(s) => match expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => problems.push(Problem {
                key: path.clone(),
                message,
            }),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                interpolate(item, path, env, problems);
                path.truncate(len);
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let len = path.len();
                push_key(path, k);
                interpolate(v, path, env, problems);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Appends `.key` to a key path (no dot at the start), quoting `key` when TOML would need to.
fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        path.push_str(key);
    } else {
        path.push_str(&format!("{key:?}"));
    }
}

fn child(path: &str, key: &str) -> String {
    let mut p = path.to_owned();
    push_key(&mut p, key);
    p
}

fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or("unterminated ${…}: close it with '}' (write $${ for a literal ${)")?;
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "invalid environment variable name {name:?} in ${{…}}"
                ));
            }
            // The variable's value is a secret as often as not: never echo it.
            let value = env(name).ok_or_else(|| {
                format!("environment variable {name} is not set; export it or remove ${{{name}}}")
            })?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl RawConfig {
    fn validate(self, rules: &dyn StageRules) -> Result<Config, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                key: key.to_owned(),
                message,
            })
        };
        let s = self.source;
        let conn = match s.url.parse::<ConnInfo>() {
            Ok(c) => Some(c),
            Err(e) => {
                problem("source.url", e.to_string());
                None
            }
        };
        let slot = s.slot.unwrap_or_else(|| DEFAULT_SLOT.to_owned());
        if let Err(m) = validate_slot_name(&slot) {
            problem("source.slot", m);
        }
        let publication = s
            .publication
            .unwrap_or_else(|| DEFAULT_PUBLICATION.to_owned());
        if publication.is_empty() || publication.len() > crate::sql::MAX_IDENTIFIER_BYTES {
            problem("source.publication", "must be 1 to 63 bytes long".into());
        }
        let listed_tables = s.tables.as_ref().map(Vec::len);
        let tables = s.tables.map(|tables| {
            if tables.is_empty() {
                problem(
                    "source.tables",
                    "is empty; list tables, or omit the key to publish all tables".into(),
                );
            }
            tables
                .iter()
                .enumerate()
                .filter_map(|(i, t)| match QualifiedName::parse(t) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        problem(&format!("source.tables[{i}]"), e.to_string());
                        None
                    }
                })
                .collect::<Vec<_>>()
        });
        let status_interval = duration(
            &mut problem,
            "source.status_interval",
            s.status_interval.as_deref(),
            DEFAULT_STATUS_INTERVAL,
        );
        let heartbeat_interval = s.heartbeat_interval.as_deref().map(|v| {
            duration(
                &mut problem,
                "source.heartbeat_interval",
                Some(v),
                DEFAULT_STATUS_INTERVAL,
            )
        });

        let l = self.log;
        let segment_mb = l.segment_mb.unwrap_or(DEFAULT_SEGMENT_MB);
        if segment_mb == 0 {
            problem("log.segment_mb", "must be at least 1".into());
        }
        // 0 is allowed: fsync at every commit.
        let sync_interval = duration_at_least(
            &mut problem,
            "log.sync_interval",
            l.sync_interval.as_deref(),
            DEFAULT_SYNC_INTERVAL,
            Duration::ZERO,
        );
        let retention_age = match l.retention_age.as_deref() {
            Some("forever") => None,
            other => Some(duration(
                &mut problem,
                "log.retention_age",
                other,
                DEFAULT_RETENTION_AGE,
            )),
        };
        let log = LogConfig {
            dir: l.dir.unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_DIR)),
            segment_bytes: segment_mb.saturating_mul(1024 * 1024),
            sync_interval,
            retention_age,
            retention_bytes: l.retention_mb.map(|mb| mb.saturating_mul(1024 * 1024)),
        };

        let st = self.state;
        let state_conn = match &st.url {
            None => conn.clone(),
            Some(url) => match url.parse::<ConnInfo>() {
                Ok(c) => Some(c),
                Err(e) => {
                    problem("state.url", e.to_string());
                    None
                }
            },
        };
        let schema = st.schema.unwrap_or_else(|| DEFAULT_STATE_SCHEMA.to_owned());
        if schema.is_empty() || schema.len() > crate::sql::MAX_IDENTIFIER_BYTES {
            problem("state.schema", "must be 1 to 63 bytes long".into());
        }
        if let Some(tables) = &tables {
            for (i, t) in tables.iter().enumerate() {
                if t.schema == schema {
                    problem(
                        &format!("source.tables[{i}]"),
                        format!("{t} is in the state schema {schema}, which pgfanout writes itself and never streams; remove it"),
                    );
                }
            }
        }
        let checkpoint_interval = duration(
            &mut problem,
            "state.checkpoint_interval",
            st.checkpoint_interval.as_deref(),
            DEFAULT_CHECKPOINT_INTERVAL,
        );

        let streamed = Streamed {
            // When some entry of source.tables is itself wrong, checking against the others
            // would only pile consequential problems on top.
            published: tables.as_deref().filter(|t| Some(t.len()) == listed_tables),
            state_schema: &schema,
        };
        let has_tenants = self.tenants.is_some();
        // Outer `None`: the section has problems; inner `None`: there is no section.
        let tenants = match self.tenants {
            None => Some(None),
            Some(t) => validate_tenants(&mut problem, t, &streamed).map(Some),
        };
        let mappings =
            validate_mappings(&mut problem, rules, &self.mappings, has_tenants, &streamed);
        let destinations =
            validate_destinations(&mut problem, rules, self.destinations, &self.mappings);
        let mappings: Option<Vec<_>> = mappings.into_iter().collect();
        let destinations: Option<Vec<_>> = destinations.into_iter().collect();

        match (conn, state_conn, tenants, mappings, destinations) {
            (Some(conn), Some(state_conn), Some(tenants), Some(mappings), Some(destinations))
                if problems.is_empty() =>
            {
                Ok(Config {
                    source: SourceConfig {
                        conn,
                        slot,
                        publication,
                        tables,
                        manage: s.manage.unwrap_or(DEFAULT_MANAGE),
                        status_interval,
                        heartbeat_interval,
                    },
                    log,
                    state: StateConfig {
                        conn: state_conn,
                        schema,
                        checkpoint_interval,
                    },
                    tenants,
                    mappings,
                    destinations,
                })
            }
            _ => Err(problems),
        }
    }
}

/// What the source streams, for checking the tables that mappings and `[tenants]` read.
struct Streamed<'a> {
    /// `None`: every table (or `source.tables` has problems of its own).
    published: Option<&'a [QualifiedName]>,
    state_schema: &'a str,
}

impl Streamed<'_> {
    fn check(&self, problem: &mut impl FnMut(&str, String), key: &str, table: &QualifiedName) {
        if table.schema == self.state_schema {
            problem(
                key,
                format!(
                    "{table} is in the state schema {}, which pgfanout writes itself and never streams; use a table of another schema",
                    self.state_schema
                ),
            );
        } else if let Some(published) = self.published {
            if !published.contains(table) {
                problem(
                    key,
                    format!("{table} is not listed in source.tables, so its changes are not published; add it to source.tables"),
                );
            }
        }
    }
}

fn validate_tenants(
    problem: &mut impl FnMut(&str, String),
    raw: RawTenants,
    streamed: &Streamed<'_>,
) -> Option<TenantsConfig> {
    if raw.query.trim().is_empty() {
        problem(
            "tenants.query",
            "is empty; write the SELECT that returns one row per tenant: its id, then its attributes"
                .into(),
        );
    }
    let table = match raw.table.as_deref().map(QualifiedName::parse) {
        None => None,
        Some(Ok(t)) => {
            streamed.check(problem, "tenants.table", &t);
            Some(t)
        }
        Some(Err(e)) => {
            problem("tenants.table", e.to_string());
            return None;
        }
    };
    Some(TenantsConfig {
        query: raw.query,
        table,
    })
}

/// One entry per mapping, `None` where it has problems (names and targets are still checked
/// so that destinations can refer to every mapping).
fn validate_mappings(
    problem: &mut impl FnMut(&str, String),
    rules: &dyn StageRules,
    raw: &[RawMapping],
    has_tenants: bool,
    streamed: &Streamed<'_>,
) -> Vec<Option<MappingConfig>> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let at = |field: &str| format!("mappings[{i}].{field}");
        let mut ok = true;
        if m.name.is_empty() {
            problem(
                &at("name"),
                "is empty; name the mapping so that destinations can list it".into(),
            );
        } else if let Some(first) = raw[..i].iter().position(|o| o.name == m.name) {
            problem(
                &at("name"),
                format!(
                    "{:?} is also the name of mappings[{first}]; give each mapping its own name",
                    m.name
                ),
            );
        }
        let source = match QualifiedName::parse(&m.source) {
            Ok(t) => {
                streamed.check(problem, &at("source"), &t);
                Some(t)
            }
            Err(e) => {
                problem(&at("source"), e.to_string());
                None
            }
        };
        identifier(
            problem,
            &at("tenant_key"),
            "tenant key column name",
            &m.tenant_key,
        );
        identifier(problem, &at("target"), "target table name", &m.target);

        let columns_key = at("columns");
        if m.columns.0.is_empty() {
            problem(
                &columns_key,
                "is empty; map at least one target column, such as id = \"id\"".into(),
            );
        }
        let mut columns = Vec::with_capacity(m.columns.0.len());
        for (name, text) in &m.columns.0 {
            let key = child(&columns_key, name);
            identifier(problem, &key, "target column name", name);
            match rules.expression(text, false, has_tenants) {
                Ok(()) => columns.push((name.clone(), text.clone())),
                Err(message) => {
                    problem(&key, message);
                    ok = false;
                }
            }
        }
        let is_mapped = |c: &str| m.columns.0.iter().any(|(name, _)| name == c);

        let filter = match &m.filter {
            None => None,
            Some(text) => match rules.expression(text, true, has_tenants) {
                Ok(()) => Some(text.clone()),
                Err(message) => {
                    problem(&at("filter"), message);
                    ok = false;
                    None
                }
            },
        };

        if let Some(key) = &m.key {
            if key.is_empty() {
                problem(
                    &at("key"),
                    "is empty; list the target key columns, or omit key to use the source table's primary key"
                        .into(),
                );
            }
            for (j, k) in key.iter().enumerate() {
                let at_k = format!("mappings[{i}].key[{j}]");
                if key[..j].contains(k) {
                    problem(
                        &at_k,
                        format!("{k:?} is listed twice; list each key column once"),
                    );
                } else if !is_mapped(k) {
                    problem(
                        &at_k,
                        format!("{k:?} is not a target column; key columns must be listed in mappings[{i}].columns"),
                    );
                }
            }
        }

        let mut types = Vec::with_capacity(m.types.0.len());
        for (name, ty) in &m.types.0 {
            let key = child(&at("types"), name);
            if !is_mapped(name) {
                problem(
                    &key,
                    format!("{name:?} is not a target column; types apply only to columns listed in mappings[{i}].columns"),
                );
            }
            if let Err(m) = check_type_name(ty) {
                problem(&key, m);
            }
            types.push((name.clone(), ColumnType::Named(ty.trim().to_owned())));
        }

        out.push(match source {
            Some(source) if ok => Some(MappingConfig {
                name: m.name.clone(),
                source,
                tenant_key: m.tenant_key.clone(),
                target: m.target.clone(),
                key: m.key.clone(),
                filter,
                columns,
                types,
            }),
            _ => None,
        });
    }
    out
}

fn validate_destinations(
    problem: &mut impl FnMut(&str, String),
    rules: &dyn StageRules,
    raw: Vec<RawDestination>,
    mappings: &[RawMapping],
) -> Vec<Option<DestinationConfig>> {
    let mut names: Vec<String> = Vec::with_capacity(raw.len());
    let mut out = Vec::with_capacity(raw.len());
    for (i, d) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("destinations[{i}].{field}");
        identifier(problem, &at("name"), "destination name", &d.name);
        if let Some(first) = names.iter().position(|n| !n.is_empty() && *n == d.name) {
            problem(
                &at("name"),
                format!(
                    "{:?} is also the name of destinations[{first}]; give each destination its own name",
                    d.name
                ),
            );
        }
        names.push(d.name.clone());

        let kind = match d.kind.as_str() {
            "postgres" => Some(DestinationKind::Postgres),
            "clickhouse" => Some(DestinationKind::ClickHouse),
            other => {
                problem(
                    &at("kind"),
                    format!(
                        "unknown destination kind {other:?}; write kind = \"postgres\" or kind = \"clickhouse\""
                    ),
                );
                None
            }
        };
        let tenants = validate_tenant_list(problem, &at("tenants"), &d.tenants);

        let mut ids: Vec<usize> = Vec::with_capacity(d.mappings.len());
        let mut mappings_ok = true;
        if d.mappings.is_empty() {
            problem(
                &at("mappings"),
                "is empty; list the names of the [[mappings]] this destination receives".into(),
            );
        }
        for (j, name) in d.mappings.iter().enumerate() {
            let key = format!("destinations[{i}].mappings[{j}]");
            if d.mappings[..j].contains(name) {
                problem(
                    &key,
                    format!("{name:?} is listed twice; list each mapping once"),
                );
                continue;
            }
            let Some(id) = mappings.iter().position(|m| m.name == *name) else {
                let mut known: Vec<String> = Vec::new();
                for m in mappings {
                    let quoted = format!("{:?}", m.name);
                    if !known.contains(&quoted) {
                        known.push(quoted);
                    }
                }
                problem(
                    &key,
                    if known.is_empty() {
                        format!("there is no [[mappings]] entry named {name:?}; define one")
                    } else {
                        format!(
                            "there is no [[mappings]] entry named {name:?}; the mappings are {}",
                            known.join(", ")
                        )
                    },
                );
                mappings_ok = false;
                continue;
            };
            let target = &mappings[id].target;
            if let Some(&other) = ids.iter().find(|&&o| mappings[o].target == *target) {
                problem(
                    &key,
                    format!(
                        "mapping {name:?} writes target table {target:?}, as mapping {:?} listed before it does; a destination holds one table per target, so change one target or send the mapping to another destination",
                        mappings[other].name
                    ),
                );
            }
            ids.push(id);
        }

        let version_column = d
            .version_column
            .clone()
            .unwrap_or_else(|| DEFAULT_VERSION_COLUMN.to_owned());
        identifier(
            problem,
            &at("version_column"),
            "version column name",
            &version_column,
        );
        let listed: Vec<&RawMapping> = ids.iter().map(|&id| &mappings[id]).collect();
        let store = match kind {
            Some(DestinationKind::Postgres) => {
                postgres_store(problem, &at, &d).map(StoreConfig::Postgres)
            }
            Some(DestinationKind::ClickHouse) => {
                clickhouse_store(problem, &at, &d).map(StoreConfig::ClickHouse)
            }
            None => None,
        };
        if let Some(store) = &store {
            let mapped: Vec<MappedColumns<'_>> = listed
                .iter()
                .map(|m| MappedColumns {
                    name: &m.name,
                    columns: m.columns.0.iter().map(|(n, _)| n.as_str()).collect(),
                })
                .collect();
            let settings = StoreSettings {
                store,
                version_column: &version_column,
                mappings: &mapped,
            };
            rules.store(&settings, &mut |field, message| {
                problem(&at(field), message)
            });
        }
        for m in &listed {
            if m.columns.0.iter().any(|(name, _)| *name == version_column) {
                problem(
                    &at("version_column"),
                    format!(
                        "{version_column:?} is also a target column of mapping {:?}; choose another version_column or rename the mapped column",
                        m.name
                    ),
                );
            }
        }

        let clickhouse = kind == Some(DestinationKind::ClickHouse);
        let batch_rows = match d.batch_rows {
            None if clickhouse => DEFAULT_CLICKHOUSE_BATCH_ROWS,
            None => DEFAULT_BATCH_ROWS,
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
            Some(_) => {
                problem(&at("batch_rows"), "must be at least 1".into());
                DEFAULT_BATCH_ROWS
            }
        };
        let flush_interval = duration(
            problem,
            &at("flush_interval"),
            d.flush_interval.as_deref(),
            if clickhouse {
                DEFAULT_CLICKHOUSE_FLUSH_INTERVAL
            } else {
                DEFAULT_FLUSH_INTERVAL
            },
        );

        out.push(match (store, tenants) {
            (Some(store), Some(tenants)) if mappings_ok => Some(DestinationConfig {
                name: d.name,
                tenants,
                mappings: ids,
                create_tables: d.create_tables.unwrap_or(true),
                version_column,
                batch_rows,
                flush_interval,
                store,
            }),
            _ => None,
        });
    }
    out
}

/// Reports each key set on a destination of a kind that does not use it.
fn not_for_kind(
    problem: &mut impl FnMut(&str, String),
    at: &dyn Fn(&str) -> String,
    kind: DestinationKind,
    keys: &[(&str, bool, &str)],
) {
    for (key, set, instead) in keys {
        if *set {
            problem(
                &at(key),
                format!("does not apply to {kind} destinations{instead}; remove it"),
            );
        }
    }
}

fn postgres_store(
    problem: &mut impl FnMut(&str, String),
    at: &dyn Fn(&str) -> String,
    d: &RawDestination,
) -> Option<PostgresStore> {
    not_for_kind(
        problem,
        at,
        DestinationKind::Postgres,
        &[
            ("user", d.user.is_some(), " (put the user in url)"),
            (
                "password",
                d.password.is_some(),
                " (put the password in url)",
            ),
            (
                "database",
                d.database.is_some(),
                " (put the database in url)",
            ),
            (
                "deleted_column",
                d.deleted_column.is_some(),
                " (see soft_delete)",
            ),
            ("views_database", d.views_database.is_some(), ""),
            ("reader_user", d.reader_user.is_some(), ""),
            ("tenant_columns", d.tenant_columns.is_some(), ""),
        ],
    );
    let conn = match d.url.parse::<ConnInfo>() {
        Ok(c) => Some(c),
        Err(e) => {
            problem(&at("url"), e.to_string());
            None
        }
    };
    Some(PostgresStore {
        conn: conn?,
        schema: d
            .schema
            .clone()
            .unwrap_or_else(|| DEFAULT_DESTINATION_SCHEMA.to_owned()),
        soft_delete: d.soft_delete.unwrap_or(false),
    })
}

fn clickhouse_store(
    problem: &mut impl FnMut(&str, String),
    at: &dyn Fn(&str) -> String,
    d: &RawDestination,
) -> Option<ClickHouseStore> {
    not_for_kind(
        problem,
        at,
        DestinationKind::ClickHouse,
        &[
            ("schema", d.schema.is_some(), " (use database)"),
            (
                "soft_delete",
                d.soft_delete.is_some(),
                " (deletes always write a row with the deleted_column flag)",
            ),
        ],
    );
    Some(ClickHouseStore {
        url: d.url.clone(),
        user: d.user.clone().unwrap_or_else(|| "default".to_owned()),
        password: d.password.clone().map(Secret::new),
        database: d
            .database
            .clone()
            .unwrap_or_else(|| DEFAULT_CLICKHOUSE_DATABASE.to_owned()),
        deleted_column: d
            .deleted_column
            .clone()
            .unwrap_or_else(|| crate::target::DEFAULT_DELETED_COLUMN.to_owned()),
        views_database: d.views_database.clone(),
        reader_user: d.reader_user.clone(),
        tenant_columns: d.tenant_columns.clone().unwrap_or_default(),
    })
}

/// `tenants = "*"` or a non-empty list of tenant ids.
fn validate_tenant_list(
    problem: &mut impl FnMut(&str, String),
    key: &str,
    value: &toml::Value,
) -> Option<Tenants> {
    const HOW: &str =
        "write tenants = \"*\" for every tenant, or list tenant ids: tenants = [\"t1\", \"t2\"]";
    match value {
        toml::Value::String(s) if s == "*" => Some(Tenants::All),
        toml::Value::String(s) => {
            problem(
                key,
                format!(
                    "{s:?} is neither \"*\" nor a list; {HOW} (one tenant is a list too: [{s:?}])"
                ),
            );
            None
        }
        toml::Value::Array(items) => {
            if items.is_empty() {
                problem(key, format!("is empty; {HOW}"));
                return None;
            }
            let mut tenants = std::collections::HashSet::with_capacity(items.len());
            let mut ok = true;
            for (j, item) in items.iter().enumerate() {
                let key = format!("{key}[{j}]");
                match item {
                    toml::Value::String(s) if s == "*" => {
                        problem(
                            &key,
                            "\"*\" in a list is not a wildcard; write tenants = \"*\", without brackets, for every tenant".into(),
                        );
                        ok = false;
                    }
                    toml::Value::String(s) if s.trim().is_empty() => {
                        problem(&key, "is empty; write a tenant id".into());
                        ok = false;
                    }
                    toml::Value::String(s) => {
                        tenants.insert(s.clone());
                    }
                    other => {
                        problem(
                            &key,
                            format!(
                                "is of type {}; write tenant ids as strings, such as \"42\"",
                                other.type_str()
                            ),
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(Tenants::Some(tenants))
        }
        other => {
            problem(key, format!("is of type {}; {HOW}", other.type_str()));
            None
        }
    }
}

/// A PostgreSQL identifier ([`crate::sql::identifier_problem`]).
fn identifier(problem: &mut impl FnMut(&str, String), key: &str, what: &str, name: &str) {
    if let Some(reason) = crate::sql::identifier_problem(name) {
        problem(key, format!("the {what} {reason}"));
    }
}

/// A minimal screen of a configured SQL type name, so that the key path comes with the
/// problem. The PostgreSQL writer checks the name fully before splicing it into DDL (its
/// checker, `check_type_name` in src/sink/postgres.rs, is private); this rejects what could
/// end a statement or start a comment.
fn check_type_name(sql: &str) -> Result<(), String> {
    if sql.trim().is_empty() {
        return Err(
            "is empty; write a SQL type name such as text, varchar(200) or numeric(12,2)".into(),
        );
    }
    for bad in [";", "--", "/*", "\0"] {
        if sql.contains(bad) {
            return Err(format!(
                "{sql:?} contains {bad:?}; write a single type name such as varchar(200), with no statement separators or comments"
            ));
        }
    }
    Ok(())
}

/// Below this, periodic work (status updates, checkpoints, heartbeats) would only add load.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// A duration key (`"10s"`, `"500ms"`, `"7days"`), at least [`MIN_PERIOD`]; `default` when
/// absent.
fn duration(
    problem: &mut impl FnMut(&str, String),
    key: &str,
    value: Option<&str>,
    default: Duration,
) -> Duration {
    duration_at_least(problem, key, value, default, MIN_PERIOD)
}

fn duration_at_least(
    problem: &mut impl FnMut(&str, String),
    key: &str,
    value: Option<&str>,
    default: Duration,
    min: Duration,
) -> Duration {
    match value.map(humantime::parse_duration) {
        None => default,
        Some(Ok(d)) if d >= min => d,
        Some(Ok(_)) => {
            problem(
                key,
                format!("must be at least {}", humantime::format_duration(min)),
            );
            default
        }
        Some(Err(e)) => {
            problem(
                key,
                format!("{e}; write a duration such as \"10s\" or \"500ms\""),
            );
            default
        }
    }
}

/// PostgreSQL accepts lower-case letters, digits and underscores, at most 63 bytes.
pub fn validate_slot_name(slot: &str) -> Result<(), String> {
    if slot.is_empty() || slot.len() > 63 {
        return Err("must be 1 to 63 characters long".into());
    }
    if !slot
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "{slot:?} is not a valid replication slot name; use only lower-case letters, digits and underscores"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.state.conn, c.source.conn);
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
    }

    #[test]
    fn dollar_escapes_and_secrets_stay_hidden() {
        assert_eq!(expand("a$${b}$c", &env).unwrap(), "a${b}$c");
        let c = parse("[source]\nurl = \"postgres://u:${PGPASS}@h/db\"").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
