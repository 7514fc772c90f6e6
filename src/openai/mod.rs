//! OpenAI request inspection for routes with `openai = true`: the JSON body
//! of `POST .../chat/completions`, `.../completions` and `.../embeddings` is
//! checked before it takes a backend slot, normalised where the route opts
//! in, and its `model` read for model routing. Pure: no I/O, no async.
//!
//! Validation is deliberately close to what OpenAI-compatible servers accept:
//! unknown fields pass untouched (vLLM's `top_k`, `repetition_penalty`, ...)
//! and numbers written as whole floats (`100.0`) count as integers.
//!
//! Normalisation never changes the meaning of a request silently: only the
//! two opt-in [`Normalise`] rules exist. A body they change is edited in
//! place (see `splice`): only the changed values are rewritten, so field
//! order, whitespace, number spellings and string escapes of everything else
//! stay byte-identical. This needs no `preserve_order` feature of
//! `serde_json`.

pub mod context;
pub mod continuation;
mod splice;
pub mod stream;
#[cfg(test)]
mod tests;
mod validate;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use splice::Change;

/// An OpenAI endpoint whose body the gateway understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// Matches on the end of the (canonical) path, so `/v1/chat/completions`
    /// and `/openai/v1/chat/completions` both work. Case, a trailing `/`
    /// and `;params` do not matter: a backend that ignores them would
    /// serve the endpoint, so its checks must apply. A query string, if
    /// passed along, is ignored.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let mut segments = crate::path::match_segments(path).rev();
        let last = segments.next()?;
        match (last.as_str(), segments.next().as_deref()) {
            ("completions", Some("chat")) => Some(Endpoint::ChatCompletions),
            ("completions", _) => Some(Endpoint::Completions),
            ("embeddings", _) => Some(Endpoint::Embeddings),
            _ => None,
        }
    }

    /// Chat and legacy completions generate text (and may stream).
    fn generates(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }
}

/// Normalisation rules a route opts into (all off by default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Normalise {
    /// Clamp `max_tokens` / `max_completion_tokens` to this (None = no
    /// clamp). Never raises a value, never adds one that wasn't there.
    pub max_tokens_limit: Option<u64>,
    /// For streaming chat/completions requests that don't say, set
    /// `stream_options.include_usage = true` (so usage can be counted). A
    /// client that set it (true or false) is left alone.
    pub include_usage: bool,
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    pub endpoint: Endpoint,
    pub model: String,
    /// `"stream": true` on chat/completions; always false for embeddings.
    pub stream: bool,
    /// Choices asked for (`n`, 1 when absent).
    pub choices: u64,
    /// Some(new body) when a normalisation rule changed the request; None:
    /// forward the body unchanged (byte-identical).
    pub rewritten: Option<Vec<u8>>,
    /// Human-readable list of the rules applied, for the debug log (e.g.
    /// "max_tokens 100000 -> 8192").
    pub applied: Vec<String>,
}

/// Why a request was refused (answered with 400 by the gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest {
    /// Says what was expected; echoes at most ~100 chars of client data.
    pub message: String,
    /// The offending field, e.g. `messages[2].content`; None for a body
    /// that is not a JSON object at all.
    pub param: Option<String>,
}

impl InvalidRequest {
    /// OpenAI error shape:
    /// `{"error":{"message":..,"type":"invalid_request_error","param":..,"code":null}}`
    pub fn body(&self) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            param: Option<&'a str>,
            code: Option<()>,
        }
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: "invalid_request_error",
                param: self.param.as_deref(),
                code: None,
            },
        };
        serde_json::to_string(&body).expect("plain strings always serialise")
    }
}

/// Noted in `applied` if the in-place edit ever failed and the body was
/// re-serialised instead (sorted keys). Should never happen; the fuzz
/// target asserts it does not.
const RESERIALISED: &str = "body re-serialised (field order not kept)";

