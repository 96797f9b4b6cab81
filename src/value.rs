//! Typed decoding of PostgreSQL text-format column values.
//!
//! pgoutput sends every column in PostgreSQL's text output format (the walsender
//! session runs with DateStyle=ISO, IntervalStyle=postgres, TimeZone=UTC,
//! extra_float_digits=3). [`parse_value`] turns those bytes into a [`Value`]. Callers
//! keep the raw bytes, so this module never has to preserve them; text-like values
//! simply borrow.
//!
//! Why hand-written rather than chrono or a decimal crate: chrono's dates stop at
//! ±262143 years, while PostgreSQL dates run to 5874897 AD and timestamps to
//! 294276 AD; numeric is arbitrary precision (up to 131072 digits before the point),
//! which no fixed-width decimal type holds. So dates use an explicit days-from-civil
//! conversion (proleptic Gregorian, as PostgreSQL itself uses) and numerics keep
//! their digits as a string.
//!
//! Timestamps count microseconds from PostgreSQL's epoch (2000-01-01 UTC) rather than
//! 1970: PostgreSQL's range (4714 BC .. 294276 AD) fills an i64 counted from 2000, so
//! its last ~30 years would overflow an i64 counted from 1970. This is also what
//! pgoutput sends for commit times. [`Timestamp::unix_micros`] converts where it fits.
//!
//! Errors carry the type name, a byte offset and a fixed reason, never the value,
//! because row contents must not reach logs. No input panics: indexing is checked
//! and arithmetic is checked or done in a wider type.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::str::FromStr;

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
/// Julian day 0 (4714-11-24 BC), PostgreSQL's first date, in days since 1970.
const DATE_MIN_DAYS: i64 = -2_440_588;
/// 5874897-12-31, PostgreSQL's last date, in days since 1970.
const DATE_MAX_DAYS: i64 = 2_145_042_905;
/// PostgreSQL's timestamp range in microseconds since 2000-01-01, half-open:
/// 4714-11-24 00:00:00 BC up to (excluding) 294277-01-01 00:00:00.
const TIMESTAMP_MIN: i64 = -211_813_488_000_000_000;
const TIMESTAMP_END: i64 = 9_223_371_331_200_000_000;
/// PostgreSQL accepts UTC offsets strictly below 16 hours.
const MAX_OFFSET_SECS: u64 = 15 * 3600 + 59 * 60 + 59;

/// Why a column's text could not be converted. Deliberately holds no part of the
/// value: only the type, where parsing stopped, and a fixed reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {ty} text at byte {offset}: {reason}")]
pub struct ValueError {
    /// PostgreSQL type name, e.g. `timestamptz` or `int4[]`.
    pub ty: &'static str,
    /// Byte offset into the column text where the problem was found.
    pub offset: usize,
    pub reason: &'static str,
}

/// The column types this module understands. Anything else is [`PgType::Other`]
/// and stays text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    /// text, varchar, bpchar and name.
    Text,
    Uuid,
    Json,
    Jsonb,
    Bytea,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Interval,
    Inet,
    Cidr,
    /// A user-defined enum. Enum oids are assigned at `CREATE TYPE`, so callers that
    /// know an oid is an enum build this (or `Array(Enum)`) themselves.
    Enum,
    /// A one-dimensional array of the element type.
    Array(Box<PgType>),
    Other,
}

impl PgType {
    /// Every type but arrays, for tests that go through them all.
    pub const SCALARS: [PgType; 22] = [
        PgType::Bool,
        PgType::Int2,
        PgType::Int4,
        PgType::Int8,
        PgType::Float4,
        PgType::Float8,
        PgType::Numeric,
        PgType::Text,
        PgType::Uuid,
        PgType::Json,
        PgType::Jsonb,
        PgType::Bytea,
        PgType::Date,
        PgType::Time,
        PgType::TimeTz,
        PgType::Timestamp,
        PgType::TimestampTz,
        PgType::Interval,
        PgType::Inet,
        PgType::Cidr,
        PgType::Enum,
        PgType::Other,
    ];

    /// Maps builtin type oids to a [`PgType`]; unknown oids give [`PgType::Other`].
    pub fn from_oid(oid: u32) -> PgType {
        match oid {
            16 => Self::Bool,
            17 => Self::Bytea,
            19 | 25 | 1042 | 1043 => Self::Text,
            20 => Self::Int8,
            21 => Self::Int2,
            23 => Self::Int4,
            114 => Self::Json,
            650 => Self::Cidr,
            700 => Self::Float4,
            701 => Self::Float8,
            869 => Self::Inet,
            1082 => Self::Date,
            1083 => Self::Time,
            1114 => Self::Timestamp,
            1184 => Self::TimestampTz,
            1186 => Self::Interval,
            1266 => Self::TimeTz,
            1700 => Self::Numeric,
            2950 => Self::Uuid,
            3802 => Self::Jsonb,
            _ => match array_element_oid(oid) {
                Some(elem) => Self::Array(Box::new(Self::from_oid(elem))),
                None => Self::Other,
            },
        }
    }

    /// The PostgreSQL name used in error messages (`int4`, `timestamptz[]`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Bool => "bool",
            Self::Int2 => "int2",
            Self::Int4 => "int4",
            Self::Int8 => "int8",
            Self::Float4 => "float4",
            Self::Float8 => "float8",
            Self::Numeric => "numeric",
            Self::Text => "text",
            Self::Uuid => "uuid",
            Self::Json => "json",
            Self::Jsonb => "jsonb",
            Self::Bytea => "bytea",
            Self::Date => "date",
            Self::Time => "time",
            Self::TimeTz => "timetz",
            Self::Timestamp => "timestamp",
            Self::TimestampTz => "timestamptz",
            Self::Interval => "interval",
            Self::Inet => "inet",
            Self::Cidr => "cidr",
            Self::Enum => "enum",
            Self::Other => "other",
            Self::Array(elem) => match **elem {
                Self::Bool => "bool[]",
                Self::Int2 => "int2[]",
                Self::Int4 => "int4[]",
                Self::Int8 => "int8[]",
                Self::Float4 => "float4[]",
                Self::Float8 => "float8[]",
                Self::Numeric => "numeric[]",
                Self::Text => "text[]",
                Self::Uuid => "uuid[]",
                Self::Json => "json[]",
                Self::Jsonb => "jsonb[]",
                Self::Bytea => "bytea[]",
                Self::Date => "date[]",
                Self::Time => "time[]",
                Self::TimeTz => "timetz[]",
                Self::Timestamp => "timestamp[]",
                Self::TimestampTz => "timestamptz[]",
                Self::Interval => "interval[]",
                Self::Inet => "inet[]",
                Self::Cidr => "cidr[]",
                Self::Enum => "enum[]",
                Self::Other => "other[]",
                Self::Array(_) => "array",
            },
        }
    }
}

/// Element type oid of the builtin array types we decode.
fn array_element_oid(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,
        1001 => 17,
        1003 => 19,
        1005 => 21,
        1007 => 23,
        1009 => 25,
        1014 => 1042,
        1015 => 1043,
        1016 => 20,
        1021 => 700,
        1022 => 701,
        1041 => 869,
        651 => 650,
        199 => 114,
        3807 => 3802,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1187 => 1186,
        1270 => 1266,
        1231 => 1700,
        2951 => 2950,
        _ => return None,
    })
}

/// A decoded column value. Text-like variants borrow from the column bytes when
/// they can.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Bool(bool),
    Int2(i16),
    Int4(i32),
    Int8(i64),
    Float4(f32),
    Float8(f64),
    Numeric(Numeric),
    Text(Cow<'a, str>),
    Uuid([u8; 16]),
    /// json and jsonb. Numbers go through `serde_json` (f64 / i64 / u64), so a jsonb
    /// number beyond f64 loses precision or fails; the raw text stays with the
    /// caller for anyone who needs it exact.
    Json(serde_json::Value),
    Bytea(Vec<u8>),
    Date(Date),
    Time(Time),
    TimeTz(TimeTz),
    Timestamp(Timestamp),
    /// Normalised to UTC.
    TimestampTz(Timestamp),
    Interval(Interval),
    Inet(Inet),
    Cidr(Inet),
    Enum(Cow<'a, str>),
    /// `None` elements are SQL NULLs.
    Array(Vec<Option<Value<'a>>>),
    Other(Cow<'a, str>),
}

impl Value<'_> {
    /// Detaches the value from the column bytes.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Bool(v) => Value::Bool(v),
            Value::Int2(v) => Value::Int2(v),
            Value::Int4(v) => Value::Int4(v),
            Value::Int8(v) => Value::Int8(v),
            Value::Float4(v) => Value::Float4(v),
            Value::Float8(v) => Value::Float8(v),
            Value::Numeric(v) => Value::Numeric(v),
            Value::Text(v) => Value::Text(Cow::Owned(v.into_owned())),
            Value::Uuid(v) => Value::Uuid(v),
            Value::Json(v) => Value::Json(v),
            Value::Bytea(v) => Value::Bytea(v),
            Value::Date(v) => Value::Date(v),
            Value::Time(v) => Value::Time(v),
            Value::TimeTz(v) => Value::TimeTz(v),
            Value::Timestamp(v) => Value::Timestamp(v),
            Value::TimestampTz(v) => Value::TimestampTz(v),
            Value::Interval(v) => Value::Interval(v),
            Value::Inet(v) => Value::Inet(v),
            Value::Cidr(v) => Value::Cidr(v),
            Value::Enum(v) => Value::Enum(Cow::Owned(v.into_owned())),
            Value::Array(v) => {
                Value::Array(v.into_iter().map(|e| e.map(Value::into_owned)).collect())
            }
            Value::Other(v) => Value::Other(Cow::Owned(v.into_owned())),
        }
    }
}

/// An exact PostgreSQL numeric.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Numeric {
    NaN,
    PosInfinity,
    NegInfinity,
    /// The value is `(-1)^negative × digits × 10^-scale`. `digits` are ASCII decimal
    /// digits without leading zeros (`"0"` for zero, which is never negative);
    /// trailing zeros are kept because they are part of the scale.
    Finite {
        negative: bool,
        digits: String,
        scale: u32,
    },
}

impl fmt::Display for Numeric {
    /// Prints exactly what PostgreSQL prints, e.g. `-0.00100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (negative, digits, scale) = match self {
            Numeric::NaN => return f.write_str("NaN"),
            Numeric::PosInfinity => return f.write_str("Infinity"),
            Numeric::NegInfinity => return f.write_str("-Infinity"),
            Numeric::Finite {
                negative,
                digits,
                scale,
            } => (*negative, digits.as_str(), *scale),
        };
        let digits = if digits.is_empty() { "0" } else { digits };
        if negative {
            f.write_char('-')?;
        }
        let scale = usize::try_from(scale).unwrap_or(usize::MAX);
        match digits.len().checked_sub(scale) {
            Some(int_len) if int_len > 0 => match (digits.get(..int_len), digits.get(int_len..)) {
                (Some(int), Some(frac)) => {
                    f.write_str(int)?;
                    if !frac.is_empty() {
                        f.write_char('.')?;
                        f.write_str(frac)?;
                    }
                    Ok(())
                }
                // Only reachable for hand-built, non-ASCII digits.
                _ => f.write_str(digits),
            },
            _ => {
                f.write_str("0.")?;
                for _ in digits.len()..scale {
                    f.write_char('0')?;
                }
                f.write_str(digits)
            }
        }
    }
}

