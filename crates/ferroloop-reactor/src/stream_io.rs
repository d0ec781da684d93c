//! Non-blocking I/O on a connected stream socket, by raw descriptor.
//!
//! The binding crate's transports keep a descriptor number, not an owned socket: the
//! Python `socket.socket` object owns it and closes it. These calls never block (the
//! socket is non-blocking) and report `WouldBlock`/`Interrupted` like any other error,
//! so the caller decides whether to wait for readiness or to retry after running
//! signal handlers.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, Shutdown};

fn borrowed(fd: RawFd) -> io::Result<BorrowedFd<'static>> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(
            rustix::io::Errno::BADF.raw_os_error(),
        ));
    }
    // SAFETY: `fd` is not -1 (checked above). The borrow lives only for the duration of
    // one syscall, which validates the number itself (EBADF, ENOTSOCK); nothing is
    // closed or retained through it.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Runs a syscall again for as long as a signal interrupts it.
fn retry_interrupted<T>(mut call: impl FnMut() -> Result<T, Errno>) -> io::Result<T> {
    loop {
        match call() {
            Err(Errno::INTR) => continue,
            other => return other.map_err(Into::into),
        }
    }
}

/// Reads what is available into `buf`; `Ok(0)` means the peer closed its side.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let fd = borrowed(fd)?;
    let (read, _) = retry_interrupted(|| rustix::net::recv(fd, &mut *buf, RecvFlags::empty()))?;
    Ok(read)
}

/// Writes as much of `buf` as the socket takes now. `MSG_NOSIGNAL`: a closed peer is an
/// `EPIPE` error even where `SIGPIPE` is not ignored (Python ignores it; embedders may
/// not).
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let fd = borrowed(fd)?;
    retry_interrupted(|| rustix::net::send(fd, buf, SendFlags::NOSIGNAL))
}

/// Sends FIN after the queued data (`shutdown(SHUT_WR)`).
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    Ok(rustix::net::shutdown(borrowed(fd)?, Shutdown::Write)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn send_recv_and_eof() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        let err = recv(b.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
        assert_eq!(send(a.as_raw_fd(), b"hello").unwrap(), 5);
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        shutdown_write(a.as_raw_fd()).unwrap();
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 0);
    }

    #[test]
    fn closed_descriptor_is_an_error_not_ub() {
        let mut buf = [0u8; 4];
        assert_eq!(
            recv(-1, &mut buf).unwrap_err().raw_os_error(),
            Some(libc_ebadf())
        );
        assert!(send(-1, b"x").is_err());
        assert!(shutdown_write(-1).is_err());
    }

    #[test]
    fn send_to_closed_peer_is_epipe_without_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = send(a.as_raw_fd(), b"x").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BrokenPipe);
    }

    fn libc_ebadf() -> i32 {
        rustix::io::Errno::BADF.raw_os_error()
    }
}
