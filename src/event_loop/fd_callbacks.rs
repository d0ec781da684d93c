//! `add_reader`/`add_writer`: callbacks run on every iteration while a descriptor is
//! ready (level-triggered, as asyncio's selector loop).
//!
//! The registry maps each watched descriptor to its reader and writer handles and the
//! object it was registered with. It mirrors what asyncio keeps in its selector, with
//! the same lookup rules: an `int` or anything with `fileno()`, and a closed file object
//! (whose `fileno()` is -1) is still found by identity, so it can be unregistered.
//!
//! Native socket operations (`sock_recv`, `sock_recv_into` on a plain `socket.socket`)
//! read through the other kind of reader, the *edge reader*. A descriptor has one
//! reader of either kind, as asyncio's selector key has one: installing either replaces
//! (and cancels) the other. asyncio registers and unregisters the descriptor around
//! every wait (two `epoll_ctl` calls per `sock_recv` that has to wait); here the
//! registration is kept, edge-triggered, between operations on the same socket, so a
//! wait costs no `epoll_ctl` at all. That is sound because those operations make the
//! syscall themselves before waiting: they only wait after the kernel's `EAGAIN`, and
//! any data that arrives after an `EAGAIN` is an edge. (A socket subclass's `recv` may
//! say "would block" with data queued, so its waits use an ordinary, level-triggered
//! reader.) A kept registration holds only a weak reference to its socket; if the
//! descriptor number later belongs to another socket, the registration is renewed (the
//! kernel dropped the old one when the old socket closed).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::{BorrowedFd, RawFd};

use ferroloop_reactor::{Interest, Poller, Readiness, ReadyQueue};
use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyWeakrefMethods, PyWeakrefReference};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::os_error;

use super::handle::Handle;

/// The callbacks watching one descriptor.
struct FdEntry {
    /// What `add_reader`/`add_writer` was given (an int or a file object), for identity
    /// lookups. Dropped when only socket operations use the entry, so a kept
    /// registration never keeps a socket alive.
    fileobj: Option<Py<PyAny>>,
    reader: Option<Py<Handle>>,
    writer: Option<Py<Handle>>,
    /// A socket operation's reader (never set together with `reader`): queued on every
    /// readiness report, edge-triggered while no level-triggered callback shares the
    /// descriptor.
    edge_reader: Option<Py<Handle>>,
    /// The socket the registration is kept for between socket operations (weakly).
    kept_for: Option<Py<PyWeakrefReference>>,
}

impl FdEntry {
    fn slot(&mut self, slot: Slot) -> &mut Option<Py<Handle>> {
        match slot {
            Slot::Reader => &mut self.reader,
            Slot::Writer => &mut self.writer,
            Slot::EdgeReader => &mut self.edge_reader,
        }
    }

    /// What epoll should watch for, or `None` when nothing uses the descriptor.
    ///
    /// With `add_reader`/`add_writer` callbacks the registration is level-triggered, as
    /// asyncio's, and readable only if someone reads (an idle kept registration must not
    /// report a readable socket on every iteration). Otherwise a socket operation's
    /// reader, or a registration kept for one, watches edge-triggered reads.
    fn interest(&self, py: Python<'_>) -> Option<Interest> {
        if self.reader.is_some() || self.writer.is_some() {
            return Some(Interest {
                readable: self.reader.is_some() || self.edge_reader.is_some(),
                writable: self.writer.is_some(),
                edge: false,
            });
        }
        (self.edge_reader.is_some() || self.kept_socket(py).is_some()).then_some(Interest {
            readable: true,
            writable: false,
            edge: true,
        })
    }

    /// The socket the registration is kept for, if it is still alive.
    fn kept_socket<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.kept_for.as_ref()?.bind(py).upgrade()
    }
}

/// One of the callbacks of a descriptor.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Reader,
    EdgeReader,
    Writer,
}

impl Slot {
    /// The slot that installing into this one empties: the two kinds of reader are one
    /// reader as far as programs can tell.
    fn rival(self) -> Option<Slot> {
        match self {
            Slot::Reader => Some(Slot::EdgeReader),
            Slot::EdgeReader => Some(Slot::Reader),
            Slot::Writer => None,
        }
    }
}

/// A callback taken out of `entry`'s `slot` (by a replacement), kept to put it back if
/// the replacement fails.
type Taken = Option<(Slot, Py<Handle>)>;

impl FdEntry {
    /// Empties the slot that installing into `slot` displaces (see [`Slot::rival`]).
    fn take_rival(&mut self, slot: Slot) -> Taken {
        let rival = slot.rival()?;
        self.slot(rival).take().map(|handle| (rival, handle))
    }

    /// Undoes [`FdEntry::take_rival`].
    fn restore(&mut self, taken: Taken) {
        if let Some((slot, handle)) = taken {
            *self.slot(slot) = Some(handle);
        }
    }
}

/// The callback a replacement displaced: the one in the slot itself, or its rival.
fn displaced(previous: Option<Py<Handle>>, rival: Taken) -> Option<Py<Handle>> {
    debug_assert!(
        previous.is_none() || rival.is_none(),
        "one reader per descriptor"
    );
    previous.or(rival.map(|(_, handle)| handle))
}

