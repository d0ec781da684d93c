//! What the loop thread publishes for the watchdog: which handle is running, in which
//! iteration.
//!
//! Two relaxed stores per callback (the handle's address before it runs, null after) and
//! one per iteration, made only while a watchdog is on; with it off, the loop checks one
//! flag per iteration and runs the unmarked batch loop. A handle can run again in a
//! later iteration (an `add_reader` callback does, every iteration its descriptor is
//! ready), so a run is identified by the pair (iteration, handle).
//!
//! The address is only ever dereferenced by a thread holding the GIL that has just read
//! the same pair again: the loop thread clears it before it lets go of the handle, and
//! it can do neither without the GIL, so the handle is alive then.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use pyo3::ffi;

/// The loop thread's published state (shared with the watchdog's threads).
#[derive(Default)]
pub(crate) struct Marks {
    /// Marks are being made (a watchdog is running).
    on: AtomicBool,
    iteration: AtomicU64,
    running: AtomicPtr<ffi::PyObject>,
}

/// A snapshot of [`Marks`]: the run in progress, if any.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Run {
    /// The iteration it started in.
    pub(crate) iteration: u64,
    /// The address of its handle.
    pub(crate) handle: usize,
}

impl Marks {
    /// Whether the loop must mark its callbacks (read once per iteration).
    #[inline]
    pub(crate) fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Starts or stops marking.
    pub(crate) fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Release);
        if !on {
            self.running.store(std::ptr::null_mut(), Ordering::Release);
        }
    }

    /// An iteration begins.
    #[inline]
    pub(crate) fn iteration(&self, number: u64) {
        self.iteration.store(number, Ordering::Release);
    }

    /// `handle` starts running.
    #[inline]
    pub(crate) fn started(&self, handle: *mut ffi::PyObject) {
        self.running.store(handle, Ordering::Release);
    }

    /// The running handle returned (before the loop releases it).
    #[inline]
    pub(crate) fn ended(&self) {
        self.running.store(std::ptr::null_mut(), Ordering::Release);
    }

    /// The run in progress, or `None` between callbacks (and while polling).
    pub(crate) fn current(&self) -> Option<Run> {
        let before = self.iteration.load(Ordering::Acquire);
        let handle = self.running.load(Ordering::Acquire) as usize;
        let after = self.iteration.load(Ordering::Acquire);
        (handle != 0 && before == after).then_some(Run {
            iteration: before,
            handle,
        })
    }
}
