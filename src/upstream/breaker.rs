//! A circuit breaker per upstream: after a few consecutive outages, calls
//! fail at once for a short while, so a dead upstream costs clients
//! microseconds while the cache answers, instead of a timeout each.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Consecutive outage-type failures that open the circuit.
const TRIP_AFTER: u32 = 3;
pub struct CircuitBreaker {
    state: Mutex<State>,
    /// How long an open circuit refuses calls before letting one through.
    open_for: Duration,
}

#[derive(Default)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl CircuitBreaker {
    pub fn new(open_for: Duration) -> CircuitBreaker {
        CircuitBreaker {
            state: Mutex::default(),
            open_for,
        }
    }

    /// Whether a call may go out now. After the open period one call at a
    /// time probes the upstream; its result closes or reopens the circuit.
    pub fn allow(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return true;
        };
        match s.open_until {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                // Half-open: this caller probes; others wait out another
                // period unless the probe succeeds.
                s.open_until = Some(Instant::now() + self.open_for);
                true
            }
            None => true,
        }
    }

    pub fn record_success(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.consecutive_failures = 0;
            s.open_until = None;
        }
    }

    pub fn record_outage(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.consecutive_failures += 1;
            if s.consecutive_failures >= TRIP_AFTER {
                if s.open_until.is_none() {
                    tracing::warn!(
                        failures = s.consecutive_failures,
                        "upstream failing; circuit open"
                    );
                }
                s.open_until = Some(Instant::now() + self.open_for);
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.open_until.is_some_and(|u| Instant::now() < u))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_outages_and_closes_on_success() {
        let b = CircuitBreaker::new(Duration::from_secs(5));
        for _ in 0..TRIP_AFTER - 1 {
            b.record_outage();
            assert!(b.allow());
        }
        b.record_outage();
        assert!(b.is_open());
        assert!(!b.allow());
        b.record_success();
        assert!(b.allow());
        assert!(!b.is_open());
    }

    #[test]
    fn success_resets_the_count() {
        let b = CircuitBreaker::new(Duration::from_secs(5));
        b.record_outage();
        b.record_outage();
        b.record_success();
        b.record_outage();
        assert!(b.allow());
    }
}
