"""3.14's asyncio introspection on programs that run on ferroloop.

Python 3.14 added two views of a program's tasks:

* from outside, ``python -m asyncio ps PID`` / ``pstree PID``, which read the tasks of a
  running process through ``_remote_debugging`` (the C Task's per-thread list of tasks
  and the coroutine frames, read with ``process_vm_readv``);
* from inside, ``asyncio.capture_call_graph()`` / ``print_call_graph()``, which follow
  ``get_coro()``/``cr_await`` and each future's ``_asyncio_awaited_by`` set.

Both see only CPython's C ``Task`` and the running loop/task that the C
``_set_running_loop`` and the C Task's step record in the thread state.  ferroloop keeps
both, so the views must show the same tasks, frames and await edges as on stock asyncio.

The remote tests run child programs (the same file, so the same line numbers, for both
loops) with named tasks awaiting each other - all suspended while the loop sleeps in its
poller, or one of them running - and check the structure of ``ps`` and ``pstree`` against
the program and against the stock loop's output, never against hard-coded tool text.
The in-process tests compare the captured graph's shape (frame function names, awaited-by
edges) and the printed graph on the loop under test with those on stock.

On 3.11-3.13 these APIs do not exist and every test here is skipped with that reason.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import select
import subprocess
import sys
import textwrap

import pytest
from conftest import SUBPROCESS_TIMEOUT, child_env, factory_for, run_on

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 14),
    reason="python -m asyncio ps/pstree and asyncio.capture_call_graph() are new in "
    f"Python 3.14 (this is {sys.version_info.major}.{sys.version_info.minor})",
)

# Upper bound for one in-process scenario.
TIMEOUT = 10.0

# ---------------------------------------------------------------------------------------
# From outside: python -m asyncio ps / pstree
# ---------------------------------------------------------------------------------------

# The loop is chosen at the bottom, so that every coroutine sits on the same line for
# both loops.  The parent releases the program by closing the pipe whose read end it
# passes as argv[2] (a descriptor of its own: the program never reads its stdin).
WAITING_PROGRAM = textwrap.dedent(
    """
    import asyncio
    import sys


    waiting = 0


    async def leaf(release):
        global waiting
        waiting += 1  # this step ends suspended in the await below
        await release.wait()


    async def worker(release):
        await leaf(release)


    async def gather_two(release):
        await asyncio.gather(
            asyncio.create_task(worker(release), name="gathered-1"),
            asyncio.create_task(worker(release), name="gathered-2"),
        )


    async def group_two(release):
        async with asyncio.TaskGroup() as tg:
            tg.create_task(worker(release), name="grouped-1")
            tg.create_task(worker(release), name="grouped-2")


    async def main(release_fd):
        asyncio.current_task().set_name("main")
        release = asyncio.Event()
        gatherer = asyncio.create_task(gather_two(release), name="gatherer")
        grouper = asyncio.create_task(group_two(release), name="grouper")
        # Each task suspends in the step that starts it, parents before children: once
        # the four workers wait, every task waits.
        while waiting < 4:
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        loop.add_reader(release_fd, release.set)
        print("ready", type(loop).__module__, flush=True)
        await asyncio.gather(gatherer, grouper)
        loop.remove_reader(release_fd)


    if sys.argv[1] == "ferroloop":
        import ferroloop

        new_loop = ferroloop.new_event_loop
    else:
        new_loop = asyncio.SelectorEventLoop
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main(int(sys.argv[2])))
    print("done", flush=True)
    """
)

# Inspected while a task is running: its step is blocked in a plain function call (the
# loop is inside a callback, not in its poller), and "waiter" has not had its first step.
RUNNING_PROGRAM = textwrap.dedent(
    """
    import asyncio
    import os
    import sys


    def blocking(release_fd):
        print("ready", type(asyncio.get_running_loop()).__module__, flush=True)
        os.read(release_fd, 1)


    async def inner(release_fd):
        blocking(release_fd)


    async def busy(release_fd):
        await inner(release_fd)


    async def waiter(task):
        await task


    async def main(release_fd):
        asyncio.current_task().set_name("main")
        task = asyncio.create_task(busy(release_fd), name="busy")
        await asyncio.gather(task, asyncio.create_task(waiter(task), name="waiter"))


    if sys.argv[1] == "ferroloop":
        import ferroloop

        new_loop = ferroloop.new_event_loop
    else:
        new_loop = asyncio.SelectorEventLoop
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main(int(sys.argv[2])))
    print("done", flush=True)
    """
)
PROGRAMS = {"waiting": WAITING_PROGRAM, "running": RUNNING_PROGRAM}

# Task -> the task awaiting it, as the program builds them.
EXPECTED_AWAITERS = {
    "main": None,
    "gatherer": "main",
    "grouper": "main",
    "gathered-1": "gatherer",
    "gathered-2": "gatherer",
    "grouped-1": "grouper",
    "grouped-2": "grouper",
}
WORKERS = ("gathered-1", "gathered-2", "grouped-1", "grouped-2")


def _permission_facts() -> str:
    """What decides whether this process may read another's memory (for a failure)."""
    facts = [f"uid={os.getuid()}"]
    for path in ("/proc/sys/kernel/yama/ptrace_scope",):
        try:
            with open(path) as f:
                facts.append(f"{path}={f.read().strip()}")
        except OSError as exc:
            facts.append(f"{path}: {exc.strerror}")
    with open("/proc/self/status") as f:
        facts += [line.strip() for line in f if line.startswith("CapEff")]
    return ", ".join(facts)


