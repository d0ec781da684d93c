"""Datagram transports (``loop.create_datagram_endpoint``), on ferroloop and stock asyncio.

Every test pins what stock asyncio's ``_SelectorDatagramTransport`` does, on UDP over
IPv4 and IPv6 and on Unix datagram sockets, connected and not: the addresses handed to
``datagram_received`` (as ``socket.recvfrom`` gives them), ``sendto`` and its checks and
errors, empty datagrams, ``error_received`` for ICMP errors on the read and the send
path, queuing when the kernel refuses a datagram, flow control, ``close()`` flushing the
queue and ``abort()`` dropping it, the order of protocol callbacks and of the callbacks
they schedule, ``get_extra_info``, ``repr``, the unclosed-transport warning, descriptor
leaks and loss-free delivery of 10,000 datagrams.

Where stock differs between Python versions (empty datagrams are sent since 3.13, queued
datagrams count 8 header bytes each in ``get_write_buffer_size()`` since 3.13, ``abort()``
resets that size since 3.15), the constants below follow the installed stock code and
both loops are held to it.
"""

from __future__ import annotations

import array
import asyncio
import contextvars
import errno
import gc
import hashlib
import logging
import os
import socket
import sys
import warnings
import weakref
from asyncio import selector_events

import pytest
from conftest import IO_TEST_TIMEOUT, run_bounded

TIMEOUT = IO_TEST_TIMEOUT
run = run_bounded

_STOCK = selector_events._SelectorDatagramTransport
#: 3.11 and 3.12 drop an empty datagram in sendto(); 3.13+ send it.
EMPTY_SENT = sys.version_info >= (3, 13)
#: What a queued datagram adds to get_write_buffer_size() besides its length.
HEADER = 8 if sys.version_info >= (3, 13) else 0
#: 3.13.0's drain subtracts only the length of each datagram it sends, not the header it
#: added (later versions define _header_size and subtract both).
DRAIN_KEEPS_HEADER = bool(HEADER) and not hasattr(_STOCK, "_header_size")
#: 3.15's abort() (via _force_close) resets the buffer size; earlier versions keep it.
ABORT_RESETS_SIZE = sys.version_info >= (3, 15)

HAS_IPV6 = socket.has_ipv6
try:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as _probe:
        _probe.bind(("::1", 0))
except OSError:
    HAS_IPV6 = False
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")


class Recorder(asyncio.DatagramProtocol):
    """Records every callback; ``until(predicate)`` waits for the records to satisfy it."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.events: list = []
        self.datagrams: list[tuple[bytes, object]] = []
        self.errors: list[OSError] = []
        self.transport = None
        self.lost = self.loop.create_future()
        self._changed = asyncio.Event()

    def _note(self, event) -> None:
        self.events.append(event)
        self._changed.set()

    def connection_made(self, transport):
        self.transport = transport
        self._note("made")

    def datagram_received(self, data, addr):
        assert type(data) is bytes
        self.datagrams.append((data, addr))
        self._note(("dg", data, addr))

    def error_received(self, exc):
        self.errors.append(exc)
        self._note(("err", type(exc).__name__, exc.errno))

    def connection_lost(self, exc):
        self._note(("lost", type(exc).__name__ if exc else None))
        self.lost.set_result(exc)

    def pause_writing(self):
        self._note(("pause", self.transport.get_write_buffer_size()))

    def resume_writing(self):
        self._note(("resume", self.transport.get_write_buffer_size()))

    async def until(self, predicate) -> None:
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    async def datagram_count(self, n: int) -> list[tuple[bytes, object]]:
        await self.until(lambda: len(self.datagrams) >= n)
        return self.datagrams


class Echo(Recorder):
    def datagram_received(self, data, addr):
        super().datagram_received(data, addr)
        if addr is not None:  # An unbound Unix sender has no address to answer.
            self.transport.sendto(data, addr)


def handler_contexts(loop) -> list[dict]:
    contexts: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    return contexts


def dead_port(family=socket.AF_INET, host="127.0.0.1") -> tuple:
    """An address where nothing listens (so the kernel answers with ICMP)."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()


