//! Progress of long work — `replay`, `resync`, a destination catching up from the log — shown
//! one way everywhere: a bar on standard error when it is a terminal (indicatif), otherwise a
//! log line every [`LOG_EVERY`] with the same numbers as fields (what, done, total, rate,
//! ETA). The daemon always logs: its standard error is a log, even on a terminal.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

/// A log line this often while work goes on (and none for work that ends sooner).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// One piece of long work; see the module comment. Dropping it ends the bar.
#[derive(Debug)]
pub struct Progress {
    what: String,
    unit: &'static str,
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Instant,
    done: u64,
    total: Option<u64>,
    /// A word on where the work stands besides the count (`tables 1/3`), or empty.
    detail: String,
}

impl Progress {
    /// A command's progress: a bar when standard error is a terminal, else log lines.
    /// `unit` names what `done` counts (`changes`, `rows`).
    pub fn start(what: impl Into<String>, unit: &'static str, total: Option<u64>) -> Progress {
        let mut p = Progress::logged(what, unit, total);
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total.unwrap_or(0));
            let template =
                "{prefix} [{bar:24}] {percent:>3}%  {pos}/{len} {msg}  {per_sec}  ETA {eta}";
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("#>."));
            }
            bar.set_prefix(p.what.clone());
            bar.set_message(unit);
            p.bar = Some(bar);
        }
        p
    }

    /// The daemon's progress: log lines only.
    pub fn logged(what: impl Into<String>, unit: &'static str, total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress {
            what: what.into(),
            unit,
            bar: None,
            started: now,
            last_log: now,
            done: 0,
            total,
            detail: String::new(),
        }
    }

    /// Where the work stands: `done` of `total` (the total may move, as a log grows).
    pub fn update(&mut self, done: u64, total: Option<u64>) {
        self.done = done;
        if total.is_some() {
            self.total = total;
        }
        match &self.bar {
            Some(bar) => {
                if let Some(t) = self.total {
                    bar.set_length(t);
                }
                bar.set_position(done);
            }
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                self.log("progress");
            }
            None => {}
        }
    }

    /// Says where the work stands besides the count (shown with the bar, a field of the log
    /// line).
    pub fn set_detail(&mut self, detail: impl Into<String>) {
        let detail = detail.into();
        if detail == self.detail {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{}  {detail}", self.unit));
        }
        self.detail = detail;
    }

    /// The work ended: clears the bar; logs a last line when lines were logged before.
    pub fn finish(mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        } else if self.started.elapsed() >= LOG_EVERY {
            self.log("done");
        }
    }

    /// Per second since the start.
    fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        }
    }

    fn log(&self, stage: &str) {
        let rate = self.rate();
        let eta_seconds = match self.total {
            Some(t) if rate > 0.0 && t > self.done => Some(((t - self.done) as f64 / rate).ceil()),
            _ => None,
        };
        info!(
            what = %self.what,
            unit = self.unit,
            done = self.done,
            total = self.total,
            per_second = rate.round(),
            eta_seconds,
            elapsed_seconds = self.started.elapsed().as_secs(),
            detail = %self.detail,
            "{}: {stage}",
            self.what
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
