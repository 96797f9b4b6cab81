//! PostgreSQL text of a known type: the comparison keys values are ordered by and the casts
//! between types. Shared by compilation (constant folding, literals checked against their
//! context) and per-row evaluation; it knows nothing of either.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Write as _;

use crate::value::{parse_value, Date, Numeric, PgType, Time, Timestamp, Value, ValueError};

const USECS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch, which [`Timestamp`] counts from).
const PG_EPOCH_DAYS: i64 = 10_957;
/// PostgreSQL's timestamp range in microseconds since 2000-01-01, half-open.
const TIMESTAMP_MIN: i64 = -211_813_488_000_000_000;
const TIMESTAMP_END: i64 = 9_223_371_331_200_000_000;

/// Types whose values are compared and converted as plain text.
pub(crate) fn is_texty(t: &PgType) -> bool {
    matches!(t, PgType::Text | PgType::Enum | PgType::Other)
}

/// How two values are compared, chosen at compile time from their common type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int,
    Dec,
    Float,
    Bool,
    Uuid,
    /// Dates and timestamps, as microseconds since 2000-01-01 UTC.
    Time,
    /// Byte order (PostgreSQL's C collation).
    Text,
}

/// A decimal number as text parts: no leading zeros in `int`, no trailing zeros in `frac`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Dec<'a> {
    /// 0 -infinity, 1 finite, 2 +infinity, 3 NaN (PostgreSQL sorts NaN above everything).
    class: u8,
    negative: bool,
    int: &'a str,
    frac: &'a str,
}

/// A value parsed for comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Key<'a> {
    Int(i64),
    Dec(Dec<'a>),
    Float(f64),
    Bool(bool),
    Uuid([u8; 16]),
    Time(i128),
    Text(&'a str),
}

impl Key<'_> {
    /// The key without its borrow, when it has none (text and decimals are re-read instead).
    pub(crate) fn into_static(self) -> Option<Key<'static>> {
        Some(match self {
            Key::Int(v) => Key::Int(v),
            Key::Float(v) => Key::Float(v),
            Key::Bool(v) => Key::Bool(v),
            Key::Uuid(v) => Key::Uuid(v),
            Key::Time(v) => Key::Time(v),
            Key::Dec(_) | Key::Text(_) => return None,
        })
    }
}

pub(super) fn bad(ty: &PgType, reason: &'static str) -> ValueError {
    ValueError {
        ty: ty.name(),
        offset: 0,
        reason,
    }
}

fn dec(s: &str) -> Option<Dec<'_>> {
    let special = |class| {
        Some(Dec {
            class,
            negative: false,
            int: "",
            frac: "",
        })
    };
    match s {
        "NaN" => return special(3),
        "Infinity" | "+Infinity" => return special(2),
        "-Infinity" => return special(0),
        _ => {}
    }
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, s.get(1..)?),
        Some(b'+') => (false, s.get(1..)?),
        _ => (false, s),
    };
    let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    Some(Dec {
        class: 1,
        negative: negative && !(int.is_empty() && frac.is_empty()),
        int,
        frac,
    })
}

