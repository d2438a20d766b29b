//! New flows set up in the datapath: claims of queued ports, the per-host
//! quota, paired pool addresses, port parity and class.

use std::net::Ipv4Addr;

use nat_common::{Reason, miss_kind, proto};
use nat_tests::{
    TestGateway, addr, assert_frames_eq,
    packet::Frame,
    require_root,
    xdp_action::{DROP, REDIRECT},
};
use nat_userspace::datapath::Side;

use super::{REMOTE_TCP, REMOTE_UDP, from_lan, from_wan, gateway, translated_out};

/// A new flow claims a free port the daemon queued: the datapath installs the
/// mapping pair, translates and forwards the first packet itself, and tells
/// the daemon with a ClaimEvent. An inside port inside the NAT range is left
/// to the daemon (which keeps it if free), as is a flow when the queue is empty.
#[test]
fn new_flow_claims_a_queued_port_and_forwards_its_first_packet() {
    require_root!();
    let mut gw = gateway("claim").unwrap();
    let mut ring = gw.datapath.take_miss_ring().unwrap();
    gw.datapath.set_clock(3_000_000_000).unwrap();
    let free = nat_common::FreePort { session: 77, port: 24680, _pad: 0 };
    gw.datapath.push_free_port(proto::UDP, free).unwrap();

    let inside = (addr::LAN_HOST, 7001);
    let first = from_lan(Frame::udp(inside, REMOTE_UDP));
    let run = gw.run(Side::Lan, &first.build()).unwrap();
    assert_eq!(run.action, REDIRECT, "the first packet was not forwarded");
    assert_frames_eq("claimed first packet", &run.frame, &translated_out(first.clone(), (addr::EXTERNAL, 24680)).build()).unwrap();
    assert_eq!(gw.datapath.counter(Reason::TranslatedNewFlow).unwrap(), 1);

    let item = ring.next().expect("no ClaimEvent in the ring");
    assert_eq!(item.len(), std::mem::size_of::<nat_common::ClaimEvent>());
    let claim = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const nat_common::ClaimEvent) };
    drop(item);
    assert_eq!(claim.kind, miss_kind::CLAIMED);
    assert_eq!(claim.session, 77);
    assert_eq!(claim.inside, nat_common::Endpoint::new(inside.0, inside.1, proto::UDP));
    assert_eq!(claim.external, nat_common::Endpoint::new(addr::EXTERNAL, 24680, proto::UDP));
    assert_eq!(gw.datapath.liveness(77).unwrap().last_seen_ns, 3_000_000_000);

    // The reply finds the reverse entry; the next packet is a plain hit.
    let reply = from_wan(Frame::udp(REMOTE_UDP, (addr::EXTERNAL, 24680)));
    assert_eq!(gw.run(Side::Wan, &reply.build()).unwrap().action, REDIRECT);
    assert_eq!(gw.run(Side::Lan, &first.build()).unwrap().action, REDIRECT);
    assert_eq!(gw.datapath.counter(Reason::TranslatedOut).unwrap(), 1);

    // Queue empty: the daemon decides.
    let second = from_lan(Frame::udp((addr::LAN_HOST, 7002), REMOTE_UDP));
    assert_eq!(gw.run(Side::Lan, &second.build()).unwrap().action, DROP);
    assert_eq!(gw.datapath.counter(Reason::MissToDaemon).unwrap(), 1);
    // An inside port in the NAT range goes to the daemon even with a port queued.
    gw.datapath.push_free_port(proto::UDP, nat_common::FreePort { session: 78, port: 24681, _pad: 0 }).unwrap();
    let in_range = from_lan(Frame::udp((addr::LAN_HOST, addr::PORT_MIN + 5), REMOTE_UDP));
    assert_eq!(gw.run(Side::Lan, &in_range.build()).unwrap().action, DROP);
    assert_eq!(gw.datapath.counter(Reason::MissToDaemon).unwrap(), 2);
}

