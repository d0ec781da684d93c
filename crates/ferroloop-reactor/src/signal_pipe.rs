//! The socket pair that carries signal wake-ups into the poller.
//!
//! CPython's C-level signal handler only sets a flag and, if `signal.set_wakeup_fd` was
//! given a descriptor, writes the signal number to it. A loop blocked in `epoll_wait`
//! therefore needs that descriptor in its interest set, or a signal delivered to another
//! thread would not wake it until some timer fires. asyncio uses a socket pair for this
//! (`_ssock`/`_csock`); so do we.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};

/// A non-blocking, close-on-exec Unix socket pair: Python writes signal numbers to the
/// write end, the loop polls and drains the read end.
pub struct SignalPipe {
    read_end: OwnedFd,
    write_end: OwnedFd,
}

impl SignalPipe {
    /// Creates the pair.
    pub fn new() -> io::Result<SignalPipe> {
        let (read_end, write_end) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        Ok(SignalPipe {
            read_end,
            write_end,
        })
    }

    /// The descriptor to hand to `signal.set_wakeup_fd`.
    pub fn write_fd(&self) -> RawFd {
        self.write_end.as_raw_fd()
    }

    /// The descriptor the poller watches.
    pub fn read_end(&self) -> BorrowedFd<'_> {
        self.read_end.as_fd()
    }

    /// Reads everything pending and returns the bytes (signal numbers, one per byte).
    pub fn drain(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = rustix::io::read(&self.read_end, &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if n < buf.len() {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_what_was_written() {
        let pipe = SignalPipe::new().unwrap();
        assert!(pipe.drain().is_empty());
        // SAFETY: the write end is owned by `pipe`, open for the duration of this call.
        let write_end = unsafe { BorrowedFd::borrow_raw(pipe.write_fd()) };
        rustix::io::write(write_end, &[2, 15]).unwrap();
        assert_eq!(pipe.drain(), vec![2, 15]);
        assert!(pipe.drain().is_empty());
    }
}
