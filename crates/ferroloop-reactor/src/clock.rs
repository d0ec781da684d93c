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
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux,
    // so the call cannot fail (and a failure would leave `ts` zero, not undefined).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
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
