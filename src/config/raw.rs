//! The configuration file as written: serde's view of the TOML (unknown keys refused), and
//! `${ENV}` interpolation with key paths for its errors.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::Problem;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) source: RawSource,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) state: RawState,
    pub(super) tenants: Option<RawTenants>,
    #[serde(default)]
    pub(super) mappings: Vec<RawMapping>,
    #[serde(default)]
    pub(super) destinations: Vec<RawDestination>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenants {
    pub(super) query: String,
    pub(super) table: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMapping {
    pub(super) name: String,
    pub(super) source: String,
    pub(super) tenant_key: String,
    pub(super) target: String,
    pub(super) key: Option<Vec<String>>,
    pub(super) filter: Option<String>,
    pub(super) columns: Entries,
    #[serde(default)]
    pub(super) types: Entries,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) url: String,
    /// `"*"` or a list of tenant ids; checked by `validate` so that every mistake is reported.
    pub(super) tenants: toml::Value,
    pub(super) mappings: Vec<String>,
    pub(super) schema: Option<String>,
    pub(super) create_tables: Option<bool>,
    pub(super) soft_delete: Option<bool>,
    pub(super) version_column: Option<String>,
    // ClickHouse only.
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) database: Option<String>,
    pub(super) deleted_column: Option<String>,
    pub(super) views_database: Option<String>,
    pub(super) reader_user: Option<String>,
    pub(super) tenant_columns: Option<Vec<String>>,
    /// Signed so that `0` and negative values reach `validate` and get a helpful message.
    pub(super) batch_rows: Option<i64>,
    pub(super) flush_interval: Option<String>,
}

/// A TOML table of `name = "text"`, in the order written (toml's `preserve_order` keeps it).
#[derive(Debug, Default)]
pub(super) struct Entries(pub(super) Vec<(String, String)>);

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
pub(super) struct RawLog {
    pub(super) dir: Option<PathBuf>,
    pub(super) segment_mb: Option<u64>,
    pub(super) sync_interval: Option<String>,
    /// A duration, or "forever".
    pub(super) retention_age: Option<String>,
    pub(super) retention_mb: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) url: Option<String>,
    pub(super) schema: Option<String>,
    pub(super) checkpoint_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) url: String,
    pub(super) slot: Option<String>,
    pub(super) publication: Option<String>,
    pub(super) tables: Option<Vec<String>>,
    pub(super) manage: Option<bool>,
    pub(super) status_interval: Option<String>,
    pub(super) heartbeat_interval: Option<String>,
}

/// Replaces `${NAME}` in every string value; `$${` stays a literal `${`.
pub(super) fn interpolate(
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
pub(super) fn push_key(path: &mut String, key: &str) {
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

pub(super) fn child(path: &str, key: &str) -> String {
    let mut p = path.to_owned();
    push_key(&mut p, key);
    p
}

pub(super) fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
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
