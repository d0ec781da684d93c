"""HTTP/1.1 keep-alive benchmark under ``wrk``: ferroloop / uvloop / stock asyncio.

The server is a minimal HTTP/1.1 server of the kind real frameworks are built from: an
``asyncio.Protocol`` that feeds every ``data_received`` chunk to ``httptools``'
``HttpRequestParser`` and, on each complete request, writes a fixed ``200 OK`` with
``Content-Length`` and the body ``Hello, World!``. Connections stay open (keep-alive)
unless the client asks otherwise. Each loop's server runs in its own process, started with
``loop.create_server``.

The load generator is ``wrk`` (the Debian package), for example ``wrk -t1 -c10 -d5s
--latency``: a C client, so it needs far less CPU per request than a Python one would. The
script parses wrk's request count, req/s and latency percentiles (p50/p99), and rejects a
run with non-2xx responses or socket errors (so a broken loop cannot look fast). It skips
with a message if wrk or httptools is missing. The server is pinned to the last CPU and wrk
to the others (``--no-pin`` turns this off), so the two do not share a core.

Why server CPU per request: on a 2-core machine the client is often the bottleneck, which
squeezes req/s ratios toward 1 for any fast server. The deciding figure is therefore the
**server's CPU time per request**: ``utime + stime`` of the server process (from
``/proc/PID/stat``, 10 ms ticks) before and after the wrk run, divided by wrk's request
count. ``eff. vs uvloop`` on the first loop's row (ferroloop by default) = uvloop µs/req /
ferroloop µs/req, so > 1 means ferroloop spends less CPU per request; same for asyncio.

Interleaving: every server stays up for the whole run (after an untimed 1 s warmup). For
each connection count, every round runs wrk once against each loop's server, the loop order
rotating from round to round; the table reports medians over the rounds. Every subprocess
has a timeout and the servers die with the driver (``PR_SET_PDEATHSIG``).

Usage::

    python benchmarks/http_wrk.py                     # conns 10 and 100, 5 s runs, 3 rounds
    python benchmarks/http_wrk.py --quick             # 1 s runs, 1 round (smoke test)
    python benchmarks/http_wrk.py --conns 10 --duration 10 --rounds 5 --json out.json

The exit status is 1 if any measurement failed, 0 otherwise (also when skipped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys

# A sibling module: run as a script, this file has the benchmarks directory on sys.path.
from _harness import (
    ALL_LOOPS,
    IO_TIMEOUT,
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

BODY = b"Hello, World!"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
RESPONSE_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
    b"Connection: close\r\n\r\n%s" % (len(BODY), BODY)
)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


# -- server (runs in its own process) --------------------------------------------------------


def make_protocol_class() -> type[asyncio.Protocol]:
    import httptools

    class HttpProtocol(asyncio.Protocol):
        """Keep-alive HTTP/1.1: parse with httptools, answer every request with RESPONSE."""

        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass

        def connection_lost(self, exc: Exception | None) -> None:
            self.transport = None

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                if self.transport is not None:
                    self.transport.write(BAD_REQUEST)
                    self.transport.close()
                    self.transport = None

        # httptools callback: one request fully received.
        def on_message_complete(self) -> None:
            transport = self.transport
            if transport is None:
                return
            if self.parser.should_keep_alive():
                transport.write(RESPONSE)
            else:
                transport.write(RESPONSE_CLOSE)
                transport.close()
                self.transport = None

    return HttpProtocol


def server_main(kind: str) -> None:
    """Entry point of a server process: print the port once serving, then serve until killed."""
    die_with_parent()
    protocol = make_protocol_class()
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    listener.setblocking(False)
    loop = new_loop(kind)
    asyncio.set_event_loop(loop)
    try:
        server = loop.run_until_complete(loop.create_server(protocol, sock=listener))
        print(listener.getsockname()[1], flush=True)
        loop.run_forever()
        server.close()
    finally:
        loop.close()


# -- driver ----------------------------------------------------------------------------------


class Server(ServerProcess):
    """One loop's HTTP server process."""

    def __init__(self, loop: str, cpus: set[int] | None):
        super().__init__(loop, [sys.executable, __file__, "serve", loop], cpus)
        self.loop = loop

    def start(self) -> None:
        super().start()
        self.check_response()

    def check_response(self) -> None:
        """One request by hand: the server must answer exactly RESPONSE, and keep the
        connection open for a second one."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT) as sock:
            for _ in range(2):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                got = b""
                while len(got) < len(RESPONSE):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                if got != RESPONSE:
                    raise RuntimeError(f"{self.loop} server answered {got!r}")


UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def parse_wrk(out: str) -> dict[str, float]:
    """Requests, elapsed seconds, req/s, p50/p99 (µs) and error counts from wrk's output."""

    def find(pattern: str) -> re.Match[str]:
        m = re.search(pattern, out, re.MULTILINE)
        if m is None:
            raise RuntimeError(f"unexpected wrk output (no {pattern!r}):\n{out}")
        return m

    m = find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
    result = {
        "requests": float(m[1]),
        "elapsed": float(m[2]) * UNITS[m[3]] / 1e6,
        "wrk_rps": float(find(r"^Requests/sec:\s*([\d.]+)")[1]),
    }
    for pct in ("50", "99"):
        m = find(rf"^\s*{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)")
        result[f"p{pct}_us"] = float(m[1]) * UNITS[m[2]]
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = float(sum(int(g) for g in m.groups())) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = float(m[1]) if m else 0.0
    return result


