//! `/v1/chat/completions` and `/v1/completions`: JSON or an SSE stream of
//! `tok0 `, `tok1 `, ... one `token_interval` apart. The text is always the
//! same, so a continuation of its first k words carries on with `tok{k} `.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::handlers::{cut_or_keep, send, Cut, Flow, Reply};
use super::http::{self, Conn, Framing, Request};
use super::Shared;

/// Upper bound on a request's `max_tokens`.
const MAX_TOKENS: u64 = 100_000;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Rough prompt size: words in the prompt or the messages' text.
fn prompt_tokens(body: &Value) -> u64 {
    fn words(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.split_whitespace().count() as u64,
            Value::Array(items) => items.iter().map(words).sum(),
            Value::Object(m) => m.get("content").or_else(|| m.get("text")).map_or(0, words),
            _ => 0,
        }
    }
    body.get("messages")
        .or_else(|| body.get("prompt"))
        .map_or(0, words)
        .max(1)
}

/// The text a request will be answered with (for the KV-cache model).
pub(crate) fn answer_text(shared: &Shared, body: &[u8]) -> String {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let n = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .map_or(shared.tokens, |l| l.min(MAX_TOKENS) as u32);
    (0..n).map(|i| format!("tok{i} ")).collect()
}

/// What a completion request is answered with, whatever the protocol.
pub(crate) enum Answer {
    Reply(Reply),
    Stream(EventStream),
}

/// Where a chat request asks for its last (assistant) message to be
/// continued, the text to continue.
fn continuation<'b>(body: &'b Value, path: &str) -> Result<Option<&'b str>, String> {
    let last = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"));
    let content = last.and_then(|m| m.get("content")).and_then(Value::as_str);
    let vllm = body.get("continue_final_message").and_then(Value::as_bool) == Some(true);
    let deepseek = last.and_then(|m| m.get("prefix")).and_then(Value::as_bool) == Some(true);
    if vllm {
        // vLLM's own checks.
        if body.get("add_generation_prompt").and_then(Value::as_bool) != Some(false) {
            return Err(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
                    .to_owned(),
            );
        }
        return match content {
            Some(c) => Ok(Some(c)),
            None => Err("continue_final_message needs a final assistant message".to_owned()),
        };
    }
    if deepseek {
        if !path.starts_with("/beta/") {
            return Err("prefix completion is a beta feature: use base_url /beta".to_owned());
        }
        return Ok(content);
    }
    Ok(None)
}

/// Plan the answer to a completion request with this JSON `body` sent to
/// `path`. A continuation (`continue_final_message`, or DeepSeek's
/// `prefix`) carries on the deterministic text after the words given.
pub(crate) fn answer(shared: &Shared, body: &[u8], path: &str, omit_done: bool) -> Answer {
    let chat = path.ends_with("/chat/completions");
    let body: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Answer::Reply(Reply::error(400, "request body must be a JSON object")),
        Err(e) => return Answer::Reply(Reply::error(400, &format!("invalid JSON body: {e}"))),
    };
    let prefix = match continuation(&body, path) {
        Ok(p) => p,
        Err(e) => return Answer::Reply(Reply::error(400, &e)),
    };
    if prefix.is_some() && shared.no_continuation {
        return Answer::Reply(Reply::error(
            400,
            "this server does not continue partial assistant messages",
        ));
    }
    let prompt = prompt_tokens(&body);
    if shared.max_context > 0 && prompt > shared.max_context {
        let message = format!(
            "This model's maximum context length is {} tokens. However, you requested {prompt} tokens ({prompt} in the messages, 0 in the completion). Please reduce the length of the messages or completion.",
            shared.max_context
        );
        let v = json!({"object": "error", "message": message, "type": "BadRequestError", "param": null, "code": 400});
        return Answer::Reply(Reply::json(400, &v));
    }
    if body.to_string().contains("sim:policy") {
        let v = json!({"error": {"message": "Your request was rejected as a result of our safety system.", "type": "invalid_request_error", "param": null, "code": "content_policy_violation"}});
        return Answer::Reply(Reply::json(400, &v));
    }
    // The words already given are the answer's first ones.
    let start = prefix.map_or(0, |p| p.split_whitespace().count() as u32);
    let limit = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64));
    let n = limit.map_or(shared.tokens.saturating_sub(start), |l| {
        l.min(MAX_TOKENS) as u32
    });
    // Offered tools: a streamed answer calls one, its arguments the text.
    let tool = chat
        && body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty());
    let finish = match (tool, limit.is_some()) {
        (true, _) => "tool_calls",
        (false, true) => "length",
        (false, false) => "stop",
    };
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    let (id, object) = match chat {
        true => (format!("chatcmpl-{}-{seq}", shared.name), "chat.completion"),
        false => (format!("cmpl-{}-{seq}", shared.name), "text_completion"),
    };
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + u64::from(n)});
    let base = json!({
        "id": id, "object": object, "created": unix_now(),
        "model": shared.model, "system_fingerprint": shared.name,
    });
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        return Answer::Stream(EventStream {
            chat,
            tool,
            start,
            n,
            finish,
            base,
            usage: include_usage.then_some(usage),
            omit_done,
        });
    }
    let text: String = (start..start + n).map(|i| format!("tok{i} ")).collect();
    let choice = match chat {
        true => {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
        }
        false => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
    };
    let mut v = base;
    v["choices"] = json!([choice]);
    v["usage"] = usage;
    Answer::Reply(Reply::json(200, &v))
}

