use std::io::{Read, Write};

use super::*;

const UNLIMITED: DecodeLimits = DecodeLimits {
    max_decoded: u64::MAX,
    max_ratio: 0,
};

fn limits(max_decoded: u64, max_ratio: u64) -> DecodeLimits {
    DecodeLimits {
        max_decoded,
        max_ratio,
    }
}

/// Deterministic, moderately compressible JSON-ish text of exactly `n` bytes.
fn sample(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 64);
    let mut x: u32 = 0x1234_5678;
    let mut i = 0u32;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(
            format!("{{\"role\":\"user\",\"content\":\"token {i} {x:08x}\"}},").as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli_from(mut reader: impl Read, quality: i32) -> Vec<u8> {
    let params = brotli::enc::BrotliEncoderParams {
        quality,
        lgwin: 22,
        ..Default::default()
    };
    let mut out = Vec::new();
    brotli::BrotliCompress(&mut reader, &mut out, &params).unwrap();
    out
}

fn br(data: &[u8]) -> Vec<u8> {
    brotli_from(data, 9)
}

fn zstd_enc(data: &[u8]) -> Vec<u8> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    e.include_checksum(true).unwrap();
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn encode(coding: Coding, data: &[u8]) -> Vec<u8> {
    match coding {
        Coding::Identity => data.to_vec(),
        Coding::Gzip => gzip(data),
        Coding::Deflate => zlib(data),
        Coding::Brotli => br(data),
        Coding::Zstd => zstd_enc(data),
    }
}

const ALL: [Coding; 5] = [
    Coding::Identity,
    Coding::Gzip,
    Coding::Deflate,
    Coding::Brotli,
    Coding::Zstd,
];
const COMPRESSED: [Coding; 4] = [Coding::Gzip, Coding::Deflate, Coding::Brotli, Coding::Zstd];

fn assert_corrupt(r: Result<Vec<u8>, BodyError>, needle: &str, ctx: &str) {
    match r {
        Err(BodyError::Corrupt(msg)) => {
            assert!(
                msg.contains(needle),
                "{ctx}: expected Corrupt containing {needle:?}, got {msg:?}"
            )
        }
        other => panic!("{ctx}: expected Corrupt({needle:?}), got {other:?}"),
    }
}

// ---- header parsing -------------------------------------------------------

#[test]
fn parses_content_encoding_headers() {
    assert_eq!(parse_content_encoding(""), Ok(vec![]));
    assert_eq!(parse_content_encoding("   "), Ok(vec![]));
    assert_eq!(parse_content_encoding("GZIP"), Ok(vec![Coding::Gzip]));
    assert_eq!(parse_content_encoding("x-gzip"), Ok(vec![Coding::Gzip]));
    assert_eq!(
        parse_content_encoding(" br , identity"),
        Ok(vec![Coding::Brotli])
    );
    assert_eq!(parse_content_encoding("identity"), Ok(vec![]));
    assert_eq!(
        parse_content_encoding("gzip, br"),
        Ok(vec![Coding::Gzip, Coding::Brotli])
    );
    assert_eq!(
        parse_content_encoding("Deflate,\tZSTD,,"),
        Ok(vec![Coding::Deflate, Coding::Zstd])
    );
    assert_eq!(
        parse_content_encoding("compress"),
        Err(BodyError::UnsupportedEncoding("compress".into()))
    );
    assert_eq!(
        parse_content_encoding("gzip, X-Compress"),
        Err(BodyError::UnsupportedEncoding("x-compress".into()))
    );
    assert_eq!(
        parse_content_encoding("gzip;q=1"),
        Err(BodyError::UnsupportedEncoding("gzip;q=1".into()))
    );
}

#[test]
fn unsupported_name_is_shortened_and_sanitized() {
    let long = format!("evil\u{7}{}", "a".repeat(500));
    let Err(BodyError::UnsupportedEncoding(name)) = parse_content_encoding(&long) else {
        panic!("expected unsupported");
    };
    assert!(name.starts_with("evil?aaa"), "{name}");
    assert!(name.len() <= MAX_NAME_ECHO + 3, "{name}");
}

#[test]
fn too_many_stacked_codings_are_unsupported() {
    assert_eq!(
        parse_content_encoding("gzip, gzip, gzip, gzip").map(|v| v.len()),
        Ok(4)
    );
    let err = parse_content_encoding("gzip, gzip, gzip, gzip, gzip").unwrap_err();
    assert_eq!(err.status(), 415);
    let err = decode(&[Coding::Gzip; 5], b"", &UNLIMITED).unwrap_err();
    assert_eq!(err.code(), "unsupported_encoding");
}

#[test]
fn labels_statuses_codes_and_messages() {
    let labels: Vec<_> = ALL.iter().map(|c| c.label()).collect();
    assert_eq!(labels, ["identity", "gzip", "deflate", "br", "zstd"]);
    for c in ALL {
        assert_eq!(
            parse_content_encoding(c.label()).unwrap_or_default().len(),
            usize::from(c != Coding::Identity)
        );
    }
    let cases = [
        (
            BodyError::UnsupportedEncoding("compress".into()),
            415,
            "unsupported_encoding",
            "compress",
        ),
        (
            BodyError::TooLarge { limit: 10 },
            413,
            "body_too_large",
            "10 bytes",
        ),
        (
            BodyError::RatioExceeded { limit: 100 },
            413,
            "decompression_ratio",
            "100x",
        ),
        (
            BodyError::Corrupt("truncated gzip stream".into()),
            400,
            "bad_encoding",
            "truncated gzip",
        ),
    ];
    for (err, status, code, text) in cases {
        assert_eq!(err.status(), status);
        assert_eq!(err.code(), code);
        assert!(err.to_string().contains(text), "{err}");
    }
}

// ---- round trips ----------------------------------------------------------

#[test]
fn round_trips_every_coding() {
    for size in [0usize, 1, 1000, 300_000] {
        let data = sample(size);
        for coding in ALL {
            let wire = encode(coding, &data);
            let got = decode(&[coding], &wire, &UNLIMITED)
                .unwrap_or_else(|e| panic!("{coding} size {size}: {e}"));
            assert!(got == data, "{coding} size {size}: mismatch");
        }
    }
}

#[test]
fn identity_passes_through() {
    let data = sample(5000);
    assert_eq!(decode(&[], &data, &UNLIMITED).unwrap(), data);
    assert_eq!(
        decode(&[Coding::Identity], &data, &UNLIMITED).unwrap(),
        data
    );
    assert_eq!(
        decode(&[], &data, &limits(4999, 0)),
        Err(BodyError::TooLarge { limit: 4999 })
    );
}

#[test]
fn stacked_gzip_then_br_round_trips() {
    let data = sample(200_000);
    // "Content-Encoding: gzip, br": gzip was applied first, then br.
    let wire = br(&gzip(&data));
    let codings = parse_content_encoding("gzip, br").unwrap();
    assert_eq!(decode(&codings, &wire, &UNLIMITED).unwrap(), data);
    // Undoing them in the wrong order fails cleanly.
    assert!(matches!(
        decode(&[Coding::Brotli, Coding::Gzip], &wire, &UNLIMITED),
        Err(BodyError::Corrupt(_))
    ));
    // identity entries in the list are ignored.
    let with_identity = [Coding::Gzip, Coding::Identity, Coding::Brotli];
    assert_eq!(decode(&with_identity, &wire, &UNLIMITED).unwrap(), data);
}

#[test]
fn stacked_ratio_is_measured_against_the_wire() {
    let data = vec![b' '; 2 << 20];
    let wire = zstd_enc(&gzip(&data));
    let ratio = (data.len() / wire.len()) as u64;
    let codings = [Coding::Gzip, Coding::Zstd];
    assert_eq!(
        decode(&codings, &wire, &limits(u64::MAX, ratio + 1)).unwrap(),
        data
    );
    assert_eq!(
        decode(&codings, &wire, &limits(u64::MAX, ratio - 1)),
        Err(BodyError::RatioExceeded { limit: ratio - 1 })
    );
}

#[test]
fn multi_member_gzip_and_concatenated_zstd_frames() {
    let (a, b) = (sample(70_000), b"second part".to_vec());
    let whole = [a.clone(), b.clone()].concat();

    let wire = [gzip(&a), gzip(&b)].concat();
    assert_eq!(decode(&[Coding::Gzip], &wire, &UNLIMITED).unwrap(), whole);

    let wire = [zstd_enc(&a), zstd_enc(&b)].concat();
    assert_eq!(decode(&[Coding::Zstd], &wire, &UNLIMITED).unwrap(), whole);

    // A skippable frame between two frames is fine too.
    let skippable = [0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3];
    let wire = [zstd_enc(&a), skippable.to_vec(), zstd_enc(&b)].concat();
    assert_eq!(decode(&[Coding::Zstd], &wire, &UNLIMITED).unwrap(), whole);
}

#[test]
fn gzip_header_fields_are_skipped_and_checked() {
    let data = sample(1000);
    let wire = flate2::GzBuilder::new()
        .filename("prompt.json")
        .comment("a comment")
        .extra(vec![1, 2, 3, 4])
        .write(Vec::new(), flate2::Compression::fast());
    let mut wire = wire;
    wire.write_all(&data).unwrap();
    let wire = wire.finish().unwrap();
    assert_eq!(decode(&[Coding::Gzip], &wire, &UNLIMITED).unwrap(), data);

    // Hand-built header with FHCRC.
    let body = raw_deflate(&data);
    let mut hdr = vec![0x1f, 0x8b, 8, FHCRC_FLAG, 0, 0, 0, 0, 0, 255];
    let mut crc = flate2::Crc::new();
    crc.update(&hdr);
    let hcrc = (crc.sum() & 0xffff) as u16;
    let mut crc = flate2::Crc::new();
    crc.update(&data);
    let trailer = [crc.sum().to_le_bytes(), (data.len() as u32).to_le_bytes()].concat();
    hdr.extend_from_slice(&hcrc.to_le_bytes());
    let wire = [hdr.clone(), body.clone(), trailer.clone()].concat();
    assert_eq!(decode(&[Coding::Gzip], &wire, &UNLIMITED).unwrap(), data);
    let mut bad = hdr.clone();
    bad[10] ^= 1;
    let wire = [bad, body.clone(), trailer.clone()].concat();
    assert_corrupt(
        decode(&[Coding::Gzip], &wire, &UNLIMITED),
        "header CRC",
        "hcrc",
    );

    // Wrong CRC / length in the trailer.
    let good = gzip(&data);
    let n = good.len();
    let mut bad = good.clone();
    bad[n - 8] ^= 1;
    assert_corrupt(
        decode(&[Coding::Gzip], &bad, &UNLIMITED),
        "CRC mismatch",
        "crc",
    );
    let mut bad = good.clone();
    bad[n - 1] ^= 1;
    assert_corrupt(
        decode(&[Coding::Gzip], &bad, &UNLIMITED),
        "length mismatch",
        "isize",
    );
    // Reserved flags, bad method, bad magic.
    let mut bad = good.clone();
    bad[3] = 0x80;
    assert_corrupt(
        decode(&[Coding::Gzip], &bad, &UNLIMITED),
        "reserved",
        "flags",
    );
    let mut bad = good.clone();
    bad[2] = 7;
    assert_corrupt(
        decode(&[Coding::Gzip], &bad, &UNLIMITED),
        "method",
        "method",
    );
    assert_corrupt(
        decode(&[Coding::Gzip], &zlib(&data), &UNLIMITED),
        "not a gzip",
        "magic",
    );
}
const FHCRC_FLAG: u8 = 0x02;

#[test]
fn deflate_accepts_zlib_and_falls_back_to_raw() {
    let data = sample(100_000);
    assert_eq!(
        decode(&[Coding::Deflate], &zlib(&data), &UNLIMITED).unwrap(),
        data
    );
    assert_eq!(
        decode(&[Coding::Deflate], &raw_deflate(&data), &UNLIMITED).unwrap(),
        data
    );
    // zlib with a wrong Adler-32 is corrupt, not silently accepted.
    let mut bad = zlib(&data);
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert_corrupt(
        decode(&[Coding::Deflate], &bad, &UNLIMITED),
        "deflate",
        "adler",
    );
    // A zlib header asking for a preset dictionary.
    let hdr: u16 = (0x78 << 8) | 0x20;
    let flg = 0x20 + ((31 - hdr % 31) % 31) as u8;
    let wire = [0x78, flg, 0, 0, 0, 1, 1, 2, 3];
    assert_corrupt(
        decode(&[Coding::Deflate], &wire, &UNLIMITED),
        "dictionar",
        "fdict",
    );
}

// ---- limits ---------------------------------------------------------------

#[test]
fn exact_limit_passes_one_more_byte_fails() {
    for size in [1000usize, 200_000, 1 << 20] {
        let data = sample(size);
        for coding in ALL {
            let wire = encode(coding, &data);
            let n = size as u64;
            assert_eq!(
                decode(&[coding], &wire, &limits(n, 1000)).as_deref(),
                Ok(&data[..]),
                "{coding} exact {size}"
            );
            assert_eq!(
                decode(&[coding], &wire, &limits(n - 1, 1000)),
                Err(BodyError::TooLarge { limit: n - 1 }),
                "{coding} one over {size}"
            );
        }
    }
}

#[test]
fn zero_limit_allows_only_empty_bodies() {
    for coding in ALL {
        assert_eq!(
            decode(&[coding], &encode(coding, b""), &limits(0, 1)),
            Ok(vec![])
        );
        assert_eq!(
            decode(&[coding], &encode(coding, b"x"), &limits(0, 1)),
            Err(BodyError::TooLarge { limit: 0 })
        );
    }
}

#[test]
fn ratio_floor_lets_small_compressible_bodies_through() {
    // 60 KiB of whitespace-padded JSON compresses ~1000x but stays under
    // the 64 KiB floor.
    let mut data = b"{\"prompt\":\"".to_vec();
    data.resize(60 * 1024 - 2, b' ');
    data.extend_from_slice(b"\"}");
    for coding in COMPRESSED {
        let wire = encode(coding, &data);
        assert!(wire.len() * 100 < data.len(), "{coding}: {}", wire.len());
        assert_eq!(
            decode(&[coding], &wire, &limits(1 << 20, 10)).unwrap(),
            data
        );
    }
    // Just above the floor the ratio applies.
    let data = vec![b' '; RATIO_FLOOR as usize + CHUNK];
    for coding in COMPRESSED {
        let wire = encode(coding, &data);
        assert_eq!(
            decode(&[coding], &wire, &limits(1 << 20, 10)),
            Err(BodyError::RatioExceeded { limit: 10 }),
            "{coding}"
        );
        // ...and a generous ratio lets it through.
        assert_eq!(decode(&[coding], &wire, &limits(1 << 20, 0)).unwrap(), data);
    }
}

// ---- bombs ----------------------------------------------------------------

const BOMB: u64 = 256 << 20;

fn check_bomb(coding: Coding, wire: &[u8]) {
    // Size cap only.
    let max = 1 << 20;
    let (r, stats) = decode_with_stats(&[coding], wire, &limits(max, 0));
    assert_eq!(r, Err(BodyError::TooLarge { limit: max }), "{coding}");
    assert!(
        stats.max_layer_output <= max + CHUNK as u64,
        "{coding}: produced {}",
        stats.max_layer_output
    );
    // Ratio cap trips first with the usual settings.
    let (r, stats) = decode_with_stats(&[coding], wire, &limits(16 << 20, 100));
    assert_eq!(r, Err(BodyError::RatioExceeded { limit: 100 }), "{coding}");
    let ratio_bound = (100 * wire.len() as u64).max(RATIO_FLOOR) + CHUNK as u64;
    assert!(
        stats.max_layer_output <= ratio_bound,
        "{coding}: produced {}",
        stats.max_layer_output
    );
}

/// 256 MiB of zeros through the brotli encoder, streamed from
/// `io::repeat` so the test never holds the plain text.
fn brotli_bomb(quality: i32) -> Vec<u8> {
    let wire = brotli_from(std::io::repeat(0).take(BOMB), quality);
    assert!(wire.len() < 1024, "brotli bomb is {} bytes", wire.len());
    wire
}

#[test]
fn brotli_bomb_is_refused_early() {
    // Quality 5 gives a bomb about as small as quality 11 (405 vs 421 bytes
    // for 256 MiB) in ~3 s of a debug build instead of ~60 s; the
    // quality-11 bomb itself is checked below, from a fixture.
    check_bomb(Coding::Brotli, &brotli_bomb(5));
}

/// The quality-11 bomb (421 bytes for 256 MiB of zeros), made once and kept
/// as a fixture: encoding it takes ~60 s in a debug build.
#[test]
fn brotli_quality_11_bomb_is_refused_early() {
    check_bomb(
        Coding::Brotli,
        include_bytes!("../../tests/fixtures/zeros-256MiB.br"),
    );
}

#[test]
fn zstd_bomb_is_refused_early() {
    let mut wire = Vec::new();
    zstd::stream::copy_encode(std::io::repeat(0).take(BOMB), &mut wire, 19).unwrap();
    assert!(wire.len() < 64 * 1024, "zstd bomb is {} bytes", wire.len());
    check_bomb(Coding::Zstd, &wire);
}

#[test]
fn gzip_and_deflate_bombs_are_refused_early() {
    // Deflate tops out near 1030:1, so 64 MiB of zeros is ~64 KiB of gzip.
    let n = 64 << 20;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::copy(&mut std::io::repeat(0).take(n), &mut e).unwrap();
    let wire = e.finish().unwrap();
    assert!(wire.len() < 128 * 1024, "gzip bomb is {} bytes", wire.len());
    check_bomb(Coding::Gzip, &wire);

    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::copy(&mut std::io::repeat(0).take(n), &mut e).unwrap();
    check_bomb(Coding::Deflate, &e.finish().unwrap());
}

#[test]
fn stacked_bomb_is_bounded_per_layer() {
    // br(gzip(64 MiB of zeros)): the outer layer is small, the inner one
    // explodes; both are bounded.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::copy(&mut std::io::repeat(0).take(64 << 20), &mut e).unwrap();
    let wire = br(&e.finish().unwrap());
    let max = 1 << 20;
    let (r, stats) = decode_with_stats(&[Coding::Gzip, Coding::Brotli], &wire, &limits(max, 0));
    assert_eq!(r, Err(BodyError::TooLarge { limit: max }));
    assert!(stats.max_layer_output <= max + CHUNK as u64);
}

// ---- corrupt input --------------------------------------------------------

#[test]
fn truncated_bodies_are_corrupt() {
    let data = sample(100_000);
    for coding in COMPRESSED {
        let wire = encode(coding, &data);
        for cut in [0, 1, 5, wire.len() / 2, wire.len() - 1] {
            let r = decode(&[coding], &wire[..cut], &UNLIMITED);
            assert!(
                matches!(&r, Err(BodyError::Corrupt(m)) if m.contains("truncated")),
                "{coding} cut at {cut}: {r:?}"
            );
        }
    }
    let wire = raw_deflate(&data);
    assert_corrupt(
        decode(&[Coding::Deflate], &wire[..wire.len() / 2], &UNLIMITED),
        "truncated deflate",
        "raw deflate",
    );
}

#[test]
fn trailing_garbage_is_corrupt() {
    let data = sample(10_000);
    for coding in COMPRESSED {
        let wire = encode(coding, &data);
        for junk in [
            &b"x"[..],
            b"\0",
            b"garbage after the stream",
            b"\0\0\0\0\0\0\0\0",
        ] {
            let wire = [wire.clone(), junk.to_vec()].concat();
            let r = decode(&[coding], &wire, &UNLIMITED);
            assert!(
                matches!(&r, Err(BodyError::Corrupt(m)) if m.contains("trailing") && m.contains(if coding == Coding::Brotli { "brotli" } else { coding.label() })),
                "{coding} + {junk:?}: {r:?}"
            );
        }
    }
    let wire = [raw_deflate(&data), b"junk".to_vec()].concat();
    assert_corrupt(
        decode(&[Coding::Deflate], &wire, &UNLIMITED),
        "trailing",
        "raw",
    );
    // A cut-off second gzip member is truncated, not trailing.
    let wire = [gzip(&data), vec![0x1f]].concat();
    assert_corrupt(
        decode(&[Coding::Gzip], &wire, &UNLIMITED),
        "truncated",
        "gz member",
    );
}

#[test]
fn corrupt_bodies_are_corrupt() {
    let data = sample(100_000);
    let junk = b"this is definitely not a compressed body, just text".repeat(20);
    for coding in COMPRESSED {
        let r = decode(&[coding], &junk, &UNLIMITED);
        assert!(
            matches!(r, Err(BodyError::Corrupt(_))),
            "{coding} junk: {r:?}"
        );
        // Flip bytes through the middle of a valid stream: every coding
        // here carries a checksum, so this never decodes "successfully".
        let wire = encode(coding, &data);
        for at in [wire.len() / 3, wire.len() / 2] {
            let mut bad = wire.clone();
            bad[at] ^= 0x55;
            bad[at + 1] ^= 0xaa;
            let r = decode(&[coding], &bad, &UNLIMITED);
            if coding == Coding::Brotli {
                // Brotli has no checksum: a flip may decode to other bytes,
                // but never to the original and never panics.
                assert_ne!(r.as_deref().ok(), Some(&data[..]), "{coding} flip at {at}");
            } else {
                assert!(
                    matches!(r, Err(BodyError::Corrupt(_))),
                    "{coding} flip at {at}: {r:?}"
                );
            }
        }
    }
    // Legacy zstd frames are refused.
    let legacy = [0x27, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0];
    assert_corrupt(
        decode(&[Coding::Zstd], &legacy, &UNLIMITED),
        "not a zstd",
        "legacy",
    );
    // A frame asking for a window over the cap (2^31 bytes): header
    // descriptor 0x00 (no FCS, not single-segment), window byte exponent 21.
    let big_window = [0x28, 0xb5, 0x2f, 0xfd, 0x00, (31 - 10) << 3, 0x01, 0, 0];
    assert!(matches!(
        decode(&[Coding::Zstd], &big_window, &UNLIMITED),
        Err(BodyError::Corrupt(_))
    ));
}

#[test]
fn corrupt_messages_never_echo_client_bytes() {
    let marker = b"SECRET-CLIENT-BYTES";
    for coding in COMPRESSED {
        let wire = [encode(coding, b"hello"), marker.to_vec()].concat();
        for w in [&wire[..], &marker[..]] {
            if let Err(e) = decode(&[coding], w, &UNLIMITED) {
                assert!(!e.to_string().contains("SECRET"), "{coding}: {e}");
            }
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 7;
        x ^= x >> 9;
        x
    };
    let seeds: Vec<Vec<u8>> = COMPRESSED
        .iter()
        .map(|&c| encode(c, &sample(3000)))
        .collect();
    let lim = limits(1 << 20, 100);
    for round in 0..3000 {
        let coding = COMPRESSED[round % 4];
        let mut wire = seeds[round % 4].clone();
        // Mutate a valid stream, or use pure noise.
        if round % 5 == 0 {
            let len = (next() % 200) as usize;
            wire = (0..len).map(|_| next() as u8).collect();
        } else {
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % wire.len();
                wire[at] = next() as u8;
            }
            wire.truncate(wire.len() - (next() % 3) as usize);
        }
        if let Ok(out) = decode(&[coding], &wire, &lim) {
            assert!(out.len() <= 1 << 20);
        }
    }
}
