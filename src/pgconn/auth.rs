//! What the client accepts of the server's authentication, as libpq's `channel_binding` and
//! `require_auth` say it, decided in one place for both kinds of connection: the replication
//! session (our own SCRAM on postgres-protocol) and the SQL connections (tokio-postgres, whose
//! server messages the startup guard in `sql.rs` reads before the driver answers them).
//!
//! ```text
//!   server: AuthenticationXxx ──▶ AuthPolicy::check(request, link) ──▶ answer it, or refuse
//!                                  require_auth: is this method allowed?
//!                                  channel_binding=require: SCRAM-SHA-256-PLUS over TLS?
//! ```
//!
//! Refusing happens *before* the client answers the request, so a server (or anyone in the
//! middle) asking for a weaker method never receives the password or its hash.

use std::fmt;

/// libpq's `channel_binding`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never bind SCRAM to the TLS channel.
    Disable,
    /// Bind when the connection is encrypted and the server offers SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Only SCRAM-SHA-256-PLUS over TLS is acceptable: no other method, no plaintext.
    Require,
}

impl ChannelBinding {
    pub(super) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }
}

/// An authentication method, as `require_auth` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// The server asks for nothing (trust, peer).
    None,
    /// A cleartext password.
    Password,
    Md5,
    ScramSha256,
    Gss,
    Sspi,
}

impl AuthMethod {
    const ALL: [AuthMethod; 6] = [
        AuthMethod::None,
        AuthMethod::Password,
        AuthMethod::Md5,
        AuthMethod::ScramSha256,
        AuthMethod::Gss,
        AuthMethod::Sspi,
    ];

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.keyword() == s)
    }

    /// The `require_auth` keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Gss => "gss",
            AuthMethod::Sspi => "sspi",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// What the server did, in words.
    fn request(self) -> &'static str {
        match self {
            AuthMethod::None => "authenticated the connection without asking for a password",
            AuthMethod::Password => "asked for the password in cleartext",
            AuthMethod::Md5 => "asked for an MD5 password hash",
            AuthMethod::ScramSha256 => "asked for SCRAM-SHA-256",
            AuthMethod::Gss => "asked for GSSAPI",
            AuthMethod::Sspi => "asked for SSPI",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// libpq's `require_auth`: a comma-separated list of methods the server may use, or, all
/// prefixed with `!`, of methods it may not.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequireAuth {
    /// One bit per [`AuthMethod`]: the methods allowed.
    allowed: u8,
    /// The methods as written (one bit each), and whether they were negated: for messages.
    listed: u8,
    negated: bool,
}

impl RequireAuth {
    /// Parses libpq's syntax; the error says what is wrong with it (never more than the
    /// method names, which are not secret).
    pub fn parse(s: &str) -> Result<RequireAuth, String> {
        let mut listed = 0u8;
        let mut negated = None;
        for item in s.split(',') {
            let (neg, name) = match item.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, item),
            };
            let method = AuthMethod::parse(name).ok_or_else(|| {
                format!(
                    "unknown method {name:?}; use password, md5, scram-sha-256, gss, sspi or none, each optionally negated with !"
                )
            })?;
            if *negated.get_or_insert(neg) != neg {
                return Err("negated (!) and plain methods cannot be mixed".into());
            }
            if listed & method.bit() != 0 {
                return Err(format!("method {method} is listed more than once"));
            }
            listed |= method.bit();
        }
        let negated = negated.unwrap_or(false);
        let all = AuthMethod::ALL.iter().fold(0, |acc, m| acc | m.bit());
        Ok(RequireAuth {
            allowed: if negated { all & !listed } else { listed },
            listed,
            negated,
        })
    }

    pub fn allows(&self, method: AuthMethod) -> bool {
        self.allowed & method.bit() != 0
    }

    /// Whether a method pgfanout can use is allowed at all (it speaks neither GSSAPI nor SSPI).
    pub fn allows_a_supported_method(&self) -> bool {
        [
            AuthMethod::None,
            AuthMethod::Password,
            AuthMethod::Md5,
            AuthMethod::ScramSha256,
        ]
        .into_iter()
        .any(|m| self.allows(m))
    }
}

impl fmt::Display for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for m in AuthMethod::ALL {
            if self.listed & m.bit() != 0 {
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                if self.negated {
                    f.write_str("!")?;
                }
                f.write_str(m.keyword())?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequireAuth({self})")
    }
}

/// What the server asked the client to do, as the startup reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRequest {
    /// `AuthenticationOk` before any request: no authentication.
    NoneAsked,
    Cleartext,
    Md5,
    /// `AuthenticationSASL`; whether SCRAM-SHA-256-PLUS is among the offered mechanisms.
    Sasl {
        plus_offered: bool,
    },
    Gss,
    Sspi,
}