/// RFC 6888 REQ-4: the datapath claims no more ports for an inside host than
/// its quota. Past it, the new flow goes to natd (which refuses it and tells
/// the host, RFC 5508 REQ-8); other hosts are not affected; a port natd
/// reports released makes room again.
#[test]
fn claims_stop_at_the_per_host_quota() {
    require_root!();
    let mut gw = gateway("quota").unwrap();
    let mut config = nat_tests::fixture_config(gw.wan_ifindex);
    config.ports_per_host = 2;
    gw.datapath.set_config(config).unwrap();
    let _ring = gw.datapath.take_miss_ring().unwrap();
    for (i, port) in [24000u16, 24001, 24002, 24003].into_iter().enumerate() {
        gw.datapath.push_free_port(proto::UDP, nat_common::FreePort { session: 100 + i as u32, port, _pad: 0 }).unwrap();
    }
    let new_flow = |host: Ipv4Addr, port: u16| from_lan(Frame::udp((host, port), REMOTE_UDP)).build();
    let host = addr::LAN_HOST;
    assert_eq!(gw.run(Side::Lan, &new_flow(host, 7001)).unwrap().action, REDIRECT);
    assert_eq!(gw.run(Side::Lan, &new_flow(host, 7002)).unwrap().action, REDIRECT);
    let third = gw.run(Side::Lan, &new_flow(host, 7003)).unwrap();
    assert_eq!(third.action, DROP, "a third port for a host with a quota of 2");
    assert_eq!(gw.datapath.counter(Reason::MissToDaemon).unwrap(), 1, "the refused flow went to natd");
    let key = nat_common::HostKey::of(&nat_common::Endpoint::new(host, 0, proto::UDP));
    assert_eq!(gw.datapath.host_claims(key).unwrap(), 2, "the refused claim was not undone");
    // TCP is counted apart, and so is another host.
    gw.datapath.push_free_port(proto::TCP, nat_common::FreePort { session: 200, port: 24100, _pad: 0 }).unwrap();
    let tcp = from_lan(Frame::tcp((host, 7004), REMOTE_TCP)).build();
    assert_eq!(gw.run(Side::Lan, &tcp).unwrap().action, REDIRECT, "TCP has its own quota");
    gw.ns.ip(&["neigh", "replace", "10.77.1.11", "lladdr", "02:00:00:00:01:11", "dev", "lan0", "nud", "permanent"]).unwrap();
    let other = Ipv4Addr::new(10, 77, 1, 11);
    assert_eq!(gw.run(Side::Lan, &new_flow(other, 7001)).unwrap().action, REDIRECT, "another host");
    // natd released one of the host's mappings.
    gw.datapath.set_host_returns(key, 1).unwrap();
    assert_eq!(gw.run(Side::Lan, &new_flow(host, 7003)).unwrap().action, REDIRECT, "after a release");
}

/// RFC 4787 REQ-2, REQ-4, REQ-3a in the claim path. With a pool of two
/// addresses each host's new flows take its paired address (the hash natd
/// uses too), from the one queue of the port's parity; with parity kept an
/// odd inside port takes an odd port while one is queued and an even one
/// after (parity lost beats a refusal); with class kept an inside port below
/// 1024 is left to natd.
#[test]
fn claims_keep_the_paired_address_parity_and_class() {
    require_root!();
    let mut gw = gateway("pool").unwrap();
    let second = Ipv4Addr::new(203, 0, 113, 5);
    let mut config = nat_tests::fixture_config(gw.wan_ifindex);
    config.external_addrs_be[1] = u32::from_ne_bytes(second.octets());
    config.pool_len = 2;
    (config.port_parity, config.port_class) = (1, 1);
    (config.low_port_min, config.low_port_max) = (600, 699);
    gw.datapath.set_config(config).unwrap();
    let _ring = gw.datapath.take_miss_ring().unwrap();
    let pool = [addr::EXTERNAL, second];
    gw.ns.ip(&["neigh", "replace", "10.77.1.11", "lladdr", "02:00:00:00:01:11", "dev", "lan0", "nud", "permanent"]).unwrap();
    let hosts = [addr::LAN_HOST, Ipv4Addr::new(10, 77, 1, 11)];
    let paired = |host: Ipv4Addr| pool[config.pool_index(u32::from_ne_bytes(host.octets())) as usize];
    assert_ne!(paired(hosts[0]), paired(hosts[1]), "the fixture's hosts should land on different addresses");

    let mut session = 300;
    let mut queue = |gw: &mut TestGateway, proto_nr: u8, port: u16| {
        session += 1;
        gw.datapath.push_free_port(proto_nr, nat_common::FreePort { session, port, _pad: 0 }).unwrap();
    };
    for (host, inside_port, proto_nr) in [(hosts[0], 7001, proto::UDP), (hosts[1], 7003, proto::UDP), (hosts[0], 7005, proto::TCP), (hosts[1], 7006, proto::TCP)] {
        let external_port = 25000 + inside_port;
        queue(&mut gw, proto_nr, external_port);
        let first = if proto_nr == proto::UDP { Frame::udp((host, inside_port), REMOTE_UDP) } else { Frame::tcp((host, inside_port), REMOTE_TCP) };
        let run = gw.run(Side::Lan, &from_lan(first.clone()).build()).unwrap();
        assert_eq!(run.action, REDIRECT, "{host}:{inside_port}");
        let want = translated_out(from_lan(first), (paired(host), external_port));
        assert_frames_eq(&format!("{host}:{inside_port}"), &run.frame, &want.build()).unwrap();
    }

    // Parity kept: odd to odd while an odd port is queued, then the even one.
    queue(&mut gw, proto::UDP, 26000);
    queue(&mut gw, proto::UDP, 26001);
    let source_port = |run: &nat_tests::TestRun| u16::from_be_bytes([run.frame[34], run.frame[35]]);
    let odd = gw.run(Side::Lan, &from_lan(Frame::udp((addr::LAN_HOST, 7101), REMOTE_UDP)).build()).unwrap();
    assert_eq!((odd.action, source_port(&odd)), (REDIRECT, 26001));
    let odd = gw.run(Side::Lan, &from_lan(Frame::udp((addr::LAN_HOST, 7103), REMOTE_UDP)).build()).unwrap();
    assert_eq!((odd.action, source_port(&odd)), (REDIRECT, 26000), "no fallback to the other parity");
    // Class kept: NTP's port 123 is natd's to map into 600-699.
    queue(&mut gw, proto::UDP, 26003);
    let ntp = from_lan(Frame::udp((addr::LAN_HOST, 123), REMOTE_UDP)).build();
    assert_eq!(gw.run(Side::Lan, &ntp).unwrap().action, DROP);
    assert_eq!(gw.datapath.counter(Reason::MissToDaemon).unwrap(), 1);

    // Unmapped ports of the low range are the NAT's too: dropped, not passed.
    let unsolicited = from_wan(Frame::udp(REMOTE_UDP, (second, 650))).build();
    assert_eq!(gw.run(Side::Wan, &unsolicited).unwrap().action, DROP);
    assert_eq!(gw.datapath.counter(Reason::DropInboundNoMapping).unwrap(), 1);
}