async def settle(loop, rounds: int = 3) -> None:
    """A few full loop iterations (polls included)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------------------
# Addresses, echo, extra info
# --------------------------------------------------------------------------------------


def test_udp4_echo_addresses_are_recvfrom_tuples(loop):
    async def main():
        st, sp = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        server_addr = st.get_extra_info("sockname")
        ct, cp = await loop.create_datagram_endpoint(Recorder, remote_addr=server_addr)
        ct.sendto(b"ping")
        ct.sendto(b"pong", None)
        ct.sendto(b"pang", server_addr)
        got = await cp.datagram_count(3)
        client_addr = ct.get_extra_info("sockname")
        assert [d for d, _ in sp.datagrams] == [b"ping", b"pong", b"pang"]
        assert [a for _, a in sp.datagrams] == [client_addr] * 3
        host, port = sp.datagrams[0][1]
        assert type(host) is str and type(port) is int and host == "127.0.0.1"
        assert got == [(b"ping", server_addr), (b"pong", server_addr), (b"pang", server_addr)]
        assert ct.get_extra_info("peername") == server_addr
        assert st.get_extra_info("peername") is None
        assert isinstance(st.get_extra_info("socket"), asyncio.trsock.TransportSocket)
        assert st.get_extra_info("socket").fileno() == st.get_extra_info("socket").fileno()
        assert st.get_extra_info("nothing", "default") == "default"
        assert isinstance(st, asyncio.BaseTransport)
        assert isinstance(st, asyncio.DatagramTransport) == isinstance(
            st, selector_events._SelectorTransport
        ) or sys.version_info < (3, 12)
        for t, p in ((st, sp), (ct, cp)):
            t.close()
            assert await p.lost is None

    run(loop, main())


@needs_ipv6
def test_udp6_echo_addresses_are_four_tuples(loop):
    async def main():
        st, sp = await loop.create_datagram_endpoint(Echo, local_addr=("::1", 0))
        server_addr = st.get_extra_info("sockname")
        assert len(server_addr) == 4
        ct, cp = await loop.create_datagram_endpoint(Recorder, remote_addr=("::1", server_addr[1]))
        ct.sendto(b"six")
        assert await cp.datagram_count(1) == [(b"six", server_addr)]
        assert sp.datagrams == [(b"six", ct.get_extra_info("sockname"))]
        # An unconnected IPv6 sender may give 2-, 3- and 4-tuples, as socket.sendto.
        ut, up = await loop.create_datagram_endpoint(Recorder, local_addr=("::1", 0))
        ut.sendto(b"a", ("::1", server_addr[1]))
        ut.sendto(b"b", ("::1", server_addr[1], 0))
        ut.sendto(b"c", ("::1", server_addr[1], 0, 0))
        assert [d for d, _ in await up.datagram_count(3)] == [b"a", b"b", b"c"]
        for t, p in ((st, sp), (ct, cp), (ut, up)):
            t.close()
            await p.lost

    run(loop, main())


@needs_ipv6
def test_ipv4_sender_on_a_dual_stack_socket_is_a_mapped_address(loop):
    async def main():
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        st, sp = await loop.create_datagram_endpoint(Echo, sock=sock)
        port = st.get_extra_info("sockname")[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            client.bind(("127.0.0.1", 0))
            client.sendto(b"v4", ("127.0.0.1", port))
            (data, addr), *_ = await sp.datagram_count(1)
            assert addr == ("::ffff:127.0.0.1", client.getsockname()[1], 0, 0)
            # The echo went back to the mapped address.
            assert await loop.sock_recv(client, 10) == b"v4"
        st.close()
        await sp.lost

    run(loop, main())


def test_unix_datagram_addresses(loop, tmp_path):
    server_path = str(tmp_path / "server.sock")
    client_path = str(tmp_path / "client.sock")
    abstract = f"\0ferroloop-test-{os.getpid()}-{id(loop)}".encode()

    async def main():
        st, sp = await loop.create_datagram_endpoint(
            Echo, local_addr=server_path, family=socket.AF_UNIX
        )
        assert st.get_extra_info("sockname") == server_path
        bound, p_bound = await loop.create_datagram_endpoint(
            Recorder, local_addr=client_path, remote_addr=server_path, family=socket.AF_UNIX
        )
        unbound, p_unbound = await loop.create_datagram_endpoint(
            Recorder, remote_addr=server_path, family=socket.AF_UNIX
        )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(abstract)
        sock.connect(server_path)
        named, p_named = await loop.create_datagram_endpoint(Recorder, sock=sock)

        bound.sendto(b"from a path")
        unbound.sendto(b"from nowhere")
        named.sendto(b"from an abstract name")
        await sp.datagram_count(3)
        # Echoes to a str path and to an abstract bytes name; the unbound one has none.
        assert [a for _, a in sp.datagrams] == [client_path, None, abstract]
        assert await p_bound.datagram_count(1) == [(b"from a path", server_path)]
        assert await p_named.datagram_count(1) == [(b"from an abstract name", server_path)]
        assert p_unbound.datagrams == []
        assert unbound.get_extra_info("peername") == server_path
        assert st.get_extra_info("peername") is None
        for t, p in ((st, sp), (bound, p_bound), (unbound, p_unbound), (named, p_named)):
            t.close()
            await p.lost

    run(loop, main())


def unix_pair() -> tuple[socket.socket, socket.socket]:
    """Two Unix datagram sockets with (autobound, abstract) names, connected to each
    other: their peernames are true, so transports over them send with send()."""
    a, b = (socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2))
    a.bind("")
    b.bind("")
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    return a, b


def test_unix_connected_pair_via_sock(loop):
    async def main():
        a, b = unix_pair()
        ta, pa = await loop.create_datagram_endpoint(Recorder, sock=a)
        tb, pb = await loop.create_datagram_endpoint(Recorder, sock=b)
        assert ta.get_extra_info("peername") == b.getsockname()
        ta.sendto(b"to b")
        tb.sendto(b"to a", "ignored: a connected socket sends with send()")
        assert await pb.datagram_count(1) == [(b"to b", a.getsockname())]
        assert await pa.datagram_count(1) == [(b"to a", b.getsockname())]
        for t, p in ((ta, pa), (tb, pb)):
            t.close()
            await p.lost

    run(loop, main())


def test_unix_socketpair_via_sock(loop):
    """socketpair()'s peername is '' (false): stock sends with sendto(data, addr), so
    sendto(data) is a fatal TypeError there, while receiving works."""
    contexts = handler_contexts(loop)

    async def main():
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ta, pa = await loop.create_datagram_endpoint(Recorder, sock=a)
        assert ta.get_extra_info("peername") == ""
        b.send(b"to a")
        assert await pa.datagram_count(1) == [(b"to a", None)]
        ta.sendto(b"to b")
        exc = await pa.lost
        assert type(exc) is TypeError
        b.close()
        return exc

    exc = run(loop, main())
    assert [c["exception"] for c in contexts] == [exc]


def test_socket_subclass_via_sock(loop):
    class Sock(socket.socket):
        calls = 0

        def sendto(self, *args):
            Sock.calls += 1
            return super().sendto(*args)

    async def main():
        sock = Sock(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        st, sp = await loop.create_datagram_endpoint(Echo, sock=sock)
        ct, cp = await loop.create_datagram_endpoint(
            Recorder, remote_addr=st.get_extra_info("sockname")
        )
        ct.sendto(b"hi")
        await cp.datagram_count(1)
        assert Sock.calls == 1  # The echo went through the subclass's own sendto.
        for t, p in ((st, sp), (ct, cp)):
            t.close()
            await p.lost

    run(loop, main())


def test_host_names_are_resolved_by_sendto(loop):
    async def main():
        st, sp = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        port = st.get_extra_info("sockname")[1]
        ut, up = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
        ut.sendto(b"by name", ("localhost", port))
        ut.sendto(bytearray(b"by number"), ("127.0.0.1", port))
        await sp.datagram_count(2)
        assert [d for d, _ in sp.datagrams] == [b"by name", b"by number"]
        for t, p in ((st, sp), (ut, up)):
            t.close()
            await p.lost

    run(loop, main())


def test_bytes_like_data(loop):
    ints = array.array("i", [1, 2, 3])

    async def main():
        st, sp = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        ct, cp = await loop.create_datagram_endpoint(
            Recorder, remote_addr=st.get_extra_info("sockname")
        )
        ct.sendto(bytearray(b"bytearray"))
        ct.sendto(memoryview(b"memoryview"))
        ct.sendto(memoryview(b"<slice>")[1:-1])
        ct.sendto(memoryview(ints))
        ct.sendto(data=b"keyword", addr=None)
        await sp.datagram_count(5)
        assert [d for d, _ in sp.datagrams] == [
            b"bytearray",
            b"memoryview",
            b"slice",
            ints.tobytes(),
            b"keyword",
        ]
        for t, p in ((st, sp), (ct, cp)):
            t.close()
            await p.lost

    run(loop, main())


@pytest.mark.parametrize("kind", ["udp", "unix"])
def test_empty_datagrams(loop, kind):
    async def main():
        if kind == "udp":
            st, sp = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
            ct, cp = await loop.create_datagram_endpoint(
                Recorder, remote_addr=st.get_extra_info("sockname")
            )
        else:
            a, b = unix_pair()
            st, sp = await loop.create_datagram_endpoint(Recorder, sock=a)
            ct, cp = await loop.create_datagram_endpoint(Recorder, sock=b)
        ct.sendto(b"")
        ct.sendto(bytearray())
        ct.sendto(memoryview(b"x")[1:])
        ct.sendto(b"end")
        got = await sp.datagram_count(4 if EMPTY_SENT else 1)
        assert [d for d, _ in got] == ([b""] * 3 if EMPTY_SENT else []) + [b"end"]
        for t, p in ((st, sp), (ct, cp)):
            t.close()
            await p.lost

    run(loop, main())


def test_connection_made_runs_before_the_endpoint_is_returned(loop):
    async def main():
        order = []

        class P(Recorder):
            def connection_made(self, transport):
                order.append(("made", transport.is_closing()))
                super().connection_made(transport)

        t, p = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
        order.append("returned")
        assert order == [("made", False), "returned"]
        assert p.transport is t and t.get_protocol() is p
        t.close()
        await p.lost

    run(loop, main())


def test_set_protocol(loop):
    async def main():
        st, first = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        second = Recorder()
        st.set_protocol(second)
        assert st.get_protocol() is second
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"to the second", st.get_extra_info("sockname"))
            await second.datagram_count(1)
        assert first.datagrams == []
        st.close()
        await second.lost
        assert not first.lost.done()

    run(loop, main())


# --------------------------------------------------------------------------------------
# sendto() checks and errors
# --------------------------------------------------------------------------------------


def test_sendto_rejects_non_bytes(loop):
    async def main():
        t, p = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        addr = t.get_extra_info("sockname")
        for bad, name in [("text", "str"), (1, "int"), (None, "NoneType"), ([1], "list")]:
            with pytest.raises(TypeError) as info:
                t.sendto(bad, addr)
            assert str(info.value) == f"data argument must be a bytes-like object, not '{name}'"
        assert not t.is_closing()
        t.close()
        await p.lost

    run(loop, main())


def test_connected_transport_refuses_other_addresses(loop):
    async def main():
        st, sp = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        addr = st.get_extra_info("sockname")
        ct, cp = await loop.create_datagram_endpoint(Recorder, remote_addr=addr)
        for other in [("127.0.0.1", addr[1] + 1), ("127.0.0.2", addr[1]), list(addr), "x"]:
            with pytest.raises(ValueError) as info:
                ct.sendto(b"x", other)
            assert str(info.value) == f"Invalid address: must be None or {addr}"
        ct.sendto(b"same", tuple(addr))
        await sp.datagram_count(1)
        assert not ct.is_closing()
        for t, p in ((st, sp), (ct, cp)):
            t.close()
            await p.lost

    run(loop, main())


def plain_sendto_error(family, addr) -> BaseException:
    """What a plain socket's sendto raises for ``addr`` (the oracle for the transport)."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"x", addr)
        except BaseException as exc:
            return exc
    raise AssertionError(f"sendto({addr!r}) did not raise")


