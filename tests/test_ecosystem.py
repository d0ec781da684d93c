"""More real libraries, unchanged, on ferroloop and on stock asyncio (the oracle).

anyio (asyncio backend, the loop under test given to ``anyio.run`` as its
``loop_factory``, or anyio code inside ``asyncio.Runner``): task groups and cancel scopes,
``fail_after``/``move_on_after``, worker threads calling back into the loop
(``to_thread``, ``from_thread``, blocking portals), a TCP echo server with concurrent
clients and 1 MiB payloads, ``wait_readable``/``wait_writable``, subprocesses, memory
object streams.  httpx's ``AsyncClient`` (on anyio) against an aiohttp server on the same
loop: keep-alive, streamed request and response bodies, large responses, concurrent
requests, read timeouts.  websockets' asyncio implementation on both ends: echo, 1 MiB
messages, pings, server-initiated closes, 50 concurrent clients.

Every test checks which loop it really ran on.  Nothing here measures time: every wait
is bounded (``asyncio.timeout``, ``anyio.fail_after``, future and socket timeouts) so a
hang fails.

Needs: anyio httpx aiohttp websockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import signal
import socket
import subprocess
import sys
import threading

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
import conftest
import httpx
import pytest
from aiohttp import web
from conftest import check_loop, check_module, loop_module
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK

# Upper bound for one test's asynchronous part (a hang must fail, not block CI).
ASYNC_TIMEOUT = 20.0
# Upper bound for a server's graceful shutdown.
SHUTDOWN_TIMEOUT = 10.0
# Short deadlines that are meant to expire: their length does not matter, only that
# the operation they bound never completes on its own.
EXPIRING = 0.05
# Last resort: a test that wedges the loop itself (so that no asyncio timeout can fire)
# ends the pytest process with every thread's traceback instead of blocking CI.
WATCHDOG_TIMEOUT = 180.0

# Seeded random bytes, not a repeating pattern, so reordered or duplicated chunks show.
BIG = random.Random(20261122).randbytes(1 << 20)  # 1 MiB: several socket buffers
BIGGER = random.Random(20261123).randbytes(3 << 19)  # 1.5 MiB


pytestmark = pytest.mark.usefixtures("watchdog", "no_error_logs")


def run_on(loop_factory, coro_fn, *args):
    """Run ``coro_fn(*args)`` on a new loop from ``loop_factory``, bounded by ASYNC_TIMEOUT."""
    return conftest.run_on(loop_factory, coro_fn, *args, timeout=ASYNC_TIMEOUT)


def anyio_run(loop_factory, coro_fn, *args):
    """Run ``coro_fn(*args)`` with ``anyio.run`` on a new loop, bounded by ASYNC_TIMEOUT."""

    async def main():
        with anyio.fail_after(ASYNC_TIMEOUT):
            return await coro_fn(*args)

    return anyio.run(main, backend="asyncio", backend_options={"loop_factory": loop_factory})


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------
# anyio
# --------------------------------------------------------------------------------------


def test_anyio_task_group_cancellation(loop_kind, loop_factory):
    """Task groups: cancel_scope.cancel(), a failing child, shields, nested scopes."""
    cancelled_exc = None

    async def main():
        nonlocal cancelled_exc
        check_loop(loop_kind)
        cancelled_exc = anyio.get_cancelled_exc_class()
        events = []

        async def sleeper(name, *, task_status=anyio.TASK_STATUS_IGNORED):
            task_status.started(name)
            try:
                await anyio.sleep_forever()
            except cancelled_exc:
                # A shielded scope still runs to completion inside a cancelled task.
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0)
                    await anyio.sleep(EXPIRING)
                events.append(("cancelled", name))
                raise

        # The group's own scope, cancelled from the outside once every child has started.
        async with anyio.create_task_group() as tg:
            started = [await tg.start(sleeper, i) for i in range(5)]
            assert started == list(range(5))
            tg.cancel_scope.cancel()
        assert tg.cancel_scope.cancel_called
        assert sorted(events) == [("cancelled", i) for i in range(5)]

        # A failing child cancels its siblings; the error comes out in an ExceptionGroup.
        events.clear()

        async def failer(*, task_status=anyio.TASK_STATUS_IGNORED):
            task_status.started()
            await anyio.sleep(0)
            raise ValueError("child failed")

        caught = []
        try:
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    await tg.start(sleeper, i)
                await tg.start(failer)
        except* ValueError as group:
            caught.extend(group.exceptions)
        assert [str(exc) for exc in caught] == ["child failed"]
        assert sorted(events) == [("cancelled", i) for i in range(3)]

        # A cancelled inner scope is absorbed there; the code after it keeps running.
        with anyio.CancelScope() as scope:
            scope.cancel()
            await anyio.sleep_forever()
        assert scope.cancelled_caught

        # Cancelling the host task from the asyncio side reaches anyio's children too.
        events.clear()
        children_started = anyio.Event()

        async def host():
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    await tg.start(sleeper, f"host-{i}")
                children_started.set()

        task = asyncio.get_running_loop().create_task(host())
        await children_started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sorted(events) == [("cancelled", f"host-{i}") for i in range(3)]

    anyio_run(loop_factory, main)
    assert cancelled_exc is asyncio.CancelledError


def test_anyio_fail_after(loop_kind, loop_factory):
    """fail_after/move_on_after expire on sleeps, stream reads and socket reads."""

    async def main():
        check_loop(loop_kind)
        outer_deadline = anyio.current_effective_deadline()
        assert outer_deadline != math.inf  # anyio_run's own fail_after

        with pytest.raises(TimeoutError):
            with anyio.fail_after(EXPIRING) as scope:
                assert anyio.current_effective_deadline() <= outer_deadline
                await anyio.sleep_forever()
        assert scope.cancelled_caught

        with anyio.move_on_after(EXPIRING) as scope:
            await anyio.sleep_forever()
        assert scope.cancelled_caught

        # A deadline that does not expire leaves the result alone.
        with anyio.fail_after(ASYNC_TIMEOUT) as scope:
            await anyio.sleep(0)
            value = await anyio.to_thread.run_sync(lambda: 42)
        assert value == 42 and not scope.cancelled_caught

        # Waiting on an empty memory stream.
        send, receive = anyio.create_memory_object_stream[int](1)
        with send, receive:
            with pytest.raises(TimeoutError):
                with anyio.fail_after(EXPIRING):
                    await receive.receive()

        # Waiting on a socket whose peer never sends: the cancelled read must leave the
        # connection usable.
        async def silent_until_told(stream):
            async with stream:
                assert await stream.receive() == b"now"
                await stream.send(b"data")

        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, silent_until_told)
            async with await anyio.connect_tcp("127.0.0.1", port) as client:
                with anyio.move_on_after(EXPIRING) as scope:
                    await client.receive()
                assert scope.cancelled_caught
                await client.send(b"now")
                assert await client.receive() == b"data"
            tg.cancel_scope.cancel()

    anyio_run(loop_factory, main)


def test_anyio_threads(loop_kind, loop_factory):
    """to_thread.run_sync, from_thread calling back into the loop, a BlockingPortal."""

    async def main():
        check_loop(loop_kind)
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        async def on_loop(x):
            await anyio.sleep(0)
            assert asyncio.get_running_loop() is loop
            check_loop(loop_kind)
            return x * 2, threading.get_ident()

        def on_loop_sync(x):
            assert asyncio.get_running_loop() is loop
            return x + 1, threading.get_ident()

        def worker(x):
            me = threading.get_ident()
            assert me != loop_thread
            anyio.from_thread.check_cancelled()
            doubled, where = anyio.from_thread.run(on_loop, x)
            assert where == loop_thread
            incremented, where = anyio.from_thread.run_sync(on_loop_sync, x)
            assert where == loop_thread
            return doubled, incremented, me

        results = [await anyio.to_thread.run_sync(worker, i) for i in range(3)]
        assert [r[:2] for r in results] == [(0, 1), (2, 2), (4, 3)]

        # More callers than worker slots: the limiter queues them, all complete.
        limiter = anyio.CapacityLimiter(2)
        running = 0
        peak = 0
        lock = threading.Lock()
        gate = threading.Event()

        def limited(i):
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
                if running == 2:
                    gate.set()
            # Hold the slot until both slots are taken, so the limit is really reached.
            assert gate.wait(ASYNC_TIMEOUT)
            with lock:
                running -= 1
            return anyio.from_thread.run_sync(lambda: i * i)

        squares = {}

        async def call(i):
            squares[i] = await anyio.to_thread.run_sync(limited, i, limiter=limiter)

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(call, i)
        assert squares == {i: i * i for i in range(6)}
        assert peak == 2

        # Threads anyio did not start reach the loop through a BlockingPortal.
        async with anyio.from_thread.BlockingPortal() as portal:
            answers = []

            def outsider(i):
                answers.append(portal.call(on_loop, i))
                answers.append(portal.call(on_loop_sync, i))

            threads = [threading.Thread(target=outsider, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            # The loop must keep running while the threads wait on it.
            await anyio.to_thread.run_sync(lambda: [t.join(ASYNC_TIMEOUT) for t in threads])
            assert not any(t.is_alive() for t in threads)
        assert sorted(a[0] for a in answers) == sorted([i * 2 for i in range(4)] + [1, 2, 3, 4])
        assert {a[1] for a in answers} == {loop_thread}

    anyio_run(loop_factory, main)


def test_anyio_blocking_portal_thread(loop_kind, loop_factory):
    """start_blocking_portal runs the loop under test in its own thread, driven from ours."""

    async def where():
        check_loop(loop_kind)
        await anyio.sleep(0)
        return loop_module(), threading.get_ident()

    async def sleepy(event):
        await event.wait()
        return "woken"

    with anyio.from_thread.start_blocking_portal(
        "asyncio", backend_options={"loop_factory": loop_factory}
    ) as portal:
        module, ident = portal.start_task_soon(where).result(ASYNC_TIMEOUT)
        check_module(loop_kind, module)
        assert ident != threading.get_ident()
        event = portal.call(anyio.Event)
        future = portal.start_task_soon(sleepy, event)
        assert not future.done()
        portal.call(event.set)
        assert future.result(ASYNC_TIMEOUT) == "woken"
        # Cancelling the concurrent future cancels the task on the loop.
        never = portal.call(anyio.Event)
        future = portal.start_task_soon(sleepy, never)
        future.cancel()
        assert future.cancelled()


def test_anyio_tcp_echo(loop_kind, loop_factory):
    """create_tcp_listener + connect_tcp: concurrent clients, 1 MiB each way, half-close."""
    server_loops = []

    async def echo(stream):
        server_loops.append(loop_module())
        async with stream:
            async for chunk in stream:
                await stream.send(chunk)

    async def main():
        check_loop(loop_kind)
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        assert listener.extra(anyio.abc.SocketAttribute.local_address)[0] == "127.0.0.1"
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        results = {}

        async def client(i, payload):
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                assert stream.extra(anyio.abc.SocketAttribute.remote_port) == port
                received = bytearray()

                # Send and receive at once: the echo of a 1 MiB payload fills both
                # directions' buffers, so a client that sent everything first would block.
                async def sender():
                    view = memoryview(payload)
                    for start in range(0, len(payload), 65536):
                        await stream.send(view[start : start + 65536])
                    await stream.send_eof()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(sender)
                    async for chunk in stream:
                        received += chunk
                results[i] = bytes(received)

        payloads = {i: f"client {i} ".encode() * (i + 1) for i in range(8)}
        payloads[8] = BIG
        payloads[9] = BIG[::-1]
        async with listener, anyio.create_task_group() as server_tg:
            server_tg.start_soon(listener.serve, echo)
            async with anyio.create_task_group() as clients:
                for i, payload in payloads.items():
                    clients.start_soon(client, i, payload)
            server_tg.cancel_scope.cancel()
        assert results.keys() == payloads.keys()
        for i, payload in payloads.items():
            assert len(results[i]) == len(payload), i
            assert results[i] == payload, i

    anyio_run(loop_factory, main)
    assert len(server_loops) == 10
    for module in server_loops:
        check_module(loop_kind, module)


def test_anyio_wait_readable(loop_kind, loop_factory):
    """wait_readable/wait_writable on a socketpair, cancelled waits, the deprecated names."""

    async def main():
        check_loop(loop_kind)
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            woke = anyio.Event()

            async def waiter():
                await anyio.wait_readable(a)
                woke.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert not woke.is_set()
                b.send(b"ping")
            assert a.recv(100) == b"ping"

            # A cancelled wait must unregister its reader: the next wait on the same fd
            # would otherwise be refused as busy, or woken by a stale callback.
            for _ in range(3):
                with anyio.move_on_after(EXPIRING) as scope:
                    await anyio.wait_readable(a)
                assert scope.cancelled_caught
            b.send(b"again")
            await anyio.wait_readable(a.fileno())
            assert a.recv(100) == b"again"

            await anyio.wait_writable(b)

            with pytest.warns(DeprecationWarning):
                waiting = anyio.wait_socket_readable(a)
            b.send(b"old api")
            await waiting
            assert a.recv(100) == b"old api"
            with pytest.warns(DeprecationWarning):
                waiting = anyio.wait_socket_writable(b)
            await waiting

    anyio_run(loop_factory, main)


CHILD_REVERSE = (
    "import sys\n"
    "data = sys.stdin.buffer.read()\n"
    "sys.stdout.buffer.write(data[::-1])\n"
    "sys.stderr.write('to stderr')\n"
    "sys.exit(3)\n"
)
CHILD_LINES = (
    "import sys\n"
    "for line in sys.stdin:\n"
    "    sys.stdout.write('echo:' + line)\n"
    "    sys.stdout.flush()\n"
)


def test_anyio_process(loop_kind, loop_factory):
    """run_process and open_process of tiny ``sys.executable -c`` children."""

    async def main():
        check_loop(loop_kind)
        result = await anyio.run_process(
            [sys.executable, "-c", CHILD_REVERSE], input=b"hello", check=False
        )
        assert (result.returncode, result.stdout, result.stderr) == (3, b"olleh", b"to stderr")

        with pytest.raises(subprocess.CalledProcessError) as excinfo:
            await anyio.run_process([sys.executable, "-c", "raise SystemExit(2)"])
        assert excinfo.value.returncode == 2

        # 1 MiB through the pipes both ways.
        result = await anyio.run_process(
            [sys.executable, "-c", CHILD_REVERSE], input=BIG, check=False
        )
        assert (result.returncode, result.stdout) == (3, BIG[::-1])

        # An interactive child: a line in, a line out, then EOF ends it.
        async with await anyio.open_process([sys.executable, "-c", CHILD_LINES]) as proc:
            pending = b""
            for i in range(3):
                await proc.stdin.send(f"line {i}\n".encode())
                while b"\n" not in pending:
                    pending += await proc.stdout.receive()
                line, _, pending = pending.partition(b"\n")
                assert line == f"echo:line {i}".encode()
            await proc.stdin.aclose()
            assert await proc.wait() == 0

        # A child that would wait forever, terminated.
        async with await anyio.open_process([sys.executable, "-c", CHILD_LINES]) as proc:
            await proc.stdin.send(b"alive?\n")
            assert await proc.stdout.receive() == b"echo:alive?\n"
            proc.terminate()
            assert await proc.wait() == -signal.SIGTERM

    anyio_run(loop_factory, main)


def test_anyio_memory_streams(loop_kind, loop_factory):
    """Memory object streams (inside asyncio.Runner): backpressure, clones, end of stream."""

    async def main():
        check_loop(loop_kind)
        # Unbuffered: a send waits for a receiver.
        send, receive = anyio.create_memory_object_stream[int](0)
        with send, receive:
            with pytest.raises(anyio.WouldBlock):
                send.send_nowait(1)

            async def take():
                return await receive.receive()

            task = asyncio.get_running_loop().create_task(take())
            await anyio.wait_all_tasks_blocked()
            send.send_nowait(7)
            assert await task == 7

        # Several producers and consumers on clones; the stream ends when every sending
        # clone is closed.
        send, receive = anyio.create_memory_object_stream[tuple[int, int]](4)
        received = {0: [], 1: [], 2: []}
        peak_buffer = 0

        async def producer(stream, p):
            nonlocal peak_buffer
            async with stream:
                for n in range(100):
                    await stream.send((p, n))
                    peak_buffer = max(peak_buffer, stream.statistics().current_buffer_used)

        async def consumer(stream, c):
            async with stream:
                async for item in stream:
                    received[c].append(item)
                    await anyio.sleep(0)

        async with anyio.create_task_group() as tg:
            for c in range(3):
                tg.start_soon(consumer, receive.clone(), c)
            for p in range(2):
                tg.start_soon(producer, send.clone(), p)
            send.close()
            receive.close()
        everything = sorted(received[0] + received[1] + received[2])
        assert everything == sorted((p, n) for p in range(2) for n in range(100))
        assert peak_buffer <= 4
        # Each consumer sees each producer's items in order.
        for items in received.values():
            for p in range(2):
                mine = [n for q, n in items if q == p]
                assert mine == sorted(mine)

        send, receive = anyio.create_memory_object_stream[bytes](1)
        await send.send(b"last")
        send.close()
        assert await receive.receive() == b"last"
        with pytest.raises(anyio.EndOfStream):
            await receive.receive()
        receive.close()
        with pytest.raises(anyio.ClosedResourceError):
            await receive.receive()

    run_on(loop_factory, main)


# --------------------------------------------------------------------------------------
# httpx against aiohttp.web, both on the loop under test
# --------------------------------------------------------------------------------------


def aiohttp_server(app: web.Application):
    """``conftest.aiohttp_server`` with this module's shutdown timeout."""
    return conftest.aiohttp_server(app, SHUTDOWN_TIMEOUT)


