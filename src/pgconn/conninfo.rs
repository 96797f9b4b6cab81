//! Connection strings as libpq takes them: a URL (`postgres://user:pw@a:5432,b:5433/db?…`) or
//! `key=value` pairs (`host=db port=5432 dbname=app sslmode=verify-full`, values quoted with
//! `'…'`, `\` escaping), the `PG*` environment variables for what the string leaves out, and
//! the password file (`passfile.rs`) when neither gives a password.
//!
//! One parse for both kinds of connection pgfanout opens: the replication session (hand-built
//! on postgres-protocol) and ordinary SQL connections (tokio-postgres, see `sql.rs`). What is
//! certain to fail is refused here, before anything connects: `channel_binding=require`
//! without TLS (sslmode=disable, a unix socket), a `require_auth` that allows only methods
//! pgfanout does not speak.
//!
//! Why our own parse rather than `tokio_postgres::Config`'s `FromStr`: that parser refuses
//! every key it does not know, and it knows none of `sslmode=verify-ca`/`verify-full`,
//! `sslrootcert`, `require_auth` or `passfile`, nor the environment and the password file.
//! Layering those on top would mean finding and removing them from the string first, which
//! is tokenizing both forms ourselves anyway, and its host list would go unused: both kinds of
//! connection open their own socket (for `require_auth`, see `sql.rs`), so the hosts are tried
//! here. The grammar itself is small (libpq's `conninfo_parse` and `conninfo_uri_parse`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::auth::{AuthPolicy, ChannelBinding, RequireAuth};
use super::passfile::PassFile;
use super::Secret;

