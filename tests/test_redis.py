"""redis-py's asyncio client (``redis.asyncio``), unchanged, against a real redis-server, on
ferroloop and on stock asyncio (the oracle).

redis-py is a widely used asyncio client.  Its connections are plain
``asyncio.open_connection``/``open_unix_connection`` streams (``StreamReader`` and
``StreamWriter`` on loop transports), read by its pure-Python RESP parser; on any
exception while a reply is outstanding, cancellation included, it drops the connection
rather than risk reading a stale reply later, and it retries ``ConnectionError`` and
``TimeoutError`` on a fresh connection (by default ten times).  Each test talks to a
throwaway redis-server (started for this module with persistence off, bound to 127.0.0.1
and a Unix socket in a temporary directory, emptied before every test) and checks exact
results: strings (binary, unicode, 4 MiB values the server hashes itself), hashes, lists,
sets, sorted sets, counters, expiry; pipelines with and without MULTI/EXEC and thousands
of commands; optimistic locking with WATCH broken by a second client (WatchError, and the
``transaction`` helper retrying); pub/sub with channels and patterns, messages in order,
unsubscribing; pools with 100 concurrent tasks (a blocking pool of 10 connections, and a
default pool growing to 100); BLPOP answered by another client's push, and cancelled by
``asyncio.timeout`` and ``Task.cancel`` with the same single-connection pool right after;
the Unix socket; the server killing a client with CLIENT KILL, idle or blocked, with
redis-py's default retries and with none; and ``aclose`` closing every socket.

Every test checks which loop it ran on, and that redis-py's streams (``_reader`` and
``_writer``: redis-py has no public accessor for them) belong to it.  Nothing here
measures time: every wait is bounded (``asyncio.timeout``, redis-py's socket timeouts,
subprocess timeouts) so a hang fails; where a test needs the server to reach a state (a
client blocked in BLPOP, a killed or closed connection forgotten), it asks the server,
with commands, until it has.

Needs: redis-py, and redis-server (Debian package redis-server).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time

import conftest
import pytest
from conftest import check_loop, check_module, unavailable

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")
aioredis = pytest.importorskip("redis.asyncio", reason="redis-py has no redis.asyncio")
redis_backoff = pytest.importorskip("redis.backoff")
redis_retry = pytest.importorskip("redis.asyncio.retry")

# Upper bound for one test's asynchronous part (a hang must fail, not block CI).
ASYNC_TIMEOUT = 20.0
# redis-py's own bound for connecting and for each read and write.  Shorter than
# ASYNC_TIMEOUT, so that a reply that never comes fails as redis-py's TimeoutError.
SOCKET_TIMEOUT = 10.0
# Upper bound for starting the server, and for stopping it.
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 10.0
# Upper bound for one readiness probe (a PING over a plain socket).
PROBE_TIMEOUT = 5.0
# How long one wait of the readiness poll lasts (a wait for the server process to exit).
POLL_INTERVAL = 0.05
# Last resort: a test that wedges the loop itself (so that no asyncio timeout can fire)
# ends the pytest process with every thread's traceback instead of blocking CI.
WATCHDOG_TIMEOUT = 180.0

# Seeded random bytes, not a repeating pattern, so reordered or duplicated chunks show.
HUGE = random.Random(20261201).randbytes(4 << 20)  # 4 MiB: many socket buffers
BIG = random.Random(20261202).randbytes(1 << 20)  # 1 MiB
BINARY = bytes(range(256)) + b"\r\n$-1\r\n*2\r\n\x00"  # RESP framing inside a value
UNICODE = "Grüße, ferroloop — 日本語テキスト 🐍🦀 \u2028 tab\t newline\r\n quote' backslash\\"

pytestmark = pytest.mark.usefixtures("watchdog", "no_error_logs")


def run_on(loop_factory, coro_fn, *args):
    """Run ``coro_fn(*args)`` on a new loop from ``loop_factory``, bounded by ASYNC_TIMEOUT."""
    return conftest.run_on(loop_factory, coro_fn, *args, timeout=ASYNC_TIMEOUT)


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RedisServer:
    """A running server: where to reach it."""

    host: str
    port: int
    socket_path: str
    version: str
    pid: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ask(address, line: bytes, timeout: float = SERVER_START_TIMEOUT) -> bytes:
    """Send one inline command over a plain blocking socket (TCP port, or Unix socket
    path) and return the first line of the reply, without its CRLF."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    target = address if isinstance(address, str) else ("127.0.0.1", address)
    with socket.socket(family) as sock:
        sock.settimeout(timeout)
        sock.connect(target)
        sock.sendall(line + b"\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"redis-server closed the connection after {reply!r}")
            reply += chunk
    return reply[:-2]


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (the server exits cleanly; nothing to save), or kill it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(SERVER_STOP_TIMEOUT)


def read_log(path: str) -> str:
    with open(path, errors="replace") as log:
        return log.read()


def wait_until_ready(proc: subprocess.Popen, port: int, socket_path: str, log_path: str) -> bool:
    """PING over the Unix socket, then over TCP, until both answer PONG (True) or the
    server exits (False); fail after SERVER_START_TIMEOUT.  The Unix socket first: only
    our server can answer there, and it creates it after binding the TCP port (whereas
    a process that took the port may accept a connection and never answer)."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        try:  # before it is ready: no socket file, refused, or -LOADING
            if (
                ask(socket_path, b"PING", PROBE_TIMEOUT) == b"+PONG"
                and ask(port, b"PING", PROBE_TIMEOUT) == b"+PONG"
            ):
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"redis-server did not answer PING in {SERVER_START_TIMEOUT}s:\n"
                + read_log(log_path)
            )
        try:
            proc.wait(POLL_INTERVAL)  # the pause between polls, ended early if it exits
        except subprocess.TimeoutExpired:
            continue
        return False


@pytest.fixture(scope="module")
def redis_server():
    """A redis-server of its own for this module: no persistence, listening on 127.0.0.1
    (a free port) and on a Unix socket in a temporary directory; stopped and removed
    afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("no redis-server on PATH: install Debian's redis-server package")
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    version = version.split("v=", 1)[1].split()[0]
    # With setpriv (util-linux), the server is killed if pytest dies.
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--pdeathsig=KILL", "--"] if setpriv else []

    top = tempfile.mkdtemp(prefix="ferroloop-redis-")
    socket_path = os.path.join(top, "redis.sock")
    log_path = os.path.join(top, "server.log")
    proc = None
    try:
        for attempt in range(3):
            port = free_port()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [
                        *prefix,
                        binary,
                        *("--port", str(port), "--bind", "127.0.0.1"),
                        *("--unixsocket", socket_path, "--unixsocketperm", "700"),
                        *("--save", "", "--appendonly", "no"),
                        *("--dir", top, "--daemonize", "no", "--logfile", ""),
                    ],
                    cwd=top,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if wait_until_ready(proc, port, socket_path, log_path):
                break
            stop_server(proc)
            output = read_log(log_path)
            # Another process may have taken the port between free_port() and the bind.
            if "Address already in use" not in output or attempt == 2:
                pytest.fail(f"redis-server exited with {proc.returncode}:\n{output}")
        yield RedisServer("127.0.0.1", port, socket_path, version, proc.pid)
    finally:
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def server(redis_server):
    """The module's server, emptied (FLUSHALL) for the test."""
    assert ask(redis_server.port, b"FLUSHALL") == b"+OK"
    return redis_server


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def client(srv: RedisServer, *, unix: bool = False, **kwargs):
    """A ``redis.asyncio.Redis`` for the server (TCP, or the Unix socket) with bounded
    socket timeouts; ``kwargs`` passed on."""
    where = {"unix_socket_path": srv.socket_path} if unix else {"host": srv.host, "port": srv.port}
    return aioredis.Redis(
        **where, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT, **kwargs
    )


def blocking_pool(srv: RedisServer, max_connections: int, client_name: str):
    """A ``BlockingConnectionPool`` of at most ``max_connections`` to the server over
    TCP, its connections named ``client_name``, with the same bounded timeouts as
    ``client`` (and as long a wait for a free connection)."""
    return aioredis.BlockingConnectionPool(
        host=srv.host,
        port=srv.port,
        max_connections=max_connections,
        timeout=SOCKET_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        client_name=client_name,
    )


@contextlib.asynccontextmanager
async def connected(srv: RedisServer, **kwargs):
    """A client on the running loop, closed (with its pool) afterwards."""
    r = client(srv, **kwargs)
    try:
        yield r
    finally:
        await r.aclose()


def no_retry():
    """A retry policy that gives up at the first failure."""
    return redis_retry.Retry(redis_backoff.NoBackoff(), 0)


def check_connection(kind: str, conn) -> None:
    """redis-py's connection is open, on streams and a transport of the running loop, of
    the kind under test."""
    check_loop(kind)
    assert conn.is_connected
    assert conn._reader._loop is asyncio.get_running_loop()
    transport = conn._writer.transport
    check_module(kind, type(transport).__module__)
    assert not transport.is_closing()


def pool_connections(r) -> list:
    """Every connection of the client's pool, idle or in use."""
    pool = r.connection_pool
    return [*pool._available_connections, *pool._in_use_connections]


def check_client(kind: str, r) -> None:
    """Every open connection of the client belongs to the running loop (and there is
    one)."""
    connections = [conn for conn in pool_connections(r) if conn.is_connected]
    assert connections
    for conn in connections:
        check_connection(kind, conn)


async def named(admin, name: str) -> list[dict]:
    """The server's CLIENT LIST entries of the clients called ``name``."""
    return [c for c in await admin.client_list() if c["name"] == name]


async def wait_blocked(admin, name: str, cmd: str, *, not_id: str | None = None) -> dict:
    """Ask the server until a client called ``name`` (other than ``not_id``) is blocked in
    ``cmd``; return its CLIENT LIST entry (each ask is a round trip: no sleeping)."""
    while True:
        for entry in await named(admin, name):
            if entry["cmd"] == cmd and "b" in entry["flags"] and entry["id"] != not_id:
                return entry


async def wait_gone(admin, client_ids) -> None:
    """Ask the server until none of ``client_ids`` is connected."""
    client_ids = set(client_ids)
    while {c["id"] for c in await admin.client_list()} & client_ids:
        pass


async def raised(coro) -> Exception:
    """The exception that awaiting ``coro`` raises; fails if it raises none."""
    try:
        await coro
    except Exception as exc:
        return exc
    raise AssertionError("no exception raised")


def socket_inodes() -> set[int]:
    """The inodes of this process's open sockets."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd is gone
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def tcp_sockets_to(port: int) -> set[int]:
    """The inodes of this process's TCP sockets connected to 127.0.0.1:``port``."""
    ours = socket_inodes()
    found = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            remote, inode = fields[2], int(fields[9])
            if remote == f"0100007F:{port:04X}" and inode in ours:
                found.add(inode)
    return found


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


def test_basic_commands(loop_kind, loop_factory, server):
    """Strings (binary with RESP framing inside, unicode, a 4 MiB value hashed by the
    server), counters, hashes, lists, sets, sorted sets, expiry, and server errors that
    leave the connection usable; bytes and ``decode_responses`` clients."""

    async def main():
        check_loop(loop_kind)
        got = {}
        async with connected(server) as r, connected(server, decode_responses=True) as text:
            got["ping"] = await r.ping()
            check_client(loop_kind, r)
            got["version"] = (await r.info("server"))["redis_version"]
            got["process"] = (await r.info("server"))["process_id"]

            # Strings.
            got["set"] = await r.set("binary", BINARY)
            got["binary"] = await r.get("binary")
            got["unicode"] = (await text.set("unicode", UNICODE), await text.get("unicode"))
            got["unicode bytes"] = await r.get("unicode")
            got["strlen"] = await text.strlen("unicode")
            got["huge set"] = await r.set("huge", HUGE)
            got["huge"] = await r.get("huge")
            got["huge server"] = (
                await r.strlen("huge"),
                await r.eval("return redis.sha1hex(redis.call('GET', KEYS[1]))", 1, "huge"),
                await r.getrange("huge", 1 << 20, (1 << 20) + 99),
            )
            got["append"] = (await r.append("huge", b"tail"), await r.getrange("huge", -6, -1))
            got["missing"] = await r.get("missing")
            got["nx"] = (await r.set("binary", b"x", nx=True), await r.setnx("new", b"y"))
            got["mget"] = await r.mget(["new", "missing", "binary"])
            got["mset"] = await text.mset({"a": "1", "b": "ü"})
            got["getset"] = await text.getset("b", "two")
            got["exists"] = await r.exists("a", "b", "missing", "huge")

            # Counters.
            got["incr"] = [await r.incr("counter") for _ in range(5)]
            got["incrby"] = (await r.incrby("counter", 100), await r.decr("counter", 6))
            got["float"] = await r.incrbyfloat("float", 2.5)
            got["counter"] = await r.get("counter")

            # Hashes.
            got["hset"] = await text.hset("hash", mapping={"f1": "v1", "f2": UNICODE, "n": 7})
            got["hgetall"] = await text.hgetall("hash")
            got["hash ops"] = (
                await text.hincrby("hash", "n", 35),
                await text.hget("hash", "f2"),
                await text.hmget("hash", ["f1", "nope", "n"]),
                await text.hdel("hash", "f1", "nope"),
                await text.hlen("hash"),
                sorted(await text.hkeys("hash")),
                await text.hexists("hash", "f1"),
            )
            got["hash binary"] = (await r.hset("bhash", BINARY, BIG), await r.hget("bhash", BINARY))

            # Lists.
            got["rpush"] = await r.rpush("list", *[f"item {i}" for i in range(100)])
            got["lpush"] = await r.lpush("list", b"first", BINARY)
            got["list ops"] = (
                await r.llen("list"),
                await r.lrange("list", 0, 3),
                await r.lrange("list", -2, -1),
                await r.lindex("list", 50),
                await r.lpop("list"),
                await r.rpop("list", 2),
                await r.lrem("list", 0, b"item 7"),
                await r.llen("list"),
            )

            # Sets.
            got["sadd"] = (await text.sadd("s1", "a", "b", "c", "ü"), await text.sadd("s1", "a"))
            await text.sadd("s2", "b", "c", "d")
            got["set ops"] = (
                await text.smembers("s1"),
                await text.sismember("s1", "ü"),
                await text.sismember("s1", "z"),
                await text.sinter("s1", "s2"),
                await text.sunion("s1", "s2"),
                await text.sdiff("s1", "s2"),
                await text.scard("s1"),
                await text.srem("s1", "a", "zz"),
            )

            # Sorted sets.
            got["zadd"] = await text.zadd("z", {"one": 1, "two": 2, "three": 3, "pi": 3.14159})
            got["zset ops"] = (
                await text.zrange("z", 0, -1, withscores=True),
                await text.zrevrange("z", 0, 1),
                await text.zincrby("z", 10, "one"),
                await text.zrank("z", "one"),
                await text.zscore("z", "pi"),
                await text.zrangebyscore("z", 2, 4),
                await text.zcard("z"),
                await text.zrem("z", "two"),
                await text.zpopmin("z"),
            )

            # Expiry: exact times set and read back, and an expiry in the past.
            got["expire"] = (await r.expire("binary", 1000), 0 < await r.ttl("binary") <= 1000)
            got["expireat"] = (
                await r.expireat("new", 4_000_000_000),
                await r.expiretime("new"),
                await r.pexpiretime("new"),
            )
            got["persist"] = (await r.persist("new"), await r.ttl("new"), await r.ttl("missing"))
            got["set ex"] = (await r.set("short", b"v", ex=500), 0 < await r.ttl("short") <= 500)
            got["past"] = (await r.expireat("short", 1), await r.exists("short"))

            # Server errors: ResponseError, and the connection stays in step.
            errors = []
            for coro in (r.incr("binary"), r.lpush("hash", b"x"), r.execute_command("NOSUCH")):
                exc = await raised(coro)
                errors.append((type(exc), str(exc)))
                errors.append(await r.echo(b"still in step"))
            got["errors"] = errors
            got["type"] = [await r.type(k) for k in ("binary", "hash", "list", "s1", "z", "nope")]
            got["keys"] = sorted(await r.keys())
            check_client(loop_kind, r)
            check_client(loop_kind, text)
        return got

    got = run_on(loop_factory, main)
    assert got.pop("version") == server.version
    assert got.pop("process") == server.pid
    assert got == {
        "ping": True,
        "set": True,
        "binary": BINARY,
        "unicode": (True, UNICODE),
        "unicode bytes": UNICODE.encode(),
        "strlen": len(UNICODE.encode()),
        "huge set": True,
        "huge": HUGE,
        "huge server": (
            len(HUGE),
            hashlib.sha1(HUGE).hexdigest().encode(),
            HUGE[1 << 20 : (1 << 20) + 100],
        ),
        "append": (len(HUGE) + 4, HUGE[-2:] + b"tail"),
        "missing": None,
        "nx": (None, True),
        "mget": [b"y", None, BINARY],
        "mset": True,
        "getset": "ü",
        "exists": 3,
        "incr": [1, 2, 3, 4, 5],
        "incrby": (105, 99),
        "float": 2.5,
        "counter": b"99",
        "hset": 3,
        "hgetall": {"f1": "v1", "f2": UNICODE, "n": "7"},
        "hash ops": (42, UNICODE, ["v1", None, "42"], 1, 2, ["f2", "n"], False),
        "hash binary": (1, BIG),
        "rpush": 100,
        "lpush": 102,
        "list ops": (
            102,
            [BINARY, b"first", b"item 0", b"item 1"],
            [b"item 98", b"item 99"],
            b"item 48",
            BINARY,
            [b"item 99", b"item 98"],
            1,
            98,
        ),
        "sadd": (4, 0),
        "set ops": (
            {"a", "b", "c", "ü"},
            True,
            False,
            {"b", "c"},
            {"a", "b", "c", "d", "ü"},
            {"a", "ü"},
            4,
            1,
        ),
        "zadd": 4,
        "zset ops": (
            [("one", 1.0), ("two", 2.0), ("three", 3.0), ("pi", 3.14159)],
            ["pi", "three"],
            11.0,
            3,
            3.14159,
            ["two", "three", "pi"],
            4,
            1,
            [("three", 3.0)],
        ),
        "expire": (True, True),
        "expireat": (True, 4_000_000_000, 4_000_000_000_000),
        "persist": (True, -1, -2),
        "set ex": (True, True),
        "past": (True, 0),
        "errors": [
            (redis.exceptions.ResponseError, "value is not an integer or out of range"),
            b"still in step",
            (
                redis.exceptions.ResponseError,
                "WRONGTYPE Operation against a key holding the wrong kind of value",
            ),
            b"still in step",
            (
                redis.exceptions.ResponseError,
                "unknown command 'NOSUCH', with args beginning with: ",
            ),
            b"still in step",
        ],
        "type": [b"string", b"hash", b"list", b"set", b"zset", b"none"],
        "keys": sorted(
            b"a b bhash binary counter float hash huge list new s1 s2 unicode z".split()
        ),
    }


def test_pipelines(loop_kind, loop_factory, server):
    """Pipelines of thousands of commands, with MULTI/EXEC (``transaction=True``) and
    without: replies in order and parsed per command, megabytes each way, a failing
    command in the middle (raised, or returned in place), and a pipeline reused after
    ``execute``."""
    n = 2000
    value = random.Random(5).randbytes(1000)

    async def main():
        check_loop(loop_kind)
        got = {}
        async with connected(server) as r, connected(server) as other:
            for transaction in (True, False):
                name = "multi" if transaction else "plain"
                async with r.pipeline(transaction=transaction) as pipe:
                    for i in range(n):
                        pipe.set(f"{name}:{i}", value + str(i).encode())
                    pipe.incr(f"{name}:count").incrby(f"{name}:count", 41)
                    pipe.rpush(f"{name}:list", *range(10)).lrange(f"{name}:list", 2, 4)
                    pipe.hset(f"{name}:hash", mapping={"a": 1}).hgetall(f"{name}:hash")
                    pipe.set(f"{name}:huge", HUGE).strlen(f"{name}:huge")
                    results = await pipe.execute()
                    check_client(loop_kind, r)
                    got[f"{name} set"] = results[:n] == [True] * n
                    got[f"{name} rest"] = results[n:]

                    # Reused: n GETs, about 2 MB of replies, and the huge value back.
                    for i in range(n):
                        pipe.get(f"{name}:{i}")
                    pipe.get(f"{name}:huge")
                    results = await pipe.execute()
                    got[f"{name} get"] = results[:n] == [value + str(i).encode() for i in range(n)]
                    got[f"{name} huge"] = results[n] == HUGE

                    # A failing command in the middle: returned in its place...
                    pipe.set(f"{name}:s", "text").incr(f"{name}:s").get(f"{name}:s")
                    results = await pipe.execute(raise_on_error=False)
                    got[f"{name} in place"] = [
                        (type(v), str(v)) if isinstance(v, Exception) else v for v in results
                    ]
                    # ... or raised; the other commands ran anyway (no rollback in Redis).
                    pipe.set(f"{name}:t", "one").incr(f"{name}:t").set(f"{name}:u", "two")
                    exc = await raised(pipe.execute())
                    got[f"{name} raised"] = (type(exc), str(exc))
                    got[f"{name} after"] = await other.mget([f"{name}:t", f"{name}:u"])
                got[f"{name} keys"] = await other.dbsize()
                got[f"{name} in step"] = await r.echo(b"in step")
            check_client(loop_kind, r)
        return got

    got = run_on(loop_factory, main)
    integer_error = (redis.exceptions.ResponseError, "value is not an integer or out of range")
    for name in ("multi", "plain"):
        assert got.pop(f"{name} set"), name
        assert got.pop(f"{name} get"), name
        assert got.pop(f"{name} huge"), name
        rest = [1, 42, 10, [b"2", b"3", b"4"], 1, {b"a": b"1"}, True, len(HUGE)]
        assert got.pop(f"{name} rest") == rest, name
    assert got == {
        "multi in place": [True, integer_error, b"text"],
        "multi raised": (
            redis.exceptions.ResponseError,
            "Command # 2 (INCRBY multi:t 1) of pipeline caused error: "
            "('value is not an integer or out of range',)",
        ),
        "multi after": [b"one", b"two"],
        "multi keys": n + 7,
        "multi in step": b"in step",
        "plain in place": [True, integer_error, b"text"],
        "plain raised": (
            redis.exceptions.ResponseError,
            "Command # 2 (INCRBY plain:t 1) of pipeline caused error: "
            "('value is not an integer or out of range',)",
        ),
        "plain after": [b"one", b"two"],
        "plain keys": 2 * (n + 7),
        "plain in step": b"in step",
    }


def test_watch_multi_exec(loop_kind, loop_factory, server):
    """Optimistic locking: a WATCHed key written by a second client makes EXEC fail with
    WatchError and nothing of the transaction happens; without a conflicting write it
    commits; the ``transaction`` helper retries a conflicting attempt; and MULTI/EXEC as
    raw commands on a single-connection client (a broken WATCH: EXEC answers nil)."""

    async def main():
        check_loop(loop_kind)
        got = {}
        async with (
            connected(server) as r,
            connected(server) as other,
            connected(server, single_connection_client=True) as raw,
        ):
            await r.set("balance", 100)

            async with r.pipeline() as pipe:
                got["watch"] = await pipe.watch("balance", "audit")
                current = int(await pipe.get("balance"))  # immediate mode while watching
                check_connection(loop_kind, pipe.connection)
                got["conflict"] = await other.incrby("balance", 5)
                pipe.multi()
                pipe.set("balance", current - 10).rpush("audit", "withdrew 10")
                exc = await raised(pipe.execute())
                got["broken"] = (type(exc), str(exc))
            got["after broken"] = (await r.get("balance"), await r.exists("audit"))

            async with r.pipeline() as pipe:
                await pipe.watch("balance")
                current = int(await pipe.get("balance"))
                pipe.multi()
                pipe.set("balance", current - 10).get("balance").rpush("audit", "withdrew 10")
                got["committed"] = await pipe.execute()

            attempts = []

            async def double(pipe):
                value = int(await pipe.get("balance"))
                attempts.append(value)
                if len(attempts) == 1:
                    await other.incr("balance")  # breaks the first attempt
                pipe.multi()
                pipe.set("balance", value * 2)

            got["helper"] = await r.transaction(double, "balance")
            got["attempts"] = attempts
            got["final"] = await other.get("balance")

            got["raw"] = [
                await raw.execute_command("WATCH", "raw"),
                await raw.execute_command("MULTI"),
                await raw.execute_command("INCR", "raw"),
                await raw.execute_command("INCR", "raw"),
                await raw.execute_command("EXEC"),
            ]
            check_connection(loop_kind, raw.connection)
            await raw.execute_command("WATCH", "raw")
            await other.set("raw", 50)
            got["raw broken"] = [
                await raw.execute_command("MULTI"),
                await raw.execute_command("INCR", "raw"),
                await raw.execute_command("EXEC"),
                await raw.get("raw"),
            ]
            check_client(loop_kind, r)
        return got

    got = run_on(loop_factory, main)
    assert got == {
        "watch": True,
        "conflict": 105,
        "broken": (
            redis.exceptions.WatchError,
            "Watched variable changed.",
        ),
        "after broken": (b"105", 0),
        "committed": [True, b"95", 1],
        "helper": [True],
        "attempts": [95, 96],
        "final": b"192",
        "raw": [True, b"OK", b"QUEUED", b"QUEUED", [1, 2]],
        "raw broken": [b"OK", b"QUEUED", None, b"50"],
    }


async def next_message(pubsub) -> dict | None:
    """The next pub/sub message (None if none comes within SOCKET_TIMEOUT)."""
    return await pubsub.get_message(timeout=SOCKET_TIMEOUT)


def test_pubsub(loop_kind, loop_factory, server):
    """SUBSCRIBE and PSUBSCRIBE: the confirmations, then binary, unicode and 1 MiB
    messages from another client in order with their channel and pattern; PUBLISH counts
    the receivers; UNSUBSCRIBE of one channel, then of everything; the ``listen``
    iterator; a closed PubSub has no connection left."""

    async def main():
        check_loop(loop_kind)
        got = {}
        async with connected(server) as r, connected(server) as pub:
            pubsub = r.pubsub()
            await pubsub.subscribe("news", "weather")
            await pubsub.psubscribe("user.*")
            check_connection(loop_kind, pubsub.connection)
            got["confirmations"] = [await next_message(pubsub) for _ in range(3)]
            got["numsub"] = await pub.pubsub_numsub("news", "weather", "other")
            got["numpat"] = await pub.pubsub_numpat()

            got["publish"] = [
                await pub.publish("news", "hello"),
                await pub.publish("user.42", UNICODE),
                await pub.publish("nobody", "lost"),
                await pub.publish("weather", BIG),
                await pub.publish("news", BINARY),
                await pub.publish("user.", b""),
            ]
            got["messages"] = [await next_message(pubsub) for _ in range(5)]

            await pubsub.unsubscribe("news")
            got["unsubscribed"] = await next_message(pubsub)
            got["after unsubscribe"] = [
                await pub.publish("news", "unheard"),
                await pub.publish("weather", "still heard"),
            ]
            got["still heard"] = await next_message(pubsub)

            # The async iterator.
            await pub.publish("user.7", "via listen")
            await pub.publish("weather", "last")
            heard = []
            async for message in pubsub.listen():
                heard.append(message)
                if len(heard) == 2:
                    break
            got["listen"] = heard

            await pubsub.punsubscribe()
            await pubsub.unsubscribe()
            got["unsubscribed all"] = [await next_message(pubsub) for _ in range(2)]
            got["subscribed"] = pubsub.subscribed
            got["numsub after"] = await pub.pubsub_numsub("news", "weather")
            connection = pubsub.connection
            await pubsub.aclose()
            got["closed"] = (pubsub.connection, connection.is_connected)
            check_client(loop_kind, pub)
        return got

    got = run_on(loop_factory, main)

    def message(kind, channel, data, pattern=None):
        return {"type": kind, "pattern": pattern, "channel": channel, "data": data}

    assert got == {
        "confirmations": [
            message("subscribe", b"news", 1),
            message("subscribe", b"weather", 2),
            message("psubscribe", b"user.*", 3),
        ],
        "numsub": [(b"news", 1), (b"weather", 1), (b"other", 0)],
        "numpat": 1,
        "publish": [1, 1, 0, 1, 1, 1],
        "messages": [
            message("message", b"news", b"hello"),
            message("pmessage", b"user.42", UNICODE.encode(), b"user.*"),
            message("message", b"weather", BIG),
            message("message", b"news", BINARY),
            message("pmessage", b"user.", b"", b"user.*"),
        ],
        "unsubscribed": message("unsubscribe", b"news", 2),
        "after unsubscribe": [0, 1],
        "still heard": message("message", b"weather", b"still heard"),
        "listen": [
            message("pmessage", b"user.7", b"via listen", b"user.*"),
            message("message", b"weather", b"last"),
        ],
        "unsubscribed all": [
            message("punsubscribe", b"user.*", 1),
            message("unsubscribe", b"weather", 0),
        ],
        "subscribed": False,
        "numsub after": [(b"news", 0), (b"weather", 0)],
        "closed": (None, False),
    }


def test_pool_concurrency(loop_kind, loop_factory, server):
    """100 tasks at once doing INCRs: through a blocking pool of 10 connections (the
    server sees exactly 10 clients) and through a default pool, which grows to 100; the
    counts are exact."""
    tasks, rounds = 100, 20

    async def main():
        check_loop(loop_kind)
        got = {}
        async with connected(server) as admin:
            pool = blocking_pool(server, 10, "blocking-pool")
            r = aioredis.Redis.from_pool(pool)
            try:

                async def work(i):
                    for _ in range(rounds):
                        await r.incr("counter")
                        await r.hincrby("per-task", str(i), 1)
                    return await r.hget("per-task", str(i))

                results = await asyncio.gather(*(work(i) for i in range(tasks)))
                got["blocking results"] = set(results)
                got["blocking counter"] = await admin.get("counter")
                got["blocking clients"] = len(await named(admin, "blocking-pool"))
                got["blocking pool"] = len(pool_connections(r))
                check_client(loop_kind, r)
            finally:
                await r.aclose()

            async with connected(server, client_name="default-pool") as r:
                barrier = asyncio.Barrier(tasks)

                async def hold(i):
                    # All 100 SETs are sent before the first one is answered: the pool
                    # makes a connection for each; then 100 INCRs at once reuse them.
                    await r.set(f"task:{i}", i)
                    await barrier.wait()
                    return await r.incr("wide")

                results = await asyncio.gather(*(hold(i) for i in range(tasks)))
                got["default results"] = sorted(results)
                got["default clients"] = len(await named(admin, "default-pool"))
                got["default pool"] = len(pool_connections(r))
                got["default keys"] = await admin.dbsize()
                check_client(loop_kind, r)
        return got

    got = run_on(loop_factory, main)
    assert got == {
        "blocking results": {str(rounds).encode()},
        "blocking counter": str(tasks * rounds).encode(),
        "blocking clients": 10,
        "blocking pool": 10,
        "default results": list(range(1, tasks + 1)),
        "default clients": tasks,
        "default pool": tasks,
        "default keys": tasks + 3,
    }


def test_blocking_commands(loop_kind, loop_factory, server):
    """BLPOP on a pool of one connection: answered by another client's push, timed out by
    the server, and cancelled once the server has it blocked, by ``asyncio.timeout`` and
    by ``Task.cancel``.  A cancelled BLPOP costs its connection (redis-py drops it rather
    than read a late reply), the server forgets it, a push after that stays in the list,
    and the same client and pool go on with exact replies."""

    async def main():
        check_loop(loop_kind)
        got = {}
        pool = blocking_pool(server, 1, "blocker")
        r = aioredis.Redis.from_pool(pool)
        try:
            async with connected(server) as admin:
                await r.set("k", "v")
                (conn,) = pool_connections(r)
                check_connection(loop_kind, conn)

                # Answered by another client's push.
                popping = asyncio.create_task(r.blpop(["q1", "q2"], timeout=0))
                blocked = await wait_blocked(admin, "blocker", "blpop")
                got["push"] = await admin.rpush("q2", "pushed", "second")
                got["blpop"] = await popping
                got["left"] = await admin.lrange("q2", 0, -1)
                got["same connection"] = (await named(admin, "blocker"))[0]["id"] == blocked["id"]

                # Timed out by the server (redis-py's reply: None).
                got["server timeout"] = await r.blpop(["empty"], timeout=0.01)

                # Cancelled by asyncio.timeout once the server has it blocked.
                seen = []

                async def expire_when_blocked(deadline):
                    seen.append(await wait_blocked(admin, "blocker", "blpop"))
                    deadline.reschedule(asyncio.get_running_loop().time())

                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(None) as deadline:
                        expirer = asyncio.create_task(expire_when_blocked(deadline))
                        await r.blpop(["q1"], timeout=0)
                await expirer
                got["after timeout"] = (conn.is_connected, await admin.llen("q1"))
                await wait_gone(admin, [seen[0]["id"]])
                got["pushed after timeout"] = await admin.rpush("q1", "kept 1")
                got["next after timeout"] = [
                    await r.lpop("q1"),
                    await r.get("k"),
                    await r.echo("after timeout"),
                ]
                check_connection(loop_kind, conn)

                # Cancelled with Task.cancel once the server has it blocked.
                popping = asyncio.create_task(r.blpop(["q1"], timeout=0))
                blocked = await wait_blocked(admin, "blocker", "blpop", not_id=seen[0]["id"])
                popping.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await popping
                got["after cancel"] = (conn.is_connected, await admin.llen("q1"))
                await wait_gone(admin, [blocked["id"]])
                got["pushed after cancel"] = await admin.rpush("q1", "kept 2")
                got["next after cancel"] = [
                    await r.lpop("q1"),
                    await r.get("k"),
                    await r.echo("after cancel"),
                ]
                got["pool"] = (pool_connections(r) == [conn], len(pool._in_use_connections))
                check_connection(loop_kind, conn)
                got["clients"] = len(await named(admin, "blocker"))
        finally:
            await r.aclose()
        return got

    got = run_on(loop_factory, main)
    assert got == {
        "push": 2,
        "blpop": (b"q2", b"pushed"),
        "left": [b"second"],
        "same connection": True,
        "server timeout": None,
        "after timeout": (False, 0),
        "pushed after timeout": 1,
        "next after timeout": [b"kept 1", b"v", b"after timeout"],
        "after cancel": (False, 0),
        "pushed after cancel": 1,
        "next after cancel": [b"kept 2", b"v", b"after cancel"],
        "pool": (True, 0),
        "clients": 1,
    }


def test_unix_socket(loop_kind, loop_factory, server):
    """A client over the server's Unix socket: the server sees a Unix socket client,
    replies are exact (a 4 MiB value, a pipeline, pub/sub), and ``aclose`` closes it."""

    async def main():
        check_loop(loop_kind)
        got = {}
        r = client(server, unix=True, client_name="unix")
        try:
            got["ping"] = await r.ping()
            (conn,) = pool_connections(r)
            check_connection(loop_kind, conn)
            sock = conn._writer.get_extra_info("socket")
            got["socket"] = (sock.family, conn._writer.get_extra_info("peername"))
            info = await r.client_info()
            got["server sees"] = (info["name"], info["addr"], info["laddr"])
            got["huge"] = (await r.set("huge", HUGE), await r.get("huge") == HUGE)
            async with r.pipeline() as pipe:
                for _ in range(500):
                    pipe.incr("n")
                got["pipeline"] = (await pipe.execute())[-3:]
            async with connected(server) as tcp:  # publish over TCP, receive over Unix
                async with r.pubsub() as pubsub:
                    await pubsub.subscribe("unix")
                    got["subscribed"] = await next_message(pubsub)
                    check_connection(loop_kind, pubsub.connection)
                    got["published"] = await tcp.publish("unix", BINARY)
                    got["message"] = await next_message(pubsub)
                    # The pub/sub connection is the pool's only one (reused, then dropped).
                    got["clients"] = [c["addr"] for c in await named(tcp, "unix")]
            got["after pubsub"] = await r.incr("n")  # a new connection
            (conn,) = pool_connections(r)
            check_connection(loop_kind, conn)
            transport = conn._writer.transport
            sock = conn._writer.get_extra_info("socket")
        finally:
            await r.aclose()
        got["closed"] = (transport.is_closing(), sock.fileno(), conn.is_connected)
        return got

    got = run_on(loop_factory, main)
    address = f"{server.socket_path}:0"
    assert got == {
        "ping": True,
        "socket": (socket.AF_UNIX, server.socket_path),
        "server sees": ("unix", address, address),
        "huge": (True, True),
        "pipeline": [498, 499, 500],
        "subscribed": {"type": "subscribe", "pattern": None, "channel": b"unix", "data": 1},
        "published": 1,
        "message": {"type": "message", "pattern": None, "channel": b"unix", "data": BINARY},
        "clients": [address],
        "after pubsub": 501,
        "closed": (True, -1, False),
    }


def test_client_killed(loop_kind, loop_factory, server):
    """CLIENT KILL from another connection, of an idle client and of one blocked in
    BLPOP.  With redis-py's default retries the command goes through on a new connection
    (a blocked BLPOP is sent again, and a later push answers it); with retries off the
    command raises ConnectionError, and the next one reconnects."""

    async def main():
        check_loop(loop_kind)
        got = {}
        async with (
            connected(server) as admin,
            connected(server, single_connection_client=True, client_name="retrying") as retrying,
            connected(
                server, single_connection_client=True, client_name="no-retry", retry=no_retry()
            ) as no_retry_client,
        ):
            for r in (retrying, no_retry_client):
                await r.set("k", "v")
                check_connection(loop_kind, r.connection)

            # Idle, default retries: the GET goes through on a new connection.
            old = await retrying.client_id()
            got["kill idle"] = await admin.client_kill_filter(_id=old)
            got["retrying get"] = await retrying.get("k")
            got["retrying reconnected"] = await retrying.client_id() != old
            check_connection(loop_kind, retrying.connection)

            # Idle, no retries: ConnectionError, then the next command reconnects.
            old = await no_retry_client.client_id()
            got["kill idle no retry"] = await admin.client_kill_filter(_id=old)
            exc = await raised(no_retry_client.get("k"))
            got["no retry get"] = (type(exc), str(exc))
            got["no retry disconnected"] = no_retry_client.connection.is_connected
            got["no retry next"] = await no_retry_client.get("k")
            got["no retry reconnected"] = await no_retry_client.client_id() != old
            check_connection(loop_kind, no_retry_client.connection)

            # Blocked, default retries: BLPOP is sent again on a new connection.
            popping = asyncio.create_task(retrying.blpop(["q"], timeout=0))
            blocked = await wait_blocked(admin, "retrying", "blpop")
            got["kill blocked"] = await admin.client_kill_filter(_id=blocked["id"])
            await wait_blocked(admin, "retrying", "blpop", not_id=blocked["id"])
            got["push"] = await admin.rpush("q", "answer")
            got["blpop"] = await popping
            check_connection(loop_kind, retrying.connection)

            # Blocked, no retries: the BLPOP raises ConnectionError.
            popping = asyncio.create_task(no_retry_client.blpop(["q"], timeout=0))
            blocked = await wait_blocked(admin, "no-retry", "blpop")
            got["kill blocked no retry"] = await admin.client_kill_filter(_id=blocked["id"])
            exc = await raised(popping)
            got["no retry blpop"] = (type(exc), str(exc))
            got["no retry after blpop"] = [
                await no_retry_client.rpush("q", "mine"),
                await no_retry_client.lpop("q"),
            ]
            check_connection(loop_kind, no_retry_client.connection)
            got["clients"] = sorted(c["name"] for c in await admin.client_list() if c["name"] != "")
        return got

    got = run_on(loop_factory, main)
    assert got == {
        "kill idle": 1,
        "retrying get": b"v",
        "retrying reconnected": True,
        "kill idle no retry": 1,
        "no retry get": (redis.exceptions.ConnectionError, "Connection closed by server."),
        "no retry disconnected": False,
        "no retry next": b"v",
        "no retry reconnected": True,
        "kill blocked": 1,
        "push": 1,
        "blpop": (b"q", b"answer"),
        "kill blocked no retry": 1,
        "no retry blpop": (redis.exceptions.ConnectionError, "Connection closed by server."),
        "no retry after blpop": [1, b"mine"],
        "clients": ["no-retry", "retrying"],
    }


def test_aclose_closes_sockets(loop_kind, loop_factory, server):
    """``aclose`` of a client whose pool holds five connections (one of them taken by a
    PubSub, closed first; another used by a pipeline): every transport closed, every
    socket closed, none of this process's file descriptors left on them, and the server
    sees the clients go."""

    async def main():
        check_loop(loop_kind)
        got = {}
        async with connected(server) as admin:
            await admin.ping()
            before = tcp_sockets_to(server.port)
            r = client(server, client_name="closing")
            try:
                # Five commands at once: five connections.
                got["pings"] = await asyncio.gather(*(r.echo(str(i)) for i in range(5)))
                pubsub = r.pubsub()
                await pubsub.subscribe("channel")
                got["subscribed"] = (await next_message(pubsub))["type"]
                async with r.pipeline() as pipe:
                    await pipe.watch("k")  # takes a pool connection until reset
                    pipe.multi()
                    pipe.set("k", "v")
                    got["pipeline"] = await pipe.execute()
                connections = [c for c in pool_connections(r) if c.is_connected]
                got["pubsub's"] = pubsub.connection in connections  # taken from the pool
                for conn in connections:
                    check_connection(loop_kind, conn)
                transports = [conn._writer.transport for conn in connections]
                sockets = [conn._writer.get_extra_info("socket") for conn in connections]
                inodes = {os.fstat(sock.fileno()).st_ino for sock in sockets}
                got["open"] = (len(connections), len(inodes), len(await named(admin, "closing")))
                got["ours"] = tcp_sockets_to(server.port) - before == inodes
                ids = [c["id"] for c in await named(admin, "closing")]
                await pubsub.aclose()
            finally:
                await r.aclose()
            got["transports closing"] = {transport.is_closing() for transport in transports}
            got["sockets"] = {sock.fileno() for sock in sockets}
            got["connected"] = {conn.is_connected for conn in connections}
            got["fds left"] = inodes & socket_inodes()
            got["to the server"] = tcp_sockets_to(server.port) - before
            await wait_gone(admin, ids)
            got["server sees"] = await named(admin, "closing")
        return got

    got = run_on(loop_factory, main)
    assert got == {
        "pings": [b"0", b"1", b"2", b"3", b"4"],
        "subscribed": "subscribe",
        "pipeline": [True],
        "pubsub's": True,
        "open": (5, 5, 5),
        "ours": True,
        "transports closing": {True},
        "sockets": {-1},
        "connected": {False},
        "fds left": set(),
        "to the server": set(),
        "server sees": [],
    }
