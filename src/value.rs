//! PLACEHOLDER until the typed-value module lands.
use std::fmt;
#[derive(Debug, Clone)]
pub enum PgType {
    Other,
    Enum,
    Array(Box<PgType>),
}
impl PgType {
    pub fn from_oid(_o: u32) -> PgType {
        PgType::Other
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamp {
    NegInfinity,
    Micros(i64),
    PosInfinity,
}
impl Timestamp {
    pub fn from_pg_epoch_micros(m: i64) -> Self {
        Timestamp::Micros(m + 946_684_800_000_000)
    }
}
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "2000-01-01T00:00:00.000000Z")
    }
}
