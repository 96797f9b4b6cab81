//! The ClickHouse destination: a shared analytics database fed with RowBinary inserts into
//! `ReplacingMergeTree` tables (see [`sink`] for the write path and its guarantees).
//!
//! - [`types`]: which ClickHouse type each PostgreSQL type becomes, by server version.
//! - [`rowbinary`]: PostgreSQL text → RowBinary, and the lengths of values read back.
//! - [`ddl`]: tables, views, row policies and grants as SQL text.
//! - [`config`]: the rules of its store block, and the one reading of its URL.
//! - `error.rs`: [`ClickHouseError`], and which server texts it may carry (none that can
//!   quote a row value).

pub mod config;
pub mod ddl;
mod error;
pub mod rowbinary;
mod sink;
pub mod types;

pub use error::{message_is_safe, ClickHouseError, RejectedValue};
pub use sink::ClickHouseSink;
