"""Differential, seeded randomized test of the loop's low-level socket operations
(``sock_recv``, ``sock_recv_into``, ``sock_sendall``, ``sock_recvfrom``,
``sock_recvfrom_into``, ``sock_sendto``): ferroloop against stock asyncio, the oracle.

A scenario is a pair of connected non-blocking sockets and a list of *episodes* generated
from ``random.Random`` with a fixed base seed. Stream pairs: ``socket.socketpair()``
("unix"), TCP on 127.0.0.1 ("tcp"), and a socketpair wrapped in a ``socket.socket``
subclass ("unix-subclass", which ferroloop serves through asyncio's Python waits instead
of its native readers); SO_SNDBUF/SO_RCVBUF are shrunk to 4 KiB, so a large
``sock_sendall`` has to wait for the peer to read. Datagram pairs: an AF_UNIX
``SOCK_DGRAM`` socketpair ("unix-dgram") and two connected UDP sockets ("udp").

An episode is a short sequence of operations on one direction (sender ``x``, receiver
``y``) with seeded parameters, which starts and ends with nothing in flight, no task
pending and nothing registered on either descriptor:

- transfers of 0..300 KiB (bytes, bytearray, memoryview, memoryview slices) by one or
  more ``sock_sendall`` against a reader cycling through ``sock_recv(n)``,
  ``sock_recv_into(bytearray)`` and ``sock_recv_into(memoryview slice)``, one way or
  both ways at once (a reader and a writer registered on each socket);
- a read that waits, then data; reads of various sizes (including 0 and more than is
  there) on data already queued; ``wait_for``/``timeout`` around reads that finish at once;
- cancellation of a waiting read (``task.cancel()`` with and without a message, before
  its first step, right after data arrived, followed at once by a new read,
  ``asyncio.wait_for`` and ``asyncio.timeout`` expiring), then every byte must still
  arrive; cancellation of a waiting ``sock_sendall`` (``cancel()``, ``wait_for``,
  ``timeout``, ``remove_writer()``, a second ``sock_sendall`` replacing its writer),
  then the stream must be a prefix of the cancelled data followed by the next data;
- two waiting reads on one socket, or a read and a user ``add_reader`` callback (the
  later one replaces the earlier: stock's selector key has one reader), a read alongside
  a user ``add_writer`` callback;
- as the last episode: the peer shuts down its write side, closes, or resets the
  connection (SO_LINGER 0, or closing with unread data), or the socket is closed locally
  while a read or a ``sock_sendall`` waits;
- datagrams: ``sock_sendall``/``sock_sendto``/``send`` against every read kind with
  truncation, waiting reads, cancelled reads, two waiting reads, oversized datagrams.

Each scenario runs twice on stock asyncio and once on ferroloop. The driver records what
a caller sees, independent of chunking: the bytes received per episode (length and
sha256), the results of ``sock_sendall`` (None) and of the reads where the model makes
them exact, exception types and messages, whether a task is still pending where the
model says it must be, the user callbacks' calls, and the registrations afterwards
(``remove_reader``/``remove_writer`` return False, the selector has no key). The
model's predictions are checked on stock: if stock does not do what the model says, the
model (this test) is wrong and the test fails with "TEST BUG". Timing: the driver waits
(bounded by ``asyncio.timeout``) for tasks to finish, for the peer's receive queue to
hold what was sent (MSG_PEEK), or for one full poll of the loop (``settle()``: a
byte on a private socketpair, seen by ``add_reader``) before asserting that something
is still pending; it never sleeps for a fixed time. Only facts identical in both stock
runs are compared.

Hand-written scenarios pin the edge cases (each also checks that stock does, in that
scenario, what it is meant to test), and a table of bad inputs compares exception types
and messages. Among them, the four differences this test first found in ferroloop's
native reads: ``sock_recv(sock, 0)`` must return ``b''`` without a syscall (a zero-byte
``recv`` waits, and consumes a datagram); reads of more than 256 KiB come whole; ``n``
of 2**63 and above raises ``OverflowError``; a socket subclass whose ``recv`` says "would
block" with data queued is asked again (a level-triggered wait).
"""

from __future__ import annotations

import array
import asyncio
import errno
import hashlib
import random
import re
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass

import conftest
import pytest
from conftest import check_loop, factory_for

# Last resort: a test that wedges the loop itself (so that no asyncio timeout can fire)
# ends the pytest process with every thread's traceback instead of blocking CI.
WATCHDOG_TIMEOUT = 120.0

pytestmark = pytest.mark.usefixtures("watchdog")

BASE_SEED = 20261215  # Fixed: a failure reproduces from its test id.
STREAM_SEEDS = {"unix": 32, "tcp": 26, "unix-subclass": 14}
DGRAM_SEEDS = {"unix-dgram": 14, "udp": 14}

RUN_TIMEOUT = 30.0  # One scenario on one loop.
WAIT_TIMEOUT = 5.0  # One predicted state.
SHORT = 0.002  # The timeout of wait_for()/timeout() around an operation that waits.

SMALL_BUF = 4096  # SO_SNDBUF and SO_RCVBUF of stream sockets.
# Upper bound on the bytes the kernel holds for one direction of a stream pair with
# SMALL_BUF buffers while the peer does not read (measured on Linux: at most 13 KiB for
# TCP, 8 KiB for Unix sockets): a sock_sendall of more than this waits.
CAPACITY = 32 * 1024
# A send this small into an empty direction is taken whole and arrives in one piece.
ATOMIC = 1000
MAX_SEND = 300 * 1024
DRAIN_N = 65536

MISSING = "<missing>"
EMPTY = b""


# --------------------------------------------------------------------------------------
# Sockets
# --------------------------------------------------------------------------------------


class SubSocket(socket.socket):
    """A plain subclass: ferroloop waits for it through asyncio's Python code."""


class FlakySocket(socket.socket):
    """Its ``recv()`` raises BlockingIOError on every second call, even with data ready
    (as a wrapper with its own buffering may): asyncio's level-triggered reader simply
    calls it again while the socket stays readable."""

    def recv(self, n, *args):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls % 2 == 0:
            raise BlockingIOError(errno.EAGAIN, "spurious")
        return super().recv(n, *args)


def wrap(sock: socket.socket, cls: type) -> socket.socket:
    return cls(sock.family, sock.type, sock.proto, fileno=sock.detach())


def small_buffers(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUF)


def make_pair(variant: str) -> tuple[socket.socket, socket.socket]:
    if variant == "tcp":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        small_buffers(listener)  # Accepted sockets inherit them (window small from start).
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        small_buffers(client)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
        listener.close()
        a, b = client, server
    elif variant == "udp":
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.connect(b.getsockname())
        b.connect(a.getsockname())
    elif variant == "unix-dgram":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    elif variant == "unix-big":
        a, b = socket.socketpair()
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    elif variant == "unix-dgram-big":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    else:
        a, b = socket.socketpair()
        small_buffers(a)
        small_buffers(b)
        if variant == "unix-subclass":
            a, b = wrap(a, SubSocket), wrap(b, SubSocket)
        elif variant == "unix-flaky":
            a, b = wrap(a, FlakySocket), wrap(b, FlakySocket)
        else:
            assert variant == "unix", variant
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def payload(size: int, seed: int, form: str = "bytes"):
    data = random.Random(seed).randbytes(size)
    if form == "bytearray":
        return bytearray(data)
    if form == "memoryview":
        return memoryview(data)
    if form == "memoryview_slice":  # A contiguous slice of a larger bytearray.
        return memoryview(bytearray(b"<" + data + b">"))[1 : size + 1]
    assert form == "bytes", form
    return data


def digest(data) -> tuple:
    data = bytes(data)
    return (len(data), hashlib.sha256(data).hexdigest()[:16])


# Messages naming a transport differ between the loops only in its class name and in
# descriptor numbers.
_TRANSPORT = re.compile(r"<_?\w*SocketTransport fd=\d+")


def exc_fact(exc: BaseException) -> tuple:
    text = _TRANSPORT.sub("<transport fd=N", str(exc))
    text = re.sub(r"File descriptor \d+", "File descriptor N", text)
    return ("raised", type(exc).__name__, text)


def outcome(task: asyncio.Future, show: Callable | None = None) -> tuple:
    """What awaiting the finished ``task`` gives: ("ok", result), ("raised", type,
    message) or ("cancelled", message)."""
    if task.cancelled():
        try:
            task.result()
        except asyncio.CancelledError as exc:
            return ("cancelled", str(exc))
    exc = task.exception()
    if exc is not None:
        return exc_fact(exc)
    return ("ok", show(task.result()) if show else task.result())


def selector_events(loop, fd: int) -> int:
    """The events the loop's selector (what transports' repr() consults) has for fd."""
    try:
        return loop._selector.get_key(fd).events
    except KeyError:
        return 0


class Read:
    """One read of up to ``n`` bytes: ``sock_recv``, ``sock_recv_into`` (a bytearray, or
    a memoryview slice of a larger one), ``sock_recvfrom``, ``sock_recvfrom_into``."""

    def __init__(self, loop, sock, kind: str, n: int, nbytes: int = 0):
        self.kind, self.n, self.nbytes = kind, n, nbytes
        self.outer = None
        if kind == "recv":
            self.coro = loop.sock_recv(sock, n)
        elif kind == "recv_into":
            self.buf = bytearray(n)
            self.coro = loop.sock_recv_into(sock, self.buf)
        elif kind == "recv_into_view":
            self.outer = bytearray(b"\xee" * (n + 8))
            self.buf = memoryview(self.outer)[3 : 3 + n]
            self.coro = loop.sock_recv_into(sock, self.buf)
        elif kind == "recvfrom":
            self.coro = loop.sock_recvfrom(sock, n)
        elif kind == "recvfrom_into":
            self.buf = bytearray(n)
            self.coro = loop.sock_recvfrom_into(sock, self.buf, nbytes)
        else:
            raise AssertionError(kind)

    def data(self, result) -> bytes:
        if self.kind == "recv":
            return result
        if self.kind == "recvfrom":
            return result[0]
        count = result[0] if self.kind == "recvfrom_into" else result
        return bytes(self.buf[:count])

    def intact(self) -> bool:
        """Whether the bytes around a memoryview slice were left alone."""
        if self.outer is None:
            return True
        return self.outer[:3] == b"\xee" * 3 and self.outer[3 + self.n :] == b"\xee" * 5

    def limit(self) -> int:
        """The most this read may return."""
        return (self.nbytes or self.n) if self.kind == "recvfrom_into" else self.n


