//! ClickHouse column types for the ClickHouse destination: which type a PostgreSQL column
//! becomes, how those types are spelled (in DDL and as `system.columns` reports them), and which
//! existing columns can take what pgfanout writes. Pure: no I/O.
//!
//! # Type mapping
//!
//! [`target_type`] maps a PostgreSQL column to the ClickHouse type pgfanout creates for it.
//! `v` is the server version ([`ServerVersion`]); `T?` below means `Nullable(T)` when the
//! PostgreSQL column is nullable.
//!
//! | PostgreSQL | ClickHouse | Value written |
//! |---|---|---|
//! | `bool` | `Bool?` from 21.12, `UInt8?` before | 1 / 0 |
//! | `int2` / `int4` / `int8` | `Int16?` / `Int32?` / `Int64?` | the integer |
//! | `float4` / `float8` | `Float32?` / `Float64?` | the float; NaN and ±Infinity included |
//! | `numeric(p, s)` with 1 ≤ p ≤ 38 and 0 ≤ s ≤ p | `Decimal(p, s)?` | the exact value |
//! | `numeric` without a typmod, with p > 38, or with PostgreSQL 15's negative scale or scale above the precision | `String?` | PostgreSQL's exact text (`NaN` and `Infinity` included) |
//! | `text`, `varchar`, `bpchar`, `name` | `String?` | the text |
//! | `uuid` | `UUID?` | the UUID |
//! | `json`, `jsonb` | `String?` | PostgreSQL's JSON text |
//! | `bytea` | `String?` | the raw bytes (not the `\x…` hex text) |
//! | `date` | `Date?` | days since 1970-01-01; 1970-01-01 ..= 2149-06-06, anything else is an error |
//! | `timestamp`, `timestamptz` | `DateTime64(6, 'UTC')?` from 20.1 | microseconds since 1970 UTC (a plain `timestamp` is read as UTC); 1900-01-01 ..= 2299-12-31 |
//! | `timestamp`, `timestamptz` before 20.1 | `DateTime('UTC')?` | whole seconds since 1970 UTC, **the sub-second part truncated** (servers before 20.1 have no DateTime64); 1970-01-01 00:00:00 ..= 2106-02-07 06:28:15 |
//! | `time`, `timetz`, `interval`, `inet`, `cidr`, other types | `String?` | PostgreSQL's text |
//! | enum types | `LowCardinality(String)`, or `LowCardinality(Nullable(String))` when nullable | the label |
//! | `T[]` | `Array(Nullable(target(T)))`, never Nullable itself | the elements; a NULL array is written as the empty array |
//!
//! Arrays: PostgreSQL array elements may always be NULL, so elements are always Nullable (an
//! enum element becomes `LowCardinality(Nullable(String))`, the only legal spelling). ClickHouse
//! arrays cannot be Nullable, so a NULL array is stored as `[]`: the two are indistinguishable
//! in the destination. A `numeric(p, s)[]` column carries the element's typmod, so pass the
//! column's `atttypmod` for arrays too. Multi-dimensional arrays are not decoded (see
//! [`crate::value`]) and a nested array type maps to `String`.
//!
//! Out-of-range values (a date before 1970, a timestamp after 2106 on an old server, NaN into a
//! Decimal, ...) are errors when the row is encoded ([`super::rowbinary::EncodeError`]), never
//! silently clamped.

use std::fmt;

use crate::value::PgType;

