"""Differential, seeded randomized test of datagram transports: ferroloop against stock
asyncio, which is the oracle.

A scenario is three datagram endpoints on one loop and a list of operations generated
from ``random.Random`` with a fixed base seed:

- ``A``, the transport under test: UDP over IPv4 ("udp4") or IPv6 ("udp6"), or a Unix
  datagram socket with an (abstract) name ("unix"), connected to ``B`` or not, with a
  protocol that may echo what it receives, call ``close()``/``abort()``/
  ``pause_reading()`` on its n-th datagram, schedule a send with ``call_soon``, or close
  from ``error_received``/``pause_writing``;
- ``B``, its peer, which records what arrives and sends to ``A`` on request;
- ``C`` (UDP only), connected to a port where nothing listens, so its sends come back as
  ICMP errors (``error_received`` on the read path, or on the send path while ``C`` does
  not read).

Operations: ``A.sendto`` of sizes 0, 1, up to 2000, near 64 KiB and (UDP) one byte over
the limit, as bytes, bytearray or memoryview, with no address, ``B``'s address, another
address (``ValueError`` when connected) or a malformed one (a fatal error); wrong data
types; ``B`` sending to ``A``; ``pause_reading``/``resume_reading`` on ``A`` and ``B`` (a
``B`` that does not read makes a Unix ``A`` queue and, past the limits, pause writing);
``set_write_buffer_limits``; queries (``get_write_buffer_size``, ``is_closing``,
``is_reading``, ...); ``close``/``abort`` at any point, and sends after them; ``C``'s sends
and pauses.

Each scenario runs twice on stock asyncio and once on ferroloop. The protocols record
what they observe, per endpoint and per operation: datagrams (size, sha256, and who sent
them), errors (type and errno), ``pause_writing``/``resume_writing``, ``connection_lost``;
and the driver records what each call raised and the queries' results. Also recorded: the
"socket.send() raised exception." warnings and the exception handler's calls per
operation, and the totals each endpoint received. Then every fact that was the same in
both stock runs must be the same on ferroloop.

Timing: after each operation the driver waits (bounded) for quiescence: every endpoint
that reads has nothing queued in the kernel (``poll()`` on its socket), no transport
whose peer reads still holds queued datagrams, and the loop went round a few times with
nothing new recorded; it never sleeps for a fixed time. What stock does in a quiescent
state does not depend on timing, except for the sizes at ``resume_writing`` (how much one
drain sent), which are not recorded. Stock must reach quiescence after every operation;
if it does not, the generator (this test) is wrong and the test fails saying so. The
generator avoids what would make stock's outcome depend on the kernel's timing: UDP
datagrams sent to a ``B`` that does not read are bounded, so its receive buffer never
overflows.

A failure prints the seed, the operations and the facts that differ. Hand-written
scenarios at the end pin the edge cases, whatever the generator picks.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import select
import socket
import sys
from dataclasses import dataclass, field

import conftest
import pytest
from conftest import check_loop, factory_for

WATCHDOG_TIMEOUT = 120.0
pytestmark = pytest.mark.usefixtures("watchdog")

BASE_SEED = 20261202
SEEDS_PER_VARIANT = 100
SCENARIO_TIMEOUT = 30.0
QUIESCE_TIMEOUT = 5.0

HAS_IPV6 = socket.has_ipv6
try:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as _probe:
        _probe.bind(("::1", 0))
except OSError:
    HAS_IPV6 = False
VARIANTS = ["udp4", "udp6", "unix"] if HAS_IPV6 else ["udp4", "unix"]

MAX_UDP = {"udp4": 65507, "udp6": 65527}
#: 3.11 and 3.12 drop empty datagrams in sendto(); 3.13+ send them.
EMPTY_SENT = sys.version_info >= (3, 13)
#: UDP sent to a B that does not read stays under this (B's receive buffer is ~200 KiB
#: of kernel memory, each datagram costing its size plus about 1 KiB).
UDP_BACKLOG_BYTES = 60_000
UDP_BACKLOG_COUNT = 20

SEND_WARNING = "socket.send() raised exception."
MISSING = "<missing>"
TRANSPORT_CLASS = re.compile(r"\b_?\w*DatagramTransport\b")


# --------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cfg:
    """A's protocol: ``on_dgram`` is what it does in datagram_received ("none", "echo",
    "soon_send", and on the ``nth`` datagram "close", "abort" or "pause");
    ``on_error``/``on_pause``: "none" or "close" in error_received/pause_writing."""

    on_dgram: str = "none"
    nth: int = 1
    on_error: str = "none"
    on_pause: str = "none"


@dataclass
class Scenario:
    name: str
    variant: str
    connected: bool
    cfg: Cfg
    ops: list[tuple] = field(default_factory=list)

    def describe(self) -> str:
        lines = [
            f"scenario {self.name} (variant {self.variant}, "
            f"{'connected' if self.connected else 'unconnected'} A, base seed {BASE_SEED})",
            f"  A's protocol {self.cfg}",
        ]
        lines += [f"  op {i:2}: {op}" for i, op in enumerate(self.ops)]
        return "\n".join(lines)


def payload(size: int, seed: int, form: str = "bytes"):
    data = random.Random(seed).randbytes(size)
    if form == "bytearray":
        return bytearray(data)
    if form == "memoryview":
        return memoryview(b"<" + data + b">")[1 : size + 1]
    return data


class Gen:
    """What the generator tracks to keep outcomes timing-independent."""

    def __init__(self, variant: str):
        self.variant = variant
        self.b_reading = True
        self.udp_backlog = [0, 0]  # Datagrams and bytes sent to B while it does not read.
        self.c_sends = 0

    def may_send(self, size: int) -> bool:
        if self.variant == "unix" or self.b_reading:
            return True
        count, size_sum = self.udp_backlog
        if count + 1 > UDP_BACKLOG_COUNT or size_sum + size > UDP_BACKLOG_BYTES:
            return False
        self.udp_backlog = [count + 1, size_sum + size]
        return True


def random_size(rng: random.Random, variant: str, gen: Gen) -> int:
    roll = rng.random()
    if roll < 0.1:
        return 0
    if roll < 0.2:
        return 1
    if roll < 0.3 and (variant == "unix" or gen.b_reading):
        top = MAX_UDP.get(variant, 65507)
        return rng.choice([top, top - 1, 60_000])
    if roll < 0.33 and variant in MAX_UDP:
        return MAX_UDP[variant] + 1  # EMSGSIZE: error_received.
    return rng.randint(2, 2000)


def random_op(
    rng: random.Random, gen: Gen, variant: str, connected: bool, progress: float
) -> tuple | None:
    roll = rng.random()
    if roll < 0.3:
        size = random_size(rng, variant, gen)
        if size > MAX_UDP.get(variant, 10**9):
            return ("send", size, "bytes", "none" if connected else "B", rng.randrange(10**6))
        if not gen.may_send(size):
            return None
        addr = rng.choice(["none", "B"] if connected else ["B", "B", "B"])
        form = rng.choice(["bytes", "bytes", "bytearray", "memoryview"])
        return ("send", size, form, addr, rng.randrange(10**6))
    if roll < 0.4:
        # Past a Unix peer's queue (10 datagrams) when it does not read.
        count = rng.randint(2, 30 if variant == "unix" else 12)
        size = rng.randint(0, 1500)
        if not all(gen.may_send(size) for _ in range(count)):
            return None
        return ("burst", count, size, rng.randrange(10**6))
    if roll < 0.55:
        return ("b_send", rng.choice([0, 1, rng.randint(2, 3000)]), rng.randrange(10**6))
    if roll < 0.63:
        name = "b_pause" if gen.b_reading else "b_resume"
        gen.b_reading = not gen.b_reading
        if gen.b_reading:
            gen.udp_backlog = [0, 0]
        return (name,)
    if roll < 0.7:
        return (rng.choice(["a_pause", "a_resume"]),)
    if roll < 0.75:
        high = rng.choice([0, 1000, 4000, 20_000, 64 * 1024])
        return ("limits", high, rng.choice([None, 0, high // 4]))
    if roll < 0.82:
        return ("query",)
    if roll < 0.88:
        bad = ["data_str", "data_int", "data_none"]
        bad += ["addr_other"] if connected else ["addr_list", "addr_port", "addr_none"]
        return ("bad", rng.choice(bad))
    if roll < 0.95:
        if variant == "unix" or gen.c_sends >= 4:
            return None
        gen.c_sends += 1
        return (rng.choice(["c_send", "c_send", "c_pause", "c_resume"]),)
    if rng.random() > progress:  # Closing ends the interesting part: rarely early.
        return None
    return (rng.choice(["close", "close", "abort"]),)


def generate(variant: str, seed: int) -> Scenario:
    rng = random.Random(f"{BASE_SEED}-{variant}-{seed}")
    connected = rng.random() < 0.5
    cfg = Cfg(
        on_dgram=rng.choice(["none", "none", "echo", "soon_send", "close", "abort", "pause"]),
        nth=rng.randint(1, 4),
        on_error=rng.choice(["none", "none", "close"]),
        on_pause=rng.choice(["none", "none", "close"]),
    )
    gen = Gen(variant)
    ops: list[tuple] = []
    length = rng.randint(8, 30)
    while len(ops) < length:
        op = random_op(rng, gen, variant, connected, len(ops) / length)
        if op is not None:
            ops.append(op)
    return Scenario(f"{variant}-{seed}", variant, connected, cfg, ops)


# --------------------------------------------------------------------------------------
# Running a scenario on one loop
# --------------------------------------------------------------------------------------


class Endpoint(asyncio.DatagramProtocol):
    """Records what one endpoint's protocol observes, tagged with the current op."""

    def __init__(self, run: ScenarioRun, name: str, cfg: Cfg = Cfg()):
        self.run = run
        self.name = name
        self.cfg = cfg
        self.transport = None
        self.received = 0
        self.sha256 = hashlib.sha256()
        self.count = 0
        self.lost = False

    def add(self, *entry) -> None:
        self.run.record(self.name, entry)

    def connection_made(self, transport):
        self.transport = transport
        self.add("made")

    def datagram_received(self, data, addr):
        self.count += 1
        self.received += len(data)
        self.sha256.update(data)
        kind = "bytes" if type(data) is bytes else type(data).__name__
        self.add("dg", len(data), hashlib.sha256(data).hexdigest()[:10], self.run.role(addr), kind)
        cfg, t = self.cfg, self.transport
        if cfg.on_dgram == "echo":
            self.call("echo", t.sendto, data, addr)
        elif cfg.on_dgram == "soon_send":
            self.run.loop.call_soon(self.soon_send, self.count, b"soon:" + data[:20], addr)
        elif self.count == cfg.nth and cfg.on_dgram in ("close", "abort", "pause"):
            method = "pause_reading" if cfg.on_dgram == "pause" else cfg.on_dgram
            self.call(method, getattr(t, method))

    def soon_send(self, n: int, data: bytes, addr) -> None:
        # Recorded: where this lands among the datagrams shows the callback order.
        self.add("soon", n)
        self.call("soon", self.transport.sendto, data, addr)

    def call(self, what, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self.add("raised in " + what, type(exc).__name__, self.run.clean(str(exc)))

    def error_received(self, exc):
        self.add("err", type(exc).__name__, exc.errno)
        if self.cfg.on_error == "close":
            self.transport.close()

    def pause_writing(self):
        self.add("pause_writing", self.transport.get_write_buffer_size())
        if self.cfg.on_pause == "close":
            self.transport.close()

    def resume_writing(self):
        # Not the size: how much one drain sent depends on when the peer read.
        self.add("resume_writing")

    def connection_lost(self, exc):
        self.lost = True
        self.add("lost", None if exc is None else type(exc).__name__)


def pending(sock_fd: int) -> bool:
    """True if the kernel holds a datagram or an error for ``sock_fd``."""
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN | select.POLLERR)
    return bool(poller.poll(0))