@pytest.mark.parametrize(
    "addr",
    [
        ["127.0.0.1", 9],
        ("127.0.0.1", 70000),
        ("127.0.0.1", -1),
        ("127.0.0.1", "9"),
        ("127.0.0.1",),
        ("127.0.0.1", 9, 0),
        None,
        "127.0.0.1",
        (1, 9),
    ],
    ids=repr,
)
def test_unconnected_sendto_bad_address_is_fatal(loop, addr):
    """socket.sendto raises a non-OSError: stock reports it as a fatal write error (to the
    exception handler) and closes the transport with it."""
    expected = plain_sendto_error(socket.AF_INET, addr)
    assert not isinstance(expected, OSError)
    contexts = handler_contexts(loop)

    async def main():
        t, p = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        t.sendto(b"x", addr)
        assert t.is_closing()
        exc = await p.lost
        assert type(exc) is type(expected) and str(exc) == str(expected)
        return exc

    exc = run(loop, main())
    assert len(contexts) == 1
    assert contexts[0]["message"] == "Fatal write error on datagram transport"
    assert contexts[0]["exception"] is exc


@pytest.mark.parametrize(
    "addr",
    [("::1", 9), ("no-such-host.invalid.", 9), ("256.1.1.1", 9), ("127.0.0.1\0", 9)],
    ids=repr,
)
def test_unconnected_sendto_unresolvable_address_goes_to_error_received(loop, addr):
    expected = plain_sendto_error(socket.AF_INET, addr)
    contexts = handler_contexts(loop)

    async def main():
        t, p = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        t.sendto(b"x", addr)
        if isinstance(expected, OSError):
            assert [(type(e), str(e)) for e in p.errors] == [(type(expected), str(expected))]
            assert not t.is_closing()
            t.close()
        assert (await p.lost) is None or not isinstance(expected, OSError)
        return p

    p = run(loop, main())
    if not isinstance(expected, OSError):  # e.g. ValueError("embedded null character")
        assert [type(c["exception"]) for c in contexts] == [type(expected)]
        assert p.errors == []
    else:
        assert contexts == []