/// ClickHouse server version from `SELECT version()` ("18.16.1", "23.8.2.7"). Only the major
/// and minor numbers matter for feature checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    pub const fn new(major: u32, minor: u32) -> ServerVersion {
        ServerVersion { major, minor }
    }

    /// Parses `major.minor[.anything]` ("24.3.1.2672", "18.16.1", "23.8"); `None` when the
    /// first two dot-separated parts are not both decimal numbers.
    pub fn parse(s: &str) -> Option<ServerVersion> {
        let mut parts = s.trim().split('.');
        let major = parse_u32(parts.next()?)?;
        let minor = parse_u32(parts.next()?)?;
        Some(ServerVersion { major, minor })
    }

    /// `DateTime64` exists from 20.1 (release notes of v20.1.2.4: "Add `DateTime64` datatype
    /// with configurable sub-second precision").
    pub fn has_datetime64(self) -> bool {
        self >= ServerVersion::new(20, 1)
    }

    /// `ReplacingMergeTree(ver, is_deleted)`: the `is_deleted` parameter exists from 23.2.
    pub fn has_is_deleted(self) -> bool {
        self >= ServerVersion::new(23, 2)
    }

    /// The `Bool` data type exists from 21.12; earlier servers get `UInt8`.
    pub fn has_bool(self) -> bool {
        self >= ServerVersion::new(21, 12)
    }

    /// Whether `CREATE TABLE` with a `LowCardinality` column needs
    /// `SET allow_experimental_low_cardinality_type = 1`.
    ///
    /// Cut-off 19.3: the release notes of v19.3.3 (2019-02-13) list under backward incompatible
    /// changes "Removed `allow_experimental_low_cardinality_type` setting. `LowCardinality` data
    /// types are production ready" (the setting stayed as an obsolete no-op). So 18.x and 19.1
    /// need it, 19.3 and later do not. (There was no 19.2 release.)
    pub fn low_cardinality_needs_setting(self) -> bool {
        self < ServerVersion::new(19, 3)
    }

    /// Whether SQL-driven access control (`CREATE USER`, `CREATE ROLE`, `GRANT`,
    /// `CREATE ROW POLICY`) can be used.
    ///
    /// Cut-off 20.5, deliberately conservative: the statements first appear in 20.3 (its
    /// stable releases already carry fixes such as "Fix parsing multiple hosts set in the
    /// CREATE USER command" in v20.3.6), but the release notes of 20.4 and 20.5 still list
    /// fixes to how access rights are calculated (e.g. "Fixed calculation of access rights
    /// when allow_ddl=0"). Refusing 20.3/20.4 costs little; mis-enforcing tenant isolation on
    /// an early implementation would cost much more.
    pub fn has_access_control(self) -> bool {
        self >= ServerVersion::new(20, 5)
    }

    /// Whether `reader_user` can be served: SQL access control, and `getSetting` (20.7), which
    /// the row policies use to read the reader's tenant from its settings.
    pub fn supports_reader_policies(self) -> bool {
        self.has_access_control() && self >= ServerVersion::new(20, 7)
    }
}

impl fmt::Display for ServerVersion {
    /// `major.minor`, e.g. `23.8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A ClickHouse column type pgfanout writes or accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChType {
    UInt8,
    Bool,
    Int16,
    Int32,
    Int64,
    UInt64,
    Float32,
    Float64,
    /// `Decimal(precision, scale)`: precision 1..=76 (up to 38 from [`target_type`]), scale ≤
    /// precision.
    Decimal {
        precision: u8,
        scale: u8,
    },
    String,
    Uuid,
    Date,
    /// `DateTime('UTC')`: seconds since 1970 as UInt32.
    DateTime,
    /// `DateTime64(6, 'UTC')`: microseconds since 1970 as Int64.
    DateTime64,
    LowCardinality(Box<ChType>),
    Nullable(Box<ChType>),
    Array(Box<ChType>),
}

/// Deepest type nesting [`ChType::parse`] accepts; real types nest two or three levels.
const MAX_PARSE_DEPTH: usize = 16;

impl ChType {
    /// The type as written in DDL, e.g. `Nullable(Decimal(12, 2))`, `DateTime('UTC')`,
    /// `DateTime64(6, 'UTC')`, `LowCardinality(Nullable(String))`, `Array(Nullable(Int32))`.
    pub fn sql(&self) -> String {
        let mut s = String::new();
        self.write_sql(&mut s);
        s
    }

