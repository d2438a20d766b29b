//! The settings against this machine (the network namespace natd runs in):
//! the interfaces exist and have the addresses natd needs, the NAT port
//! range leaves the gateway's own ephemeral ports and services alone. And
//! what the programs are then told (`Settings::gateway_config`).

use std::net::Ipv4Addr;

use nat_common::{Prefix, forward::MAX_FORWARD_PORTS, proto};

use crate::config::{
    load::{ConfigError, ConfigErrors, overlap_allowed},
    schema::{PartialChecksums, Settings},
};

/// A socket that takes packets to a port: a TCP listener or a bound UDP
/// socket, its protocol number, local address and port.
pub(crate) type Listener = (u8, Ipv4Addr, u16);

/// What natd needs from the machine, read from the network namespace it runs in.
pub struct Environment {
    pub lan_ifindex: u32,
    pub wan_ifindex: u32,
    /// The external address pool (at least one).
    pub external_ips: Vec<Ipv4Addr>,
    /// The prefixes of the LAN interface's addresses: inside by default.
    pub lan_prefixes: Vec<Prefix>,
    /// `inside_prefixes` of the settings: routed inside networks.
    pub routed_prefixes: Vec<Prefix>,
    /// Every IPv4 address of the LAN and WAN interfaces: no packet from
    /// either side may claim one as its source.
    pub own_addrs: Vec<Ipv4Addr>,
    /// The prefixes of the WAN interface's addresses: the outside networks
    /// the gateway is on (no forward's server may be there).
    pub wan_prefixes: Vec<Prefix>,
    /// The LAN and WAN interfaces are a NIC driver's own (`is_nic`): run
    /// natively, their frames come off a wire and never carry a partial
    /// checksum.
    pub lan_is_nic: bool,
    pub wan_is_nic: bool,
}

impl Environment {
    /// Whether the LAN's and the WAN's frames are taken to come off a wire
    /// (`GatewayConfig::wire_ingress`), so that the fast path does not test
    /// them for a partial checksum: a NIC's own interface, with the programs
    /// in its driver (`native`), unless `partial_checksums` says to test
    /// every frame. In generic mode any skb may carry one.
    pub fn off_the_wire(&self, native: bool, partial_checksums: PartialChecksums) -> (bool, bool) {
        let auto = native && partial_checksums == PartialChecksums::Auto;
        (auto && self.lan_is_nic, auto && self.wan_is_nic)
    }

    /// The inside prefixes, each marked with where it comes from, as
    /// `natd check` and `natd status` show them.
    pub fn inside_description(&self) -> String {
        let prefixes: Vec<String> =
            self.inside_prefixes().map(|(p, connected)| format!("{}/{} ({})", p.network(), p.len(), if connected { "lan" } else { "routed" })).collect();
        prefixes.join(", ")
    }

    /// Every inside prefix, with whether it is one of the LAN interface's
    /// own (whose network and broadcast addresses are no host's).
    pub fn inside_prefixes(&self) -> impl Iterator<Item = (Prefix, bool)> + '_ {
        self.lan_prefixes.iter().map(|p| (*p, true)).chain(self.routed_prefixes.iter().map(|p| (*p, false)))
    }
}

