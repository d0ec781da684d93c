//! Turning `call_soon`/`call_at` arguments into handles.
//!
//! The checks mirror `BaseEventLoop`: in debug mode the callback is validated
//! (`_check_callback`) and the calling thread checked (`_check_thread`) by calling the
//! inherited Python methods, so messages match stock asyncio exactly; outside debug mode
//! nothing is checked, as in stock asyncio, and a bad callback fails when it runs.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt, PyTuple};

use crate::ffi;
use crate::py_cache::{EXTRACT_STACK, GETFRAME};

use super::handle::HandleCore;

/// Which debug checks a scheduling method performs (as in `BaseEventLoop`).
pub(crate) struct DebugChecks {
    /// The method name used in `_check_callback`'s messages.
    pub method: &'static str,
    /// `call_soon_threadsafe` skips the thread check.
    pub check_thread: bool,
}

/// Runs the debug-mode checks through the inherited Python helpers.
pub(crate) fn debug_checks(
    event_loop: &Bound<'_, PyAny>,
    callback: &Bound<'_, PyAny>,
    checks: DebugChecks,
) -> PyResult<()> {
    let py = event_loop.py();
    if checks.check_thread {
        event_loop.call_method0(pyo3::intern!(py, "_check_thread"))?;
    }
    event_loop.call_method1(
        pyo3::intern!(py, "_check_callback"),
        (callback, checks.method),
    )?;
    Ok(())
}

/// Builds the shared part of a handle: the context defaults to a copy of the current
/// one, and in debug mode the creation stack is recorded.
pub(crate) fn handle_core(
    callback: Bound<'_, PyAny>,
    args: Bound<'_, PyTuple>,
    context: Option<Bound<'_, PyAny>>,
    debug: bool,
) -> PyResult<HandleCore> {
    let py = callback.py();
    // A copy made here is the handle's alone: the loop may untrack it while queued.
    let (context, private_context) = match context {
        Some(ctx) if !ctx.is_none() => (ctx.unbind(), false),
        _ => (ffi::copy_context(py)?, true),
    };
    let source_traceback = if debug {
        // From native code `sys._getframe(0)` is the caller's frame, which is exactly
        // what asyncio keeps after trimming its own frames off the stack.
        let frame = GETFRAME.get(py)?.call1((0,))?;
        Some(EXTRACT_STACK.get(py)?.call1((frame,))?.unbind())
    } else {
        None
    };
    Ok(HandleCore::new(
        callback.unbind(),
        args.unbind(),
        context,
        private_context,
        source_traceback,
    ))
}

/// `call_at`'s deadline as a float. asyncio compares deadlines with `<`; a deadline that
/// is not a real number is refused here rather than failing later inside the loop.
pub(crate) fn deadline(when: &Bound<'_, PyAny>) -> PyResult<f64> {
    if when.is_none() {
        return Err(PyTypeError::new_err("when cannot be None"));
    }
    when.extract::<f64>()
}

/// `call_later`'s deadline: `loop.time() + delay`, computed with Python's `+` for
/// anything but ints and floats so that errors read exactly as in asyncio.
pub(crate) fn deadline_after(now: f64, delay: &Bound<'_, PyAny>) -> PyResult<f64> {
    if delay.is_none() {
        return Err(PyTypeError::new_err("delay must not be None"));
    }
    if let Ok(delay) = delay.cast::<PyFloat>() {
        return Ok(now + delay.value());
    }
    if delay.is_exact_instance_of::<PyInt>() {
        return Ok(now + delay.extract::<f64>()?);
    }
    PyFloat::new(delay.py(), now).add(delay)?.extract::<f64>()
}
