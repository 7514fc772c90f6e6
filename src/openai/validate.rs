//! The checks: each failure names the field (`param`) and says what was
//! expected. Messages quote no client strings, only numbers, clipped.

use super::{Endpoint, InvalidRequest};
use serde_json::{Map, Value};

type Result<T = ()> = std::result::Result<T, InvalidRequest>;

/// What the gateway needs from a valid request.
pub(super) struct Checked {
    pub model: String,
    pub stream: bool,
}

pub(super) fn request(endpoint: Endpoint, obj: &Map<String, Value>) -> Result<Checked> {
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        other => return Err(expected("model", "a non-empty string", other)),
    };
    match endpoint {
        Endpoint::ChatCompletions => messages(obj.get("messages"))?,
        Endpoint::Completions => prompt("prompt", obj.get("prompt"), false)?,
        Endpoint::Embeddings => prompt("input", obj.get("input"), true)?,
    }
    let mut stream = false;
    if endpoint.generates() {
        stream = sampling(endpoint, obj)?;
    }
    if let Some(v) = present(obj, "user") {
        if !v.is_string() {
            return Err(expected("user", "a string", Some(v)));
        }
    }
    Ok(Checked { model, stream })
}

/// The optional fields of chat and completions; returns `stream`.
fn sampling(endpoint: Endpoint, obj: &Map<String, Value>) -> Result<bool> {
    let stream = match present(obj, "stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(expected("stream", "a boolean", Some(v))),
    };
    int_in(obj, "max_tokens", 1, None)?;
    int_in(obj, "max_completion_tokens", 0, None)?;
    number_in(obj, "temperature", 0.0, 2.0)?;
    number_in(obj, "top_p", 0.0, 1.0)?;
    int_in(obj, "n", 1, Some(128))?;
    number_in(obj, "presence_penalty", -2.0, 2.0)?;
    number_in(obj, "frequency_penalty", -2.0, 2.0)?;
    int_in(
        obj,
        "seed",
        i128::from(i64::MIN),
        Some(i128::from(u64::MAX)),
    )?;
    match present(obj, "stop") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(stops)) if stops.len() <= 4 => {
            for (i, s) in stops.iter().enumerate() {
                if !s.is_string() {
                    return Err(expected(&format!("stop[{i}]"), "a string", Some(s)));
                }
            }
        }
        Some(v) => {
            return Err(expected(
                "stop",
                "a string or an array of at most 4 strings",
                Some(v),
            ))
        }
    }
    match present(obj, "stream_options") {
        None => {}
        Some(Value::Object(o)) => match present(o, "include_usage") {
            None | Some(Value::Bool(_)) => {}
            Some(v) => {
                return Err(expected(
                    "stream_options.include_usage",
                    "a boolean",
                    Some(v),
                ))
            }
        },
        Some(v) => return Err(expected("stream_options", "an object", Some(v))),
    }
    // `logprobs` is a flag in chat, a count in legacy completions.
    if endpoint == Endpoint::ChatCompletions {
        if let Some(v) = present(obj, "logprobs") {
            if !v.is_boolean() {
                return Err(expected("logprobs", "a boolean", Some(v)));
            }
        }
        int_in(obj, "top_logprobs", 0, Some(20))?;
    } else {
        int_in(obj, "logprobs", 0, None)?;
    }
    Ok(stream)
}

fn messages(messages: Option<&Value>) -> Result {
    let list = match messages {
        Some(Value::Array(list)) if !list.is_empty() => list,
        other => return Err(expected("messages", "a non-empty array", other)),
    };
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(expected(&format!("messages[{i}]"), "an object", Some(m)));
        };
        match m.get("role") {
            Some(Value::String(r)) if !r.is_empty() => {}
            other => {
                return Err(expected(
                    &format!("messages[{i}].role"),
                    "a non-empty string",
                    other,
                ))
            }
        }
        match m.get("content") {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    let Value::Object(part) = part else {
                        let param = format!("messages[{i}].content[{j}]");
                        return Err(expected(&param, "a content part object", Some(part)));
                    };
                    if !part.get("type").is_some_and(Value::is_string) {
                        let param = format!("messages[{i}].content[{j}].type");
                        return Err(expected(&param, "a string", part.get("type")));
                    }
                }
            }
            Some(v) => {
                return Err(expected(
                    &format!("messages[{i}].content"),
                    "a string, null or an array of content parts",
                    Some(v),
                ))
            }
        }
        if let Some(v) = present(m, "tool_calls") {
            if !v.is_array() {
                let param = format!("messages[{i}].tool_calls");
                return Err(expected(&param, "an array", Some(v)));
            }
        }
    }
    Ok(())
}

