"""Real libraries over TLS, unchanged, on ferroloop and on stock asyncio.

- aiohttp: an HTTPS server (``TCPSite(ssl_context=...)``) and aiohttp's client, both on
  the loop under test, so both ends of the TLS connection are the loop's;
- uvicorn started with ``ssl_keyfile``/``ssl_certfile``, asked by httpx (whose TLS is
  anyio's own MemoryBIO code over a plain socket: the server end is the loop's);
- httpx against the aiohttp HTTPS server;
- asyncpg with ``ssl=`` against a PostgreSQL server started with ``ssl=on`` (asyncpg
  negotiates TLS with ``loop.start_tls`` after its SSLRequest);
- redis-py over TLS against ``redis-server --tls-port``.

Every test checks the loop it ran on and, where the library exposes it, that the TLS
transport is the loop's own. Certificates are made for the session (``tls_certs``).
Missing servers skip locally and fail under ``CI=true`` (``conftest.unavailable``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import ssl
import subprocess
import tempfile

import conftest
import pytest
from conftest import check_loop, unavailable
from tls_certs import SERVER_NAME, make_certs

ASYNC_TIMEOUT = 30.0
WATCHDOG_TIMEOUT = 180.0
BIG = hashlib.shake_256(b"ferroloop tls libraries").digest(1 << 20)

pytestmark = pytest.mark.usefixtures("watchdog")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def run_on(loop_factory, coro_fn, *args):
    return conftest.run_on(loop_factory, coro_fn, *args, timeout=ASYNC_TIMEOUT)


def check_tls_transport(kind: str, transport) -> None:
    """The TLS transport a library got is the loop's own kind."""
    module = type(transport).__module__
    assert type(transport).__name__ == "_SSLProtocolTransport", type(transport)
    assert module.startswith("ferroloop" if kind == "ferroloop" else "asyncio."), module


# --------------------------------------------------------------------------------------
# aiohttp, uvicorn, httpx
# --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def aiohttp_https(app, context):
    from aiohttp import web

    runner = web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = runner.addresses[0][1]
        yield f"https://{SERVER_NAME}:{port}"
    finally:
        await runner.cleanup()


def echo_app(kind: str, seen: list):
    from aiohttp import web

    async def echo(request):
        check_loop(kind)
        check_tls_transport(kind, request.transport)
        seen.append(request.secure)
        return web.Response(body=await request.read())

    app = web.Application(client_max_size=4 << 20)
    app.router.add_post("/echo", echo)
    return app


def resolve_localhost(aiohttp):
    """A resolver that sends localhost to 127.0.0.1 only (the server listens there)."""

    class Local(aiohttp.abc.AbstractResolver):
        async def resolve(self, host, port=0, family=0):
            import socket

            return [
                {
                    "hostname": host,
                    "host": "127.0.0.1",
                    "port": port,
                    "family": socket.AF_INET,
                    "proto": 0,
                    "flags": 0,
                }
            ]

        async def close(self):
            pass

    return Local()


def test_aiohttp_server_and_client(loop_kind, loop_factory, certs):
    aiohttp = pytest.importorskip("aiohttp")

    async def main():
        seen: list = []
        async with aiohttp_https(echo_app(loop_kind, seen), certs.server_context()) as url:
            connector = aiohttp.TCPConnector(
                ssl=certs.client_context(), resolver=resolve_localhost(aiohttp)
            )
            async with aiohttp.ClientSession(connector=connector) as session:
                bodies = []
                for _ in range(3):  # keep-alive: one connection, several requests
                    async with session.post(f"{url}/echo", data=BIG) as response:
                        check_tls_transport(loop_kind, response.connection.transport)
                        bodies.append(await response.read())
        return [body == BIG for body in bodies], seen

    assert run_on(loop_factory, main) == ([True, True, True], [True, True, True])


def test_httpx_against_aiohttp_https(loop_kind, loop_factory, certs):
    pytest.importorskip("aiohttp")
    httpx = pytest.importorskip("httpx")

    async def main():
        seen: list = []
        async with aiohttp_https(echo_app(loop_kind, seen), certs.server_context()) as url:
            async with httpx.AsyncClient(verify=certs.client_context()) as client:
                response = await client.post(f"{url}/echo", content=BIG)
        return response.status_code, response.content == BIG, seen

    assert run_on(loop_factory, main) == (200, True, [True])


def test_uvicorn_with_ssl_files(loop_kind, loop_factory, certs):
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        check_loop(loop_kind)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["scheme"].encode() + body})

    async def main():
        async with conftest.uvicorn_server(
            app, 10.0, ssl_keyfile=str(certs.server_key), ssl_certfile=str(certs.server_cert)
        ) as (server, address):
            port = address.rsplit(":", 1)[1]
            async with httpx.AsyncClient(verify=certs.client_context()) as client:
                response = await client.post(f"https://{SERVER_NAME}:{port}/", content=BIG)
        return response.status_code, response.content == b"https" + BIG

    assert run_on(loop_factory, main) == (200, True)


