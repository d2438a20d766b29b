//! The user side of the miss hand-off: what the daemon does with a frame the
//! datapath put in the `MISSES` ring instead of forwarding it.
//!
//! - `NEW_FLOW`: once the daemon has inserted the mapping, it translates the
//!   frame's packet with `translate_source` and `KernelSender` sends it through
//!   a raw socket: the first packet of a flow is delivered, not left to the
//!   sender's retransmit timer. The next packets hit the map and stay in XDP.
//!   (Re-running the XDP program on the frame with a live-frames
//!   BPF_PROG_TEST_RUN also works, but sets up and tears down a page pool per
//!   call: about 50 us a packet here, against a few us for the raw socket.)
//! - `NO_NEIGHBOUR`: the frame is already translated. `KernelSender` sends its
//!   IPv4 packet through the raw socket; the kernel queues it on the neighbour
//!   entry, resolves the next hop with ARP, and transmits it. Later packets of
//!   the flow then find the neighbour and stay in XDP.

use std::{
    mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Result, anyhow, bail, ensure};
use nat_common::{
    Endpoint, MissEvent,
    checksum::{finish, is_partial, pseudo_header_sum, replace16, replace32, sum_words, udp_fixup},
    proto,
};

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it: the data span and the
/// interface the program believes the frame arrived on.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

impl XdpMd {
    pub fn for_frame(frame: &[u8], ingress_ifindex: u32) -> Self {
        Self { data_end: frame.len() as u32, ingress_ifindex, ..Self::default() }
    }

    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C), six u32, no padding.
        unsafe { std::slice::from_raw_parts(self as *const Self as *const u8, mem::size_of::<Self>()) }
    }
}

/// Rewrites the source of a missed outbound IPv4 packet (`ip`, from the IPv4
/// header on) to `to` and decrements its TTL, keeping every checksum valid:
/// the user-space twin of the datapath's rewrite, for the first packet of a
/// flow. Incremental updates (RFC 1624) as in the datapath; a TCP/UDP
/// checksum that is only the pseudo-header sum (the sender left it to TX
/// offload, CHECKSUM_PARTIAL) is computed in full instead.
pub fn translate_source(ip: &mut [u8], to: Endpoint) -> Result<()> {
    // A first fragment carries the L4 header: translated like a whole packet
    // (RFC 4787 REQ-14), its checksum incrementally (it covers the whole
    // datagram; only the pseudo-header address and the port change). A later
    // fragment has no header to translate here.
    ensure!(ip.len() >= 8, "not an IPv4 packet");
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    ensure!(frag & 0x1fff == 0, "a later fragment has no L4 header to translate");
    let fragment = frag & 0x2000 != 0;
    let (header, rest) = split_datagram(ip)?;
    ensure!(header[8] > 1, "TTL expired");
    let proto_nr = header[9];
    let (port_at, check_at) = l4_fields(proto_nr, Side::Source)?;
    ensure!(rest.len() >= check_at + 2 && rest.len() >= port_at + 2, "L4 header truncated");
    let (old_src, dst): ([u8; 4], [u8; 4]) = (header[12..16].try_into().unwrap(), header[16..20].try_into().unwrap());
    let l4_len = rest.len() as u16;
    // A fragment never carries a partial checksum: the sender's kernel
    // completes it before fragmenting, and the segment is not all here.
    let partial = !fragment
        && proto_nr != proto::ICMP
        && is_partial(word(rest, check_at), pseudo_header_sum(old_src, dst, proto_nr, l4_len));

    let old_src = rewrite_address(header, Side::Source, to.addr_be, true);
    if partial {
        rest[port_at..port_at + 2].copy_from_slice(&to.port_be.to_ne_bytes());
        rest[check_at..check_at + 2].fill(0);
        let check = finish(pseudo_header_sum(to.addr().octets(), dst, proto_nr, l4_len), sum_words(rest, 0), proto_nr == proto::UDP);
        rest[check_at..check_at + 2].copy_from_slice(&check.to_ne_bytes());
    } else {
        rewrite_l4(rest, proto_nr, (port_at, check_at), old_src, to);
    }
    Ok(())
}

/// Rewrites the destination of a TCP/UDP packet `translate_source` has
/// already translated (so its checksum is a full one) to `to`: the second
/// half of hairpinning a first packet (RFC 4787 REQ-9). The TTL is left
/// alone: a hairpinned packet crosses the gateway once.
pub fn translate_destination(ip: &mut [u8], to: Endpoint) -> Result<()> {
    let (header, rest) = split_datagram(ip)?;
    let proto_nr = header[9];
    ensure!(proto_nr == proto::TCP || proto_nr == proto::UDP, "protocol {proto_nr} is not hairpinned");
    let fields = l4_fields(proto_nr, Side::Destination)?;
    ensure!(rest.len() >= fields.1 + 2, "L4 header truncated");
    let old_dst = rewrite_address(header, Side::Destination, to.addr_be, false);
    rewrite_l4(rest, proto_nr, fields, old_dst, to);
    Ok(())
}

