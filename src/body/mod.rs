//! Request-body decoding with decompression-bomb limits.
//!
//! Clients may compress large prompts (`Content-Encoding: br`, `gzip`,
//! `deflate`, `zstd`); OpenAI-compatible backends do not accept compressed
//! bodies, so the gateway buffers the wire body and decodes it here before
//! forwarding. This module is pure: no sockets, no async, no global state.
//!
//! Every decoder runs *streaming* into a fixed [`CHUNK`]-sized output buffer,
//! and each chunk is checked against both caps before it is kept, so a tiny
//! bomb is refused after producing at most `max_decoded + CHUNK` bytes. The
//! output vector grows with what was actually decoded (never with what a
//! header claims) and its growth is capped at the limit.
//!
//! Errors map to HTTP statuses with [`BodyError::status`]: an unknown coding is
//! 415, an over-size or over-ratio body 413, and a corrupt, truncated or
//! trailing-garbage body 400. Error messages name the coding and never echo
//! client bytes (an unsupported coding name is shortened and sanitized).

use std::borrow::Cow;
use std::fmt;

mod br;
mod flate;
mod zst;

#[cfg(test)]
mod tests;

/// Output is produced (and checked against the caps) this many bytes at a
/// time.
pub const CHUNK: usize = 64 * 1024;

/// The ratio cap only applies once the decoded size exceeds this many bytes,
/// so small, highly compressible JSON (a few hundred bytes of gzip that
/// expand to 60 KiB of whitespace) is never refused for its ratio.
pub const RATIO_FLOOR: u64 = 64 * 1024;

/// At most this many non-identity codings may be stacked in one body. Real
/// clients send one; each extra layer multiplies the CPU a request can cost,
/// so longer chains are refused as unsupported (415).
pub const MAX_STACKED_CODINGS: usize = 4;

/// Longest unsupported coding name kept in [`BodyError::UnsupportedEncoding`].
const MAX_NAME_ECHO: usize = 32;

/// Caps applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest decoded body accepted, in bytes: exactly `max_decoded` bytes
    /// pass, one more is [`BodyError::TooLarge`]. Also applies to identity
    /// bodies, and (with a small allowance for framing overhead) to the
    /// intermediate result of each inner layer of a stacked encoding.
    pub max_decoded: u64,
    /// Largest accepted expansion: a body is refused with
    /// [`BodyError::RatioExceeded`] when `decoded > max_ratio * wire_len`,
    /// but only once `decoded` exceeds [`RATIO_FLOOR`] (64 KiB), so small,
    /// highly compressible bodies always pass. For stacked codings the ratio
    /// is measured against the original wire length (the total expansion);
    /// inner layers are held to the same bound. `0` disables the ratio check.
    pub max_ratio: u64,
}

/// Content codings, in the order they were applied (header order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    /// The coding's token as it appears in `Content-Encoding`.
    pub fn label(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        }
    }

    fn from_token(token: &str) -> Option<Coding> {
        const TOKENS: [(&str, Coding); 6] = [
            ("identity", Coding::Identity),
            ("gzip", Coding::Gzip),
            ("x-gzip", Coding::Gzip),
            ("deflate", Coding::Deflate),
            ("br", Coding::Brotli),
            ("zstd", Coding::Zstd),
        ];
        TOKENS
            .iter()
            .find(|(name, _)| token.eq_ignore_ascii_case(name))
            .map(|&(_, coding)| coding)
    }
}

impl fmt::Display for Coding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// A coding we do not decode (415). Holds the lowercased name, shortened
    /// and with non-printable characters replaced.
    UnsupportedEncoding(String),
    /// The decoded size went over `max_decoded` (413).
    TooLarge { limit: u64 },
    /// decoded/encoded went over `max_ratio` (413).
    RatioExceeded { limit: u64 },
    /// Corrupt, truncated, or trailing garbage (400). The message names the
    /// coding and which of those it was; it holds no client bytes.
    Corrupt(String),
}

impl BodyError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::UnsupportedEncoding(_) => 415,
            BodyError::TooLarge { .. } | BodyError::RatioExceeded { .. } => 413,
            BodyError::Corrupt(_) => 400,
        }
    }

    /// A stable machine-readable error code.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::UnsupportedEncoding(_) => "unsupported_encoding",
            BodyError::TooLarge { .. } => "body_too_large",
            BodyError::RatioExceeded { .. } => "decompression_ratio",
            BodyError::Corrupt(_) => "bad_encoding",
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::UnsupportedEncoding(name) => write!(
                f,
                "unsupported Content-Encoding \"{name}\" (supported: gzip, deflate, br, zstd)"
            ),
            BodyError::TooLarge { limit } => {
                write!(f, "decoded request body exceeds the limit of {limit} bytes")
            }
            BodyError::RatioExceeded { limit } => write!(
                f,
                "request body expands more than {limit}x when decoded (decompression bomb?)"
            ),
            BodyError::Corrupt(msg) => write!(f, "malformed encoded request body: {msg}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// A shortened, printable, lowercased copy of an unsupported coding name.
fn echo_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(MAX_NAME_ECHO)
        .map(|c| {
            if c.is_ascii_graphic() {
                c.to_ascii_lowercase()
            } else {
                '?'
            }
        })
        .collect();
    if name.chars().nth(MAX_NAME_ECHO).is_some() {
        out.push_str("...");
    }
    out
}

fn too_many_codings(n: usize) -> BodyError {
    BodyError::UnsupportedEncoding(format!(
        "{n} stacked codings (at most {MAX_STACKED_CODINGS})"
    ))
}

