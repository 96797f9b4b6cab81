//! Start-up's decision: may this change log, this checkpoint and this slot be resumed together,
//! and from where? Pure: the pipeline reads everything first, and nothing changes until the
//! plan is made. `pgfanout log verify` asks the same questions.
//!
//! ```text
//!  log META (binding, position, base seq) ─┐
//!  log recovery (last commit, tail to cut) ─┤
//!  checkpoint (seq, LSN, binding)          ─┼─▶ plan() ─▶ Plan { slot plan, META to write, resume }
//!  IDENTIFY_SYSTEM, timeline history       ─┤        └──▶ RecoveryError: what differs, what to do
//!  the slot (exists? confirmed_flush_lsn)  ─┘
//! ```
//!
//! The rules (ARCHITECTURE.md, invariants 21–23):
//! - **Bound to one stream.** The log, the checkpoint and (in the fan-out) each destination's
//!   watermark carry the cluster, timeline, database, slot and lineage their seqs count; any
//!   other is refused. A new timeline is accepted only where the server's history shows it
//!   forked after everything the log holds.
//! - **Never renumber.** What was confirmed (the checkpoint's seq, the log's own META position,
//!   the slot's `confirmed_flush_lsn`) must be in the log. A log that ends before it lost
//!   changes: numbering on from its end would reuse seqs, so start-up refuses.
//! - **Never skip silently.** A missing slot, or one confirmed past what the log vouches for,
//!   means WAL the log never saw was released. Start-up refuses unless the operator asks for
//!   `--recreate-slot`, which continues numbering after the highest seq ever confirmed and
//!   marks every destination `needs resync`.

use std::path::{Path, PathBuf};

use crate::binding::{Lineage, SourceId};
use crate::changelog::{LogMeta, Position, Recovered};
use crate::disposition::{Classify, ErrorKind};
use crate::lsn::Lsn;
use crate::source::{ServerIdentity, SlotPlan, SlotRow, SourceError};
use crate::state::{Binding, Checkpoint};

/// Everything start-up read, before it changes anything.
#[derive(Debug)]
pub struct Observed<'a> {
    pub log_dir: &'a Path,
    pub log: &'a Recovered,
    pub server: &'a ServerIdentity,
    /// Where the server's history left the log's timeline (`TIMELINE_HISTORY`), when the
    /// server is on another timeline than the log.
    pub timeline_switch: Option<Lsn>,
    pub slot_name: &'a str,
    pub slot: Option<&'a SlotRow>,
    pub checkpoint: Option<&'a Checkpoint>,
    /// `source.manage`: a fresh start may create the slot.
    pub manage_slot: bool,
    /// `run --recreate-slot`.
    pub recreate_slot: bool,
}

