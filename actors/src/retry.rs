//! Retrying an operation inside an actor: [`RetryDelay`] (exponential with
//! jitter, capped) says how long to wait, [`RetryBudget`] how long to keep
//! trying before the actor gives up and fails, so its supervisor restarts it
//! with backoff (restarting a whole actor is the supervisor's business).

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryDelay {
    pub initial: Duration,
    pub max: Duration,
}

impl RetryDelay {
    pub fn new(initial: Duration, max: Duration) -> Self {
        RetryDelay { initial, max }
    }

    /// The delay before attempt `attempt` (1-based): a random value in
    /// `[cap/2, cap]` where `cap = min(max, initial * 2^(attempt-1))`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let cap = self
            .initial
            .saturating_mul(1u32 << exp)
            .min(self.max)
            .max(Duration::from_millis(1));
        let half = cap / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }
}

impl Default for RetryDelay {
    fn default() -> Self {
        RetryDelay::new(Duration::from_millis(200), Duration::from_secs(30))
    }
}

/// How many consecutive failures (or how long a failure streak) an actor
/// absorbs with in-place retries before it fails. `None` limits are off;
/// [`RetryBudget::default`] never runs out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryBudget {
    /// Give up at this many consecutive failures.
    pub max_failures: Option<u32>,
    /// Give up once failures have lasted this long (from the first failure
    /// of the streak to the latest one).
    pub max_elapsed: Option<Duration>,
}

impl RetryBudget {
    /// Never runs out: retry forever.
    pub const UNLIMITED: RetryBudget = RetryBudget {
        max_failures: None,
        max_elapsed: None,
    };

    /// Whether a streak of `failures` consecutive failures lasting `elapsed`
    /// has used the budget up.
    pub fn exhausted(&self, failures: u32, elapsed: Duration) -> bool {
        self.max_failures.is_some_and(|max| failures >= max)
            || self.max_elapsed.is_some_and(|max| elapsed >= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_run_out_by_count_or_time() {
        assert!(!RetryBudget::UNLIMITED.exhausted(u32::MAX, Duration::MAX));
        let count = RetryBudget {
            max_failures: Some(3),
            max_elapsed: None,
        };
        assert!(!count.exhausted(2, Duration::from_secs(3600)));
        assert!(count.exhausted(3, Duration::ZERO));
        let time = RetryBudget {
            max_failures: None,
            max_elapsed: Some(Duration::from_secs(10)),
        };
        assert!(!time.exhausted(1000, Duration::from_secs(9)));
        assert!(time.exhausted(1, Duration::from_secs(10)));
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let r = RetryDelay::new(Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 1..40 {
            let d = r.delay(attempt);
            let cap = Duration::from_millis(100 * (1u64 << (attempt - 1).min(30)))
                .min(Duration::from_secs(2));
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {attempt}: {d:?} vs cap {cap:?}"
            );
        }
    }
}
