"""Differential, seeded randomized test of stream transports: ferroloop against stock
asyncio, which is the oracle.

A scenario is a connected pair of transports (TCP from ``create_server`` +
``create_connection``; Unix sockets from ``create_unix_server`` +
``create_unix_connection``; a ``socket.socketpair()`` through ``connect_accepted_socket``
and ``create_connection(sock=...)``) and a list of operations generated from
``random.Random`` with a fixed base seed: writes of 0..300 KiB of seeded bytes (as bytes,
bytearray, memoryview), ``writelines``, ``pause_reading``/``resume_reading``,
``set_write_buffer_limits``, queries (``get_write_buffer_size``, ``is_closing``,
``is_reading``, ...), ``write_eof``, ``close``, ``abort``, writes after close, and
``set_protocol`` to a new recording protocol. Protocols are ``Protocol`` or
``BufferedProtocol``, return ``True`` or ``None`` from ``eof_received`` (half-close), and
some call ``transport.close()`` inside ``data_received``.

Each scenario runs twice on stock asyncio and once on ferroloop. The protocols record what
they observe, with chunk boundaries removed: consecutive ``data_received`` calls become
one event (length and hash), plus ``pause_writing``/``resume_writing``, ``eof_received``,
``connection_lost`` with the exception type, markers for each operation and the results
of the queries. Also recorded: the bytes received (count and sha256), whether
``connection_made`` came first and ``connection_lost`` last and exactly once, the
"socket.send() raised exception." warnings (caplog) and exception-handler calls for each
operation. Then ferroloop's facts must equal stock's.

Timing: after each operation the test waits (bounded by ``asyncio.timeout``) for the
state that a small model of the transports predicts (bytes delivered, EOFs, connection
losses), never for a fixed time. The model also keeps each fact independent of timing.
Buffers are shrunk, so the kernel holds a bounded number of bytes (``CAPACITY``), and the
generator skips operations whose stock outcome would depend on how much the kernel took.
So ``pause_writing`` is made certain by writing past the high-water mark plus that bound
while the peer does not read, and ``resume_writing`` is made certain by letting the peer
read again. Outcomes that still race on stock (a peer closing with unread data resets
the connection; ``abort()`` drops an unknown amount of queued data) are marked by the
model, and those facts are left out. As a safety net, only facts that were identical in
both stock runs are compared; facts that differed between them are listed in the failure
message. Stock must also reach every state the model predicts: if not, the model (this
test) is wrong, and the test fails saying so.

Stock differs between Python versions, and the model follows the installed one: before
CPython gh-127655, 3.12+ ``writelines()`` never calls ``pause_writing()``; and 3.12+
stock never finishes ``close()`` after ``writelines()`` with an empty chunk (seen with
3.12.1 and 3.13.0 here), so no scenario does that there (stock hangs: no oracle). So the operations
of a seed can differ between Python versions; a test id reproduces on the same version.

A failure prints the seed, the operations and the facts that differ. The module also
has hand-written scenarios for the edge cases, which run whatever the generator picks;
each also checks that stock really does, in that scenario, what it is meant to test.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import inspect
import logging
import os
import random
import re
import socket
from asyncio import selector_events
from dataclasses import dataclass, field

import conftest
import pytest
from conftest import check_loop, factory_for

# Last resort: a test that wedges the loop itself (so that no asyncio timeout can fire)
# ends the pytest process with every thread's traceback instead of blocking CI.
WATCHDOG_TIMEOUT = 120.0

pytestmark = pytest.mark.usefixtures("watchdog")

BASE_SEED = 20261201  # Fixed: a failure reproduces from its test id.
VARIANTS = ["tcp", "unix", "socketpair"]
SEEDS_PER_VARIANT = 50

# Upper bound for one scenario run on one loop, and for the wait after one operation.
SCENARIO_TIMEOUT = 30.0
QUIESCE_TIMEOUT = 5.0

SMALL_BUF = 4096  # SO_SNDBUF (and SO_RCVBUF where it can be set before connecting).
MAX_WRITE = 300 * 1024
ATOMIC_WRITE = 1000  # A write this small reaches the peer in one piece (one segment).

# Upper bounds on the bytes the kernel holds for one direction (sender's send buffer +
# receiver's receive buffer) with the peer not reading: (client -> server, server ->
# client). Measured on Linux: at most 12 KiB (TCP client -> server), 125 KiB (TCP server
# -> client: a TCP client's receive buffer cannot be shrunk after connecting without
# stalling the connection, so it is only locked at its default size, which stops
# autotuning) and 8 KiB (Unix sockets). Stock runs check these bounds: a model error
# ("TEST BUG") means one is too small.
CAPACITY = {
    "tcp": (48 * 1024, 192 * 1024),
    "unix": (32 * 1024, 32 * 1024),
    "socketpair": (32 * 1024, 32 * 1024),
}

# 3.12+ transports have a writelines() of their own, which (before gh-127655) never
# calls _maybe_pause_protocol(). The model follows the installed stock code.
_OWN_WRITELINES = "writelines" in vars(selector_events._SelectorSocketTransport)
WRITELINES_PAUSES = not _OWN_WRITELINES or "_maybe_pause_protocol" in inspect.getsource(
    selector_events._SelectorSocketTransport.writelines
)

SEND_WARNING = "socket.send() raised exception."
MISSING = "<missing>"


# --------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProtoCfg:
    """A recording protocol: ``kind`` "plain" (Protocol) or "buffered" (BufferedProtocol,
    buffers of ``sizes`` in turn); ``eof_keep``: eof_received() returns True (else None);
    ``close_on_data``: calls transport.close() in its first data_received();
    ``close_on_resume``: calls transport.close() in resume_writing()."""

    kind: str = "plain"
    sizes: tuple[int, ...] = ()
    eof_keep: bool = False
    close_on_data: bool = False
    close_on_resume: bool = False

    def __repr__(self) -> str:
        bits = [self.kind + (str(list(self.sizes)) if self.sizes else "")]
        if self.eof_keep:
            bits.append("eof->True")
        if self.close_on_data:
            bits.append("close_on_data")
        if self.close_on_resume:
            bits.append("close_on_resume")
        return "<" + " ".join(bits) + ">"


@dataclass
class Scenario:
    name: str
    variant: str
    client: ProtoCfg
    server: ProtoCfg
    ops: list[tuple] = field(default_factory=list)

    def describe(self) -> str:
        lines = [
            f"scenario {self.name} (variant {self.variant}, base seed {BASE_SEED})",
            f"  client protocol {self.client!r}, server protocol {self.server!r}",
        ]
        lines += [f"  op {i:2}: {op_repr(op)}" for i, op in enumerate(self.ops)]
        return "\n".join(lines)


def op_repr(op: tuple) -> str:
    side, name, *args = op
    who = {"c": "client", "s": "server"}[side]
    return f"{who}.{name}({', '.join(map(repr, args))})"


def payload(size: int, seed: int, form: str = "bytes"):
    data = random.Random(seed).randbytes(size)
    if form == "bytearray":
        return bytearray(data)
    if form == "memoryview":
        return memoryview(data)
    if form == "memoryview_slice":  # A contiguous slice of a larger bytearray.
        return memoryview(bytearray(b"<" + data + b">"))[1 : size + 1]
    return data


# --------------------------------------------------------------------------------------
# The model: which state to wait for, and which facts do not depend on timing
# --------------------------------------------------------------------------------------


class Undetermined(Exception):
    """The operation's outcome on stock asyncio depends on timing."""