/// The ring bytes one hand-off of `frame` takes: the kernel's 8-byte record
/// header and the event's header and frame, rounded up to 8.
fn ring_record(frame: &[u8]) -> u32 {
    (8 + nat_common::MissEvent::record_len(frame.len()) as u32).next_multiple_of(8)
}

/// Issue 16, a burst of new flows: an inside port in the NAT range goes to
/// natd (which may keep it) only while natd keeps up with the miss ring
/// (less than MISS_HANDOFF_BACKLOG_BYTES unread); past that, the flow
/// claims a queued port in the datapath and its first packet goes on now,
/// rather than waiting behind natd's backlog or being dropped with the ring
/// full.
#[test]
fn a_keepable_inside_port_is_claimed_here_once_natd_falls_behind() {
    require_root!();
    let mut gw = gateway("ringbehind").unwrap();
    gw.datapath.push_free_port(proto::UDP, nat_common::FreePort { session: 90, port: 24690, _pad: 0 }).unwrap();
    let in_range = (addr::LAN_HOST, addr::PORT_MIN + 7);
    let first = from_lan(Frame::udp(in_range, REMOTE_UDP));
    // No natd reads the ring: each repetition of a hand-off adds one record,
    // until the backlog is reached.
    let backlog = nat_common::MISS_HANDOFF_BACKLOG_BYTES.div_ceil(ring_record(&first.build()));
    let run = nat_tests::test_run(&gw.datapath, Side::Lan, gw.ingress_ifindex(Side::Lan), &first.build(), backlog - 2).unwrap();
    assert_eq!(run.action, DROP, "handed to natd");
    // Then one at a time: a few more hand-offs, then the claim.
    let mut run = gw.run(Side::Lan, &first.build()).unwrap();
    for _ in 0..4 {
        if run.action != DROP {
            break;
        }
        run = gw.run(Side::Lan, &first.build()).unwrap();
    }
    assert_eq!(run.action, REDIRECT, "claimed here once natd is behind");
    let handed = gw.datapath.counter(Reason::MissToDaemon).unwrap();
    assert!((u64::from(backlog) - 1..=u64::from(backlog) + 1).contains(&handed), "{handed} hand-offs until the backlog ({backlog} events) was reached");
    assert_eq!(gw.datapath.counter(Reason::DropRingFull).unwrap(), 0, "no first packet dropped");
    assert_frames_eq("claimed first packet", &run.frame, &translated_out(first.clone(), (addr::EXTERNAL, 24690)).build()).unwrap();
    assert_eq!(gw.datapath.counter(Reason::TranslatedNewFlow).unwrap(), 1);
}

