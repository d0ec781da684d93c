"""contextvars propagation and the running-loop / current-task introspection API.

Stock asyncio is the oracle: every callback runs in a context (a copy of the scheduling
context unless ``context=`` is given), tasks keep their own context, and
get_running_loop()/current_task()/all_tasks() reflect the loop that runs the code.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

var = contextvars.ContextVar("var", default="default")


def _run_callbacks(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


# --------------------------------------------------------------------------------------
# contextvars
# --------------------------------------------------------------------------------------


def test_call_soon_runs_in_copy_of_scheduling_context(loop):
    """call_soon captures a copy of the current context at scheduling time; writes made by
    the callback do not leak back to the scheduler."""
    seen = []

    def cb():
        seen.append(var.get())
        var.set("written-by-callback")

    token = var.set("at-scheduling")
    try:
        loop.call_soon(cb)
        var.set("changed-after-scheduling")
        _run_callbacks(loop)
        assert var.get() == "changed-after-scheduling"
    finally:
        var.reset(token)
    assert seen == ["at-scheduling"]


def test_each_callback_gets_its_own_context_copy(loop):
    """Two callbacks scheduled from the same context do not see each other's writes."""
    seen = []

    def writer():
        var.set("writer")
        seen.append(("writer", var.get()))

    def reader():
        seen.append(("reader", var.get()))

    loop.call_soon(writer)
    loop.call_soon(reader)
    _run_callbacks(loop)
    assert seen == [("writer", "writer"), ("reader", "default")]


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at", "call_soon_threadsafe"])
def test_explicit_context_is_honoured(loop, method):
    """call_*(..., context=ctx) runs the callback in ``ctx`` itself: it sees ctx's values and
    its writes persist in ctx."""
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    seen = []

    def cb(tag):
        seen.append((tag, var.get()))
        var.set("written")

    args = {
        "call_soon": (),
        "call_later": (0,),
        "call_at": (loop.time(),),
        "call_soon_threadsafe": (),
    }[method]
    getattr(loop, method)(*args, cb, "tag", context=ctx)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert seen == [("tag", "in-ctx")]
    assert ctx[var] == "written"
    assert var.get() == "default"


@pytest.mark.parametrize("method", ["call_later", "call_at"])
def test_timers_capture_context_at_scheduling(loop, method):
    """Timer callbacks run in a copy of the context current when they were scheduled."""
    seen = []
    token = var.set("timer-scheduled")
    try:
        if method == "call_later":
            loop.call_later(0.001, lambda: seen.append(var.get()))
        else:
            loop.call_at(loop.time() + 0.001, lambda: seen.append(var.get()))
    finally:
        var.reset(token)
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert seen == ["timer-scheduled"]


def test_call_soon_threadsafe_captures_calling_threads_context(loop):
    """call_soon_threadsafe from another thread captures that thread's current context."""
    seen = []
    done = loop.create_future()

    def cb():
        seen.append(var.get())
        done.set_result(None)

    def worker():
        var.set("thread-value")
        loop.call_soon_threadsafe(cb)

    thread = threading.Thread(target=worker)
    safety = loop.call_later(10, done.cancel)
    thread.start()
    loop.run_until_complete(done)
    safety.cancel()
    thread.join()
    assert seen == ["thread-value"]


def test_context_restored_after_failing_callback(loop):
    """A callback that raises inside its context does not leave that context active."""
    ctx = contextvars.copy_context()
    ctx.run(var.set, "failing-ctx")
    seen = []
    loop.set_exception_handler(lambda lp, c: None)

    def fail():
        raise ValueError

    loop.call_soon(fail, context=ctx)
    loop.call_soon(lambda: seen.append(var.get()))
    _run_callbacks(loop)
    assert seen == ["default"]
    assert var.get() == "default"


def test_tasks_keep_their_context(loop):
    """A task runs in a copy of the context at creation; it keeps it across awaits; changes
    made by the creator afterwards (or by other tasks) are invisible to it and vice versa."""

    async def child(name):
        seen = [var.get()]
        var.set(name)
        await asyncio.sleep(0)
        seen.append(var.get())
        await asyncio.sleep(0.001)
        seen.append(var.get())
        return seen

    async def main():
        var.set("parent")
        t1 = asyncio.create_task(child("one"))
        var.set("parent-changed")
        t2 = asyncio.create_task(child("two"))
        r1, r2 = await asyncio.gather(t1, t2)
        return r1, r2, var.get()

    r1, r2, parent_after = loop.run_until_complete(main())
    assert r1 == ["parent", "one", "one"]
    assert r2 == ["parent-changed", "two", "two"]
    assert parent_after == "parent-changed"
    assert var.get() == "default"


