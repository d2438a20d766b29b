//! What traffic does to a mapping's session: last-seen time and TCP flags.

use nat_common::proto;
use nat_tests::{
    TestGateway,
    packet::{Frame, L4},
    require_root,
    xdp_action::REDIRECT,
};
use nat_userspace::datapath::Side;

use super::{REMOTE_TCP, TCP_EXTERNAL, TCP_INSIDE, gateway, tcp_in, tcp_out, with};

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
