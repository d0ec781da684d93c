//! Whose clock the scheduler reads: the native `time.monotonic()` clock, or a `time()`
//! that a program put in place of the loop's.
//!
//! asyncio's loop asks `self.time()` for `call_later` deadlines and in every
//! `_run_once`, so test suites control time by patching it (`mock.patch.object(loop,
//! "time")`, fake-clock plugins that swap the loop's class, aiohttp's keep-alive tests).
//! Calling a Python method on every iteration would cost the normal path a call, so the
//! override is detected instead: an instance attribute named `time` is seen when it is
//! set (the loop's `__setattr__` hook), and the class's `time` is looked up again only
//! when the loop's type or the type's version tag changes.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use ferroloop_reactor::monotonic;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::ffi;

/// What the loop knows about overrides of its `time()`.
#[derive(Default)]
pub(crate) struct ClockOverride {
    /// An instance attribute `time` is set.
    on_instance: AtomicBool,
    /// The type (address) and version tag of the last class lookup, and its answer.
    seen_type: AtomicUsize,
    seen_tag: AtomicU32,
    on_type: AtomicBool,
}

/// `LoopCore.time`, the method a class that does not override `time()` resolves to.
static NATIVE_TIME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl ClockOverride {
    /// Records that the instance attribute `time` was set (`true`) or deleted.
    pub(crate) fn set_on_instance(&self, present: bool) {
        self.on_instance.store(present, Ordering::Relaxed);
    }

    /// Whether `time()` is not the native clock for `event_loop` (an instance of
    /// `native_type` or a subclass).
    pub(crate) fn is_overridden(
        &self,
        event_loop: &Bound<'_, PyAny>,
        native_type: &Bound<'_, PyType>,
    ) -> PyResult<bool> {
        if self.on_instance.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let ty = event_loop.get_type();
        let tag = ffi::type_version_tag(&ty);
        if tag != 0
            && tag == self.seen_tag.load(Ordering::Relaxed)
            && ty.as_ptr() as usize == self.seen_type.load(Ordering::Relaxed)
        {
            return Ok(self.on_type.load(Ordering::Relaxed));
        }
        let py = event_loop.py();
        let name = pyo3::intern!(py, "time");
        let native =
            NATIVE_TIME.get_or_try_init(py, || native_type.getattr(name).map(Bound::unbind))?;
        let overridden = !ty.getattr(name)?.is(native.bind(py));
        // The lookup above gave the type a valid tag if it had none.
        self.seen_tag
            .store(ffi::type_version_tag(&ty), Ordering::Relaxed);
        self.seen_type
            .store(ty.as_ptr() as usize, Ordering::Relaxed);
        self.on_type.store(overridden, Ordering::Relaxed);
        Ok(overridden)
    }
}

/// The time on the loop's clock: `event_loop.time()` when `overridden`, else
/// `time.monotonic()` natively.
pub(crate) fn now(event_loop: &Bound<'_, PyAny>, overridden: bool) -> PyResult<f64> {
    if overridden {
        event_loop
            .call_method0(pyo3::intern!(event_loop.py(), "time"))?
            .extract()
    } else {
        Ok(monotonic())
    }
}

/// `math.ulp(x)`: the gap between `|x|` and the next larger float.
pub(crate) fn ulp(x: f64) -> f64 {
    let x = x.abs();
    if !x.is_finite() {
        return x;
    }
    if x == f64::MAX {
        return x - f64::from_bits(x.to_bits() - 1);
    }
    f64::from_bits(x.to_bits() + 1) - x
}