def test_unix_paths_too_long_go_to_error_received(loop, tmp_path):
    too_long = "/tmp/" + "x" * 200
    expected = plain_sendto_error(socket.AF_UNIX, too_long)
    assert isinstance(expected, OSError)

    async def main():
        t, p = await loop.create_datagram_endpoint(
            Recorder, local_addr=str(tmp_path / "s"), family=socket.AF_UNIX
        )
        t.sendto(b"x", too_long)
        t.sendto(b"x", too_long.encode())
        t.sendto(b"x", str(tmp_path / "nobody-here"))
        assert [(type(e).__name__, str(e)) for e in p.errors[:2]] == [
            (type(expected).__name__, str(expected))
        ] * 2
        assert [type(e) for e in p.errors[2:]] == [FileNotFoundError]
        t.close()
        await p.lost

    run(loop, main())


# --------------------------------------------------------------------------------------
# ICMP errors
# --------------------------------------------------------------------------------------


def test_port_unreachable_on_the_read_path(loop):
    async def main():
        t, p = await loop.create_datagram_endpoint(Recorder, remote_addr=dead_port())
        t.sendto(b"anyone?")
        await p.until(lambda: p.errors)
        assert p.events == ["made", ("err", "ConnectionRefusedError", errno.ECONNREFUSED)]
        assert not t.is_closing()
        t.close()
        assert await p.lost is None

    run(loop, main())


