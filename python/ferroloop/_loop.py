"""``ferroloop.Loop``: the native loop core plus asyncio's own cold paths.

The class inherits from the native :class:`~ferroloop._ferroloop.LoopCore` first, so
scheduling, the run loop, ``time()``, ``create_future()``, ``stop()`` and the debug flag
are Rust; and from :class:`asyncio.BaseEventLoop` second, so task creation and task
factories, exception handlers, executors, ``run_until_complete``, async-generator
shutdown and everything else not on the hot path is the stock implementation, with the
stock behaviour and error messages by construction.

What is written here is the glue those two halves need: ``run_forever``'s set-up and
tear-down around the native loop body, ``close``, and the signal wake-up descriptor.
"""

from __future__ import annotations

import collections.abc
import errno
import functools
import os
import selectors
import signal
import sys
import threading
import warnings
import weakref
from asyncio import (
    base_events,
    constants,
    coroutines,
    events,
    selector_events,
    unix_events,
)
from asyncio.log import logger

from . import _observe, _servers, _subprocess, _tls
from ._datagram import DatagramTransport
from ._ferroloop import Handle, LoopCore, SocketOperation
from ._pipes import ReadPipeTransport, WritePipeTransport
from ._transports import SocketTransport

__all__ = ["Loop"]

# Whether the C Future and Task look ``loop.call_soon`` up by attribute (see __init__).
_BIND_CALL_SOON = sys.version_info < (3, 12)


# What asyncio's add_signal_handler asks: 3.14 deprecated the public
# asyncio.iscoroutinefunction and calls the private twin, which does not warn.
_iscoroutinefunction = getattr(coroutines, "_iscoroutinefunction", coroutines.iscoroutinefunction)


