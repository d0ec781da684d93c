//! The stream-transport core shared by socket and pipe transports.
//!
//! Both kinds move bytes the same way: a readiness callback reads once into the
//! per-thread scratch buffer and hands a `bytes` of the size read to the protocol;
//! `write()` tries the descriptor at once when nothing is queued and queues only the
//! rest; the writer callback drains the queue. What differs is the syscall pair
//! ([`Syscalls`]) and asyncio's rules around it (which errors are fatal, what a write to
//! a closing transport does, how EOF and `close()` end), which the socket and pipe
//! cores (`socket.rs`, `pipe.rs`) each keep as asyncio's two transport classes do.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice};
use std::os::fd::RawFd;

use ferroloop_reactor::stream_io;
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyBytes};

/// How much one read may take: asyncio's `max_size` for socket and pipe transports, and
/// the size of the scratch buffer reads land in.
pub(crate) const MAX_READ: usize = 256 * 1024;

/// After this many writes to a lost connection, each further one is logged (asyncio's
/// `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`).
pub(crate) const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

thread_local! {
    /// The buffer reads land in before being copied into a `bytes` of the right size.
    /// One per thread (a loop runs on one thread), so 10,000 idle connections do not
    /// each hold 256 KiB; not shared between threads, so no lock is needed.
    static READ_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_READ].into_boxed_slice());
}

/// Runs `f` with this thread's read buffer (256 KiB): where reads land before being
/// copied into a `bytes` of the size received.
pub(crate) fn with_read_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    READ_SCRATCH.with_borrow_mut(|scratch| f(scratch))
}

/// Adds what a transport's read returned to `loop.stats()`'s byte counter.
#[inline]
pub(crate) fn counted_read(result: io::Result<usize>) -> io::Result<usize> {
    if let Ok(n) = result {
        crate::observe::stats::count_read(n);
    }
    result
}

/// Adds what a transport's write took to `loop.stats()`'s byte counter.
#[inline]
pub(crate) fn counted_written(result: io::Result<usize>) -> io::Result<usize> {
    if let Ok(n) = result {
        crate::observe::stats::count_written(n);
    }
    result
}

/// The syscalls a stream transport reads and writes its descriptor with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Syscalls {
    /// `recv`/`send` (with `MSG_NOSIGNAL`), as asyncio's socket transports call
    /// `sock.recv`/`sock.send`.
    Socket,
    /// `read`/`write`, as asyncio's pipe transports call `os.read`/`os.write`; also what
    /// a pipe transport uses on a socket or a tty it was given.
    Pipe,
}

impl Syscalls {
    /// Reads what is available into `buf`; `Ok(0)` is end of stream.
    pub(crate) fn read(self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        counted_read(match self {
            Syscalls::Socket => stream_io::recv(fd, buf),
            Syscalls::Pipe => stream_io::read(fd, buf),
        })
    }

    /// Writes as much of `buf` as the descriptor takes now.
    pub(crate) fn write(self, fd: RawFd, buf: &[u8]) -> io::Result<usize> {
        counted_written(match self {
            Syscalls::Socket => stream_io::send(fd, buf),
            Syscalls::Pipe => stream_io::write(fd, buf),
        })
    }

    /// Writes as much of `bufs`, in order, as the descriptor takes now. (A socket core
    /// queues one segment only, so for sockets this is never more than one `send`.)
    fn write_vectored(self, fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        counted_written(match self {
            Syscalls::Socket => bufs.first().map_or(Ok(0), |buf| stream_io::send(fd, buf)),
            Syscalls::Pipe => stream_io::writev(fd, bufs),
        })
    }

    /// One read into the scratch buffer, as a `bytes` of the size read: `Ok(None)` at end
    /// of stream. `WouldBlock` is returned as an error, for the caller to ignore.
    pub(crate) fn read_bytes<'py>(
        self,
        py: Python<'py>,
        fd: RawFd,
    ) -> io::Result<Option<Bound<'py, PyBytes>>> {
        with_read_scratch(|scratch| {
            self.read(fd, scratch)
                .map(|n| (n > 0).then(|| PyBytes::new(py, &scratch[..n])))
        })
    }
}

/// What trying to write, or queueing, did with the bytes of one `write()`.
pub(crate) enum WriteAttempt {
    /// Everything was written.
    Done,
    /// Some bytes were queued and the queue was empty: start watching for writability.
    QueuedFirst,
    /// Bytes were appended to a non-empty queue.
    Queued,
    /// The write failed; nothing was queued.
    Failed(io::Error),
}

/// `bytes` objects at least this large are queued by reference ([`PendingWrites`]);
/// smaller writes are copied and gathered, so the queue stays a few segments long.
const SHARE_AT_LEAST: usize = 4096;

/// At most this many segments go into one `writev`.
const MAX_SEGMENTS_PER_WRITE: usize = 64;

/// One run of queued bytes.
enum Segment {
    /// Copied in: from a mutable buffer (which its owner may change after `write()`
    /// returns), or small writes gathered together.
    Copied(Vec<u8>),
    /// An immutable `bytes` object, kept rather than copied.
    Shared(Py<PyBytes>),
}

impl Segment {
    fn bytes<'a>(&'a self, py: Python<'a>) -> &'a [u8] {
        match self {
            Segment::Copied(data) => data,
            Segment::Shared(bytes) => bytes.as_bytes(py),
        }
    }
}

/// Bytes `write()` could not send yet, in order, consumed from the front without
/// shifting the rest on every partial send. The transport's own copy of mutable data, so
/// a caller reusing its buffer cannot corrupt queued bytes; immutable `bytes` are kept
/// by reference instead (pipe transports, [`PendingWrites::write_or_queue_bytes`]).
#[derive(Default)]
pub(crate) struct PendingWrites {
    segments: VecDeque<Segment>,
    /// How much of the front segment is already written.
    front_written: usize,
    len: usize,
}