/// Issue 16, a burst of new flows that outlasts the claim queue: each
/// first packet is handed to natd in a record as long as the frame, so the
/// 16 MiB ring holds ~190,000 small ones (with a 2 KiB record each it held
/// 8,097, and a 100,000-flow burst lost first packets `drop_ring_full`).
/// Only a full ring drops, and says so.
#[test]
fn the_miss_ring_holds_a_hand_off_per_frame_length_and_counts_what_it_cannot() {
    require_root!();
    let gw = gateway("ringfull").unwrap();
    // Outside the NAT range and nothing queued: every repetition is handed off.
    let first = from_lan(Frame::udp((addr::LAN_HOST, 7101), REMOTE_UDP)).build();
    let capacity = nat_common::MISS_RING_BYTES / ring_record(&first);
    assert!(capacity > 100_000, "{capacity} small hand-offs fit");
    let run = nat_tests::test_run(&gw.datapath, Side::Lan, gw.ingress_ifindex(Side::Lan), &first, capacity + 100).unwrap();
    assert_eq!(run.action, DROP);
    assert_eq!(gw.datapath.counter(Reason::MissToDaemon).unwrap(), u64::from(capacity), "hand-offs until the ring is full");
    assert_eq!(gw.datapath.counter(Reason::DropRingFull).unwrap(), 100, "then each one counted as dropped");
    assert_eq!(gw.datapath.counter(Reason::TranslatedNewFlow).unwrap(), 0);
}

/// The ring's wake-ups as natd's event loop sees them: an edge-triggered
/// epoll (tokio's), which reports only the wake-ups the ring sends, not the
/// data it holds.
struct RingWakeups(std::os::fd::OwnedFd);

impl RingWakeups {
    fn watch(ring: &impl std::os::fd::AsRawFd) -> Self {
        use std::os::fd::FromRawFd as _;
        // SAFETY: a fresh epoll descriptor, owned here.
        let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC)) };
        let mut event = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: 0 };
        // SAFETY: both descriptors are live; the event is read during the call.
        let added = unsafe { libc::epoll_ctl(std::os::fd::AsRawFd::as_raw_fd(&epoll), libc::EPOLL_CTL_ADD, ring.as_raw_fd(), &mut event) };
        assert_eq!(added, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
        Self(epoll)
    }

    /// Whether a wake-up came within 300 ms (the ring sends it from an
    /// irq_work, at the latest on the next tick).
    fn woken(&self) -> bool {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: a live epoll descriptor, room for one event.
        let n = unsafe { libc::epoll_wait(std::os::fd::AsRawFd::as_raw_fd(&self.0), &mut event, 1, 300) };
        assert!(n >= 0, "epoll_wait: {}", std::io::Error::last_os_error());
        n == 1
    }
}

/// A claim wakes no one: natd takes note of it on its next poll of the
/// ring (a wake-up for each claim cost each first packet ~20 us at the
/// median, natd's work competing with the packet's way). A hand-off behind
/// an unread claim wakes natd while natd says it sleeps (`DAEMON_ASLEEP`),
/// and only then: while natd reads, the ring's own rule (wake a reader only
/// once it has read everything before the record) is kept, as a forced
/// wake-up for every record slowed the gateway in a burst.
#[test]
fn claims_wake_no_one_and_a_hand_off_behind_one_wakes_natd_only_while_it_sleeps() {
    require_root!();
    let mut gw = gateway("wakeups").unwrap();
    let mut ring = gw.datapath.take_miss_ring().unwrap();
    let wakeups = RingWakeups::watch(&ring);
    assert!(!wakeups.woken(), "an empty ring woke its reader");
    gw.datapath.set_daemon_asleep(true);

    gw.datapath.push_free_port(proto::UDP, nat_common::FreePort { session: 80, port: 24700, _pad: 0 }).unwrap();
    let claimed = from_lan(Frame::udp((addr::LAN_HOST, 7201), REMOTE_UDP));
    assert_eq!(gw.run(Side::Lan, &claimed.build()).unwrap().action, REDIRECT, "claimed and forwarded");
    assert!(!wakeups.woken(), "a claim woke natd");

    // Behind the unread claim, natd reading: the ring's rule, no wake-up.
    gw.datapath.set_daemon_asleep(false);
    let handed = from_lan(Frame::udp((addr::LAN_HOST, 7202), REMOTE_UDP));
    assert_eq!(gw.run(Side::Lan, &handed.build()).unwrap().action, DROP, "handed to natd (nothing queued)");
    assert!(!wakeups.woken(), "a hand-off woke a natd that reads the ring");
    // natd asleep: woken.
    gw.datapath.set_daemon_asleep(true);
    assert_eq!(gw.run(Side::Lan, &handed.build()).unwrap().action, DROP);
    assert!(wakeups.woken(), "a hand-off behind a claim did not wake a sleeping natd");

    // All read, natd reading: the ring's rule wakes it for the next one.
    while ring.next().is_some() {}
    gw.datapath.set_daemon_asleep(false);
    assert_eq!(gw.run(Side::Lan, &handed.build()).unwrap().action, DROP);
    assert!(wakeups.woken(), "a hand-off to a natd that had read everything did not wake it");
    assert_eq!(gw.datapath.counter(Reason::MissToDaemon).unwrap(), 3);
}
