//! [`DatagramTransportCore`]: the native hot paths of `ferroloop.DatagramTransport`.
//!
//! The Python transport (`python/ferroloop/_datagram.py`) is a subclass of asyncio's
//! own `_SelectorDatagramTransport`, so closing, aborting, flow control, `repr`, the
//! unclosed-transport warning, the queue drained on writability and every check they
//! make are the installed Python's code, version by version. This core holds the state
//! those methods share with the hot paths (the socket, protocol, fixed address, queue
//! and lost-connection count: the transport's properties of the same names read and
//! write it here) and implements the two per-datagram operations:
//!
//! - `_read_ready`, the reader callback: one `recvfrom` into the per-thread scratch
//!   buffer (256 KiB, asyncio's `max_size`, so nothing is truncated that stock would
//!   keep), a `bytes` of the datagram's size, the sender decoded as `socket.recvfrom`
//!   does, then `protocol.datagram_received(data, addr)`; an `OSError` goes to
//!   `protocol.error_received`, and exceptions from the protocol propagate to the loop,
//!   as there.
//! - `sendto`: the same checks, then `send`/`sendto` by raw descriptor at once when
//!   nothing is queued. Anything off that path calls asyncio's own `sendto` (as
//!   `_stock_sendto`), which then does exactly what stock does: a send that would block
//!   (it retries once, then queues and watches for writability), something queued
//!   already, a lost connection, an empty datagram (3.11 and 3.12 drop it, 3.13+ send
//!   it), an address the kernel format cannot be built from natively (host names,
//!   `'<broadcast>'`, scope suffixes, non-ASCII paths: `socket.sendto` resolves or
//!   rejects them itself), a socket subclass or another family.
//!
//! **One datagram per readiness.** asyncio reads one datagram each time the reader
//! runs, and the reader runs once per loop iteration: what a datagram's handling
//! schedules with `call_soon` (a future's callbacks, the task they wake) runs before the
//! next datagram is delivered, a timer that falls due meanwhile runs before the one
//! after, and other descriptors' callbacks interleave with the datagrams.
//! Reading more per readiness (a `recvfrom` loop, or `recvmmsg`) would deliver later
//! datagrams ahead of those callbacks, which a program can see: a protocol that feeds
//! an `asyncio.Queue`, one that calls `pause_reading()` or `close()` from a callback it
//! scheduled, a timeout. The only extra read nobody could see is the one the next
//! iteration would make first anyway, and knowing when that is needs the loop's state
//! (this callback the last of its batch, nothing new scheduled, not stopping, this
//! descriptor the only one its poll reported), not the transport's. It would save at
//! most one `epoll_wait` per two datagrams, and measured on the native UDP echo
//! (`benchmarks/native-echo`, 64 B, 4 clients) reading two per readiness costs the
//! kernel as much as one (13.8 against 13.7 µs per datagram; even 32 saved only 7 %):
//! the send and the wake-up of the peer dominate. So this reads exactly one, as stock
//! does, and every callback order a program can observe is stock's.

use std::io::{self, ErrorKind};
use std::net::IpAddr;
use std::os::fd::RawFd;

use ferroloop_reactor::datagram_io::{
    self, format_ipv4, format_ipv6, HostBuf, Sender, Target, UnixNameKind,
};
use ferroloop_reactor::stream_io;
use pyo3::exceptions::{PyAttributeError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyByteArray, PyBytes, PyInt, PyMemoryView, PyString, PyTuple, PyWeakrefMethods,
    PyWeakrefReference,
};
use pyo3::{intern, PyTraverseError, PyVisit};

use super::stream::{with_read_scratch, MAX_READ};
use crate::errors::os_error;
use crate::ffi;
use crate::py_cache::ASYNCIO_LOG_MODULE;

/// After this many sends on a lost connection, each further one is logged (asyncio's
/// `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`).
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// `socket.AF_*` numbers of the families served natively.
const AF_UNIX: i32 = 1;
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;

/// The socket families whose addresses this core converts itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Inet,
    Inet6,
    Unix,
}

impl Family {
    fn from_raw(family: i32) -> Option<Family> {
        match family {
            AF_INET => Some(Family::Inet),
            AF_INET6 => Some(Family::Inet6),
            AF_UNIX => Some(Family::Unix),
            _ => None,
        }
    }
}