    fn write_sql(&self, s: &mut String) {
        let wrap = |s: &mut String, name: &str, inner: &ChType| {
            s.push_str(name);
            s.push('(');
            inner.write_sql(s);
            s.push(')');
        };
        match self {
            ChType::UInt8 => s.push_str("UInt8"),
            ChType::Bool => s.push_str("Bool"),
            ChType::Int16 => s.push_str("Int16"),
            ChType::Int32 => s.push_str("Int32"),
            ChType::Int64 => s.push_str("Int64"),
            ChType::UInt64 => s.push_str("UInt64"),
            ChType::Float32 => s.push_str("Float32"),
            ChType::Float64 => s.push_str("Float64"),
            ChType::Decimal { precision, scale } => {
                s.push_str(&format!("Decimal({precision}, {scale})"));
            }
            ChType::String => s.push_str("String"),
            ChType::Uuid => s.push_str("UUID"),
            ChType::Date => s.push_str("Date"),
            ChType::DateTime => s.push_str("DateTime('UTC')"),
            ChType::DateTime64 => s.push_str("DateTime64(6, 'UTC')"),
            ChType::LowCardinality(t) => wrap(s, "LowCardinality", t),
            ChType::Nullable(t) => wrap(s, "Nullable", t),
            ChType::Array(t) => wrap(s, "Array", t),
        }
    }

    /// Parses a type as `system.columns` reports it (18.16 and current servers): the spellings
    /// [`ChType::sql`] produces, plus `Decimal(12,2)`, `Decimal32(2)` .. `Decimal256(2)`,
    /// `DateTime` without a time zone, and `DateTime64(6)` without one. `None` for anything
    /// else, including DateTime with another time zone, DateTime64 with another precision,
    /// and illegal nestings (`Nullable(Array(…))`, `Nullable(Nullable(…))`,
    /// `LowCardinality(Array(…))`, ...).
    pub fn parse(s: &str) -> Option<ChType> {
        parse_type(s, 0)
    }

    /// Whether an existing column of type `self` can hold what pgfanout writes for a column it
    /// would create as `wanted`. The caller encodes with the *existing* type
    /// (`ColumnEncoder::new(pg, existing)`), which adapts the encoding, so the rules are about
    /// the values a column can hold, not about identical bytes:
    ///
    /// - `LowCardinality(T)` holds what `T` holds and vice versa (same encoding).
    /// - `Nullable(T)` holds what `T` holds; a non-Nullable column never holds a Nullable one.
    /// - `UInt8` and `Bool` hold each other (one byte, 0 or 1).
    /// - `DateTime` and `DateTime64` hold each other: a `DateTime` column keeps whole seconds,
    ///   the sub-second part truncated, exactly as on servers before 20.1 (so a table created
    ///   on an old server keeps working after an upgrade).
    /// - `Decimal(p2, s)` holds `Decimal(p, s)` when `p2 >= p` (same scale).
    /// - `Array(A)` holds `Array(W)` when `A` holds `W`.
    /// - The widenings pgfanout applies when a source column's type widens
    ///   (`crate::target::widens`), so an older change fits a widened column: `Int64` holds
    ///   `Int32` and `Int16`, `Int32` holds `Int16`, `Float64` holds `Float32`,
    ///   `Decimal(p2, s2)` holds `Decimal(p, s)` when `s2 >= s` and `p2 - s2 >= p - s`, and
    ///   `String` holds a `Decimal` (unconstrained `numeric`).
    /// - Otherwise only the same type.
    pub fn accepts(&self, wanted: &ChType) -> bool {
        match (
            self.without_low_cardinality(),
            wanted.without_low_cardinality(),
        ) {
            (ChType::Nullable(have), ChType::Nullable(want)) => have.accepts(want),
            (ChType::Nullable(have), want) => have.accepts(want),
            (_, ChType::Nullable(_)) => false,
            (ChType::Array(have), ChType::Array(want)) => have.accepts(want),
            (ChType::UInt8 | ChType::Bool, ChType::UInt8 | ChType::Bool) => true,
            (ChType::DateTime | ChType::DateTime64, ChType::DateTime | ChType::DateTime64) => true,
            (
                ChType::Decimal {
                    precision: have_p,
                    scale: have_s,
                },
                ChType::Decimal {
                    precision: want_p,
                    scale: want_s,
                },
            ) => {
                have_s >= want_s
                    && i16::from(*have_p) - i16::from(*have_s)
                        >= i16::from(*want_p) - i16::from(*want_s)
            }
            (ChType::Int64, ChType::Int32 | ChType::Int16) => true,
            (ChType::Int32, ChType::Int16) => true,
            (ChType::Float64, ChType::Float32) => true,
            (ChType::String, ChType::Decimal { .. }) => true,
            (have, want) => have == want,
        }
    }

