//! `pgfanout destination resume D`: clears what holds destination D back, so that it runs
//! again — the running daemon notices within a few seconds (it polls the holds with its status
//! reports), a stopped one at its next start.
//!
//! - `failed`: after fixing what stopped it (widening a column, restoring a table), resume
//!   retries it from its watermark; failing again holds it again.
//! - `needs resync`: resuming accepts the gap — its tables keep missing the changes the change
//!   log no longer held, and `status` stops saying so. Resync it (or `pgfanout replay` what the
//!   log still has) to fill them.

use std::fmt;

use crate::config::Config;
use crate::disposition::{Classify, ErrorKind};
use crate::state::{HoldKind, StateDb, StateError, StoredHold};

#[derive(Debug, thiserror::Error)]
pub enum DestinationCmdError {
    #[error("no destination named {name:?} in the configuration; configured: {known}")]
    Unknown { name: String, known: String },
    #[error("cannot resume destination {name:?}")]
    State {
        name: String,
        #[source]
        source: StateError,
    },
}

impl Classify for DestinationCmdError {
    fn kind(&self) -> ErrorKind {
        match self {
            DestinationCmdError::Unknown { .. } => ErrorKind::Definite,
            DestinationCmdError::State { source, .. } => source.kind(),
        }
    }
}

/// What `resume` cleared.
#[derive(Debug)]
pub struct Resumed {
    pub name: String,
    /// None when the destination was not held.
    pub cleared: Option<StoredHold>,
}

/// Clears every hold of the configured destination `name`.
pub async fn resume(cfg: &Config, name: &str) -> Result<Resumed, DestinationCmdError> {
    if !cfg.destinations.iter().any(|d| d.name == name) {
        let known: Vec<String> = cfg
            .destinations
            .iter()
            .map(|d| format!("{:?}", d.name))
            .collect();
        return Err(DestinationCmdError::Unknown {
            name: name.to_owned(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    }
    let state_err = |source| DestinationCmdError::State {
        name: name.to_owned(),
        source,
    };
    let state = StateDb::connect(&cfg.state.conn, &cfg.state.schema)
        .await
        .map_err(state_err)?;
    let held = state
        .holds()
        .load_all()
        .await
        .map_err(state_err)?
        .into_iter()
        .find(|h| h.name == name);
    let cleared = state.holds().clear(name).await.map_err(state_err)?;
    Ok(Resumed {
        name: name.to_owned(),
        cleared: held.filter(|_| cleared),
    })
}

impl fmt::Display for Resumed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(h) = &self.cleared else {
            return writeln!(
                f,
                "destination {:?} was not held back; nothing to clear",
                self.name
            );
        };
        write!(
            f,
            "destination {:?}: cleared {} (since {}",
            self.name,
            h.hold.kind.as_str(),
            h.since
        )?;
        if let Some(t) = &h.table {
            write!(f, ", table {t}")?;
        }
        if let Some(c) = &h.column {
            write!(f, ", column {c}")?;
        }
        if let Some(s) = h.hold.seq {
            write!(f, ", seq {s}")?;
        }
        writeln!(f, "): {}", h.hold.reason)?;
        let resync = match h.hold.kind {
            HoldKind::NeedsResync => Some(&h.hold.reason),
            HoldKind::Failed => h.resync_reason.as_ref(),
        };
        if let Some(r) = resync {
            writeln!(
                f,
                "also cleared needs resync, accepting the gap: {r}\nHINT: its tables miss those changes until it is resynced"
            )?;
        }
        writeln!(
            f,
            "a running pgfanout starts it again within a few seconds; otherwise it starts with the next `pgfanout run`"
        )
    }
}
