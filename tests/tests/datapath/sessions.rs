//! What traffic does to a mapping's session: last-seen time and TCP flags.

use nat_common::proto;
use nat_tests::{
    TestGateway, addr, assert_frames_eq,
    packet::{Frame, L4},
    require_root,
    xdp_action::REDIRECT,
};
use nat_userspace::datapath::Side;

use super::{REMOTE_TCP, REMOTE_UDP, TCP_EXTERNAL, TCP_INSIDE, from_wan, gateway, tcp_in, tcp_out, translated_in, with};

/// RFC 4787 REQ-6: packets refresh their session, outbound and inbound.
///
/// A mapping's last-seen time and TCP flags move with traffic.
#[test]
fn hits_refresh_the_mapping() {
    require_root!();
    let mut gw = gateway("refresh").unwrap();
    // The time comes from the clock the daemon publishes.
    gw.datapath.set_clock(5_000_000_000).unwrap();
    let inside = nat_common::Endpoint::new(TCP_INSIDE.0, TCP_INSIDE.1, proto::TCP);
    let fin = with(tcp_out(), |f| f.l4 = L4::Tcp { sport: TCP_INSIDE.1, dport: REMOTE_TCP.1, flags: 0x11 });
    assert_eq!(gw.run(Side::Lan, &fin.build()).unwrap().action, REDIRECT);
    let slot = gw.datapath.outbound().unwrap().get(&inside, 0).unwrap().session;
    let live = gw.datapath.liveness(slot).unwrap();
    assert_eq!(live.last_seen_ns, 5_000_000_000, "last_seen_ns was not refreshed to the published clock");
    assert_eq!(live.tcp_flags_out & nat_common::tcp_flags::FIN, nat_common::tcp_flags::FIN);
    assert_eq!(live.tcp_flags_in, 0, "an outbound packet set inbound flags");

    // The reply refreshes the same session and its own direction's flags.
    gw.datapath.set_clock(7_000_000_000).unwrap();
    let ack = with(tcp_in(), |f| f.l4 = L4::Tcp { sport: REMOTE_TCP.1, dport: TCP_EXTERNAL.1, flags: 0x10 });
    assert_eq!(gw.run(Side::Wan, &ack.build()).unwrap().action, REDIRECT);
    let live = gw.datapath.liveness(slot).unwrap();
    assert_eq!((live.last_seen_ns, live.tcp_flags_in), (7_000_000_000, nat_common::tcp_flags::ACK));
}

/// RFC 7857 / RFC 5382 REQ-2: the TCP state of a mapping follows its
/// connections. A bare SYN after a FIN or RST (the same inside endpoint
/// connecting again while the mapping waits out the closing timer) starts the
/// state afresh, so the new connection gets the established timeout once both
/// sides ACK; a SYN-ACK or a retransmitted FIN does not reset anything.
#[test]
fn a_new_syn_after_fin_or_rst_starts_the_tcp_state_afresh() {
    require_root!();
    use nat_common::tcp_flags::{ACK, FIN, RST, SYN};
    let gw = gateway("tcpstate").unwrap();
    let inside = nat_common::Endpoint::new(TCP_INSIDE.0, TCP_INSIDE.1, proto::TCP);
    let slot = gw.datapath.outbound().unwrap().get(&inside, 0).unwrap().session;
    let out = |flags: u8| with(tcp_out(), |f| f.l4 = L4::Tcp { sport: TCP_INSIDE.1, dport: REMOTE_TCP.1, flags });
    let inb = |flags: u8| with(tcp_in(), |f| f.l4 = L4::Tcp { sport: REMOTE_TCP.1, dport: TCP_EXTERNAL.1, flags });
    let flags = |gw: &TestGateway| {
        let live = gw.datapath.liveness(slot).unwrap();
        (live.tcp_flags_out, live.tcp_flags_in)
    };
    let steps: [(Side, Frame, (u8, u8)); 7] = [
        (Side::Lan, out(SYN), (SYN, 0)),
        (Side::Wan, inb(SYN | ACK), (SYN, SYN | ACK)),
        (Side::Lan, out(FIN | ACK), (SYN | FIN | ACK, SYN | ACK)),
        // A retransmitted FIN and a stray SYN-ACK keep the closing state.
        (Side::Lan, out(FIN | ACK), (SYN | FIN | ACK, SYN | ACK)),
        (Side::Wan, inb(SYN | ACK), (SYN | FIN | ACK, SYN | ACK)),
        // The same endpoint connects again: state afresh.
        (Side::Lan, out(SYN), (SYN, 0)),
        (Side::Wan, inb(RST | ACK), (SYN, RST | ACK)),
    ];
    for (i, (side, frame, want)) in steps.into_iter().enumerate() {
        assert_eq!(gw.run(side, &frame.build()).unwrap().action, REDIRECT, "step {i}");
        assert_eq!(flags(&gw), want, "step {i}: (out, in) flags");
    }
    // Simultaneous open: SYNs cross, then SYN-ACKs; established both ways.
    for (side, frame) in [(Side::Lan, out(SYN)), (Side::Wan, inb(SYN)), (Side::Lan, out(SYN | ACK)), (Side::Wan, inb(SYN | ACK))] {
        assert_eq!(gw.run(side, &frame.build()).unwrap().action, REDIRECT);
    }
    assert_eq!(flags(&gw), (SYN | ACK, SYN | ACK));
}

