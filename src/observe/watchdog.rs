//! The blocked-loop watchdog: `loop.set_watchdog(threshold, callback=None)`.
//!
//! While a loop with a watchdog runs, two native threads watch it:
//!
//! - the *monitor* never takes the GIL. Every `threshold / 10` (1 ms to 100 ms) it reads
//!   the loop's [`Marks`]; a run (iteration, handle) seen for longer than the threshold
//!   is a stall. It hands the stall to the reporter and waits up to a grace period
//!   (the threshold, 0.1 s to 1 s) for the reporter to get the GIL. If it does not, the
//!   loop thread is keeping the GIL in native code: the monitor writes that to stderr
//!   itself, with faulthandler's view of the stack where the interpreter allows it
//!   ([`stack::native_dump`]), since no Python code can run to log it.
//! - the *reporter* takes the GIL for each stall, checks that the run is still the one
//!   reported, takes the loop thread's stack ([`stack::python_stack`]) and calls
//!   `ferroloop._observe` to log the warning or call the program's callback; once the
//!   loop moves on, it reports the total.
//!
//! A run's start is known to within half a sampling period: the monitor takes the
//! middle between the sample that first saw it and the one before. The loop thread
//! reads no clock for the watchdog.
//!
//! The threads live while `run_forever` runs (they are joined, with the GIL released,
//! before it returns), so none outlives the loop thread's state or reaches interpreter
//! shutdown.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::{PyTraverseError, PyVisit};

use super::marks::{Marks, Run};
use super::stack;
use crate::py_cache::CachedAttr;

static WATCHDOG_BLOCKED: CachedAttr = CachedAttr::new("ferroloop._observe", "watchdog_blocked");
static WATCHDOG_RESUMED: CachedAttr = CachedAttr::new("ferroloop._observe", "watchdog_resumed");

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `set_watchdog` configured.
struct Config {
    threshold: f64,
    callback: Option<Py<PyAny>>,
}

/// The thread running the loop, recorded by `run_forever`.
#[derive(Clone, Copy)]
struct LoopThread {
    /// `threading.get_ident()` of the thread (the key of `sys._current_frames()`).
    ident: u64,
    /// Its `PyThreadState`, for the native stack dump.
    tstate: usize,
}

/// A loop's watchdog: its configuration and, while the loop runs, its threads.
#[derive(Default)]
pub(crate) struct Watchdog {
    /// What the loop thread publishes (see [`Marks`]).
    pub(crate) marks: Arc<Marks>,
    config: Mutex<Option<Config>>,
    loop_thread: Mutex<Option<LoopThread>>,
    threads: Mutex<Option<Threads>>,
    /// Threads stopped from the reporter itself (a callback calling `set_watchdog`),
    /// joined when the loop stops.
    retired: Mutex<Vec<Threads>>,
}

struct Threads {
    shared: Arc<Shared>,
    monitor: JoinHandle<()>,
    reporter: JoinHandle<()>,
    reporter_id: ThreadId,
    /// The process that started them: after a fork the child has no such threads.
    pid: u32,
}

/// The loop and the program's callback, as the reporter passes them to Python.
type Objects = (Py<PyAny>, Option<Py<PyAny>>);

/// What the monitor and the reporter share.
struct Shared {
    marks: Arc<Marks>,
    threshold: Duration,
    grace: Duration,
    loop_thread: LoopThread,
    /// The loop and the program's callback (taken out, with the GIL, once joined).
    objects: Mutex<Option<Objects>>,
    state: Mutex<State>,
    /// Wakes the monitor (stop, a job taken up) and the reporter (a job, stop).
    changed: Condvar,
    /// The monitor's view: the run it is watching and when it started (estimated).
    view: Mutex<Option<(Run, Instant)>>,
}

#[derive(Default)]
struct State {
    stop: bool,
    monitor_done: bool,
    jobs: VecDeque<Job>,
    next_job: u64,
    /// The last job the reporter got the GIL for.
    taken_up: u64,
}

enum Job {
    Blocked {
        id: u64,
        run: Run,
        start: Instant,
        /// faulthandler's text, when the GIL could not be had in time.
        native: Arc<Mutex<Option<NativeView>>>,
    },
    Resumed {
        id: u64,
        total: Duration,
    },
}

/// What the monitor saw when the loop thread kept the GIL.
struct NativeView {
    stack: Option<String>,
}

impl Job {
    fn id(&self) -> u64 {
        match self {
            Job::Blocked { id, .. } | Job::Resumed { id, .. } => *id,
        }
    }
}

