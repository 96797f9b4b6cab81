//! The ground floor for every connection to PostgreSQL: libpq-style connection info
//! ([`ConnInfo`], one parse for replication and SQL connections), TLS with libpq's `sslmode`
//! semantics ([`tls`]), and [`Secret`] for passwords. The replication client, the state
//! database, the PostgreSQL destination and the commands all connect through it; it imports
//! nothing of pgfanout's above it.

mod conninfo;
mod error;
mod secret;
pub mod tls;

pub use conninfo::{ConnInfo, ConnInfoError, Host, SqlConnectError, SslMode};
pub use error::PgError;
pub use secret::Secret;
