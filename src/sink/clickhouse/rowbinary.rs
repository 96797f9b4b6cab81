//! ClickHouse's RowBinary format: encoding PostgreSQL text values into it, and measuring values
//! read back from a server. Pure: no I/O.
//!
//! The wire form of each type (all numbers little-endian):
//!
//! | ClickHouse | RowBinary |
//! |---|---|
//! | `UInt8`, `Bool` | 1 byte (`Bool`: 0 or 1) |
//! | `Int16` / `Int32` / `Int64` / `UInt64` | 2 / 4 / 8 / 8 bytes, two's complement |
//! | `Float32` / `Float64` | IEEE 754, 4 / 8 bytes |
//! | `Decimal(p, s)` | the unscaled integer (value × 10^s): Int32 for p ≤ 9, Int64 for p ≤ 18, Int128 for p ≤ 38, Int256 for p ≤ 76 |
//! | `String` | unsigned LEB128 length, then the bytes |
//! | `UUID` | 16 bytes: the UUID's high 64 bits as a little-endian u64, then its low 64 bits as a little-endian u64 — so `61f0c404-5cb3-11e7-907b-a6006ad3dba0` is `e7 11 b3 5c 04 c4 f0 61 a0 db d3 6a 00 a6 7b 90` (each half of the text's byte order reversed; ClickHouse stores a UUID as a UInt128 whose first item is the high half) |
//! | `Date` | UInt16 days since 1970-01-01 |
//! | `DateTime` | UInt32 seconds since 1970-01-01 00:00:00 UTC |
//! | `DateTime64(6)` | Int64 microseconds since 1970-01-01 00:00:00 UTC |
//! | `Nullable(T)` | 1 byte: 1 = NULL (nothing follows), 0 = a `T` follows |
//! | `Array(T)` | unsigned LEB128 element count, then the elements |
//! | `LowCardinality(T)` | as `T` |
//!
//! [`ColumnEncoder`] turns one column's PostgreSQL text (as pgoutput sends it, see
//! [`crate::value`]) into RowBinary for its ClickHouse column, reusing
//! [`crate::value::parse_value`] for everything but the verbatim string copy. [`value_len`]
//! measures a value in bytes read back from a server, to split rows; those bytes are untrusted,
//! so it never panics and never allocates from a length it read.

use crate::value::{parse_value, Date, Numeric, PgType, Timestamp, Value, ValueError};

use super::types::ChType;

