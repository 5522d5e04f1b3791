//! The shipped deploy/ files checked by their own tools (promtool, haproxy
//! -c, systemd-analyze, docker-compose config, kubernetes-validate) and by
//! the real pullthrough binary: config files it must accept, the container
//! health probe run against a live mirror, metric names the dashboard and
//! alerts use that the binary really exports; the example setups
//! (subdomains, path prefix, egress proxies) say what they do.

use crate::support::deploy::{
    self, deploy_path, read_deploy, referenced_metrics, require_python_yaml, run_tool,
    yaml_document, yaml_documents,
};
use crate::support::mirror::Mirror;
use crate::support::{free_port, require_tool};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// An upstream nobody listens on: these mirrors never need one.
const NO_UPSTREAM: &str = "http://127.0.0.1:9";

#[test]
fn prometheus_config_rules_and_rule_tests_pass_promtool() {
    if !require_tool("promtool") {
        return;
    }
    let config = deploy_path("prometheus/prometheus.yml");
    let (ok, out) = run_tool("promtool", &["check", "config", path_str(&config)], &[]);
    assert!(ok, "promtool check config:\n{out}");
    assert!(
        out.contains("1 rule files found"),
        "rules not loaded:\n{out}"
    );

    let rules = deploy_path("prometheus/alerts.yml");
    let (ok, out) = run_tool("promtool", &["check", "rules", path_str(&rules)], &[]);
    assert!(ok, "promtool check rules:\n{out}");

    // Unit tests: every alert fires on synthetic series, and stays quiet.
    let tests = deploy_path("prometheus/alerts_test.yml");
    let (ok, out) = run_tool("promtool", &["test", "rules", path_str(&tests)], &[]);
    assert!(ok, "promtool test rules:\n{out}");

    let rules_text = read_deploy("prometheus/alerts.yml");
    let tests_text = read_deploy("prometheus/alerts_test.yml");
    for line in rules_text.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests_text.contains(&format!("alertname: {name}\n")),
                "alert {name} has no unit test in alerts_test.yml"
            );
        }
    }
}

#[test]
fn haproxy_config_is_valid_with_replica_addresses_from_the_environment() {
    if !require_tool("haproxy") {
        return;
    }
    let cfg = deploy_path("haproxy/haproxy.cfg");
    let envs = [
        ("PT1", "127.0.0.1:5001"),
        ("PT2", "127.0.0.1:5002"),
        ("PT3", "127.0.0.1:5003"),
    ];
    let (ok, out) = run_tool("haproxy", &["-c", "-f", path_str(&cfg)], &envs);
    assert!(ok, "haproxy -c:\n{out}");
    // The replica addresses really come from the environment.
    let (ok, out) = run_tool("haproxy", &["-c", "-f", path_str(&cfg)], &[]);
    assert!(!ok, "haproxy accepted the config without PT1..PT3:\n{out}");

    let text = read_deploy("haproxy/haproxy.cfg");
    for directive in [
        "balance uri",
        "hash-type consistent",
        "option redispatch",
        "http-check send meth GET uri /readyz",
    ] {
        assert!(text.contains(directive), "haproxy.cfg lacks `{directive}`");
    }
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    if !require_tool("systemd-analyze") {
        return;
    }
    let unit = read_deploy("systemd/pullthrough.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/pullthrough serve"),
        "the unit should run /usr/local/bin/pullthrough"
    );
    // verify checks that ExecStart names an executable: point a copy of the
    // unit at the binary under test.
    let tmp = tempfile::tempdir().expect("tempdir");
    let copy = tmp.path().join("pullthrough.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/pullthrough",
            env!("CARGO_BIN_EXE_pullthrough"),
        ),
    )
    .expect("write unit copy");
    let (ok, out) = run_tool("systemd-analyze", &["verify", path_str(&copy)], &[]);
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );

    // Exposure score on systemd's 0–100 scale (shown as 0.0–10.0): the
    // hardening options must keep it "OK" (below 2.0).
    let (ok, out) = run_tool(
        "systemd-analyze",
        &[
            "security",
            "--offline=yes",
            "--threshold=20",
            "--no-pager",
            path_str(&copy),
        ],
        &[],
    );
    assert!(ok, "systemd-analyze security exposure above 2.0:\n{out}");
    for option in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "CacheDirectory=pullthrough",
        "NoNewPrivileges=yes",
        "--cache-dir ${CACHE_DIRECTORY}",
    ] {
        assert!(unit.contains(option), "the unit lacks {option}");
    }
}

