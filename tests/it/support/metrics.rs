//! Reading a Prometheus text exposition: fetch `/metrics`, sum a sample by
//! name and labels.

use std::net::SocketAddr;

/// `GET /metrics` on `addr` (blocking, so it fits in a poll condition).
pub fn scrape(addr: SocketAddr) -> String {
    let response = super::registry::http(addr, "GET", "/metrics", &[]).expect("GET /metrics");
    assert_eq!(response.status, 200, "GET /metrics");
    String::from_utf8_lossy(&response.body).into_owned()
}

/// The sum of every sample of `name` whose label set includes each of
/// `labels`; 0 if there is none. With no labels, every series of `name`.
pub fn sample_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}').unwrap_or(rest)),
                None => (series, ""),
            };
            let have = parse_labels(label_text);
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `a="x",b="y"` as pairs (values unescaped of `\"` and `\\`).
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        value.push(next);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').trim().to_string(), value));
        rest = &after[end..];
    }
    labels
}

#[test]
fn sample_sum_matches_names_and_labels() {
    let text = "# TYPE x counter\nx{kind=\"tag\",result=\"stale\"} 2\nx{kind=\"blob\",result=\"hit\"} 3\nx_total 7\ny 1\n";
    assert_eq!(sample_sum(text, "x", &[]), 5.0);
    assert_eq!(sample_sum(text, "x", &[("kind", "tag")]), 2.0);
    assert_eq!(
        sample_sum(text, "x", &[("kind", "tag"), ("result", "hit")]),
        0.0
    );
    assert_eq!(sample_sum(text, "x_total", &[]), 7.0);
}

/// Samples a gauge of the mirror at `addr` every 10 ms, from now until the
/// returned handle is finished, and keeps the largest value seen.
pub struct GaugeSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl GaugeSampler {
    pub fn start(addr: std::net::SocketAddr, name: &'static str) -> GaugeSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let url = format!("http://{addr}/metrics");
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut most = 0.0f64;
                // Bounded: 2 000 samples (about 20 s and more).
                for _ in 0..2000 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(r) = reqwest::get(&url).await {
                        let text = r.text().await.unwrap_or_default();
                        most = most.max(sample_sum(&text, name, &[]));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                most
            }
        });
        GaugeSampler { stop, task }
    }

    /// The largest value seen.
    pub async fn finish(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.expect("sampler")
    }
}
