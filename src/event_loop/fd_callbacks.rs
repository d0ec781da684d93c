//! `add_reader`/`add_writer`: callbacks run on every iteration while a descriptor is
//! ready (level-triggered, as asyncio's selector loop).
//!
//! The registry maps each watched descriptor to its reader and writer handles and the
//! object it was registered with. It mirrors what asyncio keeps in its selector, with
//! the same lookup rules: an `int` or anything with `fileno()`, and a closed file object
//! (whose `fileno()` is -1) is still found by identity, so it can be unregistered.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, RawFd};

use ferroloop_reactor::{Interest, Poller, Readiness, ReadyQueue};
use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyInt;
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::os_error;

use super::handle::Handle;

/// Which callback of a descriptor an operation is about.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Read,
    Write,
}

/// The callbacks watching one descriptor.
struct FdEntry {
    /// What the caller passed (an int or a file object), for identity lookups.
    fileobj: Py<PyAny>,
    reader: Option<Py<Handle>>,
    writer: Option<Py<Handle>>,
}

impl FdEntry {
    fn slot(&mut self, direction: Direction) -> &mut Option<Py<Handle>> {
        match direction {
            Direction::Read => &mut self.reader,
            Direction::Write => &mut self.writer,
        }
    }

    fn interest(&self) -> Interest {
        Interest {
            readable: self.reader.is_some(),
            writable: self.writer.is_some(),
            edge: false,
        }
    }
}

/// What an update leaves for the caller to release outside the loop's lock: the callback
/// it displaced (to cancel) and the file object it no longer holds.
pub(crate) type Displaced = (Option<Py<Handle>>, Option<Py<PyAny>>);

/// Descriptors watched through `add_reader`/`add_writer`.
#[derive(Default)]
pub(crate) struct FdCallbacks {
    entries: HashMap<RawFd, FdEntry>,
}

/// `fd` as asyncio's `_ensure_fd_no_transport` reads it: an `int` as is, anything else
/// through `int(fd.fileno())`.
pub(crate) fn fileno(fd: &Bound<'_, PyAny>) -> PyResult<i64> {
    if fd.is_instance_of::<PyInt>() {
        return fd.extract::<i64>();
    }
    let py = fd.py();
    let number = fd
        .call_method0(pyo3::intern!(py, "fileno"))
        .and_then(|n| py.get_type::<PyInt>().call1((n,)))
        .map_err(|err| {
            if err.is_instance_of::<PyAttributeError>(py)
                || err.is_instance_of::<PyTypeError>(py)
                || err.is_instance_of::<PyValueError>(py)
            {
                PyValueError::new_err(format!("Invalid file object: {}", repr(fd)))
            } else {
                err
            }
        })?;
    number.extract::<i64>()
}

fn repr(obj: &Bound<'_, PyAny>) -> String {
    obj.repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unprintable>".to_owned())
}

