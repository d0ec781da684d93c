//! The loop's clock.
//!
//! asyncio's `loop.time()` is `time.monotonic()`, which on Linux is
//! `clock_gettime(CLOCK_MONOTONIC)` converted to float seconds. Reading the same clock the
//! same way keeps timestamps comparable with code that mixes `loop.time()` and
//! `time.monotonic()`, at full nanosecond resolution.

use rustix::time::{clock_gettime, ClockId};

/// Seconds on the `CLOCK_MONOTONIC` clock, exactly as `time.monotonic()` reports them.
#[inline]
pub fn monotonic() -> f64 {
    let ts = clock_gettime(ClockId::Monotonic);
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_never_goes_backwards() {
        let mut last = monotonic();
        for _ in 0..10_000 {
            let now = monotonic();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn clock_advances_with_sleep() {
        let start = monotonic();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(monotonic() - start >= 0.005);
    }
}