class SideModel:
    def __init__(self, name: str, capacity: int, cfg: ProtoCfg):
        self.name = name
        self.capacity = capacity  # Bound on this side's bytes held by the kernel.
        self.cfg = cfg
        self.closing = False  # transport._closing
        self.conn_lost = False  # transport._conn_lost > 0: writes are dropped.
        self.lost = False  # connection_lost() has run.
        self.paused = False  # pause_reading() in effect.
        self.eof_stopped = False  # eof_received() returned True: reader removed.
        self.eof_sent = False  # write_eof() called.
        self.shut_wr = False  # The socket's write side is shut down.
        self.eof_count = 0
        self.received = 0  # Bytes delivered to this side's protocols.
        self.pending = 0  # Bytes written by this side not yet delivered to the peer.
        self.high, self.low = 64 * 1024, 16 * 1024
        self.flow_paused = False  # pause_writing() called, resume_writing() not yet.
        self.armed = cfg.close_on_data  # Will close in its next data_received().
        self.data_taint: int | None = None  # From this op on, data is undetermined.
        self.full_taint: int | None = None  # From this op on, everything is.

    def reading(self) -> bool:
        return not (self.closing or self.paused or self.eof_stopped or self.lost)

    def buffer_state(self) -> str:
        """The transport's write buffer: "zero", "pos" (non-empty) or "unknown"."""
        if self.conn_lost or self.lost or self.pending == 0:
            return "zero"
        return "pos" if self.pending > self.capacity else "unknown"

    def taint(self, kind: str, i: int) -> None:
        attr = f"{kind}_taint"
        if getattr(self, attr) is None:
            setattr(self, attr, i)


class Model:
    def __init__(self, variant: str, client: ProtoCfg, server: ProtoCfg):
        c_cap, s_cap = CAPACITY[variant]
        self.sides = {"c": SideModel("c", c_cap, client), "s": SideModel("s", s_cap, server)}

    def peer(self, side: str) -> SideModel:
        return self.sides["s" if side == "c" else "c"]

    def tainted(self) -> tuple:
        return tuple((s.data_taint, s.full_taint) for s in self.sides.values())

    # -- operations ----------------------------------------------------------------------

    def apply(self, op: tuple, i: int) -> None:
        side, name, *args = op
        me, peer = self.sides[side], self.peer(side)
        getattr(self, "_op_" + name)(me, peer, i, *args)
        self.settle(i)

    def _flow_check(self, me: SideModel, pending: int, high: int) -> bool:
        """Whether a _maybe_pause_protocol() with ``pending`` bytes not yet delivered
        certainly pauses (True) or certainly does not (False)."""
        if pending <= high:
            return False
        if pending - me.capacity > high:
            return True
        raise Undetermined("pause_writing() depends on what the kernel took")

    def _send(self, me: SideModel, peer: SideModel, i: int, size: int, pauses: bool) -> None:
        if size == 0:
            return
        if peer.closing or peer.lost:
            raise Undetermined("writing to a closing peer resets the connection")
        if peer.armed:
            if not (peer.reading() and me.pending == 0 and size <= ATOMIC_WRITE):
                raise Undetermined("the first read of a close_on_data protocol must be whole")
        total = me.pending + size
        if pauses and not me.flow_paused:
            me.flow_paused = self._flow_check(me, total, me.high)
        me.pending = total

    def _writable(self, me: SideModel) -> bool:
        """False if a write raises or is dropped without being sent."""
        return not (me.eof_sent or me.conn_lost or me.lost)

    @staticmethod
    def _check_not_after_deferred_close(me: SideModel) -> None:
        """Stock 3.11-3.13 never count the lost connection when a close() that waited
        for queued data completes, so a later write() or abort() fails there with an
        AttributeError. ferroloop treats that transport as closed, as after any other
        close() (tests/test_transports.py checks it); stock cannot be the oracle."""
        if me.lost and not me.conn_lost:
            raise Undetermined("write()/abort() after a deferred close() completed")

    def _op_write(self, me, peer, i, size, form, seed):
        self._check_not_after_deferred_close(me)
        if self._writable(me):
            self._send(me, peer, i, size, pauses=True)

    def _op_writelines(self, me, peer, i, sizes, seed):
        if me.eof_sent or not sizes:
            return
        if me.conn_lost or me.lost or me.closing:
            # 3.12+: after close() writelines() queues data on a dead transport.
            raise Undetermined("writelines() after close()")
        if _OWN_WRITELINES and 0 in sizes:
            # 3.12+ queues an empty chunk that never drains: close() then never
            # completes (seen on 3.12.1/3.13.0). Stock hangs, so it cannot be the oracle.
            raise Undetermined("writelines() with an empty chunk")
        if not WRITELINES_PAUSES and me.pending + sum(sizes) > me.high:
            # Stock 3.12/3.13 before the fix never pause in writelines(); ferroloop's
            # writelines() pauses as write() does (and as later CPython releases do).
            raise Undetermined("writelines() past the high-water mark")
        self._send(me, peer, i, sum(sizes), pauses=WRITELINES_PAUSES)

    def _op_write_n(self, me, peer, i, count, size):
        self._check_not_after_deferred_close(me)
        if self._writable(me):
            raise Undetermined("write_n is for writes that are not sent")

    def _op_pause_reading(self, me, peer, i):
        if not me.closing and not me.paused:
            me.paused = True

    def _op_resume_reading(self, me, peer, i):
        if not me.closing and me.paused:
            me.paused = False
            me.eof_stopped = False  # The reader is back: an EOF is read again.

    def _op_limits(self, me, peer, i, high, low):
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            return  # ValueError, nothing changes.
        me.high, me.low = high, low
        if me.buffer_state() == "zero":
            return
        if me.flow_paused:
            if not low < me.pending - me.capacity:
                raise Undetermined("resume_writing() could come before the peer reads")
        else:
            me.flow_paused = self._flow_check(me, me.pending, high)

    def _op_query(self, me, peer, i):
        pass

    def _op_write_eof(self, me, peer, i):
        if not me.closing and not me.eof_sent:
            me.eof_sent = True

    def _op_close(self, me, peer, i):
        self.close(me, peer, i)

    def _op_abort(self, me, peer, i):
        if me.conn_lost:
            return
        self._check_not_after_deferred_close(me)
        me.closing = True
        me.conn_lost = True
        if me.lost:
            return  # A close() that completed: abort() fails in stock, nothing changes.
        if me.pending:
            # The queued part is dropped, what the kernel holds arrives: how much is
            # a matter of timing.
            peer.taint("data", i)
            me.pending = 0
        if peer.pending:
            peer.taint("full", i)  # Closed with unread data: the peer is reset.

    def _op_set_protocol(self, me, peer, i, cfg):
        if me.lost:
            raise Undetermined("set_protocol() after connection_lost()")
        if cfg.close_on_data and peer.pending:
            raise Undetermined("close_on_data with data waiting")
        me.cfg = cfg
        me.armed = cfg.close_on_data

    def close(self, me: SideModel, peer: SideModel, i: int) -> None:
        if me.closing:
            return
        state = me.buffer_state()
        if state == "unknown":
            raise Undetermined("close() with a write buffer that may or may not be empty")
        me.closing = True
        if state == "zero":
            me.conn_lost = True
        if peer.pending:
            peer.taint("full", i)  # This socket closes with unread data: a reset.

    # -- what follows on its own ---------------------------------------------------------

    def settle(self, i: int) -> None:
        changed = True
        while changed:
            changed = False
            for name in ("c", "s"):
                me, peer = self.sides[name], self.peer(name)
                # Delivery: the peer reads what this side wrote.
                if me.pending and peer.reading() and not me.lost:
                    if peer.armed:
                        first = me.pending
                        if peer.cfg.kind == "buffered":
                            first = min(first, peer.cfg.sizes[0])
                        peer.received += first
                        unread = me.pending - first
                        me.pending = 0
                        peer.armed = False
                        self.close(peer, me, i)
                        if unread:
                            me.taint("full", i)
                    else:
                        peer.received += me.pending
                        me.pending = 0
                    changed = True
                # The write buffer drained: resume_writing(), then a pending close() or
                # write_eof() completes. (abort() empties it without resume_writing().)
                if me.pending == 0 and not me.lost:
                    if me.flow_paused and not me.conn_lost:
                        me.flow_paused = False
                        changed = True
                        if me.cfg.close_on_resume:
                            if me.low:
                                raise Undetermined("close() in resume_writing() with data queued")
                            self.close(me, peer, i)
                    if me.closing:
                        me.lost = True
                        changed = True
                    elif me.eof_sent and not me.shut_wr:
                        me.shut_wr = True
                        changed = True
                # The peer reads an EOF.
                if peer.reading() and me.pending == 0 and (me.shut_wr or me.lost):
                    peer.eof_count += 1
                    changed = True
                    if peer.cfg.eof_keep:
                        peer.eof_stopped = True
                    else:
                        self.close(peer, me, i)


