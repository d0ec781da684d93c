//! Native TCP echo server: the ceiling that `benchmarks/echo.py` compares event loops with.
//!
//! One thread, one level-triggered epoll instance, non-blocking `accept4`/`recv`/`send`.
//! Each connection echoes what it reads; whatever `send` cannot take right away waits in
//! that connection's pending-write buffer, and while anything is pending the connection
//! waits for `EPOLLOUT` instead of reading more (so a client that stops reading cannot make
//! the server buffer without bound). This is roughly the least work any event loop can do
//! per echoed message, which makes its CPU time per request the reference ("ceiling") for
//! the Python servers. It is not a strict floor: being fast, it also sleeps and wakes up
//! more often per request than a slower server that finds several messages ready at once.
//!
//! Usage: `native-echo [HOST [PORT]]` (default 127.0.0.1, port 0 = any free port). The
//! bound port is printed on stdout, then the server runs until it is killed; it also dies
//! with its parent process (`PR_SET_PDEATHSIG`), so a killed benchmark leaves nothing behind.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};

/// Read size per `recv`. A connection stops reading while anything is pending, so this is
/// also the most data one connection can have waiting to be sent.
const CHUNK: usize = 256 * 1024;
const MAX_EVENTS: usize = 256;

struct Conn {
    /// Bytes received but not yet sent back.
    pending: Vec<u8>,
    /// Offset of the first unsent byte in `pending`.
    sent: usize,
}

fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(err.kind(), format!("{what}: {err}")));
    }
    Ok(ret)
}

fn epoll_set(epfd: RawFd, op: libc::c_int, fd: RawFd, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    check(
        unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) },
        "epoll_ctl",
    )?;
    Ok(())
}

fn close(epfd: RawFd, fd: RawFd, conns: &mut HashMap<RawFd, Conn>) {
    conns.remove(&fd);
    // SAFETY: `fd` is a connection socket this server owns; closing it also drops it from
    // the epoll set, the explicit delete only keeps the set tidy if the fd were shared.
    unsafe {
        libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut());
        libc::close(fd);
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Send as much of `conn.pending[conn.sent..]` as the socket takes. Ok(true) when all is sent.
fn flush(fd: RawFd, conn: &mut Conn) -> io::Result<bool> {
    while conn.sent < conn.pending.len() {
        let rest = &conn.pending[conn.sent..];
        // SAFETY: `rest` is a valid readable slice of `rest.len()` bytes.
        let n = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => return Ok(false),
                _ => return Err(io::Error::last_os_error()),
            }
        }
        conn.sent += n as usize;
    }
    conn.pending.clear();
    conn.sent = 0;
    Ok(true)
}

fn accept_all(epfd: RawFd, lfd: RawFd, conns: &mut HashMap<RawFd, Conn>) -> io::Result<()> {
    loop {
        // SAFETY: null address pointers are allowed when the peer address is not wanted.
        let fd = unsafe {
            libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return match errno() {
                libc::EINTR => continue,
                libc::EAGAIN | libc::ECONNABORTED => Ok(()),
                // Out of descriptors or memory: try again on the next readiness report.
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => Ok(()),
                _ => Err(io::Error::last_os_error()),
            };
        }
        let one: libc::c_int = 1;
        // SAFETY: `one` lives across the call; the length matches its type.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        epoll_set(epfd, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32)?;
        conns.insert(
            fd,
            Conn {
                pending: Vec::new(),
                sent: 0,
            },
        );
    }
}

/// Handle readiness of connection `fd`. Ok(false) means the connection is finished.
fn serve(epfd: RawFd, fd: RawFd, events: u32, conn: &mut Conn, buf: &mut [u8]) -> io::Result<bool> {
    if events & (libc::EPOLLOUT as u32) != 0 {
        if !flush(fd, conn)? {
            return Ok(true);
        }
        // Drained: back to reading.
        epoll_set(epfd, libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32)?;
    }
    if events & ((libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32) == 0 {
        return Ok(true);
    }
    if !conn.pending.is_empty() {
        // Still waiting for EPOLLOUT. A hang-up or error with data pending ends the
        // connection now (level-triggered, it would otherwise be reported forever).
        let broken = events & ((libc::EPOLLHUP | libc::EPOLLERR) as u32) != 0;
        return Ok(!broken);
    }
    // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return match errno() {
            libc::EINTR | libc::EAGAIN => Ok(true),
            _ => Ok(false),
        };
    }
    if n == 0 {
        return Ok(false); // EOF
    }
    let data = &buf[..n as usize];
    // Fast path: send straight from the read buffer; keep only what the socket refused.
    let mut off = 0;
    while off < data.len() {
        let rest = &data[off..];
        // SAFETY: `rest` is a valid readable slice of `rest.len()` bytes.
        let w = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if w < 0 {
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => break,
                _ => return Ok(false),
            }
        }
        off += w as usize;
    }
    if off < data.len() {
        conn.pending.extend_from_slice(&data[off..]);
        epoll_set(epfd, libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT as u32)?;
    }
    Ok(true)
}

fn main() -> io::Result<()> {
    // Die with the parent (the benchmark driver), so that no server outlives a killed run.
    // SAFETY: a plain prctl call without pointers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let mut args = std::env::args().skip(1);
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

    let listener = TcpListener::bind((host, port))?;
    listener.set_nonblocking(true)?;
    let lfd = listener.as_raw_fd();
    // SAFETY: no pointer arguments.
    let epfd = check(
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        "epoll_create1",
    )?;
    epoll_set(epfd, libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32)?;

    let mut out = io::stdout().lock();
    writeln!(out, "{}", listener.local_addr()?.port())?;
    out.flush()?;
    drop(out);

    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut buf = vec![0u8; CHUNK];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    loop {
        // SAFETY: `events` has room for MAX_EVENTS entries.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), MAX_EVENTS as i32, -1) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(io::Error::last_os_error());
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            let bits = ev.events;
            if fd == lfd {
                accept_all(epfd, lfd, &mut conns)?;
                continue;
            }
            let Some(conn) = conns.get_mut(&fd) else {
                continue;
            };
            // An error on one connection ends that connection, never the server.
            let keep = serve(epfd, fd, bits, conn, &mut buf).unwrap_or(false);
            if !keep {
                close(epfd, fd, &mut conns);
            }
        }
    }
}
