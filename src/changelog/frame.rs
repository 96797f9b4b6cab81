//! Record framing: `[u32 length LE][u32 CRC32C(payload) LE][payload]`.
//!
//! [`decode_frame`] is a pure function over untrusted bytes: it never panics and never reads
//! out of bounds, and it tells "not enough bytes yet" apart from "these bytes are wrong".

/// Bytes before the payload: length and CRC.
pub const HEADER_LEN: usize = 8;

/// What [`decode_frame`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole frame whose CRC matches; `len` is the frame's total size (header + payload).
    Complete { payload: &'a [u8], len: usize },
    /// The buffer ends inside the frame: `need` is the frame's total size if the header was
    /// readable, or [`HEADER_LEN`] if not even the header is there.
    Incomplete { need: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "CRC mismatch: the frame says {stored:#010x}, the {len}-byte payload has {actual:#010x}"
    )]
    Crc {
        stored: u32,
        actual: u32,
        len: usize,
    },
}

/// Decodes the frame at the start of `buf`.
pub fn decode_frame(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    let Some((header, rest)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return Ok(Frame::Incomplete { need: HEADER_LEN });
    };
    let (len_bytes, crc_bytes) = header.split_at(4);
    // Both halves are exactly four bytes; the conversions cannot fail.
    let len = u32::from_le_bytes(len_bytes.try_into().unwrap_or_default()) as usize;
    let stored = u32::from_le_bytes(crc_bytes.try_into().unwrap_or_default());
    let total = HEADER_LEN.saturating_add(len);
    let Some(payload) = rest.get(..len) else {
        return Ok(Frame::Incomplete { need: total });
    };
    let actual = crc32c::crc32c(payload);
    if actual != stored {
        return Err(FrameError::Crc {
            stored,
            actual,
            len,
        });
    }
    Ok(Frame::Complete {
        payload,
        len: total,
    })
}

/// Reads the header of a frame: `(payload length, stored CRC)`.
pub fn decode_header(header: &[u8; HEADER_LEN]) -> (usize, u32) {
    let (l, c) = header.split_at(4);
    (
        u32::from_le_bytes(l.try_into().unwrap_or_default()) as usize,
        u32::from_le_bytes(c.try_into().unwrap_or_default()),
    )
}

/// Appends the frame of `payload` to `out`. The caller checks that the payload fits a u32.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Writes the frame of the payload made of `pieces` (in order, `len` bytes in all) to `out`
/// without gathering it first; returns the bytes written. `pieces` is read twice: once for
/// the CRC, which precedes the payload, and once to write it. The caller checks that the
/// payload fits a u32.
pub fn write_frame<'a, I>(
    pieces: impl Fn() -> I,
    len: usize,
    out: &mut impl std::io::Write,
) -> std::io::Result<u64>
where
    I: Iterator<Item = &'a [u8]>,
{
    let crc = pieces().fold(0, crc32c::crc32c_append);
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc.to_le_bytes());
    out.write_all(&header)?;
    for piece in pieces() {
        out.write_all(piece)?;
    }
    Ok((HEADER_LEN + len) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(payload, &mut out);
        out
    }

    #[test]
    fn round_trip_and_trailing_bytes_are_left_alone() {
        let mut buf = frame(b"hello");
        buf.extend_from_slice(b"next");
        assert_eq!(
            decode_frame(&buf),
            Ok(Frame::Complete {
                payload: b"hello",
                len: 13
            })
        );
        assert_eq!(
            decode_frame(&frame(b"")),
            Ok(Frame::Complete {
                payload: b"",
                len: 8
            })
        );
    }

    #[test]
    fn a_frame_written_in_pieces_is_the_frame_of_their_concatenation() {
        let pieces: [&[u8]; 4] = [b"he", b"", b"llo ", b"world"];
        let mut written = Vec::new();
        let n = write_frame(|| pieces.iter().copied(), 11, &mut written).unwrap();
        assert_eq!(n, written.len() as u64);
        assert_eq!(written, frame(b"hello world"));
    }

    #[test]
    fn every_truncation_is_incomplete_not_an_error() {
        let buf = frame(b"some payload");
        for cut in 0..buf.len() {
            let need = if cut < HEADER_LEN {
                HEADER_LEN
            } else {
                buf.len()
            };
            assert_eq!(
                decode_frame(&buf[..cut]),
                Ok(Frame::Incomplete { need }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn every_flipped_payload_or_crc_bit_is_a_crc_error() {
        let buf = frame(b"payload!");
        for byte in 4..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    matches!(decode_frame(&bad), Err(FrameError::Crc { .. })),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn a_huge_length_is_incomplete_without_overflow() {
        let mut buf = vec![0xff; 4];
        buf.extend_from_slice(&[0; 4]);
        assert_eq!(
            decode_frame(&buf),
            Ok(Frame::Incomplete {
                need: HEADER_LEN + u32::MAX as usize
            })
        );
    }
}