    /// The type with any outer `LowCardinality` removed (it does not change the encoding).
    pub fn without_low_cardinality(&self) -> &ChType {
        match self {
            ChType::LowCardinality(t) => t.without_low_cardinality(),
            t => t,
        }
    }

    /// Whether the type (under any `LowCardinality`) is `Nullable`.
    pub fn is_nullable(&self) -> bool {
        matches!(self.without_low_cardinality(), ChType::Nullable(_))
    }
}

fn parse_type(s: &str, depth: usize) -> Option<ChType> {
    if depth > MAX_PARSE_DEPTH {
        return None;
    }
    let s = s.trim();
    if let Some(inner) = call_args(s, "Nullable") {
        let t = parse_type(inner, depth + 1)?;
        return match t {
            ChType::Nullable(_) | ChType::Array(_) | ChType::LowCardinality(_) => None,
            t => Some(ChType::Nullable(Box::new(t))),
        };
    }
    if let Some(inner) = call_args(s, "LowCardinality") {
        let t = parse_type(inner, depth + 1)?;
        return match t {
            ChType::LowCardinality(_) | ChType::Array(_) => None,
            t => Some(ChType::LowCardinality(Box::new(t))),
        };
    }
    if let Some(inner) = call_args(s, "Array") {
        return Some(ChType::Array(Box::new(parse_type(inner, depth + 1)?)));
    }
    if let Some(args) = call_args(s, "Decimal") {
        let (p, sc) = args.split_once(',')?;
        return decimal(parse_u8(p)?, parse_u8(sc)?);
    }
    for (name, precision) in [
        ("Decimal32", 9),
        ("Decimal64", 18),
        ("Decimal128", 38),
        ("Decimal256", 76),
    ] {
        if let Some(sc) = call_args(s, name) {
            return decimal(precision, parse_u8(sc)?);
        }
    }
    if let Some(tz) = call_args(s, "DateTime") {
        return is_utc(tz).then_some(ChType::DateTime);
    }
    if let Some(args) = call_args(s, "DateTime64") {
        let (precision, tz) = match args.split_once(',') {
            Some((p, tz)) => (p, Some(tz)),
            None => (args, None),
        };
        return (parse_u8(precision)? == 6 && tz.is_none_or(is_utc)).then_some(ChType::DateTime64);
    }
    Some(match s {
        "UInt8" => ChType::UInt8,
        "Bool" => ChType::Bool,
        "Int16" => ChType::Int16,
        "Int32" => ChType::Int32,
        "Int64" => ChType::Int64,
        "UInt64" => ChType::UInt64,
        "Float32" => ChType::Float32,
        "Float64" => ChType::Float64,
        "String" => ChType::String,
        "UUID" => ChType::Uuid,
        "Date" => ChType::Date,
        "DateTime" => ChType::DateTime,
        _ => return None,
    })
}

/// `name(args)` → `args`.
fn call_args<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    s.strip_prefix(name)?.strip_prefix('(')?.strip_suffix(')')
}

fn parse_u8(s: &str) -> Option<u8> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn decimal(precision: u8, scale: u8) -> Option<ChType> {
    ((1..=76).contains(&precision) && scale <= precision)
        .then_some(ChType::Decimal { precision, scale })
}

fn is_utc(tz: &str) -> bool {
    tz.trim() == "'UTC'"
}

/// Wraps a type in `Nullable`, where ClickHouse allows it: `LowCardinality(T)` becomes
/// `LowCardinality(Nullable(T))`; arrays and already-Nullable types stay as they are.
fn nullable(t: ChType) -> ChType {
    match t {
        ChType::LowCardinality(inner) => ChType::LowCardinality(Box::new(nullable(*inner))),
        t @ (ChType::Array(_) | ChType::Nullable(_)) => t,
        t => ChType::Nullable(Box::new(t)),
    }
}