impl Environment {
    /// Checks the settings against this network namespace: every problem is
    /// reported, none is fixed behind the user's back.
    pub fn check(settings: &Settings) -> Result<Environment, ConfigErrors> {
        let mut errors = Vec::new();
        let mut err = |field: &str, value: &str, allowed: String| {
            errors.push(ConfigError { field: field.into(), value: value.into(), allowed })
        };
        let lan_ifindex = ifindex(&settings.lan);
        let wan_ifindex = ifindex(&settings.wan);
        for (key, name, index) in [("lan", &settings.lan, lan_ifindex), ("wan", &settings.wan, wan_ifindex)] {
            if index.is_none() {
                err(key, name, "no such interface in this network namespace (see `ip link`)".into());
            }
        }
        let external_ips = match settings.external_ips.first() {
            Some(_) => Some(settings.external_ips.clone()),
            None if wan_ifindex.is_some() => {
                let found = first_ipv4(&settings.wan);
                if found.is_none() {
                    err(
                        "wan",
                        &settings.wan,
                        format!(
                            "has no IPv4 address to translate to: add one (ip addr add ADDR/LEN dev {}) or set external_ip / --external-ip",
                            settings.wan
                        ),
                    );
                }
                found.map(|ip| vec![ip])
            }
            None => None,
        };

        let range = format!("{}-{}", settings.port_min, settings.port_max);
        if let Some((lo, hi)) = ephemeral_range()
            && settings.port_min <= hi
            && lo <= settings.port_max
        {
            err(
                "port_range",
                &range,
                format!(
                    "overlaps the kernel's ephemeral ports {lo}-{hi} (net.ipv4.ip_local_port_range): the gateway's own \
                     connections would collide with NAT mappings; pick a range outside it"
                ),
            );
        }
        let ranges = [("port_range", Some((settings.port_min, settings.port_max))), ("low_port_range", settings.low_port_range)];
        let listeners = listening_ports();
        let pool = external_ips.as_deref().unwrap_or_default();
        for &(proto_nr, _, port) in listeners.iter().filter(|(_, addr, _)| addr.is_unspecified() || pool.contains(addr)) {
            let proto = proto::name(proto_nr);
            for (key, range) in ranges {
                if let Some((lo, hi)) = range
                    && (lo..=hi).contains(&port)
                {
                    err(
                        key,
                        &format!("{lo}-{hi}"),
                        format!(
                            "contains {proto} port {port}, where a local service listens: inbound packets for it would \
                             be taken for NAT traffic; move the service or the range"
                        ),
                    );
                }
            }
        }

        // BCP 38: the sources the LAN side translates. The LAN interface's
        // own prefixes always; routed ones on the operator's word.
        let lan_addrs = interface_addresses(&settings.lan);
        let wan_addrs = interface_addresses(&settings.wan);
        let mut lan_prefixes: Vec<Prefix> = Vec::new();
        for (addr, len) in &lan_addrs {
            let prefix = Prefix::new(*addr, *len);
            if !lan_prefixes.contains(&prefix) {
                lan_prefixes.push(prefix);
            }
        }
        if lan_ifindex.is_some() && lan_prefixes.is_empty() && settings.inside_prefixes.is_empty() {
            err(
                "lan",
                &settings.lan,
                format!(
                    "has no IPv4 address, and inside_prefixes is empty: no inside source would be translated; add an \
                     address (ip addr add ADDR/LEN dev {}) or list the inside networks in inside_prefixes",
                    settings.lan
                ),
            );
        }
        let inside_count = lan_prefixes.len() + settings.inside_prefixes.len();
        if inside_count > nat_common::MAX_INSIDE_PREFIXES {
            err(
                "inside_prefixes",
                &format!("{} prefixes with the LAN interface's {}", inside_count, lan_prefixes.len()),
                format!("at most {} inside prefixes in all: merge routed networks into shorter prefixes", nat_common::MAX_INSIDE_PREFIXES),
            );
        }
        let wan_prefixes: Vec<Prefix> = wan_addrs.iter().map(|(addr, len)| Prefix::new(*addr, *len)).collect();
        for inside in &settings.inside_prefixes {
            let text = format!("{}/{}", inside.network(), inside.len());
            if let Some(wan) = wan_prefixes.iter().find(|wan| wan.overlaps(inside)) {
                err(
                    "inside_prefixes",
                    &text,
                    format!("overlaps the WAN interface's network {}/{}: inside networks lie behind the LAN interface", wan.network(), wan.len()),
                );
            }
            if let Some(ip) = external_ips.iter().flatten().find(|ip| inside.contains(u32::from_ne_bytes(ip.octets()))) {
                err("inside_prefixes", &text, format!("holds the external address {ip}: it must be outside every inside network"));
            }
        }
        let mut own_addrs: Vec<Ipv4Addr> = Vec::new();
        for (addr, _) in lan_addrs.iter().chain(&wan_addrs) {
            let in_pool = external_ips.iter().flatten().any(|ip| ip == addr);
            if !in_pool && !own_addrs.contains(addr) {
                own_addrs.push(*addr);
            }
        }
        if own_addrs.len() > nat_common::MAX_OWN_ADDRS {
            err(
                "lan",
                &format!("{} and {}: {} addresses", settings.lan, settings.wan, own_addrs.len()),
                format!("the LAN and WAN interfaces may hold at most {} IPv4 addresses besides the external ones", nat_common::MAX_OWN_ADDRS),
            );
        }

        let env = Environment {
            lan_ifindex: lan_ifindex.unwrap_or_default(),
            wan_ifindex: wan_ifindex.unwrap_or_default(),
            external_ips: external_ips.clone().unwrap_or_default(),
            lan_prefixes,
            routed_prefixes: settings.inside_prefixes.clone(),
            own_addrs,
            wan_prefixes,
            lan_is_nic: lan_ifindex.is_some_and(|index| is_nic(index, &settings.lan)),
            wan_is_nic: wan_ifindex.is_some_and(|index| is_nic(index, &settings.wan)),
        };
        errors.extend(env.forward_errors(settings, &listeners));
        errors.extend(env.proxy_errors(settings));
        // A socket bound to the address and port 0 tells whether the
        // address is this machine's without touching the port (natd itself
        // may hold it while `natd check` runs).
        if let Some(addr) = settings.metrics
            && !addr.ip().is_unspecified()
            && std::net::UdpSocket::bind((addr.ip(), 0)).is_err()
        {
            errors.push(ConfigError {
                field: "metrics".into(),
                value: format!("\"{addr}\""),
                allowed: "is not an address of this machine (see `ip addr`): use the LAN interface's address, 127.0.0.1, or 0.0.0.0 for every address".into(),
            });
        }
        match (lan_ifindex, wan_ifindex, external_ips) {
            (Some(_), Some(_), Some(_)) if errors.is_empty() => Ok(env),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// The forwards against this machine, every problem at once: their
    /// ports clear of the NAT's port ranges and of local services, their
    /// addresses in the pool, their servers inside hosts, and not more
    /// forwarded ports in all than the datapath holds. `listeners` are the
    /// machine's (`listening_ports`). An empty `external_ips` (the WAN's
    /// address unknown) skips what needs the pool.
    pub(crate) fn forward_errors(&self, settings: &Settings, listeners: &[Listener]) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut err = |field: String, value: String, allowed: String| errors.push(ConfigError { field, value, allowed });
        let pool = &self.external_ips;
        let mut total_ports: u64 = 0;
        for (i, forward) in settings.forwards.iter().enumerate() {
            let field = |key: &str| format!("forward[{i}] {:?}.{key}", forward.name);
            let (lo, hi) = forward.ports;
            let nat_ranges = [("port_range", Some((settings.port_min, settings.port_max))), ("low_port_range", settings.low_port_range)];
            for (key, range) in nat_ranges {
                if let Some((min, max)) = range
                    && lo <= max
                    && min <= hi
                {
                    err(
                        field("port"),
                        forward.ports_text(),
                        format!(
                            "overlaps {key} {min}-{max}, the ports natd hands out to outbound flows: a forwarded port must lie \
                             outside it; move the forward or the range"
                        ),
                    );
                }
            }
            let addr = forward.external_addr(pool);
            for &(proto_nr, local, port) in listeners {
                if forward.protocols.contains(&proto_nr) && (lo..=hi).contains(&port) && (local.is_unspecified() || Some(local) == addr) {
                    err(
                        field("port"),
                        forward.ports_text(),
                        format!(
                            "contains {} port {port}, where a local service listens on {local}: inbound packets for it would go \
                             to the forward's servers, not the service; move the service or the forward",
                            proto::name(proto_nr)
                        ),
                    );
                }
            }
            if let Some(ip) = forward.external_ip
                && !pool.is_empty()
                && !pool.contains(&ip)
            {
                let pool: Vec<String> = pool.iter().map(|ip| ip.to_string()).collect();
                err(
                    field("external_ip"),
                    ip.to_string(),
                    format!(
                        "is not in the external pool ({}): a forward's address must be one natd translates to; add it to external_ip",
                        pool.join(", ")
                    ),
                );
            }
            for (k, server) in forward.servers.iter().enumerate() {
                if let Some(why) = self.server_refusal(server.addr) {
                    let text = match server.port {
                        Some(port) => format!("{}:{port}", server.addr),
                        None => server.addr.to_string(),
                    };
                    err(field(&format!("to[{k}]")), format!("{text:?}"), why);
                }
            }
            total_ports += u64::from(forward.port_count()) * forward.protocols.len() as u64;
        }
        if total_ports > u64::from(MAX_FORWARD_PORTS) {
            err(
                "forward".into(),
                format!("{total_ports} forwarded ports"),
                format!("at most {MAX_FORWARD_PORTS} in all (each port of a range counts once per protocol): shorten the ranges"),
            );
        }
        // Forwards without external_ip are on the first external address:
        // the file could not tell which when it named no pool.
        let first = pool.first().copied();
        let named_first = settings.external_ips.first().copied();
        for (i, forward) in settings.forwards.iter().enumerate() {
            let earlier = settings.forwards[..i].iter().enumerate().find(|(_, e)| e.overlaps(forward, first) && !e.overlaps(forward, named_first));
            if let Some((j, other)) = earlier {
                let other_field = format!("forward[{j}] {:?}", other.name);
                err(format!("forward[{i}] {:?}.port", forward.name), forward.ports_text(), overlap_allowed(&other_field, forward, first));
            }
        }
        errors
    }

    /// The proxies against this machine: their address in the pool, their
    /// servers inside hosts. natd's own listener is not looked for among
    /// the machine's (a reload would find it): binding the port at start
    /// says clearly when another service holds it.
    pub(crate) fn proxy_errors(&self, settings: &Settings) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let pool = &self.external_ips;
        for (i, proxy) in settings.proxies.iter().enumerate() {
            if let Some(ip) = proxy.external_ip
                && !pool.is_empty()
                && !pool.contains(&ip)
            {
                let pool: Vec<String> = pool.iter().map(|ip| ip.to_string()).collect();
                errors.push(ConfigError {
                    field: format!("proxy[{i}].external_ip"),
                    value: ip.to_string(),
                    allowed: format!(
                        "is not in the external pool ({}): a proxy listens on an external address; add it to external_ip",
                        pool.join(", ")
                    ),
                });
            }
            for (set, servers) in proxy.server_sets() {
                let key = if set == "default" { "default".to_string() } else { format!("names.{set:?}") };
                for server in servers {
                    if let Some(why) = self.server_refusal(*server.ip()) {
                        errors.push(ConfigError { field: format!("proxy[{i}].{key}"), value: format!("\"{server}\""), allowed: why });
                    }
                }
            }
        }
        errors
    }

