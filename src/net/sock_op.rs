//! [`SocketOperation`]: what `loop.sock_recv()`, `loop.sock_recv_into()` and
//! `loop.sock_sendall()` return.
//!
//! asyncio's versions are `async def` methods: every call creates a coroutine and a
//! frame, and every `recv` that finds no data raises and catches a `BlockingIOError`.
//! Here the call returns a small native awaitable that behaves as that coroutine does:
//! registered as a `collections.abc.Coroutine` (so `create_task`, `gather` and
//! `asyncio.iscoroutine` accept it), it runs the same checks on its first step, tries the
//! syscall directly (for plain non-blocking `socket.socket` objects), and only when the
//! socket would block waits on a future, yielded to the task exactly as `await future`
//! does, and returns the future's result. Returning needs no exception where the
//! interpreter allows it: 3.11's `await` takes the result through the `am_send` slot
//! ([`NativeAwaitable`]), and a `None` result ends `__next__` without a `StopIteration`.
//!
//! How it waits: a plain socket's `sock_recv`/`sock_recv_into` installs a
//! [`RecvWhenReadable`] as the socket's edge reader, which reads (into the loop's scratch
//! buffer, or the caller's) when the socket becomes readable and resolves the future;
//! the operation removes that reader when it resumes or is abandoned. asyncio instead
//! calls `sock.recv(nbytes)` on readiness, which allocates `nbytes` (often 256 KiB) and
//! shrinks it for every message, and removes the reader from a done-callback: a second
//! scheduled callback per wait. Every other case (socket subclasses, `sock_sendall` that
//! would block) uses asyncio's own waiting code in Python (`_sock_read_wait` /
//! `_sock_sendall_wait`).

use std::io::ErrorKind;
use std::os::fd::RawFd;

