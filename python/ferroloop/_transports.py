"""``SocketTransport``: the stream transport of TCP and Unix-socket connections.

The per-byte work (reading on readiness, ``write()``, draining queued bytes) is native,
in :class:`~ferroloop._ferroloop.SocketTransportCore`. This class is the rest: what runs
once per connection or on errors, written to behave exactly as asyncio's selector
transport (same callbacks in the same order, same messages, same warnings).

The state the native hot paths share with these methods (``_conn_lost``, ``_closing``,
``_eof``, ``_empty_waiter``, ``_protocol``) lives in the core; the properties below give
it the attribute names asyncio's transports use, which libraries and asyncio's own
helpers (``loop.sendfile``, ``start_tls``) read.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from asyncio import (
    base_events,
    constants,
    futures,
    protocols,
    selector_events,
    transports,
    trsock,
)
from asyncio.log import logger

from ._ferroloop import SocketTransportCore, _register_transport

__all__ = ["SocketTransport", "accepted_transport"]

# Servers count their transports; 3.13 also keeps them (for close_clients()) and takes
# the transport as an argument. Asked of the signature, not the version number, in case
# a maintenance release backports it.
_SERVER_TRACKS_TRANSPORTS = len(inspect.signature(base_events.Server._attach).parameters) > 1


# 3.12+ socket transports have a writelines() of their own (3.11 inherits
# WriteTransport's join-and-write), whose checks and messages differ.
_OWN_WRITELINES = "writelines" in vars(selector_events._SelectorSocketTransport)
# 3.14's writelines() drops and counts writes to a lost connection itself (3.12 and 3.13
# leave the chunks queued there).
_WRITELINES_COUNTS_LOST_WRITES = sys.version_info >= (3, 14)
# 3.14's _call_connection_lost sets the transport's _read_ready_cb to None.
_READ_CALLBACK_DROPPED_WHEN_LOST = sys.version_info >= (3, 14)


def _core_attribute(name: str, doc: str) -> property:
    def get(self):
        return getattr(self._core, name)

    def set(self, value):
        setattr(self._core, name, value)

    return property(get, set, doc=doc)


class SocketTransport(transports._FlowControlMixin, transports.Transport):
    """A connected stream socket (TCP or Unix) driven by a ferroloop loop."""

    __module__ = "ferroloop"

    max_size = 256 * 1024  # What one read may return, as asyncio's transports.
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    _conn_lost = _core_attribute("conn_lost", "Non-zero once connection_lost is scheduled.")
    _closing = _core_attribute("closing", "Set by close().")
    _eof = _core_attribute("eof", "Set by write_eof().")
    _empty_waiter = _core_attribute("empty_waiter", "The future loop.sendfile() waits on.")

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None, context=None):
        super().__init__(extra, loop)
        # 3.15 runs every callback of a connection in one context (an accepted
        # connection's is a copy of its server's); before, context is None and each
        # callback runs in a copy of the context current when it was scheduled.
        self._context = context
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._core = SocketTransportCore(self, loop, self._sock_fd, context)
        # The bound native methods, looked up once: user code calls write() per message
        # and StreamWriter.drain() calls is_closing() per drain.
        self.write = self._core.write
        self.is_closing = self._core.is_closing
        self._protocol_connected = False
        self.set_protocol(protocol)
        self._server = server
        self._paused = False
        if server is not None:
            _attach(server, self)
        loop._transports[self._sock_fd] = self
        # Disable Nagle: small writes go out without waiting for the peer's ACK.
        base_events._set_nodelay(sock)

        loop.call_soon(protocol.connection_made, self, context=context)
        # Reading starts only after connection_made() ran.
        loop.call_soon(self._add_reader, self._sock_fd, self._core._read_ready, context=context)
        if waiter is not None:
            # And the waiter learns of the connection only after connection_made() too.
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None, context=context)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._loop is not None and not self._loop.is_closed():
            events = self._loop._fd_events(self._sock_fd)
            info.append("read=polling" if events & 1 else "read=idle")
            state = "polling" if events & 2 else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    # -- protocol ------------------------------------------------------------------------

    @property
    def _protocol(self):
        return self._core.protocol

    @_protocol.setter
    def _protocol(self, protocol) -> None:
        self._core.set_protocol(protocol, isinstance(protocol, protocols.BufferedProtocol))

    def set_protocol(self, protocol) -> None:
        self._protocol = protocol
        self._protocol_connected = True

    def get_protocol(self):
        return self._protocol

    @property
    def _read_ready_cb(self):
        # asyncio's socket transports keep their read callback here (CPython's own TLS
        # tests inspect it); 3.14 drops it once the connection is lost.
        if self._sock is None and _READ_CALLBACK_DROPPED_WHEN_LOST:
            return None
        return self._core._read_ready

    # -- reading -------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self.is_closing() and not self._paused

    def pause_reading(self) -> None:
        if not self.is_reading():
            return
        self._paused = True
        self._loop._remove_reader(self._sock_fd)
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._add_reader(self._sock_fd, self._core._read_ready)
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _add_reader(self, fd, callback, *args) -> None:
        # Scheduled at construction and by resume_reading(): a pause or close in between
        # wins.
        if not self.is_reading():
            return
        if self._context is None:
            self._loop._add_reader(fd, callback, *args)
        else:
            self._loop._add_reader(fd, callback, *args, context=self._context)

    def _read_ready__on_eof(self) -> None:
        # Called by the core when the peer closed its sending side.
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if keep_open:
            # Half-closed: the protocol may still write, but nothing more will arrive.
            self._loop._remove_reader(self._sock_fd)
        else:
            self.close()

    # -- writing -------------------------------------------------------------------------

    def write(self, data) -> None:
        """Send ``data`` now as far as the socket takes it; queue the rest.

        (Instances bind the native method directly over this one, see __init__.)
        """
        self._core.write(data)

    def writelines(self, list_of_data) -> None:
        if not _OWN_WRITELINES:
            self.write(b"".join(list_of_data))
            return
        # 3.12+ checks before joining, with messages of its own, and takes the chunks as
        # memoryviews (so a non-buffer fails with memoryview's TypeError).
        if self._eof:
            raise RuntimeError("Cannot call writelines() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to writelines; sendfile is in progress")
        if not list_of_data:
            return
        if _WRITELINES_COUNTS_LOST_WRITES and self._conn_lost:
            # 3.14 drops (and counts) a writelines() to a lost connection before looking
            # at the chunks, as write() does.
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        self.write(b"".join([memoryview(data) for data in list_of_data]))

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        if not self.get_write_buffer_size():
            self._core.shutdown_write()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._core.get_write_buffer_size()

    def _make_empty_waiter(self):
        # loop.sendfile(): a future resolved once everything queued has been sent.
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        waiter = self._loop.create_future()
        self._empty_waiter = waiter
        if not self.get_write_buffer_size():
            waiter.set_result(None)
        return waiter

    def _reset_empty_waiter(self) -> None:
        self._empty_waiter = None

    # -- closing -------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._core.is_closing()

    def close(self) -> None:
        """Stop reading; once queued bytes are sent, close and call connection_lost(None)."""
        if self._closing:
            return
        self._closing = True
        self._loop._remove_reader(self._sock_fd)
        if not self.get_write_buffer_size():
            self._conn_lost += 1
            self._loop._remove_writer(self._sock_fd)
            self._loop.call_soon(self._call_connection_lost, None, context=self._context)

    def abort(self) -> None:
        """Close at once, dropping queued bytes; connection_lost(None) follows."""
        self._force_close(None)

    def _fatal_error(self, exc, message="Fatal error on transport") -> None:
        # OS errors are the peer's doing (reset, broken pipe): logged in debug mode only.
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _force_close(self, exc) -> None:
        if self._conn_lost:
            return
        if self.get_write_buffer_size():
            self._core.clear_write_buffer()
            self._loop._remove_writer(self._sock_fd)
        if not self._closing:
            self._closing = True
            self._loop._remove_reader(self._sock_fd)
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc, context=self._context)

    def _call_connection_lost(self, exc) -> None:
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._sock.close()
            self._sock = None
            self._core.release()
            self._loop = None
            server = self._server
            if server is not None:
                _detach(server, self)
                self._server = None
        if self._empty_waiter is not None:
            self._empty_waiter.set_exception(ConnectionError("Connection is closed by peer"))

    def __del__(self, _warn=warnings.warn) -> None:
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()
            if _SERVER_TRACKS_TRANSPORTS and self._server is not None:
                _detach(self._server, self)


class _LimitsProbe(transports._FlowControlMixin):
    """Asks asyncio for its default write buffer limits, once."""


_probe = object.__new__(_LimitsProbe)
_probe._set_write_buffer_limits()
_DEFAULT_HIGH_WATER, _DEFAULT_LOW_WATER = _probe._high_water, _probe._low_water
del _probe
_new = object.__new__
_BufferedProtocol = protocols.BufferedProtocol


def accepted_transport(loop, sock, fd, protocol, extra, server, context):
    """``SocketTransport(loop, sock, protocol, None, extra, server, context)`` for a
    connection the native accept loop accepted (src/net/accept.rs), without the calls
    ``__init__`` makes to get there: ``extra`` already holds ``peername``, ``socket`` and
    ``sockname`` (in the order ``__init__`` leaves them), ``fd`` is ``sock.fileno()``, and
    the loop has set ``TCP_NODELAY`` where ``__init__`` would. The same state and the same
    calls, in the same order, as ``__init__`` (``loop._transports[fd] = self`` is made
    without the Python frames of ``WeakValueDictionary.__setitem__``); tests/test_accept.py
    compares the two."""
    self = _new(SocketTransport)
    self._extra = extra
    self._loop = loop
    self._protocol_paused = False
    self._high_water = _DEFAULT_HIGH_WATER
    self._low_water = _DEFAULT_LOW_WATER
    self._context = context
    self._sock = sock
    self._sock_fd = fd
    self._core = core = SocketTransportCore(self, loop, fd, context)
    self.write = core.write
    self.is_closing = core.is_closing
    core.set_protocol(protocol, isinstance(protocol, _BufferedProtocol))
    self._protocol_connected = True
    self._server = server
    self._paused = False
    if server is not None:
        if _SERVER_TRACKS_TRANSPORTS:
            server._attach(self)
        else:
            server._attach()
    _register_transport(loop._transports, fd, self)
    if context is None:
        # The same calls without the keyword (before 3.15 there is no context).
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._add_reader, fd, core._read_ready)
    else:
        loop.call_soon(protocol.connection_made, self, context=context)
        loop.call_soon(self._add_reader, fd, core._read_ready, context=context)
    return self


def _attach(server, transport) -> None:
    if _SERVER_TRACKS_TRANSPORTS:
        server._attach(transport)
    else:
        server._attach()


def _detach(server, transport) -> None:
    if _SERVER_TRACKS_TRANSPORTS:
        server._detach(transport)
    else:
        server._detach()