/// PostgreSQL's `numeric(p, s)` from `atttypmod` (`((p << 16) | s) + 4`); `None` without a
/// typmod (`-1`) or for one that is not `p` and `s` both in 0..=0xffff.
fn numeric_precision_scale(typmod: i32) -> Option<(u32, u32)> {
    let t = typmod.checked_sub(4)?;
    if t < 0 {
        return None;
    }
    // Non-negative, so the shifts and masks are plain unsigned arithmetic.
    let t = t as u32;
    Some(((t >> 16) & 0xffff, t & 0xffff))
}

/// The ClickHouse type pgfanout creates for a PostgreSQL column: see the mapping table in the
/// module documentation. `numeric_typmod` is the column's `atttypmod` (`None` or `-1` when it
/// has none; only looked at for `numeric` and `numeric[]`), `nullable` whether the column may
/// be NULL (ignored for arrays, which are never Nullable).
pub fn target_type(
    pg: &PgType,
    numeric_typmod: Option<i32>,
    nullable_column: bool,
    v: ServerVersion,
) -> ChType {
    let base = match pg {
        PgType::Array(elem) => {
            if matches!(**elem, PgType::Array(_)) {
                ChType::String
            } else {
                let elem = target_type(elem, numeric_typmod, true, v);
                return ChType::Array(Box::new(elem));
            }
        }
        PgType::Bool if v.has_bool() => ChType::Bool,
        PgType::Bool => ChType::UInt8,
        PgType::Int2 => ChType::Int16,
        PgType::Int4 => ChType::Int32,
        PgType::Int8 => ChType::Int64,
        PgType::Float4 => ChType::Float32,
        PgType::Float8 => ChType::Float64,
        PgType::Numeric => match numeric_typmod.and_then(numeric_precision_scale) {
            Some((p, s)) if (1..=38).contains(&p) && s <= p => ChType::Decimal {
                // Both at most 38.
                precision: p as u8,
                scale: s as u8,
            },
            _ => ChType::String,
        },
        PgType::Uuid => ChType::Uuid,
        PgType::Date => ChType::Date,
        PgType::Timestamp | PgType::TimestampTz if v.has_datetime64() => ChType::DateTime64,
        PgType::Timestamp | PgType::TimestampTz => ChType::DateTime,
        PgType::Enum => ChType::LowCardinality(Box::new(ChType::String)),
        PgType::Text
        | PgType::Json
        | PgType::Jsonb
        | PgType::Bytea
        | PgType::Time
        | PgType::TimeTz
        | PgType::Interval
        | PgType::Inet
        | PgType::Cidr
        | PgType::Other => ChType::String,
    };
    if nullable_column {
        nullable(base)
    } else {
        base
    }
}

#[cfg(test)]
pub(super) mod tests {

    #[test]
    fn reader_policies_need_access_control_and_get_setting() {
        assert!(!ServerVersion::new(18, 16).supports_reader_policies());
        assert!(!ServerVersion::new(20, 5).supports_reader_policies());
        assert!(ServerVersion::new(20, 7).supports_reader_policies());
        assert!(ServerVersion::new(24, 3).supports_reader_policies());
    }

    use super::*;

    const OLD: ServerVersion = ServerVersion::new(18, 16);
    const NEW: ServerVersion = ServerVersion::new(24, 3);

    // Shorthands for types, shared with rowbinary's tests.
    pub(crate) fn n(t: ChType) -> ChType {
        ChType::Nullable(Box::new(t))
    }
    pub(crate) fn lc(t: ChType) -> ChType {
        ChType::LowCardinality(Box::new(t))
    }
    pub(crate) fn arr(t: ChType) -> ChType {
        ChType::Array(Box::new(t))
    }
    pub(crate) fn parr(t: PgType) -> PgType {
        PgType::Array(Box::new(t))
    }
    pub(crate) fn dec(precision: u8, scale: u8) -> ChType {
        ChType::Decimal { precision, scale }
    }
    /// `atttypmod` of `numeric(p, s)`.
    fn typmod(p: i32, s: i32) -> Option<i32> {
        Some(((p << 16) | s) + 4)
    }

