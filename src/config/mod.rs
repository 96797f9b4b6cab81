//! Configuration: one TOML file, `${ENV}` interpolation for secrets, and a `validate` step that
//! turns the raw file into checked types and reports every problem with its key path.
//!
//! ```text
//!   text ──toml──▶ raw.rs (serde, unknown keys refused, ${ENV}) ──▶ validate.rs ──▶ Config
//!                                                          StageRules ──┘ (mapping expressions:
//!                                                        transform; store blocks: their sink)
//! ```
//!
//! This module holds the validated types, plain data that imports no stage; `raw.rs` the file
//! as written; `validate.rs` the rules that span sections.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pgconn::ConnInfo;
pub use crate::pgconn::Secret;
use crate::problems::Problems;
use crate::sql::QualifiedName;
use crate::target::ColumnType;

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
/// …or once its oldest operation has waited this long. Zero (PostgreSQL's default): write
/// what is there as soon as the writer is free, so only what piles up during a write is
/// batched — a transaction per small batch costs PostgreSQL little, and waiting only adds
/// latency.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::ZERO;
pub const DEFAULT_DESTINATION_SCHEMA: &str = "public";
/// A PostgreSQL destination writes each large batch over this many connections, split by
/// key. Two pays even on a 2-core machine shared with the source (BENCHMARKS.md: the server
/// writes one share while pgfanout prepares the other); more pays where the destination has
/// cores to spare.
pub const DEFAULT_APPLY_CONNECTIONS: usize = 2;
/// The most connections one PostgreSQL destination may write a batch over.
pub const MAX_APPLY_CONNECTIONS: usize = 32;
/// ClickHouse wants few large inserts: every insert makes a part that merges later. 50,000
/// rows: a destination holds up to two batches of rows in memory (one being written, one
/// queued), a few hundred bytes each (invariant 37).
pub const DEFAULT_CLICKHOUSE_BATCH_ROWS: usize = 50_000;
pub const DEFAULT_CLICKHOUSE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_CLICKHOUSE_DATABASE: &str = "default";

/// Chunks read at once by snapshots, across tables and key ranges: each holds an SQL
/// connection to the source.
pub const DEFAULT_SNAPSHOT_PARALLELISM: usize = 4;
/// A snapshot chunk holds at most this many rows…
pub const DEFAULT_SNAPSHOT_CHUNK_ROWS: usize = 10_000;
/// …and about this many bytes of values (the row that passes it ends the chunk).
pub const DEFAULT_SNAPSHOT_CHUNK_MB: u64 = 16;

/// Destination connections open at once, across all destinations: enough for a few dozen busy
/// tenants on a small machine, well under PostgreSQL's default `max_connections` (100).
pub const DEFAULT_FANOUT_MAX_CONNECTIONS: usize = 32;
/// A destination with nothing to write closes its connection after this long (at once when
/// another destination waits for a connection).
pub const DEFAULT_FANOUT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The highest `fanout.max_connections` accepted.
pub const MAX_FANOUT_CONNECTIONS: u64 = 10_000;

/// `[fanout]`: how the destinations share connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutConfig {
    /// Destination connections open at once (each destination's writer holds one while
    /// connected; `status` reads this many destinations at a time).
    pub max_connections: usize,
    /// An idle destination's writer disconnects after this long.
    pub idle_timeout: Duration,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            max_connections: DEFAULT_FANOUT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_FANOUT_IDLE_TIMEOUT,
        }
    }
}

/// Where `pgfanout run` serves `/health`, `/ready`, `/metrics`, `/status` and its status page:
/// the loopback interface only, unless configured otherwise.
pub const DEFAULT_ADMIN_LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9187),
);
/// The value of `admin.listen` that turns the endpoint off.
pub const ADMIN_OFF: &str = "off";

/// `[admin]`: the HTTP endpoint of `pgfanout run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminConfig {
    /// `None`: no endpoint (`listen = "off"`).
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(DEFAULT_ADMIN_LISTEN),
        }
    }
}

