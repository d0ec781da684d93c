//! The Python-free core of ferroloop's event loop.
//!
//! Everything here is plain Rust so it can be tested with `cargo test` and read without
//! knowing PyO3: the loop's clock, the timer heap with cancellation bookkeeping, the
//! ready queue with asyncio's "run what was ready when the phase began" rule, and the
//! epoll poller with its cross-thread waker, and the non-blocking socket calls of the
//! stream and datagram transports. The binding crate stores Python handles in
//! these containers; the containers never drop an entry behind the caller's back, so the
//! binding decides when (and outside which locks) Python objects are released.

pub mod clock;
pub mod datagram_io;
pub mod poller;
pub mod ready_queue;
pub mod signal_pipe;
pub mod stream_io;
pub mod timer_heap;

pub use clock::{monotonic, monotonic_coarse_ns, monotonic_coarse_tick_ns};
pub use poller::{Interest, Poller, PollerEvents, Readiness, Token};
pub use ready_queue::ReadyQueue;
pub use signal_pipe::SignalPipe;
pub use timer_heap::{TimerEntry, TimerHeap};
