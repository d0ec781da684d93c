"""Subprocesses and the watching of their exit, on ferroloop and stock asyncio.

Exit codes (normal, signalled), ``wait()`` racing the exit, many children with three
pipes each, a grandchild keeping the pipes open, signals after the exit and during it,
the no-pidfd fallback, a child already reaped elsewhere, a loop closed under a running
child, ``transport.close()``, cancellation while starting, the ``Popen`` options,
``os.fork()`` and loops in other threads. Each test asserts what stock asyncio does;
where ferroloop is deliberately safer than a stock version (no descriptor leaked, no
reaped pid ever signalled), the test says so where it asserts it.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import inspect
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from asyncio import base_subprocess, unix_events

import pytest
from conftest import run_bounded

# 100 children on a 2-core machine take a while; a hang must still fail.
TIMEOUT = 60.0

PY = sys.executable
PIPE = asyncio.subprocess.PIPE
BLOCKED = [PY, "-c", "import time; time.sleep(3600)"]
READS_STDIN = [PY, "-c", "import sys; sys.stdin.read()"]

# 3.14's transport wakes wait() when the child exits (gh-119710); 3.11-3.13.0 only once
# every pipe has closed too. Read off the transport class both loops use.
WAIT_RETURNS_AT_EXIT = "_exit_waiters" in inspect.getsource(
    base_subprocess.BaseSubprocessTransport._process_exited
)

# Whether the transport's send_signal() leaves alone a child whose exit it has published:
# 3.14 checks the return code, 3.11/3.12 go through Popen.send_signal (which polls);
# 3.13.0 calls os.kill() on the pid regardless.
SEND_SIGNAL_SKIPS_EXITED = any(
    marker in inspect.getsource(base_subprocess.BaseSubprocessTransport.send_signal)
    for marker in ("_returncode is not None", "_proc.send_signal")
)


def run(loop, coro):
    return run_bounded(loop, coro, TIMEOUT)


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def pidfd_works() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


def waitpid_threads() -> set[threading.Thread]:
    # Stock's watchers name theirs asyncio-waitpid-N, ferroloop ferroloop-waitpid-N.
    return {t for t in threading.enumerate() if "waitpid-" in t.name}


def stock_watcher(loop):
    """The child watcher a stock loop uses (the policy's before 3.14)."""
    if sys.version_info >= (3, 14):
        return loop._watcher
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return asyncio.get_child_watcher()


def stock_uses_pidfd(loop) -> bool:
    if sys.version_info >= (3, 14):
        return isinstance(stock_watcher(loop), unix_events._PidfdChildWatcher)
    return isinstance(stock_watcher(loop), unix_events.PidfdChildWatcher)


def fresh_policy(monkeypatch) -> None:
    """3.11-3.13's stock loop asks the policy for its watcher, which the policy picks once
    (at first use): a fresh policy picks again, under the test's conditions. Restored
    after the test."""
    if sys.version_info < (3, 14):
        monkeypatch.setattr(asyncio.events, "_event_loop_policy", None)


# -- exit codes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, expected",
    [
        ("pass", 0),
        ("raise SystemExit(3)", 3),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
    ],
    ids=["zero", "three", "sigkill"],
)
def test_exit_code(loop, code, expected):
    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", code)
        assert proc.returncode is None
        return await proc.wait(), proc.returncode

    assert run(loop, main()) == (expected, expected)


@pytest.mark.parametrize(
    "method, expected",
    [
        ("kill", -signal.SIGKILL),
        ("terminate", -signal.SIGTERM),
        ("send_signal", -signal.SIGUSR1),
    ],
)
def test_signalled_running_child(loop, method, expected):
    async def main():
        proc = await asyncio.create_subprocess_exec(*BLOCKED)
        if method == "send_signal":
            proc.send_signal(signal.SIGUSR1)
        else:
            getattr(proc, method)()
        return await proc.wait()

    assert run(loop, main()) == expected


def test_wait_racing_exit(loop):
    """wait() started before the exit, at every iteration until the exit is published,
    and after it: all get the exit code; a cancelled wait() does not disturb the rest."""

    async def main():
        proc = await asyncio.create_subprocess_exec("sh", "-c", "read x; exit 5", stdin=PIPE)
        early = [asyncio.ensure_future(proc.wait()) for _ in range(3)]
        cancelled = asyncio.ensure_future(proc.wait())
        await asyncio.sleep(0)
        cancelled.cancel()
        # The pipe closes at the next iteration at the earliest: the child is running.
        proc.stdin.close()
        racing = []
        while proc.returncode is None:
            racing.append(asyncio.ensure_future(proc.wait()))
            await asyncio.sleep(0)
        after = await proc.wait()
        results = await asyncio.gather(*early, *racing)
        return set(results), len(racing) > 0, after, cancelled.cancelled()

    assert run(loop, main()) == ({5}, True, 5, True)


