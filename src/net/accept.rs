//! The accept loop of servers (`create_server`, `create_unix_server`, `start_server`):
//! asyncio's `BaseSelectorEventLoop._accept_connection` and `_accept_connection2`, with
//! the syscalls and the per-connection scheduling native.
//!
//! [`Acceptor`] is the listening socket's reader callback. On each readiness report it
//! makes as many `accept4` calls as asyncio's loop makes `sock.accept()` calls (the
//! backlog; 3.14+: the backlog plus one, skipping connections aborted before they were
//! accepted), handles `EMFILE`, `ENFILE`, `ENOBUFS` and `ENOMEM` exactly as asyncio (report
//! "socket.accept() out of system resource", stop reading, serve again after
//! `constants.ACCEPT_RETRY_DELAY`), and raises any other error for the loop to report.
//!
//! Each accepted connection gets a `socket.socket` of the listener's family, type and
//! protocol, already non-blocking (`accept4(SOCK_NONBLOCK)` spares asyncio's
//! `setblocking(False)`), and `{"peername": address}`. asyncio then creates a Task per
//! connection running `_accept_connection2`, whose first step (next iteration) calls the
//! protocol factory and creates the transport, and which then waits on a future the
//! transport resolves after `connection_made`. Here the first step is an
//! [`AcceptedConnection`] scheduled with `call_soon` in the context the Task would have
//! had (a copy of the current one; 3.15: a copy of the server's), so the protocol factory
//! runs in the same iteration, in the same order relative to other callbacks, in an equal
//! context. The transport is created without that future: only the Task was waiting on
//! it, and its callbacks (the future's result, then the Task's wake-up, which ends it)
//! ran no code a program sees. What the Task made visible is gone: it is not in
//! `asyncio.all_tasks()` for the two iterations it lived, and `asyncio.current_task()` is
//! `None` in the protocol factory.
//!
//! Where that difference could matter, the loop does exactly what asyncio does
//! (`create_task(_accept_connection2(...))`): TLS servers (the transport's handshake
//! reports through that future), and loops with a task factory (which sees every task
//! created, and may start it eagerly). Errors of the protocol factory or the transport are
//! reported as asyncio reports them: through the exception handler in debug mode only
//! ("Error on transport creation for incoming connection"); the socket is then released
//! as asyncio's coroutine releases it, by dropping the last reference.

use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::py_cache::CachedAttr;

use super::sockaddr;

/// `asyncio.trsock.TransportSocket`: what the out-of-resources report carries.
static TRANSPORT_SOCKET: CachedAttr = CachedAttr::new("asyncio.trsock", "TransportSocket");
/// What makes the transport of an accepted connection (python/ferroloop/_transports.py).
static ACCEPTED_TRANSPORT: CachedAttr =
    CachedAttr::new("ferroloop._transports", "accepted_transport");
/// `asyncio.constants`, whose `ACCEPT_RETRY_DELAY` is read per use, as asyncio does.
static CONSTANTS: CachedAttr = CachedAttr::new("asyncio", "constants");
/// `asyncio.selector_events`, whose `logger` debug mode logs accepted connections to.
static SELECTOR_EVENTS: CachedAttr = CachedAttr::new("asyncio", "selector_events");

/// What asyncio's accept loop does differently between the versions ferroloop runs on.
struct AcceptRules {
    /// 3.14+: `backlog + 1` accept calls per readiness, and a connection aborted before
    /// it was accepted (`ECONNABORTED`) is skipped; before, it ends the round.
    extra_try_and_skip_aborted: bool,
    /// 3.15+: the server's context is the accept callback's last argument, and each
    /// connection runs in a copy of it.
    server_context: bool,
}

