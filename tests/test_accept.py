"""The accept loop of servers, on ferroloop and stock asyncio.

ferroloop accepts natively (src/net/accept.rs) and schedules each connection's first
step (the protocol factory, the transport) without asyncio's per-connection Task; these
tests pin what a program can observe of that on stock asyncio: the iteration each
callback runs in and their order relative to other callbacks, the contexts they run in,
a failing protocol factory (silent outside debug mode, reported in it), how many
connections one readiness accepts on each version, task factories (which see asyncio's
``_accept_connection2`` Task), the addresses in ``extra`` (IPv4, IPv6, IPv4-mapped, Unix
paths, unnamed and abstract), ``TCP_NODELAY`` exactly where asyncio sets it, socket
subclasses, debug logging, closing a server with connections still pending, and that a
thousand short connections leave no descriptor behind.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import os
import socket
import sys
import uuid
import warnings
from asyncio import selector_events

import pytest
from conftest import IO_TEST_TIMEOUT, run_bounded

TIMEOUT = IO_TEST_TIMEOUT  # Bound of every wait in this file: a hang fails the test.
run = run_bounded

# How many accept() calls one readiness report makes with backlog=N: asyncio 3.14 tries
# once more than the backlog.
EXTRA_ACCEPT = 1 if sys.version_info >= (3, 14) else 0


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class Ticker:
    """Logs ``tick N`` once per loop iteration (a callback that reschedules itself), so
    the log shows the iteration every other callback ran in."""

    def __init__(self, loop, log: list, limit: int = 8, on_tick=None):
        self.loop = loop
        self.log = log
        self.limit = limit
        self.on_tick = on_tick or {}

    def start(self) -> None:
        self.loop.call_soon(self.tick, 0)

    def tick(self, n: int) -> None:
        self.log.append(f"tick {n}")
        if n in self.on_tick:
            self.on_tick[n]()
        if n < self.limit:
            self.loop.call_soon(self.tick, n + 1)


def recording_protocol(loop, log: list, done: asyncio.Future, expected: int):
    """A protocol class that logs its callbacks and what they schedule, and resolves
    ``done`` once ``expected`` connections are lost."""
    lost = []

    class Recording(asyncio.Protocol):
        def __init__(self):
            log.append("factory")
            loop.call_soon(log.append, "soon from factory")

        def connection_made(self, transport):
            self.transport = transport
            log.append("made")
            loop.call_soon(log.append, "soon from made")

        def data_received(self, data):
            log.append(f"data {data.decode()}")
            self.transport.close()

        def connection_lost(self, exc):
            log.append("lost")
            lost.append(exc)
            if len(lost) == expected:
                done.set_result(None)

    return Recording


def connect_all(address, n: int, send: bool = True) -> list[socket.socket]:
    """``n`` blocking connections to ``address``, each sending its number (if ``send``):
    when this returns, the kernel has them queued (with their data) for the server to
    accept."""
    clients = []
    for i in range(n):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.settimeout(TIMEOUT)
        client.connect(address)
        if send:
            client.sendall(str(i).encode())
        clients.append(client)
    return clients


async def read_to_eof(sock: socket.socket) -> bytes:
    """What the client ``sock`` reads until the end of the stream (on the running loop,
    so the server side goes on meanwhile)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    got = b""
    while chunk := await loop.sock_recv(sock, 4096):
        got += chunk
    return got


async def outcome(sock: socket.socket) -> bytes | str:
    """What a client reads until the server's side is gone: the bytes, or "reset" (a
    server socket closed with unread data resets the connection)."""
    try:
        return await read_to_eof(sock)
    except ConnectionResetError:
        return "reset"


def summary(context: dict) -> dict:
    """An exception handler's context without the objects that would keep the dropped
    connection alive: the exception (its traceback holds asyncio's coroutine frame, and
    with it the socket) and the protocol are replaced by their types."""
    return {
        key: type(value) if key in ("exception", "protocol", "transport") else value
        for key, value in context.items()
    } | {"str": str(context.get("exception"))}


