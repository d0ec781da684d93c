//! One iteration of the loop, and the loop itself.
//!
//! An iteration follows asyncio's `BaseEventLoop._run_once`: drop cancelled timers,
//! compute the poll timeout (zero if callbacks are ready or the loop is stopping), poll
//! with the GIL released, run Python signal handlers, move due timers to the ready queue,
//! then run exactly the callbacks that were ready at that point.

use std::collections::VecDeque;
use std::time::Duration;

use ferroloop_reactor::{monotonic, Poller};
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;
use std::sync::atomic::Ordering;

use pyo3::types::{PyBytes, PyDict};

use crate::errors::os_error;
use crate::ffi;
use crate::py_cache::{format_callback_source, BASE_EVENTS_MODULE};

use super::handle::{release_queued, CallbackCall, Handle, ThreadSafeHandle};
use super::{clock, IoDriver, LoopCore, SIGNAL_TOKEN};

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: never sleep longer than a day at a time.
const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;

/// Runs iterations until `stop()` is observed after one of them.
pub(crate) fn run_forever(slf: &Bound<'_, LoopCore>) -> PyResult<()> {
    let this = slf.get();
    let io = this.io_driver()?;
    this.stats.run_started();
    let result = this
        .watchdog
        .loop_started(slf.as_any())
        .and_then(|()| loop {
            if let Err(err) = run_once(slf, &io) {
                break Err(err);
            }
            if this.stopping() {
                break Ok(());
            }
        });
    this.watchdog.loop_stopped(slf.py());
    this.stats.run_stopped();
    this.set_stopping(false);
    result
}

/// One full iteration (see the module documentation).
pub(crate) fn run_once(slf: &Bound<'_, LoopCore>, io: &IoDriver) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    this.stats.iterations.add(1);
    let marks = this.watchdog.marks.on();
    if marks {
        this.watchdog.marks.iteration(this.stats.iterations.get());
    }

    let clock_overridden = LoopCore::clock_overridden(slf)?;
    // Announce a possible sleep before looking at the ready queue, so that a concurrent
    // `call_soon_threadsafe` either sees the announcement or is seen by the check.
    io.poller.prepare_sleep();
    let (removed, busy, next_when) = {
        let mut state = this.state();
        let removed = state.timers.tidy();
        let busy = !state.ready.is_empty() || this.stopping();
        (removed, busy, state.timers.peek_when())
    };
    let timeout = match next_when {
        _ if busy => Some(Duration::ZERO),
        None => None,
        Some(when) => {
            let now = clock::now(slf.as_any(), clock_overridden)?;
            let secs = (when - now).clamp(0.0, MAXIMUM_SELECT_TIMEOUT);
            // NaN (a NaN deadline) clamps to NaN: treat it as due now.
            Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO))
        }
    };
    this.stats
        .timers_cancelled_removed
        .add(removed.len() as u64);
    // Cancelled timers are released outside the lock: dropping runs finalizers.
    for timer in removed {
        release_queued(py, timer.0);
    }

    let signal_numbers = if timeout == Some(Duration::ZERO)
        && !io.poller.has_sources()
        && !this.watch_signals.load(Ordering::Acquire)
    {
        // Nothing could be reported: skip the syscall. Python-level signal handlers
        // still run below.
        io.poller.cancel_sleep();
        Vec::new()
    } else {
        poll(py, this, io, timeout)?
    };
    // Run Python-level signal handlers now (a SIGINT's KeyboardInterrupt surfaces here),
    // as the stock loop's interrupted `select()` does.
    py.check_signals()?;
    if !signal_numbers.is_empty() {
        // `add_signal_handler` dispatch, as asyncio's `_process_self_data`.
        let data = PyBytes::new(py, &signal_numbers);
        slf.call_method1(pyo3::intern!(py, "_process_self_data"), (data,))?;
    }

    // A replaced clock is asked on every iteration, as asyncio's `_run_once` does; the
    // native one only when a timer could be due.
    let end_time = if clock_overridden {
        Some(end_time_at(this, clock::now(slf.as_any(), true)?))
    } else {
        None
    };
    let mut batch = {
        let mut state = this.state();
        if !state.timers.is_empty() {
            let end_time = end_time.unwrap_or_else(|| end_time_at(this, monotonic()));
            while let Some(timer) = state.timers.pop_due(end_time) {
                if timer.0.get().core.is_cancelled() {
                    this.stats.timers_cancelled_removed.add(1);
                } else {
                    this.stats.timers_fired.add(1);
                }
                state.ready.push(timer.0);
            }
        }
        state.ready.take_batch()
    };

    // The watchdog's marks are made in a copy of the batch loop of their own, so that
    // without a watchdog the loop pays one flag check per iteration for them.
    let outcome = if marks {
        run_batch::<true>(slf, &mut batch)
    } else {
        run_batch::<false>(slf, &mut batch)
    };
    match outcome {
        Ok(()) => this.state().ready.recycle(batch),
        // KeyboardInterrupt/SystemExit: the rest of this batch still runs later, in
        // order, as with asyncio's deque.
        Err(_) => this.state().ready.requeue_front(batch),
    }
    outcome
}