fn rules(py: Python<'_>) -> &'static AcceptRules {
    static RULES: PyOnceLock<AcceptRules> = PyOnceLock::new();
    RULES.get_or_init(py, || AcceptRules {
        extra_try_and_skip_aborted: py.version_info() >= (3, 14),
        server_context: py.version_info() >= (3, 15),
    })
}

fn is_exit(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// The accept callback's arguments, as asyncio's `_start_serving` registers them.
struct ServeArgs<'py> {
    all: &'py Bound<'py, PyTuple>,
    protocol_factory: Bound<'py, PyAny>,
    sock: Bound<'py, PyAny>,
    sslcontext: Bound<'py, PyAny>,
    server: Bound<'py, PyAny>,
    backlog: Bound<'py, PyAny>,
    handshake_timeout: Bound<'py, PyAny>,
    shutdown_timeout: Bound<'py, PyAny>,
    /// 3.15: the server's context (`None` for a server made without one).
    context: Option<Bound<'py, PyAny>>,
}

impl<'py> ServeArgs<'py> {
    fn parse(args: &'py Bound<'py, PyTuple>) -> PyResult<Self> {
        let with_context = rules(args.py()).server_context;
        let (protocol_factory, sock, sslcontext, server, backlog, handshake, shutdown) =
            args.get_slice(0, 7).extract()?;
        let context = if with_context {
            Some(args.get_item(7)?)
        } else {
            None
        };
        Ok(ServeArgs {
            all: args,
            protocol_factory,
            sock,
            sslcontext,
            server,
            backlog,
            handshake_timeout: handshake,
            shutdown_timeout: shutdown,
            context: context.filter(|c| !c.is_none()),
        })
    }

    /// How many connections one readiness report accepts at most: asyncio's
    /// `range(backlog)` (3.14+: `range(backlog + 1)`).
    fn tries(&self) -> PyResult<u64> {
        let backlog = self.backlog.extract::<i64>()?;
        let extra = i64::from(rules(self.backlog.py()).extra_try_and_skip_aborted);
        Ok(u64::try_from(backlog.saturating_add(extra)).unwrap_or(0))
    }
}

/// What one readiness report's accepts share.
struct Round<'py> {
    /// The connections' first step is native (not asyncio's Task).
    native: bool,
    /// The loop's `call_soon`, looked up at the first connection.
    call_soon: Option<Bound<'py, PyAny>>,
}

impl<'py> Round<'py> {
    fn call_soon(&mut self, event_loop: &Bound<'py, PyAny>) -> PyResult<&Bound<'py, PyAny>> {
        if self.call_soon.is_none() {
            let py = event_loop.py();
            self.call_soon = Some(event_loop.getattr(intern!(py, "call_soon"))?);
        }
        Ok(self.call_soon.as_ref().expect("looked up above"))
    }
}

/// The reader callback of one listening socket: asyncio's `_accept_connection`, native
/// (see the module documentation). Registered by `Loop._start_serving` with asyncio's
/// arguments, which it reads on every call, so the handle looks and reports as asyncio's.
#[pyclass(module = "ferroloop._ferroloop")]
pub struct Acceptor {
    event_loop: Option<Py<LoopCore>>,
    /// The listening socket's family, type and protocol: those of every connection.
    family: i32,
    sock_type: i32,
    proto: i32,
    /// TCP: connections get `TCP_NODELAY`, as asyncio's `_set_nodelay` decides.
    nodelay: bool,
    /// A Unix listener's address, which is every accepted connection's local address
    /// (Linux gives the connection the listener's address: `unix_stream_connect`), so
    /// `getsockname()` need not be asked per connection. `None` for other families.
    unix_sockname: Option<Py<PyAny>>,
}

impl Acceptor {
    fn event_loop<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        self.event_loop.as_ref().map(|l| l.bind(py).clone())
    }

