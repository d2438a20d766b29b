//! The interfaces natd serves, watched through netlink (rtnetlink link and
//! IPv4 address notifications): natd must not run on silently when the
//! world changed under it.
//!
//! - The LAN or WAN interface deleted (or moved out of the namespace, which
//!   the kernel reports the same way; a veth whose peer's namespace was
//!   deleted goes with it): natd says so and stops with an error, so a
//!   supervisor sees the failure (systemd restarts it once the interface is
//!   back).
//! - The address natd translates to, taken from the WAN interface (no
//!   `external_ip` set), removed or another one added: natd says so loudly
//!   and keeps translating to the address it started with; changing the
//!   external address takes a restart (a reload refuses it too), because
//!   every session and free port belongs to it.
//!
//! And what kind of device an interface is (`link_kind`, `driver`): a NIC's
//! frames come off a wire (`config::is_nic`).

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkInfo, LinkMessage},
};
use netlink_sys::{AsyncSocket as _, AsyncSocketExt as _, Socket, SocketAddr, TokioSocket, protocols::NETLINK_ROUTE};

/// rtnetlink multicast groups (linux/rtnetlink.h): link changes, IPv4
/// address changes.
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;

/// The rtnetlink link kind of interface `ifindex` in this namespace
/// ("veth", "tun", "bond", "bridge"...), or `None` for a device a NIC's
/// driver registered (and the loopback): only software devices have one
/// (`rtnl_link_ops`). Asked of netlink rather than /sys, which shows the
/// namespace it was mounted in, not necessarily natd's.
pub fn link_kind(ifindex: u32) -> Result<Option<String>> {
    let what = || format!("asking netlink about interface {ifindex}");
    let mut socket = Socket::new(NETLINK_ROUTE).with_context(what)?;
    socket.bind_auto().with_context(what)?;
    socket.connect(&SocketAddr::new(0, 0)).with_context(what)?;
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(link));
    request.header.flags = NLM_F_REQUEST;
    request.header.sequence_number = 1;
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0).with_context(what)?;
    let (answer, _) = socket.recv_from_full().with_context(what)?;
    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer).with_context(what)?;
    match answer.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Ok(link.attributes.iter().find_map(|attribute| match attribute {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
                LinkInfo::Kind(kind) => Some(kind.to_string()),
                _ => None,
            }),
            _ => None,
        })),
        NetlinkPayload::Error(e) => bail!("{}: {e}", what()),
        other => bail!("{}: unexpected answer {other:?}", what()),
    }
}

/// The driver of interface `name` in this namespace, as `ethtool -i` names
/// it ("ixgbe", "mlx5_core", "virtio_net", "veth"...): `ETHTOOL_GDRVINFO`.
pub fn driver(name: &str) -> Result<String> {
    /// `struct ethtool_drvinfo` (linux/ethtool.h).
    #[repr(C)]
    struct DriverInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved: [u8; 12],
        counts: [u32; 5],
    }
    /// `struct ifreq` with its union as `ifr_data`.
    #[repr(C)]
    struct InterfaceRequest {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DriverInfo,
        _rest_of_union: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;

    let mut request = InterfaceRequest { name: [0; libc::IFNAMSIZ], data: std::ptr::null_mut(), _rest_of_union: [0; 16] };
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        bail!("{name:?} is not an interface name");
    }
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    let mut info = DriverInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], version: [0; 32], fw_version: [0; 32], bus_info: [0; 32], erom_version: [0; 32], reserved: [0; 12], counts: [0; 5] };
    request.data = &mut info;
    // SAFETY: a datagram socket for the ioctl, closed by the OwnedFd; the
    // kernel writes at most a `DriverInfo` through `data`, which lives
    // across the call.
    let answered = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("a socket to ask for {name}'s driver: {}", std::io::Error::last_os_error());
        }
        let fd = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), SIOCETHTOOL, &mut request) == 0
    };
    if !answered {
        bail!("asking for {name}'s driver (ETHTOOL_GDRVINFO): {}", std::io::Error::last_os_error());
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// One interface natd serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// "lan" or "wan".
    pub role: &'static str,
    pub name: String,
    pub ifindex: u32,
}

