//! Brotli (RFC 7932) through the `brotli` crate's low-level streaming API,
//! so that output is bounded per call and the end of the stream is exact.

use brotli::enc::StandardAlloc;
use brotli::{BrotliDecompressStream, BrotliResult, BrotliState};

use super::{corrupt, BodyError, Sink};

pub(super) fn decode(wire: &[u8], sink: &mut Sink, chunk: &mut [u8]) -> Result<(), BodyError> {
    // The decoder takes at most 4 GiB of input per call; no request body is
    // that large, but refuse rather than misbehave.
    if u32::try_from(wire.len()).is_err() {
        return Err(corrupt("brotli: body too large to decode"));
    }
    // `new_strict` is RFC 7932 brotli (window ≤ 16 MiB). `new` would also
    // accept the non-standard large-window variant (window up to 1 GiB),
    // which would let a tiny body make us allocate a 1 GiB ring buffer.
    let mut state = BrotliState::new_strict(
        StandardAlloc::default(),
        StandardAlloc::default(),
        StandardAlloc::default(),
    );
    let mut avail_in = wire.len();
    let mut in_offset = 0usize;
    let mut total_out = 0usize;
    loop {
        let in_before = in_offset;
        let mut avail_out = chunk.len();
        let mut out_offset = 0usize;
        let result = BrotliDecompressStream(
            &mut avail_in,
            &mut in_offset,
            wire,
            &mut avail_out,
            &mut out_offset,
            chunk,
            &mut total_out,
            &mut state,
        );
        let out = chunk
            .get(..out_offset)
            .ok_or_else(|| corrupt("brotli: decoder overran its buffer"))?;
        sink.push(out)?;
        match result {
            BrotliResult::ResultSuccess => {
                return if avail_in > 0 || in_offset < wire.len() {
                    Err(corrupt("trailing data after brotli stream"))
                } else {
                    Ok(())
                };
            }
            BrotliResult::NeedsMoreOutput => {
                if out_offset == 0 && in_offset == in_before {
                    return Err(corrupt("brotli: decoder made no progress"));
                }
            }
            // All of the body was offered: the stream stops before its end.
            BrotliResult::NeedsMoreInput => return Err(corrupt("truncated brotli stream")),
            BrotliResult::ResultFailure => return Err(corrupt("invalid brotli stream")),
        }
    }
}