/// Which end of a packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// An IPv4 packet's header and the rest of its datagram (up to the total
/// length), once both lengths are checked.
fn split_datagram(ip: &mut [u8]) -> Result<(&mut [u8], &mut [u8])> {
    ensure!(ip.len() >= 20 && ip[0] >> 4 == 4, "not an IPv4 packet");
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    ensure!(ihl >= 20 && ihl <= total && total <= ip.len(), "IPv4 header lengths do not fit the frame");
    Ok(ip[..total].split_at_mut(ihl))
}

/// Offsets in the L4 header of the port (ICMP echo: the identifier) of
/// `side` and of the checksum.
fn l4_fields(proto_nr: u8, side: Side) -> Result<(usize, usize)> {
    let port_at = if side == Side::Source { 0 } else { 2 };
    Ok(match proto_nr {
        proto::TCP => (port_at, 16),
        proto::UDP => (port_at, 6),
        proto::ICMP => (4, 2),
        other => bail!("protocol {other} is not translated"),
    })
}

fn word(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// Rewrites the source or destination address of an IPv4 `header` to
/// `to_be`, and decrements the TTL if asked, updating the header checksum
/// incrementally (RFC 1624). Returns the old address. The TTL must be above
/// 1 when it is decremented.
pub fn rewrite_address(header: &mut [u8], side: Side, to_be: u32, decrement_ttl: bool) -> u32 {
    let at = if side == Side::Source { 12 } else { 16 };
    let old = u32::from_ne_bytes(header[at..at + 4].try_into().unwrap());
    let mut check = replace32(word(header, 10), old, to_be);
    if decrement_ttl {
        let old_ttl_word = word(header, 8);
        header[8] -= 1;
        check = replace16(check, old_ttl_word, word(header, 8));
    }
    header[at..at + 4].copy_from_slice(&to_be.to_ne_bytes());
    header[10..12].copy_from_slice(&check.to_ne_bytes());
    old
}

/// The L4 half of a rewrite to `to` (the address already rewritten from
/// `old_addr_be`): the port at `fields.0`, and the full checksum at
/// `fields.1` updated incrementally; TCP's and UDP's cover the address
/// through the pseudo-header, ICMP's does not; a zero UDP checksum stays zero.
fn rewrite_l4(rest: &mut [u8], proto_nr: u8, (port_at, check_at): (usize, usize), old_addr_be: u32, to: Endpoint) {
    let (old_port, check_before) = (word(rest, port_at), word(rest, check_at));
    rest[port_at..port_at + 2].copy_from_slice(&to.port_be.to_ne_bytes());
    let mut check = replace16(check_before, old_port, to.port_be);
    if proto_nr != proto::ICMP {
        check = replace32(check, old_addr_be, to.addr_be);
    }
    if proto_nr == proto::UDP {
        check = udp_fixup(check_before, check);
    }
    rest[check_at..check_at + 2].copy_from_slice(&check.to_ne_bytes());
}

/// A raw IPv4 socket for sending translated packets through the kernel stack.
pub struct KernelSender {
    socket: OwnedFd,
}

impl KernelSender {
    pub fn new() -> Result<Self> {
        // IPPROTO_RAW implies IP_HDRINCL: the packet goes out with its own header.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        if fd < 0 {
            bail!("opening a raw IPv4 socket (needs CAP_NET_RAW): {}", std::io::Error::last_os_error());
        }
        Ok(Self { socket: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Sends the IPv4 packet inside a `NO_NEIGHBOUR` event's frame.
    pub fn send(&self, event: &MissEvent) -> Result<()> {
        self.send_packet(event_packet(event)?)
    }

    /// Sends an IPv4 packet (header included) as it is.
    pub fn send_packet(&self, ip: &[u8]) -> Result<()> {
        ensure!(ip.len() >= 20, "packet too short for an IPv4 header");
        let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        ensure!(total >= 20 && total <= ip.len(), "event IPv4 total length {total} does not fit the frame");
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
            sin_zero: [0; 8],
        };
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                ip.as_ptr().cast(),
                total,
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            bail!("sending a translated packet to {dst} through the kernel: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The IPv4 packet inside an event's frame (from the IPv4 header to the end).
pub fn event_packet(event: &MissEvent) -> Result<&[u8]> {
    event
        .frame()
        .get(event.l3_offset as usize..)
        .filter(|ip| ip.len() >= 20)
        .ok_or_else(|| anyhow!("event frame too short for an IPv4 header"))
}
