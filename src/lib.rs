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
pub mod config;
pub mod demo;
pub mod fanout;
pub mod localch;
pub mod localpg;
pub mod localtls;
pub mod logcli;
pub mod lsn;
pub mod pipeline;
pub mod preflight;
pub mod retry;
pub mod route;
pub mod sequencer;
pub mod sink;
pub mod source;
pub mod sql;
pub mod state;
pub mod status;
pub mod tail;
pub mod transform;
pub mod value;
