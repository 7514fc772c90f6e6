//! Completion callbacks: a job submitted with `Ballast-Callback-Url` is
//! POSTed, once finished, to that URL, signed, and retried with backoff.
//! Only hosts in `[jobs] callback_hosts` may be called: a URL a client
//! chooses and the gateway fetches is a server-side request forgery
//! vector, so anything else is refused when the job is submitted.
//!
//! The signature: `Ballast-Signature: t=<unix seconds>,v1=<hex>` where
//! `<hex>` is HMAC-SHA256 with the `callback_secret_env` secret over
//! `<t>.<body>`; a receiver recomputes it and rejects old `t`s.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The request header naming a job's callback URL.
pub const HEADER: &str = "ballast-callback-url";

/// Attempts to deliver one callback, and the wait after the first failure
/// (doubled each time).
pub const ATTEMPTS: u32 = 6;
pub const FIRST_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether `url` may be called: `http` or `https`, no user info, and its
/// host (with its port, if the entry names one) in `hosts`.
pub fn allowed(url: &str, hosts: &[String]) -> Result<(), &'static str> {
    let uri: http::Uri = url.parse().map_err(|_| "not a URL")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("not an http or https URL"),
    }
    let authority = uri.authority().ok_or("no host")?;
    if authority.as_str().contains('@') {
        return Err("user info is not allowed");
    }
    let host = authority.host().to_ascii_lowercase();
    let with_port = authority.port_u16().map(|p| format!("{host}:{p}"));
    let ok = hosts.iter().any(|h| {
        let h = h.to_ascii_lowercase();
        h == host || Some(&h) == with_port.as_ref()
    });
    if ok {
        Ok(())
    } else {
        Err("its host is not in jobs.callback_hosts")
    }
}

/// `t=<t>,v1=<hex HMAC-SHA256 over "<t>.<body>">`.
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex = crate::keys::to_hex(&mac.finalize().into_bytes());
    format!("t={t},v1={hex}")
}

/// POST `body` to `url`, signed; the reason if it was not accepted (2xx).
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    job: &str,
    body: Vec<u8>,
    secret: &[u8],
) -> Result<(), String> {
    let t = super::now_ms() / 1000;
    let signature = sign(secret, t, &body);
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("ballast-signature", signature)
        .header("ballast-job-id", job)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("answered {}", r.status().as_u16())),
        Err(e) if e.is_timeout() => Err("timed out".to_owned()),
        Err(e) if e.is_connect() => Err("could not connect".to_owned()),
        Err(_) => Err("the request failed".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_hosts_may_be_called() {
        let hosts = vec!["hooks.example.com".to_owned(), "127.0.0.1:9000".to_owned()];
        assert!(allowed("https://hooks.example.com/done", &hosts).is_ok());
        assert!(allowed("http://HOOKS.example.com:8443/x?y=1", &hosts).is_ok());
        assert!(allowed("http://127.0.0.1:9000/cb", &hosts).is_ok());
        for bad in [
            "http://127.0.0.1:9001/cb",
            "http://169.254.169.254/latest/meta-data",
            "https://hooks.example.com.evil.net/",
            "https://user@hooks.example.com/",
            "ftp://hooks.example.com/",
            "hooks.example.com/x",
            "not a url",
        ] {
            assert!(allowed(bad, &hosts).is_err(), "{bad}");
        }
        assert!(allowed("https://hooks.example.com/", &[]).is_err());
    }

    #[test]
    fn the_signature_covers_the_time_and_the_body() {
        let s = sign(b"secret", 1_700_000_000, b"{\"id\":\"job_1\"}");
        assert!(s.starts_with("t=1700000000,v1="));
        assert_eq!(s.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(s, sign(b"secret", 1_700_000_001, b"{\"id\":\"job_1\"}"));
        assert_ne!(s, sign(b"secret", 1_700_000_000, b"{\"id\":\"job_2\"}"));
        assert_ne!(s, sign(b"other", 1_700_000_000, b"{\"id\":\"job_1\"}"));
        // RFC 4231 test case 2, to be sure it is HMAC-SHA256.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
