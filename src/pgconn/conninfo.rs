//! libpq-style connection URLs: `postgres://user:password@host:port/dbname?sslmode=require`.
//!
//! One parse for both kinds of connection pgfanout opens: the replication session (hand-built
//! on postgres-protocol) and ordinary SQL connections (tokio-postgres, see `sql.rs`). What is
//! certain to fail is refused here, before anything connects: `channel_binding=require`
//! without TLS (sslmode=disable, a unix socket), a `require_auth` that allows only methods
//! pgfanout does not speak.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::auth::{AuthPolicy, ChannelBinding, RequireAuth};
use super::Secret;

const DEFAULT_PORT: u16 = 5432;
/// Debian's (and most distributions') compiled-in socket directory.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// Directory holding the server's `.s.PGSQL.<port>` socket.
    Unix(PathBuf),
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

/// Where and how to connect. `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: Host,
    pub port: u16,
    pub user: String,
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
    /// What this connection is for, in warnings: `source`, `state`, `destination acme`.
    /// Set by the configuration; not part of the URL.
    pub label: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnInfoError {
    #[error("not a postgres:// URL ({0}); write it as postgres://user:password@host:port/dbname")]
    Syntax(String),
    #[error("unsupported scheme {0:?}; use postgres:// or postgresql://")]
    Scheme(String),
    #[error("unknown URL parameter {0:?}; supported: host, port, user, password, dbname, sslmode, sslrootcert, application_name, connect_timeout, channel_binding, require_auth")]
    UnknownParameter(String),
    #[error("invalid {param} {value:?}: {expected}")]
    InvalidValue {
        param: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("invalid require_auth: {0}")]
    RequireAuth(String),
    #[error("{0}")]
    Conflict(&'static str),
}

impl std::str::FromStr for ConnInfo {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The url crate reports the offending input in its error; we never echo the URL itself
        // because it may hold a password.
        // libpq accepts an empty host (`postgres://user@/db?host=/run/pg`), the url crate does
        // not: parse with a placeholder and treat it as "no host given".
        let patched = with_placeholder_host(s);
        let url = Url::parse(patched.as_deref().unwrap_or(s))
            .map_err(|e| ConnInfoError::Syntax(e.to_string()))?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(ConnInfoError::Scheme(url.scheme().to_owned()));
        }
        let decode = |s: &str| {
            percent_encoding_decode(s).ok_or(ConnInfoError::InvalidValue {
                param: "URL component",
                value: String::new(),
                expected: "valid percent-encoded UTF-8",
            })
        };
        let mut host = match url.host_str() {
            Some(h) if !h.is_empty() && (patched.is_none() || h != PLACEHOLDER_HOST) => {
                let h = decode(h)?;
                let h = h.trim_start_matches('[').trim_end_matches(']').to_owned();
                if h.starts_with('/') {
                    Host::Unix(PathBuf::from(h))
                } else {
                    Host::Tcp(h)
                }
            }
            _ => Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR)),
        };
        let mut port = url.port().unwrap_or(DEFAULT_PORT);
        let mut user = decode(url.username())?;
        let mut password = url.password().map(decode).transpose()?.map(Secret::new);
        let mut dbname = decode(url.path().trim_start_matches('/'))?;
        let mut sslmode = SslMode::Prefer;
        let mut sslrootcert = None;
        let mut application_name = "pgfanout".to_owned();
        let mut connect_timeout = None;
        let mut channel_binding = ChannelBinding::default();
        let mut require_auth = None;

        for (key, value) in url.query_pairs() {
            let value = value.into_owned();
            match &*key {
                "host" => {
                    host = if value.starts_with('/') {
                        Host::Unix(PathBuf::from(value))
                    } else {
                        Host::Tcp(value)
                    }
                }
                "port" => {
                    port = value.parse().map_err(|_| ConnInfoError::InvalidValue {
                        param: "port",
                        value,
                        expected: "a number from 1 to 65535",
                    })?
                }
                "user" => user = value,
                "password" => password = Some(Secret::new(value)),
                "dbname" => dbname = value,
                "sslmode" => {
                    sslmode = SslMode::parse(&value).ok_or(ConnInfoError::InvalidValue {
                        param: "sslmode",
                        value,
                        expected: "disable, prefer, require, verify-ca or verify-full",
                    })?
                }
                "sslrootcert" => sslrootcert = Some(PathBuf::from(value)),
                "application_name" => application_name = value,
                "connect_timeout" => {
                    let secs: u64 = value.parse().map_err(|_| ConnInfoError::InvalidValue {
                        param: "connect_timeout",
                        value,
                        expected: "whole seconds",
                    })?;
                    connect_timeout = (secs > 0).then(|| Duration::from_secs(secs));
                }
                "channel_binding" => {
                    channel_binding =
                        ChannelBinding::parse(&value).ok_or(ConnInfoError::InvalidValue {
                            param: "channel_binding",
                            value,
                            expected: "disable, prefer or require",
                        })?
                }
                // Empty means unset, as in libpq.
                "require_auth" if value.is_empty() => require_auth = None,
                "require_auth" => {
                    require_auth =
                        Some(RequireAuth::parse(&value).map_err(ConnInfoError::RequireAuth)?)
                }
                other => return Err(ConnInfoError::UnknownParameter(other.to_owned())),
            }
        }
        if user.is_empty() {
            // libpq's default: the operating-system user name.
            user = std::env::var("USER").unwrap_or_else(|_| "postgres".to_owned());
        }
        if dbname.is_empty() {
            dbname = user.clone();
        }
        if channel_binding == ChannelBinding::Require {
            if sslmode == SslMode::Disable {
                return Err(ConnInfoError::Conflict(
                    "channel_binding=require needs TLS, which sslmode=disable turns off; use sslmode=require or stricter",
                ));
            }
            if matches!(host, Host::Unix(_)) {
                return Err(ConnInfoError::Conflict(
                    "channel_binding=require needs TLS, which a unix socket never uses (as in libpq); connect over TCP",
                ));
            }
        }
        if require_auth.is_some_and(|r: RequireAuth| !r.allows_a_supported_method()) {
            return Err(ConnInfoError::Conflict(
                "require_auth allows only gss or sspi, which pgfanout does not speak; allow password, md5, scram-sha-256 or none",
            ));
        }
        Ok(ConnInfo {
            host,
            port,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert,
            application_name,
            connect_timeout,
            channel_binding,
            require_auth,
            label: None,
        })
    }
}