# --------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Episode:
    name: str
    params: tuple

    def kw(self) -> dict:
        return dict(self.params)

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.params)})"


def E(name: str, **params) -> Episode:
    return Episode(name, tuple(params.items()))


@dataclass
class Scenario:
    name: str
    variant: str
    episodes: list[Episode]

    def describe(self) -> str:
        lines = [f"scenario {self.name} (variant {self.variant}, base seed {BASE_SEED})"]
        lines += [f"  episode {i}: {e!r}" for i, e in enumerate(self.episodes)]
        return "\n".join(lines)


def is_dgram(variant: str) -> bool:
    return "dgram" in variant or variant == "udp"


def other(side: str) -> str:
    return "b" if side == "a" else "a"


# --------------------------------------------------------------------------------------
# Running a scenario on one loop
# --------------------------------------------------------------------------------------


class Stuck(Exception):
    """A state the model predicts was not reached in time."""


@dataclass
class RunResult:
    facts: dict
    stuck: str | None
    model_errors: list[str]


class Run:
    def __init__(self, kind: str, scenario: Scenario):
        self.kind = kind
        self.sc = scenario
        self.facts: dict = {}
        self.model_errors: list[str] = []
        self.stuck: str | None = None
        self.tasks: list[asyncio.Future] = []
        self.contexts: list[dict] = []
        self.finished: list[str] = []  # Named tasks, in the order they finished.
        self.ep = -1
        self.seq = 0

    # -- facts ---------------------------------------------------------------------------

    def fact(self, label: str, value) -> None:
        self.facts[(self.ep, self.seq, label)] = value
        self.seq += 1

    def check(self, label: str, value, predicted) -> None:
        """A fact the model predicts: stock must agree, else the model is wrong."""
        self.fact(label, value)
        if value != predicted and self.kind == "asyncio":
            self.model_errors.append(
                f"episode {self.ep} {label}: {value!r}, model predicts {predicted!r}"
            )

    def stuck_at(self, what: str) -> None:
        self.stuck = f"episode {self.ep} ({self.sc.episodes[self.ep]!r}): {what}"
        raise Stuck(self.stuck)

    # -- waiting -------------------------------------------------------------------------

    async def settle(self) -> None:
        """Returns after a full poll of the loop (everything ready now is reported in it)
        and after the tasks that poll woke have run."""
        loop = asyncio.get_running_loop()
        r, w = self.barrier
        seen = loop.create_future()

        def ready():
            if not seen.done():
                seen.set_result(None)

        loop.add_reader(r.fileno(), ready)
        w.send(b"!")
        try:
            async with asyncio.timeout(WAIT_TIMEOUT):
                await seen
        except TimeoutError:
            self.stuck_at("the loop never polled")
        finally:
            loop.remove_reader(r.fileno())
        r.recv(64)
        for _ in range(3):
            await asyncio.sleep(0)

    async def wait_tasks(self, what: str, *tasks) -> None:
        try:
            async with asyncio.timeout(WAIT_TIMEOUT):
                await asyncio.wait(tasks)
        except TimeoutError:
            self.stuck_at(f"still waiting for {what}")

    async def now(self, what: str, aw, show: Callable | None = None) -> tuple:
        """Await ``aw`` (bounded): ("ok", result) or the exception."""
        try:
            async with asyncio.timeout(WAIT_TIMEOUT) as cm:
                result = await aw
        except TimeoutError as exc:
            if cm.expired():
                self.stuck_at(f"still waiting for {what}")
            return exc_fact(exc)
        except Exception as exc:
            return exc_fact(exc)
        return ("ok", show(result) if show else result)

    async def peek_wait(self, side: str, count: int) -> None:
        """Wait until ``side``'s receive queue holds ``count`` bytes."""
        sock = self.socks[side]
        try:
            async with asyncio.timeout(WAIT_TIMEOUT):
                while True:
                    try:
                        queued = len(socket.socket.recv(sock, count, socket.MSG_PEEK))
                    except BlockingIOError:
                        queued = 0
                    if queued >= count:
                        return
                    await self.settle()
        except TimeoutError:
            self.stuck_at(f"{count} bytes never arrived")

    async def drain(self, side: str, got: bytearray, done: Callable[[bytearray], bool]):
        """Read with sock_recv into ``got`` until ``done(got)``."""
        loop = asyncio.get_running_loop()
        sock = self.socks[side]
        try:
            async with asyncio.timeout(WAIT_TIMEOUT):
                while not done(got):
                    chunk = await loop.sock_recv(sock, DRAIN_N)
                    if not chunk:
                        self.check("unexpected EOF while draining", len(got), None)
                        return
                    got += chunk
        except TimeoutError:
            self.stuck_at(f"draining {side}: {len(got)} bytes so far")

    async def drain_rest(self, side: str, expected: bytes, got) -> None:
        """Read the rest of ``expected`` (``got`` arrived already); every byte must."""
        got = bytearray(got)
        await self.drain(side, got, lambda g: len(g) >= len(expected))
        self.check("stream", digest(got), digest(expected))

    # -- operations ----------------------------------------------------------------------

    def task(self, coro, name: str | None = None) -> asyncio.Future:
        """A task; a named one's completion is recorded in order (only where the order
        is fixed by the episode)."""
        t = asyncio.ensure_future(coro)
        self.tasks.append(t)
        if name is not None:
            t.add_done_callback(lambda _: self.finished.append(name))
        return t

    def start_read(self, side: str, kind: str, n: int, nbytes: int = 0, name=None):
        op = Read(asyncio.get_running_loop(), self.socks[side], kind, n, nbytes)
        return op, self.task(op.coro, name)

    def send_now(self, side: str, data: bytes) -> bytes:
        """A plain send() of a small message into an empty direction, before the loop
        runs again. A Unix socket takes it whole; TCP may keep part of it back while its
        last segments are unacknowledged: what it did not take is returned."""
        try:
            sent = self.socks[side].send(data)
        except BlockingIOError:
            sent = 0
        if self.sc.variant != "tcp":
            self.check("sent whole", sent, len(data))
        return data[sent:]

    async def send_rest(self, side: str, rest: bytes) -> None:
        """sock_sendall of what send_now() left (nothing, nearly always)."""
        if rest:
            loop = asyncio.get_running_loop()
            res = await self.now("a send", loop.sock_sendall(self.socks[side], rest))
            if res != ("ok", None):
                self.check("the rest sent", res, ("ok", None))

    async def raw_send(self, side: str, data: bytes) -> None:
        await self.send_rest(side, self.send_now(side, data))

    async def until(self, what: str, predicate: Callable[[], bool]) -> None:
        """Wait, one poll of the loop at a time, for what the model predicts."""
        try:
            async with asyncio.timeout(WAIT_TIMEOUT):
                while not predicate():
                    await self.settle()
        except TimeoutError:
            self.stuck_at(f"still waiting for {what}")

    def read_fact(self, op: Read, result_outcome: tuple) -> tuple:
        if result_outcome[0] != "ok":
            return result_outcome
        return ("ok", digest(op.data(result_outcome[1])), op.intact())

    def addr_name(self, addr):
        for side, sock in self.socks.items():
            if sock.family == socket.AF_INET and addr == sock.getsockname():
                return side
        return repr(addr)

    def expected_read(self, op: Read, data: bytes, sender: str) -> tuple:
        got = data[: op.limit()]
        if op.kind.startswith("recvfrom"):
            addr = sender if self.sc.variant == "udp" else "None"
            return ("ok", digest(got), addr)
        return ("ok", digest(got), True)

    def dgram_fact(self, op: Read, result_outcome: tuple) -> tuple:
        if result_outcome[0] != "ok":
            return result_outcome
        result = result_outcome[1]
        data = op.data(result)
        if op.kind.startswith("recvfrom"):
            return ("ok", digest(data), self.addr_name(result[1]))
        return ("ok", digest(data), op.intact())

    def check_registrations(self) -> None:
        loop = asyncio.get_running_loop()
        for side, sock in sorted(self.socks.items()):
            fd = sock.fileno()
            if fd < 0:
                continue
            state = (selector_events(loop, fd), loop.remove_reader(fd), loop.remove_writer(fd))
            self.check(f"{side}: selector events, remove_reader, remove_writer", state, (0,) * 3)

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> RunResult:
        check_loop(self.kind)
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: self.contexts.append(context))
        self.barrier = socket.socketpair()
        for s in self.barrier:
            s.setblocking(False)
        a, b = make_pair(self.sc.variant)
        self.socks = {"a": a, "b": b}
        try:
            for i, episode in enumerate(self.sc.episodes):
                self.ep, self.seq = i, 0
                try:
                    await getattr(self, "ep_" + episode.name)(**episode.kw())
                except Stuck:
                    break
                except Exception as exc:
                    self.check("episode raised", exc_fact(exc), None)
                    break
                if self.finished:
                    self.fact("named tasks finished in order", self.finished)
                    self.finished = []
                self.check("tasks left pending", sum(not t.done() for t in self.tasks), 0)
                self.check_registrations()
                handler = [
                    (c.get("message"), type(c.get("exception")).__name__) for c in self.contexts
                ]
                self.check("exception handler calls", handler, [])
        finally:
            await self.cleanup()
        self.ep, self.seq = -1, 0
        self.fact("stuck", self.stuck)
        return RunResult(self.facts, self.stuck, self.model_errors)

    async def cleanup(self) -> None:
        pending = [t for t in self.tasks if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=WAIT_TIMEOUT)
        for t in self.tasks:
            if t.done() and not t.cancelled():
                t.exception()  # Retrieved: no "exception was never retrieved" log.
        for s in (*self.socks.values(), *self.barrier):
            s.close()

    # -- stream episodes -----------------------------------------------------------------

    async def reads(self, side: str, plan: tuple, total: int) -> tuple:
        """Read ``total`` bytes cycling through ``plan`` ((kind, n), ...)."""
        loop = asyncio.get_running_loop()
        got = bytearray()
        within = True
        i = 0
        while len(got) < total:
            kind, n = plan[i % len(plan)]
            i += 1
            op = Read(loop, self.socks[side], kind, n)
            data = op.data(await op.coro)
            if not data:
                raise EOFError(f"EOF after {len(got)} of {total} bytes")
            within = within and len(data) <= n and op.intact()
            got += data
        return bytes(got), within

    async def writes(self, side: str, payloads: list) -> tuple:
        loop = asyncio.get_running_loop()
        return tuple([await loop.sock_sendall(self.socks[side], p) for p in payloads])

    async def ep_transfer(self, x, sizes, forms, seeds, plan, reader_first, both):
        directions = [(x, other(x))] + ([(other(x), x)] if both else [])
        jobs = []
        for k, (s, r) in enumerate(directions):
            payloads = [
                payload(n, seed + k, f) for n, f, seed in zip(sizes, forms, seeds, strict=True)
            ]
            expected = b"".join(bytes(p) for p in payloads)
            if reader_first:
                rt = self.task(self.reads(r, plan, len(expected)))
                wt = self.task(self.writes(s, payloads))
            else:
                wt = self.task(self.writes(s, payloads))
                rt = self.task(self.reads(r, plan, len(expected)))
            jobs.append((expected, rt, wt))
        await self.wait_tasks("the transfer", *[t for _, rt, wt in jobs for t in (rt, wt)])
        for k, (expected, rt, wt) in enumerate(jobs):
            self.check(
                f"direction {k}: sock_sendall results", outcome(wt), ("ok", (None,) * len(sizes))
            )
            result = outcome(rt, lambda r: (digest(r[0]), r[1]))
            self.check(f"direction {k}: received", result, ("ok", (digest(expected), True)))

    async def ep_pending_read(self, x, read, size, seed, send, form):
        loop = asyncio.get_running_loop()
        y = other(x)
        op, t = self.start_read(y, *read)
        await self.settle()
        self.check("pending before data", t.done(), False)
        data = payload(size, seed)
        if send == "raw":
            await self.raw_send(x, data)
        else:
            sent = await self.now(
                "sock_sendall", loop.sock_sendall(self.socks[x], payload(size, seed, form))
            )
            self.check("sock_sendall", sent, ("ok", None))
        await self.wait_tasks("the read", t)
        await self.after_read(op, t, y, data)

    async def after_read(self, op: Read, t, y: str, data: bytes) -> None:
        """Record the read of a small message (exact on Unix sockets, where it arrives in
        one piece; a non-empty prefix on TCP), then read the rest."""
        res = outcome(t)
        got = op.data(res[1]) if res[0] == "ok" else EMPTY
        if self.sc.variant == "tcp":
            ok = res[0] == "ok" and 0 < len(got) <= op.limit() and data.startswith(got)
            self.check("read: a non-empty prefix", (ok, op.intact()), (True, True))
        else:
            self.check("read", self.read_fact(op, res), self.expected_read(op, data, ""))
        await self.drain_rest(y, data, got)

    async def read_timing_out(self, y: str, read, how: str) -> None:
        """A read on ``y`` bounded by ``asyncio.wait_for`` or ``asyncio.timeout`` (``how``),
        with nothing to read: it must time out."""
        op = Read(asyncio.get_running_loop(), self.socks[y], *read)
        try:
            if how == "wait_for":
                await asyncio.wait_for(op.coro, SHORT)
            else:
                async with asyncio.timeout(SHORT):
                    await op.coro
            res = ("returned",)
        except Exception as exc:
            res = exc_fact(exc)
        self.check("timed out", res, ("raised", "TimeoutError", ""))

    async def ep_cancel_read(self, x, read, how, size, seed, read2):
        loop = asyncio.get_running_loop()
        y = other(x)
        fd = self.socks[y].fileno()
        data = payload(size, seed)
        sent = False
        got = EMPTY
        rest = EMPTY
        if how in ("wait_for", "timeout"):
            await self.read_timing_out(y, read, how)
            self.check("remove_reader after the timeout", loop.remove_reader(fd), False)
        else:
            op, t = self.start_read(y, *read, name="read")
            if how != "before_start":
                await self.settle()
                self.check("pending", t.done(), False)
            if how == "after_data":
                rest = self.send_now(x, data)  # Not seen by the loop yet: the cancel wins.
                sent = True
            message = "stop reading" if how == "with_message" else None
            t.cancel(message)
            second = self.start_read(y, *read2, name="next") if how == "then_read" else None
            await self.wait_tasks("the cancelled read", t)
            self.check("cancelled read", outcome(t), ("cancelled", message or ""))
            if second is not None:
                op2, t2 = second
                await self.settle()
                self.check("the next read is pending", t2.done(), False)
                await self.raw_send(x, data)
                sent = True
                await self.wait_tasks("the next read", t2)
                await self.after_read(op2, t2, y, data)
                return
            self.check("remove_reader after the cancel", loop.remove_reader(fd), False)
        if not sent:
            rest = self.send_now(x, data)
        await self.send_rest(x, rest)
        await self.drain_rest(y, data, got)

    async def ep_two_readers(self, x, first, second, order, size, seed):
        loop = asyncio.get_running_loop()
        y = other(x)
        fd = self.socks[y].fileno()
        calls: dict[str, list] = {"first": [], "second": []}

        def install(tag, spec):
            if spec == "user":

                def callback():
                    calls[tag].append(loop.remove_reader(fd))

                loop.add_reader(fd, callback)
                return None
            return self.start_read(y, *spec, name=tag)

        f = install("first", first)
        await self.settle()
        s = install("second", second)
        await self.settle()
        for tag, r in (("first", f), ("second", s)):
            if r is not None:
                self.check(f"{tag} read pending", r[1].done(), False)
        data = payload(size, seed)
        live = s  # The second replaced the first: it is the one the loop notifies.
        if order == "cancel_first":
            f[1].cancel()
            await self.wait_tasks("the first read", f[1])
            self.check("first read cancelled", outcome(f[1]), ("cancelled", ""))
        elif order == "cancel_second":
            if s is None:
                self.check("remove_reader of the callback", loop.remove_reader(fd), True)
            else:
                s[1].cancel()
                await self.wait_tasks("the second read", s[1])
                self.check("second read cancelled", outcome(s[1]), ("cancelled", ""))
            live = "none"
        await self.raw_send(x, data)
        got = EMPTY
        if live is None:
            await self.until("the callback", lambda: calls["second"])
        elif live != "none":
            await self.wait_tasks("the second read", live[1])
            res = outcome(live[1])
            got = live[0].data(res[1]) if res[0] == "ok" else EMPTY
            if self.sc.variant == "tcp":
                self.check("second read got data", bool(got), True)
            else:
                self.check(
                    "second read",
                    self.read_fact(live[0], res),
                    self.expected_read(live[0], data, ""),
                )
        await self.settle()
        predicted = {
            "first": [],
            "second": [True] if second == "user" and order != "cancel_second" else [],
        }
        self.check("user callback calls", calls, predicted)
        if f is not None and order != "cancel_first":
            # Replaced: never notified, pending until cancelled.
            self.check("first read still pending", f[1].done(), False)
            f[1].cancel()
            await self.wait_tasks("the first read", f[1])
            self.check("first read cancelled at last", outcome(f[1]), ("cancelled", ""))
        self.check("remove_reader at the end", loop.remove_reader(fd), False)
        await self.drain_rest(y, data, got)

    async def ep_user_writer(self, x, read, size, seed, writer_first):
        loop = asyncio.get_running_loop()
        y = other(x)
        fd = self.socks[y].fileno()
        fired = []
        if writer_first:
            loop.add_writer(fd, lambda: fired.append(loop.remove_writer(fd)))
        op, t = self.start_read(y, *read)
        if not writer_first:
            loop.add_writer(fd, lambda: fired.append(loop.remove_writer(fd)))
        await self.until("the writer callback", lambda: fired)
        await self.settle()
        self.check("writer callback calls", fired, [True])
        self.check("read pending", t.done(), False)
        data = payload(size, seed)
        await self.raw_send(x, data)
        await self.wait_tasks("the read", t)
        await self.after_read(op, t, y, data)

    async def ep_recv_sizes(self, x, size, seed, reads):
        loop = asyncio.get_running_loop()
        y = other(x)
        data = payload(size, seed)
        await self.raw_send(x, data)
        await self.peek_wait(y, size)  # All of it queued: each read's result is exact.
        pos = 0
        for kind, n in reads:
            op = Read(loop, self.socks[y], kind, n)
            res = await self.now("a read of queued data", op.coro)
            self.check(
                f"read {kind}({n})", self.read_fact(op, res), self.expected_read(op, data[pos:], "")
            )
            if res[0] == "ok":
                pos += len(op.data(res[1]))
        await self.drain_rest(y, data[pos:], EMPTY)

    async def ep_wait_for_data(self, x, read, size, seed, how):
        loop = asyncio.get_running_loop()
        y = other(x)
        data = payload(size, seed)
        await self.raw_send(x, data)
        await self.peek_wait(y, size)
        op = Read(loop, self.socks[y], *read)
        try:
            if how == "wait_for_0":
                result = await asyncio.wait_for(op.coro, 0)
            elif how == "wait_for_5":
                result = await asyncio.wait_for(op.coro, WAIT_TIMEOUT)
            elif how == "timeout_0":
                async with asyncio.timeout(0):
                    result = await op.coro
            else:
                async with asyncio.timeout(None):
                    result = await op.coro
            res = ("ok", result)
        except Exception as exc:
            res = exc_fact(exc)
        # Stock differs between versions here (3.11's wait_for(..., 0) never runs it).
        self.fact("result", self.read_fact(op, res))
        got = op.data(res[1]) if res[0] == "ok" else EMPTY
        await self.drain_rest(y, data, got)

    async def ep_cancel_sendall(self, x, size, form, seed, how, marker_size, marker_seed):
        loop = asyncio.get_running_loop()
        y = other(x)
        sock = self.socks[x]
        fd = sock.fileno()
        big = payload(size, seed, form)
        marker = payload(marker_size, marker_seed)
        first = None
        if how in ("wait_for", "timeout"):
            try:
                if how == "wait_for":
                    await asyncio.wait_for(loop.sock_sendall(sock, big), SHORT)
                else:
                    async with asyncio.timeout(SHORT):
                        await loop.sock_sendall(sock, big)
                res = ("returned",)
            except Exception as exc:
                res = exc_fact(exc)
            self.check("timed out", res, ("raised", "TimeoutError", ""))
        else:
            first = self.task(loop.sock_sendall(sock, big), "first")
            await self.settle()
            self.check("sock_sendall pending", first.done(), False)
            if how == "cancel":
                first.cancel()
                await self.wait_tasks("the cancelled sock_sendall", first)
                self.check("cancelled", outcome(first), ("cancelled", ""))
            elif how == "remove_writer":
                self.check("remove_writer while it waits", loop.remove_writer(fd), True)
        if how != "second_sendall":  # (There, the next one replaces the waiting writer.)
            self.check("remove_writer before the next", loop.remove_writer(fd), False)
        nxt = self.task(loop.sock_sendall(sock, marker), "next")
        await self.settle()  # Its first send (and its writer) come before any read.
        got = bytearray()
        await self.drain(y, got, lambda g: len(g) >= len(marker) and g.endswith(marker))
        await self.wait_tasks("the next sock_sendall", nxt)
        self.check("next sock_sendall", outcome(nxt), ("ok", None))
        if first is not None and how != "cancel":
            # Its writer was removed or replaced: it never finishes until cancelled.
            await self.settle()
            self.check("first sock_sendall still pending", first.done(), False)
            first.cancel()
            await self.wait_tasks("the first sock_sendall", first)
            self.check("cancelled at last", outcome(first), ("cancelled", ""))
        k = len(got) - len(marker)
        shape = 0 <= k < len(big) and bytes(got[:k]) == bytes(big[:k])
        self.check("stream: a prefix of the cancelled data, then the next", shape, True)

    # -- last episodes: the connection ends ----------------------------------------------

    async def ep_peer_shutdown(self, x, pending, read, back_size, seed):
        loop = asyncio.get_running_loop()
        y = other(x)
        if pending:
            op, t = self.start_read(y, *read)
            await self.settle()
            self.check("pending", t.done(), False)
        self.socks[x].shutdown(socket.SHUT_WR)
        if not pending:
            op, t = self.start_read(y, *read)
        await self.wait_tasks("the read", t)
        eof = ("ok", digest(EMPTY), True)
        self.check("read after the peer's shutdown", self.read_fact(op, outcome(t)), eof)
        op = Read(loop, self.socks[y], *read)
        self.check("read again", self.read_fact(op, await self.now("a read", op.coro)), eof)
        late = await self.now("sock_sendall", loop.sock_sendall(self.socks[x], b"late"))
        broken = ("raised", "BrokenPipeError", "[Errno 32] Broken pipe")
        self.check("sock_sendall after shutdown(SHUT_WR)", late, broken)
        # The other direction still works.
        data = payload(back_size, seed)
        t = self.task(loop.sock_sendall(self.socks[y], data))
        got = bytearray()
        await self.drain(x, got, lambda g: len(g) >= len(data))
        await self.wait_tasks("the sock_sendall back", t)
        self.check("sock_sendall back", outcome(t), ("ok", None))
        self.check("stream back", digest(got), digest(data))

    async def ep_peer_close(self, x, pending, read):
        loop = asyncio.get_running_loop()
        y = other(x)
        if pending:
            op, t = self.start_read(y, *read)
            await self.settle()
            self.check("pending", t.done(), False)
        self.socks[x].close()
        if not pending:
            op, t = self.start_read(y, *read)
        await self.wait_tasks("the read", t)
        eof = ("ok", digest(EMPTY), True)
        self.check("read after the peer closed", self.read_fact(op, outcome(t)), eof)
        if self.sc.variant != "tcp":
            # (TCP: the first send after the peer's FIN succeeds; whether a later one
            # fails depends on when the peer's RST comes back.)
            late = await self.now("sock_sendall", loop.sock_sendall(self.socks[y], b"x" * 100))
            broken = ("raised", "BrokenPipeError", "[Errno 32] Broken pipe")
            self.check("sock_sendall to a closed peer", late, broken)

    async def ep_peer_reset(self, x, pending, read):
        loop = asyncio.get_running_loop()
        y = other(x)
        if self.sc.variant == "tcp":
            linger = struct.pack("ii", 1, 0)  # close() sends RST.
            self.socks[x].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        else:
            await self.raw_send(y, b"never read")  # x closes with unread data: y is reset.
        if pending:
            op, t = self.start_read(y, *read)
            await self.settle()
            self.check("pending", t.done(), False)
        self.socks[x].close()
        if not pending:
            op, t = self.start_read(y, *read)
        await self.wait_tasks("the read", t)
        reset = ("raised", "ConnectionResetError", "[Errno 104] Connection reset by peer")
        self.check("read after the reset", self.read_fact(op, outcome(t)), reset)
        op = Read(loop, self.socks[y], "recv", 100)
        self.fact("read again", self.read_fact(op, await self.now("a read", op.coro)))
        late = await self.now("sock_sendall", loop.sock_sendall(self.socks[y], b"x"))
        self.fact("sock_sendall after the reset", late)

    async def ep_local_close(self, x, what, read, size, seed, remove_first):
        """Closing the socket itself while an operation waits: stock never finishes the
        operation (the descriptor is gone from epoll) and keeps its selector key."""
        loop = asyncio.get_running_loop()
        sock = self.socks[x]
        fd = sock.fileno()
        if what == "read":
            _, t = self.start_read(x, *read)
            remove = loop.remove_reader
        else:
            t = self.task(loop.sock_sendall(sock, payload(size, seed)))  # The peer never reads.
            remove = loop.remove_writer
        await self.settle()
        self.check("pending", t.done(), False)
        sock.close()
        await self.settle()
        self.check("pending after close()", t.done(), False)
        if remove_first:
            self.check("remove after close()", remove(fd), True)
        t.cancel()
        await self.wait_tasks("the cancelled operation", t)
        self.check("cancelled", outcome(t), ("cancelled", ""))
        self.check("remove after the cancel", remove(fd), False)

    # -- datagram episodes ---------------------------------------------------------------

    async def send_dgram(self, x: str, how: str, data) -> tuple:
        loop = asyncio.get_running_loop()
        sock = self.socks[x]
        if how == "sendall":
            return await self.now("sock_sendall", loop.sock_sendall(sock, data))
        if how == "sendto":
            address = self.socks[other(x)].getsockname()
            return await self.now("sock_sendto", loop.sock_sendto(sock, data, address))
        return ("ok", sock.send(data))

    async def ep_dgrams(self, x, items):
        y = other(x)
        for i, (size, seed, how, read, read_first) in enumerate(items):
            data = payload(size, seed)
            if read_first:
                op, t = self.start_read(y, *read)
                await self.settle()
                self.check(f"datagram {i}: read pending", t.done(), False)
            sent = await self.send_dgram(x, how, data)
            self.check(f"datagram {i}: sent", sent, ("ok", None if how == "sendall" else size))
            if not read_first:
                op, t = self.start_read(y, *read)
            await self.wait_tasks(f"datagram {i}", t)
            predicted = self.expected_read(op, data, x)
            self.check(f"datagram {i}: read", self.dgram_fact(op, outcome(t)), predicted)

    async def read_dgram(self, x: str, data: bytes, label: str) -> None:
        loop = asyncio.get_running_loop()
        op = Read(loop, self.socks[other(x)], "recvfrom", 65536)
        res = await self.now("a datagram", op.coro)
        self.check(label, self.dgram_fact(op, res), self.expected_read(op, data, x))

    async def ep_dgram_cancel(self, x, read, how, size, seed):
        loop = asyncio.get_running_loop()
        y = other(x)
        fd = self.socks[y].fileno()
        data = payload(size, seed)
        sent = False
        if how in ("wait_for", "timeout"):
            await self.read_timing_out(y, read, how)
        else:
            _, t = self.start_read(y, *read)
            if how != "before_start":
                await self.settle()
                self.check("pending", t.done(), False)
            if how == "after_data":
                self.socks[x].send(data)  # Not seen by the loop yet: the cancel wins.
                sent = True
            message = "stop reading" if how == "with_message" else None
            t.cancel(message)
            await self.wait_tasks("the cancelled read", t)
            self.check("cancelled", outcome(t), ("cancelled", message or ""))
        self.check("remove_reader after the cancel", loop.remove_reader(fd), False)
        if not sent:
            self.socks[x].send(data)
        await self.read_dgram(x, data, "the datagram is still there")

    async def ep_dgram_two_readers(self, x, first, second, size1, size2, seed):
        loop = asyncio.get_running_loop()
        y = other(x)
        op1, t1 = self.start_read(y, *first, name="first")
        await self.settle()
        op2, t2 = self.start_read(y, *second, name="second")
        await self.settle()
        self.check("both pending", (t1.done(), t2.done()), (False, False))
        d1, d2 = payload(size1, seed), payload(size2, seed + 1)
        self.socks[x].send(d1)
        await self.wait_tasks("the second read", t2)
        predicted = self.expected_read(op2, d1, x)
        self.check("the second read gets it", self.dgram_fact(op2, outcome(t2)), predicted)
        self.socks[x].send(d2)
        await self.settle()
        self.check("the first read stays pending", t1.done(), False)
        self.check("remove_reader", loop.remove_reader(self.socks[y].fileno()), False)
        t1.cancel()
        await self.wait_tasks("the first read", t1)
        self.check("first read cancelled", outcome(t1), ("cancelled", ""))
        await self.read_dgram(x, d2, "the next datagram is still there")

    async def ep_dgram_oversize(self, x, how):
        size = 70_000 if self.sc.variant == "udp" else 300_000  # Past 64 KiB / SO_SNDBUF.
        res = await self.send_dgram(x, how, payload(size, 5))
        self.check("oversized datagram", res, ("raised", "OSError", "[Errno 90] Message too long"))

    # -- episodes of the hand-written scenarios ------------------------------------------

    async def ep_recv_zero(self, x, queued):
        """sock_recv(sock, 0): socket.recv(0) returns b'' at once without a syscall, so
        stock never waits and never consumes a datagram."""
        y = other(x)
        first, second = payload(40, 1), payload(50, 2)
        if queued:
            await self.raw_send(x, first)
            if is_dgram(self.sc.variant):
                await self.raw_send(x, second)
            await self.settle()
        op, t = self.start_read(y, "recv", 0)
        await self.settle()
        self.check("done after one poll", t.done(), True)
        if not t.done():
            t.cancel()
            await self.wait_tasks("the read", t)
        self.check("result", self.read_fact(op, outcome(t)), ("ok", digest(EMPTY), True))
        if not queued:
            return
        if is_dgram(self.sc.variant):
            # (On ferroloop the second is all that is left: no read of it, which would
            # wait there.)
            await self.read_dgram(x, first, "the first datagram is still there")
        else:
            await self.drain_rest(y, first, EMPTY)

    async def ep_queued_read(self, x, size, seed, n):
        """One read of up to n bytes, all of them queued already."""
        loop = asyncio.get_running_loop()
        y = other(x)
        data = payload(size, seed)
        await self.raw_send(x, data)
        await self.peek_wait(y, size)
        op = Read(loop, self.socks[y], "recv", n)
        res = await self.now("the read", op.coro)
        self.check("read", self.read_fact(op, res), self.expected_read(op, data, ""))
        if not is_dgram(self.sc.variant) and res[0] == "ok":
            await self.drain_rest(y, data[len(op.data(res[1])) :], EMPTY)

    async def ep_flaky_read(self, x, size, seed):
        """A socket subclass whose recv() raises BlockingIOError on every second call:
        stock's level-triggered reader calls it again in the next iteration."""
        y = other(x)
        op, t = self.start_read(y, "recv", 1000)
        await self.settle()
        self.check("pending", t.done(), False)
        data = payload(size, seed)
        await self.raw_send(x, data)
        await asyncio.wait([t], timeout=1.0)
        self.check("done", t.done(), True)
        if not t.done():
            t.cancel()
            await self.wait_tasks("the read", t)
        self.check("read", self.read_fact(op, outcome(t)), self.expected_read(op, data, ""))


