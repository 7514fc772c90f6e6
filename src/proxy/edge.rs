//! The edge step, between reading the request and taking a backend slot:
//! decode a compressed body, choose the route (by path, then by the JSON
//! `model`), and on OpenAI routes validate and normalise the body. Bad
//! requests are answered here, before they cost a backend anything.

use crate::body::{self, Coding, DecodeLimits};
use crate::config::{Config, RouteConfig};
use crate::error::GatewayError;
use crate::metrics;
use crate::openai::{self, Endpoint, Normalise};
use crate::route::{NoRoute, RouteTable};
use bytes::Bytes;
use pingora_http::RequestHeader;

pub struct Prepared {
    pub route_idx: usize,
    /// The body to send upstream (decoded, perhaps normalised).
    pub body: Bytes,
    /// The client's Content-Encoding was undone: do not forward it.
    pub decoded: bool,
    /// A validated chat-completions stream of one choice: a cut one can be
    /// continued.
    pub resumable: bool,
    /// A validated OpenAI request for one choice (`n` absent or 1).
    pub single_choice: bool,
}

pub fn prepare(
    config: &Config,
    routes: &RouteTable,
    req: &RequestHeader,
    wire: Bytes,
) -> Result<Prepared, GatewayError> {
    let path = req.uri.path();
    let (body, decoded) = decode(config, req, wire)?;

    // The body is parsed for routing only when some route names models.
    let model = routes
        .needs_model(path)
        .then(|| openai::peek_model(&body))
        .flatten();
    let route_idx = routes.find(path, model.as_deref()).map_err(|e| match e {
        NoRoute::Path => GatewayError::no_route(path),
        NoRoute::Model(m) => GatewayError::model_not_found(m.as_deref()),
    })?;
    let route = &config.routes[route_idx];

    let (body, resumable, single_choice) = match (route.openai, Endpoint::from_path(path)) {
        (true, Some(endpoint)) if req.method == http::Method::POST => {
            inspect(route, endpoint, body)?
        }
        _ => (body, false, false),
    };
    Ok(Prepared {
        route_idx,
        body,
        decoded,
        resumable,
        single_choice,
    })
}

/// Undo the client's Content-Encoding, bounded by the body limits.
fn decode(
    config: &Config,
    req: &RequestHeader,
    wire: Bytes,
) -> Result<(Bytes, bool), GatewayError> {
    let header = req
        .headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .collect::<Vec<_>>()
        .join(",");
    let codings = body::parse_content_encoding(&header).map_err(body_error)?;
    let label = codings.last().map_or("identity", |c| c.label());
    metrics::body_bytes(label, "wire", wire.len());
    if codings.iter().all(|c| *c == Coding::Identity) {
        return Ok((wire, false));
    }
    let limits = DecodeLimits {
        max_decoded: config.limits.max_request_body,
        max_ratio: config.limits.max_decompression_ratio,
    };
    let decoded = body::decode(&codings, &wire, &limits).map_err(|e| {
        tracing::debug!(error = %e, encoding = %header, "request body refused");
        body_error(e)
    })?;
    metrics::body_bytes(label, "decoded", decoded.len());
    Ok((Bytes::from(decoded), true))
}

fn body_error(e: body::BodyError) -> GatewayError {
    GatewayError::body(e.status(), e.code(), e.to_string())
}

/// Validate an OpenAI request and apply the route's normalisation rules;
/// also says whether it is a chat stream of one choice, and whether it asks
/// for one choice.
fn inspect(
    route: &RouteConfig,
    endpoint: Endpoint,
    body: Bytes,
) -> Result<(Bytes, bool, bool), GatewayError> {
    let rules = Normalise {
        max_tokens_limit: route.max_tokens_limit,
        include_usage: route.stream_include_usage,
    };
    let inspected = openai::inspect(endpoint, &body, &rules)
        .map_err(|e| GatewayError::invalid_request(e.message, e.param))?;
    let single = inspected.choices == 1;
    let resumable = inspected.endpoint == Endpoint::ChatCompletions && inspected.stream && single;
    match inspected.rewritten {
        Some(new) => {
            tracing::debug!(route = %route.name, applied = ?inspected.applied, "request normalised");
            Ok((Bytes::from(new), resumable, single))
        }
        None => Ok((body, resumable, single)),
    }
}