#[test]
fn grafana_dashboard_and_provisioning_are_well_formed() {
    let dashboard: Value = serde_json::from_str(&read_deploy("grafana/pullthrough-dashboard.json"))
        .expect("dashboard is JSON");
    assert_eq!(dashboard["uid"], "pullthrough");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = Vec::new();
    let mut titles = Vec::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(!ids.contains(&id), "duplicate panel id {id}");
        ids.push(id);
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].is_u64(), "panel {id} gridPos.{key}");
        }
        if panel["type"] == "row" {
            continue;
        }
        titles.push(panel["title"].as_str().expect("title").to_lowercase());
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            assert!(
                expr.contains("pullthrough_") || expr.contains("up{"),
                "{expr}"
            );
            assert_eq!(target["datasource"]["uid"], "${datasource}");
        }
    }
    for wanted in [
        "hit ratio",
        "bytes saved",
        "upstream traffic",
        "rate limit remaining",
        "p50 / p99",
        "downloads in flight",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel about {wanted:?} in {titles:?}"
        );
    }

    if !require_python_yaml() {
        return;
    }
    let datasources = yaml_document("grafana/provisioning/datasources/prometheus.yml");
    let ds = &datasources["datasources"][0];
    assert_eq!(ds["type"], "prometheus");
    assert_eq!(ds["url"], "http://prometheus:9090", "the compose service");
    let providers = yaml_document("grafana/provisioning/dashboards/pullthrough.yml");
    let dashboards_dir = providers["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let compose = yaml_document("docker-compose.yml");
    let grafana_volumes = compose["services"]["grafana"]["volumes"].to_string();
    assert!(
        grafana_volumes.contains(&format!(
            "./grafana/pullthrough-dashboard.json:{dashboards_dir}/"
        )),
        "compose must mount the dashboard where the provider looks ({dashboards_dir})"
    );
}

/// The metric names the dashboard and the alert rules use exist in the
/// real binary (a typo would give an empty panel or an alert that can never
/// fire): exported by a live mirror's /metrics, or, for labelled families
/// that appear only once something is counted, registered in src/metrics.rs.
#[test]
fn dashboard_and_alerts_use_only_metrics_the_binary_exports() {
    // A process: what the real binary exports.
    let mirror = Mirror::builder(NO_UPSTREAM).process().start();
    let _ = deploy::get(mirror.addr, "/v2/");
    let (status, exposition) = deploy::get(mirror.addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    let families = deploy::metric_families(&exposition);
    assert!(families.iter().any(|f| f == "pullthrough_build_info"));
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"))
            .expect("read src/metrics.rs");
    for file in [
        "grafana/pullthrough-dashboard.json",
        "prometheus/alerts.yml",
        "prometheus/alerts_test.yml",
    ] {
        let used = referenced_metrics(&read_deploy(file));
        assert!(!used.is_empty(), "{file} uses no pullthrough metric");
        for name in used {
            let short = name.strip_prefix("pullthrough_").expect("prefix");
            assert!(
                families.contains(&name) || source.contains(&format!("\"{short}\"")),
                "{file} uses {name}, which pullthrough does not export ({families:?})"
            );
        }
    }
}

/// Every object of the YAML files in `deploy/<dir>`, each of which its
/// kustomization.yaml must list.
fn kustomized_objects(dir_name: &str) -> Vec<Value> {
    let dir = deploy_path(dir_name);
    let kustomization = yaml_document(&format!("{dir_name}/kustomization.yaml"));
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("resource path"))
        .collect();
    let mut objects = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read the deploy directory") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == "kustomization.yaml" || !name.ends_with(".yaml") {
            continue;
        }
        assert!(
            resources.contains(&name.as_str()),
            "{name} is not listed in kustomization.yaml"
        );
        objects.extend(yaml_documents(&path));
    }
    objects
}

