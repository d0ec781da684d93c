"""``DatagramTransport``: the transport of ``loop.create_datagram_endpoint()``.

A subclass of asyncio's own ``_SelectorDatagramTransport``: everything but the two
per-datagram operations is the installed Python's code, so closing, aborting, queuing
when the kernel refuses a datagram, flow control, ``repr``, the unclosed-transport
warning and their version differences (3.13's empty datagrams, 3.14's header bytes in
the buffer size, 3.15's O(1) size counter) are stock by construction.

The reader callback and ``sendto`` are native
(:class:`~ferroloop._ferroloop.DatagramTransportCore`): ``recvfrom`` into a reusable
buffer, the sender converted as ``socket.recvfrom`` does, and a direct ``send``/
``sendto`` by descriptor. The core hands every case off its fast path back to asyncio's
methods (``_stock_sendto``, ``_stock_read_ready``). The state those methods share with
the core (``_sock``, ``_protocol``, ``_address``, ``_buffer``, ``_conn_lost``) lives in
the core, under asyncio's attribute names.
"""

from __future__ import annotations

import socket
from asyncio import selector_events

from ._ferroloop import DatagramTransportCore

__all__ = ["DatagramTransport"]

_StockDatagramTransport = selector_events._SelectorDatagramTransport

# Families whose addresses the core converts itself; other sockets (AF_PACKET,
# AF_NETLINK, ...) use asyncio's methods throughout.
_NATIVE_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6, socket.AF_UNIX})


def _core_attribute(name: str, doc: str) -> property:
    def get(self):
        core = self._core
        return None if core is None else getattr(core, name)

    def set(self, value):
        setattr(self._core, name, value)

    return property(get, set, doc=doc)


class DatagramTransport(_StockDatagramTransport):
    """A datagram socket (UDP, Unix datagram) driven by a ferroloop loop."""

    __module__ = "ferroloop"

    _core = None  # Until __init__ makes it (asyncio's __del__ may run without one).

    _protocol = _core_attribute("protocol", "The protocol datagrams are delivered to.")
    _address = _core_attribute("address", "The fixed destination (remote_addr), or None.")
    _buffer = _core_attribute("buffer", "Datagrams queued as (bytes, addr).")
    _conn_lost = _core_attribute("conn_lost", "Non-zero once connection_lost is scheduled.")

    # asyncio's own methods, for the core's cases off its fast path.
    _stock_sendto = _StockDatagramTransport.sendto
    _stock_read_ready = _StockDatagramTransport._read_ready

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        native = type(sock) is socket.socket and sock.family in _NATIVE_FAMILIES
        self._core = DatagramTransportCore(self, sock.family if native else None, self.max_size)
        if self._core.native:
            # Found before the class's method: the user's sendto() calls go straight to
            # native code. (The core holds the transport weakly: no cycle.)
            self.sendto = self._core.sendto
        super().__init__(loop, sock, protocol, address, waiter, extra)
        self._core.set_connected(bool(self._extra["peername"]))

    @property
    def _read_ready(self):
        # What asyncio's __init__ and resume_reading() install as the loop's reader: the
        # native reader, holding this transport (as a bound method would, so that the
        # loop keeps an open transport alive), or asyncio's own method.
        core = self._core
        if core is not None and core.native and core.sock is not None:
            return core.reader(self)
        return _StockDatagramTransport._read_ready.__get__(self)

    @property
    def _sock(self):
        core = self._core
        return None if core is None else core.sock

    @_sock.setter
    def _sock(self, sock) -> None:
        self._core.sock = sock
        if sock is None:
            # asyncio's _call_connection_lost closed the socket: calls go to asyncio's
            # methods as they are from now on.
            self.__dict__.pop("sendto", None)
