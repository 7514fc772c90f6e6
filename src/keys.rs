//! Client API keys: who may call, under which name, with which limits.
//!
//! Keys are never stored, only their SHA-256 digests (`ballast key hash`
//! prints one), each with a name that logs, metrics and `/status` show in
//! its place. A presented key is hashed and compared with every digest in
//! constant time, so neither a match nor its position leaks through timing.

use crate::config::Priority;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// Per-key limits; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests per minute.
    pub rpm: u64,
    /// Tokens per minute: prompt tokens estimated at the edge plus
    /// completion tokens counted from the answers.
    pub tpm: u64,
    /// Requests in flight.
    pub concurrency: u64,
}

#[derive(Clone, PartialEq)]
pub struct ClientKey {
    pub name: String,
    digest: [u8; 32],
    pub limits: KeyLimits,
    /// Queue priority of its requests (`None`: the route's).
    pub priority: Option<Priority>,
    /// Routes it may use (`None`: all).
    pub routes: Option<Vec<String>>,
    /// Models it may ask for (`None`: all).
    pub models: Option<Vec<String>>,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    pub fn may_use_route(&self, route: &str) -> bool {
        self.routes
            .as_ref()
            .is_none_or(|r| r.iter().any(|n| n == route))
    }

    /// A request that names no model is allowed by the model list (the
    /// route decides whether one is needed).
    pub fn may_use_model(&self, model: Option<&str>) -> bool {
        match (&self.models, model) {
            (None, _) | (Some(_), None) => true,
            (Some(list), Some(m)) => list.iter().any(|n| n == m),
        }
    }
}

/// Every key of the key file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeySet {
    keys: Vec<ClientKey>,
}

/// What a request presented.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    Nothing,
    /// A header was there but held no key (`Authorization: Basic …`).
    Unusable,
    Key(&'a str),
}

/// The key in `Authorization: Bearer <key>` or `x-api-key: <key>`.
pub fn presented(headers: &http::HeaderMap) -> Presented<'_> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let Ok(v) = v.to_str() else {
            return Presented::Unusable;
        };
        let mut parts = v.trim().splitn(2, ' ');
        return match (parts.next(), parts.next().map(str::trim)) {
            (Some(scheme), Some(key))
                if scheme.eq_ignore_ascii_case("bearer") && !key.is_empty() =>
            {
                Presented::Key(key)
            }
            _ => Presented::Unusable,
        };
    }
    match headers.get("x-api-key").map(|v| v.to_str()) {
        None => Presented::Nothing,
        Some(Ok(k)) if !k.trim().is_empty() => Presented::Key(k.trim()),
        Some(_) => Presented::Unusable,
    }
}

/// Bytes in lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a key, in lowercase hex (what the key file holds).
pub fn hash_hex(key: &str) -> String {
    to_hex(&Sha256::digest(key.as_bytes()))
}

/// A new random key: `sk-ballast-` and 32 random bytes in hex.
pub fn generate() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("sk-ballast-{}", to_hex(&bytes))
}

