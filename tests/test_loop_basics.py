"""Core loop API: running, stopping, closing, the clock, scheduling and handles.

Each test runs on stock asyncio (the oracle) and on ferroloop via the ``loop`` fixture.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import os
import sys
import threading
import time

import pytest

PY312 = sys.version_info >= (3, 12)


def _stopper(loop, delay=0.0):
    """Schedule loop.stop() after ``delay`` seconds (as a safety net for run_forever)."""
    return loop.call_later(delay, loop.stop)


# --------------------------------------------------------------------------------------
# Identity / state
# --------------------------------------------------------------------------------------


def test_new_loop_is_abstract_event_loop_and_idle(loop):
    """A new loop is an AbstractEventLoop, not running and not closed."""
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert not loop.is_running()
    assert not loop.is_closed()


def test_is_running_true_only_while_running(loop):
    """is_running() is True inside callbacks and coroutines, False before and after."""
    seen = []
    loop.call_soon(lambda: seen.append(loop.is_running()))

    async def coro():
        seen.append(loop.is_running())

    assert not loop.is_running()
    loop.run_until_complete(coro())
    assert seen == [True, True]
    assert not loop.is_running()


# --------------------------------------------------------------------------------------
# run_until_complete
# --------------------------------------------------------------------------------------


def test_run_until_complete_coroutine(loop):
    """run_until_complete(coroutine) wraps it in a task and returns its result."""

    async def coro(x):
        await asyncio.sleep(0)
        return x * 2

    assert loop.run_until_complete(coro(21)) == 42


def test_run_until_complete_future(loop):
    """run_until_complete(future) returns the future's result once another callback sets it."""
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"
    # An already-completed future returns immediately.
    assert loop.run_until_complete(fut) == "done"


def test_run_until_complete_task(loop):
    """run_until_complete(task) returns the task's result."""

    async def coro():
        return 7

    task = loop.create_task(coro())
    assert loop.run_until_complete(task) == 7
    assert task.done()


def test_run_until_complete_generic_awaitable(loop):
    """Any object with __await__ is accepted (ensure_future wraps it)."""

    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    assert loop.run_until_complete(Awaitable()) == "awaited"


def test_run_until_complete_rejects_non_awaitable(loop):
    """A non-awaitable argument raises TypeError and leaves the loop usable."""
    with pytest.raises(TypeError, match="An asyncio.Future, a coroutine or an awaitable"):
        loop.run_until_complete(42)
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"


def test_run_until_complete_rejects_future_of_other_loop(loop, loop_factory):
    """A future bound to another loop raises ValueError."""
    other = loop_factory()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError, match="different loop"):
            loop.run_until_complete(fut)
    finally:
        other.close()


def test_run_until_complete_propagates_exception_then_usable(loop):
    """An exception raised by the coroutine propagates; the loop can be run again."""

    class Boom(Exception):
        pass

    async def fails():
        await asyncio.sleep(0)
        raise Boom("x")

    with pytest.raises(Boom):
        loop.run_until_complete(fails())
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, 5)) == 5


def test_run_until_complete_stopped_from_inside(loop):
    """stop() before the future completes raises 'Event loop stopped before Future completed.'

    The task is not cancelled: running the loop again completes it.
    """
    resume = loop.create_future()

    async def coro():
        loop.stop()
        await resume
        return "finished"

    task = loop.create_task(coro())
    with pytest.raises(RuntimeError, match=r"^Event loop stopped before Future completed\.$"):
        loop.run_until_complete(task)
    assert not task.done()
    loop.call_soon(resume.set_result, None)
    assert loop.run_until_complete(task) == "finished"


def test_run_until_complete_stopped_by_prior_stop(loop):
    """A stop() scheduled with call_soon before the future completes raises RuntimeError."""
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match=r"^Event loop stopped before Future completed\.$"):
        loop.run_until_complete(fut)
    assert not fut.done()


# --------------------------------------------------------------------------------------
# run_forever / stop / close
# --------------------------------------------------------------------------------------