def measure(
    server: Server, conns: int, threads: int, duration: int, cpus: set[int] | None
) -> dict[str, float]:
    """One wrk run against one server: req/s, p50/p99 (µs) and server µs CPU/request."""
    if server.proc is None or server.proc.poll() is not None:
        raise RuntimeError("the server is not running")
    argv = ["wrk", f"-t{min(threads, conns)}", f"-c{conns}", f"-d{duration}s", "--latency"]
    argv += ["--timeout", f"{IO_TIMEOUT:g}s", f"http://127.0.0.1:{server.port}/"]
    pid = server.proc.pid
    busy_before, client_before = busy_seconds(), children_cpu_seconds()
    before = ServerUsage.of(pid)
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=duration + 3 * IO_TIMEOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"wrk timed out after {exc.timeout:g} s") from None
    used = ServerUsage.of(pid) - before
    client_cpu = children_cpu_seconds() - client_before
    busy = busy_seconds() - busy_before
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout}")
    result = parse_wrk(out.stdout)
    if result["non_2xx"] or result["socket_errors"]:
        raise RuntimeError(
            f"{result['non_2xx']:.0f} non-2xx responses, "
            f"{result['socket_errors']:.0f} socket errors:\n{out.stdout}"
        )
    if not result["requests"]:
        raise RuntimeError("no request completed")
    result["rps"] = result["requests"] / result["elapsed"]
    result.update(used.per_request(result["requests"]))
    # CPU that neither the server nor wrk used (this driver, other programs), as a share of
    # one core over the run: a noise indicator.
    result["other_load"] = max(0.0, busy - used.cpu - client_cpu) / result["elapsed"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", default=",".join(ALL_LOOPS), help="default: %(default)s")
    parser.add_argument("--conns", default="10,100", help="wrk connections (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default: 1)")
    parser.add_argument("--duration", type=int, default=5, help="whole seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 s runs, 1 round (smoke test)")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the servers to the last CPU and wrk to the others",
    )
    parser.add_argument("--json", help="write every run's results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 1, 1

    if shutil.which("wrk") is None:
        print("wrk not found (Debian/Ubuntu: apt-get install wrk); skipped", file=sys.stderr)
        return 0
    probe = subprocess.run([sys.executable, "-c", "import httptools"], timeout=60)
    if probe.returncode:
        print("httptools not importable (pip install httptools); skipped", file=sys.stderr)
        return 0
    loops, versions = available_loops([k.strip() for k in args.loops.split(",") if k.strip()])
    bad = [k for k in loops if k not in ALL_LOOPS]
    if bad or not loops:
        raise SystemExit(f"--loops: choose from {ALL_LOOPS}")
    conn_counts = [int(c) for c in args.conns.split(",")]

    allowed = sorted(os.sched_getaffinity(0))
    server_cpus = client_cpus = None
    if not args.no_pin and len(allowed) >= 2:
        server_cpus, client_cpus = {allowed[-1]}, set(allowed[:-1])

    servers = {k: Server(k, server_cpus) for k in loops}
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    errors: dict[tuple[int, str], list[str]] = {}
    total = len(conn_counts) * args.rounds * len(loops)
    print(f"{total} wrk runs, about {total * (args.duration + 0.2) / 60:.1f} min", file=sys.stderr)
    try:
        for server in servers.values():
            try:
                server.start()
            except Exception as exc:  # its runs will report errors
                print(f"error: {exc}", file=sys.stderr)
        for server in servers.values():  # untimed warmup
            try:
                measure(server, max(conn_counts), args.threads, 1, client_cpus)
            except Exception as exc:
                print(f"warning: warmup of {server.loop} failed: {exc}", file=sys.stderr)
                server.restart()
        for conns in conn_counts:
            for rnd in range(args.rounds):
                for kind in rotated(loops, rnd):
                    try:
                        run = measure(
                            servers[kind], conns, args.threads, args.duration, client_cpus
                        )
                    except Exception as exc:
                        msg = f"{type(exc).__name__}: {exc}"
                        errors.setdefault((conns, kind), []).append(msg)
                        print(f"error: {kind} conns={conns}: {msg}", file=sys.stderr)
                        servers[kind].restart()
                    else:
                        results.setdefault((conns, kind), []).append(run)
                print(f"  done: {conns} conns, round {rnd + 1}/{args.rounds}", file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()

    pinned = (
        f"server pinned to CPU {min(server_cpus)}, wrk to CPU(s) "
        f"{','.join(map(str, sorted(client_cpus)))}"
        if server_cpus and client_cpus
        else "not pinned"
    )
    args.versions = versions
    print(report(loops, conn_counts, results, errors, args, pinned))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [{"conns": c, "loop": k, "runs": runs} for (c, k), runs in results.items()],
                f,
                indent=1,
            )
    return 1 if errors else 0


def report(loops, conn_counts, results, errors, args, pinned) -> str:
    """Markdown table of medians with efficiency ratios of the first loop against the others."""
    first, others = loops[0], loops[1:]
    head = ["conns", "loop", "req/s", "p50 µs", "p99 µs", "sleeps/req", "server CPU µs/req"]
    head.append("kernel µs/req")
    head += [f"eff. vs {k}" for k in others]
    rows = [head]
    for conns in conn_counts:
        med = {}
        for kind in loops:
            runs = results.get((conns, kind))
            med[kind] = (
                {
                    key: statistics.median(r[key] for r in runs)
                    for key in (
                        "rps",
                        "p50_us",
                        "p99_us",
                        "sleeps_per_req",
                        "cpu_us_per_req",
                        "kernel_us_per_req",
                    )
                }
                if runs
                else None
            )
        for kind in loops:
            m = med[kind]
            row = [str(conns), kind]
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
                o = med[other]
                if kind == first and m and o:
                    row.append(f"{o['cpu_us_per_req'] / m['cpu_us_per_req']:.2f}x")
                else:
                    row.append("-" if kind == first else "")
            rows.append(row)
    table = markdown_table(rows, set(range(2, len(head))))
    meta = (
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs ({pinned}); httptools "
        f"keep-alive server, wrk -t{args.threads} -d{args.duration}s --latency; "
        f"{args.rounds} round(s); medians. Server CPU = utime+stime of the server process / "
        "wrk's request count; kernel = its stime alone (the TCP stack and wakeups: no loop "
        "spends less than the syscalls it makes cost). "
        f"eff. vs X = X µs/req / {first} µs/req (> 1: {first} spends less CPU). "
        "sleeps/req = the server's voluntary context switches (waits in the poller) per "
        "request: below 1, it handled several requests per wakeup."
    )
    loads = [r["other_load"] for runs in results.values() for r in runs]
    if loads:
        load = statistics.median(loads)
        meta += (
            f" Other CPU load during the runs (not server, not wrk): median {load:.0%} of a "
            f"core, max {max(loads):.0%}."
        )
        if load > 0.1:
            meta += " WARNING: the machine was busy; rerun on a quiet machine."
    rev = git_revision()
    meta += " Versions: " + "; ".join(f"{k} {v}" for k, v in args.versions.items())
    meta += f"; repository at {rev}." if rev else "."
    out = [meta, "", table]
    if errors:
        out += ["", "Errors:"]
        for (conns, kind), msgs in errors.items():
            out += [f"- {kind} conns={conns}: {msg}" for msg in msgs]
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        server_main(sys.argv[2])
    else:
        sys.exit(main())
