"""ferroloop: a drop-in asyncio event loop written in Rust.

Use it as::

    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)   # Python 3.12+
    ferroloop.run(main())                                         # any version

or, for an unchanged program: ``python -m ferroloop script.py [args...]``.

``ferroloop.install()`` and ``ferroloop.EventLoopPolicy`` work wherever asyncio still has
event loop policies. Python 3.14 deprecated policies (3.16 removes them), so there they
warn as asyncio's own policy API does; they are resolved lazily, so that importing
ferroloop touches no deprecated name on any version.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import warnings
from asyncio import events
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._ferroloop import Handle, TimerHandle
from ._ferroloop import __version__ as __version__  # Cargo.toml's, built in
from ._loop import Loop
from ._tasks_tree import format_tasks

__all__ = ["Handle", "Loop", "TimerHandle", "format_tasks", "new_event_loop", "run"]
if sys.version_info < (3, 14):
    __all__ += ["EventLoopPolicy", "install"]

_T = TypeVar("_T")

# 3.14 deprecated the policy API and 3.16 removes it.
_POLICIES_DEPRECATED = sys.version_info >= (3, 14)


def new_event_loop(*, watchdog: float | None = None) -> Loop:
    """Return a new ferroloop event loop.

    ``watchdog``: report any callback or task step that blocks the loop for longer than
    this many seconds (see ``Loop.set_watchdog``); default: ``FERROLOOP_WATCHDOG``'s
    value, else off.
    """
    loop = Loop()
    if watchdog is not None:
        loop.set_watchdog(watchdog)
    return loop


def run(
    main: Coroutine[Any, Any, _T], *, debug: bool | None = None, watchdog: float | None = None
) -> _T:
    """Like :func:`asyncio.run`, on a new ferroloop loop (with a watchdog of ``watchdog``
    seconds, if given)."""
    factory = (
        new_event_loop if watchdog is None else functools.partial(new_event_loop, watchdog=watchdog)
    )
    if sys.version_info >= (3, 12):
        return asyncio.run(main, debug=debug, loop_factory=factory)
    if events._get_running_loop() is not None:
        # Same check and message as asyncio.run, before a Runner is built.
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)


def install() -> None:
    """Make ferroloop the loop that ``asyncio.run``, ``asyncio.new_event_loop`` and
    ``asyncio.Runner`` create, by installing :class:`EventLoopPolicy`.

    Deprecated on Python 3.14+, as asyncio's policies are: use ``ferroloop.run()`` or
    ``asyncio.run(main(), loop_factory=ferroloop.new_event_loop)``.
    """
    if _POLICIES_DEPRECATED:
        warnings._deprecated("ferroloop.install", remove=(3, 16))
    _install_policy()


def _install_policy() -> None:
    """install() without the deprecation warning, for ``python -m ferroloop``."""
    from ._policy import policy_class

    setter = getattr(events, "_set_event_loop_policy", None) or asyncio.set_event_loop_policy
    setter(policy_class()())


def __getattr__(name: str):
    # EventLoopPolicy subclasses asyncio's default policy, a name 3.14 deprecates and
    # 3.16 removes: it is made on first use, and warns on every use on 3.14+, as
    # `asyncio.DefaultEventLoopPolicy` does.
    if name == "EventLoopPolicy":
        if _POLICIES_DEPRECATED:
            warnings._deprecated("ferroloop.EventLoopPolicy", remove=(3, 16))
        from ._policy import policy_class

        return policy_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "EventLoopPolicy"})
