//! `ballast probe`, the container image's health check: it reads the admin
//! address from the config and asks /healthz (or /readyz with --ready).

use crate::harness::*;
use std::process::{Command, Output};

fn probe(config: &std::path::Path, ready: bool) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ballast"));
    c.arg("--config").arg(config).arg("probe");
    if ready {
        c.arg("--ready");
    }
    c.output().expect("run ballast probe")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_tells_alive_ready_and_gone_apart() {
    let a = sim("a").await;
    let dead = dead_addr();
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        pool_toml("live", &[a.addr().to_string()], ""),
        route_toml("chat", "/v1/", "live", ""),
        pool_toml(
            "gone",
            std::slice::from_ref(&dead),
            "[pool.health]\npath = \"/health\"\ninterval = \"100ms\"\nfall = 1\n"
        ),
        route_toml("batch", "/batch/", "gone", ""),
    ))
    .await;
    let config = gw.config_path();
    let alive = probe(&config, false);
    assert!(alive.status.success(), "{}", stderr(&alive));

    gw.wait_server(&dead, "down", |s| s["state"] == "down")
        .await;
    let ready = probe(&config, true);
    assert!(!ready.status.success());
    assert!(
        stderr(&ready).contains("/readyz")
            && stderr(&ready).contains("answered 503: no usable server for routes: batch"),
        "{}",
        stderr(&ready)
    );
    assert!(
        probe(&config, false).status.success(),
        "alive though not ready"
    );

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("ballast.toml");
    std::fs::copy(&config, &copy).unwrap();
    drop(gw);
    let gone = probe(&copy, false);
    assert!(!gone.status.success());
    assert!(
        stderr(&gone).contains("cannot connect to the admin listener"),
        "{}",
        stderr(&gone)
    );

    std::fs::write(&copy, "[admin]\nlisten = 9090\n").unwrap();
    let bad = probe(&copy, false);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("invalid config"), "{}", stderr(&bad));
}