def _inspect(kind: str, script: str) -> dict[str, str]:
    """Run the child program on ``kind``; return the output of ``ps`` and ``pstree``."""
    release_r, release_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, script, kind, str(release_r)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=(release_r,),
        env=child_env(),
    )
    os.close(release_r)
    views = {}
    try:
        ready, _, _ = select.select([proc.stdout], [], [], SUBPROCESS_TIMEOUT)
        assert ready, f"the {kind} child never got ready"
        line = proc.stdout.readline().split()
        if line[:1] != ["ready"]:
            proc.kill()
            pytest.fail(f"the {kind} program did not get ready: {line}\n{proc.stderr.read()}")
        assert line[1].startswith("ferroloop" if kind == "ferroloop" else "asyncio."), line
        for tool in ("ps", "pstree"):
            result = subprocess.run(
                [sys.executable, "-m", "asyncio", tool, str(proc.pid)],
                capture_output=True,
                text=True,
                env=child_env(),
                timeout=SUBPROCESS_TIMEOUT,
            )
            if proc.poll() is not None:
                pytest.fail(
                    f"the {kind} program exited ({proc.returncode}) while being inspected:"
                    f"\n{proc.stderr.read()}"
                )
            assert result.returncode == 0, (
                f"python -m asyncio {tool} failed on the {kind} program "
                f"({_permission_facts()}):\n{result.stdout}{result.stderr}"
            )
            views[tool] = result.stdout
    finally:
        os.close(release_w)
        try:
            out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0 and out.split()[-1:] == ["done"], (proc.returncode, out, err)
    return views


@pytest.fixture(scope="module")
def remote_views(tmp_path_factory):
    """``remote_views(program, kind)`` -> {"ps": ..., "pstree": ...} of one of
    ``PROGRAMS`` run on ``kind``; each pair runs once per module."""
    folder = tmp_path_factory.mktemp("introspection")
    cache: dict[tuple[str, str], dict[str, str]] = {}

    def get(program: str, kind: str) -> dict[str, str]:
        if (program, kind) not in cache:
            script = folder / f"{program}_tasks.py"
            script.write_text(PROGRAMS[program])
            cache[program, kind] = _inspect(kind, str(script))
        return cache[program, kind]

    return get


HEX = re.compile(r"0x[0-9a-f]+")


def parse_ps(text: str) -> list[dict]:
    """The rows of ``python -m asyncio ps``: task, its coroutine stack, its awaiter.

    Columns are space-padded, and the two stacks are "a -> b -> c" chains, so a row is
    read as tokens: tid, task id, task name, then chains, awaiter name, awaiter id (the
    last two are empty / "0x0" for a task nobody awaits).  The ids are checked (an
    awaiter id must be the id of the task its name names) and left out, so that rows
    compare across processes.
    """
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["tid"])
    raw = []
    for line in lines[header + 2 :]:
        tokens = line.split()
        if not tokens:
            continue
        tid, task_id, name, *rest = tokens
        awaiter_id = rest.pop()
        chains: list[list[str]] = []
        previous_arrow = True
        for token in rest:
            if token == "->":
                previous_arrow = True
                continue
            if previous_arrow and chains:
                chains[-1].append(token)
            else:
                chains.append([token])
            previous_arrow = False
        if awaiter_id == "0x0":
            awaiter_name = None
        else:
            awaiter_name = chains[-1].pop()
            if not chains[-1]:
                chains.pop()
        assert HEX.fullmatch(task_id) and HEX.fullmatch(awaiter_id), line
        raw.append((tid, task_id, name, chains, awaiter_name, awaiter_id))
    names = {task_id: name for _, task_id, name, *_ in raw}
    rows = []
    for _tid, _task_id, name, chains, awaiter_name, awaiter_id in raw:
        if awaiter_name is not None:
            # The id column must denote the task the name column names.
            assert names.get(awaiter_id) == awaiter_name, (name, awaiter_name, awaiter_id)
        stack = chains[0] if chains else []
        chain = chains[1] if len(chains) > 1 else []
        rows.append({"task": name, "stack": stack, "awaiter_chain": chain, "awaiter": awaiter_name})
    return rows


