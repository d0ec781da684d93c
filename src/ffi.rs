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

/// `callable(*positional, **dict(zip(kwnames, keyword_values)))` through vectorcall, so
/// no argument tuple or keyword dict is built on our side. `kwnames` must hold as many
/// names as `keyword_values` has values.
pub fn call_with_kwnames<'py>(
    callable: &Bound<'py, PyAny>,
    positional: &[&Bound<'py, PyAny>],
    kwnames: &Bound<'py, PyTuple>,
    keyword_values: &[&Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    debug_assert_eq!(kwnames.len(), keyword_values.len());
    let py = callable.py();
    let args: Vec<*mut ffi::PyObject> = positional
        .iter()
        .chain(keyword_values)
        .map(|arg| arg.as_ptr())
        .collect();
    // SAFETY: `args` holds borrowed objects that outlive the call: `positional.len()`
    // positional arguments followed by one value per name in the `kwnames` tuple. The
    // result is a new reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyObject_Vectorcall(
                callable.as_ptr(),
                args.as_ptr(),
                positional.len(),
                kwnames.as_ptr(),
            ),
        )
    }
}

/// An interned tuple of keyword names, built once per call site.
pub struct KwNames {
    names: &'static [&'static str],
    cell: PyOnceLock<Py<PyTuple>>,
}

impl KwNames {
    /// Declares the names; the tuple is built on first use.
    pub const fn new(names: &'static [&'static str]) -> Self {
        KwNames {
            names,
            cell: PyOnceLock::new(),
        }
    }

    /// The tuple.
    pub fn get<'py>(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyTuple>> {
        self.cell
            .get_or_try_init(py, || {
                PyTuple::new(py, self.names.iter().map(|n| PyString::intern(py, n)))
                    .map(Bound::unbind)
            })
            .map(|t| t.bind(py))
    }
}

/// Whether the cyclic garbage collector tracks `obj`.
#[inline]
pub fn gc_is_tracked(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: callers pass a live object they hold a reference to.
    unsafe { ffi::PyObject_GC_IsTracked(obj) != 0 }
}

/// The reference count of `obj`.
#[inline]
pub fn refcount(obj: *mut ffi::PyObject) -> isize {
    // SAFETY: callers pass a live object they hold a reference to.
    unsafe { ffi::Py_REFCNT(obj) }
}

/// Stops the collector from tracking `obj` (a no-op if it is not tracked).
#[inline]
pub fn gc_untrack(obj: &Bound<'_, PyAny>) {
    if gc_is_tracked(obj.as_ptr()) {
        // SAFETY: `obj` is a live, tracked GC object and no collection is running (we
        // hold the interpreter and are not inside a traversal).
        unsafe { ffi::PyObject_GC_UnTrack(obj.as_ptr().cast()) };
    }
}

/// Makes the collector track `obj` again (a no-op if it already does).
#[inline]
pub fn gc_track(obj: &Bound<'_, PyAny>) {
    if !gc_is_tracked(obj.as_ptr()) {
        // SAFETY: `obj` is a live, fully initialised object of a GC type (it was
        // tracked when created) that is not tracked now.
        unsafe { ffi::PyObject_GC_Track(obj.as_ptr().cast()) };
    }
}
