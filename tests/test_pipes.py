"""Pipe transports (``connect_read_pipe``, ``connect_write_pipe``, subprocess stdio), on
ferroloop and stock asyncio.

Every test pins what asyncio's ``_UnixReadPipeTransport``/``_UnixWritePipeTransport`` do
(the same on 3.11-3.15 on Linux): the order of the first callbacks, pausing, EOF,
``write_eof``/``close``/``abort``, flow control, a reader that goes away (idle, and with
bytes queued), writes after the end, errors from the protocol, ``repr``, the
unclosed-transport warning, what the constructor refuses, ttys, sockets and character
devices used as pipes, descriptor leaks, and large transfers through a child's stdio.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import pty
import socket
import sys
import warnings
import zlib

import pytest
from conftest import IO_TEST_TIMEOUT, run_bounded

TIMEOUT = IO_TEST_TIMEOUT
PIPE = asyncio.subprocess.PIPE
PY = sys.executable
#: Far more than a pipe holds (64 KiB on Linux), so writes queue in the transport.
BIG = 4 << 20


def run(loop, coro, timeout=TIMEOUT):
    return run_bounded(loop, coro, timeout)


def pattern(size: int, seed: int = 1) -> bytes:
    """Bytes that are not periodic at any small stride: a lost, repeated or reordered
    chunk changes the checksum."""
    block = bytes((i * 7 + seed + i // 251) & 0xFF for i in range(65521))
    return (block * (size // len(block) + 1))[:size]


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


async def idle(rounds: int = 10) -> None:
    """Let the loop run a few iterations (callbacks scheduled by callbacks too)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def read_fd(fd: int, limit: int | None = None) -> bytes:
    """Read ``fd`` (made non-blocking) through ``add_reader`` until EOF or ``limit`` bytes."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    buf = bytearray()
    while limit is None or len(buf) < limit:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_reader(fd, _set_once, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            continue
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _set_once(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class Recorder(asyncio.Protocol):
    """Records callbacks (consecutive data_received calls as one "data") and bytes."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.events: list = []
        self.data = bytearray()
        self.transport = None
        self.lost = self.loop.create_future()
        self._more = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        assert isinstance(data, bytes)
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data
        self._wake()

    def eof_received(self):
        self.events.append("eof")
        self._wake()

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)
        self._wake()

    def _wake(self):
        if self._more is not None and not self._more.done():
            self._more.set_result(None)

    async def wait_bytes(self, n: int) -> bytes:
        while len(self.data) < n:
            assert "lost" not in self.events, self.events
            self._more = self.loop.create_future()
            await self._more
        return bytes(self.data)


class WriteRecorder(asyncio.BaseProtocol):
    """Records a write pipe's callbacks and the buffer size at pause and resume."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.events: list = []
        self.transport = None
        self.lost = self.loop.create_future()
        self.resumed = self.loop.create_future()
        self.sizes: list[tuple[str, int]] = []

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def pause_writing(self):
        self.events.append("pause")
        self.sizes.append(("pause", self.transport.get_write_buffer_size()))

    def resume_writing(self):
        self.events.append("resume")
        self.sizes.append(("resume", self.transport.get_write_buffer_size()))
        if not self.resumed.done():
            self.resumed.set_result(None)

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


async def read_pipe(factory=Recorder):
    """A read pipe transport on a fresh pipe: (transport, protocol, write fd)."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    transport, protocol = await loop.connect_read_pipe(factory, open(r, "rb", buffering=0))
    return transport, protocol, w


