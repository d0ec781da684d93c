"""The Python half of seeing inside a running loop.

- ``loop.stats()``: the native counters (``LoopCore._native_stats``) plus what only the
  Python side knows (open transports and servers, live tasks).
- The watchdog's reports: the native reporter thread (``src/observe/watchdog.rs``) calls
  :func:`watchdog_blocked` and :func:`watchdog_resumed` with the GIL held; they build
  the event and either hand it to the program's callback or log a WARNING through the
  ``asyncio`` logger.
- The environment: ``FERROLOOP_WATCHDOG=SECONDS`` turns the watchdog on for every new
  loop, ``FERROLOOP_DUMP_SIGNAL=USR1`` makes that signal log every loop's task tree and
  what it is running now.
"""

from __future__ import annotations

import asyncio
import functools
import linecache
import os
import signal
import sys
import threading
import warnings
import weakref
from asyncio import base_events
from asyncio.log import logger
from typing import Any

__all__ = ["loop_created", "stats", "watchdog_blocked", "watchdog_resumed"]

#: Every open ferroloop loop, for the dump signal.
_loops: weakref.WeakSet = weakref.WeakSet()
_dump_signal_installed = False
#: ``python -m ferroloop --watchdog SECONDS``: the threshold for loops the environment
#: does not configure (kept here rather than in the environment, so that child
#: processes do not inherit it).
default_watchdog: float | None = None


