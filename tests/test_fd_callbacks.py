"""add_reader/add_writer/remove_reader/remove_writer, on ferroloop and stock asyncio.

Pins asyncio's selector-loop semantics: level-triggered callbacks, replacement of a
callback by a second add_*, remove_* results, file objects and ints, and the errors
raised for bad descriptors, closed loops and closed file objects.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
from conftest import SUBPROCESS_TIMEOUT, child_env


@pytest.fixture
def pair():
    """A connected, non-blocking socket pair, closed after the test."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def run_iterations(loop, n):
    """Run exactly ``n`` loop iterations (each stop() ends one)."""
    for _ in range(n):
        loop.call_soon(loop.stop)
        loop.run_forever()


def test_reader_is_level_triggered(loop, pair):
    """While data stays unread, the reader runs on every iteration."""
    a, b = pair
    calls = []
    loop.add_reader(a.fileno(), calls.append, "r")
    b.send(b"x")
    run_iterations(loop, 5)
    assert len(calls) >= 4
    assert loop.remove_reader(a.fileno()) is True
    before = len(calls)
    run_iterations(loop, 3)
    assert len(calls) == before


def test_reader_stops_when_drained(loop, pair):
    """A reader that consumes the data is not called again until more arrives."""
    a, b = pair
    got = []

    def on_readable():
        got.append(a.recv(100))

    loop.add_reader(a, on_readable)
    b.send(b"hello")
    run_iterations(loop, 4)
    assert got == [b"hello"]
    b.send(b"again")
    run_iterations(loop, 3)
    assert got == [b"hello", b"again"]
    assert loop.remove_reader(a) is True


def test_writer_runs_while_writable(loop, pair):
    a, _ = pair
    calls = []
    loop.add_writer(a, calls.append, 1)
    run_iterations(loop, 3)
    assert calls and set(calls) == {1}
    assert loop.remove_writer(a) is True
    assert loop.remove_writer(a) is False


def test_add_replaces_previous_callback_and_cancels_it(loop, pair):
    a, b = pair
    first, second = [], []
    loop.add_reader(a, first.append, 1)
    loop.add_reader(a, second.append, 2)
    b.send(b"x")
    run_iterations(loop, 2)
    assert first == []
    assert second and set(second) == {2}
    loop.remove_reader(a)


def test_reader_and_writer_on_one_fd(loop, pair):
    a, b = pair
    seen = []
    loop.add_reader(a, seen.append, "r")
    loop.add_writer(a, seen.append, "w")
    b.send(b"x")
    run_iterations(loop, 2)
    assert {"r", "w"} <= set(seen)
    # Removing one keeps the other.
    assert loop.remove_writer(a) is True
    seen.clear()
    run_iterations(loop, 2)
    assert seen and set(seen) == {"r"}
    assert loop.remove_reader(a) is True


def test_remove_unregistered_returns_false(loop, pair):
    a, _ = pair
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a.fileno()) is False


def test_callback_args_and_context_free_handle(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, lambda *args: got.append(args), 1, "two")
    b.send(b"x")
    run_iterations(loop, 1)
    assert got[0] == (1, "two")
    loop.remove_reader(a)


def test_add_reader_returns_none(loop, pair):
    a, _ = pair
    assert loop.add_reader(a, lambda: None) is None
    assert loop.add_writer(a, lambda: None) is None
    loop.remove_reader(a)
    loop.remove_writer(a)


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_invalid_file_objects(loop, method):
    with pytest.raises(ValueError, match="Invalid file object"):
        getattr(loop, method)(object(), lambda: None)
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        getattr(loop, method)(-1, lambda: None)


@pytest.mark.parametrize("method", ["remove_reader", "remove_writer"])
def test_remove_invalid_file_objects(loop, method):
    with pytest.raises(ValueError, match="Invalid file object"):
        getattr(loop, method)("not a file")
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        getattr(loop, method)(-1)


def test_closed_descriptor_number_raises_oserror(loop):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        loop.add_reader(r, lambda: None)
    # The failed registration leaves nothing behind.
    assert loop.remove_reader(r) is False


