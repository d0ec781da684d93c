"""The blocked-loop watchdog (ferroloop only: stock asyncio has no such thing).

Every test blocks the loop on purpose and checks what the watchdog reported while the
loop was blocked: the callback or task, and the loop thread's stack down to the line
that blocks. Thresholds are generous and nothing asserts how long anything took; where
the order matters (reported *while* blocking), the test checks the order of events.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import sys
import threading
import time

import pytest
from conftest import child_env, import_ferroloop

WATCHDOG_TIMEOUT = 120


def new_loop():
    return import_ferroloop().new_event_loop()


def in_function(stack: str, name: str) -> bool:
    """Whether ``stack`` has a frame of the function ``name`` (a qualified name ends so)."""
    return re.search(rf"in (\S+\.)?{name}\b", stack) is not None


def native_threads() -> int:
    """The watchdog's threads in this process ("ferroloop-watchdog" and
    "ferroloop-watchdog-report", which the kernel shortens to 15 characters). Counting
    only them keeps other tests' threads, which may end at any time, out of the count."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except FileNotFoundError:
            continue  # ended meanwhile
        count += name.startswith("ferroloop-watch")
    return count


def threads_settled(expected: int, timeout: float = 5.0) -> int:
    """The watchdog thread count once it reaches ``expected`` (or ``timeout`` passes). A
    new thread names itself only once it runs, and a joined one can stay listed in
    /proc/self/task for a moment: the kernel wakes its joiner before it removes the
    task."""
    deadline = time.monotonic() + timeout
    while (count := native_threads()) != expected and time.monotonic() < deadline:
        time.sleep(0.001)
    return count


class Events:
    """A watchdog callback that records each event with the time it arrived."""

    def __init__(self):
        self.events: list[dict] = []
        self.blocked = threading.Event()
        self.resumed = threading.Event()

    def __call__(self, event: dict) -> None:
        event = dict(event, received=time.monotonic())
        self.events.append(event)
        (self.blocked if event["event"] == "blocked" else self.resumed).set()

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]


def run_with_watchdog(coro_fn, threshold=0.1, callback=None):
    loop = new_loop()
    try:
        loop.set_watchdog(threshold, callback)
        return loop.run_until_complete(coro_fn())
    finally:
        loop.close()


def test_off_by_default_and_configurable():
    loop = new_loop()
    try:
        assert loop.get_watchdog() is None
        loop.set_watchdog(0.25)
        assert loop.get_watchdog() == 0.25
        loop.set_watchdog(None)
        assert loop.get_watchdog() is None
        loop.set_watchdog(0)
        assert loop.get_watchdog() is None
        with pytest.raises(TypeError):
            loop.set_watchdog("1")
        with pytest.raises(TypeError):
            loop.set_watchdog(True)
        with pytest.raises(ValueError):
            loop.set_watchdog(-1)
        with pytest.raises(ValueError):
            loop.set_watchdog(float("nan"))
        with pytest.raises(TypeError):
            loop.set_watchdog(0.1, callback=42)
    finally:
        loop.close()
    ferroloop = import_ferroloop()
    loop = ferroloop.new_event_loop(watchdog=0.5)
    try:
        assert loop.get_watchdog() == 0.5
    finally:
        loop.close()


def test_run_keyword():
    ferroloop = import_ferroloop()

    async def main():
        return asyncio.get_running_loop().get_watchdog()

    assert ferroloop.run(main(), watchdog=0.3) == 0.3


def test_time_sleep_is_named_while_it_sleeps(watchdog):
    events = Events()
    after_sleep = []

    async def handler():
        time.sleep(0.5)
        after_sleep.append(time.monotonic())

    async def main():
        await asyncio.create_task(handler(), name="sleeper")

    run_with_watchdog(main, callback=events)
    (blocked,) = events.of("blocked")
    assert blocked["received"] < after_sleep[0], "reported only after the sleep"
    assert blocked["task"] is not None and blocked["task"].get_name() == "sleeper"
    assert "sleeper" in blocked["callback"] and "handler()" in blocked["callback"]
    assert "time.sleep(0.5)" in blocked["stack"]
    assert f'File "{__file__}"' in blocked["stack"] and in_function(blocked["stack"], "handler")
    assert blocked["gil_held"] is False
    assert blocked["elapsed"] >= 0.1
    (resumed,) = events.of("resumed")
    assert resumed["callback"] == blocked["callback"]
    assert resumed["elapsed"] >= blocked["elapsed"]