/// Validates `body` for `endpoint` and applies the route's `rules`.
pub fn inspect(
    endpoint: Endpoint,
    body: &[u8],
    rules: &Normalise,
) -> Result<Inspected, InvalidRequest> {
    let text = std::str::from_utf8(body).map_err(|e| InvalidRequest {
        message: format!(
            "request body is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ),
        param: None,
    })?;
    // serde_json stops at its recursion limit (128 levels): deep nesting
    // is an error here, never a stack overflow.
    let mut json: Value = serde_json::from_str(text).map_err(|e| InvalidRequest {
        message: validate::clip(&format!("request body is not valid JSON: {e}"), 200),
        param: None,
    })?;
    let Some(obj) = json.as_object_mut() else {
        return Err(InvalidRequest {
            message: format!(
                "request body must be a JSON object, got {}",
                validate::got(&json)
            ),
            param: None,
        });
    };
    let checked = validate::request(endpoint, obj)?;

    let changes = plan(endpoint, obj, checked.stream, rules);
    let mut inspected = Inspected {
        endpoint,
        model: checked.model,
        stream: checked.stream,
        choices: obj
            .get("n")
            .and_then(validate::as_int)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(1),
        rewritten: None,
        applied: changes.iter().map(|(_, note)| note.clone()).collect(),
    };
    if changes.is_empty() {
        return Ok(inspected);
    }
    let changes: Vec<Change> = changes.into_iter().map(|(c, _)| c).collect();
    for change in &changes {
        change.apply(obj);
    }
    // Edit the original text in place; keep the edit only if it parses to
    // exactly the changed value (it always should: the fuzz target checks).
    let spliced = splice::splice(text, &changes)
        .filter(|s| serde_json::from_str::<Value>(s).is_ok_and(|v| v == json));
    inspected.rewritten = Some(match spliced {
        Some(s) => s.into_bytes(),
        None => {
            inspected.applied.push(RESERIALISED.to_owned());
            serde_json::to_vec(&json).expect("a parsed Value always serialises")
        }
    });
    Ok(inspected)
}

/// The changes `rules` call for, each with its note for the debug log.
fn plan(
    endpoint: Endpoint,
    obj: &serde_json::Map<String, Value>,
    stream: bool,
    rules: &Normalise,
) -> Vec<(Change, String)> {
    let mut changes = Vec::new();
    if !endpoint.generates() {
        return changes;
    }
    if let Some(limit) = rules.max_tokens_limit {
        for key in ["max_tokens", "max_completion_tokens"] {
            let Some(v) = obj.get(key) else { continue };
            if validate::as_int(v).is_some_and(|n| n > i128::from(limit)) {
                changes.push((
                    Change::Clamp { key, to: limit },
                    format!("{key} {v} -> {limit}"),
                ));
            }
        }
    }
    if rules.include_usage && stream {
        let set = obj
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .is_some_and(|v| !v.is_null());
        if !set {
            changes.push((
                Change::IncludeUsage,
                "stream_options.include_usage -> true (added)".to_owned(),
            ));
        }
    }
    changes
}

/// A JSON body with `"stream": true` made `"stream": false` (and its
/// `stream_options` null, which servers refuse without a stream), edited
/// in place; `None` when it does not stream (or is not a JSON object).
pub fn without_stream(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut obj: serde_json::Map<String, Value> = serde_json::from_str(text).ok()?;
    if obj.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    let mut changes = vec![Change::Set {
        key: "stream",
        json: "false".to_owned(),
    }];
    if obj.contains_key("stream_options") {
        changes.push(Change::Set {
            key: "stream_options",
            json: "null".to_owned(),
        });
    }
    for change in &changes {
        change.apply(&mut obj);
    }
    let out = splice::splice(text, &changes)?;
    let check: serde_json::Map<String, Value> = serde_json::from_str(&out).ok()?;
    (check == obj).then(|| out.into_bytes())
}

/// Just the `model` of a JSON body (for model routing on routes without
/// openai validation); None if absent/not JSON/not a string.
pub fn peek_model(body: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    use std::fmt;

    /// Whether a key is `model` (escapes decoded), without keeping it.
    struct IsModel(bool);
    impl<'de> Deserialize<'de> for IsModel {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Key;
            impl Visitor<'_> for Key {
                type Value = IsModel;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a key")
                }
                fn visit_str<E>(self, key: &str) -> Result<IsModel, E> {
                    Ok(IsModel(key == "model"))
                }
            }
            d.deserialize_str(Key)
        }
    }

    /// A JSON object's last `model` (as `inspect` reads it); other values
    /// are skipped without being built.
    struct Peek(Option<String>);
    impl<'de> Deserialize<'de> for Peek {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Object;
            impl<'de> Visitor<'de> for Object {
                type Value = Peek;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Peek, A::Error> {
                    let mut model = None;
                    while let Some(IsModel(is_model)) = map.next_key()? {
                        if is_model {
                            model = match map.next_value::<Value>()? {
                                Value::String(m) => Some(m),
                                _ => None,
                            };
                        } else {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                    Ok(Peek(model))
                }
            }
            d.deserialize_map(Object)
        }
    }

    serde_json::from_slice::<Peek>(body).ok()?.0
}

/// Fuzz target body (the harness lives under `fuzz/`): every endpoint, with
/// and without rules; must never panic, a rewritten body must be JSON that
/// passes again unchanged, and error messages stay bounded.
#[doc(hidden)]
pub fn fuzz_inspect(data: &[u8]) {
    let rule_sets = [
        Normalise::default(),
        Normalise {
            max_tokens_limit: Some(16),
            include_usage: true,
        },
    ];
    for endpoint in [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
    ] {
        for rules in &rule_sets {
            match inspect(endpoint, data, rules) {
                Ok(ok) => {
                    assert_eq!(ok.endpoint, endpoint);
                    assert_eq!(peek_model(data).as_ref(), Some(&ok.model));
                    let Some(body) = &ok.rewritten else {
                        assert!(ok.applied.is_empty(), "{:?}", ok.applied);
                        continue;
                    };
                    assert!(*rules != Normalise::default());
                    assert!(!ok.applied.iter().any(|a| a == RESERIALISED));
                    serde_json::from_slice::<Value>(body).expect("rewritten body is JSON");
                    // Normalising is idempotent: the result passes unchanged.
                    let again = inspect(endpoint, body, rules).expect("rewritten body is valid");
                    assert_eq!(again.rewritten, None, "{:?}", again.applied);
                    assert_eq!((again.model, again.stream), (ok.model, ok.stream));
                }
                Err(e) => {
                    assert!(e.message.chars().count() <= 300, "{}", e.message);
                    serde_json::from_str::<Value>(&e.body()).expect("error body is JSON");
                }
            }
        }
    }
}
