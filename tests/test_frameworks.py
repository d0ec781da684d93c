"""Real frameworks on ferroloop and on stock asyncio (the oracle).

aiohttp (server and client on the loop under test): keep-alive, ``Connection: close``,
WebSocket echo and close codes.  uvicorn (``httptools`` and ``h11``, three WebSocket
implementations) started in-process with ``await server.serve()`` on the loop under test,
and in a child process the ways a user starts it on ferroloop, checked with blocking
clients from the test.

Every test checks which loop it really ran on.  Nothing here measures time: every wait
is bounded (``asyncio.timeout``, socket and subprocess timeouts) so a hang fails.

Needs: aiohttp uvicorn httptools h11 websockets wsproto.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import aiohttp
import conftest
import pytest
from aiohttp import WSMsgType, web
from conftest import (
    SUBPROCESS_TIMEOUT,
    check_loop,
    check_module,
    child_env,
    import_ferroloop,
    loop_module,
)
from websockets.sync.client import connect as ws_sync_connect

# Upper bound for one test's asynchronous part (a hang must fail, not block CI).
ASYNC_TIMEOUT = 30.0
# Upper bound for one blocking socket operation of a test-side client.
SOCKET_TIMEOUT = 15.0
# Upper bound for a server's graceful shutdown.
SHUTDOWN_TIMEOUT = 10.0
# Last resort: a test that wedges the loop itself (so that no asyncio timeout can fire)
# ends the pytest process with every thread's traceback instead of blocking CI.
WATCHDOG_TIMEOUT = 180.0


pytestmark = pytest.mark.usefixtures("watchdog")


def run_on(loop_factory, coro_fn, *args):
    """Run ``coro_fn(*args)`` on a new loop from ``loop_factory``, bounded by ASYNC_TIMEOUT."""
    return conftest.run_on(loop_factory, coro_fn, *args, timeout=ASYNC_TIMEOUT)


# --------------------------------------------------------------------------------------
# aiohttp
# --------------------------------------------------------------------------------------


def aiohttp_server(app: web.Application):
    """``conftest.aiohttp_server`` with this module's shutdown timeout."""
    return conftest.aiohttp_server(app, SHUTDOWN_TIMEOUT)


BIG = bytes(range(256)) * 4096  # 1 MiB: more than one socket buffer, exercises flow control