def test_logged_through_asyncio_logger(caplog, watchdog):
    async def handler():
        time.sleep(0.4)

    async def main():
        await asyncio.create_task(handler(), name="logged")

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run_with_watchdog(main)
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    blocked = [m for m in messages if m.startswith("Event loop blocked")]
    resumed = [m for m in messages if m.startswith("Event loop unblocked")]
    assert len(blocked) == 1 and len(resumed) == 1, messages
    assert "task 'logged'" in blocked[0] and "time.sleep(0.4)" in blocked[0]
    assert "task 'logged'" in resumed[0]


def test_cpu_bound_python_loop_is_named(watchdog):
    events = Events()

    def spin():
        while not events.blocked.is_set():
            pass

    async def main():
        spin()

    run_with_watchdog(main, callback=events)
    (blocked,) = events.of("blocked")
    assert "while not events.blocked.is_set():" in blocked["stack"] or "pass" in blocked["stack"]
    assert in_function(blocked["stack"], "spin") and in_function(blocked["stack"], "main")


def test_blocking_socket_recv_is_named(watchdog):
    events = Events()
    a, b = socket.socketpair()

    def feed():
        if events.blocked.wait(30):
            b.send(b"x")

    async def main():
        a.setblocking(True)
        return a.recv(1)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        assert run_with_watchdog(main, callback=events) == b"x"
    finally:
        feeder.join()
        a.close()
        b.close()
    (blocked,) = events.of("blocked")
    assert "return a.recv(1)" in blocked["stack"]


def test_plain_callback_is_named_by_its_repr(watchdog):
    events = Events()

    def slow_callback():
        events.blocked.wait(30)

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(slow_callback)
        loop.call_soon(done.set_result, None)
        await done

    run_with_watchdog(main, callback=events)
    (blocked,) = events.of("blocked")
    assert blocked["task"] is None
    assert "slow_callback" in blocked["callback"]
    assert "events.blocked.wait(30)" in blocked["stack"]


def test_c_call_holding_the_gil(capfd, watchdog):
    """A regular expression with catastrophic backtracking never lets go of the GIL:
    the watchdog says so on stderr while it runs, with faulthandler's view of the stack
    where the interpreter exports it, and reports through Python once it can."""
    loop = new_loop()
    events = Events()

    def backtrack():
        return re.match(r"(a+)+$", "a" * 24 + "b")

    async def main():
        backtrack()
        time.sleep(0.3)

    try:
        available = loop._watchdog_view()["native_stack_available"]
        loop.set_watchdog(0.1, events)
        loop.run_until_complete(main())
    finally:
        loop.close()
    err = capfd.readouterr().err
    assert "holds the GIL in native code" in err
    (blocked,) = events.of("blocked")
    assert blocked["gil_held"] is True
    if available:
        assert f'File "{__file__}"' in err and in_function(err, "backtrack")
        assert in_function(blocked["native_stack"], "backtrack")
    else:
        assert "stack is not available" in err
        assert blocked["native_stack"] is None
    assert sys.version_info[:2] not in ((3, 11), (3, 12), (3, 15)) or available
    # Still inside the callback once the GIL came back: named, with its stack now.
    assert "backtrack" in blocked["callback"] or "main" in blocked["callback"]
    assert in_function(blocked["stack"], "main")


def test_healthy_program_under_load_reports_nothing(watchdog):
    events = Events()

    async def worker(i):
        for _ in range(50):
            await asyncio.sleep(0)
            await asyncio.sleep(0.001)
        return i

    async def main():
        results = await asyncio.gather(*(worker(i) for i in range(200)))
        assert sum(results) == sum(range(200))

    run_with_watchdog(main, threshold=1.0, callback=events)
    assert events.events == []