const PLACEHOLDER_HOST: &str = "pgfanout.placeholder.invalid";

fn with_placeholder_host(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if !(hostport.is_empty() || hostport.starts_with(':')) {
        return None;
    }
    let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    Some(format!(
        "{scheme}://{userinfo}{PLACEHOLDER_HOST}{hostport}{}",
        &rest[end..]
    ))
}

fn percent_encoding_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

impl ConnInfo {
    /// Configuration for an ordinary SQL connection to the same server and database.
    pub fn sql_config(&self) -> tokio_postgres::Config {
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

    /// This connection's rules for the server's authentication requests.
    pub fn auth_policy(&self) -> AuthPolicy {
        AuthPolicy {
            channel_binding: self.channel_binding,
            require_auth: self.require_auth,
        }
    }

    /// The same connection info, named for warnings (see [`ConnInfo::label`]).
    pub fn labelled(mut self, label: impl Into<String>) -> ConnInfo {
        self.label = Some(label.into());
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
        match &self.host {
            Host::Tcp(h) if h.contains(':') => write!(f, "[{h}]:{}", self.port)?,
            Host::Tcp(h) => write!(f, "{h}:{}", self.port)?,
            Host::Unix(dir) => write!(f, "{}/.s.PGSQL.{}", dir.display(), self.port)?,
        }
        write!(f, " (database {}, user {})", self.dbname, self.user)
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("channel_binding", &self.channel_binding)
            .field("require_auth", &self.require_auth)
            .field("label", &self.label)
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

    #[test]
    fn debug_and_display_hide_the_password() {
        let c: ConnInfo = "postgres://u:hunter2@h/db".parse().unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.to_string().contains("hunter2"));
    }
}
