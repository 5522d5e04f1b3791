//! `pullthrough serve`: its flags (each with an environment variable) over
//! the config file, and the mirror run until it stops.

use super::{init_queued_logging, load_config, runtime, Failure, LogFormat, Outcome, Threads};
use pullthrough::config::{AwsEnv, Config, Overrides};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ServeArgs {
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

pub fn serve(args: ServeArgs) -> Outcome {
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
    let config = load_config(args.config.as_deref(), &overrides)?;
    let runtime = runtime(Threads::Many)?;
    // SIGHUP reloads with the same flags over the file as it is then.
    let file = args.config;
    let reload = pullthrough::server::Reload {
        file: file.clone(),
        load: Box::new(move || Config::load(file.as_deref(), &overrides)),
    };
    runtime
        .block_on(pullthrough::server::serve(config, Some(reload)))
        .map_err(Failure::work)?;
    Ok(ExitCode::SUCCESS)
}
