//! The `pullthrough` command line.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use pullthrough::config::{Config, Overrides};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// A pull-through cache for container registries: set it as a registry
/// mirror and every image layer is fetched from the upstream once.
#[derive(Parser)]
#[command(name = "pullthrough", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; flags and environment variables override it.
    #[arg(long, env = "PULLTHROUGH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:5000].
    #[arg(long, env = "PULLTHROUGH_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Cache directory [default: ./pullthrough-cache].
    #[arg(long, env = "PULLTHROUGH_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Base URL of the registry to mirror [default: https://registry-1.docker.io].
    #[arg(long, env = "PULLTHROUGH_UPSTREAM", value_name = "URL")]
    upstream: Option<String>,
    /// Also serve /metrics on this address (e.g. 127.0.0.1:9090).
    #[arg(long, env = "PULLTHROUGH_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Log format.
    #[arg(long, env = "PULLTHROUGH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging(args.log_format);
            let overrides = Overrides {
                listen: args.listen,
                cache_dir: args.cache_dir,
                upstream: args.upstream,
                metrics_listen: args.metrics_listen,
            };
            let config = match Config::load(args.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("pullthrough: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("pullthrough: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(pullthrough::server::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pullthrough: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
