//! What every `pullthrough` command shares: the cache flags, logging, the
//! config an offline command loads, the async runtime, the admin token,
//! the report (table or JSON) and how a failure becomes an exit status.

pub mod bundle;
pub mod cache;
pub mod serve;
pub mod warm;

use clap::ValueEnum;
use pullthrough::config::{AwsEnv, Config, Overrides};
use std::fmt::Display;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The flags of the commands that work on a cache (offline, or through
/// the mirror running on it), flattened into each.
#[derive(clap::Args)]
pub struct CacheArgs {
    /// TOML config file (for cache_dir, max_size, and a storage whose bucket
    /// is listed beside the local tier).
    #[arg(long, env = "PULLTHROUGH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Cache directory [default: ./pullthrough-cache].
    #[arg(long, env = "PULLTHROUGH_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Why a command stopped: printed once as `pullthrough: …` with the exit
/// status it carries.
pub struct Failure {
    message: String,
    status: u8,
}

impl Failure {
    /// Exit status 2: the command could not do its work at all (arguments,
    /// config, admin token, a mirror it cannot reach).
    pub fn setup(message: impl Display) -> Self {
        Failure {
            message: message.to_string(),
            status: 2,
        }
    }

    /// Exit status 1: the work ran and failed.
    pub fn work(message: impl Display) -> Self {
        Failure {
            message: message.to_string(),
            status: 1,
        }
    }

    pub fn exit(self) -> ExitCode {
        eprintln!("pullthrough: {}", self.message);
        ExitCode::from(self.status)
    }
}

/// What a command's function returns; `main` turns it into the exit status.
pub type Outcome = Result<ExitCode, Failure>;

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr, so a report or a bundle on stdout stays clean.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    init_logging_to(format, default_filter, std::io::stderr);
}

/// `serve`'s log: queued for one writer thread, so no request waits on a
/// write to stderr. The guard writes out what is queued when dropped.
pub fn init_queued_logging(format: LogFormat) -> Option<pullthrough::log_queue::FlushOnDrop> {
    match pullthrough::log_queue::stderr() {
        Ok((queue, guard)) => {
            init_logging_to(format, "info", queue);
            if matches!(format, LogFormat::Text) && !std::io::stderr().is_terminal() {
                pullthrough::log_queue::access_lines_as_text();
            }
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

pub fn load_config(file: Option<&Path>, overrides: &Overrides) -> Result<Config, Failure> {
    Config::load(file, overrides).map_err(Failure::setup)
}

/// The config an offline command reads: the cache dir and budget, never
/// the storage tier.
pub fn offline_config(args: &CacheArgs, max_size: Option<String>) -> Result<Config, Failure> {
    let overrides = Overrides {
        cache_dir: args.cache_dir.clone(),
        max_size,
        ignore_storage: true,
        ..Overrides::default()
    };
    load_config(args.config.as_deref(), &overrides)
}

/// The config `gc` and `cache stats|ls` read: with the storage it names
/// (and the `AWS_*` variables), so what stays in the bucket is listed;
/// eviction stays local.
pub fn bucket_config(args: &CacheArgs, max_size: Option<String>) -> Result<Config, Failure> {
    let overrides = Overrides {
        cache_dir: args.cache_dir.clone(),
        max_size,
        aws: AwsEnv::from_process(),
        ..Overrides::default()
    };
    load_config(args.config.as_deref(), &overrides)
}

/// Which tokio runtime a command runs on.
pub enum Threads {
    /// Work spread over the cores (serve, warm, cache check).
    Many,
    /// One thread: `import --server` streams the bundle up and reads the
    /// answer on it, so a refusal sent before the upload ends (a 401) is
    /// read rather than lost to the connection closing.
    One,
}

pub fn runtime(threads: Threads) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder = match threads {
        Threads::Many => tokio::runtime::Builder::new_multi_thread(),
        Threads::One => tokio::runtime::Builder::new_current_thread(),
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| Failure::work(format!("cannot start the async runtime: {e}")))
}

/// The token as the mirror's admin_token_file holds it, without the
/// newline an editor leaves.
pub fn read_admin_token(file: &Path) -> Result<String, Failure> {
    match std::fs::read_to_string(file) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => Err(Failure::setup(format!("{} is empty", file.display()))),
        Err(e) => Err(Failure::setup(format!(
            "cannot read {}: {e}",
            file.display()
        ))),
    }
}

/// Prints a command's report: pretty JSON with `--json`, else the table
/// `render` makes; on stderr when stdout carries data (a bundle).
pub fn print_report<T: serde::Serialize>(
    report: &T,
    json: bool,
    to_stderr: bool,
    render: impl Fn(&T) -> String,
) {
    let text = if json {
        serde_json::to_string_pretty(report).unwrap_or_default() + "\n"
    } else {
        render(report)
    };
    if to_stderr {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
}