fn threshold_of(value: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
    if value.is_none() {
        return Ok(None);
    }
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(
            "threshold must be a number of seconds or None",
        ));
    }
    let threshold: f64 = value
        .extract()
        .map_err(|_| PyTypeError::new_err("threshold must be a number of seconds or None"))?;
    if threshold.is_nan() || threshold < 0.0 || threshold.is_infinite() {
        return Err(PyValueError::new_err(format!(
            "threshold must be a positive number of seconds, got {threshold}"
        )));
    }
    Ok((threshold > 0.0).then_some(threshold))
}

impl Watchdog {
    /// `set_watchdog(threshold, callback)`: validates, keeps the configuration, and
    /// restarts the threads if the loop is running. A threshold of `None` or 0 turns the
    /// watchdog off.
    pub(crate) fn configure(
        &self,
        event_loop: &Bound<'_, PyAny>,
        threshold: &Bound<'_, PyAny>,
        callback: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let threshold = threshold_of(threshold)?;
        let callback = callback.filter(|c| !c.is_none());
        if let Some(callback) = &callback {
            if !callback.is_callable() {
                return Err(PyTypeError::new_err("callback must be callable or None"));
            }
        }
        let config = threshold.map(|threshold| Config {
            threshold,
            callback: callback.map(Bound::unbind),
        });
        let previous = std::mem::replace(&mut *lock(&self.config), config);
        drop(previous);
        if lock(&self.loop_thread).is_some() {
            self.stop_threads(event_loop.py());
            self.start_threads(event_loop)?;
        }
        Ok(())
    }

    /// The threshold in force, if any.
    pub(crate) fn threshold(&self) -> Option<f64> {
        lock(&self.config).as_ref().map(|c| c.threshold)
    }

    /// `run_forever` begins on this thread: record it, start the threads if configured.
    pub(crate) fn loop_started(&self, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        // SAFETY: the caller holds the GIL, so this thread has a current thread state.
        let tstate = unsafe { ffi::PyThreadState_Get() } as usize;
        // SAFETY: pthread_self has no preconditions.
        let ident = unsafe { libc::pthread_self() } as u64;
        *lock(&self.loop_thread) = Some(LoopThread { ident, tstate });
        self.start_threads(event_loop)
    }

    /// `run_forever` ends: stop and join the threads (the GIL released meanwhile).
    pub(crate) fn loop_stopped(&self, py: Python<'_>) {
        self.stop_threads(py);
        let retired = std::mem::take(&mut *lock(&self.retired));
        for threads in retired {
            join(py, threads);
        }
        *lock(&self.loop_thread) = None;
    }

    fn start_threads(&self, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = event_loop.py();
        let (threshold, callback) = match lock(&self.config).as_ref() {
            Some(config) => (
                config.threshold,
                config.callback.as_ref().map(|c| c.clone_ref(py)),
            ),
            None => return Ok(()),
        };
        let Some(loop_thread) = *lock(&self.loop_thread) else {
            return Ok(());
        };
        // Imported now, on the loop thread, so the reporter never imports while the loop
        // thread may hold the import lock.
        WATCHDOG_BLOCKED.get(py)?;
        WATCHDOG_RESUMED.get(py)?;
        let shared = Arc::new(Shared {
            marks: Arc::clone(&self.marks),
            threshold: Duration::from_secs_f64(threshold),
            grace: Duration::from_secs_f64(threshold.clamp(0.1, 1.0)),
            loop_thread,
            objects: Mutex::new(Some((event_loop.clone().unbind(), callback))),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            view: Mutex::new(None),
        });
        let monitor_shared = Arc::clone(&shared);
        let monitor = std::thread::Builder::new()
            .name("ferroloop-watchdog".into())
            .spawn(move || monitor(&monitor_shared))
            .map_err(crate::errors::os_error)?;
        let reporter_shared = Arc::clone(&shared);
        let reporter = match std::thread::Builder::new()
            .name("ferroloop-watchdog-report".into())
            .spawn(move || reporter(&reporter_shared))
        {
            Ok(reporter) => reporter,
            Err(err) => {
                lock(&shared.state).stop = true;
                shared.changed.notify_all();
                py.detach(|| monitor.join().ok());
                return Err(crate::errors::os_error(err));
            }
        };
        self.marks.set_on(true);
        *lock(&self.threads) = Some(Threads {
            reporter_id: reporter.thread().id(),
            shared,
            monitor,
            reporter,
            pid: std::process::id(),
        });
        Ok(())
    }

