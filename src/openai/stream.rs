//! Reading an OpenAI chat-completions event stream as it passes, so that a
//! stream cut mid-answer can be judged (complete by its `finish_reason`?
//! safe to resume?) and continued on another server as one stream.
//!
//! [`Events`] cuts bytes into whole SSE events; [`StreamState`] reads each
//! event and keeps what the client has been sent: the stream's `id`,
//! `created` and `model`, the text of its one choice, and whatever makes a
//! resume unsafe. After a seam, [`StreamState::continued`] rewrites the
//! continuation's events so the client sees the original stream going on.
//! Pure: no I/O.

use super::splice::{splice, Change};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

/// An event larger than this without its blank line is passed on as it is
/// and the stream is no longer read (nor resumed).
const MAX_EVENT: usize = 1 << 20;

/// Cuts a byte stream into whole SSE events, each with its terminating
/// blank line.
#[derive(Default)]
pub struct Events {
    buf: Vec<u8>,
    /// Where the search for a blank line resumes.
    scanned: usize,
}

impl Events {
    /// The whole events `chunk` completes, in order; an oversized partial
    /// event comes out as it is (`Piece::Raw`).
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Piece>) {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        let mut i = self.scanned.max(start);
        while i < self.buf.len() {
            // Straight to the next line end.
            match memchr::memchr(b'\n', &self.buf[i..]) {
                Some(n) => i += n,
                None => {
                    i = self.buf.len();
                    break;
                }
            }
            if self.buf[i] == b'\n' {
                // A blank line: `\n\n` or `\n\r\n`.
                let next = match self.buf.get(i + 1) {
                    Some(b'\n') => Some(i + 2),
                    Some(b'\r') if self.buf.get(i + 2) == Some(&b'\n') => Some(i + 3),
                    Some(b'\r') if i + 2 >= self.buf.len() => break,
                    None => break,
                    _ => None,
                };
                if let Some(end) = next {
                    out.push(Piece::Event(Bytes::copy_from_slice(&self.buf[start..end])));
                    start = end;
                    i = end;
                    continue;
                }
            }
            i += 1;
        }
        self.buf.drain(..start);
        self.scanned = i - start;
        if self.buf.len() > MAX_EVENT {
            out.push(Piece::Raw(Bytes::from(std::mem::take(&mut self.buf))));
            self.scanned = 0;
        }
    }

    /// What is left when the stream ends: a last event without its blank
    /// line, if any.
    pub fn rest(&mut self) -> Option<Bytes> {
        self.scanned = 0;
        (!self.buf.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.buf)))
    }

    /// Forget a partial event (the stream it came from was cut).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.scanned = 0;
    }
}

/// What [`Events::push`] hands out.
#[derive(Debug, PartialEq)]
pub enum Piece {
    Event(Bytes),
    /// Bytes that are not a readable event.
    Raw(Bytes),
}

/// The `data` of an event (its `data:` lines joined), if it has any.
pub fn data_of(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let Some(value) = line.strip_prefix("data:") else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut data {
            None => data = Some(value.to_owned()),
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
        }
    }
    data
}

#[derive(Deserialize)]
struct Chunk {
    id: Option<String>,
    created: Option<Value>,
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Value>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    role: Option<Value>,
    content: Option<String>,
    reasoning_content: Option<String>,
    reasoning: Option<String>,
    tool_calls: Option<Value>,
    function_call: Option<Value>,
}

impl Delta {
    fn reasoning(&self) -> Option<&str> {
        self.reasoning_content
            .as_deref()
            .or(self.reasoning.as_deref())
            .filter(|r| !r.is_empty())
    }

    fn calls_a_tool(&self) -> bool {
        self.tool_calls.as_ref().is_some_and(|t| !t.is_null())
            || self.function_call.as_ref().is_some_and(|f| !f.is_null())
    }
}

/// Why a cut stream may not be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsafe {
    /// More than one choice: a continuation carries on one text.
    MultiChoice,
    /// A tool call was being streamed: its arguments cannot be continued.
    ToolCall,
    /// Only reasoning was sent: the continuation would reason again.
    Reasoning,
    /// Something in the stream could not be read.
    Unreadable,
    /// Every choice had finished: nothing is missing but its ending.
    Finished,
}

impl Unsafe {
    pub fn label(self) -> &'static str {
        match self {
            Unsafe::MultiChoice => "multi_choice",
            Unsafe::ToolCall => "tool_call",
            Unsafe::Reasoning => "reasoning",
            Unsafe::Unreadable => "unreadable",
            Unsafe::Finished => "finished",
        }
    }
}

/// What one event means for the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// Pass it on.
    Forward,
    /// Leave it out (a continuation's repeated role, or its reasoning).
    Drop,
    /// `data: [DONE]`.
    Done,
    /// The backend reported an error in the stream: it is failing.
    Error,
}

