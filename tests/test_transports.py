"""Stream transports (TCP and connected sockets), on ferroloop and stock asyncio.

Every test pins what stock asyncio's selector transport does: the protocol callbacks
and their order, ``BufferedProtocol`` reads, switching protocols, read and write flow
control, half-close, the errors and warnings of misuse, peer resets, ``abort()``, the
fd bookkeeping shared with ``add_reader``, ``repr()``, descriptor leaks,
``loop.sendfile``, ``connect_accepted_socket``, the ``create_connection`` options, TLS.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import os
import socket
import ssl
import struct
import sys

import pytest
from conftest import IO_TEST_TIMEOUT, run_bounded, unavailable

TIMEOUT = IO_TEST_TIMEOUT  # Bound of every wait in this file: a hang fails the test.
run = run_bounded

SMALL_BUF = 4096  # SO_SNDBUF for tests that need the kernel to push back early.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shrink_buffers(transport, peer) -> None:
    """A small send buffer, so that (with a peer not reading) a few hundred KiB fill the
    kernel's buffers and the rest of a write is queued in the transport."""
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)


class Recorder(asyncio.Protocol):
    """Records callbacks (consecutive data_received calls as one "data") and bytes."""

    def __init__(self, eof_result=None):
        self.loop = asyncio.get_running_loop()
        self.events: list[str] = []
        self.data = bytearray()
        self.transport = None
        self.lost = self.loop.create_future()
        self.eof_result = eof_result
        self._more = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        assert isinstance(data, bytes)
        self._got(data)

    def _got(self, data):
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data
        if self._more is not None and not self._more.done():
            self._more.set_result(None)

    def eof_received(self):
        self.events.append("eof")
        self._wake()
        return self.eof_result

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)
        self._wake()

    def _wake(self):
        if self._more is not None and not self._more.done():
            self._more.set_result(None)

    async def wait_bytes(self, n: int) -> bytes:
        while len(self.data) < n:
            assert "eof" not in self.events and "lost" not in self.events, self.events
            self._more = self.loop.create_future()
            await self._more
        return bytes(self.data)


class FlowRecorder(Recorder):
    def pause_writing(self):
        self.events.append("pause")
        self.size_at_pause = self.transport.get_write_buffer_size()

    def resume_writing(self):
        self.events.append("resume")
        self.size_at_resume = self.transport.get_write_buffer_size()


class BufferedRecorder(Recorder, asyncio.BufferedProtocol):
    """A BufferedProtocol whose buffers are tiny (sizes cycling through ``sizes``)."""

    def __init__(self, sizes=(7,), eof_result=None):
        Recorder.__init__(self, eof_result)
        self.sizes = sizes
        self.calls = 0
        self.hints: set[int] = set()
        self.largest_update = 0
        self._buf = None

    def get_buffer(self, sizehint):
        self.hints.add(sizehint)
        self._buf = bytearray(self.sizes[self.calls % len(self.sizes)])
        self.calls += 1
        return self._buf

    def buffer_updated(self, nbytes):
        self.largest_update = max(self.largest_update, nbytes)
        self._got(bytes(self._buf[:nbytes]))


