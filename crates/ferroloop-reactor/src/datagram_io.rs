//! Non-blocking datagram I/O by raw descriptor (UDP over IPv4/IPv6, Unix datagram
//! sockets), with socket addresses decoded and encoded the way CPython's `socket`
//! module does, so a native datagram transport hands Python the same address values
//! `socket.recvfrom` would and sends to the same `sockaddr` `socket.sendto` would build.
//!
//! As in [`crate::stream_io`], the descriptor belongs to a Python socket object; these
//! calls only borrow the number for one syscall. Connected sends use
//! [`crate::stream_io::send`] (the same `send(2)` with `MSG_NOSIGNAL`).

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{BorrowedFd, RawFd};

use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, SocketAddrAny, SocketAddrUnix};

/// `sizeof(sun_path)` on Linux.
pub const UNIX_PATH_MAX: usize = 108;

/// Offsets into a `sockaddr` (Linux layouts, fixed by the kernel ABI).
const FAMILY_LEN: usize = 2;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const AF_UNIX: u16 = 1;

fn borrowed(fd: RawFd) -> io::Result<BorrowedFd<'static>> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(Errno::BADF.raw_os_error()));
    }
    // SAFETY: `fd` is not negative (checked above). The borrow lives for one syscall,
    // which validates the number itself (EBADF, ENOTSOCK); nothing is closed or kept
    // through it.
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

/// The `sun_path` part of an `AF_UNIX` address: the bytes within the address length
/// the kernel reported (at most [`UNIX_PATH_MAX`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UnixName {
    bytes: [u8; UNIX_PATH_MAX],
    len: usize,
}

/// What CPython's `makesockaddr` makes of an `AF_UNIX` address on Linux.
#[derive(Debug, PartialEq, Eq)]
pub enum UnixNameKind<'a> {
    /// An abstract-namespace name (first byte NUL): Python gets all the bytes, the
    /// leading NUL included, as `bytes`.
    Abstract(&'a [u8]),
    /// A filesystem path: the bytes up to the first NUL, decoded with the filesystem
    /// encoding into a `str` (empty for an address without a path).
    Path(&'a [u8]),
}

impl UnixName {
    fn new(raw: &[u8]) -> Self {
        let len = raw.len().min(UNIX_PATH_MAX);
        let mut bytes = [0; UNIX_PATH_MAX];
        bytes[..len].copy_from_slice(&raw[..len]);
        UnixName { bytes, len }
    }

    /// Classifies the name as `makesockaddr` does: abstract if it is non-empty and
    /// starts with NUL, otherwise a NUL-terminated path.
    pub fn kind(&self) -> UnixNameKind<'_> {
        let raw = &self.bytes[..self.len];
        if raw.first() == Some(&0) {
            return UnixNameKind::Abstract(raw);
        }
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        UnixNameKind::Path(&raw[..end])
    }
}

impl fmt::Debug for UnixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnixName({:?})", self.kind())
    }
}

/// The sender of a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// No address (the kernel reported a zero length, e.g. an unbound Unix socket):
    /// Python's `None`.
    Unnamed,
    /// `(host, port)`.
    V4(SocketAddrV4),
    /// `(host, port, flowinfo, scope_id)`.
    V6(SocketAddrV6),
    /// A Unix path, or abstract name.
    Unix(UnixName),
    /// A family the transports do not read natively (its number).
    Other(u16),
}

impl Sender {
    /// Decodes the raw `sockaddr` bytes the kernel wrote (exactly `raw.len()` of them).
    fn decode(raw: &[u8]) -> Sender {
        if raw.len() < FAMILY_LEN {
            return Sender::Unnamed;
        }
        let family = u16::from_ne_bytes([raw[0], raw[1]]);
        let be16 = |at: usize| u16::from_be_bytes([raw[at], raw[at + 1]]);
        let be32 = |at: usize| u32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        match family {
            // sockaddr_in: family, port (BE), address.
            AF_INET if raw.len() >= 8 => {
                let ip = Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
                Sender::V4(SocketAddrV4::new(ip, be16(2)))
            }
            // sockaddr_in6: family, port (BE), flowinfo (BE), address, scope id (host order).
            AF_INET6 if raw.len() >= 28 => {
                let mut octets = [0; 16];
                octets.copy_from_slice(&raw[8..24]);
                let scope = u32::from_ne_bytes([raw[24], raw[25], raw[26], raw[27]]);
                Sender::V6(SocketAddrV6::new(
                    Ipv6Addr::from(octets),
                    be16(2),
                    be32(4),
                    scope,
                ))
            }
            AF_UNIX => Sender::Unix(UnixName::new(&raw[FAMILY_LEN..])),
            other => Sender::Other(other),
        }
    }
}

fn raw_bytes(addr: &SocketAddrAny) -> &[u8] {
    // SAFETY: a `SocketAddrAny` keeps `addr_len()` bytes of its storage initialised
    // (rustix's invariant), and the storage lives as long as `addr`.
    unsafe { std::slice::from_raw_parts(addr.as_ptr().cast::<u8>(), addr.addr_len() as usize) }
}