/// What changed that natd must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A served interface is gone: natd stops, or waits for it.
    Deleted(Served),
    /// An interface of a served one's name appeared with another index:
    /// back, to be re-attached to (when natd waits for it).
    Returned(Served),
    /// An IPv4 address was added to or removed from the WAN interface whose
    /// first address natd translates to.
    WanAddress { added: bool, addr: Ipv4Addr },
}

impl Change {
    /// The words natd logs.
    pub fn describe(&self, external: &[Ipv4Addr]) -> String {
        match self {
            Change::Deleted(served) => format!(
                "the {} interface {} (index {}) was deleted or left the namespace: natd stops (programs and settings go with it); \
                 start natd again once the interface is back",
                served.role, served.name, served.ifindex
            ),
            Change::Returned(served) => format!("an interface named {} is back (index {})", served.name, served.ifindex),
            Change::WanAddress { added: false, addr } if external.contains(addr) => format!(
                "the WAN address {addr} natd translates to was removed: natd keeps translating to it, and replies to it still \
                 arrive only if the upstream still routes it here; restart natd to use the WAN interface's new address"
            ),
            Change::WanAddress { added, addr } => format!(
                "the WAN interface {} {addr}; natd translates to {} until it is restarted",
                if *added { "gained" } else { "lost" },
                external.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// A netlink socket subscribed to link and IPv4 address changes.
pub struct Watch {
    socket: TokioSocket,
    served: [Served; 2],
    /// Address changes of the WAN interface matter (the external address
    /// is taken from it).
    watch_wan_addresses: bool,
}

impl Watch {
    pub fn new(lan: Served, wan: Served, watch_wan_addresses: bool) -> Result<Self> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE).context("opening a netlink socket to watch the interfaces")?;
        socket
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))
            .context("subscribing to link and address changes (netlink)")?;
        Ok(Self { socket, served: [lan, wan], watch_wan_addresses })
    }

    /// Follows a served interface that came back under a new index.
    pub fn follow(&mut self, returned: &Served) {
        for served in &mut self.served {
            if served.role == returned.role {
                served.ifindex = returned.ifindex;
            }
        }
    }

    /// The next changes that concern natd (waits for one datagram; most
    /// carry none).
    pub async fn next(&mut self) -> Result<Vec<Change>> {
        let (datagram, _) = self.socket.recv_from_full().await.context("reading netlink")?;
        Ok(changes(&datagram, &self.served, self.watch_wan_addresses))
    }
}

/// What one netlink datagram (one or more messages) says about the served
/// interfaces.
pub fn changes(datagram: &[u8], served: &[Served; 2], watch_wan_addresses: bool) -> Vec<Change> {
    let mut found = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest) else { break };
        let len = (message.header.length as usize).next_multiple_of(4);
        match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                if let Some(gone) = served.iter().find(|s| s.ifindex == link.header.index) {
                    found.push(Change::Deleted(gone.clone()));
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                let name = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name.as_str()),
                    _ => None,
                });
                if let Some(back) = served.iter().find(|s| Some(s.name.as_str()) == name && s.ifindex != link.header.index) {
                    found.push(Change::Returned(Served { ifindex: link.header.index, ..back.clone() }));
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(address)) => wan_address(&mut found, &address, true, served, watch_wan_addresses),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(address)) => wan_address(&mut found, &address, false, served, watch_wan_addresses),
            _ => {}
        }
        if len == 0 || len > rest.len() {
            break;
        }
        rest = &rest[len..];
    }
    found
}