@contextlib.asynccontextmanager
async def httpx_client_of(server: HttpApp, **client_options):
    """``server`` served on the running loop, and an httpx AsyncClient for it."""
    async with aiohttp_server(server.app) as url:
        async with httpx.AsyncClient(base_url=url, **client_options) as client:
            yield client


class HttpApp:
    """An aiohttp app recording, per request, the server-side transport and loop."""

    def __init__(self):
        self.seen = []  # (path, transport, peername, loop module)
        self.app = web.Application()
        self.app.router.add_get("/info/{n}", self.info)
        self.app.router.add_get("/big", self.big)
        self.app.router.add_post("/upload", self.upload)
        self.app.router.add_get("/together", self.together)
        self.app.router.add_get("/slow", self.slow)
        # Set by the tests that use the matching handler.
        self.request_chunk_seen = asyncio.Event()
        self.response_chunk_seen = asyncio.Event()
        self.together_target = 0
        self.together_count = 0
        self.all_together = asyncio.Event()
        self.release_slow = asyncio.Event()

    def record(self, request: web.Request) -> None:
        transport = request.transport
        self.seen.append(
            (request.path, transport, transport.get_extra_info("peername"), loop_module())
        )

    async def info(self, request: web.Request) -> web.Response:
        self.record(request)
        return web.json_response({"n": request.match_info["n"], "loop": loop_module()})

    async def big(self, request: web.Request) -> web.Response:
        self.record(request)
        return web.Response(body=BIGGER, content_type="application/octet-stream")

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """Read the body as it arrives, then stream it back after a summary line."""
        self.record(request)
        body = bytearray()
        async with asyncio.timeout(ASYNC_TIMEOUT):
            async for chunk in request.content.iter_any():
                body += chunk
                # The client holds the rest of its body back until this is set.
                self.request_chunk_seen.set()
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        await resp.write(f"{len(body)} {sha(body)}\n".encode())
        # The rest of the response waits until the client has read the first part.
        async with asyncio.timeout(ASYNC_TIMEOUT):
            await self.response_chunk_seen.wait()
        view = memoryview(body)
        for start in range(0, len(body), 100_000):
            await resp.write(view[start : start + 100_000])
        await resp.write_eof()
        return resp

    async def together(self, request: web.Request) -> web.Response:
        """Answers only once ``together_target`` requests are in handlers at the same time."""
        self.record(request)
        self.together_count += 1
        if self.together_count == self.together_target:
            self.all_together.set()
        async with asyncio.timeout(ASYNC_TIMEOUT):
            await self.all_together.wait()
        return web.Response(text="together")

    async def slow(self, request: web.Request) -> web.Response:
        self.record(request)
        async with asyncio.timeout(ASYNC_TIMEOUT):
            await self.release_slow.wait()
        return web.Response(text="late")


