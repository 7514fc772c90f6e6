//! A TLS listener's certificate: loaded, checked and turned into the
//! acceptor Pingora handshakes with. HTTP/2 and HTTP/1.1 are offered by
//! ALPN (h2 first).

use super::{pem, FileProblem};
use crate::config::TlsFiles;
use pingora_core::listeners::tls::Acceptor;
use pingora_rustls::{version, RusTlsError, ServerConfig};
use std::sync::Arc;
use std::time::SystemTime;

pub struct ListenerTls {
    pub acceptor: Acceptor,
    /// The leaf certificate's end of validity, Unix seconds.
    pub expires: i64,
}

impl ListenerTls {
    /// Load `files`; every error names the file and what is wrong with it.
    pub fn load(files: &TlsFiles, now: SystemTime) -> Result<ListenerTls, FileProblem> {
        let (config, expires) = server_config(files, Some(now))?;
        Ok(ListenerTls {
            acceptor: Acceptor::from_server_config(Arc::new(config)),
            expires,
        })
    }
}

/// The rustls server config for `files`, and the leaf's expiry. With
/// `now`, a certificate not valid then is refused; `None` serves it
/// whatever its dates (the simulated backend, to play an expired server).
pub fn server_config(
    files: &TlsFiles,
    now: Option<SystemTime>,
) -> Result<(ServerConfig, i64), FileProblem> {
    super::init();
    let chain = pem::certificates(&files.cert).map_err(FileProblem::cert)?;
    let key = pem::private_key(&files.key).map_err(FileProblem::key)?;
    let leaf = pem::validity(&chain[0]).map_err(FileProblem::cert)?;
    if let Some(now) = now {
        leaf.check(now)
            .map_err(|e| FileProblem::cert(format!("'{}': {e}", files.cert.display())))?;
    }
    let mut config =
        ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| key_problem(&e, files))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, leaf.not_after))
}

fn key_problem(e: &RusTlsError, files: &TlsFiles) -> FileProblem {
    FileProblem::key(match e {
        RusTlsError::InconsistentKeys(_) => format!(
            "the key in '{}' does not belong to the certificate in '{}'",
            files.key.display(),
            files.cert.display()
        ),
        other => format!("'{}': {other}", files.key.display()),
    })
}
