//! `loop.stats()`: counters kept since the loop was created, cheap enough to be always on.
//!
//! Every counter is written by the loop thread alone, so an update is a relaxed load
//! and store (no locked read-modify-write, no lock); another thread calling `stats()`
//! reads each counter whole, if not all of them at the same instant.
//!
//! Time is measured without a clock read per callback: a read costs 9 ns (the coarse
//! clock, see [`super::coarse_clock`]) and the cheapest callbacks cost 20-180 ns, so
//! reading it per callback, or even per iteration, was 5 % of `call_soon chain` and
//! 3 % of `Future round trip`. Instead the loop's time is cut into *stretches*, each
//! ended by one clock reading:
//!
//! - a poll that may block is bracketed by two readings: the time between them is
//!   poller time, and the stretch before it is callback time;
//! - otherwise a reading is taken after each batch of callbacks (an iteration's), except
//!   when the loop spins without I/O: once 16 readings in a row have found the clock
//!   unmoved (each stretch under one tick) and no poll was made in between, readings
//!   are taken every `stride` batches, the stride doubling up to [`MAX_STRIDE`] while
//!   the clock stays unmoved. It falls back to one batch as soon as the clock moved
//!   and after every poll, so an iteration that polled (a syscall, beside which the
//!   reading costs little) is always measured alone.
//!
//! So `callback_seconds` is the loop thread's time outside the poller, its own
//! bookkeeping between callbacks included, and a stretch is one batch whenever the loop
//! is not spinning through sub-tick iterations. `slow_callbacks` counts stretches that
//! took at least `slow_callback_duration`: a slow callback run alone in its iteration
//! (what a handler that blocks usually is) is one exactly; a slow stretch of several
//! callbacks counts once, described as such. `longest_callback` is the longest stretch
//! that took measurably long (more than one tick), with the handle `_format_handle`
//! describes, or the count of callbacks it covered.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::coarse_clock::{now_ns, seconds, tick_ns};
use crate::py_cache::BASE_EVENTS_MODULE;

/// The most batches between two clock readings while iterations stay under a tick.
pub(crate) const MAX_STRIDE: u64 = 64;
/// How many readings in a row must find the clock unmoved before batches are skipped.
const STREAK_BEFORE_STRIDE: u64 = 16;

thread_local! {
    /// Bytes received and sent by native transports on this thread (see [`count_read`]).
    static BYTES_READ: Cell<u64> = const { Cell::new(0) };
    static BYTES_WRITTEN: Cell<u64> = const { Cell::new(0) };
}

/// Counts `n` bytes received by a transport. A loop runs its transports on its own
/// thread, so a plain thread-local cell is enough; each loop adds up what this thread
/// counted while it was running (see [`LoopStats::run_started`]). The stream core calls
/// this after each successful `recv` (one line, see the module documentation).
#[inline]
pub(crate) fn count_read(n: usize) {
    BYTES_READ.with(|c| c.set(c.get().wrapping_add(n as u64)));
}

/// Counts `n` bytes a transport sent (see [`count_read`]).
#[inline]
pub(crate) fn count_written(n: usize) {
    BYTES_WRITTEN.with(|c| c.set(c.get().wrapping_add(n as u64)));
}

fn thread_bytes() -> (u64, u64) {
    (BYTES_READ.with(Cell::get), BYTES_WRITTEN.with(Cell::get))
}

/// A counter only the loop thread writes.
#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (a load and a store: the loop thread is the only writer).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.set(self.get().wrapping_add(n));
    }

    /// The current value.
    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    #[inline]
    fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

