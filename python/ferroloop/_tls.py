"""TLS over ferroloop's transports: the once-per-connection half of ``SSLProtocol``.

The protocol is stock asyncio's ``sslproto.SSLProtocol`` state machine. Everything that
runs per record (feeding received bytes to the incoming ``MemoryBIO``, the read loop,
encrypting writes, sending records, flow control) is native, in
:class:`~ferroloop._ferroloop.SSLProtocolCore`; this module holds what runs once per
connection or on errors: construction, the end of the handshake, timeouts, the end of
the shutdown, ``connection_lost`` and error reporting, each behaving as stock's on the
running Python version (the differences are read off the installed ``asyncio.sslproto``).

The app-facing transport, :class:`_SSLProtocolTransport`, is an ``asyncio.Transport``
with stock's attributes; its ``write`` is the native method, bound per instance.
"""

from __future__ import annotations

import inspect
import ssl
import types
import warnings
from asyncio import base_events, constants, exceptions, sslproto, transports
from asyncio.log import logger
from asyncio.sslproto import AppProtocolState, SSLProtocolState

from ._ferroloop import SSLProtocolCore

__all__ = ["SSLProtocol", "start_tls"]

_SSLAgainErrors = (ssl.SSLWantReadError, ssl.SSLSyscallError)

# How stock differs between versions, asked of the stock code itself (a maintenance
# release may carry a fix back):
# 3.13+: _abort(exc) force-closes the transport with the error; before, _abort() aborts
# it (and the app transport's _force_close(exc) fails with a TypeError).
_ABORT_TAKES_EXC = len(inspect.signature(sslproto.SSLProtocol._abort).parameters) > 1
# 3.14+: the app transport is closing once the socket transport is.
_CLOSING_FOLLOWS_TRANSPORT = hasattr(sslproto.SSLProtocol, "_is_transport_closing")
# 3.14+: the shutdown timeout keeps running until connection_lost (a peer that does not
# read could otherwise hold the closing transport forever).
_SHUTDOWN_TIMEOUT_UNTIL_LOST = (
    "_check_shutdown_timeout" in sslproto.SSLProtocol._on_shutdown_complete.__code__.co_names
)