/// The transport's native state and hot paths (see the module documentation).
#[pyclass(module = "ferroloop._ferroloop")]
pub struct DatagramTransportCore {
    /// The socket's descriptor; -1 once the transport let go of the socket (the
    /// number may then belong to another file).
    fd: RawFd,
    /// `None`: the transport runs asyncio's methods only (a socket subclass, another
    /// family, a larger `max_size`); this core then only stores the state.
    family: Option<Family>,
    /// The Python transport, for the calls into asyncio's code: weakly, since the
    /// transport holds this core (and its bound `sendto`). What keeps an open transport
    /// alive is the loop's reader, a [`DatagramReader`] holding it strongly, as stock's
    /// bound `_read_ready` does.
    transport: Option<Py<PyWeakrefReference>>,
    /// `transport._sock`.
    sock: Option<Py<PyAny>>,
    /// `transport._protocol`.
    protocol: Option<Py<PyAny>>,
    /// `transport._address`: the fixed destination (`remote_addr`), or None.
    address: Option<Py<PyAny>>,
    /// `bool(transport._address)`, which decides stock's checks.
    address_set: bool,
    /// `address` as a `sockaddr`, once built.
    address_target: Option<Target>,
    /// `transport._buffer`: asyncio's deque of queued `(bytes, addr)`.
    buffer: Option<Py<PyAny>>,
    /// `transport._conn_lost`.
    #[pyo3(get, set)]
    conn_lost: u32,
    /// Whether the socket has a peer (`transport._extra['peername']` is true), so
    /// stock sends with `send()` rather than `sendto()`.
    connected: bool,
    /// The last sender's host string (see [`HostCache`]).
    recv_host: HostCache,
    /// The last destination host string and its address (see [`SendHost`]).
    send_host: SendHost,
}

/// The send to make, decided while the core was borrowed.
enum SendPlan {
    /// Let asyncio's `sendto` handle the call.
    Stock,
    /// `send()` on the connected socket.
    Connected(RawFd),
    /// `sendto()` to the fixed address (its `sockaddr`, if it could be built).
    To(RawFd, Option<Target>),
    /// `sendto()` to `addr`, once converted.
    ToAddr(RawFd, Family),
}

fn is_would_block(err: &io::Error) -> bool {
    // What `socket.sendto` raises as BlockingIOError (EAGAIN is EWOULDBLOCK on Linux).
    err.kind() == ErrorKind::WouldBlock
        || matches!(
            err.raw_os_error(),
            Some(code) if code == rustix::io::Errno::ALREADY.raw_os_error()
                || code == rustix::io::Errno::INPROGRESS.raw_os_error()
        )
}

/// A port as CPython's `"i"` conversion followed by its range check takes it; `None`
/// for anything else (Python then raises its own error).
fn port(obj: &Bound<'_, PyAny>) -> Option<u16> {
    if !obj.is_instance_of::<PyInt>() {
        return None;
    }
    obj.extract::<u16>().ok()
}

/// An `int` that CPython's `"I"` conversion reads without wrapping.
fn unsigned(obj: &Bound<'_, PyAny>) -> Option<u32> {
    if !obj.is_instance_of::<PyInt>() {
        return None;
    }
    obj.extract::<u32>().ok()
}

/// The last host string a transport sent to, and what it parsed as: an echo server
/// sends back to the host object its reader made (see [`HostCache`]), so this usually
/// saves the parse. Holding the string keeps its identity from being reused.
type SendHost = Option<(Py<PyString>, IpAddr)>;

/// The numeric host `host` names for `family` (through `cache`), or `None`.
fn parse_host(family: Family, host: &Bound<'_, PyAny>, cache: &mut SendHost) -> Option<IpAddr> {
    if let Some((cached, ip)) = cache {
        if cached.is(host) {
            return Some(*ip);
        }
    }
    let text = host.cast::<PyString>().ok()?;
    let ip = match family {
        Family::Inet => IpAddr::V4(datagram_io::parse_ipv4(text.to_str().ok()?)?),
        _ => IpAddr::V6(datagram_io::parse_ipv6(text.to_str().ok()?)?),
    };
    *cache = Some((text.clone().unbind(), ip));
    Some(ip)
}

