//! The status page on the admin listener's `/`, loaded in a real headless
//! Chromium (Debian's `chromium`, installed by scripts/test): the DOM it
//! draws from `/status` shows every server of the running config in the
//! state the gateway holds it in, and a screenshot is kept.

use crate::harness::*;
use ballast::sim::{Fault, FaultKind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where tests leave files for people to look at.
pub fn test_output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-output");
    std::fs::create_dir_all(&dir).expect("create target/test-output");
    dir
}

/// Run headless Chromium on `url` with `args` (`--dump-dom`, or
/// `--screenshot=…`): stdout. Virtual time lets the page's polling run
/// (network fetches hold it) before the DOM is taken.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("chromium is installed (scripts/test installs Debian's package)");
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The server rows the page drew: (pool, server, state). Only the drawn
/// part is read (the script holds the row template too).
fn rows(dom: &str) -> Vec<(String, String, String)> {
    let start = dom.find("<div id=\"pools\">").unwrap_or(dom.len());
    let end = dom[start..]
        .find("<footer")
        .map_or(dom.len(), |i| start + i);
    let dom = &dom[start..end];
    let attr = |tag: &str, name: &str| -> String {
        let key = format!("{name}=\"");
        tag.find(&key)
            .map(|i| {
                let rest = &tag[i + key.len()..];
                rest[..rest.find('"').unwrap_or(rest.len())].to_string()
            })
            .unwrap_or_default()
    };
    dom.split("<tr class=\"server\"")
        .skip(1)
        .map(|tail| {
            let tag = &tail[..tail.find('>').unwrap_or(tail.len())];
            (
                attr(tag, "data-pool"),
                attr(tag, "data-server"),
                attr(tag, "data-state"),
            )
        })
        .collect()
}

/// The page has drawn `/status` at least twice (so rates are shown).
fn drawn(dom: &str) -> bool {
    dom.split("data-updates=\"")
        .nth(1)
        .and_then(|r| r[..r.find('"').unwrap_or(0)].parse::<u32>().ok())
        .is_some_and(|n| n >= 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_every_server_and_its_state_in_chromium() {
    let good = sim("good").await;
    let failing = sim("failing").await;
    let busy = sim("busy").await;
    failing.set_fault(status(500));
    busy.set_fault(Fault::new(FaultKind::Status {
        code: 429,
        retry_after: Some("120".into()),
    }));
    let chat: Vec<String> = [&good, &failing, &busy]
        .iter()
        .map(|s| s.addr().to_string())
        .collect();
    // A fleet of 200 servers nobody listens on (distinct loopback
    // addresses, port 1): health checks take them down, and the page must
    // stay whole with hundreds of rows.
    let fleet: Vec<String> = (1..=200).map(|i| format!("127.0.1.{i}:1")).collect();
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        pool_toml(
            "chat",
            &chat,
            "max_fails = 1\nfail_timeout = \"120s\"\nmax_conns = 8\n"
        ),
        route_toml("chat", "/v1/", "chat", "[route.retry]\nbackoff_max = \"120s\"\n"),
        pool_toml(
            "fleet",
            &fleet,
            "[pool.health]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nfall = 1\n"
        ),
        route_toml("batch", "/batch/", "fleet", ""),
    ))
    .await;

    // Traffic until the failing server is ejected and the busy one cools.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let _ = gw.client.get(gw.url("/v1/models")).send().await;
        let (f, b) = (
            gw.server_status(&chat[1]).await,
            gw.server_status(&chat[2]).await,
        );
        if f["state"] == "ejected" && b["state"] == "cooling" {
            break;
        }
        assert!(Instant::now() < deadline, "states never reached: {f} {b}");
    }
    for s in &fleet {
        gw.wait_server(s, "down", |st| st["state"] == "down").await;
    }

    // A reload (of the same file) shows as the page's last reload.
    let (code, _) = gw.reload().await;
    assert_eq!(code, 200);

    let url = gw.admin_url("/");
    let want = |pool: &str, server: &String, state: &str| {
        (pool.to_string(), server.clone(), state.to_string())
    };
    let mut expected = vec![
        want("chat", &chat[0], "up"),
        want("chat", &chat[1], "ejected"),
        want("chat", &chat[2], "cooling"),
    ];
    expected.extend(fleet.iter().map(|s| want("fleet", s, "down")));

    // The page polls on its own: take the DOM until it has drawn twice.
    let deadline = Instant::now() + Duration::from_secs(60);
    let dom = loop {
        let dom = chromium(&url, &["--dump-dom"]);
        if drawn(&dom) {
            break dom;
        }
        assert!(
            Instant::now() < deadline,
            "the page never drew /status: {dom}"
        );
    };
    let shown = rows(&dom);
    let differ: Vec<_> = shown
        .iter()
        .zip(&expected)
        .filter(|(a, b)| a != b)
        .take(5)
        .collect();
    assert!(
        shown.len() == expected.len() && differ.is_empty(),
        "every server of the config, in order: {} rows for {}; first differences {differ:?}",
        shown.len(),
        expected.len()
    );
    assert!(
        dom.contains("routes: chat"),
        "pool summary names its routes"
    );
    assert!(
        dom.contains("no usable server for routes: batch"),
        "a pool with no usable server is called out"
    );
    assert!(
        dom.contains("0 of 200 usable"),
        "the fleet's summary counts its usable servers"
    );
    assert!(
        dom.contains("data-generation=\"2\"") && dom.contains("(POST /reload)"),
        "the last reload and the generation it made are shown"
    );

    // A screenshot for people (the README's comes from here).
    let shot = test_output_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,800",
        ],
    );
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_is_self_contained() {
    let a = sim("a").await;
    let gw = Gateway::one_pool(&[a.addr().to_string()], "").await;
    let r = gw.client.get(gw.admin_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = r.text().await.unwrap();
    for external in ["http://", "https://", "//cdn", "<link", "src=\""] {
        assert!(
            !page.contains(external),
            "the page loads nothing from elsewhere ({external})"
        );
    }
    // What the page reads is there.
    let st = gw.status_json().await;
    for key in [
        "version",
        "uptime_seconds",
        "streams",
        "last_reload",
        "routes",
    ] {
        assert!(!st[key].is_null() || key == "last_reload", "{key}: {st}");
    }
    let server = &st["pools"][0]["servers"][0];
    assert!(server["attempts"]["total"].is_u64(), "{server}");
    assert!(st["pools"][0]["queue"]["total"].is_u64(), "{st}");
}