async def write_pipe(factory=WriteRecorder):
    """A write pipe transport on a fresh pipe: (transport, protocol, read fd)."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    transport, protocol = await loop.connect_write_pipe(factory, open(w, "wb", buffering=0))
    return transport, protocol, r


def expected_class_module(loop_kind: str) -> str:
    return "ferroloop" if loop_kind == "ferroloop" else "asyncio.unix_events"


# -- read pipes ---------------------------------------------------------------------------


def test_read_pipe_callback_order(loop, loop_kind):
    """connection_made, then the waiter (connect_read_pipe returns), then the data that
    was already waiting in the pipe: reading starts only after connection_made."""

    async def main():
        r, w = os.pipe()
        os.write(w, b"early")
        pipe = open(r, "rb", buffering=0)
        events = []

        class Proto(Recorder):
            def connection_made(self, transport):
                events.append("made")
                super().connection_made(transport)

            def data_received(self, data):
                events.append(("data", data))

        transport, protocol = await asyncio.get_running_loop().connect_read_pipe(Proto, pipe)
        events.append("connected")
        await idle()
        os.close(w)
        await protocol.lost
        kinds = (type(transport).__module__, isinstance(transport, asyncio.ReadTransport))
        return events, transport.get_extra_info("pipe") is pipe, pipe.closed, kinds

    events, same_pipe, closed, (module, is_read_transport) = run(loop, main())
    assert events == ["made", "connected", ("data", b"early")]
    assert same_pipe and closed and is_read_transport
    assert module == expected_class_module(loop_kind)


def test_read_pipe_eof_then_connection_lost(loop):
    """The writer closing its end: eof_received, then connection_lost(None); the transport
    is closing and its pipe closed by then."""

    async def main():
        transport, protocol, w = await read_pipe()
        os.write(w, b"hello")
        await protocol.wait_bytes(5)
        os.close(w)
        exc = await protocol.lost
        return protocol.events, exc, transport.is_closing(), transport.get_extra_info("pipe")

    events, exc, closing, pipe = run(loop, main())
    assert events == ["made", "data", "eof", "lost"]
    assert exc is None and closing and pipe.closed


def test_read_pipe_pause_resume(loop):
    """pause_reading stops delivery (data waits in the pipe), resume_reading restarts it;
    pausing twice or resuming an unpaused transport changes nothing; a closed transport
    neither reads nor resumes."""

    async def main():
        transport, protocol, w = await read_pipe()
        states = [transport.is_reading()]
        transport.pause_reading()
        transport.pause_reading()
        states.append(transport.is_reading())
        os.write(w, b"while paused")
        await idle()
        got_while_paused = bytes(protocol.data)
        transport.resume_reading()
        transport.resume_reading()
        states.append(transport.is_reading())
        data = await protocol.wait_bytes(12)
        transport.pause_reading()
        transport.close()
        states.append(transport.is_reading())
        transport.resume_reading()
        states.append(transport.is_reading())
        exc = await protocol.lost
        os.close(w)
        return states, got_while_paused, data, exc, protocol.events

    states, paused_data, data, exc, events = run(loop, main())
    assert states == [True, False, True, False, False]
    assert paused_data == b"" and data == b"while paused"
    assert exc is None and events == ["made", "data", "lost"]


def test_read_pipe_pause_before_reading_starts(loop):
    """A pause from connection_made wins over the reader scheduled at construction."""

    async def main():
        class Pauses(Recorder):
            def connection_made(self, transport):
                super().connection_made(transport)
                transport.pause_reading()

        transport, protocol, w = await read_pipe(Pauses)
        os.write(w, b"x")
        await idle()
        before = bytes(protocol.data)
        transport.resume_reading()
        after = await protocol.wait_bytes(1)
        transport.close()
        await protocol.lost
        os.close(w)
        return before, after

    assert run(loop, main()) == (b"", b"x")


def test_read_pipe_close(loop):
    """close(): connection_lost(None) on the next iteration, no eof_received, the pipe
    closed; closing again is a no-op. A read transport has no abort()."""

    async def main():
        transport, protocol, w = await read_pipe()
        transport.close()
        transport.close()
        lost_at_once = protocol.lost.done()
        exc = await protocol.lost
        os.close(w)
        return (
            lost_at_once,
            exc,
            protocol.events,
            transport.is_closing(),
            transport.get_extra_info("pipe").closed,
            hasattr(transport, "abort"),
        )

    assert run(loop, main()) == (False, None, ["made", "lost"], True, True, False)


def test_read_pipe_large_transfer(loop):
    """Megabytes through a read pipe arrive whole and in order, in reads of at most
    max_size (256 KiB)."""
    payload = pattern(BIG)

    async def main():
        sizes = []

        class Sizes(Recorder):
            def data_received(self, data):
                sizes.append(len(data))
                super().data_received(data)

        transport, protocol, w = await read_pipe(Sizes)
        loop = asyncio.get_running_loop()
        writer = loop.run_in_executor(None, _write_all_blocking, w, payload)
        await writer
        exc = await protocol.lost
        return bytes(protocol.data), max(sizes), exc

    data, largest, exc = run(loop, main())
    assert zlib.crc32(data) == zlib.crc32(payload) and len(data) == BIG
    assert largest <= 256 * 1024 and exc is None


def _write_all_blocking(fd: int, data: bytes) -> None:
    with open(fd, "wb", buffering=0) as f:
        view = memoryview(data)
        while view:
            view = view[f.write(view) :]


def test_read_pipe_data_received_error_is_not_fatal(loop):
    """An exception from data_received goes to the loop's exception handler as a failed
    callback; the transport stays open and keeps reading."""

    async def main():
        loop = asyncio.get_running_loop()
        contexts = []
        loop.set_exception_handler(lambda _loop, context: contexts.append(context))

        class Fails(Recorder):
            def data_received(self, data):
                super().data_received(data)
                if data == b"boom":
                    raise ZeroDivisionError("from data_received")

        transport, protocol, w = await read_pipe(Fails)
        os.write(w, b"boom")
        await protocol.wait_bytes(4)
        await idle()
        closing = transport.is_closing()
        os.write(w, b"more")
        data = await protocol.wait_bytes(8)
        os.close(w)
        await protocol.lost
        (context,) = contexts
        return closing, data, context["message"], type(context["exception"])

    closing, data, message, exc_type = run(loop, main())
    assert not closing and data == b"boommore"
    assert message.startswith("Exception in callback") and exc_type is ZeroDivisionError


def test_read_pipe_set_protocol(loop):
    """set_protocol switches where data goes; get_protocol reports it."""

    async def main():
        transport, first, w = await read_pipe()
        second = Recorder()
        transport.set_protocol(second)
        same = transport.get_protocol() is second
        os.write(w, b"to second")
        data = await second.wait_bytes(9)
        os.close(w)
        await second.lost
        return same, bytes(first.data), data, first.events, second.events

    assert run(loop, main()) == (
        True,
        b"",
        b"to second",
        ["made"],
        ["data", "eof", "lost"],
    )


def test_read_pipe_repr(loop):
    """repr: fd and polling/idle while open, closing, closed; "open" once the loop is
    closed."""

    async def main():
        transport, protocol, w = await read_pipe()
        fd = transport.get_extra_info("pipe").fileno()
        reprs = [repr(transport)]
        transport.pause_reading()
        reprs.append(repr(transport))
        transport.close()
        reprs.append(repr(transport))
        await protocol.lost
        reprs.append(repr(transport))
        os.close(w)
        return type(transport).__name__, fd, reprs

    name, fd, reprs = run(loop, main())
    assert reprs == [
        f"<{name} fd={fd} polling>",
        f"<{name} fd={fd} idle>",
        f"<{name} closing fd={fd} idle>",
        f"<{name} closed fd={fd} closed>",
    ]


def test_read_pipe_repr_after_loop_closed(loop_factory):
    loop = loop_factory()
    try:
        transport, protocol, w = run(loop, read_pipe())
        fd = transport.get_extra_info("pipe").fileno()
    finally:
        loop.close()
    try:
        assert repr(transport) == f"<{type(transport).__name__} fd={fd} open>"
    finally:
        transport.get_extra_info("pipe").close()
        os.close(w)
        transport._pipe = None  # closed by hand: no ResourceWarning


# -- write pipes --------------------------------------------------------------------------


def test_write_pipe_basics(loop, loop_kind):
    """write() goes out at once; connection_made then the waiter; get_extra_info('pipe');
    can_write_eof(); the class is the loop's own."""

    async def main():
        r, w = os.pipe()
        pipe = open(w, "wb", buffering=0)
        events = []

        class Proto(WriteRecorder):
            def connection_made(self, transport):
                events.append("made")
                super().connection_made(transport)

        transport, protocol = await asyncio.get_running_loop().connect_write_pipe(Proto, pipe)
        events.append("connected")
        transport.write(b"abc")
        transport.write(bytearray(b"def"))
        transport.write(memoryview(b"xghix")[1:-1])
        transport.write(b"")
        size = transport.get_write_buffer_size()
        data = await read_fd(r, 9)
        transport.close()
        exc = await protocol.lost
        eof = await read_fd(r)
        os.close(r)
        return (
            events,
            data,
            size,
            eof,
            exc,
            transport.get_extra_info("pipe") is pipe,
            pipe.closed,
            transport.can_write_eof(),
            type(transport).__module__,
            isinstance(transport, asyncio.WriteTransport),
        )

    events, data, size, eof, exc, same, closed, can_eof, module, is_write = run(loop, main())
    assert events == ["made", "connected"] and data == b"abcdefghi" and size == 0
    assert eof == b"" and exc is None and same and closed and can_eof and is_write
    assert module == expected_class_module(loop_kind)