/// What an update leaves for the caller to release outside the loop's lock: the callback
/// it displaced (to cancel) and the file object it no longer holds.
pub(crate) type Displaced = (Option<Py<Handle>>, Option<Py<PyAny>>);

/// Descriptors watched through `add_reader`/`add_writer`.
#[derive(Default)]
pub(crate) struct FdCallbacks {
    entries: HashMap<RawFd, FdEntry, BuildHasherDefault<FdHasher>>,
}

/// The registry's hash of a descriptor number. Descriptors are small integers handed out
/// by the kernel, not keys an attacker picks, so the default SipHash (collision-resistant,
/// and about a tenth of the loop's own work in a socket wait, which looks the registry up
/// several times) buys nothing. Multiplying by an odd constant (Fibonacci hashing, as
/// FxHash does) spreads consecutive numbers over the high bits hashbrown groups by.
#[derive(Default)]
struct FdHasher(u64);

impl Hasher for FdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_i32(&mut self, fd: i32) {
        // The bit pattern is what matters: `as` keeps it (descriptors are never negative).
        self.write_u64(u64::from(fd as u32));
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
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
            .find(|(_, entry)| {
                entry
                    .fileobj
                    .as_ref()
                    .is_some_and(|obj| obj.as_ptr() == fileobj.as_ptr())
            })
            .map(|(fd, _)| *fd)
            .ok_or_else(|| PyValueError::new_err(format!("Invalid file descriptor: {number}")))
    }

    /// Installs `handle` as the `slot` callback (reader or writer) of `fd`, registered
    /// with `fileobj`; returns the callback it replaces (to be cancelled by the caller,
    /// outside the loop's lock).
    pub(crate) fn add(
        &mut self,
        py: Python<'_>,
        poller: &Poller,
        fd: RawFd,
        fileobj: &Bound<'_, PyAny>,
        slot: Slot,
        handle: Py<Handle>,
    ) -> PyResult<Displaced> {
        debug_assert!(slot != Slot::EdgeReader, "edge readers use add_edge_reader");
        let token = fd as u64;
        let fileobj = fileobj.clone().unbind();
        match self.entries.get_mut(&fd) {
            Some(entry) => {
                let rival = entry.take_rival(slot);
                let previous = entry.slot(slot).replace(handle);
                let old_fileobj = entry.fileobj.replace(fileobj);
                let interest = entry.interest(py).expect("a callback is installed");
                if let Err(err) = poller.reregister(borrowed(fd), token, interest) {
                    let added = std::mem::replace(entry.slot(slot), previous);
                    entry.restore(rival);
                    entry.fileobj = old_fileobj;
                    drop(added);
                    return Err(os_error(err));
                }
                Ok((displaced(previous, rival), old_fileobj))
            }
            None => {
                let mut entry = FdEntry {
                    fileobj: Some(fileobj),
                    reader: None,
                    writer: None,
                    edge_reader: None,
                    kept_for: None,
                };
                *entry.slot(slot) = Some(handle);
                self.insert_registered(py, poller, fd, entry)
            }
        }
    }

    /// Installs `handle` as the socket-operation reader of `sock`'s descriptor `fd`,
    /// keeping the registration for `sock` afterwards (see the module documentation).
    /// Returns the reader it replaces, for the caller to cancel, and the weak reference
    /// to a previous socket it no longer needs.
    ///
    /// `weak` is a weak reference to `sock`, made by the caller before taking the loop's
    /// lock (allocating under it could run a collection whose finalizers call back into
    /// the loop); without one (a socket that cannot be weakly referenced) the
    /// registration is not kept.
    pub(crate) fn add_edge_reader(
        &mut self,
        py: Python<'_>,
        poller: &Poller,
        fd: RawFd,
        sock: &Bound<'_, PyAny>,
        handle: Py<Handle>,
        weak: Option<Py<PyWeakrefReference>>,
    ) -> PyResult<Displaced> {
        let token = fd as u64;
        let Some(entry) = self.entries.get_mut(&fd) else {
            let entry = FdEntry {
                fileobj: None,
                reader: None,
                writer: None,
                edge_reader: Some(handle),
                kept_for: weak,
            };
            return self.insert_registered(py, poller, fd, entry);
        };
        let registered_for_sock = entry.kept_socket(py).is_some_and(|kept| kept.is(sock));
        let before = entry.interest(py);
        let rival = entry.take_rival(Slot::EdgeReader);
        let previous = entry.edge_reader.replace(handle);
        let replaced_owner = if registered_for_sock {
            None
        } else {
            std::mem::replace(&mut entry.kept_for, weak)
        };
        let after = entry.interest(py);
        // The same socket's kept registration is already in epoll: no syscall. Another
        // socket's (the number was reused) is renewed; re-adding if the kernel forgot it.
        if !registered_for_sock || before != after {
            let interest = after.expect("a reader is installed");
            if let Err(err) = poller.reregister(borrowed(fd), token, interest) {
                let added = std::mem::replace(&mut entry.edge_reader, previous);
                entry.restore(rival);
                drop(added);
                return Err(os_error(err));
            }
        }
        Ok((displaced(previous, rival), replaced_owner.map(Py::into_any)))
    }

    /// Registers a new entry's descriptor with epoll, then records the entry.
    fn insert_registered(
        &mut self,
        py: Python<'_>,
        poller: &Poller,
        fd: RawFd,
        entry: FdEntry,
    ) -> PyResult<Displaced> {
        let interest = entry.interest(py).expect("a new entry has a callback");
        poller
            .register(borrowed(fd), fd as u64, interest)
            .map_err(os_error)?;
        self.entries.insert(fd, entry);
        Ok((None, None))
    }

    /// Brings epoll in line with `fd`'s entry after a callback went away: unregisters
    /// (and forgets) an entry nothing uses any more, re-registers one whose interest
    /// changed. Returns the file object a forgotten entry held.
    fn update_registration(
        &mut self,
        py: Python<'_>,
        poller: &Poller,
        fd: RawFd,
        before: Option<Interest>,
    ) -> Option<Py<PyAny>> {
        let entry = self.entries.get_mut(&fd)?;
        match entry.interest(py) {
            // A failure means the descriptor is gone; the entry goes with its last
            // callback, and the poll cannot report a closed fd.
            Some(interest) if Some(interest) != before => {
                let _ = poller.reregister(borrowed(fd), fd as u64, interest);
            }
            Some(_) => {}
            None => {
                let entry = self.entries.remove(&fd).expect("entry exists");
                // Closing a descriptor already removed it from epoll: nothing to undo.
                let _ = poller.deregister(borrowed(fd));
                return entry.fileobj;
            }
        }
        if entry.reader.is_none() && entry.writer.is_none() {
            // Only socket operations use it now: do not keep their socket alive.
            return entry.fileobj.take();
        }
        None
    }

    /// Removes the `slot` callback of `fd`; returns it (to be cancelled by the caller),
    /// or `None` if there was none. Dropping the last callback unregisters, unless the
    /// registration is kept for a live socket.
    pub(crate) fn remove(
        &mut self,
        py: Python<'_>,
        poller: &Poller,
        fd: RawFd,
        slot: Slot,
    ) -> Displaced {
        let Some(entry) = self.entries.get_mut(&fd) else {
            return (None, None);
        };
        let before = entry.interest(py);
        // `remove_reader` removes the descriptor's reader whatever its kind, as asyncio
        // does when a socket operation installed it; a socket operation removes only
        // its own (it checks its handle is still installed first).
        let removed = match slot {
            Slot::Reader => entry.reader.take().or_else(|| entry.edge_reader.take()),
            Slot::EdgeReader | Slot::Writer => entry.slot(slot).take(),
        };
        if removed.is_none() {
            return (None, None);
        }
        let fileobj = self.update_registration(py, poller, fd, before);
        (removed, fileobj)
    }

    /// The events watched on `fd` as a `selectors` mask (`EVENT_READ` = 1,
    /// `EVENT_WRITE` = 2); 0 when it is not registered.
    pub(crate) fn events(&self, fd: RawFd) -> u8 {
        self.entries.get(&fd).map_or(0, |entry| {
            let reading = entry.reader.is_some() || entry.edge_reader.is_some();
            u8::from(reading) | (u8::from(entry.writer.is_some()) << 1)
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
        for (ready, slot) in [
            (report.readable, Slot::Reader),
            (report.readable, Slot::EdgeReader),
            (report.writable, Slot::Writer),
        ] {
            if !ready {
                continue;
            }
            let Some(entry) = self.entries.get_mut(&fd) else {
                return;
            };
            let Some(handle) = entry.slot(slot).as_ref() else {
                continue;
            };
            if !handle.get().core.is_cancelled() {
                queue.push(handle.clone_ref(py));
                continue;
            }
            let (handle, fileobj) = self.remove(py, poller, fd, slot);
            released.extend(handle.map(Py::into_any));
            released.extend(fileobj);
        }
    }

    /// Unregisters everything (loop close), returning the Python objects.
    pub(crate) fn clear(&mut self, poller: Option<&Poller>) -> Vec<Py<PyAny>> {
        let mut released = Vec::new();
        for (fd, entry) in self.entries.drain() {
            if let Some(poller) = poller {
                let _ = poller.deregister(borrowed(fd));
            }
            released.extend(entry.fileobj);
            released.extend(entry.reader.map(Py::into_any));
            released.extend(entry.writer.map(Py::into_any));
            released.extend(entry.edge_reader.map(Py::into_any));
            released.extend(entry.kept_for.map(Py::into_any));
        }
        released
    }

    /// Reports every stored object to the garbage collector.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for entry in self.entries.values() {
            visit.call(&entry.fileobj)?;
            visit.call(&entry.reader)?;
            visit.call(&entry.writer)?;
            visit.call(&entry.edge_reader)?;
            visit.call(&entry.kept_for)?;
        }
        Ok(())
    }
}
