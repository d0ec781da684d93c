//! The `socket.socket` object of an accepted connection.
//!
//! `socket.accept()` makes it with `socket.socket(family, type, proto, fileno=fd)`, whose
//! `__init__` is a Python function that calls `_socket.socket.__init__` and sets the two
//! slots `_io_refs = 0` and `_closed = False`. When `socket.socket.__init__` is that
//! function (checked once), the object is made the same way without the Python frame:
//! `_socket.socket`'s own `__new__` and `__init__`, then the two slots. A replaced
//! `__init__` is called as is.

use std::os::fd::RawFd;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::py_cache::{CachedAttr, SOCKET_TYPE};

/// `_socket.socket`, the C type under `socket.socket`.
static C_SOCKET_TYPE: CachedAttr = CachedAttr::new("_socket", "socket");

/// `_socket.socket.__new__` and `__init__`, when `socket.socket.__init__` is the socket
/// module's own (see the module documentation).
struct DirectInit {
    new: Py<PyAny>,
    init: Py<PyAny>,
}

fn direct_init(py: Python<'_>) -> PyResult<Option<&DirectInit>> {
    static DIRECT: PyOnceLock<Option<DirectInit>> = PyOnceLock::new();
    DIRECT
        .get_or_try_init(py, || {
            let init = SOCKET_TYPE
                .get(py)?
                .getattr("__dict__")?
                .get_item("__init__")?;
            let own = init.getattr("__module__")?.eq("socket")?
                && init.getattr("__qualname__")?.eq("socket.__init__")?;
            if !own {
                return Ok::<_, PyErr>(None);
            }
            let c_type = C_SOCKET_TYPE.get(py)?;
            Ok(Some(DirectInit {
                new: c_type.getattr("__new__")?.unbind(),
                init: c_type.getattr("__init__")?.unbind(),
            }))
        })
        .map(Option::as_ref)
}

/// `socket.socket(family, sock_type, proto, fileno=fd)`. On failure the descriptor is
/// not the object's: the caller still owns it.
pub(crate) fn new_socket<'py>(
    py: Python<'py>,
    family: i32,
    sock_type: i32,
    proto: i32,
    fd: RawFd,
) -> PyResult<Bound<'py, PyAny>> {
    let socket_type = SOCKET_TYPE.get(py)?;
    let Some(direct) = direct_init(py)? else {
        return socket_type.call1((family, sock_type, proto, fd));
    };
    let sock = direct.new.bind(py).call1((socket_type,))?;
    direct
        .init
        .bind(py)
        .call1((&sock, family, sock_type, proto, fd))?;
    sock.setattr(intern!(py, "_io_refs"), 0)?;
    sock.setattr(intern!(py, "_closed"), false)?;
    Ok(sock)
}
