"""Pipe transports: ``connect_read_pipe``, ``connect_write_pipe`` and subprocess stdio.

The per-byte work (the reader callback, ``write()``, draining queued bytes) is native,
in :class:`~ferroloop._ferroloop.ReadPipeCore` and
:class:`~ferroloop._ferroloop.WritePipeCore`, on the stream core the socket transport
uses. These classes are the rest, written to behave as asyncio's
``unix_events._UnixReadPipeTransport`` and ``_UnixWritePipeTransport`` (the same on
3.11-3.15 as far as Linux can tell): the checks at construction, the order of the
first callbacks, pausing, closing, EOF, errors, ``repr`` and the unclosed-transport
warning. asyncio's subprocess transport connects the child's pipes through
``loop.connect_read_pipe``/``connect_write_pipe``, so subprocess stdio runs on these too.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import warnings
from asyncio import futures, transports
from asyncio.log import logger

from ._ferroloop import ReadPipeCore, WritePipeCore

__all__ = ["ReadPipeTransport", "WritePipeTransport"]

# On AIX only sockets report the reader going away on the write end (asyncio's rule).
_FIFO_REPORTS_READER_GONE = not sys.platform.startswith("aix")


def _core_attribute(name: str, doc: str) -> property:
    def get(self):
        return getattr(self._core, name)

    def set(self, value):
        setattr(self._core, name, value)

    return property(get, set, doc=doc)


class _PipeEnd:
    """What the two ends do alike (asyncio's two pipe transports each repeat it): the
    check of what was passed, ``repr``, error reporting, the protocol, the end."""

    __slots__ = ()

    #: The epoll bit that shows the loop polling this end (``repr``'s polling/idle).
    _POLL_EVENT: int

    def _check_pipe(self, message):
        """The descriptor's mode, made non-blocking; ``ValueError(message)`` (with the
        transport released) for anything but a pipe, a socket or a character device."""
        mode = os.fstat(self._fileno).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            self._pipe = None
            self._fileno = None
            self._protocol = None
            self._core.release()
            raise ValueError(message)
        os.set_blocking(self._fileno, False)
        return mode

    def _repr_details(self):
        return []

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._pipe is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._fileno}")
        if self._pipe is not None and self._loop is not None and not self._loop.is_closed():
            polling = self._loop._fd_events(self._fileno) & self._POLL_EVENT
            info.append("polling" if polling else "idle")
            info += self._repr_details()
        elif self._pipe is not None:
            info.append("open")
        else:
            info.append("closed")
        return "<{}>".format(" ".join(info))

    def _is_quiet_error(self, exc):
        """Whether ``exc`` ends the pipe with a debug message only, not the handler: on
        the write end any OS error, the reader's doing (EPIPE)."""
        return isinstance(exc, OSError)

    def _fatal_error(self, exc, message="Fatal error on pipe transport"):
        if self._is_quiet_error(exc):
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
        self._close(exc)

    def set_protocol(self, protocol):
        self._protocol = protocol

    def get_protocol(self):
        return self._protocol

    def __del__(self, _warn=warnings.warn):
        if self._pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._pipe.close()

    def _call_connection_lost(self, exc):
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._pipe.close()
            self._pipe = None
            self._protocol = None
            self._loop = None
            self._core.release()


