//! [`ReadPipeCore`] and [`WritePipeCore`]: the native halves of ferroloop's pipe
//! transports (`connect_read_pipe`, `connect_write_pipe`, and so every subprocess's
//! stdin, stdout and stderr).
//!
//! They run on the stream core ([`super::stream`]) with `read`/`write` instead of
//! `recv`/`send`, and keep the rules of asyncio's `_UnixReadPipeTransport` and
//! `_UnixWritePipeTransport`, which differ from the socket transport's:
//!
//! - an exception from `protocol.data_received` is not a fatal error of the transport:
//!   it leaves the reader callback, for the loop's exception handler;
//! - writes after `close()`/`write_eof()`, like writes to a lost pipe, are dropped and
//!   counted (a warning from the sixth on), never an error;
//! - the queue drains without calling `resume_writing` until it is empty, and a pending
//!   `close()` then ends the transport at once (a pipe has no `shutdown`: closing the
//!   write end is the EOF).

use std::io::{self, ErrorKind};
use std::os::fd::RawFd;

use ferroloop_reactor::stream_io;

use pyo3::exceptions::{PyAssertionError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::{intern, PyTraverseError, PyVisit};

use super::stream::{
    add_writer, is_exit, remove_writer, PendingWrites, Syscalls, WriteAttempt,
    LOG_THRESHOLD_FOR_CONNLOST_WRITES, MAX_READ,
};
use crate::errors::os_error;
use crate::ffi;
use crate::py_cache::ASYNCIO_LOG_MODULE;

const WRITE_ERROR: &str = "Fatal write error on pipe transport";

/// Reads at least this large suggest a bulk transfer, where [`read_queued`] pays off:
/// copying that much out of the scratch buffer costs more than its extra syscall.
const BULK_READ: usize = 16 * 1024;

/// One read, as [`Syscalls::read_bytes`], but straight into a `bytes` of the size the
/// kernel reports queued (`FIONREAD`, at most [`MAX_READ`]), so nothing is copied out
/// of the scratch buffer. Bytes arriving between the two syscalls wait for the next
/// readiness report, as bytes arriving after any read do. With nothing queued (end of
/// file, or readiness without data) it is a scratch-buffer read; `None` when the
/// descriptor cannot say what is queued (a character device without `FIONREAD`, such as
/// `/dev/zero`), for the caller to read the usual way and stop asking.
fn read_queued<'py>(
    py: Python<'py>,
    fd: RawFd,
) -> PyResult<Option<io::Result<Option<Bound<'py, PyBytes>>>>> {
    let Ok(queued) = stream_io::readable_bytes(fd) else {
        return Ok(None);
    };
    if queued == 0 {
        return Ok(Some(Syscalls::Pipe.read_bytes(py, fd)));
    }
    let read = ffi::bytes_filled_by(py, queued.min(MAX_READ), |memory| {
        super::stream::counted_read(stream_io::read_uninit(fd, memory))
    })?;
    Ok(Some(read.map(|bytes| {
        (!bytes.as_bytes().is_empty()).then_some(bytes)
    })))
}

/// Whether `assert` statements run (`python -O` strips them): asyncio's pipe `write()`
/// and writer callback check their input with `assert`, so what a bad call does depends
/// on it.
fn asserts_enabled(py: Python<'_>) -> PyResult<bool> {
    static ENABLED: PyOnceLock<bool> = PyOnceLock::new();
    ENABLED
        .get_or_try_init(py, || {
            let optimize: i64 = py
                .import("sys")?
                .getattr("flags")?
                .getattr("optimize")?
                .extract()?;
            Ok::<_, PyErr>(optimize == 0)
        })
        .copied()
}

/// Reports `err` through the transport's `_fatal_error` (which logs or calls the
/// exception handler and closes), unless it is `KeyboardInterrupt` or `SystemExit`.
fn fatal(transport: &Bound<'_, PyAny>, err: PyErr, message: &str) -> PyResult<()> {
    let py = transport.py();
    if is_exit(py, &err) {
        return Err(err);
    }
    transport.call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message))?;
    Ok(())
}

/// The native state of a read pipe transport: the descriptor and what its reader
/// callback needs.
#[pyclass(module = "ferroloop._ferroloop")]
pub struct ReadPipeCore {
    /// The pipe's descriptor; -1 once released (the pipe object closes it).
    fd: RawFd,
    /// The Python transport, for EOF and errors.
    transport: Option<Py<PyAny>>,
    /// The transport's `_protocol`, whatever was assigned (even `None`, as asyncio
    /// keeps it).
    protocol: Option<Py<PyAny>>,
    /// Whether the last read was large ([`BULK_READ`]): the next one goes straight into
    /// a `bytes` of the size queued ([`read_queued`]).
    bulk: bool,
    /// Whether the descriptor answers `FIONREAD` (assumed until it fails once).
    knows_queued: bool,
}

#[pymethods]
impl ReadPipeCore {
    #[new]
    fn new(transport: Py<PyAny>, fd: RawFd) -> Self {
        ReadPipeCore {
            fd,
            transport: Some(transport),
            protocol: None,
            bulk: false,
            knows_queued: true,
        }
    }

