//! From the file as written to checked types: every problem, with its key path, at once.

use std::path::PathBuf;
use std::time::Duration;

use crate::pgconn::{ConnInfo, Secret, TargetSessionAttrs};
use crate::sql::QualifiedName;
use crate::target::{ColumnType, DEFAULT_VERSION_COLUMN};

use super::raw::{
    child, Columns, Entries, RawAdmin, RawConfig, RawDestination, RawFanout, RawMapping,
    RawSnapshot, RawTenants,
};
use super::{
    AdminConfig, ClickHouseStore, Config, DestinationConfig, DestinationKind, FanoutConfig,
    LogConfig, MappedColumns, MappingConfig, OnDropColumn, PostgresStore, Problem, Protocol,
    SnapshotConfig, SnapshotMode, SourceConfig, StageRules, StateConfig, StoreConfig,
    StoreSettings, Tenants, TenantsConfig, ADMIN_OFF, DEFAULT_ADMIN_LISTEN,
    DEFAULT_APPLY_CONNECTIONS, DEFAULT_BATCH_ROWS, DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_CLICKHOUSE_BATCH_ROWS, DEFAULT_CLICKHOUSE_DATABASE, DEFAULT_CLICKHOUSE_FLUSH_INTERVAL,
    DEFAULT_DESTINATION_SCHEMA, DEFAULT_FLUSH_INTERVAL, DEFAULT_LOG_DIR, DEFAULT_MANAGE,
    DEFAULT_PUBLICATION, DEFAULT_RETENTION_AGE, DEFAULT_SEGMENT_MB, DEFAULT_SLOT,
    DEFAULT_SNAPSHOT_CHUNK_MB, DEFAULT_STATE_SCHEMA, DEFAULT_STATUS_INTERVAL,
    DEFAULT_SYNC_INTERVAL, MAX_APPLY_CONNECTIONS, MAX_FANOUT_CONNECTIONS,
};

impl RawConfig {
    pub(super) fn validate(self, rules: &dyn StageRules) -> Result<Config, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                key: key.to_owned(),
                message,
            })
        };
        let s = self.source;
        let conn = conn_info(&mut problem, "source.url", &s.url, "source");
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
        let protocol = match &s.protocol {
            None => Protocol::Auto,
            Some(toml::Value::String(v)) if v == "auto" => Protocol::Auto,
            Some(toml::Value::Integer(1)) => Protocol::V1,
            Some(toml::Value::Integer(2)) => Protocol::V2,
            Some(toml::Value::String(v)) if v == "1" => Protocol::V1,
            Some(toml::Value::String(v)) if v == "2" => Protocol::V2,
            Some(_) => {
                problem(
                    "source.protocol",
                    "must be \"auto\" (the default: 2 on PostgreSQL 14 and later, else 1), 1 or 2"
                        .into(),
                );
                Protocol::Auto
            }
        };
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

        let snapshot = validate_snapshot(&mut problem, self.snapshot);
        let admin = validate_admin(&mut problem, self.admin);
        let fanout = validate_fanout(&mut problem, self.fanout);

        let st = self.state;
        let state_conn = match &st.url {
            None => conn.clone().map(|c| c.labelled("state", "source.url")),
            Some(url) => conn_info(&mut problem, "state.url", url, "state"),
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
        // A destination's writer connections come out of the shared cap together.
        for (i, d) in destinations.iter().enumerate() {
            if let Some(d) = d
                .as_ref()
                .filter(|d| d.connections() > fanout.max_connections)
            {
                problem(
                    &format!("destinations[{i}].apply_connections"),
                    format!(
                        "is {}, more than fanout.max_connections ({}), the destination connections open at once; lower it or raise fanout.max_connections",
                        d.connections(),
                        fanout.max_connections
                    ),
                );
            }
        }
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
                        protocol,
                    },
                    log,
                    state: StateConfig {
                        conn: state_conn,
                        schema,
                        checkpoint_interval,
                    },
                    snapshot,
                    admin,
                    fanout,
                    tenants,
                    mappings,
                    destinations,
                })
            }
            _ => Err(problems),
        }
    }
}

fn validate_admin(problem: &mut dyn FnMut(&str, String), raw: RawAdmin) -> AdminConfig {
    let listen = match raw.listen.as_deref() {
        None => Some(DEFAULT_ADMIN_LISTEN),
        Some(ADMIN_OFF) => None,
        Some(text) => match text.parse::<std::net::SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problem(
                    "admin.listen",
                    format!("expected an IP address and port such as \"{DEFAULT_ADMIN_LISTEN}\" or \"[::1]:9187\" (a host name is not resolved), or \"{ADMIN_OFF}\" to serve no endpoint"),
                );
                None
            }
        },
    };
    AdminConfig { listen }
}

