//! The lag history behind the status page's sparklines: per destination, one sample every
//! [`SAMPLE_EVERY`] for the last [`KEEP`], in memory only (a restart starts it over). The
//! first sample is taken as soon as a destination is reported, so a page opened just after
//! start shows a point.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::telemetry::live::DestinationView;

pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How often the admin thread offers a sample (taken only when one is due).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
pub const KEEP: Duration = Duration::from_secs(3600);
/// Samples per destination: the ring's bound.
const SAMPLES: usize = (KEEP.as_secs() / SAMPLE_EVERY.as_secs()) as usize;

/// One sample: when (Unix seconds), the lag in changes and in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    pub at: u64,
    pub lag_changes: u64,
    pub lag_seconds: f64,
}

/// Bounded rings, one per destination name.
#[derive(Debug, Default)]
pub struct History {
    rings: BTreeMap<String, VecDeque<Sample>>,
}

impl History {
    /// Records the destinations as they are now; a destination no longer reported keeps its
    /// ring (a restart of the pipeline reports it again).
    pub fn sample(&mut self, views: &[DestinationView]) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.sample_at(at, views);
    }

    fn sample_at(&mut self, at: u64, views: &[DestinationView]) {
        for v in views {
            let ring = self.rings.entry(v.name.clone()).or_default();
            if ring
                .back()
                .is_some_and(|last| at < last.at + SAMPLE_EVERY.as_secs())
            {
                continue;
            }
            if ring.len() == SAMPLES {
                ring.pop_front();
            }
            ring.push_back(Sample {
                at,
                lag_changes: v.lag_changes,
                lag_seconds: v.lag_seconds,
            });
        }
    }

    pub fn rings(&self) -> &BTreeMap<String, VecDeque<Sample>> {
        &self.rings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_last_hour_only() {
        let mut h = History::default();
        let view = |lag| DestinationView {
            name: "a".into(),
            state: "streaming".into(),
            applied_seq: 0,
            lag_changes: lag,
            lag_seconds: 0.0,
        };
        for i in 0..(SAMPLES as u64 + 5) {
            let at = i * SAMPLE_EVERY.as_secs();
            h.sample_at(at, &[view(i)]);
            // Offered again before the next is due: not taken.
            h.sample_at(at + 1, &[view(0)]);
        }
        let ring = &h.rings()["a"];
        assert_eq!(ring.len(), SAMPLES);
        assert_eq!(ring.front().unwrap().lag_changes, 5);
        assert_eq!(ring.back().unwrap().lag_changes, SAMPLES as u64 + 4);
    }
}
