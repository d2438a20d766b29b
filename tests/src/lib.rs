//! Shared fixtures for the kernel and namespace tests.

pub mod bench;
pub mod inbound;
pub mod natlab;
pub mod netns;
pub mod packet;
pub mod servers;
pub mod strongswan;
pub mod tls;
pub mod wire;

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail};
use nat_common::{Endpoint, GatewayConfig, Prefix};
use nat_userspace::datapath::{Datapath, Side};

use crate::netns::{NsGuard, Netns};

/// Addresses of the test topology. The LAN is 10.77.1.0/24, the WAN
/// 203.0.113.0/24 (TEST-NET-3) with the next hop at .2, and the remote
/// network 198.51.100.0/24 (TEST-NET-2) behind it. All of them exist only in
/// the tests' own namespaces.
pub mod addr {
    use std::net::Ipv4Addr;
    pub const LAN_GW: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
    pub const LAN_HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 10);
    /// An inside host with no neighbour entry on the gateway.
    pub const LAN_HOST_UNRESOLVED: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 20);
    pub const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    pub const WAN_NEXT_HOP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    pub const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

    pub const LAN_GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
    pub const LAN_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x10];
    pub const WAN_GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
    pub const WAN_NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x02];

    /// The NAT port range the fixtures configure.
    pub const PORT_MIN: u16 = 20000;
    pub const PORT_MAX: u16 = 29999;
}

/// A MAC address as `ip` writes it.
pub fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The settings of the fixture's gateway as natd would write them: the
/// external address, the NAT port range, the LAN's connected prefix
/// 10.77.1.0/24 as the inside, and the gateway's own LAN address. Called
/// in the fixture's namespace (a `TestGateway` keeps its thread there),
/// where it finds the LAN interface.
pub fn fixture_config(wan_ifindex: u32) -> GatewayConfig {
    let lan_ifindex = netns::ifindex_here("lan0").unwrap_or(0);
    GatewayConfig::new(addr::EXTERNAL, wan_ifindex, addr::PORT_MIN, addr::PORT_MAX)
        .with_lan_ifindex(lan_ifindex)
        .with_lan_addr(addr::LAN_GW)
        .with_inside_prefix(Prefix::new(addr::LAN_GW, 24), true)
        .with_own_addr(addr::LAN_GW)
}

/// A gateway namespace with a LAN and a WAN veth, routes and static
/// neighbours, and the programs loaded (not attached): enough for
/// BPF_PROG_TEST_RUN, whose route lookups resolve in the caller's namespace.
pub struct TestGateway {
    pub datapath: Datapath,
    /// The LIVENESS slot the next `map` uses.
    pub next_session: u32,
    pub lan_ifindex: u32,
    pub wan_ifindex: u32,
    _guard: NsGuard,
    pub ns: Netns,
}

