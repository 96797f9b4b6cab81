//! Named failpoints: the places where the fault-injection suite (`tests/faults.rs`) makes
//! pgfanout fail the way the world makes it fail, all listed here.
//!
//! ```text
//!  FAILPOINTS="changelog::after_write_before_fsync=5*off->1*return(crash)"
//!        │ arm_from_env (main, before anything runs)
//!        ▼
//!  hit(point) in a stage ──return(crash)──▶ the process ends as under SIGKILL
//!                         ──return(error)──▶ Err(io::Error): handled like a real one there
//!                         ──(not armed)────▶ Ok(())
//! ```
//!
//! - `return(crash)` ends the process at once with `std::process::abort()`: no unwinding, no
//!   destructors, no buffer flushed. What the kernel already holds stays (file pages written,
//!   bytes sent, sockets closed by the kernel), exactly as after SIGKILL.
//! - `return(error)` makes [`hit`] return an [`io::Error`] (its source is [`Injected`]) that the
//!   code around the point handles as it would a real I/O error in that place: a failed write
//!   or fsync poisons the change-log writer, a broken connection makes a destination retry.
//!
//! - `return(gate:PATH)` holds the thread at the point until the file `PATH` exists (having
//!   created `PATH.reached` to say it is there), then passes: a test lets the process go on
//!   when it has done what it wanted done meanwhile.
//!
//! The actions are the `fail` crate's: `N*off->1*return(crash)` lets a point pass `N` times
//! and fires once on the next call, so a fault lands mid-run, not at the first call.
//!
//! Points exist only with the `failpoints` cargo feature (`scripts/test.sh` always enables it).
//! Without it [`hit`] is an inline `Ok(())` that compiles to nothing, and `FAILPOINTS` is
//! ignored with a warning. Names are checked when armed: a misspelt point is an error, never a
//! point that silently does not fire.

use std::fmt;
use std::io;

/// After the change log wrote its buffer to the active segment, before the fsync.
pub const LOG_AFTER_WRITE_BEFORE_FSYNC: &str = "changelog::after_write_before_fsync";
/// After the META file's temporary copy is written and fsync'd, before it is renamed over META.
pub const LOG_AFTER_META_TMP_BEFORE_RENAME: &str = "changelog::after_meta_tmp_before_rename";
/// After retention deleted a segment: before the next one and before the directory's fsync.
pub const LOG_DURING_RETENTION: &str = "changelog::during_retention";
/// Recovery found a torn tail to cut: before the cut (first evaluation) and after the cut,
/// before its fsync (second); also around removing a last segment without a commit.
pub const LOG_DURING_RECOVERY: &str = "changelog::during_recovery";
/// The writer thread's fsync returned, before the durable position is published to the slot.
pub const PIPELINE_AFTER_FSYNC_BEFORE_FEEDBACK: &str = "pipeline::after_fsync_before_feedback";
/// PostgreSQL destination, inside the batch transaction: rows written, watermark not moved.
pub const PG_AFTER_DATA_BEFORE_WATERMARK: &str = "sink::postgres::after_data_before_watermark";
/// PostgreSQL destination, inside the batch transaction: between two tables' writes.
pub const PG_MID_BATCH: &str = "sink::postgres::mid_batch";
/// Parallel apply: every other connection committed its share of the batch; the batch
/// transaction (connection 0's share and the watermark) not yet.
pub const PG_BETWEEN_PARTITIONS: &str = "sink::postgres::between_partitions";
/// ClickHouse destination: the batch's rows inserted, its watermark not yet.
pub const CH_AFTER_DATA_BEFORE_WATERMARK: &str = "sink::clickhouse::after_data_before_watermark";
/// ClickHouse destination: between two tables' inserts of one batch.
pub const CH_MID_BATCH: &str = "sink::clickhouse::mid_batch";
/// `pgfanout replay`, once: the end of the log to replay is fixed, nothing written yet.
pub const REPLAY_BEFORE_APPLY: &str = "fanout::replay::before_apply";

/// Every point, in the order data flows through them.
pub const POINTS: &[&str] = &[
    LOG_AFTER_WRITE_BEFORE_FSYNC,
    LOG_AFTER_META_TMP_BEFORE_RENAME,
    LOG_DURING_RETENTION,
    LOG_DURING_RECOVERY,
    PIPELINE_AFTER_FSYNC_BEFORE_FEEDBACK,
    PG_AFTER_DATA_BEFORE_WATERMARK,
    PG_MID_BATCH,
    PG_BETWEEN_PARTITIONS,
    CH_AFTER_DATA_BEFORE_WATERMARK,
    CH_MID_BATCH,
    REPLAY_BEFORE_APPLY,
];

/// The argument of `return(…)` that ends the process.
pub const CRASH: &str = "crash";
/// The argument of `return(…)` that returns an I/O error.
pub const ERROR: &str = "error";
/// The prefix of the argument of `return(gate:PATH)`: the point creates `PATH.reached` and
/// blocks its thread until `PATH` exists, then passes. It lets a test hold a process at a
/// point and let it go, without guessing durations.
pub const GATE: &str = "gate:";

/// The source of an injected I/O error: names the point (tests look for it in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    pub point: &'static str,
}

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fault injected at failpoint {}", self.point)
    }
}

impl std::error::Error for Injected {}

/// Evaluates `point`: `Ok(())` unless it is armed and fires (see the module comment).
#[cfg(feature = "failpoints")]
pub fn hit(point: &'static str) -> io::Result<()> {
    fail::fail_point!(point, |arg: Option<String>| fire(point, arg.as_deref()));
    Ok(())
}

/// Without the `failpoints` feature a point is nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_point: &'static str) -> io::Result<()> {
    Ok(())
}

