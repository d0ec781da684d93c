//! The loop core: ready queue, timer heap, poller, and the methods on the hot path.
//!
//! `ferroloop.Loop` (Python) inherits from [`LoopCore`] first and from
//! `asyncio.BaseEventLoop` second. Everything that runs per callback (scheduling, the
//! run loop, `time()`, `create_future()`) is native and defined here; everything that
//! runs once per program or is rarely hot (task factories, exception handlers,
//! executors, async-generator hooks, `run_until_complete`) is inherited from
//! `BaseEventLoop`, so its behaviour is the stock behaviour by construction. The few
//! attributes those inherited methods read (`_closed`, `_stopping`, `_debug`) are
//! properties backed by the native state below.

mod clock;
mod fd_callbacks;
pub(crate) mod handle;
mod run;
mod run_lock;
mod schedule;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ferroloop_reactor::{Poller, PollerEvents, ReadyQueue, SignalPipe, TimerHeap};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyWeakrefReference};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::ffi;
use crate::ffi::KwNames;
use crate::net::SocketOperation;
use crate::observe::{LoopStats, Watchdog};
use crate::py_cache::{BASE_EVENT_LOOP, FUTURE_TYPE, TASKS_MODULE};

use clock::ClockOverride;
use fd_callbacks::{fileno, FdCallbacks, Slot};
use handle::{Handle, ScheduledTimer, ThreadSafeHandle, TimerHandle};
use schedule::{deadline, deadline_after, debug_checks, handle_core, DebugChecks};

/// Poller token of the signal wake-up socket. Descriptors use their own number as
/// token, so this must be a value no descriptor can have (it was 0 once, and readiness
/// of fd 0, a program's stdin, was taken for a signal wake-up and never delivered).
const SIGNAL_TOKEN: u64 = u64::MAX - 1;

/// The queues, guarded together: every access is a short, Python-free critical section.
struct LoopState {
    ready: ReadyQueue<Py<Handle>>,
    timers: TimerHeap<ScheduledTimer>,
    fds: FdCallbacks,
}

/// The loop's OS resources. Shared through an `Arc` so the run loop and waking threads
/// can use them without holding a lock while blocked, and `close()` can release the
/// descriptors before the loop object itself is collected.
pub(crate) struct IoDriver {
    poller: Poller,
    signal_pipe: SignalPipe,
    events: Mutex<PollerEvents>,
}

impl IoDriver {
    fn new() -> std::io::Result<IoDriver> {
        let poller = Poller::new()?;
        let signal_pipe = SignalPipe::new()?;
        poller.register_internal(signal_pipe.read_end(), SIGNAL_TOKEN)?;
        Ok(IoDriver {
            poller,
            signal_pipe,
            events: Mutex::new(PollerEvents::default()),
        })
    }
}

/// Native base class of `ferroloop.Loop`.
#[pyclass(module = "ferroloop._ferroloop", subclass, frozen)]
pub struct LoopCore {
    state: Mutex<LoopState>,
    io: Mutex<Option<Arc<IoDriver>>>,
    closed: AtomicBool,
    stopping: AtomicBool,
    debug: AtomicBool,
    /// The timer heap's cancellation counter, handed to every new timer handle.
    timer_cancels: Arc<AtomicUsize>,
    /// `add_signal_handler` handlers exist: their signal numbers arrive through the
    /// signal pipe, so busy iterations must poll it instead of skipping the poll.
    watch_signals: AtomicBool,
    /// `time.get_clock_info('monotonic').resolution`: timers due within it run now.
    clock_resolution: f64,
    /// `{"loop": self}` while the loop is open (see [`LoopCore::loop_keyword`]).
    loop_keyword: Mutex<Option<Py<PyDict>>>,
    /// Whether a program replaced `time()` (see [`clock`]).
    clock_override: ClockOverride,
    /// What differs between the Python versions the loop runs on.
    version: VersionRules,
    /// `stats()`'s counters (see `observe::stats`).
    stats: LoopStats,
    /// The blocked-loop watchdog (see `observe::watchdog`).
    watchdog: Watchdog,
    /// `slow_callback_duration` as the program set it (the stats keep it as a number).
    slow_callback_duration: Mutex<Option<Py<PyAny>>>,
}

/// The behaviours of the loop core that depend on the Python version, decided once.
struct VersionRules {
    /// 3.14+: `call_soon_threadsafe` returns a [`ThreadSafeHandle`].
    thread_safe_handles: bool,
    /// 3.15+: due timers are those before `now + max(resolution, ulp(now))`, so the
    /// bound grows even where the clock's resolution is below a float step.
    end_time_ulp: bool,
}

