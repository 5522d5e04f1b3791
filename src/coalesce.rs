//! The one coalescing primitive: the first caller for a key leads (does the
//! work and publishes its state on a watch), later callers follow that
//! state. Blob downloads publish progress many times; manifests and tokens
//! publish one result ([`once`]).
//!
//! As in pingora-cache's cache lock: a leader that goes away without a
//! final word (its future dropped, its task panicked) leaves its flight
//! *dangling*, and followers compete to lead again; a follower whose wait
//! runs out *gives up* and does the work alone.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

type Table<K, S> = Arc<Mutex<HashMap<K, watch::Receiver<S>>>>;

/// The flights in the air, one per key.
pub struct Flights<K, S> {
    table: Table<K, S>,
}

impl<K, S> Default for Flights<K, S> {
    fn default() -> Self {
        Flights {
            table: Arc::default(),
        }
    }
}

/// What a caller got from [`Flights::join`].
pub enum Joined<K: Hash + Eq, S> {
    /// Nobody had started: this caller does the work.
    Lead(Flight<K, S>),
    /// Someone is at it: watch their state.
    Follow(watch::Receiver<S>),
}

/// The leader's side of a flight. Dropping it takes the key out of the
/// table, so the next caller starts afresh.
pub struct Flight<K: Hash + Eq, S> {
    key: K,
    tx: watch::Sender<S>,
    table: Table<K, S>,
}

impl<K: Hash + Eq + Clone, S> Flights<K, S> {
    pub fn join(&self, key: &K, initial: impl FnOnce() -> S) -> Joined<K, S> {
        let mut table = match self.table.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(rx) = table.get(key) {
            return Joined::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(initial());
        table.insert(key.clone(), rx);
        Joined::Lead(Flight {
            key: key.clone(),
            tx,
            table: Arc::clone(&self.table),
        })
    }

    /// How many flights are in the air now.
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }

    /// Every flight in the air with its latest state (for a status view).
    pub fn snapshot(&self) -> Vec<(K, S)>
    where
        S: Clone,
    {
        self.table
            .lock()
            .map(|t| {
                t.iter()
                    .map(|(k, rx)| (k.clone(), rx.borrow().clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl<K: Hash + Eq, S> Flight<K, S> {
    pub fn subscribe(&self) -> watch::Receiver<S> {
        self.tx.subscribe()
    }

    /// How many callers watch this flight besides the table.
    pub fn readers(&self) -> usize {
        self.tx.receiver_count().saturating_sub(1)
    }

    pub fn publish(&self, state: S) {
        self.tx.send_replace(state);
    }

    pub fn update(&self, change: impl FnOnce(&mut S)) {
        self.tx.send_modify(change);
    }

    /// Leaves the table, then publishes the last state: a caller that comes
    /// after a failure starts afresh, one after success finds the result
    /// where the leader put it.
    pub fn finish(self, last: S) {
        self.leave();
        self.tx.send_replace(last);
    }

    fn leave(&self) {
        if let Ok(mut table) = self.table.lock() {
            table.remove(&self.key);
        }
    }
}

impl<K: Hash + Eq, S> Drop for Flight<K, S> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// A single-result flight's state.
#[derive(Clone)]
pub enum Slot<V, E> {
    Pending,
    Done(Result<V, E>),
}

/// Whether this caller did the work or took another's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// How often a follower whose leader vanished competes again before it
/// does the work alone.
const MAX_REJOINS: usize = 3;

/// Runs `load` once for all concurrent callers of `key` and hands every
/// one the result. A follower waits at most `wait`; one whose leader
/// vanished competes again; one that gives up, or whose leader's failure
/// `retry_alone` says may not hold for it (an answer about the leader's
/// repository, not ours), runs `load` itself.
pub async fn once<K, V, E, F, Fut>(
    flights: &Flights<K, Slot<V, E>>,
    key: &K,
    wait: Duration,
    retry_alone: impl Fn(&E) -> bool,
    load: F,
) -> (Result<V, E>, Role)
where
    K: Hash + Eq + Clone,
    V: Clone,
    E: Clone,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<V, E>>,
{
    for _ in 0..MAX_REJOINS {
        let mut rx = match flights.join(key, || Slot::Pending) {
            Joined::Lead(flight) => {
                let result = load().await;
                flight.finish(Slot::Done(result.clone()));
                return (result, Role::Leader);
            }
            Joined::Follow(rx) => rx,
        };
        let waited = tokio::time::timeout(wait, rx.wait_for(|s| matches!(s, Slot::Done(_)))).await;
        match waited {
            Ok(Ok(slot)) => {
                let Slot::Done(result) = slot.clone() else {
                    continue;
                };
                match result {
                    Err(e) if retry_alone(&e) => break,
                    result => return (result, Role::Follower),
                }
            }
            // Dangling: the leader went away without a word.
            Ok(Err(_)) => continue,
            // Gave up waiting.
            Err(_) => break,
        }
    }
    (load().await, Role::Leader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_load_for_concurrent_callers() {
        let flights: Flights<u8, Slot<u32, String>> = Flights::default();
        let loads = AtomicUsize::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, String>(7)
        };
        let wait = Duration::from_secs(5);
        let never = |_: &String| false;
        let (a, b) = tokio::join!(
            once(&flights, &1, wait, never, load),
            once(&flights, &1, wait, never, load)
        );
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(a.0, Ok(7));
        assert_eq!(b.0, Ok(7));
        let roles = [a.1, b.1];
        assert!(roles.contains(&Role::Leader) && roles.contains(&Role::Follower));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn followers_retry_alone_on_scoped_failures_and_after_giving_up() {
        let flights: Flights<u8, Slot<u32, String>> = Flights::default();
        let slow_failure = || async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err::<u32, _>("not in the leader's repository".to_owned())
        };
        let own = || async { Ok::<_, String>(9) };
        let scoped = |e: &String| e.contains("repository");
        let wait = Duration::from_secs(5);
        let (leader, follower) =
            tokio::join!(once(&flights, &1, wait, scoped, slow_failure), async {
                tokio::task::yield_now().await;
                once(&flights, &1, wait, scoped, own).await
            });
        assert!(leader.0.is_err());
        assert_eq!(follower, (Ok(9), Role::Leader));

        let stuck = || std::future::pending::<Result<u32, String>>();
        let short = Duration::from_millis(10);
        let (_, follower) = tokio::select! {
            _ = once(&flights, &2, wait, scoped, stuck) => unreachable!(),
            r = async {
                tokio::task::yield_now().await;
                once(&flights, &2, short, scoped, own).await
            } => ((), r),
        };
        assert_eq!(follower, (Ok(9), Role::Leader));
    }

    #[tokio::test]
    async fn a_dropped_leader_leaves_no_flight() {
        let flights: Flights<u8, Slot<u32, String>> = Flights::default();
        let Joined::Lead(flight) = flights.join(&1, || Slot::Pending) else {
            panic!("first caller leads");
        };
        let Joined::Follow(mut rx) = flights.join(&1, || Slot::Pending) else {
            panic!("second caller follows");
        };
        drop(flight);
        assert!(rx.changed().await.is_err(), "followers see it dangling");
        assert!(matches!(
            flights.join(&1, || Slot::Pending),
            Joined::Lead(_)
        ));
    }
}
