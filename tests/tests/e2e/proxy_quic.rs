//! QUIC routed by name end to end (issue 13, `quic = true`): aioquic
//! servers on LAN hosts, each with its own certificate, aioquic clients on
//! the WAN host, the real natd: each name reaches its server, which sees
//! the client's own address; a ClientHello over several Initials; after the
//! Initials every packet of the connection is translated in XDP (natd's
//! socket reads none of them while the datapath's forwarded counter grows);
//! an unknown name without a default is refused, with one it goes there; a
//! reload adding a name routes it.

use std::net::SocketAddrV4;

use nat_tests::{
    natlab::{EXTERNAL, NatLab, SERVER, host_addr},
    require_root,
    servers::{QuicServer, quic_peer_script},
};
use nat_userspace::proxy::{ProxyView, QuicView};

/// The aioquic server on LAN host `i`, port 443, answering `name`.
fn quic_on(lab: &NatLab, i: usize, name: &str) -> QuicServer {
    QuicServer::start(&lab.hosts[i], SocketAddrV4::new(host_addr(i), 443), name).unwrap()
}

/// One QUIC connection from the WAN host to EXTERNAL:`port` for `sni`:
/// `requests` "who" streams `gap_ms` apart, then `blob` bytes. The answers
/// ("NAME CLIENT_ADDR" each), or why it failed.
fn connect(lab: &NatLab, port: u16, sni: &str, requests: u32, gap_ms: u32, blob: u32, wide_hello: bool) -> Result<Vec<String>, String> {
    let script = quic_peer_script();
    let (target, requests, gap, blob) = (format!("{EXTERNAL}:{port}"), requests.to_string(), gap_ms.to_string(), blob.to_string());
    let mut args = vec!["python3", script.to_str().unwrap(), "client", "--connect", &target, "--sni", sni];
    args.extend(["--requests", &requests, "--gap-ms", &gap, "--blob", &blob, "--timeout", "6"]);
    if wide_hello {
        args.push("--wide-hello");
    }
    let out = lab.server.exec(&args).map_err(|e| format!("{e:#}"))?;
    let result: serde_json::Value = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))?;
    if result["blob"].as_u64() != Some(u64::from(blob.parse::<u32>().unwrap())) {
        return Err(format!("the blob came back short: {out}"));
    }
    Ok(result["answers"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect())
}

fn proxy_view(lab: &NatLab, port: u16) -> ProxyView {
    lab.proxies().unwrap().into_iter().find(|p| p.listen.ends_with(&format!(":{port}"))).unwrap()
}

fn quic_of(lab: &NatLab, port: u16) -> QuicView {
    proxy_view(lab, port).quic.expect("a quic proxy shows its quic counters")
}