/// Receives one datagram into `buf` (truncated to its length, as `recvfrom(2)` does)
/// and returns its length and sender.
pub fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Sender)> {
    let fd = borrowed(fd)?;
    let (_, received, addr) =
        retry_interrupted(|| rustix::net::recvfrom(fd, &mut *buf, RecvFlags::empty()))?;
    let sender = addr
        .as_ref()
        .map_or(Sender::Unnamed, |a| Sender::decode(raw_bytes(a)));
    // `received` is the datagram's full length only with MSG_TRUNC, which is not set:
    // it is what was copied.
    Ok((received.min(buf.len()), sender))
}

/// Where an unconnected send goes.
#[derive(Clone)]
pub enum Target {
    /// A UDP/IPv4 address.
    V4(SocketAddrV4),
    /// A UDP/IPv6 address.
    V6(SocketAddrV6),
    /// A Unix datagram socket's address.
    Unix(SocketAddrUnix),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::V4(a) => write!(f, "V4({a})"),
            Target::V6(a) => write!(f, "V6({a})"),
            Target::Unix(a) => write!(f, "Unix({a:?})"),
        }
    }
}

impl Target {
    /// The `sockaddr_un` CPython builds from `path` (the bytes of a `str` or bytes-like
    /// address), or `None` where CPython would raise ("AF_UNIX path too long") or build
    /// something rustix cannot express (a path with a NUL inside): callers then let
    /// Python's `socket.sendto` do it, so the outcome is its own.
    ///
    /// An empty path or one starting with NUL is an abstract name of exactly those bytes;
    /// anything else is a path with a terminating NUL added.
    pub fn unix(path: &[u8]) -> Option<Target> {
        let addr = match path.split_first() {
            None => SocketAddrUnix::new_unnamed(),
            Some((0, name)) if path.len() <= UNIX_PATH_MAX => {
                SocketAddrUnix::new_abstract_name(name).ok()?
            }
            Some((0, _)) => return None,
            Some(_) if path.len() < UNIX_PATH_MAX && !path.contains(&0) => {
                SocketAddrUnix::new(path).ok()?
            }
            Some(_) => return None,
        };
        Some(Target::Unix(addr))
    }
}

/// Sends `buf` as one datagram to `target`. `MSG_NOSIGNAL`, as every send here.
pub fn send_to(fd: RawFd, buf: &[u8], target: &Target) -> io::Result<usize> {
    let fd = borrowed(fd)?;
    let flags = SendFlags::NOSIGNAL;
    retry_interrupted(|| match target {
        Target::V4(addr) => rustix::net::sendto(fd, buf, flags, addr),
        Target::V6(addr) => rustix::net::sendto(fd, buf, flags, addr),
        Target::Unix(addr) => rustix::net::sendto(fd, buf, flags, addr),
    })
}

/// Parses a numeric IPv4 host as `inet_pton(AF_INET)` does: four decimal octets, no
/// leading zeros (which is also what Rust's parser accepts).
pub fn parse_ipv4(host: &str) -> Option<Ipv4Addr> {
    host.parse().ok()
}

/// Parses a numeric IPv6 host as `inet_pton(AF_INET6)` does (no `%scope` suffix: CPython
/// resolves those through `getaddrinfo`).
pub fn parse_ipv6(host: &str) -> Option<Ipv6Addr> {
    host.parse().ok()
}

/// Writes `ip` as glibc's `inet_ntop(AF_INET6)` does, which is what CPython's
/// `recvfrom` returns: RFC 5952 form (which Rust's `Display` also writes), except that
/// glibc also writes the deprecated IPv4-compatible form `::a.b.c.d` (the first 96 bits
/// zero, the seventh group not).
pub fn format_ipv6(ip: &Ipv6Addr, out: &mut impl fmt::Write) -> fmt::Result {
    let s = ip.segments();
    if s[..6].iter().all(|&g| g == 0) && s[6] != 0 {
        let [_, _, _, _, _, _, _, _, _, _, _, _, a, b, c, d] = ip.octets();
        return write!(out, "::{a}.{b}.{c}.{d}");
    }
    write!(out, "{ip}")
}

/// A small stack buffer for formatting host strings (the longest IPv6 text form is 45
/// bytes).
pub struct HostBuf {
    bytes: [u8; 64],
    len: usize,
}

impl HostBuf {
    /// An empty buffer.
    pub const fn new() -> Self {
        HostBuf {
            bytes: [0; 64],
            len: 0,
        }
    }

    /// What was written: ASCII text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, byte: u8) {
        // Never overflows: at most 15 bytes are pushed (an IPv4 address).
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }
}

