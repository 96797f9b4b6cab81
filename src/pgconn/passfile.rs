//! libpq's password file (`~/.pgpass`, or `PGPASSFILE` / `passfile=`): lines of
//! `host:port:database:username:password`, `*` matching anything in the first four fields,
//! `\` escaping `:` and `\`, `#` starting a comment line. Read once, when the connection
//! string is parsed; consulted only for a connection whose string and environment give no
//! password. As libpq, a file that others may read is ignored with a warning, and a missing
//! file is no error. Nothing here logs a password.

use std::path::{Path, PathBuf};

use super::Secret;

/// A field of an entry: `None` is the wildcard `*`.
type Pattern = Option<String>;

#[derive(Clone, PartialEq, Eq)]
struct Entry {
    host: Pattern,
    port: Pattern,
    database: Pattern,
    user: Pattern,
    password: Secret,
}

/// The entries of one password file, in file order (the first match wins).
#[derive(Clone, PartialEq, Eq)]
pub struct PassFile {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl std::fmt::Debug for PassFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PassFile({}, {} entries)",
            self.path.display(),
            self.entries.len()
        )
    }
}

impl PassFile {
    /// Reads `path`; `None` when it does not exist, is not a plain file, or is readable by
    /// group or others (then with a WARN, as libpq).
    pub fn read(path: &Path) -> Option<PassFile> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_file() {
            tracing::warn!(path = %path.display(), "password file is not a plain file; ignoring it");
            return None;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                // Warned once per file: every connection string of the configuration reads it.
                if crate::report::first_time(&format!("passfile {}", path.display())) {
                    tracing::warn!(
                        path = %path.display(),
                        "password file has group or world access; permissions should be u=rw (0600) or less; ignoring it (as libpq does)"
                    );
                }
                return None;
            }
        }
        match std::fs::read_to_string(path) {
            Ok(text) => Some(PassFile::parse(path, &text)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the password file; ignoring it");
                None
            }
        }
    }

    fn parse(path: &Path, text: &str) -> PassFile {
        let entries = text
            .lines()
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .filter(|l| !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        PassFile {
            path: path.to_owned(),
            entries,
        }
    }

    /// The password of the first entry matching a connection to `host`:`port` as `user` on
    /// `database`; `host` as the file names it (`Host::passfile_name`).
    pub fn lookup(&self, host: &str, port: u16, database: &str, user: &str) -> Option<Secret> {
        let port = port.to_string();
        let matches =
            |pattern: &Pattern, value: &str| pattern.as_deref().is_none_or(|p| p == value);
        self.entries
            .iter()
            .find(|e| {
                matches(&e.host, host)
                    && matches(&e.port, &port)
                    && matches(&e.database, database)
                    && matches(&e.user, user)
            })
            .map(|e| e.password.clone())
    }
}

/// One line's five fields, unescaped; `None` for a line with fewer (libpq skips those). As in
/// libpq, only a bare `*` is the wildcard: `\*` is a literal star.
fn parse_line(line: &str) -> Option<Entry> {
    let mut fields: Vec<Pattern> = Vec::with_capacity(4);
    let mut field = String::new();
    let mut escaped = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                escaped = true;
                field.extend(chars.next());
            }
            ':' if fields.len() < 4 => {
                let f = std::mem::take(&mut field);
                fields.push((escaped || f != "*").then_some(f));
                escaped = false;
            }
            c => field.push(c),
        }
    }
    if fields.len() < 4 {
        return None;
    }
    let mut f = fields.into_iter();
    Some(Entry {
        host: f.next()?,
        port: f.next()?,
        database: f.next()?,
        user: f.next()?,
        password: Secret::new(field),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> PassFile {
        PassFile::parse(Path::new("/test/.pgpass"), text)
    }

    fn pw(f: &PassFile, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
        f.lookup(host, port, db, user)
            .map(|s| s.expose().to_owned())
    }

    #[test]
    fn first_matching_line_wins_with_wildcards() {
        let f = file(
            "# comment\n\
             db.example:5432:shop:app:first\n\
             db.example:*:*:app:second\n\
             *:*:*:*:fallback\r\n\
             too:few:fields\n",
        );
        let db = "db.example";
        assert_eq!(pw(&f, db, 5432, "shop", "app").as_deref(), Some("first"));
        assert_eq!(pw(&f, db, 6543, "other", "app").as_deref(), Some("second"));
        assert_eq!(
            pw(&f, "x", 1, "d", "u").as_deref(),
            Some("fallback"),
            "CR stripped"
        );
        assert_eq!(file("h:1:d:u:p").lookup(db, 1, "d", "u"), None);
        let star = file(r"\*:*:*:*:literal");
        assert_eq!(
            pw(&star, db, 1, "d", "u"),
            None,
            "an escaped star is a literal"
        );
        assert_eq!(pw(&star, "*", 1, "d", "u").as_deref(), Some("literal"));
    }

    #[test]
    fn backslash_escapes_colon_and_backslash_in_every_field() {
        let f = file(r"h\:x:5432:d\\b:u:pa\:ss\\word:tail");
        assert_eq!(
            pw(&f, "h:x", 5432, r"d\b", "u").as_deref(),
            Some(r"pa:ss\word:tail"),
            "the password is the rest of the line, unescaped"
        );
    }

    #[cfg(unix)]
    #[test]
    fn group_or_world_readable_files_are_ignored_missing_files_too() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(PassFile::read(&path).is_none());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = PassFile::read(&path).expect("0600 is read");
        assert!(!format!("{f:?}").contains("secret"));
        assert!(PassFile::read(&dir.path().join("absent")).is_none());
        assert!(PassFile::read(dir.path()).is_none(), "a directory");
    }
}