def test_regular_file_is_refused(loop, tmp_path):
    """epoll cannot watch regular files; the error is asyncio's (PermissionError)."""
    path = tmp_path / "f"
    path.write_bytes(b"data")
    with open(path, "rb") as f:
        with pytest.raises(PermissionError):
            loop.add_reader(f, lambda: None)


def test_closed_socket_still_removable_by_object(loop):
    """A socket closed while registered (fileno() == -1) is found by identity."""
    a, b = socket.socketpair()
    loop.add_reader(a, lambda: None)
    a.close()
    b.close()
    run_iterations(loop, 2)  # the loop survives the closed descriptor
    assert loop.remove_reader(a) is True


def test_fd_closed_while_registered_does_not_crash(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    fired = []
    loop.add_reader(a.fileno(), fired.append, 1)
    fd = a.fileno()
    a.close()
    b.close()
    run_iterations(loop, 3)
    assert loop.remove_reader(fd) is True
    # The number can be reused by a new descriptor and registered again.
    c, d = socket.socketpair()
    try:
        loop.add_reader(c.fileno(), fired.append, 2)
        d.send(b"x")
        run_iterations(loop, 2)
        assert 2 in fired
        assert loop.remove_reader(c.fileno()) is True
    finally:
        c.close()
        d.close()


def test_remove_inside_callback(loop, pair):
    a, b = pair
    calls = []

    def once():
        calls.append(1)
        loop.remove_reader(a)

    loop.add_reader(a, once)
    b.send(b"x")
    run_iterations(loop, 4)
    assert calls == [1]


def test_closed_loop(loop, pair):
    a, _ = pair
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_reader(a, lambda: None)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_writer(a, lambda: None)
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


def test_reader_exception_goes_to_handler_and_loop_continues(loop, pair):
    a, b = pair
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def boom():
        a.recv(10)
        raise ZeroDivisionError

    loop.add_reader(a, boom)
    b.send(b"x")
    run_iterations(loop, 2)
    loop.remove_reader(a)
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert contexts[0]["message"].startswith("Exception in callback")


def test_many_socketpairs(loop):
    """1000 descriptors watched at once, each firing once."""
    pairs = [socket.socketpair() for _ in range(1000)]
    try:
        got = set()
        for i, (a, b) in enumerate(pairs):
            a.setblocking(False)

            def on_read(i=i, a=a):
                a.recv(10)
                got.add(i)
                loop.remove_reader(a)

            loop.add_reader(a, on_read)
            b.send(b"x")
        for _ in range(20):
            if len(got) == len(pairs):
                break
            run_iterations(loop, 1)
        assert got == set(range(len(pairs)))
    finally:
        for a, b in pairs:
            a.close()
            b.close()


STDIN_CHILD = """
import json, sys

async def main():
    loop = asyncio.get_running_loop()
    got = []
    done = loop.create_future()

    def readable():
        data = os.read(0, 100)
        got.append(data.decode())
        if not data:
            loop.remove_reader(0)
            done.set_result(None)

    loop.add_reader(0, readable)
    await asyncio.wait_for(done, 20)
    return got

import os
print(json.dumps(run(main())))
"""


def test_reader_on_stdin_fd_0(snippet):
    """Descriptor 0 is a descriptor like any other: a reader on a program's stdin gets
    its data and its EOF."""
    proc = subprocess.run(
        snippet.argv(STDIN_CHILD),
        input="hello from the parent",
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["hello from the parent", ""]


STDIN_PIPE_CHILD = """
import json, sys

class Collect(asyncio.Protocol):
    def __init__(self, done):
        self.done, self.chunks = done, []
    def data_received(self, data):
        self.chunks.append(data)
    def connection_lost(self, exc):
        self.done.set_result(b"".join(self.chunks).decode())

async def main():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    await loop.connect_read_pipe(lambda: Collect(done), sys.stdin)
    return await asyncio.wait_for(done, 20)

print(json.dumps(run(main())))
"""


def test_read_pipe_on_stdin(snippet):
    """connect_read_pipe(sys.stdin), whose descriptor is 0, delivers everything."""
    proc = subprocess.run(
        snippet.argv(STDIN_PIPE_CHILD),
        input="x" * 100_000,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == "x" * 100_000
