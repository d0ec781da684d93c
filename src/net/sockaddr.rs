//! `accept4` on a listening socket and `getsockname` on the connection, with the
//! addresses as the Python objects `socket.accept()` and `socket.getsockname()` return.
//!
//! The address conversion is CPython's `makesockaddr` for the families the native accept
//! loop serves (`socketmodule.c`): IPv4 `(host, port)` with the host in `inet_ntop`'s
//! dotted decimal, IPv6 `(host, port, flowinfo, scope_id)` with the host written by the C
//! library's `inet_ntop` (as CPython does, so IPv4-mapped and -compatible addresses read
//! the same), and Unix sockets: a `str`
//! decoded with the file system encoding, or `bytes` for Linux's abstract namespace
//! (leading NUL included). Anything else is `(family, sa_data)`, CPython's fallback.

use std::ffi::OsStr;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

/// A socket address as the kernel wrote it.
pub(crate) struct SocketAddress {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SocketAddress {
    fn zeroed() -> Self {
        // SAFETY: `sockaddr_storage` is plain old data, valid when zeroed; zeroed as
        // CPython zeroes its buffer, so a short Unix address reads as an empty path.
        let storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        SocketAddress {
            storage,
            len: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    /// The address buffer and its in/out length, for a syscall to fill.
    fn out(&mut self) -> (*mut libc::sockaddr, &mut libc::socklen_t) {
        self.len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        (
            (&mut self.storage as *mut libc::sockaddr_storage).cast(),
            &mut self.len,
        )
    }
}

/// A connection `accept4` returned, with its peer's address.
pub(crate) struct Accepted {
    /// The connection's descriptor, non-blocking and close-on-exec; closed on drop until
    /// a Python socket object takes it over.
    pub(crate) fd: OwnedFd,
    pub(crate) peer: SocketAddress,
}

/// `accept4(listener, SOCK_NONBLOCK | SOCK_CLOEXEC)`, retried while interrupted by a
/// signal that needs no Python handler (CPython's `sock_call` retries too, after running
/// the handlers: `on_interrupt` does that and may fail).
pub(crate) fn accept(
    listener: RawFd,
    mut on_interrupt: impl FnMut() -> PyResult<()>,
) -> PyResult<io::Result<Accepted>> {
    let mut peer = SocketAddress::zeroed();
    loop {
        let (addr, len) = peer.out();
        // SAFETY: `addr` is writable for `*len` bytes and `len` is a valid in/out length;
        // the kernel writes at most that much address.
        let fd = unsafe {
            libc::accept4(
                listener,
                addr,
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: `accept4` returned a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            return Ok(Ok(Accepted { fd, peer }));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Ok(Err(err));
        }
        on_interrupt()?;
    }
}

/// `getsockname(fd)`: the local address of the socket `fd`.
pub(crate) fn local_address(fd: RawFd) -> io::Result<SocketAddress> {
    let mut local = SocketAddress::zeroed();
    let (addr, len) = local.out();
    // SAFETY: as in `accept`; a bad descriptor is an error (EBADF, ENOTSOCK), nothing
    // more.
    if unsafe { libc::getsockname(fd, addr, len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(local)
}

// The C library's `inet_ntop` (POSIX, `<arpa/inet.h>`), which the `libc` crate does not
// declare.
unsafe extern "C" {
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// The address text `inet_ntop` gives for `addr` (an `in6_addr` for `AF_INET6`).
fn address_text<T>(af: libc::c_int, addr: &T) -> PyResult<String> {
    // INET6_ADDRSTRLEN (46) is the longest text either family produces.
    let mut text = [0 as libc::c_char; 46];
    // SAFETY: `addr` points to a live address structure of the family `af` names;
    // `text` is writable for its full length, which is passed.
    let written = unsafe {
        inet_ntop(
            af,
            (addr as *const T).cast(),
            text.as_mut_ptr(),
            text.len() as libc::socklen_t,
        )
    };
    if written.is_null() {
        return Err(crate::errors::os_error(io::Error::last_os_error()));
    }
    // SAFETY: on success `inet_ntop` wrote a NUL-terminated string into `text`.
    let text = unsafe { std::ffi::CStr::from_ptr(text.as_ptr()) };
    Ok(text.to_string_lossy().into_owned())
}

/// `inet_ntop(AF_INET)`'s text (decimal octets, no leading zeros) without the `sprintf`
/// glibc writes it with, which costs more than the rest of an accept.
fn dotted_quad(octets: [u8; 4]) -> String {
    let mut text = String::with_capacity(15);
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

impl SocketAddress {
    /// The address as `socket` methods return it (see the module documentation).
    pub(crate) fn to_python<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.len == 0 {
            return Ok(py.None().into_bound(py));
        }
        let family = libc::c_int::from(self.storage.ss_family);
        let storage: *const libc::sockaddr_storage = &self.storage;
        match family {
            libc::AF_INET => {
                // SAFETY: the kernel wrote an AF_INET address, a `sockaddr_in`, which
                // `sockaddr_storage` is large and aligned enough to hold.
                let sin = unsafe { &*storage.cast::<libc::sockaddr_in>() };
                let host = dotted_quad(sin.sin_addr.s_addr.to_ne_bytes());
                let port = u16::from_be(sin.sin_port);
                Ok(PyTuple::new(
                    py,
                    [
                        host.into_pyobject(py)?.into_any(),
                        port.into_pyobject(py)?.into_any(),
                    ],
                )?
                .into_any())
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for AF_INET6 and `sockaddr_in6`.
                let sin6 = unsafe { &*storage.cast::<libc::sockaddr_in6>() };
                let host = address_text(libc::AF_INET6, &sin6.sin6_addr)?;
                let port = u16::from_be(sin6.sin6_port);
                let flowinfo = u32::from_be(sin6.sin6_flowinfo);
                let items = [
                    host.into_pyobject(py)?.into_any(),
                    port.into_pyobject(py)?.into_any(),
                    flowinfo.into_pyobject(py)?.into_any(),
                    sin6.sin6_scope_id.into_pyobject(py)?.into_any(),
                ];
                Ok(PyTuple::new(py, items)?.into_any())
            }
            libc::AF_UNIX => {
                // SAFETY: as above, for AF_UNIX and `sockaddr_un`.
                let sun = unsafe { &*storage.cast::<libc::sockaddr_un>() };
                // SAFETY: `sun_path` is an array of `c_char`, which has the size and
                // alignment of `u8`.
                let path: &[u8] = unsafe {
                    std::slice::from_raw_parts(sun.sun_path.as_ptr().cast(), sun.sun_path.len())
                };
                let used = (self.len as usize)
                    .saturating_sub(offset_of!(libc::sockaddr_un, sun_path))
                    .min(path.len());
                if used > 0 && path[0] == 0 {
                    return Ok(PyBytes::new(py, &path[..used]).into_any());
                }
                // A NUL-terminated path; the buffer was zeroed, so an unnamed peer's is
                // empty.
                let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                if end == 0 {
                    return Ok(PyString::new(py, "").into_any());
                }
                // The file system encoding (PyUnicode_DecodeFSDefault), as CPython.
                Ok(OsStr::from_bytes(&path[..end])
                    .into_pyobject(py)?
                    .into_any())
            }
            _ => {
                // SAFETY: every address starts with a `sockaddr` header.
                let sa = unsafe { &*storage.cast::<libc::sockaddr>() };
                // SAFETY: `sa_data` is an array of `c_char` (see above).
                let data: &[u8] = unsafe {
                    std::slice::from_raw_parts(sa.sa_data.as_ptr().cast(), sa.sa_data.len())
                };
                let items = [
                    family.into_pyobject(py)?.into_any(),
                    PyBytes::new(py, data).into_any(),
                ];
                Ok(PyTuple::new(py, items)?.into_any())
            }
        }
    }
}
