"""ferroloop's public entry points (ferroloop-only tests): new_event_loop(), Loop,
EventLoopPolicy, install(), run(main, *, debug=None) and ``python -m ferroloop SCRIPT.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap

import pytest

# --------------------------------------------------------------------------------------
# new_event_loop / Loop / EventLoopPolicy
# --------------------------------------------------------------------------------------


def test_new_event_loop_returns_fresh_loop_instances(ferroloop):
    """new_event_loop() returns a new, idle ferroloop.Loop (an AbstractEventLoop) each call."""
    a, b = ferroloop.new_event_loop(), ferroloop.new_event_loop()
    try:
        assert type(a) is ferroloop.Loop
        assert isinstance(a, asyncio.AbstractEventLoop)
        assert a is not b
        assert not a.is_running() and not a.is_closed()
    finally:
        a.close()
        b.close()


def test_loop_class_is_instantiable(ferroloop):
    """ferroloop.Loop() can be constructed directly and runs coroutines."""
    loop = ferroloop.Loop()
    try:
        assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        loop.close()


def test_event_loop_policy(ferroloop):
    """EventLoopPolicy is an asyncio policy whose new_event_loop() makes ferroloop loops."""
    policy = ferroloop.EventLoopPolicy()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    loop = policy.new_event_loop()
    try:
        assert type(loop) is ferroloop.Loop
    finally:
        loop.close()


INSTALL_SCRIPT = """
import asyncio, json, sys, warnings
import ferroloop

warnings.simplefilter("ignore", DeprecationWarning)
ferroloop.install()
out = {}
out["policy"] = isinstance(asyncio.get_event_loop_policy(), ferroloop.EventLoopPolicy)
lp = asyncio.new_event_loop()
out["new_event_loop"] = type(lp) is ferroloop.Loop
lp.close()

async def main():
    return type(asyncio.get_running_loop()) is ferroloop.Loop

out["asyncio.run"] = asyncio.run(main())
with asyncio.Runner() as runner:
    out["Runner"] = runner.run(main())
print(json.dumps(out))
"""


def test_install_sets_policy(run_python, ferroloop):
    """After ferroloop.install(), asyncio.new_event_loop(), asyncio.run() and asyncio.Runner()
    all use ferroloop loops."""
    proc = run_python("-c", INSTALL_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "policy": True,
        "new_event_loop": True,
        "asyncio.run": True,
        "Runner": True,
    }


# --------------------------------------------------------------------------------------
# ferroloop.run
# --------------------------------------------------------------------------------------


def test_run_returns_result_on_ferroloop_and_closes(ferroloop):
    """ferroloop.run(main()) runs main on a new ferroloop loop, returns its result, and closes
    the loop afterwards."""
    seen = {}

    async def main():
        lp = asyncio.get_running_loop()
        seen["loop"] = lp
        await asyncio.sleep(0.001)
        return "result"

    assert ferroloop.run(main()) == "result"
    assert type(seen["loop"]) is ferroloop.Loop
    assert seen["loop"].is_closed()
    assert asyncio._get_running_loop() is None


@pytest.mark.parametrize("debug", [True, False, None])
def test_run_debug_flag(ferroloop, debug):
    """ferroloop.run(main(), debug=...) sets the loop's debug mode like asyncio.run: True or
    False explicitly, None keeps the default (from PYTHONASYNCIODEBUG/dev mode)."""

    async def main():
        return asyncio.get_running_loop().get_debug()

    if debug is None:
        from_env = bool(os.environ.get("PYTHONASYNCIODEBUG"))
        expected = sys.flags.dev_mode or (not sys.flags.ignore_environment and from_env)
    else:
        expected = debug
    assert ferroloop.run(main(), debug=debug) is expected


def test_run_propagates_exceptions(ferroloop):
    """An exception raised by main propagates out of ferroloop.run()."""

    class Boom(Exception):
        pass

    async def main():
        await asyncio.sleep(0)
        raise Boom

    with pytest.raises(Boom):
        ferroloop.run(main())


def test_run_cancels_leftover_tasks_and_finalizes_asyncgens(ferroloop):
    """Like asyncio.run: leftover tasks are cancelled and async generators finalized."""
    log = []
    keep = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)
            log.append("agen-finalized")

    async def forever():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log.append("task-cancelled")
            raise

    async def main():
        keep.append(asyncio.create_task(forever()))
        g = agen()
        keep.append(g)
        await g.__anext__()
        await asyncio.sleep(0)

    ferroloop.run(main())
    assert sorted(log) == ["agen-finalized", "task-cancelled"]


def test_run_bare_yield_task_runs_once(ferroloop):
    """The background-task/bare-yield program from the ordering issue prints once under
    ferroloop.run, as under stock asyncio.run."""
    out = []

    class BareYield:
        def __await__(self):
            yield

    async def worker():
        for _ in range(3):
            out.append("tick")
            await BareYield()

    async def plain():
        return 1

    async def main():
        asyncio.create_task(worker())
        await plain()

    ferroloop.run(main())
    assert out == ["tick"]


def test_run_inside_running_loop_raises(ferroloop):
    """ferroloop.run() inside a running loop raises RuntimeError (as asyncio.run does)."""

    async def inner():
        pass

    async def outer():
        c = inner()
        try:
            ferroloop.run(c)
        finally:
            c.close()

    with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
        ferroloop.run(outer())


# --------------------------------------------------------------------------------------
# python -m ferroloop SCRIPT.py
# --------------------------------------------------------------------------------------

MAIN_SCRIPT = """
import asyncio, json, sys
import ferroloop