impl FromStr for Numeric {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_numeric("numeric", s.as_bytes())
    }
}

/// A PostgreSQL date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Date {
    NegInfinity,
    /// Days since 1970-01-01 (proleptic Gregorian).
    Days(i32),
    PosInfinity,
}

impl Date {
    /// Astronomical year (1 BC is 0), month and day; `None` for the infinities.
    pub fn ymd(&self) -> Option<(i64, u32, u32)> {
        match *self {
            Date::Days(d) => Some(civil_from_days(i64::from(d))),
            _ => None,
        }
    }
}

impl fmt::Display for Date {
    /// PostgreSQL's ISO text: `2024-02-29`, `0001-01-01 BC`, `infinity`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Date::NegInfinity => f.write_str("-infinity"),
            Date::PosInfinity => f.write_str("infinity"),
            Date::Days(d) => {
                let (y, m, d) = civil_from_days(i64::from(d));
                let bc = write_pg_ymd(f, y, m, d)?;
                if bc {
                    f.write_str(" BC")?;
                }
                Ok(())
            }
        }
    }
}

/// Time of day in microseconds since midnight, `0..=86_400_000_000` (24:00:00 is
/// a valid PostgreSQL time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub i64);

impl fmt::Display for Time {
    /// PostgreSQL's text: `04:05:06.789`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_pg_time(f, self.0)
    }
}

/// Time of day with a UTC offset, as PostgreSQL's timetz stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TimeTz {
    /// Local time of day.
    pub time: Time,
    /// Seconds east of UTC (`+05:30` is 19800).
    pub offset_secs: i32,
}

impl fmt::Display for TimeTz {
    /// PostgreSQL's text: `04:05:06.789+05:30`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_pg_time(f, self.time.0)?;
        write_pg_offset(f, self.offset_secs)
    }
}

/// A timestamp (with or without time zone; timestamptz is normalised to UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timestamp {
    NegInfinity,
    /// Microseconds since 2000-01-01 00:00:00 (UTC for timestamptz), PostgreSQL's
    /// own epoch; see the module comment for why not 1970.
    PgMicros(i64),
    PosInfinity,
}

impl Timestamp {
    /// From PostgreSQL's binary form (microseconds since 2000-01-01 UTC, as pgoutput
    /// sends commit times); `i64::MIN`/`i64::MAX` are PostgreSQL's -infinity/infinity.
    pub fn from_pg_epoch_micros(micros: i64) -> Timestamp {
        match micros {
            i64::MIN => Timestamp::NegInfinity,
            i64::MAX => Timestamp::PosInfinity,
            us => Timestamp::PgMicros(us),
        }
    }

    /// The inverse of [`Timestamp::from_pg_epoch_micros`].
    pub fn pg_epoch_micros(&self) -> i64 {
        match *self {
            Timestamp::NegInfinity => i64::MIN,
            Timestamp::PgMicros(us) => us,
            Timestamp::PosInfinity => i64::MAX,
        }
    }

    /// Microseconds since 1970-01-01 UTC; `None` for the infinities and for instants
    /// after 294247-01-10 that do not fit an i64 counted from 1970.
    pub fn unix_micros(&self) -> Option<i64> {
        match *self {
            Timestamp::PgMicros(us) => us.checked_add(PG_EPOCH_DAYS * USECS_PER_DAY),
            _ => None,
        }
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with exactly six fractional digits, e.g.
    /// `2026-11-21T10:00:00.123456Z`. Years outside 0000..=9999 use ISO 8601's
    /// expanded form (`+294276-12-31T…`, `-4713-11-24T…`, astronomical numbering);
    /// the infinities print as `infinity` / `-infinity`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = match *self {
            Timestamp::NegInfinity => return f.write_str("-infinity"),
            Timestamp::PosInfinity => return f.write_str("infinity"),
            Timestamp::PgMicros(us) => us,
        };
        let (days, tod) = split_pg_micros(us);
        let (y, m, d) = civil_from_days(days);
        if y > 9999 {
            write!(f, "+{y}")?;
        } else if y < 0 {
            write!(f, "-{:04}", y.unsigned_abs())?;
        } else {
            write!(f, "{y:04}")?;
        }
        let secs = tod / USECS_PER_SEC;
        write!(
            f,
            "-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            tod % USECS_PER_SEC
        )
    }
}

/// A PostgreSQL interval. The three parts are independent, as in PostgreSQL
/// (a month is not a fixed number of days, nor a day a fixed number of seconds).
/// PostgreSQL 17's infinite intervals are [`Interval::INFINITY`] and
/// [`Interval::NEG_INFINITY`], matching its internal representation (so before 17,
/// the single finite interval with every field at its extreme reads as infinite).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Interval {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

impl Interval {
    pub const INFINITY: Interval = Interval {
        months: i32::MAX,
        days: i32::MAX,
        micros: i64::MAX,
    };
    pub const NEG_INFINITY: Interval = Interval {
        months: i32::MIN,
        days: i32::MIN,
        micros: i64::MIN,
    };
}

impl fmt::Display for Interval {
    /// IntervalStyle=postgres text, as PostgreSQL prints it:
    /// `1 year 2 mons -3 days +04:05:06.789`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Interval::INFINITY {
            return f.write_str("infinity");
        }
        if *self == Interval::NEG_INFINITY {
            return f.write_str("-infinity");
        }
        // PostgreSQL prints a '+' on a positive field that follows a negative one,
        // so the sign of each field is unambiguous.
        let mut is_zero = true;
        let mut is_before = false;
        let mut part = |f: &mut fmt::Formatter<'_>, value: i32, unit: &str| -> fmt::Result {
            if value == 0 {
                return Ok(());
            }
            let sep = if is_zero { "" } else { " " };
            let plus = if is_before && value > 0 { "+" } else { "" };
            let plural = if value == 1 { "" } else { "s" };
            is_before = value < 0;
            is_zero = false;
            write!(f, "{sep}{plus}{value} {unit}{plural}")
        };
        part(f, self.months / 12, "year")?;
        part(f, self.months % 12, "mon")?;
        part(f, self.days, "day")?;
        if is_zero || self.micros != 0 {
            let sep = if is_zero { "" } else { " " };
            let sign = if self.micros < 0 {
                "-"
            } else if is_before {
                "+"
            } else {
                ""
            };
            f.write_str(sep)?;
            f.write_str(sign)?;
            write_pg_hms(f, self.micros.unsigned_abs())?;
        }
        Ok(())
    }
}

/// An inet or cidr value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Inet {
    pub addr: IpAddr,
    /// Network prefix length; 32 or 128 when the text had no `/`.
    pub prefix: u8,
}

impl fmt::Display for Inet {
    /// Always `addr/prefix`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Converts one column's text to a typed value.
pub fn parse_value<'a>(ty: &PgType, text: &'a [u8]) -> Result<Value<'a>, ValueError> {
    let name = ty.name();
    Ok(match ty {
        PgType::Bool => Value::Bool(parse_bool(name, text)?),
        PgType::Int2 => Value::Int2(parse_int(name, text)?),
        PgType::Int4 => Value::Int4(parse_int(name, text)?),
        PgType::Int8 => Value::Int8(parse_int(name, text)?),
        PgType::Float4 => Value::Float4(parse_float(name, text)?),
        PgType::Float8 => Value::Float8(parse_float(name, text)?),
        PgType::Numeric => Value::Numeric(parse_numeric(name, text)?),
        PgType::Text => Value::Text(Cow::Borrowed(parse_text(name, text)?)),
        PgType::Enum => Value::Enum(Cow::Borrowed(parse_text(name, text)?)),
        PgType::Other => Value::Other(Cow::Borrowed(parse_text(name, text)?)),
        PgType::Uuid => Value::Uuid(parse_uuid(name, text)?),
        PgType::Json | PgType::Jsonb => Value::Json(parse_json(name, text)?),
        PgType::Bytea => Value::Bytea(parse_bytea(name, text)?),
        PgType::Date => Value::Date(parse_date(name, text)?),
        PgType::Time => Value::Time(parse_time(name, text)?),
        PgType::TimeTz => Value::TimeTz(parse_timetz(name, text)?),
        PgType::Timestamp => Value::Timestamp(parse_timestamp(name, text, false)?),
        PgType::TimestampTz => Value::TimestampTz(parse_timestamp(name, text, true)?),
        PgType::Interval => Value::Interval(parse_interval(name, text)?),
        PgType::Inet => Value::Inet(parse_inet(name, text, false)?),
        PgType::Cidr => Value::Cidr(parse_inet(name, text, true)?),
        PgType::Array(elem) => Value::Array(parse_array(name, elem, text)?),
    })
}

/// A read position over the column bytes that reports errors against the type.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
    ty: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(ty: &'static str, s: &'a [u8]) -> Self {
        Cursor { s, pos: 0, ty }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<u8> {
        self.s.get(self.pos.saturating_add(n)).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_lit(&mut self, lit: &[u8]) -> bool {
        if self.rest().starts_with(lit) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn rest(&self) -> &'a [u8] {
        self.s.get(self.pos..).unwrap_or(&[])
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn err(&self, reason: &'static str) -> ValueError {
        self.err_at(self.pos, reason)
    }

    fn err_at(&self, offset: usize, reason: &'static str) -> ValueError {
        ValueError {
            ty: self.ty,
            offset,
            reason,
        }
    }

    fn expect(&mut self, b: u8, reason: &'static str) -> Result<(), ValueError> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(self.err(reason))
        }
    }

    fn finish(&self) -> Result<(), ValueError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.err("unexpected trailing characters"))
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b) if is_pg_space(b)) {
            self.pos += 1;
        }
    }

    /// Reads `min..=max` ASCII digits as a number.
    fn digits(&mut self, min: usize, max: usize, reason: &'static str) -> Result<u64, ValueError> {
        let start = self.pos;
        let mut v: u64 = 0;
        while self.pos - start < max {
            let Some(b @ b'0'..=b'9') = self.peek() else {
                break;
            };
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .ok_or_else(|| self.err_at(start, "number out of range"))?;
            self.pos += 1;
        }
        if self.pos - start < min {
            return Err(self.err(reason));
        }
        Ok(v)
    }

    /// An optional `.f` to `.ffffff`, as microseconds.
    fn fraction_micros(&mut self) -> Result<u64, ValueError> {
        if !self.eat(b'.') {
            return Ok(0);
        }
        let start = self.pos;
        let v = self.digits(1, 6, "expected digits after '.'")?;
        if matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.err("more than 6 fractional digits"));
        }
        let scale = 10u64.pow(6 - (self.pos - start) as u32);
        Ok(v * scale)
    }
}

/// PostgreSQL's idea of whitespace in array literals (`scanner_isspace`).
fn is_pg_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn parse_bool(ty: &'static str, s: &[u8]) -> Result<bool, ValueError> {
    // PostgreSQL prints `t`/`f`; the long spellings cost nothing to accept.
    if s == b"t" || s.eq_ignore_ascii_case(b"true") {
        Ok(true)
    } else if s == b"f" || s.eq_ignore_ascii_case(b"false") {
        Ok(false)
    } else {
        Err(ValueError {
            ty,
            offset: 0,
            reason: "expected 't' or 'f'",
        })
    }
}

