//! The shards of a job and their states: the one place where a shard moves
//! pending → leased → done | failed.
//!
//! ```text
//!            lease                  complete
//!  pending ─────────▶ leased ───────────────────▶ done
//!     ▲                 │  fail (retryable) or
//!     └─────────────────┤  lease expired, attempts left
//!                       │  fail (not retryable) or
//!                       └─ no attempts left ─────▶ failed
//! ```
//!
//! A lease lasts while heartbeats come; without one for `lease_timeout` it expires and the
//! shard goes back to pending. Every lease counts as an attempt; a shard whose attempts run
//! out (`max_attempts`) fails, and the job with it once nothing else is left to do. A
//! completion is accepted from whoever brings it while the shard is not done (a worker
//! presumed dead did finish the work; a coordinator restarted mid-job does not know the
//! lease); a second completion of a done shard is ignored. Time is `tokio::time::Instant`,
//! so tests drive expiry with tokio's paused clock.

use std::collections::VecDeque;
use std::time::Duration;

use apscore_core::shard::ShardResult;
use tokio::time::Instant;

/// Identifies one lease of one shard: a serial number in the high 32 bits, the shard in the
/// low 32 (so a lease finds its shard without a search).
pub type LeaseId = u64;

/// Where a shard is.
#[derive(Debug, Clone)]
pub enum ShardState {
    Pending,
    Leased {
        lease: LeaseId,
        worker: String,
        deadline: Instant,
        /// Rows scored so far, from the last heartbeat.
        rows_done: u64,
        tokens_done: u64,
    },
    Done(ShardResult),
    Failed,
}

/// One shard's state and its history of failed attempts.
#[derive(Debug, Clone)]
struct Entry {
    state: ShardState,
    attempts: u32,
    /// Why each earlier attempt ended without a result.
    errors: Vec<String>,
}

/// A lease handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub lease: LeaseId,
    pub shard: u32,
    /// 1 for the first try.
    pub attempt: u32,
}

/// What became of a reported failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back to pending, to be tried again.
    Retried,
    /// No attempts left (or not retryable): the shard failed.
    Failed,
    /// The lease was not current (expired, or the shard is done): nothing changed.
    Stale,
}

/// A lease that expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub shard: u32,
    pub worker: String,
    pub outcome: FailOutcome,
}

/// A shard that failed for good, with each attempt's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedShard {
    pub shard: u32,
    pub errors: Vec<String>,
}

/// Shards by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub pending: u32,
    pub leased: u32,
    pub done: u32,
    pub failed: u32,
}

/// The shard state machine; see the module documentation.
#[derive(Debug)]
pub struct ShardTable {
    entries: Vec<Entry>,
    /// Pending shards in the order they are handed out (plan order; retries go last).
    queue: VecDeque<u32>,
    lease_timeout: Duration,
    max_attempts: u32,
    next_lease: LeaseId,
    /// Leases that expired, and shards put back for another try, since the start.
    pub expiries: u64,
    pub retries: u64,
}

