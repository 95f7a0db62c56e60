//! The wait between two tries for a lock (`lock`, `redlock`): exponential
//! from one timer tick to [`MAX_BACKOFF`], with full jitter so waiters do not
//! retry in lockstep, bounded by a deadline. Backoff is not a queue: the
//! gated variants put one in front of it.

use std::time::{Duration, Instant};

use rand::Rng;

/// First wait after a failed try: one timer tick.
const FIRST_BACKOFF: Duration = Duration::from_millis(1);
/// Wait ceiling: a holder needs well under a millisecond (a Redlock round a
/// few round trips in parallel), so waiting longer only leaves the lock idle.
const MAX_BACKOFF: Duration = Duration::from_millis(16);

/// One buyer's waits for a lock.
#[derive(Debug)]
pub struct Backoff {
    deadline: Instant,
    next: Duration,
    waits: u32,
}

impl Backoff {
    /// Waits may go on for `wait` from now.
    pub fn new(wait: Duration) -> Self {
        Self {
            deadline: Instant::now() + wait,
            next: FIRST_BACKOFF,
            waits: 0,
        }
    }

    /// Sleeps before the next try; `false` (without sleeping) when that try
    /// would come after the deadline: the buyer gives up.
    pub async fn wait(&mut self) -> bool {
        if Instant::now() + self.next > self.deadline {
            return false;
        }
        let jittered = rand::rng().random_range(self.next / 2..=self.next);
        tokio::time::sleep(jittered).await;
        self.waits += 1;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        true
    }

    /// Waits so far, for the attempt's `retries`.
    pub fn waits(&self) -> u32 {
        self.waits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_grow_to_the_ceiling_and_stop_at_the_deadline() {
        let mut backoff = Backoff::new(Duration::from_millis(60));
        let started = Instant::now();
        while backoff.wait().await {}
        assert!(backoff.waits() >= 3, "{backoff:?}");
        assert!(backoff.next <= MAX_BACKOFF);
        assert!(started.elapsed() <= Duration::from_millis(60) + MAX_BACKOFF);
        assert!(!backoff.wait().await, "no wait past the deadline");
    }
}
