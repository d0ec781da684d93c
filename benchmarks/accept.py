"""Connection-rate benchmark: ferroloop / uvloop / stock asyncio accepting short connections,
with a native ceiling.

Each server runs in its own process on one event loop: ``loop.create_server`` (TCP on
127.0.0.1) or ``loop.create_unix_server`` with a protocol whose ``connection_made`` writes
5 bytes and closes the transport. The client process runs several threads (``--threads``,
default 4), each connecting with a plain blocking socket, reading to EOF, checking that it
got exactly the 5 bytes, closing, and starting over, for a fixed duration.

``native`` is the ceiling: ``benchmarks/native-accept``, a single-threaded epoll server in
plain Rust (built on demand with cargo; skipped with a note if cargo is missing) that
accepts with ``accept4``, sets ``TCP_NODELAY`` on TCP connections (as asyncio does on
every TCP connection), writes the 5 bytes and closes. It is measured once per row and
round, not per loop.

The deciding figure is the **server's CPU time per connection** (``utime + stime`` of the
server process from ``/proc/PID/stat`` over the run, divided by the connections the
client completed); the kernel's share (``stime``) is reported too: it bounds what any loop
can save. ``eff. vs X`` = X's µs per connection / ferroloop's (> 1: ferroloop spends less
CPU per connection). Servers are pinned to the last CPU and the client to the others
(``--no-pin`` turns it off); loops are interleaved in rounds with a rotating order, and
the table shows medians over the rounds.

Usage::

    python benchmarks/accept.py                  # tcp and unix rows, 5 rounds of 2 s
    python benchmarks/accept.py --quick          # 0.5 s runs, 1 round (smoke test)
    python benchmarks/accept.py --rows tcp --loops ferroloop,uvloop --rounds 7 --json out.json

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
import tempfile
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

ROWS = ("tcp", "unix")
NATIVE = "native"
GREETING = b"hello"

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NATIVE_MANIFEST = os.path.join(HERE, "native-accept", "Cargo.toml")
NATIVE_TARGET_DIR = os.path.join(ROOT, "target", "native-accept")
NATIVE_BINARY = os.path.join(NATIVE_TARGET_DIR, "release", "native-accept")


# -- servers (run in their own process) ------------------------------------------------------


class Greet(asyncio.Protocol):
    """Writes the greeting and closes, in ``connection_made``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(GREETING)  # type: ignore[attr-defined]  # uvloop's is no subclass
        transport.close()


def server_main(kind: str, row: str, path: str) -> None:
    """Entry point of a server process: print the port (0 for Unix) once serving, then serve
    until killed."""
    die_with_parent()
    loop = new_loop(kind)
    asyncio.set_event_loop(loop)

    async def start() -> tuple[asyncio.AbstractServer, int]:
        if row == "tcp":
            server = await loop.create_server(Greet, "127.0.0.1", 0)
            return server, server.sockets[0].getsockname()[1]
        server = await loop.create_unix_server(Greet, path)
        return server, 0

    try:
        server, port = loop.run_until_complete(start())
        print(port, flush=True)
        loop.run_forever()
        server.close()
    finally:
        loop.close()


# -- client (runs in its own process) --------------------------------------------------------


def client_run(row: str, address: str, threads: int, duration: float) -> dict[str, object]:
    """Connect, read to EOF and check the greeting, over and over, from ``threads`` threads
    for ``duration`` seconds; the connections completed and the time taken."""
    family = socket.AF_INET if row == "tcp" else socket.AF_UNIX
    target: object = ("127.0.0.1", int(address)) if row == "tcp" else address
    counts = [0] * threads
    clients = ClientThreads(threads, duration)

    def worker(slot: int) -> None:
        end = clients.ready()
        done = 0
        perf_counter = time.perf_counter
        while perf_counter() < end:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(IO_TIMEOUT)
                sock.connect(target)
                got = b""
                while chunk := sock.recv(64):
                    got += chunk
            if got != GREETING:
                raise AssertionError(f"the server sent {got!r}, not {GREETING!r}")
            done += 1
        counts[slot] = done

    elapsed = clients.run(worker, range(threads), "a client thread")
    return {"elapsed": elapsed, "connections": sum(counts)}