    #[test]
    fn versions() {
        assert_eq!(ServerVersion::parse("18.16.1"), Some(OLD));
        assert_eq!(
            ServerVersion::parse("23.8.2.7"),
            Some(ServerVersion::new(23, 8))
        );
        assert_eq!(
            ServerVersion::parse(" 24.3.1.2672\n"),
            Some(ServerVersion::new(24, 3))
        );
        assert_eq!(
            ServerVersion::parse("21.12"),
            Some(ServerVersion::new(21, 12))
        );
        for bad in [
            "",
            "23",
            "23.",
            ".8",
            "v23.8",
            "23.x.1",
            "23.-1",
            "99999999999.1",
        ] {
            assert_eq!(ServerVersion::parse(bad), None, "{bad:?}");
        }
        assert_eq!(ServerVersion::new(23, 8).to_string(), "23.8");
        assert!(ServerVersion::new(19, 16) < ServerVersion::new(20, 1));
        assert!(ServerVersion::new(20, 10) > ServerVersion::new(20, 9));

        let v = |s| ServerVersion::parse(s).unwrap();
        assert!(!v("19.17.1").has_datetime64());
        assert!(v("20.1.2.4").has_datetime64());
        assert!(!v("23.1.1").has_is_deleted());
        assert!(v("23.2.1").has_is_deleted());
        assert!(!v("21.11.1").has_bool());
        assert!(v("21.12.2").has_bool());
        assert!(v("18.16.1").low_cardinality_needs_setting());
        assert!(v("19.1.6").low_cardinality_needs_setting());
        assert!(!v("19.3.3").low_cardinality_needs_setting());
        assert!(!v("24.3.1").low_cardinality_needs_setting());
        assert!(!v("20.4.2").has_access_control());
        assert!(v("20.5.2").has_access_control());
        assert!(!OLD.has_access_control() && NEW.has_access_control());
    }

    #[test]
    fn mapping_for_old_and_new_servers() {
        // (PostgreSQL type, typmod, ClickHouse on 18.16, ClickHouse on 24.3), non-null.
        let rows: Vec<(PgType, Option<i32>, ChType, ChType)> = vec![
            (PgType::Bool, None, ChType::UInt8, ChType::Bool),
            (PgType::Int2, None, ChType::Int16, ChType::Int16),
            (PgType::Int4, None, ChType::Int32, ChType::Int32),
            (PgType::Int8, None, ChType::Int64, ChType::Int64),
            (PgType::Float4, None, ChType::Float32, ChType::Float32),
            (PgType::Float8, None, ChType::Float64, ChType::Float64),
            (PgType::Numeric, typmod(12, 2), dec(12, 2), dec(12, 2)),
            (PgType::Numeric, typmod(38, 0), dec(38, 0), dec(38, 0)),
            (PgType::Numeric, typmod(1, 1), dec(1, 1), dec(1, 1)),
            (
                PgType::Numeric,
                typmod(39, 2),
                ChType::String,
                ChType::String,
            ),
            (PgType::Numeric, None, ChType::String, ChType::String),
            (PgType::Numeric, Some(-1), ChType::String, ChType::String),
            (PgType::Numeric, Some(3), ChType::String, ChType::String),
            // PostgreSQL 15: numeric(2, 5) and numeric(5, -2) (the scale's low 11 bits).
            (
                PgType::Numeric,
                typmod(2, 5),
                ChType::String,
                ChType::String,
            ),
            (
                PgType::Numeric,
                typmod(5, 0x7fe),
                ChType::String,
                ChType::String,
            ),
            (PgType::Text, None, ChType::String, ChType::String),
            (PgType::Uuid, None, ChType::Uuid, ChType::Uuid),
            (PgType::Json, None, ChType::String, ChType::String),
            (PgType::Jsonb, None, ChType::String, ChType::String),
            (PgType::Bytea, None, ChType::String, ChType::String),
            (PgType::Date, None, ChType::Date, ChType::Date),
            (
                PgType::Timestamp,
                None,
                ChType::DateTime,
                ChType::DateTime64,
            ),
            (
                PgType::TimestampTz,
                None,
                ChType::DateTime,
                ChType::DateTime64,
            ),
            (PgType::Time, None, ChType::String, ChType::String),
            (PgType::TimeTz, None, ChType::String, ChType::String),
            (PgType::Interval, None, ChType::String, ChType::String),
            (PgType::Inet, None, ChType::String, ChType::String),
            (PgType::Cidr, None, ChType::String, ChType::String),
            (PgType::Other, None, ChType::String, ChType::String),
            (PgType::Enum, None, lc(ChType::String), lc(ChType::String)),
        ];
        for (pg, tm, old, new) in rows {
            assert_eq!(
                target_type(&pg, tm, false, OLD),
                old,
                "{pg:?} {tm:?} on 18.16"
            );
            assert_eq!(
                target_type(&pg, tm, false, NEW),
                new,
                "{pg:?} {tm:?} on 24.3"
            );
            // Nullable columns wrap, with LowCardinality outside.
            let wrap = |t: ChType| match t {
                ChType::LowCardinality(inner) => lc(n(*inner)),
                t => n(t),
            };
            assert_eq!(target_type(&pg, tm, true, OLD), wrap(old.clone()));
            assert_eq!(target_type(&pg, tm, true, NEW), wrap(new.clone()));
            // Arrays: elements always Nullable, the array never.
            for nullable in [false, true] {
                assert_eq!(
                    target_type(&parr(pg.clone()), tm, nullable, OLD),
                    arr(wrap(old.clone()))
                );
                assert_eq!(
                    target_type(&parr(pg.clone()), tm, nullable, NEW),
                    arr(wrap(new.clone()))
                );
            }
        }
        assert_eq!(
            target_type(&PgType::Enum, None, true, NEW).sql(),
            "LowCardinality(Nullable(String))"
        );
        assert_eq!(
            target_type(&parr(PgType::Numeric), typmod(10, 3), true, NEW).sql(),
            "Array(Nullable(Decimal(10, 3)))"
        );
        assert_eq!(
            target_type(&parr(parr(PgType::Int4)), None, true, NEW),
            n(ChType::String)
        );
    }

