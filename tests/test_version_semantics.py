"""Loop behaviours that Python 3.14 changed, each asserted as the running version's stock
asyncio behaves, on both loops.

- ``create_task(coro, **kwargs)``: 3.14 passes every keyword on to the Task or the task
  factory (``eager_start`` among them); earlier versions accept only ``name`` and
  ``context`` and refuse the rest.
- ``call_soon_threadsafe`` returns a thread-safe handle on 3.14
  (``events._ThreadSafeHandle``): once its callback runs, ``cancel()`` and
  ``cancelled()`` from another thread wait for it to finish.
- ``asyncio.get_event_loop()`` with no current loop: 3.14 raises instead of letting
  the policy create one.
- The policy API is deprecated on 3.14: ``ferroloop.EventLoopPolicy`` and
  ``ferroloop.install()`` warn there as asyncio's own policy names do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import threading
import time
import warnings
from asyncio import events

import pytest

PY314 = sys.version_info >= (3, 14)


async def answer():
    return 42


# --------------------------------------------------------------------------------------
# create_task keywords
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(PY314, reason="3.14 accepts any keyword the Task accepts")
def test_create_task_refuses_unknown_keywords_before_314(loop):
    coro = answer()
    with pytest.raises(TypeError) as err:
        loop.create_task(coro, eager_start=True)
    coro.close()
    assert str(err.value) == (
        "BaseEventLoop.create_task() got an unexpected keyword argument 'eager_start'"
    )


@pytest.mark.skipif(not PY314, reason="eager_start= is new in 3.14")
@pytest.mark.parametrize("eager", [True, False])
def test_create_task_eager_start(loop, eager):
    """eager_start=True runs the coroutine at once while the loop runs; False waits for
    the loop's next iteration."""
    steps = []

    async def record():
        steps.append("ran")
        return "done"

    async def main():
        task = loop.create_task(record(), eager_start=eager, name="eager-or-not")
        started = list(steps)
        result = await task
        return started, task.done(), task.get_name(), result

    started, done, name, result = loop.run_until_complete(main())
    assert started == (["ran"] if eager else [])
    assert (done, name, result) == (True, "eager-or-not", "done")


@pytest.mark.skipif(not PY314, reason="3.14 passes every keyword to the factory")
def test_create_task_keywords_reach_the_task_factory(loop):
    seen = []

    def factory(lp, coro, **kwargs):
        seen.append(sorted(kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)

    async def main():
        await loop.create_task(answer(), eager_start=False, name="n")
        await loop.create_task(answer())

    loop.run_until_complete(main())
    # The run_until_complete() task, then the two created inside.
    assert seen == [[], ["eager_start", "name"], []]


@pytest.mark.skipif(not PY314, reason="3.14 passes every keyword to the factory")
def test_create_task_factory_without_keywords_gets_none(loop):
    """A factory(loop, coro) that takes no keywords still works for create_task(coro):
    nothing is passed that the caller did not give (run_coroutine_threadsafe relies on
    it)."""

    def factory(lp, coro):
        return asyncio.Task(coro, loop=lp)

    loop.set_task_factory(factory)
    assert loop.run_until_complete(loop.create_task(answer())) == 42


def test_create_task_after_close_raises(loop):
    loop.close()
    coro = answer()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.create_task(coro, name="x")
    coro.close()


# --------------------------------------------------------------------------------------
# call_soon_threadsafe handles
# --------------------------------------------------------------------------------------


def test_threadsafe_handle_type(loop):
    handle = loop.call_soon_threadsafe(print)
    if PY314:
        assert isinstance(handle, events._ThreadSafeHandle)
        assert repr(handle).startswith("<_ThreadSafeHandle ")
    else:
        assert not hasattr(events, "_ThreadSafeHandle")
        assert repr(handle).startswith("<Handle ")
    handle.cancel()
    assert handle.cancelled()


def _run_blocking_callback(loop, in_other_thread):
    """Runs a 0.3 s callback scheduled with call_soon_threadsafe while another thread
    calls ``in_other_thread(handle)`` once the callback has started; returns what that
    returned, whether the callback had finished by then, and what the callback saw."""
    started = threading.Event()
    finished = threading.Event()
    outcome = concurrent.futures.Future()

    def callback():
        started.set()
        time.sleep(0.3)  # GIL released: the other thread runs meanwhile
        finished.set()

    handle = loop.call_soon_threadsafe(callback)

    def other():
        started.wait(10)
        try:
            result = in_other_thread(handle)
            outcome.set_result((result, finished.is_set()))
        except BaseException as exc:  # pragma: no cover - reported by the assertion
            outcome.set_exception(exc)
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=other)
    thread.start()
    loop.run_forever()
    thread.join(10)
    return outcome.result(10)


def test_cancel_from_another_thread_while_running(loop):
    """3.14: cancel() from another thread waits until the running callback ends (and
    the handle is then cancelled); before, it returns at once."""
    (result, finished_first) = _run_blocking_callback(loop, lambda h: (h.cancel(), h.cancelled()))
    assert result == (None, True)
    assert finished_first is PY314


def test_cancelled_from_another_thread_while_running(loop):
    (result, finished_first) = _run_blocking_callback(loop, lambda h: h.cancelled())
    assert result is False
    assert finished_first is PY314


