"""Which ``contextvars.Context`` a connection's protocol callbacks run in.

This changed in Python 3.15 (CPython gh-140947): a ``Server`` copies the context it is
created in, every accepted connection gets its own copy of that, and all of one
connection's callbacks (``connection_made``, ``data_received``, ``eof_received``,
``connection_lost``) run in that one context; a client connection's callbacks share a
copy of the context ``create_connection`` was called in. Before 3.15 each callback ran
in a copy of the context current when it was scheduled, so a value a protocol set in
``connection_made`` was gone by ``data_received``. Either way, nothing a connection sets
reaches another connection or the code that created the server. Each test asserts the
running version's stock behaviour, on both loops.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import sys

from conftest import run_bounded

var = contextvars.ContextVar("connection_context_var", default="unset")

# 3.15+: one context per connection, shared by all its callbacks.
SHARED_PER_CONNECTION = sys.version_info >= (3, 15)


class RecordingProtocol(asyncio.Protocol):
    """Records what ``var`` holds in each callback, and sets it to the connection's own
    name in ``connection_made``."""

    def __init__(self, name: str, seen: dict, done: asyncio.Future | None = None):
        self.name = name
        self.seen = seen
        self.done = done
        self.transport = None

    def _note(self, event: str) -> None:
        self.seen.setdefault(self.name, []).append((event, var.get()))

    def connection_made(self, transport):
        self.transport = transport
        self._note("connection_made")
        var.set(self.name)

    def data_received(self, data):
        self._note("data_received")
        if data == b"bye":
            self.transport.close()

    def eof_received(self):
        self._note("eof_received")

    def connection_lost(self, exc):
        self._note("connection_lost")
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


def expected_events(name: str, created_in: str, with_eof: bool) -> list:
    """What a connection named ``name`` records when its server (or client call) ran in
    a context where ``var`` was ``created_in``."""
    later = name if SHARED_PER_CONNECTION else created_in
    events = [("connection_made", created_in), ("data_received", later)]
    if with_eof:
        events.append(("eof_received", later))
    events.append(("connection_lost", later))
    return events


def test_accepted_connections_see_the_servers_context(loop):
    """A value set before create_server is seen by every connection's callbacks; what a
    connection sets stays in that connection (3.15: for all its later callbacks)."""
    seen: dict = {}
    names = iter(["first", "second"])
    lost = [loop.create_future(), loop.create_future()]
    losses = iter(lost)

    def factory():
        return RecordingProtocol(next(names), seen, next(losses))

    async def main():
        var.set("server-creator")
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hello")
            await writer.drain()
            writer.write_eof()
            await reader.read()
            writer.close()
            await writer.wait_closed()
        await asyncio.gather(*lost)
        server.close()
        await server.wait_closed()
        return var.get()

    creator_after = run_bounded(loop, main())
    assert creator_after == "server-creator"
    # eof_received returned None: the transport closes itself after it.
    assert seen == {
        "first": expected_events("first", "server-creator", with_eof=True),
        "second": expected_events("second", "server-creator", with_eof=True),
    }


def test_server_context_is_taken_when_the_server_is_created(loop):
    """A change made after create_server, in the creator, is not seen by connections on
    3.15 (the server copied its context); before 3.15 the accept reader was registered
    at creation too, with a copy of the context then."""
    seen: dict = {}
    done = loop.create_future()

    async def main():
        var.set("at-creation")
        server = await loop.create_server(
            lambda: RecordingProtocol("conn", seen, done), "127.0.0.1", 0
        )
        var.set("after-creation")
        port = server.sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.setblocking(False)
            await loop.sock_sendall(client, b"bye")
            await done
        server.close()
        await server.wait_closed()

    run_bounded(loop, main())
    assert seen["conn"][0] == ("connection_made", "at-creation")


def test_start_server_handlers_are_isolated(loop):
    """start_server: each handler sees the creator's value, and what one handler sets is
    seen neither by the next connection's handler nor by the creator."""
    seen = []

    async def handler(reader, writer):
        seen.append(var.get())
        var.set(f"handler-{len(seen)}")
        await reader.read()
        writer.close()
        await writer.wait_closed()

    async def main():
        var.set("creator")
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write_eof()
            await reader.read()
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return var.get()

    assert run_bounded(loop, main()) == "creator"
    assert seen == ["creator", "creator", "creator"]


def test_unix_server_connections_see_the_servers_context(loop, tmp_path):
    """The same for create_unix_server."""
    seen: dict = {}
    done = loop.create_future()
    path = str(tmp_path / "ctx.sock")

    async def main():
        var.set("unix-creator")
        server = await loop.create_unix_server(lambda: RecordingProtocol("conn", seen, done), path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"bye")
        await writer.drain()
        await done
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run_bounded(loop, main())
    assert seen == {"conn": expected_events("conn", "unix-creator", with_eof=False)}


def test_client_connection_callbacks(loop):
    """create_connection: the protocol sees the caller's value; 3.15 runs all its
    callbacks in one copy of the caller's context, so a value set in connection_made is
    seen later; the caller never sees it."""
    seen: dict = {}
    done = loop.create_future()

    async def serve(reader, writer):
        writer.write(b"bye")
        await writer.drain()
        await reader.read()
        writer.close()

    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        var.set("caller")
        await loop.create_connection(
            lambda: RecordingProtocol("client", seen, done), "127.0.0.1", port
        )
        await done
        server.close()
        await server.wait_closed()
        return var.get()

    assert run_bounded(loop, main()) == "caller"
    assert seen == {"client": expected_events("client", "caller", with_eof=False)}
