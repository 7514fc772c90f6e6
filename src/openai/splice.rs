//! In-place edits of a JSON body: the few values a normalisation rule
//! changes are replaced (or inserted) by byte position, everything else is
//! copied verbatim. Re-serialising a parsed `Value` would instead reorder
//! keys (without serde_json's `preserve_order`), respell numbers (`1e2`,
//! integers past `u64` become floats) and unescape strings.
//!
//! Runs only on text serde_json has already accepted, so the scanner can be
//! small; still, it never indexes out of bounds (a surprise is `None`) and
//! the caller checks the result parses to the expected value.

use serde_json::{Map, Value};
use std::borrow::Cow;
use std::ops::Range;

/// One change a rule makes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// Top-level `key` (an integer above `to`) becomes `to`.
    Clamp { key: &'static str, to: u64 },
    /// `stream_options.include_usage` (absent or null) becomes `true`,
    /// creating `stream_options` if absent or null.
    IncludeUsage,
    /// Top-level `key` becomes `json` (a serialised value), added at the
    /// end if absent.
    Set { key: &'static str, json: String },
    /// `json` (a serialised value) is appended to the top-level array `key`.
    Push { key: &'static str, json: String },
}

impl Change {
    /// The change on the parsed body.
    pub(crate) fn apply(&self, obj: &mut Map<String, Value>) {
        match self {
            Change::Clamp { key, to } => {
                obj.insert((*key).to_owned(), Value::from(*to));
            }
            Change::IncludeUsage => match obj.get_mut("stream_options") {
                Some(Value::Object(o)) => {
                    o.insert("include_usage".to_owned(), Value::Bool(true));
                }
                _ => {
                    let o = Map::from_iter([("include_usage".to_owned(), Value::Bool(true))]);
                    obj.insert("stream_options".to_owned(), Value::Object(o));
                }
            },
            Change::Set { key, json } => {
                if let Ok(v) = serde_json::from_str(json) {
                    obj.insert((*key).to_owned(), v);
                }
            }
            Change::Push { key, json } => {
                if let (Some(Value::Array(items)), Ok(v)) =
                    (obj.get_mut(*key), serde_json::from_str(json))
                {
                    items.push(v);
                }
            }
        }
    }
}

/// `text` (a JSON object, already validated) with `changes` made in place;
/// duplicate keys resolve to the last, as serde_json and Python read them.
pub(crate) fn splice(text: &str, changes: &[Change]) -> Option<String> {
    let b = text.as_bytes();
    let (_, top) = object(b, skip_ws(b, 0))?;
    let last = |members: &[Member<'_>], key: &str| -> Option<Range<usize>> {
        let m = members.iter().rev().find(|m| m.key == key)?;
        Some(m.value.clone())
    };
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    for change in changes {
        match change {
            Change::Clamp { key, to } => edits.push((last(&top, key)?, to.to_string())),
            Change::IncludeUsage => {
                const OPTIONS: &str = r#"{"include_usage":true}"#;
                match last(&top, "stream_options") {
                    None => {
                        let end = top.last()?.value.end;
                        edits.push((end..end, format!(r#","stream_options":{OPTIONS}"#)));
                    }
                    Some(at) if b.get(at.start) == Some(&b'n') => {
                        edits.push((at, OPTIONS.to_owned()))
                    }
                    Some(at) => {
                        let (span, inner) = object(b, at.start)?;
                        match (last(&inner, "include_usage"), inner.last()) {
                            (Some(value), _) => edits.push((value, "true".to_owned())),
                            (None, Some(m)) => {
                                let end = m.value.end;
                                edits.push((end..end, r#","include_usage":true"#.to_owned()));
                            }
                            (None, None) => edits.push((span, OPTIONS.to_owned())),
                        }
                    }
                }
            }
            Change::Set { key, json } => match last(&top, key) {
                Some(at) => edits.push((at, json.clone())),
                None => match top.last() {
                    Some(m) => {
                        let end = m.value.end;
                        edits.push((end..end, format!(",{}:{json}", quoted(key))));
                    }
                    None => {
                        let end = skip_ws(b, skip_ws(b, 0) + 1);
                        edits.push((end..end, format!("{}:{json}", quoted(key))));
                    }
                },
            },
            Change::Push { key, json } => {
                let at = last(&top, key)?;
                if b.get(at.start) != Some(&b'[') {
                    return None;
                }
                let close = at.end.checked_sub(1)?;
                let empty = skip_ws(b, at.start + 1) == close;
                let sep = if empty { "" } else { "," };
                edits.push((close..close, format!("{sep}{json}")));
            }
        }
    }
    // Replacements and insertions never overlap: each targets a different
    // member, and an insertion sits after the value it follows.
    edits.sort_by_key(|(at, _)| (at.start, at.end));
    let mut out = String::with_capacity(text.len() + 64);
    let mut copied = 0;
    for (at, new) in edits {
        out.push_str(text.get(copied..at.start)?);
        out.push_str(&new);
        copied = at.end;
    }
    out.push_str(text.get(copied..)?);
    Some(out)
}

fn quoted(key: &str) -> String {
    serde_json::Value::from(key).to_string()
}

/// A member of an object: its decoded key and the byte span of its value.
struct Member<'a> {
    key: Cow<'a, str>,
    value: Range<usize>,
}

/// The object starting at `at` (its `{`): its span and its members.
fn object(b: &[u8], at: usize) -> Option<(Range<usize>, Vec<Member<'_>>)> {
    if b.get(at) != Some(&b'{') {
        return None;
    }
    let mut members = Vec::new();
    let mut i = skip_ws(b, at + 1);
    if b.get(i) == Some(&b'}') {
        return Some((at..i + 1, members));
    }
    loop {
        let key_end = skip_string(b, i)?;
        let key = decode_key(b.get(i..key_end)?)?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let end = skip_value(b, start)?;
        members.push(Member {
            key,
            value: start..end,
        });
        i = skip_ws(b, end);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return Some((at..i + 1, members)),
            _ => return None,
        }
    }
}

/// A quoted key, decoded only if it has escapes.
fn decode_key(quoted: &[u8]) -> Option<Cow<'_, str>> {
    let s = std::str::from_utf8(quoted).ok()?;
    if s.contains('\\') {
        serde_json::from_str::<String>(s).ok().map(Cow::Owned)
    } else {
        s.get(1..s.len() - 1).map(Cow::Borrowed)
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end of the string starting at `i` (its opening quote).
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut i = i + 1;
    loop {
        match b.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The end of the value starting at `i`. Iterative: nesting depth costs no
/// stack.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let (mut i, mut depth) = (i, 0usize);
            loop {
                match b.get(i)? {
                    b'"' => {
                        i = skip_string(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            // A number, `true`, `false` or `null`.
            let mut i = i;
            while b
                .get(i)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                i += 1;
            }
            Some(i)
        }
    }
}
