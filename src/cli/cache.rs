//! `pullthrough gc` and `pullthrough cache stats|ls|check`: a cache looked
//! at or repaired from its files, or (stats, ls, check) through the admin
//! API of the mirror running on it.

use super::{
    bucket_config, offline_config, print_report, runtime, CacheArgs, Failure, Outcome, Threads,
};
use pullthrough::admin::{self, human_bytes, table};
use pullthrough::oci::{ImageRef, Platforms};
use pullthrough::warm::CheckReport;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    cache: CacheArgs,
    /// Byte budget to evict down to, e.g. 50GiB [default: max_size from the config].
    #[arg(long, env = "PULLTHROUGH_MAX_SIZE", value_name = "SIZE")]
    max_size: Option<String>,
    /// Report what would be removed without removing anything.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Totals: bytes, blobs, manifests, tags, oldest access.
    Stats(CacheArgs),
    /// Whether each image is fully servable with the upstream down (exit
    /// status 0 when all are).
    Check(CheckArgs),
    /// Cached repositories and tags with sizes and last use.
    Ls {
        /// Only this repository (e.g. library/ubuntu or ubuntu).
        repo: Option<String>,
        #[command(flatten)]
        args: CacheArgs,
    },
}

#[derive(clap::Args)]
#[command(mut_arg("config", |a| a.help("TOML config file (upstreams, cache_dir)")))]
pub struct CheckArgs {
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
    /// Platforms an index must have cached: linux/amd64,linux/arm64 or all
    /// [default: this machine's].
    #[arg(long, value_name = "LIST")]
    platform: Vec<String>,
    #[command(flatten)]
    cache: CacheArgs,
}

pub fn gc(args: GcArgs) -> Outcome {
    let config = bucket_config(&args.cache, args.max_size)?;
    // Tags younger than the longest tag_ttl are still being served.
    let protect = config
        .upstreams
        .iter()
        .map(|u| u.tag_ttl)
        .max()
        .unwrap_or_default();
    let pinned = pullthrough::server::offline_pins(&config).map_err(Failure::setup)?;
    let report = admin::gc_with_bucket(
        &config.cache_dir,
        config.max_size,
        protect,
        args.dry_run,
        &pinned,
        config.storage.as_ref(),
    )
    .map_err(Failure::work)?;
    print_report(&report, args.cache.json, false, admin::render_gc);
    Ok(ExitCode::SUCCESS)
}

pub fn run(command: CacheCommand) -> Outcome {
    match command {
        CacheCommand::Stats(args) => {
            let config = bucket_config(&args, None)?;
            let stats = admin::stats_with_bucket(&config.cache_dir, config.storage.as_ref())
                .map_err(Failure::work)?;
            print_report(&stats, args.json, false, admin::render_stats);
        }
        CacheCommand::Ls { repo, args } => {
            let config = bucket_config(&args, None)?;
            let rows = admin::list_with_bucket(
                &config.cache_dir,
                repo.as_deref(),
                config.storage.as_ref(),
            )
            .map_err(Failure::work)?;
            print_report(&rows, args.json, false, |rows| admin::render_list(rows));
        }
        CacheCommand::Check(args) => return check(args),
    }
    Ok(ExitCode::SUCCESS)
}

/// The images a command names, parsed before anything is opened.
pub fn parse_images(images: &[String]) -> Result<Vec<ImageRef>, Failure> {
    images
        .iter()
        .map(|i| i.parse::<ImageRef>())
        .collect::<Result<_, _>>()
        .map_err(Failure::setup)
}

pub fn parse_platforms(platforms: &[String]) -> Result<Platforms, Failure> {
    Platforms::parse_list(platforms.iter().map(String::as_str)).map_err(Failure::setup)
}

fn check(args: CheckArgs) -> Outcome {
    let images = parse_images(&args.images)?;
    let platforms = parse_platforms(&args.platform)?;
    let config = offline_config(&args.cache, None)?;
    let offline = runtime(Threads::Many)?.block_on(pullthrough::server::check_offline(
        &config, &images, &platforms,
    ));
    let reports: Vec<CheckReport> = match offline {
        Ok(r) => r,
        // A mirror holds the cache: ask it (a read of its cache only).
        Err(e) if e.is_cache_in_use() => {
            admin::remote::check(&config.cache_dir, &args.images, &args.platform)
                .map_err(Failure::setup)?
        }
        Err(e) => return Err(Failure::setup(e)),
    };
    print_report(&reports, args.cache.json, false, |r| render_check(r));
    if reports.iter().all(|r| r.servable) {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

fn render_check(reports: &[CheckReport]) -> String {
    let rows = reports
        .iter()
        .map(|r| {
            vec![
                r.image.clone(),
                if r.servable {
                    "servable".into()
                } else {
                    "MISSING".into()
                },
                format!("{}", r.blobs),
                human_bytes(r.bytes),
                r.missing.join(", "),
            ]
        })
        .collect();
    table(
        &["IMAGE", "OFFLINE", "BLOBS", "CACHED", "MISSING"],
        rows,
        true,
    )
}
