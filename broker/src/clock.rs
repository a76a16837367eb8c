//! The one clock the broker's state machines read, injected rather than read from the
//! system inside them, so that each operation reads it once and passes the time down, and
//! tests can drive time by hand. Two readings: monotonic (`Instant`, for timeouts and
//! deadlines) and wall-clock milliseconds since the epoch (for what is stored or shown:
//! commit timestamps, transaction start times, expiry).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One reading of a clock: both times at the same moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub instant: Instant,
    pub wall_ms: i64,
}

impl Now {
    /// The reading `by` later.
    pub fn after(self, by: Duration) -> Now {
        Now { instant: self.instant + by, wall_ms: self.wall_ms.saturating_add(by.as_millis() as i64) }
    }
}

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Now;

    fn now_ms(&self) -> i64 {
        self.now().wall_ms
    }
}

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        Now { instant: Instant::now(), wall_ms: sluice_storage::now_ms() }
    }

    fn now_ms(&self) -> i64 {
        sluice_storage::now_ms()
    }
}

pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to, for tests of timeouts and expiry. Both readings
/// advance together from where it was made. Storage stamps its own files (checkpoints,
/// flush times) with the system clock, so a broker driven by a clock far from it sees its
/// logs' maintenance as overdue on every tick; keep it near the wall clock there.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    start_ms: i64,
    elapsed_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(wall_ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock { start: Instant::now(), start_ms: wall_ms, elapsed_ms: AtomicI64::new(0) })
    }

    pub fn advance(&self, by: Duration) {
        self.elapsed_ms.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Now {
        let elapsed = self.elapsed_ms.load(Ordering::SeqCst);
        Now { instant: self.start + Duration::from_millis(elapsed as u64), wall_ms: self.start_ms + elapsed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn a_manual_clock_moves_both_readings_together_and_only_when_told() {
        let clock = ManualClock::new(1_000);
        let before = clock.now();
        assert_eq!(clock.now(), before);
        clock.advance(Duration::from_millis(250));
        let after = clock.now();
        assert_eq!(after.wall_ms, 1_250);
        assert_eq!(after.instant - before.instant, Duration::from_millis(250));
        let wall_before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        assert!(SystemClock.now_ms() >= wall_before);
    }
}
