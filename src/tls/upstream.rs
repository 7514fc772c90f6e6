//! TLS to a pool's servers: verified against the system's roots or the
//! pool's `ca_file`, with the server name from `sni` (default: the host
//! in `addr`), an optional client certificate, and ALPN per `http2`.
//! Verification is never skipped: Pingora skips it for an empty SNI, so
//! every TLS peer gets a name.

use super::{pem, FileProblem};
use crate::config::{Http2Mode, PoolConfig};
use pingora_core::protocols::tls::CaType;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{CertKey, WrappedX509};
use pingora_error::{Error, ErrorType};
use pingora_rustls::{version, ClientConfig, PrivateKeyDer, RootCertStore, RusTlsError};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// Concurrent requests carried by one HTTP/2 connection to a server
/// (the server's own `SETTINGS_MAX_CONCURRENT_STREAMS` may lower it).
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// A TLS pool's trust anchors and client identity, loaded once.
pub struct UpstreamTls {
    /// `ca_file`'s certificates; `None` trusts the system's roots.
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
}

impl UpstreamTls {
    /// The pool's TLS material; `None` for a plain pool. Errors name the
    /// key and the file.
    pub fn load(pool: &PoolConfig, now: SystemTime) -> Result<Option<UpstreamTls>, String> {
        if !pool.tls {
            return Ok(None);
        }
        super::init();
        let ca = match &pool.ca_file {
            None => None,
            Some(path) => Some(load_ca(path).map_err(|e| format!("ca_file: {e}"))?),
        };
        let client = match (&pool.client_cert, &pool.client_key) {
            (Some(cert), Some(key)) => Some(Arc::new(client_identity(cert, key, now).map_err(
                |p| match p.which {
                    super::Which::Cert => format!("client_cert: {}", p.message),
                    super::Which::Key => format!("client_key: {}", p.message),
                },
            )?)),
            _ => None,
        };
        Ok(Some(UpstreamTls { ca, client }))
    }
}

/// A private CA bundle: every certificate in it must be usable as a
/// trust anchor.
pub fn load_ca(path: &Path) -> Result<Arc<CaType>, String> {
    let certs = pem::certificates(path)?;
    let mut store = RootCertStore::empty();
    for der in &certs {
        store
            .add(der.clone())
            .map_err(|e| format!("'{}' holds an unusable CA certificate: {e}", path.display()))?;
    }
    let wrapped: Vec<WrappedX509> = certs
        .iter()
        .map(|der| WrappedX509::new(der.to_vec(), pingora_core::utils::tls::parse_x509))
        .collect();
    Ok(Arc::from(wrapped.into_boxed_slice()))
}

/// Load and check a client certificate and its key (they must match, and
/// the certificate must be valid now).
pub fn client_identity(cert: &Path, key: &Path, now: SystemTime) -> Result<CertKey, FileProblem> {
    let chain = pem::certificates(cert).map_err(FileProblem::cert)?;
    let private = pem::private_key(key).map_err(FileProblem::key)?;
    pem::validity(&chain[0])
        .and_then(|v| v.check(now))
        .map_err(|e| FileProblem::cert(format!("'{}': {e}", cert.display())))?;
    // Pingora rebuilds the key from its DER bytes: they must be
    // recognisable on their own.
    let der = private.secret_der().to_vec();
    if PrivateKeyDer::try_from(der.clone()).is_err() {
        return Err(FileProblem::key(format!(
            "'{}' holds a key of an unsupported kind",
            key.display()
        )));
    }
    ClientConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
        .with_root_certificates(RootCertStore::empty())
        .with_client_auth_cert(chain.clone(), private)
        .map_err(|e| {
            FileProblem::key(match e {
                RusTlsError::InconsistentKeys(_) => format!(
                    "the key in '{}' does not belong to the certificate in '{}'",
                    key.display(),
                    cert.display()
                ),
                other => format!("'{}': {other}", key.display()),
            })
        })?;
    Ok(CertKey::new(
        chain.iter().map(|c| c.to_vec()).collect(),
        der,
    ))
}