/// Why a value cannot be written to its column. Holds a fixed reason, never the value; the
/// caller adds table, column and whatever context it wants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("NULL for a column that is not Nullable")]
    Null,
    /// The PostgreSQL text did not parse (the type, offset and reason, never the text).
    #[error(transparent)]
    Invalid(#[from] ValueError),
    /// A well-formed value the column type cannot represent.
    #[error("{0}")]
    OutOfRange(&'static str),
    #[error("more fractional digits than the column's Decimal scale of {scale}")]
    Scale { scale: u8 },
    /// The column type cannot hold this PostgreSQL type at all (a setup error: every value
    /// of the column fails). See [`ColumnEncoder::check`].
    #[error("a PostgreSQL {pg} value cannot be written to a ClickHouse {ch} column")]
    Unsupported { pg: &'static str, ch: String },
}

/// Why bytes read back from ClickHouse are not one RowBinary value of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("RowBinary value ends early")]
    Truncated,
    #[error("RowBinary length prefix is not a valid LEB128 u64")]
    BadLength,
    #[error("RowBinary Nullable marker is neither 0 nor 1")]
    BadNullMarker,
    #[error("Decimal precision {0} has no RowBinary width")]
    BadDecimalPrecision(u8),
}

const DECIMAL_NOT_FINITE: &str = "NaN or infinity cannot be stored in a ClickHouse Decimal";
const DECIMAL_TOO_LARGE: &str = "numeric value exceeds the column's Decimal precision";
const DATE_INFINITE: &str = "an infinite date cannot be stored in a ClickHouse Date";
const DATE_TOO_EARLY: &str = "date before 1970-01-01, the first ClickHouse Date";
const DATE_TOO_LATE: &str = "date after 2149-06-06, the last ClickHouse Date";
const TIMESTAMP_INFINITE: &str = "an infinite timestamp cannot be stored in ClickHouse";
const DATETIME_TOO_EARLY: &str =
    "timestamp before 1970-01-01 00:00:00 UTC, the first ClickHouse DateTime";
const DATETIME_TOO_LATE: &str =
    "timestamp after 2106-02-07 06:28:15 UTC, the last ClickHouse DateTime";
const DATETIME64_TOO_EARLY: &str =
    "timestamp before 1900-01-01 00:00:00 UTC, the first ClickHouse DateTime64";
const DATETIME64_TOO_LATE: &str =
    "timestamp after 2299-12-31 23:59:59.999999 UTC, the last ClickHouse DateTime64";
const BOOL_NOT_0_OR_1: &str = "integer other than 0 or 1 for a ClickHouse Bool";

/// The last ClickHouse Date, 2149-06-06, in days since 1970.
const DATE_MAX_DAYS: i32 = u16::MAX as i32;
/// ClickHouse DateTime64's documented range, 1900-01-01 00:00:00 ..= 2299-12-31
/// 23:59:59.999999 UTC, in microseconds since 1970.
const DATETIME64_MIN_MICROS: i64 = -2_208_988_800_000_000;
const DATETIME64_MAX_MICROS: i64 = 10_413_791_999_999_999;

/// Appends `n` as unsigned LEB128 (7 bits a byte, least significant first, high bit set on
/// every byte but the last).
pub fn write_leb128(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads an unsigned LEB128 u64: the value and how many bytes it took.
fn read_leb128(bytes: &[u8]) -> Result<(u64, usize), DecodeError> {
    let mut n: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        // The tenth byte holds bit 63 only.
        if i == 9 && part > 1 {
            return Err(DecodeError::BadLength);
        }
        n |= part << (7 * i);
        if b & 0x80 == 0 {
            return Ok((n, i + 1));
        }
    }
    if bytes.len() < 10 {
        Err(DecodeError::Truncated)
    } else {
        Err(DecodeError::BadLength)
    }
}

/// Bytes of a `Decimal(precision, _)` value.
fn decimal_width(precision: u8) -> Option<usize> {
    match precision {
        1..=9 => Some(4),
        10..=18 => Some(8),
        19..=38 => Some(16),
        39..=76 => Some(32),
        _ => None,
    }
}

/// The length in bytes of one RowBinary value of type `ty` at the start of `bytes` (to split
/// rows read back from ClickHouse). An error when the bytes end early or hold a malformed
/// length or Nullable marker; these bytes come from the network, so this never panics, never
/// allocates, and rejects a length or count larger than the bytes left before looking further.
pub fn value_len(ty: &ChType, bytes: &[u8]) -> Result<usize, DecodeError> {
    let fixed = |n: usize| {
        if bytes.len() >= n {
            Ok(n)
        } else {
            Err(DecodeError::Truncated)
        }
    };
    match ty {
        ChType::UInt8 | ChType::Bool => fixed(1),
        ChType::Int16 | ChType::Date => fixed(2),
        ChType::Int32 | ChType::Float32 | ChType::DateTime => fixed(4),
        ChType::Int64 | ChType::UInt64 | ChType::Float64 | ChType::DateTime64 => fixed(8),
        ChType::Uuid => fixed(16),
        ChType::Decimal { precision, .. } => {
            fixed(decimal_width(*precision).ok_or(DecodeError::BadDecimalPrecision(*precision))?)
        }
        ChType::String => {
            let (len, header) = read_leb128(bytes)?;
            let rest = bytes.len() - header;
            match usize::try_from(len) {
                Ok(len) if len <= rest => Ok(header + len),
                _ => Err(DecodeError::Truncated),
            }
        }
        ChType::LowCardinality(inner) => value_len(inner, bytes),
        ChType::Nullable(inner) => match bytes.first() {
            None => Err(DecodeError::Truncated),
            Some(1) => Ok(1),
            Some(0) => Ok(1 + value_len(inner, bytes.get(1..).unwrap_or(&[]))?),
            Some(_) => Err(DecodeError::BadNullMarker),
        },
        ChType::Array(inner) => {
            let (count, mut pos) = read_leb128(bytes)?;
            // Every value takes at least one byte, so a count beyond the bytes left cannot
            // be right; this also bounds the loop by the input's length.
            if count > (bytes.len() - pos) as u64 {
                return Err(DecodeError::Truncated);
            }
            for _ in 0..count {
                pos += value_len(inner, bytes.get(pos..).unwrap_or(&[]))?;
            }
            Ok(pos)
        }
    }
}

/// Compiled per target column: how to turn PostgreSQL text into RowBinary for one ClickHouse
/// column. Built with the column's actual ClickHouse type (see [`ChType::accepts`]).
#[derive(Debug, Clone)]
pub struct ColumnEncoder {
    pg: PgType,
    /// The column type below any Nullable / LowCardinality: what a value is written as.
    ch: ChType,
    nullable: bool,
    /// A `bytea` value into a `String` column: its text is hex-decoded to the raw bytes;
    /// anything else goes to `String` verbatim.
    bytea: bool,
    /// For an `Array` column: how each element is written.
    array: Option<Box<ArrayEncoder>>,
    /// Set when `pg` cannot be converted to this column type; every non-NULL value then fails
    /// with this error.
    unsupported: Option<EncodeError>,
}

/// The elements of an array column.
#[derive(Debug, Clone)]
struct ArrayEncoder {
    elem: ColumnEncoder,
    /// `text[]`: arrays are split into element texts, each then encoded by `elem`.
    as_text: PgType,
}

impl ColumnEncoder {
    /// The encoder for PostgreSQL type `pg` into ClickHouse type `ch`. Every pair makes an
    /// encoder; a pair that cannot work (say `uuid` into `Int32`) fails on every value, and
    /// [`ColumnEncoder::check`] reports it up front. Supported conversions, besides the
    /// mapping of [`super::types::target_type`]: any type into `String` (its PostgreSQL text;
    /// `bytea` as raw bytes), integers into any integer, float, Decimal, `UInt8` or `Bool`
    /// column (range-checked), `bool` into `UInt8`, floats into either float type, `numeric`
    /// into any Decimal, and either timestamp type into `DateTime` or `DateTime64`.
    pub fn new(pg: &PgType, ch: &ChType) -> ColumnEncoder {
        match ch {
            ChType::Nullable(inner) => ColumnEncoder {
                nullable: true,
                ..ColumnEncoder::new(pg, inner)
            },
            ChType::LowCardinality(inner) => ColumnEncoder::new(pg, inner),
            ChType::Array(inner) => {
                let (array, unsupported) = match pg {
                    PgType::Array(elem_pg) => {
                        let elem = ColumnEncoder::new(elem_pg, inner);
                        let unsupported = elem.unsupported.clone();
                        let array = ArrayEncoder {
                            elem,
                            as_text: PgType::Array(Box::new(PgType::Text)),
                        };
                        (Some(Box::new(array)), unsupported)
                    }
                    // Every non-NULL value fails with `unsupported`.
                    _ => (
                        None,
                        Some(EncodeError::Unsupported {
                            pg: pg.name(),
                            ch: ch.sql(),
                        }),
                    ),
                };
                ColumnEncoder {
                    pg: pg.clone(),
                    ch: ch.clone(),
                    nullable: false,
                    bytea: false,
                    array,
                    unsupported,
                }
            }
            scalar => {
                let unsupported = (!convertible(pg, scalar)).then(|| EncodeError::Unsupported {
                    pg: pg.name(),
                    ch: scalar.sql(),
                });
                ColumnEncoder {
                    pg: pg.clone(),
                    ch: scalar.clone(),
                    nullable: false,
                    bytea: *scalar == ChType::String && *pg == PgType::Bytea,
                    array: None,
                    unsupported,
                }
            }
        }
    }

    /// `Err(EncodeError::Unsupported)` when the column type cannot hold this PostgreSQL type,
    /// so that [`ColumnEncoder::encode`] would fail for every non-NULL value.
    pub fn check(&self) -> Result<(), EncodeError> {
        match &self.unsupported {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Appends the RowBinary encoding of one value (`None` = SQL NULL) in PostgreSQL text
    /// format. On error `out` is left as it was. A NULL into a non-Nullable `Array` column is
    /// written as the empty array; into any other non-Nullable column it is
    /// [`EncodeError::Null`].
    pub fn encode(&self, text: Option<&[u8]>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let result = self.encode_unchecked(text, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// For a value this column writes as it is (PostgreSQL text into `String`): appends what
    /// goes before its `len` bytes (the Nullable marker, the length) and returns true — the
    /// caller writes the bytes themselves. Appends nothing and returns false for a column that
    /// converts its values.
    pub fn encode_verbatim_prefix(&self, len: usize, out: &mut Vec<u8>) -> bool {
        if self.ch != ChType::String || self.bytea || self.unsupported.is_some() {
            return false;
        }
        if self.nullable {
            out.push(0);
        }
        write_leb128(len as u64, out);
        true
    }

    /// Appends the column type's default value — what ClickHouse fills for an omitted column:
    /// NULL for Nullable, 0, the empty string, 1970-01-01, the nil UUID, the empty array.
    /// Used for the non-key columns of a delete row.
    pub fn encode_default(&self, out: &mut Vec<u8>) {
        if self.nullable {
            out.push(1);
            return;
        }
        let zeros = match &self.ch {
            ChType::UInt8 | ChType::Bool => 1,
            ChType::Int16 | ChType::Date => 2,
            ChType::Int32 | ChType::Float32 | ChType::DateTime => 4,
            ChType::Int64 | ChType::UInt64 | ChType::Float64 | ChType::DateTime64 => 8,
            ChType::Uuid => 16,
            ChType::Decimal { precision, .. } => decimal_width(*precision).unwrap_or(0),
            // An empty string, an empty array: a zero length. (The wrappers never reach
            // here: `ch` is below them.)
            ChType::String | ChType::Array(_) | ChType::LowCardinality(_) | ChType::Nullable(_) => {
                1
            }
        };
        out.resize(out.len() + zeros, 0);
    }

    /// [`ColumnEncoder::encode`] without restoring `out` on error.
    fn encode_unchecked(&self, text: Option<&[u8]>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let Some(text) = text else {
            if self.nullable {
                out.push(1);
                return Ok(());
            }
            if matches!(self.ch, ChType::Array(_)) {
                out.push(0);
                return Ok(());
            }
            return Err(EncodeError::Null);
        };
        if let Some(e) = &self.unsupported {
            return Err(e.clone());
        }
        if self.nullable {
            out.push(0);
        }
        match &self.ch {
            // The hot path: a plain copy.
            ChType::String if !self.bytea => write_bytes(text, out),
            ChType::String => match self.parse(text)? {
                Value::Bytea(b) => write_bytes(&b, out),
                _ => return Err(self.mismatch()),
            },
            ChType::UInt8 => {
                let v = u8::try_from(self.integer(text)?)
                    .map_err(|_| EncodeError::OutOfRange("integer out of range for UInt8"))?;
                out.push(v);
            }
            ChType::Bool => match self.integer(text)? {
                v @ (0 | 1) => out.push(v as u8),
                _ => return Err(EncodeError::OutOfRange(BOOL_NOT_0_OR_1)),
            },
            ChType::Int16 => {
                let v = i16::try_from(self.integer(text)?)
                    .map_err(|_| EncodeError::OutOfRange("integer out of range for Int16"))?;
                out.extend_from_slice(&v.to_le_bytes());
            }
            ChType::Int32 => {
                let v = i32::try_from(self.integer(text)?)
                    .map_err(|_| EncodeError::OutOfRange("integer out of range for Int32"))?;
                out.extend_from_slice(&v.to_le_bytes());
            }
            ChType::Int64 => out.extend_from_slice(&self.integer(text)?.to_le_bytes()),
            ChType::UInt64 => {
                let v = u64::try_from(self.integer(text)?)
                    .map_err(|_| EncodeError::OutOfRange("negative integer for UInt64"))?;
                out.extend_from_slice(&v.to_le_bytes());
            }
            ChType::Float32 => {
                // Narrowing a float8 rounds; float4 and integers come through as parsed.
                let v = match self.parse(text)? {
                    Value::Float4(v) => v,
                    Value::Float8(v) => v as f32,
                    v => self.integer_of(&v)? as f32,
                };
                out.extend_from_slice(&v.to_le_bytes());
            }
            ChType::Float64 => {
                let v = match self.parse(text)? {
                    Value::Float4(v) => f64::from(v),
                    Value::Float8(v) => v,
                    v => self.integer_of(&v)? as f64,
                };
                out.extend_from_slice(&v.to_le_bytes());
            }
            ChType::Decimal { precision, scale } => {
                let unscaled = match self.parse(text)? {
                    Value::Numeric(n) => numeric_unscaled(&n, *scale)?,
                    v => {
                        let int = i128::from(self.integer_of(&v)?);
                        pow10(*scale)
                            .and_then(|factor| int.checked_mul(factor))
                            .ok_or(EncodeError::OutOfRange(DECIMAL_TOO_LARGE))?
                    }
                };
                write_decimal(unscaled, *precision, out)?;
            }
            ChType::Uuid => match self.parse(text)? {
                Value::Uuid(b) => write_uuid(&b, out),
                _ => return Err(self.mismatch()),
            },
            ChType::Date => match self.parse(text)? {
                Value::Date(d) => out.extend_from_slice(&date_days(d)?.to_le_bytes()),
                _ => return Err(self.mismatch()),
            },
            ChType::DateTime => {
                let micros = self.timestamp_micros(text, DATETIME_TOO_LATE)?;
                // Whole seconds, rounding down: the sub-second part is dropped.
                let secs = micros.div_euclid(1_000_000);
                let secs = match u32::try_from(secs) {
                    Ok(s) => s,
                    Err(_) if secs < 0 => return Err(EncodeError::OutOfRange(DATETIME_TOO_EARLY)),
                    Err(_) => return Err(EncodeError::OutOfRange(DATETIME_TOO_LATE)),
                };
                out.extend_from_slice(&secs.to_le_bytes());
            }
            ChType::DateTime64 => {
                let micros = self.timestamp_micros(text, DATETIME64_TOO_LATE)?;
                if micros < DATETIME64_MIN_MICROS {
                    return Err(EncodeError::OutOfRange(DATETIME64_TOO_EARLY));
                }
                if micros > DATETIME64_MAX_MICROS {
                    return Err(EncodeError::OutOfRange(DATETIME64_TOO_LATE));
                }
                out.extend_from_slice(&micros.to_le_bytes());
            }
            ChType::Array(_) => {
                let Some(ArrayEncoder { elem, as_text }) = self.array.as_deref() else {
                    return Err(self.mismatch());
                };
                // Split as text[] so each element keeps its exact text (a jsonb or numeric
                // element is written as PostgreSQL printed it), then encode element-wise.
                let items = match parse_value(as_text, text) {
                    Ok(Value::Array(items)) => items,
                    Ok(_) => return Err(self.mismatch()),
                    Err(e) => {
                        return Err(ValueError {
                            ty: self.pg.name(),
                            ..e
                        }
                        .into())
                    }
                };
                write_leb128(items.len() as u64, out);
                for item in &items {
                    let item = match item {
                        None => None,
                        Some(Value::Text(s)) => Some(s.as_bytes()),
                        Some(_) => return Err(self.mismatch()),
                    };
                    elem.encode_unchecked(item, out)?;
                }
            }
            // `ch` is below the wrappers; nothing is ever encoded as one.
            ChType::LowCardinality(_) | ChType::Nullable(_) => return Err(self.mismatch()),
        }
        Ok(())
    }

    fn parse<'a>(&self, text: &'a [u8]) -> Result<Value<'a>, EncodeError> {
        Ok(parse_value(&self.pg, text)?)
    }

    /// An integer (or bool as 0/1) column value.
    fn integer(&self, text: &[u8]) -> Result<i64, EncodeError> {
        self.integer_of(&self.parse(text)?)
    }

    fn integer_of(&self, v: &Value<'_>) -> Result<i64, EncodeError> {
        match *v {
            Value::Int2(v) => Ok(v.into()),
            Value::Int4(v) => Ok(v.into()),
            Value::Int8(v) => Ok(v),
            Value::Bool(v) => Ok(v.into()),
            _ => Err(self.mismatch()),
        }
    }

    /// Microseconds since 1970 UTC of a timestamp / timestamptz column value; `too_late` for
    /// one beyond an i64 of microseconds since 1970 (after 294247 AD).
    fn timestamp_micros(&self, text: &[u8], too_late: &'static str) -> Result<i64, EncodeError> {
        let ts = match self.parse(text)? {
            Value::Timestamp(ts) | Value::TimestampTz(ts) => ts,
            _ => return Err(self.mismatch()),
        };
        match ts {
            Timestamp::NegInfinity | Timestamp::PosInfinity => {
                Err(EncodeError::OutOfRange(TIMESTAMP_INFINITE))
            }
            Timestamp::PgMicros(_) => ts.unix_micros().ok_or(EncodeError::OutOfRange(too_late)),
        }
    }

    /// A parsed value of an unexpected kind: cannot happen for pairs `convertible` allows.
    fn mismatch(&self) -> EncodeError {
        EncodeError::Unsupported {
            pg: self.pg.name(),
            ch: self.ch.sql(),
        }
    }
}

/// Whether text of PostgreSQL type `pg` can be written as column type `ch`, below any
/// wrapper (arrays are checked element-wise by the caller).
fn convertible(pg: &PgType, ch: &ChType) -> bool {
    let integer = matches!(pg, PgType::Int2 | PgType::Int4 | PgType::Int8);
    match ch {
        ChType::UInt8 | ChType::Bool => integer || *pg == PgType::Bool,
        ChType::Int16 | ChType::Int32 | ChType::Int64 | ChType::UInt64 => integer,
        ChType::Float32 | ChType::Float64 => {
            integer || matches!(pg, PgType::Float4 | PgType::Float8)
        }
        ChType::Decimal { precision, .. } => {
            decimal_width(*precision).is_some() && (integer || *pg == PgType::Numeric)
        }
        ChType::String => true,
        ChType::Uuid => *pg == PgType::Uuid,
        ChType::Date => *pg == PgType::Date,
        ChType::DateTime | ChType::DateTime64 => {
            matches!(pg, PgType::Timestamp | PgType::TimestampTz)
        }
        ChType::Array(_) => matches!(pg, PgType::Array(_)),
        ChType::LowCardinality(_) | ChType::Nullable(_) => false,
    }
}

fn write_bytes(b: &[u8], out: &mut Vec<u8>) {
    write_leb128(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// `bytes` in the UUID's text order (big-endian): high half, then low half, each as a
/// little-endian u64.
fn write_uuid(bytes: &[u8; 16], out: &mut Vec<u8>) {
    let v = u128::from_be_bytes(*bytes);
    out.extend_from_slice(&((v >> 64) as u64).to_le_bytes());
    out.extend_from_slice(&(v as u64).to_le_bytes());
}

fn date_days(d: Date) -> Result<u16, EncodeError> {
    match d {
        Date::NegInfinity | Date::PosInfinity => Err(EncodeError::OutOfRange(DATE_INFINITE)),
        Date::Days(days) if days < 0 => Err(EncodeError::OutOfRange(DATE_TOO_EARLY)),
        Date::Days(days) if days > DATE_MAX_DAYS => Err(EncodeError::OutOfRange(DATE_TOO_LATE)),
        // 0..=65535 by the guards.
        Date::Days(days) => Ok(days as u16),
    }
}

/// 10^n, if it fits an i128 (n ≤ 38).
fn pow10(n: u8) -> Option<i128> {
    10i128.checked_pow(u32::from(n))
}

/// The value × 10^scale of a numeric, exact. More fractional digits than `scale` are an error
/// unless the extra ones are all zeros (`1.50` fits scale 1: nothing is lost).
fn numeric_unscaled(n: &Numeric, scale: u8) -> Result<i128, EncodeError> {
    let Numeric::Finite {
        negative,
        digits,
        scale: text_scale,
    } = n
    else {
        return Err(EncodeError::OutOfRange(DECIMAL_NOT_FINITE));
    };
    let target = u32::from(scale);
    let mut digits = digits.as_bytes();
    if *text_scale > target {
        let drop = usize::try_from(text_scale - target).unwrap_or(usize::MAX);
        let keep = digits.len().saturating_sub(drop);
        let (kept, dropped) = digits.split_at(keep);
        if dropped.iter().any(|&b| b != b'0') {
            return Err(EncodeError::Scale { scale });
        }
        digits = kept;
    }
    let too_large = || EncodeError::OutOfRange(DECIMAL_TOO_LARGE);
    let mut v: i128 = 0;
    for &b in digits {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(b.wrapping_sub(b'0'))))
            .ok_or_else(too_large)?;
    }
    for _ in (*text_scale).min(target)..target {
        v = v.checked_mul(10).ok_or_else(too_large)?;
    }
    Ok(if *negative { -v } else { v })
}

/// Writes the unscaled value in the width of `Decimal(precision, _)`, after checking it has at
/// most `precision` digits.
fn write_decimal(v: i128, precision: u8, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let too_large = EncodeError::OutOfRange(DECIMAL_TOO_LARGE);
    // 10^precision exceeds every i128 from precision 39 on.
    if pow10(precision).is_some_and(|limit| v.unsigned_abs() >= limit.unsigned_abs()) {
        return Err(too_large);
    }
    match decimal_width(precision) {
        Some(4) => out.extend_from_slice(&i32::try_from(v).map_err(|_| too_large)?.to_le_bytes()),
        Some(8) => out.extend_from_slice(&i64::try_from(v).map_err(|_| too_large)?.to_le_bytes()),
        Some(16) => out.extend_from_slice(&v.to_le_bytes()),
        Some(32) => {
            out.extend_from_slice(&v.to_le_bytes());
            let sign = if v < 0 { 0xff } else { 0 };
            out.resize(out.len() + 16, sign);
        }
        _ => return Err(too_large),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::clickhouse::types::tests::{arr, dec, lc, n, parr};
    use crate::sink::clickhouse::types::{target_type, ServerVersion};
    use proptest::prelude::*;

    fn enc(pg: &PgType, ch: &ChType, text: Option<&str>) -> Result<Vec<u8>, EncodeError> {
        let e = ColumnEncoder::new(pg, ch);
        let mut out = vec![0xaa]; // something already in the buffer
        let r = e.encode(text.map(str::as_bytes), &mut out);
        match r {
            Ok(()) => {
                assert_eq!(out[0], 0xaa);
                let bytes = out.split_off(1);
                // What was written is exactly one value of the column type.
                assert_eq!(value_len(ch, &bytes), Ok(bytes.len()), "{ch:?} {text:?}");
                Ok(bytes)
            }
            Err(err) => {
                assert_eq!(out, [0xaa], "the buffer is restored on error");
                Err(err)
            }
        }
    }

    fn ok(pg: &PgType, ch: &ChType, text: &str) -> Vec<u8> {
        enc(pg, ch, Some(text)).unwrap_or_else(|e| panic!("{pg:?} {ch:?} {text:?}: {e}"))
    }

    fn err(pg: &PgType, ch: &ChType, text: &str) -> EncodeError {
        match enc(pg, ch, Some(text)) {
            Ok(b) => panic!("{pg:?} {ch:?} accepted {text:?} as {b:?}"),
            Err(e) => e,
        }
    }

    fn le_i32(v: i32) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn leb128() {
        let w = |n| {
            let mut v = Vec::new();
            write_leb128(n, &mut v);
            v
        };
        assert_eq!(w(0), [0]);
        assert_eq!(w(1), [1]);
        assert_eq!(w(127), [0x7f]);
        assert_eq!(w(128), [0x80, 0x01]);
        assert_eq!(w(300), [0xac, 0x02]);
        assert_eq!(w(16_384), [0x80, 0x80, 0x01]);
        assert_eq!(w(u64::MAX).len(), 10);
        for v in [0, 1, 127, 128, 300, 1 << 35, u64::MAX - 1, u64::MAX] {
            let b = w(v);
            assert_eq!(read_leb128(&b), Ok((v, b.len())));
            assert_eq!(read_leb128(&b[..b.len() - 1]), Err(DecodeError::Truncated));
        }
        assert_eq!(read_leb128(&[]), Err(DecodeError::Truncated));
        assert_eq!(read_leb128(&[0xff; 10]), Err(DecodeError::BadLength));
        assert_eq!(read_leb128(&[0xff; 11]), Err(DecodeError::BadLength));
        let mut over = vec![0xff; 9];
        over.push(0x02); // bit 64
        assert_eq!(read_leb128(&over), Err(DecodeError::BadLength));
    }

    #[test]
    fn integers_and_bools() {
        assert_eq!(ok(&PgType::Int2, &ChType::Int16, "-2"), [0xfe, 0xff]);
        assert_eq!(
            ok(&PgType::Int4, &ChType::Int32, "-2147483648"),
            le_i32(i32::MIN)
        );
        assert_eq!(
            ok(&PgType::Int8, &ChType::Int64, "9223372036854775807"),
            i64::MAX.to_le_bytes()
        );
        assert_eq!(ok(&PgType::Int4, &n(ChType::Int32), "7"), [0, 7, 0, 0, 0]);
        assert_eq!(enc(&PgType::Int4, &n(ChType::Int32), None), Ok(vec![1]));
        assert_eq!(
            enc(&PgType::Int4, &ChType::Int32, None),
            Err(EncodeError::Null)
        );
        assert_eq!(ok(&PgType::Bool, &ChType::Bool, "t"), [1]);
        assert_eq!(ok(&PgType::Bool, &ChType::Bool, "f"), [0]);
        assert_eq!(ok(&PgType::Bool, &ChType::UInt8, "t"), [1]);
        assert_eq!(ok(&PgType::Bool, &n(ChType::UInt8), "f"), [0, 0]);
        assert!(matches!(
            err(&PgType::Bool, &ChType::Bool, "yes"),
            EncodeError::Invalid(_)
        ));
        // Widening and range-checked narrowing between integer types.
        assert_eq!(
            ok(&PgType::Int2, &ChType::Int64, "-1"),
            (-1i64).to_le_bytes()
        );
        assert_eq!(
            ok(&PgType::Int8, &ChType::Int16, "300"),
            300i16.to_le_bytes()
        );
        assert!(matches!(
            err(&PgType::Int8, &ChType::Int32, "2147483648"),
            EncodeError::OutOfRange(_)
        ));
        assert_eq!(ok(&PgType::Int8, &ChType::UInt64, "5"), 5u64.to_le_bytes());
        assert!(matches!(
            err(&PgType::Int8, &ChType::UInt64, "-5"),
            EncodeError::OutOfRange(_)
        ));
        assert_eq!(ok(&PgType::Int4, &ChType::UInt8, "255"), [255]);
        assert!(matches!(
            err(&PgType::Int4, &ChType::UInt8, "256"),
            EncodeError::OutOfRange(_)
        ));
        assert_eq!(ok(&PgType::Int4, &ChType::Bool, "1"), [1]);
        assert_eq!(
            err(&PgType::Int4, &ChType::Bool, "2"),
            EncodeError::OutOfRange(BOOL_NOT_0_OR_1)
        );
        assert!(matches!(
            err(&PgType::Int4, &ChType::Int32, "12x"),
            EncodeError::Invalid(_)
        ));
    }

    #[test]
    fn floats() {
        assert_eq!(
            ok(&PgType::Float8, &ChType::Float64, "1.5"),
            1.5f64.to_le_bytes()
        );
        assert_eq!(
            ok(&PgType::Float4, &ChType::Float32, "-0.25"),
            (-0.25f32).to_le_bytes()
        );
        assert_eq!(
            ok(&PgType::Float8, &ChType::Float64, "Infinity"),
            f64::INFINITY.to_le_bytes()
        );
        assert_eq!(
            ok(&PgType::Float4, &ChType::Float32, "-Infinity"),
            f32::NEG_INFINITY.to_le_bytes()
        );
        let nan = ok(&PgType::Float8, &ChType::Float64, "NaN");
        assert!(f64::from_le_bytes(nan.try_into().unwrap()).is_nan());
        let nan = ok(&PgType::Float4, &n(ChType::Float32), "NaN");
        assert_eq!(nan[0], 0);
        assert!(f32::from_le_bytes(nan[1..].try_into().unwrap()).is_nan());
        assert_eq!(
            ok(&PgType::Float4, &ChType::Float64, "0.5"),
            0.5f64.to_le_bytes()
        );
        assert_eq!(ok(&PgType::Int4, &ChType::Float64, "3"), 3f64.to_le_bytes());
    }

    #[test]
    fn decimals_of_each_width() {
        let num = PgType::Numeric;
        // Decimal32
        assert_eq!(ok(&num, &dec(9, 2), "123.45"), le_i32(12345));
        assert_eq!(ok(&num, &dec(9, 2), "-1.5"), le_i32(-150));
        assert_eq!(ok(&num, &dec(9, 2), "7"), le_i32(700));
        assert_eq!(ok(&num, &dec(9, 2), "0.00"), le_i32(0));
        assert_eq!(ok(&num, &dec(9, 2), "9999999.99"), le_i32(999_999_999));
        assert_eq!(ok(&num, &dec(9, 2), "-9999999.99"), le_i32(-999_999_999));
        // Extra fractional zeros lose nothing.
        assert_eq!(ok(&num, &dec(9, 2), "1.2300"), le_i32(123));
        // Decimal64
        assert_eq!(ok(&num, &dec(18, 4), "1.5"), 15_000i64.to_le_bytes());
        assert_eq!(
            ok(&num, &dec(12, 2), "-1234567890.12"),
            (-123_456_789_012i64).to_le_bytes()
        );
        // Decimal128
        assert_eq!(
            ok(&num, &dec(38, 10), "-1234567890123456789012345678.9"),
            (-12_345_678_901_234_567_890_123_456_789_000_000_000i128).to_le_bytes()
        );
        assert_eq!(ok(&num, &dec(20, 0), "1"), 1i128.to_le_bytes());
        // Decimal256: the Int128 sign-extended to 32 bytes.
        let mut want = (-5i128).to_le_bytes().to_vec();
        want.extend([0xff; 16]);
        assert_eq!(ok(&num, &dec(76, 1), "-0.5"), want);
        let mut want = 5i128.to_le_bytes().to_vec();
        want.extend([0; 16]);
        assert_eq!(ok(&num, &dec(40, 1), "0.5"), want);
        // Nullable
        assert_eq!(ok(&num, &n(dec(9, 2)), "1.00"), cat(&[&[0], &le_i32(100)]));
        assert_eq!(enc(&num, &n(dec(9, 2)), None), Ok(vec![1]));
        // Integers into decimals.
        assert_eq!(ok(&PgType::Int4, &dec(9, 2), "-3"), le_i32(-300));
        // Too many fractional digits, too many digits, and the non-finite values.
        assert_eq!(
            err(&num, &dec(9, 2), "1.234"),
            EncodeError::Scale { scale: 2 }
        );
        assert_eq!(
            err(&num, &dec(9, 2), "0.001"),
            EncodeError::Scale { scale: 2 }
        );
        assert_eq!(
            err(&num, &dec(9, 0), "0.5"),
            EncodeError::Scale { scale: 0 }
        );
        assert_eq!(ok(&num, &dec(9, 0), "5.000"), le_i32(5));
        let nines = "9".repeat(50);
        for s in ["10000000.00", "-10000000", nines.as_str()] {
            assert_eq!(
                err(&num, &dec(9, 2), s),
                EncodeError::OutOfRange(DECIMAL_TOO_LARGE),
                "{s}"
            );
        }
        assert_eq!(
            err(&PgType::Int8, &dec(9, 2), "10000000"),
            EncodeError::OutOfRange(DECIMAL_TOO_LARGE)
        );
        for s in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(
                err(&num, &dec(12, 2), s),
                EncodeError::OutOfRange(DECIMAL_NOT_FINITE)
            );
        }
        assert!(matches!(
            err(&num, &dec(12, 2), "1e5"),
            EncodeError::Invalid(_)
        ));
    }

    #[test]
    fn strings() {
        assert_eq!(
            ok(&PgType::Text, &ChType::String, "héllo"),
            b"\x06h\xc3\xa9llo"
        );
        assert_eq!(ok(&PgType::Text, &ChType::String, ""), [0]);
        let long = "x".repeat(300);
        assert_eq!(
            ok(&PgType::Text, &ChType::String, &long),
            cat(&[&[0xac, 0x02], long.as_bytes()])
        );
        assert_eq!(ok(&PgType::Text, &n(ChType::String), "ab"), b"\x00\x02ab");
        // Written as it is: the same bytes, the text left to the caller.
        for (pg, ch) in [
            (PgType::Text, ChType::String),
            (PgType::Text, n(ChType::String)),
            (PgType::Int4, lc(n(ChType::String))),
        ] {
            let text = "x".repeat(300);
            let e = ColumnEncoder::new(&pg, &ch);
            let mut spliced = Vec::new();
            assert!(e.encode_verbatim_prefix(text.len(), &mut spliced), "{ch:?}");
            spliced.extend_from_slice(text.as_bytes());
            assert_eq!(spliced, ok(&pg, &ch, &text), "{ch:?}");
        }
        for (pg, ch) in [
            (PgType::Bytea, ChType::String),
            (PgType::Int4, ChType::Int32),
            (PgType::Uuid, ChType::Int32),
        ] {
            let mut out = Vec::new();
            assert!(!ColumnEncoder::new(&pg, &ch).encode_verbatim_prefix(3, &mut out));
            assert!(out.is_empty());
        }
        assert_eq!(enc(&PgType::Text, &n(ChType::String), None), Ok(vec![1]));
        // Bytea: hex text to raw bytes.
        assert_eq!(
            ok(&PgType::Bytea, &ChType::String, "\\x0a0bff"),
            [3, 0x0a, 0x0b, 0xff]
        );
        assert_eq!(ok(&PgType::Bytea, &ChType::String, "\\x"), [0]);
        assert!(matches!(
            err(&PgType::Bytea, &ChType::String, "\\x0g"),
            EncodeError::Invalid(_)
        ));
        // Numeric, json, time, ... as PostgreSQL's text, unchanged.
        for (pg, text) in [
            (PgType::Numeric, "1.50"),
            (PgType::Numeric, "NaN"),
            (PgType::Numeric, "-0.00100"),
            (PgType::Jsonb, "{\"a\": [1, 2.50]}"),
            (PgType::Json, "{ \"a\" :1 }"),
            (PgType::Time, "04:05:06.789"),
            (PgType::Interval, "1 year 2 mons"),
            (PgType::Inet, "10.0.0.1/8"),
            (PgType::Other, "(1,2)"),
            (PgType::Uuid, "not validated when copied"),
        ] {
            let mut want = vec![text.len() as u8];
            want.extend_from_slice(text.as_bytes());
            assert_eq!(ok(&pg, &ChType::String, text), want, "{pg:?}");
        }
        // Enum labels into LowCardinality(String), which encodes as String.
        assert_eq!(ok(&PgType::Enum, &lc(ChType::String), "sad"), b"\x03sad");
        assert_eq!(
            ok(&PgType::Enum, &lc(n(ChType::String)), "sad"),
            b"\x00\x03sad"
        );
        assert_eq!(
            enc(&PgType::Enum, &lc(n(ChType::String)), None),
            Ok(vec![1])
        );
    }

    #[test]
    fn uuid_byte_order() {
        // ClickHouse's own documentation example, as a server returns it in RowBinary.
        assert_eq!(
            ok(
                &PgType::Uuid,
                &ChType::Uuid,
                "61f0c404-5cb3-11e7-907b-a6006ad3dba0"
            ),
            [
                0xe7, 0x11, 0xb3, 0x5c, 0x04, 0xc4, 0xf0, 0x61, 0xa0, 0xdb, 0xd3, 0x6a, 0x00, 0xa6,
                0x7b, 0x90
            ]
        );
        assert_eq!(
            ok(
                &PgType::Uuid,
                &n(ChType::Uuid),
                "00112233-4455-6677-8899-aabbccddeeff"
            ),
            [
                0, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00, 0xff, 0xee, 0xdd, 0xcc, 0xbb,
                0xaa, 0x99, 0x88
            ]
        );
        assert!(matches!(
            err(&PgType::Uuid, &ChType::Uuid, "61f0c404"),
            EncodeError::Invalid(_)
        ));
    }

    #[test]
    fn dates() {
        let d = |s| ok(&PgType::Date, &ChType::Date, s);
        assert_eq!(d("1970-01-01"), [0, 0]);
        assert_eq!(d("1970-01-02"), [1, 0]);
        assert_eq!(d("2024-02-29"), 19_782u16.to_le_bytes());
        assert_eq!(d("2149-06-06"), [0xff, 0xff]);
        assert_eq!(
            err(&PgType::Date, &ChType::Date, "1969-12-31"),
            EncodeError::OutOfRange(DATE_TOO_EARLY)
        );
        assert_eq!(
            err(&PgType::Date, &ChType::Date, "2149-06-07"),
            EncodeError::OutOfRange(DATE_TOO_LATE)
        );
        for s in ["infinity", "-infinity"] {
            assert_eq!(
                err(&PgType::Date, &ChType::Date, s),
                EncodeError::OutOfRange(DATE_INFINITE)
            );
        }
        assert_eq!(ok(&PgType::Date, &n(ChType::Date), "1970-01-03"), [0, 2, 0]);
    }

    #[test]
    fn datetimes() {
        let ts = PgType::Timestamp;
        let tz = PgType::TimestampTz;
        let dt = |pg: &PgType, s| ok(pg, &ChType::DateTime, s);
        assert_eq!(dt(&ts, "1970-01-01 00:00:00"), [0, 0, 0, 0]);
        assert_eq!(dt(&ts, "2106-02-07 06:28:15"), u32::MAX.to_le_bytes());
        // Sub-second part truncated.
        assert_eq!(
            dt(&ts, "2024-01-02 03:04:05.999999"),
            1_704_164_645u32.to_le_bytes()
        );
        assert_eq!(
            dt(&tz, "2024-01-02 04:04:05.5+01"),
            1_704_164_645u32.to_le_bytes()
        );
        assert_eq!(
            err(&ts, &ChType::DateTime, "1969-12-31 23:59:59.999999"),
            EncodeError::OutOfRange(DATETIME_TOO_EARLY)
        );
        assert_eq!(
            err(&ts, &ChType::DateTime, "2106-02-07 06:28:16"),
            EncodeError::OutOfRange(DATETIME_TOO_LATE)
        );
        assert_eq!(
            err(&tz, &ChType::DateTime, "infinity"),
            EncodeError::OutOfRange(TIMESTAMP_INFINITE)
        );

        let dt64 = |pg: &PgType, s| ok(pg, &ChType::DateTime64, s);
        let want = 1_704_164_645_123_456i64.to_le_bytes();
        assert_eq!(dt64(&ts, "2024-01-02 03:04:05.123456"), want);
        assert_eq!(dt64(&tz, "2024-01-02 03:04:05.123456+00"), want);
        assert_eq!(dt64(&tz, "2024-01-01 22:04:05.123456-05"), want);
        assert_eq!(
            dt64(&ts, "1969-12-31 23:59:59.999999"),
            (-1i64).to_le_bytes()
        );
        assert_eq!(
            dt64(&ts, "1900-01-01 00:00:00"),
            DATETIME64_MIN_MICROS.to_le_bytes()
        );
        assert_eq!(
            dt64(&ts, "2299-12-31 23:59:59.999999"),
            DATETIME64_MAX_MICROS.to_le_bytes()
        );
        assert_eq!(
            err(&ts, &ChType::DateTime64, "1899-12-31 23:59:59.999999"),
            EncodeError::OutOfRange(DATETIME64_TOO_EARLY)
        );
        assert_eq!(
            err(&ts, &ChType::DateTime64, "2300-01-01 00:00:00"),
            EncodeError::OutOfRange(DATETIME64_TOO_LATE)
        );
        assert_eq!(
            err(&ts, &ChType::DateTime64, "294276-12-31 23:59:59"),
            EncodeError::OutOfRange(DATETIME64_TOO_LATE)
        );
        assert_eq!(
            err(&ts, &ChType::DateTime64, "-infinity"),
            EncodeError::OutOfRange(TIMESTAMP_INFINITE)
        );
        assert_eq!(
            ok(&tz, &n(ChType::DateTime64), "1970-01-01 00:00:00.000001+00"),
            [0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn arrays() {
        let int_arr = arr(n(ChType::Int32));
        assert_eq!(
            ok(&parr(PgType::Int4), &int_arr, "{1,2,NULL}"),
            [3, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 1]
        );
        assert_eq!(ok(&parr(PgType::Int4), &int_arr, "{}"), [0]);
        // A NULL array is the empty array.
        assert_eq!(enc(&parr(PgType::Int4), &int_arr, None), Ok(vec![0]));
        let text_arr = arr(n(ChType::String));
        assert_eq!(
            ok(
                &parr(PgType::Text),
                &text_arr,
                r#"{"a b","c\"d",NULL,"NULL"}"#
            ),
            cat(&[&[4], b"\x00\x03a b", b"\x00\x03c\"d", &[1], b"\x00\x04NULL"])
        );
        // Elements keep their exact text.
        assert_eq!(
            ok(&parr(PgType::Numeric), &text_arr, "{1.50,NaN}"),
            cat(&[&[2], b"\x00\x041.50", b"\x00\x03NaN"])
        );
        assert_eq!(
            ok(&parr(PgType::Jsonb), &text_arr, r#"{"{\"a\": 1}"}"#),
            cat(&[&[1], b"\x00\x08{\"a\": 1}"])
        );
        assert_eq!(
            ok(&parr(PgType::Bytea), &text_arr, r#"{"\\x0102",NULL}"#),
            [2, 0, 2, 1, 2, 1]
        );
        assert_eq!(
            ok(&parr(PgType::Enum), &arr(lc(n(ChType::String))), "{happy}"),
            cat(&[&[1], b"\x00\x05happy"])
        );
        assert_eq!(
            ok(&parr(PgType::Numeric), &arr(n(dec(5, 2))), "{1.5,NULL,-2}"),
            cat(&[&[3, 0], &le_i32(150), &[1, 0], &le_i32(-200)])
        );
        assert_eq!(
            ok(&parr(PgType::Date), &arr(n(ChType::Date)), "{1970-01-02}"),
            [1, 0, 1, 0]
        );
        // Non-Nullable elements refuse NULL; element errors surface, the buffer restored.
        assert_eq!(
            err(&parr(PgType::Int4), &arr(ChType::Int32), "{1,NULL}"),
            EncodeError::Null
        );
        assert_eq!(
            ok(&parr(PgType::Int4), &arr(ChType::Int32), "{1}"),
            [1, 1, 0, 0, 0]
        );
        assert_eq!(
            err(
                &parr(PgType::Date),
                &arr(n(ChType::Date)),
                "{1970-01-01,1969-01-01}"
            ),
            EncodeError::OutOfRange(DATE_TOO_EARLY)
        );
        match err(&parr(PgType::Int4), &int_arr, "{1,2") {
            EncodeError::Invalid(e) => assert_eq!(e.ty, "int4[]"),
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            err(&parr(PgType::Int4), &int_arr, "{1,x}"),
            EncodeError::Invalid(_)
        ));
        // An array into a String column is its PostgreSQL text.
        assert_eq!(
            ok(&parr(PgType::Int4), &ChType::String, "{1,2}"),
            b"\x05{1,2}"
        );
    }

    #[test]
    fn unsupported_pairs() {
        for (pg, ch) in [
            (PgType::Uuid, ChType::Int32),
            (PgType::Text, ChType::Int64),
            (PgType::Float8, dec(12, 2)),
            (PgType::Date, ChType::DateTime),
            (PgType::Timestamp, ChType::Date),
            (PgType::Int4, arr(n(ChType::Int32))),
            (parr(PgType::Uuid), arr(n(ChType::Int32))),
            (PgType::Numeric, dec(0, 0)),
        ] {
            let e = ColumnEncoder::new(&pg, &ch);
            assert!(
                matches!(e.check(), Err(EncodeError::Unsupported { .. })),
                "{pg:?} {ch:?}"
            );
            let mut out = vec![];
            assert!(e.encode(Some(b"1"), &mut out).is_err());
            assert!(out.is_empty());
        }
        let e = ColumnEncoder::new(&PgType::Uuid, &n(ChType::Int32));
        assert_eq!(
            e.check().unwrap_err().to_string(),
            "a PostgreSQL uuid value cannot be written to a ClickHouse Int32 column"
        );
        // NULL is still fine for a Nullable column.
        let mut out = vec![];
        assert_eq!(e.encode(None, &mut out), Ok(()));
        assert_eq!(out, [1]);
        assert_eq!(
            ColumnEncoder::new(&PgType::Int4, &n(ChType::Int64)).check(),
            Ok(())
        );
    }

    #[test]
    fn error_messages_hold_no_value() {
        for (pg, ch, text) in [
            (PgType::Date, ChType::Date, "1969-12-31"),
            (PgType::Date, ChType::Date, "2200-01-01"),
            (PgType::Timestamp, ChType::DateTime, "1969-12-31 23:59:59"),
            (PgType::Timestamp, ChType::DateTime64, "1850-06-15 12:00:00"),
            (PgType::Numeric, dec(9, 2), "1234.567"),
            (PgType::Numeric, dec(9, 2), "12345678.9"),
            (PgType::Int8, ChType::Int16, "98765"),
            (PgType::Int4, ChType::Int32, "8675309x"),
            (parr(PgType::Int4), arr(n(ChType::Int32)), "{8675309,y}"),
        ] {
            let e = err(&pg, &ch, text).to_string();
            for part in text
                .split(|c: char| !c.is_ascii_digit())
                .filter(|p| p.len() >= 3)
            {
                assert!(!e.contains(part), "{e:?} contains {part:?}");
            }
        }
    }

    /// Every column type pgfanout creates, for both server generations.
    fn created_types() -> Vec<(PgType, ChType)> {
        let scalars = PgType::SCALARS;
        let mut out = vec![];
        for v in [ServerVersion::new(18, 16), ServerVersion::new(24, 3)] {
            for pg in scalars
                .iter()
                .cloned()
                .chain(scalars.iter().cloned().map(parr))
            {
                for typmod in [None, Some(((12 << 16) | 2) + 4), Some(((30 << 16) | 5) + 4)] {
                    for nullable in [false, true] {
                        out.push((pg.clone(), target_type(&pg, typmod, nullable, v)));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn defaults() {
        let d = |ch: &ChType| {
            let mut out = vec![];
            ColumnEncoder::new(&PgType::Text, ch).encode_default(&mut out);
            out
        };
        assert_eq!(d(&ChType::Int32), [0, 0, 0, 0]);
        assert_eq!(d(&ChType::UInt8), [0]);
        assert_eq!(d(&ChType::String), [0]);
        assert_eq!(d(&lc(ChType::String)), [0]);
        assert_eq!(d(&ChType::Date), [0, 0]);
        assert_eq!(d(&ChType::DateTime), [0; 4]);
        assert_eq!(d(&ChType::DateTime64), [0; 8]);
        assert_eq!(d(&ChType::Uuid), [0; 16]);
        assert_eq!(d(&dec(9, 2)), [0; 4]);
        assert_eq!(d(&dec(38, 2)), [0; 16]);
        assert_eq!(d(&n(ChType::Int64)), [1]);
        assert_eq!(d(&lc(n(ChType::String))), [1]);
        assert_eq!(d(&arr(n(ChType::Int32))), [0]);
        // Every created type's default is one value of that type.
        for (pg, ch) in created_types() {
            let mut out = vec![];
            ColumnEncoder::new(&pg, &ch).encode_default(&mut out);
            assert_eq!(value_len(&ch, &out), Ok(out.len()), "{ch:?}");
        }
    }

    #[test]
    fn created_types_are_supported() {
        for (pg, ch) in created_types() {
            assert_eq!(
                ColumnEncoder::new(&pg, &ch).check(),
                Ok(()),
                "{pg:?} {ch:?}"
            );
        }
    }

    #[test]
    fn value_len_of_every_type() {
        let cases: Vec<(ChType, Vec<u8>)> = vec![
            (ChType::UInt8, vec![7]),
            (ChType::Bool, vec![1]),
            (ChType::Int16, vec![1, 2]),
            (ChType::Int32, vec![1, 2, 3, 4]),
            (ChType::Int64, vec![0; 8]),
            (ChType::UInt64, vec![0; 8]),
            (ChType::Float32, vec![0; 4]),
            (ChType::Float64, vec![0; 8]),
            (dec(9, 2), vec![0; 4]),
            (dec(18, 2), vec![0; 8]),
            (dec(38, 2), vec![0; 16]),
            (dec(76, 2), vec![0; 32]),
            (ChType::String, b"\x03abc".to_vec()),
            (ChType::String, vec![0]),
            (ChType::Uuid, vec![0; 16]),
            (ChType::Date, vec![0; 2]),
            (ChType::DateTime, vec![0; 4]),
            (ChType::DateTime64, vec![0; 8]),
            (lc(ChType::String), b"\x01x".to_vec()),
            (n(ChType::Int32), vec![1]),
            (n(ChType::Int32), vec![0, 1, 2, 3, 4]),
            (lc(n(ChType::String)), b"\x00\x02ab".to_vec()),
            (arr(n(ChType::Int16)), vec![3, 1, 0, 5, 0, 0, 6, 0]),
            (arr(ChType::String), vec![2, 1, b'a', 0]),
            (arr(arr(ChType::UInt8)), vec![2, 1, 9, 0]),
        ];
        for (ty, bytes) in cases {
            assert_eq!(value_len(&ty, &bytes), Ok(bytes.len()), "{ty:?} {bytes:?}");
            // Trailing bytes (the next values) are not counted.
            let mut more = bytes.clone();
            more.extend([1, 2, 3]);
            assert_eq!(value_len(&ty, &more), Ok(bytes.len()), "{ty:?}");
            // Every proper prefix is truncated.
            for cut in 0..bytes.len() {
                assert_eq!(
                    value_len(&ty, &bytes[..cut]),
                    Err(DecodeError::Truncated),
                    "{ty:?} {cut}"
                );
            }
        }
        assert_eq!(
            value_len(&n(ChType::Int32), &[2, 0, 0, 0, 0]),
            Err(DecodeError::BadNullMarker)
        );
        assert_eq!(
            value_len(&ChType::String, &[0xff; 12]),
            Err(DecodeError::BadLength)
        );
        // Absurd lengths and counts fail at once.
        let mut huge = vec![];
        write_leb128(u64::MAX, &mut huge);
        assert_eq!(
            value_len(&ChType::String, &huge),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            value_len(&arr(ChType::UInt8), &huge),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            value_len(&arr(ChType::Int64), &[2, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            value_len(&dec(0, 0), &[0; 40]),
            Err(DecodeError::BadDecimalPrecision(0))
        );
    }

    // ---- property tests ---------------------------------------------------------------

    /// PostgreSQL's float text (`NaN`, `Infinity`, shortest round-trip digits otherwise).
    fn pg_float(v: f64) -> String {
        if v.is_nan() {
            "NaN".into()
        } else if v.is_infinite() {
            if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
        } else {
            format!("{v:e}")
        }
    }

    /// `unscaled × 10^-scale` as PostgreSQL prints it.
    fn pg_numeric(unscaled: i128, scale: u32) -> String {
        Numeric::Finite {
            negative: unscaled < 0,
            digits: unscaled.unsigned_abs().to_string(),
            scale,
        }
        .to_string()
    }

    /// A quoted PostgreSQL array element.
    fn pg_quote(s: &str) -> String {
        let mut q = String::from("\"");
        for c in s.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    }

    fn pg_array(items: &[Option<String>]) -> String {
        let parts: Vec<String> = items
            .iter()
            .map(|i| i.as_deref().map_or("NULL".to_owned(), pg_quote))
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    /// `YYYY-MM-DD HH:MM:SS.ffffff` for microseconds since 1970 (via the RFC 3339 form of
    /// `Timestamp`, which PostgreSQL's parser also accepts).
    fn pg_timestamp(unix_micros: i64) -> String {
        let pg = unix_micros - 946_684_800_000_000;
        let s = Timestamp::PgMicros(pg).to_string();
        s.trim_end_matches('Z').replace('T', " ")
    }

    /// (PostgreSQL type, ClickHouse type, text or NULL) for random values of every type.
    fn values() -> impl Strategy<Value = (PgType, ChType, Option<String>)> {
        let nullable = |t: ChType, null: bool| if null { n(t) } else { t };
        prop_oneof![
            (any::<i16>(), any::<bool>()).prop_map(move |(v, nl)| (
                PgType::Int2,
                nullable(ChType::Int16, nl),
                Some(v.to_string())
            )),
            (any::<i32>(), any::<bool>()).prop_map(move |(v, nl)| (
                PgType::Int4,
                nullable(ChType::Int32, nl),
                Some(v.to_string())
            )),
            (any::<i64>(), any::<bool>()).prop_map(move |(v, nl)| (
                PgType::Int8,
                nullable(ChType::Int64, nl),
                Some(v.to_string())
            )),
            (any::<bool>(), any::<bool>()).prop_map(move |(v, nl)| (
                PgType::Bool,
                nullable(if nl { ChType::UInt8 } else { ChType::Bool }, nl),
                Some(if v { "t" } else { "f" }.into())
            )),
            any::<u64>().prop_map(|bits| (
                PgType::Float8,
                ChType::Float64,
                Some(pg_float(f64::from_bits(bits)))
            )),
            any::<u32>().prop_map(|bits| (
                PgType::Float4,
                n(ChType::Float32),
                Some(pg_float(f64::from(f32::from_bits(bits))))
            )),
            (1u8..=38, any::<i128>(), any::<u8>()).prop_map(|(p, v, s)| {
                let scale = s % (p + 1);
                let v = v % 10i128.pow(u32::from(p));
                (
                    PgType::Numeric,
                    n(dec(p, scale)),
                    Some(pg_numeric(v, u32::from(scale))),
                )
            }),
            ".*".prop_map(|s| (PgType::Text, ChType::String, Some(s))),
            ".*".prop_map(|s| (PgType::Enum, lc(n(ChType::String)), Some(s))),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                (PgType::Bytea, n(ChType::String), Some(format!("\\x{hex}")))
            }),
            any::<[u8; 16]>().prop_map(|b| {
                let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
                let text = format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                );
                (PgType::Uuid, ChType::Uuid, Some(text))
            }),
            (0i32..=DATE_MAX_DAYS).prop_map(|d| (
                PgType::Date,
                n(ChType::Date),
                Some(Date::Days(d).to_string())
            )),
            (DATETIME64_MIN_MICROS..=DATETIME64_MAX_MICROS).prop_map(|us| (
                PgType::Timestamp,
                ChType::DateTime64,
                Some(pg_timestamp(us))
            )),
            (0i64..=i64::from(u32::MAX) * 1_000_000 + 999_999).prop_map(|us| (
                PgType::TimestampTz,
                n(ChType::DateTime),
                Some(pg_timestamp(us) + "+00")
            )),
            prop::collection::vec(prop::option::of(any::<i32>()), 0..20).prop_map(|v| {
                let items: Vec<Option<String>> =
                    v.iter().map(|i| i.map(|i| i.to_string())).collect();
                (
                    parr(PgType::Int4),
                    arr(n(ChType::Int32)),
                    Some(pg_array(&items)),
                )
            }),
            prop::collection::vec(prop::option::of(".*"), 0..10).prop_map(|v| {
                (
                    parr(PgType::Text),
                    arr(n(ChType::String)),
                    Some(pg_array(&v)),
                )
            }),
            Just((parr(PgType::Int8), arr(n(ChType::Int64)), None)),
            Just((PgType::Int8, n(ChType::Int64), None)),
        ]
    }

    /// Types to throw arbitrary bytes at.
    fn decode_types() -> Vec<ChType> {
        let mut v = vec![
            ChType::UInt8,
            ChType::Int64,
            dec(9, 2),
            dec(76, 2),
            ChType::String,
            ChType::Uuid,
            ChType::DateTime64,
        ];
        for t in v.clone() {
            v.push(n(t.clone()));
            v.push(lc(n(t.clone())));
            v.push(arr(n(t.clone())));
            v.push(arr(arr(t)));
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn encode_then_value_len_agree((pg, ch, text) in values(), tail in prop::collection::vec(any::<u8>(), 0..8)) {
            let e = ColumnEncoder::new(&pg, &ch);
            prop_assert_eq!(e.check(), Ok(()));
            let mut out = vec![];
            e.encode(text.as_deref().map(str::as_bytes), &mut out)
                .map_err(|err| TestCaseError::fail(format!("{pg:?} {ch:?} {text:?}: {err}")))?;
            let len = out.len();
            prop_assert_eq!(value_len(&ch, &out), Ok(len));
            for cut in 0..len {
                prop_assert_eq!(value_len(&ch, &out[..cut]), Err(DecodeError::Truncated));
            }
            out.extend(tail);
            prop_assert_eq!(value_len(&ch, &out), Ok(len));
        }

        #[test]
        fn value_len_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            for ty in decode_types() {
                if let Ok(len) = value_len(&ty, &bytes) {
                    prop_assert!(len <= bytes.len());
                }
            }
        }

        #[test]
        fn encode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..48)) {
            for (pg, ch) in created_types() {
                let mut out = vec![];
                if ColumnEncoder::new(&pg, &ch).encode(Some(&bytes), &mut out).is_ok() {
                    prop_assert_eq!(value_len(&ch, &out), Ok(out.len()));
                }
            }
        }
    }
}
