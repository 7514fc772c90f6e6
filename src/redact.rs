//! Keeping secrets out of log lines. Pingora's errors can quote the raw
//! bytes of a request head (a malformed one is quoted whole, escaped), and
//! a head carries the client's `Authorization`; every such error Ballast
//! logs goes through [`Redacted`], which masks the value of every
//! credential header, whether its line ends in raw or escaped CR/LF.

use std::fmt;

/// Header names whose values are secrets (lowercase).
const CREDENTIALS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
];

const MASK: &str = "[redacted]";

/// Displays `T` with every credential header value masked.
pub struct Redacted<'a, T: fmt::Display>(pub &'a T);

impl<T: fmt::Display> fmt::Display for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0.to_string()))
    }
}

/// `text` with the value after every `<credential header>:` masked up to
/// the end of its line (CR, LF, an escaped `\r`/`\n`, a quote, or the end).
pub fn redact(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    // Ranges of `text` to mask, found on the lowercase copy (same offsets).
    let mut masks: Vec<(usize, usize)> = Vec::new();
    for name in CREDENTIALS {
        let mut from = 0;
        while let Some(found) = lower[from..].find(name) {
            let mut i = from + found + name.len();
            from = i;
            while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
                i += 1;
            }
            if bytes.get(i) != Some(&b':') {
                continue;
            }
            let start = i + 1;
            let end = value_end(bytes, start);
            if end > start {
                masks.push((start, end));
            }
            from = end.max(from);
        }
    }
    if masks.is_empty() {
        return text.to_owned();
    }
    masks.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in masks {
        if start < at {
            // Overlaps a mask already written (`proxy-authorization` holds
            // `authorization`): extend it.
            at = at.max(end);
            continue;
        }
        out.push_str(&text[at..start]);
        out.push(' ');
        out.push_str(MASK);
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// Where a header value starting at `start` ends.
fn value_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' | b'\n' | b'"' => return i,
            b'\\' if matches!(bytes.get(i + 1), Some(b'r' | b'n' | b'"')) => return i,
            _ => i += 1,
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_raw_and_escaped_heads() {
        let raw =
            "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer sk-1\r\nX-Api-Key:sk-2\r\n\r\n";
        let out = redact(raw);
        assert!(!out.contains("sk-1") && !out.contains("sk-2"), "{out}");
        assert!(out.contains("Host: a\r\n"), "{out}");
        assert!(out.contains("Authorization: [redacted]\r\n"), "{out}");

        // Pingora quotes a bad head escaped: `buf: GET / HTTP/1.1\r\n...`.
        let escaped = raw.escape_default().to_string();
        let out = redact(&format!(
            "InvalidHTTPHeader context: buf: {escaped} cause: Token"
        ));
        assert!(!out.contains("sk-1") && !out.contains("sk-2"), "{out}");
        assert!(out.ends_with("cause: Token"), "{out}");

        // Debug of a byte string quotes it.
        let out = redact(r#"buf: "GET / HTTP/1.1\r\ncookie: session=s3cret""#);
        assert!(!out.contains("s3cret"), "{out}");
    }

    #[test]
    fn masks_every_occurrence_and_nested_names() {
        let out = redact(
            "proxy-authorization: Basic p1\nauthorization: Bearer a1\nAUTHORIZATION:Bearer a2",
        );
        for secret in ["p1", "a1", "a2"] {
            assert!(!out.contains(secret), "{out}");
        }
    }

    #[test]
    fn leaves_other_text_alone() {
        for text in [
            "connection refused",
            "authorization failed",
            "api-key",
            "x: authorization",
        ] {
            assert_eq!(redact(text), text);
        }
    }
}
