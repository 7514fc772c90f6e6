//! `ballast sim`: run one or more simulated backends until ctrl-c.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use super::{Fault, FaultKind, HealthMode, SimOptions, SimServer};

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// Arguments of `ballast sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on; repeat to start several servers (sim-1, sim-2, ...).
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:9001")]
    pub listen: Vec<SocketAddr>,
    /// Server name (with several --listen: NAME-1, NAME-2, ...).
    #[arg(long)]
    pub name: Option<String>,
    /// Model id served.
    #[arg(long, default_value = "sim-model")]
    pub model: String,
    /// Tokens per completion (a request's max_tokens overrides it).
    #[arg(long, default_value_t = 16)]
    pub tokens: u32,
    /// Delay before each streamed token.
    #[arg(long, value_name = "DURATION", default_value = "20ms", value_parser = parse_duration)]
    pub token_interval: Duration,
    /// Extra delay before every response head.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub latency: Option<Duration>,
    /// none | status:CODE[:retry-after=V] | hang | reset | close-mid-stream:N | stall-mid-stream:N
    #[arg(long, value_name = "FAULT", default_value = "none")]
    pub fault: FaultKind,
    /// Apply the fault to the next N requests only.
    #[arg(long, value_name = "N")]
    pub fault_times: Option<u32>,
    /// /health behaviour: ok | fail | hang.
    #[arg(long, value_name = "MODE", default_value = "ok")]
    pub health: HealthMode,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Speak HTTP/2 too: offered by ALPN with TLS, h2c with prior knowledge without.
    #[arg(long)]
    pub http2: bool,
    /// Prefill time per prompt token (about 4 characters) not in the KV
    /// cache, before the first token, e.g. "200us".
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub prefill_per_token: Duration,
    /// Prompt blocks (128 characters each) the KV cache holds, least
    /// recently used out; 0: no cache.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub kv_cache_blocks: usize,
    /// Refuse to continue a partial assistant message (vLLM's
    /// `continue_final_message`, DeepSeek's `prefix`) with a 400.
    #[arg(long)]
    pub no_continuation: bool,
    /// Refuse prompts of more than N words with vLLM's context-length 400
    /// (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_context: u64,
    /// Answer 503 ("server busy") to a request arriving while N are in
    /// flight, as a full hosted API does (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_concurrency: u64,
}

impl SimArgs {
    /// Name of the `i`-th (0-based) server.
    fn server_name(&self, i: usize) -> String {
        match (&self.name, self.listen.len()) {
            (Some(name), 1) => name.clone(),
            (Some(name), _) => format!("{name}-{}", i + 1),
            (None, _) => format!("sim-{}", i + 1),
        }
    }

    /// Options of the `i`-th (0-based) server.
    pub fn options(&self, i: usize) -> SimOptions {
        SimOptions {
            name: self.server_name(i),
            model: self.model.clone(),
            tokens: self.tokens,
            token_interval: self.token_interval,
            fault: Fault {
                kind: self.fault.clone(),
                latency: self.latency,
                times: self.fault_times,
            },
            health: self.health,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::config::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            client_ca: None,
            http2: self.http2,
            prefill_per_token: self.prefill_per_token,
            kv_cache_blocks: self.kv_cache_blocks,
            no_continuation: self.no_continuation,
            max_context: self.max_context,
            max_concurrency: self.max_concurrency,
        }
    }
}

/// Starts the servers, logs their addresses and runs until ctrl-c.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let mut servers = Vec::with_capacity(args.listen.len());
    for (i, listen) in args.listen.iter().enumerate() {
        let opts = args.options(i);
        let server = SimServer::start(*listen, opts)
            .await
            .with_context(|| format!("sim: cannot listen on {listen}"))?;
        tracing::info!(
            name = server.name(),
            addr = %server.addr(),
            model = %args.model,
            fault = %args.fault,
            "sim server listening"
        );
        servers.push(server);
    }
    tokio::signal::ctrl_c()
        .await
        .context("sim: cannot wait for ctrl-c")?;
    tracing::info!("sim: shutting down");
    for server in &servers {
        server.shutdown();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn parses_args() {
        let cli = Cli::parse_from([
            "x",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--fault",
            "status:429:retry-after=2",
            "--latency",
            "150ms",
            "--health",
            "fail",
        ]);
        let a = cli.sim;
        assert_eq!(a.listen.len(), 2);
        let o = a.options(1);
        assert_eq!(o.name, "sim-2");
        assert_eq!(o.tokens, 16);
        assert_eq!(o.token_interval, Duration::from_millis(20));
        assert_eq!(o.health, HealthMode::Fail);
        assert_eq!(o.fault.latency, Some(Duration::from_millis(150)));
        assert_eq!(
            o.fault.kind,
            FaultKind::Status {
                code: 429,
                retry_after: Some("2".into())
            }
        );
        let one = Cli::parse_from(["x", "--name", "a"]).sim;
        assert_eq!(one.options(0).name, "a");
        assert!(Cli::try_parse_from(["x", "--fault", "bogus"]).is_err());
    }
}