fn validate_fanout(problem: &mut impl FnMut(&str, String), raw: RawFanout) -> FanoutConfig {
    let d = FanoutConfig::default();
    let max_connections = match raw.max_connections {
        None => d.max_connections,
        Some(n) if n >= 1 && n as u64 <= MAX_FANOUT_CONNECTIONS => n as usize,
        Some(_) => {
            problem(
                "fanout.max_connections",
                format!("must be between 1 and {MAX_FANOUT_CONNECTIONS}: destination connections open at once, across all destinations (keep it under each destination server's max_connections)"),
            );
            d.max_connections
        }
    };
    let idle_timeout = duration_at_least(
        problem,
        "fanout.idle_timeout",
        raw.idle_timeout.as_deref(),
        d.idle_timeout,
        Duration::from_millis(1),
    );
    FanoutConfig {
        max_connections,
        idle_timeout,
    }
}

fn validate_snapshot(problem: &mut dyn FnMut(&str, String), raw: RawSnapshot) -> SnapshotConfig {
    let d = SnapshotConfig::default();
    let mode = match raw.mode.as_deref() {
        None | Some("initial") => SnapshotMode::Initial,
        Some("never") => SnapshotMode::Never,
        Some(other) => {
            problem(
                "snapshot.mode",
                format!("unknown mode {other:?}; use \"initial\" (copy what exists on first start and whatever a destination is given later) or \"never\""),
            );
            SnapshotMode::Initial
        }
    };
    let mut positive = |key: &str, v: Option<u64>, default: usize, max: u64| match v {
        None => default,
        Some(n) if n >= 1 && n <= max => n as usize,
        Some(_) => {
            problem(key, format!("must be between 1 and {max}"));
            default
        }
    };
    let parallelism = positive("snapshot.parallelism", raw.parallelism, d.parallelism, 64);
    let chunk_rows = positive(
        "snapshot.chunk_rows",
        raw.chunk_rows,
        d.chunk_rows,
        1_000_000,
    );
    let chunk_mb = positive(
        "snapshot.chunk_mb",
        raw.chunk_mb,
        DEFAULT_SNAPSHOT_CHUNK_MB as usize,
        1024,
    );
    SnapshotConfig {
        mode,
        auto_resync: raw.auto_resync.unwrap_or(d.auto_resync),
        parallelism,
        chunk_rows,
        chunk_bytes: chunk_mb * 1024 * 1024,
    }
}

/// What the source streams, for checking the tables that mappings and `[tenants]` read.
pub(super) struct Streamed<'a> {
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

pub(super) fn validate_tenants(
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
pub(super) fn validate_mappings(
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
        let empty = Entries::default();
        let (listed, all_columns) = match &m.columns {
            Columns::Listed(entries) => (entries, false),
            Columns::All(text) if text == "*" => (&empty, true),
            Columns::All(_) => {
                problem(
                    &columns_key,
                    "must be \"*\" (all of the source's columns) or a table of target column = \"expression\"".into(),
                );
                ok = false;
                (&empty, false)
            }
        };
        if listed.0.is_empty() && matches!(m.columns, Columns::Listed(_)) {
            problem(
                &columns_key,
                "is empty; map at least one target column, such as id = \"id\", or write columns = \"*\"".into(),
            );
        }
        let mut columns = Vec::with_capacity(listed.0.len());
        for (name, text) in &listed.0 {
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
        let exclude = m.exclude.clone().unwrap_or_default();
        if m.exclude.is_some() && !all_columns {
            problem(
                &at("exclude"),
                "applies only to columns = \"*\"; leave the column out of mappings.columns instead"
                    .into(),
            );
        }
        for (j, c) in exclude.iter().enumerate() {
            let at_c = format!("mappings[{i}].exclude[{j}]");
            identifier(problem, &at_c, "source column name", c);
            if exclude[..j].contains(c) {
                problem(
                    &at_c,
                    format!("{c:?} is listed twice; list each column once"),
                );
            }
            if *c == m.tenant_key {
                problem(
                    &at_c,
                    format!("{c:?} is the tenant key; the target needs it to route deletes"),
                );
            }
        }
        let on_drop_column = match m.on_drop_column.as_deref() {
            None | Some("keep") => OnDropColumn::Keep,
            Some("drop") => OnDropColumn::Drop,
            Some(_) => {
                problem(
                    &at("on_drop_column"),
                    "must be \"keep\" (the target keeps the column, nullable) or \"drop\" (it is dropped too)".into(),
                );
                OnDropColumn::Keep
            }
        };
        if m.on_drop_column.is_some() && !all_columns {
            problem(
                &at("on_drop_column"),
                "applies only to columns = \"*\"; a listed column whose source column is dropped stops the mapping's destinations".into(),
            );
        }
        // With "*" any source column may be named (checked against the source at start).
        let is_mapped = |c: &str| all_columns || listed.0.iter().any(|(name, _)| name == c);

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
                all_columns,
                exclude,
                on_drop_column,
                types,
            }),
            _ => None,
        });
    }
    out
}

