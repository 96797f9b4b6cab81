//! What a change log's seqs are bound to.
//!
//! A seq means "the Nth row change of one stream": one slot, in one database, of one cluster
//! on one timeline. The same number from another stream names another change, so everything
//! that stores seqs — the change log, the slot checkpoint, each destination's watermark — also
//! stores what they are bound to, and start-up refuses a mismatch (`pipeline::recovery`).
//!
//! - [`SourceId`] is the stream as the server describes it (`IDENTIFY_SYSTEM` and the slot).
//! - [`Lineage`] names one numbering: it is created when a log starts from nothing and kept for
//!   as long as seqs continue (across restarts, a lost log restored from its checkpoint, a
//!   recreated slot). Destinations store it beside their watermark, so a destination written
//!   from another numbering is never taken to be up to date.

use std::fmt;

/// One logical replication stream, as `IDENTIFY_SYSTEM` and the configuration name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceId {
    /// The cluster's `system_identifier` (pg_control), unique per `initdb`.
    pub system_identifier: u64,
    /// The timeline the server is on; a promotion or a point-in-time recovery starts a new one.
    pub timeline: u32,
    pub database: String,
    pub slot: String,
}

impl SourceId {
    /// How `self` (what was stored) differs from `now` (what the server says), one phrase per
    /// difference, timeline excluded (see `pipeline::recovery` for timelines).
    pub fn differences(&self, now: &SourceId) -> Vec<String> {
        let mut out = Vec::new();
        if self.system_identifier != now.system_identifier {
            out.push(format!(
                "system identifier {} (the server is {})",
                self.system_identifier, now.system_identifier
            ));
        }
        if self.database != now.database {
            out.push(format!(
                "database {:?} (the server's is {:?})",
                self.database, now.database
            ));
        }
        if self.slot != now.slot {
            out.push(format!(
                "slot {:?} (the configuration's is {:?})",
                self.slot, now.slot
            ));
        }
        out
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "system {}, timeline {}, database {:?}, slot {:?}",
            self.system_identifier, self.timeline, self.database, self.slot
        )
    }
}

/// One numbering of changes: 128 random bits, shown as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lineage(pub [u8; 16]);

impl Lineage {
    pub fn random() -> Lineage {
        Lineage(rand::random())
    }
}

impl fmt::Display for Lineage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A destination whose watermark counts the seqs of another numbering than this log's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination {destination:?} holds the seqs of another change log (its watermark is of lineage {stored}; this log is lineage {ours})\nHINT: another pgfanout writes it, or the change log was replaced; give each pgfanout its own destination, or empty the destination's tables and its watermark row, then `pgfanout destination resume {destination}`")]
pub struct ForeignLineage {
    pub destination: String,
    pub stored: String,
    pub ours: Lineage,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a lineage is 32 hex digits")]
pub struct BadLineage;

impl std::str::FromStr for Lineage {
    type Err = BadLineage;

    fn from_str(s: &str) -> Result<Lineage, BadLineage> {
        let bytes = s.as_bytes();
        if bytes.len() != 32 {
            return Err(BadLineage);
        }
        let mut out = [0u8; 16];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| BadLineage)?;
            out[i] = u8::from_str_radix(text, 16).map_err(|_| BadLineage)?;
        }
        Ok(Lineage(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_round_trips_as_hex_and_refuses_anything_else() {
        let l = Lineage::random();
        assert_eq!(l.to_string().len(), 32);
        assert_eq!(l.to_string().parse::<Lineage>(), Ok(l));
        assert_eq!("abc".parse::<Lineage>(), Err(BadLineage));
        assert_eq!("zz".repeat(16).parse::<Lineage>(), Err(BadLineage));
        assert_eq!("é".repeat(16).parse::<Lineage>(), Err(BadLineage));
    }

    #[test]
    fn differences_name_each_field_that_differs() {
        let a = SourceId {
            system_identifier: 1,
            timeline: 1,
            database: "app".into(),
            slot: "s".into(),
        };
        let mut b = a.clone();
        b.timeline = 2;
        assert!(a.differences(&b).is_empty());
        b.system_identifier = 7;
        b.slot = "t".into();
        let d = a.differences(&b);
        assert_eq!(d.len(), 2);
        assert!(d[0].contains("system identifier 1 (the server is 7)"));
        assert!(d[1].contains("slot \"s\""));
    }
}