    /// One of every type shape pgfanout writes or accepts.
    fn shapes() -> Vec<ChType> {
        let scalars = vec![
            ChType::UInt8,
            ChType::Bool,
            ChType::Int16,
            ChType::Int32,
            ChType::Int64,
            ChType::UInt64,
            ChType::Float32,
            ChType::Float64,
            dec(1, 0),
            dec(9, 9),
            dec(12, 2),
            dec(18, 4),
            dec(38, 10),
            dec(76, 2),
            ChType::String,
            ChType::Uuid,
            ChType::Date,
            ChType::DateTime,
            ChType::DateTime64,
        ];
        let mut all = scalars.clone();
        for t in &scalars {
            all.push(n(t.clone()));
            all.push(lc(t.clone()));
            all.push(lc(n(t.clone())));
            all.push(arr(t.clone()));
            all.push(arr(n(t.clone())));
            all.push(arr(lc(n(t.clone()))));
            all.push(arr(arr(n(t.clone()))));
        }
        all
    }

    #[test]
    fn sql_spellings() {
        assert_eq!(n(dec(12, 2)).sql(), "Nullable(Decimal(12, 2))");
        assert_eq!(ChType::DateTime.sql(), "DateTime('UTC')");
        assert_eq!(ChType::DateTime64.sql(), "DateTime64(6, 'UTC')");
        assert_eq!(
            lc(n(ChType::String)).sql(),
            "LowCardinality(Nullable(String))"
        );
        assert_eq!(arr(n(ChType::Int32)).sql(), "Array(Nullable(Int32))");
        assert_eq!(ChType::Uuid.sql(), "UUID");
        assert_eq!(n(ChType::Bool).sql(), "Nullable(Bool)");
    }

    #[test]
    fn sql_parse_round_trip() {
        for t in shapes() {
            assert_eq!(ChType::parse(&t.sql()), Some(t.clone()), "{}", t.sql());
        }
    }

