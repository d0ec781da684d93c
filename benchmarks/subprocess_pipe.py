"""Subprocess pipe benchmark: ferroloop / uvloop / stock asyncio, parent CPU per MiB.

Each run is a fresh worker process on one event loop that starts a child with
``asyncio.create_subprocess_exec`` and moves ``--mib`` MiB through its pipes, in one of
these modes:

``stdout``
    A Python child writes the data to its stdout in 1 MiB ``os.write`` calls; the worker
    reads it with ``StreamReader.read(256 KiB)`` until EOF.
``head``
    ``head -c N /dev/zero``: coreutils writes in small blocks (8 KiB), so a reader that keeps
    up wakes for little data each time; read as in ``stdout``.
``cat``
    A round trip through ``cat``: one task writes 64 KiB blocks to its stdin
    (``write`` + ``drain``, so flow control pauses and resumes the writer whenever the pipe
    is full), another reads its stdout with ``StreamReader.read(256 KiB)``; stdin is
    closed after the last block and the reader runs to EOF.

Every byte read is checked against what was written (the data is a pseudo-random pattern
both sides generate from the same seed, compared chunk by chunk with ``bytes.startswith``):
a lost, duplicated or reordered byte fails the run. The check is the same work on every
loop, a ``memcmp`` of each byte: about 0.04 ms per MiB here (perf), part of each row.

The deciding figure is the **worker's CPU per MiB** (user + system of the loop's process,
from ``getrusage(RUSAGE_SELF)`` around the transfer, which starts with the first bytes read
(``stdout``, ``head``: a Python child takes a while to start) or the first write (``cat``);
the child's own CPU is not counted). The kernel's share (``stime``: the pipe copies, wake-ups) is
reported too, since no loop spends less than the syscalls it makes cost. ``reads/MiB`` is
how many chunks ``StreamReader.read`` returned per MiB (fewer: larger reads), ``sleeps/MiB``
the worker's voluntary context switches (waits in the poller) per MiB.

``eff. vs X`` = X's CPU per MiB / ferroloop's: above 1, ferroloop spends less CPU.

``floor`` (unless ``--no-floor``) is the same transfer with no event loop at all: a few
Python lines around a level-triggered epoll, reading into one reused buffer, writing the
current block when writable, checking the same way. It is the cost of the pipe itself (the
kernel's copies, wake-ups and sleeps), which no loop can go below; ``of floor`` = floor
CPU per MiB / the row's. uvloop gives its children socket pairs instead of pipes, whose
larger buffers mean fewer, larger reads: its rows are not bound by this floor.

Runs are interleaved: each round runs every mode on every loop, the mode and loop order
rotating from round to round; the table reports medians over the rounds. The worker is
pinned to the last CPU and the child to the others (``--no-pin`` to turn off), as in
``echo.py``. Every worker has a timeout, so a broken loop shows up as ``ERROR``.

Usage::

    python benchmarks/subprocess_pipe.py                     # all modes, 256 MiB, 5 rounds
    python benchmarks/subprocess_pipe.py --quick             # 32 MiB, 1 round (smoke test)
    python benchmarks/subprocess_pipe.py --modes stdout --mib 512 --rounds 7 --json out.json

The exit status is 1 if any run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import select
import shutil
import statistics
import subprocess
import sys
import time

# A sibling module: run as a script, this file has the benchmarks directory on sys.path.
from _harness import (
    ALL_LOOPS,
    available_loops,
    busy_seconds,
    die_with_parent,
    git_revision,
    markdown_table,
    new_loop,
    rotated,
)

MODES = ("stdout", "head", "cat")
#: The pseudo-loop of the no-event-loop reference row (``floor_transfer``).
FLOOR = "floor"
MIB = 1 << 20
#: What each StreamReader.read() asks for.
READ_SIZE = 256 * 1024
#: The cat mode's write size.
BLOCK = 64 * 1024
#: The pattern's period: the data is this many pseudo-random bytes, repeated.
PERIOD = MIB
SEED = 20240612
#: Upper bound for one worker run, seconds.
RUN_TIMEOUT = 300.0

CHILD_WRITER = """
import os, random, sys
block = random.Random(int(sys.argv[1])).randbytes(int(sys.argv[2]))
for _ in range(int(sys.argv[3])):
    view = memoryview(block)
    while view:
        view = view[os.write(1, view):]