use ferroloop_reactor::stream_io;
use pyo3::exceptions::{PyBaseException, PyBlockingIOError, PyInterruptedError, PyRuntimeError};
use pyo3::exceptions::{PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyTuple, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::event_loop::handle::Handle;
use crate::event_loop::LoopCore;
use crate::ffi::{self, NativeAwaitable, SendOutcome};
use crate::py_cache::{CHECK_SSL_SOCKET, SOCKET_TYPE};
use crate::transport::{with_read_scratch, MAX_READ};

/// Which operation, with its argument.
enum Request {
    /// `sock_recv(sock, nbytes)`.
    Recv(Py<PyAny>),
    /// `sock_recv_into(sock, buf)`.
    RecvInto(Py<PyAny>),
    /// `sock_sendall(sock, data)`.
    SendAll(Py<PyAny>),
}

impl Request {
    fn clone_ref(&self, py: Python<'_>) -> Request {
        match self {
            Request::Recv(nbytes) => Request::Recv(nbytes.clone_ref(py)),
            Request::RecvInto(buf) => Request::RecvInto(buf.clone_ref(py)),
            Request::SendAll(data) => Request::SendAll(data.clone_ref(py)),
        }
    }
}

/// Where the operation is.
enum Progress {
    NotStarted,
    /// Suspended on `future` (yielded to the task); `reader` is the native edge reader
    /// this operation installed on descriptor `.0`, if it waits that way.
    Waiting {
        future: Py<PyAny>,
        reader: Option<EdgeReader>,
    },
    Finished,
}

/// How the first step went: finished at once, or waiting on a future (with the native
/// reader installed for it, if it waits that way).
enum Started {
    Done(Py<PyAny>),
    Waiting(Py<PyAny>, Option<EdgeReader>),
}

/// What trying `sock_sendall`'s syscall gave.
enum Attempt {
    Complete(Py<PyAny>),
    /// Would block; for `sock_sendall`, how many bytes went out already.
    WouldBlock(usize),
}

/// A pending `sock_recv`/`sock_sendall` call (see the module documentation).
#[pyclass(module = "ferroloop._ferroloop")]
pub struct SocketOperation {
    event_loop: Py<LoopCore>,
    sock: Py<PyAny>,
    request: Request,
    progress: Progress,
}

/// How a coroutine returns `value`: `StopIteration` with `value` as its `value`.
///
/// Raised with the value itself as the "arguments" unless that would be misread (a
/// tuple is taken as an argument list, an exception as the exception): on 3.11 the
/// interpreter then takes the result without ever creating the exception object.
fn stop_with(py: Python<'_>, value: Py<PyAny>) -> PyErr {
    let bound = value.bind(py);
    if bound.is_instance_of::<PyTuple>() || bound.is_instance_of::<PyBaseException>() {
        PyStopIteration::new_err((value,))
    } else {
        PyStopIteration::new_err(value)
    }
}

impl SocketOperation {
    pub(crate) fn recv(event_loop: Py<LoopCore>, sock: Py<PyAny>, nbytes: Py<PyAny>) -> Self {
        SocketOperation {
            event_loop,
            sock,
            request: Request::Recv(nbytes),
            progress: Progress::NotStarted,
        }
    }

    pub(crate) fn recv_into(event_loop: Py<LoopCore>, sock: Py<PyAny>, buf: Py<PyAny>) -> Self {
        SocketOperation {
            event_loop,
            sock,
            request: Request::RecvInto(buf),
            progress: Progress::NotStarted,
        }
    }

    pub(crate) fn sendall(event_loop: Py<LoopCore>, sock: Py<PyAny>, data: Py<PyAny>) -> Self {
        SocketOperation {
            event_loop,
            sock,
            request: Request::SendAll(data),
            progress: Progress::NotStarted,
        }
    }

    /// The socket's descriptor if the syscall may be made directly: a plain
    /// `socket.socket` in non-blocking mode. Anything else (subclasses, sockets with a
    /// timeout, which asyncio lets block) goes through the socket's own methods.
    fn direct_fd(py: Python<'_>, sock: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
        if !sock.get_type().is(SOCKET_TYPE.get(py)?) {
            return Ok(None);
        }
        let timeout = sock.call_method0(intern!(py, "gettimeout"))?;
        if timeout.is_none() || timeout.extract::<f64>()? != 0.0 {
            return Ok(None);
        }
        Ok(Some(sock.call_method0(intern!(py, "fileno"))?.extract()?))
    }

    fn try_sendall(
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        fd: Option<RawFd>,
    ) -> PyResult<Attempt> {
        let plain_bytes = data.is_instance_of::<PyBytes>() || data.is_instance_of::<PyByteArray>();
        if let (true, Some(fd)) = (plain_bytes, fd) {
            let sent = ffi::with_bytes(data, |bytes| match stream_io::send(fd, bytes) {
                Ok(n) => Ok((n, bytes.len())),
                Err(err) if err.kind() == ErrorKind::WouldBlock => Ok((0, bytes.len())),
                Err(err) => Err(err),
            })?;
            return match sent {
                Ok((n, len)) if n == len => Ok(Attempt::Complete(py.None())),
                Ok((n, _)) => Ok(Attempt::WouldBlock(n)),
                Err(err) => Err(os_error(err)),
            };
        }
        let sent = match sock.call_method1(intern!(py, "send"), (data,)) {
            Ok(n) => n,
            Err(err) if would_block(py, &err) => 0usize.into_pyobject(py)?.into_any(),
            Err(err) => return Err(err),
        };
        if sent.eq(data.len()?)? {
            return Ok(Attempt::Complete(py.None()));
        }
        Ok(Attempt::WouldBlock(sent.extract()?))
    }

    /// The first step: asyncio's checks, the syscall, and, if it would block, the
    /// future to wait on with the native reader installed for it (if any).
    fn start(slf: &Bound<'_, Self>) -> PyResult<Started> {
        let py = slf.py();
        let (event_loop, sock) = {
            let this = slf.borrow();
            (this.event_loop.bind(py).clone(), this.sock.bind(py).clone())
        };
        // An exact `socket.socket` is never an `ssl.SSLSocket`: only others need the check.
        if !sock.get_type().is(SOCKET_TYPE.get(py)?) {
            CHECK_SSL_SOCKET.get(py)?.call1((&sock,))?;
        }
        if event_loop.get().debug() && !sock.call_method0(intern!(py, "gettimeout"))?.eq(0)? {
            return Err(PyValueError::new_err("the socket must be non-blocking"));
        }
        let fd = Self::direct_fd(py, &sock)?;
        // Taken out of the object: no borrow is held while Python code runs.
        let request = slf.borrow().request.clone_ref(py);
        match request {
            Request::Recv(nbytes) => {
                let target = ReadTarget::of_nbytes(nbytes.bind(py));
                Self::start_read(&event_loop, &sock, fd, target)
            }
            Request::RecvInto(buf) => {
                Self::start_read(&event_loop, &sock, fd, ReadTarget::Buffer(buf))
            }
            Request::SendAll(data) => Self::start_sendall(&event_loop, &sock, fd, data.bind(py)),
        }
    }

    /// `sock_recv`/`sock_recv_into` after the checks: the read, then the wait (native
    /// for a plain socket) if it would block.
    fn start_read(
        event_loop: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        fd: Option<RawFd>,
        target: ReadTarget,
    ) -> PyResult<Started> {
        let py = event_loop.py();
        match target.read_once(sock, fd) {
            Ok(value) => return Ok(Started::Done(value)),
            Err(Some(err)) => return Err(err),
            Err(None) => {}
        }
        if let (Some(fd), true) = (fd, target.is_direct()) {
            return wait_readable(event_loop, sock, fd, target);
        }
        let (on_readable, arg) = match target {
            ReadTarget::Bytes(_, nbytes) => (intern!(py, "_sock_recv"), nbytes),
            ReadTarget::Buffer(buf) => (intern!(py, "_sock_recv_into"), buf),
        };
        let on_readable = event_loop.getattr(on_readable)?;
        let waiter =
            event_loop.call_method1(intern!(py, "_sock_read_wait"), (sock, on_readable, arg))?;
        Ok(Started::Waiting(waiter.unbind(), None))
    }

    /// `sock_sendall` after the checks: the send, then asyncio's wait if the socket
    /// took only part of the data.
    fn start_sendall(
        event_loop: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        fd: Option<RawFd>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Started> {
        let py = event_loop.py();
        let sent = match Self::try_sendall(py, sock, data, fd)? {
            Attempt::Complete(value) => return Ok(Started::Done(value)),
            Attempt::WouldBlock(sent) => sent,
        };
        let waiter =
            event_loop.call_method1(intern!(py, "_sock_sendall_wait"), (sock, data, sent))?;
        Ok(Started::Waiting(waiter.unbind(), None))
    }

    /// Ends the wait: removes the native reader, unless a later operation on the
    /// descriptor already replaced (and so cancelled) it, as asyncio's
    /// `_sock_read_done` checks.
    fn stop_reading(slf: &Bound<'_, Self>, reader: Option<EdgeReader>) -> PyResult<()> {
        let Some((fd, handle)) = reader else {
            return Ok(());
        };
        let event_loop = slf.borrow().event_loop.clone_ref(slf.py());
        LoopCore::remove_edge_reader(event_loop.bind(slf.py()), fd, &handle)
    }
}

/// A native edge reader installed on a descriptor, and its handle.
type EdgeReader = (RawFd, Py<Handle>);

/// Where a read lands, and what it returns.
enum ReadTarget {
    /// `sock_recv`: a new `bytes` of at most this many bytes, and the original argument.
    /// `None` when the socket's own `recv` must do the read: `nbytes` is not an int
    /// `recv` accepts (it raises stock's error), or is larger than the scratch buffer
    /// (`recv` then allocates it, as on stock, and can return a datagram whole).
    Bytes(Option<usize>, Py<PyAny>),
    /// `sock_recv_into`: the caller's writable buffer; returns the count.
    Buffer(Py<PyAny>),
}

impl ReadTarget {
    fn of_nbytes(nbytes: &Bound<'_, PyAny>) -> Self {
        // `socket.recv` takes a C `ssize_t`: 2**63 and above overflow there.
        let direct = nbytes
            .extract::<isize>()
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= MAX_READ);
        ReadTarget::Bytes(direct, nbytes.clone().unbind())
    }

    /// Whether reads may bypass the socket's methods (given a plain socket).
    fn is_direct(&self) -> bool {
        !matches!(self, ReadTarget::Bytes(None, _))
    }

    /// Reads once from `fd`; `None` if this target cannot be read into directly (the
    /// socket's own method then gives the exact error asyncio would).
    fn read_direct(&self, py: Python<'_>, fd: RawFd) -> Option<std::io::Result<Py<PyAny>>> {
        match self {
            ReadTarget::Bytes(Some(nbytes), _) => Some(with_read_scratch(|scratch| {
                // `of_nbytes` keeps `nbytes` within the scratch buffer already.
                let len = (*nbytes).min(scratch.len());
                let buffer = &mut scratch[..len];
                recv_as_socket_does(fd, buffer)
                    .map(|got| PyBytes::new(py, &buffer[..got]).into_any().unbind())
            })),
            ReadTarget::Bytes(None, _) => None,
            ReadTarget::Buffer(buf) => {
                let received =
                    ffi::with_bytes_mut(buf.bind(py), |memory| recv_as_socket_does(fd, memory));
                let count = |n: usize| {
                    let Ok(n) = n.into_pyobject(py);
                    n.into_any().unbind()
                };
                received.ok().map(|outcome| outcome.map(count))
            }
        }
    }

    /// Reads once: straight from `fd` (the socket's descriptor, when it may be used
    /// directly), else through the socket's own `recv`/`recv_into`. `Err(None)` if it
    /// would block.
    fn read_once(
        &self,
        sock: &Bound<'_, PyAny>,
        fd: Option<RawFd>,
    ) -> Result<Py<PyAny>, Option<PyErr>> {
        let py = sock.py();
        if let Some(direct) = fd.and_then(|fd| self.read_direct(py, fd)) {
            return direct
                .map_err(|err| (err.kind() != ErrorKind::WouldBlock).then(|| os_error(err)));
        }
        let result = match self {
            ReadTarget::Bytes(_, nbytes) => sock.call_method1(intern!(py, "recv"), (nbytes,)),
            ReadTarget::Buffer(buf) => sock.call_method1(intern!(py, "recv_into"), (buf,)),
        };
        result
            .map(Bound::unbind)
            .map_err(|err| (!would_block(py, &err)).then_some(err))
    }
}

/// One `recv` into `buffer`, as `socket.recv`/`recv_into` make it: an empty buffer
/// reads nothing and makes no syscall (a zero-byte `recv` would wait for data when none
/// is queued, and consume a queued datagram).
fn recv_as_socket_does(fd: RawFd, buffer: &mut [u8]) -> std::io::Result<usize> {
    if buffer.is_empty() {
        Ok(0)
    } else {
        stream_io::recv(fd, buffer)
    }
}

/// A read on a plain socket that would block: asyncio's `_sock_read_wait` with a
/// [`RecvWhenReadable`] as the reader.
fn wait_readable(
    event_loop: &Bound<'_, LoopCore>,
    sock: &Bound<'_, PyAny>,
    fd: RawFd,
    target: ReadTarget,
) -> PyResult<Started> {
    let py = event_loop.py();
    let future = event_loop.call_method0(intern!(py, "create_future"))?;
    ensure_no_transport(event_loop, fd)?;
    let reader = RecvWhenReadable {
        future: future.clone().unbind(),
        sock: sock.clone().unbind(),
        fd,
        target,
    };
    let reader = Bound::new(py, reader)?.into_any();
    let handle = LoopCore::add_edge_reader(event_loop, sock, reader)?;
    Ok(Started::Waiting(future.unbind(), Some((fd, handle))))
}

/// asyncio's `_ensure_fd_no_transport(fd)`, which raises if a transport owns `fd`. The
/// loop's `_transports` is a `WeakValueDictionary` keyed by descriptor: only a
/// descriptor present in it (rare) needs asyncio's check, which raises and catches a
/// `KeyError` for every other one.
fn ensure_no_transport(event_loop: &Bound<'_, LoopCore>, fd: RawFd) -> PyResult<()> {
    let py = event_loop.py();
    let transports = event_loop.getattr(intern!(py, "_transports"))?;
    let listed = match transports.getattr(intern!(py, "data")) {
        Ok(entries) => entries.contains(fd)?,
        Err(_) => true,
    };
    if listed {
        event_loop.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
    }
    Ok(())
}

/// The reader of a `sock_recv`/`sock_recv_into` waiting on a plain socket: on
/// readiness, receives once and resolves the future (asyncio's `_sock_recv` and
/// `_sock_recv_into`; `sock_recv` without allocating `nbytes`).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct RecvWhenReadable {
    future: Py<PyAny>,
    sock: Py<PyAny>,
    fd: RawFd,
    target: ReadTarget,
}