def _env_watchdog() -> float | None:
    value = os.environ.get("FERROLOOP_WATCHDOG", "").strip()
    if not value:
        return None
    try:
        threshold = float(value)
    except ValueError:
        threshold = -1.0
    if not threshold >= 0.0 or threshold == float("inf"):
        warnings.warn(
            f"FERROLOOP_WATCHDOG={value!r} is not a number of seconds; watchdog left off",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return threshold or None


def _dump_signal_number() -> int | None:
    value = os.environ.get("FERROLOOP_DUMP_SIGNAL", "").strip()
    if not value:
        return None
    name = value.upper()
    try:
        return (
            int(name)
            if name.isdigit()
            else int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
        )
    except KeyError:
        warnings.warn(
            f"FERROLOOP_DUMP_SIGNAL={value!r} names no signal; no dump signal installed",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def loop_created(loop) -> None:
    """Called by ``Loop.__init__``: the environment's watchdog and dump signal."""
    global _dump_signal_installed
    loop._observed_servers = weakref.WeakSet()
    _loops.add(loop)
    threshold = _env_watchdog()
    if threshold is None:
        threshold = default_watchdog
    if threshold is not None:
        loop.set_watchdog(threshold)
    if not _dump_signal_installed and threading.current_thread() is threading.main_thread():
        signum = _dump_signal_number()
        if signum is not None:
            signal.signal(signum, _on_dump_signal)
            _dump_signal_installed = True


# -- stats -------------------------------------------------------------------------------


def stats(self) -> dict[str, Any]:
    """Counters since the loop was created (the README lists the keys)."""
    counters = self._native_stats()
    counters["transports"] = sum(
        1 for transport in list(self._transports.values()) if not transport.is_closing()
    )
    servers = getattr(self, "_observed_servers", ())
    counters["servers"] = sum(1 for server in list(servers) if server._sockets is not None)
    counters["tasks"] = len(asyncio.all_tasks(self)) if not self.is_closed() else 0
    return counters


def tracking_servers(create):
    """Wraps ``create_server``/``create_unix_server`` so ``stats()`` sees the servers."""

    @functools.wraps(create)
    async def create_and_track(self, *args, **kwargs):
        server = await create(self, *args, **kwargs)
        servers = getattr(self, "_observed_servers", None)
        if servers is not None:
            servers.add(server)
        return server

    return create_and_track


# -- the watchdog's reports --------------------------------------------------------------


def _task_of(handle) -> asyncio.Future | None:
    owner = getattr(getattr(handle, "_callback", None), "__self__", None)
    return owner if isinstance(owner, asyncio.Future) else None


def describe(handle, task=None) -> str:
    """A task step as its task's name and coroutine; any other callback as asyncio's
    slow-callback warning names it."""
    task = task if task is not None else _task_of(handle)
    if task is None:
        return base_events._format_handle(handle)
    if not isinstance(task, asyncio.Task):
        return repr(task)
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    where = f" defined at {code.co_filename}:{code.co_firstlineno}" if code else ""
    return f"task {task.get_name()!r} (coroutine {name}(){where})"


def format_frames(frames) -> str:
    """``(filename, lineno, name)`` tuples as ``traceback`` prints a stack."""
    lines = []
    for filename, lineno, name in frames:
        lines.append(f'  File "{filename}", line {lineno}, in {name}\n')
        source = linecache.getline(filename, lineno).strip() if lineno else ""
        if source:
            lines.append(f"    {source}\n")
    return "".join(lines)


def _dispatch(callback, event: dict[str, Any], message: str) -> None:
    if callback is None:
        logger.warning("%s", message)
        return
    try:
        callback(event)
    except Exception:
        logger.exception("Exception in the watchdog callback %r", callback)


def watchdog_blocked(
    loop, callback, handle, frames, elapsed, native_stack, gil_held, thread_id
) -> str | None:
    """The loop has run one callback for longer than the threshold (still running, or
    ``handle`` is None when it ended before the GIL could be had)."""
    task = _task_of(handle) if handle is not None else None
    what = describe(handle, task) if handle is not None else None
    stack = format_frames(frames) if frames is not None else None
    event = {
        "event": "blocked",
        "loop": loop,
        "thread_id": thread_id,
        "handle": handle,
        "task": task,
        "callback": what,
        "elapsed": elapsed,
        "stack": stack,
        "native_stack": native_stack,
        "gil_held": gil_held,
    }
    if what is None:
        message = (
            f"Event loop was blocked for at least {elapsed:.3f} seconds by a callback that "
            "ended before the watchdog could name it"
        )
    else:
        message = f"Event loop blocked for {elapsed:.3f} seconds so far, running {what}"
    if gil_held:
        message += (
            "; the loop thread held the GIL in native code, so this report could not be "
            "made earlier"
        )
    if stack is not None:
        message += f"\nStack of the loop thread (most recent call last):\n{stack.rstrip()}"
    elif native_stack:
        message += (
            "\nStack of the loop thread while it held the GIL (faulthandler's view):\n"
            + native_stack.rstrip()
        )
    else:
        message += "\nThe loop thread's stack is not available"
        if gil_held:
            message += ": it held the GIL in native code"
    _dispatch(callback, event, message)
    return what


def watchdog_resumed(loop, callback, what, total, thread_id) -> None:
    """The blocking callback reported before has returned after ``total`` seconds."""
    event = {
        "event": "resumed",
        "loop": loop,
        "thread_id": thread_id,
        "callback": what,
        "elapsed": total,
    }
    subject = what or "a callback"
    _dispatch(
        callback, event, f"Event loop unblocked: {subject} blocked it for {total:.3f} seconds"
    )


# -- the dump signal ---------------------------------------------------------------------


def dump(loop) -> str:
    """The task tree of ``loop`` and what it is running now, as the dump signal logs it."""
    from ._tasks_tree import format_tasks

    lines = [f"ferroloop: state of {loop!r}"]
    view = loop._watchdog_view()
    handle = view["handle"]
    if not loop.is_running():
        lines.append("not running")
    elif handle is not None:
        running_for = view["running_for"]
        since = f" for {running_for:.3f} seconds" if running_for is not None else ""
        lines.append(f"running now{since}: {describe(handle)}")
    elif view["threshold"] is None:
        lines.append("running (the watchdog is off, so the callback in progress is not tracked)")
    else:
        lines.append("running: between callbacks or waiting for I/O")
    thread_id = getattr(loop, "_thread_id", None)
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    if frame is not None:
        frames = []
        while frame is not None:
            code = frame.f_code
            if code.co_name == "run_forever" and code.co_filename.endswith("ferroloop/_loop.py"):
                break
            if code.co_filename != __file__:
                frames.append((code.co_filename, frame.f_lineno, code.co_qualname))
            frame = frame.f_back
        if frames:
            lines.append("Stack of the loop thread (most recent call last):")
            lines.append(format_frames(reversed(frames)).rstrip())
    if not loop.is_closed():
        tree = format_tasks(loop)
        lines.append(tree if tree else "no tasks")
    return "\n".join(lines)


def _on_dump_signal(signum, frame) -> None:
    for loop in list(_loops):
        if not loop.is_closed():
            logger.warning("%s", dump(loop))