const DEFAULT_PORT: u16 = 5432;
/// Debian's (and most distributions') compiled-in socket directory.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Every key pgfanout takes, with the environment variable that gives its default (libpq's).
const KEYS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("port", "PGPORT"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("dbname", "PGDATABASE"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("application_name", "PGAPPNAME"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("channel_binding", "PGCHANNELBINDING"),
    ("require_auth", "PGREQUIREAUTH"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
    ("passfile", "PGPASSFILE"),
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// Directory holding the server's `.s.PGSQL.<port>` socket.
    Unix(PathBuf),
}

impl Host {
    /// libpq's reading of a host entry: empty is the default socket directory, an absolute
    /// path a socket directory, anything else a name or address.
    fn parse(h: &str) -> Host {
        if h.is_empty() {
            Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR))
        } else if h.starts_with('/') {
            Host::Unix(PathBuf::from(h))
        } else {
            Host::Tcp(h.to_owned())
        }
    }

    /// The name the password file's entries use for this host: as written, except that a
    /// unix socket in the default directory is `localhost` (libpq's rule).
    fn passfile_name(&self) -> Option<&str> {
        match self {
            Host::Tcp(h) => Some(h),
            Host::Unix(dir) if dir == std::path::Path::new(DEFAULT_SOCKET_DIR) => Some("localhost"),
            Host::Unix(dir) => dir.to_str(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// libpq's `target_session_attrs`: which of several hosts to settle on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// The first host that accepts the connection.
    #[default]
    Any,
    /// The first that accepts writes (`transaction_read_only` is off).
    ReadWrite,
    /// The first that is not in recovery (not a standby).
    Primary,
}

impl TargetSessionAttrs {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "primary" => TargetSessionAttrs::Primary,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::Primary => "primary",
        }
    }

    /// The query that tells whether a server qualifies, with the answer that disqualifies it.
    pub fn probe(self) -> Option<(&'static str, &'static str)> {
        match self {
            TargetSessionAttrs::Any => None,
            TargetSessionAttrs::ReadWrite => Some(("SHOW transaction_read_only", "on")),
            TargetSessionAttrs::Primary => Some(("SELECT pg_catalog.pg_is_in_recovery()", "t")),
        }
    }
}

/// Where and how to connect. `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The first host (for one attempt of [`ConnInfo::attempts`], its only host).
    pub host: Host,
    pub port: u16,
    /// Further hosts, tried in order after `host` (libpq's host lists).
    pub more_hosts: Vec<(Host, u16)>,
    pub user: String,
    /// From the string or PGPASSWORD; the password file is consulted per attempt.
    pub password: Option<Secret>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// CA bundle for verify-ca / verify-full (default: the system's roots).
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    pub connect_timeout: Option<Duration>,
    /// libpq's `channel_binding` (default prefer).
    pub channel_binding: ChannelBinding,
    /// libpq's `require_auth`: the authentication methods the server may ask for.
    pub require_auth: Option<RequireAuth>,
    pub target_session_attrs: TargetSessionAttrs,
    /// The password file, read at parse time when no password was given.
    passfile: Option<Arc<PassFile>>,
    /// What this connection is for, in warnings: `source`, `state`, `destination acme`.
    /// Set by the configuration; not part of the URL.
    pub label: Option<String>,
    /// The configuration key the string came from (`source.url`, …), shown with the target
    /// so that a message about the connection says what to fix.
    pub key: Option<String>,
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    String,
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::String => Ok(()),
            Origin::Env(var) => write!(f, " (from the environment variable {var})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnInfoError {
    #[error("is not a connection string: {0}; write a URL, postgres://user@host:5432/dbname, or key=value pairs, host=… port=5432 dbname=… user=…")]
    Syntax(String),
    #[error("unsupported scheme {0:?}; use postgres:// or postgresql://")]
    Scheme(String),
    #[error("unknown connection parameter {0:?}; supported: host, port, user, password, dbname, sslmode, sslrootcert, application_name, connect_timeout, channel_binding, require_auth, target_session_attrs, passfile")]
    UnknownParameter(String),
    #[error("{0} is not supported: pgfanout does not use client certificates; authenticate with a password (scram-sha-256)")]
    ClientCertificate(String),
    #[error("invalid {param} {value:?}{origin}: {expected}")]
    InvalidValue {
        param: &'static str,
        value: String,
        origin: Origin,
        expected: &'static str,
    },
    #[error("invalid require_auth{origin}: {message}")]
    RequireAuth { origin: Origin, message: String },
    #[error("host lists {hosts} hosts but port lists {ports} ports; give one port for all hosts, or one per host")]
    PortCount { hosts: usize, ports: usize },
    #[error("{0}")]
    Conflict(&'static str),
}

impl std::str::FromStr for ConnInfo {
    type Err = ConnInfoError;

    /// With this process's environment for the defaults.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnInfo::parse_with(s, &|var| std::env::var(var).ok())
    }
}

/// The values a connection string gives, by key, with where each came from.
type Params = BTreeMap<&'static str, (String, Origin)>;

fn known_key(key: &str) -> Result<&'static str, ConnInfoError> {
    match KEYS.iter().find(|(k, _)| *k == key) {
        Some((k, _)) => Ok(k),
        None if key.starts_with("sslcert") || key == "sslkey" || key == "sslpassword" => {
            Err(ConnInfoError::ClientCertificate(key.to_owned()))
        }
        // Named only when it looks like a parameter name: it may be part of a mistyped password.
        None if key.len() <= 40 && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => {
            Err(ConnInfoError::UnknownParameter(key.to_owned()))
        }
        None => Err(ConnInfoError::UnknownParameter("…".to_owned())),
    }
}

/// `key=value` pairs as libpq reads them: whitespace between pairs (and around `=`), a value
/// either bare (up to whitespace) or in single quotes, `\` escaping the next character in
/// both. Errors never quote a value: it may be a password.
fn parse_pairs(s: &str) -> Result<Params, ConnInfoError> {
    let mut params = Params::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(params);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // Not quoting the word: it may be the rest of an unquoted password.
            return Err(ConnInfoError::Syntax(
                "a word without \"=\" (quote a value that has spaces: password='a b')".into(),
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(ConnInfoError::Syntax(format!(
                            "the quoted value of {key:?} has no closing quote"
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        params.insert(known_key(&key)?, (value, Origin::String));
    }
}

fn decode(s: &str, what: &str) -> Result<String, ConnInfoError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| {
            ConnInfoError::Syntax(format!("the {what} is not valid percent-encoded UTF-8"))
        })
}

/// A `postgres://` URL as libpq reads it (RFC 3986 plus host lists):
/// `postgres://[user[:password]@][host[:port][,host[:port]…]][/dbname][?key=value&…]`, every
/// part percent-decoded; a query parameter overrides the same value given before it.
fn parse_url(rest: &str) -> Result<Params, ConnInfoError> {
    let mut params = Params::new();
    let mut set = |key: &'static str, value: String| {
        params.insert(key, (value, Origin::String));
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    let hostlist = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                set("user", decode(user, "user name")?);
            }
            if let Some(p) = password {
                set("password", decode(p, "password")?);
            }
            hosts
        }
        None => authority,
    };
    if !hostlist.is_empty() {
        let (mut hosts, mut ports) = (Vec::new(), Vec::new());
        for entry in hostlist.split(',') {
            let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
                let (host, after) = v6.split_once(']').ok_or_else(|| {
                    ConnInfoError::Syntax("an IPv6 address in the URL lacks its closing ]".into())
                })?;
                match after {
                    "" => (host, ""),
                    _ => match after.strip_prefix(':') {
                        Some(port) => (host, port),
                        None => return Err(ConnInfoError::Syntax(
                            "unexpected text after an IPv6 address in the URL; write [addr]:port"
                                .into(),
                        )),
                    },
                }
            } else {
                entry.split_once(':').unwrap_or((entry, ""))
            };
            hosts.push(decode(host, "host")?);
            ports.push(decode(port, "port")?);
        }
        set("host", hosts.join(","));
        if ports.iter().any(|p| !p.is_empty()) {
            set("port", ports.join(","));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        set("dbname", decode(db, "database name")?);
    }
    for pair in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            ConnInfoError::Syntax(format!(
                "URL parameter {:?} has no \"=\"",
                decode(pair, "parameter").unwrap_or_default()
            ))
        })?;
        let key = known_key(&decode(key, "parameter name")?)?;
        set(key, decode(value, "parameter value")?);
    }
    Ok(params)
}

