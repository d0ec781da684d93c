"""``python -m ferroloop SCRIPT.py [args...]`` / ``python -m ferroloop -m MODULE [args...]``.

Runs an unchanged asyncio program on ferroloop: the script runs as ``__main__`` with
ferroloop's policy installed, so every loop that ``asyncio.run``, ``asyncio.Runner`` and
``asyncio.new_event_loop`` create is a ferroloop loop. ``--watchdog SECONDS`` gives each
of them a blocked-loop watchdog (as ``FERROLOOP_WATCHDOG=SECONDS`` does).

``python -m ferroloop bench [options]`` runs the micro benchmarks (ferroloop, uvloop and
stock asyncio side by side) and writes their table and chart. The benchmarks are part
of the source checkout, not of the wheel: they are found next to the imported package
(a ``maturin develop`` build) or in the current directory or one above it (a checkout
with ferroloop installed from a wheel).
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from . import _install_policy, _observe

USAGE = (
    "usage: python -m ferroloop [--watchdog SECONDS] SCRIPT.py [args...]"
    " | [--watchdog SECONDS] -m MODULE [args...] | bench [benchmarks/micro.py options]"
)
#: Where ``bench`` writes its chart unless given ``--chart``.
BENCH_CHART = "ferroloop-bench.png"


def find_micro_benchmarks() -> Path | None:
    """benchmarks/micro.py of the checkout this package or the working directory is in."""
    candidates = [Path(__file__).resolve().parent.parent.parent]
    cwd = Path.cwd().resolve()
    candidates += [cwd, *cwd.parents]
    for root in candidates:
        micro = root / "benchmarks" / "micro.py"
        if micro.is_file() and (root / "python" / "ferroloop").is_dir():
            return micro
    return None


def bench(args: list[str]) -> int:
    """Run benchmarks/micro.py with ``args``, drawing the chart to BENCH_CHART by default."""
    micro = find_micro_benchmarks()
    if micro is None:
        print(
            "python -m ferroloop bench: the benchmarks ship with ferroloop's source, not with "
            "the wheel; run it inside a ferroloop checkout (git clone, then `make bench` or "
            "`python -m ferroloop bench` there)",
            file=sys.stderr,
        )
        return 2
    if not any(a == "--chart" or a.startswith("--chart=") for a in args) and not {
        "-h",
        "--help",
        "--list",
    } & set(args):
        args = [*args, "--chart", BENCH_CHART]
    sys.argv = [str(micro), *args]
    sys.path[0] = str(micro.parent)
    runpy.run_path(str(micro), run_name="__main__")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status for usage errors."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    if args[0] == "bench":
        return bench(args[1:])
    if args[0] == "--watchdog" or args[0].startswith("--watchdog="):
        value, args = (
            (args[1] if len(args) > 1 else "", args[2:])
            if args[0] == "--watchdog"
            else (args[0].split("=", 1)[1], args[1:])
        )
        try:
            threshold = float(value)
        except ValueError:
            threshold = -1.0
        if not threshold > 0 or threshold == float("inf") or not args:
            print(
                "python -m ferroloop: --watchdog needs a positive number of seconds"
                f" and a program\n{USAGE}",
                file=sys.stderr,
            )
            return 2
        _observe.default_watchdog = threshold
    _install_policy()
    if args[0] == "-m":
        if len(args) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return 0
    script = args[0]
    sys.argv = args
    # As `python script.py` does: the script's directory comes first on sys.path.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