/// What the client has been sent of one chat-completions stream.
#[derive(Debug, Default)]
pub struct StreamState {
    id: Option<String>,
    /// `created` as the backend wrote it (JSON).
    created: Option<String>,
    model: Option<String>,
    /// The content of choice 0 sent so far.
    text: String,
    /// Content-bearing events sent: one token each, as model servers
    /// stream them (an estimate; see `usage`).
    tokens: u64,
    reasoning: bool,
    tool_call: bool,
    multi: bool,
    unreadable: bool,
    /// Choice indexes seen, with whether each has its `finish_reason`.
    finished: Vec<(u32, bool)>,
    done: bool,
    /// `tokens` when the current continuation began (0: the original).
    seam: Option<u64>,
    /// Only the end is read (see [`StreamState::ends_only`]).
    ends_only: bool,
}

impl StreamState {
    /// For a stream of one choice that will not be resumed: only its end
    /// matters (`[DONE]`, an error, the choice's `finish_reason`), so an
    /// event that surely carries none of them is passed without being
    /// parsed. Its text and token count are then not kept.
    pub fn ends_only() -> StreamState {
        StreamState {
            ends_only: true,
            ..StreamState::default()
        }
    }

    /// The text of the answer sent so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The tokens sent so far (content-bearing events).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// `data: [DONE]` was seen.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Every choice reached a `finish_reason` (and there was one).
    pub fn finished(&self) -> bool {
        !self.finished.is_empty() && self.finished.iter().all(|(_, f)| *f)
    }

    /// Whether a stream cut now could be continued elsewhere.
    pub fn resumable(&self) -> Result<(), Unsafe> {
        if self.unreadable {
            Err(Unsafe::Unreadable)
        } else if self.multi {
            Err(Unsafe::MultiChoice)
        } else if self.tool_call {
            Err(Unsafe::ToolCall)
        } else if self.finished() {
            Err(Unsafe::Finished)
        } else if self.reasoning && self.text.is_empty() {
            Err(Unsafe::Reasoning)
        } else {
            Ok(())
        }
    }

    /// What comes next is a continuation of what was sent: its events are
    /// rewritten by [`StreamState::continued`].
    pub fn begin_continuation(&mut self) {
        self.seam = Some(self.tokens);
        self.done = false;
    }

    /// Mark the stream as one that cannot be read (raw bytes went through).
    pub fn unreadable(&mut self) {
        self.unreadable = true;
    }

    /// Read one event of the original stream (before any seam), which is
    /// then forwarded unchanged.
    pub fn read(&mut self, event: &[u8]) -> Meaning {
        if self.ends_only && cannot_end(event) {
            return Meaning::Forward;
        }
        let Some(data) = data_of(event) else {
            // A comment or a keep-alive: nothing to read.
            return Meaning::Forward;
        };
        if data.trim() == "[DONE]" {
            self.done = true;
            return Meaning::Done;
        }
        let chunk: Chunk = match serde_json::from_str(&data) {
            Ok(c) => c,
            Err(_) => {
                self.unreadable = true;
                return Meaning::Forward;
            }
        };
        if chunk.error.is_some() && chunk.choices.is_empty() {
            return Meaning::Error;
        }
        if self.id.is_none() {
            self.id = chunk.id.clone();
            self.created = chunk.created.as_ref().map(Value::to_string);
            self.model = chunk.model.clone();
        }
        self.note(&chunk);
        Meaning::Forward
    }