def test_write_pipe_flow_control_large_transfer(loop):
    """A write far beyond the pipe's capacity: the rest is queued, pause_writing once above
    the high-water mark, resume_writing once the queue drained (asyncio resumes only
    when it is empty), and every byte arrives in order."""
    payload = pattern(BIG, seed=3)

    async def main():
        transport, protocol, r = await write_pipe()
        transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        limits = transport.get_write_buffer_limits()
        transport.write(payload)
        queued = transport.get_write_buffer_size()
        events_after_write = list(protocol.events)
        data = await read_fd(r, BIG)
        await protocol.resumed
        transport.close()
        exc = await protocol.lost
        os.close(r)
        return limits, queued, events_after_write, protocol.events, protocol.sizes, data, exc

    limits, queued, after_write, events, sizes, data, exc = run(loop, main())
    assert limits == (16 * 1024, 64 * 1024)
    assert 64 * 1024 < queued < BIG
    assert after_write == ["made", "pause"]
    assert events == ["made", "pause", "resume", "lost"]
    assert sizes == [("pause", queued), ("resume", 0)]
    assert zlib.crc32(data) == zlib.crc32(payload) and exc is None


def test_write_pipe_many_small_writes_under_pressure(loop):
    """Thousands of small writes while the pipe is full queue behind each other in order;
    a writer that waits for resume_writing after each pause_writing loses nothing."""
    payload = pattern(BIG // 2, seed=5)

    class Gate(WriteRecorder):
        def __init__(self):
            super().__init__()
            self.open = asyncio.Event()
            self.open.set()

        def pause_writing(self):
            super().pause_writing()
            self.open.clear()

        def resume_writing(self):
            super().resume_writing()
            self.open.set()

    async def main():
        transport, protocol, r = await write_pipe(Gate)
        reader = asyncio.ensure_future(read_fd(r, len(payload)))
        view = memoryview(payload)
        for start in range(0, len(payload), 4096):
            await protocol.open.wait()
            transport.write(view[start : start + 4096])
        data = await reader
        transport.close()
        await protocol.lost
        os.close(r)
        return data, protocol.events.count("pause") == protocol.events.count("resume") > 0

    data, balanced = run(loop, main())
    assert zlib.crc32(data) == zlib.crc32(payload) and balanced


class _Bytes(bytes):
    pass


def test_write_pipe_queue_keeps_order_and_snapshots(loop):
    """Queued behind a full pipe: large and small bytes, a bytes subclass, a bytearray
    and a memoryview the caller changes right after write(), all in order; the mutable
    ones as they were when written."""
    big = [pattern(300_000, seed=s) for s in (13, 17, 19)]

    async def main():
        transport, protocol, r = await write_pipe()
        mutable = bytearray(b"before")
        backing = bytearray(b"view-before")
        expected = bytearray()
        for chunk in (
            big[0],
            b"small",
            mutable,
            _Bytes(big[1]),
            memoryview(backing)[5:],
            b"x" * 5000,
            big[2],
        ):
            transport.write(chunk)
            expected += chunk
        mutable[:] = b"AFTER!"
        backing[5:] = b"AFTER!"
        data = await read_fd(r, len(expected))
        transport.close()
        await protocol.lost
        os.close(r)
        return data, bytes(expected)

    data, expected = run(loop, main())
    assert data == expected


def test_write_pipe_close_delivers_queued_bytes(loop):
    """close() with bytes queued: they are all written first, then the pipe is closed (the
    reader sees EOF) and connection_lost(None) follows."""
    payload = pattern(BIG, seed=7)

    async def main():
        transport, protocol, r = await write_pipe()
        transport.write(payload)
        transport.close()
        states = (transport.is_closing(), transport.get_write_buffer_size() > 0)
        data = await read_fd(r)
        exc = await protocol.lost
        os.close(r)
        return states, data, exc, protocol.events

    states, data, exc, events = run(loop, main())
    assert states == (True, True)
    assert zlib.crc32(data) == zlib.crc32(payload) and len(data) == BIG
    assert exc is None and events[0] == "made" and events[-1] == "lost"


def test_write_pipe_write_eof(loop):
    """write_eof() closes the write end once drained: the reader sees EOF, the transport
    is closing, connection_lost(None) follows; a second write_eof() or a close() is a
    no-op."""

    async def main():
        transport, protocol, r = await write_pipe()
        transport.write(b"last words")
        transport.write_eof()
        transport.write_eof()
        transport.close()
        data = await read_fd(r)
        exc = await protocol.lost
        os.close(r)
        return data, exc, transport.is_closing(), protocol.events

    assert run(loop, main()) == (b"last words", None, True, ["made", "lost"])


def test_write_pipe_writes_after_end_are_dropped_and_warned(loop, caplog):
    """Writes after close()/write_eof() raise nothing: they are dropped and counted, and
    from the sixth on each logs asyncio's warning."""

    async def main():
        transport, protocol, r = await write_pipe()
        transport.close()
        for _ in range(8):
            transport.write(b"dropped")
        await protocol.lost
        for _ in range(2):
            transport.write(b"dropped after connection_lost")
        data = await read_fd(r)
        os.close(r)
        return data, transport._conn_lost

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        data, conn_lost = run(loop, main())
    warnings_logged = [
        r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelname == "WARNING"
    ]
    assert data == b"" and conn_lost == 10
    assert warnings_logged == ["pipe closed by peer or os.write(pipe, data) raised exception."] * 5


def test_write_pipe_abort_drops_queue(loop):
    """abort(): queued bytes are dropped, connection_lost(None), the reader sees EOF after
    what had already reached the pipe."""

    async def main():
        transport, protocol, r = await write_pipe()
        transport.write(pattern(BIG))
        queued = transport.get_write_buffer_size()
        transport.abort()
        after_abort = (transport.get_write_buffer_size(), transport.is_closing())
        exc = await protocol.lost
        data = await read_fd(r)
        os.close(r)
        return queued, after_abort, exc, len(data), protocol.events

    queued, after_abort, exc, received, events = run(loop, main())
    assert queued > 0 and after_abort == (0, True) and exc is None
    assert received == BIG - queued
    assert events == ["made", "pause", "lost"]


def test_write_pipe_reader_gone_while_idle(loop):
    """The reader closing its end with nothing queued: the transport notices (the write end
    reports an error) and ends with connection_lost(None)."""

    async def main():
        transport, protocol, r = await write_pipe()
        transport.write(b"read?")
        os.close(r)
        exc = await protocol.lost
        return exc, transport.is_closing(), protocol.events

    assert run(loop, main()) == (None, True, ["made", "lost"])


def test_write_pipe_reader_gone_with_bytes_queued(loop):
    """The reader going away while bytes are queued: connection_lost(BrokenPipeError),
    the queue dropped, nothing hangs; later writes are dropped."""

    async def main():
        transport, protocol, r = await write_pipe()
        transport.write(pattern(BIG))
        queued = transport.get_write_buffer_size()
        os.close(r)
        exc = await protocol.lost
        transport.write(b"more")
        return queued, exc, transport.get_write_buffer_size(), protocol.events

    queued, exc, size, events = run(loop, main())
    assert queued > 0 and isinstance(exc, BrokenPipeError) and size == 0
    assert events == ["made", "pause", "lost"]


def test_write_pipe_epipe_on_write_is_broken_pipe(loop):
    """A write() to a pipe whose reader is already gone, before the loop noticed: EPIPE,
    connection_lost(BrokenPipeError) with the errno; no exception from write()."""

    async def main():
        transport, protocol, r = await write_pipe()
        os.close(r)
        transport.write(b"into the void")
        exc = await protocol.lost
        return type(exc), exc.errno, transport._conn_lost, protocol.events

    assert run(loop, main()) == (BrokenPipeError, errno.EPIPE, 1, ["made", "lost"])


def test_write_pipe_ended_before_its_watch_leaves_nothing_registered(loop, loop_kind):
    """A write pipe aborted before its reader-gone watch was due: asyncio adds the watch
    anyway, on the descriptor its own connection_lost has just closed (a stale selector
    entry for whatever gets that number next); ferroloop, deliberately, does not."""

    async def main():
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        protocol = WriteRecorder()
        transport = loop._make_write_pipe_transport(open(w, "wb", buffering=0), protocol)
        transport.abort()
        exc = await protocol.lost
        await idle()
        registered = loop._selector.get_map().get(w) is not None
        if registered:
            loop._remove_reader(w)  # leave the loop clean for its close()
        os.close(r)
        return exc, protocol.events, registered

    exc, events, registered = run(loop, main())
    assert exc is None and events == ["made", "lost"]
    assert registered is (loop_kind == "asyncio")


def test_write_pipe_bad_data(loop):
    """write() of a non-bytes object fails asyncio's assertion, with the object's repr."""

    async def main():
        transport, protocol, r = await write_pipe()
        errors = []
        for bad in ("text", 42, [b"a"]):
            with pytest.raises(AssertionError) as info:
                transport.write(bad)
            errors.append(str(info.value))
        transport.close()
        await protocol.lost
        os.close(r)
        return errors, transport._conn_lost

    assert run(loop, main()) == (["'text'", "42", "[b'a']"], 0)


def test_write_pipe_resume_writing_writes_more(loop):
    """resume_writing may write again: what it writes goes out after the queue, in order."""
    first = pattern(BIG, seed=9)

    async def main():
        class Refills(WriteRecorder):
            def resume_writing(self):
                super().resume_writing()
                self.transport.write(b"tail")

        transport, protocol, r = await write_pipe(Refills)
        transport.write(first)
        data = await read_fd(r, len(first) + 4)
        transport.close()
        exc = await protocol.lost
        rest = await read_fd(r)
        os.close(r)
        return data, rest, exc, protocol.events

    data, rest, exc, events = run(loop, main())
    assert data == first + b"tail" and rest == b"" and exc is None
    assert events == ["made", "pause", "resume", "lost"]


def test_write_pipe_repr(loop):
    """repr: fd, polling/idle and the buffer size; closing; closed."""

    async def main():
        transport, protocol, r = await write_pipe()
        fd = transport.get_extra_info("pipe").fileno()
        reprs = [repr(transport)]
        transport.write(pattern(BIG))
        size = transport.get_write_buffer_size()
        reprs.append(repr(transport))
        transport.abort()
        reprs.append(repr(transport))
        await protocol.lost
        reprs.append(repr(transport))
        os.close(r)
        return type(transport).__name__, fd, size, reprs

    name, fd, size, reprs = run(loop, main())
    assert reprs == [
        f"<{name} fd={fd} idle bufsize=0>",
        f"<{name} fd={fd} polling bufsize={size}>",
        f"<{name} closing fd={fd} idle bufsize=0>",
        f"<{name} closed fd={fd} closed>",
    ]


def test_write_pipe_set_protocol(loop):
    async def main():
        transport, first, r = await write_pipe()
        second = WriteRecorder()
        transport.set_protocol(second)
        same = transport.get_protocol() is second
        transport.close()
        exc = await second.lost
        os.close(r)
        return same, exc, first.events, second.events

    assert run(loop, main()) == (True, None, ["made"], ["lost"])


# -- construction ---------------------------------------------------------------------------


def test_regular_file_refused(loop, tmp_path):
    """A regular file is no pipe: ValueError with asyncio's messages, the file left open,
    no protocol callback, no warning."""
    path = tmp_path / "regular"
    path.write_bytes(b"data")

    async def main():
        loop = asyncio.get_running_loop()
        messages, still_open = [], []
        for connect, mode in ((loop.connect_read_pipe, "rb"), (loop.connect_write_pipe, "wb")):
            with open(path, mode) as f:
                with pytest.raises(ValueError) as info:
                    await connect(Recorder, f)
                messages.append(str(info.value))
                still_open.append(not f.closed and os.fstat(f.fileno()) is not None)
        return messages, still_open

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        messages, still_open = run(loop, main())
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert messages == [
        "Pipe transport is for pipes/sockets only.",
        "Pipe transport is only for pipes, sockets and character devices",
    ]
    assert still_open == [True, True]


# Both loops' half-built transport fails in its own __del__ (its repr needs attributes the
# constructor had not set yet): stock's behaviour, reported as unraisable.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_closed_pipe_object_refused(loop):
    """A closed file object: fileno()'s ValueError."""

    async def main():
        r, w = os.pipe()
        os.close(w)
        pipe = open(r, "rb", buffering=0)
        pipe.close()
        with pytest.raises(ValueError, match="closed file"):
            await asyncio.get_running_loop().connect_read_pipe(Recorder, pipe)

    run(loop, main())


def test_pipe_made_non_blocking(loop):
    """The descriptor is switched to non-blocking mode, as asyncio does."""

    async def main():
        r, w = os.pipe()
        assert os.get_blocking(r) and os.get_blocking(w)
        rt, rp = await asyncio.get_running_loop().connect_read_pipe(
            Recorder, open(r, "rb", buffering=0)
        )
        wt, wp = await asyncio.get_running_loop().connect_write_pipe(
            WriteRecorder, open(w, "wb", buffering=0)
        )
        states = (os.get_blocking(r), os.get_blocking(w))
        wt.close()
        await wp.lost
        await rp.lost
        return states, rp.events

    assert run(loop, main()) == ((False, False), ["made", "eof", "lost"])


def test_pty_read_and_eio_at_hangup(loop):
    """A pty master (a character device) as a read pipe: data arrives; when the slave
    closes, Linux reports EIO, which asyncio treats as a quiet fatal error:
    connection_lost(OSError(EIO)), no eof_received, nothing for the exception handler."""

    async def main():
        loop = asyncio.get_running_loop()
        contexts = []
        loop.set_exception_handler(lambda _loop, context: contexts.append(context))
        master, slave = pty.openpty()
        transport, protocol = await loop.connect_read_pipe(
            Recorder, open(master, "rb", buffering=0)
        )
        os.write(slave, b"hi\n")
        data = await protocol.wait_bytes(4)
        os.close(slave)
        exc = await protocol.lost
        return data, type(exc), exc.errno, protocol.events, contexts

    data, exc_type, code, events, contexts = run(loop, main())
    assert data == b"hi\r\n" and exc_type is OSError and code == errno.EIO
    assert events == ["made", "data", "lost"] and contexts == []


def test_pty_slave_as_write_pipe(loop):
    """A pty slave (a character device: no reader-gone watch) as a write pipe."""

    async def main():
        master, slave = pty.openpty()
        transport, protocol = await asyncio.get_running_loop().connect_write_pipe(
            WriteRecorder, open(slave, "wb", buffering=0)
        )
        watched = asyncio.get_running_loop()._selector.get_map().get(slave)
        transport.write(b"to the tty\n")
        data = await read_fd(master, 12)
        transport.close()
        exc = await protocol.lost
        os.close(master)
        return data, exc, watched

    assert run(loop, main()) == (b"to the tty\r\n", None, None)


def test_dev_null_write_pipe(loop):
    """/dev/null is a character device a write pipe accepts; writes vanish, close ends it."""

    async def main():
        transport, protocol = await asyncio.get_running_loop().connect_write_pipe(
            WriteRecorder, open(os.devnull, "wb", buffering=0)
        )
        transport.write(pattern(BIG))
        size = transport.get_write_buffer_size()
        transport.close()
        return size, await protocol.lost, protocol.events

    assert run(loop, main()) == (0, None, ["made", "lost"])


def test_unpollable_char_device_read_pipe(loop):
    """/dev/zero passes the constructor's check (a character device) but epoll refuses
    it: the reader's registration fails in its callback (EPERM, for the exception
    handler), the pipe connects anyway and never reads; close() ends it."""

    async def main():
        loop = asyncio.get_running_loop()
        contexts = []
        loop.set_exception_handler(lambda _loop, context: contexts.append(context))
        transport, protocol = await loop.connect_read_pipe(
            Recorder, open("/dev/zero", "rb", buffering=0)
        )
        await idle()
        transport.close()
        exc = await protocol.lost
        return [type(c.get("exception")) for c in contexts], exc, protocol.events

    assert run(loop, main()) == ([PermissionError], None, ["made", "lost"])


def test_socket_as_pipe(loop):
    """A connected stream socket works as either kind of pipe (asyncio allows sockets),
    read and written with read()/write(); the write side notices the peer going away."""

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        rt, rp = await loop.connect_read_pipe(Recorder, a.makefile("rb", buffering=0))
        wt, wp = await loop.connect_write_pipe(WriteRecorder, c.makefile("wb", buffering=0))
        a.close()
        c.close()
        b.sendall(b"through a socket")
        data = await rp.wait_bytes(16)
        wt.write(b"the other way")
        d.setblocking(False)
        other = await loop.sock_recv(d, 100)
        b.close()
        d.close()
        return data, other, await rp.lost, await wp.lost, rp.events, wp.events

    assert run(loop, main()) == (
        b"through a socket",
        b"the other way",
        None,
        None,
        ["made", "data", "eof", "lost"],
        ["made", "lost"],
    )


class _Formatted(logging.Handler):
    """Keeps each record's message as formatted when logged (a transport's repr in a
    message changes later)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[tuple[str, str]] = []

    def emit(self, record):
        self.messages.append((record.levelname, record.getMessage()))


def test_debug_logs(loop):
    """In debug mode: the connect messages, pausing and resuming, the peer closing either
    kind of pipe (at INFO), as asyncio logs them."""

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = 60
        rt, rp, w = await read_pipe()
        wt, wp, r = await write_pipe()
        rt.pause_reading()
        rt.resume_reading()
        os.close(w)
        os.close(r)
        await rp.lost
        await wp.lost
        return {type(rt).__name__: "READ", type(wt).__name__: "WRITE"}, rt._fileno, wt._fileno

    logger = logging.getLogger("asyncio")
    handler, level = _Formatted(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        names, rfd, wfd = run(loop, main())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    messages = []
    for levelname, text in handler.messages:
        for name, label in names.items():
            text = text.replace(name, label)
        if "READ" in text or "WRITE" in text or " pipe " in text:
            messages.append((levelname, text.split(": (")[0]))
    assert messages == [
        ("DEBUG", f"Read pipe {rfd} connected"),
        ("DEBUG", f"Write pipe {wfd} connected"),
        ("DEBUG", f"<READ fd={rfd} idle> pauses reading"),
        ("DEBUG", f"<READ fd={rfd} polling> resumes reading"),
        ("INFO", f"<READ fd={rfd} polling> was closed by peer"),
        ("INFO", f"<WRITE fd={wfd} idle bufsize=0> was closed by peer"),
    ]


# -- lifetime -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["read", "write"])
def test_unclosed_transport_warns_and_closes_pipe(loop_factory, kind):
    """A transport dropped without close() (here: its loop closed under it) warns with
    ResourceWarning "unclosed transport <repr>" and closes its pipe."""
    loop = loop_factory()
    try:
        transport, protocol, other = run(loop, read_pipe() if kind == "read" else write_pipe())
        pipe = transport.get_extra_info("pipe")
        name = type(transport).__name__
    finally:
        loop.close()
    del transport, protocol
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    os.close(other)
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert [m for m in messages if m.startswith(f"unclosed transport <{name}")] != []
    assert pipe.closed


def test_no_descriptor_leak(loop):
    """100 pipe pairs connected, used and ended every way a transport can end (close with
    and without bytes queued, abort, the reader going away, EOF): every descriptor is
    closed afterwards."""

    async def main():
        before = open_fds()
        for i in range(100):
            rt, rp, w = await read_pipe()
            wt, wp, r = await write_pipe()
            wt.write(b"x" * (i * 1500))
            os.write(w, b"y")
            await rp.wait_bytes(1)
            way = i % 4
            if way == 0:
                wt.abort()
            elif way == 1:
                wt.close()
                await read_fd(r)
            elif way == 2:
                os.close(r)
                r = None
            else:
                wt.write_eof()
                await read_fd(r)
            if i % 2:
                rt.close()
            else:
                os.close(w)
                w = None
            await wp.lost
            await rp.lost
            for fd in (w, r):
                if fd is not None:
                    os.close(fd)
        await idle()
        return before, open_fds()

    before, after = run(loop, main(), timeout=60)
    assert after == before


def test_closed_transport_is_collected(loop):
    """Once closed, a transport and its protocol (which refers back to it) are freed by
    the garbage collector: the native core reports its references."""
    import weakref

    async def main():
        rt, rp, w = await read_pipe()
        wt, wp, r = await write_pipe()
        refs = [weakref.ref(rt), weakref.ref(wt), weakref.ref(rp), weakref.ref(wp)]
        rt.close()
        wt.close()
        await rp.lost
        await wp.lost
        os.close(w)
        os.close(r)
        return refs

    refs = run(loop, main())
    gc.collect()
    assert [ref() for ref in refs] == [None] * 4


# -- subprocess stdio -----------------------------------------------------------------------


def test_subprocess_pipes_are_the_loops_pipe_transports(loop, loop_kind):
    """asyncio's subprocess transport connects the child's stdio through
    connect_read_pipe/connect_write_pipe, so they are the loop's pipe transports."""

    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE, stderr=PIPE)
        transport = proc._transport
        pipes = [transport.get_pipe_transport(fd) for fd in (0, 1, 2)]
        out, err = await proc.communicate(b"cat me")
        return [type(p).__module__ for p in pipes], pipes, out, err, proc.returncode

    modules, pipes, out, err, code = run(loop, main())
    assert modules == [expected_class_module(loop_kind)] * 3
    assert isinstance(pipes[0], asyncio.WriteTransport)
    assert all(isinstance(p, asyncio.ReadTransport) for p in pipes[1:])
    assert (out, err, code) == (b"cat me", b"", 0)


