"""asyncpg, unchanged, against a real PostgreSQL server, on ferroloop and on stock asyncio
(the oracle).

asyncpg is one of uvloop's heaviest users: its protocol is Cython sitting directly on
``loop.create_connection``/``create_unix_connection`` transports (TCP_NODELAY, buffered
writes with flow control, ``pause_reading`` for slow COPY consumers, a second connection
for cancel requests, timers for command timeouts).  Each test connects over TCP to a
throwaway PostgreSQL cluster (initdb'ed into a temporary directory, trust auth, bound to
127.0.0.1 only, one server for the whole module) and checks exact results: connecting and
closing (TCP and Unix socket), type round trips (integers, numeric, unicode text, 1 MiB
of bytea, timestamptz, json/jsonb codecs, arrays, NULL), prepared statements and
``fetch``/``fetchrow``/``fetchval``/``executemany``, transactions committed and rolled
back, a server-side cursor, the COPY protocol in both directions with megabytes of data
(and into a locked table, so that the transport must pause asyncpg's writes), a pool with
50 concurrent queries on 5 connections, query cancellation (``asyncio.timeout``,
``wait_for`` and asyncpg's own timeout), LISTEN/NOTIFY, server-side errors, and the server
terminating a backend, idle or in the middle of a query.

Every test checks which loop it ran on, that asyncpg's transport belongs to it, and that
callbacks (listeners, pool ``init``, COPY sinks) ran on it too.  Nothing here measures
time: every wait is bounded (``asyncio.timeout``, asyncpg's timeouts, subprocess timeouts)
so a hang fails; where a test needs a state to be reached (a backend sleeping in
``pg_sleep`` or waiting for a lock, a full write buffer), it asks the server, with
queries, until it is.

Needs: asyncpg, and PostgreSQL's server binaries (Debian package postgresql): initdb,
postgres, pg_isready.  PostgreSQL refuses to run as root: as root, the cluster is created
and run as the ``postgres`` system user.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import decimal
import glob
import hashlib
import io
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import asyncpg
import asyncpg.exceptions
import conftest
import pytest
from conftest import check_loop, check_module, loop_module, unavailable

# Upper bound for one test's asynchronous part (a hang must fail, not block CI).  It is
# shorter than the pg_sleep(60) queries below, so a cancellation that does not reach the
# server fails the test instead of passing late.
ASYNC_TIMEOUT = 30.0
# Upper bound for creating the cluster, starting the server, and each poll of it.
SERVER_START_TIMEOUT = 60.0
# Upper bound for the server's fast shutdown, before it is killed.
SERVER_STOP_TIMEOUT = 20.0
# How long one wait of the readiness poll lasts (a wait for the server process to exit).
POLL_INTERVAL = 0.05
# Upper bound for one connection's graceful close.
CLOSE_TIMEOUT = 10.0
# Short deadlines that are meant to expire: their length does not matter, only that the
# operation they bound never completes on its own.
EXPIRING = 0.05
# Last resort: a test that wedges the loop itself (so that no asyncio timeout can fire)
# ends the pytest process with every thread's traceback instead of blocking CI.
WATCHDOG_TIMEOUT = 180.0

# The cluster's superuser (trusted, no password) and the database the tests use.
PG_USER = "ferroloop"
PG_DATABASE = "postgres"
# The system user that runs the server when the tests run as root.
PG_ACCOUNT = "postgres"
# A throwaway cluster: no password, nothing synced to disk.
INITDB_OPTIONS = ("--auth=trust", "--no-sync", "--encoding=UTF8", "--no-locale")
SERVER_SETTINGS = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "autovacuum=off",
    "max_connections=60",
    "shared_buffers=32MB",
    "timezone=UTC",
)

# Seeded random bytes, not a repeating pattern, so reordered or duplicated chunks show.
BIG = random.Random(20261130).randbytes(1 << 20)  # 1 MiB: several socket buffers
UNICODE = "Grüße, ferroloop — 日本語テキスト 🐍🦀 \u2028 tab\t newline\n quote' backslash\\"


pytestmark = pytest.mark.usefixtures("watchdog", "no_error_logs")


def run_on(loop_factory, coro_fn, *args):
    """Run ``coro_fn(*args)`` on a new loop from ``loop_factory``, bounded by ASYNC_TIMEOUT."""
    return conftest.run_on(loop_factory, coro_fn, *args, timeout=ASYNC_TIMEOUT)


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Postgres:
    """A running server: where to reach it."""

    host: str
    port: int
    socket_dir: str
    major: int

    def params(self, *, unix: bool = False) -> dict:
        """asyncpg.connect / create_pool arguments (TCP, or the Unix socket)."""
        return {
            "host": self.socket_dir if unix else self.host,
            "port": self.port,
            "user": PG_USER,
            "database": PG_DATABASE,
            "timeout": ASYNC_TIMEOUT,
        }


BIN_TOOLS = ("initdb", "postgres")


def find_bin_dir() -> str | None:
    """The directory with initdb and postgres: PATH's first, then the newest
    /usr/lib/postgresql/*/bin (Debian's layout)."""
    candidates = []
    on_path = shutil.which("postgres")
    if on_path:
        # Debian's /usr/local or /usr/bin links point into /usr/lib/postgresql/N/bin,
        # which also has pg_isready.
        candidates += [os.path.dirname(os.path.realpath(on_path)), os.path.dirname(on_path)]

    def version(path: str) -> tuple[int, ...]:
        name = os.path.basename(os.path.dirname(path))
        return tuple(int(part) for part in re.findall(r"\d+", name))

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for directory in candidates:
        if all(os.access(os.path.join(directory, tool), os.X_OK) for tool in BIN_TOOLS):
            return directory
    return None


def as_server_account() -> tuple[list[str], dict, pwd.struct_passwd | None]:
    """How to run the server's programs: a command prefix and Popen arguments that drop
    root for the ``postgres`` account (and, with setpriv, kill the server if pytest dies),
    and that account (None when not root)."""
    account = None
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(PG_ACCOUNT)
        except KeyError:
            unavailable(
                f"running as root, and there is no {PG_ACCOUNT!r} system user to run "
                "PostgreSQL as (it refuses to run as root; Debian's postgresql package "
                "creates that user)"
            )
    setpriv = shutil.which("setpriv")  # util-linux
    if setpriv:
        prefix = [setpriv]
        if account:
            prefix += [f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups"]
        return [*prefix, "--pdeathsig=KILL", "--"], {}, account
    if account:
        return [], {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}, account
    return [], {}, None


def server_env() -> dict[str, str]:
    """Our environment, without libpq's variables (they must not redirect anything)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_server(proc: subprocess.Popen) -> None:
    """Fast shutdown (SIGINT: end the sessions, then exit cleanly), or kill it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(SERVER_STOP_TIMEOUT)


def read_log(path: str) -> str:
    with open(path, errors="replace") as log:
        return log.read()


def wait_until_ready(proc: subprocess.Popen, pg_isready: str, port: int, log_path: str) -> bool:
    """Poll with pg_isready until the server accepts connections (True) or exits (False);
    fail after SERVER_START_TIMEOUT."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        ready = subprocess.run(
            [pg_isready, "-q", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "-t", "5"],
            env=server_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=SERVER_START_TIMEOUT,
        )
        if ready.returncode == 0:
            return True
        if time.monotonic() > deadline:
            pytest.fail(
                f"PostgreSQL did not accept connections in {SERVER_START_TIMEOUT}s:\n"
                + read_log(log_path)
            )
        try:
            proc.wait(POLL_INTERVAL)  # the pause between polls, ended early if it exits
        except subprocess.TimeoutExpired:
            continue
        return False


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own for this module: a new cluster in a temporary
    directory, listening on 127.0.0.1 (and a Unix socket in that directory); stopped and
    removed afterwards."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        unavailable(
            "no PostgreSQL server binaries (initdb, postgres) on PATH or in "
            "/usr/lib/postgresql/*/bin: install Debian's postgresql package"
        )
    pg_isready = os.path.join(bin_dir, "pg_isready")
    if not os.access(pg_isready, os.X_OK):
        pg_isready = shutil.which("pg_isready")
    if pg_isready is None:
        unavailable("no pg_isready: install Debian's postgresql-client package")
    prefix, popen_args, account = as_server_account()
    version = subprocess.run(
        [os.path.join(bin_dir, "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=SERVER_START_TIMEOUT,
    ).stdout
    major = int(re.search(r"\(PostgreSQL\) (\d+)", version).group(1))

    top = tempfile.mkdtemp(prefix="ferroloop-pg-")
    proc = None
    try:
        if account:
            os.chown(top, account.pw_uid, account.pw_gid)
        data = os.path.join(top, "data")
        initdb = subprocess.run(
            [*prefix, os.path.join(bin_dir, "initdb"), "-D", data, "-U", PG_USER, *INITDB_OPTIONS],
            cwd=top,
            env=server_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SERVER_START_TIMEOUT,
            **popen_args,
        )
        assert initdb.returncode == 0, initdb.stdout + initdb.stderr

        log_path = os.path.join(top, "server.log")
        for attempt in range(3):
            port = free_port()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [
                        *prefix,
                        os.path.join(bin_dir, "postgres"),
                        *("-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", top),
                        *(arg for setting in SERVER_SETTINGS for arg in ("-c", setting)),
                    ],
                    cwd=top,
                    env=server_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    **popen_args,
                )
            if wait_until_ready(proc, pg_isready, port, log_path):
                break
            stop_server(proc)
            output = read_log(log_path)
            # Another process may have taken the port between free_port() and the bind.
            if "could not bind" not in output or attempt == 2:
                pytest.fail(f"PostgreSQL exited with {proc.returncode}:\n{output}")
        yield Postgres(host="127.0.0.1", port=port, socket_dir=top, major=major)
    finally:
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(top, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def connected(pg: Postgres, **kwargs):
    """An asyncpg connection on the running loop, closed afterwards."""
    conn = await asyncpg.connect(**pg.params(), **kwargs)
    try:
        yield conn
    finally:
        await conn.close(timeout=CLOSE_TIMEOUT)


def check_connection(kind: str, conn) -> None:
    """asyncpg's protocol sits on a transport of the running loop, of the kind under test
    (``_transport``: asyncpg has no public accessor for it)."""
    check_loop(kind)
    check_module(kind, type(conn._transport).__module__)


async def raised(coro) -> Exception:
    """The exception that awaiting ``coro`` raises (a test compares its class and message
    with stock asyncio's); fails if it raises none."""
    try:
        await coro
    except Exception as exc:
        return exc
    raise AssertionError("no exception raised")


async def wait_for_backend(watcher, pid: int, wait_event: str) -> None:
    """Ask the server, with queries on ``watcher``, until backend ``pid`` waits on
    ``wait_event`` (each query is a round trip: no sleeping in between)."""
    while True:
        row = await watcher.fetchrow(
            "SELECT state, wait_event FROM pg_stat_activity WHERE pid = $1", pid
        )
        assert row is not None, f"backend {pid} is gone"
        if tuple(row) == ("active", wait_event):
            return


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


def test_connect_and_close(loop_kind, loop_factory, postgres):
    """Connect over TCP and over the Unix socket, ask the server who we are, close
    gracefully and abruptly; a closed connection refuses queries."""

    async def main():
        check_loop(loop_kind)
        seen = {}

        conn = await asyncpg.connect(**postgres.params())
        check_connection(loop_kind, conn)
        assert not conn.is_closed()
        assert conn.get_server_version().major == postgres.major
        seen["tcp"] = tuple(
            await conn.fetchrow(
                "SELECT current_user, current_database(), host(inet_server_addr()),"
                " inet_server_port(), pg_backend_pid()"
            )
        )
        assert seen["tcp"][-1] == conn.get_server_pid()
        await conn.close(timeout=CLOSE_TIMEOUT)
        assert conn.is_closed()
        with pytest.raises(asyncpg.InterfaceError) as info:
            await conn.fetchval("SELECT 1")
        seen["after close"] = (type(info.value), str(info.value))

        conn = await asyncpg.connect(**postgres.params(unix=True))
        check_connection(loop_kind, conn)
        # No server address: it came over the Unix socket.
        seen["unix"] = tuple(
            await conn.fetchrow("SELECT current_user, inet_server_addr(), inet_server_port()")
        )
        terminated = asyncio.get_running_loop().create_future()

        def on_termination(connection):
            terminated.set_result((connection is conn, loop_module()))

        conn.add_termination_listener(on_termination)
        conn.terminate()  # abrupt: the transport is aborted, no goodbye to the server
        assert conn.is_closed()
        is_conn, module = await terminated
        assert is_conn
        check_module(loop_kind, module)
        return seen

    seen = run_on(loop_factory, main)
    assert seen["tcp"][:4] == (PG_USER, PG_DATABASE, "127.0.0.1", postgres.port)
    assert seen["after close"] == (asyncpg.InterfaceError, "connection is closed")
    assert seen["unix"] == (PG_USER, None, None)


def test_type_round_trips(loop_kind, loop_factory, postgres):
    """Parameters go out and come back unchanged, one at a time and all in one row, with
    the server agreeing on what it received."""
    tz = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    moment = datetime.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=tz)
    document = {"name": "ferroloop", "n": [1, 2.5, None, True], "nested": {"ü": "🐍"}}
    cases = [
        ("int2", -32768),
        ("int4", -(2**31)),
        ("int4", 2**31 - 1),
        ("int8", -(2**63)),
        ("int8", 2**63 - 1),
        ("numeric", decimal.Decimal("12345678901234567890.123456789012345678901234567890")),
        ("numeric", decimal.Decimal("-0.000000000000000000001")),
        ("float8", 1.5),
        ("float8", float("inf")),
        ("bool", True),
        ("text", UNICODE),
        ("text", "ü🐍" * 50_000),
        ("bytea", bytes(range(256))),
        ("bytea", BIG),
        ("timestamptz", moment),
        ("timestamp", datetime.datetime(1999, 12, 31, 23, 59, 59)),
        ("date", datetime.date(2000, 2, 29)),
        ("interval", datetime.timedelta(days=3, hours=4, microseconds=5)),
        ("json", document),
        ("jsonb", document),
        ("int4[]", [1, 2, None, 4]),
        ("text[]", ["a", "b c", None, "ü", "", UNICODE]),
        ("int8[]", [[1, 2], [3, 4]]),
        ("int4[]", []),
        ("bytea[]", [b"\x00\xff", None, BIG[:1000]]),
        ("int4", None),
        ("text", None),
    ]

    async def main():
        check_loop(loop_kind)
        async with connected(postgres) as conn:
            check_connection(loop_kind, conn)
            # Without a codec, json comes back as the server's text.
            assert await conn.fetchval("""SELECT '{"a": [1, 2]}'::json""") == '{"a": [1, 2]}'
            for name in ("json", "jsonb"):
                await conn.set_type_codec(
                    name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
                )
            one_by_one = [await conn.fetchval(f"SELECT $1::{t}", value) for t, value in cases]
            placeholders = ", ".join(f"${i}::{t}" for i, (t, _) in enumerate(cases, 1))
            row = await conn.fetchrow(f"SELECT {placeholders}", *[v for _, v in cases])
            server = {
                "bytea": tuple(
                    await conn.fetchrow(
                        "SELECT length($1::bytea), encode(sha256($1::bytea), 'hex')", BIG
                    )
                ),
                "text": tuple(
                    await conn.fetchrow("SELECT length($1::text), octet_length($1::text)", UNICODE)
                ),
                "timestamptz": await conn.fetchval(
                    "SELECT extract(epoch FROM $1::timestamptz)", moment
                ),
                "jsonb": await conn.fetchval("SELECT $1::jsonb -> 'nested' ->> 'ü'", document),
                "array": await conn.fetchval("SELECT array_length($1::int4[], 1)", [1, None]),
                "null": await conn.fetchval("SELECT $1::text IS NULL", None),
                "literals": tuple(
                    await conn.fetchrow(
                        "SELECT NULL::int, '2000-01-01 00:00:00+00'::timestamptz,"
                        " 'NaN'::numeric, '8a6e0804-2bd0-4672-b79d-d97027f9071a'::uuid"
                    )
                ),
            }
            # A client-side encoding error leaves the connection usable.
            with pytest.raises(asyncpg.DataError, match="out of int32 range"):
                await conn.fetchval("SELECT $1::int4", 2**31)
            assert await conn.fetchval("SELECT $1::int4 + 1", 41) == 42
        return one_by_one, tuple(row), server

    one_by_one, row, server = run_on(loop_factory, main)
    for (name, expected), got, in_row in zip(cases, one_by_one, row, strict=True):
        assert got == expected, name
        assert type(got) is type(expected), name
        assert in_row == expected, name
    assert one_by_one[cases.index(("timestamptz", moment))].tzinfo == datetime.UTC
    null, epoch, nan, an_uuid = server.pop("literals")
    assert (null, epoch, an_uuid) == (
        None,
        datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC),
        uuid.UUID("8a6e0804-2bd0-4672-b79d-d97027f9071a"),
    )
    assert type(nan) is decimal.Decimal and nan.is_nan()  # NaN is not equal to itself
    assert server == {
        "bytea": (len(BIG), hashlib.sha256(BIG).hexdigest()),
        "text": (len(UNICODE), len(UNICODE.encode())),
        "timestamptz": decimal.Decimal(f"{moment.timestamp():.6f}"),
        "jsonb": "🐍",
        "array": 2,
        "null": True,
    }


