//! One canonical form of every request path, made once at the edge: every
//! decision (route match, endpoint detection, validation) is taken on it
//! and it is what the backend receives, so no spelling of a path can reach
//! a backend that reads it differently from how the gateway judged it.
//!
//! - percent-escapes of unreserved characters are decoded (`%63` → `c`),
//!   the others upper-cased (`%3a` → `%3A`);
//! - `.` and `..` segments are resolved, and a `..` that would climb above
//!   the root is refused;
//! - runs of `/` are merged (as nginx does);
//! - an encoded `/`, `\` or NUL, a raw `\`, a control byte or a broken
//!   escape is refused: there is no safe way to pass them on.

use std::borrow::Cow;

/// Why a path was refused (the client gets 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadEscape,
    /// `%2F`, `%5C`, `%00` or a raw `\`.
    AmbiguousSeparator,
    ControlByte,
    AboveRoot,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request path must start with '/'",
            PathError::BadEscape => "the request path has a malformed percent-escape",
            PathError::AmbiguousSeparator => {
                "the request path has an encoded '/', an encoded or raw '\\' or an encoded NUL"
            }
            PathError::ControlByte => "the request path has a control byte",
            PathError::AboveRoot => "the request path climbs above the root with '..'",
        }
    }
}

/// The canonical form of `path` (no query string), borrowed when it is
/// already canonical.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if plainly_canonical(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    let resolved = resolve(&decoded)?;
    if resolved.as_bytes() == bytes {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(resolved))
    }
}

/// The common case, settled without allocating: no escape, no dot
/// segment, no empty segment, nothing refused.
fn plainly_canonical(bytes: &[u8]) -> bool {
    let clean_bytes = bytes
        .iter()
        .all(|&b| b != b'%' && b != b'\\' && !b.is_ascii_control());
    clean_bytes && !bytes.windows(2).any(|w| w == b"//" || w == b"/.")
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decode escapes of unreserved characters; upper-case the rest.
fn decode_unreserved(bytes: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let value = hi << 4 | lo;
                match value {
                    b'/' | b'\\' | 0 => return Err(PathError::AmbiguousSeparator),
                    v if is_unreserved(v) => out.push(v),
                    _ => {
                        out.push(b'%');
                        out.extend(bytes[i + 1..i + 3].iter().map(u8::to_ascii_uppercase));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::AmbiguousSeparator),
            b if b.is_ascii_control() => return Err(PathError::ControlByte),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Merge `//`, drop `.` segments, apply `..` (RFC 3986 §5.2.4, but a
/// climb above the root is an error instead of being clamped).
fn resolve(path: &[u8]) -> Result<String, PathError> {
    // Only ASCII and bytes copied from a `&str` are here: still UTF-8.
    let text = String::from_utf8_lossy(path);
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = text.split('/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "" => trailing_slash = i == last,
            "." => trailing_slash = i == last,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = i == last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// The last segments of a canonical path as a lenient backend would read
/// them: lower-cased, `;params` cut from each, empty ones (a trailing `/`)
/// dropped. What endpoint detection matches on, so that no spelling a
/// backend might still serve as an endpoint escapes its checks.
pub fn match_segments(path: &str) -> impl DoubleEndedIterator<Item = String> + '_ {
    path.split('/')
        .map(|seg| seg.split(';').next().unwrap_or("").to_ascii_lowercase())
        .filter(|seg| !seg.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> String {
        canonical(path)
            .unwrap_or_else(|e| panic!("{path}: {e:?}"))
            .into_owned()
    }

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/v1/chat/completions",
            "/v1/models/",
            "/a;b=c/d",
            "/a%3Ab",
        ] {
            assert!(matches!(canonical(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn the_shortcut_agrees_with_the_full_work() {
        for p in [
            "/",
            "/v1/chat/completions",
            "/a/b/",
            "/a;b=c",
            "/x.y/z",
            "/.well-known/x",
            "/a/.",
            "//a",
            "/a%41",
            "/~u",
            "/a/b/..",
        ] {
            if plainly_canonical(p.as_bytes()) {
                let full = resolve(&decode_unreserved(p.as_bytes()).unwrap()).unwrap();
                assert_eq!(full, p, "{p}");
            }
        }
        assert!(plainly_canonical(b"/v1/chat/completions"));
        assert!(!plainly_canonical(b"/v1/../x"));
    }

    #[test]
    fn spellings_become_one_form() {
        assert_eq!(ok("/v1/chat/%63ompletions"), "/v1/chat/completions");
        assert_eq!(ok("/v1/%2e%2e/admin"), "/admin");
        assert_eq!(ok("/v1/%2E%2E/admin"), "/admin");
        assert_eq!(ok("/v1/../admin"), "/admin");
        assert_eq!(ok("/v1/./chat//completions"), "/v1/chat/completions");
        assert_eq!(ok("//v1///models"), "/v1/models");
        assert_eq!(ok("/v1/models/."), "/v1/models/");
        assert_eq!(ok("/v1/x/.."), "/v1/");
        assert_eq!(ok("/a%3ab%7e"), "/a%3Ab~");
        assert_eq!(ok("/%7Euser"), "/~user");
    }

    #[test]
    fn ambiguous_and_broken_paths_are_refused() {
        for (p, e) in [
            ("v1/models", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/v1%2fchat", PathError::AmbiguousSeparator),
            ("/v1%2Fchat", PathError::AmbiguousSeparator),
            ("/v1%5cchat", PathError::AmbiguousSeparator),
            ("/v1\\chat", PathError::AmbiguousSeparator),
            ("/v1%00", PathError::AmbiguousSeparator),
            ("/v1%zz", PathError::BadEscape),
            ("/v1%4", PathError::BadEscape),
            ("/v1/\u{7f}", PathError::ControlByte),
            ("/..", PathError::AboveRoot),
            ("/v1/../../etc", PathError::AboveRoot),
            ("/%2e%2e/x", PathError::AboveRoot),
        ] {
            assert_eq!(canonical(p).unwrap_err(), e, "{p}");
        }
    }

    #[test]
    fn match_segments_read_like_a_lenient_backend() {
        let segs: Vec<String> = match_segments("/V1/Chat/Completions;x=1/").collect();
        assert_eq!(segs, ["v1", "chat", "completions"]);
    }
}