    /// Why `addr` cannot be a forward's server, if it cannot: it must be an
    /// inside host, so not one of the gateway's addresses, not on the WAN
    /// side, in an inside prefix, and no LAN prefix's network or broadcast
    /// address.
    fn server_refusal(&self, addr: Ipv4Addr) -> Option<String> {
        let be = u32::from_ne_bytes(addr.octets());
        let prefix_text = |p: &Prefix| format!("{}/{}", p.network(), p.len());
        if self.external_ips.contains(&addr) {
            return Some("is an external address: a server is an inside host, on the LAN side".into());
        }
        if self.own_addrs.contains(&addr) {
            return Some("is one of the gateway's own addresses: a server is an inside host, on the LAN side".into());
        }
        if let Some(wan) = self.wan_prefixes.iter().find(|p| p.contains(be)) {
            return Some(format!("is on the WAN side, in the WAN interface's network {}: a server is an inside host, on the LAN side", prefix_text(wan)));
        }
        match self.inside_prefixes().find(|(p, _)| p.contains(be)) {
            None => Some(format!(
                "is outside every inside prefix ({}): a server must be an inside host; add its network to inside_prefixes if it is routed",
                self.inside_description()
            )),
            Some((p, true)) if p.is_network_or_broadcast(be) => {
                Some(format!("is the network or broadcast address of the LAN prefix {}, no host's", prefix_text(&p)))
            }
            Some(_) => None,
        }
    }
}