def test_prepared_statements_and_fetch(loop_kind, loop_factory, postgres):
    """executemany, fetch/fetchrow/fetchval, execute's status, and prepared statements
    with their parameter and column descriptions, reused many times."""
    rows = [(i, f"item {i} ü", decimal.Decimal(i) / 100) for i in range(1, 1001)]

    async def main():
        check_loop(loop_kind)
        got = {}
        async with connected(postgres) as conn:
            check_connection(loop_kind, conn)
            await conn.execute(
                "CREATE TEMP TABLE items (id int4 PRIMARY KEY, label text, price numeric)"
            )
            await conn.executemany("INSERT INTO items VALUES ($1, $2, $3)", rows[:500])
            insert = await conn.prepare("INSERT INTO items VALUES ($1, $2, $3)")
            await insert.executemany(rows[500:])
            got["status"] = await conn.execute(
                "UPDATE items SET price = price * 2 WHERE id <= $1", 10
            )

            records = await conn.fetch("SELECT * FROM items WHERE id <= $1 ORDER BY id", 3)
            got["fetch"] = [tuple(record) for record in records]
            got["record"] = (dict(records[0]), records[0]["label"], records[0][2])
            got["fetchrow"] = tuple(await conn.fetchrow("SELECT * FROM items WHERE id = 500"))
            got["missing"] = await conn.fetchrow("SELECT * FROM items WHERE id = 0")
            got["fetchval"] = await conn.fetchval("SELECT * FROM items WHERE id = 7", column=1)
            got["totals"] = tuple(await conn.fetchrow("SELECT count(*), sum(id) FROM items"))

            stmt = await conn.prepare("SELECT id, label FROM items WHERE id = $1")
            got["parameters"] = [p.name for p in stmt.get_parameters()]
            got["attributes"] = [(a.name, a.type.name) for a in stmt.get_attributes()]
            got["reused"] = [tuple(await stmt.fetchrow(i)) for i in range(1, 1001)]
            got["stmt fetchval"] = await stmt.fetchval(999, column=1)
            got["stmt fetch"] = [tuple(r) for r in await stmt.fetch(1000)]
            got["statusmsg"] = stmt.get_statusmsg()
        return got

    got = run_on(loop_factory, main)
    assert got["status"] == "UPDATE 10"
    doubled = [(i, label, price * 2) for i, label, price in rows[:3]]
    assert got["fetch"] == doubled
    assert got["record"] == (
        {"id": 1, "label": "item 1 ü", "price": decimal.Decimal("0.02")},
        "item 1 ü",
        decimal.Decimal("0.02"),
    )
    assert got["fetchrow"] == rows[499]
    assert got["missing"] is None
    assert got["fetchval"] == "item 7 ü"
    assert got["totals"] == (1000, 500500)
    assert got["parameters"] == ["int4"]
    assert got["attributes"] == [("id", "int4"), ("label", "text")]
    assert got["reused"] == [(i, label) for i, label, _ in rows]
    assert got["stmt fetchval"] == "item 999 ü"
    assert got["stmt fetch"] == [(1000, "item 1000 ü")]
    assert got["statusmsg"] == "SELECT 1"