def test_run_forever_until_stop(loop):
    """run_forever() runs callbacks until stop() is called, then returns None."""
    calls = []
    loop.call_soon(calls.append, 1)
    loop.call_later(0.01, calls.append, 2)
    loop.call_later(0.02, loop.stop)
    assert loop.run_forever() is None
    assert calls == [1, 2]
    assert not loop.is_running()


def test_stop_before_run_forever_runs_one_iteration(loop):
    """stop() before run_forever(): one iteration runs (ready callbacks only), then it returns.

    Callbacks scheduled during that iteration run on the next run_forever().
    """
    calls = []

    def first():
        calls.append("first")
        loop.call_soon(calls.append, "second")

    loop.call_soon(first)
    loop.stop()
    loop.run_forever()
    assert calls == ["first"]
    loop.stop()
    loop.run_forever()
    assert calls == ["first", "second"]


def test_run_forever_can_be_restarted(loop):
    """A stopped loop can be run again, repeatedly."""
    counter = []
    for i in range(3):
        loop.call_soon(counter.append, i)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert counter == [0, 1, 2]


def test_close_marks_closed_and_is_idempotent(loop):
    """close() sets is_closed(); a second close() is a no-op."""
    loop.close()
    assert loop.is_closed()
    loop.close()
    assert loop.is_closed()


def test_close_releases_every_descriptor(loop_factory):
    """A loop that ran (timers, a cross-thread wake-up) and was closed leaves no fd open."""

    def open_fds():
        return set(os.listdir("/proc/self/fd"))

    before = open_fds()
    for _ in range(20):
        lp = loop_factory()
        lp.call_soon_threadsafe(lp.stop)
        lp.run_forever()
        # Scheduled only now: on a busy machine a 1 ms timer made before the first run
        # could fire in that run's only iteration, leaving the second run nothing to stop it.
        lp.call_later(0.001, lp.stop)
        lp.run_forever()
        lp.close()
    assert open_fds() == before


def test_close_running_loop_raises(loop):
    """close() on a running loop raises RuntimeError('Cannot close a running event loop')."""
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(try_close)
    loop.run_forever()
    assert errors == ["Cannot close a running event loop"]
    assert not loop.is_closed()
    assert loop.run_until_complete(asyncio.sleep(0, "alive")) == "alive"


def test_close_shuts_default_executor_down_without_waiting(loop):
    """close() calls default_executor.shutdown(wait=False): it returns while a job still runs."""
    shutdowns = []

    class RecordingExecutor(concurrent.futures.ThreadPoolExecutor):
        def shutdown(self, wait=True, **kwargs):
            shutdowns.append(wait)
            super().shutdown(wait=wait, **kwargs)

    executor = RecordingExecutor(max_workers=1)
    loop.set_default_executor(executor)
    release = threading.Event()
    started = threading.Event()

    def job():
        started.set()
        release.wait(10)
        return "job"

    async def submit():
        return loop.run_in_executor(None, job)

    loop.run_until_complete(submit())
    assert started.wait(10)
    try:
        loop.close()
        # close() returned although the job is still blocked: it did not wait.
        assert not release.is_set()
        assert shutdowns == [False]
    finally:
        release.set()
        executor.shutdown(wait=True)


# --------------------------------------------------------------------------------------
# Clock
# --------------------------------------------------------------------------------------


