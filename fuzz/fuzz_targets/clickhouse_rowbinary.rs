//! Fuzzes the ClickHouse destination's byte handling: splitting RowBinary values read back
//! from the server (`value_len`), and encoding PostgreSQL text into RowBinary.
//!
//! Run (from `fuzz/`; needs nightly, or `RUSTC_BOOTSTRAP=1` on stable):
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 cargo fuzz run clickhouse_rowbinary -- -max_total_time=60
//! ```
//!
//! The first byte picks a column type, the second a PostgreSQL type; the rest is both the
//! server's bytes and a value's text. Neither may panic; a value length stays inside the input,
//! and what the encoder writes splits back into exactly one value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgfanout::sink::clickhouse::rowbinary::{value_len, ColumnEncoder};
use pgfanout::sink::clickhouse::types::{target_type, ChType, ServerVersion};
use pgfanout::value::PgType;

fn types() -> Vec<ChType> {
    let mut out = Vec::new();
    for v in [ServerVersion::new(18, 16), ServerVersion::new(24, 3)] {
        for pg in PgType::SCALARS {
            for typmod in [None, Some(((12 << 16) | 2) + 4), Some(((38 << 16) | 10) + 4)] {
                for nullable in [false, true] {
                    out.push(target_type(&pg, typmod, nullable, v));
                    out.push(target_type(&PgType::Array(Box::new(pg.clone())), typmod, nullable, v));
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [t, p, rest @ ..] = data else { return };
    let all = types();
    let ch = &all[usize::from(*t) % all.len()];
    if let Ok(n) = value_len(ch, rest) {
        assert!(n <= rest.len(), "{n} > {}", rest.len());
    }
    let scalars = PgType::SCALARS;
    let pg = if p & 0x80 != 0 {
        PgType::Array(Box::new(scalars[usize::from(p & 0x7f) % scalars.len()].clone()))
    } else {
        scalars[usize::from(*p) % scalars.len()].clone()
    };
    let encoder = ColumnEncoder::new(&pg, ch);
    let mut out = Vec::new();
    if encoder.encode(Some(rest), &mut out).is_ok() {
        assert_eq!(value_len(ch, &out), Ok(out.len()), "{ch:?} from {pg:?}");
    }
    let mut default = Vec::new();
    encoder.encode_default(&mut default);
    assert_eq!(value_len(ch, &default), Ok(default.len()), "default of {ch:?}");
});