fn cmp_dec(a: &Dec<'_>, b: &Dec<'_>) -> Ordering {
    if a.class != 1 || b.class != 1 {
        return a.class.cmp(&b.class);
    }
    if a.negative != b.negative {
        return if a.negative {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    let magnitude = a
        .int
        .len()
        .cmp(&b.int.len())
        .then_with(|| a.int.cmp(b.int))
        .then_with(|| a.frac.cmp(b.frac));
    if a.negative {
        magnitude.reverse()
    } else {
        magnitude
    }
}

/// PostgreSQL's float order: NaN equals itself and sorts above everything.
fn cmp_float(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

pub(super) fn cmp_keys(a: &Key<'_>, b: &Key<'_>) -> Ordering {
    match (a, b) {
        (Key::Int(x), Key::Int(y)) => x.cmp(y),
        (Key::Dec(x), Key::Dec(y)) => cmp_dec(x, y),
        (Key::Float(x), Key::Float(y)) => cmp_float(*x, *y),
        (Key::Bool(x), Key::Bool(y)) => x.cmp(y),
        (Key::Uuid(x), Key::Uuid(y)) => x.cmp(y),
        (Key::Time(x), Key::Time(y)) => x.cmp(y),
        (Key::Text(x), Key::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        // Both sides of a comparison share one kind; the compiler guarantees it.
        _ => Ordering::Equal,
    }
}

/// PostgreSQL's boolean input: t/true/yes/on/1 and f/false/no/off/0, any case, trimmed.
pub(super) fn bool_in(s: &str) -> Option<bool> {
    let s = s.trim();
    let is = |w: &str| s.eq_ignore_ascii_case(w);
    if is("t") || is("true") || is("yes") || is("y") || is("on") || is("1") {
        Some(true)
    } else if is("f") || is("false") || is("no") || is("n") || is("off") || is("0") {
        Some(false)
    } else {
        None
    }
}

fn float_in(ty: &PgType, s: &str) -> Result<f64, ValueError> {
    let s = s.trim();
    let v = if *ty == PgType::Float4 {
        s.parse::<f32>().map(f64::from)
    } else {
        s.parse::<f64>()
    };
    v.map_err(|_| bad(ty, "expected a number"))
}

fn time_key(ty: &PgType, s: &str) -> Result<i128, ValueError> {
    Ok(match parse_value(ty, s.as_bytes())? {
        Value::Date(Date::Days(d)) => {
            (i128::from(d) - i128::from(PG_EPOCH_DAYS)) * i128::from(USECS_PER_DAY)
        }
        Value::Date(Date::NegInfinity)
        | Value::Timestamp(Timestamp::NegInfinity)
        | Value::TimestampTz(Timestamp::NegInfinity) => i128::MIN,
        Value::Date(Date::PosInfinity)
        | Value::Timestamp(Timestamp::PosInfinity)
        | Value::TimestampTz(Timestamp::PosInfinity) => i128::MAX,
        Value::Timestamp(Timestamp::PgMicros(us)) | Value::TimestampTz(Timestamp::PgMicros(us)) => {
            i128::from(us)
        }
        _ => return Err(bad(ty, "expected a date or timestamp")),
    })
}

/// Parses PostgreSQL text of type `ty` for a comparison of kind `kind`.
pub(crate) fn key<'s>(kind: Kind, ty: &PgType, s: &'s str) -> Result<Key<'s>, ValueError> {
    Ok(match kind {
        Kind::Int => Key::Int(
            s.trim()
                .parse()
                .map_err(|_| bad(ty, "expected an integer"))?,
        ),
        Kind::Dec => Key::Dec(dec(s.trim()).ok_or_else(|| bad(ty, "expected a number"))?),
        Kind::Float => Key::Float(float_in(ty, s)?),
        Kind::Bool => Key::Bool(bool_in(s).ok_or_else(|| bad(ty, "expected a boolean"))?),
        Kind::Uuid => match parse_value(&PgType::Uuid, s.as_bytes())? {
            Value::Uuid(u) => Key::Uuid(u),
            _ => return Err(bad(ty, "expected a uuid")),
        },
        Kind::Time => Key::Time(time_key(ty, s)?),
        Kind::Text => Key::Text(s),
    })
}

/// An integer from text, with PostgreSQL's whitespace tolerance; wide enough for any range
/// check.
fn int_in(ty: &PgType, s: &str) -> Result<i128, ValueError> {
    let s = s.trim();
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, s.get(1..).unwrap_or("")),
        Some(b'+') => (false, s.get(1..).unwrap_or("")),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(ty, "expected an integer"));
    }
    let mut v: i128 = 0;
    for b in digits.bytes() {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(b - b'0')))
            .ok_or_else(|| bad(ty, "number out of range"))?;
    }
    Ok(if negative { -v } else { v })
}

fn int_range(to: &PgType, v: i128) -> Result<String, ValueError> {
    let ok = match to {
        PgType::Int2 => i16::try_from(v).is_ok(),
        PgType::Int4 => i32::try_from(v).is_ok(),
        _ => i64::try_from(v).is_ok(),
    };
    if ok {
        Ok(v.to_string())
    } else {
        Err(bad(to, "integer out of range"))
    }
}