#[cfg(feature = "failpoints")]
fn fire(point: &'static str, arg: Option<&str>) -> io::Result<()> {
    if let Some(path) = arg.and_then(|a| a.strip_prefix(GATE)) {
        return gate(point, std::path::Path::new(path));
    }
    if arg == Some(CRASH) {
        // One line to say why the process is gone (stderr is unbuffered), then as SIGKILL.
        tracing::error!(failpoint = point, "failpoint: crashing the process");
        std::process::abort();
    }
    // `arm` admits only `return(crash)` and `return(error)`.
    tracing::warn!(failpoint = point, "failpoint: injecting an I/O error");
    Err(io::Error::other(Injected { point }))
}

/// See [`GATE`]. Polls: a test's gate is opened once, and the wait is what it is for.
#[cfg(feature = "failpoints")]
fn gate(point: &'static str, path: &std::path::Path) -> io::Result<()> {
    let mut reached = path.as_os_str().to_owned();
    reached.push(".reached");
    std::fs::write(&reached, point)?;
    tracing::warn!(failpoint = point, gate = %path.display(), "failpoint: waiting for the gate file");
    while !path.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Arms the points named in the `FAILPOINTS` environment variable (`name=actions;…`). An
/// unknown point, an action `fail` cannot parse, or a `return` other than `return(crash)` or
/// `return(error)` is an error naming it (`fail::FailScenario::setup` would panic instead).
#[cfg(feature = "failpoints")]
pub fn arm_from_env() -> Result<(), String> {
    match std::env::var("FAILPOINTS") {
        Ok(spec) => arm(&spec),
        Err(std::env::VarError::NotPresent) => Ok(()),
        Err(std::env::VarError::NotUnicode(_)) => Err("FAILPOINTS is not valid UTF-8".into()),
    }
}

/// Without the `failpoints` feature there is nothing to arm: a set `FAILPOINTS` is only
/// warned about (a stray variable must not stop a production process).
#[cfg(not(feature = "failpoints"))]
pub fn arm_from_env() -> Result<(), String> {
    if std::env::var_os("FAILPOINTS").is_some() {
        tracing::warn!("FAILPOINTS is set, but this pgfanout was built without the `failpoints` feature: no point is armed");
    }
    Ok(())
}

/// Arms each `name=actions` of `spec` (separated by `;`).
#[cfg(feature = "failpoints")]
pub fn arm(spec: &str) -> Result<(), String> {
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, actions)) = entry.split_once('=') else {
            return Err(format!(
                "FAILPOINTS: {entry:?} is not of the form name=actions"
            ));
        };
        let (name, actions) = (name.trim(), actions.trim());
        if !POINTS.contains(&name) {
            return Err(format!(
                "FAILPOINTS: there is no failpoint {name:?}; the points are {}",
                POINTS.join(", ")
            ));
        }
        if let Some(bad) = bad_return(actions) {
            return Err(format!(
                "FAILPOINTS: {name}: {bad:?} is not return({CRASH}), return({ERROR}) or return({GATE}PATH)"
            ));
        }
        fail::cfg(name, actions).map_err(|e| format!("FAILPOINTS: {name}: {e}"))?;
    }
    Ok(())
}

/// The first `return` action of `actions` whose argument is neither [`CRASH`] nor [`ERROR`].
#[cfg(feature = "failpoints")]
fn bad_return(actions: &str) -> Option<&str> {
    actions.split("->").map(str::trim).find(|action| {
        let (task, arg) = match action.split_once('(') {
            Some((task, rest)) => (task, rest.strip_suffix(')')),
            None => (*action, None),
        };
        // `[p%][cnt*]task`: the task is what follows the last `%` or `*`.
        let task = task.rsplit(['%', '*']).next().unwrap_or(task).trim();
        task == "return"
            && !matches!(arg, Some(a) if a == CRASH || a == ERROR || a.starts_with(GATE))
    })
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    #[test]
    fn arming_refuses_unknown_points_and_other_returns() {
        let err = arm("changelog::after_write_before_fsnyc=return(crash)").unwrap_err();
        assert!(err.contains("no failpoint") && err.contains(LOG_AFTER_WRITE_BEFORE_FSYNC));
        let err = arm(&format!("{PG_MID_BATCH}=2*off->1*return(boom)")).unwrap_err();
        assert!(err.contains("return(boom)"), "{err}");
        let err = arm(&format!("{PG_MID_BATCH}=return")).unwrap_err();
        assert!(err.contains("\"return\""), "{err}");
        let err = arm(&format!("{PG_MID_BATCH}=sometimes")).unwrap_err();
        assert!(err.contains("unrecognized"), "{err}");
        assert!(arm("no equals sign").is_err());
        assert_eq!(bad_return("3*off->50%1*return(error)"), None);
        assert_eq!(bad_return("1*return(crash)"), None);
        assert_eq!(bad_return("1*return(gate:/tmp/g)"), None);
    }

    #[test]
    fn an_armed_error_fires_as_counted_and_names_its_point() {
        // A name of this test alone: the registry is global to the test binary.
        const POINT: &str = "failpoint::tests::counted";
        fail::cfg(POINT, &format!("2*off->1*return({ERROR})")).unwrap();
        let results: Vec<bool> = (0..5).map(|_| hit(POINT).is_ok()).collect();
        assert_eq!(results, [true, true, false, true, true]);
        fail::cfg(POINT, &format!("1*return({ERROR})")).unwrap();
        let err = hit(POINT).unwrap_err();
        let injected = err.get_ref().and_then(|e| e.downcast_ref::<Injected>());
        assert_eq!(injected, Some(&Injected { point: POINT }));
        assert_eq!(
            err.to_string(),
            format!("fault injected at failpoint {POINT}")
        );
        fail::remove(POINT);
    }
}
