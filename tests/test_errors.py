"""Bad input and failing callbacks: ferroloop must raise what stock asyncio raises (or report
what stock reports), never crash, and keep running where stock keeps running."""

from __future__ import annotations

import asyncio
import decimal
import fractions
import gc
import inspect
import math
import sys
import threading
import warnings

import pytest

SCHEDULERS = ["call_soon", "call_later", "call_at", "call_soon_threadsafe"]


def _schedule(loop, method, callback, *args):
    lead = {"call_soon": (), "call_later": (0,), "call_at": (loop.time(),)}
    return getattr(loop, method)(*lead.get(method, ()), callback, *args)


async def _coro_fn():
    pass


# --------------------------------------------------------------------------------------
# Non-callables and coroutines given to the call_* methods
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", SCHEDULERS)
def test_debug_mode_rejects_non_callable(loop, method):
    """Debug mode: a non-callable callback raises TypeError('a callable object was expected
    by ...') at scheduling time."""
    loop.set_debug(True)
    with pytest.raises(TypeError, match="a callable object was expected by"):
        _schedule(loop, method, 42)


@pytest.mark.parametrize("method", SCHEDULERS)
@pytest.mark.parametrize("kind", ["coroutine-object", "coroutine-function"])
def test_debug_mode_rejects_coroutines(loop, method, kind):
    """Debug mode: a coroutine object or coroutine function raises
    TypeError('coroutines cannot be used with ...()') at scheduling time."""
    loop.set_debug(True)
    cb = _coro_fn() if kind == "coroutine-object" else _coro_fn
    try:
        with pytest.raises(TypeError, match=r"coroutines cannot be used with"):
            _schedule(loop, method, cb)
    finally:
        if kind == "coroutine-object":
            cb.close()


@pytest.mark.parametrize("method", SCHEDULERS)
@pytest.mark.parametrize("kind", ["non-callable", "coroutine-object"])
def test_non_debug_mode_reports_uncallable_when_run(loop, method, kind):
    """Non-debug mode (stock): scheduling a non-callable or a coroutine object does not raise;
    when the handle runs, the TypeError goes to the exception handler ('Exception in
    callback ...') and the loop keeps running."""
    assert not loop.get_debug()
    cb = 42 if kind == "non-callable" else _coro_fn()
    reports = []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))
    after = []
    try:
        handle = _schedule(loop, method, cb)
        loop.call_later(0.01, after.append, "still-running")
        loop.call_later(0.02, loop.stop)
        loop.run_forever()
    finally:
        if kind == "coroutine-object":
            cb.close()
    assert after == ["still-running"]
    assert len(reports) == 1
    assert isinstance(reports[0]["exception"], TypeError)
    assert reports[0]["message"].startswith("Exception in callback")
    assert reports[0]["handle"] is handle


@pytest.mark.parametrize("method", SCHEDULERS)
def test_non_debug_mode_coroutine_function_is_called_not_awaited(loop, method):
    """Non-debug mode (stock): a coroutine function used as a callback is simply called; the
    resulting coroutine is never awaited (RuntimeWarning when collected), no error is
    reported to the exception handler."""
    assert not loop.get_debug()
    reports = []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _schedule(loop, method, _coro_fn)
        loop.call_later(0.01, loop.stop)
        loop.run_forever()
        gc.collect()
    assert reports == []
    never_awaited = [
        w
        for w in caught
        if issubclass(w.category, RuntimeWarning) and "was never awaited" in str(w.message)
    ]
    assert len(never_awaited) == 1, [str(w.message) for w in caught]


def test_debug_mode_run_in_executor_rejects_bad_callables(loop):
    """Debug mode: run_in_executor(None, non-callable / coroutine function) raises TypeError."""
    loop.set_debug(True)
    with pytest.raises(TypeError, match="a callable object was expected by"):
        loop.run_in_executor(None, 42)
    with pytest.raises(TypeError, match="coroutines cannot be used with"):
        loop.run_in_executor(None, _coro_fn)


