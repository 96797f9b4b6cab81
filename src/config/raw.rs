//! The configuration file as written: serde's view of the TOML (unknown keys refused),
//! `${ENV}` interpolation with key paths for its errors, and the file's syntax and type errors
//! told without the values they concern (a password may be the value in question).

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
    #[serde(default)]
    pub(super) snapshot: RawSnapshot,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) fanout: RawFanout,
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
    pub(super) columns: Columns,
    pub(super) exclude: Option<Vec<String>>,
    pub(super) on_drop_column: Option<String>,
    #[serde(default)]
    pub(super) types: Entries,
}

/// `columns`: a table of `target = "expression"`, or `"*"` for all of the source's columns
/// (any other text is kept to be reported with its key by `validate`).
#[derive(Debug)]
pub(super) enum Columns {
    Listed(Entries),
    All(String),
}

impl Columns {
    /// The listed entries; none for `"*"`.
    pub(super) fn listed(&self) -> &[(String, String)] {
        match self {
            Columns::Listed(e) => &e.0,
            Columns::All(_) => &[],
        }
    }
}

impl<'de> Deserialize<'de> for Columns {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Columns;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"*\" or a table of name = \"text\" entries")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Columns, E> {
                Ok(Columns::All(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Columns, A::Error> {
                Entries::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Columns::Listed)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
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
    pub(super) apply_connections: Option<i64>,
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
pub(super) struct RawSnapshot {
    pub(super) mode: Option<String>,
    pub(super) auto_resync: Option<bool>,
    pub(super) parallelism: Option<u64>,
    pub(super) chunk_rows: Option<u64>,
    pub(super) chunk_mb: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFanout {
    /// Signed so that `0` and negative values reach `validate` and get a helpful message.
    pub(super) max_connections: Option<i64>,
    pub(super) idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// An IP address and port, or "off".
    pub(super) listen: Option<String>,
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
    /// `"auto"`, 1 or 2 (an integer or its text).
    pub(super) protocol: Option<toml::Value>,
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

/// A TOML syntax error as a problem that never quotes a value. The toml crate's own text
/// shows the offending line whole, and that line may hold a password (`password = "s3cr3t`
/// unterminated, a URL with its credentials): this keeps its message (grammar words and key
/// names only), its line and column, and shows the line only as far as the key — the line is
/// shown at all only when a statement starts there, which the TOML parser decides on the text
/// before it (otherwise it is the inside of a multi-line string or array).
pub(super) fn syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    let message = e.message().trim_end().replace('\n', "; ");
    let Some(span) = e.span() else {
        return Problem {
            key: "(file)".into(),
            message,
        };
    };
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_no = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let line = text[line_start..line_end].trim_end_matches('\r');
    let statement_starts = toml::from_str::<toml::Value>(&text[..line_start]).is_ok();
    let shown = if statement_starts {
        key_part(line)
    } else {
        "…".to_owned()
    };
    Problem {
        key: "(file)".into(),
        message: format!(
            "TOML syntax error at line {line_no}, column {column}: {message}\n{line_no} | {shown}"
        ),
    }
}

/// What of a line that starts a statement can be shown: a table header, or a key and `=`;
/// the value and anything else becomes `…`.
fn key_part(line: &str) -> String {
    let indent = line.len() - line.trim_start().len();
    let body = &line[indent..];
    let header_end = if body.starts_with("[[") {
        body.find("]]").map(|i| i + 2)
    } else if body.starts_with('[') {
        body.find(']').map(|i| i + 1)
    } else {
        body.find('=').map(|i| i + 1)
    };
    match header_end {
        Some(end) if body[end..].trim().is_empty() || body[end..].trim_start().starts_with('#') => {
            line.trim_end().to_owned()
        }
        Some(end) => format!("{}{} …", &line[..indent], body[..end].trim_end()),
        None => "…".to_owned(),
    }
}

/// serde's message for a value of the wrong type or an invalid value, without the value
/// (`invalid type: string "s3cr3t", expected a boolean` becomes `invalid type: a string,
/// expected a boolean`): a password written where a number or another type belongs, or a
/// number where a password belongs, must not come back in the error.
pub(super) fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some((what, after)) = unexpected(rest) {
                return format!("{prefix}{what}{after}");
            }
        }
    }
    message.to_owned()
}

/// Splits serde's `Unexpected` (as it displays) off the front of `text`: what kind of value it
/// was, and the text after it.
fn unexpected(text: &str) -> Option<(&'static str, &str)> {
    if let Some(quoted) = text.strip_prefix("string \"") {
        // Debug-escaped: the value ends at the first quote not preceded by a backslash.
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => return Some(("a string", &quoted[i + 1..])),
                _ => {}
            }
        }
        return Some(("a string", ""));
    }
    for (prefix, what) in [
        ("integer `", "an integer"),
        ("floating point `", "a floating point number"),
        ("boolean `", "a boolean"),
        ("character `", "a character"),
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            // The value itself may be a backtick (a character): skip its first character.
            let mut chars = rest.char_indices();
            chars.next();
            let end = chars
                .find(|&(_, c)| c == '`')
                .map_or(rest.len(), |(i, _)| i + 1);
            return Some((what, &rest[end.min(rest.len())..]));
        }
    }
    None
}