impl ConnInfo {
    /// Parses a connection string (a URL or `key=value` pairs), taking what it leaves out from
    /// `env` (libpq's `PG*` variables, `HOME` and `USER`), and reading the password file when
    /// no password was given.
    pub fn parse_with(
        s: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, ConnInfoError> {
        let s = s.trim();
        let mut params = if let Some(rest) = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
        {
            parse_url(rest)?
        } else if let Some((scheme, _)) = s
            .split_once("://")
            .filter(|(scheme, _)| !scheme.contains(['=', ' ']))
        {
            return Err(ConnInfoError::Scheme(scheme.to_owned()));
        } else if s.contains('=') || s.is_empty() {
            parse_pairs(s)?
        } else {
            return Err(ConnInfoError::Syntax(
                "neither a URL nor key=value pairs".into(),
            ));
        };
        // The string wins; the environment fills in (an empty variable counts as unset).
        for (key, var) in KEYS {
            if !params.contains_key(key) {
                if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                    params.insert(key, (v, Origin::Env(var)));
                }
            }
        }
        let get = |key: &str| params.get(key).filter(|(v, _)| !v.is_empty());
        let invalid = |param: &'static str, expected: &'static str| {
            let (value, origin) = params[param].clone();
            ConnInfoError::InvalidValue {
                param,
                value,
                origin,
                expected,
            }
        };

        let hosts: Vec<Host> = match get("host") {
            Some((h, _)) => h.split(',').map(Host::parse).collect(),
            None => vec![Host::parse("")],
        };
        let ports: Vec<u16> = match get("port") {
            Some((p, _)) => p
                .split(',')
                .map(|p| match p {
                    "" => Ok(DEFAULT_PORT),
                    p => p.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                        invalid(
                            "port",
                            "a number from 1 to 65535 (one per host, comma-separated)",
                        )
                    }),
                })
                .collect::<Result<_, _>>()?,
            None => vec![DEFAULT_PORT],
        };
        let mut endpoints: Vec<(Host, u16)> = match (hosts.len(), ports.len()) {
            (_, 1) => hosts.into_iter().map(|h| (h, ports[0])).collect(),
            (h, p) if h == p => hosts.into_iter().zip(ports).collect(),
            (hosts, ports) => return Err(ConnInfoError::PortCount { hosts, ports }),
        };
        let (host, port) = endpoints.remove(0);

        let user = match get("user") {
            Some((u, _)) => u.clone(),
            // libpq's default: the operating-system user name.
            None => env("USER").unwrap_or_else(|| "postgres".to_owned()),
        };
        let dbname = get("dbname").map_or_else(|| user.clone(), |(d, _)| d.clone());
        let password = get("password").map(|(p, _)| Secret::new(p.clone()));
        let sslmode = match get("sslmode") {
            Some((v, _)) => SslMode::parse(v).ok_or_else(|| {
                invalid(
                    "sslmode",
                    "disable, prefer, require, verify-ca or verify-full",
                )
            })?,
            None => SslMode::Prefer,
        };
        let connect_timeout = match get("connect_timeout") {
            Some((v, _)) => {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| invalid("connect_timeout", "whole seconds"))?;
                (secs > 0).then(|| Duration::from_secs(secs))
            }
            None => None,
        };
        let channel_binding = match get("channel_binding") {
            Some((v, _)) => ChannelBinding::parse(v)
                .ok_or_else(|| invalid("channel_binding", "disable, prefer or require"))?,
            None => ChannelBinding::default(),
        };
        let require_auth = match get("require_auth") {
            Some((v, origin)) => {
                Some(
                    RequireAuth::parse(v).map_err(|message| ConnInfoError::RequireAuth {
                        origin: *origin,
                        message,
                    })?,
                )
            }
            // Empty means unset, as in libpq.
            None => None,
        };
        let target_session_attrs = match get("target_session_attrs") {
            Some((v, _)) => TargetSessionAttrs::parse(v).ok_or_else(|| {
                invalid(
                    "target_session_attrs",
                    "any, read-write or primary (pgfanout writes to every server it connects to)",
                )
            })?,
            None => TargetSessionAttrs::Any,
        };
        // libpq reads the password file only when no password was given.
        let passfile = match password {
            Some(_) => None,
            None => get("passfile")
                .map(|(p, _)| PathBuf::from(p))
                .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".pgpass")))
                .and_then(|path| PassFile::read(&path))
                .map(Arc::new),
        };

        let info = ConnInfo {
            host,
            port,
            more_hosts: endpoints,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert: get("sslrootcert").map(|(p, _)| PathBuf::from(p)),
            application_name: get("application_name")
                .map_or_else(|| "pgfanout".to_owned(), |(a, _)| a.clone()),
            connect_timeout,
            channel_binding,
            require_auth,
            target_session_attrs,
            passfile,
            label: None,
            key: None,
        };
        if info.channel_binding == ChannelBinding::Require {
            if info.sslmode == SslMode::Disable {
                return Err(ConnInfoError::Conflict(
                    "channel_binding=require needs TLS, which sslmode=disable turns off; use sslmode=require or stricter",
                ));
            }
            if info.hosts().any(|(h, _)| matches!(h, Host::Unix(_))) {
                return Err(ConnInfoError::Conflict(
                    "channel_binding=require needs TLS, which a unix socket never uses (as in libpq); connect over TCP",
                ));
            }
        }
        if info
            .require_auth
            .is_some_and(|r: RequireAuth| !r.allows_a_supported_method())
        {
            return Err(ConnInfoError::Conflict(
                "require_auth allows only gss or sspi, which pgfanout does not speak; allow password, md5, scram-sha-256 or none",
            ));
        }
        Ok(info)
    }

    /// Every host with its port, in the order they are tried.
    pub fn hosts(&self) -> impl Iterator<Item = (&Host, u16)> {
        std::iter::once((&self.host, self.port)).chain(self.more_hosts.iter().map(|(h, p)| (h, *p)))
    }

    /// One connection info per host, in the order libpq tries them, each with the password
    /// file's password for that host when no password was given.
    pub fn attempts(&self) -> impl Iterator<Item = ConnInfo> + '_ {
        self.hosts().map(|(host, port)| {
            let password = self.password.clone().or_else(|| {
                self.passfile
                    .as_ref()
                    .zip(host.passfile_name())
                    .and_then(|(f, name)| f.lookup(name, port, &self.dbname, &self.user))
            });
            ConnInfo {
                host: host.clone(),
                port,
                more_hosts: Vec::new(),
                password,
                ..self.clone()
            }
        })
    }
}

