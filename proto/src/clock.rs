//! The wall clock of every snapgate process, injectable for tests: the scheduler's driver and
//! the agent's executor read "now" only through a [`Clock`].
//!
//! [`SystemClock`] is the production clock. [`TokioClock`] reads tokio's clock from a fixed
//! start, so under `tokio::time::pause()` (or `#[tokio::test(start_paused = true)]`) a test moves
//! the wall clock and every tokio timer together: hours of schedules, leases and deadlines pass
//! in milliseconds, and nothing happens between two instants the test did not let pass. On a
//! running (not paused) tokio clock it advances as the system's monotonic clock does.
//!
//! Only with the `clock` feature (it needs tokio's time).

use chrono::{DateTime, Utc};

/// Where a process reads the wall time.
pub trait Clock: std::fmt::Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that follows tokio's time from a fixed start.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: DateTime<Utc>,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start` now.
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        Self {
            start,
            origin: tokio::time::Instant::now(),
        }
    }

    /// A clock reading the system's time now, then following tokio's.
    pub fn starting_now() -> Self {
        Self::starting_at(Utc::now())
    }
}

impl Clock for TokioClock {
    /// `start` plus the tokio time elapsed since the clock was made; the latest time chrono
    /// can hold once that overflows.
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.origin);
        chrono::Duration::from_std(elapsed)
            .ok()
            .and_then(|d| self.start.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_with_paused_time_only() {
        let start = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = TokioClock::starting_at(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.now(), start + chrono::Duration::hours(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_past_chronos_range_reads_its_latest_time() {
        let clock =
            TokioClock::starting_at(DateTime::<Utc>::MAX_UTC - chrono::Duration::seconds(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(clock.now(), DateTime::<Utc>::MAX_UTC);
    }
}