def test_port_unreachable_on_the_send_path(loop):
    async def main():
        t, p = await loop.create_datagram_endpoint(Recorder, remote_addr=dead_port())
        t.pause_reading()  # The error stays pending on the socket for the next send.
        t.sendto(b"first")
        assert p.errors == []
        t.sendto(b"second")  # Reports the first one's ICMP error, synchronously.
        assert p.events == ["made", ("err", "ConnectionRefusedError", errno.ECONNREFUSED)]
        assert t.get_write_buffer_size() == 0 and not t.is_closing()
        t.close()
        assert await p.lost is None

    run(loop, main())


# --------------------------------------------------------------------------------------
# Callback order
# --------------------------------------------------------------------------------------


def test_callbacks_scheduled_by_datagram_received_run_before_the_next_datagram(loop):
    """One datagram per loop iteration, as stock: what a datagram's handling schedules
    (call_soon, a timer due at once, a woken task) runs before the next datagram arrives
    at the protocol, though all of them were queued in the kernel together."""

    async def main():
        order = []
        queue: asyncio.Queue = asyncio.Queue()

        class P(Recorder):
            def datagram_received(self, data, addr):
                order.append(("dg", data))
                loop.call_soon(order.append, ("soon", data))
                loop.call_later(0, order.append, ("later", data))
                queue.put_nowait(data)

        async def consumer():
            while True:
                order.append(("task", await queue.get()))

        task = asyncio.ensure_future(consumer())
        t, p = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(3):
                s.sendto(b"%d" % i, t.get_extra_info("sockname"))
        while len(order) < 12:
            await asyncio.sleep(0)
        task.cancel()
        t.close()
        await p.lost
        return order

    assert run(loop, main()) == [
        ("dg", b"0"),
        ("soon", b"0"),
        ("task", b"0"),
        ("dg", b"1"),
        ("later", b"0"),
        ("soon", b"1"),
        ("task", b"1"),
        ("dg", b"2"),
        ("later", b"1"),
        ("soon", b"2"),
        ("task", b"2"),
        ("later", b"2"),
    ]


def test_pause_reading_in_datagram_received(loop):
    async def main():
        class P(Recorder):
            def datagram_received(self, data, addr):
                super().datagram_received(data, addr)
                self.transport.pause_reading()

        t, p = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(3):
                s.sendto(b"%d" % i, t.get_extra_info("sockname"))
            await p.datagram_count(1)
            await settle(loop)
            assert [d for d, _ in p.datagrams] == [b"0"] and not t.is_reading()
            t.resume_reading()
            await p.datagram_count(2)
            await settle(loop)
            assert [d for d, _ in p.datagrams] == [b"0", b"1"]
            t.resume_reading()
            await p.datagram_count(3)
        t.close()
        await p.lost

    run(loop, main())


def test_close_in_datagram_received_stops_delivery(loop):
    async def main():
        class P(Recorder):
            def datagram_received(self, data, addr):
                super().datagram_received(data, addr)
                self.transport.close()

        t, p = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(3):
                s.sendto(b"%d" % i, t.get_extra_info("sockname"))
            assert await p.lost is None
        await settle(loop)
        assert p.events[1:] == [("dg", b"0", p.datagrams[0][1]), ("lost", None)]

    run(loop, main())


def test_datagram_received_raising_goes_to_the_handler_and_reading_goes_on(loop):
    contexts = handler_contexts(loop)

    async def main():
        class P(Recorder):
            def datagram_received(self, data, addr):
                super().datagram_received(data, addr)
                if data == b"boom":
                    raise ZeroDivisionError("boom")

        t, p = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"boom", t.get_extra_info("sockname"))
            s.sendto(b"after", t.get_extra_info("sockname"))
            await p.datagram_count(2)
        assert not t.is_closing()
        t.close()
        await p.lost

    run(loop, main())
    assert len(contexts) == 1
    assert contexts[0]["message"].startswith("Exception in callback ")
    assert contexts[0]["message"].endswith("._read_ready()")
    assert type(contexts[0]["exception"]) is ZeroDivisionError


# --------------------------------------------------------------------------------------
# Queuing, flow control, close and abort
# --------------------------------------------------------------------------------------

DATAGRAM = 1000


