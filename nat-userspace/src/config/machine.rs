//! The settings against this machine (the network namespace natd runs in):
//! the interfaces exist and have the addresses natd needs, the NAT port
//! range leaves the gateway's own ephemeral ports and services alone. And
//! what the programs are then told (`Settings::gateway_config`).

use std::net::Ipv4Addr;

use nat_common::Prefix;

use crate::config::{
    load::{ConfigError, ConfigErrors},
    schema::Settings,
};

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
}

impl Environment {
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
        for (proto, port) in listening_ports(external_ips.as_deref().unwrap_or_default()) {
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

        match (lan_ifindex, wan_ifindex, external_ips) {
            (Some(lan_ifindex), Some(wan_ifindex), Some(external_ips)) if errors.is_empty() => Ok(Environment {
                lan_ifindex,
                wan_ifindex,
                external_ips,
                lan_prefixes,
                routed_prefixes: settings.inside_prefixes.clone(),
                own_addrs,
            }),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

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

/// TCP listeners and bound UDP sockets on the wildcard or `external` address,
/// from /proc/net/{tcp,udp} (per network namespace).
fn listening_ports(external: &[Ipv4Addr]) -> Vec<(&'static str, u16)> {
    const TCP_LISTEN: &str = "0A";
    let mut ports = Vec::new();
    for (proto, path) in [("tcp", "/proc/net/tcp"), ("udp", "/proc/net/udp")] {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else { continue };
            if proto == "tcp" && *state != TCP_LISTEN {
                continue;
            }
            let Some((addr_hex, port_hex)) = local.split_once(':') else { continue };
            let (Ok(addr), Ok(port)) = (u32::from_str_radix(addr_hex, 16), u16::from_str_radix(port_hex, 16)) else {
                continue;
            };
            // /proc prints the network-order bytes read as a host integer.
            let addr = Ipv4Addr::from(u32::from_be(addr));
            if addr.is_unspecified() || external.contains(&addr) {
                ports.push((proto, port));
            }
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
