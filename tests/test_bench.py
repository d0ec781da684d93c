"""``python -m ferroloop bench`` and the benchmark chart: the table and the chart come from
one run, the chart's bars are speeds relative to uvloop, and without matplotlib the
chart step says so while the table stays whole."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SUBPROCESS_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "benchmarks" / "chart.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def load_chart():
    spec = importlib.util.spec_from_file_location("bench_chart", CHART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(name, **medians):
    return {"name": name, "loops": {k: {"median_s": v} for k, v in medians.items()}}


def test_relative_speeds_are_uvloop_time_over_loop_time():
    chart = load_chart()
    names, speeds = chart.relative_speeds(
        [
            record("a", ferroloop=1.0, uvloop=2.0, asyncio=4.0),
            record("no uvloop result", ferroloop=1.0, uvloop=None, asyncio=3.0),
            record("b", ferroloop=None, uvloop=3.0, asyncio=1.5),
        ]
    )
    assert names == ["a", "b"]
    assert list(speeds) == ["ferroloop", "uvloop", "asyncio"]
    assert speeds["uvloop"] == [1.0, 1.0]
    assert speeds["ferroloop"][0] == 2.0 and math.isnan(speeds["ferroloop"][1])
    assert speeds["asyncio"] == [0.5, 2.0]


def run_bench(*args, cwd=ROOT, env=None):
    return subprocess.run(
        [sys.executable, "-m", "ferroloop", "bench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=SUBPROCESS_TIMEOUT * 3,
    )


QUICK = ["--quick", "--rounds", "1", "--no-warmup", "--filter", "Future round trip", "-q"]


def test_bench_writes_table_and_chart_of_one_run(tmp_path):
    """One ``python -m ferroloop bench`` run prints the table and draws its chart; the
    chart is drawn again from the run's JSON by benchmarks/chart.py."""
    png, run_json = tmp_path / "chart.png", tmp_path / "run.json"
    result = run_bench(*QUICK, "--chart", str(png), "--json", str(run_json))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| Future round trip (100k)" in result.stdout
    assert "ferroloop vs uvloop" in result.stdout
    if not HAVE_MATPLOTLIB:
        assert not png.exists()
        assert "matplotlib is not installed" in result.stderr
        return
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert f"chart: {png}" in result.stderr
    again = tmp_path / "again.png"
    redraw = subprocess.run(
        [sys.executable, str(CHART), str(run_json), str(again)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert redraw.returncode == 0, redraw.stderr
    assert again.read_bytes().startswith(PNG_MAGIC)


def test_chart_without_matplotlib_says_so(tmp_path):
    """With matplotlib unimportable the chart is not drawn and the reason is given."""
    png = tmp_path / "chart.png"
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        f"sys.path.insert(0, {str(CHART.parent)!r})\n"
        "import chart\n"
        "rec = [{'name': 'a', 'loops': {'uvloop': {'median_s': 1.0}}}]\n"
        f"print(chart.draw(rec, {{}}, {str(png)!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert "matplotlib is not installed" in result.stderr
    assert "pip install 'ferroloop[bench]'" in result.stderr
    assert not png.exists()


def test_bench_outside_a_checkout_explains(tmp_path):
    """Installed from a wheel and run outside a checkout, bench says where the benchmarks
    are instead of failing obscurely."""
    import ferroloop

    if Path(ferroloop.__file__).resolve().is_relative_to(ROOT / "python"):
        pytest.skip("ferroloop is imported from this checkout (maturin develop)")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    result = run_bench("--list", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "inside a ferroloop checkout" in result.stderr
