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
    /// Inspect the cache: from its files, or through the admin API of the
    /// mirror running on it.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Write cached images (all their platforms the cache holds) to an
    /// OCI image layout tar, for a mirror without internet (offline: stop
    /// the server first).
    Export(ExportArgs),
    /// Verify a bundle written by `export` (or any OCI layout tar naming
    /// its images) and add its images and tags to a cache, offline.
    Import(ImportArgs),
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Images as a pull names them: nginx:1.27, ghcr.io/owner/app@sha256:…
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
    /// The tar to write; `-` for standard output.
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// The bundle; `-` for standard input.
    #[arg(value_name = "BUNDLE")]
    bundle: PathBuf,
    /// Add it to a running mirror through its admin API (e.g.
    /// http://127.0.0.1:5000) instead of a stopped cache dir.
    #[arg(long, value_name = "URL", conflicts_with = "cache_dir")]
    server: Option<String>,
    /// The admin token, as the mirror's admin_token_file holds it (with
    /// --server).
    #[arg(long, env = "PULLTHROUGH_ADMIN_TOKEN_FILE", value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    cache: CacheArgs,
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
    init_logging_to(format, default_filter, std::io::stderr);
}

/// `serve`'s log: queued for one writer thread, so no request waits on a
/// write to stderr. The guard writes out what is queued when dropped.
fn init_queued_logging(format: LogFormat) -> Option<pullthrough::log_queue::FlushOnDrop> {
    match pullthrough::log_queue::stderr() {
        Ok((queue, guard)) => {
            init_logging_to(format, "info", queue);
            Some(guard)
        }
        Err(e) => {
            init_logging(format, "info");
            tracing::warn!("no log writer thread ({e}): logging straight to stderr");
            None
        }
    }
}

fn init_logging_to<W>(format: LogFormat, default_filter: &str, writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
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
        Command::Export(args) => export(args),
        Command::Import(args) => import(args),
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
                    admin::stats_here_or_running(&config.cache_dir),
                    args.json,
                    admin::render_stats,
                ),
                Some(repo) => print_or_fail(
                    admin::list_here_or_running(&config.cache_dir, repo.as_deref()),
                    args.json,
                    |rows| admin::render_list(rows),
                ),
            }
        }
    }
}

fn export(args: ExportArgs) -> ExitCode {
    init_logging(LogFormat::Text, "warn");
    let config = match offline_config(&args.cache, None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut images = Vec::new();
    for name in &args.images {
        match name.parse::<pullthrough::oci::ImageName>() {
            Ok(image) => images.push(image),
            Err(e) => {
                eprintln!("pullthrough: {name}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let result = pullthrough::bundle::export(&config.cache_dir, &images, &args.output);
    // The report goes to stderr when the bundle itself is on stdout.
    let to_stdout = args.output.as_os_str() == "-";
    print_report(
        result,
        args.cache.json,
        to_stdout,
        pullthrough::bundle::render_export,
    )
}

fn import(args: ImportArgs) -> ExitCode {
    init_logging(LogFormat::Text, "warn");
    if let Some(server) = &args.server {
        return import_remote(server, &args);
    }
    let config = match offline_config(&args.cache, None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let upstreams: Vec<String> = config.upstreams.iter().map(|u| u.name.clone()).collect();
    let input: Box<dyn std::io::Read> = if args.bundle.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        match std::fs::File::open(&args.bundle) {
            Ok(f) => Box::new(std::io::BufReader::with_capacity(1 << 20, f)),
            Err(e) => {
                eprintln!("pullthrough: {}: {e}", args.bundle.display());
                return ExitCode::FAILURE;
            }
        }
    };
    let result = pullthrough::bundle::import(&config.cache_dir, config.max_size, input, &upstreams);
    print_report(
        result,
        args.cache.json,
        false,
        pullthrough::bundle::render_import,
    )
}

fn import_remote(server: &str, args: &ImportArgs) -> ExitCode {
    let Some(token_file) = &args.admin_token_file else {
        eprintln!(
            "pullthrough: --server needs --admin-token-file (or PULLTHROUGH_ADMIN_TOKEN_FILE)"
        );
        return ExitCode::from(2);
    };
    let token = match std::fs::read_to_string(token_file) {
        Ok(t) => t.trim().to_owned(),
        Err(e) => {
            eprintln!("pullthrough: {}: {e}", token_file.display());
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pullthrough: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(pullthrough::bundle::import_remote(
        server,
        &token,
        &args.bundle,
    ));
    print_report(
        result,
        args.cache.json,
        false,
        pullthrough::bundle::render_import,
    )
}

/// The config an offline command reads: the cache dir and budget, never
/// the storage tier.
fn offline_config(args: &CacheArgs, max_size: Option<String>) -> Result<Config, ExitCode> {
    let overrides = Overrides {
        cache_dir: args.cache_dir.clone(),
        max_size,
        ignore_storage: true,
        ..Overrides::default()
    };
    load_config(args.config.as_deref(), &overrides)
}

fn print_report<T: serde::Serialize, E: std::fmt::Display>(
    result: Result<T, E>,
    json: bool,
    to_stderr: bool,
    render: impl Fn(&T) -> String,
) -> ExitCode {
    match result {
        Ok(value) => {
            let text = if json {
                serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
            } else {
                render(&value)
            };
            if to_stderr {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pullthrough: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    // Declared before the runtime, so dropped after it: lines logged while
    // shutting down are written too.
    let _log_flushed_on_return = init_queued_logging(args.log_format);
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
    let reload = pullthrough::server::Reload {
        file: file.clone(),
        load: Box::new(move || Config::load(file.as_deref(), &overrides)),
    };
    match runtime.block_on(pullthrough::server::serve(config, Some(reload))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pullthrough: {e}");
            ExitCode::FAILURE
        }
    }
}
