//! The loop's clock.
//!
//! asyncio's `loop.time()` is `time.monotonic()`, which on Linux is
//! `clock_gettime(CLOCK_MONOTONIC)` converted to float seconds. Reading the same clock the
//! same way keeps timestamps comparable with code that mixes `loop.time()` and
//! `time.monotonic()`, at full nanosecond resolution.

//!
//! The clock is read through glibc's `clock_gettime`, as CPython reads it, not through
//! rustix's own vDSO lookup: under valgrind, which maps no vDSO, rustix's reader crashed
//! the process (every `call_later` was a segfault there), while glibc falls back to the
//! system call.

/// Seconds on the `CLOCK_MONOTONIC` clock, exactly as `time.monotonic()` reports them.
#[inline]
pub fn monotonic() -> f64 {
    let ts = read(libc::CLOCK_MONOTONIC);
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Reads `clock` through glibc (see the module documentation).
fn read(clock: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clocks read here always exist on
    // Linux, so the call cannot fail (and a failure would leave `ts` zero).
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts
}

/// Nanoseconds on `CLOCK_MONOTONIC_COARSE`: the time of the kernel's last tick, a
/// quarter of the cost of a `CLOCK_MONOTONIC` read (for counters, not for timers).
#[inline]
pub fn monotonic_coarse_ns() -> u64 {
    let ts = read(libc::CLOCK_MONOTONIC_COARSE);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The resolution of `CLOCK_MONOTONIC_COARSE` (its tick), in nanoseconds, at least 1.
pub fn monotonic_coarse_tick_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as in `read`.
    unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64).max(1)
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
