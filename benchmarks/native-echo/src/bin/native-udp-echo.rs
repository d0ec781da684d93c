//! Native UDP echo server: the ceiling that `benchmarks/udp.py` compares event loops with.
//!
//! One thread, one level-triggered epoll instance, one non-blocking UDP socket. Each
//! readiness report reads one datagram (`recvfrom` into a 256 KiB buffer, as an asyncio
//! datagram transport reads) and sends it straight back to its sender (`sendto`). One
//! datagram per readiness is what a loop keeping asyncio's callback order can do (see
//! `src/transport/datagram.rs`), so this is the least work per echoed datagram such a loop
//! could do: `epoll_wait`, `recvfrom`, `sendto`. A datagram the kernel refuses to send
//! (`EAGAIN`) is dropped, which loopback never makes it do.
//!
//! Usage: `native-udp-echo [HOST [PORT]]` (default 127.0.0.1, port 0 = any free port). The
//! bound port is printed on stdout, then the server runs until it is killed; it also dies
//! with its parent process (`PR_SET_PDEATHSIG`).

use std::io::{self, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;

/// Read size per `recvfrom`: asyncio's datagram `max_size`.
const CHUNK: usize = 256 * 1024;

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn main() -> io::Result<()> {
    // SAFETY: a plain prctl call without pointers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let mut args = std::env::args().skip(1).peekable();
    // `--reads N`: up to N datagrams per readiness (1 by default), to measure what reading
    // more per readiness would save.
    let mut reads = 1usize;
    if args.peek().map(String::as_str) == Some("--reads") {
        args.next();
        reads = args
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "--reads N"))?;
    }
    let host: Ipv4Addr = args
        .next()
        .as_deref()
        .unwrap_or("127.0.0.1")
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("bad host: {e}")))?;
    let port: u16 = args
        .next()
        .as_deref()
        .unwrap_or("0")
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("bad port: {e}")))?;

    let sock = UdpSocket::bind((host, port))?;
    sock.set_nonblocking(true)?;
    let fd = sock.as_raw_fd();
    // SAFETY: no pointer arguments.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut out = io::stdout().lock();
    writeln!(out, "{}", sock.local_addr()?.port())?;
    out.flush()?;
    drop(out);

    let mut buf = vec![0u8; CHUNK];
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
    loop {
        // SAFETY: `events` has room for the number of entries passed.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            continue;
        }
        for _ in 0..reads {
            if !echo_one(fd, &mut buf) {
                break;
            }
        }
    }
}

/// Reads one datagram and sends it back; false if there was none.
fn echo_one(fd: i32, buf: &mut [u8]) -> bool {
    // SAFETY: zeroed storage is a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `buf` and `addr` are valid writable storage of the sizes passed.
    let got = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if got < 0 {
        // EINTR, EAGAIN, or an ICMP error from an earlier send: the server goes on.
        return false;
    }
    // SAFETY: the first `got` bytes of `buf` were written; `addr` holds `len` bytes.
    unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            got as usize,
            libc::MSG_NOSIGNAL,
            (&addr as *const libc::sockaddr_storage).cast(),
            len,
        );
    }
    true
}
