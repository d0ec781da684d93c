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

/// The address of `obj`'s type and that type's attribute-cache version tag. The tag
/// changes (or drops to 0) whenever the type or one of its bases is modified, so a
/// result derived from a lookup on the type stays valid while the type and tag stay the
/// same (a non-zero tag).
#[inline]
pub fn type_and_version_tag(obj: &Bound<'_, PyAny>) -> (usize, u32) {
    // SAFETY: `obj` is alive, so is its type (an object holds a reference to it); the
    // tag is a plain integer that CPython changes only with the GIL held, which we hold.
    unsafe {
        let ty = ffi::Py_TYPE(obj.as_ptr());
        (ty as usize, (*ty).tp_version_tag)
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

/// Stops the collector tracking `context` if it is a `contextvars.Context` whose only
/// reference is the caller's (see `handle::untrack_queued` for why and for the rules).
#[inline]
pub fn untrack_private_context(context: *mut ffi::PyObject) {
    // SAFETY: callers pass a live object they hold a reference to; a Context is a GC
    // type, tracked from creation, and no collection is running (we hold the GIL
    // outside any traversal).
    unsafe {
        if ffi::PyContext_CheckExact(context) != 0
            && ffi::Py_REFCNT(context) == 1
            && ffi::PyObject_GC_IsTracked(context) != 0
        {
            ffi::PyObject_GC_UnTrack(context.cast());
        }
    }
}

/// Tracks `context` again if it is a `contextvars.Context` that is not tracked: only
/// [`untrack_private_context`] untracks contexts, and CPython's Context deallocator
/// requires a tracked object.
#[inline]
pub fn retrack_context(context: *mut ffi::PyObject) {
    // SAFETY: callers pass a live object they hold a reference to, with the interpreter
    // attached (handles are only dropped or released attached); a Context is a fully
    // initialised GC object, and it is only linked into the collector when untracked.
    unsafe {
        if ffi::PyContext_CheckExact(context) != 0 && ffi::PyObject_GC_IsTracked(context) == 0 {
            ffi::PyObject_GC_Track(context.cast());
        }
    }
}

/// A `bytes` of at most `capacity` bytes whose memory `fill` writes directly (a read
/// syscall), without first writing it into another buffer and copying: `fill` returns
/// how many bytes it initialised, and the object is shrunk to that size. A `fill`
/// error is handed back as is (the object is dropped).
pub fn bytes_filled_by<'py, E>(
    py: Python<'py>,
    capacity: usize,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<u8>]) -> Result<usize, E>,
) -> PyResult<Result<Bound<'py, pyo3::types::PyBytes>, E>> {
    let size = ffi::Py_ssize_t::try_from(capacity)
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("bytes too large"))?;
    // SAFETY: PyBytesWriter_Create (native on 3.15, PyO3's compatibility version before)
    // returns a writer owning `capacity` writable bytes, or NULL with an exception set.
    let writer = unsafe { ffi::compat::PyBytesWriter_Create(size) };
    if writer.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `writer` is live, so GetData points at `capacity` bytes it owns, writable
    // until the writer is finished or discarded; they may be uninitialised, which the
    // MaybeUninit slice expresses. Nothing else can reach them meanwhile.
    let memory = unsafe {
        std::slice::from_raw_parts_mut(
            ffi::compat::PyBytesWriter_GetData(writer).cast::<std::mem::MaybeUninit<u8>>(),
            capacity,
        )
    };
    let filled = match fill(memory) {
        Ok(n) => n.min(capacity),
        Err(err) => {
            // SAFETY: the writer is live and discarded exactly once.
            unsafe { ffi::compat::PyBytesWriter_Discard(writer) };
            return Ok(Err(err));
        }
    };
    // SAFETY: `filled <= capacity` bytes were initialised by `fill`; FinishWithSize
    // consumes the writer (also on failure) and returns a new reference or NULL.
    let bytes =
        unsafe { ffi::compat::PyBytesWriter_FinishWithSize(writer, filled as ffi::Py_ssize_t) };
    // SAFETY: a non-NULL result is a new reference to a bytes object.
    let bytes = unsafe { Bound::from_owned_ptr_or_err(py, bytes)? };
    Ok(Ok(bytes.cast_into::<pyo3::types::PyBytes>()?))
}

/// A buffer exported by an object through the buffer protocol, released on drop.
struct ExportedBuffer {
    view: ffi::Py_buffer,
}

impl ExportedBuffer {
    /// Exports `obj`'s memory as one C-contiguous run of bytes, whatever its item format
    /// (`PyBUF_SIMPLE`, what `socket.send` asks for), writable if `writable`.
    fn new(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<Self> {
        let flags = if writable {
            ffi::PyBUF_WRITABLE
        } else {
            ffi::PyBUF_SIMPLE
        };
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
        // SAFETY: `view` is writable storage for one Py_buffer; on success CPython fills
        // it and we release it exactly once (Drop); on failure it stays untouched.
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) } < 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: PyObject_GetBuffer succeeded, so `view` is initialised.
        let view = unsafe { view.assume_init() };
        Ok(ExportedBuffer { view })
    }

    fn len(&self) -> usize {
        usize::try_from(self.view.len).unwrap_or(0)
    }
}