#[pymethods]
impl RecvWhenReadable {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let future = self.future.bind(py);
        if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        let sock = self.sock.bind(py);
        // A socket closed while waiting no longer owns `fd` (the number may even belong
        // to another socket by now): its own `recv` gives asyncio's error.
        let still_ours = sock.call_method0(intern!(py, "fileno"))?.eq(self.fd)?;
        let outcome = self.target.read_once(sock, still_ours.then_some(self.fd));
        match outcome {
            Ok(data) => future.call_method1(intern!(py, "set_result"), (data,))?,
            // Not readable after all (another reader got there first): wait again.
            Err(None) => return Ok(()),
            Err(Some(err)) => {
                future.call_method1(intern!(py, "set_exception"), (err.value(py),))?
            }
        };
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.future)?;
        visit.call(&self.sock)?;
        match &self.target {
            ReadTarget::Bytes(_, arg) | ReadTarget::Buffer(arg) => visit.call(arg),
        }
    }
}

fn would_block(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyBlockingIOError>(py) || err.is_instance_of::<PyInterruptedError>(py)
}

impl NativeAwaitable for SocketOperation {
    fn step(slf: &Bound<'_, Self>) -> PyResult<SendOutcome> {
        let py = slf.py();
        let progress = std::mem::replace(&mut slf.borrow_mut().progress, Progress::Finished);
        match progress {
            Progress::NotStarted => {
                let (future, reader) = match Self::start(slf)? {
                    Started::Done(result) => return Ok(SendOutcome::Return(result)),
                    Started::Waiting(future, reader) => (future, reader),
                };
                // What `Future.__await__` does before yielding the future to its task.
                future.setattr(py, intern!(py, "_asyncio_future_blocking"), true)?;
                let waiting = Progress::Waiting {
                    future: future.clone_ref(py),
                    reader,
                };
                slf.borrow_mut().progress = waiting;
                Ok(SendOutcome::Yield(future))
            }
            Progress::Waiting { future, reader } => {
                Self::stop_reading(slf, reader)?;
                let result = future.call_method0(py, intern!(py, "result"))?;
                Ok(SendOutcome::Return(result))
            }
            Progress::Finished => Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            )),
        }
    }
}

