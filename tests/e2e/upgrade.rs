//! Zero-downtime binary upgrade: a second `ballast run --upgrade` takes the
//! listening sockets over from the running one (SIGQUIT), which finishes
//! what it has in flight and exits; a client looping requests the whole
//! time sees no failure, and the admin listener keeps answering.

use crate::harness::*;
use ballast::sim::SimOptions;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STREAM: &str =
    r#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

/// Ends the new gateway process when the test does.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_takes_over_the_listeners_without_a_failed_request() {
    let a = sim_with(
        "a",
        SimOptions {
            tokens: 60,
            token_interval: Duration::from_millis(50),
            ..SimOptions::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let mut old = Gateway::start_server(
        &format!(
            "upgrade_sock = \"{}\"\ngrace_period = \"3s\"",
            sock.display()
        ),
        &format!(
            "{}{}",
            pool_toml("p", &[a.addr().to_string()], ""),
            route_toml("r", "/", "p", "openai = true")
        ),
    )
    .await;

    // A long stream on the old process, and a client looping requests.
    let stream = tokio::spawn({
        let (client, url) = (old.client.clone(), old.url("/v1/chat/completions"));
        async move {
            client
                .post(&url)
                .body(STREAM)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    wait_until("the stream never started", || a.stats().in_flight == 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let first_error = Arc::new(std::sync::Mutex::new(String::new()));
    let load = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let first_error = first_error.clone();
        let url = old.url("/v1/models");
        async move {
            while !stop.load(Ordering::Relaxed) {
                // A fresh client now and then: new connections must land too.
                let client = reqwest::Client::new();
                for _ in 0..5 {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            let mut e = first_error.lock().unwrap();
                            if e.is_empty() {
                                *e = format!("{other:?}");
                            }
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }
        }
    });

    // The new process waits for the sockets; the old one hands them over.
    let log = std::fs::File::create(dir.path().join("new.log")).unwrap();
    let new = Child(
        Command::new(env!("CARGO_BIN_EXE_ballast"))
            .arg("--config")
            .arg(old.config_path())
            .args(["run", "--upgrade"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the new gateway"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the new process never listened for the sockets"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    old.signal(libc::SIGQUIT);

    // The old process finishes its stream, then exits on its own.
    let text = stream.await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let status = old
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the old process exits once its stream is done");
    assert!(status.success(), "{status:?}");

    // Requests keep being served, by the new process now; so is the admin.
    let served = ok.load(Ordering::Relaxed);
    wait_until("nothing served after the old process left", || {
        ok.load(Ordering::Relaxed) > served + 20
    })
    .await;
    let health = reqwest::get(old.admin_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the upgrade ({} served; first: {})\nnew process:\n{}",
        ok.load(Ordering::Relaxed),
        first_error.lock().unwrap(),
        std::fs::read_to_string(dir.path().join("new.log")).unwrap_or_default()
    );
    drop(new);
}