    /// The protocol data is delivered to.
    #[getter]
    fn get_protocol(&self, py: Python<'_>) -> Py<PyAny> {
        self.protocol
            .as_ref()
            .map_or_else(|| py.None(), |p| p.clone_ref(py))
    }

    #[setter]
    fn set_protocol(&mut self, protocol: Py<PyAny>) {
        self.protocol = Some(protocol);
    }

    /// The reader callback: one read of up to 256 KiB, handed to `data_received`; at end
    /// of file, the transport's `_on_eof`.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (fd, transport, protocol, bulk) = {
            let this = slf.borrow();
            let Some(transport) = this.transport.as_ref() else {
                return Ok(());
            };
            let protocol = this.protocol.as_ref().map(|p| p.clone_ref(py));
            (
                this.fd,
                transport.clone_ref(py),
                protocol,
                this.bulk && this.knows_queued,
            )
        };
        let queued = if bulk { read_queued(py, fd)? } else { None };
        if bulk && queued.is_none() {
            slf.borrow_mut().knows_queued = false;
        }
        let read = queued.unwrap_or_else(|| Syscalls::Pipe.read_bytes(py, fd));
        if let Ok(Some(data)) = &read {
            slf.borrow_mut().bulk = data.as_bytes().len() >= BULK_READ;
        }
        match read {
            // As asyncio's, not guarded: a failing protocol is the loop's exception
            // handler's business, not the transport's.
            Ok(Some(data)) => {
                let protocol = protocol.unwrap_or_else(|| py.None());
                protocol.call_method1(py, intern!(py, "data_received"), (data,))?;
                Ok(())
            }
            Ok(None) => {
                transport.call_method0(py, intern!(py, "_on_eof"))?;
                Ok(())
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => Ok(()),
            Err(err) => fatal(
                transport.bind(py),
                os_error(err),
                "Fatal read error on pipe transport",
            ),
        }
    }

    /// Forgets the descriptor and the Python objects: the transport is closed and its
    /// pipe object closes the descriptor.
    fn release(&mut self) {
        self.fd = -1;
        self.transport = None;
        self.protocol = None;
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.transport)?;
        visit.call(&self.protocol)?;
        Ok(())
    }

    fn __clear__(&mut self) {
        self.transport = None;
        self.protocol = None;
    }
}

/// What a `write()` did, decided while the core was borrowed and acted on after.
enum WriteOutcome {
    /// Written, or nothing to write.
    Done,
    /// Closing or lost: dropped and counted; the count before this one.
    Dropped(u32),
    /// Queued; `first` when the queue was empty (start watching for writability).
    Queued { first: bool },
    /// The write raised this.
    Failed(PyErr),
}

/// The native state of a write pipe transport: the descriptor, the bytes not yet
/// written, and the flags `write()` reads.
#[pyclass(module = "ferroloop._ferroloop")]
pub struct WritePipeCore {
    /// The pipe's descriptor; -1 once released.
    fd: RawFd,
    /// The Python transport, for flow control, errors and the end of the transport.
    transport: Option<Py<PyAny>>,
    /// The loop, for `_add_writer`/`_remove_writer`/`_remove_reader`.
    event_loop: Option<Py<PyAny>>,
    pending: PendingWrites,
    /// asyncio's `_conn_lost`: non-zero once the pipe failed or was aborted, then
    /// counting the writes dropped since.
    #[pyo3(get, set)]
    conn_lost: u32,
    /// asyncio's `_closing`: set by `close()`, `write_eof()`, `abort()` and errors.
    #[pyo3(get, set)]
    closing: bool,
}

impl WritePipeCore {
    fn transport<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.transport.as_ref().map(|t| t.bind(py).clone())
    }

    fn event_loop<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.event_loop.as_ref().map(|l| l.bind(py).clone())
    }

    /// The write itself, with the core borrowed: drop, write, or queue.
    fn attempt(&mut self, data: &Bound<'_, PyAny>) -> PyResult<WriteOutcome> {
        if self.conn_lost > 0 || self.closing {
            self.conn_lost += 1;
            return Ok(WriteOutcome::Dropped(self.conn_lost - 1));
        }
        let was_empty = self.pending.is_empty();
        let fd = self.fd;
        let pending = &mut self.pending;
        let attempt = match data.cast::<PyBytes>() {
            // Immutable: queued by reference, not copied.
            Ok(bytes) => Ok(pending.write_or_queue_bytes(Syscalls::Pipe, fd, bytes)),
            Err(_) => ffi::with_bytes(data, |bytes| {
                pending.write_or_queue(Syscalls::Pipe, fd, bytes)
            }),
        };
        match attempt {
            Ok(WriteAttempt::Done) => Ok(WriteOutcome::Done),
            Ok(WriteAttempt::QueuedFirst) => Ok(WriteOutcome::Queued { first: true }),
            Ok(WriteAttempt::Queued) => Ok(WriteOutcome::Queued { first: false }),
            Ok(WriteAttempt::Failed(err)) => {
                self.conn_lost += 1;
                Ok(WriteOutcome::Failed(os_error(err)))
            }
            // Not a buffer (only reachable under `python -O`): with nothing queued,
            // `os.write` raised this inside the transport's error handling ...
            Err(err) if was_empty => {
                self.conn_lost += 1;
                Ok(WriteOutcome::Failed(err))
            }
            // ... and behind queued bytes, appending it to the bytearray raised.
            Err(_) => {
                let name = data.get_type().name()?;
                Err(PyTypeError::new_err(format!(
                    "can't concat {name} to bytearray"
                )))
            }
        }
    }
}