impl Default for HostBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for HostBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let room = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Formats an IPv4 host as `inet_ntop(AF_INET)` does (dotted decimal), without the
/// formatting machinery: this runs for every datagram received.
pub fn format_ipv4(ip: &Ipv4Addr, out: &mut HostBuf) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    fn v6(text: &str) -> String {
        let mut buf = HostBuf::new();
        format_ipv6(&text.parse().unwrap(), &mut buf).unwrap();
        String::from_utf8(buf.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn ipv4_text_matches_inet_ntop() {
        for ip in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [255, 255, 255, 255],
            [10, 99, 100, 9],
        ] {
            let mut buf = HostBuf::new();
            format_ipv4(&Ipv4Addr::from(ip), &mut buf);
            assert_eq!(buf.as_bytes(), Ipv4Addr::from(ip).to_string().as_bytes());
        }
    }

    #[test]
    fn ipv6_text_matches_glibc() {
        assert_eq!(v6("::1"), "::1");
        assert_eq!(v6("::"), "::");
        assert_eq!(v6("::ffff:127.0.0.1"), "::ffff:127.0.0.1");
        assert_eq!(v6("::102:304"), "::1.2.3.4");
        assert_eq!(v6("::1:0:0:0"), "::1:0:0:0");
        assert_eq!(v6("1:0:0:2:0:0:0:3"), "1:0:0:2::3");
        assert_eq!(v6("1:0:2:3:4:5:6:7"), "1:0:2:3:4:5:6:7");
        assert_eq!(v6("fe80::1:2"), "fe80::1:2");
        assert_eq!(v6("1:2:3:4:5:6:7::"), "1:2:3:4:5:6:7:0");
        assert_eq!(v6("ABCD::EF"), "abcd::ef");
    }

    #[test]
    fn numeric_hosts_only() {
        assert_eq!(parse_ipv4("127.0.0.1"), Some(Ipv4Addr::LOCALHOST));
        for bad in [
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "256.0.0.1",
            "localhost",
            "",
            " 1.2.3.4",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad}");
        }
        assert_eq!(parse_ipv6("::1"), Some(Ipv6Addr::LOCALHOST));
        for bad in ["fe80::1%eth0", "1::2::3", "", "12345::"] {
            assert_eq!(parse_ipv6(bad), None, "{bad}");
        }
    }

    #[test]
    fn unix_datagrams_and_their_senders() {
        let dir = std::env::temp_dir().join(format!("ferroloop-dgram-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let server = UnixDatagram::bind(&dir).unwrap();
        server.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        let err = recv_from(server.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);

        let unbound = UnixDatagram::unbound().unwrap();
        let path = dir.as_os_str().as_encoded_bytes();
        let target = Target::unix(path).unwrap();
        assert_eq!(send_to(unbound.as_raw_fd(), b"hello", &target).unwrap(), 5);
        let (n, sender) = recv_from(server.as_raw_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], sender), (&b"hello"[..], Sender::Unnamed));

        // Empty datagrams are datagrams.
        assert_eq!(send_to(unbound.as_raw_fd(), b"", &target).unwrap(), 0);
        assert_eq!(recv_from(server.as_raw_fd(), &mut buf).unwrap().0, 0);

        let name = format!("\0ferroloop-test-{}", std::process::id());
        let named = UnixDatagram::unbound().unwrap();
        rustix::net::bind(
            &named,
            &SocketAddrUnix::new_abstract_name(&name.as_bytes()[1..]).unwrap(),
        )
        .unwrap();
        send_to(named.as_raw_fd(), b"x", &target).unwrap();
        let (_, sender) = recv_from(server.as_raw_fd(), &mut buf).unwrap();
        let Sender::Unix(got) = sender else {
            panic!("{sender:?}")
        };
        assert_eq!(got.kind(), UnixNameKind::Abstract(name.as_bytes()));

        // Truncation to the buffer, as recvfrom(2).
        send_to(unbound.as_raw_fd(), b"0123456789", &target).unwrap();
        let (n, _) = recv_from(server.as_raw_fd(), &mut buf[..4]).unwrap();
        assert_eq!(&buf[..n], b"0123");
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn unix_targets_follow_cpython() {
        assert!(Target::unix(&[b'a'; UNIX_PATH_MAX - 1]).is_some());
        assert!(Target::unix(&[b'a'; UNIX_PATH_MAX]).is_none());
        assert!(Target::unix(b"a\0b").is_none());
        let mut abstract_name = vec![0u8; UNIX_PATH_MAX];
        assert!(Target::unix(&abstract_name).is_some());
        abstract_name.push(1);
        assert!(Target::unix(&abstract_name).is_none());
        assert!(Target::unix(b"").is_some());
    }

    #[test]
    fn udp_round_trip_with_sender() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        let std::net::SocketAddr::V4(to) = b.local_addr().unwrap() else {
            unreachable!()
        };
        send_to(a.as_raw_fd(), b"ping", &Target::V4(to)).unwrap();
        let mut buf = [0u8; 8];
        let (n, sender) = recv_from(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(
            sender,
            Sender::V4(match a.local_addr().unwrap() {
                std::net::SocketAddr::V4(v4) => v4,
                _ => unreachable!(),
            })
        );
        assert!(recv_from(-1, &mut buf).is_err());
        assert!(send_to(-1, b"x", &Target::V4(to)).is_err());
    }
}
