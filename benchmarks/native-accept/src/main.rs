//! Native accept-write-close server: the ceiling that `benchmarks/accept.py` compares
//! event loops with.
//!
//! One thread, one level-triggered epoll instance watching the listening socket. On each
//! readiness report it accepts (`accept4` with `SOCK_NONBLOCK | SOCK_CLOEXEC`) until the
//! queue is empty, and for each connection sets `TCP_NODELAY` (TCP only: asyncio sets it on
//! every TCP connection, so any loop that behaves like asyncio pays for it), writes the 5
//! bytes and closes. No per-connection epoll registration: a server that closes in
//! `connection_made` never starts reading either. This is about the least work any event
//! loop can do per connection, so its CPU time per connection is the reference.
//!
//! Usage: `native-accept tcp` (127.0.0.1, any free port; prints the port) or
//! `native-accept unix PATH` (prints 0). Runs until killed; dies with its parent
//! (`PR_SET_PDEATHSIG`).

use std::io::{self, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;

const MAX_EVENTS: usize = 64;
const GREETING: &[u8] = b"hello";

fn check(ret: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if ret < 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(err.kind(), format!("{what}: {err}")));
    }
    Ok(ret)
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Accepts every queued connection, greets and closes each.
fn accept_all(lfd: RawFd, tcp: bool) -> io::Result<()> {
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
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => Ok(()),
                _ => Err(io::Error::last_os_error()),
            };
        }
        if tcp {
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
        }
        // SAFETY: `GREETING` is a valid readable slice; `fd` is the socket just accepted,
        // owned here and closed right after. A short or failed send is the client's loss
        // (it checks what it got), never the server's.
        unsafe {
            libc::send(
                fd,
                GREETING.as_ptr().cast(),
                GREETING.len(),
                libc::MSG_NOSIGNAL,
            );
            libc::close(fd);
        }
    }
}

fn main() -> io::Result<()> {
    // SAFETY: a plain prctl call without pointers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "tcp".to_owned());
    let (lfd, port, _keep): (RawFd, u16, Box<dyn std::any::Any>) = match kind.as_str() {
        "tcp" => {
            let listener = TcpListener::bind(("127.0.0.1", 0))?;
            listener.set_nonblocking(true)?;
            let port = listener.local_addr()?.port();
            (listener.as_raw_fd(), port, Box::new(listener))
        }
        "unix" => {
            let path = args.next().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "usage: native-accept unix PATH",
                )
            })?;
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)?;
            listener.set_nonblocking(true)?;
            (listener.as_raw_fd(), 0, Box::new(listener))
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown kind {other:?}: tcp or unix"),
            ))
        }
    };
    // SAFETY: no pointer arguments.
    let epfd = check(
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        "epoll_create1",
    )?;
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: lfd as u64,
    };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    check(
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, lfd, &mut ev) },
        "epoll_ctl",
    )?;

    let mut out = io::stdout().lock();
    writeln!(out, "{port}")?;
    out.flush()?;
    drop(out);

    let tcp = kind == "tcp";
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
        accept_all(lfd, tcp)?;
    }
}
