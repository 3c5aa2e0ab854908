//! The simulator's clock. Instance lifecycles, logs and the server-side rate limits read it instead of
//! the real clock, so tests can run it by hand ([`SimClock::manual`]) and move it with
//! [`SimClock::advance`]: a start delay of a minute then takes no time and no sleep. Wall-clock times
//! shown in responses are derived from it, so they agree with the lifecycle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;

/// A century.
const MAX_ADVANCE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug)]
pub struct SimClock {
    base: Instant,
    wall_base: Timestamp,
    manual: bool,
    /// Nanoseconds added by `advance`.
    offset: AtomicU64,
}

impl SimClock {
    /// Follows real (tokio) time, plus whatever `advance` adds.
    pub fn real() -> Self {
        Self::new(false)
    }

    /// Stands still until advanced.
    pub fn manual() -> Self {
        Self::new(true)
    }

    fn new(manual: bool) -> Self {
        Self {
            base: Instant::now(),
            wall_base: Timestamp::now(),
            manual,
            offset: AtomicU64::new(0),
        }
    }

    pub fn now(&self) -> Instant {
        let offset = Duration::from_nanos(self.offset.load(Ordering::SeqCst));
        if self.manual {
            self.base + offset
        } else {
            Instant::now() + offset
        }
    }

    /// Moves the clock forward; the total advance is capped at a century so instant arithmetic can
    /// never overflow, whatever a caller asks for.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let cap = u64::try_from(MAX_ADVANCE.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .offset
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |offset| {
                Some(offset.saturating_add(nanos).min(cap))
            });
    }

    /// The wall-clock time of a simulator instant.
    pub fn wall(&self, at: Instant) -> Timestamp {
        let since = at.saturating_duration_since(self.base);
        let since = jiff::SignedDuration::try_from(since).unwrap_or(jiff::SignedDuration::MAX);
        self.wall_base.checked_add(since).unwrap_or(Timestamp::MAX)
    }

    /// The simulator instant of a wall-clock time (for `StartTime` filters); times before the clock
    /// started map to its start.
    pub fn instant_of(&self, wall: Timestamp) -> Instant {
        let since = wall.duration_since(self.wall_base);
        match Duration::try_from(since) {
            Ok(since) => self.base.checked_add(since.min(MAX_ADVANCE)).unwrap_or(self.base),
            Err(_) => self.base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_wall_time_follows() {
        let clock = SimClock::manual();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - start, Duration::from_secs(90));
        let wall = clock.wall(clock.now());
        assert_eq!(
            wall.duration_since(clock.wall(start)),
            jiff::SignedDuration::from_secs(90)
        );
        assert_eq!(clock.instant_of(wall), clock.now());
    }

    #[test]
    fn an_absurd_advance_is_capped_instead_of_overflowing() {
        let clock = SimClock::manual();
        let start = clock.now();
        clock.advance(Duration::MAX);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now() - start, MAX_ADVANCE);
        let _ = clock.wall(clock.now());
    }
}