# --------------------------------------------------------------------------------------
# Delays and deadlines
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", ["1", b"1", [1], object()], ids=["str", "bytes", "list", "obj"])
def test_call_later_non_number_delay(loop, delay):
    """call_later with a non-number delay raises TypeError (nothing is scheduled)."""
    with pytest.raises(TypeError):
        loop.call_later(delay, print)
    loop.call_soon(loop.stop)
    loop.run_forever()  # the loop is still healthy


@pytest.mark.parametrize(
    "delay",
    [0, True, fractions.Fraction(1, 1000), 0.001],
    ids=["int", "bool", "Fraction", "float"],
)
def test_call_later_accepts_real_numbers(loop, delay):
    """call_later accepts int, bool, Fraction and float delays; when() is time() + delay."""
    before = loop.time()
    h = loop.call_later(delay, print)
    assert before + float(delay) <= h.when() <= loop.time() + float(delay)
    h.cancel()


class _FloatOnly:
    def __float__(self):
        return 0.01


class _IndexOnly:
    def __index__(self):
        return 1


@pytest.mark.parametrize(
    ("delay", "exc_type"),
    [
        (decimal.Decimal("0.01"), TypeError),
        (_FloatOnly(), TypeError),
        (_IndexOnly(), TypeError),
        (10**400, OverflowError),
    ],
    ids=["Decimal", "__float__-only", "__index__-only", "huge-int"],
)
def test_call_later_rejects_what_float_addition_rejects(loop, delay, exc_type):
    """Stock computes ``loop.time() + delay``: a Decimal or an object that merely defines
    __float__/__index__ is a TypeError, an int too large for a float an OverflowError."""
    with pytest.raises(exc_type):
        loop.call_later(delay, print)


def test_call_later_and_call_at_none(loop):
    """call_later(None, ...) and call_at(None, ...) raise TypeError."""
    with pytest.raises(TypeError, match="delay must not be None"):
        loop.call_later(None, print)
    with pytest.raises(TypeError, match="when cannot be None"):
        loop.call_at(None, print)


@pytest.mark.parametrize("method", ["call_later", "call_at"])
def test_infinite_deadline_never_fires(loop, method):
    """A timer at +inf is accepted (when() == inf), never fires, and does not disturb other
    timers; it can be cancelled."""
    fired = []
    h = getattr(loop, method)(math.inf, fired.append, "inf")
    assert h.when() == math.inf
    loop.call_later(0.01, fired.append, "finite")
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert fired == ["finite"]
    h.cancel()
    assert h.cancelled()


@pytest.mark.parametrize("delay", [1e300, sys.float_info.max, 2.0**63, 1e10])
def test_huge_finite_delay_never_fires(loop, delay):
    """A huge finite delay is accepted (when() == time() + delay) and simply does not fire;
    the loop keeps serving other timers (no overflow converting it to a poll timeout)."""
    fired = []
    h = loop.call_later(delay, fired.append, "huge")
    assert h.when() >= delay
    loop.call_later(0.01, fired.append, "finite")
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert fired == ["finite"]


@pytest.mark.parametrize("delay", [-1e300, -sys.float_info.max])
def test_huge_negative_delay_fires_immediately(loop, delay):
    """A huge negative delay fires on the next iteration like any past deadline."""
    fired = []
    loop.call_later(delay, fired.append, "past")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert fired == ["past"]


@pytest.mark.parametrize("method", ["call_later", "call_at"])
def test_negative_infinite_deadline_fires_immediately(loop, method):
    """A timer at -inf is accepted (when() == -inf) and fires on the next iteration."""
    fired = []
    h = getattr(loop, method)(-math.inf, fired.append, "-inf")
    assert h.when() == -math.inf
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert fired == ["-inf"]