impl Drop for ExportedBuffer {
    fn drop(&mut self) {
        // SAFETY: the view was obtained from PyObject_GetBuffer and not yet released;
        // drops only happen with the interpreter attached (the buffer never leaves the
        // functions below, which hold `py`).
        unsafe { ffi::PyBuffer_Release(&mut self.view) };
    }
}

/// Calls `f` with the bytes of a bytes-like object (any C-contiguous buffer), as
/// `socket.send` reads its argument.
pub fn with_bytes<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(bytes) = obj.cast::<pyo3::types::PyBytes>() {
        // The common case, without a buffer export: `bytes` is immutable.
        return Ok(f(bytes.as_bytes()));
    }
    let buffer = ExportedBuffer::new(obj, false)?;
    let len = buffer.len();
    if len == 0 {
        return Ok(f(&[]));
    }
    // SAFETY: the exporter guarantees `len` readable bytes at `buf` while the export is
    // held; `buffer` outlives the slice, and `f` gets no access to Python through it.
    let bytes = unsafe { std::slice::from_raw_parts(buffer.view.buf as *const u8, len) };
    Ok(f(bytes))
}

/// Calls `f` with the memory of a writable bytes-like object, as `socket.recv_into`
/// fills its argument.
pub fn with_bytes_mut<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&mut [u8]) -> R) -> PyResult<R> {
    let buffer = ExportedBuffer::new(obj, true)?;
    let len = buffer.len();
    if len == 0 {
        return Ok(f(&mut []));
    }
    // SAFETY: a writable export guarantees `len` writable bytes at `buf` while held;
    // resizing exporters (bytearray) refuse to resize while exported, and `f` gets no
    // access to Python through which another alias could be used meanwhile.
    let bytes = unsafe { std::slice::from_raw_parts_mut(buffer.view.buf.cast::<u8>(), len) };
    Ok(f(bytes))
}

/// One step of a native awaitable, as a generator's `send` reports it.
pub enum SendOutcome {
    /// Suspended: this is yielded to whoever drives the awaitable (the task).
    Yield(Py<PyAny>),
    /// Finished with this result.
    Return(Py<PyAny>),
}

/// A pyclass that behaves as a coroutine: [`install_am_send`] gives its type the
/// `am_send` slot, which drives it without an exception per finished step.
pub trait NativeAwaitable: pyo3::PyClass {
    /// Advances the awaitable once (the value sent in is always `None` for awaits).
    fn step(slf: &Bound<'_, Self>) -> PyResult<SendOutcome>;
}

/// `am_send` for `T`: `await` on 3.11 goes through `PyIter_Send`, which uses this slot
/// when a type has it; without it, every finished step raises a `StopIteration` that
/// the interpreter catches again to read the result. (3.12+ call `__next__` instead.)
unsafe extern "C" fn am_send<T: NativeAwaitable>(
    slf: *mut ffi::PyObject,
    _value: *mut ffi::PyObject,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // CPython calls slots with the thread attached; `attach` records that for PyO3
        // (as its own trampolines do), so references dropped inside are released now.
        Python::attach(|py| {
            // SAFETY: `slf` is the object the slot was called on, alive for the call.
            let slf = unsafe { Bound::from_borrowed_ptr(py, slf) };
            T::step(slf.cast::<T>()?)
        })
    }));
    // SAFETY: as above, the thread is attached; `result` is CPython's out-pointer.
    unsafe { finish_send(Python::assume_attached(), outcome, result) }
}

/// Writes a step's outcome to `am_send`'s out-pointer, or raises its error.
///
/// # Safety
/// `result` must be a valid out-pointer (the one CPython passed to `am_send`).
unsafe fn finish_send(
    py: Python<'_>,
    outcome: std::thread::Result<PyResult<SendOutcome>>,
    result: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    let err = match outcome {
        Ok(Ok(step)) => {
            let (object, status) = match step {
                SendOutcome::Yield(object) => (object, ffi::PySendResult::PYGEN_NEXT),
                SendOutcome::Return(object) => (object, ffi::PySendResult::PYGEN_RETURN),
            };
            // SAFETY: `result` is CPython's out-pointer; it takes the new reference.
            unsafe { *result = object.into_ptr() };
            return status;
        }
        Ok(Err(err)) => err,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic in a native awaitable".to_string());
            pyo3::panic::PanicException::new_err(message)
        }
    };
    err.restore(py);
    // SAFETY: as above; on error the out-pointer holds NULL.
    unsafe { *result = std::ptr::null_mut() };
    ffi::PySendResult::PYGEN_ERROR
}

/// Gives `T`'s type object the `am_send` slot (see [`am_send`]). PyO3 has no attribute
/// for it, so it is written into the heap type once, at module initialisation, before
/// any instance exists.
pub fn install_am_send<T: NativeAwaitable>(py: Python<'_>) -> PyResult<()> {
    let tp = T::type_object(py);
    // SAFETY: `tp` is T's heap type, which PyO3 created with an async-methods table
    // (T defines `__await__`); only the `am_send` entry of that table is written, once,
    // while the module is being initialised.
    unsafe {
        let as_async = (*tp.as_type_ptr()).tp_as_async;
        if as_async.is_null() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "a native awaitable type must define __await__",
            ));
        }
        (*as_async).am_send = Some(am_send::<T>);
    }
    Ok(())
}