/// `prompt` (completions) or `input` (embeddings): a string, an array of
/// strings, of token ids, or of token-id arrays. The array itself must not
/// be empty; for embeddings (`strict`) no string or token array may be.
fn prompt(name: &str, value: Option<&Value>, strict: bool) -> Result {
    const KINDS: &str = "a string, an array of strings, an array of token ids \
                         or an array of token-id arrays";
    let non_empty = if strict {
        "a non-empty string"
    } else {
        "a string"
    };
    let list = match value {
        Some(Value::String(s)) if !(strict && s.is_empty()) => return Ok(()),
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::String(_)) => return Err(expected(name, non_empty, value)),
        Some(Value::Array(_)) => return Err(expected(name, "a non-empty array", value)),
        other => return Err(expected(name, KINDS, other)),
    };
    match &list[0] {
        Value::String(_) => {
            for (i, s) in list.iter().enumerate() {
                match s {
                    Value::String(s) if !(strict && s.is_empty()) => {}
                    _ => {
                        let what = format!("{non_empty} (as '{name}' is an array of strings)");
                        return Err(expected(&format!("{name}[{i}]"), &what, Some(s)));
                    }
                }
            }
        }
        Value::Array(_) => {
            for (i, tokens) in list.iter().enumerate() {
                let param = format!("{name}[{i}]");
                match tokens {
                    Value::Array(t) if !(strict && t.is_empty()) => token_ids(&param, t)?,
                    _ => {
                        let what = if strict {
                            "a non-empty array of token ids"
                        } else {
                            "an array of token ids"
                        };
                        return Err(expected(&param, what, Some(tokens)));
                    }
                }
            }
        }
        first if first.is_number() => token_ids(name, list)?,
        first => {
            return Err(InvalidRequest {
                message: format!(
                    "'{name}' must be {KINDS}; its first element is {}",
                    got(first)
                ),
                param: Some(name.to_owned()),
            })
        }
    }
    Ok(())
}

fn token_ids(param: &str, ids: &[Value]) -> Result {
    for (i, id) in ids.iter().enumerate() {
        if as_int(id).is_none_or(|n| n < 0) {
            let what = "a token id (a non-negative integer)";
            return Err(expected(&format!("{param}[{i}]"), what, Some(id)));
        }
    }
    Ok(())
}

/// Optional integer field in `min..=max`.
fn int_in(obj: &Map<String, Value>, key: &str, min: i128, max: Option<i128>) -> Result {
    let Some(v) = present(obj, key) else {
        return Ok(());
    };
    if as_int(v).is_some_and(|n| n >= min && max.is_none_or(|max| n <= max)) {
        return Ok(());
    }
    let what = match max {
        _ if min == i128::from(i64::MIN) => "an integer".to_owned(),
        Some(max) => format!("an integer between {min} and {max}"),
        None if min == 0 => "a non-negative integer".to_owned(),
        None => format!("an integer of at least {min}"),
    };
    Err(expected(key, &what, Some(v)))
}

/// Optional number field in `min..=max`.
fn number_in(obj: &Map<String, Value>, key: &str, min: f64, max: f64) -> Result {
    let Some(v) = present(obj, key) else {
        return Ok(());
    };
    if v.as_f64().is_some_and(|n| (min..=max).contains(&n)) {
        return Ok(());
    }
    Err(expected(
        key,
        &format!("a number between {min} and {max}"),
        Some(v),
    ))
}

/// The field's value unless absent or `null` (both mean "not given").
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// An integer, also when written as a whole float (`100.0`), as lenient
/// servers (pydantic) accept it.
pub(super) fn as_int(v: &Value) -> Option<i128> {
    if let Some(n) = v.as_u64() {
        return Some(n.into());
    }
    if let Some(n) = v.as_i64() {
        return Some(n.into());
    }
    let f = v.as_f64()?;
    // Below 2^53 every whole float is exact.
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i128)
}

/// "'param' must be <what>, got <value>" (or "(it is missing)").
fn expected(param: &str, what: &str, value: Option<&Value>) -> InvalidRequest {
    let found = match value {
        None => " (it is missing)".to_owned(),
        Some(v) => format!(", got {}", got(v)),
    };
    InvalidRequest {
        message: format!("'{param}' must be {what}{found}"),
        param: Some(param.to_owned()),
    }
}

/// A client value described for a message: numbers clipped, strings never
/// quoted (they may be long or sensitive), containers by kind.
pub(super) fn got(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => clip(&n.to_string(), 40),
        Value::String(s) if s.is_empty() => "an empty string".to_owned(),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// At most `max` chars of `s`, marked with "..." when cut.
pub(super) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}...", &s[..at]),
    }
}
