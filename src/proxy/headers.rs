//! What the backend sees of the client's request head, and what the client
//! sees of the backend's response head: hop-by-hop headers stripped,
//! standard forwarding headers added, `Host` and credentials per pool.

use crate::pool::PoolHeaders;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Version};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use std::borrow::Cow;
use std::net::IpAddr;

/// Connection-level headers (RFC 9110 §7.6.1) that must not be forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    // HTTP/1.1 → h2c upgrade settings: never meaningful past this hop.
    "http2-settings",
];

/// Headers that say who the client is and how it reached us. From a peer
/// not in `server.trusted_proxies` they are the client's own claims and
/// are dropped (`X-Forwarded-For` is then the peer alone).
const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-real-ip",
];

/// Headers the gateway sets or relies on: `Connection: <name>` cannot
/// remove them, in either direction.
const PROTECTED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "content-encoding",
    "content-type",
    "authorization",
    "retry-after",
    "x-forwarded-for",
    "x-forwarded-proto",
];

/// Headers named in `Connection: a, b` are hop-by-hop too, except those
/// the gateway sets or relies on.
fn connection_listed(headers: &http::HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !PROTECTED.contains(&name.as_str()))
        .collect()
}

/// `x_forwarded_for` and the like: many backends (CGI, WSGI, some
/// frameworks) read `_` as `-`, so these would pass as forwarding headers.
fn spoofs_forwarding(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.contains('_') && FORWARDING.contains(&name.replace('_', "-").as_str())
}

/// Facts about the client connection that shape the upstream request.
pub struct Forwarding {
    pub client_ip: Option<IpAddr>,
    /// `http` or `https`, as the client spoke to us.
    pub proto: &'static str,
    /// The peer is a trusted proxy: its forwarding headers are kept and
    /// appended to.
    pub trusted: bool,
    pub body_len: usize,
    /// The protocols the client may switch to (see `upgrade::allowed_offer`),
    /// sent as `Upgrade`; `None` sends no `Upgrade` at all.
    pub upgrade: Option<HeaderValue>,
    /// The body was decoded: its `Content-Encoding` no longer applies.
    pub decoded: bool,
}

/// Build the request head sent to the backends (always HTTP/1.1), before
/// any pool's own headers: [`for_pool`] adds those per attempt.
pub fn upstream_request(client: &RequestHeader, fwd: &Forwarding) -> Result<RequestHeader> {
    let path = client
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let mut req = RequestHeader::build(client.method.clone(), path.as_bytes(), None)?;
    req.set_version(Version::HTTP_11);

    let listed = connection_listed(&client.headers);
    for (name, value) in client.headers.iter() {
        if HOP_BY_HOP.contains(&name.as_str()) || listed.contains(name) {
            continue;
        }
        // The body is already buffered: the backend gets it whole, no Expect.
        if name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::EXPECT
            || (fwd.decoded && name == header::CONTENT_ENCODING)
            || name.as_str() == "x-forwarded-for"
            || (!fwd.trusted && FORWARDING.contains(&name.as_str()))
            || spoofs_forwarding(name)
        {
            continue;
        }
        let mut value = value.clone();
        if is_credential(name) {
            // Never shown by a `Debug` of the head (Pingora's trace logs).
            value.set_sensitive(true);
        }
        req.append_header(name.clone(), value)?;
    }

    // Host: the client's, else an HTTP/2 :authority; a pool may override it.
    let host = client.headers.get(header::HOST).cloned().or_else(|| {
        client
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(h) = host {
        req.insert_header(header::HOST, h)?;
    }

    // A trusted proxy's chain is appended to; anyone else's is replaced.
    let mut xff: Vec<String> = if fwd.trusted {
        client
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    } else {
        Vec::new()
    };
    if let Some(ip) = fwd.client_ip {
        xff.push(ip.to_string());
    }
    if !xff.is_empty() {
        req.insert_header("x-forwarded-for", xff.join(", "))?;
    }
    // A trusted proxy in front may have terminated TLS: its word stands.
    if !(fwd.trusted && req.headers.contains_key("x-forwarded-proto")) {
        req.insert_header("x-forwarded-proto", fwd.proto)?;
    }

    if let Some(proto) = &fwd.upgrade {
        req.insert_header(header::UPGRADE, proto.clone())?;
        req.insert_header(header::CONNECTION, "upgrade")?;
    }

    // The body is buffered whole, so its length is known: never chunked upstream.
    if fwd.body_len > 0 || method_has_body(&client.method) {
        req.insert_header(header::CONTENT_LENGTH, fwd.body_len.to_string())?;
    }
    Ok(req)
}

/// The head sent to one pool: its own `Host` and credential, never another
/// pool's. A pool that injects a key replaces the client's `Authorization`
/// (and the client's value of the header the key goes in); one that
/// injects none passes the client's through. Borrows `base` when the pool
/// changes nothing.
pub fn for_pool<'h>(base: &'h RequestHeader, pool: &PoolHeaders) -> Cow<'h, RequestHeader> {
    if pool.host.is_none() && pool.credential.is_none() {
        return Cow::Borrowed(base);
    }
    let mut head = base.clone();
    if let Some(host) = &pool.host {
        // Inserting a valid value under a standard name cannot fail.
        let _ = head.insert_header(header::HOST, host.clone());
    }
    if let Some((name, value)) = &pool.credential {
        head.remove_header(&header::AUTHORIZATION);
        let _ = head.insert_header(name.clone(), value.clone());
    }
    Cow::Owned(head)
}