@pytest.mark.parametrize("method", ["call_later", "call_at"])
def test_nan_deadline_is_accepted(loop, method):
    """A NaN delay/deadline is accepted (when() is NaN, no exception); cancelling such a timer
    leaves the loop fully functional."""
    h = getattr(loop, method)(math.nan, print, "nan")
    assert math.isnan(h.when())
    h.cancel()
    fired = []
    loop.call_later(0.01, fired.append, "ok")
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert fired == ["ok"]


@pytest.mark.parametrize("method", ["call_later", "call_at"])
def test_nan_deadline_pending_does_not_crash(loop, method):
    """Running with a pending NaN timer: stock 3.11/3.12 fire it on the next iteration, stock
    3.13 raises ValueError out of run_forever (from the selector timeout).  Either outcome is
    accepted; anything else (a panic, a hang, silently never firing) is not."""
    fired = []
    getattr(loop, method)(math.nan, fired.append, "nan")
    safety = loop.call_later(0.05, loop.stop)
    try:
        loop.run_forever()
    except ValueError:
        outcome = "ValueError"
    else:
        outcome = "fired" if fired == ["nan"] else f"not fired: {fired}"
    finally:
        safety.cancel()
    assert outcome in ("fired", "ValueError")
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None


# --------------------------------------------------------------------------------------
# Running / closed state errors
# --------------------------------------------------------------------------------------


def test_run_forever_while_running(loop, loop_kind):
    """run_forever() inside the running loop raises RuntimeError('This event loop is already
    running'); the outer run continues and stays the running loop.  (Stock 3.13.0 has a bug
    that clears the running loop here; that part is not checked on stock 3.13+.)"""
    seen = []

    def nested():
        try:
            loop.run_forever()
        except RuntimeError as exc:
            seen.append(str(exc))
        seen.append(asyncio._get_running_loop() is loop)

    loop.call_soon(nested)
    loop.call_soon(lambda: seen.append(loop.is_running()))
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert seen[0] == "This event loop is already running"
    if not (loop_kind == "asyncio" and sys.version_info >= (3, 13)):
        assert seen[1:] == [True, True]


def test_run_until_complete_while_running(loop):
    """run_until_complete() inside the running loop raises RuntimeError('This event loop is
    already running') and does not disturb the outer run."""
    seen = []

    async def inner():
        return 1

    async def main():
        c = inner()
        try:
            loop.run_until_complete(c)
        except RuntimeError as exc:
            seen.append(str(exc))
        finally:
            c.close()
        await asyncio.sleep(0)
        return asyncio.get_running_loop()

    assert loop.run_until_complete(main()) is loop
    assert seen == ["This event loop is already running"]


def test_running_another_loop_inside_a_running_loop(loop, loop_factory, loop_kind):
    """Running a second loop from inside a running loop raises RuntimeError('Cannot run the
    event loop while another loop is running'); the outer loop stays the running loop.
    (Stock 3.13.0's refused run_forever() clears the running loop, so that attempt comes last
    and the post-condition is not checked on stock 3.13+.)"""
    other = loop_factory()
    seen = []

    async def main():
        for attempt in ("run_until_complete", "run_forever"):
            fut = other.create_future()
            try:
                if attempt == "run_forever":
                    other.run_forever()
                else:
                    other.run_until_complete(fut)
            except RuntimeError as exc:
                seen.append(str(exc))
        seen.append(asyncio._get_running_loop() is loop)

    try:
        loop.run_until_complete(main())
    finally:
        other.close()
    assert seen[:2] == ["Cannot run the event loop while another loop is running"] * 2
    if not (loop_kind == "asyncio" and sys.version_info >= (3, 13)):
        assert seen[2] is True


