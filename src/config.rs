//! Configuration: one TOML file, `${ENV}` interpolation for secrets, and a `validate` step that
//! turns the raw file into checked types and reports every problem with its key path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::source::conninfo::ConnInfo;
use crate::sql::QualifiedName;

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

/// A value that must never reach logs: `Debug` and `Display` print `****`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: SourceConfig,
    pub log: LogConfig,
    pub state: StateConfig,
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
    #[error("cannot read config file {path}: {source}")]
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
    let mut s = format!("{} problem(s) in the configuration", problems.len());
    for p in problems {
        s.push_str(&format!("\n  {}: {}", p.key, p.message));
    }
    s
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Parses and validates `text`; `origin` names it in errors, `env` resolves `${NAME}`.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
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
        raw.validate().map_err(invalid)
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
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                interpolate(v, path, env, problems);
                path.truncate(len);
            }
        }
        _ => {}
    }
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
    fn validate(self) -> Result<Config, Vec<Problem>> {
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
        if publication.is_empty() || publication.len() > 63 {
            problem("source.publication", "must be 1 to 63 bytes long".into());
        }
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
        if schema.is_empty() || schema.len() > 63 {
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
        match (conn, state_conn) {
            (Some(conn), Some(state_conn)) if problems.is_empty() => Ok(Config {
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
            }),
            _ => Err(problems),
        }
    }
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

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", &env)
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

    #[test]
    fn dollar_escapes_and_secrets_stay_hidden() {
        assert_eq!(expand("a$${b}$c", &env).unwrap(), "a${b}$c");
        let c = parse("[source]\nurl = \"postgres://u:${PGPASS}@h/db\"").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