/// The `sockaddr` `socket.sendto(data, addr)` would build for `addr` on a socket of
/// `family`, when it can be built without name resolution or a special case; `None`
/// hands the call to Python.
fn target(family: Family, addr: &Bound<'_, PyAny>, cache: &mut SendHost) -> Option<Target> {
    match family {
        Family::Inet | Family::Inet6 => {
            let tuple = addr.cast::<PyTuple>().ok()?;
            let arity = tuple.len();
            let expected = if family == Family::Inet { 2..=2 } else { 2..=4 };
            if !expected.contains(&arity) {
                return None;
            }
            let ip = parse_host(family, &tuple.get_item(0).ok()?, cache)?;
            let port = port(&tuple.get_item(1).ok()?)?;
            match ip {
                IpAddr::V4(ip) => Some(Target::V4(std::net::SocketAddrV4::new(ip, port))),
                IpAddr::V6(ip) => {
                    let flowinfo = match arity {
                        2 => 0,
                        _ => unsigned(&tuple.get_item(2).ok()?).filter(|&f| f <= 0xfffff)?,
                    };
                    let scope_id = match arity {
                        4 => unsigned(&tuple.get_item(3).ok()?)?,
                        _ => 0,
                    };
                    Some(Target::V6(std::net::SocketAddrV6::new(
                        ip, port, flowinfo, scope_id,
                    )))
                }
            }
        }
        Family::Unix => {
            if let Ok(path) = addr.cast::<PyString>() {
                // Encoded with the filesystem encoding by Python; ASCII is the same bytes
                // in every one of them.
                let path = path.to_str().ok().filter(|p| p.is_ascii())?;
                return Target::unix(path.as_bytes());
            }
            if let Ok(path) = addr.cast::<PyBytes>() {
                return Target::unix(path.as_bytes());
            }
            if addr.is_instance_of::<PyByteArray>() {
                return ffi::with_bytes(addr, Target::unix).ok().flatten();
            }
            None
        }
    }
}

/// The host string of the last sender, reused while datagrams come from the same
/// address (stock makes a new equal string each time; only `is` could tell).
type HostCache = Option<(IpAddr, Py<PyString>)>;

/// The host string for `ip`, as `inet_ntop` writes it.
fn host_string<'py>(py: Python<'py>, ip: IpAddr, cache: &mut HostCache) -> Bound<'py, PyString> {
    if let Some((cached, host)) = cache {
        if *cached == ip {
            return host.bind(py).clone();
        }
    }
    let mut buf = HostBuf::new();
    match &ip {
        IpAddr::V4(v4) => format_ipv4(v4, &mut buf),
        // Fits: the longest form is 45 bytes.
        IpAddr::V6(v6) => {
            let _ = format_ipv6(v6, &mut buf);
        }
    }
    // ASCII by construction.
    let text = std::str::from_utf8(buf.as_bytes()).unwrap_or_default();
    let host = PyString::new(py, text);
    *cache = Some((ip, host.clone().unbind()));
    host
}

/// The address `socket.recvfrom` returns for `sender`.
fn sender_address<'py>(
    py: Python<'py>,
    sender: &Sender,
    cache: &mut HostCache,
) -> PyResult<Bound<'py, PyAny>> {
    match sender {
        Sender::Unnamed => Ok(py.None().into_bound(py)),
        Sender::V4(addr) => {
            let ip = host_string(py, IpAddr::V4(*addr.ip()), cache);
            let port = addr.port().into_pyobject(py)?;
            Ok(PyTuple::new(py, [ip.into_any(), port.into_any()])?.into_any())
        }
        Sender::V6(addr) => {
            let ip = host_string(py, IpAddr::V6(*addr.ip()), cache);
            Ok(PyTuple::new(
                py,
                [
                    ip.into_any(),
                    addr.port().into_pyobject(py)?.into_any(),
                    addr.flowinfo().into_pyobject(py)?.into_any(),
                    addr.scope_id().into_pyobject(py)?.into_any(),
                ],
            )?
            .into_any())
        }
        Sender::Unix(name) => match name.kind() {
            UnixNameKind::Abstract(bytes) => Ok(PyBytes::new(py, bytes).into_any()),
            UnixNameKind::Path(path) => match std::str::from_utf8(path) {
                Ok(text) if text.is_ascii() => Ok(PyString::new(py, text).into_any()),
                // `PyUnicode_DecodeFSDefault`, as `socket.recvfrom`: the filesystem
                // encoding with surrogateescape.
                _ => py
                    .import(intern!(py, "os"))?
                    .call_method1(intern!(py, "fsdecode"), (PyBytes::new(py, path),)),
            },
        },
        Sender::Other(family) => Err(PyRuntimeError::new_err(format!(
            "unexpected address family {family} from recvfrom()"
        ))),
    }
}

