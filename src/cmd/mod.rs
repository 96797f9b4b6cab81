//! The commands a user runs, one file each: the edge where results become text for a person
//! and errors become messages. `run` is the pipeline itself ([`crate::pipeline`]); `replay`
//! is [`crate::fanout::replay`].
//!
//! `demo.rs` lives here too but is compiled into the binary only (`src/main.rs`): it starts
//! the private servers of the `pgfanout-testkit` crate, which the product library never links.

pub mod check;
pub mod log;
pub mod status;
pub mod tail;
