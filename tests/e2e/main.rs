//! End-to-end tests: the real `ballast` binary between a real HTTP client
//! and simulated backends, all on loopback sockets.

mod admission;
mod balancing;
mod certs;
mod client_keys;
mod config_check;
mod connections;
mod credentials;
mod dns;
mod edge;
mod ejection;
mod errors;
mod forwarding;
mod harness;
mod health;
mod leases;
mod malformed;
mod memory;
mod openai_client;
mod paths;
mod probe;
mod prometheus;
mod proxying;
mod ratelimit_redis;
mod reload;
mod retries;
mod shutdown;
mod slow_readers;
mod startup;
mod status_page;
mod streaming;
mod tls_clients;
mod tls_upstream;
mod upgrade;
mod upgrades;
mod websocket;
