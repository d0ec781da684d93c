//! [`SocketOperation`]: what `loop.sock_recv()` and `loop.sock_sendall()` return.
//!
//! asyncio's versions are `async def` methods: every call creates a coroutine and a
//! frame, and every `recv` that finds no data raises and catches a `BlockingIOError`.
//! Here the call returns a small native awaitable that behaves as that coroutine does:
//! registered as a `collections.abc.Coroutine` (so `create_task`, `gather` and
//! `asyncio.iscoroutine` accept it), it runs the same checks on its first step, tries the
//! syscall directly (for plain non-blocking `socket.socket` objects), and only when the
//! socket would block asks the loop for a future to wait on (`_sock_read_wait` /
//! `_sock_sendall_wait`, asyncio's own waiting code in Python), yields it to the task
//! exactly as `await future` does, and returns the future's result.

use std::io::ErrorKind;

use ferroloop_reactor::stream_io;
use pyo3::exceptions::{PyBaseException, PyBlockingIOError, PyInterruptedError, PyRuntimeError};
use pyo3::exceptions::{PyStopIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::ffi;
use crate::py_cache::{CHECK_SSL_SOCKET, SOCKET_TYPE};
use crate::transport::with_read_scratch;

/// Which operation, with its argument.
enum Request {
    /// `sock_recv(sock, nbytes)`.
    Recv(Py<PyAny>),
    /// `sock_sendall(sock, data)`.
    SendAll(Py<PyAny>),
}

/// Where the operation is.
enum Progress {
    NotStarted,
    /// Suspended on this future (yielded to the task).
    Waiting(Py<PyAny>),
    Finished,
}

/// What trying the syscall gave.
enum Attempt {
    Complete(Py<PyAny>),
    /// Would block; for `sock_sendall`, how many bytes went out already.
    WouldBlock(usize),
}

/// A pending `sock_recv`/`sock_sendall` call (see the module documentation).
#[pyclass(module = "ferroloop._ferroloop")]
pub struct SocketOperation {
    event_loop: Py<PyAny>,
    sock: Py<PyAny>,
    request: Request,
    progress: Progress,
}

/// How a coroutine returns `value`: StopIteration's first argument.
fn stop_with(value: Py<PyAny>) -> PyErr {
    PyStopIteration::new_err((value,))
}

impl SocketOperation {
    pub(crate) fn recv(event_loop: Py<PyAny>, sock: Py<PyAny>, nbytes: Py<PyAny>) -> Self {
        SocketOperation {
            event_loop,
            sock,
            request: Request::Recv(nbytes),
            progress: Progress::NotStarted,
        }
    }

    pub(crate) fn sendall(event_loop: Py<PyAny>, sock: Py<PyAny>, data: Py<PyAny>) -> Self {
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
    fn direct_fd(py: Python<'_>, sock: &Bound<'_, PyAny>) -> PyResult<Option<i32>> {
        if !sock.get_type().is(SOCKET_TYPE.get(py)?) {
            return Ok(None);
        }
        let timeout = sock.call_method0(intern!(py, "gettimeout"))?;
        if timeout.is_none() || timeout.extract::<f64>()? != 0.0 {
            return Ok(None);
        }
        Ok(Some(sock.call_method0(intern!(py, "fileno"))?.extract()?))
    }

    fn try_recv(
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
        nbytes: &Bound<'_, PyAny>,
    ) -> PyResult<Attempt> {
        if let (Some(fd), Ok(n)) = (Self::direct_fd(py, sock)?, nbytes.extract::<usize>()) {
            // recv(n) may return fewer bytes than n: reading at most a scratch buffer's
            // worth is what a recv of n can do anyway.
            let received = with_read_scratch(|scratch| {
                let len = n.min(scratch.len());
                stream_io::recv(fd, &mut scratch[..len])
                    .map(|got| PyBytes::new(py, &scratch[..got]).into_any().unbind())
            });
            return match received {
                Ok(data) => Ok(Attempt::Complete(data)),
                Err(err) if err.kind() == ErrorKind::WouldBlock => Ok(Attempt::WouldBlock(0)),
                Err(err) => Err(os_error(err)),
            };
        }
        match sock.call_method1(intern!(py, "recv"), (nbytes,)) {
            Ok(data) => Ok(Attempt::Complete(data.unbind())),
            Err(err) if would_block(py, &err) => Ok(Attempt::WouldBlock(0)),
            Err(err) => Err(err),
        }
    }

    fn try_sendall(
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Attempt> {
        let plain_bytes = data.is_instance_of::<PyBytes>() || data.is_instance_of::<PyByteArray>();
        if let (true, Some(fd)) = (plain_bytes, Self::direct_fd(py, sock)?) {
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

    /// The first step: asyncio's checks, the syscall, and the future to wait on if it
    /// would block.
    fn start(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let (event_loop, sock) = {
            let this = slf.borrow();
            (this.event_loop.bind(py).clone(), this.sock.bind(py).clone())
        };
        CHECK_SSL_SOCKET.get(py)?.call1((&sock,))?;
        if event_loop.getattr(intern!(py, "_debug"))?.is_truthy()?
            && !sock.call_method0(intern!(py, "gettimeout"))?.eq(0)?
        {
            return Err(PyValueError::new_err("the socket must be non-blocking"));
        }
        // Taken out of the object: no borrow is held while Python code runs.
        let (receiving, arg) = match &slf.borrow().request {
            Request::Recv(nbytes) => (true, nbytes.bind(py).clone()),
            Request::SendAll(data) => (false, data.bind(py).clone()),
        };
        let attempt = if receiving {
            Self::try_recv(py, &sock, &arg)?
        } else {
            Self::try_sendall(py, &sock, &arg)?
        };
        let sent = match attempt {
            Attempt::Complete(value) => return Err(stop_with(value)),
            Attempt::WouldBlock(sent) => sent,
        };
        let waiter = if receiving {
            let on_readable = event_loop.getattr(intern!(py, "_sock_recv"))?;
            event_loop.call_method1(intern!(py, "_sock_read_wait"), (&sock, on_readable, &arg))?
        } else {
            event_loop.call_method1(intern!(py, "_sock_sendall_wait"), (&sock, &arg, sent))?
        };
        Ok(waiter.unbind())
    }
}

fn would_block(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyBlockingIOError>(py) || err.is_instance_of::<PyInterruptedError>(py)
}

#[pymethods]
impl SocketOperation {
    /// Advances the operation: yields the future to wait on, or finishes with
    /// `StopIteration(result)`, as a coroutine's `send` does.
    fn send(slf: &Bound<'_, Self>, _value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Self::__next__(slf)
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let progress = std::mem::replace(&mut slf.borrow_mut().progress, Progress::Finished);
        match progress {
            Progress::NotStarted => {
                let waiter = Self::start(slf)?;
                // What `Future.__await__` does before yielding the future to its task.
                waiter.setattr(py, intern!(py, "_asyncio_future_blocking"), true)?;
                slf.borrow_mut().progress = Progress::Waiting(waiter.clone_ref(py));
                Ok(waiter)
            }
            Progress::Waiting(waiter) => {
                let result = waiter.call_method0(py, intern!(py, "result"))?;
                Err(stop_with(result))
            }
            Progress::Finished => Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            )),
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
        if let Progress::Waiting(waiter) = progress {
            waiter.call_method0(py, intern!(py, "cancel"))?;
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
            Request::SendAll(_) => "Loop.sock_sendall",
        }
    }

    #[getter]
    fn __name__(&self) -> &'static str {
        match self.request {
            Request::Recv(_) => "sock_recv",
            Request::SendAll(_) => "sock_sendall",
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.sock)?;
        match &self.request {
            Request::Recv(arg) | Request::SendAll(arg) => visit.call(arg)?,
        }
        if let Progress::Waiting(waiter) = &self.progress {
            visit.call(waiter)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.progress = Progress::Finished;
    }
}