class ReadPipeTransport(_PipeEnd, transports.ReadTransport):
    """The read end of a pipe (or a socket or character device read as one)."""

    __module__ = "ferroloop"

    max_size = 256 * 1024  # What one read may return, as asyncio's.

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        self._extra["pipe"] = pipe
        self._loop = loop
        self._pipe = pipe
        self._fileno = pipe.fileno()
        self._core = ReadPipeCore(self, self._fileno)
        self._read_ready = self._core._read_ready
        self._protocol = protocol
        self._closing = False
        self._paused = False
        self._check_pipe("Pipe transport is for pipes/sockets only.")

        loop.call_soon(self._protocol.connection_made, self)
        # Reading starts only after connection_made() ran ...
        loop.call_soon(self._add_reader, self._fileno, self._read_ready)
        if waiter is not None:
            # ... and the waiter learns of the pipe only after connection_made() too.
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    _protocol = _core_attribute("protocol", "The protocol data is delivered to.")

    def _add_reader(self, fd, callback):
        # Scheduled at construction: a pause or close in between wins.
        if not self.is_reading():
            return
        self._loop._add_reader(fd, callback)

    def is_reading(self):
        return not self._paused and not self._closing

    _POLL_EVENT = 1  # readable

    def _on_eof(self):
        # Called by the core when every writer closed its end.
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._closing = True
        self._loop._remove_reader(self._fileno)
        self._loop.call_soon(self._protocol.eof_received)
        self._loop.call_soon(self._call_connection_lost, None)

    def pause_reading(self):
        if not self.is_reading():
            return
        self._paused = True
        self._loop._remove_reader(self._fileno)
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        if self._closing or not self._paused:
            return
        self._paused = False
        self._loop._add_reader(self._fileno, self._read_ready)
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def is_closing(self):
        return self._closing

    def close(self):
        if not self._closing:
            self._close(None)

    def _is_quiet_error(self, exc):
        # EIO is how a pty's reader learns that the other side closed: not worth more
        # than a debug message.
        return isinstance(exc, OSError) and exc.errno == errno.EIO

    def _close(self, exc):
        self._closing = True
        self._loop._remove_reader(self._fileno)
        self._loop.call_soon(self._call_connection_lost, exc)


class WritePipeTransport(_PipeEnd, transports._FlowControlMixin, transports.WriteTransport):
    """The write end of a pipe (or a socket or character device written as one)."""

    __module__ = "ferroloop"

    _conn_lost = _core_attribute("conn_lost", "Non-zero once the pipe is lost.")
    _closing = _core_attribute("closing", "Set by close(), write_eof(), abort().")

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra, loop)
        self._extra["pipe"] = pipe
        self._pipe = pipe
        self._fileno = pipe.fileno()
        self._core = WritePipeCore(self, loop, self._fileno)
        # The bound native methods, looked up once: user code calls write() per chunk
        # and StreamWriter.drain() calls is_closing() per drain.
        self.write = self._core.write
        self.is_closing = self._core.is_closing
        self._protocol = protocol

        mode = self._check_pipe("Pipe transport is only for pipes, sockets and character devices")
        is_fifo = stat.S_ISFIFO(mode)
        is_socket = stat.S_ISSOCK(mode)
        loop.call_soon(self._protocol.connection_made, self)

        # The write end of a pipe or socket becomes readable (EPOLLERR/EPOLLHUP) once
        # the reader has gone: watched, to close the transport then. Only after
        # connection_made() ran.
        if is_socket or (is_fifo and _FIFO_REPORTS_READER_GONE):
            loop.call_soon(self._watch_reader_gone)

        if waiter is not None:
            # Only wake up the waiter when connection_made() has been called.
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def _watch_reader_gone(self):
        # asyncio adds the reader unconditionally; a transport that ended before this
        # ran (abort(), or a close() with nothing queued) would leave it registered on
        # a closed descriptor, whose number the next pipe may get.
        if self._pipe is None or (self._closing and not self.get_write_buffer_size()):
            return
        self._loop._add_reader(self._fileno, self._read_ready)

    _POLL_EVENT = 2  # writable

    def _repr_details(self):
        return [f"bufsize={self.get_write_buffer_size()}"]

    def get_write_buffer_size(self):
        return self._core.get_write_buffer_size()

    def _read_ready(self):
        # The reader went away.
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        if self.get_write_buffer_size():
            self._close(BrokenPipeError())
        else:
            self._close()

    def write(self, data):
        """Write ``data`` now as far as the pipe takes it; queue the rest.

        (Instances bind the native method directly over this one, see __init__.)
        """
        self._core.write(data)

    def _write_ready(self):
        self._core._write_ready()

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self._closing:
            return
        assert self._pipe
        self._closing = True
        if not self.get_write_buffer_size():
            self._loop._remove_reader(self._fileno)
            self._loop.call_soon(self._call_connection_lost, None)

    def is_closing(self):
        return self._core.is_closing()

    def close(self):
        if self._pipe is not None and not self._closing:
            # Closing the write end is the EOF: write_eof() is all a pipe needs.
            self.write_eof()

    def abort(self):
        self._close(None)

    def _close(self, exc=None):
        self._closing = True
        if self.get_write_buffer_size():
            self._loop._remove_writer(self._fileno)
        self._core.clear_write_buffer()
        self._loop._remove_reader(self._fileno)
        self._loop.call_soon(self._call_connection_lost, exc)
