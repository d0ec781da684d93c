"""FastAPI (on Starlette), served by uvicorn, on ferroloop and on stock asyncio (the oracle).

An unchanged FastAPI app is served in-process with ``await server.serve()`` on the loop
under test, with uvicorn's default protocols (httptools, websockets' Sans-I/O
implementation), and used as a FastAPI user uses it, by httpx's ``AsyncClient`` and
websockets' asyncio client on the same loop: JSON GET/POST with a pydantic model and its
422 validation errors, path and query parameters, dependencies (plain, and with ``yield``
ending before or after the response), ``async def`` endpoints on the loop and plain
``def`` endpoints in anyio's worker threads, a ``StreamingResponse`` from an async
generator, ``BackgroundTasks`` that run after the response is sent, a WebSocket endpoint,
and the lifespan's startup, state and shutdown.

Every handler records the loop and the thread it ran on; the tests check that it is the
loop under test (the very loop the test runs on) and the thread FastAPI promises.  Nothing
here measures time: every wait is bounded (``asyncio.timeout``, client and barrier
timeouts) so a hang fails, and "after the response" is shown by making the work wait for
an event that the client sets only once it has the response.

Needs: fastapi (starlette, pydantic) uvicorn httptools websockets httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Annotated

import anyio.from_thread
import conftest
import httpx
import pytest
from conftest import check_loop, check_module, loop_module
from fastapi import (
    BackgroundTasks,
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

# Upper bound for one test's asynchronous part (a hang must fail, not block CI).
ASYNC_TIMEOUT = 30.0
# Upper bound for a server's graceful shutdown.
SHUTDOWN_TIMEOUT = 10.0
# Last resort: a test that wedges the loop itself (so that no asyncio timeout can fire)
# ends the pytest process with every thread's traceback instead of blocking CI.
WATCHDOG_TIMEOUT = 180.0


pytestmark = pytest.mark.usefixtures("watchdog", "no_error_logs")


def run_on(loop_factory, coro_fn, *args):
    """Run ``coro_fn(*args)`` on a new loop from ``loop_factory``, bounded by ASYNC_TIMEOUT."""
    return conftest.run_on(loop_factory, coro_fn, *args, timeout=ASYNC_TIMEOUT)


@contextlib.asynccontextmanager
async def fastapi_server(app: FastAPI):
    """``conftest.uvicorn_server`` (uvicorn's default protocols) with this module's shutdown
    timeout; yields "host:port"."""
    async with conftest.uvicorn_server(app, SHUTDOWN_TIMEOUT) as (_, base):
        yield base


@contextlib.asynccontextmanager
async def serve_and_connect(app: FastAPI):
    """``app`` served on the running loop, and an httpx AsyncClient for it."""
    async with fastapi_server(app) as base:
        async with httpx.AsyncClient(base_url=f"http://{base}", timeout=ASYNC_TIMEOUT) as client:
            yield client


class Item(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)
    tags: list[str] = []


class Api:
    """A FastAPI app whose handlers record, in order, what ran on which loop and thread."""

    def __init__(self):
        self.seen = []  # (what, the loop it ran on, thread ident)
        self.items = {}
        # Set by the tests that use the matching endpoint.
        self.sync_barrier = threading.Barrier(1)
        self.first_chunk_seen = asyncio.Event()
        self.response_seen = asyncio.Event()
        self.background_done = asyncio.Event()
        self.teardown_done = asyncio.Event()
        self.ws_disconnected = asyncio.Event()
        self.ws_disconnect_codes = []

        app = FastAPI(lifespan=self.lifespan)
        self.app = app

        @app.get("/items/{item_id}")
        async def read_item(
            request: Request,
            item_id: Annotated[int, Path(ge=1)],
            q: str | None = None,
            limit: Annotated[int, Query(le=100)] = 10,
        ):
            self.record("read_item")
            if item_id not in self.items:
                raise HTTPException(status_code=404, detail=f"no item {item_id}")
            return {
                "item_id": item_id,
                "item": self.items[item_id],
                "q": q,
                "limit": limit,
                "greeting": request.state.greeting,
                "loop": loop_module(),
            }

        @app.post("/items", status_code=201)
        async def create_item(item: Item):
            self.record("create_item")
            item_id = len(self.items) + 1
            self.items[item_id] = item.model_dump()
            return {"item_id": item_id, "item": self.items[item_id], "loop": loop_module()}

        def check_token(x_token: Annotated[str, Header()]) -> str:
            """A plain ``def`` dependency: FastAPI runs it in a worker thread."""
            self.record_from_thread("check_token")
            if x_token != "secret":
                raise HTTPException(status_code=401, detail="bad token")
            return x_token

        async def function_scoped():
            """Ends before the response is sent."""
            self.record("function_dep_open")
            yield "function-dep"
            self.record("function_dep_close")

        async def request_scoped():
            """Ends after the response is sent: waits until the client has it."""
            self.record("request_dep_open")
            yield "request-dep"
            async with asyncio.timeout(ASYNC_TIMEOUT):
                await self.response_seen.wait()
            self.record("request_dep_close")
            self.teardown_done.set()

        @app.get("/me")
        async def me(
            # Dependencies as default values: annotations are strings here (``from
            # __future__ import annotations``), and these functions are not globals.
            token: str = Depends(check_token),
            fn_dep: str = Depends(function_scoped, scope="function"),
            req_dep: str = Depends(request_scoped),
        ):
            self.record("me")
            return {"token": token, "deps": [fn_dep, req_dep], "seen": self.whats()}

        @app.get("/async")
        async def async_endpoint():
            await asyncio.sleep(0)
            self.record("async_endpoint")
            return {"loop": loop_module(), "thread": threading.get_ident()}

        @app.get("/sync/{n}")
        def sync_endpoint(n: int):
            # Every call waits until all of them are in worker threads at once.
            self.sync_barrier.wait(ASYNC_TIMEOUT)
            self.record_from_thread(f"sync_endpoint {n}")
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                has_running_loop = False
            else:
                has_running_loop = True
            return {
                "n": n,
                "thread": threading.get_ident(),
                "has_running_loop": has_running_loop,
                "loop": anyio.from_thread.run_sync(loop_module),
            }

        @app.get("/stream")
        async def stream(n: int = 5):
            async def chunks():
                self.record("stream_start")
                yield "chunk 0\n"
                # The rest does not exist until the client has read the first chunk.
                async with asyncio.timeout(ASYNC_TIMEOUT):
                    await self.first_chunk_seen.wait()
                for i in range(1, n):
                    await asyncio.sleep(0)
                    yield f"chunk {i}\n"
                self.record("stream_end")

            return StreamingResponse(chunks(), media_type="text/plain")

        async def async_task(name: str):
            # Runs only once the client has the response.
            async with asyncio.timeout(ASYNC_TIMEOUT):
                await self.response_seen.wait()
            self.record(f"async_task {name}")

        def sync_task(name: str):
            self.record_from_thread(f"sync_task {name}")
            anyio.from_thread.run_sync(self.background_done.set)

        @app.post("/notify/{name}", status_code=202)
        async def notify(name: str, background_tasks: BackgroundTasks):
            self.record("notify")
            background_tasks.add_task(async_task, name)
            background_tasks.add_task(sync_task, name)
            return {"queued": name}

        @app.websocket("/ws/{room}")
        async def websocket_endpoint(websocket: WebSocket, room: str, user: str):
            await websocket.accept()
            self.record(f"ws_open {user}")
            await websocket.send_json({"room": room, "user": user, "loop": loop_module()})
            try:
                while True:
                    text = await websocket.receive_text()
                    if text == "bye":
                        await websocket.close(code=4001, reason="bye from server")
                        self.record(f"ws_server_close {user}")
                        return
                    await websocket.send_text(f"{room}/{user}: {text}")
            except WebSocketDisconnect as exc:
                self.record(f"ws_disconnect {user}")
                self.ws_disconnect_codes.append(exc.code)
                self.ws_disconnected.set()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI):
        assert app is self.app
        self.record("startup")
        yield {"greeting": "hello from the lifespan"}
        self.record("shutdown")

    def record(self, what: str) -> None:
        """Record ``what`` from the loop."""
        self.seen.append((what, asyncio.get_running_loop(), threading.get_ident()))

    def record_from_thread(self, what: str) -> None:
        """Record ``what`` from a worker thread, with the loop that thread belongs to."""
        loop = anyio.from_thread.run_sync(asyncio.get_running_loop)
        self.seen.append((what, loop, threading.get_ident()))

    def whats(self) -> list[str]:
        return [what for what, _, _ in self.seen]


def loop_and_thread():
    """The test's own loop and thread (where uvicorn and every ``async def`` run)."""
    return asyncio.get_running_loop(), threading.get_ident()


def check_seen(kind: str, api: Api, loop, loop_thread: int, in_threads=()) -> None:
    """Every record came from ``loop``, of the kind under test, and from the loop's thread
    except ``in_threads`` (prefixes of the records made in worker threads)."""
    assert api.seen
    for what, seen_loop, thread in api.seen:
        assert seen_loop is loop, what
        check_module(kind, type(seen_loop).__module__)
        if what.startswith(tuple(in_threads)):
            assert thread != loop_thread, what
        else:
            assert thread == loop_thread, what


def test_fastapi_json_and_params(loop_kind, loop_factory):
    """JSON POST with a pydantic model, then GET with path and query parameters."""
    api = Api()

    async def main():
        check_loop(loop_kind)
        async with serve_and_connect(api.app) as client:
            resp = await client.post("/items", json={"name": "widget", "price": 2.5})
            assert resp.status_code == 201
            assert resp.headers["content-type"] == "application/json"
            created = resp.json()
            resp = await client.post(
                "/items", json={"name": "gadget", "price": "7", "tags": ["a", "b"]}
            )
            assert resp.status_code == 201
            created2 = resp.json()

            resp = await client.get("/items/2", params={"q": "find me", "limit": "3"})
            assert resp.status_code == 200
            got = resp.json()
            resp = await client.get("/items/1")
            assert resp.status_code == 200
            got_defaults = resp.json()
            resp = await client.get("/items/99")
            assert resp.status_code == 404
            assert resp.json() == {"detail": "no item 99"}
        return created, created2, got, got_defaults, loop_and_thread()

    created, created2, got, got_defaults, (loop, loop_thread) = run_on(loop_factory, main)
    widget = {"name": "widget", "price": 2.5, "tags": []}
    gadget = {"name": "gadget", "price": 7.0, "tags": ["a", "b"]}  # "7" coerced to a float
    for answer in (created, created2, got, got_defaults):
        check_module(loop_kind, answer.pop("loop"))
    assert created == {"item_id": 1, "item": widget}
    assert created2 == {"item_id": 2, "item": gadget}
    greeting = "hello from the lifespan"
    assert got == {"item_id": 2, "item": gadget, "q": "find me", "limit": 3, "greeting": greeting}
    assert got_defaults == {
        "item_id": 1,
        "item": widget,
        "q": None,
        "limit": 10,
        "greeting": greeting,
    }
    assert api.whats() == [
        "startup",
        *["create_item"] * 2,
        *["read_item"] * 3,
        "shutdown",
    ]
    check_seen(loop_kind, api, loop, loop_thread)


def test_fastapi_validation_errors(loop_kind, loop_factory):
    """Bad bodies, path and query parameters get 422 with pydantic's error details, and
    never reach the handler."""
    api = Api()

    def errors(resp: httpx.Response) -> list[tuple[tuple, str]]:
        assert resp.status_code == 422, resp.text
        return [(tuple(error["loc"]), error["type"]) for error in resp.json()["detail"]]

    async def main():
        check_loop(loop_kind)
        async with serve_and_connect(api.app) as client:
            bad = {}
            bad["missing and wrong type"] = errors(
                await client.post("/items", json={"price": "cheap"})
            )
            bad["constraints"] = errors(
                await client.post("/items", json={"name": "", "price": 0, "tags": "x"})
            )
            bad["not json"] = errors(
                await client.post(
                    "/items", content=b"{not json", headers={"content-type": "application/json"}
                )
            )
            bad["path not int"] = errors(await client.get("/items/abc"))
            bad["path too small"] = errors(await client.get("/items/0"))
            bad["query"] = errors(await client.get("/items/1", params={"limit": "many"}))
            bad["query too big"] = errors(await client.get("/items/1", params={"limit": 101}))
            # The app still works afterwards.
            resp = await client.post("/items", json={"name": "ok", "price": 1})
            assert resp.status_code == 201
            assert resp.json()["item"] == {"name": "ok", "price": 1.0, "tags": []}
        return bad, loop_and_thread()

    bad, (loop, loop_thread) = run_on(loop_factory, main)
    assert bad == {
        "missing and wrong type": [
            (("body", "name"), "missing"),
            (("body", "price"), "float_parsing"),
        ],
        "constraints": [
            (("body", "name"), "string_too_short"),
            (("body", "price"), "greater_than"),
            (("body", "tags"), "list_type"),
        ],
        "not json": [(("body", 1), "json_invalid")],
        "path not int": [(("path", "item_id"), "int_parsing")],
        "path too small": [(("path", "item_id"), "greater_than_equal")],
        "query": [(("query", "limit"), "int_parsing")],
        "query too big": [(("query", "limit"), "less_than_equal")],
    }
    assert api.whats() == ["startup", "create_item", "shutdown"]
    check_seen(loop_kind, api, loop, loop_thread)


def test_fastapi_dependencies(loop_kind, loop_factory):
    """A ``def`` dependency (in a worker thread) that can refuse the request, and two
    ``yield`` dependencies: one ends before the response, one after."""
    api = Api()

    async def main():
        check_loop(loop_kind)
        async with serve_and_connect(api.app) as client:
            resp = await client.get("/me", headers={"x-token": "wrong"})
            assert resp.status_code == 401
            assert resp.json() == {"detail": "bad token"}
            # It refused before the other dependencies started.
            assert api.whats() == ["startup", "check_token"]

            resp = await client.get("/me", headers={"x-token": "secret"})
            assert resp.status_code == 200
            answer = resp.json()
            # What had run when the response was sent: the function-scoped dependency
            # had ended, the request-scoped one had not.
            seen_at_response = api.whats()
            api.response_seen.set()
            await api.teardown_done.wait()
        return answer, seen_at_response, loop_and_thread()

    answer, seen_at_response, (loop, loop_thread) = run_on(loop_factory, main)
    assert answer["token"] == "secret"
    assert answer["deps"] == ["function-dep", "request-dep"]
    # Dependencies are solved in order, before the endpoint.
    assert answer["seen"] == [
        "startup",
        "check_token",
        "check_token",
        "function_dep_open",
        "request_dep_open",
        "me",
    ]
    assert seen_at_response == [*answer["seen"], "function_dep_close"]
    assert api.whats() == [*seen_at_response, "request_dep_close", "shutdown"]
    check_seen(loop_kind, api, loop, loop_thread, in_threads=["check_token"])


def test_fastapi_async_and_sync_endpoints(loop_kind, loop_factory):
    """``async def`` endpoints run on the loop; concurrent plain ``def`` endpoints run at
    once in anyio's worker threads, which reach the loop through ``anyio.from_thread``."""
    api = Api()
    concurrent_calls = 5
    api.sync_barrier = threading.Barrier(concurrent_calls)

    async def main():
        check_loop(loop_kind)
        async with serve_and_connect(api.app) as client:
            resp = await client.get("/async")
            assert resp.status_code == 200
            async_answer = resp.json()
            responses = await asyncio.gather(
                *(client.get(f"/sync/{n}") for n in range(concurrent_calls))
            )
            # The loop is free while the worker threads run.
            resp = await client.get("/async")
            assert resp.status_code == 200
        assert all(resp.status_code == 200 for resp in responses)
        return async_answer, [resp.json() for resp in responses], loop_and_thread()

    async_answer, sync_answers, (loop, loop_thread) = run_on(loop_factory, main)
    check_module(loop_kind, async_answer["loop"])
    assert async_answer["thread"] == loop_thread
    assert [answer["n"] for answer in sync_answers] == list(range(concurrent_calls))
    for answer in sync_answers:
        assert answer["thread"] != loop_thread
        assert answer["has_running_loop"] is False
        check_module(loop_kind, answer["loop"])
    # All the calls waited on one barrier: each had its own worker thread.
    assert len({answer["thread"] for answer in sync_answers}) == concurrent_calls
    whats = api.whats()
    assert whats[:2] == ["startup", "async_endpoint"]
    assert sorted(whats[2:-2]) == [f"sync_endpoint {n}" for n in range(concurrent_calls)]
    assert whats[-2:] == ["async_endpoint", "shutdown"]
    check_seen(loop_kind, api, loop, loop_thread, in_threads=["sync_endpoint"])


def test_fastapi_streaming_response(loop_kind, loop_factory):
    """A StreamingResponse from an async generator reaches the client while it runs."""
    api = Api()

    async def main():
        check_loop(loop_kind)
        async with serve_and_connect(api.app) as client:
            async with client.stream("GET", "/stream", params={"n": 6}) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"] == "text/plain; charset=utf-8"
                assert resp.headers["transfer-encoding"] == "chunked"
                received = ""
                async for text in resp.aiter_text():
                    received += text
                    if received.startswith("chunk 0\n"):
                        # The server sends the rest only after the client has this.
                        api.first_chunk_seen.set()
        return received, loop_and_thread()

    received, (loop, loop_thread) = run_on(loop_factory, main)
    assert received == "".join(f"chunk {i}\n" for i in range(6))
    assert api.whats() == ["startup", "stream_start", "stream_end", "shutdown"]
    check_seen(loop_kind, api, loop, loop_thread)


def test_fastapi_background_tasks(loop_kind, loop_factory):
    """BackgroundTasks (an ``async def`` one, then a ``def`` one in a worker thread) run
    after the response is sent, in order."""
    api = Api()

    async def main():
        check_loop(loop_kind)
        async with serve_and_connect(api.app) as client:
            resp = await client.post("/notify/alice")
            assert resp.status_code == 202
            assert resp.json() == {"queued": "alice"}
            # The tasks wait for this: had they run before the response, this test would
            # never get here.
            seen_at_response = api.whats()
            api.response_seen.set()
            await api.background_done.wait()
            # The connection is still usable after the tasks.
            resp = await client.get("/async")
            assert resp.status_code == 200
        return seen_at_response, loop_and_thread()

    seen_at_response, (loop, loop_thread) = run_on(loop_factory, main)
    assert seen_at_response == ["startup", "notify"]
    assert api.whats() == [
        "startup",
        "notify",
        "async_task alice",
        "sync_task alice",
        "async_endpoint",
        "shutdown",
    ]
    check_seen(loop_kind, api, loop, loop_thread, in_threads=["sync_task"])


def test_fastapi_websocket(loop_kind, loop_factory):
    """WebSocket echo with path and query parameters, a client close, and a server close
    with a custom code."""
    api = Api()

    async def main():
        check_loop(loop_kind)
        async with fastapi_server(api.app) as base:
            async with ws_connect(f"ws://{base}/ws/lobby?user=ann") as ws:
                hello = await ws.recv()
                for text in ("hi", "é" * 1000, "x" * 200_000):
                    await ws.send(text)
                    assert await ws.recv() == f"lobby/ann: {text}"
            assert ws.close_code == 1000
            await api.ws_disconnected.wait()

            async with ws_connect(f"ws://{base}/ws/den?user=bob") as ws:
                await ws.recv()
                await ws.send("bye")
                with pytest.raises(ConnectionClosedError) as excinfo:
                    await ws.recv()
                assert (excinfo.value.rcvd.code, excinfo.value.rcvd.reason) == (
                    4001,
                    "bye from server",
                )
                assert ws.close_code == 4001

            # A missing query parameter: refused before the handshake completes.
            with pytest.raises(InvalidStatus) as excinfo:
                async with ws_connect(f"ws://{base}/ws/den"):
                    pass
        return hello, excinfo.value, loop_and_thread()

    hello, refusal, (loop, loop_thread) = run_on(loop_factory, main)
    hello = json.loads(hello)
    check_module(loop_kind, hello.pop("loop"))
    assert hello == {"room": "lobby", "user": "ann"}
    assert refusal.response.status_code == 403
    assert api.ws_disconnect_codes == [1000]
    assert api.whats() == [
        "startup",
        "ws_open ann",
        "ws_disconnect ann",
        "ws_open bob",
        "ws_server_close bob",
        "shutdown",
    ]
    check_seen(loop_kind, api, loop, loop_thread)


def test_fastapi_lifespan(loop_kind, loop_factory):
    """The lifespan starts before the server accepts requests, its state reaches the
    handlers, and it ends after the last request, on the same loop."""
    api = Api()
    api.items[1] = {"name": "seeded", "price": 1.0, "tags": []}

    async def main():
        check_loop(loop_kind)
        async with fastapi_server(api.app) as base:
            assert api.whats() == ["startup"]
            async with httpx.AsyncClient(
                base_url=f"http://{base}", timeout=ASYNC_TIMEOUT
            ) as client:
                resp = await client.get("/items/1")
                assert resp.status_code == 200
                assert resp.json()["greeting"] == "hello from the lifespan"
            assert api.whats() == ["startup", "read_item"]
        # serve() has returned: the lifespan has ended.
        assert api.whats() == ["startup", "read_item", "shutdown"]
        return loop_and_thread()

    loop, loop_thread = run_on(loop_factory, main)
    check_seen(loop_kind, api, loop, loop_thread)