# --------------------------------------------------------------------------------------
# Generating scenarios
# --------------------------------------------------------------------------------------

READ_KINDS = ("recv", "recv", "recv_into", "recv_into_view")
DGRAM_KINDS = ("recv", "recv_into", "recv_into_view", "recvfrom", "recvfrom_into")
READ_SIZES = (1, 7, 100, 1000, 4096, 65536, 1 << 20)
FORMS = ("bytes", "bytes", "bytearray", "memoryview", "memoryview_slice")
CANCEL_HOWS = (
    "cancel",
    "with_message",
    "before_start",
    "after_data",
    "then_read",
    "wait_for",
    "timeout",
)


def g_read(rng: random.Random, sizes=READ_SIZES) -> tuple:
    return (rng.choice(READ_KINDS), rng.choice(sizes))


def g_small(rng: random.Random) -> int:
    return rng.choice([1, 2, rng.randint(1, ATOMIC), rng.randint(1, ATOMIC), ATOMIC])


def g_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.05:
        return 0
    if r < 0.35:
        return rng.randint(1, ATOMIC)
    if r < 0.65:
        return rng.randint(ATOMIC, 64 * 1024)
    return rng.randint(64 * 1024, MAX_SEND)


def g_seed(rng: random.Random) -> int:
    return rng.getrandbits(32)


