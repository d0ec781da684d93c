"""``ferroloop.EventLoopPolicy``, made on first use.

It subclasses asyncio's default policy, which 3.14 deprecates and 3.16 removes, so it
is built only when a program asks for it, from the private name 3.14+ keep for asyncio's
own use (``unix_events._DefaultEventLoopPolicy``), which does not warn.
"""

from __future__ import annotations

import functools
from asyncio import unix_events

from ._loop import Loop


@functools.cache
def policy_class() -> type:
    """The policy class: asyncio's default policy, except that new loops are ferroloop
    loops. The same class object every time."""
    base = getattr(unix_events, "_DefaultEventLoopPolicy", None)
    if base is None:
        base = unix_events.DefaultEventLoopPolicy

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__}>"

    return type(
        "EventLoopPolicy",
        (base,),
        {
            "__module__": "ferroloop",
            "__qualname__": "EventLoopPolicy",
            "__doc__": "asyncio's default policy, except that new loops are ferroloop loops.",
            "_loop_factory": Loop,
            "__repr__": __repr__,
        },
    )
