//! The ground floor for every connection to PostgreSQL: libpq-style connection info
//! ([`ConnInfo`], one parse for replication and SQL connections: URL or `key=value`, the
//! `PG*` variables, the password file in `passfile.rs`, several hosts), TLS with libpq's `sslmode`
//! semantics ([`tls`]), the authentication rules `channel_binding` and `require_auth`
//! ([`auth`]), SQL connections that keep them (`sql.rs`), the warning about passwords on
//! unencrypted connections (`plaintext.rs`), and [`Secret`] for passwords. The replication
//! client, the state database, the PostgreSQL destination and the commands all connect
//! through it; it imports nothing of pgfanout's above it.

pub mod auth;
mod conninfo;
mod error;
mod passfile;
mod plaintext;
mod secret;
mod sql;
pub mod tls;

pub use auth::{AuthMethod, AuthPolicy, AuthRefusal, ChannelBinding, RequireAuth};
pub use conninfo::{ConnInfo, ConnInfoError, Host, Origin, SslMode, TargetSessionAttrs};
pub use error::{PgError, ServerMessage};
pub use plaintext::{password_in_clear, plaintext_warning, Exposure};
pub use secret::Secret;
pub use sql::{not_target_reason, Socket, SqlConnectError, Transport};

/// Warns (once per connection and target) when `info` has a password and opened as
/// `transport` without TLS over TCP; for connection sites outside this module (the
/// replication session).
pub fn warn_if_plaintext(info: &ConnInfo, transport: Transport) {
    plaintext::warn_if_exposed(info, transport)
}