# --------------------------------------------------------------------------------------
# Generating scenarios
# --------------------------------------------------------------------------------------

BUFFER_SIZES = [(7, 65536), (1024,), (65536,), (1, 4096, 100_000), (256 * 1024,)]
WRITE_FORMS = ["bytes", "bytes", "bytearray", "memoryview", "memoryview_slice"]
LIMITS = [0, 1, 1024, 8 * 1024, 16 * 1024, 64 * 1024, 128 * 1024, 256 * 1024]


def random_cfg(rng: random.Random) -> ProtoCfg:
    buffered = rng.random() < 0.3
    return ProtoCfg(
        kind="buffered" if buffered else "plain",
        sizes=rng.choice(BUFFER_SIZES) if buffered else (),
        eof_keep=rng.random() < 0.4,
        close_on_data=rng.random() < 0.08,
    )


def random_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.05:
        return 0
    if r < 0.35:
        return rng.randint(1, ATOMIC_WRITE)
    if r < 0.6:
        return rng.randint(ATOMIC_WRITE, 64 * 1024)
    return rng.randint(64 * 1024, MAX_WRITE)


OP_WEIGHTS = {
    "write": 30,
    "writelines": 8,
    "pause_reading": 9,
    "resume_reading": 9,
    "limits": 8,
    "query": 7,
    "write_eof": 3,
    "close": 3,
    "abort": 2,
    "set_protocol": 4,
    "write_n": 6,
    "motif": 12,
}
ENDING_OPS = {"write_eof", "close", "abort"}


def big_write(rng: random.Random, side: str, model: Model) -> tuple:
    """A write the peer (not reading) cannot take: past the capacity bound and the
    high-water mark when possible."""
    me = model.sides[side]
    least = me.capacity + me.high + 1 - me.pending
    size = rng.randint(min(max(least, 1), MAX_WRITE), MAX_WRITE)
    return (side, "write", size, rng.choice(WRITE_FORMS), rng.getrandbits(32))


def motif(rng: random.Random, model: Model) -> list[tuple]:
    """A short sequence reaching a state worth testing (each op is still checked)."""
    side = rng.choice("cs")
    peer = "s" if side == "c" else "c"
    kind = rng.choice(["flow", "deferred_close", "abort_queued", "half_close", "dropped"])
    ops: list[tuple] = []
    if kind in ("flow", "deferred_close", "abort_queued"):
        ops.append((peer, "pause_reading"))
        if rng.random() < 0.5:
            ops.append((side, "limits", rng.choice(LIMITS[2:]), None))
        ops.append(big_write(rng, side, model))
        if rng.random() < 0.5:
            ops.append(big_write(rng, side, model))
        ops.append((side, "query"))
        if kind == "deferred_close":
            ops.append((side, "close"))
            ops.append((side, "write", rng.randint(1, 5000), "bytes", rng.getrandbits(32)))
        elif kind == "abort_queued":
            ops.append((side, "abort"))
        ops.append((peer, "resume_reading"))
        if kind != "flow":
            ops.append((side, "write_n", rng.randint(1, 7), rng.choice([0, 1, 100])))
    elif kind == "half_close":
        ops.append((side, "write_eof"))
        ops.append((peer, "write", random_size(rng), "bytes", rng.getrandbits(32)))
        ops.append((peer, rng.choice(["write_eof", "close"])))
    else:
        ops.append((side, rng.choice(["close", "abort"])))
        ops.append((side, "write_n", rng.randint(3, 7), rng.choice([1, 100])))
        ops.append((side, "write_n", rng.randint(1, 4), 0))
    return ops


