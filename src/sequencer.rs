//! The sequencer: gives every row change its `seq`.
//!
//! `seq` is dense (no gaps), strictly increasing, one per row change (each relation of a
//! TRUNCATE counts once), and follows commit order because pgoutput v1 delivers each
//! transaction whole at its commit. The sequencer holds only the next number, so memory does not
//! depend on transaction size: changes are numbered as they stream past.

use crate::change::{RowChange, SequencedChange};

#[derive(Debug, Clone)]
pub struct Sequencer {
    last: u64,
}

impl Sequencer {
    /// A sequencer whose first change gets `last + 1` (a new slot starts after 0).
    pub fn resume_after(last: u64) -> Self {
        Sequencer { last }
    }

    pub fn assign(&mut self, change: RowChange) -> SequencedChange {
        self.last += 1;
        SequencedChange {
            seq: self.last,
            change,
        }
    }

    /// The seq of the last numbered change (0 before the first).
    pub fn last(&self) -> u64 {
        self.last
    }
}