/// The loop's counters (see the module documentation for what the times mean).
#[derive(Default)]
pub(crate) struct LoopStats {
    /// Iterations of the run loop (also the watchdog's generation number).
    pub(crate) iterations: Counter,
    callbacks: Counter,
    /// `call_later`/`call_at` calls.
    pub(crate) timers_scheduled: Counter,
    /// Timers that came due uncancelled.
    pub(crate) timers_fired: Counter,
    /// Cancelled timers that left the heap (those still in it are the heap's count).
    pub(crate) timers_cancelled_removed: Counter,
    /// Readiness reports from the poller (descriptors, the signal pipe excluded).
    pub(crate) io_events: Counter,
    poll_ns: Counter,
    callback_ns: Counter,
    slow_callbacks: Counter,
    longest_ns: Counter,
    /// `_format_handle` of the longest stretch's last handle, or what it covered.
    longest: Mutex<Option<String>>,
    /// `slow_callback_duration` in nanoseconds (kept by the loop's property).
    slow_ns: AtomicU64,
    bytes_read: Counter,
    bytes_written: Counter,
    // The stretch being measured (loop thread only):
    /// Coarse time of the last reading; 0 while the loop is not running.
    mark_ns: Counter,
    /// `callbacks` and `iterations` at the last reading.
    callbacks_at_mark: Counter,
    iterations_at_mark: Counter,
    stride: Counter,
    batches_left: Counter,
    /// Readings in a row that found the clock unmoved.
    unmoved: Counter,
    /// This thread's byte counts when the current run started or was last added up.
    bytes_base: (Counter, Counter),
}

impl LoopStats {
    /// Counters at zero, with asyncio's default `slow_callback_duration` (0.1 s).
    pub(crate) fn new() -> Self {
        let stats = LoopStats::default();
        stats.set_slow_callback_duration(0.1);
        stats
    }

    /// Keeps `slow_callback_duration` (seconds) for the slow-callback count; what is
    /// not a non-negative number counts nothing as slow.
    pub(crate) fn set_slow_callback_duration(&self, value: f64) {
        let ns = if value >= 0.0 {
            (value * 1e9).min(u64::MAX as f64) as u64
        } else {
            u64::MAX
        };
        self.slow_ns.store(ns, Ordering::Relaxed);
    }

    /// `run_forever` begins on this thread.
    pub(crate) fn run_started(&self) {
        let (read, written) = thread_bytes();
        self.bytes_base.0.set(read);
        self.bytes_base.1.set(written);
        self.mark_ns.set(now_ns());
        self.callbacks_at_mark.set(self.callbacks.get());
        self.iterations_at_mark.set(self.iterations.get());
        self.reset_stride();
    }

    /// `run_forever` ends: the last stretch is callback time, and the bytes this thread
    /// moved meanwhile are the loop's.
    pub(crate) fn run_stopped(&self) {
        self.close_stretch(None);
        self.collect_bytes();
        self.mark_ns.set(0);
    }

    fn collect_bytes(&self) {
        let (read, written) = thread_bytes();
        self.bytes_read
            .add(read.wrapping_sub(self.bytes_base.0.get()));
        self.bytes_written
            .add(written.wrapping_sub(self.bytes_base.1.get()));
        self.bytes_base.0.set(read);
        self.bytes_base.1.set(written);
    }

    fn reset_stride(&self) {
        self.stride.set(1);
        self.batches_left.set(1);
        self.unmoved.set(0);
    }

    /// The poller was asked (a syscall): measure the next batch alone.
    #[inline]
    pub(crate) fn polled(&self) {
        if self.stride.get() > 1 {
            self.reset_stride();
        }
        self.unmoved.set(0);
    }

    /// A poll that may block begins: the stretch before it ends. Returns the reading.
    #[inline]
    pub(crate) fn poll_started(&self) -> u64 {
        self.close_stretch(None)
    }

    /// The poll that began at `started` returned.
    #[inline]
    pub(crate) fn poll_ended(&self, started: u64) {
        let now = now_ns();
        self.poll_ns.add(now.saturating_sub(started));
        self.mark_ns.set(now);
        self.reset_stride();
    }

    /// A batch of callbacks ran, `ran` of them not cancelled; `last` is the batch's last
    /// handle, still alive (it describes the stretch if this one becomes the longest).
    #[inline]
    pub(crate) fn batch_done(&self, ran: u64, last: &Bound<'_, PyAny>) {
        self.callbacks.add(ran);
        let left = self.batches_left.get();
        if left > 1 {
            self.batches_left.set(left - 1);
            return;
        }
        self.close_stretch(Some(last));
    }