def random_ops(rng: random.Random, model: Model, progress: float) -> list[tuple]:
    side = rng.choice("cs")
    me = model.sides[side]
    weights = [w * (2 * progress if n in ENDING_OPS else 1) for n, w in OP_WEIGHTS.items()]
    name = rng.choices(list(OP_WEIGHTS), weights=weights)[0]
    if name == "motif":
        return motif(rng, model)
    if name == "write":
        size = random_size(rng)
        if model.peer(side).armed and rng.random() < 0.8:
            size = rng.randint(1, ATOMIC_WRITE)
        return [(side, "write", size, rng.choice(WRITE_FORMS), rng.getrandbits(32))]
    if name == "writelines":
        sizes = tuple(random_size(rng) // 2 for _ in range(rng.randint(0, 4)))
        return [(side, "writelines", sizes, rng.getrandbits(32))]
    if name == "write_n":
        if not (me.eof_sent or me.conn_lost or me.lost):
            return [(side, "write", random_size(rng), "bytes", rng.getrandbits(32))]
        return [(side, "write_n", rng.randint(1, 7), rng.choice([0, 1, 100]))]
    if name == "limits":
        r = rng.random()
        high, low = rng.choice(LIMITS), rng.choice(LIMITS)
        if r < 0.1:
            return [(side, "limits", None, None)]
        if r < 0.25:
            return [(side, "limits", high, None)]
        if r < 0.35:
            return [(side, "limits", None, low)]
        if r < 0.4:
            return [(side, "limits", high, high + 1)]  # Invalid: ValueError.
        return [(side, "limits", max(high, low), min(high, low))]
    if name == "set_protocol":
        return [(side, "set_protocol", random_cfg(rng))]
    return [(side, name)]


def try_apply(model: Model, op: tuple, i: int) -> Model | None:
    trial = copy.deepcopy(model)
    try:
        trial.apply(op, i)
    except Undetermined:
        return None
    return trial


def teardown_ops(model: Model, rng: random.Random, start: int) -> list[tuple]:
    """Resume reading, close both sides, abort what cannot finish otherwise."""
    ops: list[tuple] = []

    def add(*candidates: tuple) -> None:
        """Append the first candidate whose outcome is determined."""
        nonlocal model
        for op in candidates:
            trial = try_apply(model, op, start + len(ops))
            if trial is not None:
                model = trial
                ops.append(op)
                return
        raise AssertionError(f"no determined teardown among {candidates}")

    order = rng.sample("cs", 2)
    for side in order:
        if model.sides[side].paused and not model.sides[side].closing:
            other = "s" if side == "c" else "c"
            resume_other = [(other, "resume_reading")] if model.sides[other].paused else []
            add((side, "resume_reading"), *resume_other, (side, "abort"))
    for side in order:
        if model.sides[side].paused and not model.sides[side].closing:
            add((side, "resume_reading"), (side, "abort"))
    for side in rng.sample("cs", 2):
        if not model.sides[side].closing:
            add((side, "close"), (side, "abort"))
    for side in order:
        me = model.sides[side]
        if not me.lost:
            # Closed with data the peer will never read (it closed too): only a
            # side whose facts are already left out can be stuck like this.
            assert me.full_taint is not None, (side, vars(me))
            add((side, "abort"))
    return ops


def generate(variant: str, seed: int) -> Scenario:
    rng = random.Random(f"{BASE_SEED}/{variant}/{seed}")
    client, server = random_cfg(rng), random_cfg(rng)
    scenario = Scenario(f"{variant}-{seed}", variant, client, server)
    model = Model(variant, client, server)
    wanted = rng.randint(5, 35)
    for _ in range(wanted * 20):
        if len(scenario.ops) >= wanted:
            break
        for op in random_ops(rng, model, len(scenario.ops) / wanted):
            trial = try_apply(model, op, len(scenario.ops))
            if trial is None:
                continue  # Its outcome would depend on timing: skip it.
            if trial.tainted() != model.tainted() and rng.random() < 0.6:
                continue  # Mostly keep every fact comparable.
            model = trial
            scenario.ops.append(op)
    scenario.ops += teardown_ops(model, rng, len(scenario.ops))
    return scenario


# --------------------------------------------------------------------------------------
# Recording protocols
# --------------------------------------------------------------------------------------


class SideLog:
    """What the protocols of one side (the first one and those set with set_protocol)
    observed, and the driver's markers and query results, in order."""

    def __init__(self, name: str, wake):
        self.name = name
        self.entries: list = []
        self.received = 0
        self.sha256 = hashlib.sha256()
        self.eof_count = 0
        self.lost_count = 0
        self.flow_paused = False
        self.hints: set[int] = set()
        self.transport = None
        self.protocols: list[Recorder] = []
        self._wake = wake

    def add(self, *entry) -> None:
        self.entries.append(entry)
        self._wake()

    def data(self, idx: int, data: bytes) -> None:
        self.received += len(data)
        self.sha256.update(data)
        last = self.entries[-1] if self.entries else None
        if isinstance(last, list) and last[1] == idx:
            last[2] += len(data)
            last[3].update(data)
        else:
            self.entries.append(["data", idx, len(data), hashlib.sha256(data)])
        self._wake()


class Recorder(asyncio.Protocol):
    def __init__(self, log: SideLog, cfg: ProtoCfg):
        self.log = log
        self.cfg = cfg
        self.idx = len(log.protocols)
        log.protocols.append(self)
        self.transport = None
        self.closed_in_data = False

    def connection_made(self, transport):
        self.transport = transport
        self.log.transport = transport
        self.log.add("made", self.idx)

    def data_received(self, data):
        if type(data) is not bytes:
            self.log.add("data_received() got", type(data).__name__)
        self.log.data(self.idx, data)
        self._maybe_close()

    def _maybe_close(self):
        if self.cfg.close_on_data and not self.closed_in_data:
            self.closed_in_data = True
            self.log.add("close() in data_received", self.idx)
            self.transport.close()

    def eof_received(self):
        self.log.eof_count += 1
        self.log.add("eof", self.idx)
        return True if self.cfg.eof_keep else None

    def pause_writing(self):
        self.log.flow_paused = True
        self.log.add("pause_writing", self.idx)

    def resume_writing(self):
        self.log.flow_paused = False
        self.log.add("resume_writing", self.idx)
        if self.cfg.close_on_resume:
            self.log.add("close() in resume_writing", self.idx)
            self.transport.close()

    def connection_lost(self, exc):
        self.log.lost_count += 1
        self.log.add("lost", self.idx, None if exc is None else type(exc).__name__)


class BufferedRecorder(Recorder, asyncio.BufferedProtocol):
    def __init__(self, log: SideLog, cfg: ProtoCfg):
        super().__init__(log, cfg)
        self.calls = 0
        self._buf = bytearray()

    def get_buffer(self, sizehint):
        self.log.hints.add(sizehint)
        self._buf = bytearray(self.cfg.sizes[self.calls % len(self.cfg.sizes)])
        self.calls += 1
        return self._buf

    def buffer_updated(self, nbytes):
        self.log.data(self.idx, bytes(self._buf[:nbytes]))
        self._maybe_close()


def make_protocol(log: SideLog, cfg: ProtoCfg) -> Recorder:
    return (BufferedRecorder if cfg.kind == "buffered" else Recorder)(log, cfg)


# --------------------------------------------------------------------------------------
# Running a scenario on one loop
# --------------------------------------------------------------------------------------

# Transport class names differ between the loops ("_SelectorSocketTransport",
# "SocketTransport"): exception handler messages name them.
TRANSPORT_CLASS = re.compile(r"\b_?\w*SocketTransport\b")


def coarse_buffer(size: int, state: str):
    """get_write_buffer_size() as far as it is timing-independent: exact when the
    model says empty, non-empty or not when it says non-empty, else "?"."""
    if state == "zero":
        return size
    if state == "pos":
        return ">0" if size else 0
    return "?"


DRIVER_ENTRIES = {"op", "q", "raised", "set_protocol", "limits", "reading", "closing"}


@dataclass
class RunResult:
    facts: dict
    stuck: str | None
    model_errors: list[str]


class ScenarioRun:
    def __init__(self, kind: str, scenario: Scenario, sock_path: str, records: list):
        self.kind = kind
        self.scenario = scenario
        self.sock_path = sock_path
        self.records = records  # caplog's live list of log records.
        self._waiter: asyncio.Future | None = None
        self.logs = {"c": SideLog("c", self._wake), "s": SideLog("s", self._wake)}
        self.global_log: dict[int, tuple] = {}
        self.contexts: list[dict] = []
        self.stuck: str | None = None
        self.model_errors: list[str] = []
        self.states: dict[tuple, tuple] = {}

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def until(self, predicate) -> None:
        while not predicate():
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    # -- connecting ----------------------------------------------------------------------

    async def connect(self):
        loop = asyncio.get_running_loop()
        sc = self.scenario
        client_log, server_log = self.logs["c"], self.logs["s"]

        def client_factory():
            return make_protocol(client_log, sc.client)

        def server_factory():
            return make_protocol(server_log, sc.server)

        server = None
        if sc.variant == "tcp":
            # Accepted sockets inherit the listener's buffer sizes (set before the
            # handshake, so the advertised window is small from the start).
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUF)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            server = await loop.create_server(server_factory, sock=listener)
            await loop.create_connection(client_factory, *listener.getsockname())
        elif sc.variant == "unix":
            server = await loop.create_unix_server(server_factory, self.sock_path)
            await loop.create_unix_connection(client_factory, self.sock_path)
        else:
            a, b = socket.socketpair()
            await loop.connect_accepted_socket(server_factory, a)
            await loop.create_connection(client_factory, sock=b)
        await self.until(lambda: server_log.transport is not None)
        for name, log in self.logs.items():
            sock = log.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)
            if sc.variant == "tcp" and name == "c":
                # Lock (no autotuning) without shrinking: see CAPACITY.
                size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size // 2)
            elif sc.variant != "tcp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUF)
        return server

    # -- operations ----------------------------------------------------------------------

    def execute(self, op: tuple, model: Model) -> None:
        side, name, *args = op
        log = self.logs[side]
        t = log.transport
        try:
            if name == "write":
                size, form, seed = args
                t.write(payload(size, seed, form))
            elif name == "writelines":
                sizes, seed = args
                t.writelines([payload(n, seed + k) for k, n in enumerate(sizes)])
            elif name == "write_n":
                count, size = args
                for k in range(count):
                    try:
                        t.write(b"w" * size)
                    except Exception as exc:
                        log.add("raised", k, type(exc).__name__, str(exc))
            elif name in ("pause_reading", "resume_reading"):
                before = t.is_reading()
                getattr(t, name)()
                log.add("reading", before, t.is_reading())
            elif name == "limits":
                high, low = args
                t.set_write_buffer_limits(high=high, low=low)
                log.add("limits", t.get_write_buffer_limits())
            elif name == "query":
                size = t.get_write_buffer_size()
                log.add(
                    "q",
                    ("buffer", coarse_buffer(size, model.sides[side].buffer_state())),
                    ("closing", t.is_closing()),
                    ("reading", t.is_reading()),
                    ("limits", t.get_write_buffer_limits()),
                    ("can_write_eof", t.can_write_eof()),
                    ("protocol", self._which_protocol(log, t.get_protocol())),
                )
            elif name == "write_eof":
                t.write_eof()
                log.add("closing", t.is_closing())
            elif name in ("close", "abort"):
                getattr(t, name)()
                log.add("closing", t.is_closing())
            elif name == "set_protocol":
                (cfg,) = args
                new = make_protocol(log, cfg)
                new.transport = t
                t.set_protocol(new)
                log.add("set_protocol", new.idx, repr(cfg), t.get_protocol() is new)
            else:
                raise AssertionError(f"unknown operation {name!r}")
        except Exception as exc:
            log.add("raised", type(exc).__name__, str(exc))

    @staticmethod
    def _which_protocol(log: SideLog, protocol) -> str:
        if protocol is None:
            return "None"
        if protocol is log.protocols[-1]:
            return "current"
        return "other"

    def predicate(self, model: Model):
        """The state the model predicts once the operation's effects have settled."""
        wanted = []
        for name, side in model.sides.items():
            if side.full_taint is not None:
                continue
            log = self.logs[name]
            if side.data_taint is None:
                wanted.append((f"{name} received {side.received}", log, "received", side.received))
            wanted.append(
                (f"{name} eof_received x{side.eof_count}", log, "eof_count", side.eof_count)
            )
            if side.lost:
                wanted.append((f"{name} connection_lost", log, "lost_count", 1))

        # No need to wait for resume_writing(): stock calls it from the callback that
        # sends the last queued bytes, before the peer can receive them.
        return lambda: [text for text, log, attr, n in wanted if getattr(log, attr) < n]

    def snapshot(self, i: int, model: Model) -> None:
        """Per side, after operation ``i``: write buffer empty or not, pause_writing
        state, is_closing(), is_reading(). Stock must agree with the model."""
        for name, side in model.sides.items():
            if side.full_taint is not None:
                continue
            log = self.logs[name]
            t = log.transport
            state = side.buffer_state()
            buffer = coarse_buffer(t.get_write_buffer_size(), state)
            if self.kind == "asyncio" and buffer != {"zero": 0, "pos": ">0"}.get(state, "?"):
                self.model_errors.append(f"op {i}: {name} write buffer {buffer}, model: {state}")
            if log.flow_paused != side.flow_paused and self.kind == "asyncio":
                self.model_errors.append(
                    f"op {i}: {name} paused for writing: {log.flow_paused}, "
                    f"model: {side.flow_paused}"
                )
            self.states[(name, i)] = (
                ("buffer", buffer),
                ("paused_writing", log.flow_paused),
                ("closing", t.is_closing()),
                ("reading", t.is_reading()),
            )

    async def run(self) -> RunResult:
        check_loop(self.kind)
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: self.contexts.append(context))
        server = await self.connect()
        sc = self.scenario
        model = Model(sc.variant, sc.client, sc.server)
        for i, op in enumerate(sc.ops):
            for log in self.logs.values():
                log.add("op", i)
            n_records, n_contexts = len(self.records), len(self.contexts)
            self.execute(op, model)
            model.apply(op, i)
            unmet = self.predicate(model)
            try:
                async with asyncio.timeout(QUIESCE_TIMEOUT):
                    await self.until(lambda unmet=unmet: not unmet())
            except TimeoutError:
                self.stuck = f"after op {i} ({op_repr(op)}): still waiting for {unmet()}"
            self.global_log[i] = self._log_delta(n_records, n_contexts)
            self.snapshot(i, model)
            if self.stuck:
                break
        await self.finish(server)
        return RunResult(self.facts(model), self.stuck, self.model_errors)

    def _log_delta(self, n_records: int, n_contexts: int) -> tuple:
        new = [r for r in self.records[n_records:] if r.name == "asyncio"]
        warnings = sum(1 for r in new if r.getMessage() == SEND_WARNING)
        other = [(r.levelname, str(r.msg)) for r in new if r.getMessage() != SEND_WARNING]
        contexts = [
            (
                TRANSPORT_CLASS.sub("<transport>", c.get("message", "")),
                type(c.get("exception")).__name__,
            )
            for c in self.contexts[n_contexts:]
        ]
        return (("send warnings", warnings), ("other log records", other), ("handler", contexts))

    async def finish(self, server) -> None:
        """Wait for both connection_lost calls; if stuck, abort both first."""
        logs = list(self.logs.values())
        if self.stuck:
            for log in logs:
                log.transport.abort()
        try:
            async with asyncio.timeout(QUIESCE_TIMEOUT):
                await self.until(lambda: all(log.lost_count for log in logs))
        except TimeoutError:
            never = [log.name for log in logs if not log.lost_count]
            self.stuck = (self.stuck or "") + f" connection_lost never called on {never}"
            for log in logs:
                log.transport.abort()
        if server is not None:
            server.close()
            async with asyncio.timeout(QUIESCE_TIMEOUT):
                await server.wait_closed()

    # -- facts ---------------------------------------------------------------------------

    def facts(self, model: Model) -> dict:
        facts: dict = {}
        n_ops = len(self.scenario.ops)
        for name, log in self.logs.items():
            side = model.sides[name]
            full = side.full_taint if side.full_taint is not None else n_ops + 1
            data = side.data_taint if side.data_taint is not None else n_ops + 1
            sections: dict[int, list] = {}
            current = -1
            callbacks = []
            for entry in log.entries:
                if entry[0] == "op":
                    current = entry[1]
                    continue
                if entry[0] == "data":
                    _, idx, n, sha = entry
                    entry = ("data", idx, n, sha.hexdigest()[:12])
                    if current >= data:
                        entry = ("data", idx, "?")
                if entry[0] not in DRIVER_ENTRIES:
                    callbacks.append(entry[0])
                if current < full:
                    sections.setdefault(current, []).append(entry)
            for op in range(-1, min(full, n_ops)):
                ran = op < len(self.global_log)
                facts[(name, "events during op", op)] = (
                    tuple(sections.get(op, ())) if ran else "<not run>"
                )
            for (state_side, op), state in self.states.items():
                if state_side == name and op < full:
                    facts[(name, "state after op", op)] = state
            facts[(name, "connection_made first")] = callbacks[:1] == ["made"]
            facts[(name, "connection_lost last, once")] = (
                callbacks.count("lost") == 1 and callbacks[-1] == "lost"
            )
            facts[(name, "get_buffer sizehints")] = tuple(sorted(log.hints))
            if full > n_ops:
                lost = [e for e in log.entries if e[0] == "lost"]
                facts[(name, "connection_lost exceptions")] = tuple(e[2] for e in lost)
                if data > n_ops:
                    facts[(name, "bytes received")] = log.received
                    facts[(name, "sha256 received")] = log.sha256.hexdigest()
        for i, delta in self.global_log.items():
            facts[("logs and exception handler", "during op", i)] = delta
        facts[("stuck",)] = self.stuck
        return facts


