//! Non-blocking I/O on a stream (a connected socket, a pipe, a character device), by raw
//! descriptor.
//!
//! The binding crate's transports keep a descriptor number, not an owned file: the
//! Python object (`socket.socket`, a pipe's file object) owns it and closes it. These
//! calls never block (the descriptor is non-blocking) and report `WouldBlock` like any
//! other error, so the caller decides whether to wait for readiness; a signal
//! interrupting the call (`EINTR`) is retried, as Python's own `os.read`/`socket.recv`
//! retry it (PEP 475).

use std::io;
use std::mem::MaybeUninit;
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

/// Reads what is available into `buf` with `read(2)`, for descriptors that are not
/// sockets (pipes, ttys); `Ok(0)` means end of file (every writer closed its end).
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let fd = borrowed(fd)?;
    retry_interrupted(|| rustix::io::read(fd, &mut *buf))
}

/// [`read`] into memory that need not be initialised (a `bytes` object being built);
/// the first `n` bytes of `buf` are initialised when it returns `Ok(n)`.
pub fn read_uninit(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    let fd = borrowed(fd)?;
    retry_interrupted(|| rustix::io::read(fd, &mut *buf).map(|(init, _)| init.len()))
}

/// How many bytes a read would return now (`FIONREAD`: queued in a pipe, a tty's input
/// or a socket's receive queue); 0 also at end of file.
pub fn readable_bytes(fd: RawFd) -> io::Result<usize> {
    let fd = borrowed(fd)?;
    let n = retry_interrupted(|| rustix::io::ioctl_fionread(fd))?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Writes as much of `buf` as the descriptor takes now, with `write(2)`. A pipe whose
/// reader is gone fails with `EPIPE` (Python ignores `SIGPIPE`, as `os.write` relies on).
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let fd = borrowed(fd)?;
    retry_interrupted(|| rustix::io::write(fd, buf))
}

/// Writes as much of `bufs`, in order, as the descriptor takes now, with `writev(2)`:
/// one syscall for bytes queued in several pieces.
pub fn writev(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let fd = borrowed(fd)?;
    retry_interrupted(|| rustix::io::writev(fd, bufs))
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

    #[test]
    fn pipe_read_write_eof_and_epipe() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        rustix::io::ioctl_fionbio(&r, true).unwrap();
        rustix::io::ioctl_fionbio(&w, true).unwrap();
        let mut buf = [0u8; 16];
        let err = read(r.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
        assert_eq!(readable_bytes(r.as_raw_fd()).unwrap(), 0);
        assert_eq!(write(w.as_raw_fd(), b"pipe").unwrap(), 4);
        assert_eq!(readable_bytes(r.as_raw_fd()).unwrap(), 4);
        assert_eq!(read(r.as_raw_fd(), &mut buf[..2]).unwrap(), 2);
        let mut rest = [MaybeUninit::<u8>::uninit(); 8];
        assert_eq!(read_uninit(r.as_raw_fd(), &mut rest).unwrap(), 2);
        // SAFETY: read_uninit reported two initialised bytes.
        assert_eq!(
            unsafe { [rest[0].assume_init(), rest[1].assume_init()] },
            *b"pe"
        );
        assert_eq!(&buf[..2], b"pi");
        drop(w);
        assert_eq!(readable_bytes(r.as_raw_fd()).unwrap(), 0);
        assert_eq!(read(r.as_raw_fd(), &mut buf).unwrap(), 0);
    }

    #[test]
    fn pipe_full_would_block_then_reader_gone_is_epipe() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        rustix::io::ioctl_fionbio(&w, true).unwrap();
        let chunk = [7u8; 65536];
        let err = loop {
            match write(w.as_raw_fd(), &chunk) {
                Ok(n) => assert!(n > 0),
                Err(err) => break err,
            }
        };
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
        drop(r);
        // Rust's runtime ignores SIGPIPE, as Python's does.
        let err = write(w.as_raw_fd(), b"x").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BrokenPipe);
        assert!(read(-1, &mut [0u8; 1]).is_err());
        assert!(read_uninit(-1, &mut [MaybeUninit::uninit(); 1]).is_err());
        assert!(readable_bytes(-1).is_err());
        assert!(write(-1, b"x").is_err());
        assert!(writev(-1, &[io::IoSlice::new(b"x")]).is_err());
    }

    #[test]
    fn writev_keeps_order() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let parts = [io::IoSlice::new(b"one "), io::IoSlice::new(b"two")];
        assert_eq!(writev(w.as_raw_fd(), &parts).unwrap(), 7);
        let mut buf = [0u8; 16];
        assert_eq!(read(r.as_raw_fd(), &mut buf).unwrap(), 7);
        assert_eq!(&buf[..7], b"one two");
    }

    fn libc_ebadf() -> i32 {
        rustix::io::Errno::BADF.raw_os_error()
    }
}