fn borrowed(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the descriptor is only passed to epoll_ctl, which validates it (EBADF)
    // and keeps no reference once the call returns; it is never read, written or closed
    // through this borrow.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

impl FdCallbacks {
    /// The descriptor to use for `fileobj`, whose `fileno()` gave `number`: a negative
    /// number (a closed file object) is looked up by identity among the registered
    /// objects, as asyncio's selector does.
    pub(crate) fn resolve(&self, fileobj: &Bound<'_, PyAny>, number: i64) -> PyResult<RawFd> {
        if number >= 0 {
            return RawFd::try_from(number)
                .map_err(|_| PyValueError::new_err(format!("Invalid file descriptor: {number}")));
        }
        self.entries
            .iter()
            .find(|(_, entry)| entry.fileobj.as_ptr() == fileobj.as_ptr())
            .map(|(fd, _)| *fd)
            .ok_or_else(|| PyValueError::new_err(format!("Invalid file descriptor: {number}")))
    }

    /// Installs `handle` as the `direction` callback of `fd`; returns the callback it
    /// replaces (to be cancelled by the caller, outside the loop's lock).
    pub(crate) fn add(
        &mut self,
        poller: &Poller,
        fd: RawFd,
        fileobj: Py<PyAny>,
        direction: Direction,
        handle: Py<Handle>,
    ) -> PyResult<Displaced> {
        let token = fd as u64;
        match self.entries.get_mut(&fd) {
            Some(entry) => {
                let previous = entry.slot(direction).replace(handle);
                let old_fileobj = std::mem::replace(&mut entry.fileobj, fileobj);
                if let Err(err) = poller.reregister(borrowed(fd), token, entry.interest()) {
                    let added = std::mem::replace(entry.slot(direction), previous);
                    entry.fileobj = old_fileobj;
                    drop(added);
                    return Err(os_error(err));
                }
                Ok((previous, Some(old_fileobj)))
            }
            None => {
                let mut entry = FdEntry {
                    fileobj,
                    reader: None,
                    writer: None,
                };
                *entry.slot(direction) = Some(handle);
                poller
                    .register(borrowed(fd), token, entry.interest())
                    .map_err(os_error)?;
                self.entries.insert(fd, entry);
                Ok((None, None))
            }
        }
    }

    /// Removes the `direction` callback of `fd`; returns it (to be cancelled by the
    /// caller), or `None` if there was none. Dropping the last callback unregisters.
    pub(crate) fn remove(&mut self, poller: &Poller, fd: RawFd, direction: Direction) -> Displaced {
        let Some(entry) = self.entries.get_mut(&fd) else {
            return (None, None);
        };
        let removed = entry.slot(direction).take();
        let interest = entry.interest();
        if interest.readable || interest.writable {
            // A failure means the descriptor is gone; the entry is dropped with it below
            // when its last callback goes, and the poll cannot report a closed fd.
            let _ = poller.reregister(borrowed(fd), fd as u64, interest);
            (removed, None)
        } else {
            let entry = self.entries.remove(&fd).expect("entry exists");
            // Closing a descriptor already removed it from epoll: nothing to undo then.
            let _ = poller.deregister(borrowed(fd));
            (removed, Some(entry.fileobj))
        }
    }

    /// The events watched on `fd` as a `selectors` mask (`EVENT_READ` = 1,
    /// `EVENT_WRITE` = 2); 0 when it is not registered.
    pub(crate) fn events(&self, fd: RawFd) -> u8 {
        self.entries.get(&fd).map_or(0, |entry| {
            u8::from(entry.reader.is_some()) | (u8::from(entry.writer.is_some()) << 1)
        })
    }

    /// Queues the callbacks a readiness report calls for; cancelled ones are removed
    /// instead, as asyncio's `_process_events` does. Removed objects are appended to
    /// `released` for the caller to drop outside the lock.
    pub(crate) fn ready(
        &mut self,
        py: Python<'_>,
        poller: &Poller,
        report: Readiness,
        queue: &mut ReadyQueue<Py<Handle>>,
        released: &mut Vec<Py<PyAny>>,
    ) {
        let fd = report.token as RawFd;
        for (ready, direction) in [
            (report.readable, Direction::Read),
            (report.writable, Direction::Write),
        ] {
            if !ready {
                continue;
            }
            let Some(entry) = self.entries.get_mut(&fd) else {
                return;
            };
            let Some(handle) = entry.slot(direction).as_ref() else {
                continue;
            };
            if handle.get().core.is_cancelled() {
                let (handle, fileobj) = self.remove(poller, fd, direction);
                released.extend(handle.map(Py::into_any));
                released.extend(fileobj);
            } else {
                queue.push(handle.clone_ref(py));
            }
        }
    }

    /// Unregisters everything (loop close), returning the Python objects.
    pub(crate) fn clear(&mut self, poller: Option<&Poller>) -> Vec<Py<PyAny>> {
        let mut released = Vec::new();
        for (fd, entry) in self.entries.drain() {
            if let Some(poller) = poller {
                let _ = poller.deregister(borrowed(fd));
            }
            released.push(entry.fileobj);
            released.extend(entry.reader.map(Py::into_any));
            released.extend(entry.writer.map(Py::into_any));
        }
        released
    }

    /// Reports every stored object to the garbage collector.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for entry in self.entries.values() {
            visit.call(&entry.fileobj)?;
            visit.call(&entry.reader)?;
            visit.call(&entry.writer)?;
        }
        Ok(())
    }
}