class Loop(LoopCore, base_events.BaseEventLoop):
    """An asyncio event loop whose core is written in Rust."""

    __module__ = "ferroloop"

    def __init__(self) -> None:
        base_events.BaseEventLoop.__init__(self)
        # The pure-Python scheduler's queues: the native core keeps its own, and stale
        # empty copies would only mislead code that inspects them.
        del self._ready, self._scheduled, self._timer_cancelled_count
        self._old_agen_hooks = None
        self._old_wakeup_fd: int | None = None
        self._signal_handlers: dict[int, Handle] = {}
        # fd -> transport owning it; add_reader & co. refuse those descriptors.
        self._transports: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        # Unix server socket -> inode of its file, for 3.13's cleanup on close.
        self._unix_server_sockets: dict = {}
        # pidfd -> pid of each child whose exit is being watched (see _subprocess).
        self._child_pidfds: dict[int, int] = {}
        if _BIND_CALL_SOON and type(self).call_soon is LoopCore.call_soon:
            # 3.11's C Future and Task look ``loop.call_soon`` up as an attribute for
            # every callback they schedule, which builds a bound method each time; one
            # bound method in the instance dict is found and reused instead (3.12+ call
            # the method without binding it). A subclass's override is left alone, and
            # close() drops the binding with the reference cycle it makes.
            self.call_soon = self.call_soon
        _observe.loop_created(self)

    stats = _observe.stats

    # -- running -----------------------------------------------------------------------

    def run_forever(self) -> None:
        """Run until :meth:`stop` is called."""
        # Checked before the try: a refused nested call must not tear down the state of
        # the run that is already going (CPython 3.13.0 regressed on exactly this).
        self._check_closed()
        self._check_running()
        try:
            self._run_forever_setup()
            self._run_forever_core()
        finally:
            self._run_forever_cleanup()

    def _run_forever_setup(self) -> None:
        # The hook pair CPython 3.13 introduced for loops embedded in GUI toolkits;
        # provided on every version so such integrations work here too.
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        self._old_agen_hooks = sys.get_asyncgen_hooks()
        self._thread_id = threading.get_ident()
        sys.set_asyncgen_hooks(
            firstiter=self._asyncgen_firstiter_hook,
            finalizer=self._asyncgen_finalizer_hook,
        )
        self._install_signal_wakeup()
        events._set_running_loop(self)

    def _run_forever_cleanup(self) -> None:
        self._stopping = False
        self._thread_id = None
        events._set_running_loop(None)
        self._set_coroutine_origin_tracking(False)
        self._restore_signal_wakeup()
        if self._old_agen_hooks is not None:
            sys.set_asyncgen_hooks(*self._old_agen_hooks)
            self._old_agen_hooks = None

    def _install_signal_wakeup(self) -> None:
        # CPython's C signal handler writes the signal number to the wake-up fd; with our
        # socket there the poller wakes even when the signal lands on another thread,
        # and Python's handler (KeyboardInterrupt, asyncio.Runner's SIGINT handler) then
        # runs right after the poll. Only the main thread may set it.
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            self._old_wakeup_fd = signal.set_wakeup_fd(self._signal_wakeup_fd())
        except (ValueError, OSError):
            self._old_wakeup_fd = None

    def _restore_signal_wakeup(self) -> None:
        if self._old_wakeup_fd is None:
            return
        old, self._old_wakeup_fd = self._old_wakeup_fd, None
        if self._signal_handlers:
            # add_signal_handler() needs the wake-up fd between runs too.
            return
        try:
            signal.set_wakeup_fd(old)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd(%s) failed: %s", old, exc)

    # -- file descriptor callbacks ----------------------------------------------------------

    @property
    def _selector(self) -> _SelectorView | None:
        # asyncio's transports ask the selector what they are registered for (in their
        # repr()); this answers from the native registry. None once closed, as there.
        return None if self.is_closed() else _SelectorView(self)

    def add_reader(self, fd, callback, *args) -> None:
        """Call ``callback(*args)`` on every iteration while ``fd`` is readable."""
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def remove_reader(self, fd) -> bool:
        """Stop watching ``fd`` for reading; return True if it was watched."""
        self._ensure_fd_no_transport(fd)
        return self._remove_reader(fd)

    def add_writer(self, fd, callback, *args) -> None:
        """Call ``callback(*args)`` on every iteration while ``fd`` is writable."""
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_writer(self, fd) -> bool:
        """Stop watching ``fd`` for writing; return True if it was watched."""
        self._ensure_fd_no_transport(fd)
        return self._remove_writer(fd)

    # -- socket operations -----------------------------------------------------------------

    # sock_recv, sock_recv_into and sock_sendall are native (LoopCore,
    # src/net/sock_op.rs): they try the syscall directly, and a plain socket's reads also
    # wait natively, through an edge reader (the socket's epoll registration is kept
    # between operations; see src/event_loop/fd_callbacks.rs). These are the waits of
    # the other cases (socket subclasses, reads the socket's own recv must make, a
    # sock_sendall that would block), for the future to wait on: asyncio's, with a
    # level-triggered reader, since a subclass's recv may report "would block" while data
    # is queued. The rest of the sock_* family is asyncio's code as is (adopted below).

    def _sock_read_wait(self, sock, on_readable, arg):
        # on_readable: asyncio's _sock_recv/_sock_recv_into, which retry the read on
        # every readiness and resolve the future.
        fut = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        handle = self._add_reader(fd, on_readable, fut, sock, arg)
        fut.add_done_callback(functools.partial(self._sock_read_done, fd, handle=handle))
        return fut

    def _sock_sendall_wait(self, sock, data, sent):
        fut = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        # asyncio's writer callback, with its mutable position in a list.
        handle = self._add_writer(fd, self._sock_sendall, fut, sock, memoryview(data), [sent])
        fut.add_done_callback(functools.partial(self._sock_write_done, fd, handle=handle))
        return fut

    # -- transports ----------------------------------------------------------------------

    def _make_socket_transport(
        self, sock, protocol, waiter=None, *, extra=None, server=None, context=None
    ):
        # `context`: 3.15's, passed for every connection (see SocketTransport).
        self._ensure_fd_no_transport(sock)
        return SocketTransport(self, sock, protocol, waiter, extra, server, context)

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        self._ensure_fd_no_transport(sock)
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    def _make_ssl_transport(
        self,
        rawsock,
        protocol,
        sslcontext,
        waiter=None,
        *,
        server_side=False,
        server_hostname=None,
        extra=None,
        server=None,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
        context=None,
    ):
        # TLS is ferroloop's SSLProtocol (stock's state machine, its per-record work
        # native) over a plain socket transport, driving the user's own SSLContext.
        self._ensure_fd_no_transport(rawsock)
        ssl_protocol = _tls.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server, context=context)
        return ssl_protocol._app_transport

    # Upgrading a connection: stock's start_tls, with ferroloop's SSLProtocol.
    start_tls = _tls.start_tls

    # Pipes (and so the stdio of subprocesses, which asyncio connects through
    # connect_read_pipe/connect_write_pipe): native transports with asyncio's semantics.
    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return WritePipeTransport(self, pipe, protocol, waiter, extra)

    # Subprocesses: asyncio's transport, ferroloop's own child-exit watching (pidfds in
    # the poller; no child watcher, on any version).
    _make_subprocess_transport = _subprocess.make_subprocess_transport
    _child_watcher_callback = _subprocess.child_exited

    def _stop_serving(self, sock) -> None:
        # A listening socket of a server being closed. Unix server sockets recorded by
        # create_unix_server (3.13's cleanup_socket) also get their file removed, if it
        # is still the one the server created.
        path = sock.getsockname() if sock in self._unix_server_sockets else None
        self._remove_reader(sock.fileno())
        sock.close()
        if path is None:
            return
        inode = self._unix_server_sockets.pop(sock)
        try:
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.error("Unable to clean up listening UNIX socket %r: %r", path, exc)

    # -- signals (the behaviour of asyncio's Unix loop) ------------------------------------

    def add_signal_handler(self, sig: int, callback, *args) -> None:
        """Run ``callback(*args)`` on the loop whenever signal ``sig`` arrives.

        Raise ValueError if the signal number is invalid or uncatchable, RuntimeError
        if the handler cannot be set up (e.g. not in the main thread).
        """
        if coroutines.iscoroutine(callback) or _iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            # Raises ValueError outside the main thread: checked before anything changes.
            signal.set_wakeup_fd(self._signal_wakeup_fd())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from None

        self._signal_handlers[sig] = self._new_handle(callback, args, None)
        self._set_signal_watch(True)
        try:
            # Python's C handler writes the signal number to the wake-up fd; the loop
            # reads it there and schedules the handle (see _process_self_data).
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                self._set_signal_watch(False)
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    logger.info("set_wakeup_fd(-1) failed: %s", nexc)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught") from None
            raise

    def remove_signal_handler(self, sig: int) -> bool:
        """Remove the handler for ``sig``; return True if there was one."""
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught") from None
            raise
        if not self._signal_handlers:
            self._set_signal_watch(False)
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                logger.info("set_wakeup_fd(-1) failed: %s", exc)
        return True

    def _check_signal(self, sig: int) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def _process_self_data(self, data: bytes) -> None:
        # Called by the native loop with the signal numbers read from the wake-up fd.
        for signum in data:
            if signum:
                self._handle_signal(signum)

    def _handle_signal(self, sig: int) -> None:
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return  # Removed while the signal was in flight.
        if handle.cancelled():
            self.remove_signal_handler(sig)
        else:
            self._add_callback_signalsafe(handle)

    def _add_callback_signalsafe(self, handle: Handle) -> None:
        self._add_callback(handle)
        self._write_to_self()

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the loop: drop pending callbacks, release the poller, and shut the
        default executor down without waiting. The loop must not be running."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        if self._debug:
            logger.debug("Close %r", self)
        # Signal handlers first: they need the wake-up descriptor _close_core releases.
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(
                f"Closing the loop {self!r} on interpreter shutdown stage, "
                "skipping signal handlers removal",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )
            self._signal_handlers.clear()
        self._close_core()
        _subprocess.loop_closed(self)
        self.__dict__.pop("call_soon", None)
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)