def test_nested_asyncio_run_and_runner(loop, loop_factory):
    """asyncio.run() and Runner.run() inside a running loop raise RuntimeError."""
    seen = []

    async def inner():
        pass

    async def main():
        c = inner()
        try:
            asyncio.run(c)
        except RuntimeError as exc:
            seen.append(str(exc))
        finally:
            c.close()
        c = inner()
        runner = asyncio.Runner(loop_factory=loop_factory)  # not entered: no loop created
        try:
            runner.run(c)
        except RuntimeError as exc:
            seen.append(str(exc))
        finally:
            c.close()

    loop.run_until_complete(main())
    assert seen == [
        "asyncio.run() cannot be called from a running event loop",
        "Runner.run() cannot be called from a running event loop",
    ]


CLOSED_OPS = {
    "call_soon": lambda lp: lp.call_soon(print),
    "call_later": lambda lp: lp.call_later(1, print),
    "call_at": lambda lp: lp.call_at(lp.time() + 1, print),
    "call_soon_threadsafe": lambda lp: lp.call_soon_threadsafe(print),
    "run_forever": lambda lp: lp.run_forever(),
    "run_in_executor": lambda lp: lp.run_in_executor(None, print),
}


@pytest.mark.parametrize("op", sorted(CLOSED_OPS))
def test_scheduling_on_closed_loop(loop, op):
    """Every scheduling/running method of a closed loop raises RuntimeError('Event loop is
    closed')."""
    loop.close()
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        CLOSED_OPS[op](loop)


@pytest.mark.parametrize("op", ["create_task", "run_until_complete"])
def test_coroutine_on_closed_loop(loop, op):
    """create_task()/run_until_complete() on a closed loop raise RuntimeError('Event loop is
    closed') without starting the coroutine (stock leaves it unstarted, not closed)."""
    loop.close()
    coro = _coro_fn()
    try:
        with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
            getattr(loop, op)(coro)
        assert inspect.getcoroutinestate(coro) in (
            inspect.CORO_CREATED,
            inspect.CORO_CLOSED,
        )
    finally:
        coro.close()


def test_run_until_complete_future_on_closed_loop(loop):
    """run_until_complete(future) on a closed loop raises RuntimeError('Event loop is
    closed')."""
    fut = loop.create_future()
    loop.close()
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        loop.run_until_complete(fut)


# --------------------------------------------------------------------------------------
# Thread checks in debug mode
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_debug_mode_detects_call_from_other_thread(loop, method):
    """Debug mode: call_soon/call_later/call_at from a non-loop thread while the loop runs
    raise RuntimeError('Non-thread-safe operation invoked on an event loop other than the
    current one'); call_soon_threadsafe is fine."""
    loop.set_debug(True)
    errors = []
    done = loop.create_future()

    def worker():
        try:
            _schedule(loop, method, print)
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.call_soon_threadsafe(done.set_result, None)

    thread = threading.Thread(target=worker)
    safety = loop.call_later(10, done.cancel)

    async def main():
        thread.start()
        await done

    loop.run_until_complete(main())
    safety.cancel()
    thread.join()
    assert errors == [
        "Non-thread-safe operation invoked on an event loop other than the current one"
    ]


def test_non_debug_call_soon_from_other_thread_does_not_raise(loop):
    """Non-debug mode: call_soon from another thread is not checked (stock does not raise);
    the callback runs once the loop is woken up."""
    ran = []
    done = loop.create_future()
    results = []

    def worker():
        try:
            results.append(loop.call_soon(ran.append, "from-thread"))
        except Exception as exc:  # pragma: no cover - failure path
            results.append(exc)
        loop.call_soon_threadsafe(lambda: None)
        loop.call_soon_threadsafe(loop.call_soon, done.set_result, None)

    thread = threading.Thread(target=worker)
    safety = loop.call_later(10, done.cancel)

    async def main():
        thread.start()
        await done

    loop.run_until_complete(main())
    safety.cancel()
    thread.join()
    assert not isinstance(results[0], Exception), results
    assert ran == ["from-thread"]


# --------------------------------------------------------------------------------------
# Exceptions raised by callbacks
# --------------------------------------------------------------------------------------


class _Boom(Exception):
    pass