/// Where streaming resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Numbering continues after this seq.
    pub last_seq: u64,
    /// Transactions whose commit LSN is below this are already in the log.
    pub logged_end: Lsn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub slot: SlotPlan,
    /// What the log's META must say before streaming (write it when it differs).
    pub meta: LogMeta,
    pub resume: Resume,
    /// The slot is created over existing progress: every destination missed what happened
    /// in between and needs a resync.
    pub resync_all: bool,
    /// What start-up accepted that an operator should know (logged as warnings).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("the change log in {dir} was written from another source: its {differences}\nHINT: point source.url and source.slot at the source it was written from, or give this source its own log.dir (a new log is a new numbering: destinations that applied the old one must be emptied first)")]
    LogFromAnotherSource { dir: PathBuf, differences: String },
    #[error("the change log in {dir} was written on timeline {log_timeline}, but the server is on timeline {server_timeline}{switch}: the server was promoted or restored from a backup, and transactions the log holds may not exist on it\nHINT: point source.url at the server the log was written from; or move the log aside and run `pgfanout run --recreate-slot` (every destination is then marked needs resync)", switch = match .switch { Some(l) => format!(", which left timeline {log_timeline} at {l}, before the log's end {}", .log_end), None => String::new() })]
    TimelineChanged {
        dir: PathBuf,
        log_timeline: u32,
        server_timeline: u32,
        switch: Option<Lsn>,
        log_end: Lsn,
    },
    #[error("the checkpoint of slot {slot:?} in the state database was saved for another source: its {differences}\nHINT: the state database is shared with another pgfanout; give each its own state.schema or source.slot")]
    CheckpointFromAnotherSource { slot: String, differences: String },
    #[error("the checkpoint of slot {slot:?} in the state database counts the seqs of another change log (lineage {checkpoint}; the log in {dir} is lineage {log})\nHINT: the log directory or the state database was replaced; restore the one that belongs with the other, or move the log aside and run `pgfanout run --recreate-slot`")]
    CheckpointFromAnotherLog {
        slot: String,
        dir: PathBuf,
        checkpoint: Lineage,
        log: Lineage,
    },
    #[error("{damage}the change log in {dir} ends at seq {log_seq}, but {by} says seq {confirmed_seq} was logged: the log lost changes, and numbering on from its end would give new changes seqs that destinations already hold\nHINT: restore the log directory from a backup; or move it aside and run `pgfanout run --recreate-slot`, which starts a new log numbered after seq {confirmed_seq} and marks every destination needs resync", damage = damage(*.tail_bytes))]
    LogShorter {
        dir: PathBuf,
        log_seq: u64,
        confirmed_seq: u64,
        by: &'static str,
        tail_bytes: u64,
    },
    #[error("{damage}replication slot {slot:?} is confirmed up to {confirmed}, but the change log in {dir} holds the stream only up to {vouched}: WAL the log never saw was released (the slot was dropped and created again, or advanced by hand, or the log lost its end)\nHINT: restore the log if it lost its end; otherwise run `pgfanout run --recreate-slot` to continue numbering after seq {log_seq} and mark every destination needs resync", damage = damage(*.tail_bytes))]
    SlotAhead {
        slot: String,
        dir: PathBuf,
        confirmed: Lsn,
        vouched: Lsn,
        log_seq: u64,
        tail_bytes: u64,
    },
    #[error("replication slot {slot:?} does not exist, but the change log in {dir} holds seqs up to {log_seq}: the slot was dropped, and what was written since is lost to it\nHINT: run `pgfanout run --recreate-slot` to create it again, continue numbering after seq {log_seq}, and mark every destination needs resync")]
    SlotGone {
        slot: String,
        dir: PathBuf,
        log_seq: u64,
    },
    #[error("`--recreate-slot` cannot continue the change log in {dir}: it ends at seq {log_seq}, but seq {confirmed_seq} was confirmed, and a log's seqs must stay dense\nHINT: move the damaged log directory aside and run `pgfanout run --recreate-slot` again; the new log is numbered after seq {confirmed_seq}")]
    RecreateOverShortLog {
        dir: PathBuf,
        log_seq: u64,
        confirmed_seq: u64,
    },
    #[error("{damage}\nHINT: {why}; restore the log directory from a backup, or move it aside and run `pgfanout run --recreate-slot` (every destination is then marked needs resync)")]
    Damaged {
        damage: crate::changelog::TailDamage,
        why: &'static str,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
}

fn damage(tail_bytes: u64) -> String {
    if tail_bytes == 0 {
        return String::new();
    }
    format!("the last {tail_bytes} bytes of the change log fail their checks or end an unfinished transaction, and what was confirmed lies in them or beyond: this is damage, not a torn write. ")
}

impl Classify for RecoveryError {
    /// Starting over reads the same log, checkpoint and slot again: only an operator helps.
    fn kind(&self) -> ErrorKind {
        match self {
            RecoveryError::Source(e) => e.kind(),
            _ => ErrorKind::Definite,
        }
    }
}