/// Each name reaches its server, which sees the client's own address; a
/// ClientHello over several Initials routes as a one-packet one; after the
/// Initials natd reads none of the connection's packets (hundreds of them,
/// 20 requests and 2 MB) and the datapath's forwarded counter counts them.
#[test]
fn quic_names_reach_their_servers_and_the_connection_stays_in_xdp() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let _servers = [quic_on(&lab, 0, "quic-blue"), quic_on(&lab, 1, "quic-red")];
    let (h0, h1) = (host_addr(0), host_addr(1));
    lab.start_natd_with_config(&format!(
        "log_level = \"debug\"\n[[proxy]]\nport = 443\nkind = \"tls\"\nquic = true\nnames = {{ \"blue.example\" = \"{h0}:443\", \"red.example\" = \"{h1}:443\" }}\n"
    ))
    .unwrap();

    let blue = connect(&lab, 443, "blue.example", 3, 0, 0, false).unwrap();
    assert_eq!(blue.len(), 3);
    for answer in &blue {
        assert!(answer.starts_with(&format!("quic-blue {SERVER}:")), "blue's server, seeing the client's own address: {blue:?}");
    }
    let red = connect(&lab, 443, "RED.example.", 1, 0, 0, true).unwrap();
    assert!(red[0].starts_with(&format!("quic-red {SERVER}:")), "a ClientHello over several Initials, the name's case and dot aside: {red:?}");
    let view = quic_of(&lab, 443);
    assert_eq!(view.routed, 2, "{view:?}");
    assert!(view.datagrams >= 3, "the single Initial and the several ones came to natd: {view:?}");

    let forwarded_before = lab.stats().unwrap().get("forwarded_in").unwrap_or_default();
    let before = quic_of(&lab, 443);
    let long = connect(&lab, 443, "blue.example", 20, 20, 2_000_000, false).unwrap();
    assert!(long.iter().all(|a| a.starts_with("quic-blue ")) && long.len() == 20, "{long:?}");
    let after = quic_of(&lab, 443);
    let forwarded = lab.stats().unwrap().get("forwarded_in").unwrap_or_default() - forwarded_before;
    let seen_by_natd = after.datagrams - before.datagrams;
    assert_eq!(after.routed, 3, "{after:?}");
    assert!(seen_by_natd <= 3, "natd read only the connection's Initials (a retransmit at most), not {seen_by_natd}: {after:?}");
    assert!(forwarded >= 100, "the client's packets after the Initials were translated in XDP: forwarded_in grew by {forwarded}");
    assert_eq!(after.assembling, 0, "{after:?}");
    let forwards = lab.forwards().unwrap();
    let quic = forwards.iter().find(|f| f.name == "quic/443").expect("natd forwards shows the quic port");
    assert_eq!(quic.protocol, "udp");
    // What the README shows (`-- --nocapture`).
    let text = lab.natd_cli(&["proxies"]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("quic: 3 connections routed and handed to XDP"), "{text}");
    eprintln!("$ natd proxies\n{text}\nthe 20-request, 2 MB connection: natd read {seen_by_natd} datagrams, XDP forwarded {forwarded} inbound");
}

/// An unknown name goes to the default; without one it is refused (the
/// client gives up) and counted; a reload adding a name routes it.
#[test]
fn quic_unknown_names_go_to_the_default_or_are_refused_and_a_reload_adds_a_name() {
    require_root!();
    let mut lab = NatLab::new(2, false).unwrap();
    let _servers = [quic_on(&lab, 0, "quic-blue"), quic_on(&lab, 1, "quic-red")];
    let (h0, h1) = (host_addr(0), host_addr(1));
    let config = |extra: &str| {
        format!(
            "[[proxy]]\nport = 443\nkind = \"tls\"\nquic = true\nnames = {{ \"blue.example\" = \"{h0}:443\"{extra} }}\n\
             [[proxy]]\nport = 4443\nkind = \"tls\"\nquic = true\nnames = {{ \"blue.example\" = \"{h0}:443\" }}\ndefault = \"{h1}:443\"\n"
        )
    };
    lab.start_natd_with_config(&config("")).unwrap();

    let other = connect(&lab, 4443, "other.example", 1, 0, 0, false).unwrap();
    assert!(other[0].starts_with("quic-red "), "an unknown name reaches the default: {other:?}");
    assert!(connect(&lab, 443, "red.example", 1, 0, 0, false).is_err(), "no default: refused");
    let view = proxy_view(&lab, 443);
    assert!(view.refused_by.get("unknown_name").copied().unwrap_or_default() >= 1, "{view:?}");
    assert_eq!(view.quic.as_ref().unwrap().routed, 0, "{view:?}");

    lab.config_file(&config(&format!(", \"red.example\" = \"{h1}:443\""))).unwrap();
    let reload = lab.natd_cli(&["reload"]).unwrap();
    assert!(reload.status.success(), "{reload:?}");
    let red = connect(&lab, 443, "red.example", 1, 0, 0, false).unwrap();
    assert!(red[0].starts_with(&format!("quic-red {SERVER}:")), "the name the reload added: {red:?}");
}
