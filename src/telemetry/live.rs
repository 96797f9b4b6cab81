//! The daemon's own view of whether it is alive and ready, for `/health` and `/ready`.
//!
//! One per process, like the metrics recorder: the stages write it as they run, the admin
//! endpoint reads it. Nothing here waits on I/O; every lock is held for a copy.
//!
//! - **Heartbeats**: a long-lived loop registers a [`Task`] with the period it wakes up at
//!   anyway and calls [`Task::beat`] there (never per row). A task that has not beaten for
//!   [`STALE_PERIODS`] periods (at least [`STALE_MIN`]) is stale: stuck. Dropping the
//!   `Task` (the loop ended, e.g. while the pipeline starts over) removes it.
//! - **Streaming**: set by the pipeline once start-up's checks passed and the slot streams,
//!   cleared with the reason when it stops or starts over.
//! - **Destinations**: their states and lags as the fan-out last reported them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A task is stale after this many of its periods without a beat…
pub const STALE_PERIODS: u32 = 5;
/// …and never sooner than this.
pub const STALE_MIN: Duration = Duration::from_secs(30);

struct Live {
    started: Instant,
    tasks: Mutex<Vec<Arc<Beat>>>,
    streaming: Mutex<Streaming>,
    destinations: Mutex<Vec<DestinationView>>,
}

static LIVE: LazyLock<Live> = LazyLock::new(|| Live {
    started: Instant::now(),
    tasks: Mutex::new(Vec::new()),
    streaming: Mutex::new(Streaming::No("starting".to_owned())),
    destinations: Mutex::new(Vec::new()),
});

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A plain copy is what the lock guards: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    LIVE.started.elapsed().as_millis() as u64
}

#[derive(Debug)]
struct Beat {
    name: String,
    every: Duration,
    last_ms: AtomicU64,
}

/// A registered long-lived task; see the module's documentation. Unregisters when dropped.
#[derive(Debug)]
pub struct Task(Arc<Beat>);

/// Registers a task named `name` that beats about every `every`.
pub fn task(name: impl Into<String>, every: Duration) -> Task {
    let beat = Arc::new(Beat {
        name: name.into(),
        every,
        last_ms: AtomicU64::new(now_ms()),
    });
    lock(&LIVE.tasks).push(beat.clone());
    Task(beat)
}

impl Task {
    pub fn beat(&self) {
        self.0.last_ms.store(now_ms(), Ordering::Relaxed);
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        lock(&LIVE.tasks).retain(|b| !Arc::ptr_eq(b, &self.0));
    }
}

/// One task as `/health` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskHealth {
    pub name: String,
    pub seconds_since_beat: f64,
    pub stale_after_seconds: f64,
    pub stale: bool,
}

/// The registered tasks, oldest first.
pub fn tasks() -> Vec<TaskHealth> {
    let now = now_ms();
    lock(&LIVE.tasks)
        .iter()
        .map(|b| {
            let since =
                Duration::from_millis(now.saturating_sub(b.last_ms.load(Ordering::Relaxed)));
            let limit = stale_after(b.every);
            TaskHealth {
                name: b.name.clone(),
                seconds_since_beat: since.as_secs_f64(),
                stale_after_seconds: limit.as_secs_f64(),
                stale: since > limit,
            }
        })
        .collect()
}

/// How long a task that beats every `every` may go without a beat.
fn stale_after(every: Duration) -> Duration {
    (every * STALE_PERIODS).max(STALE_MIN)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Streaming {
    Yes,
    /// Why not.
    No(String),
}

/// The pipeline streams from its slot (start-up's checks passed).
pub fn set_streaming() {
    *lock(&LIVE.streaming) = Streaming::Yes;
    metrics::gauge!(super::STREAMING).set(1.0);
}

/// The pipeline does not stream, because of `why` (an error's message chain, or a phase:
/// no row value, no secret — the same text the log shows).
pub fn set_not_streaming(why: impl Into<String>) {
    *lock(&LIVE.streaming) = Streaming::No(why.into());
    metrics::gauge!(super::STREAMING).set(0.0);
}

/// `Ok` while streaming, else why not.
pub fn streaming() -> Result<(), String> {
    match &*lock(&LIVE.streaming) {
        Streaming::Yes => Ok(()),
        Streaming::No(why) => Err(why.clone()),
    }
}

/// One destination as the fan-out last reported it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DestinationView {
    pub name: String,
    /// As `status` shows it (a hold, `failed` or `needs resync`, shows instead).
    pub state: String,
    pub applied_seq: u64,
    pub lag_changes: u64,
    pub lag_seconds: f64,
}

pub fn set_destinations(views: Vec<DestinationView>) {
    *lock(&LIVE.destinations) = views;
}

pub fn destinations() -> Vec<DestinationView> {
    lock(&LIVE.destinations).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_listed_until_dropped_and_stale_only_past_its_limit() {
        let t = task("test-task", Duration::from_secs(1));
        t.beat();
        let mine: Vec<_> = tasks()
            .into_iter()
            .filter(|h| h.name == "test-task")
            .collect();
        assert_eq!(mine.len(), 1);
        assert!(!mine[0].stale);
        assert_eq!(mine[0].stale_after_seconds, STALE_MIN.as_secs_f64());
        drop(t);
        assert!(tasks().iter().all(|h| h.name != "test-task"));
    }

    #[test]
    fn stale_after_five_periods_never_sooner_than_the_minimum() {
        assert_eq!(stale_after(Duration::from_secs(2)), STALE_MIN);
        assert_eq!(
            stale_after(Duration::from_secs(10)),
            Duration::from_secs(50)
        );
    }
}
