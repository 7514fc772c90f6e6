//! Fuzz `ballast::body::decode`: the first byte picks the codings, the rest
//! is the wire body. Decoding must never panic, never return more than
//! `max_decoded` bytes, and never return a body over the ratio cap.
//!
//! Selector byte: bits 0-2 pick the last-applied coding and bits 3-5 the
//! first-applied one (each `% 5` over identity, gzip, deflate, br, zstd);
//! bit 6 set means both (stacked), clear means just the first.
#![no_main]

use ballast::body::{decode, BodyError, Coding, DecodeLimits, RATIO_FLOOR};
use libfuzzer_sys::fuzz_target;

const TABLE: [Coding; 5] = [
    Coding::Identity,
    Coding::Gzip,
    Coding::Deflate,
    Coding::Brotli,
    Coding::Zstd,
];

const LIMITS: DecodeLimits = DecodeLimits {
    max_decoded: 1 << 20,
    max_ratio: 100,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, wire)) = data.split_first() else {
        return;
    };
    let last = TABLE[usize::from(selector & 0x07) % TABLE.len()];
    let first = TABLE[usize::from((selector >> 3) & 0x07) % TABLE.len()];
    let codings: &[Coding] = if selector & 0x40 != 0 {
        &[first, last]
    } else {
        &[last]
    };

    match decode(codings, wire, &LIMITS) {
        Ok(body) => {
            let n = body.len() as u64;
            assert!(n <= LIMITS.max_decoded, "decoded {n} bytes");
            assert!(
                n <= RATIO_FLOOR || n <= LIMITS.max_ratio * wire.len() as u64,
                "decoded {n} bytes from {}",
                wire.len()
            );
            if codings.iter().all(|&c| c == Coding::Identity) {
                assert_eq!(body, wire);
            }
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 413 | 415));
            let msg = e.to_string();
            assert!(!msg.is_empty());
            if let BodyError::Corrupt(m) = &e {
                assert!(m.len() < 200, "long error message: {m}");
            }
        }
    }
});
