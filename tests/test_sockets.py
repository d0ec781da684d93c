"""The sock_* methods and DNS helpers, on ferroloop and stock asyncio.

Each test pins stock asyncio's behaviour: immediate and parked operations, large
transfers, UDP, resolution of addresses, cancellation that leaves nothing registered
and loses no data, peer resets, and the errors for bad input.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import struct

import pytest


def nonblocking_pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


@pytest.fixture
def pair():
    a, b = nonblocking_pair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(100)
    srv.setblocking(False)
    yield srv
    srv.close()


def test_recv_waits_for_data(loop, pair):
    a, b = pair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        assert not task.done()
        await loop.sock_sendall(b, b"hello")
        return await task

    assert loop.run_until_complete(main()) == b"hello"


def test_sock_methods_are_coroutines(loop, pair):
    """As on stock asyncio, sock_* return coroutines (so create_task() accepts them)."""
    a, b = pair

    async def main():
        coro = loop.sock_recv(a, 10)
        assert asyncio.iscoroutine(coro)
        task = loop.create_task(coro)
        await loop.sock_sendall(b, b"x")
        return await task

    assert loop.run_until_complete(main()) == b"x"


class SocketWithOddResults(socket.socket):
    """A socket subclass whose ``recv`` returns what a real socket never would."""

    result: object = None

    def recv(self, bufsize, flags=0):
        return self.result


@pytest.mark.parametrize(
    "result", [b"data", 7, None, (1, 2), (), ValueError("as a value")], ids=repr
)
def test_sock_recv_returns_any_result_unchanged(loop, result):
    """A finished step reports its result through StopIteration.value (``send``) and
    through ``await``, whatever the result is: a tuple is not taken as an argument
    list, nor an exception as the exception."""
    with SocketWithOddResults(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        sock.result = result

        with pytest.raises(StopIteration) as stopped:
            loop.sock_recv(sock, 10).send(None)
        assert stopped.value.value is result

        async def main():
            return await loop.sock_recv(sock, 10)

        assert loop.run_until_complete(main()) is result


def test_sock_ops_driven_by_hand(loop, pair):
    """send(None) runs the first step: an immediate result ends it at once."""
    a, b = pair
    with pytest.raises(StopIteration) as stopped:
        loop.sock_sendall(b, b"abc").send(None)
    assert stopped.value.value is None
    with pytest.raises(StopIteration) as stopped:
        loop.sock_recv(a, 2).send(None)
    assert stopped.value.value == b"ab"
    buf = bytearray(4)
    with pytest.raises(StopIteration) as stopped:
        loop.sock_recv_into(a, buf).send(None)
    assert stopped.value.value == 1
    assert buf[:1] == b"c"


def test_recv_into_and_large_sendall(loop, pair):
    a, b = pair
    payload = os.urandom(4 * 1024 * 1024)

    async def reader():
        buf = bytearray(65536)
        got = bytearray()
        while len(got) < len(payload):
            n = await loop.sock_recv_into(a, buf)
            assert n > 0
            got += buf[:n]
        return bytes(got)

    async def main():
        read = asyncio.ensure_future(reader())
        await loop.sock_sendall(b, payload)
        return await read

    assert loop.run_until_complete(main()) == payload


def test_connect_accept_echo(loop, listener):
    async def main():
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        try:
            connecting = asyncio.ensure_future(loop.sock_connect(client, listener.getsockname()))
            conn, addr = await loop.sock_accept(listener)
            await connecting
            with conn:
                assert addr == client.getsockname()
                assert conn.gettimeout() == 0  # accepted sockets are non-blocking
                await loop.sock_sendall(client, b"ping")
                assert await loop.sock_recv(conn, 10) == b"ping"
        finally:
            client.close()

    loop.run_until_complete(main())


def test_connect_resolves_localhost(loop, listener):
    async def main():
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        try:
            await asyncio.gather(
                loop.sock_connect(client, ("localhost", listener.getsockname()[1])),
                loop.sock_accept(listener),
            )
            assert client.getpeername() == listener.getsockname()
        finally:
            client.close()

    loop.run_until_complete(main())


def test_connect_refused(loop):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def main():
        client = socket.socket()
        client.setblocking(False)
        try:
            with pytest.raises(ConnectionRefusedError):
                await loop.sock_connect(client, ("127.0.0.1", port))
        finally:
            client.close()

    loop.run_until_complete(main())


def test_udp_sendto_recvfrom(loop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))

    async def main():
        receiving = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0)
        sent = await loop.sock_sendto(a, b"dgram", b.getsockname())
        data, addr = await receiving
        buf = bytearray(10)
        await loop.sock_sendto(a, b"12345", b.getsockname())
        n, addr2 = await loop.sock_recvfrom_into(b, buf)
        return sent, data, addr, bytes(buf[:n]), addr2

    try:
        sent, data, addr, data2, addr2 = loop.run_until_complete(main())
        assert (sent, data, data2) == (5, b"dgram", b"12345")
        assert addr == addr2 == a.getsockname()
    finally:
        a.close()
        b.close()


def test_cancelled_recv_leaves_no_reader_and_loses_no_data(loop, pair):
    a, b = pair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.remove_reader(a) is False  # nothing left registered
        b.send(b"kept")
        return await loop.sock_recv(a, 100)

    assert loop.run_until_complete(main()) == b"kept"


def test_peer_reset_raises_connection_reset(loop):
    async def main():
        srv = socket.create_server(("127.0.0.1", 0))
        srv.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        try:
            _, (conn, _) = await asyncio.gather(
                loop.sock_connect(client, srv.getsockname()), loop.sock_accept(srv)
            )
            # SO_LINGER 0 makes close() send a reset.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            pending = asyncio.ensure_future(loop.sock_recv(client, 100))
            await asyncio.sleep(0.01)
            conn.close()
            with pytest.raises(ConnectionResetError):
                await pending
        finally:
            client.close()
            srv.close()

    loop.run_until_complete(main())


def test_closed_fd_while_waiting_does_not_crash_loop(loop, pair):
    a, b = pair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        task.cancel()
        a.close()
        await asyncio.sleep(0.01)
        return task.cancelled()

    assert loop.run_until_complete(main()) is True


def test_blocking_socket_rejected_in_debug_mode(loop):
    a, b = socket.socketpair()
    loop.set_debug(True)
    try:
        with pytest.raises(ValueError, match="the socket must be non-blocking"):
            loop.run_until_complete(loop.sock_recv(a, 1))
    finally:
        a.close()
        b.close()


def test_getaddrinfo_and_getnameinfo(loop):
    async def main():
        infos = await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        name = await loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST)
        return infos, name

    infos, name = loop.run_until_complete(main())
    assert infos[0][4] == ("127.0.0.1", 80)
    assert name[0] == "127.0.0.1"


def test_sock_sendfile(loop, tmp_path, listener):
    data = os.urandom(300_000)
    path = tmp_path / "payload"
    path.write_bytes(data)

    async def main():
        client = socket.socket()
        client.setblocking(False)
        try:
            _, (conn, _) = await asyncio.gather(
                loop.sock_connect(client, listener.getsockname()), loop.sock_accept(listener)
            )
            with conn, open(path, "rb") as f:
                sending = asyncio.ensure_future(loop.sock_sendfile(client, f))
                got = bytearray()
                while len(got) < len(data):
                    got += await loop.sock_recv(conn, 65536)
                sent = await sending
                assert f.tell() == len(data)
                return sent, bytes(got)
        finally:
            client.close()

    sent, got = loop.run_until_complete(main())
    assert sent == len(data) and got == data


def test_sock_sendfile_without_fallback_needs_a_real_file(loop, pair):
    """A file object without a descriptor cannot use os.sendfile: fallback=False raises
    SendfileNotAvailableError, the default falls back to plain sends."""
    a, b = pair

    async def main():
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sock_sendfile(a, io.BytesIO(b"data"), fallback=False)
        sent = await loop.sock_sendfile(a, io.BytesIO(b"data"))
        return sent, await loop.sock_recv(b, 10)

    assert loop.run_until_complete(main()) == (4, b"data")


def test_sock_sendfile_rejects_datagram_sockets(loop):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    try:
        with pytest.raises(ValueError, match="only SOCK_STREAM type sockets are supported"):
            loop.run_until_complete(loop.sock_sendfile(udp, io.BytesIO(b"x")))
    finally:
        udp.close()


def test_many_concurrent_socketpairs(loop):
    pairs = [nonblocking_pair() for _ in range(1000)]

    async def echo(a, b, i):
        payload = str(i).encode()
        receiving = asyncio.ensure_future(loop.sock_recv(a, 100))
        await loop.sock_sendall(b, payload)
        return await receiving == payload

    async def main():
        return await asyncio.gather(*(echo(a, b, i) for i, (a, b) in enumerate(pairs)))

    try:
        assert all(loop.run_until_complete(main()))
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# Waits of sock_recv/sock_recv_into keep the socket's registration between operations on
# ferroloop (see src/event_loop/fd_callbacks.rs); these pin what must hold regardless.


def test_many_waits_on_one_socket_deliver_everything_in_order(loop, pair):
    """1000 recvs that each have to wait, on one socket, alternating recv/recv_into."""
    a, b = pair

    async def main():
        got = []
        buf = bytearray(16)
        for i in range(1000):
            message = f"{i:08}".encode()
            loop.call_soon(b.send, message)
            if i % 2:
                got.append(await loop.sock_recv(a, 16))
            else:
                n = await loop.sock_recv_into(a, buf)
                got.append(bytes(buf[:n]))
        return got

    assert loop.run_until_complete(main()) == [f"{i:08}".encode() for i in range(1000)]


def test_recv_after_a_wait_returns_at_most_nbytes_and_keeps_the_rest(loop, pair):
    """A recv that had to wait reads at most nbytes; the rest is there for the next one."""
    a, b = pair

    async def main():
        loop.call_later(0.005, b.send, b"0123456789")
        first = await loop.sock_recv(a, 4)
        second = await loop.sock_recv(a, 100)
        loop.call_later(0.005, b.close)
        eof = await loop.sock_recv(a, 100)  # the peer closed while this one waited
        return first, second, eof

    assert loop.run_until_complete(main()) == (b"0123", b"456789", b"")


def test_recv_wait_with_a_large_nbytes_and_large_messages(loop, pair):
    """Waits with nbytes far above what arrives, and messages above one read's worth."""
    a, b = pair
    payload = os.urandom(1 << 20)

    async def main():
        sender = asyncio.ensure_future(loop.sock_sendall(b, payload))
        got = bytearray()
        while len(got) < len(payload):
            chunk = await loop.sock_recv(a, 4 << 20)
            assert chunk, "unexpected EOF"
            got += chunk
        await sender
        return bytes(got)

    assert loop.run_until_complete(main()) == payload


