//! How an error is shown: its own message, then each cause in its chain, once. Every error
//! type prints only its own text (what was being done, and a hint); the causes are joined
//! here, at the edges that show errors to a person: the command line, the logs, and the
//! `last_error` that `status` reports.

use std::collections::BTreeSet;
use std::error::Error;
use std::fmt;
use std::sync::Mutex;

/// Whether `key` is reported for the first time in this process: for warnings given once (per
/// connection target, say) however often the code that finds them runs again.
pub fn first_time(key: &str) -> bool {
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    // Nothing panics while holding the lock; a poisoned set is still a valid set.
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    seen.insert(key.to_owned())
}

/// `error: cause: cause …` on one line (logs, status), or with `{:#}` one cause per line
/// under the message (the command line).
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            if f.alternate() {
                write!(f, "\n  caused by: {c}")?;
            } else {
                write!(f, ": {c}")?;
            }
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the segment")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn first_time_is_once_per_key() {
        assert!(first_time("report::tests a"));
        assert!(!first_time("report::tests a"));
        assert!(first_time("report::tests b"));
    }

    #[test]
    fn every_cause_once() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(Chain(&e).to_string(), "reading the segment: disk on fire");
        assert_eq!(
            format!("{:#}", Chain(&e)),
            "reading the segment\n  caused by: disk on fire"
        );
    }
}