/// float8 text as PostgreSQL prints it (shortest round-trip digits, exponent outside
/// 1e-4 ..< 1e15).
pub(crate) fn fmt_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if v != 0.0 && !(-4..15).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    } else {
        format!("{v}")
    }
}

fn ts_text(ts: Timestamp, with_tz: bool) -> Result<String, ValueError> {
    let ty = if with_tz {
        PgType::TimestampTz
    } else {
        PgType::Timestamp
    };
    let us = match ts {
        Timestamp::NegInfinity => return Ok("-infinity".into()),
        Timestamp::PosInfinity => return Ok("infinity".into()),
        Timestamp::PgMicros(us) => us,
    };
    let days = us.div_euclid(USECS_PER_DAY) + PG_EPOCH_DAYS;
    let days = i32::try_from(days).map_err(|_| bad(&ty, "timestamp out of range"))?;
    let date = Date::Days(days).to_string();
    let (date, bc) = match date.strip_suffix(" BC") {
        Some(d) => (d, " BC"),
        None => (date.as_str(), ""),
    };
    let tz = if with_tz { "+00" } else { "" };
    Ok(format!(
        "{date} {}{tz}{bc}",
        Time(us.rem_euclid(USECS_PER_DAY))
    ))
}

fn timestamp_in(from: &PgType, s: &str, to: &PgType) -> Result<Timestamp, ValueError> {
    let src = if is_texty(from) { to } else { from };
    match parse_value(src, s.as_bytes())? {
        Value::Timestamp(t) | Value::TimestampTz(t) => Ok(t),
        Value::Date(Date::NegInfinity) => Ok(Timestamp::NegInfinity),
        Value::Date(Date::PosInfinity) => Ok(Timestamp::PosInfinity),
        Value::Date(Date::Days(d)) => {
            let us = (i128::from(d) - i128::from(PG_EPOCH_DAYS)) * i128::from(USECS_PER_DAY);
            match i64::try_from(us) {
                Ok(us) if (TIMESTAMP_MIN..TIMESTAMP_END).contains(&us) => {
                    Ok(Timestamp::PgMicros(us))
                }
                _ => Err(bad(to, "timestamp out of range")),
            }
        }
        _ => Err(bad(to, "expected a date or timestamp")),
    }
}