def test_threads_end_with_run_forever(watchdog):
    before = native_threads()
    loop = new_loop()
    try:
        loop.set_watchdog(0.5)

        async def check():
            return threads_settled(before + 2)

        during = loop.run_until_complete(check())
        assert during == before + 2
        assert threads_settled(before) == before

        # Turned off while running: its threads go at once (joined before it returns).
        async def turn_off():
            asyncio.get_running_loop().set_watchdog(None)
            return threads_settled(before)

        assert loop.run_until_complete(turn_off()) == before
    finally:
        loop.close()
    assert threads_settled(before) == before


def test_callback_raising_is_logged(caplog, watchdog):
    def broken(event):
        raise RuntimeError("callback failed")

    async def main():
        time.sleep(0.3)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run_with_watchdog(main, callback=broken)
    assert any("Exception in the watchdog callback" in r.getMessage() for r in caplog.records)


APP = """
import asyncio, time

async def handler():
    time.sleep(0.5)

async def main():
    await asyncio.create_task(handler(), name="app-handler")

asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["env", "option", "module"])
def test_command_line(tmp_path, how):
    import subprocess

    (tmp_path / "app.py").write_text(APP)
    env = child_env({"PYTHONPATH": str(tmp_path)})
    if how == "env":
        argv = [sys.executable, "-m", "ferroloop", "app.py"]
        env["FERROLOOP_WATCHDOG"] = "0.1"
    elif how == "option":
        argv = [sys.executable, "-m", "ferroloop", "--watchdog", "0.1", "app.py"]
    else:
        argv = [sys.executable, "-m", "ferroloop", "--watchdog=0.1", "-m", "app"]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Event loop blocked for" in done.stderr
    assert "task 'app-handler'" in done.stderr
    assert 'app.py", line 5, in handler' in done.stderr and "time.sleep(0.5)" in done.stderr
    assert "Event loop unblocked" in done.stderr


def test_command_line_refuses_a_bad_threshold(tmp_path):
    import subprocess

    (tmp_path / "app.py").write_text("print('ran')\n")
    done = subprocess.run(
        [sys.executable, "-m", "ferroloop", "--watchdog", "soon", "app.py"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "ran" not in done.stdout
    assert "--watchdog needs a positive number" in done.stderr


DUMP_APP = """
import asyncio, os, signal, threading, time
import ferroloop

async def child():
    await asyncio.sleep(30)

async def blocker():
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
    time.sleep(0.6)

async def main():
    kids = [asyncio.create_task(child(), name=f"kid-{i}") for i in range(2)]
    await asyncio.sleep(0)
    await asyncio.create_task(blocker(), name="the-blocker")
    for kid in kids:
        kid.cancel()

ferroloop.run(main(), watchdog=WATCHDOG)
"""


@pytest.mark.parametrize("watchdog_on", [True, False])
def test_dump_signal(tmp_path, watchdog_on):
    import subprocess

    app = tmp_path / "dump_app.py"
    app.write_text(DUMP_APP.replace("WATCHDOG", "5.0" if watchdog_on else "None"))
    done = subprocess.run(
        [sys.executable, str(app)],
        env=child_env({"FERROLOOP_DUMP_SIGNAL": "USR1"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "ferroloop: state of" in err
    assert "* Task 'Task-1'" in err and "* Task 'kid-0'" in err and "* Task 'kid-1'" in err
    assert "the-blocker" in err and "time.sleep(0.6)" in err
    if watchdog_on:
        assert re.search(r"running now for [0-9.]+ seconds: task 'the-blocker'", err), err
    else:
        assert "the watchdog is off" in err


def test_dump_signal_is_opt_in():
    import subprocess

    code = (
        "import signal, ferroloop; ferroloop.new_event_loop();"
        " print(signal.getsignal(signal.SIGUSR1))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == str(signal.SIG_DFL)
