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
pub mod config;
pub mod demo;
pub mod localpg;
pub mod lsn;
pub mod sequencer;
pub mod source;
pub mod sql;
pub mod tail;
pub mod value;
