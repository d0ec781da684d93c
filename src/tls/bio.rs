//! The `ssl.SSLObject` and `ssl.MemoryBIO` methods a connection calls, looked up once.
//!
//! Every byte goes through the user's own `SSLObject` (made by their `SSLContext`'s
//! `wrap_bio()` over two `MemoryBIO`s), so certificate checks, ciphers, ALPN, SNI and
//! every callback stay CPython's. For an object of exactly `ssl.SSLObject`, whose methods
//! only forward to the C `_ssl._SSLSocket` it wraps (`read`, `write`, `do_handshake`,
//! `pending`, and `unwrap` as `shutdown`), the C object's methods are called directly,
//! which skips a Python frame per call; a subclass (`SSLContext.sslobject_class`) has its
//! own methods called, as stock does.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::py_cache::CachedAttr;

static SSL_OBJECT_TYPE: CachedAttr = CachedAttr::new("ssl", "SSLObject");
static SSL_WANT_READ_ERROR: CachedAttr = CachedAttr::new("ssl", "SSLWantReadError");
static SSL_SYSCALL_ERROR: CachedAttr = CachedAttr::new("ssl", "SSLSyscallError");
static SSL_ERROR: CachedAttr = CachedAttr::new("ssl", "SSLError");

/// The bound methods of one connection's TLS objects.
pub(crate) struct SslCalls {
    /// The `SSLObject` itself (what `ssl_object` in the extra info is).
    pub(crate) sslobj: Py<PyAny>,
    /// The BIO the peer's records are written into.
    pub(crate) incoming: Py<PyAny>,
    /// The BIO the records to send are read from.
    pub(crate) outgoing: Py<PyAny>,
    read: Py<PyAny>,
    write: Py<PyAny>,
    do_handshake: Py<PyAny>,
    unwrap: Py<PyAny>,
    pending: Py<PyAny>,
    incoming_write: Py<PyAny>,
    outgoing_read: Py<PyAny>,
    /// The methods are the C object's: reading into a buffer the protocol owns is safe
    /// (nothing keeps it), and a read that can only fail with "want read" may be skipped.
    pub(crate) direct: bool,
}

impl SslCalls {
    /// Looks the methods up on `sslobj`, `incoming` and `outgoing`.
    pub(crate) fn new(
        sslobj: &Bound<'_, PyAny>,
        incoming: &Bound<'_, PyAny>,
        outgoing: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let py = sslobj.py();
        let direct = sslobj.get_type().is(SSL_OBJECT_TYPE.get(py)?);
        let (target, unwrap_name) = if direct {
            (
                sslobj.getattr(intern!(py, "_sslobj"))?,
                intern!(py, "shutdown"),
            )
        } else {
            (sslobj.clone(), intern!(py, "unwrap"))
        };
        Ok(SslCalls {
            sslobj: sslobj.clone().unbind(),
            incoming: incoming.clone().unbind(),
            outgoing: outgoing.clone().unbind(),
            read: target.getattr(intern!(py, "read"))?.unbind(),
            write: target.getattr(intern!(py, "write"))?.unbind(),
            do_handshake: target.getattr(intern!(py, "do_handshake"))?.unbind(),
            unwrap: target.getattr(unwrap_name)?.unbind(),
            pending: target.getattr(intern!(py, "pending"))?.unbind(),
            incoming_write: incoming.getattr(intern!(py, "write"))?.unbind(),
            outgoing_read: outgoing.getattr(intern!(py, "read"))?.unbind(),
            direct,
        })
    }

    /// `sslobj.read(n)`: a new `bytes`, empty at the peer's close_notify.
    pub(crate) fn read<'py>(&self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyAny>> {
        self.read.bind(py).call1((n,))
    }

    /// `sslobj.read(n, buffer)`: the count read into `buffer`, 0 at close_notify.
    pub(crate) fn read_into(
        &self,
        py: Python<'_>,
        n: usize,
        buffer: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        self.read.bind(py).call1((n, buffer))?.extract()
    }

    /// `sslobj.write(data)`: how much of `data` was taken.
    pub(crate) fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.write.bind(py).call1((data,))?.extract()
    }

    /// `sslobj.do_handshake()`.
    pub(crate) fn do_handshake(&self, py: Python<'_>) -> PyResult<()> {
        self.do_handshake.bind(py).call0().map(drop)
    }

    /// `sslobj.unwrap()`: one step of the close_notify exchange.
    pub(crate) fn unwrap(&self, py: Python<'_>) -> PyResult<()> {
        self.unwrap.bind(py).call0().map(drop)
    }

    /// Decrypted bytes OpenSSL holds that a read returns without new input.
    fn ssl_pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.pending.bind(py).call0()?.extract()
    }

    /// `incoming.pending`: received bytes not yet consumed by OpenSSL.
    pub(crate) fn incoming_pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.incoming
            .bind(py)
            .getattr(intern!(py, "pending"))?
            .extract()
    }

    /// `outgoing.pending`: records made and not yet handed to the transport.
    pub(crate) fn outgoing_pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.outgoing
            .bind(py)
            .getattr(intern!(py, "pending"))?
            .extract()
    }

    /// `incoming.write(data)`.
    pub(crate) fn feed(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.incoming_write.bind(py).call1((data,)).map(drop)
    }

    /// `outgoing.read()`: every record waiting to be sent, as one `bytes`.
    pub(crate) fn drain_outgoing<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.outgoing_read.bind(py).call0()
    }

    /// Whether a read could return anything: with nothing received and nothing
    /// decrypted in OpenSSL, `SSL_read` on a memory BIO can only report "want read"
    /// (reading ahead is never enabled: OpenSSL takes one record at a time from the
    /// BIO), so the read, and the `SSLWantReadError` it would raise, are skipped. Only
    /// for the C object: a subclass's `read` is called as stock calls it.
    pub(crate) fn may_read(&self, py: Python<'_>) -> PyResult<bool> {
        if !self.direct {
            return Ok(true);
        }
        Ok(self.incoming_pending(py)? > 0 || self.ssl_pending(py)? > 0)
    }

    /// Reports each reference to the collector.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for object in [
            &self.sslobj,
            &self.incoming,
            &self.outgoing,
            &self.read,
            &self.write,
            &self.do_handshake,
            &self.unwrap,
            &self.pending,
            &self.incoming_write,
            &self.outgoing_read,
        ] {
            visit.call(object)?;
        }
        Ok(())
    }
}

/// Whether `err` is one of asyncio's `SSLAgainErrors` (`SSLWantReadError`,
/// `SSLSyscallError`): the operation needs more input and may be retried.
pub(crate) fn is_again(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    Ok(err.is_instance(py, SSL_WANT_READ_ERROR.get(py)?)
        || err.is_instance(py, SSL_SYSCALL_ERROR.get(py)?))
}

/// Whether `err` is an `ssl.SSLError` (a failed handshake or shutdown).
pub(crate) fn is_ssl_error(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    Ok(err.is_instance(py, SSL_ERROR.get(py)?))
}

/// Whether `err` is an `Exception` (what stock's `except Exception` catches; not
/// `KeyboardInterrupt`, `SystemExit` or `CancelledError`).
pub(crate) fn is_exception(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyException>(py)
}
