//! Addresses, one way: every server in these tests binds `127.0.0.1:0` and
//! the test reads the address the server got from the server itself — a
//! listener the test keeps ([`tcp_listener`], [`udp_socket`]), the address a
//! [`offramp_cloud::CloudHandle`] reports, or the `... listening on ADDR`
//! line a process prints ([`crate::support::process`]). Nothing picks a
//! "free port" by binding and releasing it (another test could take it in
//! between).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};

/// Loopback, port chosen by the kernel.
pub const ANY_LOOPBACK: &str = "127.0.0.1:0";

/// [`ANY_LOOPBACK`] as an address.
pub fn any_loopback() -> SocketAddr {
    ANY_LOOPBACK.parse().unwrap()
}

/// A TCP listener on loopback for a server the test runs itself, and its
/// address. The test keeps the listener, so the address stays its own.
pub async fn tcp_listener() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind(ANY_LOOPBACK).await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// A UDP socket on loopback, and its address.
pub async fn udp_socket() -> (tokio::net::UdpSocket, SocketAddr) {
    let s = tokio::net::UdpSocket::bind(ANY_LOOPBACK).await.unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}

/// The IPv4 TCP addresses process `pid` is listening on, read from
/// `/proc` (Linux): for a listener that does not announce the address it
/// got (the cloud's Prometheus exporter is bound inside
/// metrics-exporter-prometheus and never reports its port).
pub fn listening_tcp(pid: u32) -> Vec<SocketAddr> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/fd: {e}"))
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A: LISTEN), inode
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if *state != "0A" || !inodes.contains(*inode) {
                return None;
            }
            let (ip, port) = local.split_once(':')?;
            // The address is the raw network-order word printed as a number.
            let ip = Ipv4Addr::from(u32::from_be(u32::from_str_radix(ip, 16).ok()?));
            Some(SocketAddr::new(ip.into(), u16::from_str_radix(port, 16).ok()?))
        })
        .collect()
}

/// `GET path` over HTTP/1.0; the whole response.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
