//! Socket operations of the loop (`sock_recv`, `sock_sendall`) with a native fast path,
//! and the native accept loop of servers.

mod accept;
mod registry;
mod sock_op;
mod sockaddr;

pub use accept::{AcceptedConnection, Acceptor};
pub use registry::_register_transport;
pub use sock_op::{RecvWhenReadable, SocketOperation};