/// Headers the gateway sets, strips or frames by itself: a pool's key
/// cannot be sent in one of these.
pub fn gateway_owned(name: &HeaderName) -> bool {
    let name = name.as_str();
    HOP_BY_HOP.contains(&name)
        || FORWARDING.contains(&name)
        || matches!(
            name,
            "host" | "content-length" | "content-encoding" | "content-type" | "expect" | "cookie"
        )
}

/// Headers that carry a client's or a pool's secret.
pub fn is_credential(name: &HeaderName) -> bool {
    name == header::AUTHORIZATION
        || name == header::PROXY_AUTHORIZATION
        || name == header::COOKIE
        || name.as_str() == "x-api-key"
        || name.as_str() == "api-key"
}

fn method_has_body(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

/// Prepare the backend's response head for the client: drop hop-by-hop
/// headers, keep the body framing the client needs.
pub fn downstream_response(upstream: &ResponseHeader) -> ResponseHeader {
    let mut resp = upstream.clone();
    resp.set_version(Version::HTTP_11);
    if upstream.status == 101 {
        // An accepted upgrade: the switch itself is what we forward.
        let upgrade = upstream.headers.get(header::UPGRADE).cloned();
        for name in HOP_BY_HOP {
            resp.remove_header(*name);
        }
        if let Some(proto) = upgrade {
            let _ = resp.insert_header(header::UPGRADE, proto);
            let _ = resp.insert_header(header::CONNECTION, "upgrade");
        }
        return resp;
    }
    let chunked = upstream
        .headers
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    for name in HOP_BY_HOP {
        resp.remove_header(*name);
    }
    for name in connection_listed(&upstream.headers) {
        resp.remove_header(&name);
    }
    let has_length = upstream.headers.contains_key(header::CONTENT_LENGTH);
    if chunked || (!has_length && status_has_body(upstream.status.as_u16())) {
        // Unknown length (chunked or close-delimited upstream): chunk to the client.
        resp.remove_header(&header::CONTENT_LENGTH);
        // A static, valid value: inserting it cannot fail.
        let _ = resp.insert_header(header::TRANSFER_ENCODING, "chunked");
    }
    resp
}

fn status_has_body(status: u16) -> bool {
    !(100..200).contains(&status) && status != 204 && status != 304
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_req() -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/chat/completions?x=1", None).unwrap();
        r.insert_header("host", "gw.example").unwrap();
        r.insert_header("connection", "keep-alive, x-secret-hop")
            .unwrap();
        r.insert_header("x-secret-hop", "1").unwrap();
        r.insert_header("keep-alive", "timeout=5").unwrap();
        r.insert_header("transfer-encoding", "chunked").unwrap();
        r.insert_header("te", "trailers").unwrap();
        r.insert_header("x-forwarded-for", "10.0.0.1").unwrap();
        r.insert_header("content-type", "application/json").unwrap();
        r.insert_header("expect", "100-continue").unwrap();
        r
    }

    fn fwd() -> Forwarding {
        Forwarding {
            client_ip: Some("127.0.0.9".parse().unwrap()),
            proto: "http",
            trusted: true,
            body_len: 12,
            upgrade: None,
            decoded: false,
        }
    }

    #[test]
    fn strips_hop_by_hop_and_adds_forwarding() {
        let up = upstream_request(&client_req(), &fwd()).unwrap();
        for h in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "te",
            "x-secret-hop",
        ] {
            assert!(up.headers.get(h).is_none(), "{h} forwarded");
        }
        assert_eq!(up.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(up.headers["x-forwarded-proto"], "http");
        assert_eq!(up.headers["host"], "gw.example");
        assert_eq!(up.headers["content-length"], "12");
        assert_eq!(up.headers["content-type"], "application/json");
        assert_eq!(up.uri.to_string(), "/v1/chat/completions?x=1");
    }

    #[test]
    fn each_pool_gets_its_own_host_and_credential() {
        let mut client = client_req();
        client
            .insert_header("authorization", "Bearer client-own")
            .unwrap();
        let base = upstream_request(&client, &fwd()).unwrap();
        let mut key = HeaderValue::from_static("Bearer pool-a");
        key.set_sensitive(true);
        let hosted = PoolHeaders {
            host: Some(HeaderValue::from_static("api.deepseek.com")),
            credential: Some((header::AUTHORIZATION, key)),
        };
        let a = for_pool(&base, &hosted);
        assert_eq!(a.headers["host"], "api.deepseek.com");
        assert_eq!(a.headers["authorization"], "Bearer pool-a");
        assert_eq!(a.headers.get_all("authorization").iter().count(), 1);
        assert!(!format!("{:?}", a.headers).contains("pool-a"));
        // The base is untouched: another pool never sees pool a's key or Host.
        let local = for_pool(&base, &PoolHeaders::default());
        assert!(matches!(local, Cow::Borrowed(_)));
        assert_eq!(local.headers["host"], "gw.example");
        assert_eq!(local.headers["authorization"], "Bearer client-own");
        assert!(!format!("{:?}", local.headers).contains("client-own"));
    }

    #[test]
    fn a_key_in_its_own_header_replaces_the_clients_credentials() {
        let mut client = client_req();
        client
            .insert_header("authorization", "Bearer client-own")
            .unwrap();
        client.insert_header("x-api-key", "client-key").unwrap();
        let base = upstream_request(&client, &fwd()).unwrap();
        let mut key = HeaderValue::from_static("pool-key");
        key.set_sensitive(true);
        let pool = PoolHeaders {
            host: None,
            credential: Some((HeaderName::from_static("x-api-key"), key)),
        };
        let up = for_pool(&base, &pool);
        assert_eq!(up.headers["x-api-key"], "pool-key");
        assert_eq!(up.headers.get_all("x-api-key").iter().count(), 1);
        assert!(up.headers.get("authorization").is_none());
        assert!(gateway_owned(&HeaderName::from_static("host")));
        assert!(gateway_owned(&HeaderName::from_static("x-forwarded-for")));
        assert!(!gateway_owned(&HeaderName::from_static("x-api-key")));
        assert!(!gateway_owned(&header::AUTHORIZATION));
    }

    #[test]
    fn untrusted_peers_cannot_claim_who_the_client_is() {
        let mut r = client_req();
        for (name, value) in [
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-proto", "https"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x-real_ip", "1.2.3.4"),
        ] {
            r.append_header(name, value).unwrap();
        }
        let mut f = fwd();
        f.trusted = false;
        let up = upstream_request(&r, &f).unwrap();
        for gone in [
            "forwarded",
            "x-real-ip",
            "x-forwarded-host",
            "x-forwarded-port",
            "x_forwarded_for",
            "x-real_ip",
        ] {
            assert!(up.headers.get(gone).is_none(), "{gone} passed");
        }
        assert_eq!(up.headers["x-forwarded-for"], "127.0.0.9");
        assert_eq!(up.headers["x-forwarded-proto"], "http");

        // A trusted proxy's claims stand and its chain is appended to;
        // the underscore spellings go anyway.
        let up = upstream_request(&r, &fwd()).unwrap();
        assert_eq!(up.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(up.headers["x-forwarded-proto"], "https");
        assert_eq!(up.headers["x-real-ip"], "1.2.3.4");
        assert!(up.headers.get("x_forwarded_for").is_none());
    }

    #[test]
    fn connection_cannot_remove_what_the_gateway_relies_on() {
        let mut r = client_req();
        r.insert_header("connection", "host, x-forwarded-for, content-type, x-other")
            .unwrap();
        r.insert_header("x-other", "1").unwrap();
        let mut f = fwd();
        f.trusted = false;
        let up = upstream_request(&r, &f).unwrap();
        assert_eq!(up.headers["host"], "gw.example");
        assert_eq!(up.headers["x-forwarded-for"], "127.0.0.9");
        assert_eq!(up.headers["content-type"], "application/json");
        assert!(up.headers.get("x-other").is_none());

        let mut resp = ResponseHeader::build(503, None).unwrap();
        resp.insert_header("content-length", "5").unwrap();
        resp.insert_header("retry-after", "3").unwrap();
        resp.insert_header("connection", "content-length, retry-after, x-hop")
            .unwrap();
        resp.insert_header("x-hop", "1").unwrap();
        let d = downstream_response(&resp);
        assert_eq!(d.headers["content-length"], "5");
        assert_eq!(d.headers["retry-after"], "3");
        assert!(d.headers.get("x-hop").is_none());
    }

    #[test]
    fn get_without_body_has_no_length() {
        let r = RequestHeader::build("GET", b"/v1/models", None).unwrap();
        let mut f = fwd();
        f.body_len = 0;
        let up = upstream_request(&r, &f).unwrap();
        assert!(up.headers.get("content-length").is_none());
    }

    #[test]
    fn response_keeps_framing_and_drops_hops() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("transfer-encoding", "chunked").unwrap();
        r.insert_header("connection", "keep-alive").unwrap();
        r.insert_header("content-type", "text/event-stream")
            .unwrap();
        let d = downstream_response(&r);
        assert!(d.headers.get("connection").is_none());
        assert_eq!(d.headers["transfer-encoding"], "chunked");
        assert_eq!(d.headers["content-type"], "text/event-stream");

        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-length", "5").unwrap();
        let d = downstream_response(&r);
        assert_eq!(d.headers["content-length"], "5");
        assert!(d.headers.get("transfer-encoding").is_none());

        // Close-delimited upstream body: chunk it to the client.
        let r = ResponseHeader::build(200, None).unwrap();
        assert_eq!(
            downstream_response(&r).headers["transfer-encoding"],
            "chunked"
        );
        let r = ResponseHeader::build(204, None).unwrap();
        assert!(downstream_response(&r)
            .headers
            .get("transfer-encoding")
            .is_none());
    }
}
