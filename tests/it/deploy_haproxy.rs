//! The load-balanced setup from deploy/: three pullthrough replicas (each
//! started with deploy/pullthrough.toml) behind HAProxy running
//! deploy/haproxy/haproxy.cfg unchanged, and a real Docker daemon whose
//! registry-mirrors names HAProxy. Consistent hashing keeps each blob on one
//! replica (a re-pull fetches nothing upstream); after one replica is
//! SIGKILLed, pulls through the balancer still succeed.

use crate::support::deploy::{self, deploy_path, Daemon};
use crate::support::docker::DockerDaemon;
use crate::support::metrics::sample_sum;
use crate::support::mirror::Mirror;
use crate::support::oci_layout;
use crate::support::registry::Registry;
use crate::support::wait_until;
use crate::support::{free_port, require_tool};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

struct Balancer {
    daemon: Daemon,
    addr: SocketAddr,
    stats: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Balancer {
    /// `haproxy -db -f deploy/haproxy/haproxy.cfg` with the replicas'
    /// addresses in PT1..PT3, as the config's header describes.
    fn start(replicas: &[&Mirror]) -> Balancer {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let stats: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut command = Command::new("haproxy");
        command
            .arg("-db")
            .arg("-f")
            .arg(deploy_path("haproxy/haproxy.cfg"))
            .env("PT_LISTEN", addr.to_string())
            .env("PT_STATS", stats.to_string());
        for (i, replica) in replicas.iter().enumerate() {
            command.env(format!("PT{}", i + 1), replica.addr.to_string());
        }
        let daemon = Daemon::spawn("haproxy", command, &dir.path().join("haproxy.log"));
        let mut balancer = Balancer {
            daemon,
            addr,
            stats,
            _dir: dir,
        };
        let count = replicas.len();
        let mut last = Vec::new();
        let ready = crate::support::poll(Duration::from_secs(30), || {
            balancer.daemon.assert_running();
            last = balancer.server_states();
            let up = last.iter().filter(|(_, s)| s == "UP").count();
            (up == count).then_some(())
        });
        assert!(
            ready.is_some(),
            "HAProxy did not see every replica UP within 30 s: {last:?}\n{}",
            balancer.daemon.log()
        );
        balancer
    }

    /// (server, status) of the pullthrough backend, from the stats CSV.
    fn server_states(&self) -> Vec<(String, String)> {
        let Some((200, body)) = deploy::get(self.stats, "/;csv") else {
            return Vec::new();
        };
        let csv = dechunk(&body);
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else {
            return Vec::new();
        };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > st && f[px] == "pullthrough" && f[sv].starts_with("pt"))
            .map(|f| (f[sv].to_string(), f[st].to_string()))
            .collect()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// HAProxy's stats applet answers chunked even to HTTP/1.0: undo it.
fn dechunk(body: &str) -> String {
    if body.starts_with('#') {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size_line, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// Blob lookups a replica has answered (all results), from its /metrics.
fn blob_lookups(replica: &Mirror) -> f64 {
    let (_, body) = deploy::get(replica.addr, "/metrics").expect("GET /metrics");
    sample_sum(
        &body,
        "pullthrough_cache_lookups_total",
        &[("kind", "blob")],
    )
}

#[test]
fn docker_pulls_through_haproxy_and_survives_a_killed_replica() {
    if !(require_tool("haproxy")
        && require_tool("docker-registry")
        && require_tool("skopeo")
        && require_tool("dockerd")
        && require_tool("docker"))
    {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("registry"));
    let image_a = oci_layout::write_image(
        &tmp.path().join("a"),
        "v1",
        71,
        &[700_000, 500_000, 300_000, 100_000, 20_000, 5_000],
    );
    registry.seed(&tmp.path().join("a"), "v1", "library/deploy-lb-a:v1");
    let image_b = oci_layout::write_image(&tmp.path().join("b"), "v1", 72, &[400_000, 60_000]);
    registry.seed(&tmp.path().join("b"), "v1", "library/deploy-lb-b:v1");

    let config = deploy_path("pullthrough.toml");
    let config = config.to_str().expect("UTF-8 path");
    let mut replicas: Vec<Mirror> = (0..3)
        // Processes: the replicas' metrics are compared one by one (one
        // metrics registry per process), and the shipped config runs as is.
        .map(|_| {
            Mirror::builder(&registry.url())
                .config_file(std::path::Path::new(config))
                .process()
                .start()
        })
        .collect();
    let balancer = Balancer::start(&replicas.iter().collect::<Vec<_>>());
    let docker = DockerDaemon::start(&balancer.url());

    // Cold pull through the balancer: every blob fetched upstream once.
    let blobs_a = image_a.layer_digests.len() + 1;
    let baseline = registry.count_requests("GET", "/blobs/");
    let upstream_blob_gets = || registry.count_requests("GET", "/blobs/") - baseline;
    docker.pull("deploy-lb-a:v1");
    let inspect = docker.inspect("deploy-lb-a:v1").expect("image A pulled");
    assert_eq!(inspect["Id"], image_a.config_digest.as_str());
    assert_eq!(upstream_blob_gets(), blobs_a);
    let per_replica: Vec<f64> = replicas.iter().map(blob_lookups).collect();
    eprintln!("blob lookups per replica after the first pull: {per_replica:?}");
    assert!(
        per_replica.iter().filter(|n| **n > 0.0).count() >= 2,
        "the balancer sent every blob to one replica: {per_replica:?}"
    );

    // Pull again after rmi: each blob hashes to the replica that cached it,
    // so nothing is fetched upstream.
    docker.rmi("deploy-lb-a:v1");
    docker.pull("deploy-lb-a:v1");
    assert_eq!(
        upstream_blob_gets(),
        blobs_a,
        "a re-pull through the balancer fetched blobs upstream: the hash \
         did not keep each blob on one replica"
    );

    // SIGKILL the busiest replica, and pull at once, before health checks
    // notice: its requests are redispatched to the others.
    let busiest = (0..replicas.len())
        .max_by(|&a, &b| per_replica[a].total_cmp(&per_replica[b]))
        .expect("a replica");
    replicas[busiest].kill();
    docker.rmi("deploy-lb-a:v1");
    docker.pull("deploy-lb-a:v1");
    let inspect = docker
        .inspect("deploy-lb-a:v1")
        .expect("image A after kill");
    assert_eq!(inspect["Id"], image_a.config_digest.as_str());
    let refetched = upstream_blob_gets() - blobs_a;
    assert!(
        refetched >= 1,
        "the killed replica's blobs should come upstream again via the others"
    );
    docker.pull("deploy-lb-b:v1");
    let inspect = docker
        .inspect("deploy-lb-b:v1")
        .expect("image B after kill");
    assert_eq!(inspect["Id"], image_b.config_digest.as_str());

    // Health checks on /readyz took the dead replica out of the ring.
    let dead = format!("pt{}", busiest + 1);
    wait_until(
        "HAProxy to mark the killed replica DOWN",
        Duration::from_secs(15),
        || {
            balancer
                .server_states()
                .iter()
                .any(|(s, st)| *s == dead && st.starts_with("DOWN"))
                .then_some(())
        },
    );
    // HAProxy's own Prometheus endpoint (the stats frontend) works too.
    let (status, body) = deploy::get(balancer.stats, "/metrics").expect("HAProxy /metrics");
    assert_eq!(status, 200);
    assert!(
        dechunk(&body).contains("haproxy_backend_status"),
        "HAProxy exporter output"
    );
}

/// Blocking work (process start-up, curl, polling) off the async workers.
fn sync<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// Three replicas on one bucket (each with deploy/haproxy/pullthrough-s3.toml
/// as shipped, the bucket from the environment) behind haproxy.cfg: the
/// replica streaming a large layer is SIGKILLed mid-transfer, the client
/// resumes through the balancer, and the layer comes from the bucket via
/// another replica: no blob is fetched upstream a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_bucket_cover_a_replica_killed_mid_pull() {
    use crate::support::client::{client, files_named, hex_of};
    use crate::support::hub::{Hub, Kind};
    use crate::support::rgw::{rgw, ACCESS_KEY, SECRET_KEY};
    use crate::support::sha256_digest;

    if !require_tool("haproxy") {
        return;
    }
    let Some(rgw) = sync(rgw) else { return };
    let bucket = sync(|| rgw.bucket("fleet"));
    let hub = Hub::start().await;
    let image = hub.push_image("library/app", "v1", &[24 * 1024 * 1024, 300_000, 200_000]);
    let blobs: Vec<(String, bytes::Bytes)> = std::iter::once(image.config.clone())
        .chain(image.layers.iter().cloned())
        .collect();
    let config = deploy_path("haproxy/pullthrough-s3.toml");
    let storage = format!("s3://{bucket}/fleet");
    let mut replicas: Vec<Mirror> = (0..3)
        .map(|_| {
            Mirror::builder(&hub.url())
                .config_file(&config)
                .process()
                .env("PULLTHROUGH_STORAGE", &storage)
                .env("AWS_ENDPOINT_URL", &rgw.endpoint)
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .start()
        })
        .collect();
    let balancer = sync(|| Balancer::start(&replicas.iter().collect::<Vec<_>>()));
    let blob_url = |digest: &str| format!("{}/v2/library/app/blobs/{digest}", balancer.url());

    // Cold pull through the balancer: each blob once upstream, then shared.
    for (digest, bytes) in &blobs {
        let response = client().get(blob_url(digest)).send().await.expect("GET");
        assert_eq!(response.status(), 200);
        assert_eq!(&response.bytes().await.expect("body"), bytes);
    }
    assert_eq!(hub.count(Kind::BlobGet), blobs.len() as u64);
    for (digest, _) in &blobs {
        let key = format!("fleet/blobs/sha256/{}", hex_of(digest));
        sync(|| {
            wait_until(
                &format!("{key} in the bucket"),
                Duration::from_secs(60),
                || {
                    rgw.get_object(&bucket, &key)
                        .filter(|b| sha256_digest(b) == *digest)
                        .map(drop)
                },
            )
        });
    }
    hub.reset_counts();

    // The replica that holds the large layer dies while it streams it.
    let (big, big_bytes) = &blobs[1];
    let holder = replicas
        .iter()
        .position(|m| !files_named(&m.cache_dir.join("blobs"), hex_of(big)).is_empty())
        .expect("a replica holds the large layer");
    let mut response = client().get(blob_url(big)).send().await.expect("GET");
    assert_eq!(response.status(), 200);
    let mut got = response
        .chunk()
        .await
        .expect("first bytes")
        .expect("a chunk")
        .to_vec();
    sync(|| replicas[holder].kill());
    while let Ok(Some(chunk)) = response.chunk().await {
        got.extend_from_slice(&chunk);
    }
    eprintln!(
        "{} of {} bytes before the transfer broke",
        got.len(),
        big_bytes.len()
    );
    // As Docker does: resume with a Range, through the balancer (bounded).
    for _ in 0..5 {
        if got.len() >= big_bytes.len() {
            break;
        }
        let resumed = client()
            .get(blob_url(big))
            .header("range", format!("bytes={}-", got.len()))
            .send()
            .await;
        let Ok(mut resumed) = resumed else { continue };
        if resumed.status() != 206 {
            continue;
        }
        while let Ok(Some(chunk)) = resumed.chunk().await {
            got.extend_from_slice(&chunk);
        }
    }
    assert_eq!(sha256_digest(&got), *big, "the layer, whole and verified");
    // Everything else, through the two replicas left.
    for (digest, bytes) in &blobs {
        let response = client().get(blob_url(digest)).send().await.expect("GET");
        assert_eq!(response.status(), 200);
        assert_eq!(&response.bytes().await.expect("body"), bytes);
    }
    assert_eq!(
        hub.count(Kind::BlobGet),
        0,
        "a blob was fetched upstream a second time"
    );
    assert_eq!(hub.count(Kind::CdnGet), 0);
}