impl KeySet {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.name.as_str())
    }

    /// What `/status` shows of the keys: names and limits, never digests.
    pub fn status(&self) -> serde_json::Value {
        self.keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "name": k.name,
                    "rpm": k.limits.rpm,
                    "tpm": k.limits.tpm,
                    "max_concurrent": k.limits.concurrency,
                    "priority": k.priority.map(Priority::label),
                    "routes": k.routes,
                    "models": k.models,
                })
            })
            .collect()
    }

    /// The key whose digest matches `presented`: every digest is compared,
    /// in constant time, whatever matches.
    pub fn identify(&self, presented: &str) -> Option<&ClientKey> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found
    }

    /// Parse a key file (TOML, `[[key]]` tables); `source` names it in
    /// problems.
    pub fn parse(source: &str, text: &str) -> Result<KeySet, Vec<String>> {
        let raw: RawKeyFile = toml::from_str(text)
            .map_err(|e| vec![format!("{source}: {}", e.to_string().trim())])?;
        let mut problems = Vec::new();
        let mut keys: Vec<ClientKey> = Vec::new();
        for (i, k) in raw.key.into_iter().enumerate() {
            let at = format!("{source}: key[{i}]");
            let name = k.name.trim().to_owned();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                problems.push(format!(
                    "{at}.name: '{name}' must be letters, digits, '-', '_' or '.' (it becomes a metric label)"
                ));
            }
            if keys.iter().any(|o| o.name == name) {
                problems.push(format!("{at}.name: '{name}' is used twice"));
            }
            let digest = match parse_digest(&k.sha256) {
                Some(d) => d,
                None => {
                    problems.push(format!(
                        "{at}.sha256: must be 64 hex digits, the SHA-256 of the key (`ballast key hash`)"
                    ));
                    [0; 32]
                }
            };
            if keys.iter().any(|o| o.digest == digest) {
                problems.push(format!("{at}.sha256: the same key is listed twice"));
            }
            let priority = match &k.priority {
                None => None,
                Some(p) => match Priority::parse(p) {
                    Some(p) => Some(p),
                    None => {
                        problems.push(format!("{at}.priority: '{p}' is not low, normal or high"));
                        None
                    }
                },
            };
            keys.push(ClientKey {
                name,
                digest,
                limits: KeyLimits {
                    rpm: k.rpm.unwrap_or(0),
                    tpm: k.tpm.unwrap_or(0),
                    concurrency: k.max_concurrent.unwrap_or(0),
                },
                priority,
                routes: k.routes,
                models: k.models,
            });
        }
        if problems.is_empty() {
            Ok(KeySet { keys })
        } else {
            Err(problems)
        }
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyFile {
    #[serde(default)]
    key: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    sha256: String,
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrent: Option<u64>,
    priority: Option<String>,
    routes: Option<Vec<String>>,
    models: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn file(keys: &[(&str, &str)]) -> String {
        keys.iter()
            .map(|(name, key)| {
                format!(
                    "[[key]]\nname = \"{name}\"\nsha256 = \"{}\"\nrpm = 60\n",
                    hash_hex(key)
                )
            })
            .collect()
    }

    #[test]
    fn both_header_forms_present_a_key() {
        assert_eq!(
            presented(&headers(&[("authorization", "Bearer sk-1")])),
            Presented::Key("sk-1")
        );
        assert_eq!(
            presented(&headers(&[("authorization", "bearer  sk-1 ")])),
            Presented::Key("sk-1")
        );
        assert_eq!(
            presented(&headers(&[("x-api-key", "sk-2")])),
            Presented::Key("sk-2")
        );
        assert_eq!(
            presented(&headers(&[("authorization", "Basic dTpw")])),
            Presented::Unusable
        );
        assert_eq!(
            presented(&headers(&[("authorization", "Bearer ")])),
            Presented::Unusable
        );
        assert_eq!(presented(&headers(&[])), Presented::Nothing);
    }

    #[test]
    fn identifies_by_digest_only() {
        let set = KeySet::parse("keys.toml", &file(&[("a", "sk-a"), ("b", "sk-b")])).unwrap();
        assert_eq!(set.identify("sk-b").map(|k| k.name.as_str()), Some("b"));
        assert_eq!(set.identify("sk-a").unwrap().limits.rpm, 60);
        assert!(set.identify("sk-c").is_none());
        assert!(set.identify("").is_none());
        // Debug output carries names, never digests.
        let shown = format!("{set:?}");
        assert!(!shown.contains(&hash_hex("sk-a")[..16]), "{shown}");
    }

    #[test]
    fn hashes_like_sha256sum() {
        assert_eq!(
            hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let k = generate();
        assert!(k.starts_with("sk-ballast-") && k.len() == 11 + 64, "{k}");
        assert_ne!(generate(), k);
    }

    #[test]
    fn every_problem_of_a_key_file_is_named() {
        let text = format!(
            "{}[[key]]\nname = \"a\"\nsha256 = \"xyz\"\npriority = \"urgent\"\n[[key]]\nname = \"bad name\"\nsha256 = \"{}\"\n",
            file(&[("a", "sk-a")]),
            hash_hex("sk-a")
        );
        let problems = KeySet::parse("keys.toml", &text).unwrap_err();
        let all = problems.join("\n");
        assert!(
            all.contains("keys.toml: key[1].name: 'a' is used twice"),
            "{all}"
        );
        assert!(
            all.contains("key[1].sha256: must be 64 hex digits"),
            "{all}"
        );
        assert!(
            all.contains("key[1].priority: 'urgent' is not low, normal or high"),
            "{all}"
        );
        assert!(all.contains("key[2].name: 'bad name' must be"), "{all}");
        assert!(
            all.contains("key[2].sha256: the same key is listed twice"),
            "{all}"
        );
        let unknown =
            KeySet::parse("keys.toml", "[[key]]\nname = \"a\"\nsha = \"x\"\n").unwrap_err();
        assert!(unknown[0].starts_with("keys.toml: "), "{unknown:?}");
        assert!(unknown[0].contains("unknown field `sha`"), "{unknown:?}");
    }

    #[test]
    fn allow_lists() {
        let set = KeySet::parse(
            "k",
            &format!(
                "[[key]]\nname = \"a\"\nsha256 = \"{}\"\nroutes = [\"chat\"]\nmodels = [\"m1\"]\n",
                hash_hex("sk-a")
            ),
        )
        .unwrap();
        let k = set.identify("sk-a").unwrap();
        assert!(k.may_use_route("chat") && !k.may_use_route("batch"));
        assert!(k.may_use_model(Some("m1")) && !k.may_use_model(Some("m2")));
        assert!(k.may_use_model(None));
    }
}
