//! Who is calling: the client key a route requires, checked from the head
//! alone (before the body is read, a backend slot or a queue place is
//! taken), then the key's limits, then what it may use once the route and
//! model are known.

use crate::config::Config;
use crate::error::GatewayError;
use crate::keys::{self, ClientKey, Presented};
use crate::metrics;
use crate::ratelimit::{window, Decision, Exceeded, Grant, Limiter};
use std::sync::Arc;
use std::time::Duration;

/// An identified caller, admitted under its limits.
pub struct Caller<'g> {
    pub key: &'g ClientKey,
    /// Held until the request ends (its place among requests in flight).
    pub grant: Grant,
}

/// Some route that may serve `path` requires a key.
pub fn key_required(config: &Config, path: &str) -> bool {
    config
        .routes
        .iter()
        .any(|r| r.require_key && path.starts_with(&r.path_prefix))
}

fn unauthorized(code: &'static str, message: &str) -> GatewayError {
    let mut e = GatewayError::new(401, code, message);
    e.kind = "invalid_request_error";
    e.with_headers(vec![("www-authenticate", "Bearer".to_owned())])
}

/// The key presented, checked against `[auth]`; `Ok(None)` when no route
/// of `path` asks for one.
pub fn identify<'g>(
    config: &'g Config,
    path: &str,
    headers: &http::HeaderMap,
) -> Result<Option<&'g ClientKey>, GatewayError> {
    // Validation makes require_key need [auth]: without keys no route asks
    // for one, and the routes are not walked on every request.
    let Some(auth) = &config.auth else {
        return Ok(None);
    };
    if !key_required(config, path) {
        return Ok(None);
    }
    match keys::presented(headers) {
        Presented::Nothing => {
            metrics::auth_failure("missing");
            Err(unauthorized(
                "missing_api_key",
                "this route needs an API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
            ))
        }
        Presented::Unusable => {
            metrics::auth_failure("invalid");
            Err(unauthorized(
                "invalid_api_key",
                "the Authorization header holds no bearer key",
            ))
        }
        Presented::Key(k) => match auth.keys.identify(k) {
            Some(key) => Ok(Some(key)),
            None => {
                metrics::auth_failure("invalid");
                Err(unauthorized("invalid_api_key", "the API key is not valid"))
            }
        },
    }
}

/// Count the request against its key's limits.
pub async fn admit<'g>(
    limiter: &Arc<Limiter>,
    key: &'g ClientKey,
) -> Result<Caller<'g>, GatewayError> {
    match limiter.admit(key).await {
        Decision::Allowed(grant) => {
            metrics::key_request(&key.name);
            Ok(Caller { key, grant })
        }
        Decision::Limited {
            exceeded,
            retry_after,
            headers,
        } => {
            metrics::key_rejected(&key.name, exceeded.label());
            let (what, limit) = match exceeded {
                Exceeded::Requests => ("requests per minute", key.limits.rpm),
                Exceeded::Tokens => ("tokens per minute", key.limits.tpm),
                Exceeded::Concurrency => ("requests in flight", key.limits.concurrency),
            };
            let mut e = GatewayError::new(
                429,
                "rate_limit_exceeded",
                format!(
                    "key '{}' is at its limit of {limit} {what}; retry in {}",
                    key.name,
                    window::openai_duration(retry_after)
                ),
            )
            .with_retry_after(retry_after)
            .with_headers(headers.pairs());
            e.kind = openai_type(exceeded);
            Err(e)
        }
        Decision::Unavailable => Err(GatewayError::new(
            503,
            "ratelimit_unavailable",
            "the rate-limit store cannot be reached; try again shortly",
        )
        .with_retry_after(Duration::from_secs(1))),
    }
}

/// What the key may use, once the route and model are known.
pub fn permitted(key: &ClientKey, route: &str, model: Option<&str>) -> Result<(), GatewayError> {
    let denied = |reason: &str, message: String| {
        metrics::key_rejected(&key.name, reason);
        let mut e = GatewayError::new(403, "permission_denied", message);
        e.kind = "invalid_request_error";
        Err(e)
    };
    if !key.may_use_route(route) {
        return denied(
            "route",
            format!("key '{}' may not use route '{route}'", key.name),
        );
    }
    if !key.may_use_model(model) {
        let shown: String = model.unwrap_or("").chars().take(100).collect();
        return denied(
            "model",
            format!("key '{}' may not use model '{shown}'", key.name),
        );
    }
    Ok(())
}

/// An estimate of a request's prompt tokens: a quarter of the characters
/// of its messages (`content` strings and text parts), `prompt` or `input`,
/// or of the whole body when it is not such JSON. Only the key's token
/// limit and usage metrics read it; nothing is refused for it alone.
pub fn prompt_tokens(body: &[u8]) -> u64 {
    fn text_len(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::String(s) => s.chars().count(),
            serde_json::Value::Array(a) => a.iter().map(text_len).sum(),
            serde_json::Value::Object(o) => o.get("text").map_or(0, text_len),
            _ => 0,
        }
    }
    let chars = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            let messages: usize = v["messages"]
                .as_array()
                .map_or(0, |m| m.iter().map(|m| text_len(&m["content"])).sum());
            messages + text_len(&v["prompt"]) + text_len(&v["input"])
        }
        Err(_) => body.len(),
    };
    (chars as u64).div_ceil(4)
}

/// OpenAI's `type` for a rate-limit error names the limit.
fn openai_type(e: Exceeded) -> &'static str {
    match e {
        Exceeded::Tokens => "tokens",
        Exceeded::Requests | Exceeded::Concurrency => "requests",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_tokens_from_what_the_model_reads() {
        let chat = br#"{"model":"m","messages":[{"role":"system","content":"12345678"},{"role":"user","content":[{"type":"text","text":"abcd"}]}]}"#;
        assert_eq!(prompt_tokens(chat), 3);
        assert_eq!(
            prompt_tokens(br#"{"model":"m","prompt":["abcd","efgh"]}"#),
            2
        );
        assert_eq!(prompt_tokens(br#"{"input":"x"}"#), 1);
        assert_eq!(prompt_tokens(b"not json at all!"), 4);
        assert_eq!(prompt_tokens(b"{}"), 0);
    }
}