def test_httpx_keep_alive(loop_kind, loop_factory):
    """Sequential GETs from one AsyncClient reuse one connection."""
    server = HttpApp()

    async def main():
        check_loop(loop_kind)
        async with httpx_client_of(server) as client:
            for n in range(6):
                resp = await client.get(f"/info/{n}")
                assert resp.status_code == 200
                assert resp.http_version == "HTTP/1.1"
                assert resp.headers.get("connection", "").lower() != "close"
                info = resp.json()
                assert info["n"] == str(n)
                check_module(loop_kind, info["loop"])

    run_on(loop_factory, main)
    assert len(server.seen) == 6
    assert all(transport is server.seen[0][1] for _, transport, _, _ in server.seen)
    assert len({peer for _, _, peer, _ in server.seen}) == 1


def test_httpx_streaming(loop_kind, loop_factory):
    """POST with a streamed request body; the response body streams back while read."""
    server = HttpApp()
    pieces = [BIG[i : i + 65536] for i in range(0, len(BIG), 65536)]

    async def body():
        yield pieces[0]
        # Proves the body really streams: the server has read part of it before the rest
        # exists.
        await server.request_chunk_seen.wait()
        for piece in pieces[1:]:
            await asyncio.sleep(0)
            yield piece

    async def main():
        check_loop(loop_kind)
        async with httpx_client_of(server) as client:
            request = client.build_request("POST", "/upload", content=body())
            assert request.headers["transfer-encoding"] == "chunked"
            resp = await client.send(request, stream=True)
            try:
                assert resp.status_code == 200
                assert resp.headers["transfer-encoding"] == "chunked"
                received = bytearray()
                async for chunk in resp.aiter_bytes():
                    received += chunk
                    # The server sends the rest only after the client has seen data.
                    server.response_chunk_seen.set()
            finally:
                await resp.aclose()
        return bytes(received)

    received = run_on(loop_factory, main)
    summary, _, echoed = received.partition(b"\n")
    assert summary.decode() == f"{len(BIG)} {sha(BIG)}"
    assert len(echoed) == len(BIG)
    assert echoed == BIG
    assert len(server.seen) == 1
    check_module(loop_kind, server.seen[0][3])