/// Runs the callbacks of `batch` until it is empty or one raises KeyboardInterrupt or
/// SystemExit (the rest stays in `batch`). `MARKS`: publish each run for the watchdog.
#[inline(always)]
fn run_batch<const MARKS: bool>(
    slf: &Bound<'_, LoopCore>,
    batch: &mut VecDeque<Py<Handle>>,
) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let debug = this.debug();
    let mut ran = 0u64;
    while let Some(item) = batch.pop_front() {
        ran += u64::from(!item.get().core.is_cancelled());
        if MARKS {
            this.watchdog.marks.started(item.as_ptr());
        }
        let outcome = if debug {
            run_handle_debug(slf, &item)
        } else {
            run_handle(slf, &item)
        };
        if MARKS {
            this.watchdog.marks.ended();
        }
        if let Err(err) = outcome {
            this.stats.batch_done(ran, item.bind(py).as_any());
            release_queued(py, item);
            return Err(err);
        }
        if batch.is_empty() {
            this.stats.batch_done(ran, item.bind(py).as_any());
        }
        release_queued(py, item);
    }
    Ok(())
}

/// Timers due before this run now: `now` plus the clock's resolution (3.15: at least one
/// float step, so the bound still grows where the resolution is below it).
fn end_time_at(this: &LoopCore, now: f64) -> f64 {
    if this.version.end_time_ulp {
        now + this.clock_resolution.max(clock::ulp(now))
    } else {
        now + this.clock_resolution
    }
}

/// Waits for I/O with the GIL released, then queues the reader/writer callbacks of the
/// descriptors that are ready (asyncio's `_process_events`). Returns the signal numbers
/// read from the signal pipe.
fn poll(
    py: Python<'_>,
    this: &LoopCore,
    io: &IoDriver,
    timeout: Option<Duration>,
) -> PyResult<Vec<u8>> {
    let mut events = io.events.lock().unwrap_or_else(|e| e.into_inner());
    let poller: &Poller = &io.poller;
    this.stats.polled();
    let events_ref = &mut *events;
    if timeout == Some(Duration::ZERO) {
        // A non-blocking poll: releasing and re-taking the GIL around it would cost
        // more than the syscall, and no other thread could make progress meanwhile.
        poller.wait(events_ref, timeout)
    } else {
        let started = this.stats.poll_started();
        let waited = py.detach(|| poller.wait(events_ref, timeout));
        this.stats.poll_ended(started);
        waited
    }
    .map_err(os_error)?;
    let mut signal_numbers = Vec::new();
    let mut released = Vec::new();
    {
        let mut state = this.state();
        let state = &mut *state;
        let mut reported = 0;
        for ready in events.iter() {
            if ready.token == SIGNAL_TOKEN {
                signal_numbers = io.signal_pipe.drain();
                continue;
            }
            reported += 1;
            state
                .fds
                .ready(py, poller, ready, &mut state.ready, &mut released);
        }
        this.stats.io_events.add(reported);
    }
    // Outside the lock: dropping may run finalizers.
    drop(released);
    Ok(signal_numbers)
}

