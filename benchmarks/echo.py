"""TCP echo benchmark: ferroloop / uvloop / stock asyncio, four server styles, native ceiling.

Each server runs in its own process on one event loop, in one of these modes:

``protocol``
    ``loop.create_server`` with an ``asyncio.Protocol``: ``data_received`` ->
    ``transport.write``.
``buffered``
    ``loop.create_server`` with an ``asyncio.BufferedProtocol``: ``get_buffer`` hands out a
    reusable buffer, ``buffer_updated`` writes the filled slice back (a fresh buffer is taken
    whenever the transport kept part of the slice queued).
``streams``
    ``asyncio.start_server``: ``reader.read`` / ``writer.write`` / ``await writer.drain()``.
``sockets``
    ``loop.sock_accept`` / ``loop.sock_recv`` / ``loop.sock_sendall``, a task per connection.
``native``
    The ceiling: ``benchmarks/native-echo``, a single-threaded level-triggered epoll echo
    server in plain Rust, built on demand with cargo (skipped with a note if cargo is
    missing). It does about the least work any event loop can do per echoed message. It is
    measured once per cell, not per loop, and always, unless ``--no-native``.

The client is a separate process with plain blocking sockets, one thread per connection: it
sends a message, reads the whole echo back (and checks it), and repeats for a fixed
duration, recording each round trip's latency. The servers are pinned to the last CPU and
the client to the others (``--no-pin`` turns this off): unpinned, the scheduler sometimes
puts both on one core, which makes a conns=1 ping-pong far cheaper, and results swing by 2x
from run to run. Every socket and every subprocess has a timeout, and the servers die with
the driver (``PR_SET_PDEATHSIG``), so a broken loop shows up as ``ERROR`` in the table
instead of a hang.

Why server CPU per request: on a 2-core machine the client often saturates its own core,
which squeezes req/s ratios toward 1 for any fast server. The deciding figure is therefore
the **server's CPU time per request**: the server process's user+system CPU time over the
run (``utime + stime`` from ``/proc/PID/stat``, 10 ms ticks), divided by the requests
served. Ratios compare those:

- ``eff. vs uvloop`` (on the first loop's row, ferroloop by default) = uvloop µs/req /
  ferroloop µs/req, so > 1 means ferroloop spends less CPU per request; same for asyncio;
- ``of ceiling`` (every row) = native µs/req / that row's µs/req: 1.00 would be as cheap as
  the hand-written Rust server, 0.25 means four times its CPU per request.

Interleaving: all servers stay up for the whole run (after a short untimed warmup). For
every cell (message size x connections) each round measures every mode on every loop plus
the native server once, with the mode order and the loop order rotating from round to round,
so that no server always runs first or last. The table reports medians over the rounds;
req/s and p50/p99 latency are reported too, but they mostly measure the client.

Usage::

    python benchmarks/echo.py                    # all modes, 1/10/100 KiB x 1/10 conns, 3 rounds
    python benchmarks/echo.py --quick            # 0.5 s runs, 1 round (smoke test)
    python benchmarks/echo.py --modes protocol,streams --sizes 1024,10240 --conns 1,10,100
    python benchmarks/echo.py --modes native     # only the Rust ceiling
    python benchmarks/echo.py --loops ferroloop,uvloop --duration 3 --rounds 5 --json out.json

The exit status is 1 if any measurement failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

# A sibling module: run as a script, this file has the benchmarks directory on sys.path.
from _harness import (
    ALL_LOOPS,
    IO_TIMEOUT,
    ClientThreads,
    ServerProcess,
    ServerUsage,
    available_loops,
    busy_seconds,
    children_cpu_seconds,
    die_with_parent,
    git_revision,
    markdown_table,
    new_loop,
    rotated,
)

LOOP_MODES = ("protocol", "buffered", "streams", "sockets")
NATIVE = "native"
#: Largest read per recv / get_buffer / StreamReader.read.
CHUNK = 256 * 1024

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NATIVE_MANIFEST = os.path.join(HERE, "native-echo", "Cargo.toml")
# Under the repository's git-ignored /target/, next to (not inside) the extension's build.
NATIVE_TARGET_DIR = os.path.join(ROOT, "target", "native-echo")
NATIVE_BINARY = os.path.join(NATIVE_TARGET_DIR, "release", "native-echo")


# -- servers (run in their own process) ------------------------------------------------------


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class EchoProtocol(asyncio.Protocol):
    """``data_received`` -> ``transport.write``; stops reading while the peer does not read."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    """Receive into one reusable buffer, write the filled slice straight back."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.view = memoryview(bytearray(CHUNK))
        set_nodelay(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(self.view[:nbytes])
        if self.transport.get_write_buffer_size():
            # What the socket did not take is queued, and a transport may queue the slice
            # itself rather than a copy (uvloop does; so does asyncio on 3.12+): never
            # receive into it again.
            self.view = memoryview(bytearray(CHUNK))

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    set_nodelay(writer.transport)
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def sockets_serve(listener: socket.socket) -> None:
    """Accept connections forever; echo each one with sock_recv/sock_sendall."""
    loop = asyncio.get_running_loop()

    async def echo(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                while data := await loop.sock_recv(conn, CHUNK):
                    await loop.sock_sendall(conn, data)
            except ConnectionError:
                pass

    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        loop.create_task(echo(conn))


def server_main(kind: str, mode: str) -> None:
    """Entry point of a server process: print the port once serving, then serve until killed."""
    die_with_parent()
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    loop = new_loop(kind)
    asyncio.set_event_loop(loop)
    keep: list[object] = []  # strong references to the server object / task

    async def start() -> None:
        if mode == "protocol":
            keep.append(await loop.create_server(EchoProtocol, sock=listener))
        elif mode == "buffered":
            keep.append(await loop.create_server(EchoBufferedProtocol, sock=listener))
        elif mode == "streams":
            keep.append(await asyncio.start_server(stream_echo, sock=listener, limit=CHUNK))
        elif mode == "sockets":
            keep.append(loop.create_task(sockets_serve(listener)))
        else:
            raise SystemExit(f"unknown mode {mode!r}")

    try:
        loop.run_until_complete(start())
        print(port, flush=True)
        loop.run_forever()
    finally:
        loop.close()


# -- client (runs in its own process) --------------------------------------------------------


def client_run(port: int, size: int, conns: int, duration: float) -> dict[str, object]:
    """Drive ``conns`` blocking connections for ``duration`` seconds; elapsed and latencies."""
    message = os.urandom(size)
    latencies: list[list[float]] = [[] for _ in range(conns)]
    clients = ClientThreads(conns, duration)

    def worker(slot: list[float]) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = bytearray(size)
            view = memoryview(buf)
            end = clients.ready()  # the clock starts once every connection is up
            perf_counter = time.perf_counter
            while True:
                start = perf_counter()
                if start >= end:
                    return
                sock.sendall(message)
                got = 0
                while got < size:
                    n = sock.recv_into(view[got:])
                    if not n:
                        raise ConnectionError("server closed the connection")
                    got += n
                slot.append(perf_counter() - start)
                if buf != message:
                    raise AssertionError("echo differs from the message")

    elapsed = clients.run(worker, latencies, "a client connection")
    return {"elapsed": elapsed, "latencies": [lat for slot in latencies for lat in slot]}


def client_main(port: int, size: int, conns: int, duration: float) -> None:
    """Entry point of the client process: print elapsed time and latencies as JSON."""
    print(json.dumps(client_run(port, size, conns, duration)))


# -- orchestration ---------------------------------------------------------------------------


class Server(ServerProcess):
    """One server process: a (mode, loop) pair, or the native ceiling."""

    def __init__(self, mode: str, loop: str, argv: list[str], cpus: set[int] | None = None):
        super().__init__(NATIVE if mode == NATIVE else f"{mode}/{loop}", argv, cpus)
        self.mode = mode
        self.loop = loop


def measure(
    server: Server, size: int, conns: int, duration: float, cpus: set[int] | None
) -> dict[str, float]:
    """One client run against one server: req/s, p50/p99 (µs) and server µs CPU/request."""
    if server.proc is None or server.proc.poll() is not None:
        raise RuntimeError("the server is not running")
    pid = server.proc.pid
    argv = [sys.executable, __file__, "client", str(server.port), str(size), str(conns)]
    busy_before, client_before = busy_seconds(), children_cpu_seconds()
    before = ServerUsage.of(pid)
    try:
        out = subprocess.run(
            [*argv, str(duration)],
            capture_output=True,
            text=True,
            timeout=duration + 3 * IO_TIMEOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"client timed out after {exc.timeout:g} s") from None
    used = ServerUsage.of(pid) - before
    client_cpu = children_cpu_seconds() - client_before
    busy = busy_seconds() - busy_before
    if out.returncode != 0:
        last = out.stderr.strip().splitlines()[-1:] or [f"exit status {out.returncode}"]
        raise RuntimeError(f"client failed: {last[0]}")
    result = json.loads(out.stdout)
    # CPU that neither the server nor the client used (this driver, other programs), as a
    # share of one core over the run: a noise indicator.
    other = max(0.0, busy - used.cpu - client_cpu) / result["elapsed"]
    latencies = sorted(result["latencies"])
    if not latencies:
        raise RuntimeError("no request completed")
    n = len(latencies)
    return {
        "requests": n,
        "rps": n / result["elapsed"],
        "p50_us": latencies[n // 2] * 1e6,
        "p99_us": latencies[min(n - 1, int(n * 0.99))] * 1e6,
        **used.per_request(n),
        "other_load": other,
    }


def build_native() -> str | None:
    """Build the Rust ceiling server (a no-op when up to date); its path, or None to skip."""
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    if not os.path.exists(cargo):
        print("note: cargo not found; the native ceiling row is skipped", file=sys.stderr)
        return None
    argv = [cargo, "build", "--release", "--quiet", "--manifest-path", NATIVE_MANIFEST]
    argv += ["--target-dir", NATIVE_TARGET_DIR]
    try:
        built = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        print("note: building native-echo timed out; native row skipped", file=sys.stderr)
        return None
    if built.returncode or not os.path.exists(NATIVE_BINARY):
        print(built.stderr, file=sys.stderr)
        print("note: building native-echo failed; the native row is skipped", file=sys.stderr)
        return None
    return NATIVE_BINARY


def parse_list(text: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if allowed is not None:
        bad = [item for item in items if item not in allowed]
        if bad:
            raise SystemExit(f"unknown value(s) {', '.join(bad)}; choose from {allowed}")
    return items


Key = tuple[int, int, str, str]  # size, conns, mode, loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--loops", default=",".join(ALL_LOOPS), help="default: %(default)s")
    parser.add_argument(
        "--modes",
        default=",".join(LOOP_MODES),
        help="server modes, from protocol,buffered,streams,sockets,native "
        "(default: %(default)s; native is added unless --no-native)",
    )
    parser.add_argument("--no-native", action="store_true", help="skip the Rust ceiling")
    parser.add_argument("--sizes", default="1024,10240,102400", help="message sizes, bytes")
    parser.add_argument("--conns", default="1,10", help="concurrent connections")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="0.5 s runs, 1 round (smoke test)")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the servers to the last CPU and the client to the others",
    )
    parser.add_argument("--json", help="write every run's results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 0.5, 1

    modes = parse_list(args.modes, (*LOOP_MODES, NATIVE))
    want_native = NATIVE in modes or not args.no_native
    loop_modes = [m for m in modes if m != NATIVE]
    loops, versions = available_loops(parse_list(args.loops, ALL_LOOPS)) if loop_modes else ([], {})
    sizes = [int(s) for s in parse_list(args.sizes)]
    conn_counts = [int(c) for c in parse_list(args.conns)]
    native_bin = build_native() if want_native else None
    # Pinning keeps the client and the server from migrating between cores (and from
    # sharing one), which otherwise moves conns=1 results by 2x from run to run.
    allowed = sorted(os.sched_getaffinity(0))
    server_cpus = client_cpus = None
    if not args.no_pin and len(allowed) >= 2:
        server_cpus, client_cpus = {allowed[-1]}, set(allowed[:-1])

    # Groups of servers; a round goes through the groups (rotated), each group's loops rotated.
    groups: list[list[Server]] = []
    if native_bin:
        groups.append([Server(NATIVE, NATIVE, [native_bin], server_cpus)])
    for mode in loop_modes:
        if loops:
            groups.append(
                [
                    Server(mode, k, [sys.executable, __file__, "serve", k, mode], server_cpus)
                    for k in loops
                ]
            )
    servers = [s for group in groups for s in group]
    if not servers:
        print("nothing to measure", file=sys.stderr)
        return 1

    results: dict[Key, list[dict[str, float]]] = {}
    errors: dict[Key, list[str]] = {}
    total = len(sizes) * len(conn_counts) * args.rounds * len(servers)
    estimate = (total + len(servers)) * (args.duration + 0.25)
    print(f"{total} runs, about {estimate / 60:.1f} min", file=sys.stderr)
    try:
        for server in servers:
            try:
                server.start()
            except Exception as exc:  # its runs will report errors
                print(f"error: {exc}", file=sys.stderr)
        # An untimed warmup per server: first connections, allocator and code paths.
        for server in servers:
            try:
                measure(server, sizes[0], max(conn_counts), min(0.3, args.duration), client_cpus)
            except Exception as exc:
                print(f"warning: warmup of {server.label} failed: {exc}", file=sys.stderr)
                server.restart()
        for size in sizes:
            for conns in conn_counts:
                for rnd in range(args.rounds):
                    for group in rotated(groups, rnd):
                        for server in rotated(group, rnd):
                            key = (size, conns, server.mode, server.loop)
                            try:
                                run = measure(server, size, conns, args.duration, client_cpus)
                            except Exception as exc:
                                msg = f"{type(exc).__name__}: {exc}"
                                errors.setdefault(key, []).append(msg)
                                print(f"error: {server.label} {key[:2]}: {msg}", file=sys.stderr)
                                server.restart()
                            else:
                                results.setdefault(key, []).append(run)
                    print(
                        f"  done: {size} B x {conns} conns, round {rnd + 1}/{args.rounds}",
                        file=sys.stderr,
                    )
    finally:
        for server in servers:
            server.stop()

    args.versions = versions
    args.pinned = (
        f"servers pinned to CPU {min(server_cpus)}, client to CPU(s) "
        f"{','.join(map(str, sorted(client_cpus)))}"
        if server_cpus and client_cpus
        else "not pinned"
    )
    print(report(loops, loop_modes, bool(native_bin), sizes, conn_counts, results, errors, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [
                    {"size": s, "conns": c, "mode": m, "loop": k, "runs": runs}
                    for (s, c, m, k), runs in results.items()
                ],
                f,
                indent=1,
            )
    return 1 if errors else 0


# -- report ----------------------------------------------------------------------------------


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def report(loops, modes, native, sizes, conn_counts, results, errors, args) -> str:
    """Markdown tables of medians: full detail, then a CPU-per-request summary."""
    first = loops[0] if loops else None
    others = loops[1:]

    def med(key: Key) -> dict[str, float] | None:
        runs = results.get(key)
        if not runs:
            return None
        return {
            name: statistics.median(r[name] for r in runs)
            for name in (
                "rps",
                "p50_us",
                "p99_us",
                "cpu_us_per_req",
                "kernel_us_per_req",
                "sleeps_per_req",
            )
        }

    head = ["size", "conns", "mode", "loop", "req/s", "p50 µs", "p99 µs", "sleeps/req"]
    head += ["server CPU µs/req", "kernel µs/req"]
    head += [f"eff. vs {k}" for k in others]
    if native:
        head.append("of ceiling")
    rows = [head]
    summary_head = ["mode", "size", "conns", *(f"{k} µs/req" for k in loops)]
    summary_head.append(f"{first} kernel µs/req")
    if native:
        summary_head.append("native µs/req")
    summary_head += [f"{first} vs {k}" for k in others]
    if native:
        summary_head += [f"{k} of ceiling" for k in loops]
    summary = [summary_head]

    def fmt_ratio(num: dict | None, den: dict | None) -> str:
        if not num or not den or den["cpu_us_per_req"] <= 0:
            return "-"
        return f"{num['cpu_us_per_req'] / den['cpu_us_per_req']:.2f}x"

    for size in sizes:
        for conns in conn_counts:
            ceiling = med((size, conns, NATIVE, NATIVE)) if native else None
            cell = [size_label(size), str(conns)]
            entries = [(NATIVE, NATIVE)] if native else []
            entries += [(mode, k) for mode in modes for k in loops]
            for mode, kind in entries:
                m = med((size, conns, mode, kind))
                row = [*cell, mode, kind]
                if m is None:
                    row += ["ERROR", "", "", "", "", ""]
                else:
                    row += [
                        f"{m['rps']:.0f}",
                        f"{m['p50_us']:.0f}",
                        f"{m['p99_us']:.0f}",
                        f"{m['sleeps_per_req']:.2f}",
                        f"{m['cpu_us_per_req']:.1f}",
                        f"{m['kernel_us_per_req']:.1f}",
                    ]
                for other in others:
                    is_first = kind == first
                    row.append(fmt_ratio(med((size, conns, mode, other)), m) if is_first else "")
                if native:
                    row.append(fmt_ratio(ceiling, m) if mode != NATIVE else "1.00x")
                rows.append(row)
            for mode in modes:
                meds = {k: med((size, conns, mode, k)) for k in loops}
                srow = [mode, *cell]
                srow += [f"{meds[k]['cpu_us_per_req']:.1f}" if meds[k] else "ERROR" for k in loops]
                f = meds[first]
                srow.append(f"{f['kernel_us_per_req']:.1f}" if f else "ERROR")
                if native:
                    srow.append(f"{ceiling['cpu_us_per_req']:.1f}" if ceiling else "ERROR")
                srow += [fmt_ratio(meds[k], meds[first]) for k in others]
                if native:
                    srow += [fmt_ratio(ceiling, meds[k]) for k in loops]
                summary.append(srow)
    summary[1:] = sorted(summary[1:], key=lambda r: modes.index(r[0]))  # stable: by mode

    meta = (
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs ({args.pinned}); "
        f"{args.rounds} round(s) of "
        f"{args.duration:g} s per cell; client: separate process, blocking sockets, one thread "
        "per connection; medians over rounds. Server CPU = utime+stime of the server process "
        "/ requests; kernel = its stime alone (the TCP stack and wakeups: no loop spends less "
        "than the syscalls it makes cost). sleeps/req = the server's voluntary context "
        "switches (waits in the poller) per request: below 1, it handled several requests "
        "per wakeup."
    )
    if others:
        meta += f" eff. vs X = X µs/req / {first} µs/req (> 1: {first} spends less CPU)."
    if native:
        meta += " of ceiling = native µs/req / row µs/req (1.00x = as cheap as the Rust server)."
    loads = [r["other_load"] for runs in results.values() for r in runs]
    if loads:
        load = statistics.median(loads)
        meta += (
            f" Other CPU load during the runs (not server, not client): median "
            f"{load:.0%} of a core, max {max(loads):.0%}."
        )
        if load > 0.1:
            meta += " WARNING: the machine was busy; rerun on a quiet machine."
    rev = git_revision()
    meta += " Versions: " + "; ".join(f"{k} {v}" for k, v in args.versions.items())
    meta += f"; repository at {rev}." if rev else "."
    out = [meta, "", markdown_table(rows, set(range(4, len(head))))]
    if modes and loops:
        out += ["", "Server CPU µs per request (summary):", ""]
        out.append(markdown_table(summary, set(range(3, len(summary_head)))))
    if errors:
        out += ["", "Errors:"]
        for (size, conns, mode, kind), msgs in errors.items():
            out += [f"- {mode}/{kind} {size_label(size)} x {conns}: {msg}" for msg in msgs]
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        server_main(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit(main())
