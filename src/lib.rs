//! ferroloop's Python extension module, `ferroloop._ferroloop`.
//!
//! This file only registers types (and, at initialisation, gives the socket operation
//! type the `am_send` slot PyO3 cannot declare). The loop core lives in [`event_loop`],
//! raw CPython calls in [`ffi`], the errno-preserving error mapping in [`errors`]; the
//! Python-free reactor (poller, timers, ready queue) is the `ferroloop-reactor` crate.

mod errors;
mod event_loop;
mod ffi;
mod net;
mod observe;
mod py_cache;
mod tls;
mod transport;

use pyo3::prelude::*;

/// The native part of ferroloop. `ferroloop.Loop` (Python) subclasses [`LoopCore`] and
/// `asyncio.BaseEventLoop`.
///
/// `gil_used = true`: a free-threaded interpreter keeps the GIL enabled for this module.
/// Parts of the loop rely on the GIL for more than memory safety (reference counts read
/// as exact, objects untracked from the collector while queued, a type's version tag
/// read plainly); docs/architecture.md lists them.
#[pymodule(gil_used = true)]
mod _ferroloop {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::event_loop::handle::{Handle, ThreadSafeHandle, TimerHandle};
    #[pymodule_export]
    use crate::event_loop::LoopCore;
    #[pymodule_export]
    use crate::net::{_register_transport, AcceptedConnection, Acceptor};
    #[pymodule_export]
    use crate::net::{RecvWhenReadable, SocketOperation};
    #[pymodule_export]
    use crate::tls::SslProtocolCore;
    #[pymodule_export]
    use crate::transport::{
        DatagramReader, DatagramTransportCore, ReadPipeCore, SocketTransportCore, WritePipeCore,
    };

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        // Cargo.toml's version is the one source: maturin reads it for the wheel's
        // metadata, and `ferroloop.__version__` is this.
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        crate::ffi::install_am_send::<SocketOperation>(m.py())
    }
}