/// `/v1/chat/completions` or `/v1/completions` over HTTP/1.1.
pub(crate) async fn completion(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    req: &Request,
    chat: bool,
    cut: Option<Cut>,
    omit_done: bool,
) -> Flow {
    // The prompt is prefilled first: the part not cached takes time.
    let prefill = shared
        .kv
        .prefill(&req.body, &answer_text(shared, &req.body));
    if !prefill.is_zero() && conn.wait_or_disconnect(Some(prefill)).await {
        shared.count_disconnect();
        return Flow::Close;
    }
    let path = match chat {
        true => req.path.as_str(),
        false => "/v1/completions",
    };
    match answer(shared, &req.body, path, omit_done) {
        Answer::Reply(reply) => {
            // A request the server refuses is answered whole, fault or not.
            let cut = if reply.code == 200 { cut } else { None };
            send(shared, conn, reply, req.keep_alive, false, cut).await
        }
        Answer::Stream(stream) => stream.run(shared, conn, req.keep_alive, cut).await,
    }
}

/// One SSE completion stream.
pub(crate) struct EventStream {
    chat: bool,
    /// Stream a tool call (`tool_calls` deltas) instead of content.
    tool: bool,
    /// The index of the first token (a continuation starts past 0).
    start: u32,
    n: u32,
    finish: &'static str,
    base: Value,
    usage: Option<Value>,
    omit_done: bool,
}

impl EventStream {
    /// Events in the stream before its tail.
    pub fn len(&self) -> u32 {
        self.n
    }

    /// The `i`-th event, as SSE text.
    pub fn event(&self, i: u32) -> Vec<u8> {
        let text = format!("tok{} ", self.start + i);
        let finish = if i + 1 == self.n {
            json!(self.finish)
        } else {
            Value::Null
        };
        let call = json!({"index": 0, "function": {"arguments": text}});
        let choice = match (self.chat, i) {
            (true, _) if self.tool => {
                let mut call = call;
                if i == 0 {
                    call["id"] = json!("call_0");
                    call["type"] = json!("function");
                    call["function"]["name"] = json!("lookup");
                }
                json!({"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": finish})
            }
            (true, 0) => {
                json!({"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": finish})
            }
            (true, _) => json!({"index": 0, "delta": {"content": text}, "finish_reason": finish}),
            (false, _) => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };
        let mut v = self.base.clone();
        if self.chat {
            v["object"] = json!("chat.completion.chunk");
        }
        v["choices"] = json!([choice]);
        format!("data: {v}\n\n").into_bytes()
    }

    /// What follows the last token: the usage event if asked for, then
    /// `data: [DONE]` (unless the fault leaves it out).
    pub fn tail(&self) -> Vec<Vec<u8>> {
        let mut tail = Vec::new();
        if let Some(usage) = &self.usage {
            let mut v = self.base.clone();
            v["object"] = json!(if self.chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            });
            v["choices"] = json!([]);
            v["usage"] = usage.clone();
            tail.push(format!("data: {v}\n\n").into_bytes());
        }
        if !self.omit_done {
            tail.push(b"data: [DONE]\n\n".to_vec());
        }
        tail
    }

    async fn run(
        self,
        shared: &Shared,
        conn: &mut Conn,
        keep_alive: bool,
        cut: Option<Cut>,
    ) -> Flow {
        let headers = [
            ("content-type", "text/event-stream".to_string()),
            ("cache-control", "no-cache".to_string()),
            ("x-sim-server", shared.name.clone()),
        ];
        let head = http::head(200, &headers, Framing::Chunked, keep_alive);
        if conn.write(&head).await.is_err() {
            shared.count_disconnect();
            return Flow::Close;
        }
        let cut_at = cut.map(|c| match c {
            Cut::Close(n) | Cut::Stall(n) | Cut::End(n) => n.min(self.n),
        });
        for i in 0..=self.n {
            if cut_at == Some(i) {
                if let Some(Cut::End(_)) = cut {
                    if conn.write(http::LAST_CHUNK).await.is_err() {
                        shared.count_disconnect();
                        return Flow::Close;
                    }
                    return Flow::Keep;
                }
                return cut_or_keep(shared, conn, cut).await;
            }
            if i == self.n {
                break;
            }
            let gone = conn.wait_or_disconnect(Some(shared.token_interval)).await;
            if gone || conn.write(&http::chunk(&self.event(i))).await.is_err() {
                shared.count_disconnect();
                return Flow::Close;
            }
        }
        let mut tail: Vec<u8> = self.tail().iter().flat_map(|e| http::chunk(e)).collect();
        tail.extend_from_slice(http::LAST_CHUNK);
        if conn.write(&tail).await.is_err() {
            shared.count_disconnect();
            return Flow::Close;
        }
        Flow::Keep
    }
}