def test_many_children_three_pipes_no_fd_leak(loop):
    """100 concurrent children, each with stdin, stdout and stderr pipes: every one
    reports its own output and exit code, and no descriptor is left open."""
    script = 'cat; echo "err $1" >&2; exit "$1"'

    async def one(i):
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", script, "sh", str(i % 7), stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        out, err = await proc.communicate(b"input %d" % i)
        return proc.returncode, out, err

    async def main():
        before = open_fds()
        results = await asyncio.gather(*(one(i) for i in range(100)))
        for _ in range(3):
            await asyncio.sleep(0)
        return before, results, open_fds()

    before, results, after = run(loop, main())
    assert results == [(i % 7, b"input %d" % i, b"err %d\n" % (i % 7)) for i in range(100)]
    assert after == before


GRANDCHILD_KEEPS_PIPES = textwrap.dedent(
    """\
    import subprocess, sys
    subprocess.Popen([sys.executable, "-c",
        "import sys; sys.stdout.write('ready'); sys.stdout.flush(); sys.stdin.read()"])
    sys.exit(7)
    """
)


def test_child_exits_while_grandchild_keeps_stdout_open(loop):
    """The exit code is published when the child exits, though its stdout never reaches
    EOF while a grandchild holds it; wait() returns then on 3.14+, and only once the pipes
    close on 3.11-3.13."""

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", GRANDCHILD_KEEPS_PIPES, stdin=PIPE, stdout=PIPE
        )
        waiter = asyncio.ensure_future(proc.wait())
        try:
            assert await proc.stdout.readexactly(5) == b"ready"
            while proc.returncode is None:
                await asyncio.sleep(0.01)
            assert proc.returncode == 7
            if WAIT_RETURNS_AT_EXIT:
                assert await waiter == 7
            else:
                for _ in range(20):
                    await asyncio.sleep(0)
                assert not waiter.done()
            assert not proc.stdout.at_eof()
        finally:
            proc.stdin.close()  # the grandchild exits, the pipes close
            rest = await proc.stdout.read()
        return rest, await waiter

    assert run(loop, main()) == (b"", 7)


# -- signals and the exit -------------------------------------------------------------------


def test_signals_after_exit(loop, monkeypatch):
    """Once the exit is published (process_exited), send_signal/terminate/kill raise
    nothing and the transport no longer signals the reaped, maybe reused, pid (3.13.0's
    still calls os.kill() on it); once the transport has finished (connection_lost)
    they raise ProcessLookupError."""
    kills = []
    real_kill = os.kill

    def kill(pid, sig):
        kills.append(pid)
        real_kill(pid, sig)

    class Protocol(asyncio.SubprocessProtocol):
        def __init__(self):
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            self.transport = transport

        def process_exited(self):
            self.returncode = self.transport.get_returncode()
            monkeypatch.setattr(os, "kill", kill)
            self.transport.send_signal(signal.SIGTERM)
            self.transport.terminate()
            self.transport.kill()

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(Protocol, PY, "-c", "raise SystemExit(4)")
        assert await protocol.lost is None
        for method in (transport.terminate, transport.kill):
            with pytest.raises(ProcessLookupError):
                method()
        with pytest.raises(ProcessLookupError):
            transport.send_signal(signal.SIGTERM)
        return transport.get_pid(), protocol.returncode, transport.get_returncode()

    pid, at_exit, returncode = run(loop, main())
    assert (at_exit, returncode) == (4, 4)
    assert kills == ([] if SEND_SIGNAL_SKIPS_EXITED else [pid] * 3)


def test_kill_during_exit_never_signals_a_reaped_pid(loop, loop_kind, monkeypatch):
    """kill() at every iteration until the exit is published never reaches a pid once it
    has been reaped (gh-127049), and the exit code is the signal's: ferroloop reaps and
    publishes in one step on every version. Stock 3.13.0 publishes one iteration after
    reaping and may signal the reaped pid there."""
    reaped = set()
    stale = []
    real_waitpid, real_kill = os.waitpid, os.kill

    def waitpid(pid, options):
        result = real_waitpid(pid, options)
        if result[0] != 0:
            reaped.add(result[0])
        return result

    def kill(pid, sig):
        if pid in reaped:
            stale.append(pid)
            return
        real_kill(pid, sig)

    async def main():
        monkeypatch.setattr(os, "waitpid", waitpid)
        monkeypatch.setattr(os, "kill", kill)
        proc = await asyncio.create_subprocess_exec(*BLOCKED)
        proc.kill()
        while proc.returncode is None:
            proc.kill()
            await asyncio.sleep(0)
        return await proc.wait()

    returncode = run(loop, main())
    if loop_kind == "asyncio" and sys.version_info < (3, 13):
        # gh-87744: 3.11/3.12's send_signal() goes through Popen.poll(), which reaps a
        # child that exited before the watcher did, and the watcher then reports 255.
        # ferroloop publishes the status the Popen read instead.
        assert returncode in (-signal.SIGKILL, 255)
    else:
        assert returncode == -signal.SIGKILL
    if loop_kind == "ferroloop" or sys.version_info[:2] != (3, 13):
        assert stale == []