impl ConnInfo {
    /// Configuration for an ordinary SQL connection to the same server and database.
    pub(super) fn sql_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        match &self.host {
            Host::Tcp(h) => c.host(h),
            Host::Unix(dir) => c.host_path(dir),
        };
        c.port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name);
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        if let Some(t) = self.connect_timeout {
            c.connect_timeout(t);
        }
        c.channel_binding(match self.channel_binding {
            ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
        });
        c
    }

    /// This connection's rules for the server's authentication requests (for one attempt,
    /// whose password includes the password file's).
    pub fn auth_policy(&self) -> AuthPolicy {
        AuthPolicy {
            channel_binding: self.channel_binding,
            require_auth: self.require_auth,
            has_password: self.password.is_some(),
        }
    }

    /// The same connection info, named for warnings (see [`ConnInfo::label`]), from the
    /// configuration key `key`.
    pub fn labelled(mut self, label: impl Into<String>, key: impl Into<String>) -> ConnInfo {
        self.label = Some(label.into());
        self.key = Some(key.into());
        self
    }

    /// The same connection info for another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnInfo {
        ConnInfo {
            dbname: dbname.to_owned(),
            ..self.clone()
        }
    }
}

impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (host, port)) in self.hosts().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match host {
                Host::Tcp(h) if h.contains(':') => write!(f, "[{h}]:{port}")?,
                Host::Tcp(h) => write!(f, "{h}:{port}")?,
                Host::Unix(dir) => write!(f, "{}/.s.PGSQL.{port}", dir.display())?,
            }
        }
        write!(f, " (database {}, user {}", self.dbname, self.user)?;
        match &self.key {
            Some(key) => write!(f, "; {key})"),
            None => f.write_str(")"),
        }
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("more_hosts", &self.more_hosts)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("channel_binding", &self.channel_binding)
            .field("require_auth", &self.require_auth)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("passfile", &self.passfile)
            .field("label", &self.label)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_url() {
        let c: ConnInfo =
            "postgres://app:s%40cret@db.example:6543/shop?sslmode=verify-full&sslrootcert=/ca.pem"
                .parse()
                .unwrap();
        assert_eq!(c.host, Host::Tcp("db.example".into()));
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "app");
        assert_eq!(c.password.as_ref().unwrap().expose(), "s@cret");
        assert_eq!(c.dbname, "shop");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn unix_socket_via_host_parameter_or_encoded_host() {
        let a: ConnInfo = "postgres://u@/db?host=/tmp/pg&port=5499".parse().unwrap();
        assert_eq!(a.host, Host::Unix("/tmp/pg".into()));
        assert_eq!(a.port, 5499);
        let b: ConnInfo = "postgresql://u@%2Ftmp%2Fpg:5499/db".parse().unwrap();
        assert_eq!(b.host, Host::Unix("/tmp/pg".into()));
    }

    #[test]
    fn empty_host_means_the_default_socket() {
        let c: ConnInfo = "postgres://u@/db".parse().unwrap();
        assert_eq!(c.host, Host::Unix(DEFAULT_SOCKET_DIR.into()));
        let c: ConnInfo = "postgres://u@:5444/db".parse().unwrap();
        assert_eq!(
            (c.host, c.port),
            (Host::Unix(DEFAULT_SOCKET_DIR.into()), 5444)
        );
        let c: ConnInfo = "postgres:///db".parse().unwrap();
        assert_eq!(c.dbname, "db");
    }

    #[test]
    fn ipv6_host() {
        let c: ConnInfo = "postgres://u@[::1]:5433/db".parse().unwrap();
        assert_eq!(c.host, Host::Tcp("::1".into()));
        assert_eq!(c.to_string(), "[::1]:5433 (database db, user u)");
    }

    #[test]
    fn errors_name_the_parameter_and_never_the_password() {
        let e = "postgres://u:hunter2@h/db?sslmode=maybe"
            .parse::<ConnInfo>()
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("sslmode") && msg.contains("verify-full"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"));
        let e = "postgres://u:hunter2@h/db?sslmod=require"
            .parse::<ConnInfo>()
            .unwrap_err();
        assert!(e.to_string().contains("sslmod"));
        let e = "mysql://u:hunter2@h/db".parse::<ConnInfo>().unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn channel_binding_and_require_auth() {
        let c: ConnInfo = "postgres://u@h/db".parse().unwrap();
        assert_eq!(c.channel_binding, ChannelBinding::Prefer);
        assert_eq!(c.require_auth, None);
        let c: ConnInfo =
            "postgres://u@h/db?sslmode=require&channel_binding=require&require_auth=!md5,!password"
                .parse()
                .unwrap();
        assert_eq!(c.channel_binding, ChannelBinding::Require);
        assert_eq!(c.require_auth.unwrap().to_string(), "!password,!md5");
        let c: ConnInfo = "postgres://u@h/db?require_auth=".parse().unwrap();
        assert_eq!(c.require_auth, None, "empty means unset, as in libpq");

        for (url, says) in [
            (
                "postgres://u:hunter2@h/db?channel_binding=always",
                "disable, prefer or require",
            ),
            (
                "postgres://u:hunter2@h/db?require_auth=kerberos",
                "unknown method",
            ),
            (
                "postgres://u:hunter2@h/db?require_auth=md5,!password",
                "cannot be mixed",
            ),
            (
                "postgres://u:hunter2@h/db?require_auth=gss",
                "does not speak",
            ),
            (
                "postgres://u:hunter2@h/db?sslmode=disable&channel_binding=require",
                "sslmode=disable",
            ),
            (
                "postgres://u:hunter2@/db?channel_binding=require",
                "unix socket",
            ),
        ] {
            let e = url.parse::<ConnInfo>().unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    /// Parses with only `env`'s variables (no HOME unless given: no password file).
    fn with_env(s: &str, env: &[(&str, &str)]) -> Result<ConnInfo, ConnInfoError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConnInfo::parse_with(s, &|var| env.get(var).cloned())
    }

    fn plain(s: &str) -> ConnInfo {
        with_env(s, &[("USER", "osuser")]).unwrap()
    }

    #[test]
    fn key_value_form_with_quotes_and_escapes() {
        let c = plain(
            r"host=db.example port = 6543 dbname='my shop' user=app password='it\'s a \\ secret' sslmode=verify-full sslrootcert=/ca.pem application_name=x\ y",
        );
        assert_eq!(c.host, Host::Tcp("db.example".into()));
        assert_eq!(c.port, 6543);
        assert_eq!(c.dbname, "my shop");
        assert_eq!(c.user, "app");
        assert_eq!(c.password.as_ref().unwrap().expose(), r"it's a \ secret");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.application_name, "x y");
        let c = plain("host=/tmp/pg port=5499");
        assert_eq!((c.host, c.port), (Host::Unix("/tmp/pg".into()), 5499));
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("osuser", "osuser"));
        assert_eq!(plain("").host, Host::Unix(DEFAULT_SOCKET_DIR.into()));

        for (bad, says) in [
            ("host=h password='hunter2", "no closing quote"),
            ("host=h hunter2", "without \"=\""),
            (
                "host=h password=hunter2 HUNTER2=x",
                "unknown connection parameter \"…\"",
            ),
            (
                "host=h passwd=hunter2",
                "unknown connection parameter \"passwd\"",
            ),
            (
                "host=h sslcert=/c.pem password=hunter2",
                "client certificates",
            ),
            ("hunter2", "neither a URL nor key=value"),
        ] {
            let e = with_env(bad, &[]).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn environment_fills_in_what_the_string_leaves_out() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGDATABASE", "envdb"),
            ("PGSSLMODE", "require"),
            ("PGSSLROOTCERT", "/env/ca.pem"),
            ("PGAPPNAME", "envapp"),
            ("PGCONNECT_TIMEOUT", "7"),
            ("PGCHANNELBINDING", "require"),
            ("PGREQUIREAUTH", "scram-sha-256"),
            ("PGTARGETSESSIONATTRS", "read-write"),
        ];
        let c = with_env("", &env).unwrap();
        assert_eq!((c.host, c.port), (Host::Tcp("envhost".into()), 6000));
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("envuser", "envdb"));
        assert_eq!(c.password.unwrap().expose(), "envpw");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/env/ca.pem")));
        assert_eq!(c.application_name, "envapp");
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(c.channel_binding, ChannelBinding::Require);
        assert_eq!(c.require_auth.unwrap().to_string(), "scram-sha-256");
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::ReadWrite);

        // The string wins, in either form; an empty variable is unset.
        let c = with_env("host=strhost user=struser sslmode=verify-ca", &env).unwrap();
        assert_eq!(c.host, Host::Tcp("strhost".into()));
        assert_eq!((c.user.as_str(), c.sslmode), ("struser", SslMode::VerifyCa));
        assert_eq!(c.port, 6000);
        let c = with_env(
            "postgres://u:pw@urlhost/urldb?channel_binding=disable",
            &env,
        )
        .unwrap();
        assert_eq!((c.host, c.port), (Host::Tcp("urlhost".into()), 6000));
        assert_eq!(
            (c.dbname.as_str(), c.password.unwrap().expose()),
            ("urldb", "pw")
        );
        assert_eq!(
            with_env("", &[("PGHOST", "")]).unwrap().host,
            Host::Unix(DEFAULT_SOCKET_DIR.into())
        );

        // A bad value from the environment says where it came from.
        let e = with_env("host=h", &[("PGSSLMODE", "bogus")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("PGSSLMODE") && e.contains("verify-full"), "{e}");
    }

    #[test]
    fn several_hosts_in_both_forms() {
        let c = plain("postgres://u@a:5432,[::1]:5433,c/db?target_session_attrs=read-write");
        let hosts: Vec<_> = c.hosts().map(|(h, p)| (h.clone(), p)).collect();
        assert_eq!(
            hosts,
            [
                (Host::Tcp("a".into()), 5432),
                (Host::Tcp("::1".into()), 5433),
                (Host::Tcp("c".into()), 5432)
            ]
        );
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert_eq!(
            c.to_string(),
            "a:5432,[::1]:5433,c:5432 (database db, user u)"
        );
        let attempts: Vec<_> = c.attempts().map(|a| a.to_string()).collect();
        assert_eq!(
            attempts,
            [
                "a:5432 (database db, user u)",
                "[::1]:5433 (database db, user u)",
                "c:5432 (database db, user u)"
            ]
        );

        let c = plain("host=a,b,/run/pg port=5432,5433,5434");
        assert_eq!(
            c.more_hosts,
            [
                (Host::Tcp("b".into()), 5433),
                (Host::Unix("/run/pg".into()), 5434)
            ]
        );
        let c = plain("host=a,b port=6000");
        assert_eq!(
            c.hosts().map(|(_, p)| p).collect::<Vec<_>>(),
            [6000, 6000],
            "one port for all"
        );
        let e = with_env("host=a,b,c port=1,2", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 hosts") && e.contains("2 ports"), "{e}");
        let e = with_env("host=a target_session_attrs=standby", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("read-write"), "{e}");
        let e = with_env(
            "host=a,/run/pg sslmode=require channel_binding=require",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unix socket"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn password_file_only_when_no_password_is_given() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let private = |path: &std::path::Path, text: &str| {
            std::fs::write(path, text).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        let pgpass = home.path().join(".pgpass");
        private(&pgpass, "a:5432:db:u:from-a\n*:5433:*:u:from-any\n");
        let home_env = [("HOME", home.path().to_str().unwrap())];
        let c = with_env("host=a,b port=5432,5433 dbname=db user=u", &home_env).unwrap();
        assert_eq!(
            c.password, None,
            "the file is per host, consulted per attempt"
        );
        let pw: Vec<_> = c
            .attempts()
            .map(|a| a.password.map(|p| p.expose().to_owned()))
            .collect();
        assert_eq!(pw, [Some("from-a".to_owned()), Some("from-any".to_owned())]);
        assert!(!format!("{c:?}").contains("from-"), "{c:?}");

        let c = with_env("host=a dbname=db user=u password=given", &home_env).unwrap();
        assert_eq!(
            c.attempts().next().unwrap().password.unwrap().expose(),
            "given"
        );
        let c = with_env(
            "host=a dbname=db user=u",
            &[("HOME", "/nonexistent"), ("PGPASSWORD", "env")],
        )
        .unwrap();
        assert_eq!(
            c.attempts().next().unwrap().password.unwrap().expose(),
            "env"
        );

        // PGPASSFILE, or passfile= in the string, instead of ~/.pgpass.
        let other = home.path().join("other");
        private(&other, "*:*:*:*:from-other\n");
        let other_str = other.to_str().unwrap();
        let c = with_env(
            "host=a dbname=db user=u",
            &[home_env[0], ("PGPASSFILE", other_str)],
        )
        .unwrap();
        assert_eq!(
            c.attempts().next().unwrap().password.unwrap().expose(),
            "from-other"
        );
        let c = with_env(
            &format!("host=a dbname=db user=u passfile={other_str}"),
            &home_env,
        )
        .unwrap();
        assert_eq!(
            c.attempts().next().unwrap().password.unwrap().expose(),
            "from-other"
        );

        // A socket in the default directory is "localhost" to the file; another by its path.
        private(&pgpass, "localhost:5432:*:*:local\n/tmp/pg:5499:*:*:tmp\n");
        let c = with_env("dbname=db user=u", &home_env).unwrap();
        assert_eq!(
            c.attempts().next().unwrap().password.unwrap().expose(),
            "local"
        );
        let c = with_env("host=/tmp/pg port=5499 dbname=db user=u", &home_env).unwrap();
        assert_eq!(
            c.attempts().next().unwrap().password.unwrap().expose(),
            "tmp"
        );

        // Readable by others: ignored, as libpq does.
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o640)).unwrap();
        let c = with_env("host=a dbname=db user=u", &home_env).unwrap();
        assert_eq!(c.attempts().next().unwrap().password, None);
    }

    #[test]
    fn debug_and_display_hide_the_password() {
        let c: ConnInfo = "postgres://u:hunter2@h/db".parse().unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.to_string().contains("hunter2"));
    }
}