/// Converts PostgreSQL text of type `from` to text of type `to` (a cast). Only conversions
/// the compiler accepted reach here; others are an error, never a panic.
pub(crate) fn convert<'a>(
    s: &'a str,
    from: &PgType,
    to: &PgType,
) -> Result<Cow<'a, str>, ValueError> {
    use PgType as T;
    if *to == T::Text {
        return Ok(if *from == T::Bool {
            let b = bool_in(s).ok_or_else(|| bad(from, "expected a boolean"))?;
            Cow::Borrowed(if b { "true" } else { "false" })
        } else {
            Cow::Borrowed(s)
        });
    }
    if from == to {
        return Ok(Cow::Borrowed(s));
    }
    let texty = is_texty(from);
    Ok(match to {
        T::Int2 | T::Int4 | T::Int8 => {
            let v = match from {
                T::Int2 | T::Int4 | T::Int8 => int_in(from, s)?,
                _ if texty => int_in(to, s)?,
                T::Numeric => {
                    let d = dec(s.trim()).ok_or_else(|| bad(from, "expected a number"))?;
                    if d.class != 1 {
                        return Err(bad(to, "cannot convert NaN or infinity to an integer"));
                    }
                    if d.int.len() > 30 {
                        return Err(bad(to, "integer out of range"));
                    }
                    let mut v = if d.int.is_empty() {
                        0
                    } else {
                        int_in(to, d.int)?
                    };
                    // Half away from zero, as PostgreSQL rounds numeric.
                    if d.frac.as_bytes().first().is_some_and(|&b| b >= b'5') {
                        v += 1;
                    }
                    if d.negative {
                        -v
                    } else {
                        v
                    }
                }
                T::Float4 | T::Float8 => {
                    let f = float_in(from, s)?;
                    if !f.is_finite() || f.abs() >= 9.3e18 {
                        return Err(bad(to, "integer out of range"));
                    }
                    // Half to even, as PostgreSQL's rint().
                    f.round_ties_even() as i128
                }
                T::Bool => i128::from(bool_in(s).ok_or_else(|| bad(from, "expected a boolean"))?),
                _ => return Err(bad(to, "unsupported conversion")),
            };
            Cow::Owned(int_range(to, v)?)
        }
        T::Numeric => match from {
            T::Int2 | T::Int4 | T::Int8 => Cow::Borrowed(s),
            T::Float4 | T::Float8 => {
                let f = float_in(from, s)?;
                Cow::Owned(if f.is_nan() {
                    "NaN".into()
                } else if f.is_infinite() {
                    if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
                } else if f == 0.0 {
                    "0".into()
                } else {
                    format!("{f}")
                })
            }
            _ if texty => Cow::Owned(s.trim().parse::<Numeric>()?.to_string()),
            _ => return Err(bad(to, "unsupported conversion")),
        },
        T::Float4 | T::Float8 => {
            let f = match from {
                T::Int2 | T::Int4 | T::Int8 | T::Numeric | T::Float4 | T::Float8 => {
                    float_in(from, s)?
                }
                _ if texty => match parse_value(&T::Float8, s.trim().as_bytes())? {
                    Value::Float8(f) => f,
                    _ => return Err(bad(to, "expected a number")),
                },
                _ => return Err(bad(to, "unsupported conversion")),
            };
            let f = if *to == T::Float4 {
                f64::from(f as f32)
            } else {
                f
            };
            Cow::Owned(fmt_float(f))
        }
        T::Bool => {
            let b = match from {
                T::Int2 | T::Int4 | T::Int8 => int_in(from, s)? != 0,
                _ if texty => bool_in(s).ok_or_else(|| bad(to, "expected a boolean"))?,
                _ => return Err(bad(to, "unsupported conversion")),
            };
            Cow::Borrowed(if b { "t" } else { "f" })
        }
        T::Date => {
            let src = if texty { to } else { from };
            match parse_value(src, s.as_bytes())? {
                Value::Date(d) => Cow::Owned(d.to_string()),
                Value::Timestamp(t) | Value::TimestampTz(t) => Cow::Owned(match t {
                    Timestamp::NegInfinity => "-infinity".into(),
                    Timestamp::PosInfinity => "infinity".into(),
                    Timestamp::PgMicros(us) => {
                        let days = us.div_euclid(USECS_PER_DAY) + PG_EPOCH_DAYS;
                        let days = i32::try_from(days).map_err(|_| bad(to, "date out of range"))?;
                        Date::Days(days).to_string()
                    }
                }),
                _ => return Err(bad(to, "expected a date or timestamp")),
            }
        }
        T::Timestamp | T::TimestampTz => {
            let t = timestamp_in(from, s, to)?;
            Cow::Owned(ts_text(t, *to == T::TimestampTz)?)
        }
        T::Uuid if texty => match parse_value(&T::Uuid, s.trim().as_bytes())? {
            Value::Uuid(u) => {
                let mut out = String::with_capacity(36);
                for (i, b) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        out.push('-');
                    }
                    let _ = write!(out, "{b:02x}");
                }
                Cow::Owned(out)
            }
            _ => return Err(bad(to, "expected a uuid")),
        },
        T::Json | T::Jsonb => match from {
            T::Json | T::Jsonb => Cow::Borrowed(s),
            _ if texty => {
                serde_json::from_str::<serde::de::IgnoredAny>(s)
                    .map_err(|_| bad(to, "invalid JSON"))?;
                Cow::Borrowed(s)
            }
            _ => return Err(bad(to, "unsupported conversion")),
        },
        // Other targets (enum, interval, inet, …): validate, keep the text.
        _ if texty => {
            parse_value(to, s.as_bytes())?;
            Cow::Borrowed(s)
        }
        _ => return Err(bad(to, "unsupported conversion")),
    })
}
