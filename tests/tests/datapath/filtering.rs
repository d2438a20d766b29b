//! Inbound filtering (RFC 4787 REQ-8): the three modes, and ICMP errors and
//! hairpinned packets under them.

use std::net::Ipv4Addr;

use nat_common::{Reason, proto};
use nat_tests::{
    TestGateway, addr,
    packet::{Frame, L4},
    require_root,
    xdp_action::{self, DROP, REDIRECT},
};
use nat_userspace::datapath::Side;

use super::{
    ICMP_ECHO_REPLY, ICMP_ID_EXTERNAL, REMOTE_TCP, REMOTE_UDP, TCP_EXTERNAL, UDP_EXTERNAL,
    UDP_INSIDE, filtering_gateway, from_lan, from_wan, icmp_error, icmp_out, quote, tcp_in,
    tcp_out, udp_in, udp_out, with,
};

/// RFC 4787 REQ-8 / RFC 5382 REQ-3: inbound filtering, selectable per
/// protocol; mapping stays endpoint-independent. A remote gets in through a
/// mapping if the mode lets it: endpoint-independent, anyone;
/// address-dependent, an address the inside endpoint sent to;
/// address-and-port-dependent, an address and port it sent to (ICMP echo: an
/// address). Permits live the protocol's timeout after the last packet sent,
/// and refused packets are counted as `drop_filtered`.
#[test]
fn inbound_filtering_follows_the_configured_mode() {
    require_root!();
    use nat_common::filtering::{ADDRESS_AND_PORT_DEPENDENT, ADDRESS_DEPENDENT, ENDPOINT_INDEPENDENT};
    let stranger = Ipv4Addr::new(198, 51, 100, 99);
    let ttl = 10_000_000_000;
    // (mode, tag, [from the remote sent to, same address other port, other address])
    let modes = [
        (ENDPOINT_INDEPENDENT, "eif", [REDIRECT, REDIRECT, REDIRECT]),
        (ADDRESS_DEPENDENT, "adf", [REDIRECT, REDIRECT, DROP]),
        (ADDRESS_AND_PORT_DEPENDENT, "apdf", [REDIRECT, DROP, DROP]),
    ];
    for (mode, tag, want) in modes {
        let mut gw = filtering_gateway(&format!("filt{tag}"), mode, ttl);
        let t0 = 1_000_000_000;
        gw.datapath.set_clock(t0).unwrap();
        let filtered = |gw: &TestGateway| gw.datapath.counter(Reason::DropFiltered).unwrap();
        let expect_dropped = u64::from(mode != ENDPOINT_INDEPENDENT);

        // Nothing sent yet: only endpoint-independent filtering lets the reply in.
        let early = gw.run(Side::Wan, &udp_in().build()).unwrap();
        assert_eq!(early.action, if mode == ENDPOINT_INDEPENDENT { REDIRECT } else { DROP }, "{tag}: before any packet out");
        assert_eq!(filtered(&gw), expect_dropped, "{tag}: drop_filtered");

        type Address = (Ipv4Addr, u16);
        type Build = fn(Address, Address) -> Frame;
        let protocols: [(&str, Frame, Address, Address, Build); 2] = [
            ("tcp", tcp_out(), REMOTE_TCP, TCP_EXTERNAL, Frame::tcp),
            ("udp", udp_out(), REMOTE_UDP, UDP_EXTERNAL, Frame::udp),
        ];
        for (name, out, remote, external, inbound) in protocols {
            assert_eq!(gw.run(Side::Lan, &out.build()).unwrap().action, REDIRECT, "{tag} {name}: outbound");
            let senders = [remote, (remote.0, remote.1 + 1), (stranger, remote.1)];
            for (sender, want) in senders.into_iter().zip(want) {
                let run = gw.run(Side::Wan, &from_wan(inbound(sender, external)).build()).unwrap();
                assert_eq!(xdp_action::name(run.action), xdp_action::name(want), "{tag} {name}: from {sender:?}");
            }
        }
        let icmp_from = |from: Ipv4Addr| from_wan(Frame::icmp_echo(from, addr::EXTERNAL, ICMP_ECHO_REPLY, ICMP_ID_EXTERNAL));
        assert_eq!(gw.run(Side::Lan, &icmp_out().build()).unwrap().action, REDIRECT, "{tag} icmp: outbound");
        assert_eq!(gw.run(Side::Wan, &icmp_from(addr::REMOTE).build()).unwrap().action, REDIRECT, "{tag}: echo reply");
        assert_eq!(gw.run(Side::Wan, &icmp_from(stranger).build()).unwrap().action, want[2], "{tag}: echo reply from a stranger");
        // Refused: each DROP of the table for TCP and UDP, and the stranger's echo reply.
        let refused = 2 * want.iter().filter(|&&a| a == DROP).count() as u64 + u64::from(want[2] == DROP);
        assert_eq!(filtered(&gw), expect_dropped + refused, "{tag}: drop_filtered");

        // An admitted reply keeps its permit alive; one the inside endpoint
        // stopped sending to and that stopped answering expires with the timeout.
        gw.datapath.set_clock(t0 + ttl).unwrap();
        assert_eq!(gw.run(Side::Wan, &tcp_in().build()).unwrap().action, REDIRECT, "{tag}: within the timeout");
        gw.datapath.set_clock(t0 + ttl + ttl / 2).unwrap();
        assert_eq!(gw.run(Side::Wan, &tcp_in().build()).unwrap().action, REDIRECT, "{tag}: refreshed by the last reply");
        let expired = gw.run(Side::Wan, &udp_in().build()).unwrap().action;
        assert_eq!(xdp_action::name(expired), xdp_action::name(if mode == ENDPOINT_INDEPENDENT { REDIRECT } else { DROP }), "{tag}: expired permit");
    }
}

