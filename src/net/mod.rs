//! Socket operations of the loop (`sock_recv`, `sock_sendall`) with a native fast path.

mod sock_op;

pub use sock_op::{RecvWhenReadable, SocketOperation};