def test_child_reaped_elsewhere_reports_255(loop, loop_kind, caplog, monkeypatch):
    """A child whose status someone else read is reported with returncode 255 and
    asyncio's warning. (Stock is given a pidfd watcher: its threaded one would race the
    test's own waitpid.)"""
    fresh_policy(monkeypatch)
    if loop_kind == "asyncio" and sys.version_info < (3, 14):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            watcher = unix_events.PidfdChildWatcher()
            if sys.version_info < (3, 12):
                watcher.attach_loop(loop)
            asyncio.set_child_watcher(watcher)

    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", "raise SystemExit(2)")
        os.waitpid(proc.pid, 0)  # the loop has not run: its watcher has not reaped
        return proc.pid, await proc.wait()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        pid, returncode = run(loop, main())
    assert returncode == 255
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert messages == [
        f"child process pid {pid} exit status already read:  will report returncode 255"
    ]


# -- without pidfds --------------------------------------------------------------------------


@pytest.fixture(params=["missing", "ENOSYS", "EPERM"])
def no_pidfd(request, monkeypatch):
    """A kernel or sandbox without pidfds: os.pidfd_open absent or failing."""
    if request.param == "missing":
        monkeypatch.delattr(os, "pidfd_open")
    else:
        code = getattr(errno, request.param)

        def pidfd_open(pid, flags=0):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    fresh_policy(monkeypatch)
    return request.param


def test_no_pidfd_waits_in_a_thread(no_pidfd, loop_factory, loop_kind):
    """Without pidfds a thread waits for each child. On ferroloop (as on stock 3.14) the
    thread leaves the exited child unreaped, so its pid stays reserved until the loop
    thread reaps it and publishes the exit; stock 3.11-3.13's thread reaps it itself."""
    unreaped_until_published = loop_kind == "ferroloop" or sys.version_info >= (3, 14)

    async def main():
        known = waitpid_threads()
        proc = await asyncio.create_subprocess_exec(*READS_STDIN, stdin=PIPE)
        (thread,) = waitpid_threads() - known
        proc.stdin.close()
        first = await proc.wait()

        known = waitpid_threads()
        proc = await asyncio.create_subprocess_exec(*BLOCKED)
        (thread,) = waitpid_threads() - known
        proc.kill()
        thread.join(TIMEOUT)  # blocks the loop: the exit cannot be published meanwhile
        assert not thread.is_alive()
        assert proc.returncode is None
        try:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            zombie = True
        except ChildProcessError:
            zombie = False
        return first, zombie, await proc.wait()

    loop = loop_factory()
    try:
        assert run(loop, main()) == (0, unreaped_until_published, -signal.SIGKILL)
    finally:
        loop.close()


# -- closing ------------------------------------------------------------------------------------