impl DatagramTransportCore {
    fn transport<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.transport.as_ref()?.bind(py).upgrade()
    }

    /// Whether `addr` may be sent to on a transport with a fixed address: stock's
    /// `addr in (None, self._address)`, decided here for `None`, the address object
    /// itself and a plain tuple or string equal to it; `None` (undecided) for the rest,
    /// which asyncio's code then checks itself.
    fn matches_address(
        address: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<bool>> {
        let Some(addr) = addr.filter(|a| !a.is_none()) else {
            return Ok(Some(true));
        };
        if addr.is(address) {
            return Ok(Some(true));
        }
        let plain = addr.get_type().is(address.get_type())
            && (addr.is_exact_instance_of::<PyTuple>()
                || addr.is_exact_instance_of::<PyString>()
                || addr.is_exact_instance_of::<PyBytes>());
        if !plain {
            return Ok(None);
        }
        Ok(Some(address.eq(addr)?))
    }

    /// Decides how `sendto(data, addr)` goes; `Stock` whenever anything but a plain
    /// immediate send is involved.
    fn plan(&self, py: Python<'_>, addr: Option<&Bound<'_, PyAny>>) -> PyResult<SendPlan> {
        let Some(family) = self.family else {
            return Ok(SendPlan::Stock);
        };
        if self.fd < 0 || self.conn_lost > 0 {
            return Ok(SendPlan::Stock);
        }
        match &self.buffer {
            Some(buffer) if buffer.bind(py).len()? == 0 => {}
            _ => return Ok(SendPlan::Stock),
        }
        if self.address_set {
            let address = self.address.as_ref().map(|a| a.bind(py).clone());
            let Some(address) = address else {
                return Ok(SendPlan::Stock);
            };
            if Self::matches_address(&address, addr)? != Some(true) {
                return Ok(SendPlan::Stock);
            }
            if self.connected {
                return Ok(SendPlan::Connected(self.fd));
            }
            return Ok(SendPlan::To(self.fd, self.address_target.clone()));
        }
        if self.connected {
            return Ok(SendPlan::Connected(self.fd));
        }
        match addr {
            Some(_) => Ok(SendPlan::ToAddr(self.fd, family)),
            None => Ok(SendPlan::Stock),
        }
    }

    /// The reader callback: one datagram, delivered to the protocol.
    fn read_ready(slf: &Bound<'_, Self>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let native = {
            let this = slf.borrow();
            if this.conn_lost > 0 {
                return Ok(());
            }
            match &this.protocol {
                Some(protocol) if this.fd >= 0 && this.family.is_some() => {
                    Some((this.fd, protocol.clone_ref(py)))
                }
                _ => None,
            }
        };
        let Some((fd, protocol)) = native else {
            // Off the native path: asyncio's own reader does it.
            return transport
                .call_method0(intern!(py, "_stock_read_ready"))
                .map(drop);
        };
        let protocol = protocol.bind(py);
        let received = with_read_scratch(|scratch| {
            datagram_io::recv_from(fd, scratch).map(|(n, sender)| {
                crate::observe::stats::count_read(n);
                (PyBytes::new(py, &scratch[..n]), sender)
            })
        });
        match received {
            Ok((data, sender)) => {
                let converted = {
                    let mut this = slf.borrow_mut();
                    sender_address(py, &sender, &mut this.recv_host)
                };
                let addr = match converted {
                    Ok(addr) => addr,
                    Err(err) => {
                        return transport
                            .call_method1(
                                intern!(py, "_fatal_error"),
                                (err.into_value(py), "Fatal read error on datagram transport"),
                            )
                            .map(drop);
                    }
                };
                protocol.call_method1(intern!(py, "datagram_received"), (data, addr))?;
                Ok(())
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => Ok(()),
            Err(err) => {
                protocol.call_method1(
                    intern!(py, "error_received"),
                    (os_error(err).into_value(py),),
                )?;
                Ok(())
            }
        }
    }

    /// `sendto` once the transport object is gone (a bound `sendto` kept past the
    /// transport's end): what asyncio's method does on a transport whose connection was
    /// lost, without the object.
    fn send_after_release(slf: &Bound<'_, Self>, addr: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let (address, address_set, conn_lost) = {
            let this = slf.borrow();
            let address = this.address.as_ref().map(|a| a.clone_ref(py));
            (address, this.address_set, this.conn_lost)
        };
        if let (true, Some(address)) = (address_set, address) {
            let address = address.bind(py);
            let ok = match addr.filter(|a| !a.is_none()) {
                None => true,
                Some(a) => a.is(address) || address.eq(a)?,
            };
            if !ok {
                return Err(PyValueError::new_err(format!(
                    "Invalid address: must be None or {}",
                    address.str()?
                )));
            }
            if conn_lost > 0 {
                if conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                    ASYNCIO_LOG_MODULE
                        .get(py)?
                        .getattr(intern!(py, "logger"))?
                        .call_method1(
                            intern!(py, "warning"),
                            ("socket.send() raised exception.",),
                        )?;
                }
                slf.borrow_mut().conn_lost += 1;
                return Ok(());
            }
        }
        // asyncio's send fails on the missing socket and its error report on the
        // missing loop.
        Err(PyAttributeError::new_err(
            "'NoneType' object has no attribute 'call_exception_handler'",
        ))
    }
}