fn parse_int<T: TryFrom<i128>>(ty: &'static str, s: &[u8]) -> Result<T, ValueError> {
    let mut c = Cursor::new(ty, s);
    let negative = c.eat(b'-') || {
        c.eat(b'+');
        false
    };
    let mag = c.digits(1, usize::MAX, "expected digit")?;
    c.finish()?;
    let v = if negative {
        -i128::from(mag)
    } else {
        i128::from(mag)
    };
    T::try_from(v).map_err(|_| c.err_at(0, "number out of range"))
}

/// Float parsing shared by float4 and float8 (parsed directly in the target width,
/// so values are rounded once).
fn parse_float<T>(ty: &'static str, s: &[u8]) -> Result<T, ValueError>
where
    T: FromStr + Into<f64> + Copy,
{
    let err = |reason| ValueError {
        ty,
        offset: 0,
        reason,
    };
    let text = std::str::from_utf8(s).map_err(|_| err("expected a number"))?;
    // Rust accepts NaN/Infinity in any case, a superset of PostgreSQL's spelling.
    let v: T = text.parse().map_err(|_| err("expected a number"))?;
    let special = text
        .bytes()
        .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E');
    let f: f64 = v.into();
    if !special {
        // PostgreSQL rejects overflow and underflow rather than rounding to inf/0.
        if f.is_infinite() {
            return Err(err("number out of range"));
        }
        let mantissa = text.split(['e', 'E']).next().unwrap_or("");
        if f == 0.0 && mantissa.bytes().any(|b| matches!(b, b'1'..=b'9')) {
            return Err(err("number out of range"));
        }
    }
    Ok(v)
}

fn parse_numeric(ty: &'static str, s: &[u8]) -> Result<Numeric, ValueError> {
    if s.eq_ignore_ascii_case(b"NaN") {
        return Ok(Numeric::NaN);
    }
    if s.eq_ignore_ascii_case(b"Infinity") || s.eq_ignore_ascii_case(b"+Infinity") {
        return Ok(Numeric::PosInfinity);
    }
    if s.eq_ignore_ascii_case(b"-Infinity") {
        return Ok(Numeric::NegInfinity);
    }
    let mut c = Cursor::new(ty, s);
    let negative = c.eat(b'-') || {
        c.eat(b'+');
        false
    };
    let int_start = c.pos;
    while matches!(c.peek(), Some(b'0'..=b'9')) {
        c.pos += 1;
    }
    let int = s.get(int_start..c.pos).unwrap_or(&[]);
    let frac = if c.eat(b'.') {
        let start = c.pos;
        while matches!(c.peek(), Some(b'0'..=b'9')) {
            c.pos += 1;
        }
        s.get(start..c.pos).unwrap_or(&[])
    } else {
        &[]
    };
    if int.is_empty() && frac.is_empty() {
        return Err(c.err_at(int_start, "expected digit"));
    }
    c.finish()?;
    let scale = u32::try_from(frac.len()).map_err(|_| c.err_at(0, "too many digits"))?;
    let mut digits = String::with_capacity(int.len() + frac.len());
    for &b in int.iter().chain(frac) {
        if !(digits.is_empty() && b == b'0') {
            digits.push(char::from(b));
        }
    }
    if digits.is_empty() {
        // Zero: PostgreSQL never prints "-0" for numeric.
        return Ok(Numeric::Finite {
            negative: false,
            digits: "0".to_owned(),
            scale,
        });
    }
    Ok(Numeric::Finite {
        negative,
        digits,
        scale,
    })
}

fn parse_text<'a>(ty: &'static str, s: &'a [u8]) -> Result<&'a str, ValueError> {
    std::str::from_utf8(s).map_err(|e| ValueError {
        ty,
        offset: e.valid_up_to(),
        reason: "invalid UTF-8",
    })
}

fn parse_uuid(ty: &'static str, s: &[u8]) -> Result<[u8; 16], ValueError> {
    let mut c = Cursor::new(ty, s);
    // PostgreSQL prints the hyphenated form; it also accepts braces and no hyphens.
    let braced = c.eat(b'{');
    let hyphenated = c.peek_at(8) == Some(b'-');
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        if hyphenated && matches!(i, 4 | 6 | 8 | 10) {
            c.expect(b'-', "expected '-' between uuid groups")?;
        }
        let hi = c
            .peek()
            .and_then(hex_val)
            .ok_or_else(|| c.err("expected hex digit"))?;
        c.pos += 1;
        let lo = c
            .peek()
            .and_then(hex_val)
            .ok_or_else(|| c.err("expected hex digit"))?;
        c.pos += 1;
        *byte = hi << 4 | lo;
    }
    if braced {
        c.expect(b'}', "expected '}'")?;
    }
    c.finish()?;
    Ok(out)
}

fn parse_json(ty: &'static str, s: &[u8]) -> Result<serde_json::Value, ValueError> {
    serde_json::from_slice(s).map_err(|e| {
        // serde_json's own message is not used: it can quote parts of the input.
        let reason = match e.classify() {
            serde_json::error::Category::Eof => "unexpected end of JSON",
            serde_json::error::Category::Syntax => "invalid JSON syntax",
            _ => "invalid JSON",
        };
        ValueError {
            ty,
            offset: json_error_offset(s, e.line(), e.column()),
            reason,
        }
    })
}

/// Converts serde_json's 1-based line / byte column to a byte offset.
fn json_error_offset(s: &[u8], line: usize, column: usize) -> usize {
    let mut line_start = 0;
    for _ in 1..line {
        match s
            .get(line_start..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            Some(nl) => line_start += nl + 1,
            None => break,
        }
    }
    line_start
        .saturating_add(column.saturating_sub(1))
        .min(s.len())
}

fn parse_bytea(ty: &'static str, s: &[u8]) -> Result<Vec<u8>, ValueError> {
    let mut c = Cursor::new(ty, s);
    if c.eat_lit(b"\\x") {
        let mut out = Vec::with_capacity(s.len() / 2);
        loop {
            // PostgreSQL's input tolerates whitespace between byte pairs.
            c.skip_ws();
            let Some(b) = c.peek() else { break };
            let hi = hex_val(b).ok_or_else(|| c.err("expected hex digit"))?;
            c.pos += 1;
            let lo = c
                .peek()
                .and_then(hex_val)
                .ok_or_else(|| c.err("expected second hex digit of byte"))?;
            c.pos += 1;
            out.push(hi << 4 | lo);
        }
        return Ok(out);
    }
    // Legacy escape format: `\\` is a backslash, `\ooo` an octal byte.
    let mut out = Vec::with_capacity(s.len());
    while let Some(b) = c.bump() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        if c.eat(b'\\') {
            out.push(b'\\');
            continue;
        }
        let start = c.pos;
        match (c.peek(), c.peek_at(1), c.peek_at(2)) {
            (Some(a @ b'0'..=b'3'), Some(b @ b'0'..=b'7'), Some(d @ b'0'..=b'7')) => {
                out.push((a - b'0') << 6 | (b - b'0') << 3 | (d - b'0'));
                c.pos += 3;
            }
            _ => return Err(c.err_at(start, "invalid escape in bytea")),
        }
    }
    Ok(out)
}

// ---- calendar arithmetic ----------------------------------------------------

fn is_leap(y: i64) -> bool {
    y.rem_euclid(4) == 0 && (y.rem_euclid(100) != 0 || y.rem_euclid(400) == 0)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year).
/// Counts in 400-year cycles of 146097 days starting each March 1st, so leap days
/// fall at the end of a cycle year. Callers keep |y| below ~1e10, far from
/// overflow.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let march_month = (i64::from(m) + 9) % 12; // March = 0
    let day_of_year = (153 * march_month + 2) / 5 + i64::from(d) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_month = (5 * day_of_year + 2) / 153;
    let d = (day_of_year - (153 * march_month + 2) / 5 + 1) as u32;
    let m = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    } as u32;
    let y = year_of_era + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Splits microseconds since 2000 into days since 1970 and microseconds of the day.
fn split_pg_micros(us: i64) -> (i64, i64) {
    (
        us.div_euclid(USECS_PER_DAY) + PG_EPOCH_DAYS,
        us.rem_euclid(USECS_PER_DAY),
    )
}

// ---- date/time text ---------------------------------------------------------

/// Reads `Y…Y-MM-DD` (year as written, so still AD/BC-relative).
fn read_ymd(c: &mut Cursor<'_>) -> Result<(u64, u32, u32), ValueError> {
    let year = c.digits(1, 10, "expected year digits")?;
    c.expect(b'-', "expected '-' after year")?;
    let month = c.digits(1, 2, "expected month digits")?;
    c.expect(b'-', "expected '-' after month")?;
    let day = c.digits(1, 2, "expected day digits")?;
    // Both fit: at most two digits each.
    Ok((year, month as u32, day as u32))
}

/// Validates a date as written and returns days since 1970.
fn ymd_to_days(
    c: &Cursor<'_>,
    (year, month, day): (u64, u32, u32),
    bc: bool,
) -> Result<i64, ValueError> {
    if year == 0 {
        return Err(c.err_at(0, "year 0 does not exist (1 BC precedes 1 AD)"));
    }
    // Ten digits at most, so this fits an i64.
    let year = year as i64;
    let astronomical = if bc { 1 - year } else { year };
    if !(1..=12).contains(&month) {
        return Err(c.err_at(0, "month out of range"));
    }
    if day < 1 || day > days_in_month(astronomical, month) {
        return Err(c.err_at(0, "day out of range for month"));
    }
    Ok(days_from_civil(astronomical, month, day))
}

/// Reads an optional era suffix; true for BC.
fn read_era(c: &mut Cursor<'_>) -> bool {
    if c.eat_lit(b" BC") {
        true
    } else {
        c.eat_lit(b" AD");
        false
    }
}

/// Reads `HH:MM[:SS[.ffffff]]` as microseconds, up to and including 24:00:00.
fn read_time(c: &mut Cursor<'_>) -> Result<i64, ValueError> {
    let start = c.pos;
    let h = c.digits(1, 2, "expected hour digits")?;
    c.expect(b':', "expected ':' between hours and minutes")?;
    let m = c.digits(2, 2, "expected two-digit minutes")?;
    let (s, frac) = if c.eat(b':') {
        let s = c.digits(2, 2, "expected two-digit seconds")?;
        (s, c.fraction_micros()?)
    } else {
        (0, 0)
    };
    // Second 60 is accepted (leap second, PostgreSQL carries it into the minute).
    if m > 59 || s > 60 {
        return Err(c.err_at(start, "time field out of range"));
    }
    let total = ((h * 60 + m) * 60 + s) * 1_000_000 + frac;
    if total > 86_400_000_000 {
        return Err(c.err_at(start, "time of day after 24:00:00"));
    }
    Ok(total as i64)
}

