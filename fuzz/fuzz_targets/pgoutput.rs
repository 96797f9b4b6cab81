//! Fuzzes the replication-stream envelope and the pgoutput decoder.
//!
//! Run (from `fuzz/`; needs nightly, or `RUSTC_BOOTSTRAP=1` on stable):
//!
//! ```text
//! cargo +nightly fuzz run pgoutput -- -max_total_time=60
//! mkdir -p corpus/pgoutput
//! RUSTC_BOOTSTRAP=1 cargo fuzz run pgoutput corpus/pgoutput seeds/pgoutput -- -max_total_time=60
//! ```
//!
//! The input is tried both as a CopyData payload (`'w'` XLogData / `'k'` keepalive; an
//! XLogData's payload is then decoded too) and directly as a pgoutput message, outside and
//! inside a protocol 2 stream block. None may panic, and every error must point inside the
//! input and name what it was decoding.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgfanout::change::{Datum, OldTuple, Tuple};
use pgfanout::source::pgoutput::{
    decode_message, decode_streamed, parse_replication_message, streamed_xid, DecodeError,
    PgOutput, ReplicationMessage,
};

fn check(e: &DecodeError, input: &Bytes) {
    assert!(e.offset <= input.len(), "{e} in {} bytes", input.len());
    let shown = e.to_string();
    assert!(shown.contains(e.message), "{shown}");
    assert!(shown.contains(&format!("at byte {}", e.offset)), "{shown}");
}

fn decode(data: &Bytes) {
    match decode_message(data) {
        Ok(msg) => {
            // Values are zero-copy slices of the input.
            let tuples: Vec<&Tuple> = match &msg {
                PgOutput::Insert { new, .. } => vec![new],
                PgOutput::Update { old, new, .. } => {
                    let mut v = vec![new];
                    v.extend(old.as_ref().map(OldTuple::tuple));
                    v
                }
                PgOutput::Delete { old, .. } => vec![old.tuple()],
                _ => vec![],
            };
            let range = data.as_ptr_range();
            for datum in tuples.into_iter().flat_map(|t| &t.0) {
                if let Datum::Text(b) = datum {
                    assert!(b.is_empty() || range.contains(&b.as_ptr()));
                }
            }
        }
        Err(e) => {
            check(&e, data);
            // Past the tag, errors name the message type ("pgoutput Insert").
            if e.message != "pgoutput" {
                assert!(e.message.starts_with("pgoutput "), "{e}");
            }
        }
    }
}

fn decode_in_block(data: &Bytes) {
    match decode_streamed(data) {
        Ok((xid, _)) => assert_eq!(streamed_xid(data), Ok(xid)),
        Err(e) => check(&e, data),
    }
}

fuzz_target!(|input: &[u8]| {
    let frame = Bytes::copy_from_slice(input);
    match parse_replication_message(&frame) {
        Ok(ReplicationMessage::XLogData { data, .. }) => {
            assert_eq!(data.len() + 25, frame.len());
            decode(&data);
            decode_in_block(&data);
        }
        Ok(ReplicationMessage::PrimaryKeepalive { .. }) => assert_eq!(frame.len(), 18),
        Err(e) => check(&e, &frame),
    }
    decode(&frame);
    decode_in_block(&frame);
});