impl ShardTable {
    /// `shards` shards, all pending.
    pub fn new(shards: u32, lease_timeout: Duration, max_attempts: u32) -> Self {
        ShardTable {
            entries: vec![
                Entry {
                    state: ShardState::Pending,
                    attempts: 0,
                    errors: Vec::new(),
                };
                shards as usize
            ],
            queue: (0..shards).collect(),
            lease_timeout,
            max_attempts: max_attempts.max(1),
            next_lease: 1,
            expiries: 0,
            retries: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn state(&self, shard: u32) -> Option<&ShardState> {
        self.entries.get(shard as usize).map(|e| &e.state)
    }

    /// Numbers this table's leases from `serial` on (a coordinator run's nonce), so that a
    /// lease id from an earlier run does not name a lease of this one.
    pub fn start_leases_at(&mut self, serial: u64) {
        self.next_lease = (serial & 0x7fff_ffff).max(1);
    }

    /// Marks a shard done from an earlier run's manifest (resuming).
    pub fn restore_done(&mut self, result: ShardResult) {
        let index = result.index;
        if let Some(entry) = self.entries.get_mut(index as usize) {
            entry.state = ShardState::Done(result);
            self.queue.retain(|&s| s != index);
        }
    }

    /// Hands the next pending shard to `worker`, if there is one.
    pub fn lease(&mut self, worker: &str, now: Instant) -> Option<Granted> {
        let shard = self.queue.pop_front()?;
        let entry = &mut self.entries[shard as usize];
        entry.attempts += 1;
        let lease = (self.next_lease << 32) | u64::from(shard);
        self.next_lease += 1;
        entry.state = ShardState::Leased {
            lease,
            worker: worker.to_string(),
            deadline: now + self.lease_timeout,
            rows_done: 0,
            tokens_done: 0,
        };
        Some(Granted {
            lease,
            shard,
            attempt: entry.attempts,
        })
    }

    /// Extends `lease` and records its progress; false when the lease is not current.
    pub fn heartbeat(&mut self, lease: LeaseId, now: Instant, rows: u64, tokens: u64) -> bool {
        let timeout = self.lease_timeout;
        match self.leased_mut(lease) {
            Some(ShardState::Leased {
                deadline,
                rows_done,
                tokens_done,
                ..
            }) => {
                *deadline = now + timeout;
                *rows_done = rows;
                *tokens_done = tokens;
                true
            }
            _ => false,
        }
    }

    /// Whether `shard` is done already (a completion for it would be a duplicate).
    pub fn is_done(&self, shard: u32) -> bool {
        matches!(self.state(shard), Some(ShardState::Done(_)))
    }

    /// Records a shard's result; false when it was done already (the duplicate is ignored).
    pub fn complete(&mut self, result: ShardResult) -> bool {
        let index = result.index;
        let Some(entry) = self.entries.get_mut(index as usize) else {
            return false;
        };
        if matches!(entry.state, ShardState::Done(_)) {
            return false;
        }
        entry.state = ShardState::Done(result);
        // A failed or pending shard completed by a worker presumed dead is done all the same.
        self.queue.retain(|&s| s != index);
        true
    }

    /// A worker could not score its leased shard.
    pub fn fail(&mut self, lease: LeaseId, retryable: bool, reason: String) -> FailOutcome {
        let Some(shard) = self.shard_of(lease) else {
            return FailOutcome::Stale;
        };
        self.end_attempt(shard, retryable, reason)
    }

    /// Expires every lease whose deadline has passed; their shards go back to pending (or
    /// fail when out of attempts).
    pub fn expire(&mut self, now: Instant) -> Vec<Expired> {
        let due: Vec<(u32, String)> = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match &e.state {
                ShardState::Leased {
                    deadline, worker, ..
                } if *deadline <= now => Some((i as u32, worker.clone())),
                _ => None,
            })
            .collect();
        due.into_iter()
            .map(|(shard, worker)| {
                self.expiries += 1;
                let reason = format!(
                    "lease expired: worker {worker} sent no heartbeat for {:?}",
                    self.lease_timeout
                );
                let outcome = self.end_attempt(shard, true, reason);
                Expired {
                    shard,
                    worker,
                    outcome,
                }
            })
            .collect()
    }

    /// Shards by state.
    pub fn counts(&self) -> StateCounts {
        let mut c = StateCounts::default();
        for e in &self.entries {
            match e.state {
                ShardState::Pending => c.pending += 1,
                ShardState::Leased { .. } => c.leased += 1,
                ShardState::Done(_) => c.done += 1,
                ShardState::Failed => c.failed += 1,
            }
        }
        c
    }

    /// Takes `shards` out of the queue: they stay pending, but no worker is handed them (the
    /// coordinator fills them itself, or gives them back with [`ShardTable::release`]).
    pub fn withhold(&mut self, shards: &std::collections::BTreeSet<u32>) {
        self.queue.retain(|s| !shards.contains(s));
    }

    /// Puts those of `shards` that are still pending back into the queue, in plan order.
    pub fn release(&mut self, shards: &std::collections::BTreeSet<u32>) {
        for &shard in shards.iter().rev() {
            let pending = matches!(self.state(shard), Some(ShardState::Pending));
            if pending && !self.queue.contains(&shard) {
                self.queue.push_front(shard);
            }
        }
    }

    /// Nothing is pending or leased: every shard is done or failed.
    pub fn is_settled(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.state, ShardState::Done(_) | ShardState::Failed))
    }

    /// The shards that failed for good, with their attempts' errors.
    pub fn failures(&self) -> Vec<FailedShard> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e.state, ShardState::Failed))
            .map(|(i, e)| FailedShard {
                shard: i as u32,
                errors: e.errors.clone(),
            })
            .collect()
    }

    /// Results of the done shards, in shard order.
    pub fn results(&self) -> impl Iterator<Item = &ShardResult> {
        self.entries.iter().filter_map(|e| match &e.state {
            ShardState::Done(r) => Some(r),
            _ => None,
        })
    }

    /// Rows and tokens done: finished shards plus the progress of leased ones.
    pub fn progress(&self) -> (u64, u64) {
        self.entries
            .iter()
            .map(|e| match &e.state {
                ShardState::Done(r) => (r.scored + r.rejected, r.tokens),
                ShardState::Leased {
                    rows_done,
                    tokens_done,
                    ..
                } => (*rows_done, *tokens_done),
                _ => (0, 0),
            })
            .fold((0, 0), |(r, t), (a, b)| (r + a, t + b))
    }

    /// The shard `worker` holds now, if any.
    pub fn held_by(&self, worker: &str) -> Option<u32> {
        self.entries
            .iter()
            .position(|e| matches!(&e.state, ShardState::Leased { worker: w, .. } if w == worker))
            .map(|i| i as u32)
    }

    /// The shard of `lease` while that lease is current.
    fn shard_of(&self, lease: LeaseId) -> Option<u32> {
        let shard = (lease & u64::from(u32::MAX)) as u32;
        match self.state(shard)? {
            ShardState::Leased { lease: l, .. } if *l == lease => Some(shard),
            _ => None,
        }
    }

    fn leased_mut(&mut self, lease: LeaseId) -> Option<&mut ShardState> {
        let shard = self.shard_of(lease)?;
        Some(&mut self.entries[shard as usize].state)
    }

    /// Ends the current attempt of a leased shard without a result.
    fn end_attempt(&mut self, shard: u32, retryable: bool, reason: String) -> FailOutcome {
        let max_attempts = self.max_attempts;
        let entry = &mut self.entries[shard as usize];
        entry
            .errors
            .push(format!("attempt {}: {reason}", entry.attempts));
        if retryable && entry.attempts < max_attempts {
            entry.state = ShardState::Pending;
            self.queue.push_back(shard);
            self.retries += 1;
            FailOutcome::Retried
        } else {
            entry.state = ShardState::Failed;
            FailOutcome::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apscore_core::stats::MarginStats;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn result(index: u32) -> ShardResult {
        ShardResult {
            index,
            scored: 5,
            rejected: 1,
            stats: MarginStats::default(),
            tokens: 0,
            padded_tokens: 0,
            reward_tokens: 0,
            attempt: None,
            reused: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_lives_while_heartbeats_come_and_expires_when_they_stop() {
        let mut table = ShardTable::new(2, TIMEOUT, 4);
        let granted = table.lease("w1", Instant::now()).unwrap();
        assert_eq!((granted.shard, granted.attempt), (0, 1));
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(9)).await;
            assert!(table.heartbeat(granted.lease, Instant::now(), 3, 30));
            assert!(table.expire(Instant::now()).is_empty());
        }
        assert_eq!(table.progress(), (3, 30));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(table.expire(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        let expired = table.expire(Instant::now());
        assert_eq!(
            expired,
            vec![Expired {
                shard: 0,
                worker: "w1".into(),
                outcome: FailOutcome::Retried
            }]
        );
        // The dead worker's heartbeat no longer holds the lease; the shard goes out again,
        // after the shards that never were leased.
        assert!(!table.heartbeat(granted.lease, Instant::now(), 4, 40));
        assert_eq!(table.lease("w2", Instant::now()).unwrap().shard, 1);
        let again = table.lease("w2", Instant::now()).unwrap();
        assert_eq!((again.shard, again.attempt), (0, 2));
        assert_eq!((table.expiries, table.retries), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_fails_after_max_attempts_with_every_error() {
        let mut table = ShardTable::new(1, TIMEOUT, 3);
        let first = table.lease("w1", Instant::now()).unwrap();
        assert_eq!(
            table.fail(first.lease, true, "corrupt page".into()),
            FailOutcome::Retried
        );
        table.lease("w1", Instant::now()).unwrap();
        tokio::time::advance(TIMEOUT).await;
        assert_eq!(
            table.expire(Instant::now())[0].outcome,
            FailOutcome::Retried
        );
        let third = table.lease("w2", Instant::now()).unwrap();
        assert_eq!(third.attempt, 3);
        assert_eq!(
            table.fail(third.lease, true, "corrupt page".into()),
            FailOutcome::Failed
        );
        assert!(table.lease("w2", Instant::now()).is_none());
        assert!(table.is_settled());
        let failures = table.failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].errors.len(), 3);
        assert!(failures[0].errors[0].starts_with("attempt 1: corrupt page"));
        assert!(failures[0].errors[1].contains("lease expired: worker w1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_non_retryable_failure_fails_at_once() {
        let mut table = ShardTable::new(1, TIMEOUT, 4);
        let lease = table.lease("w1", Instant::now()).unwrap().lease;
        assert_eq!(
            table.fail(lease, false, "no columns".into()),
            FailOutcome::Failed
        );
        assert_eq!(table.fail(lease, false, "again".into()), FailOutcome::Stale);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_completion_counts_once_and_a_duplicate_is_ignored() {
        let mut table = ShardTable::new(1, TIMEOUT, 4);
        let first = table.lease("slow", Instant::now()).unwrap();
        tokio::time::advance(TIMEOUT).await;
        table.expire(Instant::now());
        table.lease("fast", Instant::now()).unwrap();
        // The worker presumed dead finishes first: its result is taken.
        assert!(table.complete(result(first.shard)));
        assert!(table.is_done(0));
        // The second worker's identical result is a duplicate.
        assert!(!table.complete(result(0)));
        assert!(table.is_settled());
        assert_eq!(table.counts().done, 1);
        assert_eq!(table.results().count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn restored_shards_are_not_leased_again() {
        let mut table = ShardTable::new(3, TIMEOUT, 4);
        table.restore_done(result(0));
        table.restore_done(result(2));
        let granted = table.lease("w1", Instant::now()).unwrap();
        assert_eq!((granted.shard, granted.attempt), (1, 1));
        assert_eq!(table.held_by("w1"), Some(1));
        assert!(table.lease("w2", Instant::now()).is_none());
        assert_eq!(
            table.counts(),
            StateCounts {
                pending: 0,
                leased: 1,
                done: 2,
                failed: 0
            }
        );
    }
}
