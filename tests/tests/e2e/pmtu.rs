//! Path-MTU discovery: the gateway's own Fragmentation Needed, and a router's
//! beyond it.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{EXTERNAL, GW_LAN, IO_TIMEOUT, NatLab, ROUTED_SERVER, SERVER, host_addr, in_ns, udp_socket_in},
    netns::Netns,
    require_root,
};

use super::{hops, run_bounded};

/// A TCP upload of `len` bytes from `host` to a sink on `server` at `addr`:
/// the sink answers with the number of bytes it got. Returns that number.
fn tcp_upload(host: &Netns, server: &Netns, addr: Ipv4Addr, len: usize) -> u64 {
    const SINK_PORT: u16 = 7300;
    let listener = in_ns(server, || std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SINK_PORT)).unwrap())
        .join()
        .unwrap();
    let sink = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = 0u64;
        let mut buf = vec![0u8; 65536];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(e) => panic!("sink: {e} after {got} bytes"),
            }
        }
        conn.write_all(&got.to_be_bytes()).unwrap();
    });
    let uploaded = in_ns(host, move || {
        let mut conn = TcpStream::connect_timeout(&SocketAddrV4::new(addr, SINK_PORT).into(), IO_TIMEOUT).expect("connect");
        conn.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        conn.write_all(&data).expect("upload stalled: path-MTU discovery failed?");
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut count = [0u8; 8];
        conn.read_exact(&mut count).expect("no byte count from the sink");
        u64::from_be_bytes(count)
    })
    .join()
    .unwrap();
    sink.join().unwrap();
    uploaded
}

/// The path MTU `host`'s kernel learned for `addr` ("mtu N" in its route cache).
fn learned_pmtu(host: &Netns, addr: Ipv4Addr) -> Option<u32> {
    let route = host.ip(&["route", "get", &addr.to_string()]).unwrap();
    let mut words = route.split_whitespace();
    words.by_ref().find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

const MIB: usize = 1 << 20;

/// RFC 4787 REQ-13 end to end: the gateway's WAN link takes 1400 bytes, the
/// LAN 1500. tracepath from a LAN host learns the 1400 from the gateway's
/// Fragmentation Needed, and a 1 MiB TCP upload completes through path-MTU
/// discovery (the server's end stays at 1500, so its MSS does not hide the
/// narrow link: the host's first full-size segments are too big for it).
#[test]
fn rfc4787_req13_frag_needed_from_the_gateway_drives_tracepath_and_tcp_pmtud() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    lab.gw.ip(&["link", "set", "wan0", "mtu", "1400"]).unwrap();
    lab.start_natd(&[]).unwrap();

    let out = run_bounded(&lab.hosts[0], 30, &["tracepath", "-n", "-m", "5", &SERVER.to_string()]);
    assert!(out.contains("pmtu 1400"), "tracepath did not learn the WAN MTU:\n{out}\n{:?}", lab.stats().unwrap());
    assert!(out.contains("reached") && out.contains("Resume: pmtu 1400"), "{out}");
    assert_eq!(hops(&out), [GW_LAN.to_string(), SERVER.to_string()], "{out:?}");
    let stats = lab.stats().unwrap();
    assert!(stats.get("frag_needed_sent").unwrap() >= 1, "{stats:?}");

    // A fresh host route cache: TCP must learn the MTU by itself.
    lab.hosts[0].ip(&["route", "flush", "cache"]).unwrap();
    let sent_before = lab.stats().unwrap().get("frag_needed_sent").unwrap();
    let got = tcp_upload(&lab.hosts[0], &lab.server, SERVER, MIB);
    assert_eq!(got, MIB as u64, "the server got {got} of {MIB} bytes\n{}", lab.natd_log());
    assert_eq!(learned_pmtu(&lab.hosts[0], SERVER), Some(1400));
    assert!(lab.stats().unwrap().get("frag_needed_sent").unwrap() > sent_before, "TCP got no Fragmentation Needed");
}

