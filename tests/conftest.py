"""Shared fixtures for the ferroloop behaviour suite.

Every behaviour test that uses the ``loop`` / ``loop_factory`` / ``loop_kind`` / ``snippet``
fixtures runs twice: once on stock asyncio (the oracle) and once on ferroloop.  The test
body asserts what stock asyncio does; ferroloop must do the same.

If ``import ferroloop`` fails, the ferroloop parameter FAILS (it is not skipped), unless
the environment variable ``FERROLOOP_ALLOW_MISSING=1`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import NoReturn

import pytest

LOOP_KINDS = ["asyncio", "ferroloop"]

# Upper bound for any subprocess started by the suite (a hang must fail, not block CI).
SUBPROCESS_TIMEOUT = 60.0

# Upper bound for an in-process wait of the transport and server tests.
IO_TEST_TIMEOUT = 10.0


def run_bounded(loop, coro, timeout: float = IO_TEST_TIMEOUT):
    """Run ``coro`` on ``loop`` to completion, failing it after ``timeout`` seconds."""

    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro

    return loop.run_until_complete(bounded())


def run_on(loop_factory, coro_fn, *args, timeout: float):
    """Run ``coro_fn(*args)`` in ``asyncio.Runner`` on a new loop from ``loop_factory``,
    failing it after ``timeout`` seconds."""

    async def main():
        async with asyncio.timeout(timeout):
            return await coro_fn(*args)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


@pytest.fixture
def watchdog(request):
    """Last resort for a test that wedges the loop itself (so that no asyncio timeout can
    fire): after the test module's ``WATCHDOG_TIMEOUT`` seconds, end the process with
    every thread's traceback instead of blocking CI."""
    faulthandler.dump_traceback_later(request.module.WATCHDOG_TIMEOUT, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def loop_module() -> str:
    """The module of the running loop's class."""
    return type(asyncio.get_running_loop()).__module__


def check_loop(kind: str) -> None:
    """Assert that the running loop is of the kind under test."""
    loop = asyncio.get_running_loop()
    module = type(loop).__module__
    if kind == "ferroloop":
        assert module.startswith("ferroloop"), module
        assert isinstance(loop, import_ferroloop().Loop)
    else:
        assert kind == "asyncio"
        assert type(loop) is asyncio.SelectorEventLoop, type(loop)
        assert module.startswith("asyncio."), module


def check_module(kind: str, module: str) -> None:
    """Assert that a loop module name recorded by a server belongs to ``kind``."""
    if kind == "ferroloop":
        assert module.startswith("ferroloop"), module
    else:
        assert module.startswith("asyncio."), module


@contextlib.asynccontextmanager
async def aiohttp_server(app, shutdown_timeout: float):
    """Serve the aiohttp ``app`` with AppRunner/TCPSite on 127.0.0.1, an ephemeral port, on
    the running loop; yield the base URL."""
    from aiohttp import web

    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        assert host == "127.0.0.1"
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def uvicorn_server(app, shutdown_timeout: float, **config):
    """Run ``uvicorn.Server(Config(app, ...)).serve()`` as a task on the running loop, on
    127.0.0.1 and an ephemeral port, with ``config`` passed on; yield (server, "host:port")."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            loop="none",
            lifespan="on",
            log_config=None,
            log_level="warning",
            **config,
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise AssertionError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        (sock,) = server.servers[0].sockets
        host, port = sock.getsockname()[:2]
        assert host == "127.0.0.1"
        yield server, f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, shutdown_timeout)


@pytest.fixture
def no_error_logs(caplog):
    """Fail on errors that only reach a log: a loop's "Exception in callback", "Task
    exception was never retrieved", a server's "Exception in ASGI application" or failed
    connection handler. Modules opt in with ``usefixtures``."""
    yield
    errors = [
        record
        for when in ("setup", "call")
        for record in caplog.get_records(when)
        if record.levelno >= logging.ERROR
    ]
    assert not errors, "\n".join(record.getMessage() for record in errors)


def _allow_missing() -> bool:
    return os.environ.get("FERROLOOP_ALLOW_MISSING") == "1"


def unavailable(reason: str) -> NoReturn:
    """What a test needs from the machine (a server's binaries, a data file) is missing:
    skip it, except under ``CI=true``, where it fails, so that CI cannot pass without
    having run it. ``make test`` installs what it can (scripts/install-test-servers)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (required when CI=true)", pytrace=False)
    pytest.skip(reason)


def import_ferroloop():
    """Import ferroloop, or fail (skip with FERROLOOP_ALLOW_MISSING=1) the current test."""
    try:
        import ferroloop
    except Exception as exc:  # ImportError, or an error raised while initialising it
        msg = f"cannot import ferroloop: {exc!r}"
        if _allow_missing():
            pytest.skip(msg + " (FERROLOOP_ALLOW_MISSING=1)")
        pytest.fail(msg, pytrace=False)
    return ferroloop


def factory_for(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """Return the loop factory (a zero-argument callable) for a loop kind."""
    if kind == "asyncio":
        return asyncio.SelectorEventLoop
    if kind == "ferroloop":
        return import_ferroloop().new_event_loop
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop
    raise ValueError(f"unknown loop kind {kind!r}")


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request) -> str:
    """The name of the loop implementation under test: "asyncio" or "ferroloop"."""
    if request.param == "ferroloop":
        import_ferroloop()
    return request.param


@pytest.fixture
def loop_factory(loop_kind) -> Callable[[], asyncio.AbstractEventLoop]:
    """A zero-argument callable creating a new loop of the kind under test.

    Suitable for ``asyncio.Runner(loop_factory=...)`` and (3.12+)
    ``asyncio.run(..., loop_factory=...)``.
    """
    return factory_for(loop_kind)


@pytest.fixture
def loop(loop_factory):
    """A fresh, not running, not current event loop; closed after the test."""
    lp = loop_factory()
    try:
        yield lp
    finally:
        if not lp.is_running() and not lp.is_closed():
            lp.close()
        asyncio.set_event_loop(None)


# --------------------------------------------------------------------------------------
# Subprocess helpers
# --------------------------------------------------------------------------------------

_PREAMBLE = {
    "asyncio": "import asyncio\nnew_loop = asyncio.SelectorEventLoop\n",
    "ferroloop": "import asyncio\nimport ferroloop\nnew_loop = ferroloop.new_event_loop\n",
    "uvloop": "import asyncio\nimport uvloop\nnew_loop = uvloop.new_event_loop\n",
}

_RUN_HELPER = """
def run(main, *, debug=None):
    with asyncio.Runner(loop_factory=new_loop, debug=debug) as runner:
        return runner.run(main)
"""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child interpreters: ours, minus asyncio debug switches, plus extra."""
    env = dict(os.environ)
    for var in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "PYTHONWARNINGS"):
        env.pop(var, None)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class Snippet:
    """Runs Python snippets in a child interpreter on a given loop kind.

    The snippet sees ``asyncio``, ``new_loop`` (the loop factory of the kind under test)
    and ``run(main, *, debug=None)`` (``asyncio.Runner(loop_factory=new_loop).run(main)``).
    """

    def __init__(self, kind: str):
        self.kind = kind

    def source(self, code: str) -> str:
        return _PREAMBLE[self.kind] + _RUN_HELPER + textwrap.dedent(code)

    def argv(self, code: str, *, python_args: tuple[str, ...] = ()) -> list[str]:
        return [sys.executable, *python_args, "-c", self.source(code)]

    def run(
        self,
        code: str,
        *,
        env: dict[str, str] | None = None,
        python_args: tuple[str, ...] = (),
        timeout: float = SUBPROCESS_TIMEOUT,
    ) -> subprocess.CompletedProcess:
        """Run to completion; return the CompletedProcess (text mode, both streams)."""
        return subprocess.run(
            self.argv(code, python_args=python_args),
            capture_output=True,
            text=True,
            env=child_env(env),
            timeout=timeout,
        )

    def popen(self, code: str, *, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start without waiting; stdout/stderr are text pipes."""
        return subprocess.Popen(
            self.argv(code),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(env),
        )


@pytest.fixture
def snippet(loop_kind) -> Snippet:
    """A :class:`Snippet` runner bound to the loop kind under test."""
    return Snippet(loop_kind)


@pytest.fixture
def snippet_for():
    """``snippet_for(kind)`` -> :class:`Snippet`, for tests comparing loop kinds in one test."""

    def make(kind: str) -> Snippet:
        if kind == "ferroloop":
            import_ferroloop()
        return Snippet(kind)

    return make


@pytest.fixture
def ferroloop():
    """The ferroloop module (fails the test if it cannot be imported)."""
    return import_ferroloop()


@pytest.fixture
def run_python():
    """``run_python(*args, cwd=None, env=None)``: run ``sys.executable *args`` to completion
    (text mode, captured output, clean asyncio-debug environment)."""

    def run(*args: str, cwd: str | None = None, env: dict[str, str] | None = None):
        return subprocess.run(
            [sys.executable, *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=child_env(env),
            timeout=SUBPROCESS_TIMEOUT,
        )

    return run
