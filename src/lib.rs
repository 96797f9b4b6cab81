//! pgfanout: change-data-capture from one PostgreSQL logical replication slot, fanned out per
//! tenant into PostgreSQL and ClickHouse destinations.
//!
//! The stages, in the order a change flows through them (see ARCHITECTURE.md):
//!
//! ```text
//! PostgreSQL ──pgoutput──▶ source ──▶ sequencer ──▶ changelog (segments, fsync'd)
//!     ▲   standby status: flushed = last commit durable in the change log │
//!     └──────────────────────────────────────────────────────────────────┘
//! changelog ──▶ fanout (dispatch, route by tenant, transform) ──▶ sink: postgres / clickhouse
//! ```
//!
//! The modules are layered, lowest first; a module uses only lower layers (`tests/layers.rs`):
//! core types and rules (`lsn`, `binding`, `value`, `sql`, `digest`, `problems`, `disposition`,
//! `report`, `failpoint`, `telemetry`, then
//! `change`, `target`) → `pgconn` → `config` → stages (`source`, `sequencer`, `changelog`,
//! `state`, `transform`, then `sink`) → `fanout` → `pipeline` → `cmd` → `admin` (the HTTP endpoint of `run`) → the binary.

pub mod admin;
pub mod binding;
pub mod change;
pub mod changelog;
pub mod cmd;
pub mod config;
pub mod digest;
pub mod disposition;
pub mod failpoint;
pub mod fanout;
pub mod lsn;
pub mod pgconn;
pub mod pipeline;
pub mod problems;
pub mod progress;
pub mod report;
pub mod sequencer;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod sql;
pub mod state;
pub mod target;
pub mod telemetry;
pub mod transform;
pub mod value;