async def tcp_pair(loop, factory, **kwargs):
    """``loop.create_connection`` to a plain listening socket: (transport, protocol, peer),
    the peer being the accepted, non-blocking socket."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.setblocking(False)
        accepting = asyncio.ensure_future(loop.sock_accept(srv))
        transport, protocol = await loop.create_connection(factory, *srv.getsockname(), **kwargs)
        peer, _ = await accepting
    return transport, protocol, peer


async def recv_exactly(loop, sock, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, min(n - len(buf), 1 << 20))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


async def recv_to_eof(loop, sock) -> bytes:
    buf = bytearray()
    while chunk := await loop.sock_recv(sock, 1 << 20):
        buf += chunk
    return bytes(buf)


async def finish(transport, protocol):
    """Close ``transport`` and wait for connection_lost."""
    transport.close()
    return await protocol.lost


def collect_handler_contexts(loop) -> list[dict]:
    contexts: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    return contexts


# --------------------------------------------------------------------------------------
# Protocol callbacks
# --------------------------------------------------------------------------------------


class EchoServer(Recorder):
    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


def test_echo_callback_order_and_extra_info(loop):
    servers: list[EchoServer] = []

    def server_factory():
        servers.append(EchoServer())
        return servers[-1]

    async def main():
        server = await loop.create_server(server_factory, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()
        t, p = await loop.create_connection(Recorder, host, port)
        assert isinstance(t, asyncio.Transport)
        assert p.events == ["made"] and p.transport is t
        assert t.get_protocol() is p

        sock = t.get_extra_info("socket")
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_STREAM)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert t.get_extra_info("sockname") == sock.getsockname()
        assert t.get_extra_info("peername") == (host, port)
        assert t.get_extra_info("no-such-key") is None
        assert t.get_extra_info("no-such-key", "dflt") == "dflt"

        t.write(b"hello ")
        t.write(bytearray(b"world"))
        assert await p.wait_bytes(11) == b"hello world"
        t.write_eof()
        assert await p.lost is None
        (srv_proto,) = servers
        assert await srv_proto.lost is None
        srv_t = srv_proto.transport
        assert srv_t.get_extra_info("peername") == t.get_extra_info("sockname")
        assert srv_t.get_extra_info("sockname") == (host, port)
        server.close()
        await server.wait_closed()
        return p, srv_proto

    p, srv = run(loop, main())
    assert p.events == ["made", "data", "eof", "lost"]
    assert srv.events == ["made", "data", "eof", "lost"]
    assert bytes(srv.data) == b"hello world"


def test_buffered_protocol_tiny_buffer_large_payload(loop):
    payload = os.urandom(256 * 1024)

    async def main():
        t, p, peer = await tcp_pair(loop, lambda: BufferedRecorder(sizes=(7, 1, 5)))
        with peer:
            await loop.sock_sendall(peer, payload)
            peer.shutdown(socket.SHUT_WR)
            assert await p.lost is None
        return t, p

    t, p = run(loop, main())
    assert bytes(p.data) == payload
    assert p.events == ["made", "data", "eof", "lost"]
    assert p.hints == {-1}
    assert p.largest_update == 7
    assert t.is_closing()


class BadBuffer(BufferedRecorder):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def get_buffer(self, sizehint):
        if self.mode == "empty":
            return bytearray()
        raise ValueError("no buffer for you")


@pytest.mark.parametrize("mode", ["empty", "raises"])
def test_get_buffer_failure_is_fatal(loop, mode):
    contexts = collect_handler_contexts(loop)

    async def main():
        t, p, peer = await tcp_pair(loop, lambda: BadBuffer(mode))
        with peer:
            peer.send(b"data")
            exc = await p.lost
            # The transport closed its socket with the data unread: the kernel resets.
            with pytest.raises(ConnectionResetError):
                await recv_to_eof(loop, peer)
        return t, p, exc

    t, p, exc = run(loop, main())
    if mode == "empty":
        assert type(exc) is RuntimeError
        assert str(exc) == "get_buffer() returned an empty buffer"
    else:
        assert type(exc) is ValueError and str(exc) == "no buffer for you"
    assert len(contexts) == 1
    assert contexts[0] == {
        "message": "Fatal error: protocol.get_buffer() call failed.",
        "exception": exc,
        "transport": t,
        "protocol": p,
    }
    assert p.events == ["made", "lost"]
    assert t.is_closing()


class RaisingBufferUpdated(BufferedRecorder):
    def buffer_updated(self, nbytes):
        raise ZeroDivisionError("in buffer_updated")


def test_buffer_updated_failure_is_fatal(loop):
    contexts = collect_handler_contexts(loop)

    async def main():
        t, p, peer = await tcp_pair(loop, RaisingBufferUpdated)
        with peer:
            peer.send(b"data")
            return t, p, await p.lost

    t, p, exc = run(loop, main())
    assert type(exc) is ZeroDivisionError
    assert [c["message"] for c in contexts] == [
        "Fatal error: protocol.buffer_updated() call failed."
    ]
    assert contexts[0]["exception"] is exc and contexts[0]["transport"] is t


class SlicingBufferedProtocol(BufferedRecorder):
    """The canonical BufferedProtocol: one preallocated buffer, get_buffer() handing out
    a writable memoryview slice of its free part."""

    def __init__(self, size):
        super().__init__()
        self.big = bytearray(size)
        self.pos = 0

    def get_buffer(self, sizehint):
        self.hints.add(sizehint)
        return memoryview(self.big)[self.pos : self.pos + 11]

    def buffer_updated(self, nbytes):
        self.pos += nbytes
        self._got(b"")


def test_buffered_protocol_memoryview_slices(loop):
    payload = os.urandom(100_000)

    async def main():
        t, p, peer = await tcp_pair(loop, lambda: SlicingBufferedProtocol(len(payload) + 64))
        with peer:
            await loop.sock_sendall(peer, payload)
            peer.shutdown(socket.SHUT_WR)
            assert await p.lost is None
        return p

    p = run(loop, main())
    assert p.pos == len(payload)
    assert bytes(p.big[: p.pos]) == payload
    assert not any(p.big[p.pos :])
    assert p.events == ["made", "data", "eof", "lost"]


class ReadOnlyBuffer(BufferedRecorder):
    def get_buffer(self, sizehint):
        return b"read-only"


def test_read_only_buffer_is_a_fatal_read_error(loop):
    contexts = collect_handler_contexts(loop)

    async def main():
        t, p, peer = await tcp_pair(loop, ReadOnlyBuffer)
        with peer:
            peer.send(b"data")
            return t, p, await p.lost

    t, p, exc = run(loop, main())
    # socket.recv_into()'s own error, reported as a read error.
    assert type(exc) is TypeError
    assert "must be read-write bytes-like object, not bytes" in str(exc)
    assert [c["message"] for c in contexts] == ["Fatal read error on socket transport"]
    assert contexts[0]["exception"] is exc
    assert p.events == ["made", "lost"]


def test_set_protocol_switches_between_protocol_kinds(loop):
    async def main():
        t, p1, peer = await tcp_pair(loop, Recorder)
        with peer:
            peer.send(b"first")
            assert await p1.wait_bytes(5) == b"first"

            p2 = BufferedRecorder(sizes=(3,))
            t.set_protocol(p2)
            assert t.get_protocol() is p2
            second = b"second" * 1000
            await loop.sock_sendall(peer, second)
            assert await p2.wait_bytes(len(second)) == second

            p3 = Recorder()
            t.set_protocol(p3)
            assert t.get_protocol() is p3
            peer.send(b"third")
            assert await p3.wait_bytes(5) == b"third"
            peer.shutdown(socket.SHUT_WR)
            assert await p3.lost is None
        return t, p1, p2, p3

    t, p1, p2, p3 = run(loop, main())
    # The new protocols get no connection_made (stock does not call it on a switch).
    assert p1.events == ["made", "data"]
    assert bytes(p1.data) == b"first"
    assert p2.events == ["data"] and p2.hints == {-1}
    assert p3.events == ["data", "eof", "lost"]
    assert t.get_protocol() is None  # Dropped once the connection is lost.


# --------------------------------------------------------------------------------------
# Read flow control
# --------------------------------------------------------------------------------------


def test_pause_and_resume_reading(loop):
    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            assert t.is_reading()
            t.pause_reading()
            t.pause_reading()  # Idempotent.
            assert not t.is_reading()
            peer.send(b"while paused")
            peer.shutdown(socket.SHUT_WR)
            for _ in range(20):
                await asyncio.sleep(0.005)
            assert p.events == ["made"] and p.data == b""
            t.resume_reading()
            t.resume_reading()  # Idempotent.
            assert t.is_reading()
            assert await p.lost is None
            assert not t.is_reading()  # Closed.
        return p

    p = run(loop, main())
    assert bytes(p.data) == b"while paused"
    assert p.events == ["made", "data", "eof", "lost"]


class PausesInConnectionMade(Recorder):
    def connection_made(self, transport):
        super().connection_made(transport)
        transport.pause_reading()


def test_pause_reading_in_connection_made_wins(loop):
    """Reading starts after connection_made(); a pause there must keep it off."""

    async def main():
        t, p, peer = await tcp_pair(loop, PausesInConnectionMade)
        with peer:
            peer.send(b"early")
            for _ in range(20):
                await asyncio.sleep(0.005)
            assert not t.is_reading()
            assert p.events == ["made"]
            t.resume_reading()
            assert await p.wait_bytes(5) == b"early"
            await finish(t, p)
        return p

    assert run(loop, main()).events == ["made", "data", "lost"]


def test_pause_and_resume_reading_after_close_are_noops(loop):
    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            t.pause_reading()
            t.close()
            assert not t.is_reading()
            t.resume_reading()
            t.pause_reading()
            assert not t.is_reading()
            return await p.lost

    assert run(loop, main()) is None


# --------------------------------------------------------------------------------------
# Writing and write flow control
# --------------------------------------------------------------------------------------


def test_write_buffer_limits_and_pause_resume_writing(loop):
    payload = os.urandom(2 * 1024 * 1024)

    async def main():
        t, p, peer = await tcp_pair(loop, FlowRecorder)
        with peer:
            assert t.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            with pytest.raises(ValueError) as err:
                t.set_write_buffer_limits(high=10, low=20)
            assert str(err.value) == "high (10) must be >= low (20) must be >= 0"
            t.set_write_buffer_limits(high=100)
            assert t.get_write_buffer_limits() == (25, 100)
            t.set_write_buffer_limits(low=1000)
            assert t.get_write_buffer_limits() == (1000, 4000)
            t.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
            assert t.get_write_buffer_limits() == (16 * 1024, 64 * 1024)

            shrink_buffers(t, peer)
            chunk = 64 * 1024
            for i in range(0, len(payload), chunk):
                t.write(payload[i : i + chunk])
            # The peer does not read: the kernel took a little, the rest is queued.
            assert p.events == ["made", "pause"]
            assert p.size_at_pause > 64 * 1024
            assert t.get_write_buffer_size() > 64 * 1024
            got = await recv_exactly(loop, peer, len(payload))
            assert p.events == ["made", "pause", "resume"]
            assert p.size_at_resume <= 16 * 1024
            assert t.get_write_buffer_size() == 0
            await finish(t, p)
        return got

    assert run(loop, main()) == payload


def test_lowering_the_limits_pauses_at_once(loop):
    async def main():
        t, p, peer = await tcp_pair(loop, FlowRecorder)
        with peer:
            shrink_buffers(t, peer)
            t.set_write_buffer_limits(high=2 * 1024 * 1024)
            t.write(b"x" * 1024 * 1024)
            size = t.get_write_buffer_size()
            assert 0 < size < 1024 * 1024
            assert p.events == ["made"]
            t.set_write_buffer_limits(high=size - 1)
            assert p.events == ["made", "pause"]
            got = await recv_exactly(loop, peer, 1024 * 1024)
            assert p.events == ["made", "pause", "resume"]
            await finish(t, p)
        return got

    assert run(loop, main()) == b"x" * 1024 * 1024


def test_get_write_buffer_size_after_partial_writes(loop):
    first = os.urandom(1024 * 1024)

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            shrink_buffers(t, peer)
            assert t.get_write_buffer_size() == 0
            t.write(first)
            queued = t.get_write_buffer_size()
            assert 0 < queued < len(first)  # Partly sent, the rest queued.
            t.write(b"tail-1")
            assert t.get_write_buffer_size() == queued + 6  # Appended, not sent.
            t.write(memoryview(b"tail-22"))
            assert t.get_write_buffer_size() == queued + 13
            t.write(b"")
            assert t.get_write_buffer_size() == queued + 13
            got = await recv_exactly(loop, peer, len(first) + 13)
            # Drained by the time the peer has it all.
            for _ in range(10):
                if not t.get_write_buffer_size():
                    break
                await asyncio.sleep(0.01)
            assert t.get_write_buffer_size() == 0
            await finish(t, p)
        return got

    assert run(loop, main()) == first + b"tail-1tail-22"


class Producer(Recorder):
    """Writes ``total`` bytes in chunks, as fast as write flow control allows: stops in
    pause_writing(), continues from resume_writing() (writing from inside the
    transport's drain)."""

    def __init__(self, total, chunk):
        super().__init__()
        self.total, self.chunk = total, chunk
        self.offset = 0
        self.paused = False
        self.pauses = 0
        self.done = self.loop.create_future()

    def connection_made(self, transport):
        super().connection_made(transport)
        shrinking = transport.get_extra_info("socket")
        shrinking.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)
        transport.set_write_buffer_limits(high=32 * 1024)
        self.produce()

    def produce(self):
        while not self.paused and self.offset < self.total:
            n = min(self.chunk, self.total - self.offset)
            self.transport.write(self.pattern(self.offset, n))
            self.offset += n
        if self.offset >= self.total and not self.done.done():
            self.transport.close()
            self.done.set_result(None)

    @staticmethod
    def pattern(offset, n):
        return bytes((offset + i) % 251 for i in range(n))

    def pause_writing(self):
        assert not self.paused
        self.paused = True
        self.pauses += 1

    def resume_writing(self):
        assert self.paused
        self.paused = False
        self.produce()


