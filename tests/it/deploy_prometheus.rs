//! pullthrough's metrics through Prometheus' own tools: `promtool check
//! metrics` on a live mirror after a real pull (skopeo from docker-registry
//! through the mirror), and the Debian `prometheus` server running the
//! shipped deploy/prometheus/prometheus.yml (with the alert rules) against a
//! live mirror, evaluating every alert and every dashboard query.

use crate::support::deploy::{self, deploy_path, read_deploy, url_encode, Daemon};
use crate::support::metrics::sample_sum;
use crate::support::mirror::Mirror;
use crate::support::oci_layout;
use crate::support::process::run_bounded;
use crate::support::registry::Registry;
use crate::support::wait_until;
use crate::support::{free_port, require_tool};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Copies `library/NAME:TAG` from the mirror into an OCI layout with skopeo.
fn skopeo_pull(mirror: &Mirror, name_tag: &str, dest: &Path) {
    let mut command = Command::new("skopeo");
    command
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{}/library/{name_tag}", mirror.addr))
        .arg(format!("oci:{}:pulled", dest.display()));
    let output = run_bounded(command, Duration::from_secs(120));
    assert!(
        output.status.success(),
        "skopeo copy through the mirror: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = deploy::get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "GET /metrics");
    body
}

/// `promtool check metrics < exposition`: format and naming lint.
fn promtool_check_metrics(exposition: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write metrics to promtool");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait promtool").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("promtool check metrics hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("promtool output");
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}\n--- exposition ---\n{exposition}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn metrics_after_a_pull_pass_promtool_check_metrics() {
    if !(require_tool("promtool") && require_tool("docker-registry") && require_tool("skopeo")) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("registry"));
    oci_layout::write_image(&tmp.path().join("image"), "v1", 61, &[300_000, 20_000]);
    registry.seed(&tmp.path().join("image"), "v1", "library/deploy-metrics:v1");
    // A process: counters read from its own metrics registry.
    let mirror = Mirror::builder(&registry.url()).process().start();

    skopeo_pull(&mirror, "deploy-metrics:v1", &tmp.path().join("pull1"));
    let cold = scrape(mirror.addr);
    promtool_check_metrics(&cold);
    let misses = sample_sum(
        &cold,
        "pullthrough_cache_lookups_total",
        &[("kind", "blob"), ("result", "miss")],
    );
    assert!(misses >= 1.0, "a cold pull counts blob misses:\n{cold}");
    assert!(
        sample_sum(&cold, "pullthrough_upstream_fetched_bytes_total", &[]) >= 300_000.0,
        "a cold pull counts upstream bytes"
    );

    skopeo_pull(&mirror, "deploy-metrics:v1", &tmp.path().join("pull2"));
    let warm = scrape(mirror.addr);
    promtool_check_metrics(&warm);
    let hits = sample_sum(
        &warm,
        "pullthrough_cache_lookups_total",
        &[("kind", "blob"), ("result", "hit")],
    );
    assert!(hits >= 1.0, "a warm pull counts blob hits:\n{warm}");
    assert!(
        sample_sum(
            &warm,
            "pullthrough_served_bytes_total",
            &[("source", "cache")]
        ) >= 300_000.0,
        "a warm pull serves its bytes from the cache"
    );
}