def test_loop_closed_with_running_child(loop_factory, loop_kind, caplog):
    """Closing the loop under a running child neither hangs nor leaks its pidfd (stock
    3.12+'s pidfd watcher leaves it open; ferroloop closes it). On 3.11, as stock's
    default threaded watcher, the child is still reaped when it exits, with asyncio's
    warning; 3.12+ say nothing. Dropping the transport warns that it was not closed."""
    before = open_fds()
    loop = loop_factory()

    async def start():
        return await asyncio.create_subprocess_exec(*BLOCKED)

    proc = run(loop, start())
    pid = proc.pid
    if loop_kind == "asyncio":
        pidfd = stock_uses_pidfd(loop)
        leaked, warns = (1 if pidfd else 0), not pidfd
    else:
        leaked, warns = 0, sys.version_info < (3, 12) or not pidfd_works()
    known = waitpid_threads()
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.close()
        assert len(open_fds() - before) == leaked
        os.kill(pid, signal.SIGKILL)
        for thread in waitpid_threads() | known:
            thread.join(TIMEOUT)
            assert not thread.is_alive()
    closed = [r for r in caplog.records if r.getMessage().endswith(f"handles pid {pid} is closed")]
    assert len(closed) == (1 if warns else 0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del proc
        gc.collect()
    assert [
        str(w.message).split(" pid=")[0]
        for w in caught
        if issubclass(w.category, ResourceWarning) and "transport" in str(w.message)
    ] == ["unclosed transport <_UnixSubprocessTransport"]
    # Reaped by the watcher thread, or by the transport's close() polling it: no zombie.
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_transport_close_kills_running_child(loop):
    """transport.close() kills a running child; its exit is still reported."""

    class Protocol(asyncio.SubprocessProtocol):
        def __init__(self):
            self.events = []
            self.lost = asyncio.get_running_loop().create_future()

        def process_exited(self):
            self.events.append("exited")

        def connection_lost(self, exc):
            self.events.append(("lost", exc))
            self.lost.set_result(None)

    async def main():
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(Protocol, *BLOCKED)
        transport.close()
        assert transport.is_closing()
        await protocol.lost
        return transport.get_returncode(), protocol.events

    assert run(loop, main()) == (-signal.SIGKILL, ["exited", ("lost", None)])


def test_cancelled_while_starting(loop, monkeypatch):
    """Cancelled while its pipes connect, create_subprocess_exec kills the child and
    waits for its exit before raising CancelledError: no child, no descriptor left."""
    started = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)

    async def main():
        before = open_fds()
        task = asyncio.ensure_future(
            asyncio.create_subprocess_exec(*BLOCKED, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        )
        asyncio.get_running_loop().call_soon(task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(3):
            await asyncio.sleep(0)
        return before, open_fds()

    before, after = run(loop, main())
    assert after == before
    (popen,) = started
    assert popen.returncode == -signal.SIGKILL
    with pytest.raises(ChildProcessError):
        os.waitpid(popen.pid, os.WNOHANG)


# -- Popen options, fork, threads ------------------------------------------------------------

REPORT = textwrap.dedent(
    """\
    import os, sys
    os.write(int(sys.argv[1]), b"through pass_fds")
    print(os.getpid(), os.getpgid(0), os.getsid(0), oct(os.umask(0)))
    """
)


@pytest.mark.parametrize("option", ["process_group", "start_new_session", "preexec_fn"])
def test_popen_options(loop, option):
    """process_group=0, start_new_session and preexec_fn reach the child; so does a
    descriptor given in pass_fds."""
    kwargs = {
        "process_group": {"process_group": 0},
        "start_new_session": {"start_new_session": True},
        "preexec_fn": {"preexec_fn": lambda: os.umask(0o027)},
    }[option]

    async def main():
        r, w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", REPORT, str(w), stdout=PIPE, pass_fds=(w,), **kwargs
            )
            out, _ = await proc.communicate()
            passed = os.read(r, 100)
        finally:
            os.close(r)
            os.close(w)
        return proc.returncode, out.split(), passed

    returncode, (pid, pgid, sid, umask), passed = run(loop, main())
    assert (returncode, passed) == (0, b"through pass_fds")
    pid, pgid, sid = int(pid), int(pgid), int(sid)
    if option == "process_group":
        assert (pgid, sid) == (pid, os.getsid(0))
    elif option == "start_new_session":
        assert pgid == sid == pid
    else:
        assert (pgid, umask) == (os.getpgid(0), b"0o27")


FORK_SNIPPET = """
import os, sys

async def start():
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; sys.stdin.read()", stdin=asyncio.subprocess.PIPE)

async def in_fork():
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(6)")
    return await proc.wait()

loop = new_loop()
proc = loop.run_until_complete(start())
forked = os.fork()
if forked == 0:
    code = run(in_fork())
    os._exit(code)
_, status = os.waitpid(forked, 0)
print("fork", os.waitstatus_to_exitcode(status))
proc.stdin.close()
print("parent", loop.run_until_complete(proc.wait()))
loop.close()
"""


def test_subprocess_in_forked_child(snippet):
    """A process forked while its loop watches a child runs subprocesses on a new loop;
    the parent's loop still sees its own child exit."""
    result = snippet.run(FORK_SNIPPET)
    assert (result.returncode, result.stdout.split("\n")) == (0, ["fork 6", "parent 0", ""]), (
        result.stderr
    )


def test_loop_in_another_thread(loop_factory):
    """A loop running in a thread other than the main one watches its children too."""

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import sys; sys.stdout.write(sys.stdin.read()[::-1])",
            stdin=PIPE,
            stdout=PIPE,
        )
        out, _ = await proc.communicate(b"olleh")
        return proc.returncode, out

    results = []

    def worker():
        loop = loop_factory()
        try:
            results.append(run(loop, main()))
        finally:
            loop.close()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(TIMEOUT)
    assert results == [(0, b"hello")]
