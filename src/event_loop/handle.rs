//! `Handle` and `TimerHandle`: what `call_soon` and `call_later`/`call_at` return.
//!
//! They mirror `asyncio.Handle`/`asyncio.TimerHandle` (`cancel`, `cancelled`,
//! `get_context`, `when`, the same repr) but are native objects, so scheduling a
//! callback allocates one small object and no Python-level `__init__` runs. The loop's
//! queues hold them as `Py<Handle>` (a timer by its `Handle` part) and run them
//! through [`HandleCore`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use ferroloop_reactor::timer_heap::note_cancelled;
use ferroloop_reactor::TimerEntry;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyTuple};
use pyo3::PyClassInitializer;
use pyo3::{PyTraverseError, PyVisit};

use crate::py_cache::{format_callback_source, THREAD_SAFE_HANDLE_TYPE};

use super::run_lock::{RunLock, RunLockGuard};

/// The Python objects a handle refers to. Cleared by `cancel()` (callback and args, as
/// asyncio does, to break reference cycles early) and by the garbage collector (all).
#[derive(Default)]
struct CallbackRefs {
    callback: Option<Py<PyAny>>,
    args: Option<Py<PyTuple>>,
    context: Option<Py<PyAny>>,
}

impl Drop for CallbackRefs {
    fn drop(&mut self) {
        // A context the loop untracked (see `untrack_queued`) must be tracked again
        // before it can be freed: CPython's Context deallocator unlinks it from the
        // collector's list unconditionally. Every way out of the loop's queues already
        // re-tracks it; this covers the ones that drop a queue wholesale (GC clear of
        // the loop, dropping the loop) or a handle cleared by the collector.
        if let Some(context) = &self.context {
            crate::ffi::retrack_context(context.as_ptr());
        }
    }
}

/// Strong references to what a handle runs, taken out of its lock so the lock is never
/// held while Python code runs (the callback may cancel its own handle).
pub(crate) struct CallbackCall {
    pub callback: Py<PyAny>,
    pub args: Py<PyTuple>,
    pub context: Py<PyAny>,
}

/// State shared by both handle kinds.
pub(crate) struct HandleCore {
    refs: Mutex<CallbackRefs>,
    cancelled: AtomicBool,
    /// In the loop's timer heap (timers only): only then does cancelling count towards
    /// a heap rebuild.
    scheduled: AtomicBool,
    /// The context is a copy made for this handle (no `context=` was given), so the
    /// loop may untrack it while the handle is queued (see [`untrack_queued`]). Handles
    /// given a context (every task step) skip that bookkeeping.
    private_context: bool,
    /// The core of a [`ThreadSafeHandle`], whose lock is taken while the callback runs
    /// and by `cancel()`/`cancelled()`. (The lock lives in the subclass, so the common
    /// handle stays as small as it was.)
    thread_safe: bool,
    /// Present only for handles created in debug mode; boxed so that the common case
    /// costs one pointer per handle.
    debug: Option<Box<DebugInfo>>,
}

/// What debug mode records about a handle.
struct DebugInfo {
    /// Creation stack, as `asyncio.Handle._source_traceback`.
    source_traceback: Py<PyAny>,
    /// asyncio freezes the repr at cancellation, while the callback is still known;
    /// `OnceLock` because it is written once, possibly from another thread.
    cancelled_repr: OnceLock<String>,
}

impl HandleCore {
    pub(crate) fn new(
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Py<PyAny>,
        private_context: bool,
        source_traceback: Option<Py<PyAny>>,
    ) -> Self {
        HandleCore {
            refs: Mutex::new(CallbackRefs {
                callback: Some(callback),
                args: Some(args),
                context: Some(context),
            }),
            cancelled: AtomicBool::new(false),
            scheduled: AtomicBool::new(false),
            private_context,
            debug: source_traceback.map(|source_traceback| {
                Box::new(DebugInfo {
                    source_traceback,
                    cancelled_repr: OnceLock::new(),
                })
            }),
            thread_safe: false,
        }
    }

    /// Whether this is a [`ThreadSafeHandle`]'s core.
    #[inline]
    pub(crate) fn is_thread_safe(&self) -> bool {
        self.thread_safe
    }