/// `[snapshot]`: copying the rows that exist into the destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    pub mode: SnapshotMode,
    /// Resync a destination held `needs resync` without being asked.
    pub auto_resync: bool,
    pub parallelism: usize,
    pub chunk_rows: usize,
    pub chunk_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Copy every mapped table into every destination on first start, and whatever a
    /// destination is given later (a tenant, a mapping, the destination itself).
    Initial,
    /// Only what `pgfanout resync` (or `auto_resync`) asks for.
    Never,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            mode: SnapshotMode::Initial,
            auto_resync: true,
            parallelism: DEFAULT_SNAPSHOT_PARALLELISM,
            chunk_rows: DEFAULT_SNAPSHOT_CHUNK_ROWS,
            chunk_bytes: (DEFAULT_SNAPSHOT_CHUNK_MB * 1024 * 1024) as usize,
        }
    }
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: SourceConfig,
    pub log: LogConfig,
    pub state: StateConfig,
    pub snapshot: SnapshotConfig,
    pub admin: AdminConfig,
    pub fanout: FanoutConfig,
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
    /// Target column = expression text, in the order written in the file. Empty with
    /// `all_columns`.
    pub columns: Vec<(String, String)>,
    /// `columns = "*"`: every column of the source table but `exclude`, under its own name, in
    /// the source's order, following the source as columns come and go.
    pub all_columns: bool,
    /// With `all_columns`: source columns left out.
    pub exclude: Vec<String>,
    /// What a column the source dropped becomes in the target (with `all_columns`).
    pub on_drop_column: OnDropColumn,
    /// Explicit target column types, in the order written; each names one of `columns`.
    pub types: Vec<(String, ColumnType)>,
}

/// `mappings.on_drop_column`: what happens to a target column whose source column was
/// dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDropColumn {
    /// It stays, nullable; rows written afterwards have no value there.
    #[default]
    Keep,
    /// It is dropped from the target too.
    Drop,
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

/// Which tenants a destination serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenants {
    /// `tenants = "*"`: every tenant (a shared store).
    All,
    Some(HashSet<String>),
}

/// One `[[destinations]]` entry: a store that receives some mappings for some tenants.
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
    /// Connections its writer holds open while connected.
    pub fn connections(&self) -> usize {
        match &self.store {
            StoreConfig::Postgres(pg) => pg.apply_connections,
            StoreConfig::ClickHouse(_) => 1,
        }
    }

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
    /// Connections a batch is written over, each a share of the keys (parallel apply).
    pub apply_connections: usize,
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
    /// The pgoutput protocol version (`source.protocol`).
    pub protocol: Protocol,
}

/// Which pgoutput protocol to stream with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// 2 where the server streams in-progress transactions (PostgreSQL 14+), else 1.
    #[default]
    Auto,
    /// Transactions only once committed.
    V1,
    /// In-progress transactions streamed before their commit; refused before PostgreSQL 14.
    V2,
}

mod raw;
#[cfg(test)]
mod tests;
mod validate;

use raw::{interpolate, syntax_problem, without_values, RawConfig};
pub use validate::validate_slot_name;

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
    /// `columns = "*"`: which columns it maps is known only from the source, at start.
    pub all: bool,
}

impl MappedColumns<'_> {
    /// Whether the mapping may map `column` (a `"*"` mapping may map any).
    pub fn maps(&self, column: &str) -> bool {
        self.all || self.columns.contains(&column)
    }

    /// Whether the mapping lists `column` by name.
    pub fn lists(&self, column: &str) -> bool {
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
        // Neither error quotes a value: the file may hold passwords.
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| invalid(vec![syntax_problem(text, &e)]))?;
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
                message: without_values(e.into_inner().message()),
            }])
        })?;
        raw.validate(rules).map_err(invalid)
    }
}