#[test]
fn kubernetes_manifests_are_consistent() {
    if !require_python_yaml() {
        return;
    }
    let objects = kustomized_objects("kubernetes");
    let find = |kind: &str, name: &str| -> Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let sts = find("StatefulSet", "pullthrough");
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], pod_labels);
    let container = &pod["containers"][0];

    // Probes on the endpoints, through a port the container declares.
    let port_name = container["ports"][0]["name"].as_str().expect("port name");
    assert_eq!(container["ports"][0]["containerPort"], 5000);
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], port_name, "{probe}");
    }
    // Non-root, read-only root file system, resources.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["runAsUser"], 10001,
        "the image's uid"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());

    // A volume per replica mounted at the cache directory.
    let claim = &spec["volumeClaimTemplates"][0];
    let claim_name = claim["metadata"]["name"].as_str().expect("claim name");
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    let mount_of = |name: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no mount {name}"))["mountPath"]
            .as_str()
            .expect("mountPath")
            .to_string()
    };
    assert_eq!(mount_of(claim_name), "/var/cache/pullthrough");

    // The config file the args name comes from the ConfigMap.
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    let config_file = args[args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config")
        + 1];
    let config_volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"].is_object())
        .expect("a configMap volume");
    let config_dir = mount_of(config_volume["name"].as_str().expect("name"));
    let key = config_file
        .strip_prefix(&format!("{config_dir}/"))
        .expect("--config under the ConfigMap mount");
    let configmap = find(
        "ConfigMap",
        config_volume["configMap"]["name"].as_str().expect("name"),
    );
    let toml_text = configmap["data"][key].as_str().expect("config key");
    let config: toml::Value = toml::from_str(toml_text).expect("ConfigMap TOML");
    assert_eq!(config["cache_dir"].as_str(), Some("/var/cache/pullthrough"));
    let grace = config["shutdown_grace"].as_str().expect("shutdown_grace");
    let grace_s: u64 = grace.trim_end_matches('s').parse().expect("seconds");
    let termination = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > grace_s + 5,
        "terminationGracePeriodSeconds {termination} must exceed shutdown_grace + preStop"
    );

    // Services: a headless one for the StatefulSet, both selecting the pods.
    let headless = find(
        "Service",
        spec["serviceName"].as_str().expect("serviceName"),
    );
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let service = find("Service", "pullthrough");
    for svc in [&headless, &service] {
        assert_eq!(&svc["spec"]["selector"], pod_labels);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], port_name);
    }
    let pdb = find("PodDisruptionBudget", "pullthrough");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], pod_labels);

    // The ServiceMonitor scrapes the plain Service (once per pod), not the
    // headless one too, on a port that Service names.
    let monitor = find("ServiceMonitor", "pullthrough");
    let selects = |svc: &Value| {
        let labels = &svc["metadata"]["labels"];
        let sel = &monitor["spec"]["selector"];
        let by_labels = sel["matchLabels"]
            .as_object()
            .expect("matchLabels")
            .iter()
            .all(|(k, v)| &labels[k] == v);
        let by_exprs = sel["matchExpressions"]
            .as_array()
            .map(|exprs| {
                exprs.iter().all(|e| match e["operator"].as_str() {
                    Some("DoesNotExist") => labels[e["key"].as_str().unwrap()].is_null(),
                    other => panic!("operator {other:?} not handled by this test"),
                })
            })
            .unwrap_or(true);
        by_labels && by_exprs
    };
    assert!(selects(&service), "ServiceMonitor misses the Service");
    assert!(
        !selects(&headless),
        "ServiceMonitor would scrape pods twice"
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
}