pub(super) fn validate_destinations(
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
                    columns: m.columns.listed().iter().map(|(n, _)| n.as_str()).collect(),
                    all: matches!(m.columns, Columns::All(_)),
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
            if m.columns
                .listed()
                .iter()
                .any(|(name, _)| *name == version_column)
            {
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
        // Zero is allowed: write as soon as the writer is free.
        let flush_interval = duration_at_least(
            problem,
            &at("flush_interval"),
            d.flush_interval.as_deref(),
            if clickhouse {
                DEFAULT_CLICKHOUSE_FLUSH_INTERVAL
            } else {
                DEFAULT_FLUSH_INTERVAL
            },
            Duration::ZERO,
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
pub(super) fn not_for_kind(
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

/// A connection string (URL or `key=value`, with the `PG*` variables and the password file
/// for what it leaves out), named `label` in warnings. pgfanout writes to every PostgreSQL it
/// connects to (slot and publication, state, destination rows), so of several hosts it must
/// settle on one that accepts writes, as only `target_session_attrs` can tell.
fn conn_info(
    problem: &mut impl FnMut(&str, String),
    key: &str,
    url: &str,
    label: &str,
) -> Option<ConnInfo> {
    match url.parse::<ConnInfo>() {
        Ok(c) if !c.more_hosts.is_empty() && c.target_session_attrs == TargetSessionAttrs::Any => {
            problem(key, format!(
                "lists {} hosts with target_session_attrs=any, so pgfanout could settle on a standby, which refuses the writes it makes; add target_session_attrs=read-write (or primary)",
                c.more_hosts.len() + 1
            ));
            None
        }
        Ok(c) => Some(c.labelled(label, key)),
        Err(e) => {
            problem(key, e.to_string());
            None
        }
    }
}

pub(super) fn postgres_store(
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
    let conn = conn_info(
        problem,
        &at("url"),
        &d.url,
        &format!("destination {}", d.name),
    );
    Some(PostgresStore {
        conn: conn?,
        schema: d
            .schema
            .clone()
            .unwrap_or_else(|| DEFAULT_DESTINATION_SCHEMA.to_owned()),
        soft_delete: d.soft_delete.unwrap_or(false),
        apply_connections: match d.apply_connections {
            None => DEFAULT_APPLY_CONNECTIONS,
            Some(n) if (1..=MAX_APPLY_CONNECTIONS as i64).contains(&n) => n as usize,
            Some(_) => {
                problem(
                    &at("apply_connections"),
                    format!("must be between 1 and {MAX_APPLY_CONNECTIONS}"),
                );
                DEFAULT_APPLY_CONNECTIONS
            }
        },
    })
}

pub(super) fn clickhouse_store(
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
            (
                "apply_connections",
                d.apply_connections.is_some(),
                " (a ClickHouse batch is one insert per table)",
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
pub(super) fn validate_tenant_list(
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
pub(super) fn identifier(
    problem: &mut impl FnMut(&str, String),
    key: &str,
    what: &str,
    name: &str,
) {
    if let Some(reason) = crate::sql::identifier_problem(name) {
        problem(key, format!("the {what} {reason}"));
    }
}

/// A minimal screen of a configured SQL type name, so that the key path comes with the
/// problem. The PostgreSQL writer checks the name fully before splicing it into DDL (its
/// checker, `check_type_name` in src/sink/postgres/ddl.rs, is private); this rejects what could
/// end a statement or start a comment.
pub(super) fn check_type_name(sql: &str) -> Result<(), String> {
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
pub(super) const MIN_PERIOD: Duration = Duration::from_millis(10);

/// A duration key (`"10s"`, `"500ms"`, `"7days"`), at least [`MIN_PERIOD`]; `default` when
/// absent.
pub(super) fn duration(
    problem: &mut impl FnMut(&str, String),
    key: &str,
    value: Option<&str>,
    default: Duration,
) -> Duration {
    duration_at_least(problem, key, value, default, MIN_PERIOD)
}

pub(super) fn duration_at_least(
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