#[pymethods]
impl WritePipeCore {
    #[new]
    fn new(transport: Py<PyAny>, event_loop: Py<PyAny>, fd: RawFd) -> Self {
        WritePipeCore {
            fd,
            transport: Some(transport),
            event_loop: Some(event_loop),
            pending: PendingWrites::default(),
            conn_lost: 0,
            closing: false,
        }
    }

    /// `transport.write(data)`: write now what the pipe takes, queue the rest.
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let standard = data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>();
        if !standard && asserts_enabled(py)? {
            return Err(PyAssertionError::new_err(data.repr()?.unbind()));
        }
        if !data.is_truthy()? {
            return Ok(());
        }
        let outcome = slf.borrow_mut().attempt(data)?;
        let (transport, event_loop, fd) = {
            let this = slf.borrow();
            (this.transport(py), this.event_loop(py), this.fd)
        };
        match outcome {
            WriteOutcome::Done => Ok(()),
            WriteOutcome::Dropped(earlier) => {
                if earlier >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                    ASYNCIO_LOG_MODULE
                        .get(py)?
                        .getattr(intern!(py, "logger"))?
                        .call_method1(
                            intern!(py, "warning"),
                            ("pipe closed by peer or os.write(pipe, data) raised exception.",),
                        )?;
                }
                Ok(())
            }
            WriteOutcome::Queued { first } => {
                let (Some(transport), Some(event_loop)) = (transport, event_loop) else {
                    return Ok(());
                };
                if first {
                    let callback = slf.getattr(intern!(py, "_write_ready"))?;
                    add_writer(&event_loop, fd, callback, None)?;
                }
                transport.call_method0(intern!(py, "_maybe_pause_protocol"))?;
                Ok(())
            }
            WriteOutcome::Failed(err) => match transport {
                Some(transport) => fatal(&transport, err, WRITE_ERROR),
                None => Err(err),
            },
        }
    }

    /// The writer callback: write queued bytes; once none are left, stop watching, let
    /// the protocol resume, and end a closing transport.
    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (written, transport, event_loop, fd) = {
            let mut this = slf.borrow_mut();
            if this.pending.is_empty() && asserts_enabled(py)? {
                return Err(PyAssertionError::new_err("Data should not be empty"));
            }
            let fd = this.fd;
            let written = if this.pending.is_empty() {
                Ok(0)
            } else {
                this.pending.flush(py, Syscalls::Pipe, fd)
            };
            (written, this.transport(py), this.event_loop(py), fd)
        };
        let (Some(transport), Some(event_loop)) = (transport, event_loop) else {
            return Ok(());
        };
        match written {
            Err(err) if err.kind() == ErrorKind::WouldBlock => Ok(()),
            Err(err) => {
                {
                    let mut this = slf.borrow_mut();
                    this.pending.clear();
                    this.conn_lost += 1;
                }
                // _fatal_error() leaves the writer alone when nothing is queued.
                remove_writer(&event_loop, fd)?;
                fatal(&transport, os_error(err), WRITE_ERROR)
            }
            Ok(_) if slf.borrow().pending.is_empty() => {
                remove_writer(&event_loop, fd)?;
                // May write again (resume_writing), or close.
                transport.call_method0(intern!(py, "_maybe_resume_protocol"))?;
                if slf.borrow().closing {
                    event_loop.call_method1(intern!(py, "_remove_reader"), (fd,))?;
                    transport.call_method1(intern!(py, "_call_connection_lost"), (py.None(),))?;
                }
                Ok(())
            }
            Ok(_) => Ok(()),
        }
    }

    /// `transport.is_closing()`.
    fn is_closing(&self) -> bool {
        self.closing
    }

    /// Bytes queued and not yet written.
    fn get_write_buffer_size(&self) -> usize {
        self.pending.len()
    }

    /// Drops everything queued (an aborted or failed pipe).
    fn clear_write_buffer(&mut self) {
        self.pending.clear();
    }

    /// Forgets the descriptor and the Python objects: the transport is closed and its
    /// pipe object closes the descriptor.
    fn release(&mut self) {
        self.fd = -1;
        self.transport = None;
        self.event_loop = None;
        self.pending.clear();
    }

    // The queue's `bytes` objects hold no references, so they cannot be part of a
    // cycle and need no visit.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.transport)?;
        visit.call(&self.event_loop)?;
        Ok(())
    }

    fn __clear__(&mut self) {
        self.transport = None;
        self.event_loop = None;
    }
}