impl PendingWrites {
    /// Bytes queued and not yet written.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a copy of `bytes` to the queue.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        let alone = self.segments.len() == 1;
        if let Some(Segment::Copied(last)) = self.segments.back_mut() {
            if alone && self.front_written > 0 && self.front_written >= last.len() / 2 {
                // Mostly written already: drop that part rather than grow behind it.
                last.drain(..self.front_written);
                self.front_written = 0;
            }
            last.extend_from_slice(bytes);
        } else {
            self.segments.push_back(Segment::Copied(bytes.to_vec()));
        }
    }

    /// Appends `bytes` by reference, minus its first `written` bytes (only with nothing
    /// else queued).
    fn push_shared(&mut self, bytes: Py<PyBytes>, total: usize, written: usize) {
        debug_assert!(written == 0 || self.is_empty());
        if self.is_empty() {
            self.segments.clear();
            self.front_written = written;
        }
        self.len += total - written;
        self.segments.push_back(Segment::Shared(bytes));
    }

    fn consume(&mut self, py: Python<'_>, mut count: usize) {
        self.len -= count;
        while count > 0 {
            let alone = self.segments.len() == 1;
            let Some(front) = self.segments.front_mut() else {
                break;
            };
            let rest = front.bytes(py).len() - self.front_written;
            if count < rest {
                self.front_written += count;
                return;
            }
            count -= rest;
            self.front_written = 0;
            match front {
                // Kept, emptied, with its allocation, for the next bytes queued.
                Segment::Copied(data) if alone => data.clear(),
                _ => drop(self.segments.pop_front()),
            }
        }
    }

    /// Drops everything queued.
    pub(crate) fn clear(&mut self) {
        *self = PendingWrites::default();
    }

    /// `write()`'s core: with nothing queued, write at once and queue what the
    /// descriptor did not take; behind queued bytes, only queue (order is kept).
    pub(crate) fn write_or_queue(&mut self, io: Syscalls, fd: RawFd, bytes: &[u8]) -> WriteAttempt {
        if !self.is_empty() {
            self.push(bytes);
            return WriteAttempt::Queued;
        }
        match io.write(fd, bytes) {
            Ok(n) if n == bytes.len() => WriteAttempt::Done,
            Ok(n) => {
                self.push(&bytes[n..]);
                WriteAttempt::QueuedFirst
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                self.push(bytes);
                WriteAttempt::QueuedFirst
            }
            Err(err) => WriteAttempt::Failed(err),
        }
    }

    /// [`PendingWrites::write_or_queue`] for a `bytes` object, which (being immutable,
    /// and large enough to be worth it) is queued by reference instead of copied.
    pub(crate) fn write_or_queue_bytes(
        &mut self,
        io: Syscalls,
        fd: RawFd,
        bytes: &Bound<'_, PyBytes>,
    ) -> WriteAttempt {
        let data = bytes.as_bytes();
        if data.len() < SHARE_AT_LEAST {
            return self.write_or_queue(io, fd, data);
        }
        if !self.is_empty() {
            self.push_shared(bytes.clone().unbind(), data.len(), 0);
            return WriteAttempt::Queued;
        }
        let written = match io.write(fd, data) {
            Ok(n) if n == data.len() => return WriteAttempt::Done,
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::WouldBlock => 0,
            Err(err) => return WriteAttempt::Failed(err),
        };
        self.push_shared(bytes.clone().unbind(), data.len(), written);
        WriteAttempt::QueuedFirst
    }

    /// The writer callback's core: one write of the queued bytes (`writev` when they are
    /// in several segments), consuming what the descriptor took; the count written.
    pub(crate) fn flush(&mut self, py: Python<'_>, io: Syscalls, fd: RawFd) -> io::Result<usize> {
        if self.is_empty() {
            return Ok(0);
        }
        let written = {
            let mut slices = self
                .segments
                .iter()
                .take(MAX_SEGMENTS_PER_WRITE)
                .map(|segment| IoSlice::new(segment.bytes(py)));
            let Some(first) = slices.next() else {
                return Ok(0);
            };
            let first = IoSlice::new(&first[self.front_written..]);
            if self.segments.len() == 1 {
                io.write(fd, &first)?
            } else {
                let all: Vec<IoSlice<'_>> = std::iter::once(first).chain(slices).collect();
                io.write_vectored(fd, &all)?
            }
        };
        self.consume(py, written);
        Ok(written)
    }
}

/// Whether `err` is `KeyboardInterrupt` or `SystemExit`, which asyncio's transports let
/// propagate instead of treating as a failed connection.
pub(crate) fn is_exit(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// Makes the loop call `callback` whenever `fd` is writable (`loop._add_writer`), in
/// `context` when there is one (3.15's per-connection context).
pub(crate) fn add_writer(
    event_loop: &Bound<'_, PyAny>,
    fd: RawFd,
    callback: Bound<'_, PyAny>,
    context: Option<&Py<PyAny>>,
) -> PyResult<()> {
    let py = event_loop.py();
    let kwargs = match context {
        Some(context) => Some([(intern!(py, "context"), context.clone_ref(py))].into_py_dict(py)?),
        None => None,
    };
    event_loop.call_method(intern!(py, "_add_writer"), (fd, callback), kwargs.as_ref())?;
    Ok(())
}

/// Stops watching `fd` for writability (`loop._remove_writer`).
pub(crate) fn remove_writer(event_loop: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<()> {
    let py = event_loop.py();
    event_loop.call_method1(intern!(py, "_remove_writer"), (fd,))?;
    Ok(())
}