# Defined by LoopCore; adopting asyncio's versions onto Loop would shadow them.
_NATIVE_SOCK_METHODS = frozenset({"sock_recv", "sock_recv_into", "sock_sendall"})

# What they return acts as the coroutine asyncio's `async def` versions return.
collections.abc.Coroutine.register(SocketOperation)


def _adopt(source: type, wanted) -> None:
    """Give Loop the methods of ``source`` whose names ``wanted`` accepts, unless Loop
    defines its own. They run unchanged on top of the native ``_add_reader``/
    ``_add_writer``/``_remove_*``, exactly as they do on the stock selector loop."""
    for name, value in vars(source).items():
        if wanted(name) and name not in vars(Loop):
            # Zero-argument super() inside would be bound to `source`, not Loop.
            code = getattr(value, "__code__", None)
            if code is not None and "__class__" in code.co_freevars:
                raise TypeError(f"{source.__name__}.{name} uses super(): define it on Loop")
            setattr(Loop, name, value)


# asyncio's socket operations (sock_recv, sock_sendall, sock_connect, sock_accept, ...):
# try the syscall, and only when it would block wait through a reader/writer callback,
# with asyncio's cancellation and error handling. The zero-copy sock_sendfile path is the
# Unix loop's (os.sendfile driven by add_writer). Names differ between Python versions,
# hence the adoption by prefix rather than a fixed list.
_adopt(
    selector_events.BaseSelectorEventLoop,
    lambda name: (
        (name.startswith(("sock_", "_sock_")) and name not in _NATIVE_SOCK_METHODS)
        or name == "_ensure_fd_no_transport"
    ),
)
_adopt(unix_events._UnixSelectorEventLoop, lambda name: name.startswith("_sock_"))

