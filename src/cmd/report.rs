//! A command's findings as `ok` / `note` / `PROBLEM` lines, every one reported at once
//! (`check`, `log verify`).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(String),
    /// Not a problem, but worth knowing (for example: the slot will be created).
    Note(String),
    /// Works, but should be fixed (for example: a password sent unencrypted). Not a problem:
    /// `check` still passes.
    Warning(String),
    Problem(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub what: &'static str,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub(crate) fn push(&mut self, what: &'static str, outcome: Outcome) {
        self.checks.push(Check { what, outcome });
    }

    pub fn problems(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Problem(_)))
            .count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let (mark, text) = match &c.outcome {
                Outcome::Ok(t) => ("ok     ", t),
                Outcome::Note(t) => ("note   ", t),
                Outcome::Warning(t) => ("warning", t),
                Outcome::Problem(t) => ("PROBLEM", t),
            };
            // Multi-line messages (DETAIL / HINT) stay indented under their check.
            writeln!(
                f,
                "{mark} {}: {}",
                c.what,
                text.replace('\n', "\n          ")
            )?;
        }
        match self.problems() {
            0 => writeln!(f, "all checks passed"),
            n => writeln!(f, "{n} problem(s)"),
        }
    }
}