    fn refs(&self) -> MutexGuard<'_, CallbackRefs> {
        // A poisoned lock only means a panic happened while it was held; the references
        // inside are still valid, so keep going rather than panic again.
        self.refs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once `cancel()` was called.
    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// What to run, or `None` if the handle was cancelled (or cleared by the GC).
    #[inline]
    pub(crate) fn call(&self, py: Python<'_>) -> Option<CallbackCall> {
        if self.is_cancelled() {
            return None;
        }
        let refs = self.refs();
        Some(CallbackCall {
            callback: refs.callback.as_ref()?.clone_ref(py),
            args: refs.args.as_ref()?.clone_ref(py),
            context: refs.context.as_ref()?.clone_ref(py),
        })
    }

    /// Marks the handle cancelled and drops its callback and arguments. Returns false if
    /// it already was cancelled.
    fn cancel(&self, handle: &Bound<'_, PyAny>) -> bool {
        let thread_safe = handle
            .cast::<ThreadSafeHandle>()
            .ok()
            .filter(|_| self.thread_safe);
        let _running = thread_safe
            .as_ref()
            .map(|h| h.get().run_lock.acquire(handle.py()));
        if self.cancelled.load(Ordering::Acquire) {
            return false;
        }
        if let Some(debug) = &self.debug {
            // Keep the repr readable after the callback is gone.
            if let Ok(repr) = handle.repr() {
                let _ = debug.cancelled_repr.set(repr.to_string());
            }
        }
        if self.cancelled.swap(true, Ordering::AcqRel) {
            return false;
        }
        let dropped = {
            let mut refs = self.refs();
            (refs.callback.take(), refs.args.take())
        };
        // Released after the lock: dropping may run arbitrary finalizers.
        drop(dropped);
        true
    }

    fn context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.refs().context.as_ref().map(|c| c.clone_ref(py))
    }

    fn callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.refs().callback.as_ref().map(|c| c.clone_ref(py))
    }

    fn args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.refs().args.as_ref().map(|a| a.clone_ref(py))
    }

    pub(crate) fn source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.debug
            .as_ref()
            .map(|d| d.source_traceback.clone_ref(py))
    }

    /// asyncio's `Handle.__repr__`, with `extra` (TimerHandle's `when=...`) after the
    /// class name and the `cancelled` marker.
    fn repr(&self, py: Python<'_>, class_name: &str, extra: Option<String>) -> PyResult<String> {
        if let Some(frozen) = self.debug.as_ref().and_then(|d| d.cancelled_repr.get()) {
            return Ok(frozen.clone());
        }
        let mut info = vec![class_name.to_owned()];
        if self.is_cancelled() {
            info.push("cancelled".to_owned());
        }
        if let Some(extra) = extra {
            info.push(extra);
        }
        if let Some(callback) = self.callback(py) {
            let args = self.args(py).map(|a| a.into_bound(py).into_any());
            // The loop's debug flag as of the handle's creation stands in for asyncio's
            // live `self._loop.get_debug()`: handles keep no reference to their loop.
            let debug = self.debug.is_some();
            let source = format_callback_source(callback.bind(py), args.as_ref(), debug)?;
            info.push(source.extract::<String>()?);
        }
        if let Some(debug) = &self.debug {
            let tb = debug.source_traceback.bind(py);
            if tb.len()? > 0 {
                let frame = tb.get_item(-1)?;
                info.push(format!(
                    "created at {}:{}",
                    frame.get_item(0)?.str()?,
                    frame.get_item(1)?.str()?
                ));
            }
        }
        Ok(format!("<{}>", info.join(" ")))
    }

    /// Stops the collector tracking the handle's context if the handle is its only
    /// owner (the copy of the current context made at scheduling); see
    /// [`untrack_queued`].
    fn untrack_private_context(&self) {
        if !self.private_context {
            return;
        }
        if let Some(context) = &self.refs().context {
            crate::ffi::untrack_private_context(context.as_ptr());
        }
    }

    /// Makes the collector track the handle's context again (see [`untrack_queued`]).
    fn retrack_context(&self) {
        if !self.private_context {
            return;
        }
        if let Some(context) = &self.refs().context {
            crate::ffi::retrack_context(context.as_ptr());
        }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // `try_lock`: the collector must never block; the lock is only held for
        // pointer-sized moves that cannot trigger a collection.
        if let Ok(refs) = self.refs.try_lock() {
            visit.call(&refs.callback)?;
            visit.call(&refs.args)?;
            visit.call(&refs.context)?;
        }
        match &self.debug {
            Some(debug) => visit.call(&debug.source_traceback),
            None => Ok(()),
        }
    }

    fn clear(&self) {
        let dropped = std::mem::take(&mut *self.refs());
        drop(dropped);
    }
}

