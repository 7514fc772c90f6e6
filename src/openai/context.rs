//! Telling a "prompt longer than the model's context" refusal apart from
//! every other 400, by what the servers say. Pure.
//!
//! | server | what it says |
//! |---|---|
//! | OpenAI | `code: "context_length_exceeded"` |
//! | vLLM, DeepSeek | "This model's maximum context length is N tokens. However, you requested M tokens…" |
//! | vLLM (newer) | "…is longer than the maximum model length of N" |
//! | llama.cpp | `type: "exceed_context_size_error"`, "the request exceeds the available context size" |
//! | SGLang | "The input (N tokens) is longer than the model's context length (M tokens)." |
//!
//! Content-policy refusals never count, whatever else they say.

use serde_json::Value;

const CODES: &[&str] = &["context_length_exceeded", "exceed_context_size_error"];

const PHRASES: &[&str] = &[
    "maximum context length",
    "longer than the model's context length",
    "exceeds the available context size",
    "longer than the maximum model length",
    "exceeds the model's context window",
    "prompt is too long",
];

const POLICY: &[&str] = &[
    "content_policy",
    "content_filter",
    "content policy",
    "safety",
];

/// Whether a 400 body says the prompt is longer than the model's context.
pub fn exceeded(body: &[u8]) -> bool {
    let said = match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            // `{"error": {...}}` (OpenAI, llama.cpp, DeepSeek) or vLLM's
            // flat `{"object": "error", "message": ...}`.
            let err = v.get("error").filter(|e| e.is_object()).unwrap_or(&v);
            ["message", "code", "type", "detail"]
                .iter()
                .filter_map(|k| err.get(*k))
                .map(|v| match v {
                    Value::String(s) => s.to_ascii_lowercase(),
                    other => other.to_string().to_ascii_lowercase(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        }
        Err(_) => String::from_utf8_lossy(body).to_ascii_lowercase(),
    };
    if POLICY.iter().any(|p| said.contains(p)) {
        return false;
    }
    CODES.iter().chain(PHRASES).any(|p| said.contains(p))
}

#[cfg(test)]
mod tests {
    use super::exceeded;

    #[test]
    fn each_servers_wording_is_recognised() {
        for body in [
            r#"{"error":{"message":"This model's maximum context length is 8192 tokens, however you requested 9000 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            r#"{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.","type":"BadRequestError","param":null,"code":400}"#,
            r#"{"error":{"message":"The decoder prompt (length 5000) is longer than the maximum model length of 4096. Make sure that `max_model_len` is no smaller than the number of text tokens.","type":"BadRequestError","code":400}}"#,
            r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}"#,
            r#"{"object":"error","message":"The input (5000 tokens) is longer than the model's context length (4096 tokens).","type":"BadRequestError","code":400}"#,
            r#"{"error":{"message":"This model's maximum context length is 131072 tokens. However, you requested 140000 tokens (140000 in the messages, 0 in the completion). Please reduce the length of the messages or completion.","type":"invalid_request_error","param":null,"code":"invalid_request_error"}}"#,
            "prompt is too long for this model",
        ] {
            assert!(exceeded(body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn other_refusals_are_not() {
        for body in [
            r#"{"error":{"message":"Your request was rejected as a result of our safety system. Your prompt may contain content that exceeds the maximum context length","type":"invalid_request_error","code":"content_policy_violation"}}"#,
            r#"{"error":{"message":"temperature must be between 0 and 2","type":"invalid_request_error","code":null}}"#,
            r#"{"error":{"message":"The response was filtered due to the prompt triggering content management policy.","code":"content_filter"}}"#,
            r#"{"error":{"message":"messages: field required"}}"#,
            "",
            "not json at all",
        ] {
            assert!(!exceeded(body.as_bytes()), "{body}");
        }
    }
}
