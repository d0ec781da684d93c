//! [`SocketTransportCore`]: the native state and hot paths of a socket transport.
//!
//! The semantics are those of asyncio's `_SelectorSocketTransport`: the reader callback
//! reads once per readiness (up to 256 KiB, or into a `BufferedProtocol`'s buffer),
//! `write()` sends immediately when nothing is queued and queues only the rest, and the
//! queue drains when the socket becomes writable, after which a pending `close()` or
//! `write_eof()` completes. Errors and rare cases call back into the Python transport
//! (`_fatal_error`, `_read_ready__on_eof`, `_maybe_pause_protocol`, ...) so there is one
//! implementation of each.

use std::io::{self, ErrorKind};
use std::os::fd::RawFd;

use ferroloop_reactor::stream_io;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::{intern, PyTraverseError, PyVisit};

use super::stream::{
    add_writer, is_exit, remove_writer, PendingWrites, Syscalls, WriteAttempt,
    LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};
use crate::errors::os_error;
use crate::ffi;
use crate::py_cache::ASYNCIO_LOG_MODULE;

/// What a `write()` did, decided while the core was borrowed and acted on after.
enum WriteOutcome {
    /// Everything was sent, or there was nothing to send.
    Done,
    /// The connection is lost: the data is dropped (and counted, as asyncio does).
    Dropped { earlier_drops: u32 },
    /// Some bytes were queued and the queue was empty: start watching for writability.
    QueuedFirst,
    /// Bytes were appended to a non-empty queue.
    Queued,
    /// The send failed.
    Failed(io::Error),
}

/// The native state of one socket transport: its descriptor, protocol, pending writes
/// and the flags the hot paths read. The Python transport reads and writes the flags
/// through the properties below.
#[pyclass(module = "ferroloop._ferroloop")]
pub struct SocketTransportCore {
    /// The socket's descriptor; -1 once the transport released it (the socket object
    /// closes it, and the number may be reused, so the core must not touch it again).
    fd: RawFd,
    /// The Python transport this core belongs to, for the cold paths.
    transport: Option<Py<PyAny>>,
    /// The loop, for `_add_writer`/`_remove_writer`.
    event_loop: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// Whether `protocol` is a `BufferedProtocol` (read into its buffer).
    buffered: bool,
    pending: PendingWrites,
    /// asyncio's `_conn_lost`: non-zero once the connection is being torn down, then
    /// counting writes dropped since.
    #[pyo3(get, set)]
    conn_lost: u32,
    #[pyo3(get, set)]
    closing: bool,
    #[pyo3(get, set)]
    eof: bool,
    /// The future `loop.sendfile()` waits on for the queue to drain.
    #[pyo3(get, set)]
    empty_waiter: Option<Py<PyAny>>,
    /// 3.15: the `contextvars.Context` the connection's callbacks run in (the writer
    /// callback too); `None` before 3.15, where each registration copies the current one.
    context: Option<Py<PyAny>>,
}

/// What asyncio's socket transports do differently between the Python versions
/// ferroloop runs on, decided once per process.
struct TransportVersionRules {
    /// 3.14+: `write()`'s TypeError names the accepted types.
    bytes_types_in_message: bool,
    /// 3.14+: a drained queue completes a `close()` only if the connection was not
    /// already lost meanwhile.
    lose_connection_once: bool,
}