def test_producer_driven_by_pause_and_resume_writing(loop):
    total = 1024 * 1024 + 17

    async def main():
        t, p, peer = await tcp_pair(loop, lambda: Producer(total, 10_000))
        with peer:
            got = await recv_to_eof(loop, peer)
            await p.done
            assert await p.lost is None
        return got, p

    got, p = run(loop, main())
    assert got == Producer.pattern(0, total)
    assert p.pauses >= 1
    assert p.events == ["made", "lost"]


def test_write_non_contiguous_memoryview_with_empty_buffer(loop):
    """socket.send() refuses it: a fatal write error, as stock."""
    contexts = collect_handler_contexts(loop)

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            t.write(memoryview(b"abcdef")[::2])
            exc = await p.lost
            assert await recv_to_eof(loop, peer) == b""
        return t, exc

    t, exc = run(loop, main())
    assert type(exc) is BufferError
    assert str(exc) == "memoryview: underlying buffer is not C-contiguous"
    assert [c["message"] for c in contexts] == ["Fatal write error on socket transport"]
    assert contexts[0]["exception"] is exc and contexts[0]["transport"] is t


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12 queues the memoryview itself")
def test_write_non_contiguous_memoryview_behind_queued_data(loop):
    """With data queued, 3.11 appends to its bytearray buffer, which raises TypeError to
    the caller; the transport stays usable."""

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            shrink_buffers(t, peer)
            t.write(b"q" * (1024 * 1024))
            with pytest.raises(TypeError) as err:
                t.write(memoryview(b"abcdef")[::2])
            assert str(err.value) == "can't set bytearray slice from memoryview"
            assert not t.is_closing()
            t.write(b"end")
            t.close()
            got = await recv_to_eof(loop, peer)
            assert await p.lost is None
        return got

    assert run(loop, main()) == b"q" * (1024 * 1024) + b"end"


