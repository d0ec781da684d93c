"""Ctrl-C (SIGINT) delivery to an idle loop, Unix signal handlers, and os.fork().

Ctrl-C and fork scenarios run in a child interpreter (``snippet`` fixture) on the loop kind
under test; stock asyncio is the oracle for exit status, traceback and latency.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import warnings

import pytest

PY312 = sys.version_info >= (3, 12)
SIGINT_BOUND = 0.1  # the bound: KeyboardInterrupt within 100 ms
ATTEMPTS = 3  # best of 3


def _readline(proc, timeout=20.0) -> str:
    """Read one stdout line from ``proc`` or kill it and fail after ``timeout`` seconds."""
    box = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child produced no line within {timeout}s; stderr:\n{err}")
    return box[0]


def _interrupt(snippet, code):
    """Start ``code`` (which prints 'ready' once idle), wait until it is blocked in the
    poller, send SIGINT, and return (proc, stdout, stderr, sent_at)."""
    proc = snippet.popen(code)
    try:
        line = _readline(proc)
        assert line.strip() == "ready", line
        time.sleep(0.2)  # let the loop enter the poller
        sent_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc, out, err, sent_at


def _stamp(out: str, tag: str) -> float:
    for line in out.splitlines():
        if line.startswith(tag + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {tag!r} line in child output: {out!r}")


RUNNER_SLEEP = """
import time

async def main():
    print("ready", flush=True)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        print("cancelled", time.monotonic(), flush=True)
        raise

run(main())
print("not reached", flush=True)
"""


def test_sigint_cancels_main_task_and_raises_keyboardinterrupt(snippet):
    """asyncio.Runner (asyncio.run) on a loop idle in ``await asyncio.sleep(3600)``: SIGINT
    cancels the main task within 100 ms (best of 3), and the process dies with the
    KeyboardInterrupt traceback and exit status -SIGINT, as on stock."""
    latencies = []
    for _ in range(ATTEMPTS):
        proc, out, err, sent_at = _interrupt(snippet, RUNNER_SLEEP)
        assert proc.returncode == -signal.SIGINT, (proc.returncode, err)
        assert err.rstrip().splitlines()[-1] == "KeyboardInterrupt", err
        assert "Traceback (most recent call last)" in err
        assert "not reached" not in out
        latencies.append(_stamp(out, "cancelled") - sent_at)
        if latencies[-1] < SIGINT_BOUND:
            break
    assert min(latencies) < SIGINT_BOUND, latencies


RUN_FOREVER_IDLE = """
import functools, time

loop = new_loop()
mode = {mode!r}
loop.call_soon(functools.partial(print, "ready", flush=True))
if mode == "long-timer":
    loop.call_later(3600, print, "timer fired")
try:
    if mode == "run_until_complete":
        loop.run_until_complete(asyncio.sleep(3600))
    else:
        loop.run_forever()
except KeyboardInterrupt:
    print("interrupted", time.monotonic(), flush=True)