fn version_rules(py: Python<'_>) -> &'static TransportVersionRules {
    static RULES: PyOnceLock<TransportVersionRules> = PyOnceLock::new();
    RULES.get_or_init(py, || {
        let newer = py.version_info() >= (3, 14);
        TransportVersionRules {
            bytes_types_in_message: newer,
            lose_connection_once: newer,
        }
    })
}

/// The error `socket.recv_into` raises for a buffer it cannot write into.
fn not_writable(buffer: &Bound<'_, PyAny>) -> PyErr {
    let name = buffer
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    PyTypeError::new_err(format!(
        "recv_into() argument 1 must be read-write bytes-like object, not {name}"
    ))
}

impl SocketTransportCore {
    fn transport<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.transport.as_ref().map(|t| t.bind(py).clone())
    }

    /// Reports `err` through the transport's `_fatal_error` (which logs or calls the
    /// exception handler and force-closes), unless it is `KeyboardInterrupt` or
    /// `SystemExit`, which propagate as in asyncio.
    fn fatal(transport: &Bound<'_, PyAny>, err: PyErr, message: &str) -> PyResult<()> {
        let py = transport.py();
        if is_exit(py, &err) {
            return Err(err);
        }
        transport.call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message))?;
        Ok(())
    }

    fn read_bytes(
        fd: RawFd,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = protocol.py();
        let data = match Syscalls::Socket.read_bytes(py, fd) {
            Ok(Some(data)) => data,
            Ok(None) => {
                transport.call_method0(intern!(py, "_read_ready__on_eof"))?;
                return Ok(());
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(err) => {
                return Self::fatal(
                    transport,
                    os_error(err),
                    "Fatal read error on socket transport",
                )
            }
        };
        if let Err(err) = protocol.call_method1(intern!(py, "data_received"), (data,)) {
            return Self::fatal(
                transport,
                err,
                "Fatal error: protocol.data_received() call failed.",
            );
        }
        Ok(())
    }

    fn read_into_protocol(
        fd: RawFd,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = protocol.py();
        let buffer = protocol
            .call_method1(intern!(py, "get_buffer"), (-1,))
            .and_then(|buffer| match buffer.len()? {
                0 => Err(PyRuntimeError::new_err(
                    "get_buffer() returned an empty buffer",
                )),
                _ => Ok(buffer),
            });
        let buffer = match buffer {
            Ok(buffer) => buffer,
            Err(err) => {
                return Self::fatal(
                    transport,
                    err,
                    "Fatal error: protocol.get_buffer() call failed.",
                )
            }
        };
        let received = ffi::with_bytes_mut(&buffer, |memory| Syscalls::Socket.read(fd, memory))
            .map_err(|_| not_writable(&buffer))
            .and_then(|result| match result {
                Ok(n) => Ok(Some(n)),
                Err(err) if err.kind() == ErrorKind::WouldBlock => Ok(None),
                Err(err) => Err(os_error(err)),
            });
        match received {
            Ok(None) => Ok(()),
            Ok(Some(0)) => {
                transport.call_method0(intern!(py, "_read_ready__on_eof"))?;
                Ok(())
            }
            Ok(Some(n)) => match protocol.call_method1(intern!(py, "buffer_updated"), (n,)) {
                Ok(_) => Ok(()),
                Err(err) => Self::fatal(
                    transport,
                    err,
                    "Fatal error: protocol.buffer_updated() call failed.",
                ),
            },
            Err(err) => Self::fatal(transport, err, "Fatal read error on socket transport"),
        }
    }

    /// Starts (`watch` true) or stops calling `_write_ready` when the socket is
    /// writable, through the loop's `_add_writer`/`_remove_writer`.
    fn watch_writable(slf: &Bound<'_, Self>, watch: bool) -> PyResult<()> {
        let py = slf.py();
        let (event_loop, fd, context) = {
            let this = slf.borrow();
            let Some(event_loop) = this.event_loop.as_ref() else {
                return Ok(());
            };
            let context = this.context.as_ref().map(|c| c.clone_ref(py));
            (event_loop.bind(py).clone(), this.fd, context)
        };
        if watch {
            let callback = slf.getattr(intern!(py, "_write_ready"))?;
            add_writer(&event_loop, fd, callback, context.as_ref())
        } else {
            remove_writer(&event_loop, fd)
        }
    }
}

#[pymethods]
impl SocketTransportCore {
    #[new]
    #[pyo3(signature = (transport, event_loop, fd, context=None))]
    fn new(
        transport: Py<PyAny>,
        event_loop: Py<PyAny>,
        fd: RawFd,
        context: Option<Py<PyAny>>,
    ) -> Self {
        SocketTransportCore {
            fd,
            transport: Some(transport),
            event_loop: Some(event_loop),
            protocol: None,
            buffered: false,
            pending: PendingWrites::default(),
            conn_lost: 0,
            closing: false,
            eof: false,
            empty_waiter: None,
            context,
        }
    }

    /// The socket's descriptor, -1 once released.
    #[getter]
    fn fd(&self) -> RawFd {
        self.fd
    }