    fn stop_threads(&self, py: Python<'_>) {
        let Some(threads) = lock(&self.threads).take() else {
            return;
        };
        self.marks.set_on(false);
        lock(&threads.shared.state).stop = true;
        threads.shared.changed.notify_all();
        if std::thread::current().id() == threads.reporter_id {
            lock(&self.retired).push(threads);
        } else {
            join(py, threads);
        }
    }

    /// The monitor's view for the dump signal: the run in progress and how long it has
    /// run, if a watchdog is watching it.
    pub(crate) fn view<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        dict.set_item("threshold", self.threshold())?;
        let watched = lock(&self.threads)
            .as_ref()
            .and_then(|t| *lock(&t.shared.view));
        let current = self.marks.current();
        let (handle, running_for) = match (current, watched) {
            (Some(run), Some((seen, start))) if run == seen => {
                (Some(run), Some(start.elapsed().as_secs_f64()))
            }
            (current, _) => (current, None),
        };
        // SAFETY: the run was read while holding the GIL, and the loop thread clears the
        // mark before it lets go of the handle, which it needs the GIL for; the handle is
        // therefore alive, and the new reference keeps it so.
        let handle = handle
            .map(|run| unsafe { Bound::from_borrowed_ptr(py, run.handle as *mut ffi::PyObject) });
        dict.set_item("handle", handle)?;
        dict.set_item("running_for", running_for)?;
        dict.set_item("native_stack_available", stack::native_dump_available())?;
        Ok(dict)
    }

    /// Reports the program's callback to the garbage collector.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Ok(config) = self.config.try_lock() {
            if let Some(config) = config.as_ref() {
                visit.call(&config.callback)?;
            }
        }
        Ok(())
    }

    /// Drops the program's callback (the loop's GC clear).
    pub(crate) fn clear(&self) {
        let config = lock(&self.config).take();
        drop(config);
    }
}

fn join(py: Python<'_>, threads: Threads) {
    if threads.pid == std::process::id() {
        py.detach(|| {
            let _ = threads.monitor.join();
            let _ = threads.reporter.join();
        });
    }
    let objects = lock(&threads.shared.objects).take();
    drop(objects);
}

fn midpoint(earlier: Instant, later: Instant) -> Instant {
    earlier + (later - earlier) / 2
}

/// A run the monitor is watching.
struct Stall {
    run: Run,
    start: Instant,
    last_seen: Instant,
    reported: bool,
}

fn monitor(shared: &Shared) {
    let period =
        (shared.threshold / 10).clamp(Duration::from_millis(1), Duration::from_millis(100));
    let mut previous = Instant::now();
    let mut stall: Option<Stall> = None;
    loop {
        {
            let state = lock(&shared.state);
            let (state, _) = shared
                .changed
                .wait_timeout_while(state, period, |s| !s.stop)
                .unwrap_or_else(|e| e.into_inner());
            if state.stop {
                break;
            }
        }
        let now = Instant::now();
        let current = shared.marks.current();
        match (&mut stall, current) {
            (Some(watched), Some(run)) if watched.run == run => {
                watched.last_seen = now;
                if !watched.reported && now - watched.start >= shared.threshold {
                    watched.reported = true;
                    report_blocked(shared, run, watched.start);
                }
            }
            _ => {
                if let Some(ended) = stall.take() {
                    if ended.reported {
                        let end = midpoint(ended.last_seen, now);
                        enqueue_resumed(shared, end - ended.start);
                    }
                }
                stall = current.map(|run| Stall {
                    run,
                    start: midpoint(previous, now),
                    last_seen: now,
                    reported: false,
                });
                *lock(&shared.view) = stall.as_ref().map(|s| (s.run, s.start));
            }
        }
        previous = Instant::now();
    }
    if let Some(ended) = stall {
        if ended.reported {
            enqueue_resumed(shared, ended.start.elapsed());
        }
    }
    lock(&shared.state).monitor_done = true;
    shared.changed.notify_all();
}

fn enqueue(shared: &Shared, make: impl FnOnce(u64) -> Job) -> u64 {
    let mut state = lock(&shared.state);
    state.next_job += 1;
    let id = state.next_job;
    state.jobs.push_back(make(id));
    drop(state);
    shared.changed.notify_all();
    id
}

fn enqueue_resumed(shared: &Shared, total: Duration) {
    enqueue(shared, |id| Job::Resumed { id, total });
}