def test_wait_for_timeout_on_recv_unregisters_and_loses_no_data(loop, pair):
    a, b = pair

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(a, 100), 0.01)
        with pytest.raises(KeyError):
            loop._selector.get_key(a)
        b.send(b"after the timeout")
        await asyncio.sleep(0.01)  # readable with nothing registered: nobody reads it
        return await loop.sock_recv(a, 100)

    assert loop.run_until_complete(main()) == b"after the timeout"


def test_recv_into_waits_and_fills_a_slice_of_the_buffer(loop, pair):
    a, b = pair
    buf = bytearray(b"." * 12)

    async def main():
        loop.call_later(0.005, b.send, b"abcdefgh")
        n = await loop.sock_recv_into(a, memoryview(buf)[2:6])
        m = await loop.sock_recv_into(a, buf)  # the rest was left in the socket
        return n, m

    assert loop.run_until_complete(main()) == (4, 4)
    assert buf == bytearray(b"efghcd......")


def test_recv_into_bad_buffers_raise_the_socket_errors(loop, pair):
    """Whatever socket.recv_into refuses, sock_recv_into refuses with the same error."""
    a, b = pair
    released = memoryview(bytearray(4))
    released.release()
    bad = [b"immutable", memoryview(bytearray(8))[::2], released, "text", 42]

    def error_of(call, *args):
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001 - the error itself is the point
            return type(exc), str(exc)
        return None

    async def main():
        b.send(b"x" * 100)  # readable: the socket's own call gets past would-block
        for buf in bad:
            expected = error_of(a.recv_into, buf)
            assert expected is not None
            got = None
            try:
                await loop.sock_recv_into(a, buf)
            except Exception as exc:  # noqa: BLE001
                got = type(exc), str(exc)
            assert got == expected, buf

    loop.run_until_complete(main())