async def fill_until_queued(t, p, sent: list[bytes], *, paused: bool) -> None:
    """Send numbered datagrams until the kernel refuses one (so it is queued) and, with
    ``paused``, until pause_writing() was called."""
    for i in range(100_000):
        data = i.to_bytes(4, "big") * (DATAGRAM // 4)
        t.sendto(data)
        sent.append(data)
        if t.get_write_buffer_size() and (not paused or any(e[0] == "pause" for e in p.events)):
            return
    raise AssertionError("the kernel never refused a datagram")


def drain(sock: socket.socket, count: int) -> list[bytes]:
    got = []
    sock.settimeout(TIMEOUT)
    while len(got) < count:
        got.append(sock.recv(65536))
    return got


@pytest.mark.parametrize("sndbuf", [None, 4096])
def test_flow_control_pauses_and_resumes_without_loss(loop, sndbuf):
    """The kernel refuses a Unix datagram once the peer's queue or the sender's buffer is
    full (UDP on loopback never refuses one, whatever SO_SNDBUF: the loopback device
    frees the send buffer at once)."""

    async def main():
        a, peer = unix_pair()
        if sndbuf:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        t, p = await loop.create_datagram_endpoint(Recorder, sock=a)
        t.set_write_buffer_limits(high=4 * DATAGRAM, low=2 * DATAGRAM)
        assert t.get_write_buffer_limits() == (2 * DATAGRAM, 4 * DATAGRAM)
        sent: list[bytes] = []
        await fill_until_queued(t, p, sent, paused=True)
        (pause,) = [e for e in p.events if e[0] == "pause"]
        assert pause[1] > 4 * DATAGRAM
        queued = t.get_write_buffer_size()
        assert queued % (DATAGRAM + HEADER) == 0
        backlog = queued // (DATAGRAM + HEADER)
        reader = loop.run_in_executor(None, drain, peer, len(sent))
        await p.until(lambda: any(e[0] == "resume" for e in p.events))
        got = await reader
        assert got == sent  # Every datagram, in order.
        (resume,) = [e for e in p.events if e[0] == "resume"]
        left = HEADER * backlog if DRAIN_KEEPS_HEADER else 0
        assert resume[1] <= 2 * DATAGRAM
        assert t.get_write_buffer_size() == left
        t.close()
        assert await p.lost is None
        peer.close()

    run(loop, main())


def test_close_flushes_queued_datagrams_then_connection_lost(loop):
    async def main():
        a, peer = unix_pair()
        t, p = await loop.create_datagram_endpoint(Recorder, sock=a)
        sent: list[bytes] = []
        await fill_until_queued(t, p, sent, paused=False)
        t.close()
        assert t.is_closing() and not p.lost.done()
        await settle(loop)
        assert not p.lost.done()  # Waits for the queue to drain.
        got = await loop.run_in_executor(None, drain, peer, len(sent))
        assert got == sent
        assert await p.lost is None
        assert p.events[-1] == ("lost", None)
        assert t.get_extra_info("socket").fileno() == -1
        peer.close()

    run(loop, main())


def test_abort_drops_queued_datagrams(loop):
    async def main():
        a, peer = unix_pair()
        t, p = await loop.create_datagram_endpoint(Recorder, sock=a)
        sent: list[bytes] = []
        await fill_until_queued(t, p, sent, paused=False)
        queued = t.get_write_buffer_size()
        t.abort()
        assert t.is_closing()
        assert await p.lost is None
        assert t.get_write_buffer_size() == (0 if ABORT_RESETS_SIZE else queued)
        peer.setblocking(False)
        got = []
        while True:
            try:
                got.append(peer.recv(65536))
            except BlockingIOError:
                break
        assert got == sent[: len(got)] and len(got) < len(sent)
        peer.close()

    run(loop, main())


def test_close_is_idempotent_and_abort_after_close(loop):
    async def main():
        t, p = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        assert not t.is_closing() and t.is_reading()
        t.close()
        t.close()
        t.abort()
        assert t.is_closing() and not t.is_reading()
        assert await p.lost is None
        await settle(loop)
        assert p.events == ["made", ("lost", None)]

    run(loop, main())


def test_sendto_after_close(loop, caplog):
    """Stock: a connected transport drops (and after 5, logs) sends once closed; an
    unconnected one still sends until connection_lost ran, and fails after."""

    async def main():
        st, sp = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        addr = st.get_extra_info("sockname")
        ct, cp = await loop.create_datagram_endpoint(Recorder, remote_addr=addr)
        ut, up = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        ct.close()
        ut.close()
        for _ in range(7):
            ct.sendto(b"dropped")
        ut.sendto(b"still sent", addr)
        await cp.lost
        await up.lost
        with pytest.raises(AttributeError):
            ut.sendto(b"fails", addr)
        ct.sendto(b"dropped")
        assert [d for d, _ in await sp.datagram_count(1)] == [b"still sent"]
        st.close()
        await sp.lost

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run(loop, main())
    warned = [r for r in caplog.records if r.getMessage() == "socket.send() raised exception."]
    assert len(warned) == 4


def test_repr_states(loop):
    async def main():
        a, peer = unix_pair()
        t, p = await loop.create_datagram_endpoint(Recorder, sock=a)
        fd = a.fileno()
        reprs = [repr(t)]
        t.pause_reading()
        reprs.append(repr(t))
        t.resume_reading()
        sent: list[bytes] = []
        await fill_until_queued(t, p, sent, paused=False)
        reprs.append(repr(t).replace(f"bufsize={t.get_write_buffer_size()}", "bufsize=N"))
        t.close()
        reprs.append(repr(t).replace(f"bufsize={t.get_write_buffer_size()}", "bufsize=N"))
        await loop.run_in_executor(None, drain, peer, len(sent))
        await p.lost
        reprs.append(repr(t))
        peer.close()
        return fd, reprs

    fd, reprs = run(loop, main())
    assert [r.split(" ", 1)[1] for r in reprs] == [
        f"fd={fd} read=polling write=<idle, bufsize=0>>",
        f"fd={fd} read=idle write=<idle, bufsize=0>>",
        f"fd={fd} read=polling write=<polling, bufsize=N>>",
        f"closing fd={fd} read=idle write=<polling, bufsize=N>>",
        f"closed fd={fd}>",
    ]


# --------------------------------------------------------------------------------------
# Endpoint options
# --------------------------------------------------------------------------------------


def test_allow_broadcast_with_remote_addr_keeps_the_socket_unconnected(loop):
    async def main():
        st, sp = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        addr = st.get_extra_info("sockname")
        bt, bp = await loop.create_datagram_endpoint(
            Recorder, remote_addr=addr, allow_broadcast=True
        )
        sock = bt.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        assert bt.get_extra_info("peername") is None
        bt.sendto(b"to the fixed address")
        with pytest.raises(ValueError):
            bt.sendto(b"x", ("127.0.0.1", 9))
        ((data, (_, port)),) = await sp.datagram_count(1)
        assert (data, port) == (b"to the fixed address", sock.getsockname()[1])
        for t, p in ((st, sp), (bt, bp)):
            t.close()
            await p.lost

    run(loop, main())


def test_reuse_port(loop):
    async def main():
        t1, p1 = await loop.create_datagram_endpoint(
            Recorder, local_addr=("127.0.0.1", 0), reuse_port=True
        )
        addr = t1.get_extra_info("sockname")
        t2, p2 = await loop.create_datagram_endpoint(Recorder, local_addr=addr, reuse_port=True)
        assert t2.get_extra_info("sockname") == addr
        assert t2.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        for t, p in ((t1, p1), (t2, p2)):
            t.close()
            await p.lost

    run(loop, main())


# --------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------


def test_unclosed_transport_warns_when_collected(loop):
    async def main():
        t, p = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        p.transport = None
        return t.get_extra_info("socket").fileno()

    gc.collect()
    fd = run(loop, main())
    with pytest.warns(ResourceWarning) as record:
        loop.close()  # Drops the loop's reader, the last reference to the transport.
        gc.collect()
    messages = [str(w.message) for w in record]
    transport_warnings = [m for m in messages if m.startswith("unclosed transport <")]
    assert len(transport_warnings) == 1, messages
    assert transport_warnings[0].endswith(f" fd={fd}>")


@pytest.mark.parametrize("ending", ["close", "abort", "fatal_error"])
def test_closed_transport_and_protocol_are_freed(loop, ending):
    handler_contexts(loop)

    async def main():
        t, p = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        if ending == "close":
            t.close()
        elif ending == "abort":
            t.abort()
        else:
            t.sendto(b"x", ["not", "a tuple"])
        await p.lost
        await asyncio.sleep(0)
        return weakref.ref(t), weakref.ref(p)

    transport_ref, protocol_ref = run(loop, main())
    loop.set_exception_handler(None)
    gc.collect()
    assert transport_ref() is None
    assert protocol_ref() is None


def test_a_hundred_endpoints_leak_no_fds(loop):
    async def main(count):
        for i in range(count):
            t, p = await loop.create_datagram_endpoint(
                Echo if i % 2 else Recorder, local_addr=("127.0.0.1", 0)
            )
            ct, cp = await loop.create_datagram_endpoint(
                Recorder, remote_addr=t.get_extra_info("sockname")
            )
            ct.sendto(b"x")
            await p.datagram_count(1)
            for tr, pr in ((t, p), (ct, cp)):
                tr.close() if i % 3 else tr.abort()
                await pr.lost

    run(loop, main(1))
    gc.collect()
    before = open_fds()
    run(loop, main(100), timeout=30)
    gc.collect()
    assert open_fds() == before


def test_ten_thousand_datagrams_without_loss(loop):
    """The reader keeps up (at most WINDOW datagrams in flight): all arrive, in order."""
    count, window = 10_000, 64

    async def main():
        st, sp = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        ct, cp = await loop.create_datagram_endpoint(
            Recorder, remote_addr=st.get_extra_info("sockname")
        )
        sent = hashlib.sha256()
        for start in range(0, count, window):
            for i in range(start, min(count, start + window)):
                data = i.to_bytes(4, "big") * (1 + i % 300)
                sent.update(data)
                ct.sendto(data)
            await sp.datagram_count(min(count, start + window))
        received = hashlib.sha256()
        for data, _ in sp.datagrams:
            received.update(data)
        assert len(sp.datagrams) == count
        assert received.hexdigest() == sent.hexdigest()
        for t, p in ((st, sp), (ct, cp)):
            t.close()
            await p.lost

    run(loop, main(), timeout=60)


def test_large_datagrams_arrive_whole(loop):
    """Up to the UDP maximum, and a Unix datagram near asyncio's 256 KiB read size."""

    async def main():
        st, sp = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        ct, cp = await loop.create_datagram_endpoint(
            Recorder, remote_addr=st.get_extra_info("sockname")
        )
        big = os.urandom(65507)
        ct.sendto(big)
        ct.sendto(big[:65506])
        assert [d for d, _ in await sp.datagram_count(2)] == [big, big[:65506]]
        ct.sendto(big + b"x")  # Over the UDP limit: EMSGSIZE, reported to the protocol.
        assert [type(e) for e in cp.errors] == [OSError] and cp.errors[0].errno == errno.EMSGSIZE
        a, b = unix_pair()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        ut, up = await loop.create_datagram_endpoint(Recorder, sock=a)
        huge = os.urandom(200 * 1024)
        b.send(huge)
        assert [d for d, _ in await up.datagram_count(1)] == [huge]
        b.close()
        for t, p in ((st, sp), (ct, cp), (ut, up)):
            t.close()
            await p.lost

    run(loop, main())


def test_many_endpoints_in_one_loop_do_not_mix_up_addresses(loop):
    async def main():
        servers = [
            await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0)) for _ in range(5)
        ]
        ut, up = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        for i, (t, _) in enumerate(servers):
            ut.sendto(b"%d" % i, t.get_extra_info("sockname"))
        got = await up.datagram_count(5)
        assert sorted(got, key=lambda g: g[0]) == [
            (b"%d" % i, t.get_extra_info("sockname")) for i, (t, _) in enumerate(servers)
        ]
        for t, p in [*servers, (ut, up)]:
            t.close()
            await p.lost

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        run(loop, main())


