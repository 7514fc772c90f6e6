//! Asking a server to carry on an answer another one was cut off in: the
//! original chat request with the text already sent appended as a partial
//! assistant message, in the dialect the pool declares. Pure.
//!
//! - vLLM and SGLang: `continue_final_message: true` with
//!   `add_generation_prompt: false`: the chat template leaves the final
//!   assistant message open and the model continues it.
//! - DeepSeek's chat prefix completion (beta): `prefix: true` on the last
//!   assistant message, sent to `/beta/chat/completions`.
//!
//! The body is edited in place (see `splice`): the client's fields keep
//! their order and spelling.

use super::splice::{splice, Change};
use serde_json::{json, Value};

/// How a pool's servers continue a partial answer (`pool.continuation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// Cut streams are not resumed on this pool.
    #[default]
    None,
    /// vLLM / SGLang: `continue_final_message`.
    Vllm,
    /// DeepSeek: `prefix: true`, on the beta path.
    DeepSeek,
}

impl Dialect {
    pub fn parse(s: &str) -> Option<Dialect> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Some(Dialect::None),
            "vllm" | "sglang" => Some(Dialect::Vllm),
            "deepseek" => Some(Dialect::DeepSeek),
            _ => None,
        }
    }
}

/// The request that continues an answer of which `prefix` (`sent`
/// tokens) has been sent: `(path, body)`, or `None` if the body cannot be
/// edited (not a JSON object with `messages`). With nothing sent yet the
/// original request is sent again as it was.
pub fn request(
    dialect: Dialect,
    path: &str,
    body: &[u8],
    prefix: &str,
    sent: u64,
) -> Option<(String, Vec<u8>)> {
    if dialect == Dialect::None {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut obj: serde_json::Map<String, Value> = serde_json::from_str(text).ok()?;
    if !obj.get("messages").is_some_and(Value::is_array) {
        return None;
    }
    let mut changes = Vec::new();
    // The limit is on the whole answer: what was sent counts against it.
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(limit) = obj.get(key).and_then(Value::as_u64) {
            changes.push(Change::Set {
                key,
                json: limit.saturating_sub(sent).max(1).to_string(),
            });
        }
    }
    let mut path = path.to_owned();
    if !prefix.is_empty() {
        let message = match dialect {
            Dialect::DeepSeek => json!({"role": "assistant", "content": prefix, "prefix": true}),
            _ => json!({"role": "assistant", "content": prefix}),
        };
        changes.push(Change::Push {
            key: "messages",
            json: message.to_string(),
        });
        match dialect {
            Dialect::Vllm => {
                changes.push(Change::Set {
                    key: "continue_final_message",
                    json: "true".to_owned(),
                });
                changes.push(Change::Set {
                    key: "add_generation_prompt",
                    json: "false".to_owned(),
                });
            }
            Dialect::DeepSeek => path = beta_path(&path),
            Dialect::None => {}
        }
    }
    for change in &changes {
        change.apply(&mut obj);
    }
    let out = splice(text, &changes)?;
    // The in-place edit must say exactly what was meant.
    let check: serde_json::Map<String, Value> = serde_json::from_str(&out).ok()?;
    (check == obj).then(|| (path, out.into_bytes()))
}

/// DeepSeek serves prefix completion under `/beta`: `/v1/chat/completions`
/// and `/chat/completions` become `/beta/chat/completions` (a query kept).
fn beta_path(path: &str) -> String {
    let (p, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let rest = p
        .strip_prefix("/v1")
        .filter(|r| r.starts_with('/'))
        .unwrap_or(p);
    match query {
        Some(q) => format!("/beta{rest}?{q}"),
        None => format!("/beta{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":40,"temperature":1e0}"#;

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn vllm_continues_the_final_message() {
        let (path, body) = request(
            Dialect::Vllm,
            "/v1/chat/completions",
            BODY.as_bytes(),
            "tok0 tok1 ",
            2,
        )
        .unwrap();
        assert_eq!(path, "/v1/chat/completions");
        let v = parse(&body);
        assert_eq!(
            v["messages"][1],
            json!({"role": "assistant", "content": "tok0 tok1 "})
        );
        assert_eq!(v["continue_final_message"], true);
        assert_eq!(v["add_generation_prompt"], false);
        assert_eq!(v["max_tokens"], 38);
        // Everything else is the client's, byte for byte.
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(r#"{"model":"m","messages":[{"role":"user","content":"hi"},"#));
        assert!(text.contains(r#""temperature":1e0"#));
    }

    #[test]
    fn deepseek_marks_the_prefix_and_goes_to_beta() {
        let (path, body) = request(
            Dialect::DeepSeek,
            "/v1/chat/completions?x=1",
            BODY.as_bytes(),
            "Hello \"world\"\n",
            3,
        )
        .unwrap();
        assert_eq!(path, "/beta/chat/completions?x=1");
        let v = parse(&body);
        assert_eq!(
            v["messages"][1],
            json!({"role": "assistant", "content": "Hello \"world\"\n", "prefix": true})
        );
        assert!(v.get("continue_final_message").is_none());
        assert_eq!(beta_path("/chat/completions"), "/beta/chat/completions");
        assert_eq!(
            beta_path("/v1x/chat/completions"),
            "/beta/v1x/chat/completions"
        );
    }

    #[test]
    fn nothing_sent_yet_sends_the_request_again() {
        let (path, body) = request(
            Dialect::Vllm,
            "/v1/chat/completions",
            BODY.as_bytes(),
            "",
            0,
        )
        .unwrap();
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(parse(&body), parse(BODY.as_bytes()));
    }

    #[test]
    fn limits_never_reach_zero_and_absent_ones_stay_absent() {
        let body = r#"{"model":"m","messages":[],"max_completion_tokens":5}"#;
        let (_, out) = request(
            Dialect::Vllm,
            "/v1/chat/completions",
            body.as_bytes(),
            "a",
            9,
        )
        .unwrap();
        let v = parse(&out);
        assert_eq!(v["max_completion_tokens"], 1);
        assert!(v.get("max_tokens").is_none());
        assert_eq!(
            v["messages"],
            json!([{"role": "assistant", "content": "a"}])
        );
    }

    #[test]
    fn what_cannot_be_continued_is_refused() {
        assert!(request(
            Dialect::None,
            "/v1/chat/completions",
            BODY.as_bytes(),
            "a",
            1
        )
        .is_none());
        for body in ["[]", "{}", r#"{"messages":"x"}"#, "not json"] {
            assert!(
                request(Dialect::Vllm, "/p", body.as_bytes(), "a", 1).is_none(),
                "{body}"
            );
        }
        assert_eq!(Dialect::parse("SGLang"), Some(Dialect::Vllm));
        assert_eq!(Dialect::parse("openai"), None);
    }
}