/// The inbound half of a session is an entry of the INBOUND array, placed
/// by the external address's position in the pool (issue 16). A natd that
/// adopts the datapath with another pool (its `external_ip` list changed
/// across a restart) moves every entry to where the new pool puts it, and
/// removes the sessions of an address the pool lost, both halves; and a
/// removed session clears its own entry, never the port's next session's.
#[test]
fn inbound_entries_follow_the_pool_and_belong_to_their_session() {
    require_root!();
    let mut gw = gateway("pool-move").unwrap();
    let second = std::net::Ipv4Addr::new(203, 0, 113, 5);
    let mut config = nat_tests::fixture_config(gw.wan_ifindex);
    config.external_addrs_be[1] = u32::from_ne_bytes(second.octets());
    config.pool_len = 2;
    gw.datapath.set_config(config).unwrap();
    let (kept, lost) = ((addr::LAN_HOST, 5001), (addr::LAN_HOST, 5000));
    gw.map(lost, (addr::EXTERNAL, 25000), proto::UDP).unwrap();
    gw.map(kept, (second, 25001), proto::UDP).unwrap();
    let reply_to = |external: (std::net::Ipv4Addr, u16)| from_wan(Frame::udp(REMOTE_UDP, external));
    let run = gw.run(Side::Wan, &reply_to((second, 25001)).build()).unwrap();
    assert_frames_eq("before", &run.frame, &translated_in(reply_to((second, 25001)), kept).build()).unwrap();

    // The next natd's pool: the second address first, the first one gone.
    config.external_addrs_be = [0; nat_common::MAX_POOL_ADDRS];
    config.external_addrs_be[0] = u32::from_ne_bytes(second.octets());
    config.pool_len = 1;
    gw.datapath.set_config(config).unwrap();
    let run = gw.run(Side::Wan, &reply_to((second, 25001)).build()).unwrap();
    assert_eq!(run.action, REDIRECT, "the kept address's session lost its inbound half");
    assert_frames_eq("after", &run.frame, &translated_in(reply_to((second, 25001)), kept).build()).unwrap();
    let lost_inside = nat_common::Endpoint::new(lost.0, lost.1, proto::UDP);
    assert!(gw.datapath.outbound_mapping(&lost_inside).unwrap().is_none(), "the lost address's session kept its outbound half");

    // A removed session's entry goes; a later session of the port is its own.
    let kept_inside = nat_common::Endpoint::new(kept.0, kept.1, proto::UDP);
    let kept_external = nat_common::Endpoint::new(second, 25001, proto::UDP);
    gw.datapath.remove_pair(kept_inside).unwrap();
    assert!(gw.datapath.inbound_mapping(&kept_external).unwrap().is_none());
    assert_ne!(gw.run(Side::Wan, &reply_to((second, 25001)).build()).unwrap().action, REDIRECT);
    gw.map((addr::LAN_HOST, 5002), (second, 25001), proto::UDP).unwrap();
    assert_eq!(gw.datapath.inbound_mapping(&kept_external).unwrap().map(|m| m.target(proto::UDP).port()), Some(5002));
}