/// Decides how to resume; see the module comment.
pub fn plan(o: &Observed<'_>) -> Result<Plan, RecoveryError> {
    let dir = o.log_dir.to_owned();
    let current = SourceId {
        system_identifier: o.server.system_identifier,
        timeline: o.server.timeline,
        database: o.server.database.clone(),
        slot: o.slot_name.to_owned(),
    };
    let mut notes = Vec::new();
    let has_data = o.log.last_commit.is_some();
    let meta = o.log.meta.as_ref();
    let base_seq = meta.map_or(0, |m| m.base_seq);
    let log_seq = if has_data { o.log.last_seq } else { base_seq };
    let position = meta.map_or(Position::default(), |m| m.position);
    let commit_end = o.log.last_commit.map_or(Lsn::ZERO, |c| c.end_lsn);

    // Bindings: the log's, then the checkpoint's.
    if let Some(m) = meta {
        let differences = m.source.differences(&current);
        if !differences.is_empty() {
            return Err(RecoveryError::LogFromAnotherSource {
                dir,
                differences: differences.join(", "),
            });
        }
        if m.source.timeline != current.timeline {
            let log_end = commit_end.max(position.lsn);
            match o.timeline_switch {
                Some(switch) if current.timeline > m.source.timeline && log_end <= switch => {
                    notes.push(format!(
                        "the server moved from timeline {} to {} at {switch}, after the change log's end {log_end}: continuing on the new timeline",
                        m.source.timeline, current.timeline
                    ));
                }
                switch => {
                    return Err(RecoveryError::TimelineChanged {
                        dir,
                        log_timeline: m.source.timeline,
                        server_timeline: current.timeline,
                        switch,
                        log_end,
                    })
                }
            }
        }
    } else if has_data {
        notes.push(format!(
            "the change log in {} has no META file (an older pgfanout wrote it): binding it to {current}; the slot's position could not be checked against it this once",
            o.log_dir.display()
        ));
    }
    if let Some(Checkpoint {
        binding: Some(Binding { lineage, source }),
        ..
    }) = o.checkpoint
    {
        let differences = source.differences(&current);
        if !differences.is_empty() {
            return Err(RecoveryError::CheckpointFromAnotherSource {
                slot: o.slot_name.to_owned(),
                differences: differences.join(", "),
            });
        }
        if let Some(m) = meta {
            if m.lineage != *lineage && !o.recreate_slot {
                return Err(RecoveryError::CheckpointFromAnotherLog {
                    slot: o.slot_name.to_owned(),
                    dir,
                    checkpoint: *lineage,
                    log: m.lineage,
                });
            }
        }
    }
    let lineage = meta
        .map(|m| m.lineage)
        .or_else(|| {
            o.checkpoint
                .and_then(|c| c.binding.as_ref())
                .map(|b| b.lineage)
        })
        .unwrap_or_else(Lineage::random);

    // What was confirmed must be in the log.
    let confirmed_seq = o.checkpoint.map_or(0, |c| c.last_seq);
    let shorter = if position.last_seq > log_seq {
        Some((position.last_seq, "its own META file"))
    } else if confirmed_seq > log_seq {
        Some((confirmed_seq, "the checkpoint in the state database"))
    } else {
        None
    };
    // How far the log vouches for the stream: its last commit, its recorded position, and a
    // checkpoint whose seqs it holds.
    let mut vouched = commit_end.max(position.lsn);
    if let Some(cp) = o.checkpoint {
        if cp.last_seq <= log_seq {
            vouched = vouched.max(cp.commit_end_lsn);
        }
    }
    let progress = has_data || log_seq > 0 || confirmed_seq > 0;
    let new_meta = |base_seq: u64, position: Position| LogMeta {
        lineage,
        source: current.clone(),
        position,
        base_seq,
    };

    if o.recreate_slot {
        let highest = log_seq.max(confirmed_seq).max(position.last_seq);
        if has_data && highest > log_seq {
            return Err(RecoveryError::RecreateOverShortLog {
                dir,
                log_seq,
                confirmed_seq: highest,
            });
        }
        let base = if has_data { base_seq } else { highest };
        if progress {
            notes.push(format!(
                "recreating replication slot {:?}: numbering continues after seq {highest}; what was written between the log's end and the new slot is not in the log, so every destination is marked needs resync",
                o.slot_name
            ));
        }
        return Ok(Plan {
            slot: SlotPlan::Recreate(o.slot_name.to_owned()),
            meta: new_meta(base, position),
            resume: Resume {
                last_seq: highest,
                logged_end: vouched,
            },
            resync_all: progress,
            notes,
        });
    }
    if let Some((seq, by)) = shorter {
        return Err(RecoveryError::LogShorter {
            dir,
            log_seq,
            confirmed_seq: seq,
            by,
            tail_bytes: o.log.truncated_bytes,
        });
    }
    // Damage inside the last segment (after a failed fsync the kernel may lose any page
    // written since the last good one) can be cut only where it is proven unconfirmed: the
    // checks above and the slot's below show everything confirmed lies before it.
    if let Some(damage) = &o.log.tail_damage {
        let why = if meta.is_none() {
            Some("the log has no META file, so what was confirmed cannot be checked against it")
        } else if o.slot.is_none() {
            Some("the slot is missing, so what was confirmed cannot be checked")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(RecoveryError::Damaged {
                damage: damage.clone(),
                why,
            });
        }
        notes.push(format!(
            "{damage}; everything confirmed lies before it, so the last {} bytes from the last intact commit are cut and PostgreSQL sends them again",
            o.log.truncated_bytes
        ));
    }
    let slot = match o.slot {
        None if !progress => {
            if !o.manage_slot {
                return Err(SourceError::SlotMissing {
                    slot: o.slot_name.to_owned(),
                }
                .into());
            }
            SlotPlan::Create(o.slot_name.to_owned())
        }
        None => {
            return Err(RecoveryError::SlotGone {
                slot: o.slot_name.to_owned(),
                dir,
                log_seq,
            })
        }
        Some(row) => {
            let confirmed = row.confirmed_flush_lsn.unwrap_or(Lsn::ZERO);
            // An unbound log (an older pgfanout) let the slot move past its last commit while
            // idle without recording it; it is checked from its next start on.
            let checkable = progress && (meta.is_some() || !has_data);
            if checkable && confirmed > vouched {
                return Err(RecoveryError::SlotAhead {
                    slot: o.slot_name.to_owned(),
                    dir,
                    confirmed,
                    vouched,
                    log_seq,
                    tail_bytes: o.log.truncated_bytes,
                });
            }
            SlotPlan::Resume(o.slot_name.to_owned())
        }
    };
    Ok(Plan {
        slot,
        meta: new_meta(base_seq, position),
        resume: Resume {
            last_seq: log_seq,
            logged_end: vouched,
        },
        resync_all: false,
        notes,
    })
}

