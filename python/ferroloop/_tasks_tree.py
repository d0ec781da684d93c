"""``ferroloop.format_tasks(loop=None)``: the await tree of a loop's tasks, on 3.11+.

Built from what every supported version has: ``asyncio.all_tasks(loop)``, each task's
coroutine and its ``cr_await`` chain (the frames it is suspended in), the future the
task waits on (``task._fut_waiter``), ``gather``'s ``_children`` and the TaskGroups
found in the chain's frames (``_parent_task``, ``_tasks``). 3.14's
``asyncio.capture_call_graph`` draws the same picture from the other end (what each
future is awaited by); ``tests/test_format_tasks.py`` checks that both give the same
edges where both exist.
"""

from __future__ import annotations

import asyncio
import re
from asyncio import events, taskgroups
from dataclasses import dataclass, field
from typing import Any

__all__ = ["format_tasks", "task_edges"]


@dataclass
class _Group:
    """Something a task awaits that stands for several others."""

    label: str
    members: list[Any] = field(default_factory=list)


def _coroutine_chain(coro) -> list[tuple[str, str, int | None, Any]]:
    """(kind, qualname, line, frame) for each frame the coroutine is suspended in,
    outermost first."""
    chain = []
    seen = 0
    while coro is not None and seen < 200:
        seen += 1
        kinds = (("async", "cr"), ("async generator", "ag"), ("generator", "gi"))
        found = next(((k, p) for k, p in kinds if hasattr(coro, f"{p}_code")), None)
        if found is None:
            break
        kind, prefix = found
        frame = getattr(coro, f"{prefix}_frame", None)
        code = getattr(coro, f"{prefix}_code")
        chain.append(
            (
                kind,
                f"{code.co_qualname}() at {code.co_filename}:"
                f"{frame.f_lineno if frame is not None else code.co_firstlineno}",
                frame,
            )
        )
        if prefix == "gi":
            coro = getattr(coro, "gi_yieldfrom", None)
        else:
            coro = getattr(coro, f"{prefix}_await", None)
    return chain


def _task_groups(task, chain) -> list[taskgroups.TaskGroup]:
    groups = []
    for _, _, frame in chain:
        if frame is None:
            continue
        try:
            values = list(frame.f_locals.values())
        except Exception:
            continue
        for value in values:
            if (
                isinstance(value, taskgroups.TaskGroup)
                and getattr(value, "_parent_task", None) is task
                and not any(value is g for g in groups)
            ):
                groups.append(value)
    return groups


def _name(obj) -> str:
    return obj.get_name() if isinstance(obj, asyncio.Task) else f"Future {id(obj):#x}"


def _sort_key(task) -> tuple:
    # Task-10 after Task-9: numbers in names compare as numbers.
    parts = re.split(r"(\d+)", _name(task))
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts), id(task)


def _awaits(task, chain) -> list[Any]:
    """What ``task`` waits on: tasks, futures, and gather/TaskGroup groups."""
    awaited: list[Any] = []
    groups = _task_groups(task, chain)
    group_futures = {id(getattr(g, "_on_completed_fut", None)) for g in groups}
    for group in groups:
        members = sorted((t for t in group._tasks if not t.done()), key=_sort_key)
        awaited.append(_Group(f"TaskGroup with {len(members)} running", members))
    waiter = getattr(task, "_fut_waiter", None)
    if waiter is not None and id(waiter) not in group_futures:
        awaited.append(_expand(waiter))
    return awaited


def _expand(future) -> Any:
    children = getattr(future, "_children", None)
    if isinstance(children, list) and not isinstance(future, asyncio.Task):
        members = [_expand(child) for child in children]
        pending = sum(1 for c in children if not c.done())
        return _Group(f"gather of {len(children)} ({pending} pending)", members)
    return future


def _state(task, current) -> str:
    if task.done():
        return "done"
    if task is current:
        return "running"
    return "waiting" if getattr(task, "_fut_waiter", None) is not None else "ready"


def _tasks_of(loop) -> tuple[list[asyncio.Task], Any]:
    if loop is None:
        loop = events._get_running_loop()
        if loop is None:
            raise RuntimeError("no running event loop")
    tasks = sorted(asyncio.all_tasks(loop), key=_sort_key)
    try:
        current = asyncio.current_task(loop)
    except Exception:
        current = None
    return tasks, current


def task_edges(loop=None) -> set[tuple[str, str]]:
    """(awaiting task, awaited task) name pairs, looking through gathers and TaskGroups."""
    tasks, _ = _tasks_of(loop)
    edges = set()

    def leaves(item):
        if isinstance(item, _Group):
            for member in item.members:
                yield from leaves(member)
        elif isinstance(item, asyncio.Task):
            yield item

    for task in tasks:
        for item in _awaits(task, _coroutine_chain(task.get_coro())):
            for child in leaves(item):
                edges.add((task.get_name(), child.get_name()))
    return edges


def format_tasks(loop=None) -> str:
    """The await tree of every task of ``loop`` (default: the running loop) as text:
    each task's name and state, the frames its coroutine is suspended in (file:line),
    and what it awaits: other tasks, futures, ``gather`` groups and TaskGroups. Tasks no
    other task awaits are the roots."""
    tasks, current = _tasks_of(loop)
    plans = {id(t): (t, _coroutine_chain(t.get_coro())) for t in tasks}
    awaited = {id(t): _awaits(t, plans[id(t)][1]) for t in tasks}
    children: set[int] = set()

    def collect(item):
        if isinstance(item, _Group):
            for member in item.members:
                collect(member)
        elif isinstance(item, asyncio.Task):
            children.add(id(item))

    for items in awaited.values():
        for item in items:
            collect(item)
    lines: list[str] = []
    shown: set[int] = set()

    def render_task(task, indent: str) -> None:
        if id(task) in shown:
            lines.append(f"{indent}* Task {task.get_name()!r} (shown above)")
            return
        shown.add(id(task))
        lines.append(f"{indent}* Task {task.get_name()!r} [{_state(task, current)}]")
        chain = plans[id(task)][1] if id(task) in plans else _coroutine_chain(task.get_coro())
        for kind, where, _ in chain:
            lines.append(f"{indent}  | {kind} {where}")
        items = awaited.get(id(task))
        if items is None:
            items = _awaits(task, chain)
        for item in items:
            render_item(item, indent + "  ")

    def render_item(item, indent: str) -> None:
        if isinstance(item, _Group):
            lines.append(f"{indent}+ awaits {item.label}:")
            for member in item.members:
                if isinstance(member, (asyncio.Task, _Group)):
                    render_member(member, indent + "    ")
                else:
                    lines.append(f"{indent}    - {_describe_future(member)}")
        elif isinstance(item, asyncio.Task):
            lines.append(f"{indent}+ awaits:")
            render_task(item, indent + "    ")
        else:
            lines.append(f"{indent}+ awaits {_describe_future(item)}")

    def render_member(member, indent: str) -> None:
        if isinstance(member, asyncio.Task):
            render_task(member, indent)
        else:
            render_item(member, indent)

    for task in tasks:
        if id(task) not in children:
            render_task(task, "")
    for task in tasks:
        if id(task) not in shown:
            render_task(task, "")
    return "\n".join(lines)


def _describe_future(future) -> str:
    text = repr(future)
    return text if len(text) <= 160 else text[:157] + "..."