def _raising_callback(tag):
    raise _Boom(tag)


@pytest.mark.parametrize("method", SCHEDULERS)
def test_raising_callback_goes_to_exception_handler(loop, method):
    """A callback raising an Exception calls the exception handler with 'message' ('Exception
    in callback <callback>...'), 'exception' (the raised object) and 'handle' (the handle
    returned at scheduling); later callbacks still run."""
    reports = []
    loop.set_exception_handler(lambda lp, ctx: reports.append((lp, dict(ctx))))
    after = []
    handle = _schedule(loop, method, _raising_callback, "tag")
    loop.call_later(0.01, after.append, "after")
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert after == ["after"]
    assert len(reports) == 1
    lp, ctx = reports[0]
    assert lp is loop
    assert {"message", "exception", "handle"} <= set(ctx)
    assert ctx["message"].startswith("Exception in callback ")
    assert "_raising_callback" in ctx["message"]
    assert isinstance(ctx["exception"], _Boom) and ctx["exception"].args == ("tag",)
    assert ctx["handle"] is handle


@pytest.mark.parametrize("debug", [True, False])
def test_failing_callback_source_traceback_in_debug_mode(loop, debug):
    """Debug mode: the exception handler context also has 'source_traceback', whose last
    frame is the code that scheduled the callback; non-debug mode has no such key."""
    loop.set_debug(debug)
    reports = []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))

    def scheduling_function():
        loop.call_soon(_raising_callback, 1)
        loop.call_later(0, _raising_callback, 2)

    scheduling_function()
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert len(reports) == 2
    for ctx in reports:
        if debug:
            assert ctx["source_traceback"][-1].name == "scheduling_function"
        else:
            assert "source_traceback" not in ctx


def test_raising_callback_logged_by_default_handler(loop, caplog):
    """Without a custom handler the failure is logged (ERROR, 'asyncio' logger) with the
    traceback; run_until_complete still completes."""
    loop.call_soon(_raising_callback, "logged")
    with caplog.at_level("ERROR", logger="asyncio"):
        assert loop.run_until_complete(asyncio.sleep(0.01, "result")) == "result"
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    assert "Exception in callback" in records[0].getMessage()
    assert records[0].exc_info[0] is _Boom


def test_custom_base_exception_in_callback_goes_to_handler(loop):
    """A BaseException subclass other than KeyboardInterrupt/SystemExit raised by a callback
    is also reported to the exception handler (stock catches BaseException)."""

    class MyBase(BaseException):
        pass

    def cb():
        raise MyBase

    reports = []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))
    loop.call_soon(cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(reports) == 1
    assert isinstance(reports[0]["exception"], MyBase)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboardinterrupt_systemexit_propagate_from_run_forever(loop, exc_type):
    """KeyboardInterrupt/SystemExit raised by a callback propagate out of run_forever(); the
    loop is then stopped, not the running loop, and usable: callbacks queued behind the
    failing one are not lost and run on the next run."""
    calls = []

    def raiser():
        raise exc_type()

    loop.call_soon(calls.append, 1)
    loop.call_soon(raiser)
    loop.call_soon(calls.append, 2)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert calls == [1]
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1, 2]
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboardinterrupt_systemexit_propagate_from_run_until_complete(loop, exc_type):
    """KeyboardInterrupt/SystemExit raised by a callback or a coroutine propagate out of
    run_until_complete(); the loop stays usable."""

    def raiser():
        raise exc_type()

    async def waits():
        loop.call_soon(raiser)
        await asyncio.sleep(1)

    with pytest.raises(exc_type):
        loop.run_until_complete(waits())
    assert not loop.is_running()

    async def raises_directly():
        await asyncio.sleep(0)
        raise exc_type()

    with pytest.raises(exc_type):
        loop.run_until_complete(raises_directly())
    assert loop.run_until_complete(asyncio.sleep(0, "usable")) == "usable"
