//! Delays for retrying an operation inside an actor: exponential with full
//! jitter, capped. (Restarting a whole actor is the supervisor's business.)

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

#[cfg(test)]
mod tests {
    use super::*;

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
