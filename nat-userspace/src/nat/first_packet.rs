//! Packets the datapath hands to natd instead of forwarding them, sent on
//! by natd through the kernel:
//!
//! - the first packet of a new flow natd set up itself: translated in user
//!   space (`packet::translate_source`) and sent through a raw socket, so it
//!   is delivered rather than left to the sender's retransmit timer; the
//!   next packets hit the map and stay in XDP. (Re-running the XDP program
//!   on the frame with a live-frames BPF_PROG_TEST_RUN also works, but sets
//!   up and tears down a page pool per call: about 50 us a packet here,
//!   against a few us for the raw socket);
//! - a first packet for another inside host's mapping, hairpinned (RFC 4787
//!   REQ-9): translated both ways and sent into the LAN;
//! - a translated packet whose next hop has no neighbour entry yet: sent as
//!   it is; the kernel queues it on the neighbour entry, resolves it with
//!   ARP, and transmits it. Later packets then find the neighbour in XDP;
//! - a translated packet longer than the egress MTU with DF clear: cut into
//!   fragments (`packet::fragments`), as a router does, and those sent. A
//!   raw socket that writes its own header never fragments (the kernel
//!   refuses with EMSGSIZE what is longer than the device's MTU), so any
//!   packet natd sends that is too long, DF clear, is cut the same way.

use std::{
    mem,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result, bail};
use nat_common::{Endpoint, PermitKey};

use crate::{
    config::Settings,
    datapath::Datapath,
    nat::run::Run,
    packet::{Ipv4, fragments, translate_destination, translate_source},
};

/// A raw IPv4 socket for sending packets through the kernel stack.
pub struct KernelSender {
    socket: OwnedFd,
    /// Packets cut into fragments before they were sent.
    cut: AtomicU64,
}

impl KernelSender {
    pub fn new() -> Result<Self> {
        // IPPROTO_RAW implies IP_HDRINCL: the packet goes out with its own header.
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        if fd < 0 {
            bail!("opening a raw IPv4 socket (needs CAP_NET_RAW): {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nothing else owns.
        Ok(Self { socket: unsafe { OwnedFd::from_raw_fd(fd) }, cut: AtomicU64::new(0) })
    }

    /// Packets cut into fragments so far (`send_cut`, and `send_packet`'s
    /// too long ones).
    pub fn packets_cut(&self) -> u64 {
        self.cut.load(Ordering::Relaxed)
    }

    /// Sends an IPv4 packet (header included), up to its total length: as
    /// it is, or, longer than the route's MTU with DF clear, in fragments.
    pub fn send_packet(&self, ip: &[u8]) -> Result<()> {
        let packet = Ipv4::read(ip)?;
        match self.send_whole(&packet) {
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) && !packet.dont_fragment() => self.send_cut(ip, path_mtu(packet.dst())?),
            sent => sent.with_context(|| format!("sending a translated packet to {} through the kernel", packet.dst())),
        }
    }

    /// Sends an IPv4 packet cut into fragments of at most `mtu` bytes (one,
    /// as it is, if it fits).
    pub fn send_cut(&self, ip: &[u8], mtu: u16) -> Result<()> {
        let pieces = fragments(ip, usize::from(mtu))?;
        if pieces.len() > 1 {
            self.cut.fetch_add(1, Ordering::Relaxed);
        }
        for piece in &pieces {
            self.send_whole(&Ipv4::read(piece)?).with_context(|| format!("sending a fragment of {} bytes (MTU {mtu}) through the kernel", piece.len()))?;
        }
        Ok(())
    }

    /// Sends an IPv4 packet as it is: the kernel's error as it is.
    fn send_whole(&self, packet: &Ipv4) -> std::io::Result<()> {
        let datagram = packet.datagram();
        let dst = packet.dst();
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
            sin_zero: [0; 8],
        };
        // SAFETY: the buffer and address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                datagram.as_ptr().cast(),
                datagram.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The MTU of the kernel's route to `dst` (path-MTU exceptions included):
/// `IP_MTU` of a UDP socket connected to it, which sends nothing.
fn path_mtu(dst: Ipv4Addr) -> Result<u16> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).context("a UDP socket to ask the route's MTU")?;
    socket.connect(SocketAddrV4::new(dst, 9)).with_context(|| format!("no route to {dst} to ask its MTU"))?;
    let mut mtu: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int-sized out value and its length.
    let rc = unsafe { libc::getsockopt(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU, (&mut mtu as *mut libc::c_int).cast(), &mut len) };
    if rc != 0 {
        bail!("asking the MTU of the route to {dst}: {}", std::io::Error::last_os_error());
    }
    u16::try_from(mtu).with_context(|| format!("the route to {dst} has an MTU of {mtu}"))
}