def test_recv_into_a_buffer_released_while_waiting(loop, pair):
    """The buffer goes away while the read waits: the error the socket gives for it."""
    a, b = pair
    view = memoryview(bytearray(16))

    async def main():
        task = asyncio.ensure_future(loop.sock_recv_into(a, view))
        await asyncio.sleep(0.01)
        view.release()
        b.send(b"data")
        with pytest.raises(TypeError, match="read-write bytes-like object"):
            await asyncio.wait_for(task, 5)
        return await loop.sock_recv(a, 100)  # nothing was consumed

    assert loop.run_until_complete(main()) == b"data"


def test_recv_into_an_empty_buffer(loop, pair):
    a, b = pair

    async def main():
        b.send(b"kept")
        n = await loop.sock_recv_into(a, bytearray())
        return n, await loop.sock_recv(a, 100)

    assert loop.run_until_complete(main()) == (0, b"kept")


def test_descriptor_number_reused_by_a_new_socket(loop):
    """A socket that waited in sock_recv is closed; the next socket gets its descriptor
    number, and a wait on it still sees data (no stale registration)."""

    async def main():
        replies = []
        for round_ in range(5):
            a, b = nonblocking_pair()
            with a, b:
                fd = a.fileno()
                loop.call_later(0.001, b.send, b"round %d" % round_)
                replies.append(await loop.sock_recv(a, 100))
            c, d = nonblocking_pair()
            with c, d:
                assert fd in (c.fileno(), d.fileno())  # the number came back
                reader = c if c.fileno() == fd else d
                writer = d if reader is c else c
                loop.call_later(0.001, writer.send, b"reused %d" % round_)
                replies.append(await asyncio.wait_for(loop.sock_recv(reader, 100), 5))
        return replies

    expected = []
    for i in range(5):
        expected += [b"round %d" % i, b"reused %d" % i]
    assert loop.run_until_complete(main()) == expected


