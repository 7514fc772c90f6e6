//! Errors the gateway itself answers with: an HTTP status plus a JSON body in
//! the OpenAI error shape, so clients built for model APIs can read them.

use std::time::Duration;

/// A response the gateway produces on its own (never an upstream's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub status: u16,
    /// OpenAI's `type`: `gateway_error` for our own conditions,
    /// `invalid_request_error` for a request the client must fix.
    pub kind: &'static str,
    /// The request field at fault, for invalid requests.
    pub param: Option<String>,
    /// Stable machine-readable code, e.g. `upstream_busy`.
    pub code: &'static str,
    /// Human-readable; never contains credentials or internal addresses.
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, rounded up) when set.
    pub retry_after: Option<Duration>,
    /// More headers to answer with (`x-ratelimit-*`, `WWW-Authenticate`).
    pub headers: Box<[(&'static str, String)]>,
}

impl GatewayError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            status,
            kind: "gateway_error",
            param: None,
            code,
            message: message.into(),
            retry_after: None,
            headers: Box::default(),
        }
    }

    pub fn with_headers(mut self, headers: Vec<(&'static str, String)>) -> Self {
        let mut all = std::mem::take(&mut self.headers).into_vec();
        all.extend(headers);
        self.headers = all.into_boxed_slice();
        self
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn no_route(path: &str) -> Self {
        // The path is the client's own input; echo only a bounded prefix.
        let shown: String = path.chars().take(200).collect();
        Self::new(
            404,
            "route_not_found",
            format!("no route matches '{shown}'"),
        )
    }

    pub fn no_capacity(pool: &str, retry_after: Duration) -> Self {
        Self::new(
            503,
            "upstream_unavailable",
            format!("no server of pool '{pool}' is available"),
        )
        .with_retry_after(retry_after)
    }

    /// Turned away by the pool's queue (full, or waited `max_wait`).
    pub fn shed(pool: &str, reason: &str, retry_after: Duration) -> Self {
        Self::new(
            503,
            "upstream_busy",
            format!("all servers of pool '{pool}' are busy ({reason})"),
        )
        .with_retry_after(retry_after)
    }

    /// The gateway host ran out of connections (file descriptors, ports).
    /// Plain HTTP sent to a TLS listener.
    pub fn tls_required() -> Self {
        Self::new(
            400,
            "tls_required",
            "this port speaks HTTPS; send the request with https://",
        )
    }

    pub fn overloaded() -> Self {
        Self::new(
            503,
            "gateway_overloaded",
            "the gateway cannot open more connections right now",
        )
        .with_retry_after(Duration::from_secs(1))
    }

    /// `limits.max_buffered_bytes` is reached: no room for another body.
    pub fn buffers_full() -> Self {
        Self::new(
            503,
            "gateway_overloaded",
            "the gateway is holding too many request bodies right now",
        )
        .with_retry_after(Duration::from_secs(1))
    }

    pub fn upstream_failed(pool: &str) -> Self {
        Self::new(
            502,
            "upstream_failed",
            format!("the upstream of pool '{pool}' failed before answering"),
        )
    }

    /// A `101` that switches to a protocol the client did not offer.
    pub fn bad_upgrade(pool: &str) -> Self {
        Self::new(
            502,
            "upstream_bad_upgrade",
            format!("the upstream of pool '{pool}' switched to a protocol that was not offered"),
        )
    }

    pub fn upstream_timeout(pool: &str) -> Self {
        Self::new(
            504,
            "upstream_timeout",
            format!("the upstream of pool '{pool}' did not answer in time"),
        )
    }

    pub fn deadline(route: &str) -> Self {
        Self::new(
            504,
            "deadline_exceeded",
            format!("the request ran past route '{route}' total timeout"),
        )
    }

    pub fn body_too_large(limit: u64) -> Self {
        Self::new(
            413,
            "body_too_large",
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn headers_too_large(limit: u64) -> Self {
        Self::new(
            431,
            "headers_too_large",
            format!("request headers exceed the limit of {limit} bytes"),
        )
    }

    pub fn uri_too_long(limit: u64) -> Self {
        Self::new(
            414,
            "uri_too_long",
            format!("the request line exceeds the limit of {limit} bytes"),
        )
    }

    /// A method the gateway never forwards (TRACE, CONNECT).
    pub fn method_not_allowed(method: &str) -> Self {
        let shown: String = method.chars().take(20).collect();
        Self::new(
            405,
            "method_not_allowed",
            format!("the method {shown} is not allowed"),
        )
    }

    /// A request path with no safe canonical form (`crate::path`).
    pub fn bad_path(err: crate::path::PathError) -> Self {
        Self::new(400, "bad_path", err.message())
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }

    /// A request the client must fix (OpenAI's `invalid_request_error`).
    pub fn invalid_request(message: impl Into<String>, param: Option<String>) -> Self {
        GatewayError {
            kind: "invalid_request_error",
            param,
            ..Self::new(400, "invalid_request", message)
        }
    }

    pub fn model_not_found(model: Option<&str>) -> Self {
        let message = match model {
            Some(m) => {
                let shown: String = m.chars().take(100).collect();
                format!("no route serves the model '{shown}'")
            }
            None => "this path needs a JSON body with a 'model'".to_owned(),
        };
        GatewayError {
            kind: "invalid_request_error",
            param: Some("model".into()),
            ..Self::new(404, "model_not_found", message)
        }
    }

    /// A body whose Content-Encoding we cannot or will not decode.
    pub fn body(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(status, code, message)
    }

    /// `Retry-After` in whole seconds, at least 1: a 0 would invite an
    /// immediate retry storm.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(retry_after_secs)
    }

    pub fn json(&self) -> String {
        let mut error = serde_json::json!({
            "message": self.message,
            "type": self.kind,
            "code": self.code,
        });
        if let Some(param) = &self.param {
            error["param"] = serde_json::Value::String(param.clone());
        }
        serde_json::json!({ "error": error }).to_string()
    }
}

/// Seconds for a `Retry-After` header: rounded up, never below 1.
pub fn retry_after_secs(after: Duration) -> u64 {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_error_shape() {
        let e = GatewayError::no_capacity("deepseek", Duration::from_millis(1500));
        let v: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(v["error"]["type"], "gateway_error");
        assert_eq!(v["error"]["code"], "upstream_unavailable");
        assert_eq!(
            v["error"]["message"],
            "no server of pool 'deepseek' is available"
        );
        assert_eq!(e.status, 503);
        assert_eq!(e.retry_after_secs(), Some(2));
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(3001)), 4);
    }

    #[test]
    fn invalid_requests_name_the_field() {
        let e = GatewayError::invalid_request(
            "'messages' must be a non-empty array",
            Some("messages".into()),
        );
        let v: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
        assert_eq!(e.status, 400);
        let e = GatewayError::model_not_found(Some("gpt-9"));
        let v: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(e.status, 404);
    }

    #[test]
    fn no_route_message_is_bounded() {
        let long = "/x".repeat(1000);
        let e = GatewayError::no_route(&long);
        assert!(e.message.len() < 260);
    }
}