/// A callback scheduled with `call_soon` or `call_soon_threadsafe`, and the base class of
/// [`TimerHandle`], as in asyncio.
///
/// No `freelist`: PyO3 0.30 hands recycled objects out without re-tracking them in the
/// garbage collector, so cycles through a reused handle would never be collected
/// (`tests/test_gc.py` catches it).
#[pyclass(module = "ferroloop._ferroloop", frozen, weakref, subclass)]
pub struct Handle {
    pub(crate) core: HandleCore,
}

#[pymethods]
impl Handle {
    /// Cancels the call; a cancelled callback is skipped when its turn comes.
    pub(crate) fn cancel(slf: &Bound<'_, Self>) {
        slf.get().core.cancel(slf.as_any());
    }

    /// True if the call was cancelled.
    fn cancelled(slf: &Bound<'_, Self>) -> bool {
        let core = &slf.get().core;
        if core.thread_safe {
            if let Ok(handle) = slf.cast::<ThreadSafeHandle>() {
                let _running = handle.get().run_lock.acquire(slf.py());
                return core.is_cancelled();
            }
        }
        core.is_cancelled()
    }

    /// The `contextvars.Context` the callback runs in.
    fn get_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.core.context(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.core.repr(py, "Handle", None)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.core.callback(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.core.args(py)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.core.is_cancelled()
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.core.context(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.core.source_traceback(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.core.traverse(&visit)
    }

    fn __clear__(&self) {
        self.core.clear();
    }
}

/// What `call_soon_threadsafe` returns on Python 3.14+, where asyncio made cancelling
/// such a handle from another thread safe (`events._ThreadSafeHandle`): `cancel()` and
/// `cancelled()` called from another thread while the callback runs wait for it to end.
///
/// `isinstance(handle, asyncio.events._ThreadSafeHandle)` holds, as 3.14's tests and
/// code expect, through `__class__` (the protocol `isinstance` falls back on for
/// proxies); `type(handle)` is this class.
#[pyclass(module = "ferroloop._ferroloop", frozen, extends = Handle)]
pub struct ThreadSafeHandle {
    run_lock: RunLock,
}

impl ThreadSafeHandle {
    /// Creates the handle; `core` (marked thread-safe here) becomes its `Handle` part.
    pub(crate) fn create(py: Python<'_>, mut core: HandleCore) -> PyResult<Py<Handle>> {
        core.thread_safe = true;
        let init = PyClassInitializer::from(Handle { core }).add_subclass(ThreadSafeHandle {
            run_lock: RunLock::default(),
        });
        Ok(Bound::new(py, init)?.into_super().unbind())
    }

    /// Takes the handle's lock for running its callback, if `handle` is thread-safe
    /// (another thread's `cancel()` then waits for the callback to end).
    #[inline]
    pub(crate) fn lock_for_run<'a>(handle: &'a Bound<'_, Handle>) -> Option<RunLockGuard<'a>> {
        let handle = handle.cast::<ThreadSafeHandle>().ok()?;
        Some(handle.get().run_lock.acquire(handle.py()))
    }
}

#[pymethods]
impl ThreadSafeHandle {
    #[getter(__class__)]
    fn class(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(THREAD_SAFE_HANDLE_TYPE.get(slf.py())?.clone().unbind())
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        slf.as_super()
            .get()
            .core
            .repr(slf.py(), "_ThreadSafeHandle", None)
    }
}

/// A callback scheduled with `call_later` or `call_at`. Everything but the deadline and
/// the cancellation bookkeeping is inherited from [`Handle`].
#[pyclass(module = "ferroloop._ferroloop", frozen, extends = Handle)]
pub struct TimerHandle {
    when: f64,
    cancel_counter: Arc<AtomicUsize>,
}

impl TimerHandle {
    /// Creates the timer object; `core` becomes its `Handle` part, marked as scheduled.
    pub(crate) fn create(
        py: Python<'_>,
        core: HandleCore,
        when: f64,
        cancel_counter: Arc<AtomicUsize>,
    ) -> PyResult<Bound<'_, TimerHandle>> {
        core.scheduled.store(true, Ordering::Release);
        let init = PyClassInitializer::from(Handle { core }).add_subclass(TimerHandle {
            when,
            cancel_counter,
        });
        Bound::new(py, init)
    }
}

#[pymethods]
impl TimerHandle {
    /// Cancels the call; a cancelled timer never fires.
    fn cancel(slf: &Bound<'_, Self>) {
        let core = &slf.as_super().get().core;
        if core.cancel(slf.as_any()) && core.scheduled.load(Ordering::Acquire) {
            note_cancelled(&slf.get().cancel_counter);
        }
    }

    /// The absolute time (on `loop.time()`'s clock) the callback is scheduled for.
    fn when(&self) -> f64 {
        self.when
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        let when = PyFloat::new(py, slf.get().when).str()?;
        slf.as_super()
            .get()
            .core
            .repr(py, "TimerHandle", Some(format!("when={when}")))
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(slf: &Bound<'_, Self>) -> bool {
        slf.as_super().get().core.scheduled.load(Ordering::Acquire)
    }
}

/// Handles the loop owns alone are not tracked by the garbage collector.
///
/// A program with many pending callbacks (10k queued from another thread, 100k timers)
/// otherwise pays for the collector walking every handle on each young-generation pass,
/// although a handle in a loop queue is reachable from the loop by construction. So a
/// handle is untracked when it enters the ready queue or the timer heap, the loop's own
/// traversal reports the contents of the handles only it holds (refcount 1: the loop is
/// their sole owner, so it may stand in for them), and every way out of the queues goes
/// through [`release_queued`], which tracks the handle again if anyone else still holds
/// it. Handles someone else holds while queued are reported as objects, so what they
/// reference counts as reachable while the loop is alive, which it is.
///
/// The same goes for the handle's context when the handle is its only owner (the copy
/// `call_soon` makes of the current context): 100k callbacks queued from another thread
/// otherwise mean 100k live contexts that every full collection walks, which cost more
/// than the callbacks themselves. It is tracked again when the handle leaves the queue,
/// and in any case before it is freed (`Drop for CallbackRefs`).
pub(crate) fn untrack_queued(handle: &Bound<'_, Handle>) {
    crate::ffi::gc_untrack(handle.as_any());
    handle.get().core.untrack_private_context();
}

/// Hands a handle leaving a loop queue back to the collector (see [`untrack_queued`]).
pub(crate) fn release_queued(py: Python<'_>, handle: Py<Handle>) {
    let bound = handle.bind(py);
    bound.get().core.retrack_context();
    if crate::ffi::refcount(bound.as_ptr()) > 1 {
        crate::ffi::gc_track(bound.as_any());
    }
    drop(handle);
}

/// The loop's traversal of one queued handle (see [`untrack_queued`]).
pub(crate) fn visit_queued(
    handle: &Py<Handle>,
    visit: &PyVisit<'_>,
) -> Result<(), PyTraverseError> {
    let ptr = handle.as_ptr();
    if !crate::ffi::gc_is_tracked(ptr) && crate::ffi::refcount(ptr) == 1 {
        handle.get().core.traverse(visit)
    } else {
        visit.call(handle)
    }
}

/// A timer handle as stored in the loop's timer heap (as its `Handle` part, which is what
/// moves to the ready queue when it is due).
pub(crate) struct ScheduledTimer(pub Py<Handle>);

impl TimerEntry for ScheduledTimer {
    fn is_cancelled(&self) -> bool {
        self.0.get().core.is_cancelled()
    }

    fn mark_unscheduled(&self) {
        self.0.get().core.scheduled.store(false, Ordering::Release);
    }
}
