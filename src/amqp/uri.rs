//! The broker's URL: read once, checked at load, never shown with its
//! credentials.

use lapin::uri::{AMQPScheme, AMQPUri};

/// An `amqp://` or `amqps://` URL. Errors never repeat the URL (it may
/// hold a password).
pub fn parse(text: &str) -> Result<AMQPUri, String> {
    const HELP: &str = "write amqp://user:password@host:5672/vhost (amqps:// for TLS)";
    let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e}); {HELP}"))?;
    if !matches!(url.scheme(), "amqp" | "amqps") {
        return Err(format!("the scheme must be amqp or amqps; {HELP}"));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(format!("the URL names no host; {HELP}")),
    };
    let mut uri: AMQPUri = text
        .parse()
        .map_err(|_| format!("not an AMQP URL; {HELP}"))?;
    // lapin's parser keeps only domain names: an address would become
    // "localhost".
    uri.authority.host = host;
    Ok(uri)
}

/// `amqps://host:port/vhost`, for logs and `/readyz`.
pub fn label(uri: &AMQPUri) -> String {
    let scheme = match uri.scheme {
        AMQPScheme::AMQP => "amqp",
        AMQPScheme::AMQPS => "amqps",
    };
    format!(
        "{scheme}://{}:{}/{}",
        uri.authority.host,
        uri.authority.port,
        url::form_urlencoded::byte_serialize(uri.vhost.as_bytes()).collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_are_kept_and_credentials_never_shown() {
        let uri = parse("amqp://ballast:s3cret@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(uri.authority.host, "127.0.0.1");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.authority.userinfo.password, "s3cret");
        assert_eq!(label(&uri), "amqp://127.0.0.1:5673/%2F");
        let uri = parse("amqps://u:p@rabbit.internal/jobs").unwrap();
        assert_eq!(uri.authority.port, 5671);
        assert_eq!(label(&uri), "amqps://rabbit.internal:5671/jobs");
        assert_eq!(parse("amqp://[::1]:5672").unwrap().authority.host, "::1");
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_them() {
        for bad in [
            "http://u:hunter2@host/",
            "amqp://u:hunter2@",
            "hunter2",
            "amqp://u:hunter2@host/?heartbeat=x",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("amqp://user:password@host"), "{e}");
        }
    }
}
