//! pgfanout: change-data-capture from one PostgreSQL logical replication slot.
//!
//! The stages, in the order a change flows through them (see ARCHITECTURE.md):
//!
//! ```text
//! PostgreSQL ──pgoutput──▶ source ──▶ sequencer ──▶ (changelog, sinks: later issues)
//!     ▲   standby status: flushed = last commit the consumer made durable │
//!     └─────────────────────────────────────────────────────────────────────┘
//! ```

pub mod change;
pub mod changelog;
pub mod cmd;
pub mod config;
pub mod digest;
pub mod disposition;
pub mod fanout;
pub mod lsn;
pub mod pgconn;
pub mod pipeline;
pub mod problems;
pub mod sequencer;
pub mod sink;
pub mod source;
pub mod sql;
pub mod state;
pub mod target;
pub mod transform;
pub mod value;