# --------------------------------------------------------------------------------------
# Callback order
# --------------------------------------------------------------------------------------


def order_scenario(loop, n_clients: int) -> list[str]:
    log: list[str] = []
    done = loop.create_future()
    factory = recording_protocol(loop, log, done, n_clients)

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        clients = connect_all(server.sockets[0].getsockname(), n_clients)
        Ticker(loop, log, limit=6).start()
        await done
        server.close()
        await server.wait_closed()
        for client in clients:
            client.close()

    run(loop, main())
    return log


def test_callback_order_around_accept(loop):
    """The connection is accepted in the iteration the listener is reported readable;
    the protocol factory runs in the next one, connection_made in the one after (both
    after callbacks scheduled before them), data in the one after that."""
    assert order_scenario(loop, 1) == [
        "tick 0",  # ...and the accept, after it.
        "tick 1",
        "factory",
        "tick 2",
        "soon from factory",
        "made",
        "tick 3",
        "soon from made",
        "data 0",
        "tick 4",
        "lost",
        "tick 5",
        "tick 6",
    ]


def test_callback_order_of_connections_accepted_together(loop):
    """Connections accepted in one readiness report: their factories run in one
    iteration, in accept order, each connection's callbacks interleaved as scheduled."""
    assert order_scenario(loop, 3) == [
        "tick 0",
        "tick 1",
        "factory",
        "factory",
        "factory",
        "tick 2",
        "soon from factory",
        "made",
        "soon from factory",
        "made",
        "soon from factory",
        "made",
        "tick 3",
        "soon from made",
        "soon from made",
        "soon from made",
        "data 0",
        "data 1",
        "data 2",
        "tick 4",
        "lost",
        "lost",
        "lost",
        "tick 5",
        "tick 6",
    ]


def test_callback_order_in_debug_mode(loop):
    loop.set_debug(True)
    log = order_scenario(loop, 1)
    assert log[:6] == ["tick 0", "tick 1", "factory", "tick 2", "soon from factory", "made"]


def test_task_factory_sees_asyncio_accept_task(loop):
    """With a task factory, every connection's setup is a Task it creates, running
    asyncio's ``_accept_connection2`` coroutine."""
    names = []

    def factory(loop, coro, **kwargs):
        names.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    log = order_scenario(loop, 2)
    assert names.count("BaseSelectorEventLoop._accept_connection2") == 2
    assert log[:8] == [
        "tick 0",
        "tick 1",
        "factory",
        "factory",
        "tick 2",
        "soon from factory",
        "made",
        "soon from factory",
    ]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are new in 3.12")
def test_eager_task_factory_sets_up_connections_at_once(loop):
    """An eager task factory runs the setup Task's first step inside the accept: the
    protocol factory runs in the accept's own iteration."""
    loop.set_task_factory(asyncio.eager_task_factory)
    assert order_scenario(loop, 1)[:7] == [
        "tick 0",
        "factory",
        "tick 1",
        "soon from factory",
        "made",
        "tick 2",
        "soon from made",
    ]


# --------------------------------------------------------------------------------------
# Contexts
# --------------------------------------------------------------------------------------

var = contextvars.ContextVar("accept_test_var", default="unset")


