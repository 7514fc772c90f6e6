//! A RabbitMQ message as a request, and how a finished one is settled:
//! what the reply carries and why a message goes to the dead-letter
//! exchange. Pure: no broker here.

use crate::jobs::record::{Job, Problem, State};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use pingora_http::RequestHeader;

/// The message header naming the request's path (else the consumer's).
pub const PATH_HEADER: &str = "path";

/// What a message asks for.
#[derive(Debug)]
pub struct Inbound {
    /// `POST` to the path, with the body's type and coding, as a client
    /// would send it.
    pub head: RequestHeader,
    /// The message's `message_id`, else one made up; the backend sees it as
    /// `x-request-id`.
    pub id: String,
}

/// A message that cannot be a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn invalid(status: u16, code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        status,
        code,
        message: message.into(),
    }
}

/// A header's text, if it is text.
fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::ByteArray(b) => String::from_utf8(b.as_slice().to_vec()).ok(),
        _ => None,
    }
}

/// Read a message's properties as a request head.
pub fn read(props: &BasicProperties, default_path: &str) -> Result<Inbound, Invalid> {
    let path = match props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(PATH_HEADER))
    {
        None => default_path.to_owned(),
        Some(v) => match text(v) {
            Some(p) if p.starts_with('/') => p,
            _ => return Err(invalid(
                400,
                "invalid_path",
                "the `path` header must be text starting with '/', e.g. \"/v1/chat/completions\"",
            )),
        },
    };
    if let Some(t) = props.content_type() {
        let t = t.as_str().to_ascii_lowercase();
        let essence = t.split(';').next().unwrap_or("").trim();
        if !(essence == "application/json" || essence.ends_with("+json") || essence.is_empty()) {
            return Err(invalid(
                415,
                "unsupported_content_type",
                format!("a request's body is JSON; the message's content_type is '{essence}'"),
            ));
        }
    }
    let mut head = RequestHeader::build("POST", path.as_bytes(), None).map_err(|_| {
        invalid(
            400,
            "invalid_path",
            "the `path` header is not a valid request path",
        )
    })?;
    let id = props
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .filter(|m| !m.is_empty() && m.len() <= 200 && !m.chars().any(char::is_control))
        .unwrap_or_else(crate::jobs::new_id);
    let mut add = |name: &'static str, value: &str| {
        head.insert_header(name, value).map_err(|_| {
            invalid(
                400,
                "invalid_header",
                format!("the message's {name} cannot be sent in a request header"),
            )
        })
    };
    add("content-type", "application/json")?;
    add("x-request-id", &id)?;
    if let Some(coding) = props.content_encoding() {
        add("content-encoding", coding.as_str())?;
    }
    Ok(Inbound { head, id })
}

/// What is published back for a finished message.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    /// The error's code, when the request did not succeed.
    pub error: Option<String>,
    pub attempts: u32,
}

/// How a finished message is settled.
#[derive(Debug, Clone, PartialEq)]
pub struct Settle {
    /// Sent to `reply_to`, when the message names one.
    pub reply: Reply,
    /// Why it goes to the dead-letter exchange; `None`: it was served.
    pub dead: Option<Problem>,
    /// `ballast_amqp_messages_total`'s `result`.
    pub result: &'static str,
}

/// The error body the gateway answers with (OpenAI's shape): `kind` is
/// `invalid_request_error` for a message the client must fix, else
/// `gateway_error`.
fn error_body(kind: &str, code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"error": {"message": message, "type": kind, "code": code}})
        .to_string()
        .into_bytes()
}

/// A message that was never a request.
pub fn settle_invalid(why: &Invalid) -> Settle {
    let body = error_body("invalid_request_error", why.code, &why.message);
    Settle {
        reply: Reply {
            status: why.status,
            content_type: "application/json".into(),
            body,
            error: Some(why.code.to_owned()),
            attempts: 0,
        },
        dead: Some(Problem {
            code: why.code.to_owned(),
            message: why.message.clone(),
        }),
        result: "invalid",
    }
}

