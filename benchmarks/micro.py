"""Side-by-side micro benchmarks for asyncio event loops: ferroloop, uvloop and stock asyncio.

Every row is one benchmark. For each round the row runs once on every selected loop, the loop
order rotating from round to round so that no loop systematically benefits from running first
(warm caches, CPU frequency) or last. The table reports, per loop, the median time over the
rounds and the matching throughput, plus speed ratios of the first selected loop (ferroloop by
default) against each other loop: ``other_time / first_time``, so ``> 1`` means the first loop is
faster.

Each measurement gets a fresh loop from that loop's ``new_event_loop()`` (closed afterwards) and
a ``gc.collect()`` beforehand; ``time.perf_counter`` brackets only the measured part, never loop
creation or teardown. Every benchmark checks its own result (callback counts, sums, ordering)
so that a broken loop cannot look fast.

Usage::

    python benchmarks/micro.py                       # all rows, 5 rounds
    python benchmarks/micro.py --quick               # sizes / 10, 3 rounds (CI smoke test)
    python benchmarks/micro.py --loops uvloop,asyncio --filter queue --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import importlib
import json
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

perf_counter = time.perf_counter

ALL_LOOPS = ("ferroloop", "uvloop", "asyncio")

#: Batch size of the gather row; the row's N counts sleeps, so N / GATHER_BATCH gathers run.
GATHER_BATCH = 10_000
#: Bounded so that the producer blocks every ~QUEUE_MAXSIZE items and the two tasks really
#: switch back and forth instead of the producer filling an unbounded queue in one go.
QUEUE_MAXSIZE = 1_000


class BenchError(Exception):
    """A benchmark produced a wrong result, hit a loop error or timed out."""


def check(condition: bool, message: str) -> None:
    """Fail the measurement unless ``condition`` holds (unlike ``assert``, survives ``-O``)."""
    if not condition:
        raise BenchError(message)


# --------------------------------------------------------------------------------------------
# Benchmarks
#
# Each benchmark is ``func(loop, n) -> seconds``: it receives a fresh, not yet running loop,
# does ``n`` operations, verifies the outcome and returns the measured time. Hot loop methods
# are bound to locals first so that attribute lookups in the benchmark itself (identical for
# every loop) do not dilute the differences between the loops.
# --------------------------------------------------------------------------------------------

BenchFunc = Callable[[asyncio.AbstractEventLoop, int], float]


@dataclass(frozen=True)
class Bench:
    """One table row: its display name, full-size operation count and implementation."""

    name: str
    n: int
    func: BenchFunc


BENCHMARKS: list[Bench] = []


def benchmark(name: str, n: int) -> Callable[[BenchFunc], BenchFunc]:
    """Register ``func`` as the table row ``name`` doing ``n`` operations at full size."""

    def register(func: BenchFunc) -> BenchFunc:
        BENCHMARKS.append(Bench(name, n, func))
        return func

    return register


def run_timed(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, float]) -> float:
    """Run a coroutine that times itself and returns the elapsed seconds."""
    return loop.run_until_complete(coro)


async def trivial() -> int:
    """The cheapest possible task body."""
    return 1


@benchmark("call_soon chain (1M)", 1_000_000)
def bench_call_soon_chain(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """One callback re-schedules itself with call_soon n times, then stops the loop.

    The bare ready-queue path: handle creation and dispatch, no timers, no I/O, no tasks.
    """
    remaining = n
    call_soon = loop.call_soon

    def step() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining:
            call_soon(step)
        else:
            loop.stop()

    call_soon(step)
    t0 = perf_counter()
    loop.run_forever()
    elapsed = perf_counter() - t0
    check(remaining == 0, f"run_forever returned with {remaining} of {n} callbacks not run")
    return elapsed


@benchmark("call_later+cancel churn (100k)", 100_000)
def bench_call_later_cancel(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """n x ``loop.call_later(3600, f).cancel()`` on the running loop, then one loop iteration.

    Models timeouts that are armed and almost always disarmed. The iteration after the churn
    is included because that is where a loop may reap its cancelled timers (asyncio rebuilds
    its heap there once most entries are cancelled); that cost belongs to the churn.
    """
    fired = 0

    def never() -> None:
        nonlocal fired
        fired += 1

    async def main() -> float:
        call_later = loop.call_later
        handle = None
        t0 = perf_counter()
        for _ in range(n):
            handle = call_later(3600, never)
            handle.cancel()
        await asyncio.sleep(0)
        elapsed = perf_counter() - t0
        check(handle is not None and handle.cancelled(), "last handle does not report cancelled")
        return elapsed

    elapsed = run_timed(loop, main())
    check(fired == 0, f"{fired} cancelled timers fired")
    return elapsed


@benchmark("timer firing (100k)", 100_000)
def bench_timer_firing(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """Schedule n call_later timers due within 1 ms and wait until all of them have fired.

    The delays cycle through 1000 distinct values in [0, 1 ms), so the timer queue sees both
    many equal deadlines and a spread, while the wait itself stays negligible.
    """
    fired = 0

    async def main() -> float:
        nonlocal fired
        done = loop.create_future()

        def on_timer() -> None:
            nonlocal fired
            fired += 1
            if fired == n:
                done.set_result(None)

        call_later = loop.call_later
        t0 = perf_counter()
        for i in range(n):
            call_later((i % 1000) * 1e-6, on_timer)
        check(fired == 0, "a timer fired synchronously inside call_later")
        await done
        return perf_counter() - t0

    elapsed = run_timed(loop, main())
    check(fired == n, f"{fired} of {n} timers fired")
    return elapsed


@benchmark("create_task + await (100k)", 100_000)
def bench_create_task_await(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """n x ``await loop.create_task(trivial())``: task creation, one step, completion, wakeup."""

    async def main() -> float:
        create_task = loop.create_task
        total = 0
        t0 = perf_counter()
        for _ in range(n):
            total += await create_task(trivial())
        elapsed = perf_counter() - t0
        check(total == n, f"tasks returned {total}, expected {n}")
        return elapsed

    return run_timed(loop, main())


@benchmark("create_task batch + gather (100k)", 100_000)
def bench_create_task_gather(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """Create n tasks up front, then gather them: a deep ready queue of task steps."""

    async def main() -> float:
        create_task = loop.create_task
        t0 = perf_counter()
        results = await asyncio.gather(*[create_task(trivial()) for _ in range(n)])
        elapsed = perf_counter() - t0
        check(sum(results) == n, f"tasks returned {sum(results)}, expected {n}")
        return elapsed

    return run_timed(loop, main())


@benchmark("gather 10k sleep(0) (x10)", 10 * GATHER_BATCH)
def bench_gather_sleep0(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """``await asyncio.gather(*(asyncio.sleep(0) for _ in range(10_000)))``, n / 10k times.

    One gather alone is too short to time reliably, hence the repeats inside one measurement.
    """
    repeats = max(1, n // GATHER_BATCH)

    async def main() -> float:
        completed = 0
        t0 = perf_counter()
        for _ in range(repeats):
            results = await asyncio.gather(*(asyncio.sleep(0) for _ in range(GATHER_BATCH)))
            completed += results.count(None)
        elapsed = perf_counter() - t0
        check(completed == repeats * GATHER_BATCH, f"{completed} sleeps completed")
        return elapsed

    return run_timed(loop, main())


@benchmark("Future round trip (100k)", 100_000)
def bench_future_round_trip(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """n x (create_future; call_soon(fut.set_result, 1); await fut): a task parking on a future."""

    async def main() -> float:
        create_future = loop.create_future
        call_soon = loop.call_soon
        total = 0
        t0 = perf_counter()
        for _ in range(n):
            fut = create_future()
            call_soon(fut.set_result, 1)
            total += await fut
        elapsed = perf_counter() - t0
        check(total == n, f"futures delivered {total}, expected {n}")
        return elapsed

    return run_timed(loop, main())


@benchmark("Queue producer/consumer (1M)", 1_000_000)
def bench_queue(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """A producer task puts n ints into an asyncio.Queue(maxsize=1000), a consumer gets them."""

    async def main() -> float:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=QUEUE_MAXSIZE)

        async def producer() -> None:
            put = queue.put
            for i in range(n):
                await put(i)

        async def consumer() -> int:
            get = queue.get
            total = 0
            for _ in range(n):
                total += await get()
            return total

        t0 = perf_counter()
        _, total = await asyncio.gather(producer(), consumer())
        elapsed = perf_counter() - t0
        check(total == n * (n - 1) // 2, "consumer received wrong items")
        check(queue.empty(), "queue not empty after consumer finished")
        return elapsed

    return run_timed(loop, main())


@benchmark("call_soon_threadsafe (100k)", 100_000)
def bench_call_soon_threadsafe(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """Another thread issues n call_soon_threadsafe(cb, i); measured until the last cb ran.

    Covers the cross-thread handoff and wakeup of the loop. Callbacks from one thread must run
    in submission order, which is checked too.
    """
    count = 0
    out_of_order = 0
    feeder_error: list[BaseException] = []

    async def main() -> float:
        done = loop.create_future()

        def cb(i: int) -> None:
            nonlocal count, out_of_order
            if i != count:
                out_of_order += 1
            count += 1
            if count == n:
                done.set_result(None)

        def fail(exc: BaseException) -> None:
            if not done.done():
                done.set_exception(exc)

        def feeder() -> None:
            call_soon_threadsafe = loop.call_soon_threadsafe
            try:
                for i in range(n):
                    call_soon_threadsafe(cb, i)
            except BaseException as exc:  # reported on the loop; if that fails, the watchdog
                feeder_error.append(exc)
                call_soon_threadsafe(fail, exc)

        thread = threading.Thread(target=feeder, name="micro-feeder", daemon=True)
        t0 = perf_counter()
        thread.start()
        try:
            await done
        finally:
            thread.join()
        return perf_counter() - t0

    elapsed = run_timed(loop, main())
    check(not feeder_error, f"feeder thread failed: {feeder_error!r}")
    check(count == n, f"{count} of {n} callbacks ran")
    check(out_of_order == 0, f"{out_of_order} callbacks ran out of submission order")
    return elapsed


# --------------------------------------------------------------------------------------------
# Loops
# --------------------------------------------------------------------------------------------

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def resolve_loops(names: list[str]) -> tuple[dict[str, LoopFactory], dict[str, str], list[str]]:
    """Import the requested loops; return factories, versions and notes about missing ones."""
    factories: dict[str, LoopFactory] = {}
    versions: dict[str, str] = {}
    notes: list[str] = []
    for name in names:
        try:
            if name == "asyncio":
                # The stock loop, regardless of any policy an environment might install.
                factories[name] = asyncio.DefaultEventLoopPolicy().new_event_loop
                versions[name] = platform.python_version()
                continue
            module = importlib.import_module(name)
            factories[name] = module.new_event_loop
        except Exception as exc:  # ImportError, or a half-built extension failing to init
            notes.append(f"{name} is not importable ({type(exc).__name__}: {exc}); skipped.")
            continue
        versions[name] = str(getattr(module, "__version__", "?"))
    return factories, versions, notes


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


class Watchdog:
    """Turns a hanging measurement into a reported error instead of a silent hang.

    After ``timeout`` seconds a helper thread asks the loop to stop (thread-safely); a loop
    that still processes wakeups then returns and the measurement is reported as a timeout.
    If the loop does not react within ``grace`` more seconds (e.g. it blocks while holding the
    GIL), faulthandler, which needs no GIL, dumps all tracebacks and exits the process.
    """

    def __init__(self, timeout: float, grace: float = 10.0) -> None:
        self.timeout = timeout
        self.grace = grace
        self.fired = False
        self._timer: threading.Timer | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, label: str) -> None:
        """Start watching a measurement of ``label`` running on ``loop``."""
        self.fired = False
        self._timer = threading.Timer(self.timeout, self._fire, args=(loop, label))
        self._timer.daemon = True
        self._timer.start()
        faulthandler.dump_traceback_later(self.timeout + self.grace, exit=True)

    def disarm(self) -> None:
        """Stop watching; the measurement finished (one way or another)."""
        faulthandler.cancel_dump_traceback_later()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self, loop: asyncio.AbstractEventLoop, label: str) -> None:
        self.fired = True
        sys.stderr.write(
            f"\nTIMEOUT: {label} still running after {self.timeout:g}s; stopping its loop "
            f"(hard exit with tracebacks in {self.grace:g}s if it does not react)\n"
        )
        sys.stderr.flush()
        try:
            loop.call_soon_threadsafe(loop.stop)
        except Exception as exc:
            sys.stderr.write(f"  call_soon_threadsafe(loop.stop) failed: {exc!r}\n")


def measure(
    factory: LoopFactory, bench: Bench, n: int, watchdog: Watchdog, label: str, no_gc: bool
) -> float:
    """Run ``bench`` once at size ``n`` on a fresh loop and return the measured seconds.

    With ``no_gc`` the cyclic GC is off while the benchmark runs: rows that keep ~100k
    objects alive spend a large, size-dependent share of their time in collections, which
    hides the loop's own cost (the default keeps it on, as in real programs).
    """
    loop_errors: list[dict[str, Any]] = []

    def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # An exception inside a callback only reaches the exception handler; the benchmark
        # would then wait forever for a completion that never comes. Record it and stop.
        loop_errors.append(context)
        loop.stop()

    loop = factory()
    try:
        loop.set_exception_handler(on_loop_error)
        gc.collect()
        if no_gc:
            gc.disable()
        watchdog.arm(loop, label)
        try:
            elapsed = bench.func(loop, n)
        except Exception as exc:
            if loop_errors:
                ctx = loop_errors[0]
                raise BenchError(
                    f"loop exception handler called: {ctx.get('message')!s}: "
                    f"{ctx.get('exception')!r}"
                ) from exc
            if watchdog.fired:
                raise BenchError(f"timed out after {watchdog.timeout:g}s") from exc
            raise
        finally:
            watchdog.disarm()
            if no_gc:
                gc.enable()
        if loop_errors:
            raise BenchError(f"loop exception handler called: {loop_errors[0]!r}")
        return elapsed
    finally:
        loop.close()


@dataclass
class LoopResult:
    """All samples of one row on one loop, or the error that ended its measurements."""

    times: list[float] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None

    @property
    def median(self) -> float | None:
        """Median measured time in seconds, or None without a complete set of samples."""
        return statistics.median(self.times) if self.times and not self.error else None


def run_row(
    bench: Bench,
    loops: dict[str, LoopFactory],
    n: int,
    rounds: int,
    warmup: bool,
    no_gc: bool,
    watchdog: Watchdog,
) -> dict[str, LoopResult]:
    """Measure one row: optional warmup, then ``rounds`` interleaved rounds over the loops."""
    names = list(loops)
    results = {name: LoopResult() for name in names}

    def attempt(name: str, size: int, record: bool) -> None:
        result = results[name]
        if result.error:  # a loop that failed once is not measured again for this row
            return
        try:
            elapsed = measure(
                loops[name], bench, size, watchdog, f"{bench.name!r} on {name}", no_gc
            )
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            result.traceback = traceback.format_exc()
            return
        if record:
            result.times.append(elapsed)

    if warmup:
        # A reduced untimed pass lets allocator arenas and the adaptive interpreter settle,
        # and surfaces a broken loop before the long timed rounds.
        for name in names:
            attempt(name, max(1, n // 10), record=False)
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            attempt(name, n, record=True)
    return results


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def fmt_rate(ops_per_s: float) -> str:
    """Human-readable throughput, e.g. ``1.23M/s``."""
    if ops_per_s >= 1e6:
        return f"{ops_per_s / 1e6:.2f}M/s"
    if ops_per_s >= 1e3:
        return f"{ops_per_s / 1e3:.0f}k/s"
    return f"{ops_per_s:.0f}/s"


def fmt_cell(result: LoopResult, ops: int) -> str:
    """Table cell for one loop: median milliseconds and throughput."""
    if result.error:
        return "ERROR"
    if result.median is None:
        return "-"
    return f"{result.median * 1e3:.1f} ms ({fmt_rate(ops / result.median)})"


def ratio(results: dict[str, LoopResult], subject: str, other: str) -> float | None:
    """Speed of ``subject`` relative to ``other``: other_time / subject_time (> 1: faster)."""
    mine, theirs = results[subject].median, results[other].median
    if mine is None or theirs is None or mine <= 0:
        return None
    return theirs / mine


def render_table(rows: list[list[str]], right_align_from: int = 1) -> str:
    """Render a markdown table with padded columns so it also reads well in a terminal."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(w) if i >= right_align_from else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if i >= right_align_from else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(rows[0]), line(rule), *(line(row) for row in rows[1:])])