def gen_transfer(rng, variant):
    sizes = tuple(g_size(rng) for _ in range(rng.randint(1, 3)))
    # Small reads only for small transfers (a read per byte of 300 KiB takes long).
    read_sizes = READ_SIZES[4:] if sum(sizes) > 16 * 1024 else READ_SIZES
    return dict(
        x=rng.choice("ab"),
        sizes=sizes,
        forms=tuple(rng.choice(FORMS) for _ in sizes),
        seeds=tuple(g_seed(rng) for _ in sizes),
        plan=tuple(g_read(rng, read_sizes) for _ in range(rng.randint(1, 3))),
        reader_first=rng.random() < 0.5,
        both=rng.random() < 0.3,
    )


def gen_pending_read(rng, variant):
    return dict(
        x=rng.choice("ab"),
        read=g_read(rng),
        size=g_small(rng),
        seed=g_seed(rng),
        send=rng.choice(["raw", "sendall"]),
        form=rng.choice(FORMS),
    )


def gen_cancel_read(rng, variant):
    return dict(
        x=rng.choice("ab"),
        read=g_read(rng),
        how=rng.choice(CANCEL_HOWS),
        size=g_small(rng),
        seed=g_seed(rng),
        read2=g_read(rng),
    )


def gen_two_readers(rng, variant):
    first = "user" if rng.random() < 0.25 else g_read(rng)
    second = "user" if rng.random() < 0.25 else g_read(rng)
    orders = ["data", "cancel_second"] + ([] if first == "user" else ["cancel_first"])
    return dict(
        x=rng.choice("ab"),
        first=first,
        second=second,
        order=rng.choice(orders),
        size=g_small(rng),
        seed=g_seed(rng),
    )