def test_socket_that_waited_is_freed_when_dropped(loop):
    """The loop does not keep a socket alive after its operations finished."""
    import gc
    import warnings
    import weakref

    a, b = nonblocking_pair()

    async def main(sock):
        loop.call_soon(b.send, b"x")
        return await loop.sock_recv(sock, 10)

    assert loop.run_until_complete(main(a)) == b"x"
    ref = weakref.ref(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del a
        gc.collect()
    assert ref() is None
    b.close()


def test_add_reader_on_a_socket_used_by_sock_recv(loop, pair):
    """add_reader after sock_recv waits: level-triggered as usual, removable, and the
    socket works with sock_recv again afterwards."""
    a, b = pair

    async def main():
        loop.call_soon(b.send, b"first")
        assert await loop.sock_recv(a, 100) == b"first"
        calls = 0
        fired = asyncio.Event()

        def on_readable():
            nonlocal calls
            calls += 1
            if calls == 3:
                fired.set()

        loop.add_reader(a, on_readable)
        b.send(b"pending")  # never read by the callback: level-triggered, fires again
        await asyncio.wait_for(fired.wait(), 5)
        assert loop.remove_reader(a) is True
        assert loop.remove_reader(a) is False
        assert await loop.sock_recv(a, 100) == b"pending"
        loop.call_later(0.001, b.send, b"after")
        return await loop.sock_recv(a, 100)

    assert loop.run_until_complete(main()) == b"after"


def test_add_reader_replaces_the_reader_of_a_waiting_sock_recv(loop, pair):
    """A descriptor has one reader: add_reader while sock_recv waits replaces the
    operation's reader, which then never completes (stock asyncio's selector key)."""
    a, b = pair

    async def main():
        waiting = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        fired = asyncio.Event()
        loop.add_reader(a, fired.set)
        b.send(b"data")
        await asyncio.wait_for(fired.wait(), 5)
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert loop.remove_reader(a) is True
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return await loop.sock_recv(a, 100)  # the reader callback did not read it

    assert loop.run_until_complete(main()) == b"data"


def test_sock_recv_replaces_an_add_reader_callback(loop, pair):
    """sock_recv waiting on a descriptor with an add_reader callback replaces it: the
    callback never runs, and nothing is left to remove afterwards."""
    a, b = pair

    async def main():
        calls = []
        loop.add_reader(a, calls.append, "called")
        loop.call_later(0.01, b.send, b"data")
        got = await loop.sock_recv(a, 100)
        await asyncio.sleep(0.01)
        return got, calls, loop.remove_reader(a)

    assert loop.run_until_complete(main()) == (b"data", [], False)


def test_remove_reader_removes_a_waiting_sock_recv_reader(loop, pair):
    a, b = pair

    async def main():
        waiting = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        assert loop.remove_reader(a) is True
        b.send(b"data")
        await asyncio.sleep(0.01)
        assert not waiting.done()  # nothing watches the socket for it any more
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return await loop.sock_recv(a, 100)

    assert loop.run_until_complete(main()) == b"data"


def test_cancelled_wait_is_unregistered_as_seen_by_the_selector(loop, pair):
    """After a cancelled sock_recv nothing watches the socket (what stock's selector
    says, and what transports' repr() shows)."""
    a, b = pair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        assert loop._selector.get_key(a).events == 1  # EVENT_READ while waiting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(KeyError):
            loop._selector.get_key(a)

    loop.run_until_complete(main())


# sock_recv/sock_sendall return coroutines on stock asyncio; on ferroloop, a native
# object that must behave as one in every way a program can observe.


def test_sock_operations_in_tasks_gather_and_wait_for(loop, pair):
    a, b = pair

    async def main():
        sender = asyncio.ensure_future(loop.sock_sendall(b, b"ping"))
        got, sent = await asyncio.gather(loop.sock_recv(a, 100), sender)
        assert (got, sent) == (b"ping", None)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_recv(a, 100), 0.01)
        b.send(b"after timeout")  # The timed-out recv left nothing behind to steal it.
        return await asyncio.wait_for(loop.sock_recv(a, 100), 5)

    assert loop.run_until_complete(main()) == b"after timeout"


