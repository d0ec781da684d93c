"""``ferroloop.format_tasks()``: the await tree of a loop's tasks, on both loops; on
3.14+ its edges are checked against ``asyncio.capture_call_graph``."""

from __future__ import annotations

import asyncio
import sys

import pytest
from conftest import import_ferroloop


async def leaf(gate):
    await gate


async def middle(gate):
    await asyncio.gather(leaf(gate), asyncio.create_task(leaf(gate), name="inner-task"))


async def grouped(gate):
    async with asyncio.TaskGroup() as tg:
        tg.create_task(leaf(gate), name="tg-child-1")
        tg.create_task(middle(gate), name="tg-child-2")


async def root(gate):
    await asyncio.gather(
        asyncio.create_task(grouped(gate), name="grouped"),
        asyncio.create_task(leaf(gate), name="plain-leaf"),
    )


async def scenario(snapshot):
    loop = asyncio.get_running_loop()
    gate = loop.create_future()
    task = asyncio.create_task(root(gate), name="root")
    for _ in range(5):
        await asyncio.sleep(0)
    result = snapshot(loop)
    gate.set_result(None)
    await task
    return result


def run(loop, snapshot):
    return loop.run_until_complete(scenario(snapshot))


def test_tree_names_and_edges(loop):
    ferroloop = import_ferroloop()

    def snapshot(loop):
        return ferroloop.format_tasks(loop), ferroloop._tasks_tree.task_edges(loop)

    text, edges = run(loop, snapshot)
    for name in ("grouped", "plain-leaf", "tg-child-1", "tg-child-2", "inner-task"):
        assert f"* Task {name!r}" in text
    assert "+ awaits gather of 2" in text
    assert "+ awaits TaskGroup with 2 running" in text
    assert f"async leaf() at {__file__}:" in text
    assert f"async middle() at {__file__}:" in text
    assert f"async grouped() at {__file__}:" in text
    # gather() wraps middle()'s bare leaf() coroutine in a task of its own.
    (wrapped,) = {b for a, b in edges if a == "tg-child-2"} - {"inner-task"}
    assert wrapped.startswith("Task-")
    assert edges == {
        ("tg-child-2", wrapped),
        ("root", "grouped"),
        ("root", "plain-leaf"),
        ("grouped", "tg-child-1"),
        ("grouped", "tg-child-2"),
        ("tg-child-2", "inner-task"),
    }
    # Two roots: the task taking the snapshot (running) and "root"; each task once.
    assert text.startswith("* Task 'Task-") and "[running]" in text.splitlines()[0]
    assert "\n* Task 'root' [waiting]" in text
    assert text.count("* Task 'tg-child-2'") == 1


def test_default_is_the_running_loop(loop):
    ferroloop = import_ferroloop()

    async def main():
        return ferroloop.format_tasks()

    assert loop.run_until_complete(main()).startswith("* Task 'Task-")
    with pytest.raises(RuntimeError):
        ferroloop.format_tasks()


def test_plain_future_and_ready_task(loop):
    ferroloop = import_ferroloop()

    async def waiter(fut):
        await fut

    async def main():
        fut = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(waiter(fut), name="waits-on-future")
        ready = asyncio.create_task(asyncio.sleep(0), name="not-started")
        await asyncio.sleep(0)
        text = ferroloop.format_tasks()
        fut.set_result(None)
        await asyncio.gather(task, ready)
        return text

    text = loop.run_until_complete(main())
    assert "* Task 'waits-on-future' [waiting]" in text
    assert "+ awaits <Future pending" in text


@pytest.mark.skipif(sys.version_info < (3, 14), reason="capture_call_graph is 3.14+")
def test_same_edges_as_capture_call_graph(loop):
    ferroloop = import_ferroloop()

    def graph_edges(loop):
        edges = set()

        def tasks_above(graph):
            if isinstance(graph.future, asyncio.Task):
                yield graph.future
            else:
                for parent in graph.awaited_by:
                    yield from tasks_above(parent)

        for task in asyncio.all_tasks(loop):
            graph = asyncio.capture_call_graph(task)
            for parent in graph.awaited_by:
                for above in tasks_above(parent):
                    edges.add((above.get_name(), task.get_name()))
        return edges, ferroloop._tasks_tree.task_edges(loop)

    theirs, ours = run(loop, graph_edges)
    assert ours == theirs
