"""Garbage collection: reference cycles running through handles and through the loop are
collectable (the cyclic GC must see the references a loop/handle holds), and loops support
weak references like stock loops."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import warnings
import weakref

import pytest


class Holder:
    """An object whose bound method is scheduled and which stores the handle/loop."""

    def cb(self, *args):
        pass


def _collect():
    for _ in range(3):
        gc.collect()


def _warm_up(lp):
    """Run (and drop) some handles and timers, so that any handle recycling an
    implementation does is exercised by the test that follows."""
    for i in range(10):
        lp.call_soon(Holder().cb, i)
        lp.call_later(0, Holder().cb, i)
    lp.call_later(0.001, lp.stop)
    lp.run_forever()
    _collect()


@pytest.fixture
def loop(loop):
    """The loop fixture, warmed up with :func:`_warm_up`."""
    _warm_up(loop)
    return loop


def test_cycle_through_executed_handle_is_collected(loop):
    """holder.handle = loop.call_soon(holder.cb): after the callback ran, the cycle
    holder -> handle -> bound method -> holder is freed by gc.collect()."""
    holder = Holder()
    holder.handle = loop.call_soon(holder.cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    ref = weakref.ref(holder)
    del holder
    _collect()
    assert ref() is None


def test_cycle_through_handle_args_is_collected(loop):
    """A cycle through a handle's positional arguments is collectable."""
    holder = Holder()
    holder.handle = loop.call_soon(Holder.cb, holder)
    loop.call_soon(loop.stop)
    loop.run_forever()
    ref = weakref.ref(holder)
    del holder
    _collect()
    assert ref() is None


def test_cycle_through_handle_context_is_collected(loop):
    """A cycle handle -> context -> value -> handle is collectable."""
    var = contextvars.ContextVar("holder")
    holder = Holder()
    ctx = contextvars.copy_context()
    ctx.run(var.set, holder)
    holder.handle = loop.call_soon(Holder.cb, None, context=ctx)
    del ctx
    loop.call_soon(loop.stop)
    loop.run_forever()
    ref = weakref.ref(holder)
    del holder
    _collect()
    assert ref() is None


@pytest.mark.parametrize("method", ["call_later", "call_at"])
def test_cycle_through_cancelled_timer_is_collected(loop, method):
    """A pending timer whose callback is a bound method of an object holding the timer
    handle: after cancel() the object is freed (the loop does not keep it alive)."""
    holder = Holder()
    when = 3600 if method == "call_later" else loop.time() + 3600
    holder.handle = getattr(loop, method)(when, holder.cb)
    holder.handle.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    ref = weakref.ref(holder)
    del holder
    _collect()
    assert ref() is None


@pytest.mark.parametrize("method", ["call_soon", "call_later"])
def test_close_releases_pending_callbacks(loop, method):
    """close() drops pending callbacks and timers: an object referenced only by a pending
    callback (no cycle involved) is freed as soon as the loop is closed."""
    holder = Holder()
    if method == "call_soon":
        loop.call_soon(holder.cb)
    else:
        loop.call_later(3600, holder.cb)
    ref = weakref.ref(holder)
    del holder
    assert ref() is not None  # the pending callback keeps it alive
    loop.close()
    _collect()
    assert ref() is None


@pytest.mark.parametrize("method", ["call_soon", "call_later"])
def test_cycle_through_pending_handle_collected_after_close(loop, method):
    """holder.handle = loop.call_soon/call_later(holder.cb) left pending, then close(): the
    cycle holder -> handle -> bound method -> holder is freed by gc.collect()."""
    holder = Holder()
    if method == "call_soon":
        holder.handle = loop.call_soon(holder.cb)
    else:
        holder.handle = loop.call_later(3600, holder.cb)
    ref = weakref.ref(holder)
    del holder
    loop.close()
    _collect()
    assert ref() is None


