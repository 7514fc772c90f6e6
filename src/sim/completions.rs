//! `/v1/chat/completions` and `/v1/completions`: JSON or an SSE stream of
//! `tok0 `, `tok1 `, ... one `token_interval` apart.

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

pub(crate) async fn completion(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    req: &Request,
    chat: bool,
    cut: Option<Cut>,
    omit_done: bool,
) -> Flow {
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad(shared, conn, req, "request body must be a JSON object").await,
        Err(e) => return bad(shared, conn, req, &format!("invalid JSON body: {e}")).await,
    };
    let limit = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64));
    let n = limit.map_or(shared.tokens, |l| l.min(MAX_TOKENS) as u32);
    let finish = if limit.is_some() { "length" } else { "stop" };
    let prompt = prompt_tokens(&body);
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
        let stream = Stream {
            chat,
            n,
            finish,
            base,
            usage: include_usage.then_some(usage),
            omit_done,
        };
        return stream.run(shared, conn, req.keep_alive, cut).await;
    }
    let text: String = (0..n).map(|i| format!("tok{i} ")).collect();
    let choice = match chat {
        true => {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
        }
        false => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
    };
    let mut v = base;
    v["choices"] = json!([choice]);
    v["usage"] = usage;
    send(
        shared,
        conn,
        Reply::json(200, &v),
        req.keep_alive,
        false,
        cut,
    )
    .await
}

async fn bad(shared: &Shared, conn: &mut Conn, req: &Request, msg: &str) -> Flow {
    let reply = Reply::error(400, msg);
    send(shared, conn, reply, req.keep_alive, false, None).await
}

/// One SSE completion stream.
struct Stream {
    chat: bool,
    n: u32,
    finish: &'static str,
    base: Value,
    usage: Option<Value>,
    omit_done: bool,
}

impl Stream {
    fn event(&self, i: u32) -> Vec<u8> {
        let text = format!("tok{i} ");
        let finish = if i + 1 == self.n {
            json!(self.finish)
        } else {
            Value::Null
        };
        let choice = match (self.chat, i) {
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
        http::chunk(format!("data: {v}\n\n").as_bytes())
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
            Cut::Close(n) | Cut::Stall(n) => n.min(self.n),
        });
        for i in 0..=self.n {
            if cut_at == Some(i) {
                return cut_or_keep(shared, conn, cut).await;
            }
            if i == self.n {
                break;
            }
            let gone = conn.wait_or_disconnect(Some(shared.token_interval)).await;
            if gone || conn.write(&self.event(i)).await.is_err() {
                shared.count_disconnect();
                return Flow::Close;
            }
        }
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
            tail.extend(http::chunk(format!("data: {v}\n\n").as_bytes()));
        }
        if !self.omit_done {
            tail.extend(http::chunk(b"data: [DONE]\n\n"));
        }
        tail.extend_from_slice(http::LAST_CHUNK);
        if conn.write(&tail).await.is_err() {
            shared.count_disconnect();
            return Flow::Close;
        }
        Flow::Keep
    }
}
