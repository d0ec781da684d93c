//! Stream transports: the per-byte halves of `ferroloop.SocketTransport` and the pipe
//! transports (`ferroloop.ReadPipeTransport`, `ferroloop.WritePipeTransport`).
//!
//! A transport's hot operations (reading when the descriptor is readable and handing the
//! bytes to the protocol, `write()` trying the descriptor at once, draining the pending
//! buffer when it becomes writable) are native: one stream core ([`stream`]: the
//! scratch-buffer read, the write queue, the syscalls) under the socket and pipe cores,
//! which keep asyncio's differing rules for each. Everything that runs once per
//! connection or on errors (construction, `close()`, `abort()`, fatal-error reporting,
//! `connection_lost`, flow-control callbacks, `repr`) is Python in
//! `python/ferroloop/_transports.py` and `_pipes.py`, whose classes subclass asyncio's
//! transport classes so `isinstance` checks hold. A PyO3 type cannot share a base with
//! `asyncio.BaseTransport` (its `__slots__` make the layouts conflict), hence the split
//! into a Python transport that owns a native core rather than one class.
//!
//! Datagram transports follow the same split with [`DatagramTransportCore`] (per
//! datagram: `recvfrom` on readiness, `sendto` at once), under a Python subclass of
//! asyncio's own datagram transport.

mod datagram;
mod pipe;
mod socket;
mod stream;

pub use datagram::{DatagramReader, DatagramTransportCore};
pub use pipe::{ReadPipeCore, WritePipeCore};
pub use socket::SocketTransportCore;
pub(crate) use stream::{with_read_scratch, MAX_READ};