def test_time_is_time_monotonic(loop):
    """loop.time() reads the time.monotonic() clock, outside and inside callbacks."""
    eps = 1e-6
    for _ in range(100):
        before = time.monotonic()
        now = loop.time()
        after = time.monotonic()
        assert before - eps <= now <= after + eps

    inside = []

    def cb():
        before = time.monotonic()
        now = loop.time()
        after = time.monotonic()
        inside.append((before, now, after))

    loop.call_soon(cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    (before, now, after) = inside[0]
    assert before - eps <= now <= after + eps


def test_time_is_live_inside_a_callback(loop):
    """loop.time() is not cached per iteration: it advances during a callback."""
    deltas = []

    def cb():
        t1 = loop.time()
        end = time.monotonic() + 0.005
        while time.monotonic() < end:
            pass
        deltas.append(loop.time() - t1)
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert deltas[0] >= 0.005 - 1e-6


def test_time_has_full_resolution(loop):
    """loop.time() is not rounded to milliseconds (it has time.monotonic() resolution)."""
    samples = []
    for _ in range(200):
        samples.append(loop.time())
        time.sleep(0.0001)
    sub_ms = [t for t in samples if abs(t * 1000.0 - round(t * 1000.0)) > 1e-4]
    assert len(sub_ms) > len(samples) // 2
    assert len(set(samples)) == len(samples)


# --------------------------------------------------------------------------------------
# call_soon / call_later / call_at
# --------------------------------------------------------------------------------------


def test_call_soon_passes_args_and_runs_fifo(loop):
    """call_soon callbacks run in FIFO order with their positional arguments."""
    calls = []
    for i in range(10):
        loop.call_soon(calls.append, (i, "x"))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [(i, "x") for i in range(10)]


def test_call_soon_rejects_keyword_arguments_other_than_context(loop):
    """call_soon(cb, kw=...) is a TypeError (only ``context`` is accepted)."""
    with pytest.raises(TypeError):
        loop.call_soon(print, "x", end="")


def test_futures_and_tasks_schedule_through_the_loops_call_soon(loop_factory):
    """A loop subclass that overrides call_soon, or a call_soon patched on the instance,
    sees every callback that a Future and a Task schedule."""
    probe = loop_factory()
    probe.close()
    base = type(probe)
    base_call_soon = base.call_soon

    class CountingLoop(base):
        def __init__(self):
            super().__init__()
            self.scheduled = []

        def call_soon(self, callback, *args, context=None):
            self.scheduled.append(callback)
            return super().call_soon(callback, *args, context=context)

    async def main():
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: None)
        asyncio.get_running_loop().call_soon(fut.set_result, 1)
        return await asyncio.create_task(asyncio.sleep(0, result=await fut))

    loop = CountingLoop()
    try:
        assert loop.run_until_complete(main()) == 1
        # The done-callback and the task's steps went through the override.
        assert sum(getattr(cb, "__name__", "") == "<lambda>" for cb in loop.scheduled) == 1
        assert len(loop.scheduled) >= 5
    finally:
        loop.close()

    loop = base()
    patched = []

    def spy(callback, *args, context=None):
        patched.append(callback)
        return base_call_soon(loop, callback, *args, context=context)

    try:
        loop.call_soon = spy
        fut = loop.create_future()
        fut.add_done_callback(lambda f: None)
        fut.set_result(None)
        assert len(patched) == 1
        del loop.call_soon
        fut2 = loop.create_future()
        fut2.add_done_callback(lambda f: None)
        fut2.set_result(None)
        assert len(patched) == 1
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.call_soon(print)


def test_call_later_orders_by_deadline(loop):
    """call_later callbacks fire in deadline order, not scheduling order."""
    calls = []
    loop.call_later(0.03, calls.append, "c")
    loop.call_later(0.01, calls.append, "a")
    loop.call_later(0.02, calls.append, "b")
    loop.call_later(0.0, calls.append, "zero")
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert calls == ["zero", "a", "b", "c"]


def test_call_later_when_and_never_early(loop):
    """TimerHandle.when() is time()+delay, and the callback never runs before when()."""
    fired = []
    before = loop.time()
    h = loop.call_later(0.05, lambda: fired.append(loop.time()))
    after = loop.time()
    assert before + 0.05 <= h.when() <= after + 0.05
    loop.call_later(0.1, loop.stop)
    loop.run_forever()
    assert len(fired) == 1
    # Stock allows firing within the clock resolution (1 ns on Linux); allow 1 ms.
    assert fired[0] >= h.when() - 1e-3


def test_call_at_when_is_exact_and_fires(loop):
    """call_at(when).when() returns exactly ``when``; the callback fires at/after it."""
    fired = []
    when = loop.time() + 0.03
    h = loop.call_at(when, lambda: fired.append(loop.time()))
    assert h.when() == when
    loop.call_at(when + 0.05, loop.stop)
    loop.run_forever()
    assert len(fired) == 1
    assert fired[0] >= when - 1e-3