/// What became of a new flow's first packet.
pub enum Sent {
    /// Translated and sent on.
    Forwarded,
    /// Not sent: a hairpin whose target's filtering refuses the sender, or
    /// for no mapping (the gateway's own, which its kernel got already).
    Held,
}

/// Sends the first packet of a flow mapped to `external`: to the WAN, or,
/// when it is for another inside host's mapping on an external address,
/// hairpinned into the LAN. The remote it is sent to is remembered for
/// filtering, as the datapath does for the packets it translates, so the
/// reply gets in.
pub fn send_first_packet(datapath: &mut Datapath, sender: &KernelSender, run: &Run, packet: &[u8], inside: Endpoint, external: Endpoint, now_ns: u64) -> Result<Sent> {
    let (settings, env) = (&run.settings, &run.env);
    let mut packet = Ipv4::read(packet)?.datagram().to_vec();
    let (remote_addr_be, remote_port_be) = Ipv4::read(&packet)?.remote();
    let mode = settings.filtering.of(inside.proto).datapath_value();
    if let Some(key) = PermitKey::new(mode, inside, remote_addr_be, remote_port_be) {
        datapath.remember_remote(key, now_ns)?;
    }
    let remote = Ipv4Addr::from(remote_addr_be.to_ne_bytes());
    if env.external_ips.contains(&remote) {
        let target_external = Endpoint::from_be(remote_addr_be, remote_port_be, inside.proto);
        return hairpin(datapath, sender, settings, packet, external, target_external, now_ns);
    }
    translate_source(&mut packet, external)?;
    sender.send_packet(&packet)?;
    Ok(Sent::Forwarded)
}

/// A new flow's first packet for another inside host's mapping on an
/// external address (RFC 4787 REQ-9): translated both ways, as the
/// datapath hairpins the packets after it, and sent into the LAN, if the
/// target's filtering lets the sender's external endpoint in. Without a
/// target mapping the packet was for the gateway itself, whose kernel the
/// datapath already passes such packets to.
fn hairpin(datapath: &Datapath, sender: &KernelSender, settings: &Settings, mut packet: Vec<u8>, external: Endpoint, target_external: Endpoint, now_ns: u64) -> Result<Sent> {
    let Some(target) = datapath.inbound_mapping(&target_external)? else {
        return Ok(Sent::Held);
    };
    let target_inside = target.target(target_external.proto);
    let mode = settings.filtering.of(target_inside.proto).datapath_value();
    if let Some(key) = PermitKey::new(mode, target_inside, external.addr_be, external.port_be) {
        let ttl = settings.timeouts.permit_ttl_ns(target_inside.proto);
        let fresh = datapath.permit(&key)?.is_some_and(|sent| now_ns.saturating_sub(sent) <= ttl);
        if !fresh {
            return Ok(Sent::Held);
        }
    }
    translate_source(&mut packet, external)?;
    translate_destination(&mut packet, target_inside)?;
    sender.send_packet(&packet)?;
    Ok(Sent::Forwarded)
}