def gen_user_writer(rng, variant):
    return dict(
        x=rng.choice("ab"),
        read=g_read(rng),
        size=g_small(rng),
        seed=g_seed(rng),
        writer_first=rng.random() < 0.5,
    )


def gen_recv_sizes(rng, variant):
    size = g_small(rng)
    reads, left = [], size
    for _ in range(rng.randint(1, 5)):
        if left == 0:
            break  # (A read now would wait.)
        n = rng.choice([0, 1, 2, 7, size // 2, size, size + 1, 4096, 1 << 20])
        reads.append((rng.choice(READ_KINDS), n))
        left -= min(n, left)
    return dict(x=rng.choice("ab"), size=size, seed=g_seed(rng), reads=tuple(reads))


def gen_wait_for_data(rng, variant):
    hows = ["wait_for_0", "wait_for_5", "timeout_0", "timeout_none"]
    return dict(
        x=rng.choice("ab"),
        read=g_read(rng),
        size=g_small(rng),
        seed=g_seed(rng),
        how=rng.choice(hows),
    )


def gen_cancel_sendall(rng, variant):
    hows = ["cancel", "wait_for", "timeout", "remove_writer"]
    if variant != "tcp":
        # A TCP socket may take a few more bytes while the waiting sock_sendall's writer
        # is not called (EPOLLOUT needs a third of the buffer free): the second one may
        # then finish at once and leave the first's writer in place.
        hows.append("second_sendall")
    return dict(
        x=rng.choice("ab"),
        size=rng.randint(2 * CAPACITY, MAX_SEND),  # More than CAPACITY: it waits.
        form=rng.choice(FORMS),
        seed=g_seed(rng),
        how=rng.choice(hows),
        marker_size=rng.randint(64, 4000),
        marker_seed=g_seed(rng),
    )


def gen_peer_shutdown(rng, variant):
    return dict(
        x=rng.choice("ab"),
        pending=rng.random() < 0.5,
        read=g_read(rng),
        back_size=g_size(rng),
        seed=g_seed(rng),
    )


def gen_peer_end(rng, variant):
    return dict(x=rng.choice("ab"), pending=rng.random() < 0.5, read=g_read(rng))


def gen_local_close(rng, variant):
    return dict(
        x=rng.choice("ab"),
        what=rng.choice(["read", "sendall"]),
        read=g_read(rng),
        size=rng.randint(2 * CAPACITY, MAX_SEND),  # It waits (the peer never reads).
        seed=g_seed(rng),
        remove_first=rng.random() < 0.5,
    )


def g_dgram_read(rng: random.Random, size: int) -> tuple:
    kind = rng.choice(DGRAM_KINDS)
    n = max(1, rng.choice([1, 5, size // 2, size, size + 1, 4096, 65536]))
    nbytes = rng.choice([0, 0, min(n, 3), n]) if kind == "recvfrom_into" else 0
    return (kind, n, nbytes)


def g_dgram_size(rng: random.Random) -> int:
    return rng.choice([0, 1, rng.randint(1, 2000), rng.randint(1, 2000), 2000])


def gen_dgrams(rng, variant):
    hows = ["sendall", "raw"] + (["sendto"] if variant == "udp" else [])
    items = []
    for _ in range(rng.randint(1, 4)):
        size = g_dgram_size(rng)
        read = g_dgram_read(rng, size)
        items.append((size, g_seed(rng), rng.choice(hows), read, rng.random() < 0.4))
    return dict(x=rng.choice("ab"), items=tuple(items))


def gen_dgram_cancel(rng, variant):
    size = g_dgram_size(rng)
    hows = [h for h in CANCEL_HOWS if h != "then_read"]
    return dict(
        x=rng.choice("ab"),
        read=g_dgram_read(rng, size),
        how=rng.choice(hows),
        size=size,
        seed=g_seed(rng),
    )


def gen_dgram_two_readers(rng, variant):
    size1, size2 = g_dgram_size(rng), g_dgram_size(rng)
    return dict(
        x=rng.choice("ab"),
        first=g_dgram_read(rng, size2),
        second=g_dgram_read(rng, size1),
        size1=size1,
        size2=size2,
        seed=g_seed(rng),
    )


def gen_dgram_oversize(rng, variant):
    hows = ["sendall"] + (["sendto"] if variant == "udp" else [])
    return dict(x=rng.choice("ab"), how=rng.choice(hows))


STREAM_EPISODES = {
    "transfer": (gen_transfer, 3),
    "pending_read": (gen_pending_read, 3),
    "cancel_read": (gen_cancel_read, 4),
    "two_readers": (gen_two_readers, 3),
    "user_writer": (gen_user_writer, 1),
    "recv_sizes": (gen_recv_sizes, 2),
    "wait_for_data": (gen_wait_for_data, 1),
    "cancel_sendall": (gen_cancel_sendall, 3),
}
LAST_EPISODES = {
    "peer_shutdown": gen_peer_shutdown,
    "peer_close": gen_peer_end,
    "peer_reset": gen_peer_end,
    "local_close": gen_local_close,
}
DGRAM_EPISODES = {
    "dgrams": (gen_dgrams, 4),
    "dgram_cancel": (gen_dgram_cancel, 3),
    "dgram_two_readers": (gen_dgram_two_readers, 2),
    "dgram_oversize": (gen_dgram_oversize, 1),
}


def generate(variant: str, seed: int) -> Scenario:
    rng = random.Random(f"{BASE_SEED}/{variant}/{seed}")
    table = DGRAM_EPISODES if variant in DGRAM_SEEDS else STREAM_EPISODES
    names = list(table)
    weights = [weight for _, weight in table.values()]
    episodes = []
    for _ in range(rng.randint(2, 6)):
        name = rng.choices(names, weights=weights)[0]
        episodes.append(E(name, **table[name][0](rng, variant)))
    if table is STREAM_EPISODES and rng.random() < 0.4:
        name = rng.choice(sorted(LAST_EPISODES))
        episodes.append(E(name, **LAST_EPISODES[name](rng, variant)))
    return Scenario(f"{variant}-{seed}", variant, episodes)


# --------------------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------------------


def run_once(kind: str, scenario: Scenario) -> RunResult:
    return conftest.run_on(factory_for(kind), Run(kind, scenario).run, timeout=RUN_TIMEOUT)


def _key_order(key: tuple) -> tuple:
    return tuple((0, k, "") if isinstance(k, int) else (1, 0, str(k)) for k in key)


def fmt_key(key: tuple) -> str:
    return " / ".join(map(str, key))


def compare(title: str, stock: list[dict], ferro: dict) -> None:
    """The facts identical in both stock runs must be ferroloop's."""
    a, b = stock
    keys = sorted(set(a) | set(b) | set(ferro), key=_key_order)
    unstable = [k for k in keys if a.get(k, MISSING) != b.get(k, MISSING)]
    diffs = [k for k in keys if k not in unstable and a.get(k, MISSING) != ferro.get(k, MISSING)]
    if not diffs:
        return
    lines = ["ferroloop differs from stock asyncio (the oracle)", title]
    lines.append("facts that differ (stock, then ferroloop):")
    for k in diffs:
        lines += [
            f"  {fmt_key(k)}",
            f"    stock:     {a.get(k, MISSING)!r}",
            f"    ferroloop: {ferro.get(k, MISSING)!r}",
        ]
    if unstable:
        lines.append("not compared (differed between the two stock runs):")
        lines += [f"  {fmt_key(k)}" for k in unstable]
    pytest.fail("\n".join(lines), pytrace=False)


def check_scenario(scenario: Scenario) -> None:
    """Run ``scenario`` twice on stock asyncio (the oracle) and once on ferroloop."""
    stock = [run_once("asyncio", scenario) for _ in range(2)]
    for result in stock:
        # Stock is the oracle: if it does not do what the model predicts, the model
        # (this test) is wrong.
        assert result.stuck is None and not result.model_errors, (
            f"TEST BUG: stock asyncio does not follow the model: {result.stuck} "
            f"{result.model_errors}\n{scenario.describe()}"
        )
    ferro = run_once("ferroloop", scenario)
    compare(scenario.describe(), [r.facts for r in stock], ferro.facts)


# --------------------------------------------------------------------------------------
# Tests: seeded scenarios
# --------------------------------------------------------------------------------------

RANDOM = [
    (v, s) for seeds in (STREAM_SEEDS, DGRAM_SEEDS) for v, n in seeds.items() for s in range(n)
]


@pytest.mark.parametrize("variant, seed", RANDOM, ids=[f"{v}-{s}" for v, s in RANDOM])
def test_random_scenario(variant, seed):
    check_scenario(generate(variant, seed))


def test_generated_scenarios_cover_every_episode():
    """The seeds above do generate every kind of episode (else a kind is untested)."""
    seen = {e.name for v, s in RANDOM for e in generate(v, s).episodes}
    wanted = set(STREAM_EPISODES) | set(LAST_EPISODES) | set(DGRAM_EPISODES)
    assert wanted <= seen, wanted - seen


# --------------------------------------------------------------------------------------
# Hand-written scenarios: the edge cases, whatever the generator picks
# --------------------------------------------------------------------------------------


def facts_labelled(facts: dict, label: str) -> list:
    return [v for k, v in facts.items() if len(k) == 3 and k[2] == label]


def has(label: str, *values):
    """expect(): the facts labelled ``label`` are exactly ``values``."""
    return lambda facts: facts_labelled(facts, label) == list(values)


def every(*expects):
    return lambda facts: all(e(facts) for e in expects)


def fixed(name: str, variant: str, episodes: list[Episode], expect):
    return pytest.param(Scenario(name, variant, episodes), expect, id=name)


X = "a"  # The sender of the hand-written episodes.
R100 = ("recv", 100)
PENDING = False  # What task.done() says of a task that must still wait.


FIXED = [
    fixed(
        "orphaned_read_stays_pending",
        "unix",
        [
            E(
                "two_readers",
                x=X,
                first=R100,
                second=("recv_into", 50),
                order="data",
                size=80,
                seed=1,
            )
        ],
        every(
            has("first read still pending", PENDING),
            has("first read cancelled at last", ("cancelled", "")),
        ),
    ),
    fixed(
        "cancelling_the_second_read_orphans_the_first",
        "tcp",
        [E("two_readers", x=X, first=R100, second=R100, order="cancel_second", size=30, seed=2)],
        has("first read still pending", PENDING),
    ),
    fixed(
        "cancelling_the_orphaned_read_keeps_the_second",
        "unix-subclass",
        [E("two_readers", x=X, first=R100, second=R100, order="cancel_first", size=30, seed=3)],
        has("second read", ("ok", digest(payload(30, 3)), True)),
    ),
    fixed(
        "add_reader_replaces_a_waiting_read",
        "unix",
        [E("two_readers", x=X, first=R100, second="user", order="data", size=10, seed=4)],
        every(
            has("user callback calls", {"first": [], "second": [True]}),
            has("first read still pending", PENDING),
        ),
    ),
    fixed(
        "a_read_replaces_add_reader",
        "tcp",
        [E("two_readers", x=X, first="user", second=("recv", 5), order="data", size=10, seed=5)],
        every(
            has("user callback calls", {"first": [], "second": []}),
            has("second read got data", True),
        ),
    ),
    fixed(
        "remove_reader_orphans_a_waiting_read",
        "unix",
        [E("two_readers", x=X, first=R100, second="user", order="cancel_second", size=10, seed=6)],
        every(has("remove_reader of the callback", True), has("first read still pending", PENDING)),
    ),
    fixed(
        "writer_callback_alongside_a_waiting_read",
        "tcp",
        [E("user_writer", x=X, read=("recv_into_view", 64), size=64, seed=7, writer_first=False)],
        has("writer callback calls", [True]),
    ),
    fixed(
        "cancel_right_after_data_arrived_keeps_the_data",
        "tcp",
        [E("cancel_read", x=X, read=R100, how="after_data", size=ATOMIC, seed=8, read2=R100)],
        every(has("cancelled read", ("cancelled", "")), has("stream", digest(payload(ATOMIC, 8)))),
    ),
    fixed(
        "cancel_then_read_again_at_once",
        "unix",
        [
            E(
                "cancel_read",
                x=X,
                read=("recv_into", 10),
                how="then_read",
                size=20,
                seed=9,
                read2=("recv", 7),
            )
        ],
        has("read", ("ok", digest(payload(20, 9)[:7]), True)),
    ),
    fixed(
        "cancel_with_a_message",
        "unix-subclass",
        [E("cancel_read", x=X, read=R100, how="with_message", size=5, seed=10, read2=R100)],
        has("cancelled read", ("cancelled", "stop reading")),
    ),
    fixed(
        "cancel_before_the_first_step",
        "unix",
        [E("cancel_read", x=X, read=R100, how="before_start", size=5, seed=11, read2=R100)],
        has("remove_reader after the cancel", False),
    ),
    fixed(
        "wait_for_expires_on_recv_into_a_view",
        "tcp",
        [
            E(
                "cancel_read",
                x=X,
                read=("recv_into_view", 32),
                how="wait_for",
                size=5,
                seed=12,
                read2=R100,
            )
        ],
        has("timed out", ("raised", "TimeoutError", "")),
    ),
    fixed(
        "sendall_cancelled_midway",
        "tcp",
        [
            E(
                "cancel_sendall",
                x=X,
                size=250_000,
                form="bytearray",
                seed=13,
                how="cancel",
                marker_size=500,
                marker_seed=14,
            )
        ],
        has("stream: a prefix of the cancelled data, then the next", True),
    ),
    fixed(
        "sendall_replaced_by_a_second_sendall",
        "unix",
        [
            E(
                "cancel_sendall",
                x=X,
                size=100_000,
                form="memoryview",
                seed=15,
                how="second_sendall",
                marker_size=3000,
                marker_seed=16,
            )
        ],
        has("first sock_sendall still pending", PENDING),
    ),
    fixed(
        "remove_writer_orphans_a_waiting_sendall",
        "tcp",
        [
            E(
                "cancel_sendall",
                x=X,
                size=200_000,
                form="bytes",
                seed=17,
                how="remove_writer",
                marker_size=64,
                marker_seed=18,
            )
        ],
        every(
            has("remove_writer while it waits", True),
            has("first sock_sendall still pending", PENDING),
        ),
    ),
    fixed(
        "sendall_under_timeout",
        "unix-subclass",
        [
            E(
                "cancel_sendall",
                x=X,
                size=MAX_SEND,
                form="memoryview_slice",
                seed=19,
                how="timeout",
                marker_size=100,
                marker_seed=20,
            )
        ],
        has("timed out", ("raised", "TimeoutError", "")),
    ),
    fixed(
        "large_transfers_both_ways_at_once",
        "tcp",
        [
            E(
                "transfer",
                x=X,
                sizes=(MAX_SEND, 100_000, 0),
                forms=("bytes", "memoryview", "bytearray"),
                seeds=(21, 22, 23),
                plan=(("recv", 65536), ("recv_into_view", 4096), ("recv_into", 1 << 20)),
                reader_first=True,
                both=True,
            )
        ],
        has("direction 1: sock_sendall results", ("ok", (None, None, None))),
    ),
    fixed(
        "reads_of_every_size_on_queued_data",
        "tcp",
        [
            E(
                "recv_sizes",
                x=X,
                size=ATOMIC,
                seed=24,
                reads=(
                    ("recv", 0),
                    ("recv", 1),
                    ("recv_into", 7),
                    ("recv_into_view", 0),
                    ("recv_into_view", 500),
                    ("recv", 1 << 20),
                ),
            )
        ],
        has("read recv(1048576)", ("ok", digest(payload(ATOMIC, 24)[508:]), True)),
    ),
    fixed(
        "recv_zero_with_data_queued",
        "unix",
        [E("recv_zero", x=X, queued=True)],
        has("result", ("ok", digest(EMPTY), True)),
    ),
    fixed(
        "wait_for_zero_on_a_read_that_finishes_at_once",
        "unix",
        [E("wait_for_data", x=X, read=R100, size=10, seed=25, how="wait_for_0")],
        # 3.11's wait_for(..., 0) cancels the task before it runs; 3.12+ runs it.
        lambda f: len(facts_labelled(f, "result")) == 1,
    ),
    fixed(
        "peer_shutdown_wakes_a_waiting_read",
        "tcp",
        [E("peer_shutdown", x=X, pending=True, read=("recv_into", 10), back_size=70_000, seed=26)],
        has("sock_sendall back", ("ok", None)),
    ),
    fixed(
        "peer_close_wakes_a_waiting_read",
        "unix",
        [E("peer_close", x=X, pending=True, read=R100)],
        has(
            "sock_sendall to a closed peer", ("raised", "BrokenPipeError", "[Errno 32] Broken pipe")
        ),
    ),
    fixed(
        "peer_reset_tcp",
        "tcp",
        [E("peer_reset", x=X, pending=True, read=R100)],
        has(
            "read after the reset",
            ("raised", "ConnectionResetError", "[Errno 104] Connection reset by peer"),
        ),
    ),
    fixed(
        "peer_reset_tcp_read_afterwards",
        "tcp",
        [E("peer_reset", x=X, pending=False, read=("recv_into", 10))],
        lambda f: len(facts_labelled(f, "sock_sendall after the reset")) == 1,
    ),
    fixed(
        "peer_closed_with_unread_data_unix",
        "unix-subclass",
        [E("peer_reset", x=X, pending=True, read=R100)],
        has(
            "read after the reset",
            ("raised", "ConnectionResetError", "[Errno 104] Connection reset by peer"),
        ),
    ),
    fixed(
        "socket_closed_while_a_read_waits",
        "unix",
        [E("local_close", x=X, what="read", read=R100, size=0, seed=0, remove_first=True)],
        every(has("pending after close()", PENDING), has("remove after close()", True)),
    ),
    fixed(
        "socket_closed_while_a_sendall_waits",
        "tcp",
        [
            E(
                "local_close",
                x=X,
                what="sendall",
                read=R100,
                size=MAX_SEND,
                seed=27,
                remove_first=False,
            )
        ],
        has("remove after the cancel", False),
    ),
    fixed(
        "datagrams_truncated_by_every_read",
        "unix-dgram",
        [
            E(
                "dgrams",
                x=X,
                items=(
                    (100, 28, "sendall", ("recv", 10, 0), False),
                    (100, 29, "raw", ("recv_into_view", 10, 0), True),
                    (100, 30, "sendall", ("recvfrom", 10, 0), False),
                    (100, 31, "raw", ("recvfrom_into", 50, 10), True),
                    (0, 32, "sendall", ("recvfrom", 10, 0), True),
                ),
            )
        ],
        has("datagram 3: read", ("ok", digest(payload(100, 31)[:10]), "None")),
    ),
    fixed(
        "udp_two_waiting_reads",
        "udp",
        [
            E(
                "dgram_two_readers",
                x=X,
                first=("recvfrom", 100, 0),
                second=("recv", 100, 0),
                size1=10,
                size2=20,
                seed=33,
            )
        ],
        has("the first read stays pending", PENDING),
    ),
    fixed(
        "udp_cancel_right_after_a_datagram_arrived",
        "udp",
        [
            E(
                "dgram_cancel",
                x=X,
                read=("recvfrom_into", 100, 0),
                how="after_data",
                size=30,
                seed=34,
            )
        ],
        has("the datagram is still there", ("ok", digest(payload(30, 34)), "a")),
    ),
    fixed(
        "udp_sendto_oversized",
        "udp",
        [E("dgram_oversize", x=X, how="sendto")],
        has("oversized datagram", ("raised", "OSError", "[Errno 90] Message too long")),
    ),
    fixed(
        "a_read_of_less_than_256k_queued",
        "unix-big",
        [E("queued_read", x=X, size=200_000, seed=35, n=1 << 20)],
        has("read", ("ok", digest(payload(200_000, 35)), True)),
    ),
    # -- known ferroloop discrepancies ---------------------------------------------------
    fixed(
        "recv_zero_with_nothing_queued",
        "unix",
        [E("recv_zero", x=X, queued=False)],
        has("done after one poll", True),
    ),
    fixed(
        "recv_zero_with_nothing_queued_tcp",
        "tcp",
        [E("recv_zero", x=X, queued=False)],
        has("done after one poll", True),
    ),
    fixed(
        "recv_zero_with_datagrams_queued",
        "unix-dgram",
        [E("recv_zero", x=X, queued=True)],
        has("the first datagram is still there", ("ok", digest(payload(40, 1)), "None")),
    ),
    fixed(
        "a_read_of_more_than_256k_queued",
        "unix-big",
        [E("queued_read", x=X, size=300_000, seed=36, n=1 << 20)],
        has("read", ("ok", digest(payload(300_000, 36)), True)),
    ),
    fixed(
        "a_datagram_of_more_than_256k",
        "unix-dgram-big",
        [E("queued_read", x=X, size=300_000, seed=37, n=1 << 20)],
        has("read", ("ok", digest(payload(300_000, 37)), True)),
    ),
    fixed(
        "subclass_recv_raising_blockingioerror_with_data_queued",
        "unix-flaky",
        [E("flaky_read", x=X, size=50, seed=38)],
        has("done", True),
    ),
]


@pytest.mark.parametrize("scenario, expect", FIXED)
def test_fixed_scenario(scenario, expect):
    # The scenario must do on stock what it is meant to test, else it tests nothing.
    stock = run_once("asyncio", scenario)
    assert stock.stuck is None and not stock.model_errors and expect(stock.facts), (
        f"TEST BUG: {scenario.name} does not do on stock asyncio what it is meant to\n"
        f"{scenario.describe()}\n{stock.stuck} {stock.model_errors}\n"
        + "\n".join(f"  {fmt_key(k)} = {v!r}" for k, v in stock.facts.items())
    )
    check_scenario(scenario)


# --------------------------------------------------------------------------------------
# Bad input: exception types and messages
# --------------------------------------------------------------------------------------


class Index:
    """An int-like object (``__index__``), as numpy's integers."""

    def __init__(self, value: int):
        self.value = value

    def __index__(self) -> int:
        return self.value


class Bytes(bytes):
    pass


class Env:
    """What a bad-input case works on: ``a`` and ``b``, a non-blocking socketpair with
    b"hello world" sent from ``b`` to ``a``, and makers of odd sockets."""

    def __init__(self, loop):
        self.loop = loop
        self.socks: list = []
        self.a, self.b = self.keep(*socket.socketpair())
        self.a.setblocking(False)
        self.b.setblocking(False)
        self.b.send(b"hello world")

    def keep(self, *socks):
        self.socks += socks
        return socks

    def blocking(self, timeout=None, data=True) -> socket.socket:
        """A socketpair end in blocking mode (or with a timeout), data queued or not."""
        a, b = self.keep(*socket.socketpair())
        if data:
            b.send(b"blocking")
        a.settimeout(timeout)
        return a

    def closed(self) -> socket.socket:
        s = socket.socket()
        s.close()
        return s

    def unconnected(self, kind=socket.SOCK_STREAM, listen=False) -> socket.socket:
        (s,) = self.keep(socket.socket(socket.AF_INET, kind))
        s.setblocking(False)
        if listen:
            s.bind(("127.0.0.1", 0))
            s.listen()
        return s

    def udp(self) -> socket.socket:
        s = self.unconnected(socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        return s

    def ssl_socket(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        (raw,) = self.keep(socket.socket())
        (wrapped,) = self.keep(
            ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        )
        return wrapped

    async def on_transport(self, make):
        """``make(sock)`` awaited with ``sock`` owned by a transport (nothing queued)."""
        a, b = self.keep(*socket.socketpair())
        a.setblocking(False)
        transport, _ = await self.loop.connect_accepted_socket(asyncio.Protocol, a)
        try:
            return await make(a)
        finally:
            transport.close()

    def close(self) -> None:
        for s in self.socks:
            s.close()


@dataclass(frozen=True)
class Bad:
    name: str
    op: Callable  # Env -> awaitable
    expect: str  # The exception stock raises ("ok" if none): the case tests that.
    debug: bool = False


BAD = [
    Bad("recv_n_negative", lambda e: e.loop.sock_recv(e.a, -1), "ValueError"),
    Bad("recv_n_str", lambda e: e.loop.sock_recv(e.a, "10"), "TypeError"),
    Bad("recv_n_float", lambda e: e.loop.sock_recv(e.a, 1.5), "TypeError"),
    Bad("recv_n_none", lambda e: e.loop.sock_recv(e.a, None), "TypeError"),
    Bad("recv_n_true", lambda e: e.loop.sock_recv(e.a, True), "ok"),
    Bad("recv_n_index", lambda e: e.loop.sock_recv(e.a, Index(3)), "ok"),
    Bad("recv_n_index_negative", lambda e: e.loop.sock_recv(e.a, Index(-2)), "ValueError"),
    Bad("recv_n_2**64", lambda e: e.loop.sock_recv(e.a, 2**64), "OverflowError"),
    Bad("recv_n_-2**63-1", lambda e: e.loop.sock_recv(e.a, -(2**63) - 1), "OverflowError"),
    Bad("recv_n_2**63", lambda e: e.loop.sock_recv(e.a, 2**63), "OverflowError"),
    Bad(
        "recv_n_2**64-1",
        lambda e: e.loop.sock_recv(e.a, 2**64 - 1),
        "OverflowError",
    ),
    Bad("recv_into_bytes", lambda e: e.loop.sock_recv_into(e.a, b"xxxx"), "TypeError"),
    Bad(
        "recv_into_readonly_view",
        lambda e: e.loop.sock_recv_into(e.a, memoryview(b"xx")),
        "TypeError",
    ),
    Bad("recv_into_str", lambda e: e.loop.sock_recv_into(e.a, "xxxx"), "TypeError"),
    Bad("recv_into_none", lambda e: e.loop.sock_recv_into(e.a, None), "TypeError"),
    Bad(
        "recv_into_strided_view",
        lambda e: e.loop.sock_recv_into(e.a, memoryview(bytearray(8))[::2]),
        "TypeError",
    ),
    Bad(
        "recv_into_int_array", lambda e: e.loop.sock_recv_into(e.a, array.array("i", [0] * 4)), "ok"
    ),
    Bad("recv_into_empty_buffer", lambda e: e.loop.sock_recv_into(e.a, bytearray()), "ok"),
    Bad("sendall_str", lambda e: e.loop.sock_sendall(e.b, "text"), "TypeError"),
    Bad("sendall_int", lambda e: e.loop.sock_sendall(e.b, 42), "TypeError"),
    Bad("sendall_none", lambda e: e.loop.sock_sendall(e.b, None), "TypeError"),
    Bad("sendall_list", lambda e: e.loop.sock_sendall(e.b, [b"a"]), "TypeError"),
    Bad(
        "sendall_strided_view",
        lambda e: e.loop.sock_sendall(e.b, memoryview(b"abcdef")[::2]),
        "BufferError",
    ),
    Bad("sendall_byte_array", lambda e: e.loop.sock_sendall(e.b, array.array("B", b"abc")), "ok"),
    Bad("sendall_bytes_subclass", lambda e: e.loop.sock_sendall(e.b, Bytes(b"sub")), "ok"),
    Bad("sendall_empty", lambda e: e.loop.sock_sendall(e.b, b""), "ok"),
    Bad("recv_int_fd", lambda e: e.loop.sock_recv(e.a.fileno(), 10), "AttributeError"),
    Bad("recv_none", lambda e: e.loop.sock_recv(None, 10), "AttributeError"),
    Bad("sendall_int_fd", lambda e: e.loop.sock_sendall(e.b.fileno(), b"x"), "AttributeError"),
    Bad(
        "recv_into_object",
        lambda e: e.loop.sock_recv_into(object(), bytearray(3)),
        "AttributeError",
    ),
    Bad("recv_closed", lambda e: e.loop.sock_recv(e.closed(), 10), "OSError"),
    Bad("recv_into_closed", lambda e: e.loop.sock_recv_into(e.closed(), bytearray(3)), "OSError"),
    Bad("sendall_closed", lambda e: e.loop.sock_sendall(e.closed(), b"x"), "OSError"),
    Bad("recv_unconnected_tcp", lambda e: e.loop.sock_recv(e.unconnected(), 10), "OSError"),
    Bad(
        "sendall_unconnected_tcp",
        lambda e: e.loop.sock_sendall(e.unconnected(), b"x"),
        "BrokenPipeError",
    ),
    Bad(
        "sendall_view_unconnected_tcp",
        lambda e: e.loop.sock_sendall(e.unconnected(), memoryview(b"x")),
        "BrokenPipeError",
    ),
    Bad("recv_listening", lambda e: e.loop.sock_recv(e.unconnected(listen=True), 10), "OSError"),
    Bad("sendall_unconnected_udp", lambda e: e.loop.sock_sendall(e.udp(), b"x"), "OSError"),
    Bad("recv_ssl", lambda e: e.loop.sock_recv(e.ssl_socket(), 10), "TypeError"),
    Bad(
        "recv_into_ssl", lambda e: e.loop.sock_recv_into(e.ssl_socket(), bytearray(3)), "TypeError"
    ),
    Bad("sendall_ssl", lambda e: e.loop.sock_sendall(e.ssl_socket(), b"x"), "TypeError"),
    Bad(
        "recv_on_a_transport_socket",
        lambda e: e.on_transport(lambda s: e.loop.sock_recv(s, 10)),
        "RuntimeError",
    ),
    Bad(
        "sendall_waiting_on_a_transport_socket",
        lambda e: e.on_transport(lambda s: e.loop.sock_sendall(s, b"x" * 2_000_000)),
        "RuntimeError",
    ),
    Bad("recv_blocking_with_data", lambda e: e.loop.sock_recv(e.blocking(), 100), "ok"),
    Bad("sendall_blocking", lambda e: e.loop.sock_sendall(e.blocking(), b"x"), "ok"),
    Bad(
        "recv_socket_with_timeout_nothing_queued",
        lambda e: e.loop.sock_recv(e.blocking(0.05, data=False), 10),
        "TimeoutError",
    ),
    Bad(
        "recv_into_socket_with_timeout_nothing_queued",
        lambda e: e.loop.sock_recv_into(e.blocking(0.05, data=False), bytearray(4)),
        "TimeoutError",
    ),
    Bad("debug_recv_blocking", lambda e: e.loop.sock_recv(e.blocking(), 10), "ValueError", True),
    Bad(
        "debug_recv_into_blocking",
        lambda e: e.loop.sock_recv_into(e.blocking(), bytearray(4)),
        "ValueError",
        True,
    ),
    Bad(
        "debug_sendall_blocking",
        lambda e: e.loop.sock_sendall(e.blocking(), b"x"),
        "ValueError",
        True,
    ),
    Bad(
        "debug_recvfrom_blocking",
        lambda e: e.loop.sock_recvfrom(e.blocking(), 10),
        "ValueError",
        True,
    ),
    Bad(
        "debug_sendto_blocking",
        lambda e: e.loop.sock_sendto(e.blocking(), b"x", None),
        "ValueError",
        True,
    ),
    Bad(
        "debug_recv_with_timeout",
        lambda e: e.loop.sock_recv(e.blocking(1.0), 10),
        "ValueError",
        True,
    ),
    Bad("debug_recv_int_fd", lambda e: e.loop.sock_recv(e.a.fileno(), 10), "AttributeError", True),
    Bad(
        "debug_sendall_int_fd",
        lambda e: e.loop.sock_sendall(e.b.fileno(), b""),
        "AttributeError",
        True,
    ),
    Bad("debug_recv_ssl", lambda e: e.loop.sock_recv(e.ssl_socket(), 10), "TypeError", True),
    Bad("debug_recv_non_blocking", lambda e: e.loop.sock_recv(e.a, 100), "ok", True),
    Bad("recvfrom_negative", lambda e: e.loop.sock_recvfrom(e.udp(), -1), "ValueError"),
    Bad(
        "recvfrom_into_nbytes_past_the_buffer",
        lambda e: e.loop.sock_recvfrom_into(e.udp(), bytearray(4), 10),
        "ValueError",
    ),
    Bad(
        "sendto_port_str",
        lambda e: e.loop.sock_sendto(e.udp(), b"x", ("127.0.0.1", "p")),
        "TypeError",
    ),
    Bad("sendto_str", lambda e: e.loop.sock_sendto(e.udp(), "x", ("127.0.0.1", 9)), "TypeError"),
]


def show(value):
    """A result, as compared: bytes and tuples as they are, buffers' contents."""
    if isinstance(value, tuple):
        return tuple(show(v) for v in value)
    if isinstance(value, (bytearray, memoryview, array.array)):
        return bytes(value)
    return value


def run_bad(kind: str, case: Bad) -> dict:
    async def body():
        check_loop(kind)
        loop = asyncio.get_running_loop()
        loop.set_debug(case.debug)
        env = Env(loop)
        facts: dict = {}
        try:
            try:
                aw = case.op(env)
            except Exception as exc:  # The coroutines raise only when awaited.
                facts[("call",)] = exc_fact(exc)
                aw = None
            if aw is not None:
                facts[("call",)] = "ok"
                try:
                    async with asyncio.timeout(WAIT_TIMEOUT) as cm:
                        facts[("await",)] = ("ok", show(await aw))
                except TimeoutError as exc:
                    facts[("await",)] = ("stuck",) if cm.expired() else exc_fact(exc)
                except Exception as exc:
                    facts[("await",)] = exc_fact(exc)
            try:
                facts[("left for a",)] = env.a.recv(1000)
            except BlockingIOError:
                facts[("left for a",)] = None
            return facts
        finally:
            env.close()

    return conftest.run_on(factory_for(kind), body, timeout=RUN_TIMEOUT)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.name) for c in BAD],
)
def test_bad_input(case):
    stock = [run_bad("asyncio", case) for _ in range(2)]
    seen = stock[0].get(("await",), stock[0][("call",)])
    kind = "ok" if seen[0] == "ok" else seen[1]
    assert kind == case.expect, f"TEST BUG: stock gives {seen!r} for {case.name}"
    ferro = run_bad("ferroloop", case)
    compare(f"bad input {case.name} (debug={case.debug})", stock, ferro)