def test_large_write_then_close_delivers_everything(loop):
    payload = os.urandom(5 * 1024 * 1024)

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            shrink_buffers(t, peer)
            t.write(payload)
            t.close()
            assert t.is_closing()
            head = await recv_exactly(loop, peer, 64 * 1024)
            # Most of the 5 MiB is still queued: connection_lost must wait for it.
            assert not p.lost.done()
            assert t.get_write_buffer_size() > 0
            # A bigger send buffer again, for speed.
            sock = t.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            rest = await recv_to_eof(loop, peer)
            exc = await p.lost
        return head + rest, exc, p

    got, exc, p = run(loop, main())
    assert len(got) == len(payload) and got == payload
    assert exc is None
    assert p.events == ["made", "lost"]


def test_writelines(loop):
    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            t.writelines([b"ab", bytearray(b"cd"), memoryview(b"ef"), b""])
            t.writelines([])
            t.writelines(iter([b"gh"]))
            await finish(t, p)
            return await recv_to_eof(loop, peer)

    assert run(loop, main()) == b"abcdefgh"


def test_writelines_rejects_non_buffers(loop):
    """3.11's writelines() joins the chunks; 3.12+ take each as a memoryview first.
    (The bad chunk comes first: stock 3.15 keeps the good chunks before a bad one queued
    without watching for writability, so the next write() never drains; ferroloop
    refuses the whole call.)"""

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            with pytest.raises(TypeError) as err:
                t.writelines(["text", b"ok"])
            t.write(b"fine")
            await finish(t, p)
            return str(err.value), await recv_to_eof(loop, peer)

    message, got = run(loop, main())
    if sys.version_info >= (3, 12):
        assert message == "memoryview: a bytes-like object is required, not 'str'"
    else:
        assert message == "sequence item 0: expected a bytes-like object, str found"
    assert got == b"fine"


def test_write_rejects_non_bytes(loop):
    class Outer:
        class Inner:
            pass

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            messages = []
            for bad in ("text", 42, None, [b"x"], Outer.Inner()):
                with pytest.raises(TypeError) as err:
                    t.write(bad)
                messages.append(str(err.value))
            assert not t.is_closing()
            t.write(b"still fine")
            await finish(t, p)
            return messages, await recv_to_eof(loop, peer)

    messages, got = run(loop, main())
    # 3.14 names the accepted types.
    if sys.version_info >= (3, 14):
        expected = "a bytes, bytearray, or memoryview object"
    else:
        expected = "a bytes-like object"
    assert messages == [
        f"data argument must be {expected}, not '{name}'"
        for name in ("str", "int", "NoneType", "list", "Inner")
    ]
    assert got == b"still fine"


def test_write_after_write_eof_raises(loop):
    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            assert t.can_write_eof() is True
            t.write(b"before")
            t.write_eof()
            t.write_eof()  # Idempotent.
            assert not t.is_closing()
            errors = []
            for data in (b"after", b""):
                with pytest.raises(RuntimeError) as err:
                    t.write(data)
                errors.append(str(err.value))
            with pytest.raises(TypeError):
                t.write("str is checked first")
            got = await recv_to_eof(loop, peer)
            await finish(t, p)
            return errors, got

    errors, got = run(loop, main())
    assert errors == ["Cannot call write() after write_eof()"] * 2
    assert got == b"before"


def test_writelines_after_write_eof_raises(loop):
    """The message is the installed Python's: 3.12+ has writelines() checks of its own."""

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            t.write_eof()
            with pytest.raises(RuntimeError) as err:
                t.writelines([b"after"])
            await recv_to_eof(loop, peer)
            await finish(t, p)
            return str(err.value)

    expected = "writelines()" if sys.version_info >= (3, 12) else "write()"
    assert run(loop, main()) == f"Cannot call {expected} after write_eof()"