def test_protocol_callbacks_run_in_a_copy_of_the_creating_context(loop):
    """No version passes a context to datagram transports (3.15's is None): the reader,
    set up from a callback scheduled by the transport, copies the context current when
    the endpoint was created; later changes in the creating task are not seen."""
    var = contextvars.ContextVar("var", default="unset")

    async def main():
        seen = []

        class P(Recorder):
            def connection_made(self, transport):
                seen.append(("made", var.get()))
                var.set("set in connection_made")
                super().connection_made(transport)

            def datagram_received(self, data, addr):
                seen.append(("dg", var.get()))
                var.set("set in datagram_received")
                super().datagram_received(data, addr)

        var.set("at creation")
        t, p = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
        var.set("after creation")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"1", t.get_extra_info("sockname"))
            s.sendto(b"2", t.get_extra_info("sockname"))
            await p.datagram_count(2)
        t.close()
        await p.lost
        return seen, var.get()

    seen, after = run(loop, main())
    assert after == "after creation"
    assert seen == [
        ("made", "at creation"),
        ("dg", "at creation"),
        ("dg", "set in datagram_received"),
    ]


def test_plain_sockets_take_the_native_path(ferroloop):
    """ferroloop's own check that the tests above exercise its native reader and sendto
    for plain sockets, and asyncio's methods for a socket subclass and after the end."""
    native = ferroloop._ferroloop

    class Sock(socket.socket):
        pass

    async def main():
        loop = asyncio.get_running_loop()
        t, p = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        assert type(t).__name__ == "DatagramTransport"
        assert isinstance(t, selector_events._SelectorDatagramTransport)
        assert isinstance(t._read_ready, native.DatagramReader)
        assert t._read_ready.__qualname__ == "DatagramTransport._read_ready"
        assert t.sendto.__self__ is t._core and t._core.native
        sub = Sock(socket.AF_INET, socket.SOCK_DGRAM)
        sub.bind(("127.0.0.1", 0))
        st, sp = await loop.create_datagram_endpoint(Recorder, sock=sub)
        assert not st._core.native
        assert st._read_ready.__func__ is selector_events._SelectorDatagramTransport._read_ready
        assert st.sendto.__func__ is selector_events._SelectorDatagramTransport.sendto
        for tr, pr in ((t, p), (st, sp)):
            tr.close()
            await pr.lost
        assert t.sendto.__func__ is selector_events._SelectorDatagramTransport.sendto

    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        runner.run(main())
