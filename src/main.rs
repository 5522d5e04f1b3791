//! The `pullthrough` command line: parses it and hands each command to its
//! home in `cli/`.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use cli::{bundle, cache, serve, warm, LogFormat};
use std::process::ExitCode;

mod cli;

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
    Serve(serve::ServeArgs),
    /// Repair the cache and evict down to max_size, offline (stop the
    /// server first); prints what it removed and freed.
    Gc(cache::GcArgs),
    /// Fetch images with all their blobs into a running mirror (--server)
    /// or a stopped cache directory; exits non-zero naming each image it
    /// could not warm.
    Warm(warm::WarmArgs),
    /// Inspect the cache: from its files, or through the admin API of the
    /// mirror running on it.
    Cache {
        #[command(subcommand)]
        command: cache::CacheCommand,
    },
    /// Write cached images (all their platforms the cache holds) to an
    /// OCI image layout tar, for a mirror without internet (offline: stop
    /// the server first).
    Export(bundle::ExportArgs),
    /// Verify a bundle written by `export` (or any OCI layout tar naming
    /// its images) and add its images and tags to a cache, offline.
    Import(bundle::ImportArgs),
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    // serve sets up its own logging: its format is a flag.
    if !matches!(command, Command::Serve(_)) {
        cli::init_logging(LogFormat::Text, "warn");
    }
    let outcome = match command {
        Command::Serve(args) => serve::serve(args),
        Command::Gc(args) => cache::gc(args),
        Command::Warm(args) => warm::warm(args),
        Command::Cache { command } => cache::run(command),
        Command::Export(args) => bundle::export(args),
        Command::Import(args) => bundle::import(args),
    };
    outcome.unwrap_or_else(cli::Failure::exit)
}
