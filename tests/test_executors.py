"""run_in_executor (default pool, ThreadPoolExecutor, ProcessPoolExecutor), asyncio.to_thread,
set_default_executor and shutdown_default_executor.  Stock asyncio is the oracle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import math
import os
import sys
import threading
import time

import pytest

PY312 = sys.version_info >= (3, 12)

var = contextvars.ContextVar("var", default="default")


def _barrier_job(barrier, value):
    """Blocks until ``barrier.parties`` jobs run concurrently (fails if run serially)."""
    barrier.wait(timeout=10)
    return value, threading.get_ident()


def test_default_executor_runs_blocking_functions_concurrently(loop):
    """run_in_executor(None, f, *args) runs blocking functions in worker threads
    concurrently; results come back through asyncio.gather."""
    barrier = threading.Barrier(3)

    async def main():
        futs = [loop.run_in_executor(None, _barrier_job, barrier, i) for i in range(3)]
        assert all(isinstance(f, asyncio.Future) for f in futs)
        return await asyncio.gather(*futs)

    results = loop.run_until_complete(main())
    assert [v for v, _ in results] == [0, 1, 2]
    idents = {ident for _, ident in results}
    assert len(idents) == 3
    assert threading.get_ident() not in idents


def test_default_executor_results_via_wait(loop):
    """Executor futures work with asyncio.wait(); exceptions are propagated to the awaiter."""

    def ok(x):
        time.sleep(0.01)
        return x + 1

    def bad():
        raise ZeroDivisionError("in worker")

    async def main():
        f_ok = loop.run_in_executor(None, ok, 1)
        f_bad = loop.run_in_executor(None, bad)
        done, pending = await asyncio.wait([f_ok, f_bad])
        return f_ok, f_bad, done, pending

    f_ok, f_bad, done, pending = loop.run_until_complete(main())
    assert pending == set()
    assert done == {f_ok, f_bad}
    assert f_ok.result() == 2
    assert isinstance(f_bad.exception(), ZeroDivisionError)


def test_run_in_executor_does_not_propagate_context(loop):
    """Unlike to_thread, run_in_executor does not copy the caller's contextvars."""

    async def main():
        var.set("caller")
        return await loop.run_in_executor(None, var.get)

    assert loop.run_until_complete(main()) == "default"


def test_explicit_thread_pool_executor(loop):
    """run_in_executor(ThreadPoolExecutor, ...) runs on that executor's threads."""
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=2, thread_name_prefix="explicit-pool"
    )
    barrier = threading.Barrier(2)

    def job(i):
        barrier.wait(timeout=10)
        return i, threading.current_thread().name

    async def main():
        return await asyncio.gather(*(loop.run_in_executor(executor, job, i) for i in range(2)))

    try:
        results = loop.run_until_complete(main())
    finally:
        executor.shutdown(wait=True)
    assert [i for i, _ in results] == [0, 1]
    assert all(name.startswith("explicit-pool") for _, name in results)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_process_pool_executor(loop):
    """run_in_executor(ProcessPoolExecutor, ...) runs blocking functions in other processes;
    results (and exceptions) come back via gather and wait."""
    executor = concurrent.futures.ProcessPoolExecutor(max_workers=2)

    async def main():
        pids = await asyncio.gather(*(loop.run_in_executor(executor, os.getpid) for _ in range(4)))
        fact = loop.run_in_executor(executor, math.factorial, 20)
        sleep = loop.run_in_executor(executor, time.sleep, 0.05)
        bad = loop.run_in_executor(executor, math.sqrt, -1)
        done, pending = await asyncio.wait([fact, sleep, bad])
        return pids, fact, sleep, bad, pending

    try:
        pids, fact, sleep, bad, pending = loop.run_until_complete(main())
    finally:
        executor.shutdown(wait=True)
    assert os.getpid() not in pids
    assert pending == set()
    assert fact.result() == math.factorial(20)
    assert sleep.result() is None
    assert isinstance(bad.exception(), ValueError)


def test_to_thread(loop):
    """asyncio.to_thread runs the function in another thread with the caller's contextvars
    and keyword arguments, returning its result."""

    def job(a, *, b):
        return a + b, var.get(), threading.get_ident()

    async def main():
        var.set("copied")
        return await asyncio.to_thread(job, 1, b=2)

    total, value, ident = loop.run_until_complete(main())
    assert total == 3
    assert value == "copied"
    assert ident != threading.get_ident()


def test_set_default_executor(loop):
    """set_default_executor(ThreadPoolExecutor) is used by run_in_executor(None) and
    asyncio.to_thread; other executors are rejected with TypeError."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mydefault")
    loop.set_default_executor(executor)

    def name():
        return threading.current_thread().name

    async def main():
        return await loop.run_in_executor(None, name), await asyncio.to_thread(name)

    try:
        n1, n2 = loop.run_until_complete(main())
    finally:
        executor.shutdown(wait=True)
    assert n1.startswith("mydefault")
    assert n2.startswith("mydefault")

    class NotAThreadPool(concurrent.futures.Executor):
        pass

    with pytest.raises(TypeError, match="executor must be ThreadPoolExecutor instance"):
        loop.set_default_executor(NotAThreadPool())


@pytest.mark.skipif(not PY312, reason="shutdown_default_executor(timeout=) is new in 3.12")
def test_shutdown_default_executor_accepts_timeout(loop):
    """shutdown_default_executor(timeout=...) is accepted and waits for quick jobs."""
    finished = []

    def job():
        time.sleep(0.02)
        finished.append(True)

    async def main():
        loop.run_in_executor(None, job)
        await loop.shutdown_default_executor(timeout=10)
        return list(finished)

    assert loop.run_until_complete(main()) == [True]


def test_shutdown_default_executor_waits_and_forbids_reuse(loop):
    """shutdown_default_executor() waits for running jobs; afterwards run_in_executor(None)
    raises RuntimeError('Executor shutdown has been called')."""
    finished = []

    def job():
        time.sleep(0.05)
        finished.append(True)

    async def main():
        loop.run_in_executor(None, job)
        await asyncio.sleep(0)
        await loop.shutdown_default_executor()
        return list(finished)

    assert loop.run_until_complete(main()) == [True]
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, job)


def test_shutdown_default_executor_without_executor(loop):
    """shutdown_default_executor() with no default executor created is a no-op, but further
    run_in_executor(None) calls are refused."""
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, print)


@pytest.mark.skipif(
    sys.version_info < (3, 13),
    reason="timeout= is new in 3.12, but 3.12 awaits the full shutdown before applying it",
)
def test_shutdown_default_executor_timeout(loop):
    """shutdown_default_executor(timeout=t) gives up after ``t`` seconds with a RuntimeWarning
    when a job is still blocked (3.13+ semantics)."""
    release = threading.Event()
    started = threading.Event()

    def job():
        started.set()
        release.wait(10)

    async def main():
        loop.run_in_executor(None, job)
        while not started.is_set():
            await asyncio.sleep(0.001)
        t0 = loop.time()
        with pytest.warns(RuntimeWarning, match="did not finish"):
            await loop.shutdown_default_executor(timeout=0.1)
        return loop.time() - t0

    try:
        elapsed = loop.run_until_complete(main())
    finally:
        release.set()
    assert 0.1 - 1e-3 <= elapsed < 5


def test_runner_close_waits_for_default_executor(loop_factory):
    """asyncio.Runner/asyncio.run shut the default executor down (waiting) on close."""
    finished = []

    def job():
        time.sleep(0.05)
        finished.append(True)

    async def main():
        asyncio.get_running_loop().run_in_executor(None, job)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    assert finished == [True]