/// Reads a UTC offset `Z`, `±HH`, `±HH:MM`, `±HH:MM:SS`, `±HHMM` or `±HHMMSS` as
/// seconds east of UTC.
fn read_offset(c: &mut Cursor<'_>) -> Result<i32, ValueError> {
    let start = c.pos;
    let negative = match c.bump() {
        Some(b'Z') => return Ok(0),
        Some(b'+') => false,
        Some(b'-') => true,
        _ => return Err(c.err_at(start, "expected '+' or '-' starting a UTC offset")),
    };
    let digits_start = c.pos;
    let first = c.digits(1, 6, "expected UTC offset digits")?;
    let (h, m, s) = match c.pos - digits_start {
        1 | 2 => {
            if c.eat(b':') {
                let m = c.digits(2, 2, "expected two-digit offset minutes")?;
                let s = if c.eat(b':') {
                    c.digits(2, 2, "expected two-digit offset seconds")?
                } else {
                    0
                };
                (first, m, s)
            } else {
                (first, 0, 0)
            }
        }
        4 => (first / 100, first % 100, 0),
        6 => (first / 10_000, first / 100 % 100, first % 100),
        _ => return Err(c.err_at(digits_start, "malformed UTC offset")),
    };
    if m > 59 || s > 59 {
        return Err(c.err_at(digits_start, "UTC offset field out of range"));
    }
    let secs = h * 3600 + m * 60 + s;
    if secs > MAX_OFFSET_SECS {
        return Err(c.err_at(digits_start, "UTC offset out of range"));
    }
    let secs = secs as i32; // below 57600
    Ok(if negative { -secs } else { secs })
}

fn parse_date(ty: &'static str, s: &[u8]) -> Result<Date, ValueError> {
    match s {
        b"infinity" | b"+infinity" => return Ok(Date::PosInfinity),
        b"-infinity" => return Ok(Date::NegInfinity),
        _ => {}
    }
    let mut c = Cursor::new(ty, s);
    let ymd = read_ymd(&mut c)?;
    let bc = read_era(&mut c);
    c.finish()?;
    let days = ymd_to_days(&c, ymd, bc)?;
    if !(DATE_MIN_DAYS..=DATE_MAX_DAYS).contains(&days) {
        return Err(c.err_at(0, "date out of range"));
    }
    // Within i32 by the range check.
    Ok(Date::Days(days as i32))
}

fn parse_time(ty: &'static str, s: &[u8]) -> Result<Time, ValueError> {
    let mut c = Cursor::new(ty, s);
    let t = read_time(&mut c)?;
    c.finish()?;
    Ok(Time(t))
}

fn parse_timetz(ty: &'static str, s: &[u8]) -> Result<TimeTz, ValueError> {
    let mut c = Cursor::new(ty, s);
    let t = read_time(&mut c)?;
    // PostgreSQL always prints the offset; without one, the session zone (UTC) applies.
    let offset_secs = if c.at_end() { 0 } else { read_offset(&mut c)? };
    c.finish()?;
    Ok(TimeTz {
        time: Time(t),
        offset_secs,
    })
}

fn parse_timestamp(ty: &'static str, s: &[u8], with_tz: bool) -> Result<Timestamp, ValueError> {
    match s {
        b"infinity" | b"+infinity" => return Ok(Timestamp::PosInfinity),
        b"-infinity" => return Ok(Timestamp::NegInfinity),
        _ => {}
    }
    let mut c = Cursor::new(ty, s);
    let ymd = read_ymd(&mut c)?;
    let has_time = match (c.peek(), c.peek_at(1)) {
        (Some(b'T'), _) | (Some(b' '), Some(b'0'..=b'9')) => {
            c.pos += 1;
            true
        }
        _ => false,
    };
    let time = if has_time { read_time(&mut c)? } else { 0 };
    let offset_secs = if matches!(c.peek(), Some(b'+' | b'-' | b'Z')) {
        if !with_tz {
            return Err(c.err("UTC offset on a timestamp without time zone"));
        }
        read_offset(&mut c)?
    } else {
        0
    };
    let bc = read_era(&mut c);
    c.finish()?;
    let days = ymd_to_days(&c, ymd, bc)?;
    // i128: a ten-digit year times microseconds per day exceeds i64.
    let micros = i128::from(days - PG_EPOCH_DAYS) * i128::from(USECS_PER_DAY) + i128::from(time)
        - i128::from(offset_secs) * i128::from(USECS_PER_SEC);
    match i64::try_from(micros) {
        Ok(us) if (TIMESTAMP_MIN..TIMESTAMP_END).contains(&us) => Ok(Timestamp::PgMicros(us)),
        _ => Err(c.err_at(0, "timestamp out of range")),
    }
}

// ---- interval ---------------------------------------------------------------

/// Accumulates interval fields, rejecting a field given twice as PostgreSQL does.
#[derive(Default)]
struct IntervalParts {
    months: i128,
    days: i128,
    micros: i128,
    seen: u8,
}

const SEEN_YEAR: u8 = 1;
const SEEN_MONTH: u8 = 2;
const SEEN_WEEK: u8 = 4;
const SEEN_DAY: u8 = 8;
const SEEN_HOUR: u8 = 16;
const SEEN_MINUTE: u8 = 32;
const SEEN_SECOND: u8 = 64;

impl IntervalParts {
    fn mark(&mut self, c: &Cursor<'_>, at: usize, bits: u8) -> Result<(), ValueError> {
        if self.seen & bits != 0 {
            return Err(c.err_at(at, "interval field given twice"));
        }
        self.seen |= bits;
        Ok(())
    }

    fn finish(self, c: &Cursor<'_>) -> Result<Interval, ValueError> {
        if self.seen == 0 {
            return Err(c.err_at(0, "empty interval"));
        }
        let out_of_range = || c.err_at(0, "interval out of range");
        Ok(Interval {
            months: i32::try_from(self.months).map_err(|_| out_of_range())?,
            days: i32::try_from(self.days).map_err(|_| out_of_range())?,
            micros: i64::try_from(self.micros).map_err(|_| out_of_range())?,
        })
    }
}

fn parse_interval(ty: &'static str, s: &[u8]) -> Result<Interval, ValueError> {
    match s {
        b"infinity" | b"+infinity" => return Ok(Interval::INFINITY),
        b"-infinity" => return Ok(Interval::NEG_INFINITY),
        _ => {}
    }
    let mut c = Cursor::new(ty, s);
    if c.peek() == Some(b'P') {
        return parse_iso_interval(c);
    }
    let mut parts = IntervalParts::default();
    loop {
        c.skip_ws();
        if c.at_end() {
            break;
        }
        let field_start = c.pos;
        let negative = c.eat(b'-') || {
            c.eat(b'+');
            false
        };
        let n = i128::from(c.digits(1, usize::MAX, "expected a number")?);
        let n = if negative { -n } else { n };
        if c.peek() == Some(b':') {
            // `[-+]H…H:MM[:SS[.ffffff]]`; hours are unbounded in intervals.
            c.pos += 1;
            let m = c.digits(2, 2, "expected two-digit minutes")?;
            let (sec, frac) = if c.eat(b':') {
                let sec = c.digits(2, 2, "expected two-digit seconds")?;
                (sec, c.fraction_micros()?)
            } else {
                (0, 0)
            };
            if m > 59 || sec > 59 {
                return Err(c.err_at(field_start, "time field out of range"));
            }
            parts.mark(&c, field_start, SEEN_HOUR | SEEN_MINUTE | SEEN_SECOND)?;
            let minor = i128::from((m * 60 + sec) * 1_000_000 + frac);
            let mag = n.abs() * 3_600_000_000 + minor;
            parts.micros += if negative { -mag } else { mag };
            continue;
        }
        c.skip_ws();
        let unit_start = c.pos;
        while matches!(c.peek(), Some(b) if b.is_ascii_alphabetic()) {
            c.pos += 1;
        }
        let unit = s.get(unit_start..c.pos).unwrap_or(&[]);
        let (bit, months, days, micros) = match unit {
            b"year" | b"years" => (SEEN_YEAR, 12, 0, 0),
            b"mon" | b"mons" | b"month" | b"months" => (SEEN_MONTH, 1, 0, 0),
            b"week" | b"weeks" => (SEEN_WEEK, 0, 7, 0),
            b"day" | b"days" => (SEEN_DAY, 0, 1, 0),
            b"hour" | b"hours" => (SEEN_HOUR, 0, 0, 3_600_000_000),
            b"min" | b"mins" | b"minute" | b"minutes" => (SEEN_MINUTE, 0, 0, 60_000_000),
            b"sec" | b"secs" | b"second" | b"seconds" => (SEEN_SECOND, 0, 0, 1_000_000),
            [] => return Err(c.err("expected a unit after the number")),
            _ => return Err(c.err_at(unit_start, "unknown interval unit")),
        };
        parts.mark(&c, field_start, bit)?;
        parts.months += n * months;
        parts.days += n * days;
        parts.micros += n * micros;
    }
    parts.finish(&c)
}

/// `P[nY][nM][nW][nD][T[nH][nM][n[.f]S]]`, each number optionally signed.
fn parse_iso_interval(mut c: Cursor<'_>) -> Result<Interval, ValueError> {
    c.expect(b'P', "expected 'P'")?;
    let mut parts = IntervalParts::default();
    let mut in_time = false;
    while !c.at_end() {
        if c.eat(b'T') {
            if in_time {
                return Err(c.err("'T' given twice"));
            }
            in_time = true;
            continue;
        }
        let field_start = c.pos;
        let negative = c.eat(b'-') || {
            c.eat(b'+');
            false
        };
        let n = i128::from(c.digits(1, usize::MAX, "expected a number")?);
        let frac = i128::from(c.fraction_micros()?);
        let n = if negative { -n } else { n };
        let frac = if negative { -frac } else { frac };
        let unit_at = c.pos;
        let (bit, months, days, micros) = match (in_time, c.bump()) {
            (false, Some(b'Y')) => (SEEN_YEAR, 12, 0, 0),
            (false, Some(b'M')) => (SEEN_MONTH, 1, 0, 0),
            (false, Some(b'W')) => (SEEN_WEEK, 0, 7, 0),
            (false, Some(b'D')) => (SEEN_DAY, 0, 1, 0),
            (true, Some(b'H')) => (SEEN_HOUR, 0, 0, 3_600_000_000),
            (true, Some(b'M')) => (SEEN_MINUTE, 0, 0, 60_000_000),
            (true, Some(b'S')) => (SEEN_SECOND, 0, 0, 1_000_000),
            _ => return Err(c.err_at(unit_at, "expected an ISO 8601 interval unit")),
        };
        if frac != 0 && bit != SEEN_SECOND {
            return Err(c.err_at(field_start, "fraction only supported on seconds"));
        }
        parts.mark(&c, field_start, bit)?;
        parts.months += n * months;
        parts.days += n * days;
        parts.micros += n * micros + frac;
    }
    parts.finish(&c)
}

// ---- inet -------------------------------------------------------------------

fn parse_inet(ty: &'static str, s: &[u8], cidr: bool) -> Result<Inet, ValueError> {
    let c = Cursor::new(ty, s);
    let (addr_text, prefix_text) = match s.iter().position(|&b| b == b'/') {
        Some(slash) => (
            s.get(..slash).unwrap_or(&[]),
            Some((slash + 1, s.get(slash + 1..).unwrap_or(&[]))),
        ),
        None => (s, None),
    };
    let addr: IpAddr = std::str::from_utf8(addr_text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| c.err_at(0, "invalid IP address"))?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_text {
        None => max,
        Some((at, p)) => {
            let mut pc = Cursor::new(ty, p);
            let n = pc
                .digits(1, 3, "expected prefix length digits")
                .map_err(|e| c.err_at(at + e.offset, e.reason))?;
            if !pc.at_end() {
                return Err(c.err_at(at + pc.pos, "unexpected trailing characters"));
            }
            match u8::try_from(n) {
                Ok(n) if n <= max => n,
                _ => return Err(c.err_at(at, "prefix length out of range")),
            }
        }
    };
    if cidr && has_host_bits(addr, prefix) {
        return Err(c.err_at(0, "cidr value has bits set to the right of the prefix"));
    }
    Ok(Inet { addr, prefix })
}