/// Filtering applies to what an ICMP error is about (RFC 5508 REQ-4 with
/// RFC 4787 REQ-8): a router on the way may report on a flow to a remote the
/// inside host chose, but an error quoting a remote it never sent to is
/// dropped. Hairpinned packets are filtered as from the outside: with
/// address-and-port-dependent filtering, A reaches B's mapping only once B
/// has sent to A's external endpoint (the order in which two hosts punch
/// holes towards each other).
#[test]
fn filtering_covers_icmp_errors_and_hairpinned_packets() {
    require_root!();
    let mut gw = filtering_gateway("filterr", nat_common::filtering::ADDRESS_AND_PORT_DEPENDENT, 10_000_000_000);
    gw.datapath.set_clock(1_000_000_000).unwrap();
    let router = Ipv4Addr::new(198, 51, 100, 1);
    let error_about = |dst: (Ipv4Addr, u16)| {
        let left = with(Frame::udp(UDP_EXTERNAL, dst), |f| f.ttl = 63);
        let mut error = Frame::new(router, addr::EXTERNAL, L4::Raw { proto: proto::ICMP });
        error.payload = icmp_error(11, 0, &quote(&left));
        from_wan(error).build()
    };
    assert_eq!(gw.run(Side::Lan, &udp_out().build()).unwrap().action, REDIRECT);
    assert_eq!(gw.run(Side::Wan, &error_about(REMOTE_UDP)).unwrap().action, REDIRECT, "error about the flow sent");
    assert_eq!(gw.run(Side::Wan, &error_about((addr::REMOTE, 9))).unwrap().action, DROP, "error about another port");
    assert_eq!(gw.datapath.counter(Reason::DropFiltered).unwrap(), 1);

    // Hairpinning between A (UDP_INSIDE, external UDP_EXTERNAL) and B.
    let host_b = Ipv4Addr::new(10, 77, 1, 11);
    let b_external = (addr::EXTERNAL, 20500);
    gw.ns.ip(&["neigh", "replace", "10.77.1.11", "lladdr", "02:00:00:00:01:11", "dev", "lan0", "nud", "permanent"]).unwrap();
    gw.map((host_b, 6000), b_external, proto::UDP).unwrap();
    let a_to_b = from_lan(Frame::udp(UDP_INSIDE, b_external)).build();
    let b_to_a = with(from_lan(Frame::udp((host_b, 6000), UDP_EXTERNAL)), |f| f.src_mac = [0x02, 0, 0, 0, 0x01, 0x11]).build();
    assert_eq!(gw.run(Side::Lan, &a_to_b).unwrap().action, DROP, "A before B sent to it");
    assert_eq!(gw.run(Side::Lan, &b_to_a).unwrap().action, REDIRECT, "B after A sent to it");
    assert_eq!(gw.run(Side::Lan, &a_to_b).unwrap().action, REDIRECT, "A after B sent to it");
    assert_eq!(gw.datapath.counter(Reason::DropFiltered).unwrap(), 2);
    assert_eq!(gw.datapath.counter(Reason::Hairpinned).unwrap(), 2);
}
