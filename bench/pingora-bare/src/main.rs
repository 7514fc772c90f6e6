//! The engine's ceiling: a bare `pingora-proxy` reverse proxy with round-robin
//! upstream selection and nothing else (no routing, retries, limits, metrics
//! or logging). The suite runs it beside Ballast so that the cost Ballast adds
//! above the engine it is built on can be seen.
//!
//!   pingora-bare LISTEN_ADDR THREADS UPSTREAM...

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context};
use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{http_proxy_service, ProxyHttp, Session};

struct RoundRobin {
    upstreams: Vec<String>,
    next: AtomicUsize,
}

#[async_trait]
impl ProxyHttp for RoundRobin {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.upstreams.len();
        Ok(Box::new(HttpPeer::new(
            self.upstreams[i].as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: pingora-bare LISTEN_ADDR THREADS UPSTREAM...");
    }
    let threads: usize = args[1].parse().context("THREADS must be a number")?;
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        RoundRobin {
            upstreams: args[2..].to_vec(),
            next: AtomicUsize::new(0),
        },
    );
    proxy.add_tcp(&args[0]);
    server.add_service(proxy);
    server.run_forever()
}
