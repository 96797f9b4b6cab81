//! Every problem found, reported at once: configuration, mappings, target tables and start-up
//! checks all collect their findings into [`Problems`] and print them as one list, so a
//! deployment learns everything that is wrong in one round.

use std::fmt;
use std::ops::{Deref, DerefMut};

/// A list of problems, each a complete sentence that says what to fix. Displays as an
/// indented bullet list, one line each (continuation lines indented under their bullet),
/// each starting with a line break so that it follows a heading ending in `:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn new() -> Self {
        Problems::default()
    }
}

impl From<Vec<String>> for Problems {
    fn from(v: Vec<String>) -> Self {
        Problems(v)
    }
}

impl FromIterator<String> for Problems {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Self {
        Problems(iter.into_iter().collect())
    }
}

impl Deref for Problems {
    type Target = Vec<String>;
    fn deref(&self) -> &Vec<String> {
        &self.0
    }
}

impl DerefMut for Problems {
    fn deref_mut(&mut self) -> &mut Vec<String> {
        &mut self.0
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            f.write_str("\n  - ")?;
            let mut lines = p.split('\n');
            if let Some(first) = lines.next() {
                f.write_str(first)?;
            }
            for line in lines {
                write!(f, "\n    {line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bullet_per_problem_with_continuation_lines_indented() {
        let p: Problems = vec!["a".to_owned(), "b\nHINT: c".to_owned()].into();
        assert_eq!(p.to_string(), "\n  - a\n  - b\n    HINT: c");
        assert_eq!(Problems::new().to_string(), "");
    }
}