class _SSLProtocolTransport(transports._FlowControlMixin, transports.Transport):
    """The transport the app protocol of a TLS connection writes to."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(self, loop, ssl_protocol) -> None:
        # As stock: no _FlowControlMixin.__init__ (the limits are the protocol's).
        self._loop = loop
        self._ssl_protocol = ssl_protocol
        self._closed = False
        # The native write, bound once: write() runs per message.
        self.write = ssl_protocol._app_write

    def get_extra_info(self, name, default=None):
        """Get optional transport information."""
        return self._ssl_protocol._get_extra_info(name, default)

    def set_protocol(self, protocol) -> None:
        self._ssl_protocol._set_app_protocol(protocol)

    def get_protocol(self):
        return self._ssl_protocol._app_protocol

    if _CLOSING_FOLLOWS_TRANSPORT:

        def is_closing(self) -> bool:
            return self._closed or self._ssl_protocol._is_transport_closing()

    else:

        def is_closing(self) -> bool:
            return self._closed

    def close(self) -> None:
        """Close the transport: buffered data is flushed and the TLS session shut down
        (close_notify) before the connection closes; connection_lost(None) follows."""
        if not self._closed:
            self._closed = True
            self._ssl_protocol._start_shutdown()
        else:
            # A second close() lets go of the protocol, as stock does; the class's
            # write() then fails as stock's does.
            self._ssl_protocol = None
            self.__dict__.pop("write", None)

    def __del__(self, _warnings=warnings) -> None:
        if not self._closed:
            self._closed = True
            _warnings.warn(
                "unclosed transport <asyncio._SSLProtocolTransport object>", ResourceWarning
            )

    def is_reading(self) -> bool:
        return not self._ssl_protocol._app_reading_paused

    def pause_reading(self) -> None:
        """Stop delivering data to the protocol until resume_reading()."""
        self._ssl_protocol._pause_reading()

    def resume_reading(self) -> None:
        """Deliver data to the protocol again."""
        self._ssl_protocol._resume_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        """Set the high- and low-water marks of the write buffer, which decide when the
        protocol's pause_writing() and resume_writing() are called."""
        self._ssl_protocol._set_write_buffer_limits(high, low)
        self._ssl_protocol._control_app_writing()

    def get_write_buffer_limits(self):
        return (self._ssl_protocol._outgoing_low_water, self._ssl_protocol._outgoing_high_water)

    def get_write_buffer_size(self) -> int:
        """Bytes waiting to be encrypted or sent."""
        return self._ssl_protocol._get_write_buffer_size()

    def set_read_buffer_limits(self, high=None, low=None) -> None:
        """Set the high- and low-water marks of undecrypted input, which decide when
        the socket transport's reading is paused and resumed."""
        self._ssl_protocol._set_read_buffer_limits(high, low)
        self._ssl_protocol._control_ssl_reading()

    def get_read_buffer_limits(self):
        return (self._ssl_protocol._incoming_low_water, self._ssl_protocol._incoming_high_water)

    def get_read_buffer_size(self) -> int:
        """Received bytes not yet decrypted."""
        return self._ssl_protocol._get_read_buffer_size()

    @property
    def _protocol_paused(self):
        # loop.sendfile()'s fallback reads it to know whether the app is paused.
        return self._ssl_protocol._app_writing_paused

    def write(self, data) -> None:
        """Encrypt and send ``data`` (buffered until the handshake is done).

        (Instances bind the native method over this one, see __init__.)
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expecting a bytes-like instance, got {type(data).__name__}")
        if not data:
            return
        self._ssl_protocol._write_appdata((data,))

    def writelines(self, list_of_data) -> None:
        """Write every chunk of an iterable of bytes-like objects."""
        self._ssl_protocol._write_appdata(list_of_data)

    def write_eof(self):
        """TLS has no half-close here: always raises NotImplementedError, as stock."""
        raise NotImplementedError

    def can_write_eof(self) -> bool:
        return False

    if _ABORT_TAKES_EXC:

        def abort(self) -> None:
            """Close at once, dropping buffered data; connection_lost(None) follows."""
            self._force_close(None)

        def _force_close(self, exc) -> None:
            self._closed = True
            if self._ssl_protocol is not None:
                self._ssl_protocol._abort(exc)

    else:

        def abort(self) -> None:
            """Close at once, dropping buffered data; connection_lost(None) follows."""
            self._closed = True
            if self._ssl_protocol is not None:
                self._ssl_protocol._abort()

        def _force_close(self, exc) -> None:
            self._closed = True
            self._ssl_protocol._abort(exc)

    def _test__append_write_backlog(self, data) -> None:
        # CPython's own tests fill the backlog this way.
        self._ssl_protocol._append_write_backlog(data)


class SSLProtocol(SSLProtocolCore, sslproto.SSLProtocol):
    """asyncio's SSL protocol over the user's ``SSLContext``, its hot paths native.

    A subclass of stock's ``sslproto.SSLProtocol`` (so ``isinstance`` checks and code
    that patches the stock class, as CPython's own tests do, still see it), whose every
    method that touches the state is overridden here or natively; ``connection_made``
    is inherited (it records the transport and starts the handshake).
    """

    max_size = 256 * 1024  # The receive buffer, and the most one read decrypts.

    _handshake_start_time = None
    _handshake_timeout_handle = None
    _shutdown_timeout_handle = None

    def __init__(
        self,
        loop,
        app_protocol,
        sslcontext,
        waiter,
        server_side=False,
        server_hostname=None,
        call_connection_made=True,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ) -> None:
        if ssl_handshake_timeout is None:
            ssl_handshake_timeout = constants.SSL_HANDSHAKE_TIMEOUT
        elif ssl_handshake_timeout <= 0:
            raise ValueError(
                f"ssl_handshake_timeout should be a positive number, got {ssl_handshake_timeout}"
            )
        if ssl_shutdown_timeout is None:
            ssl_shutdown_timeout = constants.SSL_SHUTDOWN_TIMEOUT
        elif ssl_shutdown_timeout <= 0:
            raise ValueError(
                f"ssl_shutdown_timeout should be a positive number, got {ssl_shutdown_timeout}"
            )
        if not sslcontext:
            sslcontext = sslproto._create_transport_context(server_side, server_hostname)

        self._server_side = server_side
        self._server_hostname = server_hostname if server_hostname and not server_side else None
        self._sslcontext = sslcontext
        # More is added once the handshake is done (peercert, cipher, ...).
        self._extra = {"sslcontext": sslcontext}
        self._waiter = waiter
        self._loop = loop
        self._set_app_protocol(app_protocol)
        self._app_transport = None
        self._app_transport_created = False
        self._transport = None
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        incoming = ssl.MemoryBIO()
        outgoing = ssl.MemoryBIO()
        self._app_state = (
            AppProtocolState.STATE_INIT if call_connection_made else AppProtocolState.STATE_CON_MADE
        )
        sslobj = sslcontext.wrap_bio(
            incoming,
            outgoing,
            server_side=self._server_side,
            server_hostname=self._server_hostname,
        )
        self._init_ssl(sslobj, incoming, outgoing, self.max_size)
        self._set_read_buffer_limits()
        self._set_write_buffer_limits()
        self._get_app_transport()

    def _wakeup_waiter(self, exc=None) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        if not waiter.cancelled():
            if exc is not None:
                waiter.set_exception(exc)
            else:
                waiter.set_result(None)
        self._waiter = None

    def _get_app_transport(self):
        if self._app_transport is None:
            if self._app_transport_created:
                raise RuntimeError("Creating _SSLProtocolTransport twice")
            self._app_transport = _SSLProtocolTransport(self._loop, self)
            self._app_transport_created = True
        return self._app_transport

    if _CLOSING_FOLLOWS_TRANSPORT:

        def _is_transport_closing(self) -> bool:
            return self._transport is not None and self._transport.is_closing()

    # -- the socket transport's callbacks ------------------------------------------------

    def connection_lost(self, exc) -> None:
        """The socket transport is closed (``exc`` None for an EOF, abort or close)."""
        self._clear_write_backlog()
        self._outgoing.read()
        self._conn_lost += 1
        # Marked closed so that its finalizer does not warn.
        if self._app_transport is not None:
            self._app_transport._closed = True
        if self._state != SSLProtocolState.DO_HANDSHAKE and self._app_state in (
            AppProtocolState.STATE_CON_MADE,
            AppProtocolState.STATE_EOF,
        ):
            self._app_state = AppProtocolState.STATE_CON_LOST
            self._loop.call_soon(self._app_protocol.connection_lost, exc)
        self._set_state(SSLProtocolState.UNWRAPPED)
        self._transport = None
        self._app_transport = None
        self._app_protocol = None
        self._wakeup_waiter(exc)
        if self._shutdown_timeout_handle:
            self._shutdown_timeout_handle.cancel()
            self._shutdown_timeout_handle = None
        if self._handshake_timeout_handle:
            self._handshake_timeout_handle.cancel()
            self._handshake_timeout_handle = None

    def eof_received(self):
        """The peer closed its sending side of the TCP connection."""
        self._eof_received = True
        try:
            if self._loop.get_debug():
                logger.debug("%r received EOF", self)
            state = self._state
            if state == SSLProtocolState.DO_HANDSHAKE:
                self._on_handshake_complete(ConnectionResetError)
            elif state == SSLProtocolState.WRAPPED:
                self._set_state(SSLProtocolState.FLUSHING)
                if self._app_reading_paused:
                    return True
                self._do_flush()
            elif state == SSLProtocolState.FLUSHING:
                self._do_write()
                self._set_state(SSLProtocolState.SHUTDOWN)
                self._do_shutdown()
            elif state == SSLProtocolState.SHUTDOWN:
                self._do_shutdown()
        except Exception:
            self._transport.close()
            raise

    def _get_extra_info(self, name, default=None):
        if name in self._extra:
            return self._extra[name]
        if self._transport is not None:
            return self._transport.get_extra_info(name, default)
        return default

    # -- handshake -----------------------------------------------------------------------

    def _start_handshake(self) -> None:
        if self._loop.get_debug():
            logger.debug("%r starts SSL handshake", self)
            self._handshake_start_time = self._loop.time()
        else:
            self._handshake_start_time = None
        self._set_state(SSLProtocolState.DO_HANDSHAKE)
        self._handshake_timeout_handle = self._loop.call_later(
            self._ssl_handshake_timeout, self._check_handshake_timeout
        )
        self._do_handshake()

    def _check_handshake_timeout(self) -> None:
        if self._state == SSLProtocolState.DO_HANDSHAKE:
            self._fatal_error(
                ConnectionAbortedError(
                    f"SSL handshake is taking longer than {self._ssl_handshake_timeout} "
                    "seconds: aborting the connection"
                )
            )

    def _on_handshake_complete(self, handshake_exc) -> None:
        if self._handshake_timeout_handle is not None:
            self._handshake_timeout_handle.cancel()
            self._handshake_timeout_handle = None
        sslobj = self._sslobj
        try:
            if handshake_exc is not None:
                raise handshake_exc
            self._set_state(SSLProtocolState.WRAPPED)
            peercert = sslobj.getpeercert()
        except Exception as exc:
            handshake_exc = None
            self._set_state(SSLProtocolState.UNWRAPPED)
            if isinstance(exc, ssl.CertificateError):
                message = "SSL handshake failed on verifying the certificate"
            else:
                message = "SSL handshake failed"
            self._fatal_error(exc, message)
            self._wakeup_waiter(exc)
            return

        if self._loop.get_debug():
            elapsed = self._loop.time() - self._handshake_start_time
            logger.debug("%r: SSL handshake took %.1f ms", self, elapsed * 1e3)
        self._extra.update(
            peercert=peercert,
            cipher=sslobj.cipher(),
            compression=sslobj.compression(),
            ssl_object=sslobj,
        )
        if self._app_state == AppProtocolState.STATE_INIT:
            self._app_state = AppProtocolState.STATE_CON_MADE
            self._app_protocol.connection_made(self._get_app_transport())
        self._wakeup_waiter()
        self._do_read()

    # -- shutdown ------------------------------------------------------------------------

    def _start_shutdown(self) -> None:
        if self._state in (
            SSLProtocolState.FLUSHING,
            SSLProtocolState.SHUTDOWN,
            SSLProtocolState.UNWRAPPED,
        ):
            return
        if self._app_transport is not None:
            self._app_transport._closed = True
        if self._state == SSLProtocolState.DO_HANDSHAKE:
            if _ABORT_TAKES_EXC:
                self._abort(None)
            else:
                self._abort()
        else:
            self._set_state(SSLProtocolState.FLUSHING)
            self._shutdown_timeout_handle = self._loop.call_later(
                self._ssl_shutdown_timeout, self._check_shutdown_timeout
            )
            self._do_flush()

    def _check_shutdown_timeout(self) -> None:
        if self._state in (SSLProtocolState.FLUSHING, SSLProtocolState.SHUTDOWN):
            self._transport._force_close(exceptions.TimeoutError("SSL shutdown timed out"))

    if _SHUTDOWN_TIMEOUT_UNTIL_LOST:

        def _on_shutdown_complete(self, shutdown_exc) -> None:
            if shutdown_exc:
                if self._shutdown_timeout_handle is not None:
                    self._shutdown_timeout_handle.cancel()
                    self._shutdown_timeout_handle = None
                self._fatal_error(shutdown_exc)
                return
            self._loop.call_soon(self._transport.close)
            # close() waits for the socket transport to flush, which a peer that does
            # not read can delay forever: the timeout runs (or starts, when the peer
            # began the shutdown) until connection_lost().
            if self._shutdown_timeout_handle is None:
                self._shutdown_timeout_handle = self._loop.call_later(
                    self._ssl_shutdown_timeout, self._check_shutdown_timeout
                )

    else:

        def _on_shutdown_complete(self, shutdown_exc) -> None:
            if self._shutdown_timeout_handle is not None:
                self._shutdown_timeout_handle.cancel()
                self._shutdown_timeout_handle = None
            if shutdown_exc:
                self._fatal_error(shutdown_exc)
            else:
                self._loop.call_soon(self._transport.close)

    if _ABORT_TAKES_EXC:

        def _abort(self, exc) -> None:
            self._set_state(SSLProtocolState.UNWRAPPED)
            if self._transport is not None:
                self._transport._force_close(exc)

    else:

        def _abort(self) -> None:
            self._set_state(SSLProtocolState.UNWRAPPED)
            if self._transport is not None:
                self._transport.abort()

    # -- app protocol callbacks ----------------------------------------------------------

    def _call_eof_received(self) -> None:
        try:
            if self._app_state == AppProtocolState.STATE_CON_MADE:
                self._app_state = AppProtocolState.STATE_EOF
                if self._app_protocol.eof_received():
                    logger.warning(
                        "returning true from eof_received() has no effect when using ssl"
                    )
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Error calling eof_received()")

    # -- flow-control limits -------------------------------------------------------------

    def _set_write_buffer_limits(self, high=None, low=None) -> None:
        high, low = sslproto.add_flowcontrol_defaults(
            high, low, constants.FLOW_CONTROL_HIGH_WATER_SSL_WRITE
        )
        self._outgoing_high_water = high
        self._outgoing_low_water = low

    def _set_read_buffer_limits(self, high=None, low=None) -> None:
        high, low = sslproto.add_flowcontrol_defaults(
            high, low, constants.FLOW_CONTROL_HIGH_WATER_SSL_READ
        )
        self._incoming_high_water = high
        self._incoming_low_water = low

    # -- errors --------------------------------------------------------------------------

    def _fatal_error(self, exc, message="Fatal error on transport") -> None:
        if self._transport:
            self._transport._force_close(exc)
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        elif not isinstance(exc, exceptions.CancelledError):
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self._transport,
                    "protocol": self,
                }
            )


# loop.start_tls() is stock's own code (its checks, its pausing of the transport, 3.14's
# hand-over of a StreamReader's buffered bytes, its clean-up on cancellation), run with
# this module's SSLProtocol in place of asyncio's.
_stock_start_tls = base_events.BaseEventLoop.start_tls
start_tls = types.FunctionType(
    _stock_start_tls.__code__,
    {**_stock_start_tls.__globals__, "sslproto": types.SimpleNamespace(SSLProtocol=SSLProtocol)},
    _stock_start_tls.__name__,
    _stock_start_tls.__defaults__,
    _stock_start_tls.__closure__,
)
start_tls.__kwdefaults__ = _stock_start_tls.__kwdefaults__
start_tls.__qualname__ = "Loop.start_tls"
start_tls.__doc__ = _stock_start_tls.__doc__