def test_protocol_factory_context_reaches_the_connection_callbacks(loop):
    """The protocol factory runs in a copy of the context (3.15: of the server's); what
    it sets is seen by connection_made and data_received, and by no other connection
    and not by the code that made the server."""
    seen = []
    numbers = iter(range(10))
    done = loop.create_future()

    class Setting(asyncio.Protocol):
        def __init__(self):
            self.n = next(numbers)
            seen.append(("factory", self.n, var.get()))
            var.set(f"conn-{self.n}")

        def connection_made(self, transport):
            self.transport = transport
            seen.append(("made", self.n, var.get()))

        def data_received(self, data):
            seen.append(("data", self.n, var.get()))
            self.transport.close()

        def connection_lost(self, exc):
            if self.n == 1:
                done.set_result(None)

    async def main():
        var.set("creator")
        server = await loop.create_server(Setting, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        for _ in range(2):
            (client,) = connect_all(address, 1)
            with client:
                await read_to_eof(client)
        await done
        server.close()
        await server.wait_closed()
        return var.get()

    assert run(loop, main()) == "creator"
    assert seen == [
        ("factory", 0, "creator"),
        ("made", 0, "conn-0"),
        ("data", 0, "conn-0"),
        ("factory", 1, "creator"),
        ("made", 1, "conn-1"),
        ("data", 1, "conn-1"),
    ]


# --------------------------------------------------------------------------------------
# A failing protocol factory
# --------------------------------------------------------------------------------------


def failing_factory_scenario(loop, debug: bool):
    loop.set_debug(debug)
    contexts = []
    loop.set_exception_handler(lambda loop, context: contexts.append(summary(context)))
    calls = []

    def factory():
        calls.append(len(calls))
        if len(calls) == 1:
            raise ZeroDivisionError("no protocol")
        return asyncio.Protocol()

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            (first,) = connect_all(address, 1)
            while not calls:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)
            # The connection is dropped: its socket is released with the setup's state
            # (the garbage collector closes it), the peer's unread data resets it.
            gc.collect()
            with first:
                got = await outcome(first)
        # The server goes on serving.
        with socket.create_connection(address, timeout=TIMEOUT):
            while len(calls) < 2:
                await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        unclosed = [
            str(w.message)
            for w in caught
            if issubclass(w.category, ResourceWarning)
            and str(w.message).startswith("unclosed <socket.socket")
            and f"laddr={address!r}" in str(w.message)
        ]
        return got, unclosed

    got, unclosed = run(loop, main())
    return got, unclosed, calls, contexts


def test_protocol_factory_raising_is_silent_outside_debug_mode(loop):
    got, unclosed, calls, contexts = failing_factory_scenario(loop, debug=False)
    assert got == "reset"
    assert calls == [0, 1]
    assert contexts == []
    # The socket was left to the garbage collector, which warns about it.
    assert len(unclosed) == 1


def test_protocol_factory_raising_is_reported_in_debug_mode(loop):
    got, _, calls, contexts = failing_factory_scenario(loop, debug=True)
    assert got == "reset"
    assert calls == [0, 1]
    assert [c for c in contexts if "incoming connection" in c["message"]] == [
        {
            "message": "Error on transport creation for incoming connection",
            "exception": ZeroDivisionError,
            "str": "no protocol",
        }
    ]


def test_protocol_factory_raising_system_exit_propagates(loop):
    def factory():
        raise SystemExit(3)

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        clients = connect_all(server.sockets[0].getsockname(), 1)
        try:
            await asyncio.sleep(TIMEOUT)
        finally:
            for client in clients:
                client.close()

    with pytest.raises(SystemExit) as err:
        loop.run_until_complete(main())
    assert err.value.code == 3


# 3.12+ refuse to make a transport for a descriptor an open transport holds.
REFUSES_REGISTERED_FD = (
    "_ensure_fd_no_transport"
    in selector_events.BaseSelectorEventLoop._make_socket_transport.__code__.co_names
)