/// Parse a Content-Encoding header value (comma-separated, case-insensitive,
/// whitespace-tolerant; "identity" entries are dropped; "x-gzip" = gzip).
/// Unknown coding → Err(BodyError::UnsupportedEncoding(name)). Empty/absent →
/// Ok(vec![]). Empty list elements (`"gzip,,br"`) are ignored, as RFC 9110
/// §5.6.1 requires. More than [`MAX_STACKED_CODINGS`] codings →
/// `UnsupportedEncoding`.
pub fn parse_content_encoding(value: &str) -> Result<Vec<Coding>, BodyError> {
    let mut codings = Vec::new();
    for item in value.split(',') {
        let token = item.trim_matches(|c| c == ' ' || c == '\t');
        if token.is_empty() {
            continue;
        }
        match Coding::from_token(token) {
            Some(Coding::Identity) => {}
            Some(coding) => {
                if codings.len() == MAX_STACKED_CODINGS {
                    return Err(too_many_codings(MAX_STACKED_CODINGS + 1));
                }
                codings.push(coding);
            }
            None => return Err(BodyError::UnsupportedEncoding(echo_name(token))),
        }
    }
    Ok(codings)
}

/// Decode `wire` by undoing `codings` in reverse order (stacked encodings
/// are allowed when every one is supported). Returns the decoded bytes.
///
/// Both caps of `limits` are checked as output is produced, chunk by chunk
/// (see [`DecodeLimits`] for the exact rules, including the 64 KiB
/// [`RATIO_FLOOR`] below which the ratio is not checked). With no codings
/// (or only `Identity`) the body is returned as is, subject to `max_decoded`.
pub fn decode(
    codings: &[Coding],
    wire: &[u8],
    limits: &DecodeLimits,
) -> Result<Vec<u8>, BodyError> {
    decode_with_stats(codings, wire, limits).0
}

/// What a decode cost, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DecodeStats {
    /// The most bytes any one layer's decoder produced, counting the chunk
    /// that tripped a cap.
    pub max_layer_output: u64,
}

/// [`decode`], also reporting how many bytes the decoders produced.
pub(crate) fn decode_with_stats(
    codings: &[Coding],
    wire: &[u8],
    limits: &DecodeLimits,
) -> (Result<Vec<u8>, BodyError>, DecodeStats) {
    let mut stats = DecodeStats::default();
    let layers: Vec<Coding> = codings
        .iter()
        .copied()
        .filter(|&c| c != Coding::Identity)
        .collect();
    if layers.len() > MAX_STACKED_CODINGS {
        return (Err(too_many_codings(layers.len())), stats);
    }
    let wire_len = len_u64(wire.len());
    if layers.is_empty() {
        stats.max_layer_output = wire_len;
        if wire_len > limits.max_decoded {
            return (
                Err(BodyError::TooLarge {
                    limit: limits.max_decoded,
                }),
                stats,
            );
        }
        return (Ok(wire.to_vec()), stats);
    }

    let mut current: Cow<'_, [u8]> = Cow::Borrowed(wire);
    let mut chunk = vec![0u8; CHUNK];
    for (i, &coding) in layers.iter().rev().enumerate() {
        let innermost = i + 1 == layers.len();
        // An inner layer's output is itself compressed data, which can be a
        // hair larger than what it encodes (stored blocks, frame headers).
        let cap = if innermost {
            limits.max_decoded
        } else {
            limits
                .max_decoded
                .saturating_add(limits.max_decoded / 1024 + 1024)
        };
        let mut sink = Sink {
            out: Vec::new(),
            produced: 0,
            cap,
            reported_limit: limits.max_decoded,
            max_ratio: limits.max_ratio,
            wire_len,
        };
        let result = match coding {
            Coding::Identity => sink.push(&current),
            Coding::Gzip => flate::gunzip(&current, &mut sink, &mut chunk),
            Coding::Deflate => flate::inflate_http_deflate(&current, &mut sink, &mut chunk),
            Coding::Brotli => br::decode(&current, &mut sink, &mut chunk),
            Coding::Zstd => zst::decode(&current, &mut sink, &mut chunk),
        };
        stats.max_layer_output = stats.max_layer_output.max(sink.produced);
        if let Err(e) = result {
            return (Err(e), stats);
        }
        current = Cow::Owned(sink.out);
    }
    (Ok(current.into_owned()), stats)
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Where a decoder puts its output: enforces both caps on every chunk
/// before keeping it.
pub(crate) struct Sink {
    out: Vec<u8>,
    /// Bytes the decoder produced, including a refused chunk.
    produced: u64,
    /// Hard cap on this layer's output.
    cap: u64,
    /// The limit named in `TooLarge` (the caller's `max_decoded`).
    reported_limit: u64,
    max_ratio: u64,
    wire_len: u64,
}

impl Sink {
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<(), BodyError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.produced = self.produced.saturating_add(len_u64(chunk.len()));
        if self.produced > self.cap {
            return Err(BodyError::TooLarge {
                limit: self.reported_limit,
            });
        }
        if self.max_ratio != 0
            && self.produced > RATIO_FLOOR
            && self.produced > self.max_ratio.saturating_mul(self.wire_len)
        {
            return Err(BodyError::RatioExceeded {
                limit: self.max_ratio,
            });
        }
        let needed = self.out.len().saturating_add(chunk.len());
        if needed > self.out.capacity() {
            // Double as usual, but never reserve past the cap.
            let cap = usize::try_from(self.cap).unwrap_or(usize::MAX);
            let target = needed.max(self.out.capacity().saturating_mul(2).min(cap));
            self.out.reserve_exact(target - self.out.len());
        }
        self.out.extend_from_slice(chunk);
        Ok(())
    }
}

fn corrupt(msg: impl Into<String>) -> BodyError {
    BodyError::Corrupt(msg.into())
}