#[pymethods]
impl SocketOperation {
    /// Advances the operation: yields the future to wait on, or finishes with
    /// `StopIteration(result)`, as a coroutine's `send` does.
    fn send(slf: &Bound<'_, Self>, _value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match Self::step(slf)? {
            SendOutcome::Yield(future) => Ok(future),
            SendOutcome::Return(result) => Err(stop_with(slf.py(), result)),
        }
    }

    /// As `send(None)`; a `None` result ends the iteration without an exception.
    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        match Self::step(slf)? {
            SendOutcome::Yield(future) => Ok(Some(future)),
            SendOutcome::Return(result) if result.is_none(slf.py()) => Ok(None),
            SendOutcome::Return(result) => Err(stop_with(slf.py(), result)),
        }
    }

    /// Raises `exc` at the suspension point: the wait is abandoned (its future
    /// cancelled, which unregisters the socket) and the exception propagates.
    #[pyo3(signature = (typ, val=None, _tb=None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        Self::close(slf)?;
        let exc = if typ.is_instance_of::<PyBaseException>() {
            typ.clone()
        } else if let Some(val) = val.filter(|v| v.is_instance_of::<PyBaseException>()) {
            val.clone()
        } else if typ.is_instance_of::<PyType>() {
            match val.filter(|v| !v.is_none()) {
                Some(val) => typ.call1((val,))?,
                None => typ.call0()?,
            }
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "exceptions must be classes or instances deriving from BaseException",
            ));
        };
        Err(PyErr::from_value(exc))
    }

    /// Abandons the operation (cancelling the future it waits on, if any).
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let progress = std::mem::replace(&mut slf.borrow_mut().progress, Progress::Finished);
        if let Progress::Waiting { future, reader } = progress {
            Self::stop_reading(slf, reader)?;
            future.call_method0(py, intern!(py, "cancel"))?;
        }
        Ok(())
    }

    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// For `repr()` of the task running it, as a coroutine's `__qualname__`.
    #[getter]
    fn __qualname__(&self) -> &'static str {
        match self.request {
            Request::Recv(_) => "Loop.sock_recv",
            Request::RecvInto(_) => "Loop.sock_recv_into",
            Request::SendAll(_) => "Loop.sock_sendall",
        }
    }

    #[getter]
    fn __name__(&self) -> &'static str {
        match self.request {
            Request::Recv(_) => "sock_recv",
            Request::RecvInto(_) => "sock_recv_into",
            Request::SendAll(_) => "sock_sendall",
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.sock)?;
        match &self.request {
            Request::Recv(arg) | Request::RecvInto(arg) | Request::SendAll(arg) => {
                visit.call(arg)?
            }
        }
        if let Progress::Waiting { future, reader } = &self.progress {
            visit.call(future)?;
            if let Some((_, handle)) = reader {
                visit.call(handle)?;
            }
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.progress = Progress::Finished;
    }
}
