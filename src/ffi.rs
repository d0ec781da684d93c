//! The few raw CPython calls the loop makes, each wrapped in a safe function.
//!
//! They exist for speed on the hottest paths: entering a `contextvars.Context` without
//! going through `Context.run`'s argument re-packing, copying the current context, and
//! calling `Future(loop=...)` with a cached keyword-name tuple instead of a fresh dict.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple};

/// `contextvars.copy_context()`.
#[inline]
pub fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: attached to the interpreter (we hold `py`); the call returns a new
    // reference or NULL with an exception set, which `from_owned_ptr_or_err` handles.
    unsafe { Ok(Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())?.unbind()) }
}

/// True if `obj` is exactly a `contextvars.Context`.
#[inline]
pub fn is_context(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `obj` is a valid object for the lifetime of the borrow.
    unsafe { ffi::PyContext_CheckExact(obj.as_ptr()) != 0 }
}

/// Calls `callback(*args)` inside `context`, as `context.run(callback, *args)` does.
///
/// A `Context` is entered directly; anything else (a duck-typed context object) gets its
/// `run` method called, which is what asyncio's `Handle._run` does in every case.
#[inline]
pub fn run_in_context(
    context: &Bound<'_, PyAny>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<()> {
    let py = context.py();
    if !is_context(context) {
        let mut call_args = Vec::with_capacity(args.len() + 1);
        call_args.push(callback.clone());
        call_args.extend(args.iter());
        context.call_method1(pyo3::intern!(py, "run"), PyTuple::new(py, call_args)?)?;
        return Ok(());
    }
    // SAFETY: `context` is a Context (checked above); entering fails cleanly with a
    // RuntimeError if it is already entered.
    if unsafe { ffi::PyContext_Enter(context.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `callback` and `args` (a tuple) are valid for the call; the result is a new
    // reference or NULL with an exception set.
    let result =
        unsafe { ffi::PyObject_Call(callback.as_ptr(), args.as_ptr(), std::ptr::null_mut()) };
    // Take the exception (if any) before leaving the context so the exit call runs with
    // no exception pending.
    let outcome = if result.is_null() {
        Err(PyErr::fetch(py))
    } else {
        // SAFETY: `result` is an owned reference we no longer need.
        unsafe { ffi::Py_DECREF(result) };
        Ok(())
    };
    // SAFETY: we entered `context` above on this thread and have not left it.
    if unsafe { ffi::PyContext_Exit(context.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    outcome
}

static LOOP_KWNAMES: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();

/// `callable(loop=event_loop)`, e.g. `asyncio.Future(loop=self)`.
pub fn call_with_loop_kw<'py>(
    callable: &Bound<'py, PyAny>,
    event_loop: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    let kwnames = LOOP_KWNAMES
        .get_or_try_init(py, || {
            PyTuple::new(py, [PyString::intern(py, "loop")]).map(Bound::unbind)
        })?
        .bind(py);
    let args = [event_loop.as_ptr()];
    // SAFETY: `args` holds one borrowed object that outlives the call, matched by the
    // one-element `kwnames` tuple; zero positional arguments. The result is a new
    // reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyObject_Vectorcall(callable.as_ptr(), args.as_ptr(), 0, kwnames.as_ptr()),
        )
    }
}