def test_transactions(loop_kind, loop_factory, postgres):
    """Committed and rolled-back transactions (an exception inside ``async with
    conn.transaction()``), a rolled-back savepoint in a committed transaction, a server
    error inside a transaction, and a read-only serializable one; another session sees
    only what was committed."""
    table = f"ledger_{loop_kind}"

    async def main():
        check_loop(loop_kind)
        async with connected(postgres) as conn, connected(postgres) as other:
            check_connection(loop_kind, conn)
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.execute(f"CREATE TABLE {table} (id int4 PRIMARY KEY, note text)")

            async def seen_by_other():
                return [tuple(r) for r in await other.fetch(f"SELECT * FROM {table} ORDER BY id")]

            async with conn.transaction():
                assert conn.is_in_transaction()
                await conn.execute(f"INSERT INTO {table} VALUES (1, 'committed')")
                assert await seen_by_other() == []  # not yet committed
            assert not conn.is_in_transaction()
            assert await seen_by_other() == [(1, "committed")]

            with pytest.raises(ValueError, match="roll it back"):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (2, 'rolled back')")
                    assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 2
                    raise ValueError("roll it back")
            assert not conn.is_in_transaction()

            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES (3, 'outer')")
                with pytest.raises(KeyError):
                    async with conn.transaction():  # a savepoint
                        await conn.execute(f"INSERT INTO {table} VALUES (4, 'savepoint')")
                        raise KeyError("savepoint")
                await conn.execute(f"INSERT INTO {table} VALUES (5, 'after savepoint')")

            with pytest.raises(asyncpg.exceptions.UniqueViolationError) as info:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (6, 'before the error')")
                    await conn.execute(f"INSERT INTO {table} VALUES (1, 'duplicate')")
            unique = (info.value.sqlstate, info.value.constraint_name)

            tr = conn.transaction(isolation="serializable", readonly=True)
            await tr.start()
            isolation = await conn.fetchval("SHOW transaction_isolation")
            with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError) as info:
                await conn.execute(f"INSERT INTO {table} VALUES (7, 'read only')")
            read_only = info.value.sqlstate
            await tr.rollback()

            final = await seen_by_other()
            await conn.execute(f"DROP TABLE {table}")
            return final, unique, isolation, read_only

    final, unique, isolation, read_only = run_on(loop_factory, main)
    assert final == [(1, "committed"), (3, "outer"), (5, "after savepoint")]
    assert unique == ("23505", f"{table}_pkey")
    assert isolation == "serializable"
    assert read_only == "25006"


