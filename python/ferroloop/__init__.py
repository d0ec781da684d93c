"""ferroloop: a drop-in asyncio event loop written in Rust.

Three ways to use it::

    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)   # Python 3.12+
    ferroloop.run(main())
    ferroloop.install(); asyncio.run(main())

or, for an unchanged program: ``python -m ferroloop script.py [args...]``.
"""

from __future__ import annotations

import asyncio
import sys
from asyncio import events
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._ferroloop import Handle, TimerHandle
from ._loop import Loop

__all__ = ["EventLoopPolicy", "Handle", "Loop", "TimerHandle", "install", "new_event_loop", "run"]
__version__ = "0.1.0"

_T = TypeVar("_T")


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy, except that new loops are ferroloop loops."""

    _loop_factory = Loop

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__}>"


def install() -> None:
    """Make ferroloop the loop that ``asyncio.run``, ``asyncio.new_event_loop`` and
    ``asyncio.Runner`` create, by installing :class:`EventLoopPolicy`."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Like :func:`asyncio.run`, on a new ferroloop loop."""
    if sys.version_info >= (3, 12):
        return asyncio.run(main, debug=debug, loop_factory=new_event_loop)
    if events._get_running_loop() is not None:
        # Same check and message as asyncio.run, before a Runner is built.
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
