//! One real RabbitMQ broker (Debian's `rabbitmq-server`, installed by
//! scripts/test) for the whole test run, on loopback ports of its own, with
//! its own epmd and data directory. It takes seconds to boot, so it is
//! started once, by the first test that needs it, and ends with the test
//! process. A test that restarts it holds it alone (`exclusive`); the others
//! share it, each on queues of its own.
//!
//! Without a broker the tests are skipped with a loud message, unless
//! `BALLAST_REQUIRE_RABBITMQ` is set (scripts/test sets it): then they fail.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

enum Cmd {
    Start(mpsc::Sender<Result<(), String>>),
    Stop(mpsc::Sender<()>),
}

/// The shared broker.
pub struct Broker {
    pub port: u16,
    /// Its TLS listener (amqps), with a certificate for localhost and
    /// 127.0.0.1 signed by `pki`'s CA.
    pub tls_port: u16,
    pub pki: crate::certs::Pki,
    keeper: std::sync::Mutex<mpsc::Sender<Cmd>>,
    /// Readers share the broker; a writer restarts it.
    lock: RwLock<()>,
    started: tokio::sync::OnceCell<Result<(), String>>,
}

/// Held while a test uses the broker.
pub enum Use<'a> {
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

/// Die with the thread that started us: the keeper thread lives as long as
/// the test process.
fn die_with_parent(cmd: &mut Command, signal: i32) {
    // SAFETY: prctl is async-signal-safe and touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts and stops the broker's processes from one thread that lives as
/// long as the test process, so that they die with it (PDEATHSIG follows
/// the thread that spawned them).
fn keeper(dir: std::path::PathBuf, port: u16, dist: u16, epmd_port: u16, rx: mpsc::Receiver<Cmd>) {
    let env = |cmd: &mut Command| {
        cmd.env("HOME", &dir)
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env(
                "RABBITMQ_NODENAME",
                format!("ballast-test-{port}@localhost"),
            )
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONF_ENV_FILE", "/dev/null")
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .stdin(Stdio::null());
    };
    let mut epmd: Option<Child> = None;
    let mut broker: Option<Child> = None;
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Cmd::Start(reply) => {
                if epmd.is_none() {
                    let mut c = Command::new("epmd");
                    c.args(["-port", &epmd_port.to_string()])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    env(&mut c);
                    die_with_parent(&mut c, libc::SIGKILL);
                    match c.spawn() {
                        Ok(child) => epmd = Some(child),
                        Err(e) => {
                            let _ = reply.send(Err(format!("epmd cannot start: {e}")));
                            continue;
                        }
                    }
                }
                let log = std::fs::File::create(dir.join("server.out")).ok();
                let mut c = Command::new(SERVER);
                env(&mut c);
                c.stdout(log.map_or(Stdio::null(), Stdio::from))
                    .stderr(Stdio::null());
                // The script stops the node gracefully on SIGTERM.
                die_with_parent(&mut c, libc::SIGTERM);
                let _ = reply.send(match c.spawn() {
                    Ok(child) => {
                        broker = Some(child);
                        Ok(())
                    }
                    Err(e) => Err(format!("{SERVER} cannot start: {e}")),
                });
            }
            Cmd::Stop(reply) => {
                if let Some(mut child) = broker.take() {
                    // SAFETY: a signal to our own child, by pid.
                    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                    let _ = child.wait();
                }
                let _ = reply.send(());
            }
        }
    }
}

impl Broker {
    fn get() -> &'static Broker {
        static BROKER: OnceLock<Broker> = OnceLock::new();
        BROKER.get_or_init(|| {
            let dir = data_dir();
            std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("write enabled_plugins");
            let [port, tls_port, dist, epmd] = crate::harness::free_ports::<4>();
            let pki = crate::certs::Pki::new("rabbitmq");
            let server = pki.server("broker", &["localhost", "127.0.0.1"]);
            let conf = format!(
                "log.console = false\n\
                 listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                pki.ca_file.display(),
                server.cert.display(),
                server.key.display()
            );
            std::fs::write(dir.join("rabbitmq.conf"), conf).expect("write rabbitmq.conf");
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("rabbitmq keeper".into())
                .spawn(move || keeper(dir, port, dist, epmd, rx))
                .expect("spawn the broker's keeper thread");
            Broker {
                port,
                tls_port,
                pki,
                keeper: std::sync::Mutex::new(tx),
                lock: RwLock::new(()),
                started: tokio::sync::OnceCell::new(),
            }
        })
    }

    fn send(&self, cmd: Cmd) {
        self.keeper
            .lock()
            .expect("keeper lock")
            .send(cmd)
            .expect("the keeper thread runs");
    }

    /// Start the node (again) and wait until it speaks AMQP.
    async fn boot(&self) -> Result<(), String> {
        if !std::path::Path::new(SERVER).exists() {
            return Err(format!("{SERVER} is not installed"));
        }
        let (tx, rx) = mpsc::channel();
        self.send(Cmd::Start(tx));
        rx.recv().map_err(|e| e.to_string())??;
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if speaks_amqp(self.port).await {
                // The TLS listener starts with the plain one.
                let tls = tokio::net::TcpStream::connect(("127.0.0.1", self.tls_port)).await;
                return tls.map(drop).map_err(|e| format!("no TLS listener: {e}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("rabbitmq-server did not accept AMQP within 90 s".into())
    }

    async fn shared_or_skip(exclusive: bool) -> Option<(&'static Broker, Use<'static>)> {
        let b = Broker::get();
        let held = if exclusive {
            Use::Exclusive(b.lock.write().await)
        } else {
            Use::Shared(b.lock.read().await)
        };
        match b.started.get_or_init(|| b.boot()).await {
            Ok(()) => Some((b, held)),
            Err(why) if std::env::var_os("BALLAST_REQUIRE_RABBITMQ").is_some() => {
                panic!("RabbitMQ is required (BALLAST_REQUIRE_RABBITMQ) but: {why}")
            }
            Err(why) => {
                eprintln!("\n*** SKIPPED: RabbitMQ tests need a broker: {why} ***\n");
                None
            }
        }
    }

    /// The broker, shared with other tests; `None`: skipped.
    pub async fn shared() -> Option<(&'static Broker, Use<'static>)> {
        Broker::shared_or_skip(false).await
    }

    /// The broker, for this test alone (it may restart it).
    pub async fn exclusive() -> Option<(&'static Broker, Use<'static>)> {
        Broker::shared_or_skip(true).await
    }

    /// Stop the node gracefully (SIGTERM), as an operator's restart does.
    pub async fn stop(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Cmd::Stop(tx));
        tokio::task::spawn_blocking(move || rx.recv())
            .await
            .expect("join")
            .expect("the keeper answers");
        assert!(!speaks_amqp(self.port).await, "the broker still answers");
    }

    pub async fn start(&self) {
        self.boot().await.expect("the broker starts again");
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn tls_url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.tls_port)
    }
}

/// The broker's data, under the build's temporary directory; those of
/// test runs that are over are removed.
fn data_dir() -> std::path::PathBuf {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("rabbitmq-")
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = base.join(format!("rabbitmq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("the broker's data directory");
    dir
}

/// The broker answers an AMQP 0-9-1 protocol header with Connection.Start
/// (a method frame, type 1).
async fn speaks_amqp(port: u16) -> bool {
    let Ok(Ok(mut c)) = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    if c.write_all(b"AMQP\x00\x00\x09\x01").await.is_err() {
        return false;
    }
    let mut frame = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut frame)).await,
        Ok(Ok(_)) if frame[0] == 1
    )
}