    /// Ends the current stretch with a clock reading, and returns it.
    #[cold]
    fn close_stretch(&self, last: Option<&Bound<'_, PyAny>>) -> u64 {
        let now = now_ns();
        let mark = self.mark_ns.get();
        if mark == 0 {
            // Not inside run_forever (a bare `_run_once`): nothing to attribute.
            return now;
        }
        let elapsed = now.saturating_sub(mark);
        self.callback_ns.add(elapsed);
        self.mark_ns.set(now);
        let callbacks = self.callbacks.get();
        let covered = callbacks.wrapping_sub(self.callbacks_at_mark.get());
        let iterations = self.iterations.get();
        let batches = iterations.wrapping_sub(self.iterations_at_mark.get());
        self.callbacks_at_mark.set(callbacks);
        self.iterations_at_mark.set(iterations);
        let stride = if elapsed == 0 {
            self.unmoved.add(1);
            if self.unmoved.get() >= STREAK_BEFORE_STRIDE {
                (self.stride.get() * 2).min(MAX_STRIDE)
            } else {
                1
            }
        } else {
            self.unmoved.set(0);
            1
        };
        self.stride.set(stride);
        self.batches_left.set(stride);
        if covered == 0 {
            return now;
        }
        if elapsed >= self.slow_ns.load(Ordering::Relaxed) {
            self.slow_callbacks.add(1);
        }
        if elapsed > self.longest_ns.get() && elapsed > tick_ns() {
            self.longest_ns.set(elapsed);
            let described = describe(last.filter(|_| covered == 1), covered, batches);
            *self.longest.lock().unwrap_or_else(|e| e.into_inner()) = Some(described);
        }
        now
    }

    /// The counters as a dict (the keys the README documents). `on_loop_thread`: the
    /// caller runs on the thread the loop is running on, so the stretch in progress and
    /// this thread's byte counts are included.
    pub(crate) fn to_dict<'py>(
        &self,
        py: Python<'py>,
        timers_cancelled_in_heap: u64,
        on_loop_thread: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (mut callback_ns, mut bytes_read, mut bytes_written) = (
            self.callback_ns.get(),
            self.bytes_read.get(),
            self.bytes_written.get(),
        );
        let mark = self.mark_ns.get();
        if on_loop_thread && mark != 0 {
            callback_ns += now_ns().saturating_sub(mark);
            let (read, written) = thread_bytes();
            bytes_read += read.wrapping_sub(self.bytes_base.0.get());
            bytes_written += written.wrapping_sub(self.bytes_base.1.get());
        }
        let longest = self
            .longest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let dict = PyDict::new(py);
        dict.set_item("iterations", self.iterations.get())?;
        dict.set_item("callbacks", self.callbacks.get())?;
        dict.set_item("timers_scheduled", self.timers_scheduled.get())?;
        dict.set_item("timers_fired", self.timers_fired.get())?;
        dict.set_item(
            "timers_cancelled",
            self.timers_cancelled_removed.get() + timers_cancelled_in_heap,
        )?;
        dict.set_item("io_events", self.io_events.get())?;
        dict.set_item("poll_seconds", seconds(self.poll_ns.get()))?;
        dict.set_item("callback_seconds", seconds(callback_ns))?;
        dict.set_item("slow_callbacks", self.slow_callbacks.get())?;
        dict.set_item("longest_callback_seconds", seconds(self.longest_ns.get()))?;
        dict.set_item("longest_callback", longest)?;
        dict.set_item("bytes_read", bytes_read)?;
        dict.set_item("bytes_written", bytes_written)?;
        Ok(dict)
    }
}

/// What a measured stretch ran: the handle as asyncio's slow-callback warning names it
/// when it was alone, else the counts.
fn describe(last: Option<&Bound<'_, PyAny>>, callbacks: u64, batches: u64) -> String {
    if let Some(handle) = last {
        let py = handle.py();
        let formatted = BASE_EVENTS_MODULE
            .get(py)
            .and_then(|m| m.getattr("_format_handle"))
            .and_then(|format| format.call1((handle,)))
            .and_then(|s| s.str().map(|s| s.to_string()));
        if let Ok(text) = formatted {
            return text;
        }
    }
    format!("{callbacks} callbacks in {batches} iterations")
}
