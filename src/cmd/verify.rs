//! `pgfanout log verify`: is the change log intact, and may it be resumed with this source,
//! slot and checkpoint? Read-only; the exit code says healthy (0) or not (1).
//!
//! ```text
//!   every record ─▶ CRC, decoding, dense seqs (a gap or a reused seq is a problem)
//!   META         ─▶ readable
//!   source, slot, checkpoint ─▶ pipeline::recovery::plan, the same rules `run` applies
//! ```

use std::sync::Arc;

use super::report::{Outcome, Report};
use crate::changelog::{self, Recovered};
use crate::config::Config;
use crate::pipeline::recovery::{self, Observed};
use crate::report::Chain;
use crate::source::Preflight;
use crate::state::CheckpointStore;

pub async fn verify(cfg: &Config) -> Report {
    let mut report = Report::default();
    let dir = cfg.log.dir.clone();
    // Reading every segment blocks; a command has nothing else to do meanwhile.
    let (records, summary) = (changelog::verify(&dir), changelog::summary(&dir));
    let tail_bytes = match &records {
        Ok(r) => {
            let range = match (r.first_seq, r.last_seq) {
                (Some(a), Some(b)) => format!(", seq {a} to {b}"),
                _ => String::new(),
            };
            report.push(
                "records",
                Outcome::Ok(format!(
                    "{} segment(s), {} changes{range}, {} commits: every CRC, record and seq checks out",
                    r.segments, r.changes, r.commits
                )),
            );
            if r.tail_bytes > 0 {
                report.push(
                    "tail",
                    Outcome::Note(format!(
                        "the last segment ends with {} bytes of an unfinished transaction or a torn write; the next start cuts them off if nothing confirmed lies in them",
                        r.tail_bytes
                    )),
                );
            }
            r.tail_bytes
        }
        Err(e) => {
            report.push("records", Outcome::Problem(Chain(e).to_string()));
            0
        }
    };
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            report.push("META", Outcome::Problem(Chain(&e).to_string()));
            return report;
        }
    };
    match &summary.meta {
        Some(m) => report.push(
            "binding",
            Outcome::Ok(format!(
                "{}, lineage {}, vouched to {} at seq {}",
                m.source, m.lineage, m.position.lsn, m.position.last_seq
            )),
        ),
        None if summary.last_commit.is_some() => report.push(
            "binding",
            Outcome::Note(
                "the log has no META file (an older pgfanout wrote it); the next run binds it"
                    .into(),
            ),
        ),
        None => report.push(
            "binding",
            Outcome::Note("empty log, not bound to a source yet".into()),
        ),
    }

    resume(cfg, &summary, tail_bytes, false, &mut report).await;
    report
}

/// Whether `run` would resume the log summarised by `summary` with this source, slot and
/// checkpoint (`pipeline::recovery::plan`, read-only): one `resume` line, or the problem that
/// stops it. `pgfanout check` asks it too, with `slot_reported`: it reports a missing slot on
/// a fresh start itself.
pub(crate) async fn resume(
    cfg: &Config,
    summary: &changelog::LogSummary,
    tail_bytes: u64,
    slot_reported: bool,
    report: &mut Report,
) {
    let slot_name = cfg.source.slot.as_str();
    let mut preflight = match Preflight::connect(&cfg.source, Some(slot_name)).await {
        Ok(p) => p,
        Err(e) => {
            report.push("source", Outcome::Problem(Chain(&e).to_string()));
            return;
        }
    };
    let timeline_switch = match &summary.meta {
        Some(m) if m.source.timeline != preflight.server.timeline => {
            match preflight.timeline_history().await {
                Ok(h) => h.and_then(|h| recovery::timeline_switch_point(&h, m.source.timeline)),
                Err(e) => {
                    report.push("timeline", Outcome::Problem(Chain(&e).to_string()));
                    None
                }
            }
        }
        _ => None,
    };
    let checkpoint = match cfg.state.conn.connect_sql().await {
        Ok(client) => {
            // Read-only: a schema not migrated yet has no checkpoint, or none with a binding.
            let columns = client
                .query_one(
                    "SELECT count(*) FILTER (WHERE column_name = 'last_seq'), \
                            count(*) FILTER (WHERE column_name = 'lineage') \
                     FROM information_schema.columns \
                     WHERE table_schema = $1 AND table_name = 'checkpoints'",
                    &[&cfg.state.schema],
                )
                .await
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
            match columns {
                Ok((0, _)) => None,
                Ok((_, 0)) => {
                    report.push(
                        "checkpoint",
                        Outcome::Note(format!(
                            "state schema {} predates bindings; `pgfanout migrate` (or run) adds them, and the checkpoint is checked from then on",
                            cfg.state.schema
                        )),
                    );
                    None
                }
                Ok(_) => {
                    let store = CheckpointStore::new(Arc::new(client), &cfg.state.schema);
                    match store.load(slot_name).await {
                        Ok(cp) => cp,
                        Err(e) => {
                            report.push("checkpoint", Outcome::Problem(Chain(&e).to_string()));
                            return;
                        }
                    }
                }
                Err(e) => {
                    report.push(
                        "checkpoint",
                        Outcome::Problem(Chain(&crate::pgconn::PgError::from(e)).to_string()),
                    );
                    return;
                }
            }
        }
        Err(e) => {
            report.push("state database", Outcome::Problem(Chain(&e).to_string()));
            return;
        }
    };
    let found = Recovered {
        last_seq: summary.last_seq,
        last_commit: summary.last_commit,
        truncated_bytes: tail_bytes,
        meta: summary.meta.clone(),
        tail_damage: None,
    };
    let observed = Observed {
        log_dir: &cfg.log.dir,
        log: &found,
        server: &preflight.server,
        timeline_switch,
        slot_name,
        slot: preflight.slot.as_ref(),
        checkpoint: checkpoint.as_ref(),
        manage_slot: cfg.source.manage,
        recreate_slot: false,
    };
    match recovery::plan(&observed) {
        Ok(plan) => {
            let checkpoint = match &checkpoint {
                Some(cp) => format!("checkpoint at seq {}", cp.last_seq),
                None => "no checkpoint".into(),
            };
            report.push(
                "resume",
                Outcome::Ok(format!(
                    "log, {checkpoint} and slot {slot_name:?} agree: numbering resumes after seq {}",
                    plan.resume.last_seq
                )),
            );
            for note in plan.notes {
                report.push("resume", Outcome::Note(note));
            }
        }
        Err(recovery::RecoveryError::Source(_)) if slot_reported => {}
        Err(e) => report.push("resume", Outcome::Problem(Chain(&e).to_string())),
    }
}
