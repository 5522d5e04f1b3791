//! `pullthrough export` and `pullthrough import`: offline bundles (OCI
//! layout tars) written from a stopped cache, and read into one or into a
//! running mirror through its admin API.

use super::{
    offline_config, print_report, read_admin_token, runtime, CacheArgs, Failure, Outcome, Threads,
};
use pullthrough::bundle;
use pullthrough::oci::ImageName;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ExportArgs {
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
pub struct ImportArgs {
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

pub fn export(args: ExportArgs) -> Outcome {
    let config = offline_config(&args.cache, None)?;
    let images = args
        .images
        .iter()
        .map(|name| {
            name.parse::<ImageName>()
                .map_err(|e| Failure::setup(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let report = bundle::export(&config.cache_dir, &images, &args.output).map_err(Failure::work)?;
    // The report goes to stderr when the bundle itself is on stdout.
    let to_stdout = args.output.as_os_str() == "-";
    print_report(&report, args.cache.json, to_stdout, bundle::render_export);
    Ok(ExitCode::SUCCESS)
}

pub fn import(args: ImportArgs) -> Outcome {
    let report = match &args.server {
        Some(server) => import_remote(server, &args)?,
        None => import_offline(&args)?,
    };
    print_report(&report, args.cache.json, false, bundle::render_import);
    Ok(ExitCode::SUCCESS)
}

fn import_offline(args: &ImportArgs) -> Result<bundle::ImportReport, Failure> {
    let config = offline_config(&args.cache, None)?;
    let upstreams: Vec<String> = config.upstreams.iter().map(|u| u.name.clone()).collect();
    let input: Box<dyn std::io::Read> = if args.bundle.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(&args.bundle)
            .map_err(|e| Failure::work(format!("{}: {e}", args.bundle.display())))?;
        Box::new(std::io::BufReader::with_capacity(1 << 20, file))
    };
    bundle::import(&config.cache_dir, config.max_size, input, &upstreams).map_err(Failure::work)
}

fn import_remote(server: &str, args: &ImportArgs) -> Result<bundle::ImportReport, Failure> {
    let Some(token_file) = &args.admin_token_file else {
        return Err(Failure::setup(
            "--server needs --admin-token-file (or PULLTHROUGH_ADMIN_TOKEN_FILE)",
        ));
    };
    let token = read_admin_token(token_file)?;
    runtime(Threads::One)?
        .block_on(bundle::import_remote(server, &token, &args.bundle))
        .map_err(Failure::work)
}
