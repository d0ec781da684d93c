"""Async generator finalization: the loop installs sys.set_asyncgen_hooks() while running
(as BaseEventLoop does), so abandoned async generators are closed with aclose() on the loop
(by the finalizer hook or by shutdown_asyncgens())."""

from __future__ import annotations

import asyncio
import gc
import sys
import warnings

import pytest


def _make_agen(log):
    async def agen():
        try:
            yield 1
            yield 2
        finally:
            # Awaiting in ``finally`` only works if aclose() is driven by the event loop.
            await asyncio.sleep(0)
            log.append("finalized")

    return agen


def test_hooks_installed_while_running_and_restored(loop):
    """While running, sys.get_asyncgen_hooks() has a firstiter and a finalizer; afterwards the
    previous hooks are restored."""

    def my_firstiter(agen):
        pass

    def my_finalizer(agen):
        pass

    old = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=my_firstiter, finalizer=my_finalizer)
    try:

        async def read_hooks():
            return sys.get_asyncgen_hooks()

        inside = loop.run_until_complete(read_hooks())
        after = sys.get_asyncgen_hooks()
    finally:
        sys.set_asyncgen_hooks(*old)
    assert inside.firstiter is not None and inside.firstiter is not my_firstiter
    assert inside.finalizer is not None and inside.finalizer is not my_finalizer
    assert after.firstiter is my_firstiter
    assert after.finalizer is my_finalizer


def test_shutdown_asyncgens_closes_abandoned_generator(loop):
    """An async generator left suspended mid-iteration (still referenced) is closed via
    aclose() by shutdown_asyncgens(): its ``finally`` (which awaits) runs."""
    log = []
    keep = []
    agen = _make_agen(log)

    async def main():
        g = agen()
        keep.append(g)
        assert await g.__anext__() == 1

    loop.run_until_complete(main())
    assert log == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == ["finalized"]
    assert keep[0].ag_frame is None  # the generator is exhausted/closed


def test_finalizer_hook_closes_garbage_collected_generator(loop):
    """An async generator dropped mid-iteration while the loop runs is finalized on the loop
    (the finalizer hook schedules aclose()), so its awaiting ``finally`` completes."""
    log = []
    agen = _make_agen(log)

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        del g
        gc.collect()
        for _ in range(10):
            await asyncio.sleep(0)
            if log:
                break
        return list(log)

    assert loop.run_until_complete(main()) == ["finalized"]


def test_runner_close_finalizes_generators(loop_factory):
    """asyncio.Runner (like asyncio.run) finalizes pending async generators on close."""
    log = []
    keep = []
    agen = _make_agen(log)

    async def main():
        g = agen()
        keep.append(g)
        await g.__anext__()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
        assert log == []
    assert log == ["finalized"]


def test_firstiter_after_shutdown_warns(loop):
    """Starting an async generator after shutdown_asyncgens() emits a ResourceWarning."""
    loop.run_until_complete(loop.shutdown_asyncgens())

    async def agen():
        yield 1

    async def main():
        g = agen()
        try:
            return await g.__anext__()
        finally:
            await g.aclose()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert loop.run_until_complete(main()) == 1
    relevant = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert any("shutdown_asyncgens" in str(w.message) for w in relevant), caught


def test_shutdown_asyncgens_reports_aclose_errors(loop):
    """An exception raised while closing a generator in shutdown_asyncgens() is reported to
    the exception handler with 'message', 'exception' and 'asyncgen'."""
    reports = []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))
    keep = []

    class CloseError(Exception):
        pass

    async def agen():
        try:
            yield 1
        finally:
            raise CloseError("on close")

    async def main():
        g = agen()
        keep.append(g)
        await g.__anext__()

    loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(reports) == 1
    ctx = reports[0]
    assert "an error occurred during closing of asynchronous generator" in ctx["message"]
    assert isinstance(ctx["exception"], CloseError)
    assert ctx["asyncgen"] is keep[0]


@pytest.mark.parametrize("n", [1, 5])
def test_shutdown_asyncgens_closes_all(loop, n):
    """shutdown_asyncgens() closes every live async generator started on the loop."""
    log = []
    keep = []
    agen = _make_agen(log)

    async def main():
        for _ in range(n):
            g = agen()
            keep.append(g)
            await g.__anext__()

    loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == ["finalized"] * n
