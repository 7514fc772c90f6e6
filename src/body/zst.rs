//! zstd (RFC 8878) through `zstd::stream::raw::Decoder`, one bounded output
//! chunk per call. Concatenated frames (and skippable frames) are valid
//! zstd and are all decoded; anything else after a frame is trailing data.

use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use super::{corrupt, BodyError, Sink};

/// Largest window accepted: 2^27 = 128 MiB, zstd's own default limit (what
/// `zstd --long` produces). It bounds the decoder's memory whatever a frame
/// header claims; larger frames fail as corrupt ("Frame requires too much
/// memory"). RFC 9659 asks HTTP encoders to stay within 8 MiB anyway.
pub(crate) const WINDOW_LOG_MAX: u32 = 27;

const FRAME_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Skippable frames: magic 0x184D2A5? (little endian), any low nibble.
const SKIPPABLE_TAIL: [u8; 3] = [0x2a, 0x4d, 0x18];

/// What starts a frame. Legacy (pre-1.0) frames are refused even though the
/// library could decode them: nobody sends them over HTTP and they only
/// widen the attack surface.
#[derive(Debug, PartialEq, Eq)]
enum FrameStart {
    Frame,
    /// Could still be a frame, but the body ends first.
    Partial,
    NotAFrame,
}

fn frame_start(b: &[u8]) -> FrameStart {
    let head = &b[..b.len().min(4)];
    let frame = FRAME_MAGIC.starts_with(head);
    let skippable = match head.split_first() {
        None => true,
        Some((first, tail)) => first & 0xf0 == 0x50 && SKIPPABLE_TAIL.starts_with(tail),
    };
    if !(frame || skippable) {
        FrameStart::NotAFrame
    } else if head.len() == 4 {
        FrameStart::Frame
    } else {
        FrameStart::Partial
    }
}

pub(super) fn decode(wire: &[u8], sink: &mut Sink, chunk: &mut [u8]) -> Result<(), BodyError> {
    let mut decoder = Decoder::new().map_err(|_| corrupt("zstd: could not create a decoder"))?;
    decoder
        .set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
        .map_err(|_| corrupt("zstd: could not limit the window size"))?;

    let mut pos = 0usize;
    let mut frames = 0usize;
    let mut at_boundary = true;
    loop {
        let rest = wire.get(pos..).unwrap_or_default();
        if at_boundary {
            match frame_start(rest) {
                _ if rest.is_empty() && frames > 0 => return Ok(()),
                FrameStart::Frame => {}
                FrameStart::Partial => return Err(corrupt("truncated zstd stream")),
                FrameStart::NotAFrame if frames > 0 => {
                    return Err(corrupt("trailing data after zstd stream"))
                }
                FrameStart::NotAFrame => return Err(corrupt("not a zstd stream (bad magic)")),
            }
        }
        let mut input = InBuffer::around(rest);
        let mut output = OutBuffer::around(&mut *chunk);
        let hint = decoder.run(&mut input, &mut output).map_err(|e| {
            // zstd's messages are fixed strings; no client bytes.
            corrupt(format!("zstd: corrupt stream ({e})"))
        })?;
        let consumed = input.pos();
        let produced = output.pos();
        pos = pos.saturating_add(consumed);
        let out = chunk
            .get(..produced)
            .ok_or_else(|| corrupt("zstd: decoder overran its buffer"))?;
        sink.push(out)?;
        if hint == 0 {
            if consumed == 0 && produced == 0 {
                return Err(corrupt("zstd: decoder made no progress"));
            }
            // A frame ended and all of its output was flushed.
            frames += 1;
            at_boundary = true;
        } else {
            at_boundary = false;
            if consumed == 0 && produced == 0 {
                return Err(if pos >= wire.len() {
                    corrupt("truncated zstd stream")
                } else {
                    corrupt("zstd: decoder made no progress")
                });
            }
        }
    }
}
