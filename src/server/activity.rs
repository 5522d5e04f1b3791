//! What the mirror has been doing, for the page and the admin API: recent
//! pulls, the most pulled repositories, each upstream's last error, and
//! the lookup and byte counters as they stood over the last hour. The
//! hourly figures are differences of the very counters `/metrics` renders
//! (sampled once a minute), so they can never disagree with it.

use super::api::sum_by_label;
use crate::cache::unix_now;
use crate::metrics::Metrics;
use prometheus::core::Collector;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many pulls the page lists.
const RECENT_PULLS: usize = 50;
/// Repositories counted for the top list; beyond that, new ones are not
/// counted (a scan of random names must not grow memory without bound).
const TRACKED_REPOSITORIES: usize = 10_000;
/// How many repositories the top list shows.
pub const TOP_REPOSITORIES: usize = 10;
const HOUR: Duration = Duration::from_secs(3600);
const SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// One manifest request by tag: what a client's pull starts with.
#[derive(Serialize, Clone, Debug)]
pub struct Pull {
    pub upstream: String,
    pub repository: String,
    pub tag: String,
    /// The client's address (behind a trusted proxy, the one it forwarded).
    pub client: std::net::IpAddr,
    /// `hit`, `miss`, `revalidated`, `stale`, `coalesced`, `bypass`, or
    /// `error` when the pull failed.
    pub result: &'static str,
    pub status: u16,
    /// Unix seconds.
    pub time: u64,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct TopRepository {
    pub upstream: String,
    pub repository: String,
    pub pulls: u64,
}

/// An upstream's most recent failure (outages and refusals of the whole
/// upstream; a 404 for one repository is no error of the upstream's).
#[derive(Serialize, Clone, Debug)]
pub struct UpstreamFailure {
    pub message: String,
    /// Unix seconds.
    pub time: u64,
}

/// The counters the page shows over a window, read from `/metrics`'s own
/// collectors.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub hits: u64,
    pub misses: u64,
    pub bytes_from_cache: u64,
    pub bytes_from_upstream: u64,
}

impl Totals {
    pub fn of(metrics: &Metrics) -> Totals {
        let lookups = sum_by_label(metrics.cache_lookups.collect(), "result");
        let served = sum_by_label(metrics.bytes_served.collect(), "source");
        let get =
            |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        Totals {
            hits: get(&lookups, "hit"),
            misses: get(&lookups, "miss"),
            bytes_from_cache: get(&served, "cache"),
            bytes_from_upstream: get(&served, "upstream"),
        }
    }

    fn since(self, earlier: Totals) -> Totals {
        Totals {
            hits: self.hits.saturating_sub(earlier.hits),
            misses: self.misses.saturating_sub(earlier.misses),
            bytes_from_cache: self
                .bytes_from_cache
                .saturating_sub(earlier.bytes_from_cache),
            bytes_from_upstream: self
                .bytes_from_upstream
                .saturating_sub(earlier.bytes_from_upstream),
        }
    }
}

#[derive(Default)]
pub struct Activity {
    pulls: Mutex<VecDeque<Pull>>,
    pull_counts: Mutex<PullCounts>,
    failures: Mutex<HashMap<String, UpstreamFailure>>,
    /// (when, totals then), oldest first; the counters start at zero with
    /// the process, so before the first hour the baseline is zero.
    samples: Mutex<VecDeque<(Instant, Totals)>>,
}

