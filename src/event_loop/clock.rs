//! Whose clock the scheduler reads: the native `time.monotonic()` clock, or a `time()`
//! that a program put in place of the loop's.
//!
//! asyncio's loop asks `self.time()` for `call_later` deadlines and in every
//! `_run_once`, so test suites control time by replacing it: `mock.patch.object(loop,
//! "time")`, a subclass's `time()`, fake-clock plugins that swap the loop's class.
//! Calling a Python method on every iteration would cost the normal path a call, so the
//! replacement is detected instead, without touching the instance dict:
//!
//! - `LoopCore.time` is a data descriptor ([`TimeAttribute`]), so assigning or deleting
//!   `loop.time` lands here and sets a flag, and reading it returns the replacement or
//!   the native clock function;
//! - a class's own `time` (a subclass, a patched class, a swapped `__class__`) is seen
//!   by looking `time` up on the loop's type, again only when the type or its version
//!   tag changed since the last look.
//!
//! Leaving the loop's attribute protocol alone matters: hooking `__setattr__` instead
//! made every attribute lookup on the loop slower (CPython's attribute specialisation
//! gives up on types with their own `tp_setattro`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

use ferroloop_reactor::monotonic;
use pyo3::exceptions::PyAttributeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use super::LoopCore;
use crate::ffi;

/// What the loop knows about replacements of its `time()`.
#[derive(Default)]
pub(crate) struct ClockOverride {
    /// What a program assigned to `loop.time`, if anything.
    replacement: Mutex<Option<Py<PyAny>>>,
    /// `replacement` is set (read on every iteration without the lock).
    on_instance: AtomicBool,
    /// The type (address) and version tag of the last class lookup, and its answer.
    seen_type: AtomicUsize,
    seen_tag: AtomicU32,
    on_type: AtomicBool,
}

/// `LoopCore.time` as found on the class, the attribute a class that does not replace
/// `time()` resolves to.
static NATIVE_TIME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// The function `loop.time` returns while nothing replaced it.
static CLOCK_FUNCTION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl ClockOverride {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Py<PyAny>>> {
        self.replacement.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `value` in place of `time` (`None`: removes the replacement); returns the
    /// previous replacement, for the caller to drop outside the lock.
    fn replace(&self, value: Option<Py<PyAny>>) -> Option<Py<PyAny>> {
        let mut slot = self.slot();
        self.on_instance.store(value.is_some(), Ordering::Relaxed);
        std::mem::replace(&mut *slot, value)
    }

    /// Removes the replacement (the loop's GC clear).
    pub(crate) fn take_replacement(&self) -> Option<Py<PyAny>> {
        self.replace(None)
    }

    /// Reports the replacement to the garbage collector.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self.replacement.try_lock() {
            Ok(slot) => visit.call(&*slot),
            Err(_) => Ok(()),
        }
    }

    /// Whether `time()` is not the native clock for `event_loop`, an instance of
    /// `native_type()` or a subclass. On the common path this is three loads and three
    /// comparisons; the class is looked at again only when its version tag changed.
    #[inline]
    pub(crate) fn is_overridden<'py>(
        &self,
        event_loop: &Bound<'py, PyAny>,
        native_type: impl FnOnce() -> Bound<'py, PyType>,
    ) -> PyResult<bool> {
        if self.on_instance.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let (type_ptr, tag) = ffi::type_and_version_tag(event_loop);
        if tag != 0
            && tag == self.seen_tag.load(Ordering::Relaxed)
            && type_ptr == self.seen_type.load(Ordering::Relaxed)
        {
            return Ok(self.on_type.load(Ordering::Relaxed));
        }
        self.look_up_class(event_loop, native_type())
    }

    #[cold]
    fn look_up_class(
        &self,
        event_loop: &Bound<'_, PyAny>,
        native_type: Bound<'_, PyType>,
    ) -> PyResult<bool> {
        let py = event_loop.py();
        let name = pyo3::intern!(py, "time");
        let native =
            NATIVE_TIME.get_or_try_init(py, || native_type.getattr(name).map(Bound::unbind))?;
        let overridden = !event_loop.get_type().getattr(name)?.is(native.bind(py));
        // The lookup above gave the type a valid tag if it had none.
        let (type_ptr, tag) = ffi::type_and_version_tag(event_loop);
        self.seen_tag.store(tag, Ordering::Relaxed);
        self.seen_type.store(type_ptr, Ordering::Relaxed);
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

/// The function `loop.time` is while nothing replaced it: `time.monotonic()` natively.
fn clock_function(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    CLOCK_FUNCTION.get_or_try_init(py, || {
        let function = PyCFunction::new_closure(
            py,
            Some(c"time"),
            Some(c"Return the time according to the event loop's clock (time.monotonic())."),
            |_args: &Bound<'_, PyTuple>, _kwargs| -> PyResult<f64> { Ok(monotonic()) },
        )?;
        Ok(function.into_any().unbind())
    })
}

/// `LoopCore.time`: a data descriptor, so that a `time` assigned to a loop is seen by
/// the scheduler (see the module documentation). Reading it gives the replacement, or a
/// function returning `time.monotonic()`; `Loop.time(loop)` works as for a method.
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct TimeAttribute;

fn loop_core<'a, 'py>(instance: &'a Bound<'py, PyAny>) -> PyResult<&'a Bound<'py, LoopCore>> {
    Ok(instance.cast::<LoopCore>()?)
}

#[pymethods]
impl TimeAttribute {
    fn __get__(
        slf: &Bound<'_, Self>,
        instance: Option<&Bound<'_, PyAny>>,
        _owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Some(instance) = instance.filter(|instance| !instance.is_none()) else {
            return Ok(slf.clone().into_any().unbind());
        };
        let core = loop_core(instance)?.get();
        if core.clock_override.on_instance.load(Ordering::Relaxed) {
            if let Some(replacement) = core.clock_override.slot().as_ref() {
                return Ok(replacement.clone_ref(py));
            }
        }
        Ok(clock_function(py)?.clone_ref(py))
    }

    fn __set__(&self, instance: &Bound<'_, PyAny>, value: Bound<'_, PyAny>) -> PyResult<()> {
        let previous = loop_core(instance)?
            .get()
            .clock_override
            .replace(Some(value.unbind()));
        drop(previous);
        Ok(())
    }

    fn __delete__(&self, instance: &Bound<'_, PyAny>) -> PyResult<()> {
        match loop_core(instance)?.get().clock_override.replace(None) {
            Some(previous) => {
                drop(previous);
                Ok(())
            }
            None => Err(PyAttributeError::new_err("time")),
        }
    }

    /// `Loop.time(loop)`, as the unbound method asyncio's loops have.
    fn __call__(&self, instance: &Bound<'_, PyAny>) -> PyResult<f64> {
        loop_core(instance)?;
        Ok(monotonic())
    }
}
