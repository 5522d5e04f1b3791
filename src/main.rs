//! The `pullthrough` command line.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use pullthrough::admin;
use pullthrough::config::{AwsEnv, Config, Overrides};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

mod warm_cli;

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
    /// Repair the cache and evict down to max_size, offline (stop the
    /// server first); prints what it removed and freed.
    Gc(GcArgs),
    /// Fetch images with all their blobs into a running mirror (--server)
    /// or a stopped cache directory; exits non-zero naming each image it
    /// could not warm.
    Warm(warm_cli::WarmArgs),
    /// Inspect the cache, offline.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Totals: bytes, blobs, manifests, tags, oldest access.
    Stats(CacheArgs),
    /// Whether each image is fully servable with the upstream down (exit
    /// status 0 when all are).
    Check(warm_cli::CheckArgs),
    /// Cached repositories and tags with sizes and last use.
    Ls {
        /// Only this repository (e.g. library/ubuntu or ubuntu).
        repo: Option<String>,
        #[command(flatten)]
        args: CacheArgs,
    },
}

#[derive(clap::Args)]
struct CacheArgs {
    /// TOML config file (for cache_dir).
    #[arg(long, env = "PULLTHROUGH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Cache directory [default: ./pullthrough-cache].
    #[arg(long, env = "PULLTHROUGH_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct GcArgs {
    #[command(flatten)]
    cache: CacheArgs,
    /// Byte budget to evict down to, e.g. 50GiB [default: max_size from the config].
    #[arg(long, env = "PULLTHROUGH_MAX_SIZE", value_name = "SIZE")]
    max_size: Option<String>,
    /// Report what would be removed without removing anything.
    #[arg(long)]
    dry_run: bool,
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
    /// Cache byte budget, e.g. 50GiB; least recently used content is
    /// evicted beyond it [default: unbounded].
    #[arg(long, env = "PULLTHROUGH_MAX_SIZE", value_name = "SIZE")]
    max_size: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (reloaded on SIGHUP or change).
    #[arg(
        long,
        env = "PULLTHROUGH_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(
        long,
        env = "PULLTHROUGH_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// A shared tier on S3-compatible object storage under the local
    /// disk, e.g. s3://BUCKET/PREFIX (settings in the config's
    /// [storage.s3] table or the AWS_* variables) [default: local disk only].
    #[arg(long, env = "PULLTHROUGH_STORAGE", value_name = "URL")]
    storage: Option<String>,
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

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(file: Option<&std::path::Path>, overrides: &Overrides) -> Result<Config, ExitCode> {
    Config::load(file, overrides).map_err(|e| {
        eprintln!("pullthrough: {e}");
        ExitCode::from(2)
    })
}

fn print_or_fail<T: serde::Serialize>(
    result: Result<T, pullthrough::admin::AdminError>,
    json: bool,
    render: impl Fn(&T) -> String,
) -> ExitCode {
    match result {
        Ok(value) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                print!("{}", render(&value));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pullthrough: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Gc(args) => {
            init_logging(LogFormat::Text, "warn");
            let overrides = Overrides {
                cache_dir: args.cache.cache_dir,
                max_size: args.max_size,
                // The offline commands look at the local tier only.
                ignore_storage: true,
                ..Overrides::default()
            };
            let config = match load_config(args.cache.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let protect = config
                .upstreams
                .iter()
                .map(|u| u.tag_ttl)
                .max()
                .unwrap_or_default();
            let pinned = match pullthrough::server::offline_pins(&config) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("pullthrough: {e}");
                    return ExitCode::from(2);
                }
            };
            let result = admin::gc(
                &config.cache_dir,
                config.max_size,
                protect,
                args.dry_run,
                &pinned,
            );
            print_or_fail(result, args.cache.json, admin::render_gc)
        }
        Command::Warm(args) => {
            init_logging(LogFormat::Text, "warn");
            warm_cli::warm(args)
        }
        Command::Cache { command } => {
            init_logging(LogFormat::Text, "warn");
            let (args, repo) = match command {
                CacheCommand::Check(args) => return warm_cli::check(args),
                CacheCommand::Stats(args) => (args, None),
                CacheCommand::Ls { repo, args } => (args, Some(repo)),
            };
            let overrides = Overrides {
                cache_dir: args.cache_dir,
                ignore_storage: true,
                ..Overrides::default()
            };
            let config = match load_config(args.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match repo {
                None => print_or_fail(
                    admin::stats(&config.cache_dir),
                    args.json,
                    admin::render_stats,
                ),
                Some(repo) => print_or_fail(
                    admin::list(&config.cache_dir, repo.as_deref()),
                    args.json,
                    |rows| admin::render_list(rows),
                ),
            }
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging(args.log_format, "info");
    let overrides = Overrides {
        listen: args.listen,
        cache_dir: args.cache_dir,
        upstream: args.upstream,
        metrics_listen: args.metrics_listen,
        max_size: args.max_size,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        storage: args.storage,
        aws: AwsEnv::from_process(),
        ignore_storage: false,
    };
    let config = match load_config(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(code) => return code,
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
    let file = args.config.clone();
    let reload: pullthrough::server::Reload =
        Box::new(move || Config::load(file.as_deref(), &overrides));
    match runtime.block_on(pullthrough::server::serve(config, Some(reload))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pullthrough: {e}");
            ExitCode::FAILURE
        }
    }
}