def parse_pstree(text: str) -> list[tuple]:
    """The trees of ``python -m asyncio pstree`` as nested (label, children) tuples.

    A label is ("task", name) or ("frame", text); the depth of a line is where its
    branch marker starts, four columns per level.
    """
    roots: list[list] = []
    path: list[list] = []
    for line in text.splitlines():
        match = re.search(r"[└├]── ", line)
        if match is None:
            continue
        depth = match.start() // 4
        body = line[match.end() :]
        label = ("task", body[4:]) if body.startswith("(T) ") else ("frame", body.strip())
        node: list = [label, []]
        del path[depth:]
        (path[-1][1] if path else roots).append(node)
        path.append(node)

    def freeze(node):
        return (node[0], tuple(freeze(child) for child in node[1]))

    return [freeze(root) for root in roots]


def task_edges(trees) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """Task -> (nearest task above it, the frames between them, outermost first)."""
    edges = {}

    def walk(node, parent, frames):
        (kind, text), children = node
        if kind == "task":
            edges[text] = (parent, tuple(frames))
            parent, frames = text, []
        else:
            frames = [*frames, text.split()[0]]
        for child in children:
            walk(child, parent, frames)

    for root in trees:
        walk(root, None, [])
    return edges


def leaf_frames(trees) -> dict[str, tuple[str, ...]]:
    """Task -> the frame chain below it when no task is under it (outermost first)."""
    found = {}

    def walk(node, task):
        (kind, text), children = node
        if kind == "task":
            task = text
            chain = []
            cursor = children
            while len(cursor) == 1 and cursor[0][0][0] == "frame":
                chain.append(cursor[0][0][1].split()[0])
                cursor = cursor[0][1]
            if not cursor:
                found[task] = tuple(chain)
        for child in children:
            walk(child, task)

    for root in trees:
        walk(root, None)
    return found


def canonical(trees):
    """Trees with children in a fixed order: the tool's order is not behaviour."""

    def sort(node):
        label, children = node
        return (label, tuple(sorted(sort(child) for child in children)))

    return sorted(sort(root) for root in trees)


def test_ps_lists_the_tasks_and_who_awaits_them(loop_kind, remote_views):
    rows = parse_ps(remote_views("waiting", loop_kind)["ps"])
    assert {row["task"]: row["awaiter"] for row in rows} == EXPECTED_AWAITERS
    by_task = {row["task"]: row for row in rows}
    assert by_task["main"]["stack"][-1:] == ["main"]
    for name in ("gatherer", "grouper"):
        assert by_task[name]["awaiter_chain"][-1:] == ["main"], by_task[name]
    assert by_task["gatherer"]["stack"][-1:] == ["gather_two"]
    assert by_task["grouper"]["stack"][-1:] == ["group_two"]
    for name in WORKERS:
        # Innermost first: whatever asyncio frame waits, then the program's two.
        assert by_task[name]["stack"][-2:] == ["leaf", "worker"], by_task[name]
    for name in ("gathered-1", "gathered-2"):
        assert by_task[name]["awaiter_chain"] == by_task["gatherer"]["stack"]
    for name in ("grouped-1", "grouped-2"):
        assert by_task[name]["awaiter_chain"] == by_task["grouper"]["stack"]

    def key(row):
        return (row["task"], row["awaiter"] or "")

    stock = parse_ps(remote_views("waiting", "asyncio")["ps"])
    assert sorted(rows, key=key) == sorted(stock, key=key)


def test_pstree_draws_the_await_graph(loop_kind, remote_views):
    trees = parse_pstree(remote_views("waiting", loop_kind)["pstree"])
    assert [root[0] for root in trees] == [("task", "main")]
    edges = task_edges(trees)
    assert {task: parent for task, (parent, _) in edges.items()} == EXPECTED_AWAITERS
    assert edges["gatherer"][1] == ("main",)
    assert edges["grouper"][1] == ("main",)
    for name in ("gathered-1", "gathered-2"):
        assert edges[name][1] == ("gather_two",), edges[name]
    for name in ("grouped-1", "grouped-2"):
        # The TaskGroup's own frames sit between group_two and its children.
        assert edges[name][1][:1] == ("group_two",), edges[name]
        assert edges[name][1] == edges["grouped-1"][1]
    leaves = leaf_frames(trees)
    assert sorted(leaves) == sorted(WORKERS)
    for name in WORKERS:
        assert leaves[name][:2] == ("worker", "leaf"), leaves[name]

    stock = parse_pstree(remote_views("waiting", "asyncio")["pstree"])
    assert canonical(trees) == canonical(stock)