impl AuthRequest {
    pub fn method(self) -> AuthMethod {
        match self {
            AuthRequest::NoneAsked => AuthMethod::None,
            AuthRequest::Cleartext => AuthMethod::Password,
            AuthRequest::Md5 => AuthMethod::Md5,
            AuthRequest::Sasl { .. } => AuthMethod::ScramSha256,
            AuthRequest::Gss => AuthMethod::Gss,
            AuthRequest::Sspi => AuthMethod::Sspi,
        }
    }
}

/// What the client knows about the channel when the server's request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub encrypted: bool,
    /// The server certificate's `tls-server-end-point` hash could be computed (RFC 5929).
    pub binding_data: bool,
}

/// The connection's rules for authentication ([`ConnInfo`](super::ConnInfo)'s
/// `channel_binding` and `require_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthPolicy {
    pub channel_binding: ChannelBinding,
    pub require_auth: Option<RequireAuth>,
    /// Whether a password was given (string, PGPASSWORD or the password file): without one,
    /// a request for it is refused with a message that says where to put it.
    pub has_password: bool,
}

impl AuthPolicy {
    /// Whether the client may answer `request` over `link`. Checked before anything is sent
    /// back, so a refused request never receives the password or a hash of it.
    pub fn check(&self, request: AuthRequest, link: Link) -> Result<(), AuthRefusal> {
        if let Some(rule) = self.require_auth {
            if !rule.allows(request.method()) {
                return Err(AuthRefusal::MethodNotAllowed {
                    requested: request.method(),
                    rule,
                });
            }
        }
        if !self.has_password
            && matches!(
                request,
                AuthRequest::Cleartext | AuthRequest::Md5 | AuthRequest::Sasl { .. }
            )
        {
            return Err(AuthRefusal::NoPassword(request.method()));
        }
        if self.channel_binding == ChannelBinding::Require {
            let reason = if !link.encrypted {
                Some(NoBinding::NotEncrypted)
            } else {
                match request {
                    AuthRequest::Sasl { plus_offered: true } if link.binding_data => None,
                    AuthRequest::Sasl { plus_offered: true } => Some(NoBinding::NoCertificateHash),
                    AuthRequest::Sasl {
                        plus_offered: false,
                    } => Some(NoBinding::PlusNotOffered),
                    other => Some(NoBinding::NotScram(other.method())),
                }
            };
            if let Some(reason) = reason {
                return Err(AuthRefusal::ChannelBindingRequired(reason));
            }
        }
        Ok(())
    }
}

/// Why `channel_binding=require` cannot be met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBinding {
    NotEncrypted,
    NotScram(AuthMethod),
    PlusNotOffered,
    NoCertificateHash,
}

/// A connection refused by the client's own rules, before it sent any credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefusal {
    MethodNotAllowed {
        requested: AuthMethod,
        rule: RequireAuth,
    },
    ChannelBindingRequired(NoBinding),
    /// The server asks for a password and none was given.
    NoPassword(AuthMethod),
}