/// Hands a stall to the reporter; if it cannot get the GIL within the grace period,
/// says so on stderr (no Python code can run to log it).
fn report_blocked(shared: &Shared, run: Run, start: Instant) {
    let native = Arc::new(Mutex::new(None));
    let id = enqueue(shared, |id| Job::Blocked {
        id,
        run,
        start,
        native: Arc::clone(&native),
    });
    let state = lock(&shared.state);
    let (state, timeout) = shared
        .changed
        .wait_timeout_while(state, shared.grace, |s| s.taken_up < id && !s.stop)
        .unwrap_or_else(|e| e.into_inner());
    if !timeout.timed_out() || state.stop {
        return;
    }
    // The reporter is still waiting for the GIL, so the dump below cannot race it.
    drop(state);
    let stack = stack::native_dump(shared.loop_thread.tstate as *mut ffi::PyThreadState);
    let mut message = format!(
        "ferroloop watchdog: the event loop has been blocked in one callback for {:.3} \
         seconds, and the loop thread holds the GIL in native code, so the callback \
         cannot be named until it lets go.\n",
        start.elapsed().as_secs_f64()
    );
    match &stack {
        Some(text) => message.push_str(text),
        None => message.push_str(
            "Its Python stack is not available: this interpreter does not export \
             faulthandler's dump routine (3.13, 3.14).\n",
        ),
    }
    write_stderr(&message);
    *lock(&native) = Some(NativeView { stack });
}

fn write_stderr(message: &str) {
    let mut bytes = message.as_bytes();
    while !bytes.is_empty() {
        // SAFETY: writes from a valid buffer of the given length to descriptor 2.
        let written = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if written <= 0 {
            return;
        }
        bytes = &bytes[written as usize..];
    }
}

fn reporter(shared: &Shared) {
    let mut described: Option<Py<PyAny>> = None;
    loop {
        let job = {
            let state = lock(&shared.state);
            let mut state = shared
                .changed
                .wait_while(state, |s| s.jobs.is_empty() && !s.monitor_done)
                .unwrap_or_else(|e| e.into_inner());
            match state.jobs.pop_front() {
                Some(job) => job,
                None => break,
            }
        };
        Python::attach(|py| {
            {
                let mut state = lock(&shared.state);
                state.taken_up = job.id();
            }
            shared.changed.notify_all();
            let outcome = match job {
                Job::Blocked {
                    run, start, native, ..
                } => blocked(py, shared, run, start, &native).map(|d| described = Some(d)),
                Job::Resumed { total, .. } => {
                    let description = described.take();
                    resumed(py, shared, description, total)
                }
            };
            if let Err(err) = outcome {
                err.write_unraisable(py, None);
            }
        });
    }
    if let Some(described) = described {
        Python::attach(|_py| drop(described));
    }
}

fn loop_and_callback(py: Python<'_>, shared: &Shared) -> Option<(Py<PyAny>, Py<PyAny>)> {
    lock(&shared.objects)
        .as_ref()
        .map(|(event_loop, callback)| {
            (
                event_loop.clone_ref(py),
                callback
                    .as_ref()
                    .map_or_else(|| py.None(), |c| c.clone_ref(py)),
            )
        })
}

fn blocked(
    py: Python<'_>,
    shared: &Shared,
    run: Run,
    start: Instant,
    native: &Mutex<Option<NativeView>>,
) -> PyResult<Py<PyAny>> {
    let still_running = shared.marks.current() == Some(run);
    // SAFETY: the same run was read again with the GIL held: the loop thread is inside
    // that handle's callback, holding a reference to it, and cannot leave it without
    // the GIL (see `marks`); the new reference keeps the handle alive from here on.
    let handle = still_running
        .then(|| unsafe { Bound::from_borrowed_ptr(py, run.handle as *mut ffi::PyObject) });
    let frames = if still_running {
        stack::python_stack(py, shared.loop_thread.ident).unwrap_or(None)
    } else {
        None
    };
    let native = lock(native).take();
    let gil_held = native.is_some();
    let native_stack = native.and_then(|n| n.stack);
    let Some((event_loop, callback)) = loop_and_callback(py, shared) else {
        return Ok(py.None());
    };
    let described = WATCHDOG_BLOCKED.get(py)?.call1((
        event_loop,
        callback,
        handle,
        frames,
        start.elapsed().as_secs_f64(),
        native_stack,
        gil_held,
        shared.loop_thread.ident,
    ))?;
    Ok(described.unbind())
}

fn resumed(
    py: Python<'_>,
    shared: &Shared,
    described: Option<Py<PyAny>>,
    total: Duration,
) -> PyResult<()> {
    let Some((event_loop, callback)) = loop_and_callback(py, shared) else {
        return Ok(());
    };
    WATCHDOG_RESUMED.get(py)?.call1((
        event_loop,
        callback,
        described,
        total.as_secs_f64(),
        shared.loop_thread.ident,
    ))?;
    Ok(())
}