def test_bad_arguments_raise_when_awaited_as_stock(loop, pair):
    a, b = pair

    async def outcome(aw):
        try:
            return await aw
        except Exception as exc:
            return type(exc), str(exc)

    async def main():
        ops = [
            loop.sock_recv(a, "ten"),
            loop.sock_recv(a, -1),
            loop.sock_sendall(b, "text"),
            loop.sock_sendall(b, 42),
        ]
        return [await outcome(op) for op in ops]

    results = loop.run_until_complete(main())
    assert [r[0] for r in results] == [TypeError, ValueError, TypeError, TypeError]
    assert results[1][1] == "negative buffersize in recv"


def test_ssl_socket_refused(loop):
    import ssl

    ctx = ssl.create_default_context()
    with socket.socket() as raw:
        wrapped = ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        with wrapped:

            async def main():
                with pytest.raises(TypeError, match="Socket cannot be of type SSLSocket"):
                    await loop.sock_recv(wrapped, 10)
                with pytest.raises(TypeError, match="Socket cannot be of type SSLSocket"):
                    await loop.sock_sendall(wrapped, b"x")

            loop.run_until_complete(main())


def test_socket_subclass_uses_its_own_methods(loop, pair):
    a, b = pair
    calls = []

    class Recording(socket.socket):
        def recv(self, n, *args):
            calls.append(("recv", n))
            return super().recv(n, *args)

        def send(self, data, *args):
            calls.append(("send", bytes(data)))
            return super().send(data, *args)

    sub = Recording(fileno=os.dup(a.fileno()))
    sub.setblocking(False)
    with sub:

        async def main():
            await loop.sock_sendall(sub, b"out")
            assert b.recv(10) == b"out"
            loop.call_soon(b.send, b"in")
            return await loop.sock_recv(sub, 10)

        assert loop.run_until_complete(main()) == b"in"
    assert calls[0] == ("send", b"out")
    assert ("recv", 10) in calls


def test_awaiting_twice_and_closing(loop, pair):
    a, b = pair

    async def main():
        b.send(b"x")
        op = loop.sock_recv(a, 10)
        assert await op == b"x"
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            await op
        never_started = loop.sock_recv(a, 10)
        never_started.close()  # A coroutine that never ran closes quietly.
        waiting = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        b.send(b"kept")
        return await loop.sock_recv(a, 10)

    assert loop.run_until_complete(main()) == b"kept"


def test_sock_recv_in_an_eager_task(loop, pair):
    eager = getattr(asyncio, "eager_task_factory", None)
    if eager is None:
        pytest.skip("eager tasks are 3.12+")
    a, b = pair

    async def main():
        loop.set_task_factory(eager)
        b.send(b"ready")
        done_at_once = asyncio.create_task(loop.sock_recv(a, 10))
        assert done_at_once.done()  # Data was there: the eager step completed it.
        waiting = asyncio.create_task(loop.sock_recv(a, 10))
        assert not waiting.done()
        b.send(b"later")
        return done_at_once.result(), await waiting

    assert loop.run_until_complete(main()) == (b"ready", b"later")