/// An IPv4 address added to or removed from the WAN interface, when those
/// matter.
fn wan_address(found: &mut Vec<Change>, address: &AddressMessage, added: bool, served: &[Served; 2], watch_wan_addresses: bool) {
    if !watch_wan_addresses || address.header.index != served[1].ifindex {
        return;
    }
    let addr = address.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    if let Some(addr) = addr {
        found.push(Change::WanAddress { added, addr });
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage};
    use netlink_packet_route::link::LinkMessage;

    use super::*;

    #[test]
    fn the_loopback_has_no_link_kind_nor_driver_and_a_missing_interface_is_an_error() {
        assert_eq!(link_kind(1).unwrap(), None);
        let missing = link_kind(u32::MAX >> 1).unwrap_err();
        assert!(format!("{missing:#}").contains("asking netlink about interface"), "{missing:#}");
        let none = driver("lo").unwrap_err();
        assert!(format!("{none:#}").contains("ETHTOOL_GDRVINFO"), "{none:#}");
        assert!(driver("a-name-far-too-long-for-an-interface").is_err());
    }

    fn served() -> [Served; 2] {
        [Served { role: "lan", name: "lan0".into(), ifindex: 4 }, Served { role: "wan", name: "wan0".into(), ifindex: 7 }]
    }

    fn bytes(message: RouteNetlinkMessage) -> Vec<u8> {
        let mut message = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(message));
        message.finalize();
        let mut buffer = vec![0u8; message.buffer_len()];
        message.serialize(&mut buffer);
        buffer
    }

    fn link(index: u32, name: &str) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link
    }

    fn address(index: u32, addr: Ipv4Addr) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.index = index;
        message.header.prefix_len = 24;
        message.attributes.push(AddressAttribute::Local(IpAddr::V4(addr)));
        message
    }

    #[test]
    fn a_served_interface_deleted_is_a_change_and_any_other_link_is_not() {
        let mut datagram = bytes(RouteNetlinkMessage::DelLink(link(9, "eth9")));
        datagram.extend(bytes(RouteNetlinkMessage::NewLink(link(7, "wan0"))));
        datagram.extend(bytes(RouteNetlinkMessage::DelLink(link(4, "lan0"))));
        assert_eq!(changes(&datagram, &served(), true), [Change::Deleted(served()[0].clone())], "three messages in one datagram");
        let back = bytes(RouteNetlinkMessage::NewLink(link(12, "lan0")));
        assert_eq!(changes(&back, &served(), true), [Change::Returned(Served { ifindex: 12, ..served()[0].clone() })], "lan0 again, a new index");
        let mut followed = served();
        followed[0].ifindex = 12;
        assert!(changes(&back, &followed, true).is_empty(), "a change of the interface natd serves (up, down) is no return");
        let change = Change::Deleted(served()[1].clone());
        assert!(change.describe(&[]).starts_with("the wan interface wan0 (index 7) was deleted"), "{}", change.describe(&[]));
    }

    #[test]
    fn wan_address_changes_matter_only_when_the_external_address_comes_from_the_wan() {
        let ours = Ipv4Addr::new(203, 0, 113, 1);
        let removed = bytes(RouteNetlinkMessage::DelAddress(address(7, ours)));
        assert_eq!(changes(&removed, &served(), true), [Change::WanAddress { added: false, addr: ours }]);
        assert!(changes(&removed, &served(), false).is_empty(), "an external_ip set in the settings does not follow the WAN");
        let lan_address = bytes(RouteNetlinkMessage::NewAddress(address(4, Ipv4Addr::new(10, 0, 0, 1))));
        assert!(changes(&lan_address, &served(), true).is_empty());
        let added = bytes(RouteNetlinkMessage::NewAddress(address(7, Ipv4Addr::new(203, 0, 113, 9))));
        let change = &changes(&added, &served(), true)[0];
        assert_eq!(change, &Change::WanAddress { added: true, addr: Ipv4Addr::new(203, 0, 113, 9) });
        assert!(change.describe(&[ours]).contains("natd translates to 203.0.113.1 until it is restarted"));
        assert!(Change::WanAddress { added: false, addr: ours }.describe(&[ours]).contains("natd keeps translating to it"));
    }
}