def test_httpx_large_response(loop_kind, loop_factory):
    """A 1.5 MiB response: read whole, and streamed in fixed-size pieces."""
    server = HttpApp()

    async def main():
        check_loop(loop_kind)
        async with httpx_client_of(server) as client:
            resp = await client.get("/big")
            assert resp.status_code == 200
            assert int(resp.headers["content-length"]) == len(BIGGER)
            assert resp.content == BIGGER

            sizes = []
            data = bytearray()
            async with client.stream("GET", "/big") as resp:
                async for chunk in resp.aiter_bytes(chunk_size=100_000):
                    sizes.append(len(chunk))
                    data += chunk
            assert data == BIGGER
            assert all(size == 100_000 for size in sizes[:-1])

    run_on(loop_factory, main)
    assert len(server.seen) == 2
    assert server.seen[0][1] is server.seen[1][1]  # keep-alive after a large body too


def test_httpx_concurrent(loop_kind, loop_factory):
    """asyncio.gather of many requests; some must be in flight at once to be answered."""
    server = HttpApp()
    server.together_target = 5

    async def main():
        check_loop(loop_kind)
        limits = httpx.Limits(max_connections=8)
        async with httpx_client_of(server, limits=limits) as client:
            paths = [f"/info/{n}" for n in range(25)] + ["/together"] * 5
            responses = await asyncio.gather(*(client.get(path) for path in paths))
        return paths, responses

    paths, responses = run_on(loop_factory, main)
    for path, resp in zip(paths, responses, strict=True):
        assert resp.status_code == 200, path
        if path == "/together":
            assert resp.text == "together"
        else:
            assert resp.json()["n"] == path.rsplit("/", 1)[1]
    assert len(server.seen) == 30
    together_peers = {peer for path, _, peer, _ in server.seen if path == "/together"}
    assert len(together_peers) == 5  # HTTP/1.1: one connection per request in flight
    assert len({peer for _, _, peer, _ in server.seen}) <= 8
    for *_, module in server.seen:
        check_module(loop_kind, module)