/// Runs one ready handle; exceptions other than KeyboardInterrupt/SystemExit go to the
/// loop's exception handler, as in `asyncio.Handle._run`.
#[inline]
fn run_handle(slf: &Bound<'_, LoopCore>, item: &Py<Handle>) -> PyResult<()> {
    if item.get().core.is_thread_safe() {
        // Locked for the whole run, error reporting included, as
        // `_ThreadSafeHandle._run`; its cancellation is checked again under the lock.
        let handle = item.bind(slf.py());
        let _running = ThreadSafeHandle::lock_for_run(handle);
        run_unlocked(slf, item)
    } else {
        run_unlocked(slf, item)
    }
}

/// Runs one ready handle whose lock, if it has one, is held.
#[inline]
fn run_unlocked(slf: &Bound<'_, LoopCore>, item: &Py<Handle>) -> PyResult<()> {
    let py = slf.py();
    let Some(call) = item.get().core.call(py) else {
        return Ok(());
    };
    match ffi::run_in_context(
        call.context.bind(py),
        call.callback.bind(py),
        call.args.bind(py),
    ) {
        Ok(()) => Ok(()),
        Err(err) => report_callback_error(slf, item, &call, err),
    }
}

/// Debug mode: track the current handle for the exception handler and log callbacks
/// slower than `slow_callback_duration`, as `BaseEventLoop._run_once` does.
fn run_handle_debug(slf: &Bound<'_, LoopCore>, item: &Py<Handle>) -> PyResult<()> {
    let py = slf.py();
    if item.get().core.is_cancelled() {
        return Ok(());
    }
    let handle = item.bind(py).as_any();
    slf.setattr(pyo3::intern!(py, "_current_handle"), handle)?;
    let started = monotonic();
    let outcome = run_handle(slf, item);
    let elapsed = monotonic() - started;
    let reset = slf.setattr(pyo3::intern!(py, "_current_handle"), py.None());
    outcome?;
    reset?;
    let slow: f64 = slf
        .getattr(pyo3::intern!(py, "slow_callback_duration"))?
        .extract()?;
    if elapsed >= slow {
        let base_events = BASE_EVENTS_MODULE.get(py)?;
        let described = base_events
            .getattr(pyo3::intern!(py, "_format_handle"))?
            .call1((handle,))?;
        base_events
            .getattr(pyo3::intern!(py, "logger"))?
            .call_method1(
                pyo3::intern!(py, "warning"),
                ("Executing %s took %.3f seconds", described, elapsed),
            )?;
    }
    Ok(())
}

fn report_callback_error(
    slf: &Bound<'_, LoopCore>,
    item: &Py<Handle>,
    call: &CallbackCall,
    err: PyErr,
) -> PyResult<()> {
    let py = slf.py();
    if err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py) {
        return Err(err);
    }
    let source = format_callback_source(
        call.callback.bind(py),
        Some(call.args.bind(py).as_any()),
        slf.get().debug(),
    )?;
    let context = PyDict::new(py);
    context.set_item("message", format!("Exception in callback {source}"))?;
    context.set_item("exception", err.value(py))?;
    context.set_item("handle", item.bind(py).as_any())?;
    if let Some(tb) = item.get().core.source_traceback(py) {
        if tb.bind(py).is_truthy()? {
            context.set_item("source_traceback", tb)?;
        }
    }
    slf.call_method1(pyo3::intern!(py, "call_exception_handler"), (context,))?;
    Ok(())
}