/// Pulls per repository, by upstream then repository, so counting one
/// more needs no new key (a pull by tag is on every pull's path).
#[derive(Default)]
struct PullCounts {
    by_upstream: HashMap<String, HashMap<String, u64>>,
    repositories: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Activity {
    pub fn record_pull(&self, pull: Pull) {
        {
            let mut counts = lock(&self.pull_counts);
            let counts = &mut *counts;
            let known = counts
                .by_upstream
                .get_mut(&pull.upstream)
                .and_then(|repositories| repositories.get_mut(&pull.repository));
            if let Some(n) = known {
                *n += 1;
            } else if counts.repositories < TRACKED_REPOSITORIES {
                counts
                    .by_upstream
                    .entry(pull.upstream.clone())
                    .or_default()
                    .insert(pull.repository.clone(), 1);
                counts.repositories += 1;
            }
        }
        let mut pulls = lock(&self.pulls);
        if pulls.len() == RECENT_PULLS {
            pulls.pop_front();
        }
        pulls.push_back(pull);
    }

    /// Newest first.
    pub fn recent_pulls(&self) -> Vec<Pull> {
        lock(&self.pulls).iter().rev().cloned().collect()
    }

    /// Most pulled first; ties by name.
    pub fn top_repositories(&self, n: usize) -> Vec<TopRepository> {
        let mut all: Vec<TopRepository> = lock(&self.pull_counts)
            .by_upstream
            .iter()
            .flat_map(|(upstream, repositories)| {
                repositories
                    .iter()
                    .map(move |(repository, pulls)| TopRepository {
                        upstream: upstream.clone(),
                        repository: repository.clone(),
                        pulls: *pulls,
                    })
            })
            .collect();
        all.sort_by(|a, b| {
            b.pulls
                .cmp(&a.pulls)
                .then_with(|| (&a.upstream, &a.repository).cmp(&(&b.upstream, &b.repository)))
        });
        all.truncate(n);
        all
    }

    pub fn record_failure(&self, upstream: &str, message: String) {
        lock(&self.failures).insert(
            upstream.to_owned(),
            UpstreamFailure {
                message,
                time: unix_now(),
            },
        );
    }

    pub fn last_failure(&self, upstream: &str) -> Option<UpstreamFailure> {
        lock(&self.failures).get(upstream).cloned()
    }

    fn sample(&self, at: Instant, totals: Totals) {
        let mut samples = lock(&self.samples);
        samples.push_back((at, totals));
        // Keep the newest sample at least an hour old (the baseline) and
        // everything after it.
        if let Some(hour_ago) = at.checked_sub(HOUR) {
            while samples.len() >= 2 && samples[1].0 <= hour_ago {
                samples.pop_front();
            }
        }
    }

    /// The counters' growth over the last hour (to within a minute), given
    /// their values now.
    pub fn last_hour(&self, now: Instant, current: Totals) -> Totals {
        let baseline = now
            .checked_sub(HOUR)
            .and_then(|hour_ago| {
                lock(&self.samples)
                    .iter()
                    .rev()
                    .find(|(at, _)| *at <= hour_ago)
                    .map(|(_, t)| *t)
            })
            .unwrap_or_default();
        current.since(baseline)
    }
}

/// Samples the counters once a minute for the hourly figures.
pub fn spawn_sampler(activity: Arc<Activity>, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            activity.sample(Instant::now(), Totals::of(&metrics));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(repo: &str, n: u64) -> Pull {
        Pull {
            upstream: "docker.io".into(),
            repository: repo.into(),
            tag: "latest".into(),
            client: [127, 0, 0, 1].into(),
            result: "hit",
            status: 200,
            time: n,
        }
    }

    #[test]
    fn recent_pulls_are_bounded_and_newest_first() {
        let a = Activity::default();
        for n in 0..(RECENT_PULLS as u64 + 5) {
            a.record_pull(pull("library/x", n));
        }
        let recent = a.recent_pulls();
        assert_eq!(recent.len(), RECENT_PULLS);
        assert_eq!(recent[0].time, RECENT_PULLS as u64 + 4);
        assert_eq!(a.top_repositories(3)[0].pulls, RECENT_PULLS as u64 + 5);
    }

    #[test]
    fn top_repositories_by_count_then_name() {
        let a = Activity::default();
        for repo in ["b", "a", "c", "c", "b", "c"] {
            a.record_pull(pull(repo, 0));
        }
        let top: Vec<(String, u64)> = a
            .top_repositories(2)
            .into_iter()
            .map(|t| (t.repository, t.pulls))
            .collect();
        assert_eq!(top, [("c".to_owned(), 3), ("b".to_owned(), 2)]);
    }

    #[test]
    fn last_hour_subtracts_the_sample_an_hour_old() {
        let a = Activity::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let totals = |hits: u64| Totals {
            hits,
            ..Totals::default()
        };
        // Within the first hour: everything since start.
        a.sample(at(0), totals(0));
        a.sample(at(60), totals(5));
        assert_eq!(a.last_hour(at(120), totals(7)).hits, 7);
        // Later: growth since the newest sample at least an hour old.
        a.sample(at(3700), totals(20));
        assert_eq!(a.last_hour(at(3700), totals(20)).hits, 15);
        a.sample(at(7300), totals(26));
        assert_eq!(a.last_hour(at(7300), totals(26)).hits, 6);
        assert!(lock(&a.samples).len() <= 2, "old samples pruned");
    }
}
