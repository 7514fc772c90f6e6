//! `ballast`: run the gateway (default), check a config, run the demo, run
//! simulated model backends, or probe a running gateway's health.

use anyhow::Context;
use ballast::config;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "ballast",
    version,
    about = "A gateway that makes \"server busy\" disappear"
)]
struct Cli {
    /// Config file (TOML); the BALLAST_CONFIG environment variable sets it too.
    #[arg(
        long,
        short,
        global = true,
        env = "BALLAST_CONFIG",
        default_value = "config/ballast.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default).
    Run {
        /// Take the listening sockets over from a running gateway (binary
        /// upgrade): start this, then send the old process SIGQUIT.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config: exit 0, or print every problem and exit 1.
    Check,
    /// Start simulated backends on every server address of the config, then the gateway.
    Demo,
    /// Run simulated OpenAI-compatible model backends.
    Sim(Box<ballast::sim::SimArgs>),
    /// Ask the running gateway's admin listener (from the config) whether it
    /// is alive: exit 0 if /healthz answers 200 (with --ready, /readyz).
    /// The container image's health check.
    Probe {
        /// Ask /readyz (every route has a usable server, not draining).
        #[arg(long)]
        ready: bool,
    },
    /// Client keys: hash one for the key file, or make a new one.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Print the SHA-256 of a key (read from stdin, so that it stays out of
    /// the shell's history) as the key file's `sha256` wants it.
    Hash,
    /// Make a new random key: prints the key (give it to the client) and
    /// a [[key]] entry with its hash (for the key file).
    New {
        /// The key's name in logs, metrics and /status.
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run { upgrade: false }) {
        Command::Check => match config::load(&cli.config) {
            Ok(_) => {
                println!("{}: ok", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { upgrade } => exit(run(&cli.config, false, upgrade)),
        Command::Demo => exit(run(&cli.config, true, false)),
        Command::Sim(args) => exit(run_sim(*args)),
        Command::Key(KeyCommand::Hash) => {
            let mut key = String::new();
            if std::io::stdin().read_line(&mut key).is_err() || key.trim().is_empty() {
                eprintln!("ballast key hash: give the key on stdin, e.g. `printf %s \"$KEY\" | ballast key hash`");
                return ExitCode::FAILURE;
            }
            println!("{}", ballast::keys::hash_hex(key.trim()));
            ExitCode::SUCCESS
        }
        Command::Key(KeyCommand::New { name }) => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                eprintln!("ballast key new: --name must be letters, digits, '-', '_' or '.'");
                return ExitCode::FAILURE;
            }
            let key = ballast::keys::generate();
            println!("key: {key}");
            println!();
            println!(
                "[[key]]\nname = \"{name}\"\nsha256 = \"{}\"",
                ballast::keys::hash_hex(&key)
            );
            ExitCode::SUCCESS
        }
        Command::Probe { ready } => {
            let path = if ready { "/readyz" } else { "/healthz" };
            exit(ballast::probe::probe(&cli.config, path))
        }
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ballast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path, demo: bool, upgrade: bool) -> anyhow::Result<()> {
    let cfg = config::load(path).map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    ballast::runtime::init_logging(cfg.log.format, &cfg.log.level);
    if demo {
        ballast::demo::start_backends(&cfg).context("starting the demo backends")?;
    }
    ballast::runtime::run(path, cfg, upgrade)
}

fn run_sim(args: ballast::sim::SimArgs) -> anyhow::Result<()> {
    ballast::runtime::init_logging(config::LogFormat::Text, "info");
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(ballast::sim::run(args))
}

// Pingora allocates and frees buffers per request; glibc malloc showed up as
// ~10% of the gateway's CPU under load, mimalloc brings that down. Built
// without transparent huge pages: with them, every new connection's buffers
// cost fresh 2 MiB pages to zero (bench/sse-streams.sh: +160 ms time to
// first byte and 3x the memory per open stream).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