def build_report(
    benches: list[Bench],
    all_results: list[dict[str, LoopResult]],
    loop_names: list[str],
    scale: float,
) -> tuple[str, list[dict[str, Any]]]:
    """Build the markdown table and the per-row JSON records."""
    subject, others = loop_names[0], loop_names[1:]
    header = ["benchmark", *loop_names, *(f"{subject} vs {o}" for o in others)]
    rows = [header]
    records = []
    for bench, results in zip(benches, all_results, strict=True):
        n = scaled(bench.n, scale)
        ratios = {o: ratio(results, subject, o) for o in others}
        rows.append(
            [
                bench.name,
                *(fmt_cell(results[name], n) for name in loop_names),
                *("n/a" if r is None else f"{r:.2f}x" for r in ratios.values()),
            ]
        )
        records.append(
            {
                "name": bench.name,
                "n": n,
                "loops": {
                    name: {
                        "times_s": res.times,
                        "median_s": res.median,
                        "ops_per_s": n / res.median if res.median else None,
                        "error": res.error,
                        "traceback": res.traceback,
                    }
                    for name, res in results.items()
                },
                "ratios": {f"{subject}_vs_{o}": r for o, r in ratios.items()},
            }
        )
    return render_table(rows), records


def scaled(n: int, scale: float) -> int:
    """Operation count of a row at the given size scale (at least 1)."""
    return max(1, round(n * scale))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (Linux), for the record of where a run was made."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_json(path: str, meta: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Write the run's metadata and per-row records (all samples) to ``path``."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"meta": meta, "benchmarks": records}, fh, indent=2)
        fh.write("\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="Interleaved micro benchmarks of asyncio event loops (median of rounds).",
    )
    parser.add_argument(
        "--loops",
        default=",".join(ALL_LOOPS),
        help="comma-separated loops; ratios compare the first against the others "
        "(default: %(default)s)",
    )
    parser.add_argument("--rounds", type=int, help="timed rounds per row (default 5, quick 3)")
    parser.add_argument(
        "--quick", action="store_true", help="reduced run for smoke tests: sizes / 10, 3 rounds"
    )
    parser.add_argument("--filter", help="only rows whose name contains this (case-insensitive)")
    parser.add_argument("--json", metavar="PATH", help="also write all samples as JSON here")
    parser.add_argument(
        "--chart",
        metavar="PNG",
        help="also draw the table as a chart of speeds relative to uvloop (needs matplotlib)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds before one measurement counts as hung (default: %(default)s)",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warmup pass")
    parser.add_argument(
        "--no-gc", action="store_true", help="disable the cyclic GC while a benchmark runs"
    )
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    unknown = sorted(set(args.loops) - set(ALL_LOOPS))
    if unknown or not args.loops or len(set(args.loops)) != len(args.loops):
        parser.error(f"--loops takes distinct names from {', '.join(ALL_LOOPS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected rows on the selected loops and print the table."""
    args = parse_args(argv)
    benches = [b for b in BENCHMARKS if not args.filter or args.filter.lower() in b.name.lower()]
    if args.list:
        for b in benches:
            print(b.name)
        return 0
    if not benches:
        print(f"no benchmark matches --filter {args.filter!r}", file=sys.stderr)
        return 2

    factories, versions, notes = resolve_loops(args.loops)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not factories:
        print("error: none of the requested loops is available", file=sys.stderr)
        return 2
    if os.environ.get("PYTHONASYNCIODEBUG") or sys.flags.dev_mode:
        print(
            "warning: asyncio debug/dev mode is on; numbers are not representative", file=sys.stderr
        )

    scale = 0.1 if args.quick else 1.0
    loop_names = list(factories)
    meta = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loops": versions,
        "rounds": args.rounds,
        "warmup": not args.no_warmup,
        "gc": not args.no_gc,
        "scale": scale,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_model": cpu_model(),
    }
    watchdog = Watchdog(args.timeout)
    all_results = []
    for bench in benches:
        results = run_row(
            bench,
            factories,
            scaled(bench.n, scale),
            args.rounds,
            warmup=not args.no_warmup,
            no_gc=args.no_gc,
            watchdog=watchdog,
        )
        all_results.append(results)
        table, records = build_report(benches[: len(all_results)], all_results, loop_names, scale)
        if args.json:
            # Rewritten after every row so that a hard exit on a hung loop keeps what was done.
            write_json(args.json, meta, records)
        if not args.quiet:
            summary = ", ".join(
                f"{name} {'ERROR' if r.error else f'{r.median * 1e3:.1f} ms'}"
                for name, r in results.items()
            )
            print(f"{bench.name}: {summary}", file=sys.stderr)

    print()
    print(
        f"Python {meta['python']} on {meta['platform']} ({meta['cpus']} CPUs); "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f"; median of {args.rounds} interleaved rounds"
        + (" (--quick: sizes / 10)" if args.quick else "")
        + (" (--no-gc)" if args.no_gc else "")
    )
    for note in notes:
        print(f"Note: {note}")
    print()
    print(table)
    if len(loop_names) > 1:
        print(
            f"\n'{loop_names[0]} vs X' = X median time / {loop_names[0]} median time "
            f"(> 1: {loop_names[0]} is faster)."
        )

    if args.chart:
        # The chart module sits next to this file; matplotlib is imported only there.
        import chart

        chart.draw(records, meta, args.chart)

    failures = [
        (rec["name"], name, res)
        for rec, results in zip(records, all_results, strict=True)
        for name, res in results.items()
        if res.error
    ]
    if failures:
        print("\nErrors:")
        for row, name, res in failures:
            print(f"\n- {row} on {name}: {res.error}")
            print("  " + (res.traceback or "").rstrip().replace("\n", "\n  "))

    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