    /// Read one event of a continuation and say what the client gets: the
    /// event as the original stream would have said it (its `id`,
    /// `created` and `model`, usage counted over the whole answer), or
    /// nothing (a repeated role, reasoning).
    pub fn continued(&mut self, event: &[u8]) -> (Meaning, Option<Bytes>) {
        let Some(data) = data_of(event) else {
            return (Meaning::Forward, Some(Bytes::copy_from_slice(event)));
        };
        if data.trim() == "[DONE]" {
            self.done = true;
            return (Meaning::Done, Some(Bytes::copy_from_slice(event)));
        }
        let chunk: Chunk = match serde_json::from_str(&data) {
            Ok(c) => c,
            Err(_) => {
                self.unreadable = true;
                return (Meaning::Forward, Some(Bytes::copy_from_slice(event)));
            }
        };
        if chunk.error.is_some() && chunk.choices.is_empty() {
            return (Meaning::Error, None);
        }
        let says_something = chunk.usage.as_ref().is_some_and(|u| !u.is_null())
            || chunk.choices.iter().any(|c| {
                c.finish_reason.is_some()
                    || c.delta.as_ref().is_some_and(|d| {
                        d.content.as_deref().is_some_and(|t| !t.is_empty()) || d.calls_a_tool()
                    })
            });
        if !says_something {
            // The continuation's opening role, or reasoning the client was
            // not sent the first time round.
            return (Meaning::Drop, None);
        }
        self.note(&chunk);
        let mut changes = Vec::new();
        if let Some(id) = &self.id {
            changes.push(Change::Set {
                key: "id",
                json: Value::from(id.as_str()).to_string(),
            });
        }
        if let Some(created) = &self.created {
            changes.push(Change::Set {
                key: "created",
                json: created.clone(),
            });
        }
        if let Some(model) = &self.model {
            changes.push(Change::Set {
                key: "model",
                json: Value::from(model.as_str()).to_string(),
            });
        }
        if let Some(usage) = chunk.usage.as_ref().filter(|u| u.is_object()) {
            let moved = self.seam.unwrap_or(0);
            changes.push(Change::Set {
                key: "usage",
                json: whole_usage(usage, moved).to_string(),
            });
        }
        let repeats_role = chunk
            .choices
            .iter()
            .any(|c| c.delta.as_ref().is_some_and(|d| d.role.is_some()));
        let out = match repeats_role {
            false => splice(&data, &changes),
            // The role was said once; this event says it again with its
            // text. Rare enough (servers open with a role-only event) to
            // be rebuilt rather than edited.
            true => without_role(&data, &changes),
        };
        let Some(out) = out else {
            self.unreadable = true;
            return (Meaning::Forward, Some(Bytes::copy_from_slice(event)));
        };
        (
            Meaning::Forward,
            Some(Bytes::from(format!("data: {out}\n\n"))),
        )
    }

    fn note(&mut self, chunk: &Chunk) {
        for choice in &chunk.choices {
            if choice.index != 0 {
                self.multi = true;
            }
            match self.finished.iter_mut().find(|(i, _)| *i == choice.index) {
                Some((_, f)) => *f |= choice.finish_reason.is_some(),
                None => self
                    .finished
                    .push((choice.index, choice.finish_reason.is_some())),
            }
            let Some(delta) = &choice.delta else { continue };
            if delta.calls_a_tool() {
                self.tool_call = true;
            }
            if delta.reasoning().is_some() {
                self.reasoning = true;
            }
            if choice.index == 0 {
                if let Some(text) = delta.content.as_deref().filter(|t| !t.is_empty()) {
                    self.text.push_str(text);
                    self.tokens += 1;
                }
            }
        }
    }
}

/// An event that surely holds no `[DONE]`, no `"error"` and no
/// `finish_reason` other than `null`: a scan of its bytes, cheaper than
/// parsing it. Inside a JSON string a quote is escaped, so `"finish_reason"`
/// with both quotes bare is a key (or a whole string value, which is not
/// followed by `: null` and so is parsed). An event of several lines (whose
/// data a line end could split) is always parsed.
fn cannot_end(event: &[u8]) -> bool {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    // Built once: a searcher's set-up costs more than a search of an event.
    static DONE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"[DONE]"));
    static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));
    static FINISH: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"finish_reason\""));
    let lines = memchr::memchr_iter(b'\n', event).count();
    // One line and its blank line: `\n\n` (or `\r\n\r\n`).
    if lines > 2 || DONE.find(event).is_some() || ERROR.find(event).is_some() {
        return false;
    }
    let skip = |b: &[u8]| -> usize { b.iter().take_while(|c| c.is_ascii_whitespace()).count() };
    let mut rest = event;
    while let Some(at) = FINISH.find(rest) {
        rest = &rest[at + FINISH.needle().len()..];
        let after = &rest[skip(rest)..];
        let Some(after) = after.strip_prefix(b":") else {
            return false;
        };
        if !after[skip(after)..].starts_with(b"null") {
            return false;
        }
    }
    true
}

/// `data` with `changes` made and every choice's `delta.role` removed.
fn without_role(data: &str, changes: &[Change]) -> Option<String> {
    let mut v: serde_json::Map<String, Value> = serde_json::from_str(data).ok()?;
    for change in changes {
        change.apply(&mut v);
    }
    if let Some(Value::Array(choices)) = v.get_mut("choices") {
        for choice in choices {
            if let Some(Value::Object(delta)) = choice.get_mut("delta") {
                delta.remove("role");
            }
        }
    }
    serde_json::to_string(&v).ok()
}

/// A continuation's usage as the whole answer's: the text sent before the
/// seam (`moved` tokens) was prompt to the continuation's server but is
/// completion to the client. The total is the continuation's own.
fn whole_usage(usage: &Value, moved: u64) -> Value {
    let mut usage = usage.clone();
    let get = |u: &Value, k: &str| u.get(k).and_then(Value::as_u64);
    if let (Some(p), Some(c)) = (
        get(&usage, "prompt_tokens"),
        get(&usage, "completion_tokens"),
    ) {
        let moved = moved.min(p);
        usage["prompt_tokens"] = Value::from(p - moved);
        usage["completion_tokens"] = Value::from(c + moved);
    }
    usage
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
