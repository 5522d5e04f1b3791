//! Reload without restart (issue 12): SIGHUP to the real binary applies
//! a changed config file (here a repository denied, then allowed again)
//! while a download under way finishes untouched, and new client limits
//! apply at once; a file that does not
//! load keeps the running config and is logged in one line naming the key.

use crate::support::client::{client, config_file, error_of, read_transfer};
use crate::support::hub::{Fault, Hub, Target};
use crate::support::mirror::Mirror;
use crate::support::ACCEPT;
use std::path::Path;
use std::process::Command;

fn sighup(mirror: &Mirror) {
    let status = Command::new("kill")
        .arg("-HUP")
        .arg(mirror.pid().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP failed");
}

async fn manifest_status(mirror: &Mirror, repo: &str) -> (u16, Option<String>) {
    let response = client()
        .get(format!("{}/v2/{repo}/manifests/latest", mirror.url()))
        .header("accept", ACCEPT)
        .send()
        .await
        .expect("manifest request");
    let status = response.status().as_u16();
    if status == 200 {
        (status, None)
    } else {
        (status, error_of(response).await.code)
    }
}

/// Rewrites the config and sends SIGHUP; returns once the mirror logged
/// the `nth` outcome line containing `outcome`.
fn reload_with(mirror: &Mirror, path: &Path, toml: &str, outcome: &str, nth: usize) -> String {
    std::fs::write(path, toml).expect("rewrite config");
    sighup(mirror);
    mirror.wait_log(outcome, |log| log.matches(outcome).count() >= nth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_denies_a_repository_while_a_download_under_way_finishes() {
    let hub = Hub::start().await;
    let app = hub.push_image("library/app", "latest", &[3 << 20]);
    hub.push_image("library/other", "latest", &[1000]);
    // The layer takes about three seconds from the CDN.
    let (layer, layer_bytes) = app.layers[0].clone();
    hub.set_fault(Target::Digest(layer.clone()), Fault::Throttle(1 << 20));
    let (_dir, path) = config_file("[[upstream]]\ntag_ttl = \"1s\"\n");
    let mirror = Mirror::builder(&hub.url())
        .config_file(&path)
        .process()
        .log("info")
        .start();
    assert_eq!(manifest_status(&mirror, "app").await.0, 200);
    let slow = client()
        .get(format!("{}/v2/app/blobs/{layer}", mirror.url()))
        .send()
        .await
        .expect("blob");
    assert_eq!(slow.status(), 200);
    let download = tokio::spawn(read_transfer(slow));

    let denied = "[[upstream]]\ntag_ttl = \"1s\"\ndeny = [\"library/app\"]\n";
    reload_with(&mirror, &path, denied, "config reloaded", 1);
    assert_eq!(
        manifest_status(&mirror, "app").await,
        (403, Some("DENIED".to_string())),
        "denied after SIGHUP"
    );
    assert_eq!(
        manifest_status(&mirror, "other").await.0,
        200,
        "others still served"
    );
    assert!(
        !download.is_finished(),
        "the download should still be under way at the reload"
    );
    let got = download.await.expect("download task").bytes();
    assert!(
        got == layer_bytes,
        "the download under way finished, byte for byte"
    );

    // A broken file: the running config (app denied) stays; one line says
    // which key is wrong.
    let broken = "[[upstream]]\ntag_ttl = \"soon\"\n";
    let log = reload_with(&mirror, &path, broken, "config not reloaded", 1);
    let line = log
        .lines()
        .find(|l| l.contains("config not reloaded"))
        .expect("the refusal line");
    assert!(line.contains("upstream[0].tag_ttl"), "{line}");
    assert_eq!(manifest_status(&mirror, "app").await.0, 403, "still denied");

    // And back: allowed again.
    let allowed = "[[upstream]]\ntag_ttl = \"1s\"\n";
    reload_with(&mirror, &path, allowed, "config reloaded", 2);
    assert_eq!(
        manifest_status(&mirror, "app").await.0,
        200,
        "allowed again"
    );
}

/// An edit of the config file applies without a signal, within seconds,
/// and once (a SIGHUP sent after the edit is the same reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edited_config_file_applies_without_a_signal() {
    let hub = Hub::start().await;
    hub.push_image("library/app", "latest", &[1000]);
    let (_dir, path) = config_file("[[upstream]]\ntag_ttl = \"1s\"\n");
    let mirror = Mirror::builder(&hub.url())
        .config_file(&path)
        .process()
        .log("info")
        .start();
    assert_eq!(manifest_status(&mirror, "app").await.0, 200);
    std::fs::write(
        &path,
        "[[upstream]]\ntag_ttl = \"1s\"\ndeny = [\"library/app\"]\n",
    )
    .expect("rewrite config");
    let log = mirror.wait_log("config reloaded", |log| log.contains("config reloaded"));
    assert!(log.contains("config file changed"), "{log}");
    assert_eq!(
        manifest_status(&mirror, "app").await,
        (403, Some("DENIED".to_string())),
        "denied after the edit"
    );
    std::fs::write(&path, "[[upstream]]\ntag_ttl = \"1s\"\n").expect("rewrite config");
    sighup(&mirror);
    let log = mirror.wait_log("the second reload", |log| {
        log.matches("config reloaded").count() >= 2
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        mirror.stderr().matches("config reloaded").count(),
        2,
        "one reload per edit: {log}"
    );
    assert_eq!(
        manifest_status(&mirror, "app").await.0,
        200,
        "allowed again"
    );
}
