"""TLS benchmark: ferroloop / uvloop / stock asyncio, server CPU per operation.

Modes (each server in its own process, on one loop, over one throwaway ECDSA P-256
certificate made with the ``openssl`` command; TLS 1.3):

``protocol``
    TLS echo, ``loop.create_server(..., ssl=ctx)`` with an ``asyncio.Protocol``.
``streams``
    TLS echo, ``asyncio.start_server(..., ssl=ctx)``: read / write / drain.
``handshake``
    New connections: the client connects, does a full handshake (no session reuse),
    sends one byte, reads it back, closes. One operation = one connection.
``https``
    HTTP/1.1 keep-alive over TLS under ``wrk`` (Debian's wrk speaks TLS): the
    httptools protocol of ``http_wrk.py``, served with ``ssl=ctx``. Skipped with a note
    if wrk or httptools is missing.

The echo and handshake clients are a separate process with blocking ``ssl`` sockets,
one thread per connection; every echo is checked against the message sent. Servers are
pinned to the last CPU and clients to the others (``--no-pin`` turns this off). Every
round measures every loop in every mode, the order rotating from round to round; the
table shows medians over the rounds. The deciding figure is the server's CPU time
(``utime + stime`` from ``/proc``) per operation; ``eff. vs X`` = X's µs/op over the
first loop's (> 1: the first loop spends less CPU).

Usage::

    python benchmarks/tls.py                      # all modes, 1 KiB and 64 KiB x 1/10 conns
    python benchmarks/tls.py --quick              # 0.5 s runs, 1 round (smoke test)
    python benchmarks/tls.py --modes handshake --conns 1,4 --rounds 5

The exit status is 1 if any measurement failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

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

MODES = ("protocol", "streams", "handshake", "https")
CHUNK = 256 * 1024


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed ECDSA certificate for localhost: (cert path, key path)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def server_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def client_context(cert: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cert)
    # Every handshake is a full one: no tickets to resume with.
    context.options |= ssl.OP_NO_TICKET
    return context


# -- servers (run in their own process) ------------------------------------------------------


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def server_main(kind: str, mode: str, cert: str, key: str) -> None:
    die_with_parent()
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    listener.setblocking(False)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    loop = new_loop(kind)
    asyncio.set_event_loop(loop)
    context = server_context(cert, key)

    async def start():
        if mode in ("protocol", "handshake"):
            return await loop.create_server(EchoProtocol, sock=listener, ssl=context)
        if mode == "streams":
            return await asyncio.start_server(stream_echo, sock=listener, ssl=context, limit=CHUNK)
        import http_wrk

        return await loop.create_server(http_wrk.make_protocol_class(), sock=listener, ssl=context)

    try:
        server = loop.run_until_complete(start())
        print(listener.getsockname()[1], flush=True)
        loop.run_forever()
        server.close()
    finally:
        loop.close()


# -- clients (run in their own process) ------------------------------------------------------


def client_main(mode: str, port: int, size: int, conns: int, duration: float, cert: str) -> None:
    context = client_context(cert)
    message = os.urandom(size)
    counts = [0] * conns
    clients = ClientThreads(conns, duration)

    def connect() -> ssl.SSLSocket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return context.wrap_socket(sock, server_hostname="localhost")

    def echo_once(tls: ssl.SSLSocket, data: bytes) -> None:
        tls.sendall(data)
        got = bytearray()
        while len(got) < len(data):
            chunk = tls.recv(len(data) - len(got))
            if not chunk:
                raise ConnectionError("server closed the connection")
            got += chunk
        if got != data:
            raise AssertionError("echo differs from the message")

    def worker(slot: int) -> None:
        if mode == "handshake":
            end = clients.ready()
            while time.perf_counter() < end:
                with connect() as tls:
                    echo_once(tls, b"x")
                    counts[slot] += 1
            return
        with connect() as tls:
            end = clients.ready()
            while time.perf_counter() < end:
                echo_once(tls, message)
                counts[slot] += 1

    elapsed = clients.run(worker, range(conns), "a client connection")
    print(json.dumps({"elapsed": elapsed, "ops": sum(counts)}))


def wrk_run(port: int, conns: int, duration: float, cpus) -> dict:
    import http_wrk

    argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency"]
    argv += ["--timeout", f"{IO_TIMEOUT:g}s", f"https://127.0.0.1:{port}/"]
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration + 3 * IO_TIMEOUT,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout}")
    result = http_wrk.parse_wrk(out.stdout)
    if result["non_2xx"] or result["socket_errors"]:
        raise RuntimeError(f"wrk saw errors:\n{out.stdout}")
    return {"elapsed": result["elapsed"], "ops": result["requests"]}


# -- driver ----------------------------------------------------------------------------------


class Server(ServerProcess):
    def __init__(self, mode: str, loop: str, cert: str, key: str, cpus):
        argv = [sys.executable, __file__, "serve", loop, mode, cert, key]
        super().__init__(f"{mode}/{loop}", argv, cpus)
        self.mode, self.loop = mode, loop


def measure(server: Server, size: int, conns: int, duration: float, cert: str, cpus) -> dict:
    if server.proc is None or server.proc.poll() is not None:
        raise RuntimeError("the server is not running")
    before = ServerUsage.of(server.proc.pid)
    if server.mode == "https":
        result = wrk_run(server.port, conns, duration, cpus)
    else:
        argv = [sys.executable, __file__, "client", server.mode, str(server.port), str(size)]
        argv += [str(conns), str(duration), cert]
        try:
            out = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=duration + 3 * IO_TIMEOUT,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"client timed out after {exc.timeout:g} s") from None
        if out.returncode != 0:
            last = out.stderr.strip().splitlines()[-1:] or [f"exit status {out.returncode}"]
            raise RuntimeError(f"client failed: {last[0]}")
        result = json.loads(out.stdout)
    used = ServerUsage.of(server.proc.pid) - before
    if not result["ops"]:
        raise RuntimeError("no operation completed")
    return {
        "ops_per_s": result["ops"] / result["elapsed"],
        "cpu_us": used.cpu / result["ops"] * 1e6,
        "kernel_us": used.system / result["ops"] * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", default=",".join(ALL_LOOPS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--sizes", default="1024,65536", help="echo message sizes, bytes")
    parser.add_argument("--conns", default="1,10")
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 0.5, 1
    modes = [m for m in args.modes.split(",") if m]
    if "https" in modes and (shutil.which("wrk") is None or not _has_httptools()):
        print("note: wrk or httptools missing; the https mode is skipped", file=sys.stderr)
        modes.remove("https")
    loops, versions = available_loops(args.loops.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    conn_counts = [int(c) for c in args.conns.split(",")]
    allowed = sorted(os.sched_getaffinity(0))
    server_cpus = client_cpus = None
    if not args.no_pin and len(allowed) >= 2:
        server_cpus, client_cpus = {allowed[-1]}, set(allowed[:-1])

    workdir = tempfile.mkdtemp(prefix="ferroloop-tls-bench-")
    cert, key = make_certificate(workdir)
    groups = [[Server(m, k, cert, key, server_cpus) for k in loops] for m in modes]
    servers = [s for group in groups for s in group]
    cells = []
    for mode in modes:
        for size in sizes if mode in ("protocol", "streams") else [0]:
            for conns in conn_counts:
                cells.append((mode, size, conns))
    results: dict = {}
    errors: dict = {}
    try:
        for server in servers:
            server.start()
        for server in servers:  # untimed warmup
            try:
                measure(server, 1024, 1, 0.3, cert, client_cpus)
            except Exception as exc:
                print(f"warning: warmup of {server.label}: {exc}", file=sys.stderr)
                server.restart()
        for rnd in range(args.rounds):
            for mode, size, conns in rotated(cells, rnd):
                group = next(g for g in groups if g[0].mode == mode)
                for server in rotated(group, rnd):
                    key_ = (mode, size, conns, server.loop)
                    try:
                        run = measure(server, size, conns, args.duration, cert, client_cpus)
                    except Exception as exc:
                        errors.setdefault(key_, []).append(f"{type(exc).__name__}: {exc}")
                        print(f"error: {server.label} {size} x {conns}: {exc}", file=sys.stderr)
                        server.restart()
                    else:
                        results.setdefault(key_, []).append(run)
            print(f"  round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(loops, cells, results, errors, versions, args, server_cpus))
    return 1 if errors else 0


def _has_httptools() -> bool:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


def report(loops, cells, results, errors, versions, args, pinned) -> str:
    first, others = loops[0], loops[1:]
    head = ["mode", "size", "conns", *(f"{k} µs/op" for k in loops), f"{first} kernel µs/op"]
    head += [f"{first} ops/s", *(f"eff. vs {k}" for k in others)]
    rows = [head]
    for mode, size, conns in cells:
        med = {}
        for k in loops:
            runs = results.get((mode, size, conns, k))
            med[k] = {n: statistics.median(r[n] for r in runs) for n in runs[0]} if runs else None
        row = [mode, f"{size // 1024} KiB" if size else "-", str(conns)]
        row += [f"{med[k]['cpu_us']:.1f}" if med[k] else "ERROR" for k in loops]
        row.append(f"{med[first]['kernel_us']:.1f}" if med[first] else "ERROR")
        row.append(f"{med[first]['ops_per_s']:.0f}" if med[first] else "ERROR")
        for k in others:
            ok = med[k] and med[first]
            row.append(f"{med[k]['cpu_us'] / med[first]['cpu_us']:.2f}x" if ok else "-")
        rows.append(row)
    where = f"server on CPU {min(pinned)}" if pinned else "not pinned"
    meta = (
        f"Python {sys.version.split()[0]}; {where}; {args.rounds} round(s) of "
        f"{args.duration:g} s; medians. µs/op = server utime+stime per echo, handshake "
        "(connection) or HTTPS request. Versions: "
        + "; ".join(f"{k} {v}" for k, v in versions.items())
        + (f"; repository at {git_revision()}." if git_revision() else ".")
    )
    out = [meta, "", markdown_table(rows, set(range(3, len(head))))]
    for (mode, size, conns, k), msgs in errors.items():
        out += [f"- error {mode}/{k} {size} x {conns}: {m}" for m in msgs]
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        server_main(*sys.argv[2:6])
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        mode, port, size, conns, duration, cert = sys.argv[2:8]
        client_main(mode, int(port), int(size), int(conns), float(duration), cert)
    else:
        sys.exit(main())