/// The shared-bucket variant (deploy/kubernetes-s3): a Deployment the HPA
/// scales, an emptyDir local tier bounded below its size limit, the bucket
/// and its credentials from a Secret, and a config the binary accepts.
#[test]
fn kubernetes_bucket_variant_is_a_deployment_on_one_bucket() {
    if !require_python_yaml() {
        return;
    }
    let objects = kustomized_objects("kubernetes-s3");
    let find = |kind: &str| -> Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
            .clone()
    };
    assert!(objects.iter().all(|o| o["kind"] != "StatefulSet"));
    let deployment = find("Deployment");
    let spec = &deployment["spec"];
    assert!(spec["replicas"].is_null(), "the HPA owns the replica count");
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], pod_labels);
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).cloned();
    let mounts = container["volumeMounts"].as_array().expect("mounts");
    let mount_path = |name: &str| -> String {
        mounts
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no mount {name}"))["mountPath"]
            .as_str()
            .expect("mountPath")
            .to_string()
    };

    let configmap = find("ConfigMap");
    let text = configmap["data"]["pullthrough.toml"]
        .as_str()
        .expect("config");
    let config: toml::Value = toml::from_str(text).expect("ConfigMap TOML");
    // The local tier: an emptyDir at cache_dir, max_size below its limit.
    let cache_dir = config["cache_dir"].as_str().expect("cache_dir");
    let cache = mounts
        .iter()
        .find(|m| m["mountPath"] == cache_dir)
        .expect("a mount at cache_dir");
    let cache_volume = volume(cache["name"].as_str().unwrap()).expect("cache volume");
    let gib = |v: &str| -> u64 {
        v.trim_end_matches("GiB")
            .trim_end_matches("Gi")
            .parse()
            .expect("GiB")
    };
    let limit = gib(cache_volume["emptyDir"]["sizeLimit"]
        .as_str()
        .expect("emptyDir sizeLimit"));
    let max_size = gib(config["max_size"].as_str().expect("max_size"));
    assert!(
        max_size < limit,
        "max_size {max_size}GiB must stay below the emptyDir's {limit}Gi"
    );
    // The bucket, with the secret from the mounted Secret and the key id
    // from the same Secret.
    let storage = &config["storage"];
    assert!(storage["url"]
        .as_str()
        .expect("storage.url")
        .starts_with("s3://"));
    let secret_file = storage["s3"]["secret_access_key_file"]
        .as_str()
        .expect("secret file");
    let secret_volume = volume("s3").expect("the s3 Secret volume");
    let secret_name = secret_volume["secret"]["secretName"]
        .as_str()
        .expect("secretName");
    assert!(secret_file.starts_with(&format!("{}/", mount_path("s3"))));
    let key_id = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "AWS_ACCESS_KEY_ID")
        .expect("AWS_ACCESS_KEY_ID");
    assert_eq!(key_id["valueFrom"]["secretKeyRef"]["name"], secret_name);

    // The HPA scales this Deployment; the PDB and the Service select its pods.
    let hpa = find("HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(hpa["spec"]["minReplicas"].as_u64().expect("minReplicas") >= 2);
    assert_eq!(
        &find("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        pod_labels
    );
    assert_eq!(&find("Service")["spec"]["selector"], pod_labels);

    // The binary takes the config as shipped (the secret file stood in).
    let secret = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(secret.path(), "not-a-real-secret\n").expect("write secret");
    let file = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(
        file.path(),
        text.replace(secret_file, &secret.path().display().to_string()),
    )
    .expect("write config");
    let overrides = pullthrough::config::Overrides {
        aws: pullthrough::config::AwsEnv {
            access_key_id: Some("from-the-secret".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let loaded = pullthrough::config::Config::load(Some(file.path()), &overrides)
        .expect("the ConfigMap's config loads");
    let s3 = loaded.storage.expect("a storage");
    assert_eq!(s3.bucket, "pullthrough-cache");
    assert_eq!(loaded.max_size, Some(max_size << 30));
}

/// Strict schema validation of the built-in kinds against Kubernetes'
/// OpenAPI schemas (kubernetes-validate, offline; the ServiceMonitor CRD has
/// no bundled schema and is only checked above).
#[test]
fn kubernetes_manifests_pass_schema_validation() {
    if !require_tool("kubernetes-validate") {
        return;
    }
    let mut files: Vec<String> = ["kubernetes", "kubernetes-s3"]
        .iter()
        .flat_map(|d| std::fs::read_dir(deploy_path(d)).expect("read deploy/kubernetes*"))
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".yaml") && name != "kustomization.yaml"
        })
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut args = vec!["--strict", "--kubernetes-version", "1.30.0", "--no-warn"];
    args.extend(files.iter().map(String::as_str));
    let (ok, out) = run_tool("kubernetes-validate", &args, &[]);
    assert!(ok, "kubernetes-validate:\n{out}");
    assert!(
        out.contains("statefulset/pullthrough"),
        "StatefulSet not validated:\n{out}"
    );
    for kind in [
        "deployment/pullthrough",
        "horizontalpodautoscaler/pullthrough",
    ] {
        assert!(out.contains(kind), "{kind} not validated:\n{out}");
    }
}

/// deploy/pullthrough.toml, the ConfigMap's copy and the example setups
/// without TLS files are accepted by the real binary (unknown keys stop start-up), and the container health probe
/// script answers from a live mirror.
#[test]
fn shipped_config_files_start_the_binary_and_the_health_probe_works() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut configs = vec![
        deploy_path("pullthrough.toml"),
        deploy_path("path-prefix.toml"),
        deploy_path("egress-proxy.toml"),
    ];
    if require_python_yaml() {
        let configmap = yaml_document("kubernetes/configmap.yaml");
        let text = configmap["data"]["pullthrough.toml"]
            .as_str()
            .expect("pullthrough.toml key");
        let path = tmp.path().join("configmap.toml");
        std::fs::write(&path, text).expect("write configmap toml");
        configs.push(path);
    }
    for config in &configs {
        // Flags override the file's listen address, cache dir and first
        // upstream; every other key is the shipped one.
        // A process: the shipped file as the binary reads it.
        let mirror = Mirror::builder(NO_UPSTREAM)
            .config_file(config)
            .process()
            .start();
        let ready = deploy::get(mirror.addr, "/readyz").map(|(s, _)| s);
        assert_eq!(ready, Some(200), "/readyz with {}", config.display());

        if !require_tool("bash") {
            continue;
        }
        let script = deploy_path("healthcheck.sh");
        let listen = format!("0.0.0.0:{}", mirror.addr.port());
        for (path, expect_ok) in [
            ("/healthz", true),
            ("/readyz", true),
            ("/no-such-path", false),
        ] {
            let (ok, out) = run_tool(
                "bash",
                &[path_str(&script), path],
                &[("PULLTHROUGH_LISTEN", &listen)],
            );
            assert_eq!(ok, expect_ok, "healthcheck.sh {path}: {out}");
        }
    }
    // Nothing listening: the probe fails (and does not hang).
    let closed = format!("127.0.0.1:{}", free_port());
    let (ok, _) = run_tool(
        "bash",
        &[path_str(&deploy_path("healthcheck.sh"))],
        &[("PULLTHROUGH_LISTEN", &closed)],
    );
    assert!(!ok, "healthcheck.sh succeeded with nothing listening");
}

