//! `Content-Encoding` undone for inspection only.
//!
//! The client always gets the bytes the upstream sent; this module only
//! produces a decoded copy for the watcher to read, and refuses to produce
//! more than the caller's budget, since a few kilobytes of gzip or brotli
//! can expand to gigabytes.

use std::borrow::Cow;
use std::io::Read;

use flate2::{Decompress, FlushDecompress, Status as Flate};

use super::SkipReason;

/// More stacked codings than this is not a real response.
const MAX_LAYERS: usize = 4;

/// Decodes `body` as described by its `Content-Encoding` header value.
///
/// `gzip`/`x-gzip`, `deflate` (zlib, falling back to raw deflate, which some
/// servers send) and `br` are understood, case-insensitively, including
/// stacked codings such as `gzip, br`. `identity` or no header borrows the
/// body. More than `max_decoded` bytes of output, the identity case included,
/// is [`SkipReason::TooLarge`]; a corrupt or truncated stream or an unknown
/// coding is [`SkipReason::Undecodable`].
pub fn decode<'a>(
    content_encoding: Option<&str>,
    body: &'a [u8],
    max_decoded: usize,
) -> Result<Cow<'a, [u8]>, SkipReason> {
    let mut out = Cow::Borrowed(body);
    let Some(header) = content_encoding else {
        return within(out, max_decoded);
    };
    let layers = header
        .split(',')
        .map(str::trim)
        .filter(|c| !(c.is_empty() || c.eq_ignore_ascii_case("identity")));
    if layers.clone().count() > MAX_LAYERS {
        return Err(SkipReason::Undecodable);
    }
    // Codings are listed in the order they were applied; undo the last first.
    for coding in layers.rev() {
        let input: &[u8] = &out;
        let decoded =
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gunzip(input, max_decoded)?
            } else if coding.eq_ignore_ascii_case("deflate") {
                match inflate(input, true, max_decoded) {
                    Err(SkipReason::Undecodable) => inflate(input, false, max_decoded)?,
                    other => other?,
                }
            } else if coding.eq_ignore_ascii_case("br") {
                read_capped(
                    brotli_decompressor::Decompressor::new(input, 4096),
                    input.len(),
                    max_decoded,
                )?
            } else {
                return Err(SkipReason::Undecodable);
            };
        out = Cow::Owned(decoded);
    }
    within(out, max_decoded)
}

fn within(body: Cow<'_, [u8]>, max: usize) -> Result<Cow<'_, [u8]>, SkipReason> {
    if body.len() > max {
        Err(SkipReason::TooLarge)
    } else {
        Ok(body)
    }
}

/// A first guess at the output size: JSON usually compresses 4-10x.
fn initial_capacity(input_len: usize, max: usize) -> usize {
    input_len
        .saturating_mul(6)
        .clamp(256, 64 * 1024)
        .min(max.saturating_add(1))
}

/// gzip through flate2's reader, which checks the trailer's CRC and length,
/// so a truncated body is an error rather than a short read.
fn gunzip(input: &[u8], max: usize) -> Result<Vec<u8>, SkipReason> {
    read_capped(flate2::bufread::GzDecoder::new(input), input.len(), max)
}

/// Reads at most one byte past `max`, so a bomb stops costing at the cap.
fn read_capped(reader: impl Read, input_len: usize, max: usize) -> Result<Vec<u8>, SkipReason> {
    let mut out = Vec::with_capacity(initial_capacity(input_len, max));
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|_| SkipReason::Undecodable)?;
    if out.len() > max {
        return Err(SkipReason::TooLarge);
    }
    Ok(out)
}

