"""Serving on every core: a server with 2 worker processes on ferroloop, and the same on
stock asyncio (the oracle).

- ``uvicorn --workers 2 --loop ferroloop:new_event_loop`` (``--loop asyncio``);
- gunicorn with ``ferroloop.workers.UvicornWorker`` (uvicorn-worker's class with
  ``loop="asyncio"``);
- aiohttp's ``web.run_app(app, reuse_port=True)`` in 2 processes, each given a ferroloop
  (a stock) loop.

Each test checks that both workers answer (two distinct PIDs, each on the loop under
test), that SIGTERM shuts the server down gracefully (a request in flight when the
signal arrives completes, every process exits with 0) and that nothing is left (no
worker process alive, the port free).

Both workers answering: the app's ``/block`` holds its worker's loop for a moment
(a blocking sleep), so while one worker is busy the other accepts the next connection;
with ``reuse_port`` the kernel spreads connections over the processes' sockets anyway.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import check_module

pytest.importorskip("uvicorn")

#: Upper bound for a server to start answering, a response, and a shutdown.
START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 15.0
SHUTDOWN_TIMEOUT = 30.0
#: How long /slow keeps its request in flight after it told the test it started.
SLOW_SECONDS = 1.0
#: Rounds of concurrent /block requests before giving up on seeing the second worker.
SPREAD_ROUNDS = 25

ASGI_APP = f'''
import asyncio
import os
import time


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    path = scope["path"]
    if path == "/block":
        time.sleep(0.2)  # holds this worker, so that the other one accepts meanwhile
    elif path == "/slow":
        open(os.path.join(os.environ["MARKS"], f"slow-{{os.getpid()}}"), "w").close()
        await asyncio.sleep({SLOW_SECONDS})
    body = f"{{os.getpid()}} {{type(asyncio.get_running_loop()).__module__}}".encode()
    await send({{
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-length", str(len(body)).encode())],
    }})
    await send({{"type": "http.response.body", "body": body}})


try:
    from uvicorn_worker import UvicornWorker
except ImportError:
    pass
else:
    class AsyncioWorker(UvicornWorker):
        """The oracle: uvicorn-worker's class on stock asyncio."""

        CONFIG_KWARGS = {{**UvicornWorker.CONFIG_KWARGS, "loop": "asyncio"}}