#[test]
fn compose_file_is_valid_and_mounts_existing_files() {
    if !require_tool("docker-compose") || !require_python_yaml() {
        return;
    }
    let compose_path = deploy_path("docker-compose.yml");
    let (ok, out) = run_tool(
        "docker-compose",
        &["-f", path_str(&compose_path), "config", "--quiet"],
        &[],
    );
    assert!(ok, "docker-compose config:\n{out}");

    let compose = yaml_document("docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().expect("short volume syntax");
            if let Some(rel) = source.strip_prefix("./") {
                let rel = rel.split(':').next().unwrap();
                assert!(
                    deploy_path(rel).exists(),
                    "{name} mounts ./{rel}, which is not in deploy/"
                );
            }
        }
    }
    // The build context and Dockerfile exist.
    let build = &services["pullthrough"]["build"];
    let context = deploy_path(build["context"].as_str().expect("context"));
    assert!(context
        .join(build["dockerfile"].as_str().expect("dockerfile"))
        .is_file());
    // Prometheus scrapes the service by its compose name and port.
    let prometheus = read_deploy("prometheus/prometheus.yml");
    assert!(services.contains_key("pullthrough"));
    assert!(
        services["pullthrough"]["ports"]
            .to_string()
            .contains("5000:5000")
            && prometheus.contains("- pullthrough:5000"),
        "compose service and Prometheus target disagree"
    );
    // stop_grace_period covers shutdown_grace.
    let toml: toml::Value = toml::from_str(&read_deploy("pullthrough.toml")).expect("toml");
    let grace: u64 = toml["shutdown_grace"]
        .as_str()
        .expect("shutdown_grace")
        .trim_end_matches('s')
        .parse()
        .expect("seconds");
    let stop: u64 = services["pullthrough"]["stop_grace_period"]
        .as_str()
        .expect("stop_grace_period")
        .trim_end_matches('s')
        .parse()
        .expect("seconds");
    assert!(
        stop > grace,
        "stop_grace_period {stop}s <= shutdown_grace {grace}s"
    );
}