def test_aiohttp_keep_alive(loop_kind, loop_factory):
    """Several requests (small and 1 MiB bodies both ways) reuse one connection."""
    seen = []  # (transport, peername, server-side loop module) per request

    async def echo(request: web.Request) -> web.Response:
        transport = request.transport
        seen.append((transport, transport.get_extra_info("peername"), loop_module()))
        body = await request.read()
        return web.Response(
            text=f"{request.method} {request.path} {len(body)} {hashlib.sha256(body).hexdigest()}"
        )

    async def big(request: web.Request) -> web.Response:
        transport = request.transport
        seen.append((transport, transport.get_extra_info("peername"), loop_module()))
        return web.Response(body=BIG, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_route("*", "/echo/{n}", echo)
    app.router.add_get("/big", big)

    async def main():
        check_loop(loop_kind)
        client_conns = {"created": 0, "reused": 0}

        async def on_create(session, ctx, params):
            client_conns["created"] += 1

        async def on_reuse(session, ctx, params):
            client_conns["reused"] += 1

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(on_create)
        trace.on_connection_reuseconn.append(on_reuse)
        async with aiohttp_server(app) as url:
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
                for i in range(4):
                    payload = f"payload-{i}".encode() * (i + 1)
                    async with session.post(f"{url}/echo/{i}", data=payload) as resp:
                        assert resp.status == 200
                        assert resp.headers.get("Connection", "").lower() != "close"
                        expected = hashlib.sha256(payload).hexdigest()
                        assert await resp.text() == f"POST /echo/{i} {len(payload)} {expected}"
                async with session.post(f"{url}/echo/up", data=BIG) as resp:
                    assert resp.status == 200
                    expected = hashlib.sha256(BIG).hexdigest()
                    assert await resp.text() == f"POST /echo/up {len(BIG)} {expected}"
                async with session.get(f"{url}/big") as resp:
                    assert resp.status == 200
                    assert await resp.read() == BIG
                async with session.get(f"{url}/echo/last") as resp:
                    assert resp.status == 200
                    empty = hashlib.sha256(b"").hexdigest()
                    assert await resp.text() == f"GET /echo/last 0 {empty}"
        return client_conns

    client_conns = run_on(loop_factory, main)
    assert len(seen) == 7
    # One connection: the server saw one transport object and one peer address, and the
    # client opened one connection and reused it for the other six requests.
    assert all(transport is seen[0][0] for transport, _, _ in seen)
    assert {peer for _, peer, _ in seen} == {seen[0][1]}
    assert client_conns == {"created": 1, "reused": 6}
    for _, _, module in seen:
        check_module(loop_kind, module)


def test_aiohttp_connection_close(loop_kind, loop_factory):
    """``Connection: close``: the server answers, then closes; the client gets the body."""
    peers = []

    async def hello(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))
        return web.Response(text=f"hello from {loop_module()}")

    app = web.Application()
    app.router.add_get("/hello", hello)

    async def main():
        check_loop(loop_kind)
        async with aiohttp_server(app) as url:
            # aiohttp's client: the body arrives, and the next request needs a new connection.
            async with aiohttp.ClientSession() as session:
                for _ in range(2):
                    headers = {"Connection": "close"}
                    async with session.get(f"{url}/hello", headers=headers) as resp:
                        assert resp.status == 200
                        assert resp.headers.get("Connection", "").lower() == "close"
                        text = await resp.text()
                        assert text.startswith("hello from "), text
                        check_module(loop_kind, text.removeprefix("hello from "))

            # A raw stream client: read() returns at EOF, so the server did close.
            port = int(url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                await writer.drain()
                raw = await reader.read()
                assert reader.at_eof()
            finally:
                writer.close()
                await writer.wait_closed()
        return raw

    raw = run_on(loop_factory, main)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["connection"].lower() == "close"
    assert int(headers["content-length"]) == len(body)
    check_module(loop_kind, body.decode().removeprefix("hello from "))
    assert body.startswith(b"hello from ")
    # Three requests, three connections.
    assert len(peers) == 3 and len(set(peers)) == 3


def test_aiohttp_websocket_echo(loop_kind, loop_factory):
    """WebSocket: text and binary echo, large frames, client close, server close."""
    server_closes = []
    server_done = []

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    if msg.data == "loop?":
                        await ws.send_str(loop_module())
                    elif msg.data == "bye":
                        await ws.close(code=4000, message=b"server says bye")
                    else:
                        await ws.send_str("echo:" + msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data[::-1])
            server_closes.append(ws.close_code)
        finally:
            server_done[0].set()
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)

    async def main():
        check_loop(loop_kind)
        async with aiohttp_server(app) as url, aiohttp.ClientSession() as session:
            # Client-initiated close.
            server_done[:] = [asyncio.Event()]
            async with session.ws_connect(f"{url}/ws") as ws:
                await ws.send_str("hello")
                msg = await ws.receive()
                assert (msg.type, msg.data) == (WSMsgType.TEXT, "echo:hello")
                await ws.send_bytes(b"\x00\x01binary\xff")
                msg = await ws.receive()
                assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\xffyranib\x01\x00")
                big_text = "0123456789abcdef" * 20000  # 320 KB, one frame
                await ws.send_str(big_text)
                msg = await ws.receive()
                assert (msg.type, msg.data) == (WSMsgType.TEXT, "echo:" + big_text)
                await ws.send_str("loop?")
                msg = await ws.receive()
                assert msg.type == WSMsgType.TEXT
                check_module(loop_kind, msg.data)
                assert await ws.close() is True
                assert ws.closed
                assert ws.close_code == aiohttp.WSCloseCode.OK
            await server_done[0].wait()
            assert server_closes == [aiohttp.WSCloseCode.OK]

            # Server-initiated close with a custom code.
            server_done[:] = [asyncio.Event()]
            async with session.ws_connect(f"{url}/ws") as ws:
                await ws.send_str("bye")
                msg = await ws.receive()
                assert msg.type == WSMsgType.CLOSE
                assert msg.data == 4000
                assert msg.extra == "server says bye"
                # aiohttp's client answers the close frame once the CLOSE message is read.
                msg = await ws.receive()
                assert msg.type == WSMsgType.CLOSED
                assert ws.closed
                assert ws.close_code == 4000
            await server_done[0].wait()
            # The server's close_code is the one in the client's answering close frame.
            assert server_closes == [aiohttp.WSCloseCode.OK, aiohttp.WSCloseCode.OK]

    run_on(loop_factory, main)