@dataclass
class RunResult:
    facts: dict
    stuck: str | None


class ScenarioRun:
    def __init__(self, kind: str, scenario: Scenario, records: list):
        self.kind = kind
        self.scenario = scenario
        self.records = records
        self.entries: dict[str, dict[int, list]] = {"A": {}, "B": {}, "C": {}}
        self.op = -1
        self.changes = 0
        self.contexts: list[dict] = []
        self.log_deltas: dict[int, tuple] = {}
        self.stuck: str | None = None
        self.addresses: dict = {}
        self.loop: asyncio.AbstractEventLoop

    def record(self, name: str, entry: tuple) -> None:
        self.entries[name].setdefault(self.op, []).append(entry)
        self.changes += 1

    def role(self, addr) -> str:
        for name, known in self.addresses.items():
            if addr == known:
                return name
        return "None" if addr is None else "other"

    def clean(self, text: str) -> str:
        for name, addr in self.addresses.items():
            text = text.replace(repr(addr), f"<{name}>").replace(str(addr), f"<{name}>")
        return TRANSPORT_CLASS.sub("<transport>", text)

    # -- endpoints -------------------------------------------------------------------

    async def connect(self) -> None:
        loop = self.loop
        sc = self.scenario
        self.a, self.b, self.c = (Endpoint(self, "A", sc.cfg), Endpoint(self, "B"), None)
        if sc.variant == "unix":
            b_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            b_sock.bind("")
            a_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            a_sock.bind("")
            if sc.connected:
                a_sock.connect(b_sock.getsockname())
            await loop.create_datagram_endpoint(lambda: self.b, sock=b_sock)
            await loop.create_datagram_endpoint(lambda: self.a, sock=a_sock)
        else:
            host = "127.0.0.1" if sc.variant == "udp4" else "::1"
            await loop.create_datagram_endpoint(lambda: self.b, local_addr=(host, 0))
            b_addr = self.b.transport.get_extra_info("sockname")
            if sc.connected:
                await loop.create_datagram_endpoint(
                    lambda: self.a, local_addr=(host, 0), remote_addr=b_addr[:2]
                )
            else:
                await loop.create_datagram_endpoint(lambda: self.a, local_addr=(host, 0))
            family = socket.AF_INET if sc.variant == "udp4" else socket.AF_INET6
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((host, 0))
                dead = probe.getsockname()
            self.c = Endpoint(self, "C")
            await loop.create_datagram_endpoint(lambda: self.c, remote_addr=dead[:2])
        self.addresses = {
            "A": self.a.transport.get_extra_info("socket").getsockname(),
            "B": self.b.transport.get_extra_info("socket").getsockname(),
        }
        self.fds = {
            e.name: e.transport.get_extra_info("socket").fileno()
            for e in (self.a, self.b, self.c)
            if e is not None
        }

    def endpoints(self) -> list[Endpoint]:
        return [e for e in (self.a, self.b, self.c) if e is not None]

    # -- operations --------------------------------------------------------------------

    def other_address(self):
        b = self.addresses["B"]
        if self.scenario.variant == "unix":
            return b + b"-other"
        return (b[0], b[1] + 1 if b[1] < 65535 else 1, *b[2:])

    def execute(self, op: tuple) -> None:
        name, *args = op
        a, b = self.a.transport, self.b.transport
        if name == "send":
            size, form, addr, seed = args
            target = {"none": (), "B": (self.addresses["B"],)}[addr]
            self.a.call("sendto", a.sendto, payload(size, seed, form), *target)
        elif name == "burst":
            count, size, seed = args
            target = () if self.scenario.connected else (self.addresses["B"],)
            for k in range(count):
                self.a.call("sendto", a.sendto, payload(size, seed + k), *target)
        elif name == "b_send":
            size, seed = args
            self.b.call("sendto", b.sendto, payload(size, seed), self.addresses["A"])
        elif name in ("b_pause", "b_resume"):
            self.b.call(name, getattr(b, name[2:] + "_reading"))
        elif name in ("a_pause", "a_resume"):
            self.a.call(name, getattr(a, name[2:] + "_reading"))
        elif name in ("c_send", "c_pause", "c_resume"):
            c = self.c.transport
            if name == "c_send":
                self.c.call("sendto", c.sendto, b"anyone?")
            else:
                self.c.call(name, getattr(c, name[2:] + "_reading"))
        elif name == "limits":
            high, low = args
            self.a.call("limits", a.set_write_buffer_limits, high, low)
            self.a.add("limits", a.get_write_buffer_limits())
        elif name == "query":
            self.query()
        elif name == "bad":
            (what,) = args
            data, target = b"bad", ()
            if what == "data_str":
                data = "text"
            elif what == "data_int":
                data = 7
            elif what == "data_none":
                data = None
            elif what == "addr_other":
                target = (self.other_address(),)
            elif what == "addr_list":
                target = (list(self.addresses["B"]),)
            elif what == "addr_port":
                target = ((self.addresses["B"][0], 65536),)
            else:
                target = (None,)
            if not target and not self.scenario.connected:
                target = (self.addresses["B"],)
            self.a.call("sendto " + what, a.sendto, data, *target)
        elif name in ("close", "abort"):
            self.a.call(name, getattr(a, name))
        else:
            raise AssertionError(f"unknown operation {name!r}")

    def query(self) -> None:
        a = self.a.transport
        self.a.add(
            "q",
            ("buffer", a.get_write_buffer_size()),
            ("closing", a.is_closing()),
            ("reading", a.is_reading()),
            ("limits", a.get_write_buffer_limits()),
            ("peername", self.role(a.get_extra_info("peername"))),
        )

    # -- waiting ---------------------------------------------------------------------------

    def busy(self) -> list[str]:
        """What still has to happen before the state is quiescent."""
        reasons = []
        for e in self.endpoints():
            t = e.transport
            if e.lost:
                continue
            if t.is_reading() and pending(self.fds[e.name]):
                reasons.append(f"{e.name} has datagrams to read")
            if t._buffer and (self.b.transport.is_reading() or e is not self.a):
                reasons.append(f"{e.name} has queued datagrams")
            if t.is_closing() and not t._buffer and not e.lost:
                reasons.append(f"{e.name} waits for connection_lost")
        return reasons

    async def quiesce(self) -> None:
        loop = self.loop
        deadline = loop.time() + QUIESCE_TIMEOUT
        while True:
            before = self.changes
            for _ in range(4):
                await asyncio.sleep(0)
            if not self.busy() and self.changes == before:
                return
            if loop.time() > deadline:
                raise TimeoutError(", ".join(self.busy()) or "events kept coming")
            if self.changes == before:
                await asyncio.sleep(0.001)

    async def run(self) -> RunResult:
        check_loop(self.kind)
        self.loop = loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: self.contexts.append(context))
        await self.connect()
        ops = list(self.scenario.ops)
        ops += [("b_resume",), ("a_resume",), ("close",)]
        for i, op in enumerate(ops):
            self.op = i
            n_records, n_contexts = len(self.records), len(self.contexts)
            self.execute(op)
            try:
                await self.quiesce()
            except TimeoutError as exc:
                self.stuck = f"after op {i} ({op}): {exc}"
            self.log_deltas[i] = self.log_delta(n_records, n_contexts)
            if self.stuck:
                break
        self.op = len(ops)
        for e in self.endpoints():
            if not e.lost:
                e.transport.abort()
        async with asyncio.timeout(QUIESCE_TIMEOUT):
            while not all(e.lost for e in self.endpoints()):
                await asyncio.sleep(0.001)
        return RunResult(self.facts(len(ops)), self.stuck)

    def log_delta(self, n_records: int, n_contexts: int) -> tuple:
        new = [r for r in self.records[n_records:] if r.name == "asyncio"]
        warnings = sum(1 for r in new if r.getMessage() == SEND_WARNING)
        other = [
            (r.levelname, self.clean(str(r.msg))) for r in new if r.getMessage() != SEND_WARNING
        ]
        contexts = [
            (self.clean(c.get("message", "")), type(c.get("exception")).__name__)
            for c in self.contexts[n_contexts:]
        ]
        return (("send warnings", warnings), ("other log records", other), ("handler", contexts))

    def facts(self, n_ops: int) -> dict:
        facts: dict = {}
        for name, by_op in self.entries.items():
            for op in range(-1, n_ops + 1):
                facts[(name, "events during op", op)] = tuple(by_op.get(op, ()))
        for e in self.endpoints():
            facts[(e.name, "datagrams received")] = (e.count, e.received, e.sha256.hexdigest())
        for i, delta in self.log_deltas.items():
            facts[("logs and exception handler", "during op", i)] = delta
        facts[("stuck",)] = self.stuck
        return facts