def run_once(kind: str, scenario: Scenario, tmp_path, records: list, n: int) -> RunResult:
    sock_path = str(tmp_path / f"{n}.sock")
    if len(os.fsencode(sock_path)) > 100:
        pytest.skip("tmp_path too long for a Unix socket path")
    run = ScenarioRun(kind, scenario, sock_path, records)
    return conftest.run_on(factory_for(kind), run.run, timeout=SCENARIO_TIMEOUT)


def fmt_fact(key: tuple) -> str:
    return " / ".join(map(str, key))


def check_scenario(scenario: Scenario, tmp_path, caplog) -> None:
    """Run ``scenario`` twice on stock asyncio (the oracle) and once on ferroloop; the
    facts stock produced both times must be ferroloop's."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    stock = [run_once("asyncio", scenario, tmp_path, caplog.records, n) for n in (0, 1)]
    for result in stock:
        # Stock is the oracle: if it does not do what the model predicts, the model (this
        # test) is wrong.
        assert result.stuck is None and not result.model_errors, (
            f"TEST BUG: stock asyncio does not follow the model: {result.stuck} "
            f"{result.model_errors}\n{scenario.describe()}"
        )
    ferro = run_once("ferroloop", scenario, tmp_path, caplog.records, 2)

    a, b, f = stock[0].facts, stock[1].facts, ferro.facts
    keys = sorted(set(a) | set(b) | set(f), key=lambda k: tuple(map(str, k)))
    unstable = [k for k in keys if a.get(k, MISSING) != b.get(k, MISSING)]
    diffs = [k for k in keys if k not in unstable and a.get(k, MISSING) != f.get(k, MISSING)]
    if diffs:
        lines = [
            "ferroloop differs from stock asyncio (the oracle)",
            scenario.describe(),
            "facts that differ (stock, then ferroloop):",
        ]
        for k in diffs:
            lines += [
                f"  {fmt_fact(k)}",
                f"    stock:     {a.get(k, MISSING)!r}",
                f"    ferroloop: {f.get(k, MISSING)!r}",
            ]
        if unstable:
            lines.append("not compared (differed between the two stock runs):")
            lines += [f"  {fmt_fact(k)}" for k in unstable]
        pytest.fail("\n".join(lines), pytrace=False)


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant, seed",
    [(v, s) for v in VARIANTS for s in range(SEEDS_PER_VARIANT)],
    ids=[f"{v}-{s}" for v in VARIANTS for s in range(SEEDS_PER_VARIANT)],
)
def test_random_scenario(variant, seed, tmp_path, caplog):
    check_scenario(generate(variant, seed), tmp_path, caplog)


# --------------------------------------------------------------------------------------
# Hand-written scenarios: the edge cases, whatever the generator picks
# --------------------------------------------------------------------------------------


def W(side: str, size: int, form: str = "bytes", seed: int = 1) -> tuple:
    return (side, "write", size, form, seed)


def events(facts: dict, side: str, op: int | None = None) -> list:
    """The events ``side`` recorded (during ``op``, or during any op)."""
    return [
        e
        for k, v in facts.items()
        if k[:2] == (side, "events during op") and (op is None or k[2] == op)
        if isinstance(v, tuple)
        for e in v
    ]


def send_warnings(facts: dict, op: int | None = None) -> int:
    return sum(
        dict(v)["send warnings"]
        for k, v in facts.items()
        if k[:2] == ("logs and exception handler", "during op") and op in (None, k[2])
    )


def fixed(name, variant, client, server, ops, expect) -> tuple[Scenario, object]:
    scenario = Scenario(name, variant, client, server, list(ops))
    model = Model(variant, client, server)
    for i, op in enumerate(scenario.ops):
        try:
            model.apply(op, i)
        except Undetermined as exc:
            raise AssertionError(f"{name}: op {i} {op_repr(op)}: {exc}") from None
    scenario.ops += teardown_ops(model, random.Random(name), len(scenario.ops))
    return scenario, expect


PLAIN = ProtoCfg()
KEEP = ProtoCfg(eof_keep=True)

FIXED = [
    fixed(
        "pause_and_resume_writing",
        "tcp",
        PLAIN,
        PLAIN,
        [
            ("s", "pause_reading"),
            ("c", "limits", 16 * 1024, 4 * 1024),
            W("c", MAX_WRITE, "memoryview"),  # Past high-water mark + CAPACITY: pauses.
            ("c", "query"),
            W("c", 1000, "bytearray"),  # Queued behind: no second pause.
            ("s", "resume_reading"),  # Drains: resumes.
            ("c", "query"),
        ],
        lambda f: (
            events(f, "c", 2) == [("pause_writing", 0)]
            and ("resume_writing", 0) in events(f, "c", 5)
            and events(f, "c", 3)[0][1] == ("buffer", ">0")
            and ("data", 0, MAX_WRITE + 1000, ANY) in events(f, "s", 5)
        ),
    ),
    fixed(
        "lowering_the_limits_pauses",
        "unix",
        PLAIN,
        PLAIN,
        [
            ("s", "pause_reading"),
            ("c", "limits", 256 * 1024, 0),
            W("c", 200 * 1024),  # Below the high-water mark: no pause.
            ("c", "limits", 100 * 1024, 1024),  # Now above it: pauses at once.
            ("s", "resume_reading"),
        ],
        lambda f: (
            events(f, "c", 2) == []
            and events(f, "c", 3) == [("pause_writing", 0), ("limits", (1024, 100 * 1024))]
            and ("resume_writing", 0) in events(f, "c", 4)
        ),
    ),
    fixed(
        "half_close_eof_received_true",
        "tcp",
        PLAIN,
        KEEP,
        [
            W("c", 5000),
            ("c", "write_eof"),
            ("s", "query"),
            W("s", 60_000),  # The half-closed side still writes.
            ("c", "query"),
            W("c", 10),  # RuntimeError after write_eof().
            ("s", "close"),
        ],
        lambda f: (
            ("eof", 0) in events(f, "s", 1)
            and ("data", 0, 60_000, ANY) in events(f, "c", 3)
            and events(f, "c", 5)[0][:2] == ("raised", "RuntimeError")
            and [e[0] for e in events(f, "c", 6)] == ["eof", "lost"]
        ),
    ),
    fixed(
        "half_close_eof_received_none_closes",
        "socketpair",
        KEEP,
        PLAIN,
        [
            W("c", 1000),
            ("c", "write_eof"),  # The server's eof_received() returns None: it closes.
            ("c", "query"),
            ("s", "write_n", 6, 1),
            ("c", "close"),
        ],
        lambda f: (
            [e[0] for e in events(f, "s", 1)] == ["eof", "lost"]
            and ("eof", 0) in events(f, "c", 1)
            and send_warnings(f, 3) == 2
        ),
    ),
    fixed(
        "eof_read_again_after_pause_and_resume",
        "unix",
        PLAIN,
        KEEP,
        [
            ("c", "write_eof"),
            ("s", "pause_reading"),
            ("s", "resume_reading"),  # The reader is back and reads the EOF again.
            ("s", "query"),
            ("s", "close"),
        ],
        lambda f: (
            [e for e in events(f, "s") if e[0] == "eof"] == [("eof", 0)] * 2
            and ("eof", 0) in events(f, "s", 2)
        ),
    ),
    fixed(
        "writes_after_close_warn_from_the_fifth",
        "tcp",
        PLAIN,
        PLAIN,
        [W("c", 100), ("c", "close"), ("c", "write_n", 10, 7), ("c", "write_n", 3, 0)],
        lambda f: send_warnings(f, 2) == 6 and send_warnings(f, 3) == 0,
    ),
    fixed(
        "writes_after_abort",
        "socketpair",
        PLAIN,
        PLAIN,
        [("c", "abort"), ("c", "write_n", 7, 1), ("c", "query")],
        lambda f: send_warnings(f) == 3 and ("lost", 0, None) in events(f, "c", 0),
    ),
    fixed(
        "deferred_close_delivers_everything",
        "tcp",
        PLAIN,
        PLAIN,
        [
            ("s", "pause_reading"),
            W("c", 250 * 1024),
            ("c", "close"),  # Data queued: connection_lost waits for it.
            ("c", "query"),
            W("c", 3000, "memoryview"),  # Still queued, and sent, after close().
            ("c", "query"),
            ("s", "resume_reading"),
        ],
        lambda f: (
            ("lost", 0, None) in events(f, "c", 6)
            and ("lost", 0, None) not in events(f, "c", 2)
            and f[("s", "bytes received")] == 250 * 1024 + 3000
        ),
    ),
    fixed(
        "abort_drops_queued_data",
        "unix",
        PLAIN,
        PLAIN,
        [
            ("s", "pause_reading"),
            W("c", 200 * 1024),
            ("c", "query"),
            ("c", "abort"),  # No resume_writing(), ever.
            ("c", "query"),
            ("s", "resume_reading"),  # Gets what the kernel held, then EOF.
        ],
        lambda f: (
            ("pause_writing", 0) in events(f, "c", 1)
            and ("lost", 0, None) in events(f, "c", 3)
            and ("resume_writing", 0) not in events(f, "c")
            and [e[0] for e in events(f, "s", 5)][-3:] == ["data", "eof", "lost"]
        ),
    ),
    fixed(
        "close_in_data_received",
        "tcp",
        PLAIN,
        ProtoCfg(close_on_data=True),
        [W("c", 500), ("c", "write_n", 6, 1)],
        lambda f: (
            [e[0] for e in events(f, "s", 0)] == ["data", "close() in data_received", "lost"]
            and [e[0] for e in events(f, "c", 0)] == ["eof", "lost"]
            and send_warnings(f, 1) == 2
        ),
    ),
    fixed(
        "close_in_buffer_updated_with_data_unread",
        "socketpair",
        PLAIN,
        ProtoCfg(kind="buffered", sizes=(7, 65536), close_on_data=True),
        [W("c", 500)],  # Reads 7 bytes and closes: the client is reset.
        lambda f: events(f, "s", 0)[0][:3] == ("data", 0, 7),
    ),
    fixed(
        "set_protocol_midstream",
        "tcp",
        PLAIN,
        PLAIN,
        [
            W("c", 1000),
            ("s", "set_protocol", ProtoCfg(kind="buffered", sizes=(1024,))),
            W("c", 200 * 1024, "bytearray"),
            ("s", "set_protocol", KEEP),
            W("c", 10),
            ("c", "write_eof"),
            W("s", 5),
            ("s", "query"),
            ("s", "close"),
        ],
        lambda f: (
            ("data", 1, 200 * 1024, ANY) in events(f, "s", 2)
            and ("eof", 2) in events(f, "s", 5)
            and f[("s", "get_buffer sizehints")] == (-1,)
        ),
    ),
    fixed(
        "set_protocol_while_paused_for_writing",
        "unix",
        PLAIN,
        PLAIN,
        [
            ("s", "pause_reading"),
            W("c", 200 * 1024),
            ("c", "set_protocol", PLAIN),
            ("s", "resume_reading"),  # resume_writing() goes to the new protocol.
        ],
        lambda f: (
            ("pause_writing", 0) in events(f, "c", 1) and ("resume_writing", 1) in events(f, "c", 3)
        ),
    ),
    fixed(
        "close_in_resume_writing",
        "socketpair",
        ProtoCfg(close_on_resume=True),
        PLAIN,
        [
            ("c", "limits", 16 * 1024, 0),
            ("s", "pause_reading"),
            W("c", 100 * 1024),
            ("s", "resume_reading"),  # Drained: resume_writing() closes.
        ],
        lambda f: (
            [e[0] for e in events(f, "c", 3)][:3]
            == ["resume_writing", "close() in resume_writing", "lost"]
        ),
    ),
    fixed(
        "both_directions_blocked",
        "socketpair",
        PLAIN,
        ProtoCfg(kind="buffered", sizes=(1, 4096, 100_000)),
        [
            ("c", "pause_reading"),
            ("s", "pause_reading"),
            W("c", 150 * 1024),
            W("s", 150 * 1024, "memoryview_slice"),
            ("c", "query"),
            ("s", "query"),
            ("s", "resume_reading"),
            ("c", "resume_reading"),
        ],
        lambda f: (
            ("pause_writing", 0) in events(f, "c", 2)
            and ("pause_writing", 0) in events(f, "s", 3)
            and f[("s", "bytes received")] == f[("c", "bytes received")] == 150 * 1024
        ),
    ),
    fixed(
        "write_and_writelines_after_write_eof",
        "tcp",
        PLAIN,
        KEEP,
        [
            ("c", "write_eof"),
            W("c", 10),
            ("c", "writelines", (1, 2), 3),
            ("c", "write_eof"),
            ("c", "query"),
        ],
        lambda f: (
            [e[1] for e in events(f, "c", 1)] == ["RuntimeError"]
            and events(f, "c", 2)[0][:2] == ("raised", "RuntimeError")
        ),
    ),
    fixed(
        "pause_and_resume_reading_after_close",
        "unix",
        PLAIN,
        PLAIN,
        [
            ("c", "pause_reading"),
            ("c", "close"),
            ("c", "resume_reading"),
            ("c", "pause_reading"),
            ("c", "query"),
        ],
        lambda f: events(f, "c", 2)[0] == ("reading", False, False),
    ),
]

if WRITELINES_PAUSES:
    # Stock 3.12/3.13 before the fix never pause in writelines(): no oracle there.
    FIXED.append(
        fixed(
            "writelines_and_flow_control",
            "unix",
            PLAIN,
            PLAIN,
            [
                ("s", "pause_reading"),
                ("c", "writelines", (100 * 1024, 100 * 1024, 7), 5),
                ("c", "query"),
                ("s", "resume_reading"),
            ],
            lambda f: (("pause_writing", 0) in events(f, "c", 1)) == WRITELINES_PAUSES,
        )
    )


class _Any:
    def __eq__(self, other):
        return True


ANY = _Any()


@pytest.mark.parametrize("scenario, expect", FIXED, ids=[scenario.name for scenario, _ in FIXED])
def test_fixed_scenario(scenario, expect, tmp_path, caplog):
    # The scenario must do on stock what it is meant to test, else it tests nothing.
    stock = run_once("asyncio", scenario, tmp_path, caplog.records, 9)
    assert stock.stuck is None and expect(stock.facts), (
        f"TEST BUG: {scenario.name} does not do on stock asyncio what it is meant to\n"
        f"{scenario.describe()}\n"
        + "\n".join(f"  {fmt_fact(k)} = {v!r}" for k, v in stock.facts.items())
    )
    check_scenario(scenario, tmp_path, caplog)