def test_transport_creation_failing_is_reported_with_the_protocol(loop):
    """A descriptor number still held by an open transport (its socket was taken from it):
    3.12+ refuse a second transport for it, and the connection is dropped (reported in
    debug mode, with the protocol); 3.11 makes the transport."""
    loop.set_debug(True)
    contexts = []
    loop.set_exception_handler(lambda loop, context: contexts.append(summary(context)))
    made = []

    class Made(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)
            transport.close()

    async def main():
        server = await loop.create_server(Made, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        a, b = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.settimeout(TIMEOUT)
        # The transport's descriptor number becomes the lowest free one, which the next
        # accept() gets.
        fd = a.detach()
        os.close(fd)
        with client:
            client.connect(address)
            while not contexts and not made:
                await asyncio.sleep(0.01)
            gc.collect()
            got = await outcome(client)
        transport.abort()
        b.close()
        await asyncio.sleep(0)
        server.close()
        await server.wait_closed()
        return got, fd

    got, fd = run(loop, main())
    assert got == b""
    reports = [c for c in contexts if "incoming connection" in c["message"]]
    if not REFUSES_REGISTERED_FD:
        assert len(made) == 1 and reports == []
        return
    assert made == []
    assert len(reports) == 1
    (report,) = reports
    assert set(report) == {"message", "exception", "protocol", "str"}
    assert report["protocol"] is Made
    assert report["exception"] is RuntimeError
    assert report["str"].startswith(f"File descriptor <socket.socket fd={fd},")
    assert "is used by transport" in report["str"]


def test_accept_error_is_reported_as_asyncio_callback_error(loop):
    """An accept() error other than running out of resources is raised out of asyncio's
    accept callback, which the loop reports (a listener shut down: EINVAL)."""
    reports = []

    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)

        def handler(loop, context):
            reports.append(summary(context) | {"handle": repr(context["handle"])})
            server.close()

        loop.set_exception_handler(handler)
        server._sockets[0].shutdown(socket.SHUT_RD)
        await server.wait_closed()
        return server

    run(loop, main())
    (report,) = reports
    assert report["message"].startswith(
        "Exception in callback BaseSelectorEventLoop._accept_connection("
    )
    assert report["handle"].startswith("<Handle BaseSelectorEventLoop._accept_connection(")
    assert report["exception"] is OSError
    assert report["str"] == "[Errno 22] Invalid argument"


# --------------------------------------------------------------------------------------
# How many connections one readiness report accepts
# --------------------------------------------------------------------------------------


def test_accepts_backlog_connections_per_readiness(loop):
    """Eight connections queued before the server starts, backlog=3: asyncio accepts 3 per
    readiness report (3.14: 4), the rest in the following iterations."""
    log: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    clients = connect_all(listener.getsockname(), 8)
    done = loop.create_future()
    factory = recording_protocol(loop, log, done, 8)

    async def main():
        server = await loop.create_server(factory, sock=listener, backlog=3, start_serving=False)
        Ticker(loop, log, limit=12).start()
        await server.start_serving()
        await done
        server.close()
        await server.wait_closed()

    run(loop, main())
    for client in clients:
        client.close()
    per_tick: dict[str, int] = {}
    tick = None
    for entry in log:
        if entry.startswith("tick"):
            tick = entry
        elif entry == "factory":
            per_tick[tick] = per_tick.get(tick, 0) + 1
    ticks = [int(t.split()[1]) for t in per_tick]
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))  # Consecutive iterations.
    expected = [4, 4] if EXTRA_ACCEPT else [3, 3, 2]
    assert list(per_tick.values()) == expected


# --------------------------------------------------------------------------------------
# Addresses and socket options
# --------------------------------------------------------------------------------------