    /// `accept4` failed with `err` (not `EINTR`). `Ok(true)`: try again (the next of the
    /// round's tries); `Ok(false)`: the round is over.
    fn failed(
        event_loop: &Bound<'_, LoopCore>,
        args: &ServeArgs<'_>,
        err: std::io::Error,
    ) -> PyResult<bool> {
        let py = event_loop.py();
        match err.raw_os_error() {
            Some(libc::EAGAIN) => Ok(false),
            Some(libc::ECONNABORTED) => Ok(rules(py).extra_try_and_skip_aborted),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                // Linux keeps reporting the socket readable: stop reading, and serve again
                // after a while, as asyncio does (once per failed accept).
                let context = PyDict::new(py);
                context.set_item("message", "socket.accept() out of system resource")?;
                context.set_item("exception", os_error(err).into_value(py))?;
                let socket = TRANSPORT_SOCKET.get(py)?.call1((&args.sock,))?;
                context.set_item("socket", socket)?;
                let event_loop = event_loop.as_any();
                event_loop.call_method1(intern!(py, "call_exception_handler"), (context,))?;
                let fd = args.sock.call_method0(intern!(py, "fileno"))?;
                event_loop.call_method1(intern!(py, "_remove_reader"), (fd,))?;
                let delay = CONSTANTS
                    .get(py)?
                    .getattr(intern!(py, "ACCEPT_RETRY_DELAY"))?;
                let restart = event_loop.getattr(intern!(py, "_start_serving"))?;
                let mut later = vec![delay, restart];
                later.extend(args.all.iter());
                event_loop.call_method1(intern!(py, "call_later"), PyTuple::new(py, later)?)?;
                Ok(true)
            }
            _ => Err(os_error(err)),
        }
    }

    /// One accepted connection: its socket object, then the first step of asyncio's
    /// `_accept_connection2` scheduled for the next iteration.
    fn accepted<'py>(
        &self,
        event_loop: &Bound<'py, LoopCore>,
        args: &ServeArgs<'py>,
        accepted: sockaddr::Accepted,
        round: &mut Round<'py>,
    ) -> PyResult<()> {
        let native = round.native;
        let py = event_loop.py();
        let addr = accepted.peer.to_python(py)?;
        // Non-blocking already (accept4's flag): the type says so, and the socket object
        // is made in the state asyncio's `setblocking(False)` leaves it in.
        let fd = accepted.fd.as_raw_fd();
        let sock_type = self.sock_type | libc::SOCK_NONBLOCK;
        let conn = super::socket_object::new_socket(py, self.family, sock_type, self.proto, fd)?;
        // The socket object owns the descriptor now.
        let _ = accepted.fd.into_raw_fd();
        let loop_any = event_loop.as_any();
        if event_loop.get().debug() {
            SELECTOR_EVENTS
                .get(py)?
                .getattr(intern!(py, "logger"))?
                .call_method1(
                    intern!(py, "debug"),
                    (
                        "%r got a new connection from %r: %r",
                        &args.server,
                        &addr,
                        &conn,
                    ),
                )?;
        }
        let extra = PyDict::new(py);
        extra.set_item(intern!(py, "peername"), addr)?;
        let conn_context = match &args.context {
            Some(context) => Some(context.call_method0(intern!(py, "copy"))?),
            None => None,
        };
        if native {
            let step = AcceptedConnection {
                event_loop: Some(loop_any.clone().unbind()),
                protocol_factory: Some(args.protocol_factory.clone().unbind()),
                conn: Some(conn.unbind()),
                fd,
                nodelay: self.nodelay,
                sockname: self.unix_sockname.as_ref().map(|s| s.clone_ref(py)),
                extra: Some(extra.unbind()),
                server: Some(args.server.clone().unbind()),
                context: conn_context.as_ref().map(|c| c.clone().unbind()),
            };
            let step = Bound::new(py, step)?;
            let call_soon = round.call_soon(loop_any)?;
            match conn_context {
                Some(context) => {
                    let kwargs = PyDict::new(py);
                    kwargs.set_item(intern!(py, "context"), context)?;
                    call_soon.call((step,), Some(&kwargs))?;
                }
                None => {
                    call_soon.call1((step,))?;
                }
            }
            return Ok(());
        }
        // asyncio's own tail: a Task running `_accept_connection2`.
        let second = (
            &args.protocol_factory,
            conn,
            extra,
            &args.sslcontext,
            &args.server,
            &args.handshake_timeout,
            &args.shutdown_timeout,
        );
        let (coro, task_kwargs) = if rules(py).server_context {
            let kwargs = PyDict::new(py);
            kwargs.set_item(intern!(py, "context"), conn_context)?;
            let coro =
                loop_any.call_method(intern!(py, "_accept_connection2"), second, Some(&kwargs))?;
            (coro, Some(kwargs))
        } else {
            let coro = loop_any.call_method1(intern!(py, "_accept_connection2"), second)?;
            (coro, None)
        };
        loop_any.call_method(intern!(py, "create_task"), (coro,), task_kwargs.as_ref())?;
        Ok(())
    }
}

#[pymethods]
impl Acceptor {
    /// The accept callback of a listening socket of `family`, `sock_type` and `proto`
    /// (plain ints), served by `event_loop`; for a Unix socket, `unix_sockname` is its
    /// `getsockname()`.
    #[new]
    #[pyo3(signature = (event_loop, family, sock_type, proto, unix_sockname=None))]
    fn new(
        event_loop: Py<LoopCore>,
        family: i32,
        sock_type: i32,
        proto: i32,
        unix_sockname: Option<Py<PyAny>>,
    ) -> Self {
        let nodelay = matches!(family, libc::AF_INET | libc::AF_INET6)
            && sock_type == libc::SOCK_STREAM
            && proto == libc::IPPROTO_TCP;
        Acceptor {
            event_loop: Some(event_loop),
            family,
            sock_type,
            proto,
            nodelay,
            unix_sockname: unix_sockname.filter(|_| family == libc::AF_UNIX),
        }
    }