def test_ps_and_pstree_while_a_task_runs(loop_kind, remote_views):
    views = remote_views("running", loop_kind)
    rows = parse_ps(views["ps"])
    assert {row["task"]: row["awaiter"] for row in rows} == {
        "main": None,
        "busy": "main",
        "waiter": "main",
    }
    by_task = {row["task"]: row for row in rows}
    assert by_task["busy"]["stack"][-1:] == ["busy"]
    assert by_task["waiter"]["stack"][-1:] == ["waiter"]
    trees = parse_pstree(views["pstree"])
    assert {task: parent for task, (parent, _) in task_edges(trees).items()} == {
        "main": None,
        "busy": "main",
        "waiter": "main",
    }

    def key(row):
        return (row["task"], row["awaiter"] or "")

    stock = remote_views("running", "asyncio")
    assert sorted(rows, key=key) == sorted(parse_ps(stock["ps"]), key=key)
    assert canonical(trees) == canonical(parse_pstree(stock["pstree"]))


# ---------------------------------------------------------------------------------------
# From inside: capture_call_graph / print_call_graph
# ---------------------------------------------------------------------------------------


def shape(graph) -> tuple:
    """A FutureCallGraph without object identities: what it is, frames, awaiters."""
    fut = graph.future
    what = ("task", fut.get_name()) if isinstance(fut, asyncio.Task) else ("future",)
    frames = tuple(entry.frame.f_code.co_qualname for entry in graph.call_stack)
    awaiters = tuple(sorted(shape(parent) for parent in graph.awaited_by))
    return (what, frames, awaiters)


async def nested_capture():
    """A task two coroutines deep in a TaskGroup child captures its own graph."""
    # Default names count tasks process-wide; a fixed one compares across loops.
    asyncio.current_task().set_name("main")
    captured = {}

    async def innermost():
        captured["graph"] = shape(asyncio.capture_call_graph())
        out = io.StringIO()
        asyncio.print_call_graph(file=out)
        captured["printed"] = out.getvalue()
        await asyncio.sleep(0)

    async def child_body():
        await innermost()

    async def parent_body():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(child_body(), name="child")

    parent = asyncio.create_task(parent_body(), name="parent")
    await asyncio.gather(parent)
    return captured


def _normalized(printed: str) -> str:
    """print_call_graph's text minus object ids (they differ from run to run)."""
    return HEX.sub("0x?", printed)


def test_capture_call_graph_of_the_current_task(loop_factory):
    captured = run_on(loop_factory, nested_capture, timeout=TIMEOUT)
    (what, frames, awaiters) = captured["graph"]
    assert what == ("task", "child")
    qualname = "nested_capture.<locals>."
    # Innermost first, down to the task's own coroutine.
    assert frames == (qualname + "innermost", qualname + "child_body")
    (parent,) = awaiters
    assert parent[0] == ("task", "parent")
    # The parent waits in its TaskGroup's __aexit__, called from parent_body.
    assert parent[1][-1] == qualname + "parent_body"
    # gather() records the task calling it (main) as the awaiter of each child.
    ((main_what, main_frames, _),) = parent[2]
    assert main_what == ("task", "main")
    # Innermost first: this coroutine, then run_on's wrapper, the task's own coroutine.
    assert main_frames[0] == "nested_capture"

    stock = run_on(factory_for("asyncio"), nested_capture, timeout=TIMEOUT)
    assert captured["graph"] == stock["graph"]
    assert _normalized(captured["printed"]) == _normalized(stock["printed"])
    assert "in async " + qualname + "innermost()" in captured["printed"]


async def shared_future_capture():
    """Three named tasks await one future; capture its graph from outside them."""
    asyncio.current_task().set_name("main")
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    async def waiter():
        return await fut

    tasks = [asyncio.create_task(waiter(), name=f"waiter-{i}") for i in range(3)]
    await asyncio.sleep(0)  # the waiters' first steps run before this task resumes
    graph = shape(asyncio.capture_call_graph(fut))
    out = io.StringIO()
    asyncio.print_call_graph(fut, file=out)
    fut.set_result(None)
    await asyncio.gather(*tasks)
    return graph, out.getvalue()


def test_capture_call_graph_of_a_future_awaited_by_several_tasks(loop_factory):
    graph, printed = run_on(loop_factory, shared_future_capture, timeout=TIMEOUT)
    waiter = "shared_future_capture.<locals>.waiter"
    assert graph == (
        ("future",),
        (),
        tuple((("task", f"waiter-{i}"), (waiter,), ()) for i in range(3)),
    )
    stock_graph, stock_printed = run_on(
        factory_for("asyncio"), shared_future_capture, timeout=TIMEOUT
    )
    assert graph == stock_graph
    # The awaiters come from a set: compare the printed lines, not their order.
    assert sorted(_normalized(printed).splitlines()) == sorted(
        _normalized(stock_printed).splitlines()
    )
