//! Fallback pools may serve a different model name (e.g. a hosted model →
//! a local quantised one): the JSON body's `model` is rewritten for them.

use bytes::Bytes;
use pingora_http::RequestHeader;

/// The request with its JSON `model` set to `model`, or `None` when the
/// body is not a JSON object with a `model` (nothing safe to rewrite).
pub fn rewrite_model(
    head: &RequestHeader,
    body: &Bytes,
    model: &str,
) -> Option<(RequestHeader, Bytes)> {
    let mut json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let slot = json.as_object_mut()?.get_mut("model")?;
    *slot = serde_json::Value::String(model.to_owned());
    let body = Bytes::from(serde_json::to_vec(&json).ok()?);
    let mut head = head.clone();
    head.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
        .ok()?;
    Some((head, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(len: usize) -> RequestHeader {
        let mut h = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        h.insert_header("content-length", len.to_string()).unwrap();
        h
    }

    #[test]
    fn rewrites_the_model_and_the_length() {
        let body = Bytes::from_static(br#"{"model":"deepseek-r1","messages":[],"stream":true}"#);
        let (h, b) = rewrite_model(&head(body.len()), &body, "deepseek-r1-int8").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "deepseek-r1-int8");
        assert_eq!(v["stream"], true);
        assert_eq!(h.headers["content-length"], b.len().to_string());
    }

    #[test]
    fn leaves_what_it_cannot_rewrite() {
        for body in [&b"not json"[..], b"[1,2]", br#"{"messages":[]}"#, b""] {
            let body = Bytes::copy_from_slice(body);
            assert!(rewrite_model(&head(body.len()), &body, "m").is_none());
        }
    }
}
