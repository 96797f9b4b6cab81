//! Private servers for pgfanout's tests, benchmarks and `pgfanout demo`: a PostgreSQL
//! ([`localpg`]) and a ClickHouse ([`localch`]) in temporary directories on free loopback
//! ports, and a throw-away CA for their TLS ([`localtls`]).
//!
//! A workspace member of its own so that the product library never ships them: the tests,
//! examples and benchmarks take it as a dev-dependency, and only the binary's `demo` command
//! uses it. It depends on nothing of pgfanout's (the binary depends on it, so the other
//! direction would be a cycle); callers turn [`localpg::LocalPostgres::socket_url`] into
//! pgfanout's `ConnInfo` themselves.

pub mod localch;
pub mod localpg;
pub mod localtls;