/// What can be checked of the Dockerfile without a Docker engine: the Rust
/// image is new enough for Cargo.lock (and the lock is in sync for
/// `--locked`), every COPY source exists and survives the .dockerignore, and
/// the port, volume, user and health probe agree with each other.
#[test]
fn dockerfile_agrees_with_the_repository() {
    let dockerfile = read_deploy("Dockerfile");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    let arg = |name: &str| -> String {
        dockerfile
            .lines()
            .find_map(|l| l.strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("no ARG {name}="))
            .trim()
            .to_string()
    };
    let rust_version = parse_version(&arg("RUST_VERSION"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        // The image is a Linux build: only that platform's packages need
        // to be present (Windows-only crates are never downloaded here).
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args([
            "--filter-platform",
            &format!("{}-unknown-linux-gnu", std::env::consts::ARCH),
        ])
        .current_dir(root);
    let output = crate::support::process::run_bounded(command, Duration::from_secs(120));
    assert!(
        output.status.success(),
        "cargo metadata --locked (as the image build runs cargo --locked): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
    for package in metadata["packages"].as_array().expect("packages") {
        if let Some(required) = package["rust_version"].as_str() {
            assert!(
                parse_version(required) <= rust_version,
                "{} needs Rust {required}; the Dockerfile builds with {rust_version:?}",
                package["name"]
            );
        }
    }

    let ignore = read_deploy("Dockerfile.dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for line in dockerfile.lines() {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from=") {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                root.join(source).exists(),
                "COPY source {source} is missing"
            );
            assert!(
                allowed.contains(source),
                "COPY source {source} is excluded by Dockerfile.dockerignore"
            );
        }
    }

    let env_value = |name: &str| -> String {
        let start = dockerfile
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no ENV {name}"));
        dockerfile[start + name.len() + 1..]
            .split_whitespace()
            .next()
            .expect("value")
            .to_string()
    };
    let listen = env_value("PULLTHROUGH_LISTEN");
    let port = listen.rsplit(':').next().expect("port");
    assert!(dockerfile.contains(&format!("EXPOSE {port}/tcp")));
    let cache_dir = env_value("PULLTHROUGH_CACHE_DIR");
    assert!(dockerfile.contains(&format!("VOLUME [\"{cache_dir}\"]")));
    assert!(dockerfile.contains("USER ${UID}:${UID}") && arg("UID") != "0");
    assert!(
        dockerfile.contains("COPY deploy/healthcheck.sh /usr/local/bin/pullthrough-healthcheck")
            && dockerfile.contains("CMD [\"/usr/local/bin/pullthrough-healthcheck\""),
        "HEALTHCHECK must run the copied probe script"
    );
    // The k8s pods run as the image's user.
    assert!(
        read_deploy("kubernetes/statefulset.yaml").contains(&format!("runAsUser: {}", arg("UID")))
    );
}

#[test]
fn client_configs_parse_and_name_the_mirror() {
    let daemon: Value =
        serde_json::from_str(&read_deploy("clients/daemon.json")).expect("daemon.json");
    let mirror = daemon["registry-mirrors"][0]
        .as_str()
        .expect("registry-mirrors");
    let host = mirror.trim_start_matches("http://");
    assert_eq!(daemon["insecure-registries"][0], host);

    let hosts: toml::Value =
        toml::from_str(&read_deploy("clients/containerd-hosts.toml")).expect("hosts.toml");
    assert_eq!(
        hosts["server"].as_str(),
        Some("https://registry-1.docker.io")
    );
    let host_table = hosts["host"][mirror].as_table().expect("[host.\"mirror\"]");
    let caps = host_table["capabilities"].as_array().expect("capabilities");
    assert!(caps.iter().any(|c| c.as_str() == Some("pull")));
    assert!(caps.iter().any(|c| c.as_str() == Some("resolve")));

    // The `_default` variant: every registry through the mirror, no server.
    let default: toml::Value =
        toml::from_str(&read_deploy("clients/containerd-default-hosts.toml"))
            .expect("_default hosts.toml");
    assert!(default.get("server").is_none(), "{default}");
    let caps = default["host"][mirror]["capabilities"]
        .as_array()
        .expect("[host.\"mirror\"] capabilities");
    assert!(caps.iter().any(|c| c.as_str() == Some("pull")));
    assert!(caps.iter().any(|c| c.as_str() == Some("resolve")));

    let podman: toml::Value =
        toml::from_str(&read_deploy("clients/podman-registries.conf")).expect("registries.conf");
    let registries = podman["registry"].as_array().expect("[[registry]]");
    let hub = registries
        .iter()
        .find(|r| r["prefix"].as_str() == Some("docker.io"))
        .expect("docker.io registry");
    assert_eq!(hub["mirror"][0]["location"].as_str(), Some(host));
    // Other registries go through a path prefix naming a configured upstream.
    let config: toml::Value = toml::from_str(&read_deploy("pullthrough.toml")).expect("toml");
    let upstreams: Vec<&str> = config["upstream"]
        .as_array()
        .expect("upstreams")
        .iter()
        .map(|u| u["name"].as_str().expect("name"))
        .collect();
    for registry in registries {
        let location = registry["mirror"][0]["location"].as_str().expect("mirror");
        if let Some(prefix) = location.strip_prefix(&format!("{host}/")) {
            assert!(
                upstreams.contains(&prefix),
                "podman mirror {location} names no [[upstream]] in pullthrough.toml"
            );
        }
    }
}

/// deploy/`rel` as the binary loads it.
fn load_deploy_config(rel: &str) -> pullthrough::config::Config {
    pullthrough::config::Config::load(Some(&deploy_path(rel)), &Default::default())
        .unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

#[test]
fn the_path_prefix_example_serves_each_registry_its_comments_name_and_no_other() {
    let config = load_deploy_config("path-prefix.toml");
    let names: Vec<&str> = config.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names[0], "docker.io", "Docker Hub is the default");
    assert!(
        config.upstreams.iter().all(|u| u.hosts.is_empty()),
        "one host name: no upstream is selected by host"
    );
    let text = read_deploy("path-prefix.toml");
    let prefixed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('#'))
        .flat_map(|l| l.split("mirror.example.internal:5000/").skip(1))
        .filter_map(|rest| rest.split_whitespace().next()?.split_once('/'))
        .map(|(first, _)| first)
        .filter(|first| first.contains('.'))
        .collect();
    assert!(prefixed.len() >= 4, "{prefixed:?}");
    for registry in prefixed {
        assert!(
            names.contains(&registry),
            "the comments pull from {registry}, not configured"
        );
    }
    // A registry it does not list: refused without going anywhere.
    let mirror = Mirror::builder(NO_UPSTREAM)
        .config_file(&deploy_path("path-prefix.toml"))
        .process()
        .start();
    let (status, body) = deploy::get(mirror.addr, "/v2/example.org/app/manifests/1").expect("GET");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("NAME_UNKNOWN") && body.contains("example.org"),
        "{body}"
    );
}