/// The Pingora peer for one server address. `sni` is the name the
/// server's certificate must carry (ignored for a plain pool).
pub fn peer(
    socket: SocketAddr,
    sni: &str,
    tls: Option<&UpstreamTls>,
    http2: Http2Mode,
) -> HttpPeer {
    let mut peer = HttpPeer::new(socket, tls.is_some(), sni.to_owned());
    peer.options.alpn = match (tls.is_some(), http2) {
        (_, Http2Mode::Never) | (false, Http2Mode::Auto) => ALPN::H1,
        (true, Http2Mode::Auto) => ALPN::H2H1,
        // Over TLS: h2 by ALPN only; plain: HTTP/2 with prior knowledge.
        (_, Http2Mode::Always) => ALPN::H2,
    };
    peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
    if let Some(tls) = tls {
        peer.options.ca = tls.ca.clone();
        peer.client_cert_key = tls.client.clone();
    }
    peer
}

/// Why a TLS handshake with a server failed, in words for the log; `None`
/// when the error is not a TLS one. Pingora keeps rustls's error only as
/// text, so the reason is read from it.
pub fn failure_reason(e: &Error) -> Option<&'static str> {
    let text = e.to_string();
    let has = |s: &str| text.contains(s);
    let tls_error = matches!(
        e.etype(),
        ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
    );
    // A TLS 1.3 server refuses a client certificate after the client has
    // finished its handshake: the alert arrives on the first read.
    if !tls_error && !has("received fatal alert") {
        return None;
    }
    Some(if has("UnknownIssuer") {
        "unknown issuer: the certificate is not signed by a trusted CA (ca_file or the system's roots)"
    } else if has("not valid for name") || has("NotValidForName") {
        "name mismatch: the certificate does not carry the pool's sni"
    } else if has("certificate expired") || has("Expired") {
        "the server's certificate has expired"
    } else if has("not valid yet") || has("NotValidYet") {
        "the server's certificate is not valid yet"
    } else if has("CertificateRequired") || has("certificate required") {
        "the server requires a client certificate (client_cert, client_key)"
    } else if has("BadSignature") || has("InvalidSignature") {
        "the server's certificate has a bad signature"
    } else if has("NoApplicationProtocol") {
        "no common ALPN protocol (see http2)"
    } else if matches!(e.etype(), ErrorType::TLSHandshakeTimedout) || has("timeout") {
        "the handshake timed out"
    } else if has("received fatal alert") || has("AlertReceived") {
        "the server refused the handshake"
    } else {
        "the handshake failed"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_error(context: &str) -> Box<Error> {
        Error::explain(ErrorType::TLSHandshakeFailure, context.to_owned())
    }

    #[test]
    fn reasons_are_read_from_rustls_messages() {
        let cases = [
            ("TLS connect() failed: invalid peer certificate: UnknownIssuer, SNI: a", "unknown issuer"),
            ("invalid peer certificate: certificate not valid for name \"x\"; certificate is only valid for y", "name mismatch"),
            ("invalid peer certificate: certificate expired: verification time 5 (UNIX)", "expired"),
            ("received fatal alert: CertificateRequired", "client certificate"),
            ("received fatal alert: HandshakeFailure", "refused the handshake"),
            ("something else", "the handshake failed"),
        ];
        for (message, want) in cases {
            let got = failure_reason(&tls_error(message)).unwrap();
            assert!(got.contains(want), "{message}: {got}");
        }
        assert_eq!(failure_reason(&Error::new(ErrorType::ConnectRefused)), None);
        let alert = Error::explain(
            ErrorType::ReadError,
            "while reading: received fatal alert: CertificateRequired",
        );
        assert!(failure_reason(&alert)
            .unwrap()
            .contains("client certificate"));
        let reset = Error::explain(ErrorType::ReadError, "Connection reset by peer");
        assert_eq!(failure_reason(&reset), None);
    }

    #[test]
    fn alpn_follows_http2_and_tls() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let tls = UpstreamTls {
            ca: None,
            client: None,
        };
        let alpn = |tls: Option<&UpstreamTls>, mode| peer(addr, "a.test", tls, mode).options.alpn;
        assert_eq!(alpn(Some(&tls), Http2Mode::Auto), ALPN::H2H1);
        assert_eq!(alpn(Some(&tls), Http2Mode::Never), ALPN::H1);
        assert_eq!(alpn(Some(&tls), Http2Mode::Always), ALPN::H2);
        assert_eq!(alpn(None, Http2Mode::Auto), ALPN::H1);
        assert_eq!(alpn(None, Http2Mode::Always), ALPN::H2);
        let p = peer(addr, "a.test", Some(&tls), Http2Mode::Auto);
        assert_eq!(p.sni, "a.test");
        assert!(p.options.verify_cert && p.options.verify_hostname);
    }
}