fn has_host_bits(addr: IpAddr, prefix: u8) -> bool {
    match addr {
        IpAddr::V4(a) => u32::from(a)
            .checked_shl(u32::from(prefix))
            .is_some_and(|rest| rest != 0),
        IpAddr::V6(a) => u128::from(a)
            .checked_shl(u32::from(prefix))
            .is_some_and(|rest| rest != 0),
    }
}

// ---- arrays -----------------------------------------------------------------

/// One element's text: borrowed when it had no escapes, with its byte offset.
enum ElemText<'a> {
    Borrowed(&'a [u8], usize),
    Owned(Vec<u8>, usize),
}

fn parse_array<'a>(
    ty: &'static str,
    elem: &PgType,
    s: &'a [u8],
) -> Result<Vec<Option<Value<'a>>>, ValueError> {
    let mut c = Cursor::new(ty, s);
    if matches!(elem, PgType::Array(_)) {
        return Err(c.err_at(0, "nested array types are not supported"));
    }
    // `[lo:hi]=` precedes the braces when the lower bound is not 1; the bounds
    // carry nothing we keep.
    if c.eat(b'[') {
        while matches!(c.peek(), Some(b'0'..=b'9' | b'-' | b'+' | b':')) {
            c.pos += 1;
        }
        c.expect(b']', "expected ']' closing array dimensions")?;
        if c.peek() == Some(b'[') {
            return Err(c.err("multi-dimensional arrays are not supported"));
        }
        c.expect(b'=', "expected '=' after array dimensions")?;
    }
    c.skip_ws();
    c.expect(b'{', "expected '{' starting array")?;
    let mut out = Vec::new();
    c.skip_ws();
    if c.eat(b'}') {
        c.skip_ws();
        c.finish()?;
        return Ok(out);
    }
    loop {
        c.skip_ws();
        let text = match c.peek() {
            Some(b'{') => return Err(c.err("multi-dimensional arrays are not supported")),
            Some(b'"') => Some(read_quoted_elem(&mut c)?),
            _ => read_unquoted_elem(&mut c)?,
        };
        match text {
            None => out.push(None),
            Some(ElemText::Borrowed(b, at)) => {
                let v = parse_value(elem, b).map_err(|e| c.err_at(at + e.offset, e.reason))?;
                out.push(Some(v));
            }
            Some(ElemText::Owned(b, at)) => {
                // Escapes shift positions, so point at the element's start.
                let v = parse_value(elem, &b).map_err(|e| c.err_at(at, e.reason))?;
                out.push(Some(v.into_owned()));
            }
        }
        c.skip_ws();
        match c.bump() {
            Some(b',') => {}
            Some(b'}') => break,
            None => return Err(c.err("unterminated array")),
            Some(_) => return Err(c.err_at(c.pos - 1, "expected ',' or '}' after array element")),
        }
    }
    c.skip_ws();
    c.finish()?;
    Ok(out)
}

/// Reads `"…"` with backslash escapes; the cursor is on the opening quote.
fn read_quoted_elem<'a>(c: &mut Cursor<'a>) -> Result<ElemText<'a>, ValueError> {
    let quote_at = c.pos;
    c.pos += 1;
    let start = c.pos;
    let mut owned: Option<Vec<u8>> = None;
    loop {
        let at = c.pos;
        match c.bump() {
            None => return Err(c.err_at(quote_at, "unterminated quoted array element")),
            Some(b'"') => break,
            Some(b'\\') => {
                let escaped = c
                    .bump()
                    .ok_or_else(|| c.err_at(quote_at, "unterminated quoted array element"))?;
                owned
                    .get_or_insert_with(|| c.s.get(start..at).unwrap_or(&[]).to_vec())
                    .push(escaped);
            }
            Some(b) => {
                if let Some(o) = owned.as_mut() {
                    o.push(b);
                }
            }
        }
    }
    Ok(match owned {
        Some(o) => ElemText::Owned(o, quote_at),
        None => ElemText::Borrowed(c.s.get(start..c.pos - 1).unwrap_or(&[]), start),
    })
}

/// Reads an unquoted element up to `,` or `}`, trimming surrounding whitespace
/// (escaped whitespace is kept). `None` is an unquoted NULL.
fn read_unquoted_elem<'a>(c: &mut Cursor<'a>) -> Result<Option<ElemText<'a>>, ValueError> {
    let start = c.pos;
    let mut end = start; // end of the significant (non-trailing-space) text
    let mut owned: Option<(Vec<u8>, usize)> = None; // bytes, significant length
    loop {
        let at = c.pos;
        match c.peek() {
            None => return Err(c.err("unterminated array")),
            Some(b',' | b'}') => break,
            Some(b'"' | b'{') => {
                return Err(c.err("unexpected character in unquoted array element"))
            }
            Some(b'\\') => {
                c.pos += 1;
                let escaped = c.bump().ok_or_else(|| c.err("unterminated array"))?;
                let (buf, keep) =
                    owned.get_or_insert_with(|| (c.s.get(start..at).unwrap_or(&[]).to_vec(), 0));
                buf.push(escaped);
                *keep = buf.len();
            }
            Some(b) => {
                c.pos += 1;
                match owned.as_mut() {
                    Some((buf, keep)) => {
                        buf.push(b);
                        if !is_pg_space(b) {
                            *keep = buf.len();
                        }
                    }
                    None if !is_pg_space(b) => end = c.pos,
                    None => {}
                }
            }
        }
    }
    match owned {
        Some((mut buf, keep)) => {
            buf.truncate(keep);
            Ok(Some(ElemText::Owned(buf, start)))
        }
        None => {
            let text = c.s.get(start..end).unwrap_or(&[]);
            if text.is_empty() {
                Err(c.err_at(start, "empty unquoted array element"))
            } else if text.eq_ignore_ascii_case(b"NULL") {
                Ok(None)
            } else {
                Ok(Some(ElemText::Borrowed(text, start)))
            }
        }
    }
}

// ---- PostgreSQL-style formatting helpers -------------------------------------

/// Writes `YYYY-MM-DD` with PostgreSQL's year (1 BC for astronomical 0); returns
/// whether the caller must append ` BC`.
fn write_pg_ymd<W: fmt::Write>(w: &mut W, y: i64, m: u32, d: u32) -> Result<bool, fmt::Error> {
    let bc = y <= 0;
    let year = if bc { 1 - y } else { y };
    write!(w, "{year:04}-{m:02}-{d:02}")?;
    Ok(bc)
}

/// `HH:MM:SS` plus the fraction without trailing zeros, as PostgreSQL prints it.
fn write_pg_time<W: fmt::Write>(w: &mut W, micros: i64) -> fmt::Result {
    if micros < 0 {
        w.write_char('-')?;
    }
    write_pg_hms(w, micros.unsigned_abs())
}

/// Unsigned `H…H:MM:SS[.ffffff]`; hours may exceed 24 (intervals).
fn write_pg_hms<W: fmt::Write>(w: &mut W, u: u64) -> fmt::Result {
    let secs = u / 1_000_000;
    write!(
        w,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )?;
    write_pg_fraction(w, u % 1_000_000)
}

fn write_pg_fraction<W: fmt::Write>(w: &mut W, frac: u64) -> fmt::Result {
    if frac == 0 {
        return Ok(());
    }
    let (mut f, mut width) = (frac, 6);
    while f % 10 == 0 {
        f /= 10;
        width -= 1;
    }
    write!(w, ".{f:0width$}")
}

