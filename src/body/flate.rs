//! gzip (RFC 1952, multi-member) and HTTP `deflate` (zlib, RFC 1950, with a
//! raw-deflate fallback) on top of flate2's low-level [`Decompress`].
//!
//! The gzip framing is parsed here rather than by flate2's readers so that
//! truncation, trailing garbage and member boundaries are seen exactly: the
//! `read` adapters report a truncated deflate stream as a clean EOF.

use flate2::{Crc, Decompress, FlushDecompress, Status};

use super::{corrupt, BodyError, Sink};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;

/// Inflate one deflate stream (zlib-wrapped when `zlib`) from the start of
/// `input`, pushing the output to `sink` (and `crc`). Returns how many input
/// bytes the stream used, including the zlib trailer.
fn inflate(
    input: &[u8],
    zlib: bool,
    what: &str,
    sink: &mut Sink,
    chunk: &mut [u8],
    mut crc: Option<&mut Crc>,
) -> Result<usize, BodyError> {
    let mut d = Decompress::new(zlib);
    let mut pos = 0usize;
    loop {
        let rest = input.get(pos..).unwrap_or_default();
        let (in_before, out_before) = (d.total_in(), d.total_out());
        let status = d
            .decompress(rest, chunk, FlushDecompress::None)
            .map_err(|e| {
                if e.needs_dictionary().is_some() {
                    corrupt(format!("{what}: preset dictionaries are not supported"))
                } else {
                    let why = e.message().unwrap_or("invalid data");
                    corrupt(format!("{what}: corrupt stream ({why})"))
                }
            })?;
        let consumed = usize::try_from(d.total_in() - in_before).unwrap_or(usize::MAX);
        let produced = usize::try_from(d.total_out() - out_before).unwrap_or(usize::MAX);
        let out = chunk
            .get(..produced)
            .ok_or_else(|| corrupt(format!("{what}: decoder overran its buffer")))?;
        pos = pos.saturating_add(consumed);
        if let Some(crc) = crc.as_deref_mut() {
            crc.update(out);
        }
        sink.push(out)?;
        match status {
            Status::StreamEnd => return Ok(pos.min(input.len())),
            Status::Ok | Status::BufError => {
                if consumed == 0 && produced == 0 {
                    return Err(if pos >= input.len() {
                        corrupt(format!("truncated {what} stream"))
                    } else {
                        corrupt(format!("{what}: decoder made no progress"))
                    });
                }
            }
        }
    }
}

/// Whether `b` starts with a valid zlib header: deflate method, window of at
/// most 32 KiB, and the FCHECK multiple-of-31 rule.
fn is_zlib_header(b: &[u8]) -> bool {
    match b {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && ((u16::from(*cmf) << 8) | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

/// HTTP `deflate`: the zlib format (RFC 9110 §8.4.1.2 → RFC 1950). Some
/// clients send a raw deflate stream (RFC 1951) instead, as old browsers
/// did; when the first two bytes are not a valid zlib header we decode the
/// body as raw deflate (which has no checksum) rather than refuse it.
pub(super) fn inflate_http_deflate(
    wire: &[u8],
    sink: &mut Sink,
    chunk: &mut [u8],
) -> Result<(), BodyError> {
    let zlib = is_zlib_header(wire);
    let used = inflate(wire, zlib, "deflate", sink, chunk, None)?;
    if used < wire.len() {
        return Err(corrupt("trailing data after deflate stream"));
    }
    Ok(())
}

/// gzip: one or more members back to back. Anything after a member that is
/// not the start of another member is trailing garbage.
pub(super) fn gunzip(wire: &[u8], sink: &mut Sink, chunk: &mut [u8]) -> Result<(), BodyError> {
    let mut pos = 0usize;
    let mut members = 0usize;
    loop {
        let rest = wire.get(pos..).unwrap_or_default();
        if members > 0 {
            if rest.is_empty() {
                return Ok(());
            }
            // A lone 0x1f could be a cut-off next member: let the header
            // parser call it truncated.
            let prefix = rest.len().min(GZIP_MAGIC.len());
            if rest.get(..prefix) != GZIP_MAGIC.get(..prefix) {
                return Err(corrupt("trailing data after gzip stream"));
            }
        }
        let header_len = gzip_header_len(rest)?;
        let body = rest.get(header_len..).unwrap_or_default();
        let mut crc = Crc::new();
        let used = inflate(body, false, "gzip", sink, chunk, Some(&mut crc))?;
        let trailer = body
            .get(used..)
            .and_then(|t| t.get(..8))
            .ok_or_else(|| corrupt("truncated gzip stream (missing trailer)"))?;
        let (want_crc, want_len) = match trailer {
            [c0, c1, c2, c3, l0, l1, l2, l3] => (
                u32::from_le_bytes([*c0, *c1, *c2, *c3]),
                u32::from_le_bytes([*l0, *l1, *l2, *l3]),
            ),
            _ => return Err(corrupt("truncated gzip stream (missing trailer)")),
        };
        if crc.sum() != want_crc {
            return Err(corrupt("gzip: CRC mismatch"));
        }
        if crc.amount() != want_len {
            return Err(corrupt("gzip: length mismatch"));
        }
        pos = pos
            .saturating_add(header_len)
            .saturating_add(used)
            .saturating_add(8);
        members += 1;
    }
}

/// Length of the gzip member header at the start of `b`.
fn gzip_header_len(b: &[u8]) -> Result<usize, BodyError> {
    let truncated = || corrupt("truncated gzip header");
    let magic_len = b.len().min(GZIP_MAGIC.len());
    if b.get(..magic_len) != GZIP_MAGIC.get(..magic_len) {
        return Err(corrupt("not a gzip stream (bad magic)"));
    }
    let fixed = b.get(..10).ok_or_else(truncated)?;
    if fixed.get(2) != Some(&8) {
        return Err(corrupt("gzip: unsupported compression method"));
    }
    let flags = fixed.get(3).copied().unwrap_or(0);
    if flags & FRESERVED != 0 {
        return Err(corrupt("gzip: reserved header flags set"));
    }
    let mut pos = 10usize;
    if flags & FEXTRA != 0 {
        let xlen = match b.get(pos..pos + 2) {
            Some([lo, hi]) => usize::from(u16::from_le_bytes([*lo, *hi])),
            _ => return Err(truncated()),
        };
        pos = pos + 2 + xlen;
        if pos > b.len() {
            return Err(truncated());
        }
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let field = b.get(pos..).unwrap_or_default();
            let nul = field.iter().position(|&c| c == 0).ok_or_else(truncated)?;
            pos += nul + 1;
        }
    }
    if flags & FHCRC != 0 {
        let stored = match b.get(pos..pos + 2) {
            Some([lo, hi]) => u16::from_le_bytes([*lo, *hi]),
            _ => return Err(truncated()),
        };
        let mut crc = Crc::new();
        crc.update(b.get(..pos).unwrap_or_default());
        if (crc.sum() & 0xffff) as u16 != stored {
            return Err(corrupt("gzip: header CRC mismatch"));
        }
        pos += 2;
    }
    Ok(pos)
}