#[test]
fn the_egress_example_gives_each_upstream_its_proxy_and_never_logs_the_password() {
    let config = load_deploy_config("egress-proxy.toml");
    let proxy_of = |name: &str| {
        let upstream = config
            .upstreams
            .iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("no upstream {name}"));
        upstream.proxy.as_ref().map(|p| p.redacted())
    };
    assert_eq!(
        proxy_of("docker.io").as_deref(),
        Some("http://<credentials>@proxy.corp.example:3128")
    );
    assert_eq!(
        proxy_of("ghcr.io").as_deref(),
        Some("socks5h://<credentials>@socks.corp.example:1080")
    );
    assert_eq!(proxy_of("registry.corp.example"), None, "left to *_PROXY");
    // Debug logging, the most a deployment could log: the proxies'
    // password never shows.
    let mut mirror = Mirror::builder(NO_UPSTREAM)
        .config_file(&deploy_path("egress-proxy.toml"))
        .log("debug")
        .process()
        .start();
    assert_eq!(
        deploy::get(mirror.addr, "/readyz").map(|(s, _)| s),
        Some(200)
    );
    mirror.stop();
    let stderr = mirror.stderr();
    assert!(!stderr.is_empty(), "the binary logged nothing to check");
    assert!(
        !stderr.contains("change-me"),
        "a proxy password in the log:\n{stderr}"
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `1.89` or `1.89.0` → (1, 89, 0).
fn parse_version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|p| p.parse::<u64>().expect("number"));
    (
        parts.next().expect("major"),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}