'''

AIOHTTP_APP = f"""
import asyncio
import os
import sys
import time

from aiohttp import web


async def handle(request):
    if request.path == "/block":
        time.sleep(0.2)
    elif request.path == "/slow":
        open(os.path.join(os.environ["MARKS"], f"slow-{{os.getpid()}}"), "w").close()
        await asyncio.sleep({SLOW_SECONDS})
    return web.Response(text=f"{{os.getpid()}} {{type(asyncio.get_running_loop()).__module__}}")


app = web.Application()
app.router.add_get("/{{tail:.*}}", handle)
if sys.argv[2] == "ferroloop":
    import ferroloop

    loop = ferroloop.new_event_loop()
else:
    loop = asyncio.SelectorEventLoop()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), reuse_port=True, loop=loop, print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    """One request on a new connection; (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def wait_until_serving(port: int, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        for proc in procs:
            if proc.poll() is not None:
                out, _ = proc.communicate()
                pytest.fail(f"server exited with {proc.returncode} before serving:\n{out}")
        try:
            status, _ = get(port, "/")
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"nothing answered on port {port} within {START_TIMEOUT}s")
        time.sleep(0.1)


def serving_pids(port: int, kind: str) -> set[int]:
    """PIDs that answer, until two distinct ones did, each on the loop ``kind``."""
    pids: set[int] = set()
    with ThreadPoolExecutor(4) as pool:
        for _ in range(SPREAD_ROUNDS):
            for status, body in pool.map(lambda _: get(port, "/block"), range(4)):
                assert status == 200, body
                pid, module = body.split()
                check_module(kind, module)
                pids.add(int(pid))
            if len(pids) >= 2:
                break
    return pids


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie has exited; it is not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            pass
        else:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def check_two_workers_and_graceful_shutdown(
    kind: str, port: int, procs: list[subprocess.Popen], marks: Path
) -> None:
    """Both workers answer, SIGTERM lets an in-flight request finish, every process exits
    with 0, no worker outlives the server and the port is free."""
    try:
        wait_until_serving(port, procs)
        pids = serving_pids(port, kind)
        assert len(pids) == 2, f"only {pids} answered in {SPREAD_ROUNDS} rounds"

        in_flight: dict[str, object] = {}

        def slow_request() -> None:
            try:
                in_flight["response"] = get(port, "/slow")
            except BaseException as exc:
                in_flight["error"] = exc

        client = threading.Thread(target=slow_request)
        client.start()
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while not any(marks.glob("slow-*")):
            assert time.monotonic() < deadline, "the /slow request never reached a worker"
            time.sleep(0.02)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)

        client.join(REQUEST_TIMEOUT + SLOW_SECONDS)
        assert not client.is_alive()
        assert "error" not in in_flight, in_flight.get("error")
        status, body = in_flight["response"]
        assert status == 200
        (mark,) = marks.glob("slow-*")
        assert body.split()[0] == mark.name.removeprefix("slow-")

        for proc in procs:
            out, _ = proc.communicate(timeout=SHUTDOWN_TIMEOUT)
            assert proc.returncode == 0, out
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in pids if alive(pid)], "worker processes outlived the server"
        assert port_is_free(port)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def start(cmd: list[str], cwd: Path, marks: Path) -> subprocess.Popen:
    env = dict(os.environ, MARKS=str(marks), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own process group: the cleanup of a failed test reaches every worker.
        start_new_session=True,
    )


@pytest.fixture
def site(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "asgi_app.py").write_text(textwrap.dedent(ASGI_APP))
    (tmp_path / "aiohttp_app.py").write_text(textwrap.dedent(AIOHTTP_APP))
    marks = tmp_path / "marks"
    marks.mkdir()
    return tmp_path, marks


@pytest.mark.parametrize("kind", ["asyncio", "ferroloop"])
def test_uvicorn_two_workers(kind, site):
    app_dir, marks = site
    port = free_port()
    loop = "ferroloop:new_event_loop" if kind == "ferroloop" else "asyncio"
    cmd = [sys.executable, "-m", "uvicorn", "asgi_app:app", "--workers", "2"]
    cmd += ["--loop", loop, "--host", "127.0.0.1", "--port", str(port)]
    proc = start(cmd, app_dir, marks)
    check_two_workers_and_graceful_shutdown(kind, port, [proc], marks)


@pytest.mark.parametrize("kind", ["asyncio", "ferroloop"])
def test_gunicorn_uvicorn_workers(kind, site):
    pytest.importorskip("gunicorn")
    pytest.importorskip("uvicorn_worker")
    app_dir, marks = site
    port = free_port()
    worker = "ferroloop.workers.UvicornWorker" if kind == "ferroloop" else "asgi_app.AsyncioWorker"
    cmd = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", worker]
    cmd += ["-b", f"127.0.0.1:{port}", "--graceful-timeout", str(int(SHUTDOWN_TIMEOUT))]
    cmd += ["asgi_app:app"]
    proc = start(cmd, app_dir, marks)
    check_two_workers_and_graceful_shutdown(kind, port, [proc], marks)


@pytest.mark.parametrize("kind", ["asyncio", "ferroloop"])
def test_aiohttp_reuse_port_two_processes(kind, site):
    pytest.importorskip("aiohttp")
    app_dir, marks = site
    port = free_port()
    cmd = [sys.executable, "aiohttp_app.py", str(port), kind]
    procs = [start(cmd, app_dir, marks) for _ in range(2)]
    check_two_workers_and_graceful_shutdown(kind, port, procs, marks)


def test_worker_classes_use_ferroloop():
    """The shipped classes differ from uvicorn-worker's only in the loop (and h11)."""
    pytest.importorskip("uvicorn_worker")
    import uvicorn_worker
    from ferroloop import workers

    base = uvicorn_worker.UvicornWorker.CONFIG_KWARGS
    assert workers.UvicornWorker.CONFIG_KWARGS == {**base, "loop": "ferroloop:new_event_loop"}
    assert workers.UvicornH11Worker.CONFIG_KWARGS == {
        **base,
        "loop": "ferroloop:new_event_loop",
        "http": "h11",
    }
    assert issubclass(workers.UvicornWorker, uvicorn_worker.UvicornWorker)
