//! Fuzz `ballast::config::parse_with`: any text gives a config or a list of
//! problems, never a panic; an accepted config is internally consistent.
//! Host names are never looked up (no DNS traffic while fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fn no_lookups(_: &str, _: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
    Err(std::io::Error::other("no name lookups while fuzzing"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ballast::config::parse_with("fuzz.toml", text, &no_lookups) {
        Ok(config) => {
            assert!(!config.pools.is_empty() && !config.routes.is_empty());
            for pool in &config.pools {
                assert!(!pool.servers.is_empty(), "pool {} has no servers", pool.name);
            }
            for route in &config.routes {
                assert!(route.pool < config.pools.len());
                assert!(route.fallback.iter().all(|f| f.pool < config.pools.len()));
                assert!(route.retry.attempts >= 1);
                assert!(route.path_prefix.starts_with('/'));
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
});
