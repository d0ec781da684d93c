"""TCP echo benchmark, server in "sockets" mode: ferroloop / uvloop / stock asyncio.

The server runs in its own process on one loop and serves every connection with
``sock_accept`` / ``sock_recv`` / ``sock_sendall``. The client is a second process with
plain blocking sockets, one thread per connection: it sends a message, reads the whole
echo back, and repeats for a fixed duration, recording each round trip's latency.

On a 2-core machine the client often saturates its core, which squeezes req/s ratios
toward 1 for any fast server. The figure that decides is therefore the **server's CPU
time per request**: the server process's user+system CPU seconds over the run (read from
``/proc/PID/stat``), divided by the requests served. Efficiency ratios compare those
(``other µs/req / ferroloop µs/req``, so > 1 means ferroloop spends less CPU).

Every cell (message size x concurrency) runs on every loop in each round, the order
rotating between rounds; the table reports medians over the rounds.

Usage::

    python benchmarks/echo.py                         # 1/10/100 KiB x 1/10 conns, 3 rounds
    python benchmarks/echo.py --quick                 # short runs (CI smoke test)
    python benchmarks/echo.py --loops ferroloop,uvloop --sizes 1024 --duration 2
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
import threading
import time

ALL_LOOPS = ("ferroloop", "uvloop", "asyncio")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- server ---------------------------------------------------------------------------------


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A fresh loop of the given kind."""
    if kind == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop()
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.SelectorEventLoop()


async def serve(listener: socket.socket) -> None:
    """Accept connections forever; echo each one with sock_recv/sock_sendall."""
    loop = asyncio.get_running_loop()

    async def echo(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                data = await loop.sock_recv(conn, 256 * 1024)
                if not data:
                    return
                await loop.sock_sendall(conn, data)

    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        loop.create_task(echo(conn))


def server_main(kind: str) -> None:
    """Entry point of the server process: print the port, then serve until killed."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)
    loop = new_loop(kind)
    try:
        loop.run_until_complete(serve(listener))
    finally:
        loop.close()


# -- client ---------------------------------------------------------------------------------


def client_run(port: int, size: int, conns: int, duration: float) -> list[float]:
    """Drive ``conns`` blocking connections for ``duration`` seconds; return latencies."""
    message = os.urandom(size)
    latencies: list[list[float]] = [[] for _ in range(conns)]
    deadline = time.perf_counter() + duration
    errors: list[BaseException] = []

    def worker(slot: list[float]) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buf = bytearray(size)
                view = memoryview(buf)
                while True:
                    start = time.perf_counter()
                    if start >= deadline:
                        return
                    sock.sendall(message)
                    got = 0
                    while got < size:
                        n = sock.recv_into(view[got:])
                        if not n:
                            raise ConnectionError("server closed the connection")
                        got += n
                    slot.append(time.perf_counter() - start)
                    if buf != message:
                        raise AssertionError("echo differs from the message")
        except BaseException as exc:  # reported to the parent below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in latencies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [lat for slot in latencies for lat in slot]


def client_main(port: int, size: int, conns: int, duration: float) -> None:
    """Entry point of the client process: print the latencies as JSON."""
    print(json.dumps(client_run(port, size, conns, duration)))


# -- orchestration --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the file, 12 and 13 after the ")".
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start_server(kind: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", kind],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(5)
        raise RuntimeError(f"{kind} server failed to start (exit {proc.returncode})")
    return proc, int(line)


def measure(
    server: subprocess.Popen[str], port: int, size: int, conns: int, duration: float
) -> dict[str, float]:
    """One client run against one server: req/s, p50/p99 (µs) and server µs CPU/request."""
    cpu_before = cpu_seconds(server.pid)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "client", str(port), str(size), str(conns), str(duration)],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    )
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(server.pid) - cpu_before
    latencies = sorted(json.loads(out.stdout))
    if not latencies:
        raise RuntimeError("no request completed")
    n = len(latencies)
    return {
        "requests": n,
        "rps": n / elapsed,
        "p50_us": latencies[n // 2] * 1e6,
        "p99_us": latencies[min(n - 1, int(n * 0.99))] * 1e6,
        "cpu_us_per_req": cpu / n * 1e6,
    }


def available_loops(names: list[str]) -> list[str]:
    found = []
    for name in names:
        if name == "asyncio":
            found.append(name)
            continue
        try:
            __import__(name)
        except ImportError as exc:
            print(f"note: {name} is not importable ({exc}); skipped", file=sys.stderr)
        else:
            found.append(name)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", default=",".join(ALL_LOOPS))
    parser.add_argument("--sizes", default="1024,10240,102400", help="message sizes, bytes")
    parser.add_argument("--conns", default="1,10", help="concurrent connections")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="0.3 s runs, 1 round")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 0.3, 1

    loops = available_loops(args.loops.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    conn_counts = [int(c) for c in args.conns.split(",")]
    servers = {kind: start_server(kind) for kind in loops}
    results: dict[tuple[int, int, str], list[dict[str, float]]] = {}
    try:
        for size in sizes:
            for conns in conn_counts:
                for rnd in range(args.rounds):
                    order = loops[rnd % len(loops) :] + loops[: rnd % len(loops)]
                    for kind in order:
                        proc, port = servers[kind]
                        run = measure(proc, port, size, conns, args.duration)
                        results.setdefault((size, conns, kind), []).append(run)
    finally:
        for proc, _ in servers.values():
            proc.kill()
            proc.wait()

    print(report(loops, sizes, conn_counts, results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [
                    {"size": s, "conns": c, "loop": k, "runs": runs}
                    for (s, c, k), runs in results.items()
                ],
                f,
                indent=1,
            )
    return 0


def report(loops, sizes, conn_counts, results, args) -> str:
    """Markdown table: per cell and loop, medians; efficiency ratios against the first loop."""
    first = loops[0]
    head = ["size", "conns", "loop", "req/s", "p50 µs", "p99 µs", "server CPU µs/req"]
    head += [f"{first} efficiency vs {k}" for k in loops[1:]]
    rows = [head, ["---"] * len(head)]
    for size in sizes:
        for conns in conn_counts:
            med = {
                k: {
                    key: statistics.median(r[key] for r in results[(size, conns, k)])
                    for key in ("rps", "p50_us", "p99_us", "cpu_us_per_req")
                }
                for k in loops
            }
            for kind in loops:
                m = med[kind]
                row = [
                    f"{size // 1024} KiB",
                    str(conns),
                    kind,
                    f"{m['rps']:.0f}",
                    f"{m['p50_us']:.0f}",
                    f"{m['p99_us']:.0f}",
                    f"{m['cpu_us_per_req']:.1f}",
                ]
                for other in loops[1:]:
                    if kind == first:
                        ratio = med[other]["cpu_us_per_req"] / m["cpu_us_per_req"]
                        row.append(f"{ratio:.2f}x")
                    else:
                        row.append("")
                rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    meta = (
        f"Python {sys.version.split()[0]}; {args.rounds} round(s) of {args.duration:g} s per "
        "cell; server: sock_accept/sock_recv/sock_sendall; client: separate process, "
        "blocking sockets, one thread per connection; medians."
    )
    return meta + "\n\n" + "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        server_main(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit(main())