/// `+HH`, `+HH:MM` or `+HH:MM:SS`, the shortest exact form, as PostgreSQL prints it.
fn write_pg_offset<W: fmt::Write>(w: &mut W, offset_secs: i32) -> fmt::Result {
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let u = offset_secs.unsigned_abs();
    let (h, m, s) = (u / 3600, u / 60 % 60, u % 60);
    if s != 0 {
        write!(w, "{sign}{h:02}:{m:02}:{s:02}")
    } else if m != 0 {
        write!(w, "{sign}{h:02}:{m:02}")
    } else {
        write!(w, "{sign}{h:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok<'a>(ty: &PgType, s: &'a str) -> Value<'a> {
        parse_value(ty, s.as_bytes()).unwrap_or_else(|e| panic!("{ty:?} {s:?}: {e}"))
    }

    fn bad(ty: &PgType, s: &str) -> ValueError {
        match parse_value(ty, s.as_bytes()) {
            Ok(v) => panic!("{ty:?} accepted {s:?} as {v:?}"),
            Err(e) => e,
        }
    }

    fn arr(elem: PgType) -> PgType {
        PgType::Array(Box::new(elem))
    }

    /// Microseconds since 2000-01-01 for a Unix time in seconds, computed without
    /// this module's calendar code.
    fn pg_us(unix_secs: i64) -> i64 {
        (unix_secs - 946_684_800) * 1_000_000
    }

    /// Formats like PostgreSQL's timestamp/timestamptz output (test-only).
    fn pg_timestamp_text(us: i64, offset: Option<i32>) -> String {
        let local = us + i64::from(offset.unwrap_or(0)) * USECS_PER_SEC;
        let (days, tod) = split_pg_micros(local);
        let (y, m, d) = civil_from_days(days);
        let mut s = String::new();
        let bc = write_pg_ymd(&mut s, y, m, d).unwrap();
        s.push(' ');
        write_pg_time(&mut s, tod).unwrap();
        if let Some(o) = offset {
            write_pg_offset(&mut s, o).unwrap();
        }
        if bc {
            s.push_str(" BC");
        }
        s
    }

    #[test]
    fn oids() {
        assert_eq!(PgType::from_oid(16), PgType::Bool);
        for oid in [19, 25, 1042, 1043] {
            assert_eq!(PgType::from_oid(oid), PgType::Text);
        }
        for oid in [1003, 1009, 1014, 1015] {
            assert_eq!(PgType::from_oid(oid), arr(PgType::Text));
        }
        assert_eq!(PgType::from_oid(1185), arr(PgType::TimestampTz));
        assert_eq!(PgType::from_oid(651), arr(PgType::Cidr));
        assert_eq!(PgType::from_oid(199), arr(PgType::Json));
        assert_eq!(PgType::from_oid(3807), arr(PgType::Jsonb));
        assert_eq!(PgType::from_oid(2951), arr(PgType::Uuid));
        assert_eq!(PgType::from_oid(600), PgType::Other); // point
        assert_eq!(PgType::from_oid(0), PgType::Other);
        // Every listed array oid maps to an array of a known element type.
        for oid in [
            1000, 1001, 1003, 1005, 1007, 1009, 1014, 1015, 1016, 1021, 1022, 1041, 651, 199, 3807,
            1182, 1183, 1115, 1185, 1187, 1270, 1231, 2951,
        ] {
            match PgType::from_oid(oid) {
                PgType::Array(e) => assert!(!matches!(*e, PgType::Other | PgType::Array(_))),
                t => panic!("{oid} -> {t:?}"),
            }
        }
        assert_eq!(PgType::from_oid(1184).name(), "timestamptz");
        assert_eq!(PgType::from_oid(1007).name(), "int4[]");
    }

    #[test]
    fn error_message_names_type_offset_and_reason_but_not_value() {
        let e = bad(&PgType::TimestampTz, "2000-01-01 00-00");
        assert_eq!(
            e.to_string(),
            "invalid timestamptz text at byte 13: expected ':' between hours and minutes"
        );
        let e = bad(&PgType::Int4, "8675309x");
        assert!(!e.to_string().contains("8675309"), "{e}");
        let e = bad(&PgType::Json, "{\"secret\": nope}");
        assert!(!e.to_string().contains("secret"), "{e}");
        assert_eq!(e.offset, 12); // the "o" where "null" was expected
    }

    #[test]
    fn bools() {
        assert_eq!(ok(&PgType::Bool, "t"), Value::Bool(true));
        assert_eq!(ok(&PgType::Bool, "f"), Value::Bool(false));
        for s in ["", "x", "tt", "1"] {
            bad(&PgType::Bool, s);
        }
    }

    #[test]
    fn integers() {
        assert_eq!(ok(&PgType::Int2, "-32768"), Value::Int2(i16::MIN));
        assert_eq!(ok(&PgType::Int2, "32767"), Value::Int2(i16::MAX));
        assert_eq!(ok(&PgType::Int4, "-2147483648"), Value::Int4(i32::MIN));
        assert_eq!(ok(&PgType::Int4, "2147483647"), Value::Int4(i32::MAX));
        assert_eq!(
            ok(&PgType::Int8, "-9223372036854775808"),
            Value::Int8(i64::MIN)
        );
        assert_eq!(
            ok(&PgType::Int8, "9223372036854775807"),
            Value::Int8(i64::MAX)
        );
        assert_eq!(ok(&PgType::Int8, "0"), Value::Int8(0));
        bad(&PgType::Int2, "32768");
        bad(&PgType::Int2, "-32769");
        bad(&PgType::Int4, "2147483648");
        bad(&PgType::Int8, "9223372036854775808");
        bad(&PgType::Int8, "-9223372036854775809");
        bad(&PgType::Int8, "99999999999999999999999");
        for s in ["", "-", "1.5", " 1", "1 ", "0x10", "12a"] {
            bad(&PgType::Int4, s);
        }
        assert_eq!(bad(&PgType::Int4, "12a").offset, 2);
    }

    #[test]
    fn floats() {
        let f4 = |s: &str| match ok(&PgType::Float4, s) {
            Value::Float4(v) => v,
            v => panic!("{v:?}"),
        };
        let f8 = |s: &str| match ok(&PgType::Float8, s) {
            Value::Float8(v) => v,
            v => panic!("{v:?}"),
        };
        assert!(f4("NaN").is_nan());
        assert_eq!(f4("Infinity"), f32::INFINITY);
        assert_eq!(f4("-Infinity"), f32::NEG_INFINITY);
        assert_eq!(f4("-0").to_bits(), (-0.0f32).to_bits());
        assert_eq!(f4("1e-45").to_bits(), 1); // smallest denormal
        assert_eq!(f4("3.4028235e+38"), f32::MAX);
        assert_eq!(f4("1.1754944e-38"), f32::MIN_POSITIVE);
        assert_eq!(f4("1.23e-05"), 1.23e-5f32);
        assert!(f8("NaN").is_nan());
        assert_eq!(f8("Infinity"), f64::INFINITY);
        assert_eq!(f8("-Infinity"), f64::NEG_INFINITY);
        assert_eq!(f8("-0").to_bits(), (-0.0f64).to_bits());
        assert_eq!(f8("5e-324").to_bits(), 1);
        assert_eq!(f8("1.7976931348623157e+308"), f64::MAX);
        assert_eq!(f8("2.2250738585072014e-308"), f64::MIN_POSITIVE);
        assert_eq!(f8("0.1"), 0.1);
        assert_eq!(f8("1e+100"), 1e100);
        assert_eq!(f8("-1.23e-05"), -1.23e-5);
        // Out of range is an error in PostgreSQL, not a rounding to inf or 0.
        bad(&PgType::Float4, "3.5e+38");
        bad(&PgType::Float4, "1e-46");
        bad(&PgType::Float8, "1e309");
        bad(&PgType::Float8, "1e-400");
        for s in ["", "1.2.3", "e5", "--1", "1e", "NaNa", "\u{ff}"] {
            bad(&PgType::Float8, s);
        }
    }

    fn num(negative: bool, digits: &str, scale: u32) -> Value<'static> {
        Value::Numeric(Numeric::Finite {
            negative,
            digits: digits.to_owned(),
            scale,
        })
    }

    #[test]
    fn numerics() {
        let t = PgType::Numeric;
        assert_eq!(ok(&t, "NaN"), Value::Numeric(Numeric::NaN));
        assert_eq!(ok(&t, "Infinity"), Value::Numeric(Numeric::PosInfinity));
        assert_eq!(ok(&t, "-Infinity"), Value::Numeric(Numeric::NegInfinity));
        assert_eq!(ok(&t, "-0.00100"), num(true, "100", 5));
        assert_eq!(ok(&t, "0"), num(false, "0", 0));
        assert_eq!(ok(&t, "0.000"), num(false, "0", 3));
        assert_eq!(ok(&t, "-0.0"), num(false, "0", 1));
        assert_eq!(ok(&t, "100"), num(false, "100", 0));
        let huge = format!("{}.{}", "9".repeat(1000), "1".repeat(300));
        assert_eq!(
            ok(&t, &huge),
            num(
                false,
                &format!("{}{}", "9".repeat(1000), "1".repeat(300)),
                300
            )
        );
        let tiny = format!("0.{}1", "0".repeat(16382));
        assert_eq!(ok(&t, &tiny), num(false, "1", 16383));
        for s in [
            "-0.00100",
            "123456789012345678901234567890.123",
            "0",
            "0.000",
            "-1",
            "10.50",
            "NaN",
            "Infinity",
            "-Infinity",
            huge.as_str(),
            tiny.as_str(),
        ] {
            match ok(&t, s) {
                Value::Numeric(n) => assert_eq!(n.to_string(), s),
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(
            "-0.00100".parse::<Numeric>().unwrap().to_string(),
            "-0.00100"
        );
        for s in ["", "-", ".", "1.2.3", "1e5", "12a", "- 1", "inf", "1,5"] {
            bad(&t, s);
        }
    }

    #[test]
    fn text_like_values_borrow() {
        let s = "héllo, wörld";
        for (ty, v) in [
            (PgType::Text, ok(&PgType::Text, s)),
            (PgType::Enum, ok(&PgType::Enum, s)),
            (PgType::Other, ok(&PgType::Other, s)),
        ] {
            match v {
                Value::Text(Cow::Borrowed(b))
                | Value::Enum(Cow::Borrowed(b))
                | Value::Other(Cow::Borrowed(b)) => assert_eq!(b, s),
                v => panic!("{ty:?} {v:?}"),
            }
        }
        assert_eq!(ok(&PgType::Text, ""), Value::Text(Cow::Borrowed("")));
        let e = parse_value(&PgType::Text, b"ab\xffcd").unwrap_err();
        assert_eq!((e.offset, e.reason), (2, "invalid UTF-8"));
    }

    #[test]
    fn uuids() {
        let want = Value::Uuid([
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ]);
        assert_eq!(
            ok(&PgType::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            want
        );
        assert_eq!(
            ok(&PgType::Uuid, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
            want
        );
        assert_eq!(ok(&PgType::Uuid, "a0eebc999c0b4ef8bb6d6bb9bd380a11"), want);
        assert_eq!(
            ok(&PgType::Uuid, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
            want
        );
        for s in [
            "",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
            "a0eebc99-9c0b-4ef8-bb6d6bb9bd380a11",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            bad(&PgType::Uuid, s);
        }
    }

    #[test]
    fn json() {
        assert_eq!(
            ok(&PgType::Jsonb, r#"{"a": [1, 2.5, null, "x"]}"#),
            Value::Json(serde_json::json!({"a": [1, 2.5, null, "x"]}))
        );
        assert_eq!(
            ok(&PgType::Json, "\"\""),
            Value::Json(serde_json::json!(""))
        );
        for s in ["", "{", "{\"a\":}", "[1,]", "1 2"] {
            bad(&PgType::Json, s);
        }
    }

    #[test]
    fn bytea() {
        let t = PgType::Bytea;
        assert_eq!(ok(&t, r"\x"), Value::Bytea(vec![]));
        assert_eq!(ok(&t, r"\x0a0bFF00"), Value::Bytea(vec![10, 11, 255, 0]));
        assert_eq!(
            ok(&t, r"abc\\def\001\377"),
            Value::Bytea(b"abc\\def\x01\xff".to_vec())
        );
        assert_eq!(ok(&t, ""), Value::Bytea(vec![]));
        for s in [r"\x0", r"\x0g", r"\", r"a\9", r"\40", r"\400"] {
            bad(&t, s);
        }
    }

    #[test]
    fn dates() {
        let t = PgType::Date;
        let d = |s| match ok(&t, s) {
            Value::Date(d) => d,
            v => panic!("{v:?}"),
        };
        assert_eq!(d("infinity"), Date::PosInfinity);
        assert_eq!(d("-infinity"), Date::NegInfinity);
        assert_eq!(d("1970-01-01"), Date::Days(0));
        assert_eq!(d("2000-01-01"), Date::Days(10_957));
        assert_eq!(d("2000-02-29"), Date::Days(10_957 + 59));
        assert_eq!(d("1969-12-31"), Date::Days(-1));
        // 0001-01-01 AD is 719162 days before 1970; 1 BC (year 0) is a leap year.
        assert_eq!(d("0001-01-01"), Date::Days(-719_162));
        assert_eq!(d("0001-12-31 BC"), Date::Days(-719_163));
        assert_eq!(d("0001-01-01 BC"), Date::Days(-719_162 - 366));
        // Julian day 0, PostgreSQL's first date; the Unix epoch is JD 2440588.
        assert_eq!(d("4714-11-24 BC"), Date::Days(-2_440_588));
        // One (leap) year later: 4713 BC is astronomical -4712, divisible by 4.
        assert_eq!(d("4713-11-24 BC"), Date::Days(-2_440_588 + 366));
        // PostgreSQL's last date is JD 2147483493.
        assert_eq!(d("5874897-12-31"), Date::Days(2_147_483_493 - 2_440_588));
        for s in [
            "infinity",
            "-infinity",
            "2024-02-29",
            "0001-01-01 BC",
            "4714-11-24 BC",
            "5874897-12-31",
            "10000-01-01",
        ] {
            assert_eq!(d(s).to_string(), s);
        }
        assert_eq!(d("0001-01-01 BC").ymd(), Some((0, 1, 1)));
        for s in [
            "",
            "2000",
            "2000-01",
            "2000-01-",
            "2000-13-01",
            "2000-00-10",
            "2001-02-29",
            "2000-04-31",
            "0000-01-01",
            "4714-11-23 BC",
            "5874898-01-01",
            "99999999999-01-01",
            "2000-01-01 XY",
            "2000-01-01 00:00:00",
            "2000/01/01",
        ] {
            bad(&t, s);
        }
    }

    #[test]
    fn calendar_matches_a_naive_day_walk() {
        // Walk day by day from Julian day 0 to year 3000 with plain month lengths.
        let (mut y, mut m, mut d) = (-4713i64, 11u32, 24u32);
        for days in DATE_MIN_DAYS..=days_from_civil(3000, 1, 1) {
            assert_eq!(civil_from_days(days), (y, m, d));
            assert_eq!(days_from_civil(y, m, d), days);
            d += 1;
            if d > days_in_month(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
        assert_eq!((y, m, d), (3000, 1, 2));
    }

    #[test]
    fn times() {
        let t = PgType::Time;
        assert_eq!(ok(&t, "00:00:00"), Value::Time(Time(0)));
        assert_eq!(ok(&t, "24:00:00"), Value::Time(Time(86_400_000_000)));
        assert_eq!(ok(&t, "23:59:59.999999"), Value::Time(Time(86_399_999_999)));
        assert_eq!(ok(&t, "04:05:06.789"), Value::Time(Time(14_706_789_000)));
        assert_eq!(ok(&t, "04:05"), Value::Time(Time(14_700_000_000)));
        assert_eq!(Time(14_706_789_000).to_string(), "04:05:06.789");
        assert_eq!(Time(86_400_000_000).to_string(), "24:00:00");
        for s in [
            "",
            "24:00:00.000001",
            "25:00:00",
            "12:60:00",
            "12:00:61",
            "12",
            "12:",
            "12:0",
            "12:00:0",
            "12:00:00.",
            "12:00:00.1234567",
            "12:00:00+00",
            "ab:cd:ef",
        ] {
            bad(&t, s);
        }
        assert_eq!(
            bad(&t, "12-00").reason,
            "expected ':' between hours and minutes"
        );
    }

    #[test]
    fn timetz() {
        let t = PgType::TimeTz;
        let tz = |s| match ok(&t, s) {
            Value::TimeTz(v) => v,
            v => panic!("{v:?}"),
        };
        let mk = |us, off| TimeTz {
            time: Time(us),
            offset_secs: off,
        };
        assert_eq!(tz("00:00:00+1459"), mk(0, 14 * 3600 + 59 * 60));
        assert_eq!(tz("00:00:00+14:59"), mk(0, 14 * 3600 + 59 * 60));
        assert_eq!(
            tz("24:00:00-15:59"),
            mk(86_400_000_000, -(15 * 3600 + 59 * 60))
        );
        assert_eq!(tz("12:34:56.789+05:30"), mk(45_296_789_000, 19_800));
        assert_eq!(tz("12:00:00-08"), mk(43_200_000_000, -8 * 3600));
        assert_eq!(tz("12:00:00+01:02:03"), mk(43_200_000_000, 3723));
        assert_eq!(tz("12:00:00+010203"), mk(43_200_000_000, 3723));
        assert_eq!(tz("12:00:00"), mk(43_200_000_000, 0));
        for s in [
            "12:34:56.789+05:30",
            "00:00:00+14:59",
            "12:00:00-08",
            "01:00:00+01:02:03",
        ] {
            assert_eq!(tz(s).to_string(), s);
        }
        for s in [
            "12:00:00+16",
            "12:00:00+05:60",
            "12:00:00+",
            "12:00:00+123",
            "12:00:00+05:3",
            "12:00:00 +05",
            "12:00:00+05:30:00:00",
        ] {
            bad(&t, s);
        }
    }

    #[test]
    fn timestamps() {
        let ts = |ty: &PgType, s| match ok(ty, s) {
            Value::Timestamp(v) | Value::TimestampTz(v) => v,
            v => panic!("{v:?}"),
        };
        let t = PgType::Timestamp;
        let tz = PgType::TimestampTz;
        assert_eq!(ts(&t, "infinity"), Timestamp::PosInfinity);
        assert_eq!(ts(&tz, "-infinity"), Timestamp::NegInfinity);
        assert_eq!(ts(&t, "2000-01-01 00:00:00"), Timestamp::PgMicros(0));
        assert_eq!(ts(&t, "1970-01-01 00:00:00"), Timestamp::PgMicros(pg_us(0)));
        assert_eq!(
            ts(&tz, "1970-01-01 00:00:00+00"),
            Timestamp::PgMicros(pg_us(0))
        );
        // 2026-11-21 10:00:00 UTC is Unix 1795255200 (2026-01-01 is 1767225600, +324 days).
        let want = Timestamp::PgMicros(pg_us(1_795_255_200) + 123_456);
        assert_eq!(ts(&tz, "2026-11-21 10:00:00.123456+00"), want);
        assert_eq!(ts(&tz, "2026-11-21 15:30:00.123456+05:30"), want);
        assert_eq!(ts(&tz, "2026-11-21 02:00:00.123456-08"), want);
        assert_eq!(ts(&tz, "2026-11-21 11:02:03.123456+01:02:03"), want);
        assert_eq!(ts(&tz, "2026-11-21T10:00:00.123456Z"), want);
        assert_eq!(ts(&t, "2026-11-21 10:00:00.123456"), want);
        assert_eq!(want.to_string(), "2026-11-21T10:00:00.123456Z");
        // PostgreSQL's last timestamp: (JD 109203528 - JD 2451545) days after 2000, less 1 µs.
        let last = 106_751_983 * USECS_PER_DAY - 1;
        assert_eq!(
            ts(&t, "294276-12-31 23:59:59.999999"),
            Timestamp::PgMicros(last)
        );
        assert_eq!(
            ts(&tz, "294276-12-31 23:59:59.999999+00"),
            Timestamp::PgMicros(last)
        );
        assert_eq!(
            Timestamp::PgMicros(last).to_string(),
            "+294276-12-31T23:59:59.999999Z"
        );
        // The first: Julian day 0, 2451545 days before 2000-01-01.
        let first = -2_451_545 * USECS_PER_DAY;
        assert_eq!(ts(&t, "4714-11-24 00:00:00 BC"), Timestamp::PgMicros(first));
        assert_eq!(
            ts(&tz, "4714-11-24 00:00:00+00 BC"),
            Timestamp::PgMicros(first)
        );
        assert_eq!(
            ts(&tz, "4714-11-24 05:30:00+05:30 BC"),
            Timestamp::PgMicros(first)
        );
        assert_eq!(
            Timestamp::PgMicros(first).to_string(),
            "-4713-11-24T00:00:00.000000Z"
        );
        // 0001-01-01 BC (year 0) is 719528 days before 1970.
        assert_eq!(
            ts(&tz, "0001-01-01 00:00:00+00 BC"),
            Timestamp::PgMicros(pg_us(-719_528 * 86_400))
        );
        assert_eq!(
            Timestamp::PgMicros(pg_us(-719_528 * 86_400)).to_string(),
            "0000-01-01T00:00:00.000000Z"
        );
        assert_eq!(ts(&t, "2000-01-01"), Timestamp::PgMicros(0));
        assert_eq!(
            ts(&t, "2000-01-01 24:00:00"),
            Timestamp::PgMicros(USECS_PER_DAY)
        );
        for s in [
            "",
            "2000-01-01 ",
            "2000-01-01 00",
            "2000-01-01 00:00:00+00",
            "294277-01-01 00:00:00",
            "4714-11-23 23:59:59.999999 BC",
            "2000-01-01 00:00:00 BCE",
            "2000-02-30 00:00:00",
        ] {
            bad(&t, s);
        }
        for s in [
            "2000-01-01 00:00:00+",
            "2000-01-01 00:00:00+16",
            "2000-01-01 00:00:00+05:30 AD BC",
            "294276-12-31 23:59:59.999999-00:00:01",
            "4714-11-24 00:00:00+00:00:01 BC",
            "2000-01-01 00:00:00.1234567+00",
        ] {
            bad(&tz, s);
        }
    }

    #[test]
    fn timestamp_conversions() {
        assert_eq!(
            Timestamp::from_pg_epoch_micros(0).to_string(),
            "2000-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            Timestamp::from_pg_epoch_micros(i64::MAX),
            Timestamp::PosInfinity
        );
        assert_eq!(
            Timestamp::from_pg_epoch_micros(i64::MIN),
            Timestamp::NegInfinity
        );
        assert_eq!(Timestamp::PosInfinity.pg_epoch_micros(), i64::MAX);
        assert_eq!(
            Timestamp::PgMicros(0).unix_micros(),
            Some(946_684_800_000_000)
        );
        assert_eq!(Timestamp::PgMicros(i64::MAX - 1).unix_micros(), None);
        assert_eq!(Timestamp::PosInfinity.unix_micros(), None);
        assert_eq!(
            Timestamp::from_pg_epoch_micros(-1).to_string(),
            "1999-12-31T23:59:59.999999Z"
        );
        // Any i64 formats without panicking.
        for us in [i64::MIN + 1, i64::MAX - 1] {
            let _ = Timestamp::PgMicros(us).to_string();
        }
        assert!(Timestamp::NegInfinity < Timestamp::PgMicros(i64::MIN));
        assert!(Timestamp::PgMicros(i64::MAX) < Timestamp::PosInfinity);
    }

    fn iv(months: i32, days: i32, micros: i64) -> Interval {
        Interval {
            months,
            days,
            micros,
        }
    }

    #[test]
    fn intervals() {
        let t = PgType::Interval;
        let i = |s| match ok(&t, s) {
            Value::Interval(v) => v,
            v => panic!("{v:?}"),
        };
        let cases = [
            ("00:00:00", iv(0, 0, 0)),
            (
                "1 year 2 mons 3 days 04:05:06.789",
                iv(14, 3, 14_706_789_000),
            ),
            ("-1 days +02:03:00", iv(0, -1, 7_380_000_000)),
            ("1 mon -1 days -00:00:01", iv(1, -1, -1_000_000)),
            ("-178000000 years", iv(-2_136_000_000, 0, 0)),
            ("1 day", iv(0, 1, 0)),
            (
                "-1 years -2 mons +3 days -04:05:06",
                iv(-14, 3, -14_706_000_000),
            ),
            ("-00:00:00.000001", iv(0, 0, -1)),
            ("2562047788:00:54.775807", iv(0, 0, i64::MAX)),
            (
                "178956970 years 7 mons 2147483647 days 2562047788:00:54.775807",
                Interval::INFINITY,
            ),
            (
                "-178956970 years -8 mons -2147483648 days -2562047788:00:54.775808",
                iv(i32::MIN, i32::MIN, i64::MIN),
            ),
            ("-1 mons", iv(-1, 0, 0)),
            ("1 year 1 mon 1 day 01:00:00", iv(13, 1, 3_600_000_000)),
        ];
        for (s, want) in cases {
            assert_eq!(i(s), want, "{s}");
            // Everything prints back as itself except the infinity sentinels.
            if want != Interval::INFINITY && want != Interval::NEG_INFINITY {
                assert_eq!(want.to_string(), s);
            }
        }
        assert_eq!(i("infinity"), Interval::INFINITY);
        assert_eq!(Interval::NEG_INFINITY.to_string(), "-infinity");
        assert_eq!(i("1 week 2 hours 3 mins 4 secs"), iv(0, 7, 7_384_000_000));
        assert_eq!(i("P1Y2M3DT4H5M6.789S"), iv(14, 3, 14_706_789_000));
        assert_eq!(i("PT0S"), iv(0, 0, 0));
        assert_eq!(i("P-1Y-2M3DT-4H-5M-6.5S"), iv(-14, 3, -14_706_500_000));
        assert_eq!(i("P2W"), iv(0, 14, 0));
        for s in [
            "",
            " ",
            "1",
            "1 fortnight",
            "1 year 2 years",
            "1 day 01:00:00 02:00:00",
            "01:60:00",
            "01:00:60",
            "1:2:3",
            "178956971 years",
            "1 day 2562047789:00:00",
            "2147483648 days",
            "1.5 days",
            "@ 1 day",
            "1 day ago",
            "P",
            "P1",
            "P1S",
            "PT1Y",
            "P1.5Y",
            "PT1HT",
            "P1YX",
        ] {
            bad(&t, s);
        }
    }

    #[test]
    fn inet_and_cidr() {
        let net = |ty: &PgType, s| match ok(ty, s) {
            Value::Inet(v) | Value::Cidr(v) => (v.addr.to_string(), v.prefix),
            v => panic!("{v:?}"),
        };
        let (i, c) = (PgType::Inet, PgType::Cidr);
        assert_eq!(net(&i, "192.168.0.1"), ("192.168.0.1".into(), 32));
        assert_eq!(net(&i, "192.168.0.1/24"), ("192.168.0.1".into(), 24));
        assert_eq!(net(&c, "10.0.0.0/8"), ("10.0.0.0".into(), 8));
        assert_eq!(net(&c, "0.0.0.0/0"), ("0.0.0.0".into(), 0));
        assert_eq!(net(&i, "::1"), ("::1".into(), 128));
        assert_eq!(net(&i, "::1/128"), ("::1".into(), 128));
        assert_eq!(net(&c, "2001:db8::/32"), ("2001:db8::".into(), 32));
        assert_eq!(
            net(&i, "::ffff:1.2.3.4/120"),
            ("::ffff:1.2.3.4".into(), 120)
        );
        assert_eq!(
            net(&i, "2001:db8:85a3::8a2e:370:7334/64"),
            ("2001:db8:85a3::8a2e:370:7334".into(), 64)
        );
        match ok(&c, "2001:db8::/32") {
            Value::Cidr(v) => assert_eq!(v.to_string(), "2001:db8::/32"),
            v => panic!("{v:?}"),
        }
        for s in [
            "",
            "1.2.3",
            "1.2.3.4/33",
            "1.2.3.4/",
            "1.2.3.4/8x",
            "::1/129",
            "1.2.3.4/-1",
        ] {
            bad(&i, s);
        }
        bad(&c, "10.0.0.1/8");
        bad(&c, "2001:db8::1/32");
    }

    #[test]
    fn arrays() {
        let text = |s: &'static str| Some(Value::Text(Cow::Borrowed(s)));
        let owned = |s: &str| Some(Value::Text(Cow::Owned(s.to_owned())));
        assert_eq!(
            ok(&arr(PgType::Int4), "{1,2,NULL,-3}"),
            Value::Array(vec![
                Some(Value::Int4(1)),
                Some(Value::Int4(2)),
                None,
                Some(Value::Int4(-3))
            ])
        );
        assert_eq!(
            ok(
                &arr(PgType::Text),
                r#"{a,"a \"q\" b","NULL","",NULL," x ","back\\slash",null}"#
            ),
            Value::Array(vec![
                text("a"),
                owned("a \"q\" b"),
                text("NULL"),
                text(""),
                None,
                text(" x "),
                owned("back\\slash"),
                None,
            ])
        );
        assert_eq!(
            ok(&arr(PgType::Text), "{ a b , c\\ ,d}"),
            Value::Array(vec![text("a b"), owned("c "), text("d")])
        );
        assert_eq!(ok(&arr(PgType::Int8), "{}"), Value::Array(vec![]));
        assert_eq!(
            ok(&arr(PgType::Int2), "[0:2]={1,2,3}"),
            Value::Array(vec![
                Some(Value::Int2(1)),
                Some(Value::Int2(2)),
                Some(Value::Int2(3))
            ])
        );
        assert_eq!(
            ok(&arr(PgType::Bytea), r#"{"\\x0102","\\x"}"#),
            Value::Array(vec![
                Some(Value::Bytea(vec![1, 2])),
                Some(Value::Bytea(vec![]))
            ])
        );
        assert_eq!(
            ok(
                &arr(PgType::TimestampTz),
                r#"{"2000-01-01 00:00:00+00",infinity,NULL}"#
            ),
            Value::Array(vec![
                Some(Value::TimestampTz(Timestamp::PgMicros(0))),
                Some(Value::TimestampTz(Timestamp::PosInfinity)),
                None
            ])
        );
        assert_eq!(
            ok(&arr(PgType::Date), r#"{"0001-01-01 BC",1970-01-01}"#),
            Value::Array(vec![
                Some(Value::Date(Date::Days(-719_528))),
                Some(Value::Date(Date::Days(0)))
            ])
        );
        assert_eq!(
            ok(&arr(PgType::Numeric), "{NaN,1.50}"),
            Value::Array(vec![
                Some(Value::Numeric(Numeric::NaN)),
                Some(num(false, "150", 2))
            ])
        );
        assert_eq!(
            ok(&arr(PgType::Jsonb), r#"{"{\"a\": 1}",null}"#),
            Value::Array(vec![Some(Value::Json(serde_json::json!({"a": 1}))), None])
        );
        assert_eq!(
            ok(&arr(PgType::Enum), "{happy,sad}"),
            Value::Array(vec![
                Some(Value::Enum(Cow::Borrowed("happy"))),
                Some(Value::Enum(Cow::Borrowed("sad")))
            ])
        );
        assert_eq!(
            ok(&arr(PgType::Interval), r#"{"1 day","-1 days +02:03:00"}"#),
            Value::Array(vec![
                Some(Value::Interval(iv(0, 1, 0))),
                Some(Value::Interval(iv(0, -1, 7_380_000_000)))
            ])
        );
        let e = bad(&arr(PgType::Int4), "{{1,2},{3,4}}");
        assert_eq!(e.reason, "multi-dimensional arrays are not supported");
        bad(&arr(PgType::Int4), "[1:2][1:2]={{1,2},{3,4}}");
        let e = bad(&arr(PgType::Int4), "{1,x2}");
        assert_eq!((e.ty, e.offset), ("int4[]", 3));
        for s in [
            "",
            "{",
            "{1,2",
            "{1,}",
            "{,1}",
            "{1,,2}",
            "1,2",
            "{1}x",
            "{\"1}",
            "{1 2}",
            "{a\"b}",
            "[1:2]{1,2}",
            "{\"1\"2}",
        ] {
            bad(&arr(PgType::Int4), s);
        }
        bad(&arr(PgType::Text), "{\"abc\\");
        bad(&arr(arr(PgType::Int4)), "{}");
    }

    #[test]
    fn into_owned_detaches() {
        let owned: Value<'static> = {
            let buf = String::from("{x,y}");
            parse_value(&arr(PgType::Text), buf.as_bytes())
                .unwrap()
                .into_owned()
        };
        assert_eq!(
            owned,
            Value::Array(vec![
                Some(Value::Text("x".into())),
                Some(Value::Text("y".into()))
            ])
        );
    }

    fn all_types() -> Vec<PgType> {
        let scalars = PgType::SCALARS.to_vec();
        let mut all = scalars.clone();
        all.extend(scalars.into_iter().map(arr));
        all.push(arr(arr(PgType::Int4)));
        all
    }

    /// Fragments of the formats above, so random inputs get past the first byte.
    fn fragments() -> impl Strategy<Value = Vec<u8>> {
        let pieces = prop::sample::select(vec![
            "0", "1", "9", "12", "2000", "294276", "-", "+", ":", ".", " ", "T", "Z", " BC", "{",
            "}", ",", "\"", "\\", "NULL", "infinity", "NaN", "P", "Y", "M", "D", "H", "S", "W",
            "year", "mons", "days", "e", "x", "/", "[", "]", "=", "::", "ff", "\u{e9}", "\n",
        ]);
        prop::collection::vec(pieces, 0..24).prop_map(|v| v.concat().into_bytes())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..48)) {
            for ty in all_types() {
                let _ = parse_value(&ty, &bytes);
            }
        }

        #[test]
        fn never_panics_on_format_fragments(bytes in fragments()) {
            for ty in all_types() {
                if let Ok(v) = parse_value(&ty, &bytes) {
                    // Formatting what we parsed must not panic either.
                    let _ = format!("{v:?}");
                    if let Value::Interval(i) = v {
                        let _ = i.to_string();
                    }
                }
            }
        }

        #[test]
        fn timestamps_round_trip(
            us in TIMESTAMP_MIN..TIMESTAMP_END,
            offset in -(MAX_OFFSET_SECS as i32)..=(MAX_OFFSET_SECS as i32),
        ) {
            let plain = pg_timestamp_text(us, None);
            prop_assert_eq!(
                parse_value(&PgType::Timestamp, plain.as_bytes()),
                Ok(Value::Timestamp(Timestamp::PgMicros(us))),
                "{}", plain
            );
            for off in [0, offset] {
                let text = pg_timestamp_text(us, Some(off));
                prop_assert_eq!(
                    parse_value(&PgType::TimestampTz, text.as_bytes()),
                    Ok(Value::TimestampTz(Timestamp::PgMicros(us))),
                    "{}", text
                );
            }
            let _ = Timestamp::PgMicros(us).to_string();
        }

        #[test]
        fn dates_round_trip(days in DATE_MIN_DAYS..=DATE_MAX_DAYS) {
            let date = Date::Days(days as i32);
            let text = date.to_string();
            prop_assert_eq!(parse_value(&PgType::Date, text.as_bytes()), Ok(Value::Date(date)));
        }

        #[test]
        fn times_round_trip(us in 0..=86_400_000_000i64, offset in -57_599..=57_599i32) {
            let text = Time(us).to_string();
            prop_assert_eq!(parse_value(&PgType::Time, text.as_bytes()), Ok(Value::Time(Time(us))));
            let tz = TimeTz { time: Time(us), offset_secs: offset };
            let text = tz.to_string();
            prop_assert_eq!(parse_value(&PgType::TimeTz, text.as_bytes()), Ok(Value::TimeTz(tz)));
        }

        #[test]
        fn intervals_round_trip(months in any::<i32>(), days in any::<i32>(), micros in any::<i64>()) {
            let i = iv(months, days, micros);
            let text = i.to_string();
            prop_assert_eq!(parse_value(&PgType::Interval, text.as_bytes()), Ok(Value::Interval(i)));
        }

        #[test]
        fn numerics_round_trip(negative in any::<bool>(), digits in "0|[1-9][0-9]{0,60}", scale in 0u32..80) {
            let n = Numeric::Finite { negative: negative && digits != "0", digits, scale };
            let text = n.to_string();
            prop_assert_eq!(parse_value(&PgType::Numeric, text.as_bytes()), Ok(Value::Numeric(n)));
        }

        #[test]
        fn integers_round_trip(v in any::<i64>()) {
            let text = v.to_string();
            prop_assert_eq!(parse_value(&PgType::Int8, text.as_bytes()), Ok(Value::Int8(v)));
        }

        #[test]
        fn floats_round_trip(bits in any::<u64>()) {
            let v = f64::from_bits(bits);
            prop_assume!(v.is_finite());
            for text in [format!("{v}"), format!("{v:e}")] {
                match parse_value(&PgType::Float8, text.as_bytes()) {
                    Ok(Value::Float8(p)) => prop_assert_eq!(p.to_bits(), bits),
                    other => prop_assert!(false, "{} -> {:?}", text, other),
                }
            }
        }
    }
}