def test_future_done_callbacks_run_in_registration_context(loop):
    """Future.add_done_callback (which schedules via call_soon(..., context=...)) runs the
    callback in the context current at registration."""
    fut = loop.create_future()
    seen = []
    token = var.set("registered")
    try:
        fut.add_done_callback(lambda f: seen.append(var.get()))
    finally:
        var.reset(token)
    loop.call_soon(fut.set_result, None)
    loop.run_until_complete(fut)
    _run_callbacks(loop)
    assert seen == ["registered"]


# --------------------------------------------------------------------------------------
# Running loop, current task, all tasks
# --------------------------------------------------------------------------------------


def test_running_loop_visible_in_callbacks_and_tasks(loop):
    """get_running_loop()/get_event_loop() return the loop inside callbacks and coroutines."""
    seen = []
    loop.call_soon(lambda: seen.append(asyncio.get_running_loop()))
    loop.call_soon(lambda: seen.append(asyncio.get_event_loop()))

    async def coro():
        seen.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        seen.append(asyncio.get_event_loop())

    loop.run_until_complete(coro())
    assert len(seen) == 4
    assert all(lp is loop for lp in seen)


def test_no_running_loop_outside(loop):
    """Before and after running, there is no running loop: get_running_loop() and
    asyncio.create_task() raise RuntimeError('no running event loop')."""
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio.get_running_loop()
    loop.run_until_complete(asyncio.sleep(0))
    assert asyncio._get_running_loop() is None
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio.get_running_loop()

    async def coro():
        pass

    c = coro()
    try:
        with pytest.raises(RuntimeError, match="no running event loop"):
            asyncio.create_task(c)
    finally:
        c.close()


def test_current_task_in_callbacks_and_tasks(loop):
    """current_task() is None in plain callbacks and the running Task inside a coroutine;
    current_task(loop) is None when the loop is not running."""
    seen = {}
    loop.call_soon(lambda: seen.__setitem__("callback", asyncio.current_task()))

    async def coro():
        seen["task-before"] = asyncio.current_task()
        await asyncio.sleep(0)
        seen["task-after"] = asyncio.current_task()

    task = loop.create_task(coro())
    loop.run_until_complete(task)
    assert seen["callback"] is None
    assert seen["task-before"] is task
    assert seen["task-after"] is task
    assert asyncio.current_task(loop) is None


def test_all_tasks(loop):
    """all_tasks() inside the loop (callback or task) returns the pending tasks of that loop;
    all_tasks(loop) works from outside; finished tasks are not included."""
    release = loop.create_future()

    async def waiter():
        await release

    async def quick():
        return 1

    t1 = loop.create_task(waiter(), name="waiter")
    t2 = loop.create_task(quick(), name="quick")
    assert asyncio.all_tasks(loop) == {t1, t2}
    seen = {}

    def in_callback():
        seen["callback"] = asyncio.all_tasks()

    async def main():
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen["task"] = asyncio.all_tasks()
        loop.call_soon(in_callback)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        release.set_result(None)

    main_task = loop.create_task(main())
    loop.run_until_complete(main_task)
    assert seen["task"] == {t1, main_task}
    assert seen["callback"] == {t1, main_task}
    loop.run_until_complete(t1)
    assert asyncio.all_tasks(loop) == set()


def test_running_loop_is_per_thread(loop, loop_factory):
    """A loop running in another thread is that thread's running loop only; the main thread
    can run its own loop at the same time."""
    started = threading.Event()
    seen = {}
    other = loop_factory()

    def thread_main():
        async def coro():
            seen["thread"] = asyncio.get_running_loop()
            started.set()
            await asyncio.sleep(0.05)

        other.run_until_complete(coro())

    thread = threading.Thread(target=thread_main)
    thread.start()
    try:
        assert started.wait(10)
        assert asyncio._get_running_loop() is None

        async def main_coro():
            return asyncio.get_running_loop()

        assert loop.run_until_complete(main_coro()) is loop
    finally:
        thread.join()
        other.close()
    assert seen["thread"] is other
