//! `pullthrough warm` and `pullthrough cache check` on the command line:
//! arguments, talking to a running mirror's admin API or opening a
//! stopped cache, progress on a terminal, the summary table or JSON, and
//! the exit status.

use pullthrough::admin::{human_bytes, table};
use pullthrough::config::{Config, Overrides};
use pullthrough::oci::{ImageRef, Platforms};
use pullthrough::server::WarmRequest;
use pullthrough::warm::{CheckReport, ImageReport};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct WarmArgs {
    /// Images as a pull names them: nginx:1.27, ghcr.io/owner/app@sha256:…
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
    /// Platforms to take from an index: linux/amd64,linux/arm64 or all
    /// [default: this machine's, as docker pull takes it].
    #[arg(long, value_name = "LIST")]
    platform: Vec<String>,
    /// Also warm each manifest's referrers (signatures, SBOMs, attestations).
    #[arg(long)]
    referrers: bool,
    /// Warm a running mirror through its admin API, e.g. http://mirror:5000.
    #[arg(long, value_name = "URL", conflicts_with = "cache_dir")]
    server: Option<String>,
    /// The admin token file for --server [default: admin_token_file from the config].
    #[arg(long, env = "PULLTHROUGH_ADMIN_TOKEN_FILE", value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// TOML config file (upstreams, cache_dir, admin_token_file).
    #[arg(long, env = "PULLTHROUGH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Warm a stopped mirror's cache directory directly [default: ./pullthrough-cache].
    #[arg(long, env = "PULLTHROUGH_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
    /// Platforms an index must have cached: linux/amd64,linux/arm64 or all
    /// [default: this machine's].
    #[arg(long, value_name = "LIST")]
    platform: Vec<String>,
    #[arg(long, env = "PULLTHROUGH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long, env = "PULLTHROUGH_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("pullthrough: {message}");
    ExitCode::from(2)
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the async runtime: {e}")))
}

fn load(config: Option<&std::path::Path>, cache_dir: Option<PathBuf>) -> Result<Config, ExitCode> {
    let overrides = Overrides {
        cache_dir,
        ignore_storage: true,
        ..Overrides::default()
    };
    Config::load(config, &overrides).map_err(fail)
}

fn parse_images(images: &[String]) -> Result<Vec<ImageRef>, ExitCode> {
    images
        .iter()
        .map(|i| i.parse::<ImageRef>())
        .collect::<Result<_, _>>()
        .map_err(fail)
}

