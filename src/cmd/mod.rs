//! The commands a user runs, one file each: the edge where results become text for a person
//! and errors become messages. `run` is the pipeline itself ([`crate::pipeline`], served by
//! [`crate::admin`]); `replay`
//! is [`crate::fanout::replay`].
//!
//! `demo/` lives here too but is compiled into the binary only (`src/main.rs`): it starts
//! the private servers of the `pgfanout-testkit` crate, which the product library never links.

pub mod check;
pub mod destination;
pub mod log;
pub mod report;
pub mod resync;
pub mod status;
pub mod tail;
pub mod verify;

use std::path::Path;

use crate::config::{Config, ConfigError, StoreSettings};

/// Reads and validates the configuration file at `path`, every problem at once: config's own
/// rules, the mapping language's and each destination kind's ([`StageRules`]).
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    Config::load(path, &StageRules)
}

/// The stages' configuration rules, wired for [`Config::load`]: the mapping expressions are
/// the transform stage's, a store block is its sink's.
pub struct StageRules;

impl crate::config::StageRules for StageRules {
    fn expression(&self, text: &str, filter: bool, has_tenants: bool) -> Result<(), String> {
        crate::transform::check_expression(text, filter, has_tenants)
    }

    fn store(&self, settings: &StoreSettings<'_>, problem: &mut dyn FnMut(&str, String)) {
        crate::sink::check_store(settings, problem)
    }
}
