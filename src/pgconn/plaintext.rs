//! The warning that a password goes over an unencrypted connection. Whether a PostgreSQL
//! connection is encrypted is known for certain only once it is open (`sslmode=prefer` falls
//! back to plaintext when the server refuses TLS), so the connection sites warn: the
//! replication session and [`ConnInfo::connect_sql`], once per connection and target for the
//! life of the process however often it reconnects, naming what the connection is for
//! ([`ConnInfo::label`]). `pgfanout check` lists the same (`cmd::check`).

use super::{ConnInfo, Host, SslMode, Transport};

/// Whether a password configured for `info` can go over an unencrypted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// `sslmode=disable` over TCP.
    Always,
    /// `sslmode=prefer` over TCP: when the server does not offer TLS.
    IfServerRefusesTls,
}

impl ConnInfo {
    /// Whether this connection's password (when it has one) can travel unencrypted: over TCP
    /// with `sslmode` disable or prefer. A unix socket never leaves the host.
    pub fn password_exposure(&self) -> Option<Exposure> {
        // The password file's password counts too: it is sent as if written in the string.
        if !self
            .attempts()
            .any(|a| a.password.is_some() && matches!(a.host, Host::Tcp(_)))
        {
            return None;
        }
        match self.sslmode {
            SslMode::Disable => Some(Exposure::Always),
            SslMode::Prefer => Some(Exposure::IfServerRefusesTls),
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => None,
        }
    }

    /// Why a password went over this open, unencrypted TCP connection, in words.
    pub fn plaintext_reason(&self) -> &'static str {
        if self.sslmode == SslMode::Disable {
            "sslmode=disable"
        } else {
            "the server does not offer TLS and sslmode=prefer goes on without it"
        }
    }
}

/// Whether a password went over a connection that opened as `transport`: over TCP without TLS.
/// (The password file's counts: it is sent as a password in the string would be.)
pub fn password_in_clear(info: &ConnInfo, transport: Transport) -> bool {
    transport == Transport::Tcp && info.attempts().any(|a| a.password.is_some())
}

/// The warning for a password on an unencrypted connection, naming the connection.
pub fn plaintext_warning(info: &ConnInfo) -> String {
    format!(
        "{}: a password is configured, but the connection to {info} is not encrypted ({}): the password, or a hash of it an eavesdropper can attack, travels in the clear\nHINT: use sslmode=require (verify-full with sslrootcert to know the server), and require_auth=scram-sha-256",
        info.label.as_deref().unwrap_or("PostgreSQL connection"),
        info.plaintext_reason()
    )
}

/// Warns (once per connection and target) when a connection that has a password configured
/// opened over TCP without TLS.
pub(super) fn warn_if_exposed(info: &ConnInfo, transport: Transport) {
    if !password_in_clear(info, transport) {
        return;
    }
    let connection = info.label.as_deref().unwrap_or("PostgreSQL connection");
    if crate::report::first_time(&format!("postgres {connection} {info}")) {
        tracing::warn!(connection, target = %info, "{}", plaintext_warning(info));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_follows_sslmode_host_and_password() {
        let exposure = |url: &str| url.parse::<ConnInfo>().unwrap().password_exposure();
        assert_eq!(
            exposure("postgres://u:pw@h/db?sslmode=disable"),
            Some(Exposure::Always)
        );
        assert_eq!(
            exposure("postgres://u:pw@h/db"),
            Some(Exposure::IfServerRefusesTls)
        );
        assert_eq!(exposure("postgres://u:pw@h/db?sslmode=require"), None);
        assert_eq!(exposure("postgres://u@h/db?sslmode=disable"), None);
        assert_eq!(
            exposure("postgres://u:pw@/db?host=/run/pg&sslmode=disable"),
            None
        );
    }
}