async def main():
    return type(asyncio.get_running_loop()) is ferroloop.Loop

out = {
    "name": __name__,
    "argv": sys.argv,
    "asyncio.run": asyncio.run(main()),
}
lp = asyncio.new_event_loop()
out["new_event_loop"] = type(lp) is ferroloop.Loop
lp.close()
with asyncio.Runner() as runner:
    out["Runner"] = runner.run(main())
if __name__ == "__main__":
    out["main-guard"] = True
print(json.dumps(out))
"""


def _write(tmp_path, name, code):
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


def test_dash_m_runs_script_as_main_on_ferroloop(run_python, ferroloop, tmp_path):
    """``python -m ferroloop script.py a --b`` runs script.py as __main__ with argv
    [script.py, a, --b]; asyncio.run, asyncio.new_event_loop and asyncio.Runner create
    ferroloop.Loop loops."""
    script = _write(tmp_path, "script.py", MAIN_SCRIPT)
    proc = run_python("-m", "ferroloop", str(script), "a", "--b")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["name"] == "__main__"
    assert os.path.basename(out["argv"][0]) == "script.py"
    assert out["argv"][1:] == ["a", "--b"]
    assert out["asyncio.run"] is True
    assert out["new_event_loop"] is True
    assert out["Runner"] is True
    assert out["main-guard"] is True


def test_dash_m_prints_running_loop_type(run_python, ferroloop, tmp_path):
    """A script printing type(asyncio.get_running_loop()) under ``python -m ferroloop``
    prints ferroloop's Loop class."""
    script = _write(
        tmp_path,
        "show.py",
        """
        import asyncio

        async def main():
            t = type(asyncio.get_running_loop())
            print(t.__module__, t.__qualname__)

        asyncio.run(main())
        """,
    )
    proc = run_python("-m", "ferroloop", str(script))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [ferroloop.Loop.__module__, ferroloop.Loop.__qualname__]


def test_dash_m_script_dir_on_sys_path(run_python, ferroloop, tmp_path):
    """As with ``python script.py``, the script's directory is importable (sys.path[0]) even
    when run from another working directory."""
    pkg = tmp_path / "app"
    pkg.mkdir()
    _write(pkg, "helper_mod_for_ferroloop_test.py", "VALUE = 'from-helper'\n")
    script = _write(
        pkg,
        "entry.py",
        """
        import asyncio
        import helper_mod_for_ferroloop_test

        async def main():
            return helper_mod_for_ferroloop_test.VALUE

        print(asyncio.run(main()))
        """,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_python("-m", "ferroloop", str(script), cwd=str(elsewhere))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "from-helper"


@pytest.mark.parametrize(
    ("body", "expected_code"),
    [("raise SystemExit(3)", 3), ("raise ValueError('boom')", 1), ("pass", 0)],
    ids=["SystemExit(3)", "exception", "normal"],
)
def test_dash_m_exit_status(run_python, ferroloop, tmp_path, body, expected_code):
    """The exit status is the script's: SystemExit(n) -> n, an uncaught exception -> 1 with
    its traceback on stderr, normal completion -> 0."""
    script = _write(tmp_path, "exits.py", body + "\n")
    proc = run_python("-m", "ferroloop", str(script))
    assert proc.returncode == expected_code, proc.stderr
    if expected_code == 1:
        assert "ValueError: boom" in proc.stderr


def test_demo_program_runs_on_ferroloop(run_python, ferroloop):
    """The README's main job (examples/demo.py) runs to completion on ferroloop."""
    demo = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "demo.py")
    result = run_python(demo)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "running on ferroloop.Loop"
    assert "TCP server: 20 stream clients, 2000 lines echoed" in result.stdout