def test_httpx_read_timeout(loop_kind, loop_factory):
    """httpx.ReadTimeout against a handler that answers later; the client stays usable."""
    server = HttpApp()

    async def main():
        check_loop(loop_kind)
        timeout = httpx.Timeout(ASYNC_TIMEOUT, read=EXPIRING)
        async with httpx_client_of(server, timeout=timeout) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/slow")
            # A per-request timeout overrides the client's.
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/slow", timeout=httpx.Timeout(ASYNC_TIMEOUT, read=EXPIRING))
            server.release_slow.set()
            resp = await client.get("/info/after")
            assert resp.status_code == 200
            assert resp.json()["n"] == "after"
            resp = await client.get("/slow", timeout=ASYNC_TIMEOUT)
            assert resp.text == "late"

    run_on(loop_factory, main)
    assert [path for path, *_ in server.seen] == ["/slow", "/slow", "/info/after", "/slow"]


# --------------------------------------------------------------------------------------
# websockets (asyncio implementation) on both ends
# --------------------------------------------------------------------------------------

WS_MAX_SIZE = 4 << 20  # room for the 1 MiB messages and their echo


class WsApp:
    """A websockets handler: echo, and a few commands that make the server act."""

    def __init__(self):
        self.loops = []
        self.crowd_target = 0
        self.crowd_count = 0
        self.crowd_ready = asyncio.Event()

    async def handler(self, ws):
        self.loops.append(loop_module())
        if ws.request.path == "/crowd":
            self.crowd_count += 1
            if self.crowd_count == self.crowd_target:
                self.crowd_ready.set()
            async with asyncio.timeout(ASYNC_TIMEOUT):
                await self.crowd_ready.wait()
            await ws.send(f"go {self.crowd_count}")
        async for message in ws:
            if message == "loop?":
                await ws.send(loop_module())
            elif message == "ping me":
                pong = await ws.ping(b"from server")
                async with asyncio.timeout(ASYNC_TIMEOUT):
                    latency = await pong
                await ws.send(f"pong {type(latency).__name__}")
            elif message == "close ok":
                await ws.close(1001, "server going away")
                return
            elif message == "close error":
                await ws.close(4000, "custom close")
                # Iterating on would raise ConnectionClosedError, logged as a failure.
                return
            else:
                await ws.send(message)