# --------------------------------------------------------------------------------------
# uvicorn, in-process
# --------------------------------------------------------------------------------------


def make_asgi_app(events: list):
    """A tiny ASGI app: lifespan, HTTP (JSON echo, chunked stream) and WebSocket echo."""

    async def read_body(receive) -> bytes:
        body = b""
        while True:
            msg = await receive()
            assert msg["type"] == "http.request", msg
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                return body

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    events.append(("startup", loop_module()))
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    events.append(("shutdown", loop_module()))
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            body = await read_body(receive)
            if scope["path"] == "/stream":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                for i in range(3):
                    await asyncio.sleep(0)
                    await send(
                        {
                            "type": "http.response.body",
                            "body": f"chunk{i};".encode(),
                            "more_body": True,
                        }
                    )
                await send({"type": "http.response.body", "body": b"end"})
                return
            info = {
                "loop": loop_module(),
                "method": scope["method"],
                "path": scope["path"],
                "query": scope["query_string"].decode(),
                "http_version": scope["http_version"],
                "client": list(scope["client"]),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_len": len(body),
            }
            await send(
                {
                    "type": "http.response.start",
                    "status": 201 if scope["method"] == "POST" else 200,
                    "headers": [(b"content-type", b"application/json"), (b"x-test", b"ferro")],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps(info).encode()})
        elif scope["type"] == "websocket":
            msg = await receive()
            assert msg["type"] == "websocket.connect", msg
            await send({"type": "websocket.accept"})
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    events.append(("ws-disconnect", msg["code"]))
                    return
                if msg.get("text") is not None:
                    if msg["text"] == "loop?":
                        await send({"type": "websocket.send", "text": loop_module()})
                    elif msg["text"] == "bye":
                        await send({"type": "websocket.close", "code": 4001})
                        events.append(("ws-server-close", 4001))
                        return
                    else:
                        await send({"type": "websocket.send", "text": "echo:" + msg["text"]})
                else:
                    await send({"type": "websocket.send", "bytes": msg["bytes"][::-1]})

    return app


def uvicorn_server(app, **config):
    """``conftest.uvicorn_server`` with this module's shutdown timeout."""
    return conftest.uvicorn_server(app, SHUTDOWN_TIMEOUT, **config)


HTTP_IMPLS = ["httptools", "h11"]
WS_IMPLS = ["websockets", "websockets-sansio", "wsproto"]


@pytest.mark.parametrize("http_impl", HTTP_IMPLS)
def test_uvicorn_http(loop_kind, loop_factory, http_impl):
    """GET, POST with a 1 MiB body, a chunked response, all over one keep-alive connection."""
    events = []
    app = make_asgi_app(events)

    async def main():
        check_loop(loop_kind)
        infos = []
        async with uvicorn_server(app, http=http_impl, ws="none") as (server, base):
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                async with session.get(f"http://{base}/hello?x=1") as resp:
                    assert resp.status == 200
                    assert resp.headers["x-test"] == "ferro"
                    assert resp.headers["server"] == "uvicorn"
                    infos.append(await resp.json())
                async with session.post(f"http://{base}/upload", data=BIG) as resp:
                    assert resp.status == 201
                    infos.append(await resp.json())
                async with session.get(f"http://{base}/stream") as resp:
                    assert resp.status == 200
                    assert resp.headers["transfer-encoding"] == "chunked"
                    assert await resp.read() == b"chunk0;chunk1;chunk2;end"
                async with session.get(f"http://{base}/again") as resp:
                    assert resp.status == 200
                    infos.append(await resp.json())
            assert server.server_state.total_requests == 4
        return infos

    get, post, again = run_on(loop_factory, main)
    assert get["method"] == "GET" and get["path"] == "/hello" and get["query"] == "x=1"
    assert get["http_version"] == "1.1" and get["body_len"] == 0
    assert post["method"] == "POST" and post["path"] == "/upload"
    assert post["body_len"] == len(BIG)
    assert post["body_sha256"] == hashlib.sha256(BIG).hexdigest()
    assert again["path"] == "/again"
    # keep-alive: one client address for all requests
    assert get["client"] == post["client"] == again["client"]
    for info in (get, post, again):
        check_module(loop_kind, info["loop"])
    assert [name for name, _ in events] == ["startup", "shutdown"]
    for _, module in events:
        check_module(loop_kind, module)