print("after", loop.is_running(), asyncio._get_running_loop() is None, flush=True)
print("reuse", loop.run_until_complete(asyncio.sleep(0.01, "ok")), flush=True)
loop.close()
"""


@pytest.mark.parametrize("mode", ["no-timers", "long-timer", "run_until_complete"])
def test_sigint_default_handler_interrupts_idle_loop(snippet, mode):
    """With Python's default SIGINT handler, a loop blocked in the poller (run_forever with
    nothing scheduled / with a 1-hour timer, or run_until_complete(sleep(3600))) raises
    KeyboardInterrupt out of run_* within 100 ms (best of 3); the loop is then not running
    and can be run again."""
    latencies = []
    for _ in range(ATTEMPTS):
        proc, out, err, sent_at = _interrupt(snippet, RUN_FOREVER_IDLE.format(mode=mode))
        assert proc.returncode == 0, err
        assert "after False True" in out, out
        assert "reuse ok" in out, out
        assert "timer fired" not in out
        latencies.append(_stamp(out, "interrupted") - sent_at)
        if latencies[-1] < SIGINT_BOUND:
            break
    assert min(latencies) < SIGINT_BOUND, latencies


# --------------------------------------------------------------------------------------
# Unix signal handlers (in-process, SIGUSR1/SIGUSR2)
# --------------------------------------------------------------------------------------


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    signal.set_wakeup_fd(wakeup)


def test_add_signal_handler_runs_callback_on_loop(loop, restore_signals):
    """add_signal_handler(sig, cb, *args) runs cb(*args) on the loop when the signal arrives,
    also when the loop is idle in the poller; remove_signal_handler() returns True once and
    then False."""
    got = []
    done = loop.create_future()

    def handler(tag):
        got.append((tag, asyncio.get_running_loop() is loop))
        if not done.done():
            done.set_result(None)

    loop.add_signal_handler(signal.SIGUSR1, handler, "usr1")

    def send():
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)

    thread = threading.Thread(target=send)
    safety = loop.call_later(10, done.cancel)
    thread.start()
    loop.run_until_complete(done)
    safety.cancel()
    thread.join()
    assert got == [("usr1", True)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_add_signal_handler_bad_input(loop, restore_signals):
    """add_signal_handler rejects coroutines (TypeError), non-int (TypeError), invalid
    (ValueError) and uncatchable signals (RuntimeError 'sig 9 cannot be caught')."""

    async def coro():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        loop.add_signal_handler(signal.SIGUSR2, coro)
    with pytest.raises(TypeError, match="sig must be an int"):
        loop.add_signal_handler("x", print)
    with pytest.raises(ValueError, match="invalid signal number"):
        loop.add_signal_handler(99999, print)
    with pytest.raises(RuntimeError, match="sig 9 cannot be caught"):
        loop.add_signal_handler(signal.SIGKILL, print)
    assert loop.remove_signal_handler(signal.SIGUSR2) is False


def test_add_signal_handler_warns_of_nothing(loop, restore_signals):
    """Under ``-W error`` (aiohttp's own suite runs so) add_signal_handler works on every
    version: 3.14 deprecated ``asyncio.iscoroutinefunction``, and asyncio's own check uses
    the private one that does not warn."""

    async def coro():
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop.add_signal_handler(signal.SIGUSR2, print)
        assert loop.remove_signal_handler(signal.SIGUSR2) is True
        with pytest.raises(TypeError, match="coroutines cannot be used"):
            loop.add_signal_handler(signal.SIGUSR2, coro)


# --------------------------------------------------------------------------------------
# fork
# --------------------------------------------------------------------------------------

FORK_AFTER_RUN = """
import os, threading, traceback

parent_loop = new_loop()
parent_loop.run_until_complete(asyncio.sleep(0.01))

async def child_main():
    lp = asyncio.get_running_loop()
    await asyncio.sleep(0.01)
    fut = lp.create_future()
    threading.Timer(0.01, lp.call_soon_threadsafe, (fut.set_result, "threadsafe")).start()
    woke = await asyncio.wait_for(fut, 10)
    summed = await lp.run_in_executor(None, sum, [1, 2, 3])
    return type(lp).__qualname__, woke, summed

pid = os.fork()
if pid == 0:
    try:
        child_loop = new_loop()
        result = child_loop.run_until_complete(child_main())
        child_loop.close()
        os.write(1, ("child-result %s %s %s\\n" % result).encode())
        os._exit(0)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
_, status = os.waitpid(pid, 0)
print("child-exit", os.waitstatus_to_exitcode(status), flush=True)
print("parent", parent_loop.run_until_complete(asyncio.sleep(0.01, "ok")), flush=True)
print("parent-type", type(parent_loop).__qualname__, flush=True)
parent_loop.close()
"""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fork_child_can_run_new_loop(snippet):
    """After os.fork() (the parent having created and run a loop), the child creates a new
    loop of the same kind and runs timers, call_soon_threadsafe and run_in_executor on it;
    the parent's loop keeps working."""
    proc = snippet.run(FORK_AFTER_RUN, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["child-exit"] == "0", proc.stderr
    parent_type = lines["parent-type"]
    assert lines["child-result"] == f"{parent_type} threadsafe 6"
    assert lines["parent"] == "ok"


FORK_INSIDE_RUNNING = """
import os, traceback

async def child_main():
    await asyncio.sleep(0.01)
    return type(asyncio.get_running_loop()).__qualname__

async def parent_main():
    pid = os.fork()
    if pid == 0:
        try:
            result = run(child_main())
            os.write(1, ("child-result %s\\n" % result).encode())
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    await asyncio.sleep(0.01)
    return os.waitstatus_to_exitcode(status), type(asyncio.get_running_loop()).__qualname__

code, parent_type = run(parent_main())
print("child-exit", code, flush=True)
print("parent-type", parent_type, flush=True)
"""


@pytest.mark.skipif(not PY312, reason="3.12+ resets the running loop in a forked child")
def test_fork_inside_running_loop(snippet):
    """3.12+: a child forked from inside a running coroutine can asyncio.run() (here:
    Runner) a new loop of the same kind."""
    proc = snippet.run(FORK_INSIDE_RUNNING, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["child-exit"] == "0", proc.stderr
    assert lines["child-result"] == lines["parent-type"]