/// Whether interface `ifindex`, `name`, is a NIC's own, whose frames come
/// off a wire: no rtnetlink link kind (`interfaces::link_kind`: only
/// software devices, veth, tun, bond, bridge..., register one), not the
/// loopback, and not a paravirtual NIC's (`PARAVIRTUAL_DRIVERS`). Anything
/// netlink or ethtool cannot tell about counts as not one.
pub fn is_nic(ifindex: u32, name: &str) -> bool {
    use crate::interfaces::{driver, link_kind};
    if ifindex == LOOPBACK_IFINDEX {
        return false;
    }
    let asked = || -> anyhow::Result<bool> { Ok(link_kind(ifindex)?.is_none() && !PARAVIRTUAL_DRIVERS.contains(&driver(name)?.as_str())) };
    asked().unwrap_or_else(|e| {
        tracing::debug!("{e:#}: its frames are tested for partial checksums");
        false
    })
}

/// The loopback's index in every namespace: it has no link kind either.
const LOOPBACK_IFINDEX: u32 = 1;

/// Paravirtual NICs: a frame from another guest on the same host may reach
/// XDP with the checksum its sender left to offload (newer virtio_net
/// keeps its guest checksum offload, GUEST_CSUM, with XDP attached).
const PARAVIRTUAL_DRIVERS: [&str; 5] = ["virtio_net", "vmxnet3", "hv_netvsc", "vif", "xen-netfront"];

pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => None,
        i => Some(i),
    }
}

/// The first IPv4 address of an interface.
pub fn first_ipv4(ifname: &str) -> Option<Ipv4Addr> {
    interface_addresses(ifname).first().map(|(addr, _)| *addr)
}

/// Every IPv4 address of an interface with its prefix length, from
/// `getifaddrs`, in the kernel's order (the primary address first).
pub fn interface_addresses(ifname: &str) -> Vec<(Ipv4Addr, u8)> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut cursor = addrs;
    while !cursor.is_null() {
        // SAFETY: getifaddrs returned a valid list, freed below.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || unsafe { (*entry.ifa_addr).sa_family } != libc::AF_INET as u16 {
            continue;
        }
        // SAFETY: a NUL-terminated name owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        if name.to_bytes() != ifname.as_bytes() {
            continue;
        }
        // SAFETY: AF_INET entries hold sockaddr_in addresses (the netmask too, when set).
        let addr = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
        let len = if entry.ifa_netmask.is_null() {
            32
        } else {
            let mask = unsafe { &*(entry.ifa_netmask as *const libc::sockaddr_in) };
            u32::from_be(mask.sin_addr.s_addr).count_ones() as u8
        };
        found.push((Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), len));
    }
    unsafe { libc::freeifaddrs(addrs) };
    found
}

/// `net.ipv4.ip_local_port_range` of this namespace.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|w| w.parse::<u16>());
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

/// TCP listeners and bound UDP sockets of this network namespace, from
/// /proc/net/{tcp,udp}.
fn listening_ports() -> Vec<Listener> {
    const TCP_LISTEN: &str = "0A";
    let mut ports = Vec::new();
    for (proto, path) in [(proto::TCP, "/proc/net/tcp"), (proto::UDP, "/proc/net/udp")] {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else { continue };
            if proto == proto::TCP && *state != TCP_LISTEN {
                continue;
            }
            let Some((addr_hex, port_hex)) = local.split_once(':') else { continue };
            let (Ok(addr), Ok(port)) = (u32::from_str_radix(addr_hex, 16), u16::from_str_radix(port_hex, 16)) else {
                continue;
            };
            // /proc prints the network-order bytes read as a host integer.
            ports.push((proto, Ipv4Addr::from(u32::from_be(addr)), port));
        }
    }
    ports
}

impl Settings {
    /// What the XDP programs read from `CONFIG[0]`.
    pub fn gateway_config(&self, env: &Environment) -> nat_common::GatewayConfig {
        let mut config = nat_common::GatewayConfig::new(env.external_ips[0], env.wan_ifindex, self.port_min, self.port_max)
            .with_lan_ifindex(env.lan_ifindex);
        for (slot, ip) in config.external_addrs_be.iter_mut().zip(&env.external_ips) {
            *slot = u32::from_ne_bytes(ip.octets());
        }
        config.pool_len = env.external_ips.len() as u32;
        config.port_parity = u8::from(self.port_parity);
        config.port_class = u8::from(self.port_class && self.low_port_range.is_some());
        (config.low_port_min, config.low_port_max) = self.low_port_range.unwrap_or((0, 0));
        config.filtering_tcp = self.filtering.tcp.datapath_value();
        config.filtering_udp = self.filtering.udp.datapath_value();
        config.filtering_icmp = self.filtering.icmp.datapath_value();
        config.permit_ttl_tcp_ns = self.timeouts.permit_ttl_ns(nat_common::proto::TCP);
        config.permit_ttl_udp_ns = self.timeouts.permit_ttl_ns(nat_common::proto::UDP);
        config.permit_ttl_icmp_ns = self.timeouts.permit_ttl_ns(nat_common::proto::ICMP);
        config.ports_per_host = self.ports_per_host;
        for (prefix, connected) in env.inside_prefixes() {
            config = config.with_inside_prefix(prefix, connected);
        }
        for addr in &env.own_addrs {
            config = config.with_own_addr(*addr);
        }
        config.wan_drop_listed = u32::from(!self.wan_drop_sources.is_empty());
        config
    }
}
