//! Response compression for clients that accept it: brotli preferred, else
//! gzip, for uncompressed responses that are big enough to gain from it.
//! Event streams are never compressed (a compressor buffers, tokens must
//! not wait). Each response gets its own streaming encoder whose output is
//! taken after every chunk and which is properly finished at the end (a
//! brotli stream that is only flushed is not a complete one).

use bytes::Bytes;
use flate2::write::GzEncoder;
use http::header;
use pingora_http::ResponseHeader;
use std::io::Write;

/// Bodies smaller than this are sent as they are: too little to gain.
const MIN_SIZE: u64 = 1024;
/// Moderate levels: compress text well at low CPU cost.
const BROTLI_QUALITY: u32 = 5;
const BROTLI_WINDOW: u32 = 19;
const GZIP_LEVEL: u32 = 5;

/// The encoding to use given the client's `Accept-Encoding`: `br` if it is
/// accepted (q > 0), else `gzip`, else none.
pub fn preferred(accept_encoding: Option<&str>) -> Option<&'static str> {
    let accepted = |name: &str| {
        accept_encoding.is_some_and(|ae| {
            ae.split(',').any(|item| {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim();
                let q_zero = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                coding.eq_ignore_ascii_case(name) && !q_zero
            })
        })
    };
    if accepted("br") {
        Some("br")
    } else if accepted("gzip") {
        Some("gzip")
    } else {
        None
    }
}

/// Text-like content that compresses well.
fn compressible_type(content_type: &str) -> bool {
    let ct = content_type.trim().to_ascii_lowercase();
    !ct.starts_with("text/event-stream")
        && (ct.starts_with("text/")
            || ct.contains("json")
            || ct.contains("xml")
            || ct.contains("javascript"))
}

/// Whether a response is worth compressing: not already encoded, text-like
/// (event streams excluded), with a body of unknown or large enough size.
fn worth_it(head: &ResponseHeader) -> bool {
    if head.headers.contains_key(header::CONTENT_ENCODING) {
        return false;
    }
    let status = head.status.as_u16();
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return false;
    }
    let text = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(compressible_type);
    let length = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    text && length.is_none_or(|n| n >= MIN_SIZE)
}

enum Encoder {
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Gzip(GzEncoder<Vec<u8>>),
}

/// Compresses one response's body, or passes it through untouched.
pub struct Compressor(Option<Encoder>);

impl Compressor {
    /// Decide for this response and adjust its head (`Content-Encoding`,
    /// `Vary`, chunked framing) if it will be compressed. `exempt`: never
    /// (an event stream, or an answer to HEAD).
    pub fn for_response(
        accept_encoding: Option<&str>,
        head: &mut ResponseHeader,
        exempt: bool,
    ) -> Self {
        let Some(coding) = preferred(accept_encoding) else {
            return Compressor(None);
        };
        if exempt || !worth_it(head) {
            return Compressor(None);
        }
        let encoder = match coding {
            "br" => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                BROTLI_QUALITY,
                BROTLI_WINDOW,
            ))),
            _ => Encoder::Gzip(GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
        };
        head.remove_header(&header::CONTENT_LENGTH);
        head.remove_header(&header::ACCEPT_RANGES);
        let framed = head.insert_header(header::CONTENT_ENCODING, coding).is_ok()
            && head
                .insert_header(header::TRANSFER_ENCODING, "chunked")
                .is_ok()
            && head.append_header(header::VARY, "accept-encoding").is_ok();
        if !framed {
            tracing::debug!("could not mark a response as compressed; sending it as is");
            return Compressor(None);
        }
        Compressor(Some(encoder))
    }

    #[cfg(test)]
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }

    /// The bytes to send for `chunk` (`end`: the last one, which finishes
    /// the compressed stream).
    pub fn chunk(&mut self, chunk: Bytes, end: bool) -> Bytes {
        let Some(encoder) = &mut self.0 else {
            return chunk;
        };
        let written = match encoder {
            Encoder::Brotli(w) => w.write_all(&chunk),
            Encoder::Gzip(w) => w.write_all(&chunk),
        };
        if let Err(e) = written {
            // Writing into a Vec cannot fail; keep going without it if it did.
            tracing::warn!(error = %e, "response compression failed");
        }
        if !end {
            return match encoder {
                Encoder::Brotli(w) => Bytes::from(std::mem::take(w.get_mut())),
                Encoder::Gzip(w) => Bytes::from(std::mem::take(w.get_mut())),
            };
        }
        match self.0.take() {
            Some(Encoder::Brotli(w)) => Bytes::from(w.into_inner()),
            Some(Encoder::Gzip(w)) => Bytes::from(w.finish().unwrap_or_default()),
            None => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brotli_preferred_then_gzip() {
        assert_eq!(preferred(Some("gzip, deflate, br")), Some("br"));
        assert_eq!(preferred(Some("gzip")), Some("gzip"));
        assert_eq!(preferred(Some("br;q=0, gzip;q=0.5")), Some("gzip"));
        assert_eq!(preferred(Some("identity")), None);
        assert_eq!(preferred(Some("gzip;q=0")), None);
        assert_eq!(preferred(None), None);
    }

    fn json_head(len: Option<u64>) -> ResponseHeader {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-type", "application/json").unwrap();
        if let Some(n) = len {
            h.insert_header("content-length", n.to_string()).unwrap();
        }
        h
    }

    #[test]
    fn compresses_big_json_and_says_so() {
        let mut head = json_head(Some(5000));
        let mut c = Compressor::for_response(Some("gzip, br"), &mut head, false);
        assert!(c.is_active());
        assert_eq!(head.headers["content-encoding"], "br");
        assert!(head.headers.get("content-length").is_none());
        assert!(head.headers["vary"]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("accept-encoding"));
        let body = Bytes::from(vec![b'a'; 5000]);
        let mut out = c.chunk(body, false).to_vec();
        out.extend_from_slice(&c.chunk(Bytes::new(), true));
        let mut plain = Vec::new();
        brotli::BrotliDecompress(&mut &out[..], &mut plain).unwrap();
        assert_eq!(plain, vec![b'a'; 5000]);
    }

    #[test]
    fn leaves_small_encoded_and_streaming_responses_alone() {
        let mut small = json_head(Some(100));
        assert!(!Compressor::for_response(Some("br"), &mut small, false).is_active());
        assert!(small.headers.get("content-encoding").is_none());

        let mut sse = json_head(None);
        sse.insert_header("content-type", "text/event-stream")
            .unwrap();
        assert!(!Compressor::for_response(Some("br"), &mut sse, true).is_active());

        let mut encoded = json_head(Some(5000));
        encoded.insert_header("content-encoding", "gzip").unwrap();
        assert!(!Compressor::for_response(Some("br"), &mut encoded, false).is_active());

        let mut plain = json_head(Some(5000));
        assert!(!Compressor::for_response(None, &mut plain, false).is_active());
    }
}