/// Path-MTU discovery across a smaller-MTU link beyond the gateway (RFC 5508
/// REQ-4/5 with RFC 1191): the router behind the gateway forwards onto a
/// 1280-byte link and answers Fragmentation Needed to the external address;
/// the gateway reverts the quote and hands it to the LAN host, whose 1 MiB
/// TCP upload completes and whose tracepath reports pmtu 1280.
#[test]
fn rfc5508_pmtu_discovery_across_a_smaller_link_beyond_the_gateway() {
    require_root!();
    let mut lab = NatLab::with_router(1, false, 1280).unwrap();
    lab.start_natd(&[]).unwrap();

    let got = tcp_upload(&lab.hosts[0], &lab.server, ROUTED_SERVER, MIB);
    assert_eq!(got, MIB as u64, "the server got {got} of {MIB} bytes\n{}", lab.natd_log());
    assert_eq!(learned_pmtu(&lab.hosts[0], ROUTED_SERVER), Some(1280));
    let stats = lab.stats().unwrap();
    assert!(stats.get("icmp_error_in").unwrap() >= 1, "{stats:?}");
    assert_eq!(stats.get("frag_needed_sent").unwrap(), 0, "the gateway's own links are 1500");

    lab.hosts[0].ip(&["route", "flush", "cache"]).unwrap();
    let out = run_bounded(&lab.hosts[0], 30, &["tracepath", "-n", "-m", "5", &ROUTED_SERVER.to_string()]);
    assert!(out.contains("Resume: pmtu 1280") && out.contains("reached"), "{out}");
}

/// Clears DF on what `socket` sends (`IP_PMTUDISC_DONT`): the kernel then
/// sends datagrams longer than the path MTU for routers to fragment.
fn without_df(socket: &UdpSocket) {
    let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: an int option and its length.
    let rc = unsafe { libc::setsockopt(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, (&dont as *const libc::c_int).cast(), size_of::<libc::c_int>() as libc::socklen_t) };
    assert_eq!(rc, 0, "IP_MTU_DISCOVER: {}", std::io::Error::last_os_error());
}

/// RFC 791 and RFC 1812 §5.2.6: a router fragments a datagram longer than
/// the egress MTU when DF is clear, and the gateway forwards. The WAN link
/// takes 1400 bytes; a LAN host sends 1,472-byte UDP datagrams (1,500 on
/// the wire) with DF clear: each is translated and cut by natd (its first
/// one's whichever way the flow is set up: natd sends a first packet
/// itself, and the raw socket refuses it whole). The server, on the same
/// 1400-byte link, answers each with DF clear: its kernel sends two
/// fragments, and the first, 1400 bytes, is cut again for a LAN route of
/// MTU 1300, its offset and More Fragments kept. Every datagram arrives
/// whole both ways, from the external address.
#[test]
fn datagrams_longer_than_the_egress_mtu_without_df_are_fragmented_both_ways() {
    require_root!();
    const PORT: u16 = 7400;
    const LEN: usize = 1472;
    let mut lab = NatLab::new(1, false).unwrap();
    lab.gw.ip(&["link", "set", "wan0", "mtu", "1400"]).unwrap();
    lab.server.ip(&["link", "set", "eth0", "mtu", "1400"]).unwrap();
    let lan = format!("{}/24", host_addr(0));
    let lan_net = lan.replace(&format!(".{}/", host_addr(0).octets()[3]), ".0/");
    lab.gw.ip(&["route", "replace", &lan_net, "dev", "lan0", "proto", "kernel", "scope", "link", "src", &GW_LAN.to_string(), "mtu", "lock", "1300"]).unwrap();
    lab.start_natd(&[]).unwrap();

    let server = udp_socket_in(&lab.server, PORT);
    without_df(&server);
    server.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let echo = thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        let until = Instant::now() + Duration::from_secs(20);
        while seen.len() < 3 && Instant::now() < until {
            let Ok((n, from)) = server.recv_from(&mut buf) else { continue };
            seen.push((n, from));
            server.send_to(&buf[..n], from).unwrap();
        }
        seen
    });
    let host = udp_socket_in(&lab.hosts[0], 40300);
    without_df(&host);
    host.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    for i in 0..3 {
        host.send_to(&data, SocketAddrV4::new(SERVER, PORT)).unwrap();
        let mut back = vec![0u8; 65536];
        let n = host.recv(&mut back).unwrap_or_else(|e| panic!("datagram {i}: no whole echo ({e})\n{:?}", lab.stats().unwrap()));
        assert_eq!(&back[..n], &data[..], "datagram {i}: the echo, whole");
    }
    let seen = echo.join().unwrap();
    assert_eq!(seen.len(), 3);
    for (n, from) in &seen {
        assert_eq!((*n, from.ip()), (LEN, std::net::IpAddr::V4(EXTERNAL)), "whole, from the external address");
    }
    let stats = lab.stats().unwrap();
    assert!(stats.get("too_big_to_daemon").unwrap() >= 5, "cut after XDP: the later two out, the three first fragments in: {stats:?}");
    assert!(stats.get("packets_cut").unwrap() >= 6, "three datagrams out, three first fragments in: {stats:?}");
}