def client_main(row: str, address: str, threads: int, duration: float) -> None:
    """Entry point of the client process: print the result as JSON."""
    print(json.dumps(client_run(row, address, threads, duration)))


# -- orchestration ---------------------------------------------------------------------------


class Server(ServerProcess):
    """One server process: a (row, loop) pair, or the native ceiling of a row."""

    def __init__(self, row: str, loop: str, argv: list[str], path: str, cpus: set[int] | None):
        super().__init__(f"{row}/{loop}", argv, cpus)
        self.row = row
        self.loop = loop
        self.path = path

    @property
    def address(self) -> str:
        return str(self.port) if self.row == "tcp" else self.path


def measure(server: Server, threads: int, duration: float, cpus: set[int] | None) -> dict:
    """One client run against one server: connections/s and server µs CPU per connection."""
    if server.proc is None or server.proc.poll() is not None:
        raise RuntimeError("the server is not running")
    pid = server.proc.pid
    argv = [sys.executable, __file__, "client", server.row, server.address, str(threads)]
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
    n = result["connections"]
    if not n:
        raise RuntimeError("no connection completed")
    return {
        "connections": n,
        "cps": n / result["elapsed"],
        **used.per_request(n),
        "other_load": max(0.0, busy - used.cpu - client_cpu) / result["elapsed"],
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
        print("note: building native-accept timed out; native row skipped", file=sys.stderr)
        return None
    if built.returncode or not os.path.exists(NATIVE_BINARY):
        print(built.stderr, file=sys.stderr)
        print("note: building native-accept failed; the native row is skipped", file=sys.stderr)
        return None
    return NATIVE_BINARY


def parse_list(text: str, allowed: tuple[str, ...]) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    bad = [item for item in items if item not in allowed]
    if bad:
        raise SystemExit(f"unknown value(s) {', '.join(bad)}; choose from {allowed}")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--loops", default=",".join(ALL_LOOPS), help="default: %(default)s")
    parser.add_argument("--rows", default=",".join(ROWS), help="default: %(default)s")
    parser.add_argument("--no-native", action="store_true", help="skip the Rust ceiling")
    parser.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="0.5 s runs, 1 round (smoke test)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    parser.add_argument("--json", help="write every run's results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 0.5, 1

    rows = parse_list(args.rows, ROWS)
    loops, versions = available_loops(parse_list(args.loops, ALL_LOOPS))
    native_bin = None if args.no_native else build_native()
    allowed = sorted(os.sched_getaffinity(0))
    server_cpus = client_cpus = None
    if not args.no_pin and len(allowed) >= 2:
        server_cpus, client_cpus = {allowed[-1]}, set(allowed[:-1])

    tmp = tempfile.mkdtemp(prefix="ferroloop-accept-")
    groups: list[list[Server]] = []
    for row in rows:
        group = []
        for kind in ([NATIVE] if native_bin else []) + loops:
            path = os.path.join(tmp, f"{kind}.sock")
            if kind == NATIVE:
                server_argv = [native_bin, row, path] if native_bin else []
            else:
                server_argv = [sys.executable, __file__, "serve", kind, row, path]
            group.append(Server(row, kind, server_argv, path, server_cpus))
        groups.append(group)
    servers = [s for group in groups for s in group]

    results: dict[tuple[str, str], list[dict]] = {}
    errors: dict[tuple[str, str], list[str]] = {}
    total = len(servers) * args.rounds
    print(f"{total} runs, about {total * (args.duration + 0.3) / 60:.1f} min", file=sys.stderr)
    try:
        for server in servers:
            try:
                server.start()
            except Exception as exc:  # its runs will report errors
                print(f"error: {exc}", file=sys.stderr)
        for server in servers:  # untimed warmup
            try:
                measure(server, args.threads, min(0.3, args.duration), client_cpus)
            except Exception as exc:
                print(f"warning: warmup of {server.label} failed: {exc}", file=sys.stderr)
                server.restart()
        for rnd in range(args.rounds):
            for group in rotated(groups, rnd):
                for server in rotated(group, rnd):
                    key = (server.row, server.loop)
                    try:
                        run = measure(server, args.threads, args.duration, client_cpus)
                    except Exception as exc:
                        msg = f"{type(exc).__name__}: {exc}"
                        errors.setdefault(key, []).append(msg)
                        print(f"error: {server.label}: {msg}", file=sys.stderr)
                        server.restart()
                    else:
                        results.setdefault(key, []).append(run)
            print(f"  done: round {rnd + 1}/{args.rounds}", file=sys.stderr)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    args.versions = versions
    args.pinned = (
        f"servers pinned to CPU {min(server_cpus)}, client to CPU(s) "
        f"{','.join(map(str, sorted(client_cpus)))}"
        if server_cpus and client_cpus
        else "not pinned"
    )
    print(report(rows, loops, bool(native_bin), results, errors, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [{"row": r, "loop": k, "runs": runs} for (r, k), runs in results.items()],
                f,
                indent=1,
            )
    return 1 if errors else 0


# -- report ----------------------------------------------------------------------------------


def report(rows, loops, native, results, errors, args) -> str:
    """A markdown table of medians per row and loop, with the ratios."""
    first = loops[0] if loops else None
    others = loops[1:]

    def med(key: tuple[str, str]) -> dict[str, float] | None:
        runs = results.get(key)
        if not runs:
            return None
        names = ("cps", "cpu_us_per_req", "kernel_us_per_req", "sleeps_per_req")
        return {name: statistics.median(r[name] for r in runs) for name in names}

    def ratio(num: dict | None, den: dict | None) -> str:
        if not num or not den or den["cpu_us_per_req"] <= 0:
            return "-"
        return f"{num['cpu_us_per_req'] / den['cpu_us_per_req']:.2f}x"

    head = ["row", "server", "conn/s", "sleeps/conn", "server CPU µs/conn", "kernel µs/conn"]
    head += [f"eff. vs {k}" for k in others]
    if native:
        head.append("of ceiling")
    lines = [head]
    for row in rows:
        ceiling = med((row, NATIVE)) if native else None
        for kind in ([NATIVE] if native else []) + loops:
            m = med((row, kind))
            cells = [row, kind]
            if m is None:
                cells += ["ERROR", "", "", ""]
            else:
                cells += [
                    f"{m['cps']:.0f}",
                    f"{m['sleeps_per_req']:.2f}",
                    f"{m['cpu_us_per_req']:.1f}",
                    f"{m['kernel_us_per_req']:.1f}",
                ]
            for other in others:
                cells.append(ratio(med((row, other)), m) if kind == first else "")
            if native:
                cells.append("1.00x" if kind == NATIVE else ratio(ceiling, m))
            lines.append(cells)

    meta = (
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs ({args.pinned}); "
        f"{args.rounds} round(s) of {args.duration:g} s per server; client: separate "
        f"process, {args.threads} threads with blocking sockets (connect, read to EOF, check "
        "the 5 bytes, close); medians over rounds. Server CPU = utime+stime of the server "
        "process / connections; kernel = its stime alone."
    )
    if others:
        meta += f" eff. vs X = X µs/conn / {first} µs/conn (> 1: {first} spends less CPU)."
    if native:
        meta += " of ceiling = native µs/conn / row µs/conn."
    loads = [r["other_load"] for runs in results.values() for r in runs]
    if loads:
        load = statistics.median(loads)
        meta += f" Other CPU load: median {load:.0%} of a core, max {max(loads):.0%}."
        if load > 0.1:
            meta += " WARNING: the machine was busy; rerun on a quiet machine."
    rev = git_revision()
    meta += " Versions: " + "; ".join(f"{k} {v}" for k, v in args.versions.items())
    meta += f"; repository at {rev}." if rev else "."
    out = [meta, "", markdown_table(lines, set(range(2, len(head))))]
    if errors:
        out += ["", "Errors:"]
        for (row, kind), msgs in errors.items():
            out += [f"- {row}/{kind}: {msg}" for msg in msgs]
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        server_main(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit(main())
