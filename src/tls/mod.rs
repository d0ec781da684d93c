//! TLS: asyncio's `SSLProtocol` state machine, native, over the user's own
//! `ssl.SSLObject`.
//!
//! No TLS is implemented here: the `SSLObject` the user's `SSLContext.wrap_bio()` made
//! over two `ssl.MemoryBIO`s does all of it (verification, ciphers, ALPN, SNI,
//! callbacks), exactly as on stock asyncio. What is native is the machinery around it
//! that stock runs in Python for every record: feeding received bytes into the incoming
//! BIO, the read loop, encrypting the app's writes, handing records to the socket
//! transport, and flow control both ways. The app-facing transport and the once-per-
//! connection steps are Python (`python/ferroloop/_tls.py`).

mod bio;
mod protocol;
mod read;
mod state;
mod write;

pub use protocol::SslProtocolCore;