/// Where the server's timeline history (the content of `TIMELINE_HISTORY`) says it left
/// `timeline`: the switch point of the line that names it as parent.
pub fn timeline_switch_point(history: &str, timeline: u32) -> Option<Lsn> {
    // Lines: "<parent tli>\t<switch point>\t<reason>"; comments start with '#'.
    history.lines().find_map(|line| {
        let mut fields = line.split('\t');
        let parent: u32 = fields.next()?.trim().parse().ok()?;
        let switch: Lsn = fields.next()?.trim().parse().ok()?;
        (parent == timeline).then_some(switch)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changelog::CommitInfo;
    use crate::value::Timestamp;

    const DIR: &str = "/var/lib/pgfanout/log";

    fn server() -> ServerIdentity {
        ServerIdentity {
            system_identifier: 7_300_000_000_000_000_001,
            timeline: 1,
            database: "app".into(),
            wal_position: Lsn(0x9000),
        }
    }

    fn source() -> SourceId {
        SourceId {
            system_identifier: 7_300_000_000_000_000_001,
            timeline: 1,
            database: "app".into(),
            slot: "pgfanout".into(),
        }
    }

    fn log(last_seq: u64, end: u64, meta: Option<LogMeta>) -> Recovered {
        Recovered {
            last_seq,
            last_commit: (last_seq > 0).then(|| CommitInfo {
                xid: 1,
                commit_lsn: Lsn(end - 8),
                end_lsn: Lsn(end),
                commit_time: Timestamp::from_pg_epoch_micros(0),
                last_seq,
            }),
            truncated_bytes: 0,
            meta,
            tail_damage: None,
        }
    }

    fn meta(lineage: Lineage) -> LogMeta {
        LogMeta {
            lineage,
            source: source(),
            position: Position::default(),
            base_seq: 0,
        }
    }

    fn slot(confirmed: u64) -> SlotRow {
        SlotRow {
            slot_type: "logical".into(),
            plugin: "pgoutput".into(),
            database: "app".into(),
            confirmed_flush_lsn: Some(Lsn(confirmed)),
        }
    }

    fn observe<'a>(
        log: &'a Recovered,
        server: &'a ServerIdentity,
        slot: Option<&'a SlotRow>,
        checkpoint: Option<&'a Checkpoint>,
    ) -> Observed<'a> {
        Observed {
            log_dir: Path::new(DIR),
            log,
            server,
            timeline_switch: None,
            slot_name: "pgfanout",
            slot,
            checkpoint,
            manage_slot: true,
            recreate_slot: false,
        }
    }

    #[test]
    fn a_fresh_start_creates_the_slot_and_a_new_lineage() {
        let (l, s) = (log(0, 0, None), server());
        let p = plan(&observe(&l, &s, None, None)).unwrap();
        assert_eq!(p.slot, SlotPlan::Create("pgfanout".into()));
        assert_eq!(p.resume.last_seq, 0);
        assert_eq!(p.meta.source, source());
        assert!(!p.resync_all);
        // Without source.manage the old message stands.
        let mut o = observe(&l, &s, None, None);
        o.manage_slot = false;
        assert!(matches!(
            plan(&o),
            Err(RecoveryError::Source(SourceError::SlotMissing { .. }))
        ));
        // An existing slot (created by hand) is adopted wherever it stands.
        let row = slot(0x5000);
        let p = plan(&observe(&l, &s, Some(&row), None)).unwrap();
        assert_eq!(p.slot, SlotPlan::Resume("pgfanout".into()));
    }

    #[test]
    fn a_log_from_another_cluster_database_or_slot_is_refused_naming_each_difference() {
        let mut foreign = meta(Lineage::random());
        foreign.source.system_identifier = 42;
        foreign.source.database = "other".into();
        let (l, s, row) = (log(10, 0x100, Some(foreign)), server(), slot(0x100));
        let err = plan(&observe(&l, &s, Some(&row), None)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RecoveryError::LogFromAnotherSource { .. }));
        assert!(
            text.contains("system identifier 42 (the server is 7300000000000000001)"),
            "{text}"
        );
        assert!(text.contains("database \"other\""), "{text}");
        assert!(text.contains(DIR), "{text}");
    }

    #[test]
    fn a_new_timeline_is_accepted_only_when_it_forked_after_the_log() {
        let (l, row) = (log(10, 0x100, Some(meta(Lineage::random()))), slot(0x100));
        let mut s = server();
        s.timeline = 2;
        let mut o = observe(&l, &s, Some(&row), None);
        assert!(matches!(
            plan(&o),
            Err(RecoveryError::TimelineChanged { switch: None, .. })
        ));
        o.timeline_switch = Some(Lsn(0x80));
        let err = plan(&o).unwrap_err().to_string();
        assert!(
            err.contains("left timeline 1 at 0/80, before the log's end 0/100"),
            "{err}"
        );
        o.timeline_switch = Some(Lsn(0x100));
        let p = plan(&o).unwrap();
        assert_eq!(p.meta.source.timeline, 2);
        assert_eq!(p.notes.len(), 1);
    }

    #[test]
    fn a_checkpoint_of_another_source_or_lineage_is_refused() {
        let lineage = Lineage::random();
        let (l, s, row) = (log(10, 0x100, Some(meta(lineage))), server(), slot(0x100));
        let mut cp = Checkpoint {
            commit_end_lsn: Lsn(0x100),
            last_seq: 10,
            binding: Some(Binding {
                lineage: Lineage::random(),
                source: source(),
            }),
        };
        assert!(matches!(
            plan(&observe(&l, &s, Some(&row), Some(&cp))),
            Err(RecoveryError::CheckpointFromAnotherLog { .. })
        ));
        cp.binding = Some(Binding {
            lineage,
            source: SourceId {
                database: "other".into(),
                ..source()
            },
        });
        assert!(matches!(
            plan(&observe(&l, &s, Some(&row), Some(&cp))),
            Err(RecoveryError::CheckpointFromAnotherSource { .. })
        ));
        cp.binding = Some(Binding {
            lineage,
            source: source(),
        });
        let p = plan(&observe(&l, &s, Some(&row), Some(&cp))).unwrap();
        assert_eq!(p.meta.lineage, lineage);
        assert_eq!(p.resume.last_seq, 10);
    }

    #[test]
    fn a_log_shorter_than_what_was_confirmed_is_refused_never_renumbered() {
        let (s, row) = (server(), slot(0x80));
        let cp = Checkpoint {
            commit_end_lsn: Lsn(0x100),
            last_seq: 10,
            binding: None,
        };
        let mut l = log(6, 0x80, Some(meta(Lineage::random())));
        l.truncated_bytes = 17;
        let err = plan(&observe(&l, &s, Some(&row), Some(&cp))).unwrap_err();
        let text = err.to_string();
        assert!(matches!(
            err,
            RecoveryError::LogShorter {
                log_seq: 6,
                confirmed_seq: 10,
                ..
            }
        ));
        assert!(text.contains("this is damage, not a torn write"), "{text}");
        assert!(text.contains("--recreate-slot"), "{text}");
        // A lost log (empty, no META) with a checkpoint: the same.
        let empty = log(0, 0, None);
        assert!(matches!(
            plan(&observe(&empty, &s, Some(&row), Some(&cp))),
            Err(RecoveryError::LogShorter { log_seq: 0, .. })
        ));
        // The log's own META position is a confirmation too.
        let mut m = meta(Lineage::random());
        m.position = Position {
            lsn: Lsn(0x200),
            last_seq: 9,
        };
        let l = log(6, 0x80, Some(m));
        assert!(matches!(
            plan(&observe(&l, &s, Some(&row), None)),
            Err(RecoveryError::LogShorter {
                by: "its own META file",
                ..
            })
        ));
    }

    #[test]
    fn a_slot_confirmed_past_what_the_log_vouches_for_is_refused() {
        let s = server();
        let mut m = meta(Lineage::random());
        let l = log(10, 0x100, Some(m.clone()));
        let row = slot(0x180);
        let err = plan(&observe(&l, &s, Some(&row), None)).unwrap_err();
        assert!(matches!(err, RecoveryError::SlotAhead { .. }), "{err}");
        // The META position vouches for idle WAL past the last commit.
        m.position = Position {
            lsn: Lsn(0x180),
            last_seq: 10,
        };
        let l = log(10, 0x100, Some(m));
        let p = plan(&observe(&l, &s, Some(&row), None)).unwrap();
        assert_eq!(
            p.resume,
            Resume {
                last_seq: 10,
                logged_end: Lsn(0x180)
            }
        );
        // An unbound log from an older pgfanout is bound, with a note, unchecked this once.
        let old = log(10, 0x100, None);
        let p = plan(&observe(&old, &s, Some(&row), None)).unwrap();
        assert_eq!(p.notes.len(), 1);
    }

    #[test]
    fn a_missing_slot_over_progress_is_refused_and_recreate_continues_the_numbering() {
        let s = server();
        let lineage = Lineage::random();
        let l = log(10, 0x100, Some(meta(lineage)));
        let err = plan(&observe(&l, &s, None, None)).unwrap_err();
        assert!(
            matches!(err, RecoveryError::SlotGone { log_seq: 10, .. }),
            "{err}"
        );
        let mut o = observe(&l, &s, None, None);
        o.recreate_slot = true;
        let p = plan(&o).unwrap();
        assert_eq!(p.slot, SlotPlan::Recreate("pgfanout".into()));
        assert_eq!(p.resume.last_seq, 10);
        assert_eq!(p.meta.lineage, lineage);
        assert!(p.resync_all);
        // A lost log: the new one is numbered after the checkpoint's seq, in the same lineage.
        let cp = Checkpoint {
            commit_end_lsn: Lsn(0x100),
            last_seq: 25,
            binding: Some(Binding {
                lineage,
                source: source(),
            }),
        };
        let empty = log(0, 0, None);
        let row = slot(0x100);
        let mut o = observe(&empty, &s, Some(&row), Some(&cp));
        o.recreate_slot = true;
        let p = plan(&o).unwrap();
        assert_eq!(p.resume.last_seq, 25);
        assert_eq!(p.meta.base_seq, 25);
        assert_eq!(p.meta.lineage, lineage);
        // ...and a restart before its first change resumes from that base, not from 0.
        let started_over = log(0, 0, Some(p.meta.clone()));
        let p2 = plan(&observe(&started_over, &s, Some(&row), Some(&cp))).unwrap();
        assert_eq!(p2.resume.last_seq, 25);
        // A short log that still holds data cannot be continued past its gap.
        let short = log(6, 0x80, Some(meta(lineage)));
        let mut o = observe(&short, &s, Some(&row), Some(&cp));
        o.recreate_slot = true;
        assert!(matches!(
            plan(&o),
            Err(RecoveryError::RecreateOverShortLog { .. })
        ));
    }

    #[test]
    fn timeline_history_gives_the_switch_point_of_the_parent() {
        let history =
            "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point\n";
        assert_eq!(timeline_switch_point(history, 1), Some(Lsn(0x300_0158)));
        assert_eq!(timeline_switch_point(history, 2), Some(Lsn(0x500_0000)));
        assert_eq!(timeline_switch_point(history, 3), None);
        assert_eq!(timeline_switch_point("garbage\n# c\n", 1), None);
    }
}