def test_call_at_in_the_past_fires_next_iteration(loop):
    """A deadline in the past (or a negative delay) fires on the next iteration."""
    calls = []
    loop.call_at(loop.time() - 10, calls.append, "past")
    loop.call_later(-1, calls.append, "negative")
    loop.call_soon(loop.stop)
    # call_soon(stop) runs in the first iteration; past-due timers join that iteration.
    loop.run_forever()
    assert sorted(calls) == ["negative", "past"]


def test_handle_cancel(loop):
    """Handle.cancel(): the callback does not run, cancelled() becomes True, idempotent."""
    calls = []
    h = loop.call_soon(calls.append, "soon")
    th = loop.call_later(0.01, calls.append, "later")
    th2 = loop.call_at(loop.time() + 0.01, calls.append, "at")
    kept = loop.call_soon(calls.append, "kept")
    assert not h.cancelled() and not th.cancelled() and not th2.cancelled()
    for handle in (h, th, th2):
        handle.cancel()
        handle.cancel()
        assert handle.cancelled()
    assert not kept.cancelled()
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert calls == ["kept"]


def test_cancel_from_earlier_callback_in_same_iteration(loop):
    """A handle cancelled by an earlier callback of the same iteration does not run."""
    calls = []
    handles = {}

    def first():
        calls.append("first")
        handles["second"].cancel()

    loop.call_soon(first)
    handles["second"] = loop.call_soon(calls.append, "second")
    loop.call_soon(calls.append, "third")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["first", "third"]


def test_timer_cancel_after_fire_is_harmless(loop):
    """Cancelling a handle after it ran is allowed and marks it cancelled."""
    calls = []
    h = loop.call_later(0, calls.append, 1)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert calls == [1]
    h.cancel()
    assert h.cancelled()


@pytest.mark.skipif(not PY312, reason="Handle.get_context() was added in Python 3.12")
def test_handle_get_context(loop):
    """Handle.get_context() returns the given context, or the copy taken at scheduling."""
    var = contextvars.ContextVar("var")
    ctx = contextvars.copy_context()
    assert loop.call_soon(print, context=ctx).get_context() is ctx
    assert loop.call_later(10, print, context=ctx).get_context() is ctx
    token = var.set("scheduled")
    try:
        h = loop.call_soon(print)
        th = loop.call_later(10, print)
    finally:
        var.reset(token)
    assert h.get_context()[var] == "scheduled"
    assert th.get_context()[var] == "scheduled"
    assert var.get("unset") == "unset"


def test_handle_repr_names_callback(loop):
    """repr() of a handle/timer handle mentions the callback's name."""

    def my_distinct_callback():
        pass

    class Greeter:
        def say_hello(self):
            pass

    assert "my_distinct_callback" in repr(loop.call_soon(my_distinct_callback))
    assert "my_distinct_callback" in repr(loop.call_later(10, my_distinct_callback))
    assert "my_distinct_callback" in repr(loop.call_at(loop.time() + 10, my_distinct_callback))
    assert "say_hello" in repr(loop.call_soon(Greeter().say_hello))


# --------------------------------------------------------------------------------------
# call_soon_threadsafe
# --------------------------------------------------------------------------------------


def test_call_soon_threadsafe_from_loop_thread(loop):
    """call_soon_threadsafe works from the loop's own thread like call_soon (FIFO)."""
    calls = []
    loop.call_soon_threadsafe(calls.append, 1)
    loop.call_soon(calls.append, 2)
    loop.call_soon_threadsafe(calls.append, 3)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1, 2, 3]


def test_call_soon_threadsafe_wakes_sleeping_loop(loop):
    """A callback scheduled from another thread runs promptly while the loop is blocked in
    the poller waiting for a 1-hour timer (latency < 100 ms, best of 3)."""

    def measure():
        result = {}
        fut = loop.create_future()
        scheduled = threading.Event()

        def on_loop(t_sent):
            result["latency"] = time.monotonic() - t_sent
            fut.set_result(None)

        def worker():
            time.sleep(0.1)  # let the loop block in the poller
            t_sent = time.monotonic()
            loop.call_soon_threadsafe(on_loop, t_sent)
            scheduled.set()

        long_timer = loop.call_later(3600, lambda: None)
        safety = loop.call_later(5, fut.cancel)  # the loop must not be stuck forever
        thread = threading.Thread(target=worker)
        thread.start()
        try:
            loop.run_until_complete(fut)
        finally:
            thread.join()
            long_timer.cancel()
            safety.cancel()
        assert scheduled.is_set()
        return result["latency"]

    latencies = []
    for _ in range(3):
        latencies.append(measure())
        if latencies[-1] < 0.1:
            break
    assert min(latencies) < 0.1, latencies