"""


def pattern(mode: str) -> bytes:
    """Two periods of the data the child sends, so any chunk is one contiguous slice."""
    if mode == "head":
        return bytes(2 * PERIOD)
    return random.Random(SEED).randbytes(PERIOD) * 2


# -- worker (runs in its own process, on one loop) -----------------------------------------


class Checker:
    """Checks each chunk against the pattern at the stream's current offset."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.total = 0
        self.chunks = 0

    def feed(self, chunk: bytes) -> None:
        if not self.data.startswith(chunk, self.total % PERIOD):
            raise AssertionError(f"wrong bytes at offset {self.total} (chunk of {len(chunk)})")
        self.total += len(chunk)
        self.chunks += 1


async def read_all(stream: asyncio.StreamReader, checker: Checker) -> None:
    while chunk := await stream.read(READ_SIZE):
        checker.feed(chunk)


async def write_all(stdin: asyncio.StreamWriter, data: bytes, total: int) -> None:
    # bytes objects, as programs usually write; sliced once, not per write.
    blocks = [data[offset : offset + BLOCK] for offset in range(0, PERIOD, BLOCK)]
    sent = 0
    while sent < total:
        stdin.write(blocks[(sent % PERIOD) // BLOCK])
        await stdin.drain()
        sent += BLOCK
    stdin.close()
    await stdin.wait_closed()


def child_argv(mode: str, total: int) -> list[str]:
    if mode == "stdout":
        return [sys.executable, "-c", CHILD_WRITER, str(SEED), str(PERIOD), str(total // PERIOD)]
    if mode == "head":
        return [shutil.which("head") or "head", "-c", str(total), "/dev/zero"]
    return [shutil.which("cat") or "cat"]


class Meter:
    """What the worker process used between ``start()`` and ``stop()``."""

    def start(self) -> None:
        self.before = resource.getrusage(resource.RUSAGE_SELF)
        self.children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.busy_before = busy_seconds()
        self.started = time.perf_counter()

    def stop(self, total: int, checker: Checker, code: int) -> dict[str, float]:
        elapsed = time.perf_counter() - self.started
        busy = busy_seconds() - self.busy_before
        after = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        if code != 0:
            raise AssertionError(f"the child exited with status {code}")
        if checker.total != total:
            raise AssertionError(f"read {checker.total} bytes, expected {total}")
        mib = total / MIB
        user = after.ru_utime - self.before.ru_utime
        system = after.ru_stime - self.before.ru_stime
        child = (children.ru_utime - self.children_before.ru_utime) + (
            children.ru_stime - self.children_before.ru_stime
        )
        return {
            # CPU the rest of the machine used meanwhile, in cores: above ~0.1 the numbers
            # are disturbed (caches, frequency, preemption).
            "other_load": max(0.0, busy - user - system - child) / elapsed,
            "mib_per_s": mib / elapsed,
            "cpu_ms_per_mib": (user + system) / mib * 1e3,
            "kernel_ms_per_mib": system / mib * 1e3,
            "reads_per_mib": checker.chunks / mib,
            "sleeps_per_mib": (after.ru_nvcsw - self.before.ru_nvcsw) / mib,
        }


async def transfer(mode: str, total: int, child_cpus: set[int] | None) -> dict[str, float]:
    data = pattern(mode)
    checker = Checker(data)
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        *child_argv(mode, total), stdin=pipe if mode == "cat" else None, stdout=pipe
    )
    if child_cpus:
        os.sched_setaffinity(proc.pid, child_cpus)
    assert proc.stdout is not None
    if mode != "cat":
        # The clock starts with the first bytes: a Python child takes a while to start.
        checker.feed(await proc.stdout.read(READ_SIZE))
    meter = Meter()
    meter.start()
    if mode == "cat":
        assert proc.stdin is not None
        await asyncio.gather(write_all(proc.stdin, data, total), read_all(proc.stdout, checker))
    else:
        await read_all(proc.stdout, checker)
    return meter.stop(total, checker, await proc.wait())


def floor_transfer(mode: str, total: int, child_cpus: set[int] | None) -> dict[str, float]:
    """The same transfer without an event loop or asyncio: level-triggered epoll, one
    read per readiness into a reused buffer (no allocation, no copy), one write of the
    current block per writability, the same check. What is left is the pipe's own cost
    (the kernel's copies, wake-ups and sleeps) plus a few Python lines per chunk: no loop
    can spend less."""
    data = pattern(mode)
    checker = Checker(data)
    argv = child_argv(mode, total)
    stdin = subprocess.PIPE if mode == "cat" else None
    with subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE) as proc:
        if child_cpus:
            os.sched_setaffinity(proc.pid, child_cpus)
        assert proc.stdout is not None
        out = proc.stdout.fileno()
        os.set_blocking(out, False)
        buf = memoryview(bytearray(READ_SIZE))
        with select.epoll() as poller:
            poller.register(out, select.EPOLLIN)

            def read_once() -> bool:
                try:
                    n = os.readv(out, [buf])
                except BlockingIOError:
                    return True
                if n:
                    checker.feed(buf[:n])
                return n > 0

            if mode != "cat":
                while not checker.total:
                    poller.poll()
                    read_once()
            meter = Meter()
            meter.start()
            sent, blocks, inp = 0, [], -1
            if mode == "cat":
                assert proc.stdin is not None
                inp = proc.stdin.fileno()
                os.set_blocking(inp, False)
                blocks = [data[o : o + BLOCK] for o in range(0, PERIOD, BLOCK)]
                poller.register(inp, select.EPOLLOUT)
            reading = True
            while reading:
                for fd, _ in poller.poll():
                    if fd == out:
                        reading = read_once()
                    elif fd == inp:
                        block = blocks[(sent % PERIOD) // BLOCK]
                        try:
                            sent += os.write(inp, memoryview(block)[sent % BLOCK :])
                        except BlockingIOError:
                            continue
                        if sent >= total:
                            poller.unregister(inp)
                            proc.stdin.close()
                            inp = -1
        return meter.stop(total, checker, proc.wait())


def worker_main(kind: str, mode: str, total: int, child_cpus: str) -> None:
    die_with_parent()
    cpus = {int(c) for c in child_cpus.split(",")} if child_cpus else None
    if kind == FLOOR:
        floor_transfer(mode, min(total, 4 * MIB), cpus)
        print(json.dumps(floor_transfer(mode, total, cpus)))
        return
    with asyncio.Runner(loop_factory=lambda: new_loop(kind)) as runner:
        # An untimed warm-up: the first child, allocator and code paths.
        runner.run(transfer(mode, min(total, 4 * MIB), cpus))
        result = runner.run(transfer(mode, total, cpus))
    print(json.dumps(result))


# -- driver ----------------------------------------------------------------------------------


def measure(
    kind: str, mode: str, total: int, cpus: set[int] | None, child_cpus: set[int] | None
) -> dict[str, float]:
    argv = [sys.executable, __file__, "worker", kind, mode, str(total)]
    argv.append(",".join(map(str, sorted(child_cpus))) if child_cpus else "")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"no result within {RUN_TIMEOUT:g} s") from None
    if proc.returncode:
        last = (err.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"worker exited with status {proc.returncode}: {last}")
    return json.loads(out.splitlines()[-1])


def parse_list(text: str, allowed: tuple[str, ...]) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in items if s not in allowed]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return items


COLUMNS = ("mib_per_s", "cpu_ms_per_mib", "kernel_ms_per_mib", "reads_per_mib", "sleeps_per_mib")


def report(loops, modes, floor, results, errors, args) -> str:
    first, others = loops[0], loops[1:]

    def med(key):
        runs = results.get(key)
        if not runs:
            return None
        return {name: statistics.median(r[name] for r in runs) for name in COLUMNS}

    head = ["mode", "loop", "MiB/s", "CPU ms/MiB", "kernel ms/MiB", "reads/MiB", "sleeps/MiB"]
    head += [f"eff. vs {k}" for k in others]
    if floor:
        head.append("of floor")
    rows = [head]
    for mode in modes:
        kinds = [*loops, FLOOR] if floor else loops
        meds = {k: med((mode, k)) for k in kinds}
        for kind in kinds:
            m = meds[kind]
            row = [mode, kind]
            if m is None:
                row += ["ERROR", "", "", "", ""]
            else:
                row += [
                    f"{m['mib_per_s']:.0f}",
                    f"{m['cpu_ms_per_mib']:.3f}",
                    f"{m['kernel_ms_per_mib']:.3f}",
                    f"{m['reads_per_mib']:.1f}",
                    f"{m['sleeps_per_mib']:.1f}",
                ]
            for other in others:
                o = meds[other]
                if kind == first and m and o and m["cpu_ms_per_mib"] > 0:
                    row.append(f"{o['cpu_ms_per_mib'] / m['cpu_ms_per_mib']:.2f}x")
                else:
                    row.append("")
            if floor:
                f = meds[FLOOR]
                if m and f and m["cpu_ms_per_mib"] > 0:
                    row.append(f"{f['cpu_ms_per_mib'] / m['cpu_ms_per_mib']:.2f}x")
                else:
                    row.append("")
            rows.append(row)
    meta = (
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs ({args.pinned}); "
        f"{args.mib} MiB per run, {args.rounds} round(s), medians; CPU = user+system of the "
        f"loop's process during the transfer (getrusage), kernel = system alone; every byte "
        f"checked. eff. vs X = X's CPU/MiB / {first}'s (> 1: {first} spends less CPU)."
    )
    if floor:
        meta += (
            " floor = the same transfer with no event loop (epoll and a reused buffer in a "
            "few Python lines): the pipe's own cost; of floor = floor CPU/MiB / row CPU/MiB."
        )
    loads = [r["other_load"] for runs in results.values() for r in runs]
    if loads:
        load = statistics.median(loads)
        meta += (
            f" Other CPU load during the runs (not the loop, not the child): median "
            f"{load:.0%} of a core, max {max(loads):.0%}."
        )
        if load > 0.1:
            meta += " WARNING: the machine was busy; rerun on a quiet machine."
    rev = git_revision()
    meta += " Versions: " + "; ".join(f"{k} {v}" for k, v in args.versions.items())
    meta += f"; repository at {rev}." if rev else "."
    out = [meta, "", markdown_table(rows, set(range(2, len(head))))]
    if errors:
        out += ["", "Errors:"]
        for (mode, kind), msgs in errors.items():
            out += [f"- {mode}/{kind}: {msg}" for msg in msgs]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--loops", default=",".join(ALL_LOOPS), help="default: %(default)s")
    parser.add_argument("--modes", default=",".join(MODES), help="default: %(default)s")
    parser.add_argument("--mib", type=int, default=256, help="MiB per run (default: 256)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="32 MiB, 1 round (smoke test)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin worker and child")
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the no-event-loop reference row"
    )
    parser.add_argument("--json", help="write every run's results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.mib, args.rounds = 32, 1
    loops, args.versions = available_loops(parse_list(args.loops, ALL_LOOPS))
    modes = parse_list(args.modes, MODES)
    if not loops or not modes:
        print("nothing to measure", file=sys.stderr)
        return 1
    allowed = sorted(os.sched_getaffinity(0))
    cpus = child_cpus = None
    if not args.no_pin and len(allowed) >= 2:
        cpus, child_cpus = {allowed[-1]}, set(allowed[:-1])
    args.pinned = (
        f"loop pinned to CPU {min(cpus)}, child to CPU(s) {','.join(map(str, sorted(child_cpus)))}"
        if cpus and child_cpus
        else "not pinned"
    )

    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    errors: dict[tuple[str, str], list[str]] = {}
    total = args.mib * MIB
    kinds = loops if args.no_floor else [*loops, FLOOR]
    for rnd in range(args.rounds):
        for mode in rotated(modes, rnd):
            for kind in rotated(kinds, rnd):
                try:
                    run = measure(kind, mode, total, cpus, child_cpus)
                except Exception as exc:
                    msg = f"{type(exc).__name__}: {exc}"
                    errors.setdefault((mode, kind), []).append(msg)
                    print(f"error: {mode}/{kind}: {msg}", file=sys.stderr)
                else:
                    results.setdefault((mode, kind), []).append(run)
        print(f"  done: round {rnd + 1}/{args.rounds}", file=sys.stderr)

    print(report(loops, modes, not args.no_floor, results, errors, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [{"mode": m, "loop": k, "runs": runs} for (m, k), runs in results.items()],
                f,
                indent=1,
            )
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(main())