/// A run that reached its end: its answer, or why there is none.
pub fn settle_job(job: &Job, result: Option<Vec<u8>>) -> Settle {
    let content_type = job
        .response
        .as_ref()
        .and_then(|r| {
            r.headers
                .iter()
                .find(|(n, _)| n == "content-type")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| "application/json".into());
    let status = job.response.as_ref().map(|r| r.status);
    match (job.state, result, &job.error) {
        (State::Succeeded, body, _) => Settle {
            reply: Reply {
                status: status.unwrap_or(200),
                content_type,
                body: body.unwrap_or_default(),
                error: None,
                attempts: job.attempts,
            },
            dead: None,
            result: "succeeded",
        },
        // The backend's own refusal (a 4xx): passed back as it is.
        (_, Some(body), Some(problem)) if problem.code == "upstream_refused" => Settle {
            reply: Reply {
                status: status.unwrap_or(400),
                content_type,
                body,
                error: Some(problem.code.clone()),
                attempts: job.attempts,
            },
            dead: Some(problem.clone()),
            result: "refused",
        },
        (_, _, problem) => {
            let problem = problem.clone().unwrap_or_else(|| Problem {
                code: "failed".into(),
                message: "the request could not be served".into(),
            });
            // A backend's last status when there was one, else the gateway's.
            let status = match status {
                Some(s) if s >= 400 => s,
                _ if problem.code == "route_gone" => 404,
                _ => 502,
            };
            Settle {
                reply: Reply {
                    status,
                    content_type: "application/json".into(),
                    body: error_body("gateway_error", &problem.code, &problem.message),
                    error: Some(problem.code.clone()),
                    attempts: job.attempts,
                },
                dead: Some(problem),
                result: "failed",
            }
        }
    }
}

fn put(table: &mut FieldTable, name: &str, value: AMQPValue) {
    table.insert(ShortString::from(name), value);
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The reply's properties: persistent, the request's `correlation_id`,
/// and headers `status`, `attempts` and (on failure) `error`.
pub fn reply_properties(request: &BasicProperties, reply: &Reply) -> BasicProperties {
    let mut headers = FieldTable::default();
    put(
        &mut headers,
        "status",
        AMQPValue::LongInt(i32::from(reply.status)),
    );
    put(
        &mut headers,
        "attempts",
        AMQPValue::LongInt(i32::try_from(reply.attempts).unwrap_or(i32::MAX)),
    );
    if let Some(code) = &reply.error {
        put(&mut headers, "error", long(code));
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from(reply.content_type.as_str()))
        .with_headers(headers);
    if let Some(c) = request.correlation_id() {
        props = props.with_correlation_id(c.clone());
    }
    if let Some(m) = request.message_id() {
        props = props.with_message_id(m.clone());
    }
    props
}

/// A dead letter: the request's own properties (persistent), with why in
/// `ballast-reason` (a code), `ballast-detail`, `ballast-status` (the
/// backend's last status, if any) and `ballast-attempts`.
pub fn dead_letter_properties(
    request: &BasicProperties,
    problem: &Problem,
    status: Option<u16>,
    attempts: u32,
) -> BasicProperties {
    let mut headers = request.headers().clone().unwrap_or_default();
    put(&mut headers, "ballast-reason", long(&problem.code));
    put(&mut headers, "ballast-detail", long(&problem.message));
    put(
        &mut headers,
        "ballast-attempts",
        AMQPValue::LongInt(i32::try_from(attempts).unwrap_or(i32::MAX)),
    );
    if let Some(s) = status {
        put(
            &mut headers,
            "ballast-status",
            AMQPValue::LongInt(i32::from(s)),
        );
    }
    request.clone().with_delivery_mode(2).with_headers(headers)
}

/// How many messages to hold at once: those held now plus the free slots
/// they could start on, at least 1, at most `max`. `free`: `None` when a
/// pool has no cap.
pub fn window(held: usize, free: Option<u32>, max: u16) -> u16 {
    let want = match free {
        None => return max,
        Some(f) => held.saturating_add(f as usize),
    };
    u16::try_from(want).unwrap_or(u16::MAX).clamp(1, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::record::{Policy, Response, RunEnd};
    use std::time::Duration;

    fn props(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut t = FieldTable::default();
        for (k, v) in headers {
            t.insert(ShortString::from(*k), v.clone());
        }
        BasicProperties::default()
            .with_headers(t)
            .with_correlation_id("c-1".into())
            .with_reply_to("replies".into())
    }

    #[test]
    fn a_message_without_headers_goes_to_the_default_path() {
        let p = BasicProperties::default().with_message_id("m-7".into());
        let r = read(&p, "/v1/chat/completions").unwrap();
        assert_eq!(r.head.uri.path(), "/v1/chat/completions");
        assert_eq!(r.head.method, http::Method::POST);
        assert_eq!(r.id, "m-7");
        assert_eq!(r.head.headers["x-request-id"], "m-7");
        assert_eq!(r.head.headers["content-type"], "application/json");
        // No message id: one is made, unguessable.
        let r = read(&BasicProperties::default(), "/v1/x").unwrap();
        assert!(r.id.starts_with("job_"), "{}", r.id);
    }

    #[test]
    fn the_path_header_and_content_encoding_are_read() {
        let p = props(&[(PATH_HEADER, long("/v1/embeddings"))])
            .with_content_encoding("gzip".into())
            .with_content_type("application/json; charset=utf-8".into());
        let r = read(&p, "/v1/chat/completions").unwrap();
        assert_eq!(r.head.uri.path(), "/v1/embeddings");
        assert_eq!(r.head.headers["content-encoding"], "gzip");
    }

    #[test]
    fn bad_properties_are_refused_with_a_reason() {
        for v in [long("v1/x"), AMQPValue::LongInt(3), long("/a b")] {
            let e = read(&props(&[(PATH_HEADER, v)]), "/v1/x").unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_path"), "{e:?}");
        }
        let p = BasicProperties::default().with_content_type("text/plain".into());
        let e = read(&p, "/v1/x").unwrap_err();
        assert_eq!((e.status, e.code), (415, "unsupported_content_type"));
        // A message id that cannot be a header is replaced, not refused.
        let p = BasicProperties::default().with_message_id("a\nb".into());
        assert!(read(&p, "/v1/x").unwrap().id.starts_with("job_"));
    }

    fn job(end: RunEnd, attempts_before: u32) -> Job {
        let mut j = Job::queued("m".into(), "r".into(), "POST", "/v1/x", vec![], 0);
        j.start(0);
        j.attempts = attempts_before;
        let policy = Policy {
            max_attempts: 2,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(1),
            ttl: Duration::ZERO,
            retention: Duration::ZERO,
        };
        j.finish_run(end, 10, &policy);
        j
    }

    fn response(status: u16) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
        }
    }

    #[test]
    fn an_answer_is_replied_and_acked() {
        let j = job(RunEnd::Succeeded(response(200)), 0);
        let s = settle_job(&j, Some(b"{\"ok\":1}".to_vec()));
        assert_eq!(s.result, "succeeded");
        assert_eq!(s.dead, None);
        assert_eq!(s.reply.status, 200);
        assert_eq!(s.reply.body, b"{\"ok\":1}");
        assert_eq!(s.reply.attempts, 1);
    }

    #[test]
    fn a_refusal_is_passed_back_and_dead_lettered() {
        let j = job(RunEnd::Refused(response(400)), 0);
        let s = settle_job(&j, Some(b"{\"error\":{}}".to_vec()));
        assert_eq!(s.result, "refused");
        assert_eq!(s.reply.status, 400);
        assert_eq!(s.reply.body, b"{\"error\":{}}");
        assert_eq!(s.dead.unwrap().code, "upstream_refused");
    }

    #[test]
    fn spent_retries_fail_with_the_last_status_or_502() {
        let busy = RunEnd::Transient {
            response: Some(response(503)),
            problem: Problem {
                code: "upstream_status".into(),
                message: "the backend answered 503".into(),
            },
        };
        let j = job(busy, 1);
        assert_eq!(j.state, State::Failed);
        let s = settle_job(&j, Some(b"busy".to_vec()));
        assert_eq!((s.result, s.reply.status), ("failed", 503));
        assert_eq!(s.reply.error.as_deref(), Some("upstream_status"));
        let v: serde_json::Value = serde_json::from_slice(&s.reply.body).unwrap();
        assert_eq!(v["error"]["code"], "upstream_status");
        assert_eq!(s.dead.unwrap().code, "upstream_status");
        let broken = RunEnd::Transient {
            response: None,
            problem: Problem {
                code: "upstream_unavailable".into(),
                message: "no server".into(),
            },
        };
        let s = settle_job(&job(broken, 1), None);
        assert_eq!(s.reply.status, 502);
    }

    #[test]
    fn invalid_messages_get_a_client_error_and_a_dead_letter() {
        let s = settle_invalid(&invalid(400, "invalid_json", "not JSON"));
        assert_eq!((s.result, s.reply.status), ("invalid", 400));
        let v: serde_json::Value = serde_json::from_slice(&s.reply.body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(s.dead.unwrap().code, "invalid_json");
    }

    #[test]
    fn replies_and_dead_letters_carry_what_a_client_needs() {
        let req = props(&[("tenant", long("t1"))]).with_message_id("m-1".into());
        let reply = Reply {
            status: 503,
            content_type: "application/json".into(),
            body: vec![],
            error: Some("upstream_status".into()),
            attempts: 3,
        };
        let p = reply_properties(&req, &reply);
        assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "c-1");
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "m-1");
        assert_eq!(*p.delivery_mode(), Some(2));
        let h = p.headers().as_ref().unwrap().inner();
        assert_eq!(h["status"], AMQPValue::LongInt(503));
        assert_eq!(h["attempts"], AMQPValue::LongInt(3));
        assert_eq!(text(&h["error"]).unwrap(), "upstream_status");
        assert!(!h.contains_key("tenant"));

        let problem = Problem {
            code: "invalid_json".into(),
            message: "not JSON".into(),
        };
        let d = dead_letter_properties(&req, &problem, Some(400), 0);
        assert_eq!(d.reply_to().as_ref().unwrap().as_str(), "replies");
        assert_eq!(d.correlation_id().as_ref().unwrap().as_str(), "c-1");
        assert_eq!(*d.delivery_mode(), Some(2));
        let h = d.headers().as_ref().unwrap().inner();
        assert_eq!(text(&h["tenant"]).unwrap(), "t1");
        assert_eq!(text(&h["ballast-reason"]).unwrap(), "invalid_json");
        assert_eq!(text(&h["ballast-detail"]).unwrap(), "not JSON");
        assert_eq!(h["ballast-status"], AMQPValue::LongInt(400));
    }

    #[test]
    fn the_window_follows_free_slots() {
        assert_eq!(window(0, Some(0), 32), 1);
        assert_eq!(window(0, Some(4), 32), 4);
        assert_eq!(window(3, Some(1), 32), 4);
        assert_eq!(window(3, Some(0), 32), 3);
        assert_eq!(window(10, Some(100), 32), 32);
        assert_eq!(window(0, None, 32), 32);
        assert_eq!(window(usize::MAX, Some(u32::MAX), 8), 8);
    }
}