def test_call_soon_threadsafe_many_threads(loop):
    """call_soon_threadsafe is safe under concurrent use: no callback lost or duplicated."""
    n_threads, per_thread = 4, 500
    received = []
    done = loop.create_future()
    total = n_threads * per_thread

    def on_loop(item):
        received.append(item)
        if len(received) == total:
            done.set_result(None)

    def worker(tid):
        for i in range(per_thread):
            loop.call_soon_threadsafe(on_loop, (tid, i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    safety = loop.call_later(20, done.cancel)
    for t in threads:
        t.start()
    loop.run_until_complete(done)
    safety.cancel()
    for t in threads:
        t.join()
    assert sorted(received) == sorted((t, i) for t in range(n_threads) for i in range(per_thread))
    for t in range(n_threads):
        mine = [i for (tid, i) in received if tid == t]
        assert mine == list(range(per_thread)), "per-thread FIFO order is preserved"


def test_call_soon_threadsafe_many_calls_while_not_running(loop):
    """100,000 call_soon_threadsafe() calls on a loop that is not running never block (the
    wake-up channel must not fill up and stall the caller); all callbacks run later, FIFO."""
    n = 100_000
    received = []
    for i in range(n):
        loop.call_soon_threadsafe(received.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert received == list(range(n))


def test_loop_in_background_thread(loop):
    """The classic pattern: run_forever() in a thread; other threads submit work with
    asyncio.run_coroutine_threadsafe() and stop the loop with call_soon_threadsafe(stop)."""
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:

        async def work(x):
            await asyncio.sleep(0.01)
            return x * 2, asyncio.get_running_loop() is loop

        fut = asyncio.run_coroutine_threadsafe(work(21), loop)
        assert fut.result(timeout=10) == (42, True)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    assert not thread.is_alive()
    assert not loop.is_running()


# --------------------------------------------------------------------------------------
# Futures and tasks
# --------------------------------------------------------------------------------------


def test_create_future(loop):
    """create_future() returns a pending asyncio.Future bound to this loop."""
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert not fut.done()


def test_create_task_defaults(loop):
    """create_task(coro) returns an asyncio.Task of this loop named 'Task-<n>'."""

    async def coro():
        return 1

    task = loop.create_task(coro())
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert task.get_name().startswith("Task-")
    assert loop.run_until_complete(task) == 1


def test_create_task_name_and_context(loop):
    """create_task(coro, name=..., context=...) names the task and runs it in ``context``."""
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "from-ctx")

    async def coro():
        await asyncio.sleep(0)
        var_value = var.get()
        var.set("changed-by-task")
        return var_value

    task = loop.create_task(coro(), name="my-task", context=ctx)
    assert task.get_name() == "my-task"
    assert loop.run_until_complete(task) == "from-ctx"
    assert ctx[var] == "changed-by-task"
    assert var.get() == "default"


def test_create_task_rejects_non_coroutine(loop):
    """create_task(non-coroutine) raises TypeError."""
    with pytest.raises(TypeError, match="a coroutine was expected"):
        loop.create_task(42)


# 3.14's create_task(coro, **kwargs) hands every keyword given to the task factory;
# earlier versions pass only context= and apply name= to the task themselves.
FACTORY_GETS_EVERY_KEYWORD = (
    "kwargs" in inspect.signature(asyncio.BaseEventLoop.create_task).parameters
)


def test_task_factory_get_set(loop):
    """get_task_factory() is None by default; set_task_factory() installs a callable called
    as factory(loop, coro) plus the keywords the version passes on."""
    assert loop.get_task_factory() is None
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, sorted(kwargs)))
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def coro():
        return asyncio.current_task().get_name()

    task = loop.create_task(coro(), name="named")
    assert loop.run_until_complete(task) == "named"
    ctx = contextvars.copy_context()
    loop.run_until_complete(loop.create_task(coro(), context=ctx))

    async def via_module_function():
        return await asyncio.create_task(coro(), name="inner")

    assert loop.run_until_complete(via_module_function()) == "inner"
    assert calls[0] == (loop, ["name"] if FACTORY_GETS_EVERY_KEYWORD else [])
    assert calls[1] == (loop, ["context"])
    assert calls[3] == (loop, ["name"] if FACTORY_GETS_EVERY_KEYWORD else [])
    # run_until_complete(coro) and asyncio.create_task() also go through the factory.
    assert len(calls) == 4
    assert all(lp is loop for (lp, _) in calls)

    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    with pytest.raises(TypeError, match="task factory must be a callable or None"):
        loop.set_task_factory(42)


