"""The micro-benchmark table as a picture: one group of bars per row, one bar per loop,
each the loop's speed relative to uvloop's in the same run (uvloop = 1.0; above 1 is
faster than uvloop). The title says when, on what machine and with which versions.

``micro.py --chart PATH`` draws it from the run it just made, so table and chart are the
same numbers; ``python benchmarks/chart.py RUN.json OUT.png`` draws it again from a
``micro.py --json`` file. matplotlib is only needed here (ferroloop's ``bench`` extra);
without it the chart step says so and the table stands alone.
"""

from __future__ import annotations

import json
import sys
from typing import Any

#: Bar order and colours: ferroloop first, the reference second, stock last.
LOOP_ORDER = ("ferroloop", "uvloop", "asyncio")
COLOURS = {"ferroloop": "#c0392b", "uvloop": "#7f8c8d", "asyncio": "#2980b9"}
REFERENCE = "uvloop"

MISSING_MATPLOTLIB = (
    "chart: matplotlib is not installed, so no chart was drawn (the table above is "
    "complete); install it with `pip install 'ferroloop[bench]'` or `pip install matplotlib`"
)


def relative_speeds(records: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[float]]]:
    """Per row, each loop's speed relative to uvloop: uvloop's median / the loop's median.

    Rows without a uvloop median (it failed, or was not run) cannot be expressed this way
    and are left out; a loop without a median in a row gets NaN there (no bar).
    """
    names: list[str] = []
    speeds: dict[str, list[float]] = {}
    loops = [n for n in LOOP_ORDER if any(n in r["loops"] for r in records)]
    for record in records:
        ref = record["loops"].get(REFERENCE, {}).get("median_s")
        if not ref:
            continue
        names.append(record["name"])
        for loop in loops:
            median = record["loops"].get(loop, {}).get("median_s")
            speeds.setdefault(loop, []).append(ref / median if median else float("nan"))
    return names, speeds


def machine_description(meta: dict[str, Any]) -> str:
    """The machine the run was made on, as micro.py recorded it: CPU model, cores, OS."""
    parts = [meta["cpu_model"]] if meta.get("cpu_model") else []
    if meta.get("cpus"):
        parts.append(f"{meta['cpus']} CPUs")
    if meta.get("platform"):
        parts.append(meta["platform"])
    return ", ".join(parts) or "machine not recorded"


def draw(records: list[dict[str, Any]], meta: dict[str, Any], path: str) -> bool:
    """Write the chart of ``records`` (micro.py's per-row JSON records) to ``path``.

    Returns False, after saying why on stderr, when it cannot be drawn: matplotlib is
    missing, or no row has a uvloop result to be relative to.
    """
    try:
        import matplotlib
    except ImportError:
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        return False
    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    names, speeds = relative_speeds(records)
    if not names:
        print(f"chart: no row has a {REFERENCE} result to compare with; no chart", file=sys.stderr)
        return False

    loops = list(speeds)
    height = 0.8 / len(loops)
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.75 * len(names)), dpi=110)
    for i, loop in enumerate(loops):
        ys = [row + (i - (len(loops) - 1) / 2) * height for row in range(len(names))]
        bars = ax.barh(ys, speeds[loop], height=height * 0.92, color=COLOURS.get(loop), label=loop)
        for bar, value in zip(bars, speeds[loop], strict=True):
            if value == value:  # not NaN
                ax.text(
                    bar.get_width() + 0.02,
                    bar.get_y() + bar.get_height() / 2,
                    f"{value:.2f}x",
                    va="center",
                    fontsize=7,
                )
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()  # the table's order, top to bottom
    finite = [v for vs in speeds.values() for v in vs if v == v]
    ax.set_xlim(0, max(finite) * 1.15)
    ax.set_xlabel(f"speed relative to {REFERENCE} (= 1.0; higher is faster), median of rounds")
    versions = meta.get("loops", {})
    subtitle = ", ".join(f"{k} {v}" for k, v in versions.items())
    ax.set_title(
        f"ferroloop micro benchmarks, {str(meta.get('date', '?'))[:10]}, "
        f"Python {meta.get('python', '?')}\n{machine_description(meta)}\n{subtitle}"
        + (f"; {meta['rounds']} interleaved rounds" if meta.get("rounds") else "")
        + ("; --quick (sizes / 10)" if meta.get("scale", 1) != 1 else ""),
        fontsize=8,
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", linewidth=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"chart: {path}", file=sys.stderr)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python benchmarks/chart.py RUN.json OUT.png", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        run = json.load(f)
    return 0 if draw(run["benchmarks"], run["meta"], argv[1]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
