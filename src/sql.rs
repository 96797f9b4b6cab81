//! Quoting for SQL text pgfanout builds. Every identifier and literal that comes from
//! configuration or from the source catalog goes through here, so hostile names cannot inject SQL.

use std::fmt;

/// PostgreSQL truncates longer identifiers, which would silently address another object.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Why `name` cannot name a PostgreSQL object as given, or `None` when it can. Names are
/// always quoted, so any characters will do, but 1 to [`MAX_IDENTIFIER_BYTES`] bytes and no
/// NUL. The one check for every identifier from configuration or a specification.
pub fn identifier_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("is empty; write one".to_owned())
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        Some(format!(
            "is {} bytes long; PostgreSQL names are at most {MAX_IDENTIFIER_BYTES} bytes (it would truncate it), so shorten it",
            name.len()
        ))
    } else if name.contains('\0') {
        Some("contains a NUL character; remove it".to_owned())
    } else {
        None
    }
}

/// `"name"`, with embedded double quotes doubled.
pub fn quote_ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// `'text'` with quotes doubled; the `E''` form when backslashes are present, so the result
/// means the same whatever `standard_conforming_strings` is.
pub fn quote_literal(text: &str) -> String {
    let quoted = postgres_protocol::escape::escape_literal(text);
    // The E form comes with a leading space (for splicing after a keyword); ours never needs it.
    match quoted.strip_prefix(' ') {
        Some(rest) => rest.to_owned(),
        None => quoted,
    }
}

/// A schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid table name {input:?}: {reason}; write schema.table, quoting names with special characters as \"My Schema\".\"My Table\"")]
pub struct ParseNameError {
    input: String,
    reason: &'static str,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `table`, `schema.table` or quoted parts (`"a.b"."C"`). Unquoted parts fold to
    /// lower case, as PostgreSQL does.
    pub fn parse(input: &str) -> Result<Self, ParseNameError> {
        let err = |reason| ParseNameError {
            input: input.to_owned(),
            reason,
        };
        let mut parts = Vec::new();
        let mut chars = input.trim().chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        Some('"') => break,
                        Some(c) => part.push(c),
                        None => return Err(err("unterminated quoted name")),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if c == '"' {
                        return Err(err("a quote in the middle of a name"));
                    }
                    part.extend(c.to_lowercase());
                    chars.next();
                }
            }
            if part.is_empty() {
                return Err(err("empty name"));
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(_) => return Err(err("unexpected character after a quoted name")),
            }
        }
        match parts.len() {
            1 => Ok(QualifiedName::new("public", parts.remove(0))),
            2 => {
                let name = parts.remove(1);
                Ok(QualifiedName::new(parts.remove(0), name))
            }
            _ => Err(err("more than two dot-separated parts")),
        }
    }

    /// `"schema"."name"`, safe to splice into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_one_to_63_bytes_without_nul() {
        assert_eq!(identifier_problem("a \"b\"; c"), None);
        assert_eq!(identifier_problem(&"x".repeat(63)), None);
        assert!(identifier_problem("").unwrap().starts_with("is empty"));
        assert!(identifier_problem(&"x".repeat(64))
            .unwrap()
            .starts_with("is 64 bytes long"));
        assert!(identifier_problem("a\0b").unwrap().contains("NUL"));
    }

    #[test]
    fn quoting_neutralises_hostile_names() {
        assert_eq!(
            quote_ident(r#"a"; DROP TABLE x; --"#),
            r#""a""; DROP TABLE x; --""#
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\'b"), r"E'a\\''b'");
    }

    #[test]
    fn parses_qualified_names() {
        assert_eq!(
            QualifiedName::parse("users").unwrap(),
            QualifiedName::new("public", "users")
        );
        assert_eq!(
            QualifiedName::parse("App.Users").unwrap(),
            QualifiedName::new("app", "users")
        );
        assert_eq!(
            QualifiedName::parse(r#""My ""S"".x"."T""#).unwrap(),
            QualifiedName::new(r#"My "S".x"#, "T")
        );
        for bad in ["", "a.", ".b", "a.b.c", r#""open"#, r#"a"b"#, r#""a"x"#] {
            let e = QualifiedName::parse(bad).unwrap_err();
            assert!(e.to_string().contains("schema.table"), "{bad}: {e}");
        }
    }
}