def test_callback_cancelling_its_own_handle_runs_to_the_end(loop):
    """The callback itself may cancel its handle (the lock is reentrant): it keeps
    running, and the handle reports cancelled."""
    seen = []
    holder = concurrent.futures.Future()

    def callback():
        handle = holder.result(10)
        handle.cancel()
        seen.append(("after cancel", handle.cancelled()))
        loop.stop()

    def schedule():
        holder.set_result(loop.call_soon_threadsafe(callback))

    thread = threading.Thread(target=schedule)
    thread.start()
    thread.join(10)
    loop.run_forever()
    assert seen == [("after cancel", True)]


def test_cancel_from_another_thread_before_it_runs(loop):
    """A handle cancelled by its scheduling thread before its turn never runs."""
    ran = []
    release = threading.Event()

    def other():
        handle = loop.call_soon_threadsafe(ran.append, "ran")
        handle.cancel()
        release.set()
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(release.wait, 10)  # keeps the loop busy until the handle is cancelled
    thread = threading.Thread(target=other)
    thread.start()
    loop.run_forever()
    thread.join(10)
    if not ran:  # the stop may land in the iteration before; run one more
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert ran == []


def test_threadsafe_callback_exception_goes_to_the_handler(loop):
    """A failing thread-safe callback is reported with its handle, and the loop goes on
    (the handle's lock is released: cancel() afterwards does not block)."""
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def boom():
        raise ValueError("boom")

    handle = loop.call_soon_threadsafe(boom)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert [type(c["exception"]) for c in contexts] == [ValueError]
    assert contexts[0]["handle"] is handle
    done = threading.Event()
    thread = threading.Thread(target=lambda: (handle.cancel(), done.set()))
    thread.start()
    thread.join(10)
    assert done.is_set()


# --------------------------------------------------------------------------------------
# asyncio.get_event_loop() with no loop set
# --------------------------------------------------------------------------------------


GET_EVENT_LOOP_CHILD = """
import asyncio, json, warnings
{install}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        loop = asyncio.get_event_loop()
    except Exception as exc:
        result = {{"raised": type(exc).__name__, "message": str(exc)}}
    else:
        result = {{"loop": type(loop).__name__ == "{loop_type}"}}
        loop.close()
result["warnings"] = [(w.category.__name__, str(w.message)) for w in caught]
print(json.dumps(result))
"""


def test_get_event_loop_without_a_current_loop(snippet_for, loop_kind):
    """In the main thread with no current loop, the policy makes a loop of its kind
    (3.12 and 3.13 warn that there is no current loop); 3.14 raises RuntimeError."""
    if loop_kind == "ferroloop":
        install = (
            "import ferroloop\n"
            "with warnings.catch_warnings():\n"
            "    warnings.simplefilter('ignore', DeprecationWarning)\n"
            "    ferroloop.install()"
        )
        loop_type = "Loop"
    else:
        install = ""
        loop_type = "_UnixSelectorEventLoop"
    code = GET_EVENT_LOOP_CHILD.format(install=install, loop_type=loop_type)
    proc = snippet_for(loop_kind).run(code)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if PY314:
        assert result == {
            "raised": "RuntimeError",
            "message": "There is no current event loop in thread 'MainThread'.",
            "warnings": [],
        }
    elif sys.version_info >= (3, 12):
        assert result == {
            "loop": True,
            "warnings": [["DeprecationWarning", "There is no current event loop"]],
        }
    else:
        assert result == {"loop": True, "warnings": []}


def test_import_and_policy_warnings(run_python):
    """`import ferroloop` warns on no version; on 3.14+ ferroloop.EventLoopPolicy and
    ferroloop.install() warn as asyncio's policy API does."""
    code = (
        "import warnings, json\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import ferroloop\n"
        "    on_import = [str(x.message) for x in w]\n"
        "    del w[:]\n"
        "    cls = ferroloop.EventLoopPolicy\n"
        "    on_access = [(x.category.__name__, str(x.message), x.filename) for x in w]\n"
        "    del w[:]\n"
        "    ferroloop.install()\n"
        "    on_install = [(x.category.__name__, str(x.message), x.filename) for x in w]\n"
        "import asyncio\n"
        "get_policy = getattr(asyncio.events, '_get_event_loop_policy', None)\n"
        "get_policy = get_policy or asyncio.get_event_loop_policy\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore', DeprecationWarning)\n"
        "    same_class = ferroloop.EventLoopPolicy is cls\n"
        "print(json.dumps([on_import, on_access, on_install,\n"
        "    type(get_policy()) is cls, same_class]))\n"
    )
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    on_import, on_access, on_install, installed, same_class = json.loads(proc.stdout)
    assert on_import == []
    assert installed and same_class
    if PY314:
        assert on_access == [
            [
                "DeprecationWarning",
                "'ferroloop.EventLoopPolicy' is deprecated and slated for removal in Python 3.16",
                "<string>",
            ]
        ]
        assert on_install == [
            [
                "DeprecationWarning",
                "'ferroloop.install' is deprecated and slated for removal in Python 3.16",
                "<string>",
            ]
        ]
    else:
        assert on_access == [] and on_install == []


def test_policy_makes_ferroloop_loops():
    import ferroloop

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = ferroloop.EventLoopPolicy()
    loop = policy.new_event_loop()
    try:
        assert type(loop) is ferroloop.Loop
        assert isinstance(
            policy,
            asyncio.events.AbstractEventLoopPolicy
            if not PY314
            else asyncio.events._AbstractEventLoopPolicy,
        )
        assert repr(policy) == "<ferroloop.EventLoopPolicy>"
    finally:
        loop.close()