def test_write_eof_waits_for_queued_data(loop):
    payload = os.urandom(1024 * 1024)

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            shrink_buffers(t, peer)
            t.write(payload)
            assert t.get_write_buffer_size() > 0
            t.write_eof()
            got = await recv_to_eof(loop, peer)  # Every byte, then EOF.
            assert not t.is_closing()
            await loop.sock_sendall(peer, b"answer")
            peer.shutdown(socket.SHUT_WR)
            assert await p.lost is None
        return got, p

    got, p = run(loop, main())
    assert got == payload
    assert bytes(p.data) == b"answer"
    assert p.events == ["made", "data", "eof", "lost"]


class HalfCloseServer(Recorder):
    def __init__(self, keep_open):
        super().__init__(eof_result=True if keep_open else None)
        self.keep_open = keep_open

    def eof_received(self):
        result = super().eof_received()
        self.closing_in_eof = self.transport.is_closing()
        self.loop.call_soon(self.reply)
        return result

    def reply(self):
        self.closing_after_eof = self.transport.is_closing()
        self.transport.write(b"reply:" + bytes(self.data))
        self.transport.close()


@pytest.mark.parametrize("keep_open", [True, False], ids=["eof_received-True", "None"])
def test_half_close(loop, keep_open):
    servers: list[HalfCloseServer] = []

    def factory():
        servers.append(HalfCloseServer(keep_open))
        return servers[-1]

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        async with server:
            t, p = await loop.create_connection(Recorder, *server.sockets[0].getsockname())
            t.write(b"request")
            t.write_eof()
            assert not t.is_closing()
            assert await p.lost is None
            (srv,) = servers
            assert await srv.lost is None
        return p, srv

    p, srv = run(loop, main())
    assert bytes(srv.data) == b"request"
    assert srv.events == ["made", "data", "eof", "lost"]
    assert srv.closing_in_eof is False
    if keep_open:
        assert srv.closing_after_eof is False
        assert bytes(p.data) == b"reply:request"
        assert p.events == ["made", "data", "eof", "lost"]
    else:
        # Returning None closed the transport: the reply was dropped.
        assert srv.closing_after_eof is True
        assert p.data == b""
        assert p.events == ["made", "eof", "lost"]


@pytest.mark.parametrize("when", ["before_connection_lost", "after_connection_lost", "mixed"])
def test_writes_after_close_are_dropped_with_warnings(loop, caplog, when):
    caplog.set_level(logging.WARNING, logger="asyncio")
    before = {"before_connection_lost": 10, "after_connection_lost": 0, "mixed": 3}[when]

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            t.write(b"sent")
            t.close()
            for _ in range(before):
                t.write(b"dropped")
            await p.lost
            for _ in range(10 - before):
                t.write(bytearray(b"dropped"))
            t.write(b"")  # Empty writes are not counted.
            return await recv_to_eof(loop, peer)

    assert run(loop, main()) == b"sent"
    warnings = [
        r
        for r in caplog.records
        if r.name == "asyncio" and r.getMessage() == "socket.send() raised exception."
    ]
    # Of the 10 writes to the closed connection, the 5th and later are logged.
    assert len(warnings) == 6
    assert all(r.levelno == logging.WARNING for r in warnings)