def test_server_side_cursor(loop_kind, loop_factory, postgres):
    """A cursor iterated over 100,000 rows in prefetched batches, and one moved by hand;
    outside a transaction a cursor is refused."""
    n = 100_000

    async def main():
        check_loop(loop_kind)
        async with connected(postgres) as conn:
            check_connection(loop_kind, conn)
            query = "SELECT g, repeat('x', g % 100) FROM generate_series(1, $1) g"
            with pytest.raises(asyncpg.exceptions.NoActiveSQLTransactionError):
                await conn.cursor(query, n)
            count = total = length = 0
            async with conn.transaction():
                async for g, text in conn.cursor(query, n, prefetch=500):
                    count += 1
                    total += g
                    length += len(text)
                check_loop(loop_kind)

                cur = await conn.cursor("SELECT g FROM generate_series(1, 1000) g")
                first = [r["g"] for r in await cur.fetch(3)]
                skipped = await cur.forward(10)
                row = await cur.fetchrow()
                rest = [r["g"] for r in await cur.fetch(2000)]
                end = await cur.fetchrow()
            return count, total, length, first, skipped, row["g"], rest, end

    count, total, length, first, skipped, row, rest, end = run_on(loop_factory, main)
    assert (count, total) == (n, n * (n + 1) // 2)
    assert length == sum(g % 100 for g in range(1, n + 1))
    assert (first, skipped, row) == ([1, 2, 3], 10, 14)
    assert rest == list(range(15, 1001))
    assert end is None


def test_copy(loop_kind, loop_factory, postgres):
    """The COPY protocol both ways, megabytes through the transport: records from a list
    and from an async generator into a table, CSV from a file-like object into a table,
    and a query and a table out to an async sink and to a file-like object."""
    n = 50_000
    rng = random.Random(7)
    records = [(i, f"row {i} " + "ü" * (i % 50), rng.randbytes(64)) for i in range(n)]
    csv = "".join(f"{i},{label},\\x{payload.hex()}\n" for i, label, payload in records).encode()
    digest = hashlib.md5(
        ",".join(f"{i}{label}{payload.hex()}" for i, label, payload in records).encode()
    ).hexdigest()
    check = (
        "SELECT count(*), sum(id),"
        " md5(string_agg(id || label || encode(payload, 'hex'), ',' ORDER BY id)) FROM {}"
    )

    async def main():
        check_loop(loop_kind)
        got = {}
        async with connected(postgres) as conn:
            check_connection(loop_kind, conn)
            for table in ("from_list", "from_generator", "from_csv"):
                await conn.execute(
                    f"CREATE TEMP TABLE {table} (id int8, label text, payload bytea)"
                )

            got["list"] = await conn.copy_records_to_table("from_list", records=records)

            generator_loops = set()

            async def generate():
                for start in range(0, n, 1000):
                    generator_loops.add(loop_module())
                    await asyncio.sleep(0)
                    for record in records[start : start + 1000]:
                        yield record

            got["generator"] = await conn.copy_records_to_table(
                "from_generator", records=generate(), columns=["id", "label", "payload"]
            )
            got["csv"] = await conn.copy_to_table("from_csv", source=io.BytesIO(csv), format="csv")
            for table in ("from_list", "from_generator", "from_csv"):
                got[f"{table} check"] = tuple(await conn.fetchrow(check.format(table)))

            chunks = []
            sink_loops = set()

            async def sink(chunk):
                sink_loops.add(loop_module())
                chunks.append(bytes(chunk))
                await asyncio.sleep(0)  # a consumer that yields: the server waits for it

            got["query out"] = await conn.copy_from_query(
                "SELECT * FROM from_generator WHERE id >= $1 ORDER BY id",
                0,
                output=sink,
                format="csv",
            )
            got["query out data"] = b"".join(chunks)
            got["chunks"] = len(chunks)
            out = io.BytesIO()
            got["table out"] = await conn.copy_from_table("from_list", output=out, format="csv")
            got["table out data"] = out.getvalue()
            # Still in step with the server afterwards.
            assert await conn.fetchval("SELECT $1::text", "after copy") == "after copy"
        for module in generator_loops | sink_loops:
            check_module(loop_kind, module)
        assert generator_loops and sink_loops
        return got

    got = run_on(loop_factory, main)
    assert got["list"] == got["generator"] == got["csv"] == f"COPY {n}"
    for table in ("from_list", "from_generator", "from_csv"):
        assert got[f"{table} check"] == (n, n * (n - 1) // 2, digest), table
    assert got["query out"] == got["table out"] == f"COPY {n}"
    assert len(csv) > 5 << 20
    assert got["query out data"] == csv
    # A table has no order of its own: the same lines, in some order.
    assert sorted(got["table out data"].splitlines()) == sorted(csv.splitlines())
    assert got["chunks"] > 1


def test_copy_flow_control(loop_kind, loop_factory, postgres):
    """COPY from an async source into a table that another session has locked: the server
    reads nothing, the socket buffers fill, the transport pauses asyncpg's protocol, and
    asyncpg stops asking the source for data until the lock is gone; then all 17 MB
    arrive.  asyncpg only asks for a chunk while writing is allowed, so every ask sees at
    most the transport's high-water mark buffered."""
    chunks, lines_per_chunk = 512, 64
    rng = random.Random(11)
    payloads = [rng.randbytes(256).hex() for _ in range(chunks * lines_per_chunk)]
    table = f"flow_{loop_kind}"

    async def main():
        check_loop(loop_kind)
        async with (
            connected(postgres) as conn,
            connected(postgres) as locker,
            connected(postgres) as watcher,
        ):
            check_connection(loop_kind, conn)
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.execute(f"CREATE TABLE {table} (id int4, payload text)")
            transport = conn._transport  # asyncpg has no public accessor for it
            high = transport.get_write_buffer_limits()[1]
            buffered_at_ask = []  # what the transport held whenever asyncpg asked for more
            source_loops = set()

            async def source():
                for chunk in range(chunks):
                    buffered_at_ask.append(transport.get_write_buffer_size())
                    source_loops.add(loop_module())
                    first = chunk * lines_per_chunk
                    lines = range(first, first + lines_per_chunk)
                    yield "".join(f"{i},{payloads[i]}\n" for i in lines).encode()

            lock = locker.transaction()
            await lock.start()
            await locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            copy = asyncio.create_task(conn.copy_to_table(table, source=source(), format="csv"))
            await wait_for_backend(watcher, conn.get_server_pid(), "relation")
            # The server waits for the lock: ask it something until the client's transport
            # has more than the high-water mark buffered (it has paused the protocol).
            while transport.get_write_buffer_size() <= high:
                await watcher.fetchval("SELECT 1")
            asked_while_locked = len(buffered_at_ask)
            await lock.commit()
            status = await copy
            check = tuple(
                await conn.fetchrow(
                    f"SELECT count(*), sum(id), md5(string_agg(payload, '' ORDER BY id))"
                    f" FROM {table}"
                )
            )
            await conn.execute(f"DROP TABLE {table}")
        for module in source_loops:
            check_module(loop_kind, module)
        return high, buffered_at_ask, asked_while_locked, status, check

    high, buffered_at_ask, asked_while_locked, status, check = run_on(loop_factory, main)
    n = chunks * lines_per_chunk
    assert status == f"COPY {n}"
    assert check == (n, n * (n - 1) // 2, hashlib.md5("".join(payloads).encode()).hexdigest())
    assert len(buffered_at_ask) == chunks
    assert max(buffered_at_ask) <= high
    # Held back: far less than the whole source fits in the socket buffers.
    assert asked_while_locked < chunks


def test_pool(loop_kind, loop_factory, postgres):
    """A pool of 5 connections (min_size=max_size=5) with an ``init`` that sets a codec:
    5 acquired at once, then 50 concurrent queries through ``acquire`` and the pool's own
    fetch methods, an error inside ``acquire``; all connections idle at the end."""

    async def main():
        check_loop(loop_kind)
        init_loops = []

        async def init(conn):
            init_loops.append(loop_module())
            await conn.set_type_codec(
                "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )

        got = {}
        async with asyncpg.create_pool(
            **postgres.params(), min_size=5, max_size=5, init=init
        ) as pool:
            got["sizes"] = (pool.get_size(), pool.get_min_size(), pool.get_max_size())

            # Five holders at once: the pool hands out five different connections.
            barrier = asyncio.Barrier(5)

            async def hold():
                async with pool.acquire() as conn:
                    check_connection(loop_kind, conn)
                    pid = conn.get_server_pid()
                    await barrier.wait()
                    return pid, pool.get_idle_size()

            held = await asyncio.gather(*(hold() for _ in range(5)))
            pids = {pid for pid, _ in held}
            got["held"] = (len(pids), {idle for _, idle in held})

            async def query(i):
                if i % 2:
                    async with pool.acquire() as conn:
                        row = await conn.fetchrow(
                            "SELECT $1::int4 * 3 AS v, $2::jsonb AS doc, pg_backend_pid() AS pid",
                            i,
                            {"i": i},
                        )
                    return row["v"], row["doc"], row["pid"]
                return tuple(
                    await pool.fetchrow(
                        "SELECT $1::int4 * 3, $2::jsonb, pg_backend_pid()", i, {"i": i}
                    )
                )

            results = await asyncio.gather(*(query(i) for i in range(50)))
            got["results"] = [(v, doc) for v, doc, _ in results]
            got["pids used"] = {pid for _, _, pid in results} <= pids

            with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT 1 / 0")
            got["after error"] = await pool.fetchval("SELECT 'fine'")
            got["idle"] = pool.get_idle_size()
        got["closing"] = pool.is_closing()
        got["init loops"] = init_loops
        return got

    got = run_on(loop_factory, main)
    assert got["sizes"] == (5, 5, 5)
    assert got["held"] == (5, {0})
    assert got["results"] == [(3 * i, {"i": i}) for i in range(50)]
    assert got["pids used"]
    assert got["after error"] == "fine"
    assert got["idle"] == 5
    assert got["closing"]
    assert len(got["init loops"]) == 5
    for module in got["init loops"]:
        check_module(loop_kind, module)


def test_query_cancellation(loop_kind, loop_factory, postgres):
    """A ``pg_sleep(60)`` cancelled by ``asyncio.timeout`` once the server is sleeping, by
    ``wait_for`` and by asyncpg's own ``timeout``: asyncpg sends a cancel request over a
    second connection, and the connection is usable afterwards."""

    async def main():
        check_loop(loop_kind)
        async with connected(postgres) as conn, connected(postgres) as watcher:
            check_connection(loop_kind, conn)
            pid = conn.get_server_pid()
            got = {}

            async def expire_when_sleeping(deadline):
                await wait_for_backend(watcher, pid, "PgSleep")
                deadline.reschedule(asyncio.get_running_loop().time())

            with pytest.raises(TimeoutError):
                async with asyncio.timeout(None) as deadline:
                    expirer = asyncio.create_task(expire_when_sleeping(deadline))
                    await conn.fetchval("SELECT pg_sleep(60)")
            await expirer
            # Answered only once the server has given up the sleep.
            got["timeout"] = await conn.fetchval("SELECT $1::text", "after timeout")

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.fetchval("SELECT pg_sleep(60)"), EXPIRING)
            got["wait_for"] = await conn.fetchval("SELECT $1::text", "after wait_for")

            with pytest.raises(TimeoutError):
                await conn.fetchval("SELECT pg_sleep(60)", timeout=EXPIRING)
            got["own timeout"] = await conn.fetchval("SELECT $1::text", "after own timeout")

            got["still in step"] = [await conn.fetchval("SELECT $1::int4", i) for i in range(5)]
            got["state"] = tuple(
                await watcher.fetchrow(
                    "SELECT state, query FROM pg_stat_activity WHERE pid = $1", pid
                )
            )
            got["same backend"] = conn.get_server_pid() == pid
            return got

    got = run_on(loop_factory, main)
    assert got == {
        "timeout": "after timeout",
        "wait_for": "after wait_for",
        "own timeout": "after own timeout",
        "still in step": [0, 1, 2, 3, 4],
        "state": ("idle", "SELECT $1::int4"),
        "same backend": True,
    }


def test_listen_notify(loop_kind, loop_factory, postgres):
    """LISTEN/NOTIFY: plain and coroutine listeners run on the loop under test, in order,
    with each payload once; notifications from a rolled-back transaction never come, and
    a removed listener hears nothing more."""

    async def main():
        check_loop(loop_kind)
        loop = asyncio.get_running_loop()
        received = asyncio.Queue()
        async_received = asyncio.Queue()
        async with connected(postgres) as conn, connected(postgres) as notifier:
            check_connection(loop_kind, conn)

            def listener(connection, pid, channel, payload):
                assert connection is conn
                received.put_nowait((pid, channel, payload, asyncio.get_running_loop()))

            async def async_listener(connection, pid, channel, payload):
                await asyncio.sleep(0)
                async_received.put_nowait((channel, payload, loop_module()))

            await conn.add_listener("events", listener)
            await conn.add_listener("events", async_listener)
            await conn.add_listener("sentinel", listener)

            await notifier.execute("NOTIFY events, 'hello'")
            await notifier.execute("SELECT pg_notify('events', $1)", UNICODE)
            await notifier.execute("SELECT pg_notify('events', $1)", "x" * 7000)
            async with notifier.transaction():
                for i in range(3):
                    await notifier.execute(f"NOTIFY events, 'in transaction {i}'")
                await notifier.execute("NOTIFY events, 'in transaction 0'")  # folded
            with pytest.raises(ZeroDivisionError):
                async with notifier.transaction():
                    await notifier.execute("NOTIFY events, 'rolled back'")
                    raise ZeroDivisionError
            await conn.execute("NOTIFY events, 'from myself'")
            await notifier.execute("NOTIFY sentinel, 'first'")

            got = []
            while not got or got[-1][2] != "first":
                got.append(await received.get())
            async_got = [await async_received.get() for _ in range(len(got) - 1)]

            # Removed: "unheard" is sent before the sentinel, and would arrive before it.
            await conn.remove_listener("events", listener)
            await conn.remove_listener("events", async_listener)
            await notifier.execute("NOTIFY events, 'unheard'")
            await notifier.execute("NOTIFY sentinel, 'second'")
            after_removal = await received.get()
            pids = {"notifier": notifier.get_server_pid(), "conn": conn.get_server_pid()}
            assert received.empty() and async_received.empty()
        return pids, got, async_got, after_removal, loop

    pids, got, async_got, after_removal, loop = run_on(loop_factory, main)
    payloads = [
        "hello",
        UNICODE,
        "x" * 7000,
        "in transaction 0",
        "in transaction 1",
        "in transaction 2",
        "from myself",
    ]
    assert [(pid, channel, payload) for pid, channel, payload, _ in got] == [
        *[(pids["notifier"], "events", payload) for payload in payloads[:-1]],
        (pids["conn"], "events", "from myself"),
        (pids["notifier"], "sentinel", "first"),
    ]
    for *_, listener_loop in [*got, after_removal]:
        assert listener_loop is loop
        check_module(loop_kind, type(listener_loop).__module__)
    assert [(channel, payload) for channel, payload, _ in async_got] == [
        ("events", payload) for payload in payloads
    ]
    for *_, module in async_got:
        check_module(loop_kind, module)
    assert after_removal[:3] == (pids["notifier"], "sentinel", "second")


def test_server_errors(loop_kind, loop_factory, postgres):
    """Server-side errors arrive as asyncpg's exception classes with the right SQLSTATE and
    fields, and leave the connection usable; notices reach a log listener on the loop."""

    async def main():
        check_loop(loop_kind)
        errors = {}
        notices = []
        async with connected(postgres) as conn:
            check_connection(loop_kind, conn)

            def on_log(connection, message):
                notices.append((type(message), message.severity, message.message, loop_module()))

            conn.add_log_listener(on_log)

            async def expect(name, exc_class, coro):
                with pytest.raises(exc_class) as info:
                    await coro
                exc = info.value
                errors[name] = (type(exc), exc.sqlstate, exc.message)
                assert not conn.is_in_transaction()
                assert await conn.fetchval("SELECT $1::text", name) == name  # still usable
                return exc

            await expect(
                "division",
                asyncpg.exceptions.DivisionByZeroError,
                conn.fetchval("SELECT 1 / $1::int4", 0),
            )
            syntax = await expect(
                "syntax", asyncpg.exceptions.PostgresSyntaxError, conn.execute("SELEC 1")
            )
            await expect(
                "table",
                asyncpg.exceptions.UndefinedTableError,
                conn.fetch("SELECT * FROM no_such_table"),
            )
            raised = await expect(
                "raise",
                asyncpg.exceptions.RaiseError,
                conn.execute(
                    "DO $$ BEGIN RAISE EXCEPTION USING MESSAGE = 'custom ü',"
                    " DETAIL = 'the detail', HINT = 'the hint'; END $$"
                ),
            )
            stmt = await conn.prepare("SELECT 10 / $1::int4")
            await expect("prepared", asyncpg.exceptions.DivisionByZeroError, stmt.fetchval(0))
            assert await stmt.fetchval(5) == 2
            await conn.execute("CREATE TEMP TABLE t (id int4 PRIMARY KEY)")
            await expect(
                "executemany",
                asyncpg.exceptions.UniqueViolationError,
                conn.executemany("INSERT INTO t VALUES ($1)", [(1,), (2,), (1,)]),
            )
            # executemany runs in one implicit transaction: nothing of it stayed.
            assert await conn.fetchval("SELECT count(*) FROM t") == 0

            await conn.execute("DO $$ BEGIN RAISE NOTICE 'note %', 42; END $$")
            # Log listeners are called with call_soon: one more round trip lets it run.
            assert await conn.fetchval("SELECT 1") == 1
            conn.remove_log_listener(on_log)
        return errors, syntax.position, (raised.detail, raised.hint), notices

    errors, position, detail_hint, notices = run_on(loop_factory, main)
    exc = asyncpg.exceptions
    assert errors == {
        "division": (exc.DivisionByZeroError, "22012", "division by zero"),
        "syntax": (exc.PostgresSyntaxError, "42601", 'syntax error at or near "SELEC"'),
        "table": (exc.UndefinedTableError, "42P01", 'relation "no_such_table" does not exist'),
        "raise": (exc.RaiseError, "P0001", "custom ü"),
        "prepared": (exc.DivisionByZeroError, "22012", "division by zero"),
        "executemany": (
            exc.UniqueViolationError,
            "23505",
            'duplicate key value violates unique constraint "t_pkey"',
        ),
    }
    assert position == "1"
    assert detail_hint == ("the detail", "the hint")
    assert [notice[:3] for notice in notices] == [(asyncpg.PostgresLogMessage, "NOTICE", "note 42")]
    check_module(loop_kind, notices[0][3])


def test_backend_terminated(loop_kind, loop_factory, postgres):
    """``pg_terminate_backend`` from another session: an idle connection learns that it is
    closed (termination listener on the loop) and refuses the next query; a connection in
    the middle of a query gets ConnectionDoesNotExistError carrying the server's FATAL
    error; nothing hangs and nothing is logged."""

    async def main():
        check_loop(loop_kind)
        loop = asyncio.get_running_loop()
        got = {}
        async with (
            connected(postgres) as admin,
            connected(postgres) as idle,
            connected(postgres) as busy,
        ):
            check_connection(loop_kind, idle)

            terminated = loop.create_future()

            def on_termination(connection):
                terminated.set_result((connection is idle, loop_module()))

            idle.add_termination_listener(on_termination)
            # With a timeout, pg_terminate_backend returns once the backend has exited.
            got["idle terminated"] = await admin.fetchval(
                "SELECT pg_terminate_backend($1, $2)", idle.get_server_pid(), 20_000
            )
            got["listener"] = await terminated
            got["idle closed"] = idle.is_closed()
            exc = await raised(idle.fetchval("SELECT 1"))
            got["idle next"] = (type(exc), str(exc))

            sleeping = asyncio.create_task(busy.fetchval("SELECT pg_sleep(60)"))
            await wait_for_backend(admin, busy.get_server_pid(), "PgSleep")
            got["busy terminated"] = await admin.fetchval(
                "SELECT pg_terminate_backend($1, $2)", busy.get_server_pid(), 20_000
            )
            exc = await raised(sleeping)
            cause = exc.__cause__
            got["busy"] = (type(exc), str(exc), type(cause), cause.sqlstate)
            got["busy closed"] = busy.is_closed()
            exc = await raised(busy.fetchval("SELECT 1"))
            got["busy next"] = (type(exc), str(exc))
            got["admin"] = await admin.fetchval("SELECT $1::text", "admin still fine")
        return got

    got = run_on(loop_factory, main)
    is_idle, module = got.pop("listener")
    assert is_idle
    check_module(loop_kind, module)
    fatal = "terminating connection due to administrator command"
    assert got == {
        "idle terminated": True,
        "idle closed": True,
        "idle next": (asyncpg.InterfaceError, "connection is closed"),
        "busy terminated": True,
        "busy": (
            asyncpg.ConnectionDoesNotExistError,
            f"connection was closed in the middle of operation: {fatal}",
            asyncpg.exceptions.AdminShutdownError,
            "57P01",
        ),
        "busy closed": True,
        "busy next": (asyncpg.InterfaceError, "connection is closed"),
        "admin": "admin still fine",
    }
