//! The demo's output: event lines, and a live table of the destinations. On a terminal the
//! table is redrawn in place below the events (ANSI cursor movement: no dependency for two
//! escape codes); otherwise it is printed as plain lines every [`PLAIN_EVERY`].

use std::io::Write;
use std::time::{Duration, Instant};

/// How often a non-terminal gets the table.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// One destination's row of the live table.
pub struct Row {
    pub name: String,
    pub kind: &'static str,
    pub state: String,
    pub applied: u64,
    pub lag_changes: u64,
    pub lag_seconds: f64,
    /// Live rows per target table (`None`: not created yet).
    pub rows: Vec<(&'static str, Option<u64>)>,
}

/// What the table shows above the destinations.
pub struct Header {
    pub elapsed: Duration,
    pub phase: String,
    pub workload: String,
    pub log_seq: u64,
    pub log_bytes: u64,
    pub slot_lag_bytes: Option<i64>,
}

pub struct Screen {
    terminal: bool,
    /// The terminal's width: a wrapped line would throw the redraw off by a line.
    columns: usize,
    /// Lines of the table now on the terminal, to move back over.
    drawn: usize,
    last_plain: Option<Instant>,
}

impl Screen {
    pub fn new(terminal: bool) -> Screen {
        Screen {
            terminal,
            columns: if terminal { columns() } else { usize::MAX },
            drawn: 0,
            last_plain: None,
        }
    }

    /// A line that stays (above the table on a terminal).
    pub fn event(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        self.erase(&mut out);
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// Shows the table: redrawn in place on a terminal; on anything else printed only when
    /// [`PLAIN_EVERY`] passed since the last time, or when `force`.
    pub fn table(&mut self, header: &Header, rows: &[Row], force: bool) {
        let lines = render(header, rows);
        let mut out = std::io::stdout().lock();
        if self.terminal {
            self.erase(&mut out);
            for l in &lines {
                let fit: String = l.chars().take(self.columns.saturating_sub(1)).collect();
                let _ = writeln!(out, "{fit}");
            }
            self.drawn = lines.len();
        } else {
            let due = self.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY);
            if !(due || force) {
                return;
            }
            self.last_plain = Some(Instant::now());
            for l in &lines {
                let _ = writeln!(out, "{l}");
            }
        }
        let _ = out.flush();
    }

    /// Leaves the table where it is: what comes next is printed below it.
    pub fn keep(&mut self) {
        self.drawn = 0;
    }

    fn erase(&mut self, out: &mut impl Write) {
        if self.terminal && self.drawn > 0 {
            // Up over the table, then clear from there to the end of the screen.
            let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }
}

fn render(h: &Header, rows: &[Row]) -> Vec<String> {
    let slot = h.slot_lag_bytes.map_or_else(|| "-".to_owned(), bytes);
    let mut lines = vec![
        format!("── {}s · {}", h.elapsed.as_secs(), h.phase),
        format!("   workload: {}", h.workload),
        format!(
            "   change log: last seq {}, {} · slot: {slot} of WAL not yet confirmed",
            h.log_seq,
            bytes(h.log_bytes as i64),
        ),
    ];
    // The live-row columns, named after the target tables of the first destination.
    let tables: Vec<&str> = rows
        .first()
        .map(|r| r.rows.iter().map(|(t, _)| short(t)).collect())
        .unwrap_or_default();
    let mut head = format!(
        "   {:<14} {:<10} {:<14} {:>8} {:>12}",
        "destination", "kind", "state", "applied", "lag"
    );
    for t in &tables {
        head.push_str(&format!(" {t:>8}"));
    }
    lines.push(head);
    for r in rows {
        let mut line = format!(
            "   {:<14} {:<10} {:<14} {:>8} {:>12}",
            r.name,
            r.kind,
            r.state,
            r.applied,
            format!("{} / {:.1}s", r.lag_changes, r.lag_seconds),
        );
        for (_, n) in &r.rows {
            line.push_str(&format!(
                " {:>8}",
                n.map_or_else(|| "-".into(), |n| n.to_string())
            ));
        }
        lines.push(line);
    }
    lines
}

/// A table's name for a column header.
fn short(table: &str) -> &str {
    table.rsplit('_').next().unwrap_or(table)
}

/// The terminal's width from `stty size` (it reads the terminal on its stdin), 80 if unknown.
fn columns() -> usize {
    std::process::Command::new("stty")
        .arg("size")
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
        })
        .filter(|&c: &usize| c > 0)
        .unwrap_or(80)
}

fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    if n < 1024.0 {
        format!("{n} B")
    } else if n < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    }
}
