//! Start the real `ballast` binary and simulated backends on loopback
//! ports, and wait for readiness by polling, never by sleeping blind.

use ballast::sim::{Fault, FaultKind, SimOptions, SimServer};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port nobody listens on now (bound once, then released). Only for
/// something that listens on it at once: another test's ephemeral bind may
/// take it meanwhile.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// `N` distinct free ports: bound together, then released.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local addr").port())
}

/// The address of a server that is down: a privileged port below the
/// ephemeral range, which no backend or gateway of the test run ever binds
/// (they take ephemeral ports), so it stays refused for the whole test. A
/// freed ephemeral port would not: another test's server may get it.
pub fn dead_addr() -> String {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1000);
    loop {
        let port = NEXT.fetch_sub(1, Ordering::Relaxed);
        assert!(port > 100, "out of dead ports");
        let addr = format!("127.0.0.1:{port}");
        // Something of this machine's may listen there: skip it.
        let refused = std::net::TcpStream::connect_timeout(
            &addr.parse().expect("an address"),
            Duration::from_millis(200),
        )
        .is_err();
        if refused {
            return addr;
        }
    }
}

pub async fn sim(name: &str) -> SimServer {
    sim_with(name, SimOptions::default()).await
}

pub async fn sim_with(name: &str, opts: SimOptions) -> SimServer {
    let opts = SimOptions {
        name: name.to_string(),
        ..opts
    };
    SimServer::start("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .expect("start simulated backend")
}

pub fn latency(d: Duration) -> Fault {
    Fault {
        kind: FaultKind::None,
        latency: Some(d),
        times: None,
    }
}

pub fn status(code: u16) -> Fault {
    Fault {
        kind: FaultKind::Status {
            code,
            retry_after: None,
        },
        latency: None,
        times: None,
    }
}

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Gateway {
    /// Start `ballast` with `body` (pools and routes) after generated
    /// `[server]`, `[admin]` and `[log]` sections on free ports.
    pub async fn start(body: &str) -> Gateway {
        Gateway::start_env(body, &[]).await
    }

    /// `start` with extra environment variables (pool credentials).
    pub async fn start_env(body: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_with("", body, env, None).await
    }

    /// `start` with extra `[server]` keys.
    pub async fn start_server(server_extra: &str, body: &str) -> Gateway {
        Gateway::start_with(server_extra, body, &[], None).await
    }

    /// `start` with extra `[server]` keys and environment variables.
    pub async fn start_server_env(server_extra: &str, body: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_with(server_extra, body, env, None).await
    }

    /// `start` under a descriptor limit (soft and hard), set with util-linux's
    /// `prlimit`, which then runs the gateway in its own process.
    pub async fn start_nofile(nofile: u64, body: &str) -> Gateway {
        Gateway::start_with("", body, &[], Some(nofile)).await
    }

    async fn start_with(
        server_extra: &str,
        body: &str,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Gateway {
        // The ports are free when chosen, but another test may bind one
        // before the gateway does: then it exits at once, and is started
        // again on new ones.
        for _ in 0..5 {
            let mut gw = Gateway::spawn(server_extra, body, env, nofile);
            if gw.wait_ready().await {
                return gw;
            }
            let log = gw.log();
            assert!(
                log.contains("Address already in use"),
                "ballast did not become ready; log:\n{log}"
            );
            let _ = gw.child.wait();
        }
        panic!("ballast could not get free ports in five tries");
    }

    fn spawn(server_extra: &str, body: &str, env: &[(&str, &str)], nofile: Option<u64>) -> Gateway {
        // Both bound at once, so they differ (one freed port may come back
        // at once from the next bind).
        let [port, admin_port] = free_ports::<2>();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        // A test may bring its own [log] section.
        let log = if body.contains("[log]") {
            ""
        } else {
            "[log]\nlevel = \"info\"\n\n"
        };
        // A test may set its own grace period.
        let grace = if server_extra.contains("grace_period") {
            ""
        } else {
            "grace_period = \"1s\"\n"
        };
        let text = format!(
            "[server]\nlisten = [\"{addr}\"]\nthreads = 2\n{grace}{server_extra}\n\
             [admin]\nlisten = \"{admin}\"\n\n{log}{body}"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ballast.toml");
        std::fs::write(&path, text).expect("write config");
        let log = std::fs::File::create(dir.path().join("ballast.log")).expect("log file");
        let bin = env!("CARGO_BIN_EXE_ballast");
        let mut command = match nofile {
            None => Command::new(bin),
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
                c
            }
        };
        let child = command
            .arg("--config")
            .arg(&path)
            .arg("run")
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ballast");
        Gateway {
            child,
            addr,
            admin,
            _dir: dir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// The common case: one pool "p" of `servers` (with `pool_extra` keys)
    /// and one route "r" for every path.
    pub async fn one_pool(servers: &[String], pool_extra: &str) -> Gateway {
        Gateway::start(&format!(
            "{}{}",
            pool_toml("p", servers, pool_extra),
            route_toml("r", "/", "p", "")
        ))
        .await
    }

    /// Poll until the gateway serves; false if it exited first.
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            let admin_up = self
                .client
                .get(self.admin_url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            let gw_up = tokio::net::TcpStream::connect(self.addr).await.is_ok();
            if admin_up && gw_up {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "ballast did not become ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The config file the gateway runs on (a test may rewrite it and
    /// reload).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("ballast.toml")
    }

    /// `POST /reload` on the admin listener: status and JSON answer.
    pub async fn reload(&self) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(self.admin_url("/reload"))
            .send()
            .await
            .expect("POST /reload");
        let status = r.status().as_u16();
        (status, r.json().await.expect("reload answer is JSON"))
    }

    /// Send `signal` (e.g. `libc::SIGTERM`) to the gateway process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: a plain signal to the process this harness started.
        let sent = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(sent, 0, "signal {signal} not delivered");
    }

    /// Wait (polling) for the gateway to exit; `None` if it still runs
    /// after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the gateway") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The gateway process's pid (for /proc readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("ballast.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub async fn status_json(&self) -> serde_json::Value {
        self.client
            .get(self.admin_url("/status"))
            .send()
            .await
            .expect("GET /status")
            .json()
            .await
            .expect("/status is JSON")
    }

    /// The `/status` entry of one server.
    pub async fn server_status(&self, server: &str) -> serde_json::Value {
        let st = self.status_json().await;
        find_server(&st, server).unwrap_or_else(|| panic!("server {server} not in /status: {st}"))
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Value of the first sample whose line starts with `name{` and contains
    /// every `label="value"` pair given; 0 if absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Poll `/metrics` until the sample reaches `want` (metrics are recorded
    /// just after the response is written), or fail after 15 s.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.metric(name, labels).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} stayed {got}, wanted {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Poll `/metrics` until the sample is at least `want`, or fail after 15 s.
    pub async fn wait_metric_at_least(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.metric(name, labels).await;
            if got >= want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} stayed {got}, wanted at least {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Poll `/status` until `server` is no longer listed, or fail after 15 s.
    pub async fn wait_unlisted(&self, server: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let st = self.status_json().await;
            if find_server(&st, server).is_none() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{server} stayed in /status: {st}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Poll `/status` until `pred` holds for `server`, or fail after 15 s.
    pub async fn wait_server(
        &self,
        server: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // A server may not be listed yet (a name still being resolved).
            let st = self.status_json().await;
            let s = find_server(&st, server);
            if s.as_ref().is_some_and(&pred) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {server} to be {what}: {st}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Read a response body to its end: the text, and whether it ended
/// cleanly (false: the body was aborted).
pub async fn read_to_end<S>(mut body: S) -> (String, bool)
where
    S: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    use futures_util::StreamExt;
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Err(_) => return (text, false),
        }
    }
    (text, true)
}

/// POST `body` (an event stream request) and read the answer: true when it
/// was a 200 that ended with `data: [DONE]`.
pub async fn whole_stream(client: &reqwest::Client, url: &str, body: &'static str) -> bool {
    match client.post(url).body(body).send().await {
        Ok(r) if r.status() == 200 => r
            .text()
            .await
            .is_ok_and(|t| t.trim_end().ends_with("data: [DONE]")),
        _ => false,
    }
}

/// One server's entry in a `/status` document.
fn find_server(status: &serde_json::Value, server: &str) -> Option<serde_json::Value> {
    status["pools"]
        .as_array()?
        .iter()
        .flat_map(|p| p["servers"].as_array().into_iter().flatten())
        .find(|s| s["addr"] == server)
        .cloned()
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `ballast --config <path> run` expecting it to refuse to start: its
/// output once it exits, or a failure (and the process killed) if it is
/// still running after 15 s.
pub fn run_expecting_exit(path: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .arg("--config")
        .arg(path)
        .arg("run")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ballast");
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().expect("poll ballast").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap ballast");
            panic!(
                "ballast kept running; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("reap ballast")
}

/// Poll `cond` every few milliseconds until it holds; fail with `what`
/// after 15 s.
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A pool section with the given servers.
pub fn pool_toml(name: &str, servers: &[String], extra: &str) -> String {
    let mut s = format!("[[pool]]\nname = \"{name}\"\n{extra}\n");
    for addr in servers {
        s.push_str(&format!("[[pool.servers]]\naddr = \"{addr}\"\n"));
    }
    s
}

pub fn route_toml(name: &str, prefix: &str, pool: &str, extra: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\npool = \"{pool}\"\n{extra}\n"
    )
}

/// Send `bytes` on a fresh connection to `addr` and read until the peer
/// closes (or 10 s pass): what a raw client sees.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> RawReply {
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    // The peer may answer and close before every byte is written.
    let _ = conn.write_all(bytes).await;
    read_until_closed(&mut conn, Duration::from_secs(10)).await
}

/// Read until the peer closes the connection, or `limit` passes.
pub async fn read_until_closed(conn: &mut tokio::net::TcpStream, limit: Duration) -> RawReply {
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    RawReply { bytes: got, closed }
}

/// Read one request head (up to its blank line) off a raw backend
/// connection; `None` if the peer closed first.
pub async fn read_request_head(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// The values of header `name` in a request the simulator recorded.
pub fn recorded_header<'a>(rec: &'a ballast::sim::RequestRecord, name: &str) -> Vec<&'a str> {
    rec.headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read /proc/PID/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// What a raw client received.
pub struct RawReply {
    pub bytes: Vec<u8>,
    /// The gateway closed the connection (within 10 s).
    pub closed: bool,
}

impl RawReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status code of the first response, if any.
    pub fn status(&self) -> Option<u16> {
        let text = self.text();
        let line = text.lines().next()?;
        line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// The body of the first response (after the blank line).
    pub fn body(&self) -> String {
        let text = self.text();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }
}

/// A raw backend that answers every request with the bytes `reply`, as a
/// misbehaving server might; it keeps every request head it read.
pub struct Canned {
    pub addr: std::net::SocketAddr,
    pub heads: Arc<Mutex<Vec<String>>>,
}

pub async fn canned(reply: &'static str) -> Canned {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(head) = read_request_head(&mut conn).await else {
                    return;
                };
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = conn.write_all(reply.as_bytes()).await;
                // Hold the connection until the gateway lets go of it.
                let _ = conn.read(&mut [0u8; 64]).await;
            });
        }
    });
    Canned { addr, heads }
}

/// Limits count per minute of Unix time: start a test's counting well
/// inside one, so that no window turns over under it.
pub async fn away_from_a_window_edge() {
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 60_000;
    if into > 40_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into as u64 + 50)).await;
    }
}
