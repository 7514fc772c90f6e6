//! `ballast demo`: simulated model backends on every server address of the
//! config, so the gateway has something real to balance over.

use crate::config::Config;
use crate::sim::{SimOptions, SimServer};
use anyhow::Context;
use std::time::Duration;

/// Start one simulated backend per configured server on a background
/// thread of its own; returns once all of them listen.
pub fn start_backends(config: &Config) -> anyhow::Result<()> {
    let servers: Vec<(String, std::net::SocketAddr)> = config
        .pools
        .iter()
        .flat_map(|p| {
            p.servers
                .iter()
                .flat_map(|s| s.resolved.iter().copied())
                .enumerate()
                .map(move |(i, addr)| (format!("{}-{}", p.name, i + 1), addr))
        })
        .collect();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("demo-backends".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let mut running = Vec::new();
                for (name, addr) in servers {
                    let opts = SimOptions {
                        name: name.clone(),
                        tokens: 20,
                        token_interval: Duration::from_millis(50),
                        ..SimOptions::default()
                    };
                    match SimServer::start(addr, opts).await {
                        Ok(s) => {
                            tracing::info!(backend = %name, %addr, "demo backend listening");
                            running.push(s);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow::Error::new(e)
                                .context(format!("demo backend {name} cannot listen on {addr}"))));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                // Serve for the life of the process.
                std::future::pending::<()>().await;
                drop(running);
            });
        })
        .context("spawning the demo backend thread")?;
    ready_rx
        .recv()
        .context("the demo backend thread ended before it was ready")?
}