@pytest.mark.parametrize("method", ["call_soon", "call_later"])
def test_cycle_through_unclosed_loop_is_collected(loop_factory, method):
    """A cycle loop -> scheduled handle -> bound method -> holder -> loop (the loop stored on
    an object referenced by a scheduled callback) is freed by gc.collect() even though the
    loop was never closed."""
    lp = loop_factory()
    _warm_up(lp)
    lp.run_until_complete(asyncio.sleep(0))
    holder = Holder()
    holder.loop = lp
    if method == "call_soon":
        lp.call_soon(holder.cb)  # still pending: the loop does not run again
    else:
        lp.call_later(3600, holder.cb)
    ref = weakref.ref(holder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del lp, holder
        _collect()
    assert ref() is None


def test_unclosed_loop_that_made_futures_and_tasks_is_collected(loop_factory):
    """A loop keeps what it passes to every Future and Task it creates: that must not keep
    a dropped, never-closed loop alive."""
    lp = loop_factory()
    lp.run_until_complete(lp.create_task(asyncio.sleep(0)))
    lp.create_future().cancel()
    ref = weakref.ref(lp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del lp
        _collect()
    assert ref() is None


def test_loop_supports_weakrefs(loop_factory):
    """Loops are weak-referenceable and hashable (e.g. WeakKeyDictionary keyed by loop); a
    closed, unreferenced loop is freed."""
    lp = loop_factory()
    registry = weakref.WeakKeyDictionary()
    registry[lp] = "state"
    ref = weakref.ref(lp)
    assert ref() is lp
    lp.run_until_complete(asyncio.sleep(0))
    lp.close()
    del lp
    _collect()
    assert ref() is None
    assert len(registry) == 0


def test_task_result_released_after_run(loop):
    """A coroutine's result object is not retained by the loop after run_until_complete."""

    class Result:
        pass

    refs = []

    async def produce():
        r = Result()
        refs.append(weakref.ref(r))
        return r

    loop.run_until_complete(produce())
    _collect()
    assert refs[0]() is None


@pytest.mark.parametrize("method", ["call_soon", "call_later", "cancelled_call_later"])
def test_kept_handle_is_collectable_after_the_loop_lets_go(loop, method):
    """A handle the program keeps is visible to the collector once it left the loop's
    queues (ran, or was dropped as cancelled), so cycles through it are freed."""
    holder = Holder()
    if method == "call_soon":
        holder.handle = loop.call_soon(holder.cb)
    elif method == "call_later":
        holder.handle = loop.call_later(0, holder.cb)
    else:
        holder.handle = loop.call_later(0, holder.cb)
        holder.handle.cancel()
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert gc.is_tracked(holder.handle)
    ref = weakref.ref(holder)
    del holder
    _collect()
    assert ref() is None


def test_many_pending_handles_cycle_through_closed_loop(loop_factory):
    """Pending callbacks whose objects reference the loop: after close() and dropping the
    loop, everything is freed, kept handles included."""
    lp = loop_factory()
    holders = [Holder() for _ in range(300)]
    for i, holder in enumerate(holders):
        holder.loop = lp
        if i % 2:
            holder.handle = lp.call_later(3600, holder.cb)
        else:
            lp.call_soon(holder.cb)
    lp.close()
    refs = [weakref.ref(h) for h in holders]
    del lp, holders, holder
    _collect()
    assert all(r() is None for r in refs)


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_soon_threadsafe"])
def test_cycle_through_copied_context_is_collected(loop, method):
    """A cycle handle -> (the context copied at scheduling) -> value -> handle is freed
    once the callback ran, and contexts obtained from queued handles stay usable."""
    var = contextvars.ContextVar("holder")
    holder = Holder()
    token = var.set(holder)
    try:
        schedule = getattr(loop, method)
        args = (0, holder.cb) if method == "call_later" else (holder.cb,)
        holder.handle = schedule(*args)
    finally:
        var.reset(token)
    kept = holder.handle._context  # get_context() is 3.12+ on stock handles
    del args
    assert kept[var] is holder
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert gc.is_tracked(kept)
    ref = weakref.ref(holder)
    del holder, kept
    _collect()
    assert ref() is None


@pytest.mark.parametrize("drop", ["close", "no_close"])
def test_loop_dropped_with_queued_callbacks_frees_their_contexts(loop_factory, drop):
    """Queued callbacks (their contexts copied at scheduling) released wholesale, by
    close() or by the collector freeing an unclosed loop, free their contexts cleanly;
    contexts the program took from them remain valid and tracked."""
    var = contextvars.ContextVar("marker")
    lp = loop_factory()
    kept = []
    for i in range(2000):
        token = var.set(i)
        handle = lp.call_soon(Holder().cb) if i % 2 else lp.call_later(3600, Holder().cb)
        var.reset(token)
        if i % 100 == 0:
            kept.append(handle._context)
    if drop == "close":
        lp.close()
        del lp
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            lp.self_ref = lp  # Only the collector can free it now.
            del lp
            _collect()
    del handle
    _collect()
    assert [ctx[var] for ctx in kept] == list(range(0, 2000, 100))
    assert all(gc.is_tracked(ctx) for ctx in kept)


@pytest.mark.parametrize("drop", ["refcount", "collector"])
def test_native_core_dropped_with_queued_callbacks(drop):
    """The native loop core freed with callbacks still queued (no close(), no Python
    __del__ to call it: refcount drop, or the collector's clear on a cycle) frees the
    handles and the contexts copied for them without crashing."""
    ferroloop = pytest.importorskip("ferroloop")
    core = ferroloop._ferroloop.LoopCore()
    var = contextvars.ContextVar("marker")
    for i in range(500):
        token = var.set(i)
        core.call_soon(Holder().cb)
        core.call_later(3600, Holder().cb)
        var.reset(token)
    if drop == "collector":
        holder = Holder()
        holder.core = core
        core.call_soon(holder.cb)  # core -> handle -> holder -> core
        del holder
    del core
    _collect()
