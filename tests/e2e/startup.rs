//! Start-up refuses what it cannot do, with the reason, instead of running
//! with a part missing.

use crate::harness::*;
use std::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_bind_is_a_start_up_error() {
    let a = sim("a").await;
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let free = format!("127.0.0.1:{}", free_port());
    for (key, server, admin) in [
        ("admin.listen", free.clone(), taken_addr.to_string()),
        ("server.listen", taken_addr.to_string(), free.clone()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ballast.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = [\"{server}\"]\n[admin]\nlisten = \"{admin}\"\n{}{}",
                pool_toml("p", &[a.addr().to_string()], ""),
                route_toml("r", "/", "p", "")
            ),
        )
        .unwrap();
        let out = run_expecting_exit(&path, &[]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{key}: cannot listen on {taken_addr}"))
                && err.contains("in use"),
            "{err}"
        );
    }
    drop(taken);
}