#[pymethods]
impl DatagramTransportCore {
    /// A core for `transport`, whose socket is of family `family` (`None`: serve
    /// nothing natively); `max_size` is the transport's read size.
    #[new]
    #[pyo3(signature = (transport, family, max_size))]
    fn new(transport: &Bound<'_, PyAny>, family: Option<i32>, max_size: usize) -> PyResult<Self> {
        let family = family
            .and_then(Family::from_raw)
            .filter(|_| max_size == MAX_READ);
        Ok(DatagramTransportCore {
            fd: -1,
            family,
            transport: Some(PyWeakrefReference::new(transport)?.unbind()),
            sock: None,
            protocol: None,
            address: None,
            address_set: false,
            address_target: None,
            buffer: None,
            conn_lost: 0,
            connected: false,
            recv_host: None,
            send_host: None,
        })
    }

    /// True if the reads and sends are native.
    #[getter]
    fn native(&self) -> bool {
        self.family.is_some()
    }

    /// `transport._sock`.
    #[getter]
    fn sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.sock.as_ref().map(|s| s.clone_ref(py))
    }

    /// Sets `transport._sock`; `None` (the transport closing its socket) makes the core
    /// forget the descriptor.
    #[setter]
    fn set_sock(&mut self, sock: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        self.fd = match &sock {
            Some(sock) => sock.call_method0(intern!(sock.py(), "fileno"))?.extract()?,
            None => -1,
        };
        self.sock = sock.map(Bound::unbind);
        Ok(())
    }

    /// `transport._protocol`.
    #[getter]
    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol.as_ref().map(|p| p.clone_ref(py))
    }

    #[setter]
    fn set_protocol(&mut self, protocol: Option<Py<PyAny>>) {
        self.protocol = protocol;
    }

    /// `transport._address`.
    #[getter]
    fn address(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.address.as_ref().map(|a| a.clone_ref(py))
    }

    #[setter]
    fn set_address(&mut self, address: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        self.address_set = match &address {
            Some(address) => address.is_truthy()?,
            None => false,
        };
        self.address_target = match (&address, self.family) {
            (Some(address), Some(family)) if self.address_set => target(family, address, &mut None),
            _ => None,
        };
        self.address = address.map(Bound::unbind);
        Ok(())
    }

    /// `transport._buffer`.
    #[getter]
    fn buffer(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.buffer.as_ref().map(|b| b.clone_ref(py))
    }

    #[setter]
    fn set_buffer(&mut self, buffer: Option<Py<PyAny>>) {
        self.buffer = buffer;
    }

    /// Records whether the socket has a peer (once `get_extra_info('peername')` is
    /// known).
    fn set_connected(&mut self, connected: bool) {
        self.connected = connected;
    }

    /// The reader callback for the loop: reads for `transport`, which it keeps alive
    /// while the loop holds it.
    fn reader(slf: &Bound<'_, Self>, transport: Py<PyAny>) -> DatagramReader {
        DatagramReader {
            core: Some(slf.clone().unbind()),
            transport: Some(transport),
        }
    }

    /// `transport.sendto(data, addr=None)`: send at once when nothing is queued (see the
    /// module documentation for what goes to asyncio's code instead).
    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            let name = data.get_type().name()?;
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                name.repr()?
            )));
        }
        let (plan, transport) = {
            let this = slf.borrow();
            let Some(transport) = this.transport(py) else {
                drop(this);
                return Self::send_after_release(slf, addr);
            };
            (this.plan(py, addr)?, transport)
        };
        let stock = || {
            let addr = addr.map_or_else(|| py.None().into_bound(py), Bound::clone);
            transport
                .call_method1(intern!(py, "_stock_sendto"), (data, addr))
                .map(drop)
        };
        let (fd, target) = match plan {
            SendPlan::Stock => return stock(),
            SendPlan::Connected(fd) => (fd, None),
            SendPlan::To(fd, Some(target)) => (fd, Some(target)),
            SendPlan::To(_, None) => return stock(),
            SendPlan::ToAddr(fd, family) => {
                let addr = addr.expect("planned with an address");
                let converted = {
                    let mut this = slf.borrow_mut();
                    target(family, addr, &mut this.send_host)
                };
                match converted {
                    Some(target) => (fd, Some(target)),
                    None => return stock(),
                }
            }
        };
        let sent = ffi::with_bytes(data, |bytes| {
            if bytes.is_empty() {
                // Stock's own business: 3.11/3.12 drop empty datagrams, 3.13+ send them.
                return None;
            }
            Some(super::stream::counted_written(match &target {
                Some(target) => datagram_io::send_to(fd, bytes, target),
                None => stream_io::send(fd, bytes),
            }))
        });
        match sent {
            // Not exportable as one contiguous run (socket.sendto raises its own error
            // for that), or empty.
            Err(_) | Ok(None) => stock(),
            Ok(Some(Ok(_))) => Ok(()),
            // asyncio's code tries once more and queues if the kernel still refuses.
            Ok(Some(Err(err))) if is_would_block(&err) => stock(),
            Ok(Some(Err(err))) => {
                let protocol = slf.borrow().protocol.as_ref().map(|p| p.clone_ref(py));
                let exc = os_error(err).into_value(py);
                match protocol {
                    Some(protocol) => {
                        protocol.call_method1(py, intern!(py, "error_received"), (exc,))?;
                        Ok(())
                    }
                    None => stock(),
                }
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.transport)?;
        visit.call(&self.sock)?;
        visit.call(&self.protocol)?;
        visit.call(&self.address)?;
        visit.call(&self.buffer)?;
        if let Some((_, host)) = &self.recv_host {
            visit.call(host)?;
        }
        if let Some((host, _)) = &self.send_host {
            visit.call(host)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.transport = None;
        self.sock = None;
        self.protocol = None;
        self.address = None;
        self.buffer = None;
        self.recv_host = None;
        self.send_host = None;
    }
}

/// The loop's reader callback for one datagram transport (what asyncio's bound
/// `transport._read_ready` is): calls [`DatagramTransportCore`]'s reader for the
/// transport it holds.
#[pyclass(module = "ferroloop._ferroloop")]
pub struct DatagramReader {
    core: Option<Py<DatagramTransportCore>>,
    transport: Option<Py<PyAny>>,
}

#[pymethods]
impl DatagramReader {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let (Some(core), Some(transport)) = (&self.core, &self.transport) else {
            return Ok(());
        };
        DatagramTransportCore::read_ready(core.bind(py), transport.bind(py))
    }

    /// `DatagramTransport._read_ready`, as asyncio names the callback in messages (e.g.
    /// "Exception in callback ...").
    #[getter]
    fn __qualname__(&self, py: Python<'_>) -> PyResult<String> {
        let class = match &self.transport {
            Some(t) => t.bind(py).get_type().qualname()?.to_string(),
            None => "DatagramTransport".to_owned(),
        };
        Ok(format!("{class}._read_ready"))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.core)?;
        visit.call(&self.transport)?;
        Ok(())
    }

    fn __clear__(&mut self) {
        self.core = None;
        self.transport = None;
    }
}
