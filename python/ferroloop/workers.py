"""gunicorn worker classes that serve an ASGI app with uvicorn on ferroloop::

    gunicorn -w 4 -k ferroloop.workers.UvicornWorker app:app
    gunicorn -w 4 -k ferroloop.workers.UvicornH11Worker app:app   # h11 instead of httptools

uvicorn's gunicorn workers come from the ``uvicorn-worker`` package (``uvicorn.workers``
is deprecated). Their event loop is a class attribute, ``CONFIG_KWARGS["loop"]``, which
gunicorn has no option for, hence these subclasses: everything else is uvicorn-worker's
(gunicorn's settings passed on, graceful shutdown on SIGTERM, SIGQUIT handling), only the
loop is ferroloop's, given to uvicorn as the ``module:callable`` loop factory that
``uvicorn --loop`` also takes. Importing this module needs uvicorn-worker (and so
gunicorn and uvicorn); ``import ferroloop`` never imports it.
"""

from __future__ import annotations

from typing import Any

try:
    from uvicorn_worker import UvicornWorker as _UvicornWorker
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "ferroloop.workers needs the uvicorn-worker package (which brings gunicorn's "
        "uvicorn worker classes): pip install uvicorn-worker gunicorn"
    ) from exc

__all__ = ["UvicornH11Worker", "UvicornWorker"]

#: What uvicorn resolves to ferroloop's loop factory, in each worker process.
LOOP_FACTORY = "ferroloop:new_event_loop"


class UvicornWorker(_UvicornWorker):
    """uvicorn-worker's ``UvicornWorker`` on ferroloop (uvicorn picks the HTTP parser:
    httptools when installed, else h11)."""

    CONFIG_KWARGS: dict[str, Any] = {**_UvicornWorker.CONFIG_KWARGS, "loop": LOOP_FACTORY}


class UvicornH11Worker(UvicornWorker):
    """:class:`UvicornWorker` with the pure-Python h11 HTTP parser."""

    CONFIG_KWARGS: dict[str, Any] = {**UvicornWorker.CONFIG_KWARGS, "http": "h11"}
