//! `pullthrough warm`: images fetched into a running mirror through its
//! admin API or into a stopped cache directory, progress on a terminal,
//! the summary table or JSON, and the exit status naming what failed.

use super::cache::{parse_images, parse_platforms};
use super::{
    offline_config, print_report, read_admin_token, runtime, CacheArgs, Failure, Outcome, Threads,
};
use pullthrough::admin::{human_bytes, table};
use pullthrough::oci::Platforms;
use pullthrough::server::WarmRequest;
use pullthrough::warm::ImageReport;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
#[command(
    mut_arg("config", |a| a.help("TOML config file (upstreams, cache_dir, admin_token_file)")),
    mut_arg("cache_dir", |a| a.help("Warm a stopped mirror's cache directory directly [default: ./pullthrough-cache]")),
)]
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
    #[command(flatten)]
    cache: CacheArgs,
}

pub fn warm(args: WarmArgs) -> Outcome {
    let images = parse_images(&args.images)?;
    let platforms = parse_platforms(&args.platform)?;
    let config = offline_config(&args.cache, None)?;
    let rt = runtime(Threads::Many)?;
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
                return Err(Failure::setup("--server needs the admin token: --admin-token-file, PULLTHROUGH_ADMIN_TOKEN_FILE or admin_token_file in --config"));
            };
            let token = read_admin_token(&token_file)?;
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
    let reports = reports.map_err(Failure::setup)?;
    print_report(&reports, args.cache.json, false, |r| render_warm(r));
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
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Failure::work(format!(
            "could not warm: {}",
            failed.join(", ")
        )))
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