# Servers: asyncio's selector-loop implementations, driving their sockets through the
# same native reader/writer layer (stream, pipe and datagram transports and
# _stop_serving are ferroloop's own, defined on Loop above; the accept loop is native,
# see _servers, with asyncio's _accept_connection* kept for what it does not serve).
# The Unix loop adds Unix-socket endpoints and the os.sendfile transport path.
_adopt(
    unix_events._UnixSelectorEventLoop,
    lambda name: name.startswith(("_make_", "create_unix_")),
)
_adopt(
    selector_events.BaseSelectorEventLoop,
    lambda name: (
        (name.startswith(("_make_", "_accept_connection")) and name != "_make_self_pipe")
        or name == "_sendfile_native"
    ),
)
_servers.adopt(Loop)


# stats() counts open servers: the methods that make them record what they made.
Loop.create_server = _observe.tracking_servers(base_events.BaseEventLoop.create_server)
Loop.create_unix_server = _observe.tracking_servers(Loop.create_unix_server)


class _SelectorView:
    """The read-only part of a ``selectors.BaseSelector`` that asyncio's transports
    consult: ``get_key(fd).events`` and ``get_map()``, over the native fd registry."""

    __slots__ = ("_loop",)

    def __init__(self, loop: Loop) -> None:
        self._loop = loop

    def get_key(self, fd: int) -> selectors.SelectorKey:
        events = self._loop._fd_events(fd)
        if not events:
            raise KeyError(f"{fd!r} is not registered")
        return selectors.SelectorKey(fd, fd, events, None)

    def get_map(self) -> _SelectorMapView:
        return _SelectorMapView(self)


class _SelectorMapView:
    """``get_map()``'s result, enough for ``.get(fd)`` lookups."""

    __slots__ = ("_selector",)

    def __init__(self, selector: _SelectorView) -> None:
        self._selector = selector

    def get(self, fd: int, default=None):
        try:
            return self._selector.get_key(fd)
        except KeyError:
            return default

    def __getitem__(self, fd: int) -> selectors.SelectorKey:
        return self._selector.get_key(fd)


def _sighandler_noop(signum, frame):
    """Python-level no-op: the C handler's write to the wake-up fd does the work."""