/// zlib or raw deflate, driven by hand because flate2's readers end a
/// truncated stream with a short read instead of an error.
fn inflate(input: &[u8], zlib: bool, max: usize) -> Result<Vec<u8>, SkipReason> {
    let mut state = Decompress::new(zlib);
    let mut out = Vec::with_capacity(initial_capacity(input.len(), max));
    loop {
        if out.len() == out.capacity() {
            // Room for one byte past the cap, to tell "exactly max" from more.
            let room = (max + 1)
                .saturating_sub(out.len())
                .min(out.capacity().max(4096));
            if room == 0 {
                return Err(SkipReason::TooLarge);
            }
            out.reserve_exact(room);
        }
        let consumed = usize::try_from(state.total_in()).map_err(|_| SkipReason::Undecodable)?;
        let before = (consumed, out.len());
        let status = state
            // Not `Finish`: miniz_oxide takes a first `Finish` call as a
            // promise that the output fits, and fails the stream if not.
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::None)
            .map_err(|_| SkipReason::Undecodable)?;
        if out.len() > max {
            return Err(SkipReason::TooLarge);
        }
        if status == Flate::StreamEnd {
            return Ok(out);
        }
        let progressed = (state.total_in() as usize, out.len()) != before;
        if !progressed && out.len() < out.capacity() {
            // Output room and no progress: the input ended mid-stream.
            return Err(SkipReason::Undecodable);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use proptest::prelude::*;
    use std::io::Write;

    const JSON: &[u8] =
        br#"{"game_id": "g-1001", "status": "live", "odds": {"moneyline": {"home": 2.1}}}"#;

    /// `{"a":1}` as one uncompressed brotli meta-block (RFC 7932 §9.2):
    /// WBITS=16, a 7-byte MLEN, ISUNCOMPRESSED, the bytes, then an empty
    /// last meta-block.
    const BR_A1: &[u8] = b"\x60\x00\x10{\"a\":1}\x03";

    /// The "quick brown fox" stream from brotli's own test suite: 58 bytes
    /// that expand to 176128 bytes, a small decompression bomb.
    const BR_FOX: [u8; 58] = [
        0x5B, 0xFF, 0xAF, 0x02, 0xC0, 0x22, 0x79, 0x5C, 0xFB, 0x5A, 0x8C, 0x42, 0x3B, 0xF4, 0x25,
        0x55, 0x19, 0x5A, 0x92, 0x99, 0xB1, 0x35, 0xC8, 0x19, 0x9E, 0x9E, 0x0A, 0x7B, 0x4B, 0x90,
        0xB9, 0x3C, 0x98, 0xC8, 0x09, 0x40, 0xF3, 0xE6, 0xD9, 0x4D, 0xE4, 0x6D, 0x65, 0x1B, 0x27,
        0x87, 0x13, 0x5F, 0xA6, 0xE9, 0x30, 0x96, 0x7B, 0x3C, 0x15, 0xD8, 0x53, 0x1C,
    ];
    const FOX_LEN: usize = 176_128;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    const CAP: usize = 1 << 20;

    #[test]
    fn identity_borrows() {
        for header in [None, Some("identity"), Some(""), Some(" Identity ")] {
            let out = decode(header, JSON, CAP).unwrap();
            assert!(matches!(out, Cow::Borrowed(b) if b == JSON), "{header:?}");
        }
        assert_eq!(
            decode(None, JSON, JSON.len() - 1),
            Err(SkipReason::TooLarge)
        );
    }

    #[test]
    fn gzip_round_trips() {
        let body = gzip(JSON);
        for header in ["gzip", "x-gzip", "GZIP", " gzip "] {
            assert_eq!(
                &*decode(Some(header), &body, CAP).unwrap(),
                JSON,
                "{header}"
            );
        }
    }

    #[test]
    fn deflate_round_trips_as_zlib_or_raw() {
        assert_eq!(&*decode(Some("deflate"), &zlib(JSON), CAP).unwrap(), JSON);
        assert_eq!(
            &*decode(Some("deflate"), &raw_deflate(JSON), CAP).unwrap(),
            JSON
        );
    }

    #[test]
    fn br_decodes() {
        assert_eq!(&*decode(Some("br"), BR_A1, CAP).unwrap(), b"{\"a\":1}");
        let fox = decode(Some("br"), &BR_FOX, CAP).unwrap();
        assert_eq!(fox.len(), FOX_LEN);
        assert!(fox.starts_with(b"The quick brown fox jumps over the lazy dog"));
    }

    #[test]
    fn stacked_codings_are_undone_last_first() {
        let body = gzip(&zlib(JSON));
        assert_eq!(&*decode(Some("deflate, gzip"), &body, CAP).unwrap(), JSON);
        assert_eq!(
            decode(Some("gzip, deflate"), &body, CAP),
            Err(SkipReason::Undecodable)
        );
        let many = "gzip,".repeat(MAX_LAYERS + 1);
        assert_eq!(decode(Some(&many), JSON, CAP), Err(SkipReason::Undecodable));
    }

    #[test]
    fn corrupt_truncated_or_unknown_is_undecodable() {
        let gz = gzip(JSON);
        let mut bad_crc = gz.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 0xff;
        let zl = zlib(JSON);
        let raw = raw_deflate(JSON);
        let cases: [(&str, &[u8]); 9] = [
            ("gzip", &gz[..gz.len() - 4]),
            ("gzip", &gz[..gz.len() / 2]),
            ("gzip", &bad_crc),
            ("gzip", JSON),
            ("deflate", &zl[..zl.len() / 2]),
            ("deflate", &raw[..raw.len() / 2]),
            ("br", &BR_FOX[..30]),
            ("br", b"\xff\xff\xff\xff"),
            ("compress", &gz),
        ];
        for (header, body) in cases {
            assert_eq!(
                decode(Some(header), body, CAP),
                Err(SkipReason::Undecodable),
                "{header}"
            );
        }
    }

    #[test]
    fn bombs_stop_at_the_cap() {
        let zeros = vec![0u8; 4 << 20];
        assert_eq!(
            decode(Some("gzip"), &gzip(&zeros), CAP),
            Err(SkipReason::TooLarge)
        );
        assert_eq!(
            decode(Some("deflate"), &zlib(&zeros), CAP),
            Err(SkipReason::TooLarge)
        );
        assert_eq!(
            decode(Some("deflate"), &raw_deflate(&zeros), CAP),
            Err(SkipReason::TooLarge)
        );
        assert_eq!(
            decode(Some("br"), &BR_FOX, 100_000),
            Err(SkipReason::TooLarge)
        );
    }

    #[test]
    fn the_cap_is_inclusive() {
        let n = JSON.len();
        for (header, body) in [
            ("gzip", gzip(JSON)),
            ("deflate", zlib(JSON)),
            ("deflate", raw_deflate(JSON)),
        ] {
            assert_eq!(&*decode(Some(header), &body, n).unwrap(), JSON, "{header}");
            assert_eq!(
                decode(Some(header), &body, n - 1),
                Err(SkipReason::TooLarge),
                "{header}"
            );
        }
        assert_eq!(decode(Some("br"), &BR_FOX, FOX_LEN).unwrap().len(), FOX_LEN);
        assert_eq!(
            decode(Some("br"), &BR_FOX, FOX_LEN - 1),
            Err(SkipReason::TooLarge)
        );
        assert_eq!(decode(Some("gzip"), &gzip(b""), 0).unwrap().len(), 0);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_or_exceed_the_cap(
            body in prop::collection::vec(any::<u8>(), 0..512),
            header in prop::sample::select(vec!["gzip", "deflate", "br", "identity", "zstd"]),
            cap in 0usize..4096,
        ) {
            if let Ok(out) = decode(Some(header), &body, cap) {
                prop_assert!(out.len() <= cap);
            }
        }

        #[test]
        fn compressed_round_trips(data in prop::collection::vec(any::<u8>(), 0..4096)) {
            let cap = data.len();
            for (header, body) in [("gzip", gzip(&data)), ("deflate", zlib(&data)), ("deflate", raw_deflate(&data))] {
                let out = decode(Some(header), &body, cap).unwrap();
                prop_assert_eq!(out.as_ref(), &data[..]);
            }
        }
    }
}
