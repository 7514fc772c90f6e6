//! A pool's credential goes to that pool's servers and nowhere else: every
//! attempt carries the `Host` and key of the pool it is sent to.

use crate::harness::*;

const KEY_HOSTED: &str = "sk-hosted-5f1e0c2a";
const KEY_OTHER: &str = "sk-other-9b7d4e11";
const CLIENT_KEY: &str = "client-own-3c8a";

fn header<'a>(rec: &'a ballast::sim::RequestRecord, name: &str) -> Vec<&'a str> {
    rec.headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn carries(rec: &ballast::sim::RequestRecord, secret: &str) -> bool {
    rec.headers.iter().any(|(_, v)| v.contains(secret))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_get_their_own_key_and_host_never_the_primarys() {
    let hosted = sim("hosted").await;
    let other = sim("other").await;
    let local = sim("local").await;
    hosted.set_fault(status(503));
    other.set_fault(status(503));
    let gw = Gateway::start_env(
        &format!(
            "{}{}{}{}[route.retry]\nattempts = 1\n",
            pool_toml(
                "hosted",
                &[hosted.addr().to_string()],
                "api_key_env = \"BALLAST_TEST_KEY_HOSTED\"\nhost = \"api.hosted.example\""
            ),
            pool_toml(
                "other",
                &[other.addr().to_string()],
                "api_key_env = \"BALLAST_TEST_KEY_OTHER\"\nhost = \"api.other.example\""
            ),
            pool_toml("local", &[local.addr().to_string()], ""),
            route_toml(
                "r",
                "/v1/",
                "hosted",
                "fallback = [{ pool = \"other\", model = \"other-model\" }, { pool = \"local\" }]"
            ),
        ),
        &[
            ("BALLAST_TEST_KEY_HOSTED", KEY_HOSTED),
            ("BALLAST_TEST_KEY_OTHER", KEY_OTHER),
        ],
    )
    .await;

    let r = gw
        .client
        .post(gw.url("/v1/echo"))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .body(r#"{"model":"m","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sim-server"], "local");

    // Each pool saw exactly one attempt, with its own Host and key.
    let h = hosted.stats().log;
    let o = other.stats().log;
    let l = local.stats().log;
    assert_eq!((h.len(), o.len(), l.len()), (1, 1, 1));
    assert_eq!(
        header(&h[0], "authorization"),
        [format!("Bearer {KEY_HOSTED}")]
    );
    assert_eq!(header(&h[0], "host"), ["api.hosted.example"]);
    assert_eq!(
        header(&o[0], "authorization"),
        [format!("Bearer {KEY_OTHER}")]
    );
    assert_eq!(header(&o[0], "host"), ["api.other.example"]);
    // A pool that injects no key gets the client's own, and its own Host.
    assert_eq!(
        header(&l[0], "authorization"),
        [format!("Bearer {CLIENT_KEY}")]
    );
    assert_eq!(header(&l[0], "host"), [gw.addr.to_string()]);

    // No secret crossed a pool, and the client's key never reached a pool
    // that injects one.
    assert!(!carries(&h[0], KEY_OTHER) && !carries(&h[0], CLIENT_KEY));
    assert!(!carries(&o[0], KEY_HOSTED) && !carries(&o[0], CLIENT_KEY));
    assert!(!carries(&l[0], KEY_HOSTED) && !carries(&l[0], KEY_OTHER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_cannot_be_a_header_stops_start_up_without_showing_it() {
    let a = sim("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\n[server]\nlisten = [\"127.0.0.1:{}\"]\n{}{}",
            free_port(),
            free_port(),
            pool_toml(
                "p",
                &[a.addr().to_string()],
                "api_key_env = \"BALLAST_TEST_BAD_KEY\""
            ),
            route_toml("r", "/", "p", "")
        ),
    )
    .unwrap();
    let out = run_expecting_exit(&path, &[("BALLAST_TEST_BAD_KEY", "sk-line1\nsk-line2")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pool 'p'") && err.contains("BALLAST_TEST_BAD_KEY"),
        "{err}"
    );
    assert!(!err.contains("sk-line"), "the key was shown: {err}");
}