pub fn warm(args: WarmArgs) -> ExitCode {
    let images = match parse_images(&args.images) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let platforms = match Platforms::parse_list(args.platform.iter().map(String::as_str)) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let config = match load(args.config.as_deref(), args.cache_dir.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let tty = std::io::stderr().is_terminal();
    let progress = move |r: &ImageReport| {
        if tty {
            let mut err = std::io::stderr();
            let _ = write!(
                err,
                "\r\x1b[K{}: {}/{} blobs, {} fetched of {}",
                r.image,
                r.blobs_done,
                r.blobs,
                human_bytes(r.bytes_fetched),
                human_bytes(r.bytes)
            );
            let _ = err.flush();
        }
    };
    let reports = match &args.server {
        Some(server) => {
            let token_file = args
                .admin_token_file
                .clone()
                .or(config.admin_token_file.clone());
            let Some(token_file) = token_file else {
                return fail("--server needs the admin token: --admin-token-file, PULLTHROUGH_ADMIN_TOKEN_FILE or admin_token_file in --config");
            };
            let token = match std::fs::read_to_string(&token_file) {
                Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
                Ok(_) => return fail(format!("{} is empty", token_file.display())),
                Err(e) => return fail(format!("cannot read {}: {e}", token_file.display())),
            };
            rt.block_on(warm_remote(server, &token, &args, &platforms, &progress))
        }
        None => {
            let request = WarmRequest {
                images,
                platforms,
                referrers: args.referrers,
            };
            rt.block_on(pullthrough::server::warm_offline(
                &config, &request, &progress,
            ))
            .map_err(|e| e.to_string())
        }
    };
    if tty {
        eprintln!();
    }
    let reports = match reports {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).unwrap_or_default()
        );
    } else {
        print!("{}", render_warm(&reports));
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.ok)
        .map(|r| {
            format!(
                "{} ({})",
                r.image,
                r.error.as_deref().unwrap_or("unknown error")
            )
        })
        .collect();
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("pullthrough: could not warm: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

/// Asks a running mirror: `POST /api/v1/warm`, reading its lines as they
/// come.
async fn warm_remote(
    server: &str,
    token: &str,
    args: &WarmArgs,
    platforms: &Platforms,
    progress: &(dyn Fn(&ImageReport) + Send + Sync),
) -> Result<Vec<ImageReport>, String> {
    let mut url = url::Url::parse(server)
        .and_then(|u| u.join("/api/v1/warm"))
        .map_err(|e| format!("--server {server:?}: {e}"))?;
    {
        let mut q = url.query_pairs_mut();
        for image in &args.images {
            q.append_pair("image", image);
        }
        q.append_pair("platform", &platforms.to_string());
        if args.referrers {
            q.append_pair("referrers", "true");
        }
    }
    let mut resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("cannot reach {server}: {e}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("{server} answered {status}: {}", body.trim()));
    }
    let mut pending = Vec::new();
    let mut reports = Vec::new();
    loop {
        let chunk = resp
            .chunk()
            .await
            .map_err(|e| format!("the warm's answer broke off: {e}"))?;
        let Some(chunk) = chunk else { break };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            let Ok(report) = serde_json::from_value::<ImageReport>(event["image"].clone()) else {
                continue;
            };
            progress(&report);
            if event["event"] == "done" {
                reports.push(report);
            }
        }
    }
    if reports.len() < args.images.len() {
        return Err(format!(
            "the warm's answer ended after {} of {} images",
            reports.len(),
            args.images.len()
        ));
    }
    Ok(reports)
}

fn render_warm(reports: &[ImageReport]) -> String {
    let rows = reports
        .iter()
        .map(|r| {
            vec![
                r.image.clone(),
                r.digest
                    .as_deref()
                    .map_or("-".to_owned(), |d| d.get(..19).unwrap_or(d).to_owned()),
                r.manifests.to_string(),
                format!("{}/{}", r.blobs_fetched, r.blobs),
                human_bytes(r.bytes_fetched),
                human_bytes(r.bytes),
                if r.ok { "ok".into() } else { "FAILED".into() },
            ]
        })
        .collect();
    table(
        &[
            "IMAGE",
            "DIGEST",
            "MANIFESTS",
            "FETCHED/BLOBS",
            "FETCHED",
            "SIZE",
            "STATUS",
        ],
        rows,
        true,
    )
}

pub fn check(args: CheckArgs) -> ExitCode {
    let images = match parse_images(&args.images) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let platforms = match Platforms::parse_list(args.platform.iter().map(String::as_str)) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let config = match load(args.config.as_deref(), args.cache_dir.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let offline = rt.block_on(pullthrough::server::check_offline(
        &config, &images, &platforms,
    ));
    let reports: Vec<CheckReport> = match offline {
        Ok(r) => r,
        // A mirror holds the cache: ask it (a read of its cache only).
        Err(e) if e.is_cache_in_use() => {
            match pullthrough::admin::remote::check(&config.cache_dir, &args.images, &args.platform)
            {
                Ok(r) => r,
                Err(e) => return fail(e),
            }
        }
        Err(e) => return fail(e),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).unwrap_or_default()
        );
    } else {
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
        print!(
            "{}",
            table(
                &["IMAGE", "OFFLINE", "BLOBS", "CACHED", "MISSING"],
                rows,
                true
            )
        );
    }
    if reports.iter().all(|r| r.servable) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
