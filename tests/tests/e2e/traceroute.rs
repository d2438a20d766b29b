//! traceroute and tracepath hop by hop through the gateway.

use nat_tests::{
    natlab::{GW_LAN, NatLab, ROUTED_SERVER, ROUTER},
    require_root,
};

use super::{hops, run_bounded};

/// traceroute and tracepath through the gateway (RFC 5508 REQ-4/5: Time
/// Exceeded and Port Unreachable from beyond the gateway reach the host
/// reverted; RFC 4787 REQ-13 for tracepath's full-size DF probes): each
/// shows the gateway's LAN address, the router and the server, in order.
fn traceroute_through_the_gateway(args: &[&str]) {
    let mut lab = NatLab::with_router(1, false, 1500).unwrap();
    lab.start_natd(&[]).unwrap();
    let mut cmd = args.to_vec();
    let dest = ROUTED_SERVER.to_string();
    cmd.push(&dest);
    let out = run_bounded(&lab.hosts[0], 60, &cmd);
    assert_eq!(hops(&out), [GW_LAN.to_string(), ROUTER.to_string(), ROUTED_SERVER.to_string()], "{args:?}:\n{out}");
}

/// traceroute -U, UDP probes (RFC 5508 REQ-4/5).
#[test]
fn traceroute_udp_shows_every_hop_through_the_gateway() {
    require_root!();
    traceroute_through_the_gateway(&["traceroute", "-n", "-U", "-w", "1", "-q", "1", "-m", "5"]);
}

/// traceroute -I, echo probes (RFC 5508 REQ-4/5).
#[test]
fn traceroute_icmp_shows_every_hop_through_the_gateway() {
    require_root!();
    traceroute_through_the_gateway(&["traceroute", "-n", "-I", "-w", "1", "-q", "1", "-m", "5"]);
}

/// tracepath: DF probes, hop by hop (RFC 5508 REQ-4/5, RFC 4787 REQ-13).
#[test]
fn tracepath_shows_every_hop_through_the_gateway() {
    require_root!();
    traceroute_through_the_gateway(&["tracepath", "-n", "-m", "5"]);
}
