//! Whole Ethernet frames on a lab's wire, as a hostile neighbour writes
//! them: sent through an AF_PACKET socket, so nothing in the sender's stack
//! fixes a checksum, a length or a source address on the way.

use std::{mem, os::fd::AsRawFd as _, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{natlab::in_ns, netns::Netns};

/// The MAC address of `ifname` in `ns`.
pub fn mac_of(ns: &Netns, ifname: &str) -> Result<[u8; 6]> {
    let text = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")])?;
    let bytes: Vec<u8> = text.trim().split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("{ifname} in {}: unreadable MAC {text:?}", ns.name))
}

/// Sends `frames` out of `ifname` in `ns`, `gap` apart.
pub fn send_frames(ns: &Netns, ifname: &str, frames: Vec<Vec<u8>>, gap: Duration) -> Result<()> {
    let ifname = ifname.to_string();
    in_ns(ns, move || send_here(&ifname, &frames, gap)).join().map_err(|_| anyhow::anyhow!("the sender thread panicked"))?
}

fn send_here(ifname: &str, frames: &[Vec<u8>], gap: Duration) -> Result<()> {
    let ifindex = crate::netns::ifindex_here(ifname)?;
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut address: libc::sockaddr_ll = unsafe { mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_ifindex = ifindex as i32;
    address.sll_halen = 6;
    for frame in frames {
        address.sll_addr[..6].copy_from_slice(&frame[..6]);
        // A flood outruns the device queue: ENOBUFS is a wait, not a failure
        // (bounded: a queue that never drains is one).
        let mut waits = 0;
        loop {
            let sent = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&address as *const libc::sockaddr_ll).cast(),
                    mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if sent >= 0 {
                break;
            }
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENOBUFS) && waits < 10_000 {
                waits += 1;
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            bail!("sending a {}-byte frame on {ifname}: {error}", frame.len());
        }
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    Ok(())
}

/// The addresses of both ends of a link, for frames that cross it.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// The sender's MAC.
    pub from: [u8; 6],
    /// The receiver's MAC (the gateway's port).
    pub to: [u8; 6],
}

impl Link {
    /// The link between `ifname` in `from_ns` and `gw_ifname` in `gw`.
    pub fn between(from_ns: &Netns, ifname: &str, gw: &Netns, gw_ifname: &str) -> Result<Self> {
        Ok(Self { from: mac_of(from_ns, ifname).context("sender MAC")?, to: mac_of(gw, gw_ifname).context("gateway MAC")? })
    }
}
