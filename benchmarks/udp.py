"""UDP echo benchmark: ferroloop / uvloop / stock asyncio, and a native Rust ceiling.

Each server runs in its own process on one event loop: ``loop.create_datagram_endpoint``
on 127.0.0.1 with an ``asyncio.DatagramProtocol`` whose ``datagram_received(data, addr)``
calls ``transport.sendto(data, addr)``. The ceiling is ``native-udp-echo`` (in
``benchmarks/native-echo``, built on demand with cargo; skipped with a note if cargo is
missing): one level-triggered epoll loop doing ``recvfrom`` + ``sendto`` per readiness,
the least work per datagram a loop that keeps asyncio's callback order can do.

The client is a separate process with one thread per client, each with its own blocking
UDP socket: send a datagram of the given size, wait for the echo (and check it is the
same bytes), repeat for a fixed duration. A datagram that does not come back within the
socket timeout fails the run (loopback does not drop datagrams that a server keeps up
with), as does a wrong echo. The servers are pinned to the last CPU and the client to the
others (``--no-pin`` turns this off).

The deciding figure is the **server's CPU time per datagram**: the server process's
user+system CPU time over the run (``/proc/PID/stat``), divided by the datagrams echoed.
``eff. vs X`` = X µs/datagram / ferroloop µs/datagram (> 1: ferroloop spends less CPU);
``of ceiling`` = native µs / row µs. The kernel's share (stime) is reported too: no loop
can spend less than its syscalls cost. Servers stay up for the whole run; each round
measures every loop and the native server once per cell, in an order rotating from round
to round; the table reports medians over rounds.

Usage::

    python benchmarks/udp.py                          # 64 B and 1 KiB x 1 and 4 clients
    python benchmarks/udp.py --quick                  # 0.5 s runs, 1 round (smoke test)
    python benchmarks/udp.py --sizes 64,1024,8192 --clients 1,4,8 --rounds 5

The exit status is 1 if any measurement failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

# Sibling modules: run as a script, this file has the benchmarks directory on sys.path.
from _harness import (
    ALL_LOOPS,
    IO_TIMEOUT,
    ClientThreads,
    ServerProcess,
    ServerUsage,
    available_loops,
    die_with_parent,
    git_revision,
    markdown_table,
    new_loop,
    rotated,
)
from echo import NATIVE_TARGET_DIR, build_native, parse_list, size_label

NATIVE = "native"
NATIVE_UDP_BINARY = os.path.join(NATIVE_TARGET_DIR, "release", "native-udp-echo")

#: How long a client waits for its echo before the run fails as a lost datagram.
ECHO_TIMEOUT = 2.0


# -- server (runs in its own process) --------------------------------------------------------


class EchoProtocol(asyncio.DatagramProtocol):
    """``datagram_received(data, addr)`` -> ``transport.sendto(data, addr)``."""

    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        print(f"server: error_received({exc!r})", file=sys.stderr)


def server_main(kind: str) -> None:
    """Entry point of a server process: print the port once serving, serve until killed."""
    die_with_parent()
    loop = new_loop(kind)
    asyncio.set_event_loop(loop)
    try:
        transport, _ = loop.run_until_complete(
            loop.create_datagram_endpoint(EchoProtocol, local_addr=("127.0.0.1", 0))
        )
        print(transport.get_extra_info("sockname")[1], flush=True)
        loop.run_forever()
    finally:
        loop.close()


# -- client (runs in its own process) --------------------------------------------------------


def client_run(port: int, size: int, clients: int, duration: float) -> dict[str, object]:
    """Drive ``clients`` blocking UDP sockets for ``duration`` seconds."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    threads = ClientThreads(clients, duration)

    def worker(slot: list[float]) -> None:
        message = os.urandom(size)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(ECHO_TIMEOUT)
            sock.connect(("127.0.0.1", port))
            buf = bytearray(size + 1)  # one more: a longer echo is caught too
            end = threads.ready()
            perf_counter = time.perf_counter
            while True:
                start = perf_counter()
                if start >= end:
                    return
                sock.send(message)
                try:
                    n = sock.recv_into(buf)
                except TimeoutError:
                    raise RuntimeError(
                        f"no echo within {ECHO_TIMEOUT:g} s (datagram lost)"
                    ) from None
                slot.append(perf_counter() - start)
                if n != size or buf[:n] != message:
                    raise AssertionError("echo differs from the datagram")

    elapsed = threads.run(worker, latencies, "a client")
    return {"elapsed": elapsed, "latencies": [lat for slot in latencies for lat in slot]}