impl VersionRules {
    fn of(py: Python<'_>) -> Self {
        let version = py.version_info();
        VersionRules {
            thread_safe_handles: version >= (3, 14),
            end_time_ulp: version >= (3, 15),
        }
    }
}

/// Releases the contents of the queues (loop close or GC clear), outside the locks.
fn release_all(
    py: Python<'_>,
    ready: impl IntoIterator<Item = Py<Handle>>,
    timers: impl IntoIterator<Item = ScheduledTimer>,
) {
    for handle in ready {
        handle::release_queued(py, handle);
    }
    for timer in timers {
        handle::release_queued(py, timer.0);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning means a panic while locked; the data is still consistent for our uses
    // (every critical section is a handful of moves), so carry on.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl LoopCore {
    fn state(&self) -> MutexGuard<'_, LoopState> {
        lock(&self.state)
    }

    fn io_driver(&self) -> PyResult<Arc<IoDriver>> {
        lock(&self.io)
            .clone()
            .ok_or_else(|| PyRuntimeError::new_err("Event loop is closed"))
    }

    #[inline]
    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        Ok(())
    }

    /// The loop's debug flag (`get_debug()`).
    #[inline]
    pub(crate) fn debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    #[inline]
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn set_stopping(&self, value: bool) {
        self.stopping.store(value, Ordering::Release);
    }

    fn schedule_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        checks: DebugChecks,
        thread_safe: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let debug = this.debug();
        if debug {
            debug_checks(slf.as_any(), &callback, checks)?;
        }
        let core = handle_core(callback, args, context, debug)?;
        let handle = if thread_safe {
            ThreadSafeHandle::create(py, core)?
        } else {
            Py::new(py, Handle { core })?
        };
        handle::untrack_queued(handle.bind(py));
        this.state().ready.push(handle.clone_ref(py));
        Ok(handle)
    }

    /// `_add_reader`/`_add_writer`/[`LoopCore::add_edge_reader`]: validation as
    /// asyncio's, then the registration.
    fn add_fd_callback(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        slot: Slot,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        let number = fileno(fd)?;
        this.check_closed()?;
        let core = handle_core(callback, args, context, this.debug())?;
        let handle = Py::new(py, Handle { core })?;
        // Allocated before the lock is taken (see `FdCallbacks::add_edge_reader`).
        let weak = match slot {
            Slot::EdgeReader => PyWeakrefReference::new(fd).ok().map(Bound::unbind),
            Slot::Reader | Slot::Writer => None,
        };
        let io = this.io_driver()?;
        // `handle` and `fd` stay referenced here, so nothing the registry drops while
        // the lock is held can be deallocated (and run a finalizer) under it.
        let (replaced, old_fileobj) = {
            let mut state = this.state();
            let fd_number = state.fds.resolve(fd, number)?;
            let handle = handle.clone_ref(py);
            match slot {
                Slot::EdgeReader => {
                    let fds = &mut state.fds;
                    fds.add_edge_reader(py, &io.poller, fd_number, fd, handle, weak)?
                }
                Slot::Reader | Slot::Writer => {
                    state.fds.add(py, &io.poller, fd_number, fd, slot, handle)?
                }
            }
        };
        if let Some(replaced) = replaced {
            Handle::cancel(replaced.bind(py));
        }
        drop(old_fileobj);
        Ok(handle)
    }

    /// `_remove_reader`/`_remove_writer`/[`LoopCore::remove_edge_reader`]: True if a
    /// callback was removed.
    fn remove_fd_callback(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        slot: Slot,
    ) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let number = fileno(fd)?;
        if this.is_closed() {
            return Ok(false);
        }
        let io = this.io_driver()?;
        let (removed, fileobj) = {
            let mut state = this.state();
            let fd_number = state.fds.resolve(fd, number)?;
            state.fds.remove(py, &io.poller, fd_number, slot)
        };
        drop(fileobj);
        Ok(match removed {
            Some(handle) => {
                Handle::cancel(handle.bind(py));
                true
            }
            None => false,
        })
    }

    /// `{"loop": self}`, made once per loop: `asyncio.Future` and `asyncio.Task` take
    /// their loop by keyword and, on 3.11, are called through `tp_call`, so passing the
    /// keyword by name would build this dict anew for every future and task. It holds
    /// the loop, so it is dropped at `close()` (and visited by the GC); `None` then,
    /// and callers pass the keyword by name.
    fn loop_keyword<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let py = slf.py();
        let this = slf.get();
        let mut cached = lock(&this.loop_keyword);
        // The GC empties the dict when it clears a cycle through it.
        if let Some(kwargs) = cached.as_ref().filter(|kwargs| kwargs.bind(py).len() == 1) {
            return Ok(Some(kwargs.bind(py).clone()));
        }
        if this.is_closed() {
            return Ok(None);
        }
        let kwargs = PyDict::new(py);
        kwargs.set_item(pyo3::intern!(py, "loop"), slf)?;
        *cached = Some(kwargs.clone().unbind());
        Ok(Some(kwargs))
    }

    /// What a native `sock_recv`/`sock_recv_into` waits with: `callback()` on readiness
    /// of `sock`, like `_add_reader`, but the descriptor's registration is kept
    /// (edge-triggered) after [`LoopCore::remove_edge_reader`], so the next wait on the
    /// same socket costs no syscall. Callers must have had `EAGAIN` from the kernel
    /// before waiting (see `fd_callbacks`).
    pub(crate) fn add_edge_reader(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
    ) -> PyResult<Py<Handle>> {
        let no_args = PyTuple::empty(slf.py());
        Self::add_fd_callback(slf, sock, callback, no_args, None, Slot::EdgeReader)
    }

    /// Removes `handle`, the edge reader a socket operation installed on `fd`, unless
    /// it was cancelled: then a later operation replaced it, and the reader now
    /// installed is not the caller's to remove.
    pub(crate) fn remove_edge_reader(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        handle: &Py<Handle>,
    ) -> PyResult<()> {
        if handle.get().core.is_cancelled() {
            return Ok(());
        }
        let fd = fd.into_pyobject(slf.py())?.into_any();
        Self::remove_fd_callback(slf, &fd, Slot::EdgeReader).map(drop)
    }

    /// Whether the program replaced `time()`, so the scheduler must ask it (see
    /// [`clock`]).
    #[inline]
    pub(crate) fn clock_overridden(slf: &Bound<'_, Self>) -> PyResult<bool> {
        slf.get()
            .clock_override
            .is_overridden(slf.as_any(), || slf.py().get_type::<LoopCore>())
    }

    /// `self.time()`: the native clock unless the program replaced it.
    fn now(slf: &Bound<'_, Self>) -> PyResult<f64> {
        clock::now(slf.as_any(), Self::clock_overridden(slf)?)
    }

    fn schedule_at(
        slf: &Bound<'_, Self>,
        when: f64,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        method: &'static str,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let debug = this.debug();
        if debug {
            let checks = DebugChecks {
                method,
                check_thread: true,
            };
            debug_checks(slf.as_any(), &callback, checks)?;
        }
        let core = handle_core(callback, args, context, debug)?;
        // Allocated before taking the lock: an allocation can run the garbage collector,
        // and finalizers it runs may schedule callbacks on this very loop.
        let timer = TimerHandle::create(py, core, when, Arc::clone(&this.timer_cancels))?;
        this.stats.timers_scheduled.add(1);
        handle::untrack_queued(timer.as_super());
        let as_handle = timer.as_super().clone().unbind();
        this.state().timers.push(when, ScheduledTimer(as_handle));
        Ok(timer.unbind())
    }
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let io = IoDriver::new().map_err(os_error)?;
        let resolution = rustix::time::clock_getres(rustix::time::ClockId::Monotonic);
        let timers = TimerHeap::new();
        Ok(LoopCore {
            timer_cancels: timers.cancel_counter(),
            state: Mutex::new(LoopState {
                ready: ReadyQueue::new(),
                timers,
                fds: FdCallbacks::default(),
            }),
            io: Mutex::new(Some(Arc::new(io))),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            watch_signals: AtomicBool::new(false),
            clock_resolution: resolution.tv_sec as f64 + resolution.tv_nsec as f64 * 1e-9,
            loop_keyword: Mutex::new(None),
            clock_override: ClockOverride::default(),
            version: VersionRules::of(py),
            stats: LoopStats::new(),
            watchdog: Watchdog::default(),
            slow_callback_duration: Mutex::new(None),
        })
    }

    /// `loop.time`: `time.monotonic()`'s clock, unless a program put its own `time` on
    /// the loop (see [`clock`]).
    #[classattr]
    fn time() -> clock::TimeAttribute {
        clock::TimeAttribute
    }

    /// Schedules `callback(*args)` for the next iteration.
    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let checks = DebugChecks {
            method: "call_soon",
            check_thread: true,
        };
        Self::schedule_soon(slf, callback, args, context, checks, false)
    }

    /// Like `call_soon`, callable from any thread; wakes the loop if it is sleeping. On
    /// 3.14+ the handle's `cancel()` is thread-safe, as there ([`ThreadSafeHandle`]).
    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let checks = DebugChecks {
            method: "call_soon_threadsafe",
            check_thread: false,
        };
        let thread_safe = slf.get().version.thread_safe_handles;
        let handle = Self::schedule_soon(slf, callback, args, context, checks, thread_safe)?;
        slf.get()._write_to_self();
        Ok(handle)
    }

    /// Schedules `callback(*args)` after `delay` seconds.
    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let when = deadline_after(Self::now(slf)?, delay)?;
        Self::schedule_at(slf, when, callback, args, context, "call_at")
    }

    /// Schedules `callback(*args)` at `when` on the `time()` clock.
    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let when = deadline(when)?;
        Self::schedule_at(slf, when, callback, args, context, "call_at")
    }

    /// `asyncio.Future(loop=self)`.
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        static KWNAMES: KwNames = KwNames::new(&["loop"]);
        let py = slf.py();
        let future_type = FUTURE_TYPE.get(py)?;
        match Self::loop_keyword(slf)? {
            Some(kwargs) => future_type.call((), Some(&kwargs)),
            None => ffi::call_with_kwnames(future_type, &[], KWNAMES.get(py)?, &[slf.as_any()]),
        }
    }

    /// Wraps `coro` in an `asyncio.Task` on this loop. Without a task factory, outside
    /// debug mode and with no keywords but `name` and `context`, this is
    /// `tasks.Task(coro, loop=self, name=name, context=context)` done natively; otherwise
    /// asyncio's own `BaseEventLoop.create_task` runs with exactly the keywords given, so
    /// each version's rules hold: 3.14 passes any keyword (`eager_start`, ...) on to the
    /// Task or the task factory, earlier versions refuse unknown ones.
    #[pyo3(signature = (coro, **kwargs))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        static TASK_KWNAMES: KwNames = KwNames::new(&["loop", "name", "context"]);
        let py = slf.py();
        let this = slf.get();
        let mut name = None;
        let mut context = None;
        let mut other_keywords = false;
        if let Some(kwargs) = kwargs {
            for (key, value) in kwargs.iter() {
                match key.cast::<PyString>().map(|k| k.to_cow()) {
                    Ok(Ok(k)) if k == "name" => name = Some(value),
                    Ok(Ok(k)) if k == "context" => context = Some(value),
                    _ => other_keywords = true,
                }
            }
        }
        if other_keywords
            || this.debug()
            || !slf.getattr(pyo3::intern!(py, "_task_factory"))?.is_none()
        {
            let base_create_task = BASE_EVENT_LOOP
                .get(py)?
                .getattr(pyo3::intern!(py, "create_task"))?;
            return base_create_task.call((slf, coro), kwargs);
        }
        this.check_closed()?;
        let task_type = TASKS_MODULE.get(py)?.getattr(pyo3::intern!(py, "Task"))?;
        let none = py.None().into_bound(py);
        let name = name.unwrap_or_else(|| none.clone());
        let context = context.unwrap_or_else(|| none.clone());
        if name.is_none() && context.is_none() {
            if let Some(kwargs) = Self::loop_keyword(slf)? {
                return task_type.call((coro,), Some(&kwargs));
            }
        }
        ffi::call_with_kwnames(
            &task_type,
            &[coro],
            TASK_KWNAMES.get(py)?,
            &[slf.as_any(), &name, &context],
        )
    }

    /// Runs `callback(*args)` on every iteration while `fd` is readable, in `context`
    /// (default: a copy of the current one; 3.15's transports pass theirs); returns the
    /// handle (asyncio's `_add_reader`: the public `add_reader` adds the transport check).
    #[pyo3(signature = (fd, callback, *args, context=None))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::add_fd_callback(slf, fd, callback, args, context, Slot::Reader)
    }

    /// Runs `callback(*args)` on every iteration while `fd` is writable, in `context`;
    /// returns the handle (asyncio's `_add_writer`).
    #[pyo3(signature = (fd, callback, *args, context=None))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::add_fd_callback(slf, fd, callback, args, context, Slot::Writer)
    }

    /// Stops watching `fd` for reading; True if a reader was registered.
    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_fd_callback(slf, fd, Slot::Reader)
    }

    /// Stops watching `fd` for writing; True if a writer was registered.
    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_fd_callback(slf, fd, Slot::Writer)
    }

    /// The `selectors` event mask watched on `fd` (an int or a file object; 0 when
    /// none): what asyncio's transports read from the selector for their `repr()`.
    fn _fd_events(&self, fd: &Bound<'_, PyAny>) -> PyResult<u8> {
        let number = fileno(fd)?;
        let state = self.state();
        Ok(state
            .fds
            .resolve(fd, number)
            .map_or(0, |fd_number| state.fds.events(fd_number)))
    }

    /// `sock_recv(sock, nbytes)`: receive up to `nbytes` from the non-blocking socket
    /// `sock`. Returns an awaitable that behaves as asyncio's coroutine (see
    /// `net::sock_op`).
    fn sock_recv(slf: &Bound<'_, Self>, sock: Py<PyAny>, nbytes: Py<PyAny>) -> SocketOperation {
        SocketOperation::recv(slf.clone().unbind(), sock, nbytes)
    }

    /// `sock_recv_into(sock, buf)`: receive into the writable buffer `buf` from the
    /// non-blocking socket `sock`; the awaitable returns the count received.
    fn sock_recv_into(slf: &Bound<'_, Self>, sock: Py<PyAny>, buf: Py<PyAny>) -> SocketOperation {
        SocketOperation::recv_into(slf.clone().unbind(), sock, buf)
    }

    /// `sock_sendall(sock, data)`: send all of `data` on the non-blocking socket
    /// `sock`. Returns an awaitable that behaves as asyncio's coroutine.
    fn sock_sendall(slf: &Bound<'_, Self>, sock: Py<PyAny>, data: Py<PyAny>) -> SocketOperation {
        SocketOperation::sendall(slf.clone().unbind(), sock, data)
    }

    /// Stops the loop after the current iteration.
    fn stop(&self) {
        self.set_stopping(true);
    }

    /// True once `close()` was called.
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Debug mode flag (read by every `asyncio.Future` created on this loop).
    fn get_debug(&self) -> bool {
        self.debug()
    }

    #[getter(_debug)]
    fn debug_attr(&self) -> bool {
        self.debug()
    }

    #[setter(_debug)]
    fn set_debug_attr(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.debug.store(value.is_truthy()?, Ordering::Relaxed);
        Ok(())
    }

    #[getter(_closed)]
    fn closed_attr(&self) -> bool {
        self.is_closed()
    }

    #[setter(_closed)]
    fn set_closed_attr(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.closed.store(value.is_truthy()?, Ordering::Release);
        Ok(())
    }

    #[getter(_stopping)]
    fn stopping_attr(&self) -> bool {
        self.stopping()
    }

    #[setter(_stopping)]
    fn set_stopping_attr(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.set_stopping(value.is_truthy()?);
        Ok(())
    }

    /// Wakes the loop if it is blocked in the poller (asyncio's self-pipe write).
    fn _write_to_self(&self) {
        if let Some(io) = lock(&self.io).as_ref() {
            io.poller.wake();
        }
    }

    /// A handle that is not scheduled yet (asyncio's `events.Handle(...)`), for callbacks
    /// the loop schedules itself later, such as `add_signal_handler`'s.
    #[pyo3(signature = (callback, args, context=None))]
    fn _new_handle(
        &self,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = callback.py();
        let core = handle_core(callback, args, context, self.debug())?;
        Py::new(py, Handle { core })
    }

    /// Queues an existing handle unless it is cancelled (asyncio's `_add_callback`).
    fn _add_callback(&self, handle: &Bound<'_, Handle>) {
        if !handle.get().core.is_cancelled() {
            self.state().ready.push(handle.clone().unbind());
        }
    }

    /// Whether signal numbers must be read from the signal pipe on every iteration.
    fn _set_signal_watch(&self, enabled: bool) {
        self.watch_signals.store(enabled, Ordering::Release);
    }

    /// The descriptor `run_forever` hands to `signal.set_wakeup_fd`.
    fn _signal_wakeup_fd(&self) -> PyResult<i32> {
        Ok(self.io_driver()?.signal_pipe.write_fd())
    }

    /// The native counters of `loop.stats()` (`ferroloop._observe.stats` adds the
    /// transports, servers and tasks).
    fn _native_stats<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let this = slf.get();
        let cancelled_in_heap = this.state().timers.cancelled_count() as u64;
        // SAFETY: pthread_self has no preconditions.
        let ident = unsafe { libc::pthread_self() } as u64;
        let thread_id = slf.getattr(pyo3::intern!(slf.py(), "_thread_id"))?;
        let on_loop_thread = thread_id.extract::<u64>().is_ok_and(|id| id == ident);
        this.stats
            .to_dict(slf.py(), cancelled_in_heap, on_loop_thread)
    }

    /// Turns the blocked-loop watchdog on (a threshold in seconds) or off (`None`, 0).
    /// With a `callback`, each report is a dict passed to it instead of a log line.
    #[pyo3(signature = (threshold, callback=None))]
    fn set_watchdog(
        slf: &Bound<'_, Self>,
        threshold: &Bound<'_, PyAny>,
        callback: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        slf.get()
            .watchdog
            .configure(slf.as_any(), threshold, callback)
    }

    /// The watchdog's threshold, or `None` when it is off.
    fn get_watchdog(&self) -> Option<f64> {
        self.watchdog.threshold()
    }

    /// What the watchdog sees now: the running handle and for how long it has run.
    fn _watchdog_view<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.watchdog.view(py)
    }

    /// `slow_callback_duration`: debug mode's slow-callback warning threshold, and what
    /// `stats()` counts as a slow callback.
    #[getter]
    fn get_slow_callback_duration(&self, py: Python<'_>) -> Py<PyAny> {
        match lock(&self.slow_callback_duration).as_ref() {
            Some(value) => value.clone_ref(py),
            None => pyo3::types::PyFloat::new(py, 0.1).into_any().unbind(),
        }
    }

    #[setter]
    fn set_slow_callback_duration(&self, value: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let Some(value) = value else {
            return Err(pyo3::exceptions::PyAttributeError::new_err(
                "slow_callback_duration",
            ));
        };
        self.stats
            .set_slow_callback_duration(value.extract::<f64>().unwrap_or(f64::NAN));
        let previous = lock(&self.slow_callback_duration).replace(value.unbind());
        drop(previous);
        Ok(())
    }

    /// One iteration (`BaseEventLoop._run_once`).
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let io = slf.get().io_driver()?;
        run::run_once(slf, &io)
    }

    /// The body of `run_forever`: iterate until stopped. Set-up and tear-down (running
    /// loop, async-generator hooks, signal wake-up fd) are done by the Python caller.
    fn _run_forever_core(slf: &Bound<'_, Self>) -> PyResult<()> {
        run::run_forever(slf)
    }

    /// Releases what `close()` must release: queued callbacks, timers and descriptors.
    fn _close_core(&self, py: Python<'_>) {
        self.closed.store(true, Ordering::Release);
        let (ready, timers, fds) = {
            let mut state = self.state();
            let cancelled = state.timers.cancelled_count() as u64;
            self.stats.timers_cancelled_removed.add(cancelled);
            // The poller goes away with the loop: no need to unregister one by one.
            (
                state.ready.clear(),
                state.timers.clear(),
                state.fds.clear(None),
            )
        };
        let io = lock(&self.io).take();
        let loop_keyword = lock(&self.loop_keyword).take();
        // Outside the locks: dropping handles may run finalizers that call back in.
        release_all(py, ready, timers);
        drop((fds, io, loop_keyword));
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(state) = self.state.try_lock() {
            for handle in state.ready.iter() {
                handle::visit_queued(handle, &visit)?;
            }
            for timer in state.timers.iter() {
                handle::visit_queued(&timer.0, &visit)?;
            }
            state.fds.traverse(&visit)?;
        }
        if let Ok(loop_keyword) = self.loop_keyword.try_lock() {
            visit.call(&*loop_keyword)?;
        }
        self.clock_override.traverse(&visit)?;
        self.watchdog.traverse(&visit)?;
        if let Ok(value) = self.slow_callback_duration.try_lock() {
            visit.call(&*value)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let io = lock(&self.io).clone();
        let (ready, timers, fds) = {
            let mut state = self.state();
            let poller = io.as_ref().map(|io| &io.poller);
            (
                state.ready.clear(),
                state.timers.clear(),
                state.fds.clear(poller),
            )
        };
        let loop_keyword = lock(&self.loop_keyword).take();
        let replaced_time = self.clock_override.take_replacement();
        self.watchdog.clear();
        let slow = lock(&self.slow_callback_duration).take();
        drop((ready, timers, fds, loop_keyword, replaced_time, slow));
    }
}
