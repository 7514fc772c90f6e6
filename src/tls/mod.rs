//! TLS on both sides, through Pingora's rustls backend: certificates for
//! client listeners (`listener`), and verified connections to pools that
//! say `tls = true` (`upstream`). Files are read and checked by `pem`.
//! TLS 1.2 and 1.3 only; there is no way to skip verification.

pub mod listener;
pub mod pem;
pub mod upstream;

pub use listener::ListenerTls;
pub use upstream::{failure_reason, UpstreamTls};

/// rustls needs its process-wide crypto provider before any config is
/// built; Pingora's choice (ring). Safe to call more than once.
pub fn init() {
    pingora_rustls::install_default_crypto_provider();
}

/// Which of a certificate/key pair a problem is about (so `ballast check`
/// can point at the right key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

/// A problem with a certificate or key file, in words naming the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub which: Which,
    pub message: String,
}

impl FileProblem {
    fn cert(message: String) -> Self {
        FileProblem {
            which: Which::Cert,
            message,
        }
    }

    fn key(message: String) -> Self {
        FileProblem {
            which: Which::Key,
            message,
        }
    }
}
