"""What the benchmarks of separate processes (``echo.py``, ``udp.py``, ``accept.py``,
``tls.py``, ``http_wrk.py``, ``subprocess_pipe.py``) share: loop creation in the server
processes, per-process CPU accounting from ``/proc``, the loops' versions, the round-robin
order of loops, and the Markdown table they print.

CPU time comes from ``/proc/PID/stat`` (``utime + stime``, in clock ticks), because the
deciding figure of these benchmarks is the server's CPU per request, not throughput. The
kernel's share (``stime``) is reported too: it bounds what any loop can save.
"""

from __future__ import annotations

import asyncio
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

ALL_LOOPS = ("ferroloop", "uvloop", "asyncio")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


#: Seconds a socket operation in the client, or a server start, may take.
IO_TIMEOUT = 10.0


#: Prints a loop module's version; for ferroloop also when its extension was built, since it
#: is often rebuilt in place (``maturin develop``) between runs.
VERSION_PROBE = """
import os, sys, time
name = sys.argv[1]
mod = __import__(name)
info = getattr(mod, "__version__", "?")
if name == "ferroloop":
    import ferroloop._ferroloop as ext
    info += time.strftime(" (extension built %Y-%m-%d %H:%M:%S)",
                          time.localtime(os.path.getmtime(ext.__file__)))
print(info)
"""


def available_loops(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The importable loops among ``names``, and a version string for each."""
    found, versions = [], {}
    for name in names:
        if name == "asyncio":
            found.append(name)
            versions[name] = f"Python {sys.version.split()[0]}"
            continue
        probe = subprocess.run(
            [sys.executable, "-c", VERSION_PROBE, name], capture_output=True, text=True, timeout=60
        )
        if probe.returncode:
            reason = (probe.stderr.strip().splitlines() or ["?"])[-1]
            print(f"note: {name} is not importable ({reason}); skipped", file=sys.stderr)
        else:
            found.append(name)
            versions[name] = probe.stdout.strip()
    return found, versions


def busy_seconds() -> float:
    """CPU time all processes on the machine used so far (user + nice + system, all cores).

    Interrupt and softirq time is left out: depending on the kernel's accounting, loopback
    TCP work may land there rather than in the server's or client's own time.
    """
    with open("/proc/stat") as f:
        user, nice, system = (int(x) for x in f.readline().split()[1:4])
    return (user + nice + system) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU seconds of process ``pid`` (all its threads).

    Kept apart because for a loopback server most of the time is the kernel's (the TCP
    stack, wakeups), which no event loop can spend less of than it makes syscalls for.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the file, 12 and 13 after the ")".
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the driver dies, so no server is left behind."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def git_revision() -> str:
    """The repository's commit (with "+dirty" for uncommitted changes), or "" if unknown."""
    try:
        rev = subprocess.run(
            [
                "git",
                "-C",
                os.path.dirname(os.path.abspath(__file__)),
                "describe",
                "--always",
                "--dirty=+dirty",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return rev.stdout.strip() if rev.returncode == 0 else ""


class ClientThreads:
    """The client threads of a run, started together: ``run(worker, slots, what)`` runs
    ``worker(slot)`` in a thread per slot. Each worker calls ``ready()`` once its
    connection is up and gets the deadline, ``duration`` seconds after the last one was
    ready. The first exception of a worker stops the rest at that barrier and is raised
    by ``run``, and a thread still running after the join timeout is a ``TimeoutError``:
    a broken server fails the run instead of hanging it or looking fast."""

    def __init__(self, count: int, duration: float) -> None:
        self.duration = duration
        self.deadline = 0.0
        self._errors: list[BaseException] = []
        self._barrier = threading.Barrier(count + 1, action=self._start_clock, timeout=IO_TIMEOUT)

    def _start_clock(self) -> None:
        self.deadline = time.perf_counter() + self.duration

    def ready(self) -> float:
        """Wait until every worker is ready; the deadline."""
        self._barrier.wait()
        return self.deadline

    def run(self, worker, slots, what: str) -> float:
        """Run the workers to their end; the seconds from the clock's start."""

        def guarded(slot) -> None:
            try:
                worker(slot)
            except BaseException as exc:  # raised below, in the caller's thread
                self._errors.append(exc)
                self._barrier.abort()

        threads = [threading.Thread(target=guarded, args=(s,), daemon=True) for s in slots]
        for thread in threads:
            thread.start()
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            pass
        for thread in threads:
            thread.join(self.duration + 2 * IO_TIMEOUT)
        elapsed = time.perf_counter() - (self.deadline - self.duration)
        if self._errors:
            raise self._errors[0]
        if any(thread.is_alive() for thread in threads):
            raise TimeoutError(f"{what} did not finish")
        return elapsed


def markdown_table(rows: list[list[str]], right: set[int]) -> str:
    """``rows`` (the first is the header) as a Markdown table padded to line up in a
    terminal too; the columns in ``right`` are right-aligned (numbers)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    seps = [("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)]
    lines = []
    for row in [rows[0], seps, *rows[1:]]:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A fresh loop of the given kind."""
    if kind == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop()
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.SelectorEventLoop()


def rotated(items: list, n: int) -> list:
    n %= len(items)
    return items[n:] + items[:n]


def sleeps(pid: int) -> int:
    """Times the main thread of ``pid`` went to sleep (voluntary context switches)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class ServerUsage:
    """What a server process has used so far: user and system CPU seconds, and sleeps
    (voluntary context switches). ``ServerUsage.of(pid)`` before and after a run, then
    ``after - before``, is what the run cost it."""

    user: float
    system: float
    sleeps: int

    @classmethod
    def of(cls, pid: int) -> ServerUsage:
        user, system = cpu_times(pid)
        return cls(user, system, sleeps(pid))

    def __sub__(self, other: ServerUsage) -> ServerUsage:
        return ServerUsage(
            self.user - other.user, self.system - other.system, self.sleeps - other.sleeps
        )

    @property
    def cpu(self) -> float:
        return self.user + self.system

    def per_request(self, requests: int) -> dict[str, float]:
        """The report's per-request columns: CPU and kernel µs, and sleeps."""
        return {
            "cpu_us_per_req": self.cpu / requests * 1e6,
            "kernel_us_per_req": self.system / requests * 1e6,
            "sleeps_per_req": self.sleeps / requests,
        }


@dataclass
class ServerProcess:
    """A benchmark server in its own process, pinned to ``cpus``; it prints its port on
    its first line of output."""

    label: str
    argv: list[str]
    cpus: set[int] | None = None
    proc: subprocess.Popen[str] | None = None
    port: int = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        if self.cpus:
            os.sched_setaffinity(self.proc.pid, self.cpus)  # before it can start threads
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], IO_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            exited = self.proc.poll()
            self.stop()
            raise RuntimeError(
                f"the {self.label} server exited with status {exited} before serving"
                if exited is not None
                else f"the {self.label} server did not report its port within {IO_TIMEOUT:g} s"
            )
        self.port = int(line)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            try:
                self.proc.wait(IO_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass

    def restart(self) -> None:
        """Start afresh after a failure; if that fails too, later runs report the error."""
        self.stop()
        try:
            self.start()
        except Exception as exc:
            print(f"error: restarting the {self.label} server: {exc}", file=sys.stderr)