/// A Prometheus server on a free port with its own storage, running the
/// shipped prometheus.yml (targets and intervals substituted) and alerts.yml.
struct Prometheus {
    daemon: Daemon,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(mirror: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let shipped = read_deploy("prometheus/prometheus.yml");
        let mut config = shipped.clone();
        for (from, to) in [
            ("- pullthrough:5000", format!("- {mirror}")),
            ("- localhost:9090", format!("- {addr}")),
            ("scrape_interval: 15s", "scrape_interval: 1s".into()),
            ("evaluation_interval: 15s", "evaluation_interval: 1s".into()),
        ] {
            assert!(
                shipped.contains(from),
                "prometheus.yml no longer contains `{from}`: update this test"
            );
            config = config.replace(from, &to);
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        std::fs::copy(
            deploy_path("prometheus/alerts.yml"),
            dir.path().join("alerts.yml"),
        )
        .expect("copy alerts.yml");
        let mut command = Command::new("prometheus");
        command
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy");
        let daemon = Daemon::spawn("prometheus", command, &dir.path().join("prometheus.log"));
        let mut prometheus = Prometheus {
            daemon,
            addr,
            _dir: dir,
        };
        wait_until("Prometheus /-/ready", Duration::from_secs(60), || {
            prometheus.daemon.assert_running();
            deploy::get(addr, "/-/ready").filter(|(s, _)| *s == 200)
        });
        prometheus
    }

    /// GET an API path; the parsed JSON body.
    fn api(&self, path: &str) -> Value {
        let (status, body) = deploy::get(self.addr, path)
            .unwrap_or_else(|| panic!("Prometheus did not answer {path}"));
        let json: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(
            status == 200 && json["status"] == "success",
            "{path} → {status}: {body}"
        );
        json
    }

    fn query(&self, expr: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", url_encode(expr)))
    }
}

#[test]
fn prometheus_scrapes_a_live_mirror_with_the_shipped_config_and_rules() {
    if !require_tool("prometheus") {
        return;
    }
    let mirror = Mirror::start("http://127.0.0.1:9");
    for _ in 0..3 {
        let _ = deploy::get(mirror.addr, "/v2/");
    }
    let prometheus = Prometheus::start(mirror.addr);

    let result = wait_until(
        "pullthrough_build_info in Prometheus",
        Duration::from_secs(60),
        || {
            let json = prometheus.query("pullthrough_build_info");
            let result = json["data"]["result"].as_array()?.first()?.clone();
            Some(result)
        },
    );
    assert_eq!(result["metric"]["job"], "pullthrough");
    assert_eq!(result["metric"]["instance"], mirror.addr.to_string());
    assert_eq!(result["value"][1], "1");
    let up = prometheus.query("up{job=\"pullthrough\"}");
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");

    // The rule group loaded, and each rule evaluated without error against
    // the live series.
    let rule_count = read_deploy("prometheus/alerts.yml")
        .matches("- alert: ")
        .count();
    let rules = wait_until(
        "every alert rule evaluated",
        Duration::from_secs(30),
        || {
            let json = prometheus.api("/api/v1/rules");
            let group = json["data"]["groups"]
                .as_array()?
                .iter()
                .find(|g| g["name"] == "pullthrough")?
                .clone();
            let rules = group["rules"].as_array()?.clone();
            rules
                .iter()
                .all(|r| r["health"] != "unknown")
                .then_some(rules)
        },
    );
    assert_eq!(rules.len(), rule_count);
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "rule {} failed: {rule}", rule["name"]);
    }
    // A healthy, idle mirror fires nothing but (at most) pending alerts.
    let firing = prometheus.query("ALERTS{alertstate=\"firing\"}");
    assert_eq!(
        firing["data"]["result"].as_array().map(Vec::len),
        Some(0),
        "{firing}"
    );

    // Every dashboard query, with Grafana's variables filled in, is valid
    // PromQL for this Prometheus; the headline panels have data.
    let dashboard: Value = serde_json::from_str(&read_deploy("grafana/pullthrough-dashboard.json"))
        .expect("dashboard JSON");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
                .replace("$job", "pullthrough")
                .replace("$instance", ".+");
            assert!(!expr.contains('$'), "unhandled variable in {expr}");
            prometheus.query(&expr);
            queried += 1;
        }
    }
    assert!(queried >= 20, "only {queried} dashboard queries");
    let served = prometheus
        .query("sum(pullthrough_http_requests_total{job=~\"pullthrough\",route=\"base\"})");
    assert!(
        served["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "request counters reached Prometheus: {served}"
    );
}