def extra_of_accepted(loop, create, connect) -> dict:
    """Serve with ``create(factory)`` and connect with ``connect(server)``; return what the
    accepted transport's extra info says, and its socket's options."""
    got = loop.create_future()

    class Inspect(asyncio.Protocol):
        def connection_made(self, transport):
            sock = transport.get_extra_info("socket")
            info = {
                "peername": transport.get_extra_info("peername"),
                "sockname": transport.get_extra_info("sockname"),
                "timeout": sock.gettimeout(),
                "blocking": os.get_blocking(sock.fileno()),
                "inheritable": os.get_inheritable(sock.fileno()),
                "family": sock.family,
                "type": sock.type,
                "proto": sock.proto,
            }
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                info["nodelay"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            got.set_result(info)
            transport.close()

    async def main():
        server = await create(Inspect)
        # Loopback connects complete before the server accepts.
        client = connect(server)
        with client:
            info = await got
            info["client"] = client.getsockname()
            info["server"] = server.sockets[0].getsockname()
        server.close()
        await server.wait_closed()
        return info

    return run(loop, main())


def test_ipv4_extra_and_socket_state(loop):
    info = extra_of_accepted(
        loop,
        lambda f: loop.create_server(f, "127.0.0.1", 0),
        lambda s: socket.create_connection(s.sockets[0].getsockname(), timeout=TIMEOUT),
    )
    assert info["peername"] == info["client"]
    assert isinstance(info["peername"], tuple) and len(info["peername"]) == 2
    assert info["sockname"] == info["server"]
    assert info["timeout"] == 0.0
    assert info["blocking"] is False
    assert info["inheritable"] is False
    assert (info["family"], info["type"], info["proto"]) == (
        socket.AF_INET,
        socket.SOCK_STREAM,
        socket.IPPROTO_TCP,
    )
    assert info["nodelay"] == 1


def test_wildcard_ipv4_server_reports_the_connection_address(loop):
    info = extra_of_accepted(
        loop,
        lambda f: loop.create_server(f, "0.0.0.0", 0),
        lambda s: socket.create_connection(
            ("127.0.0.1", s.sockets[0].getsockname()[1]), timeout=TIMEOUT
        ),
    )
    assert info["sockname"] == ("127.0.0.1", info["server"][1])
    assert info["peername"] == info["client"]


def test_no_nodelay_for_a_listener_made_without_ipproto_tcp(loop):
    """asyncio sets TCP_NODELAY only on sockets whose protocol is IPPROTO_TCP: a listener
    made with the default protocol (0) gives connections that keep Nagle's algorithm."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    assert listener.proto == 0
    info = extra_of_accepted(
        loop,
        lambda f: loop.create_server(f, sock=listener),
        lambda s: socket.create_connection(s.sockets[0].getsockname(), timeout=TIMEOUT),
    )
    assert info["proto"] == 0
    assert info["nodelay"] == 0


def test_ipv6_extra(loop):
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    info = extra_of_accepted(
        loop,
        lambda f: loop.create_server(f, "::1", 0),
        lambda s: socket.create_connection(s.sockets[0].getsockname()[:2], timeout=TIMEOUT),
    )
    assert info["peername"] == info["client"]
    assert len(info["peername"]) == 4 and info["peername"][0] == "::1"
    assert info["sockname"] == info["server"]
    assert info["nodelay"] == 1


def test_ipv4_mapped_peer_of_a_dual_stack_server(loop):
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", 0))
    port = listener.getsockname()[1]
    info = extra_of_accepted(
        loop,
        lambda f: loop.create_server(f, sock=listener),
        lambda s: socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT),
    )
    client_port = info["client"][1]
    assert info["peername"] == ("::ffff:127.0.0.1", client_port, 0, 0)
    assert info["sockname"] == ("::ffff:127.0.0.1", port, 0, 0)


@pytest.fixture
def sock_path(tmp_path):
    path = tmp_path / "a.sock"
    if len(os.fsencode(path)) > 100:
        pytest.skip("tmp_path too long for a Unix socket path")
    return str(path)


@pytest.mark.parametrize("client_name", ["unnamed", "path", "abstract"])
def test_unix_server_extra(loop, sock_path, client_name):
    def connect(server):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(TIMEOUT)
        if client_name == "path":
            client.bind(sock_path + ".client")
        elif client_name == "abstract":
            client.bind("\0ferroloop-accept-" + uuid.uuid4().hex)
        client.connect(sock_path)
        return client

    info = extra_of_accepted(loop, lambda f: loop.create_unix_server(f, sock_path), connect)
    assert info["sockname"] == sock_path
    assert info["server"] == sock_path
    assert info["peername"] == info["client"]
    expected_type = {"unnamed": str, "path": str, "abstract": bytes}[client_name]
    assert type(info["peername"]) is expected_type
    if client_name == "unnamed":
        assert info["peername"] == ""
    assert (info["timeout"], info["blocking"], info["inheritable"]) == (0.0, False, False)
    assert "nodelay" not in info


def test_unix_server_on_an_abstract_name(loop):
    name = "\0ferroloop-accept-server-" + uuid.uuid4().hex

    def connect(server):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(TIMEOUT)
        client.connect(name)
        return client

    info = extra_of_accepted(loop, lambda f: loop.create_unix_server(f, name), connect)
    assert info["sockname"] == name.encode()
    assert info["peername"] == ""


def test_socket_subclass_accept_is_called(loop):
    """A listening socket of a subclass is accepted from with its own accept()."""
    accepted = []

    class Counting(socket.socket):
        def accept(self):
            conn, addr = super().accept()
            accepted.append(addr)
            return conn, addr

    listener = Counting(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    info = extra_of_accepted(
        loop,
        lambda f: loop.create_server(f, sock=listener),
        lambda s: socket.create_connection(s.sockets[0].getsockname(), timeout=TIMEOUT),
    )
    assert accepted == [info["peername"]]


def test_debug_mode_logs_each_connection(loop, caplog):
    loop.set_debug(True)
    caplog.set_level(logging.DEBUG, logger="asyncio")
    servers = []

    def create(f):
        async def make():
            server = await loop.create_server(f, "127.0.0.1", 0)
            servers.append(server)
            return server

        return make()

    info = extra_of_accepted(
        loop,
        create,
        lambda s: socket.create_connection(s.sockets[0].getsockname(), timeout=TIMEOUT),
    )
    records = [r for r in caplog.records if r.msg == "%r got a new connection from %r: %r"]
    assert len(records) == 1
    server, addr, conn = records[0].args
    assert server is servers[0]
    assert addr == info["peername"]
    assert type(conn) is socket.socket


def test_connect_accepted_socket_keeps_working(loop):
    async def main():
        a, b = socket.socketpair()
        received = loop.create_future()

        class Receive(asyncio.Protocol):
            def data_received(self, data):
                received.set_result(data)

        transport, _ = await loop.connect_accepted_socket(Receive, a)
        with b:
            b.sendall(b"over a socket pair")
            data = await received
        transport.close()
        await asyncio.sleep(0)
        return data

    assert run(loop, main()) == b"over a socket pair"


# --------------------------------------------------------------------------------------
# Closing with connections pending
# --------------------------------------------------------------------------------------


def test_close_with_connections_queued_in_the_kernel(loop):
    """Connections the server never accepted are reset when it closes its socket."""
    made = []

    async def main():
        server = await loop.create_server(
            lambda: made.append(1) or asyncio.Protocol(), "127.0.0.1", 0
        )
        address = server.sockets[0].getsockname()
        # The listener is not polled before close(): nothing is accepted.
        clients = connect_all(address, 3)
        server.close()
        await server.wait_closed()
        outcomes = []
        for client in clients:
            with client:
                try:
                    outcomes.append(client.recv(10))
                except ConnectionResetError:
                    outcomes.append("reset")
        return outcomes

    assert run(loop, main()) == ["reset", "reset", "reset"]
    assert made == []


# The half-made transport's __del__ detaches it from the closed server, whose _wakeup()
# then fails (3.13+: its waiters are gone): stock's transport does the same.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_close_between_accept_and_protocol_factory(loop):
    """Connections accepted in the iteration before the server closes still get their
    protocol factory called; their transport cannot attach to the closed server, so
    they are dropped (outside debug mode, silently; the garbage collector closes them)."""
    log: list[str] = []
    contexts = []
    loop.set_exception_handler(lambda loop, context: contexts.append(context))
    servers = []

    class Never(asyncio.Protocol):
        def __init__(self):
            log.append("factory")

        def connection_made(self, transport):
            log.append("made")

    async def main():
        server = await loop.create_server(Never, "127.0.0.1", 0)
        servers.append(server)
        clients = connect_all(server.sockets[0].getsockname(), 2)
        # tick 0 runs before the accept (in the same iteration), tick 1 before the
        # protocol factories (the iteration after).
        ticker = Ticker(loop, log, limit=4, on_tick={1: server.close})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            ticker.start()
            await server.wait_closed()
            for _ in range(5):
                await asyncio.sleep(0)
            # The half-made transports are released with the setup's state.
            gc.collect()
            outcomes = []
            for client in clients:
                with client:
                    outcomes.append(await outcome(client))
        return outcomes

    assert run(loop, main()) == ["reset", "reset"]
    assert log[:4] == ["tick 0", "tick 1", "factory", "factory"]
    assert "made" not in log
    assert contexts == []


@pytest.mark.skipif(sys.version_info < (3, 13), reason="close_clients/abort_clients: 3.13+")
@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_close_clients_reaches_every_accepted_connection(loop, how):
    made = []
    lost = []

    class Keep(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)

        def connection_lost(self, exc):
            lost.append(exc)

    async def main():
        server = await loop.create_server(Keep, "127.0.0.1", 0)
        clients = connect_all(server.sockets[0].getsockname(), 5, send=False)
        while len(made) < 5:
            await asyncio.sleep(0.01)
        server.close()
        getattr(server, how)()
        await server.wait_closed()
        outcomes = []
        for client in clients:
            with client:
                try:
                    outcomes.append(await read_to_eof(client))
                except ConnectionResetError:
                    outcomes.append("reset")
        return outcomes

    outcomes = run(loop, main())
    assert lost == [None] * 5
    assert outcomes == [b""] * 5


# --------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_thousand_short_connections_leave_no_descriptor(loop):
    n = 1000

    class Greet(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(b"hello")
            transport.close()

    async def main():
        server = await loop.create_server(Greet, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        await asyncio.sleep(0)
        gc.collect()
        before = open_fds()
        greetings = 0
        for _ in range(n):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            greetings += await reader.read() == b"hello"
            writer.close()
            await writer.wait_closed()
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()
        after = open_fds()
        server.close()
        await server.wait_closed()
        return greetings, after - before

    assert run(loop, main()) == (n, 0)


# --------------------------------------------------------------------------------------
# ferroloop's own construction path
# --------------------------------------------------------------------------------------


def test_accepted_transport_is_made_as_init_makes_it(ferroloop):
    """White-box check of ferroloop's construction fast path for accepted connections
    (``_transports.accepted_transport``): the transport it makes has the state
    ``SocketTransport.__init__`` gives, attribute for attribute, in the same order, and
    schedules the same callbacks. (Keeps the two in step when the transport changes.)"""
    from asyncio import base_events, trsock

    from ferroloop._transports import SocketTransport, accepted_transport

    loop = ferroloop.new_event_loop()
    made = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)

    try:
        server = base_events.Server(loop, [], P, None, 100, None)
        server._sockets = []  # Serving (not closed), so transports may attach.
        pairs = [socket.socketpair() for _ in range(2)]
        for a, _ in pairs:
            a.setblocking(False)
        (a1, _), (a2, _) = pairs
        by_init = SocketTransport(loop, a1, P(), None, {"peername": "peer"}, server, None)
        extra = {"peername": "peer", "socket": trsock.TransportSocket(a2)}
        extra["sockname"] = a2.getsockname()
        accepted = accepted_transport(loop, a2, a2.fileno(), P(), extra, server, None)
        assert type(accepted) is type(by_init)
        assert list(vars(accepted)) == list(vars(by_init))
        slots = ("_extra", "_loop", "_protocol_paused", "_high_water", "_low_water")
        for name in [*slots, *vars(by_init)]:
            mine, theirs = getattr(accepted, name), getattr(by_init, name)
            if name == "_extra":
                assert list(mine) == list(theirs)
            elif name in ("_sock", "_sock_fd", "_core", "write", "is_closing"):
                assert type(mine) is type(theirs), name
            else:
                assert mine == theirs, name
        assert loop._transports[a1.fileno()] is by_init
        assert loop._transports[a2.fileno()] is accepted
        if sys.version_info >= (3, 13):
            assert set(server._clients) == {by_init, accepted}
        else:
            assert server._active_count == 2
        loop.run_until_complete(asyncio.sleep(0))
        assert made == [by_init, accepted]
        assert loop._fd_events(a1.fileno()) == loop._fd_events(a2.fileno()) == 1
        for transport in (by_init, accepted):
            transport.close()
        loop.run_until_complete(asyncio.sleep(0))
        for _, b in pairs:
            b.close()
    finally:
        loop.close()
