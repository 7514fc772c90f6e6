//! Certificates and keys from PEM files, with the checks `ballast check`
//! reports: the file exists and is readable, holds what it should, the key
//! belongs to the certificate, and the certificate is valid now.
//!
//! Every error is a sentence that names the file (never a key's bytes).

use pingora_rustls::{CertificateDer, PrivateKeyDer};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Larger than any certificate chain or key; a path to something bigger
/// (or endless, like a device) is not a PEM file.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The bytes of a regular file, bounded.
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read '{shown}': {e}"))?;
    if !meta.is_file() {
        return Err(format!("'{shown}' is not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read '{shown}': {e}"))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "'{shown}' is larger than {MAX_PEM_BYTES} bytes; not a PEM file"
        ));
    }
    Ok(bytes)
}

/// Every certificate in a PEM file (a chain: leaf first; or a CA bundle).
/// Anything else in the file, or none at all, is an error.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let bytes = read_file(path)?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::read_all(&mut bytes.as_slice()) {
        match item {
            Ok(rustls_pemfile::Item::X509Certificate(der)) => {
                validity(&der).map_err(|e| format!("'{shown}': {e}"))?;
                certs.push(der);
            }
            Ok(_) => {
                return Err(format!(
                    "'{shown}' holds something other than certificates (a key?)"
                ))
            }
            Err(e) => return Err(format!("'{shown}' is not valid PEM: {e:?}")),
        }
    }
    if certs.is_empty() {
        return Err(format!("'{shown}' holds no PEM certificate"));
    }
    Ok(certs)
}

/// The one private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let shown = path.display();
    let bytes = read_file(path)?;
    let mut keys = Vec::new();
    for item in rustls_pemfile::read_all(&mut bytes.as_slice()) {
        match item {
            Ok(rustls_pemfile::Item::Pkcs8Key(k)) => keys.push(PrivateKeyDer::from(k)),
            Ok(rustls_pemfile::Item::Pkcs1Key(k)) => keys.push(PrivateKeyDer::from(k)),
            Ok(rustls_pemfile::Item::Sec1Key(k)) => keys.push(PrivateKeyDer::from(k)),
            Ok(_) => {}
            Err(e) => return Err(format!("'{shown}' is not valid PEM: {e:?}")),
        }
    }
    match keys.len() {
        0 => Err(format!("'{shown}' holds no PEM private key")),
        1 => Ok(keys.remove(0)),
        n => Err(format!(
            "'{shown}' holds {n} private keys; give exactly one"
        )),
    }
}

/// When a certificate may be used: not before, not after (as Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// Fine at `now`, or why not.
    pub fn check(&self, now: SystemTime) -> Result<(), String> {
        let now = unix(now);
        if now > self.not_after {
            Err(format!(
                "the certificate expired on {}",
                rfc3339(self.not_after)
            ))
        } else if now < self.not_before {
            Err(format!(
                "the certificate is not valid before {}",
                rfc3339(self.not_before)
            ))
        } else {
            Ok(())
        }
    }
}

/// Parse a DER certificate's validity period.
pub fn validity(der: &[u8]) -> Result<Validity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("a certificate cannot be parsed: {e}"))?;
    let v = cert.validity();
    Ok(Validity {
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
    })
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// A Unix time as an RFC 3339 date (UTC), for messages and `/status`.
pub fn rfc3339(secs: i64) -> String {
    let t = match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    };
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_checked_against_the_given_time() {
        let v = Validity {
            not_before: 1_000,
            not_after: 2_000,
        };
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert!(v.check(at(1_500)).is_ok());
        assert!(v.check(at(1_000)).is_ok());
        let late = v.check(at(2_001)).unwrap_err();
        assert!(late.contains("expired on 1970-01-01T00:33:20Z"), "{late}");
        let early = v.check(at(999)).unwrap_err();
        assert!(early.contains("not valid before"), "{early}");
    }

    #[test]
    fn files_that_are_not_pem_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let e = certificates(&junk).unwrap_err();
        assert!(
            e.contains("junk.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = private_key(&junk).unwrap_err();
        assert!(e.contains("no PEM private key"), "{e}");
        let e = certificates(dir.path()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = certificates(&dir.path().join("missing.pem")).unwrap_err();
        assert!(
            e.contains("cannot read") && e.contains("missing.pem"),
            "{e}"
        );
    }
}
