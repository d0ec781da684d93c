//! Stream transports: the per-byte half of `ferroloop.SocketTransport`.
//!
//! A transport's hot operations (reading when the socket is readable and handing the
//! bytes to the protocol, `write()` trying the socket at once, draining the pending
//! buffer when the socket becomes writable) are native, in [`SocketTransportCore`].
//! Everything that runs once per connection or on errors (construction, `close()`,
//! `abort()`, fatal-error reporting, `connection_lost`, flow-control callbacks, `repr`)
//! is Python in `python/ferroloop/_transports.py`, which subclasses `asyncio.Transport`
//! so `isinstance` checks hold. A PyO3 type cannot share a base with
//! `asyncio.BaseTransport` (its `__slots__` make the layouts conflict), hence the split
//! into a Python transport that owns a native core rather than one class.
//!
//! Datagram transports follow the same split with [`DatagramTransportCore`] (per
//! datagram: `recvfrom` on readiness, `sendto` at once), under a Python subclass of
//! asyncio's own datagram transport.

mod datagram;
mod socket;

pub use datagram::{DatagramReader, DatagramTransportCore};
pub use socket::SocketTransportCore;
pub(crate) use socket::{with_read_scratch, MAX_READ};