# --------------------------------------------------------------------------------------
# asyncpg against PostgreSQL with ssl=on
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_tls(certs):
    """A PostgreSQL server with ``ssl=on`` and the test certificate (its key readable by
    the server's account only, as PostgreSQL demands)."""
    pytest.importorskip("asyncpg")
    import test_asyncpg as pg

    bin_dir = pg.find_bin_dir()
    if bin_dir is None:
        unavailable("no PostgreSQL server binaries: install Debian's postgresql package")
    pg_isready = os.path.join(bin_dir, "pg_isready")
    if not os.access(pg_isready, os.X_OK):
        pg_isready = shutil.which("pg_isready")
    if pg_isready is None:
        unavailable("no pg_isready: install Debian's postgresql-client package")
    prefix, popen_args, account = pg.as_server_account()
    top = tempfile.mkdtemp(prefix="ferroloop-pg-tls-")
    proc = None
    try:
        cert, key = os.path.join(top, "server.pem"), os.path.join(top, "server.key")
        shutil.copy(certs.server_cert, cert)
        shutil.copy(certs.server_key, key)
        os.chmod(key, 0o600)
        if account:
            for path in (top, cert, key):
                os.chown(path, account.pw_uid, account.pw_gid)
        data = os.path.join(top, "data")
        initdb = subprocess.run(
            [*prefix, os.path.join(bin_dir, "initdb"), "-D", data, "-U", pg.PG_USER]
            + list(pg.INITDB_OPTIONS),
            cwd=top,
            env=pg.server_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=pg.SERVER_START_TIMEOUT,
            **popen_args,
        )
        assert initdb.returncode == 0, initdb.stdout + initdb.stderr
        settings = (*pg.SERVER_SETTINGS, "ssl=on", f"ssl_cert_file={cert}", f"ssl_key_file={key}")
        log_path = os.path.join(top, "server.log")
        for attempt in range(3):
            port = pg.free_port()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [
                        *prefix,
                        os.path.join(bin_dir, "postgres"),
                        *("-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", top),
                        *(arg for setting in settings for arg in ("-c", setting)),
                    ],
                    cwd=top,
                    env=pg.server_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    **popen_args,
                )
            if pg.wait_until_ready(proc, pg_isready, port, log_path):
                break
            pg.stop_server(proc)
            if attempt == 2:
                pytest.fail(f"PostgreSQL exited:\n{pg.read_log(log_path)}")
        yield port
    finally:
        if proc is not None:
            pg.stop_server(proc)
        shutil.rmtree(top, ignore_errors=True)


def test_asyncpg_over_tls(loop_kind, loop_factory, certs, postgres_tls):
    import asyncpg

    async def main():
        check_loop(loop_kind)
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=postgres_tls,
            user="ferroloop",
            database="postgres",
            ssl=certs.client_context(),
            timeout=ASYNC_TIMEOUT,
        )
        try:
            check_tls_transport(loop_kind, conn._transport)
            ssl_row = await conn.fetchrow(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            echoed = await conn.fetchval("SELECT $1::bytea", BIG)
            many = await conn.fetch("SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
        finally:
            await conn.close(timeout=10.0)
        return ssl_row["ssl"], ssl_row["version"], echoed == BIG, len(many)

    assert run_on(loop_factory, main) == (True, "TLSv1.3", True, 20000)


# --------------------------------------------------------------------------------------
# redis-py over TLS
# --------------------------------------------------------------------------------------


def redis_has_tls(binary: str) -> bool:
    """Whether this redis-server was built with TLS (it refuses --tls-port otherwise)."""
    probe = subprocess.run(
        [binary, "--tls-port", "0", "--port", "0", "--test-memory", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return "not built with TLS" not in probe.stdout + probe.stderr


@pytest.fixture(scope="module")
def redis_tls(certs):
    pytest.importorskip("redis")
    import test_redis as rd

    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("no redis-server on PATH: install Debian's redis-server package")
    if not redis_has_tls(binary):
        unavailable("this redis-server was built without TLS support")
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--pdeathsig=KILL", "--"] if setpriv else []
    top = tempfile.mkdtemp(prefix="ferroloop-redis-tls-")
    socket_path = os.path.join(top, "redis.sock")
    log_path = os.path.join(top, "server.log")
    proc = None
    try:
        for attempt in range(3):
            port, tls_port = rd.free_port(), rd.free_port()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [
                        *prefix,
                        binary,
                        *("--port", str(port), "--bind", "127.0.0.1"),
                        *("--tls-port", str(tls_port)),
                        *("--tls-cert-file", str(certs.server_cert)),
                        *("--tls-key-file", str(certs.server_key)),
                        *("--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no"),
                        *("--unixsocket", socket_path, "--unixsocketperm", "700"),
                        *("--save", "", "--appendonly", "no"),
                        *("--dir", top, "--daemonize", "no", "--logfile", ""),
                    ],
                    cwd=top,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if rd.wait_until_ready(proc, port, socket_path, log_path):
                break
            rd.stop_server(proc)
            if attempt == 2:
                pytest.fail(f"redis-server exited:\n{rd.read_log(log_path)}")
        yield tls_port
    finally:
        if proc is not None:
            rd.stop_server(proc)
        shutil.rmtree(top, ignore_errors=True)


def test_redis_over_tls(loop_kind, loop_factory, certs, redis_tls):
    import redis.asyncio

    async def main():
        check_loop(loop_kind)
        client = redis.asyncio.Redis(
            host="127.0.0.1",
            port=redis_tls,
            ssl=True,
            ssl_ca_certs=str(certs.ca),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            ssl_check_hostname=False,
        )
        try:
            await client.set("ferroloop:tls", BIG)
            value = await client.get("ferroloop:tls")
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(500):
                    pipe.incr("ferroloop:tls:counter")
                counts = await pipe.execute()
            connection = client.connection_pool._available_connections[0]
            check_tls_transport(loop_kind, connection._writer.transport)
            await client.delete("ferroloop:tls", "ferroloop:tls:counter")
        finally:
            await client.aclose()
        return value == BIG, counts[-1]

    assert run_on(loop_factory, main) == (True, 500)