def client_main(port: int, size: int, clients: int, duration: float) -> None:
    """Entry point of the client process: print elapsed time and latencies as JSON."""
    print(json.dumps(client_run(port, size, clients, duration)))


# -- orchestration ---------------------------------------------------------------------------


def measure(
    server: ServerProcess, size: int, clients: int, duration: float, cpus: set[int] | None
) -> dict[str, float]:
    """One client run against one server: datagrams/s, p50/p99 (µs), server CPU/datagram."""
    if server.proc is None or server.proc.poll() is not None:
        raise RuntimeError("the server is not running")
    pid = server.proc.pid
    argv = [sys.executable, __file__, "client", str(server.port), str(size), str(clients)]
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
    if out.returncode != 0:
        last = out.stderr.strip().splitlines()[-1:] or [f"exit status {out.returncode}"]
        raise RuntimeError(f"client failed: {last[0]}")
    result = json.loads(out.stdout)
    latencies = sorted(result["latencies"])
    if not latencies:
        raise RuntimeError("no datagram came back")
    n = len(latencies)
    return {
        "rps": n / result["elapsed"],
        "p50_us": latencies[n // 2] * 1e6,
        "p99_us": latencies[min(n - 1, int(n * 0.99))] * 1e6,
        **used.per_request(n),
    }


Key = tuple[int, int, str]  # size, clients, loop

FIELDS = ("rps", "p50_us", "p99_us", "cpu_us_per_req", "kernel_us_per_req", "sleeps_per_req")


def report(loops, native, sizes, client_counts, results, errors, args) -> str:
    """A Markdown table of medians over rounds."""
    first, others = loops[0], loops[1:]

    def med(key: Key) -> dict[str, float] | None:
        runs = results.get(key)
        if not runs:
            return None
        return {name: statistics.median(r[name] for r in runs) for name in FIELDS}

    def ratio(num, den) -> str:
        if not num or not den or den["cpu_us_per_req"] <= 0:
            return "-"
        return f"{num['cpu_us_per_req'] / den['cpu_us_per_req']:.2f}x"

    head = ["size", "clients", "loop", "dgrams/s", "p50 µs", "p99 µs", "sleeps/dgram"]
    head += ["server CPU µs/dgram", "kernel µs/dgram", *(f"eff. vs {k}" for k in others)]
    if native:
        head.append("of ceiling")
    rows = [head]
    for size in sizes:
        for clients in client_counts:
            ceiling = med((size, clients, NATIVE)) if native else None
            for kind in ([NATIVE] if native else []) + loops:
                m = med((size, clients, kind))
                row = [size_label(size), str(clients), kind]
                if m is None:
                    row += ["ERROR", "", "", "", "", ""]
                else:
                    row += [
                        f"{m['rps']:.0f}",
                        f"{m['p50_us']:.0f}",
                        f"{m['p99_us']:.0f}",
                        f"{m['sleeps_per_req']:.2f}",
                        f"{m['cpu_us_per_req']:.2f}",
                        f"{m['kernel_us_per_req']:.2f}",
                    ]
                row += [
                    ratio(med((size, clients, other)), m) if kind == first else ""
                    for other in others
                ]
                if native:
                    row.append("1.00x" if kind == NATIVE else ratio(ceiling, m))
                rows.append(row)
    meta = (
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs ({args.pinned}); "
        f"{args.rounds} round(s) of {args.duration:g} s per cell; client: separate process, "
        "one thread and one blocking UDP socket per client; medians over rounds. Server "
        "CPU = utime+stime of the server process / datagrams echoed; kernel = its stime "
        "alone. sleeps/dgram = the server's voluntary context switches per datagram."
        f" eff. vs X = X µs/dgram / {first} µs/dgram (> 1: {first} spends less CPU)."
    )
    if native:
        meta += " of ceiling = native µs / row µs."
    rev = git_revision()
    meta += " Versions: " + "; ".join(f"{k} {v}" for k, v in args.versions.items())
    meta += f"; repository at {rev}." if rev else "."
    out = [meta, "", markdown_table(rows, set(range(3, len(head))))]
    if errors:
        out += ["", "Errors:"]
        for (size, clients, kind), msgs in errors.items():
            out += [f"- {kind} {size_label(size)} x {clients}: {msg}" for msg in msgs]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--loops", default=",".join(ALL_LOOPS), help="default: %(default)s")
    parser.add_argument("--no-native", action="store_true", help="skip the Rust ceiling")
    parser.add_argument("--sizes", default="64,1024", help="datagram sizes, bytes")
    parser.add_argument("--clients", default="1,4", help="concurrent clients")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="0.5 s runs, 1 round (smoke test)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    parser.add_argument("--json", help="write every run's results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 0.5, 1

    loops, args.versions = available_loops(parse_list(args.loops, ALL_LOOPS))
    if not loops:
        print("no loop to measure", file=sys.stderr)
        return 1
    sizes = [int(s) for s in parse_list(args.sizes)]
    client_counts = [int(c) for c in parse_list(args.clients)]
    native = not args.no_native and build_native() is not None
    native = native and os.path.exists(NATIVE_UDP_BINARY)
    allowed = sorted(os.sched_getaffinity(0))
    server_cpus = client_cpus = None
    if not args.no_pin and len(allowed) >= 2:
        server_cpus, client_cpus = {allowed[-1]}, set(allowed[:-1])
    args.pinned = (
        f"servers pinned to CPU {min(server_cpus)}, client to CPU(s) "
        f"{','.join(map(str, sorted(client_cpus)))}"
        if server_cpus and client_cpus
        else "not pinned"
    )

    servers = {
        k: ServerProcess(k, [sys.executable, __file__, "serve", k], server_cpus) for k in loops
    }
    if native:
        servers[NATIVE] = ServerProcess(NATIVE, [NATIVE_UDP_BINARY], server_cpus)
    order = list(servers)
    results: dict[Key, list[dict[str, float]]] = {}
    errors: dict[Key, list[str]] = {}
    total = len(sizes) * len(client_counts) * args.rounds * len(servers)
    print(f"{total} runs, about {total * (args.duration + 0.3) / 60:.1f} min", file=sys.stderr)
    try:
        for server in servers.values():
            try:
                server.start()
            except Exception as exc:  # its runs will report errors
                print(f"error: {exc}", file=sys.stderr)
        for server in servers.values():  # untimed warmup
            try:
                measure(server, sizes[0], max(client_counts), min(0.3, args.duration), client_cpus)
            except Exception as exc:
                print(f"warning: warmup of {server.label} failed: {exc}", file=sys.stderr)
                server.restart()
        for size in sizes:
            for clients in client_counts:
                for rnd in range(args.rounds):
                    for name in rotated(order, rnd):
                        server, key = servers[name], (size, clients, name)
                        try:
                            run = measure(server, size, clients, args.duration, client_cpus)
                        except Exception as exc:
                            msg = f"{type(exc).__name__}: {exc}"
                            errors.setdefault(key, []).append(msg)
                            print(f"error: {name} {key[:2]}: {msg}", file=sys.stderr)
                            server.restart()
                        else:
                            results.setdefault(key, []).append(run)
                    print(
                        f"  done: {size} B x {clients} clients, round {rnd + 1}/{args.rounds}",
                        file=sys.stderr,
                    )
    finally:
        for server in servers.values():
            server.stop()

    print(report(loops, native, sizes, client_counts, results, errors, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [
                    {"size": s, "clients": c, "loop": k, "runs": runs}
                    for (s, c, k), runs in results.items()
                ],
                f,
                indent=1,
            )
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        server_main(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit(main())