    #[test]
    fn parses_system_columns_spellings() {
        let cases = [
            ("Decimal(12,2)", dec(12, 2)),
            ("Decimal( 12 , 2 )", dec(12, 2)),
            ("Decimal32(2)", dec(9, 2)),
            ("Decimal64(4)", dec(18, 4)),
            ("Decimal128(10)", dec(38, 10)),
            ("Decimal256(3)", dec(76, 3)),
            ("DateTime", ChType::DateTime),
            ("DateTime('UTC')", ChType::DateTime),
            ("DateTime64(6)", ChType::DateTime64),
            ("DateTime64(6,'UTC')", ChType::DateTime64),
            ("Nullable(DateTime)", n(ChType::DateTime)),
            ("LowCardinality(String)", lc(ChType::String)),
            (
                "Array(LowCardinality(Nullable(String)))",
                arr(lc(n(ChType::String))),
            ),
            (" String ", ChType::String),
        ];
        for (s, want) in cases {
            assert_eq!(ChType::parse(s), Some(want), "{s}");
        }
        for s in [
            "",
            "string",
            "Int8",
            "UInt32",
            "FixedString(16)",
            "Enum8('a' = 1)",
            "Map(String, String)",
            "Tuple(Int32)",
            "DateTime('Europe/Berlin')",
            "DateTime64(3, 'UTC')",
            "DateTime64(6, 'Asia/Tokyo')",
            "DateTime64(x)",
            "Decimal(0, 0)",
            "Decimal(77, 2)",
            "Decimal(5, 6)",
            "Decimal(5)",
            "Decimal(5, -1)",
            "Decimal(a, b)",
            "Nullable(Nullable(String))",
            "Nullable(Array(Int32))",
            "Nullable(LowCardinality(String))",
            "LowCardinality(LowCardinality(String))",
            "LowCardinality(Array(String))",
            "Nullable(String",
            "Nullable(String))",
            "Array()",
            "NullableString",
        ] {
            assert_eq!(ChType::parse(s), None, "{s}");
        }
        // Deep nesting is refused, not a stack overflow.
        let deep = format!("{}Int32{}", "Array(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(ChType::parse(&deep), None);
    }

    #[test]
    fn accepts() {
        let yes = [
            (ChType::Int32, ChType::Int32),
            (n(ChType::Int32), ChType::Int32),
            (n(ChType::Int32), n(ChType::Int32)),
            (ChType::UInt8, ChType::Bool),
            (ChType::Bool, ChType::UInt8),
            (n(ChType::UInt8), n(ChType::Bool)),
            (ChType::DateTime, ChType::DateTime64),
            (ChType::DateTime64, ChType::DateTime),
            (ChType::String, lc(ChType::String)),
            (lc(ChType::String), ChType::String),
            (n(ChType::String), lc(n(ChType::String))),
            (lc(n(ChType::String)), n(ChType::String)),
            (lc(n(ChType::String)), lc(ChType::String)),
            (dec(12, 2), dec(12, 2)),
            (dec(18, 2), dec(12, 2)),
            (n(dec(38, 2)), dec(12, 2)),
            (dec(14, 4), dec(12, 2)),
            (ChType::Int64, ChType::Int32),
            (n(ChType::Int64), n(ChType::Int16)),
            (ChType::Float64, ChType::Float32),
            (ChType::String, dec(12, 2)),
            (arr(n(ChType::Int32)), arr(n(ChType::Int32))),
            (arr(n(ChType::String)), arr(lc(n(ChType::String)))),
            (arr(n(ChType::DateTime)), arr(n(ChType::DateTime64))),
        ];
        for (have, want) in yes {
            assert!(
                have.accepts(&want),
                "{} should accept {}",
                have.sql(),
                want.sql()
            );
        }
        let no = [
            (ChType::Int32, n(ChType::Int32)),
            (ChType::Int32, ChType::Int64),
            (ChType::String, ChType::Uuid),
            (ChType::Float32, ChType::Float64),
            (dec(12, 2), dec(18, 2)),
            (dec(12, 3), dec(12, 2)),
            (dec(12, 2), dec(12, 3)),
            (lc(ChType::String), lc(n(ChType::String))),
            (arr(ChType::Int32), arr(n(ChType::Int32))),
            (arr(n(ChType::Int32)), ChType::Int32),
            (ChType::Int32, arr(n(ChType::Int32))),
            (ChType::Date, ChType::DateTime),
        ];
        for (have, want) in no {
            assert!(
                !have.accepts(&want),
                "{} should refuse {}",
                have.sql(),
                want.sql()
            );
        }
        // Every shape accepts itself.
        for t in shapes() {
            assert!(t.accepts(&t), "{}", t.sql());
        }
    }
}
