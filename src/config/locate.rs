//! Turning byte offsets into `line:column` and TOML/serde errors into
//! [`ConfigProblem`]s that name the offending key (`pool[1].servers[0].addr`).
//!
//! serde stops at the first error and only tells us a byte span and a message.
//! To name the key we parse the same text a second time into a loose tree that
//! accepts any shape and remembers every value's span, then look up which key
//! the error's span belongs to.

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::ConfigProblem;

/// Byte offset → 1-based line and column (columns count characters).
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = match self.text.get(start..offset) {
            Some(s) => s.chars().count(),
            None => offset - start,
        };
        (line, column + 1)
    }

    /// A problem at `span` (or at the top of the file when there is none).
    pub(crate) fn problem(
        &self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigProblem {
        let (line, column) = span.map_or((1, 1), |s| self.line_col(s.start));
        ConfigProblem {
            line,
            column,
            key: key.into(),
            message: one_line(&message.into()),
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A TOML syntax error or a serde error (unknown key, wrong type) as a problem.
pub(crate) fn serde_problem(text: &str, err: &toml::de::Error) -> ConfigProblem {
    let lines = LineIndex::new(text);
    let raw_message = err.message();
    let unknown = unknown_field(raw_message);
    let mut message = match raw_message.strip_prefix("unknown field") {
        Some(rest) => format!("unknown key{rest}"),
        None => raw_message.to_owned(),
    };
    let key = err
        .span()
        .map(|span| key_at(text, &span, unknown.as_deref()))
        .unwrap_or_else(|| unknown.unwrap_or_default());
    if (key == "pool" || key == "route") && message.contains("expected a sequence") {
        message.push_str(&format!(
            "; write [[{key}]] (double brackets) for each {key}"
        ));
    }
    lines.problem(err.span(), key, message)
}

/// `unknown field `foo`, expected …` → `foo`.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    Some(rest[..end].to_owned())
}

/// The dotted path of the key an error at `span` is about.
fn key_at(text: &str, span: &Range<usize>, unknown: Option<&str>) -> String {
    let tree = match toml::from_str::<Table>(text) {
        Ok(Table(tree)) => tree,
        // Syntax error: nothing to look up; the line and column say it all.
        Err(_) => return unknown.unwrap_or_default().to_owned(),
    };
    let mut entries = Vec::new();
    for (name, node) in &tree {
        walk(node, name.clone(), Some(name), &mut entries);
    }
    if let Some(field) = unknown {
        // The unknown key's own value is in the tree; take the one nearest the error.
        let nearest = entries
            .iter()
            .filter(|e| e.name.as_deref() == Some(field))
            .filter_map(|e| e.span.as_ref().map(|s| (s.start.abs_diff(span.start), e)))
            .min_by_key(|(distance, _)| *distance);
        if let Some((_, entry)) = nearest {
            return entry.path.clone();
        }
        return match containing(&entries, span.start) {
            Some(parent) => format!("{}.{field}", parent.path),
            None => field.to_owned(),
        };
    }
    containing(&entries, span.start)
        .map(|e| e.path.clone())
        .unwrap_or_default()
}

/// The innermost entry whose span contains `offset` (the deepest on a tie).
fn containing(entries: &[Entry], offset: usize) -> Option<&Entry> {
    let mut best: Option<&Entry> = None;
    for entry in entries {
        let Some(span) = &entry.span else { continue };
        if span.start <= offset && offset < span.end.max(span.start + 1) {
            let better = best
                .and_then(|b| b.span.as_ref())
                .is_none_or(|b| span.len() <= b.len());
            if better {
                best = Some(entry);
            }
        }
    }
    best
}

struct Entry {
    path: String,
    name: Option<String>,
    span: Option<Range<usize>>,
}

/// Flattens `node` into `out`, returning its span (for an implicit table that
/// has none of its own: the union of its children's).
fn walk(
    node: &LocNode,
    path: String,
    name: Option<&str>,
    out: &mut Vec<Entry>,
) -> Option<Range<usize>> {
    let index = out.len();
    out.push(Entry {
        path: path.clone(),
        name: name.map(str::to_owned),
        span: node.span.clone(),
    });
    let mut union: Option<Range<usize>> = None;
    let mut add = |s: Option<Range<usize>>| {
        if let Some(s) = s {
            union = Some(match union.take() {
                Some(u) => u.start.min(s.start)..u.end.max(s.end),
                None => s,
            });
        }
    };
    match &node.kind {
        Kind::Table(entries) => {
            for (key, child) in entries {
                add(walk(child, format!("{path}.{key}"), Some(key), out));
            }
        }
        Kind::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                add(walk(child, format!("{path}[{i}]"), None, out));
            }
        }
        Kind::Leaf => {}
    }
    if out[index].span.is_none() {
        out[index].span = union;
    }
    out[index].span.clone()
}

/// Any TOML value, with the span toml gives it (implicit tables have none).
struct LocNode {
    span: Option<Range<usize>>,
    kind: Kind,
}

enum Kind {
    Table(Vec<(String, LocNode)>),
    Array(Vec<LocNode>),
    Leaf,
}

// The names `toml::Spanned` uses to ask the deserializer for a span
// (`serde_spanned::__unstable`). If they ever change we merely lose spans.
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const START: &str = "$__serde_spanned_private_start";
const END: &str = "$__serde_spanned_private_end";
const VALUE: &str = "$__serde_spanned_private_value";

impl<'de> Deserialize<'de> for LocNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Unlike `Spanned`, also accepts a value that comes without a span.
        d.deserialize_struct(SPANNED, &[START, END, VALUE], NodeVisitor)
    }
}

/// The document root: a table whose values are `LocNode`s.
struct Table(Vec<(String, LocNode)>);

impl<'de> Deserialize<'de> for Table {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(NodeVisitor)?.kind {
            Kind::Table(entries) => Ok(Table(entries)),
            _ => Err(de::Error::custom("expected a table")),
        }
    }
}

/// Deserialises the value inside a span wrapper without asking for a span again.
struct Unspanned;

impl<'de> DeserializeSeed<'de> for Unspanned {
    type Value = LocNode;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<LocNode, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

fn leaf<E>() -> Result<LocNode, E> {
    Ok(LocNode {
        span: None,
        kind: Kind::Leaf,
    })
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = LocNode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<LocNode, E> {
        leaf()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<LocNode, E> {
        leaf()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<LocNode, E> {
        leaf()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<LocNode, E> {
        leaf()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<LocNode, E> {
        leaf()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LocNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<LocNode>()? {
            items.push(item);
        }
        Ok(LocNode {
            span: None,
            kind: Kind::Array(items),
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LocNode, A::Error> {
        let (mut start, mut end, mut inner) = (None, None, None);
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                START => start = Some(map.next_value::<usize>()?),
                END => end = Some(map.next_value::<usize>()?),
                VALUE => inner = Some(map.next_value_seed(Unspanned)?),
                _ => entries.push((key, map.next_value::<LocNode>()?)),
            }
        }
        match (inner, start, end) {
            (Some(mut node), Some(start), Some(end)) => {
                node.span = Some(start..end);
                Ok(node)
            }
            (Some(node), _, _) => Ok(node),
            (None, _, _) => Ok(LocNode {
                span: None,
                kind: Kind::Table(entries),
            }),
        }
    }
}