@pytest.mark.skipif(not PY312, reason="asyncio.eager_task_factory is new in Python 3.12")
def test_eager_task_factory(loop):
    """With asyncio.eager_task_factory, create_task() runs the coroutine synchronously up to its
    first suspension; a coroutine that never suspends yields an already-done task."""
    loop.set_task_factory(asyncio.eager_task_factory)
    assert loop.get_task_factory() is asyncio.eager_task_factory
    log = []

    async def never_suspends():
        log.append(("eager", asyncio.current_task() is not None))
        return "sync-result"

    async def suspends():
        log.append("before-await")
        await asyncio.sleep(0)
        log.append("after-await")
        return "async-result"

    async def main():
        t1 = asyncio.create_task(never_suspends())
        log.append("created-1")
        assert t1.done() and t1.result() == "sync-result"
        t2 = loop.create_task(suspends(), name="eager-named")
        log.append("created-2")
        assert not t2.done()
        assert t2.get_name() == "eager-named"
        return await t2

    assert loop.run_until_complete(main()) == "async-result"
    assert log == [("eager", True), "created-1", "before-await", "created-2", "after-await"]


# --------------------------------------------------------------------------------------
# Exception handler API
# --------------------------------------------------------------------------------------


def test_exception_handler_get_set(loop):
    """get/set_exception_handler round-trip; None restores the default; non-callables raise."""
    assert loop.get_exception_handler() is None

    def handler(lp, context):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None
    with pytest.raises(TypeError, match="A callable object or None is expected"):
        loop.set_exception_handler(42)


def test_custom_handler_called_with_loop_and_context(loop):
    """call_exception_handler(ctx) calls handler(loop, ctx) with the same dict contents."""
    calls = []
    loop.set_exception_handler(lambda *args: calls.append(args))
    exc = ValueError("v")
    loop.call_exception_handler({"message": "hello", "exception": exc})
    assert len(calls) == 1
    lp, context = calls[0]
    assert lp is loop
    assert context["message"] == "hello"
    assert context["exception"] is exc


def test_default_exception_handler_logs(loop, caplog):
    """Without a custom handler, call_exception_handler logs an ERROR on the 'asyncio' logger
    with the message and the exception's traceback."""
    with caplog.at_level("ERROR", logger="asyncio"):
        try:
            raise ZeroDivisionError("logged-exception")
        except ZeroDivisionError as exc:
            loop.call_exception_handler({"message": "distinct-message-1", "exception": exc})
        loop.default_exception_handler({"message": "distinct-message-2"})
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 2
    assert records[0].levelname == "ERROR"
    assert "distinct-message-1" in records[0].getMessage()
    assert records[0].exc_info and records[0].exc_info[0] is ZeroDivisionError
    assert "distinct-message-2" in records[1].getMessage()


def test_failing_custom_handler_falls_back_to_default(loop, caplog):
    """If the custom handler raises, the default handler logs 'Unhandled error in exception
    handler' (the error does not propagate)."""

    def bad_handler(lp, context):
        raise RuntimeError("handler failed")

    loop.set_exception_handler(bad_handler)
    with caplog.at_level("ERROR", logger="asyncio"):
        loop.call_exception_handler({"message": "original"})
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any("Unhandled error in exception handler" in m for m in messages), messages


