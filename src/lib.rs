//! Ballast: a Pingora gateway for OpenAI-compatible model backends.
//!
//! The decisions (which server, eject or not, how to answer an error) live in
//! small pure modules; `proxy` gathers facts from the wire, calls them and
//! acts.

pub mod admin;
pub mod amqp;
pub mod body;
pub mod config;
pub mod demo;
pub mod descriptors;
pub mod drain;
pub mod error;
pub mod generation;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod openai;
pub mod outcome;
pub mod path;
pub mod pool;
pub mod probe;
pub mod proxy;
pub mod queue;
pub mod ratelimit;
pub mod redact;
pub mod reload;
pub mod retry;
pub mod route;
pub mod runtime;
pub mod sim;
pub mod tls;