    /// The name asyncio's callback has, for the handle's repr and the loop's reports
    /// ("Exception in callback BaseSelectorEventLoop._accept_connection(...)").
    #[getter]
    fn __qualname__(&self) -> &'static str {
        "BaseSelectorEventLoop._accept_connection"
    }

    /// One readiness report of the listening socket: accept what is queued (see the
    /// module documentation). `args` are asyncio's: `(protocol_factory, sock,
    /// sslcontext, server, backlog, ssl_handshake_timeout, ssl_shutdown_timeout)`, and
    /// on 3.15 the server's context.
    #[pyo3(signature = (*args))]
    fn __call__(&self, args: &Bound<'_, PyTuple>) -> PyResult<()> {
        let py = args.py();
        let Some(event_loop) = self.event_loop(py) else {
            return Ok(());
        };
        let args = ServeArgs::parse(args)?;
        let tries = args.tries()?;
        // TLS connections and loops with a task factory keep asyncio's Task.
        let native = !args.sslcontext.is_truthy()?
            && event_loop
                .as_any()
                .getattr(intern!(py, "_task_factory"))?
                .is_none();
        let fileno = intern!(py, "fileno");
        let mut round = Round {
            native,
            call_soon: None,
        };
        for _ in 0..tries {
            // Asked each time, as `sock.accept()` does: a callback run in between (an
            // exception handler, a log handler) may have closed the socket.
            let fd: i32 = args.sock.call_method0(fileno)?.extract()?;
            match sockaddr::accept(fd, || py.check_signals())? {
                Ok(accepted) => self.accepted(&event_loop, &args, accepted, &mut round)?,
                Err(err) => {
                    if !Self::failed(&event_loop, &args, err)? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.unix_sockname)
    }

    fn __clear__(&mut self) {
        self.event_loop = None;
        self.unix_sockname = None;
    }
}

/// The first step of an accepted connection, run in the iteration after the accept:
/// `protocol_factory()`, then the transport, as asyncio's `_accept_connection2` does
/// (without the future only its Task waited on; see the module documentation).
#[pyclass(module = "ferroloop._ferroloop")]
pub struct AcceptedConnection {
    event_loop: Option<Py<PyAny>>,
    protocol_factory: Option<Py<PyAny>>,
    conn: Option<Py<PyAny>>,
    /// `conn`'s descriptor.
    fd: RawFd,
    /// Set `TCP_NODELAY` (a TCP connection).
    nodelay: bool,
    /// The local address, when known without asking (see [`Acceptor`]).
    sockname: Option<Py<PyAny>>,
    /// `{"peername": address}`, which the transport's `extra` becomes.
    extra: Option<Py<PyDict>>,
    server: Option<Py<PyAny>>,
    /// 3.15: the connection's context, which its transport's callbacks run in.
    context: Option<Py<PyAny>>,
}

impl AcceptedConnection {
    /// Debug mode reports what went wrong, as asyncio's `_accept_connection2`; otherwise
    /// nothing is reported.
    fn report(
        event_loop: &Bound<'_, PyAny>,
        err: PyErr,
        protocol: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = event_loop.py();
        if is_exit(py, &err) {
            return Err(err);
        }
        let debug = event_loop.cast::<LoopCore>().map(|l| l.get().debug());
        if !debug.unwrap_or(false) {
            return Ok(());
        }
        let context = PyDict::new(py);
        context.set_item(
            "message",
            "Error on transport creation for incoming connection",
        )?;
        context.set_item("exception", err.into_value(py))?;
        if let Some(protocol) = protocol {
            context.set_item("protocol", protocol)?;
        }
        event_loop.call_method1(intern!(py, "call_exception_handler"), (context,))?;
        Ok(())
    }
}

/// What the transport of an accepted connection is made of.
struct ConnectionParts<'a, 'py> {
    event_loop: &'a Bound<'py, PyAny>,
    conn: &'a Bound<'py, PyAny>,
    fd: RawFd,
    nodelay: bool,
    sockname: Option<Bound<'py, PyAny>>,
    protocol: &'a Bound<'py, PyAny>,
    extra: &'a Bound<'py, PyDict>,
    server: Option<&'a Bound<'py, PyAny>>,
    context: Option<&'a Bound<'py, PyAny>>,
}

impl ConnectionParts<'_, '_> {
    /// `loop._make_socket_transport(conn, protocol, extra=..., server=...)`, as
    /// `SocketTransport.__init__` would make it: the checks and syscalls native, the rest
    /// `_transports.accepted_transport`.
    fn transport(self) -> PyResult<()> {
        let py = self.event_loop.py();
        self.ensure_no_transport()?;
        if self.nodelay {
            set_nodelay(self.fd).map_err(os_error)?;
        }
        // `TransportSocket(conn)`, whose `__init__` only stores the socket.
        let socket_type = TRANSPORT_SOCKET.get(py)?;
        let socket = socket_type.call_method1(intern!(py, "__new__"), (socket_type,))?;
        socket.setattr(intern!(py, "_sock"), self.conn)?;
        self.extra.set_item(intern!(py, "socket"), socket)?;
        let sockname = match &self.sockname {
            Some(known) => known.clone(),
            None => match sockaddr::local_address(self.fd) {
                Ok(address) => address.to_python(py)?,
                Err(_) => py.None().into_bound(py),
            },
        };
        self.extra.set_item(intern!(py, "sockname"), sockname)?;
        ACCEPTED_TRANSPORT.get(py)?.call1((
            self.event_loop,
            self.conn,
            self.fd,
            self.protocol,
            self.extra,
            self.server,
            self.context,
        ))?;
        Ok(())
    }

    /// asyncio's `_ensure_fd_no_transport` (3.12+ make that check here): the descriptor
    /// must not belong to a transport that is still open (its socket was closed behind
    /// its back, and the number reused). Only an entry in the loop's registry needs
    /// asyncio's own check, with its message.
    fn ensure_no_transport(&self) -> PyResult<()> {
        let py = self.event_loop.py();
        if !checks_fd_registry(py)? {
            return Ok(());
        }
        let registry = self.event_loop.getattr(intern!(py, "_transports"))?;
        if super::registry::is_weak_value_dictionary(&registry)? {
            let data = registry
                .getattr(intern!(py, "data"))?
                .cast_into::<PyDict>()?;
            if data.get_item(self.fd)?.is_none() {
                return Ok(());
            }
        }
        self.event_loop
            .call_method1(intern!(py, "_ensure_fd_no_transport"), (self.conn,))?;
        Ok(())
    }
}

/// Whether asyncio's `_make_socket_transport` refuses a descriptor an open transport
/// holds (3.12+; asked of its code, in case a maintenance release backports it).
fn checks_fd_registry(py: Python<'_>) -> PyResult<bool> {
    static CHECKS: PyOnceLock<bool> = PyOnceLock::new();
    CHECKS
        .get_or_try_init(py, || {
            SELECTOR_EVENTS
                .get(py)?
                .getattr("BaseSelectorEventLoop")?
                .getattr("_make_socket_transport")?
                .getattr("__code__")?
                .getattr("co_names")?
                .contains("_ensure_fd_no_transport")
        })
        .copied()
}

/// `setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, 1)`.
fn set_nodelay(fd: RawFd) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and the length passed is its size; a bad
    // descriptor is an error, nothing more.
    let done = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[pymethods]
impl AcceptedConnection {
    /// Runs the step (once; a second call does nothing).
    fn __call__(&mut self, py: Python<'_>) -> PyResult<()> {
        let (Some(event_loop), Some(protocol_factory), Some(conn), Some(extra)) = (
            self.event_loop.take(),
            self.protocol_factory.take(),
            self.conn.take(),
            self.extra.take(),
        ) else {
            return Ok(());
        };
        let server = self.server.take();
        let context = self.context.take();
        let event_loop = event_loop.into_bound(py);
        let protocol = match protocol_factory.bind(py).call0() {
            Ok(protocol) => protocol,
            Err(err) => return Self::report(&event_loop, err, None),
        };
        let transport = ConnectionParts {
            event_loop: &event_loop,
            conn: conn.bind(py),
            fd: self.fd,
            nodelay: self.nodelay,
            sockname: self.sockname.take().map(|s| s.into_bound(py)),
            protocol: &protocol,
            extra: extra.bind(py),
            server: server.as_ref().map(|s| s.bind(py)),
            context: context.as_ref().map(|c| c.bind(py)),
        }
        .transport();
        match transport {
            Ok(()) => Ok(()),
            Err(err) => Self::report(&event_loop, err, Some(&protocol)),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.protocol_factory)?;
        visit.call(&self.conn)?;
        visit.call(&self.extra)?;
        visit.call(&self.server)?;
        visit.call(&self.sockname)?;
        visit.call(&self.context)
    }

    fn __clear__(&mut self) {
        self.event_loop = None;
        self.sockname = None;
        self.protocol_factory = None;
        self.conn = None;
        self.extra = None;
        self.server = None;
        self.context = None;
    }
}