# uvicorn's ws="websockets" runs on websockets' deprecated legacy API.
@pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:remove second argument of ws_handler:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")
@pytest.mark.parametrize("ws_impl", WS_IMPLS)
@pytest.mark.parametrize("http_impl", HTTP_IMPLS)
def test_uvicorn_websocket(loop_kind, loop_factory, http_impl, ws_impl):
    """WebSocket upgrade through uvicorn: echo, client close, server close with a code."""
    events = []
    app = make_asgi_app(events)

    async def main():
        check_loop(loop_kind)
        async with uvicorn_server(app, http=http_impl, ws=ws_impl) as (_, base):
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"ws://{base}/ws") as ws:
                    await ws.send_str("hello")
                    msg = await ws.receive()
                    assert (msg.type, msg.data) == (WSMsgType.TEXT, "echo:hello")
                    await ws.send_bytes(b"abc\x00")
                    msg = await ws.receive()
                    assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\x00cba")
                    big_text = "x" * 200_000 + "y"
                    await ws.send_str(big_text)
                    msg = await ws.receive()
                    assert (msg.type, msg.data) == (WSMsgType.TEXT, "echo:" + big_text)
                    await ws.send_str("loop?")
                    msg = await ws.receive()
                    assert msg.type == WSMsgType.TEXT
                    check_module(loop_kind, msg.data)
                    assert await ws.close() is True
                    assert ws.close_code == aiohttp.WSCloseCode.OK

                async with session.ws_connect(f"ws://{base}/ws") as ws:
                    await ws.send_str("bye")
                    msg = await ws.receive()
                    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 4001)
                    msg = await ws.receive()
                    assert msg.type == WSMsgType.CLOSED
                    assert ws.close_code == 4001

                # uvicorn reports the client's close to the app asynchronously; wait for it.
                while ("ws-disconnect", 1000) not in events:
                    await asyncio.sleep(0.01)

    run_on(loop_factory, main)
    names = [e[0] for e in events]
    assert names[0] == "startup" and names[-1] == "shutdown"
    assert sorted(e for e in events if e[0].startswith("ws-")) == [
        ("ws-disconnect", 1000),
        ("ws-server-close", 4001),
    ]
    check_module(loop_kind, events[0][1])


# --------------------------------------------------------------------------------------
# uvicorn, in a child process started the ways a user starts it
# --------------------------------------------------------------------------------------

CHILD_APP = """
import asyncio
import json


def loop_info():
    loop = asyncio.get_running_loop()
    return {"module": type(loop).__module__, "type": type(loop).__qualname__}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        info = dict(loop_info(), path=scope["path"], body=body.decode(), client=scope["client"])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(info).encode()})
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg["text"] == "loop?":
                await send({"type": "websocket.send", "text": json.dumps(loop_info())})
            else:
                await send({"type": "websocket.send", "text": "echo:" + msg["text"]})
"""

# How the child starts uvicorn: a script's body, or None for the command line below.
LAUNCHERS = {
    # The oracle: uvicorn's own asyncio loop.
    "asyncio": """
        import uvicorn
        uvicorn.run("fl_app:app", host="127.0.0.1", port=0, loop="asyncio", http=HTTP)
    """,
    # ferroloop's policy, and uvicorn told not to pick a loop itself.
    "ferroloop-install": """
        import ferroloop
        ferroloop.install()
        import uvicorn
        uvicorn.run("fl_app:app", host="127.0.0.1", port=0, loop="none", http=HTTP)
    """,
    # uvicorn's custom loop setting (a "module:attr" loop factory).
    "ferroloop-loop-setting": """
        import uvicorn
        uvicorn.run(
            "fl_app:app", host="127.0.0.1", port=0, loop="ferroloop:new_event_loop", http=HTTP
        )
    """,
    # The unchanged uvicorn command line under `python -m ferroloop -m uvicorn`.
    "python-m-ferroloop": None,
}