impl TestGateway {
    /// Builds the namespace and enters it on the calling thread.
    pub fn new(tag: &str) -> Result<Self> {
        let ns = Netns::new(tag)?;
        ns.ip(&["link", "add", "lan0", "address", &mac(addr::LAN_GW_MAC), "type", "veth", "peer", "name", "lan0p"])?;
        ns.ip(&["link", "add", "wan0", "address", &mac(addr::WAN_GW_MAC), "type", "veth", "peer", "name", "wan0p"])?;
        for ifname in ["lan0", "lan0p", "wan0", "wan0p"] {
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        ns.ip(&["addr", "add", "10.77.1.1/24", "dev", "lan0"])?;
        ns.ip(&["addr", "add", "203.0.113.1/24", "dev", "wan0"])?;
        ns.ip(&["route", "add", "default", "via", "203.0.113.2"])?;
        ns.ip(&["neigh", "replace", "203.0.113.2", "lladdr", &mac(addr::WAN_NEXT_HOP_MAC), "dev", "wan0", "nud", "permanent"])?;
        ns.ip(&["neigh", "replace", "10.77.1.10", "lladdr", &mac(addr::LAN_HOST_MAC), "dev", "lan0", "nud", "permanent"])?;
        ns.sysctl("net.ipv4.conf.all.forwarding=1")?;
        let lan_ifindex = ns.ifindex("lan0")?;
        let wan_ifindex = ns.ifindex("wan0")?;
        let guard = ns.enter()?;

        let mut datapath = Datapath::load()?;
        datapath.set_config(fixture_config(wan_ifindex))?;
        datapath.add_tx_port(lan_ifindex)?;
        datapath.add_tx_port(wan_ifindex)?;
        Ok(Self { datapath, next_session: 0, lan_ifindex, wan_ifindex, _guard: guard, ns })
    }

    pub fn ingress_ifindex(&self, side: Side) -> u32 {
        match side {
            Side::Lan => self.lan_ifindex,
            Side::Wan => self.wan_ifindex,
        }
    }

    /// Runs one frame through a program as if it arrived on that side's interface.
    pub fn run(&self, side: Side, frame: &[u8]) -> Result<TestRun> {
        test_run(&self.datapath, side, self.ingress_ifindex(side), frame, 1)
    }

    /// Inserts a mapping pair with the next free session slot.
    pub fn map(&mut self, inside: (Ipv4Addr, u16), external: (Ipv4Addr, u16), proto: u8) -> Result<()> {
        let slot = self.next_session;
        self.next_session += 1;
        self.datapath.insert_pair(
            Endpoint::new(inside.0, inside.1, proto),
            Endpoint::new(external.0, external.1, proto),
            slot,
            0,
        )
    }
}

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
        unsafe { std::slice::from_raw_parts(self as *const Self as *const u8, std::mem::size_of::<Self>()) }
    }
}

/// The outcome of one BPF_PROG_TEST_RUN.
#[derive(Debug)]
pub struct TestRun {
    pub action: u32,
    pub frame: Vec<u8>,
    /// Mean nanoseconds per repetition, as the kernel measured it.
    pub duration_ns: u64,
}

pub mod xdp_action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;

    pub fn name(action: u32) -> &'static str {
        match action {
            ABORTED => "XDP_ABORTED",
            DROP => "XDP_DROP",
            PASS => "XDP_PASS",
            TX => "XDP_TX",
            REDIRECT => "XDP_REDIRECT",
            _ => "unknown",
        }
    }
}

/// A hand-off read from the miss ring: the record must be exactly the
/// event's header and its frame (the datapath writes no more), as natd
/// decodes it.
pub fn handed_off(record: &[u8]) -> nat_common::MissEvent {
    let event = nat_common::MissEvent::from_record(record).expect("a hand-off record that holds its frame");
    assert_eq!(record.len(), nat_common::MissEvent::record_len(event.frame_len as usize), "a hand-off record as long as its frame");
    event
}

/// BPF_PROG_TEST_RUN on one frame (not live: nothing is transmitted).
pub fn test_run(dp: &Datapath, side: Side, ifindex: u32, frame: &[u8], repeat: u32) -> Result<TestRun> {
    use aya::programs::{TestRun as _, TestRunOptions};
    let md = XdpMd::for_frame(frame, ifindex);
    let mut out = vec![0u8; frame.len() + 256];
    let program = dp.program(side)?;
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(md.as_bytes()),
            repeat,
            ..TestRunOptions::new()
        })
        .with_context(|| format!("BPF_PROG_TEST_RUN of {}", side.program_name()))?;
    out.truncate(result.data_size_out as usize);
    Ok(TestRun {
        action: result.return_value,
        frame: out,
        duration_ns: result.duration.as_nanos() as u64,
    })
}

/// Fails with a readable diff of two frames.
pub fn assert_frames_eq(name: &str, got: &[u8], want: &[u8]) -> Result<()> {
    if got == want {
        return Ok(());
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    bail!(
        "{name}: output frame differs at byte {first} (lengths {} vs {})\n got: {:02x?}\nwant: {:02x?}",
        got.len(),
        want.len(),
        got,
        want
    )
}
