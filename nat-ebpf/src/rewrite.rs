//! In-place rewrite of address, port and TTL with incremental checksum
//! updates (RFC 1624, arithmetic in `nat_common::checksum`).

use nat_common::{
    Endpoint,
    checksum::{replace16, replace32, udp_fixup},
};

use crate::parse::{Ipv4Packet, L4};

/// Which end of the packet the mapping rewrites.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// LAN -> WAN: the inside source becomes the external endpoint.
    Source,
    /// WAN -> LAN: the external destination becomes the inside endpoint.
    Destination,
}

#[inline(always)]
fn load16(field: &[u8; 2]) -> u16 {
    u16::from_ne_bytes(*field)
}

/// Rewrites one endpoint of the packet to `to` and decrements the TTL, keeping
/// the IPv4 header and L4 checksums valid. The caller checked `ttl > 1`.
#[inline(always)]
pub fn translate(pkt: &Ipv4Packet, side: Side, to: &Endpoint) {
    let ip = pkt.ip;
    unsafe {
        let addr_field = match side {
            Side::Source => &mut (*ip).src_addr,
            Side::Destination => &mut (*ip).dst_addr,
        };
        let old_addr = u32::from_ne_bytes(*addr_field);
        *addr_field = to.addr_be.to_ne_bytes();

        // TTL shares a 16-bit word with the protocol byte.
        let old_ttl_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl -= 1;
        let new_ttl_word = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);

        let mut ip_check = load16(&(*ip).check);
        ip_check = replace32(ip_check, old_addr, to.addr_be);
        ip_check = replace16(ip_check, old_ttl_word, new_ttl_word);
        (*ip).check = ip_check.to_ne_bytes();

        match pkt.l4 {
            L4::Tcp(tcp) => {
                let port = match side {
                    Side::Source => &mut (*tcp).source,
                    Side::Destination => &mut (*tcp).dest,
                };
                let old_port = load16(port);
                *port = to.port_be.to_ne_bytes();
                // The pseudo-header carries the address.
                let mut check = load16(&(*tcp).check);
                check = replace32(check, old_addr, to.addr_be);
                check = replace16(check, old_port, to.port_be);
                (*tcp).check = check.to_ne_bytes();
            }
            L4::Udp(udp) => {
                let port = match side {
                    Side::Source => &mut (*udp).src,
                    Side::Destination => &mut (*udp).dst,
                };
                let old_port = load16(port);
                *port = to.port_be.to_ne_bytes();
                let before = load16(&(*udp).check);
                let mut check = replace32(before, old_addr, to.addr_be);
                check = replace16(check, old_port, to.port_be);
                (*udp).check = udp_fixup(before, check).to_ne_bytes();
            }
            L4::IcmpEcho(icmp) => {
                // No pseudo-header in ICMPv4: only the identifier counts.
                let old_id = load16(&(*icmp).id);
                (*icmp).id = to.port_be.to_ne_bytes();
                let check = replace16(load16(&(*icmp).check), old_id, to.port_be);
                (*icmp).check = check.to_ne_bytes();
            }
            L4::Other => {}
        }
    }
}

/// TCP flags byte of the packet, 0 for anything else.
#[inline(always)]
pub fn tcp_flags(pkt: &Ipv4Packet) -> u8 {
    match pkt.l4 {
        // The flags are the low byte of the 16-bit word after the ack number
        // (offset 13 in the header).
        L4::Tcp(tcp) => unsafe { *((tcp as *const u8).add(13)) },
        _ => 0,
    }
}