@contextlib.asynccontextmanager
async def ws_server(app: WsApp):
    async with ws_serve(app.handler, "127.0.0.1", 0, max_size=WS_MAX_SIZE) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        assert host == "127.0.0.1"
        yield f"ws://127.0.0.1:{port}"


def test_websockets_echo_and_ping(loop_kind, loop_factory):
    """Text and binary echo, 1 MiB messages, pings both ways."""
    app = WsApp()

    async def main():
        check_loop(loop_kind)
        async with ws_server(app) as url:
            async with ws_connect(url, max_size=WS_MAX_SIZE) as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                await ws.send(b"\x00\x01binary\xff")
                assert await ws.recv() == b"\x00\x01binary\xff"
                await ws.send(BIG)
                assert await ws.recv() == BIG
                big_text = BIG.hex()[: 1 << 20]
                await ws.send(big_text)
                assert await ws.recv() == big_text
                # A fragmented message is reassembled by the peer.
                await ws.send(iter([b"frag", b"mented"]))
                assert await ws.recv() == b"fragmented"

                pong = await ws.ping(b"client ping")
                latency = await pong
                assert isinstance(latency, float) and latency >= 0
                pongs = [await ws.ping() for _ in range(5)]
                await asyncio.gather(*pongs)

                await ws.send("ping me")
                assert await ws.recv() == "pong float"
                await ws.send("loop?")
                check_module(loop_kind, await ws.recv())
            assert ws.close_code == 1000

    run_on(loop_factory, main)
    assert len(app.loops) == 1
    check_module(loop_kind, app.loops[0])