impl fmt::Display for AuthRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthRefusal::MethodNotAllowed { requested, rule } => write!(
                f,
                "the server {}, which require_auth={rule} does not allow; nothing was sent\nHINT: the server's pg_hba.conf chooses the method: make it one require_auth allows, or change require_auth",
                requested.request()
            ),
            AuthRefusal::NoPassword(method) => write!(
                f,
                "the server {}, but no password was given\nHINT: add a line for this server to ~/.pgpass (or the file PGPASSFILE names), set PGPASSWORD, or give password= in the connection string (from an environment variable: password=${{DB_PASSWORD}})",
                method.request()
            ),
            AuthRefusal::ChannelBindingRequired(reason) => {
                f.write_str("channel_binding=require, but ")?;
                match reason {
                    NoBinding::NotEncrypted => f.write_str(
                        "the connection is not encrypted; nothing was sent\nHINT: channel binding needs TLS: enable ssl on the server and use sslmode=require or stricter",
                    ),
                    NoBinding::NotScram(m) => write!(
                        f,
                        "the server {} instead of SCRAM-SHA-256-PLUS; nothing was sent\nHINT: set the role's authentication to scram-sha-256 in pg_hba.conf (and its password_encryption)",
                        m.request()
                    ),
                    NoBinding::PlusNotOffered => f.write_str(
                        "the server does not offer SCRAM-SHA-256-PLUS; nothing was sent",
                    ),
                    NoBinding::NoCertificateHash => f.write_str(
                        "the server certificate's signature algorithm gives no hash for tls-server-end-point binding (RFC 5929); nothing was sent\nHINT: use a certificate signed with RSA or ECDSA over SHA-2",
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: Link = Link {
        encrypted: true,
        binding_data: true,
    };
    const PLAIN: Link = Link {
        encrypted: false,
        binding_data: false,
    };

    fn policy(cb: ChannelBinding, ra: Option<&str>) -> AuthPolicy {
        AuthPolicy {
            channel_binding: cb,
            require_auth: ra.map(|s| RequireAuth::parse(s).unwrap()),
            has_password: true,
        }
    }

    #[test]
    fn require_auth_parses_like_libpq() {
        let r = RequireAuth::parse("scram-sha-256").unwrap();
        assert!(r.allows(AuthMethod::ScramSha256));
        assert!(!r.allows(AuthMethod::Md5) && !r.allows(AuthMethod::None));
        let r = RequireAuth::parse("md5,password").unwrap();
        assert!(r.allows(AuthMethod::Md5) && r.allows(AuthMethod::Password));
        assert!(!r.allows(AuthMethod::ScramSha256));
        assert_eq!(r.to_string(), "password,md5");
        let r = RequireAuth::parse("!password,!md5").unwrap();
        assert!(!r.allows(AuthMethod::Password) && !r.allows(AuthMethod::Md5));
        assert!(r.allows(AuthMethod::ScramSha256) && r.allows(AuthMethod::None));
        assert_eq!(r.to_string(), "!password,!md5");
        let r = RequireAuth::parse("!none").unwrap();
        assert!(!r.allows(AuthMethod::None) && r.allows(AuthMethod::Md5));

        for (bad, says) in [
            ("scram", "unknown method"),
            ("", "unknown method"),
            ("md5,!password", "cannot be mixed"),
            ("md5,md5", "more than once"),
            ("md5,", "unknown method"),
        ] {
            let e = RequireAuth::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert!(!RequireAuth::parse("gss,sspi")
            .unwrap()
            .allows_a_supported_method());
        assert!(RequireAuth::parse("!gss")
            .unwrap()
            .allows_a_supported_method());
    }

    #[test]
    fn require_auth_refuses_methods_it_does_not_list() {
        let p = policy(ChannelBinding::Prefer, Some("scram-sha-256"));
        assert!(p
            .check(
                AuthRequest::Sasl {
                    plus_offered: false
                },
                PLAIN
            )
            .is_ok());
        for request in [
            AuthRequest::Md5,
            AuthRequest::Cleartext,
            AuthRequest::NoneAsked,
        ] {
            let e = p.check(request, TLS).unwrap_err();
            assert!(
                matches!(e, AuthRefusal::MethodNotAllowed { requested, .. } if requested == request.method()),
                "{e}"
            );
            assert!(e.to_string().contains("require_auth=scram-sha-256"), "{e}");
        }
        let p = policy(ChannelBinding::Prefer, Some("!password"));
        assert!(p.check(AuthRequest::Md5, PLAIN).is_ok());
        assert!(p.check(AuthRequest::NoneAsked, PLAIN).is_ok());
        let e = p.check(AuthRequest::Cleartext, TLS).unwrap_err();
        assert!(e.to_string().contains("in cleartext"), "{e}");
        // No rule: anything goes.
        let p = policy(ChannelBinding::Prefer, None);
        assert!(p.check(AuthRequest::Cleartext, PLAIN).is_ok());
    }

    #[test]
    fn channel_binding_require_needs_scram_plus_over_tls() {
        let p = policy(ChannelBinding::Require, None);
        assert!(p
            .check(AuthRequest::Sasl { plus_offered: true }, TLS)
            .is_ok());
        let refused = |request, link| match p.check(request, link) {
            Err(AuthRefusal::ChannelBindingRequired(r)) => r,
            other => panic!("{request:?} over {link:?}: {other:?}"),
        };
        assert_eq!(
            refused(
                AuthRequest::Sasl {
                    plus_offered: false
                },
                PLAIN
            ),
            NoBinding::NotEncrypted
        );
        assert_eq!(
            refused(
                AuthRequest::Sasl {
                    plus_offered: false
                },
                TLS
            ),
            NoBinding::PlusNotOffered
        );
        assert_eq!(
            refused(AuthRequest::Md5, TLS),
            NoBinding::NotScram(AuthMethod::Md5)
        );
        assert_eq!(
            refused(AuthRequest::NoneAsked, TLS),
            NoBinding::NotScram(AuthMethod::None)
        );
        assert_eq!(
            refused(
                AuthRequest::Sasl { plus_offered: true },
                Link {
                    encrypted: true,
                    binding_data: false
                }
            ),
            NoBinding::NoCertificateHash
        );
        // prefer and disable never refuse.
        for cb in [ChannelBinding::Prefer, ChannelBinding::Disable] {
            assert!(policy(cb, None)
                .check(AuthRequest::Cleartext, PLAIN)
                .is_ok());
        }
    }

    #[test]
    fn a_password_request_without_a_password_is_refused_saying_where_to_put_one() {
        let mut p = policy(ChannelBinding::Prefer, None);
        p.has_password = false;
        for request in [
            AuthRequest::Cleartext,
            AuthRequest::Md5,
            AuthRequest::Sasl {
                plus_offered: false,
            },
        ] {
            let e = p.check(request, PLAIN).unwrap_err().to_string();
            assert!(
                e.contains("no password was given") && e.contains(".pgpass"),
                "{e}"
            );
        }
        assert!(p.check(AuthRequest::NoneAsked, PLAIN).is_ok());
    }
}