def test_subprocess_cat_round_trip_large(loop):
    """16 MiB through cat, written in 64 KiB blocks with drain() (flow control pauses the
    writer whenever the pipes are full) while another task reads: every byte back, in
    order."""
    payload = pattern(16 << 20, seed=11)

    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)

        async def write():
            view = memoryview(payload)
            for start in range(0, len(view), 64 * 1024):
                proc.stdin.write(view[start : start + 64 * 1024])
                await proc.stdin.drain()
            proc.stdin.close()
            await proc.stdin.wait_closed()

        async def read():
            crc, total = 0, 0
            while chunk := await proc.stdout.read(256 * 1024):
                crc, total = zlib.crc32(chunk, crc), total + len(chunk)
            return crc, total

        _, (crc, total) = await asyncio.gather(write(), read())
        return crc, total, await proc.wait()

    assert run(loop, main(), timeout=60) == (zlib.crc32(payload), len(payload), 0)


def test_subprocess_stdout_and_stderr_large(loop):
    """A child writing megabytes to stdout and stderr at once: both arrive whole."""
    code = (
        "import os, sys\n"
        "blk = bytes(range(256)) * 4096\n"
        "for i in range(8):\n"
        "    sys.stdout.buffer.write(blk); sys.stderr.buffer.write(blk[::-1])\n"
    )

    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate()
        return zlib.crc32(out), zlib.crc32(err), len(out), len(err), proc.returncode

    blk = bytes(range(256)) * 4096
    assert run(loop, main(), timeout=60) == (
        zlib.crc32(blk * 8),
        zlib.crc32(blk[::-1] * 8),
        8 << 20,
        8 << 20,
        0,
    )


def test_subprocess_reader_exits_early(loop):
    """A child that exits without reading its stdin: drain() raises BrokenPipeError
    (nothing hangs), the stdin transport is closed, the exit code is reported."""

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.stdin.buffer.read(10)", stdin=PIPE
        )
        stdin = proc._transport.get_pipe_transport(0)
        with pytest.raises(BrokenPipeError):
            for _ in range(64):
                proc.stdin.write(b"x" * 65536)
                await proc.stdin.drain()
        return stdin.is_closing(), await proc.wait()

    assert run(loop, main(), timeout=60) == (True, 0)


def test_subprocess_communicate_with_early_exit(loop):
    """communicate() with more input than the child reads: the broken pipe is swallowed
    (asyncio's communicate ignores BrokenPipeError/ConnectionResetError on stdin)."""

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.stdout.write(sys.stdin.read(3))", stdin=PIPE, stdout=PIPE
        )
        out, _ = await proc.communicate(b"abc" + b"z" * BIG)
        return out, proc.returncode

    assert run(loop, main(), timeout=60) == (b"abc", 0)