@pytest.mark.skipif(not PY312, reason="3.12+ runs the custom handler in the handle's context")
def test_custom_handler_runs_in_failing_callbacks_context(loop):
    """On 3.12+, the custom exception handler runs in the context of the failing handle."""
    var = contextvars.ContextVar("var", default="default")
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(var.get()))
    ctx = contextvars.copy_context()
    ctx.run(var.set, "callback-context")

    def fail():
        raise ValueError

    loop.call_soon(fail, context=ctx)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["callback-context"]


# --------------------------------------------------------------------------------------
# Debug mode
# --------------------------------------------------------------------------------------


def _expected_default_debug():
    from_env = bool(os.environ.get("PYTHONASYNCIODEBUG"))
    return sys.flags.dev_mode or (not sys.flags.ignore_environment and from_env)


def test_debug_default_and_set(loop):
    """get_debug() defaults to the PYTHONASYNCIODEBUG/dev-mode setting; set_debug() toggles."""
    assert loop.get_debug() == _expected_default_debug()
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_slow_callback_duration_attribute(loop):
    """slow_callback_duration defaults to 0.1 s and is writable."""
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 0.25
    assert loop.slow_callback_duration == 0.25


def _slow_callback():
    time.sleep(0.05)


@pytest.mark.parametrize("debug", [True, False])
def test_slow_callback_warning_only_in_debug(loop, caplog, debug):
    """In debug mode a callback slower than slow_callback_duration logs a WARNING
    'Executing <handle> took N seconds' on the 'asyncio' logger; not in non-debug mode."""
    loop.set_debug(debug)
    loop.slow_callback_duration = 0.01
    with caplog.at_level("WARNING", logger="asyncio"):
        loop.call_soon(_slow_callback)
        loop.call_soon(loop.stop)
        loop.run_forever()
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    slow = [m for m in msgs if "Executing" in m and "took" in m]
    if debug:
        assert len(slow) == 1, msgs
        assert "_slow_callback" in slow[0]
        assert "seconds" in slow[0]
    else:
        assert slow == []


def test_debug_enables_coroutine_origin_tracking_while_running(loop):
    """While a debug-mode loop runs, coroutine origin tracking is on; it is off afterwards."""
    assert sys.get_coroutine_origin_tracking_depth() == 0
    loop.set_debug(True)

    async def depth():
        return sys.get_coroutine_origin_tracking_depth()

    assert loop.run_until_complete(depth()) > 0
    assert sys.get_coroutine_origin_tracking_depth() == 0
    loop.set_debug(False)
    assert loop.run_until_complete(depth()) == 0


def test_runner_debug_true(loop_factory):
    """asyncio.Runner(debug=True, loop_factory=...) runs with get_debug() True."""

    async def main():
        return asyncio.get_running_loop().get_debug()

    with asyncio.Runner(loop_factory=loop_factory, debug=True) as runner:
        assert runner.run(main()) is True
    with asyncio.Runner(loop_factory=loop_factory, debug=False) as runner:
        assert runner.run(main()) is False


@pytest.mark.skipif(not PY312, reason="asyncio.run(loop_factory=...) is new in Python 3.12")
def test_asyncio_run_debug_true(loop_factory):
    """asyncio.run(main, debug=True, loop_factory=...) runs with get_debug() True."""

    async def main():
        return asyncio.get_running_loop().get_debug()

    assert asyncio.run(main(), debug=True, loop_factory=loop_factory) is True


@pytest.mark.parametrize(
    ("env", "python_args"),
    [({"PYTHONASYNCIODEBUG": "1"}, ()), ({}, ("-X", "dev")), ({}, ())],
    ids=["PYTHONASYNCIODEBUG", "dev-mode", "neither"],
)
def test_debug_from_environment(snippet, env, python_args):
    """A new loop is in debug mode iff PYTHONASYNCIODEBUG is set or -X dev is used."""
    proc = snippet.run(
        """
        loop = new_loop()
        print(loop.get_debug())
        loop.close()
        """,
        env=env,
        python_args=python_args,
    )
    assert proc.returncode == 0, proc.stderr
    expected = bool(env) or bool(python_args)
    assert proc.stdout.strip() == str(expected)
