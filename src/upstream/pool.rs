//! The accounts an upstream authenticates with, used in turn: one whose
//! pull limit ran out (`ratelimit-remaining: 0`, or a 429 saying so)
//! rests until its window ends while the next one serves.

use crate::cache::unix_now;
use crate::config::Credentials;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How long a spent account rests when the upstream names no window
/// (Docker Hub's is six hours).
const DEFAULT_REST: u64 = 6 * 3600;

pub struct CredentialPool {
    credentials: Vec<Credentials>,
    active: AtomicUsize,
    /// Unix seconds until which each account is left alone.
    resting_until: Vec<AtomicU64>,
}

impl CredentialPool {
    pub fn new(credentials: Vec<Credentials>) -> CredentialPool {
        let resting_until = credentials.iter().map(|_| AtomicU64::new(0)).collect();
        CredentialPool {
            credentials,
            active: AtomicUsize::new(0),
            resting_until,
        }
    }

    pub fn get(&self, i: usize) -> Option<&Credentials> {
        self.credentials.get(i)
    }

    /// The account to use now: the active one unless it rests, else the
    /// next that does not; when all rest, the one back soonest.
    pub fn current(&self) -> Option<usize> {
        let n = self.credentials.len();
        if n == 0 {
            return None;
        }
        let now = unix_now();
        let start = self.active.load(Ordering::Relaxed) % n;
        let pick = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.resting_until[i].load(Ordering::Relaxed) <= now)
            .unwrap_or_else(|| {
                (0..n)
                    .min_by_key(|&i| self.resting_until[i].load(Ordering::Relaxed))
                    .unwrap_or(start)
            });
        if pick != start
            && self
                .active
                .compare_exchange(start, pick, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::info!(credential = %self.credentials[pick].name, "switched to another upstream credential");
        }
        Some(pick)
    }

    /// Account `i` has no pulls left for `window` seconds (the upstream's
    /// `;w=`), or for the default rest. Returns whether another account
    /// can take over now.
    pub fn spent(&self, i: usize, window: Option<u64>) -> bool {
        let Some(rest) = self.resting_until.get(i) else {
            return false;
        };
        let now = unix_now();
        rest.fetch_max(
            now + window.unwrap_or(DEFAULT_REST).max(1),
            Ordering::Relaxed,
        );
        if let Some(c) = self.credentials.get(i) {
            tracing::warn!(credential = %c.name, "upstream credential's pull limit is used up; resting it");
        }
        self.resting_until
            .iter()
            .enumerate()
            .any(|(j, r)| j != i && r.load(Ordering::Relaxed) <= now)
    }

    pub fn name(&self, i: usize) -> &str {
        self.credentials.get(i).map_or("-", |c| c.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn pool(names: &[&str]) -> CredentialPool {
        CredentialPool::new(
            names
                .iter()
                .map(|n| Credentials {
                    name: (*n).to_owned(),
                    username: (*n).to_owned(),
                    password: Secret::new("pw".to_owned()),
                })
                .collect(),
        )
    }

    #[test]
    fn a_spent_account_hands_over_to_the_next_and_all_spent_picks_the_soonest_back() {
        let p = pool(&["a", "b", "c"]);
        assert_eq!(p.current(), Some(0));
        assert!(p.spent(0, Some(100)));
        assert_eq!(p.current(), Some(1));
        assert!(p.spent(1, Some(50)));
        assert_eq!(p.current(), Some(2));
        assert!(!p.spent(2, Some(200)), "nobody left to take over");
        assert_eq!(p.current(), Some(1), "back soonest");
        assert_eq!(pool(&[]).current(), None);
    }
}