class ServerProcess:
    """A child process whose stdout/stderr are drained by threads (so it never blocks)."""

    def __init__(self, argv: list[str], cwd):
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.stderr_lines: queue.Queue[str | None] = queue.Queue()
        self.threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout, None)),
            threading.Thread(
                target=self._drain, args=(self.proc.stderr, self.stderr, self.stderr_lines)
            ),
        ]
        for thread in self.threads:
            thread.daemon = True
            thread.start()

    @staticmethod
    def _drain(stream, sink: list[str], lines: queue.Queue | None) -> None:
        for line in stream:
            sink.append(line)
            if lines is not None:
                lines.put(line)
        if lines is not None:
            lines.put(None)

    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def wait_for_port(self) -> int:
        """The port from uvicorn's "Uvicorn running on ..." line."""
        pattern = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while True:
            try:
                line = self.stderr_lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"uvicorn did not start:\n{self.output()}")
            if line is None:
                self.proc.wait(timeout=SUBPROCESS_TIMEOUT)
                pytest.fail(f"uvicorn exited with {self.proc.returncode}:\n{self.output()}")
            match = pattern.search(line)
            if match:
                return int(match.group(1))

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        returncode = self.proc.wait(timeout=SUBPROCESS_TIMEOUT)
        for thread in self.threads:
            thread.join(timeout=SUBPROCESS_TIMEOUT)
        return returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=SUBPROCESS_TIMEOUT)


@pytest.mark.parametrize("http_impl", HTTP_IMPLS)
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_uvicorn_subprocess(tmp_path, launcher, http_impl):
    """uvicorn serving HTTP and WebSocket from a child on the loop its launcher selects."""
    kind = "asyncio" if launcher == "asyncio" else "ferroloop"
    if kind == "ferroloop":
        import_ferroloop()
    (tmp_path / "fl_app.py").write_text(CHILD_APP)
    script = LAUNCHERS[launcher]
    if script is None:
        argv = [
            *(sys.executable, "-m", "ferroloop", "-m", "uvicorn", "fl_app:app"),
            *("--host", "127.0.0.1", "--port", "0", "--loop", "none", "--http", http_impl),
        ]
    else:
        source = f"HTTP = {http_impl!r}\n" + textwrap.dedent(script)
        (tmp_path / "serve.py").write_text(source)
        argv = [sys.executable, str(tmp_path / "serve.py")]

    server = ServerProcess(argv, cwd=tmp_path)
    try:
        port = server.wait_for_port()

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SOCKET_TIMEOUT)
        try:
            conn.request("GET", "/first")
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.getheader("content-type") == "application/json"
            first = json.loads(resp.read())
            payload = "données " * 5000
            conn.request("POST", "/second", body=payload.encode())
            resp = conn.getresponse()
            assert resp.status == 200
            second = json.loads(resp.read())
        finally:
            conn.close()
        assert first["path"] == "/first" and first["body"] == ""
        assert second["path"] == "/second" and second["body"] == payload
        assert first["client"] == second["client"]  # one keep-alive connection

        with ws_sync_connect(
            f"ws://127.0.0.1:{port}/ws", open_timeout=SOCKET_TIMEOUT, close_timeout=SOCKET_TIMEOUT
        ) as ws:
            ws.send("hi")
            assert ws.recv(timeout=SOCKET_TIMEOUT) == "echo:hi"
            ws.send("loop?")
            ws_info = json.loads(ws.recv(timeout=SOCKET_TIMEOUT))

        # uvicorn shuts down gracefully, then re-raises the signal with its default action.
        returncode = server.stop(signal.SIGTERM)
    finally:
        server.kill()

    output = server.output()
    assert returncode == -signal.SIGTERM, output
    assert "Finished server process" in output, output
    for info in (first, second, ws_info):
        if kind == "ferroloop":
            assert info["module"].startswith("ferroloop"), info
            assert info["type"] == "Loop", info
        else:
            assert info["module"] == "asyncio.unix_events", info
            assert info["type"] == "_UnixSelectorEventLoop", info