    /// The protocol data is delivered to.
    #[getter]
    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol.as_ref().map(|p| p.clone_ref(py))
    }

    /// Switches the protocol; `buffered` says whether it is a `BufferedProtocol`.
    fn set_protocol(&mut self, protocol: Option<Py<PyAny>>, buffered: bool) {
        self.protocol = protocol;
        self.buffered = buffered;
    }

    /// The reader callback: one read, delivered to the protocol.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (fd, protocol, transport, buffered) = {
            let this = slf.borrow();
            if this.conn_lost > 0 {
                return Ok(());
            }
            let (Some(protocol), Some(transport)) = (&this.protocol, this.transport(py)) else {
                return Ok(());
            };
            (this.fd, protocol.bind(py).clone(), transport, this.buffered)
        };
        if buffered {
            Self::read_into_protocol(fd, &protocol, &transport)
        } else {
            Self::read_bytes(fd, &protocol, &transport)
        }
    }

    /// `transport.write(data)`: send now what the socket takes, queue the rest.
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            let name = data.get_type().name()?;
            let expected = if version_rules(py).bytes_types_in_message {
                "a bytes, bytearray, or memoryview object"
            } else {
                "a bytes-like object"
            };
            return Err(PyTypeError::new_err(format!(
                "data argument must be {expected}, not {}",
                name.repr()?
            )));
        }
        let outcome = {
            let mut this = slf.borrow_mut();
            if this.eof {
                return Err(PyRuntimeError::new_err(
                    "Cannot call write() after write_eof()",
                ));
            }
            if this.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err(
                    "unable to write; sendfile is in progress",
                ));
            }
            let was_empty = this.pending.is_empty();
            let exported = ffi::with_bytes(data, |bytes| {
                if bytes.is_empty() {
                    WriteOutcome::Done
                } else if this.conn_lost > 0 {
                    this.conn_lost += 1;
                    WriteOutcome::Dropped {
                        earlier_drops: this.conn_lost - 1,
                    }
                } else {
                    let fd = this.fd;
                    match this.pending.write_or_queue(Syscalls::Socket, fd, bytes) {
                        WriteAttempt::Done => WriteOutcome::Done,
                        WriteAttempt::QueuedFirst => WriteOutcome::QueuedFirst,
                        WriteAttempt::Queued => WriteOutcome::Queued,
                        WriteAttempt::Failed(err) => WriteOutcome::Failed(err),
                    }
                }
            });
            match exported {
                Ok(outcome) => outcome,
                // Not exportable as contiguous bytes: `socket.send` would have raised
                // this inside the transport's error handling.
                Err(err) if was_empty && this.conn_lost == 0 => {
                    let transport = this.transport(py);
                    drop(this);
                    return match transport {
                        Some(t) => Self::fatal(&t, err, "Fatal write error on socket transport"),
                        None => Err(err),
                    };
                }
                // Queued behind other data, it is appended to the queue, which (as
                // asyncio 3.11's bytearray) only takes contiguous memory.
                Err(_) => {
                    let name = data.get_type().name()?;
                    return Err(PyTypeError::new_err(format!(
                        "can't set bytearray slice from {name}"
                    )));
                }
            }
        };
        // Queued or failed writes go on in the Python transport; after connection_lost
        // the core has let go of it, and there is nothing left to do.
        let transport = || slf.borrow().transport(py);
        match outcome {
            WriteOutcome::Done => Ok(()),
            WriteOutcome::Dropped { earlier_drops } => {
                if earlier_drops >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                    ASYNCIO_LOG_MODULE
                        .get(py)?
                        .getattr(intern!(py, "logger"))?
                        .call_method1(
                            intern!(py, "warning"),
                            ("socket.send() raised exception.",),
                        )?;
                }
                Ok(())
            }
            WriteOutcome::QueuedFirst | WriteOutcome::Queued => {
                let Some(transport) = transport() else {
                    return Ok(());
                };
                if matches!(outcome, WriteOutcome::QueuedFirst) {
                    Self::watch_writable(slf, true)?;
                }
                transport.call_method0(intern!(py, "_maybe_pause_protocol"))?;
                Ok(())
            }
            WriteOutcome::Failed(err) => match transport() {
                Some(transport) => Self::fatal(
                    &transport,
                    os_error(err),
                    "Fatal write error on socket transport",
                ),
                None => Ok(()),
            },
        }
    }

    /// The writer callback: send queued bytes; once the queue is empty, stop watching
    /// and finish a pending `close()` or `write_eof()`.
    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (sent, transport) = {
            let mut this = slf.borrow_mut();
            if this.conn_lost > 0 || this.pending.is_empty() {
                return Ok(());
            }
            let fd = this.fd;
            let sent = this.pending.flush(py, Syscalls::Socket, fd);
            (sent, this.transport(py))
        };
        let Some(transport) = transport else {
            return Ok(());
        };
        match sent {
            Err(err) if err.kind() == ErrorKind::WouldBlock => Ok(()),
            Err(err) => {
                Self::watch_writable(slf, false)?;
                slf.borrow_mut().pending.clear();
                let exc = os_error(err).into_value(py);
                transport.call_method1(
                    intern!(py, "_fatal_error"),
                    (exc.clone_ref(py), "Fatal write error on socket transport"),
                )?;
                let waiter = slf.borrow().empty_waiter.as_ref().map(|w| w.clone_ref(py));
                if let Some(waiter) = waiter {
                    waiter.call_method1(py, intern!(py, "set_exception"), (exc,))?;
                }
                Ok(())
            }
            Ok(_) => {
                // May queue more (a protocol writing from resume_writing()).
                transport.call_method0(intern!(py, "_maybe_resume_protocol"))?;
                let (drained, waiter, closing, eof, fd) = {
                    let this = slf.borrow();
                    (
                        this.pending.is_empty(),
                        this.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                        this.closing,
                        this.eof,
                        this.fd,
                    )
                };
                if !drained {
                    return Ok(());
                }
                Self::watch_writable(slf, false)?;
                if let Some(waiter) = waiter {
                    waiter.call_method1(py, intern!(py, "set_result"), (py.None(),))?;
                }
                if closing {
                    // Counted as lost, as a close() with nothing queued counts it, so later
                    // writes are dropped (and warned about) the same way. Stock 3.11-3.13
                    // skip this count and fail with an AttributeError on such writes; they
                    // also lose the connection a second time (an AttributeError in the
                    // exception handler) when the protocol's resume_writing() closed the
                    // transport just now, which 3.14 no longer does (CPython gh-156512).
                    let already_lost = slf.borrow().conn_lost > 0;
                    if already_lost && version_rules(py).lose_connection_once {
                        return Ok(());
                    }
                    slf.borrow_mut().conn_lost += 1;
                    transport.call_method1(intern!(py, "_call_connection_lost"), (py.None(),))?;
                } else if eof {
                    stream_io::shutdown_write(fd).map_err(os_error)?;
                }
                Ok(())
            }
        }
    }

    /// `transport.is_closing()`: `close()` or `abort()` was called, or the connection
    /// failed.
    fn is_closing(&self) -> bool {
        self.closing
    }

    /// Bytes queued and not yet sent.
    fn get_write_buffer_size(&self) -> usize {
        self.pending.len()
    }

    /// Drops everything queued (an aborted or failed connection).
    fn clear_write_buffer(&mut self) {
        self.pending.clear();
    }

    /// `shutdown(SHUT_WR)` on the socket, for `write_eof()` with nothing queued.
    fn shutdown_write(&self) -> PyResult<()> {
        stream_io::shutdown_write(self.fd).map_err(os_error)
    }

    /// Forgets the socket and every Python object: the connection is over and the socket
    /// is being closed by its owner.
    fn release(&mut self) {
        self.fd = -1;
        self.protocol = None;
        self.transport = None;
        self.event_loop = None;
        self.context = None;
        self.pending.clear();
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.transport)?;
        visit.call(&self.event_loop)?;
        visit.call(&self.protocol)?;
        visit.call(&self.empty_waiter)?;
        visit.call(&self.context)?;
        Ok(())
    }

    fn __clear__(&mut self) {
        self.transport = None;
        self.event_loop = None;
        self.protocol = None;
        self.empty_waiter = None;
        self.context = None;
    }
}