def run_once(kind: str, scenario: Scenario, records: list) -> RunResult:
    run = ScenarioRun(kind, scenario, records)
    return conftest.run_on(factory_for(kind), run.run, timeout=SCENARIO_TIMEOUT)


def fmt_fact(key: tuple) -> str:
    return " / ".join(map(str, key))


def check_scenario(scenario: Scenario, caplog) -> dict:
    """Run ``scenario`` twice on stock asyncio and once on ferroloop; the facts stock
    produced both times must be ferroloop's. Returns the first stock run's facts."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    stock = [run_once("asyncio", scenario, caplog.records) for _ in range(2)]
    for result in stock:
        assert result.stuck is None, (
            f"TEST BUG: stock asyncio never became quiescent: {result.stuck}\n{scenario.describe()}"
        )
    ferro = run_once("ferroloop", scenario, caplog.records)
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
    return a


@pytest.mark.parametrize(
    "variant, seed",
    [(v, s) for v in VARIANTS for s in range(SEEDS_PER_VARIANT)],
    ids=[f"{v}-{s}" for v in VARIANTS for s in range(SEEDS_PER_VARIANT)],
)
def test_random_scenario(variant, seed, caplog):
    check_scenario(generate(variant, seed), caplog)


# --------------------------------------------------------------------------------------
# Hand-written scenarios
# --------------------------------------------------------------------------------------


def events(facts: dict, name: str, op: int | None = None) -> list:
    return [
        e
        for k, v in facts.items()
        if k[:2] == (name, "events during op") and (op is None or k[2] == op)
        for e in v
    ]


def handler(facts: dict, op: int) -> list:
    return dict(facts[("logs and exception handler", "during op", op)])["handler"]


def warnings_during(facts: dict, op: int) -> int:
    return dict(facts[("logs and exception handler", "during op", op)])["send warnings"]


def S(size, addr="B", form="bytes", seed=1) -> tuple:
    return ("send", size, form, addr, seed)


FIXED = [
    (
        Scenario(
            "unix_queue_pause_resume_close",
            "unix",
            True,
            Cfg(),
            [
                ("b_pause",),
                ("limits", 4000, 1000),
                ("burst", 20, 1000, 1),  # Beyond B's queue: A queues, past 4000 pauses.
                ("query",),
                ("close",),  # With datagrams queued: flushes first.
                ("query",),
                ("b_resume",),
            ],
        ),
        lambda f: (
            [e[0] for e in events(f, "A", 2)] == ["pause_writing"]
            and events(f, "A", 3)[0][1][1] > 0
            and ("resume_writing",) in events(f, "A", 6)
            and events(f, "A", 6)[-1] == ("lost", None)
            and f[("B", "datagrams received")][0] == 20
        ),
    ),
    (
        Scenario(
            "unix_abort_drops_the_queue",
            "unix",
            False,
            Cfg(),
            [("b_pause",), ("burst", 20, 1000, 2), ("abort",), ("query",), ("b_resume",)],
        ),
        lambda f: events(f, "A", 2) == [("lost", None)] and f[("B", "datagrams received")][0] < 20,
    ),
    (
        Scenario(
            "icmp_errors_on_both_paths",
            "udp4",
            True,
            Cfg(),
            [("c_send",), ("c_pause",), ("c_send",), ("c_send",), ("c_resume",)],
        ),
        lambda f: (
            events(f, "C", 0) == [("err", "ConnectionRefusedError", 111)]
            and events(f, "C", 2) == []
            and events(f, "C", 3) == [("err", "ConnectionRefusedError", 111)]
        ),
    ),
    (
        Scenario(
            "callbacks_between_datagrams",
            "udp4",
            False,
            Cfg(on_dgram="soon_send"),
            [("a_pause",), ("b_send", 10, 1), ("b_send", 0, 2), ("b_send", 7, 3), ("a_resume",)],
        ),
        # Queued together, delivered one per iteration: each one's call_soon runs first.
        lambda f: [e[0] for e in events(f, "A", 4)] == ["dg", "soon"] * (3 if EMPTY_SENT else 2),
    ),
    (
        Scenario(
            "sends_after_close",
            "udp6" if HAS_IPV6 else "udp4",
            True,
            Cfg(),
            [("close",), S(10, "none"), S(10, "none"), S(10, "none"), ("burst", 5, 3, 9)],
        ),
        lambda f: warnings_during(f, 4) == 4 and f[("B", "datagrams received")][0] == 0,
    ),
    (
        Scenario(
            "unconnected_bad_address_is_fatal",
            "udp4",
            False,
            Cfg(),
            [("bad", "addr_list"), S(10), ("query",)],
        ),
        lambda f: (
            handler(f, 0) == [("Fatal write error on datagram transport", "TypeError")]
            and events(f, "A", 0)[-1] == ("lost", "TypeError")
        ),
    ),
    (
        Scenario(
            "close_in_datagram_received",
            "unix",
            True,
            Cfg(on_dgram="close", nth=2),
            [("b_pause",), ("burst", 3, 5, 1), ("b_send", 5, 2), ("b_send", 5, 3), ("b_resume",)],
        ),
        lambda f: [e[0] for e in events(f, "A", 3)] == ["dg", "lost"],
    ),
    (
        Scenario(
            "empty_and_largest_datagrams",
            "udp4",
            True,
            Cfg(on_dgram="echo"),
            [S(0, "none"), ("b_send", 0, 1), S(65507, "none"), S(65508, "none")],
        ),
        lambda f: (
            events(f, "A", 3) == [("err", "OSError", 90)]
            and len(events(f, "B", 0)) == (1 if EMPTY_SENT else 0)
        ),
    ),
]


@pytest.mark.parametrize("scenario, expect", FIXED, ids=[s.name for s, _ in FIXED])
def test_fixed_scenario(scenario, expect, caplog):
    facts = check_scenario(scenario, caplog)
    assert expect(facts), "stock does not do what this scenario is meant to test:\n" + "\n".join(
        f"  {fmt_fact(k)}: {v!r}" for k, v in facts.items() if v
    )