def test_websockets_server_close(loop_kind, loop_factory):
    """A server-initiated close: its code and reason reach the client's exception."""
    app = WsApp()

    async def main():
        check_loop(loop_kind)
        async with ws_server(app) as url:
            async with ws_connect(url) as ws:
                await ws.send("close ok")
                with pytest.raises(ConnectionClosedOK) as excinfo:
                    await ws.recv()
                assert excinfo.value.rcvd.code == 1001
                assert excinfo.value.rcvd.reason == "server going away"
                assert excinfo.value.sent.code == 1001  # the client echoed the code
                assert (ws.close_code, ws.close_reason) == (1001, "server going away")
                await ws.wait_closed()

            async with ws_connect(url) as ws:
                await ws.send("close error")
                with pytest.raises(ConnectionClosedError) as excinfo:
                    await ws.recv()
                assert (excinfo.value.rcvd.code, excinfo.value.rcvd.reason) == (
                    4000,
                    "custom close",
                )
                with pytest.raises(ConnectionClosedError):
                    await ws.send("too late")

    run_on(loop_factory, main)
    assert len(app.loops) == 2


def test_websockets_many_clients(loop_kind, loop_factory):
    """50 clients connected at once (the server answers none until all are there)."""
    clients = 50
    app = WsApp()
    app.crowd_target = clients

    async def main():
        check_loop(loop_kind)
        async with ws_server(app) as url:

            async def client(i):
                async with ws_connect(f"{url}/crowd") as ws:
                    assert await ws.recv() == f"go {clients}"
                    for j in range(3):
                        message = f"client {i} message {j}"
                        await ws.send(message)
                        assert await ws.recv() == message
                    await ws.send(bytes([i]) * 1000)
                    assert await ws.recv() == bytes([i]) * 1000
                return i

            done = await asyncio.gather(*(client(i) for i in range(clients)))
        assert done == list(range(clients))

    run_on(loop_factory, main)
    assert len(app.loops) == clients
    for module in app.loops:
        check_module(loop_kind, module)
