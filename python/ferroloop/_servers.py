"""Serving a listening socket: ``Loop._start_serving``, which ``asyncio.Server`` calls for
each of its sockets (and the accept loop calls again after running out of descriptors).

asyncio's version registers ``_accept_connection`` as the socket's reader. This one
registers the native :class:`~ferroloop._ferroloop.Acceptor` instead, with the same
arguments, for the sockets it serves as asyncio would: plain ``socket.socket`` objects
(a subclass may have its own ``accept()``) of the IPv4, IPv6 and Unix families, on a loop
whose subclass keeps ferroloop's accept path. Anything else gets asyncio's callback, so
it behaves as on stock by construction.
"""

from __future__ import annotations

import inspect
import socket
from asyncio import constants, selector_events

from ._ferroloop import Acceptor

__all__ = ["start_serving"]

_NATIVE_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6, socket.AF_UNIX})

# 3.15 passes the server's context on to the accept loop (the callback's last argument).
_TAKES_CONTEXT = (
    "context" in inspect.signature(selector_events.BaseSelectorEventLoop._start_serving).parameters
)

# The methods the native accept loop stands in for: a Loop subclass that defines its own
# keeps asyncio's loop, which calls them.
_ACCEPT_PATH = (
    "_accept_connection",
    "_accept_connection2",
    "_make_socket_transport",
    "create_task",
)
# The backlogs the native loop counts accept() calls with (asyncio's range(backlog)
# takes any int).
_BACKLOG_RANGE = range(-(2**62), 2**62)


def _accept_callback(loop, sock, backlog):
    """The reader callback serving ``sock``: native when it behaves as asyncio's."""
    cls = type(loop)
    native = (
        type(sock) is socket.socket
        and type(backlog) is int
        and backlog in _BACKLOG_RANGE
        # A closed socket: asyncio's _add_reader(-1, ...) refuses it, with its error.
        and sock.fileno() != -1
        and sock.family in _NATIVE_FAMILIES
        and all(getattr(cls, name) is _OWN[name] for name in _ACCEPT_PATH)
    )
    if not native:
        return loop._accept_connection
    family = int(sock.family)
    # A Unix connection's local address is its listener's (see Acceptor).
    local = sock.getsockname() if family == socket.AF_UNIX else None
    return Acceptor(loop, family, int(sock.type), sock.proto, local)


if _TAKES_CONTEXT:

    def start_serving(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
        context=None,
    ):
        self._add_reader(
            sock.fileno(),
            _accept_callback(self, sock, backlog),
            protocol_factory,
            sock,
            sslcontext,
            server,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
            context,
        )

else:

    def start_serving(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        self._add_reader(
            sock.fileno(),
            _accept_callback(self, sock, backlog),
            protocol_factory,
            sock,
            sslcontext,
            server,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )


# Filled in by _loop.py once Loop exists: Loop's own versions of _ACCEPT_PATH.
_OWN: dict = {}


def adopt(loop_class) -> None:
    """Install ``start_serving`` as ``loop_class._start_serving`` and record the accept
    path's methods as ``loop_class`` has them."""
    loop_class._start_serving = start_serving
    _OWN.update({name: getattr(loop_class, name) for name in _ACCEPT_PATH})