def test_writes_after_a_close_that_waited_for_queued_data(loop_kind, loop, caplog):
    """A close() that had to wait for queued bytes ends like any other close: later
    writes are dropped, the 5th and later with asyncio's warning, and abort() does
    nothing. Stock asyncio 3.11-3.13 does not count the lost connection on that path, so
    there a later write() fails with an AttributeError (its transport has already let go
    of its loop); 3.14 counts it (CPython gh-156512). ferroloop does what 3.14 does on
    every version."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    stock_raises = loop_kind == "asyncio" and sys.version_info < (3, 14)

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            shrink_buffers(t, peer)
            t.write(b"x" * (1 << 20))  # More than the kernel takes: the rest is queued.
            assert t.get_write_buffer_size() > 0
            t.close()
            assert not p.lost.done()
            received = await recv_to_eof(loop, peer)
            await p.lost
        if stock_raises:
            with pytest.raises(AttributeError):
                t.write(b"after")
            return received
        for _ in range(10):
            t.write(b"after")
        t.abort()
        return received

    assert run(loop, main()) == b"x" * (1 << 20)
    warnings = [
        r
        for r in caplog.records
        if r.name == "asyncio" and r.getMessage() == "socket.send() raised exception."
    ]
    assert len(warnings) == (0 if stock_raises else 6)


# --------------------------------------------------------------------------------------
# Errors and teardown
# --------------------------------------------------------------------------------------


def test_peer_reset_gives_connection_reset_error(loop):
    contexts = collect_handler_contexts(loop)

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        peer.send(b"last words")
        assert await p.wait_bytes(10) == b"last words"
        # SO_LINGER 0: close() sends a reset.
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        return t, p, await p.lost

    t, p, exc = run(loop, main())
    assert type(exc) is ConnectionResetError
    assert p.events == ["made", "data", "lost"]
    assert contexts == []  # OS errors are not reported to the exception handler.
    assert t.is_closing()


class RaisingDataReceived(Recorder):
    def data_received(self, data):
        super().data_received(data)
        raise ZeroDivisionError("bad protocol")


def test_data_received_raising_is_fatal_but_loop_survives(loop):
    contexts = collect_handler_contexts(loop)

    async def main():
        t, p, peer = await tcp_pair(loop, RaisingDataReceived)
        with peer:
            peer.send(b"boom")
            exc = await p.lost
            assert await recv_to_eof(loop, peer) == b""
        await asyncio.sleep(0.01)  # The loop keeps running.
        return t, p, exc

    t, p, exc = run(loop, main())
    assert type(exc) is ZeroDivisionError and str(exc) == "bad protocol"
    assert contexts == [
        {
            "message": "Fatal error: protocol.data_received() call failed.",
            "exception": exc,
            "transport": t,
            "protocol": p,
        }
    ]
    assert p.events == ["made", "data", "lost"]
    assert t.is_closing()


class RaisingEofReceived(Recorder):
    def eof_received(self):
        super().eof_received()
        raise LookupError("eof")


def test_eof_received_raising_is_fatal(loop):
    contexts = collect_handler_contexts(loop)

    async def main():
        t, p, peer = await tcp_pair(loop, RaisingEofReceived)
        with peer:
            peer.shutdown(socket.SHUT_WR)
            return t, p, await p.lost

    t, p, exc = run(loop, main())
    assert type(exc) is LookupError
    assert [c["message"] for c in contexts] == ["Fatal error: protocol.eof_received() call failed."]
    assert p.events == ["made", "eof", "lost"]


class InterruptingProtocol(Recorder):
    def data_received(self, data):
        super().data_received(data)
        if data == b"interrupt":
            raise KeyboardInterrupt


def test_keyboard_interrupt_in_data_received_propagates(loop):
    """KeyboardInterrupt is not a protocol error: it leaves run_until_complete, the
    transport stays open and the loop can be run again."""
    t, p, peer = run(loop, tcp_pair(loop, InterruptingProtocol))
    with peer:
        peer.send(b"interrupt")
        waiter = loop.create_future()
        loop.call_later(TIMEOUT, waiter.set_result, "timed out")
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(waiter)
        assert not waiter.done()
        waiter.cancel()
        assert not t.is_closing()
        peer.send(b"more")

        async def rest():
            assert await p.wait_bytes(len(b"interruptmore")) == b"interruptmore"
            return await finish(t, p)

        assert run(loop, rest()) is None
    assert p.events == ["made", "data", "lost"]


class RaisingConnectionLost(Recorder):
    def connection_lost(self, exc):
        super().connection_lost(exc)
        raise ZeroDivisionError("in connection_lost")


def test_connection_lost_raising_still_closes_the_socket(loop):
    contexts = collect_handler_contexts(loop)

    async def main():
        t, p, peer = await tcp_pair(loop, RaisingConnectionLost)
        with peer:
            t.close()
            assert await p.lost is None
            assert await recv_to_eof(loop, peer) == b""  # Closed in spite of the error.
        await asyncio.sleep(0.01)
        return t

    t = run(loop, main())
    assert len(contexts) == 1
    assert type(contexts[0]["exception"]) is ZeroDivisionError
    assert contexts[0]["message"].startswith("Exception in callback ")
    assert "._call_connection_lost(" in contexts[0]["message"]
    assert t.get_extra_info("socket").fileno() == -1


def test_unclosed_transport_warns_when_collected(loop):
    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        return t.get_extra_info("socket").fileno(), peer

    gc.collect()  # Garbage of earlier tests must not be counted.
    fd, peer = run(loop, main())
    with peer:
        loop.close()  # Drops the loop's reader, the last reference to the transport.
        with pytest.warns(ResourceWarning) as record:
            gc.collect()
        messages = [str(w.message) for w in record]
        transport_warnings = [m for m in messages if m.startswith("unclosed transport <")]
        assert len(transport_warnings) == 1, messages
        assert transport_warnings[0].endswith(f" fd={fd}>")
        peer.settimeout(TIMEOUT)
        assert peer.recv(10) == b""  # __del__ closed the socket.


def test_abort_drops_queued_data(loop):
    payload = b"z" * (2 * 1024 * 1024)

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            shrink_buffers(t, peer)
            t.write(payload)
            assert t.get_write_buffer_size() > 0
            t.abort()
            assert t.is_closing()
            assert t.get_write_buffer_size() == 0
            t.abort()  # A second abort() or close() changes nothing.
            t.close()
            exc = await p.lost
            got = await recv_to_eof(loop, peer)
        return exc, got, p

    exc, got, p = run(loop, main())
    assert exc is None
    assert p.events == ["made", "lost"]
    assert len(got) < len(payload) and got == payload[: len(got)]


def test_abort_after_close_with_pending_data(loop):
    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            shrink_buffers(t, peer)
            t.write(b"q" * (1024 * 1024))
            t.close()
            assert t.get_write_buffer_size() > 0
            t.abort()
            assert t.get_write_buffer_size() == 0
            exc = await p.lost
            await recv_to_eof(loop, peer)
        await asyncio.sleep(0.01)
        return exc, p

    exc, p = run(loop, main())
    assert exc is None and p.events == ["made", "lost"]


def test_fd_callbacks_refused_on_transport_fd(loop):
    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            fd = t.get_extra_info("socket").fileno()
            expected = f"File descriptor {fd!r} is used by transport {t!r}"
            for method, args in [
                (loop.add_reader, (fd, print)),
                (loop.add_writer, (fd, print)),
                (loop.remove_reader, (fd,)),
                (loop.remove_writer, (fd,)),
            ]:
                with pytest.raises(RuntimeError) as err:
                    method(*args)
                assert str(err.value) == expected, method
            # Nothing was changed by the refused calls: the transport still reads.
            peer.send(b"ok")
            assert await p.wait_bytes(2) == b"ok"

            # Once the transport is closing, the fd is the caller's business again.
            t.close()
            loop.add_reader(fd, print)
            assert loop.remove_reader(fd) is True
            loop.add_writer(fd, print)
            assert loop.remove_writer(fd) is True
            await p.lost

            # A socket reusing the closed fd's number is not mistaken for the transport.
            a, b = socket.socketpair()
            with a, b:
                got = loop.create_future()
                loop.add_reader(a.fileno(), lambda: got.set_result(a.recv(10)))
                b.send(b"reader")
                assert await got == b"reader"
                assert loop.remove_reader(a.fileno()) is True

    run(loop, main())


def test_is_closing_states(loop):
    async def main():
        states = []
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            states.append(t.is_closing())
            t.close()
            states.append(t.is_closing())
            await p.lost
            states.append(t.is_closing())

        t2, p2, peer2 = await tcp_pair(loop, Recorder)
        with peer2:
            peer2.shutdown(socket.SHUT_WR)  # eof_received returns None: closes.
            await p2.lost
            states.append(t2.is_closing())
        return states

    assert run(loop, main()) == [False, True, True, True]


def test_repr_states(loop):
    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        fd = t.get_extra_info("socket").fileno()
        reprs = [repr(t)]
        with peer:
            t.pause_reading()
            reprs.append(repr(t))
            t.resume_reading()
            shrink_buffers(t, peer)
            t.write(b"w" * (1024 * 1024))
            reprs.append(repr(t).replace(f"bufsize={t.get_write_buffer_size()}", "bufsize=N"))
            await recv_exactly(loop, peer, 1024 * 1024)
            for _ in range(10):
                if not t.get_write_buffer_size():
                    break
                await asyncio.sleep(0.01)
            t.close()
            reprs.append(repr(t))
            await p.lost
            reprs.append(repr(t))
        return fd, t, reprs

    fd, t, reprs = run(loop, main())
    bodies = [r.split(" ", 1)[1] for r in reprs]  # Class names differ.
    assert all(r.startswith("<") for r in reprs)
    assert bodies == [
        f"fd={fd} read=polling write=<idle, bufsize=0>>",
        f"fd={fd} read=idle write=<idle, bufsize=0>>",
        f"fd={fd} read=polling write=<polling, bufsize=N>>",
        f"closing fd={fd} read=idle write=<idle, bufsize=0>>",
        f"closed fd={fd}>",
    ]
    loop.close()
    assert repr(t).split(" ", 1)[1] == f"closed fd={fd}>"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_short_connections_leak_no_fds(loop):
    async def one(port):
        t, p = await loop.create_connection(Recorder, "127.0.0.1", port)
        t.write(b"ping")
        assert await p.wait_bytes(4) == b"ping"
        assert await finish(t, p) is None

    async def main(count):
        server = await loop.create_server(EchoServer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for _ in range(count):
            await one(port)
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # Let the server side's connection_lost calls run.

    run(loop, main(1))  # Warm-up: anything created lazily once.
    gc.collect()
    before = open_fds()
    run(loop, main(300), timeout=30)
    gc.collect()
    assert open_fds() == before


# --------------------------------------------------------------------------------------
# loop.sendfile
# --------------------------------------------------------------------------------------


@pytest.fixture
def datafile(tmp_path):
    data = os.urandom(1024 * 1024 + 123)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("window", [None, (1000, 300_000), (5, None)], ids=str)
def test_sendfile(loop, datafile, window):
    path, data = datafile
    offset, count = window or (0, None)
    expected = data[offset : offset + count if count else None]

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer, open(path, "rb") as f:
            receiving = asyncio.ensure_future(recv_exactly(loop, peer, len(expected)))
            sent = await loop.sendfile(t, f, offset, count)
            got = await receiving
            position = f.tell()
            # The transport is usable afterwards, both ways.
            assert t.is_reading()
            t.write(b"after")
            assert await recv_exactly(loop, peer, 5) == b"after"
            peer.send(b"back")
            assert await p.wait_bytes(4) == b"back"
            await finish(t, p)
        return sent, got, position

    sent, got, position = run(loop, main())
    assert sent == len(expected)
    assert got == expected
    assert position == offset + len(expected)


def test_sendfile_fallback(loop):
    data = os.urandom(300_000)

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer:
            with pytest.raises(asyncio.SendfileNotAvailableError) as err:
                await loop.sendfile(t, io.BytesIO(data), fallback=False)
            assert str(err.value) == "not a regular file"
            assert t.get_protocol() is p and t.is_reading()

            f = io.BytesIO(data)
            receiving = asyncio.ensure_future(recv_exactly(loop, peer, len(data) - 10))
            sent = await loop.sendfile(t, f, 10)
            got = await receiving
            assert t.get_protocol() is p  # The fallback's own protocol is gone again.
            assert f.tell() == len(data)
            await finish(t, p)
        return sent, got

    sent, got = run(loop, main())
    assert sent == len(data) - 10 and got == data[10:]


def test_write_during_sendfile_and_sendfile_on_closing_transport(loop, datafile):
    path, data = datafile

    async def main():
        t, p, peer = await tcp_pair(loop, Recorder)
        with peer, open(path, "rb") as f:
            shrink_buffers(t, peer)
            sending = asyncio.ensure_future(loop.sendfile(t, f))
            for _ in range(3):
                await asyncio.sleep(0)
            assert not sending.done()  # The peer is not reading.
            with pytest.raises(RuntimeError) as err:
                t.write(b"interleaved")
            assert str(err.value) == "unable to write; sendfile is in progress"
            got = await recv_exactly(loop, peer, len(data))
            assert await sending == len(data)
            t.close()
            with pytest.raises(RuntimeError) as err:
                await loop.sendfile(t, f)
            assert str(err.value) == "Transport is closing"
            await p.lost
        return got

    assert run(loop, main()) == data


# --------------------------------------------------------------------------------------
# Making connections
# --------------------------------------------------------------------------------------


def test_connect_accepted_socket(loop):
    async def main():
        with socket.create_server(("127.0.0.1", 0)) as srv:
            client = socket.create_connection(srv.getsockname(), timeout=TIMEOUT)
            accepted, _ = srv.accept()
        with client:
            t, p = await loop.connect_accepted_socket(Recorder, accepted)
            assert p.events == ["made"]
            assert accepted.gettimeout() == 0  # Made non-blocking.
            assert t.get_extra_info("peername") == client.getsockname()
            assert t.get_extra_info("socket").fileno() == accepted.fileno()
            client.setblocking(False)
            await loop.sock_sendall(client, b"hi there")
            assert await p.wait_bytes(8) == b"hi there"
            t.write(b"back")
            assert await recv_exactly(loop, client, 4) == b"back"
            await finish(t, p)
            assert accepted.fileno() == -1  # The transport closed the socket.

        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with udp:
            with pytest.raises(ValueError) as err:
                await loop.connect_accepted_socket(Recorder, udp)
            assert str(err.value) == f"A Stream Socket was expected, got {udp!r}"

    run(loop, main())


def test_connect_accepted_unix_socketpair(loop):
    a, b = socket.socketpair()

    async def main():
        t, p = await loop.connect_accepted_socket(Recorder, a)
        with b:
            b.setblocking(False)
            t.write(b"over unix")
            assert await recv_exactly(loop, b, 9) == b"over unix"
            b.shutdown(socket.SHUT_WR)
            assert await p.lost is None
        return p

    assert run(loop, main()).events == ["made", "eof", "lost"]


def test_create_connection_with_sock(loop):
    async def main():
        with socket.create_server(("127.0.0.1", 0)) as srv:
            sock = socket.create_connection(srv.getsockname(), timeout=TIMEOUT)
            peer, _ = srv.accept()
            with peer:
                with pytest.raises(ValueError) as err:
                    await loop.create_connection(Recorder, "127.0.0.1", 1, sock=sock)
                assert str(err.value) == "host/port and sock can not be specified at the same time"
                t, p = await loop.create_connection(Recorder, sock=sock)
                assert sock.gettimeout() == 0
                assert t.get_extra_info("peername") == srv.getsockname()
                t.write(b"via sock=")
                peer.settimeout(TIMEOUT)
                assert peer.recv(100) == b"via sock="
                await finish(t, p)
        with pytest.raises(ValueError) as err:
            await loop.create_connection(Recorder)
        assert str(err.value) == "host and port was not specified and no sock specified"

    run(loop, main())


def test_create_connection_local_addr(loop):
    async def main():
        local_port = free_port()
        t, p, peer = await tcp_pair(loop, Recorder, local_addr=("127.0.0.1", local_port))
        with peer:
            assert t.get_extra_info("sockname") == ("127.0.0.1", local_port)
            assert peer.getpeername() == ("127.0.0.1", local_port)
            await finish(t, p)

    run(loop, main())


@pytest.mark.parametrize(
    "options",
    [{}, {"happy_eyeballs_delay": 0.25}, {"happy_eyeballs_delay": 0.25, "interleave": 2}],
    ids=["plain", "happy_eyeballs", "interleave"],
)
def test_create_connection_to_localhost(loop, options):
    async def main():
        server = await loop.create_server(EchoServer, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            t, p = await loop.create_connection(Recorder, "localhost", port, **options)
            assert t.get_extra_info("peername") == ("127.0.0.1", port)
            t.write(b"eyeballs")
            assert await p.wait_bytes(8) == b"eyeballs"
            await finish(t, p)

    run(loop, main())


def test_create_connection_refused(loop):
    port = free_port()

    async def main():
        with pytest.raises(ConnectionRefusedError) as err:
            await loop.create_connection(Recorder, "127.0.0.1", port)
        return str(err.value)

    assert run(loop, main()) == f"[Errno 111] Connect call failed ('127.0.0.1', {port})"


@pytest.mark.skipif(sys.version_info < (3, 12), reason="all_errors= is new in 3.12")
def test_create_connection_all_errors(loop):
    port = free_port()

    async def main():
        with pytest.raises(ExceptionGroup) as err:
            await loop.create_connection(Recorder, "127.0.0.1", port, all_errors=True)
        return err.value

    group = run(loop, main())
    assert group.message == "create_connection failed"
    assert [type(e) for e in group.exceptions] == [ConnectionRefusedError]
    assert str(group.exceptions[0]) == f"[Errno 111] Connect call failed ('127.0.0.1', {port})"


def _test_cert() -> str:
    import test

    base = os.path.dirname(test.__file__)
    for candidate in (
        os.path.join(base, "certdata", "keycert.pem"),
        os.path.join(base, "keycert.pem"),
    ):
        if os.path.exists(candidate):
            return candidate
    unavailable("CPython's test certificate (test/certdata/keycert.pem) is not installed")


def test_tls_echo_over_streams(loop):
    cert = _test_cert()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    payload = os.urandom(200_000)

    async def handle(reader, writer):
        data = await reader.readexactly(len(payload))
        writer.write(data[::-1])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
            ssl_object = writer.get_extra_info("ssl_object")
            assert isinstance(ssl_object, ssl.SSLObject)
            assert ssl_object.version().startswith("TLS")
            assert writer.get_extra_info("peername") == ("127.0.0.1", port)
            writer.write(payload)
            await writer.drain()
            got = await reader.readexactly(len(payload))
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
        return got

    assert run(loop, main()) == payload[::-1]


# --------------------------------------------------------------------------------------
# Garbage collection
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["close", "abort", "peer_closes", "fatal_error"])
def test_closed_transport_and_protocol_are_freed(loop, ending):
    """Once connection_lost ran, nothing keeps the transport or its protocol alive (the
    transport <-> protocol cycle is collectable, and the loop holds no references)."""
    import gc
    import weakref

    contexts = collect_handler_contexts(loop)

    async def main():
        t, p, peer = await tcp_pair(
            loop, RaisingDataReceived if ending == "fatal_error" else Recorder
        )
        with peer:
            t.write(b"x" * 100_000)
            if ending == "close":
                t.close()
            elif ending == "abort":
                t.abort()
            elif ending == "peer_closes":
                peer.shutdown(socket.SHUT_WR)
            else:
                peer.send(b"boom")
            await recv_to_eof(loop, peer) if ending != "abort" else None
            await p.lost
        await asyncio.sleep(0)
        return weakref.ref(t), weakref.ref(p)

    transport_ref, protocol_ref = run(loop, main())
    assert len(contexts) == (1 if ending == "fatal_error" else 0)
    contexts.clear()  # The handler's context names the transport and protocol.
    gc.collect()
    assert transport_ref() is None
    assert protocol_ref() is None
