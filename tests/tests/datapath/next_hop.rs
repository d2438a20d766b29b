//! The next-hop cache and the egress MTU check of cached next hops.

use nat_common::Reason;
use nat_tests::{
    addr, require_root,
    xdp_action::{DROP, REDIRECT},
};
use nat_userspace::datapath::Side;

use super::{gateway, udp_out, with};

/// Pins the calling thread to the CPU it runs on. The next-hop cache is per
/// CPU (`NEXT_HOPS`, a PerCpuArray) and BPF_PROG_TEST_RUN runs the program
/// on the caller's CPU: a test thread the scheduler moves between two runs
/// finds the other CPU's cache cold, and the entry it expects cached is
/// looked up afresh (seen under load, with the neighbour already changed).
fn stay_on_this_cpu() {
    // SAFETY: plain syscalls on a zeroed cpu_set_t of the size given.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu failed");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "sched_setaffinity failed");
    }
}

/// The next hop is cached for NEXT_HOP_TTL_NS of the published clock: a
/// neighbour change is picked up once the entry expires, and a packet longer
/// than any the route lookup accepted is checked against the egress MTU.
#[test]
fn next_hops_are_cached_until_they_expire_and_longer_packets_are_checked() {
    require_root!();
    stay_on_this_cpu();
    let mut gw = gateway("nexthop").unwrap();
    let t0 = 10_000_000_000;
    gw.datapath.set_clock(t0).unwrap();
    let first = gw.run(Side::Lan, &udp_out().build()).unwrap();
    assert_eq!((first.action, &first.frame[..6]), (REDIRECT, &addr::WAN_NEXT_HOP_MAC[..]));

    let new_mac = [0x02, 0, 0, 0, 0x02, 0x99];
    let new_mac_text = "02:00:00:00:02:99";
    gw.ns.ip(&["neigh", "replace", "203.0.113.2", "lladdr", new_mac_text, "dev", "wan0", "nud", "permanent"]).unwrap();
    let cached = gw.run(Side::Lan, &udp_out().build()).unwrap();
    assert_eq!(&cached.frame[..6], &addr::WAN_NEXT_HOP_MAC[..], "the cached next hop was not used");

    gw.datapath.set_clock(t0 + nat_common::NEXT_HOP_TTL_NS).unwrap();
    let fresh = gw.run(Side::Lan, &udp_out().build()).unwrap();
    assert_eq!(&fresh.frame[..6], &new_mac[..], "the expired next hop was not looked up again");

    // The cache approved 16-byte payloads; a 1400-byte one over a 1000-byte
    // MTU must not be sent on the cached entry (DF clear: natd cuts it).
    gw.ns.ip(&["link", "set", "wan0", "mtu", "1000"]).unwrap();
    let big = with(udp_out(), |f| f.payload = vec![0; 1400]);
    assert_eq!(gw.run(Side::Lan, &big.build()).unwrap().action, DROP);
    assert_eq!(gw.datapath.counter(Reason::TooBigToDaemon).unwrap(), 1);
}
