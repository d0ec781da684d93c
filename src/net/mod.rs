//! Socket operations of the loop (`sock_recv`, `sock_sendall`) with a native fast path,
//! and the native accept loop of servers.

mod accept;
mod registry;
mod sock_op;
mod sockaddr;
mod socket_object;

pub use accept::{AcceptedConnection, Acceptor};
pub use registry::_register_transport;
pub use sock_op::{RecvWhenReadable, SocketOperation};
