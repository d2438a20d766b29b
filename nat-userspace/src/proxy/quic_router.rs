//! QUIC on a TLS proxy's port (`quic = true`): each new connection is
//! routed by the SNI of its client Initial packets, then handed to the
//! datapath as a forwarded flow, so every later packet of it is translated
//! in XDP and the server sees the client's own address.
//!
//! The way of a connection:
//! 1. The client's first Initials reach natd's UDP socket: the port is
//!    pinned (`port_flags::PINNED`), so the datapath passes the first
//!    packets of flows it does not know to the kernel.
//! 2. natd derives the Initial keys from the Destination Connection ID
//!    (RFC 9001 §5.2), decrypts, reassembles the CRYPTO stream over as many
//!    Initials as the ClientHello takes (`quic::QuicClientHelloAssembler`),
//!    and picks a server of the name's set as the TCP side does.
//! 3. natd files the flow (client, external:port) -> server in the
//!    datapath's half-open table (`FlowPins::pin`), then sends the Initials
//!    it holds to the server as the client sent them, the client's address
//!    as their source (a raw socket). From then on the XDP programs
//!    translate the connection both ways; natd sees no more of it.
//! 4. Datagrams of a routed client that were already queued on natd's
//!    socket when the flow was filed are relayed for `HANDOFF_GRACE`.
//!
//! A connection's address must not change (QUIC migration, RFC 9000 §9):
//! the flow is keyed by the client's address and port, as every forwarded
//! flow is. A client inside the LAN (hairpin) is not routed by name.

use std::{
    collections::HashMap,
    net::{SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::Ordering,
    },
    time::{Duration, Instant},
};

use nat_common::{Endpoint, proto};
use tokio::{net::UdpSocket, time};

use crate::{
    datapath::{FlowPins, PinRefusal},
    nat::{first_packet::KernelSender, sessions::coarse_now_ns},
    packet::udp_packet,
    proxy::{
        quic::{AssemblerLimits, QuicClientHelloAssembler, parse_datagram},
        route::Refusal,
        service::{QuicCounters, Service},
    },
};

/// How long natd relays a routed client's datagrams itself: the ones that
/// were queued on its socket before the datapath had the flow.
const HANDOFF_GRACE: Duration = Duration::from_secs(2);

/// How often unfinished ClientHellos and routed clients are expired.
const SWEEP: Duration = Duration::from_millis(250);

/// A UDP datagram is at most this long.
const MAX_DATAGRAM: usize = 65_535;

/// What the router does to the world: file a flow, send a datagram on a
/// client's behalf. The datapath and a raw socket in natd; a record in the
/// tests.
pub(super) trait Handoff {
    fn pin(&mut self, client: SocketAddrV4, server: SocketAddrV4) -> Result<(), String>;
    fn send(&mut self, client: SocketAddrV4, server: SocketAddrV4, datagram: &[u8]) -> Result<(), String>;
}

/// The real handoff: the datapath's flow tables and a raw socket.
pub(super) struct KernelHandoff {
    pub(super) pins: FlowPins,
    pub(super) sender: KernelSender,
    /// The proxy's external endpoint (UDP).
    pub(super) external: SocketAddrV4,
}

impl Handoff for KernelHandoff {
    fn pin(&mut self, client: SocketAddrV4, server: SocketAddrV4) -> Result<(), String> {
        let remote = Endpoint::new(*client.ip(), client.port(), proto::UDP);
        let external = Endpoint::new(*self.external.ip(), self.external.port(), proto::UDP);
        match self.pins.pin(&remote, &external, server, coarse_now_ns()) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(PinRefusal::NotInstalled)) => Err(format!("{}: natd is starting or reloading; the client will retry", PinRefusal::NotInstalled)),
            Ok(Err(refusal)) => Err(refusal.to_string()),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    fn send(&mut self, client: SocketAddrV4, server: SocketAddrV4, datagram: &[u8]) -> Result<(), String> {
        let packet = udp_packet(client, server, datagram).map_err(|e| e.to_string())?;
        self.sender.send_packet(&packet).map_err(|e| format!("{e:#}"))
    }
}

/// One client's ClientHello being reassembled.
struct Assembly {
    assembler: QuicClientHelloAssembler,
    /// Its datagrams as received, to send on once routed.
    datagrams: Vec<Vec<u8>>,
    started: Instant,
}

/// A client whose connection was handed to the datapath.
struct Handed {
    server: SocketAddrV4,
    until: Instant,
}

/// The state of one QUIC proxy's socket.
pub(super) struct Router<H> {
    service: Arc<Service>,
    handoff: H,
    /// By client and Destination Connection ID.
    assemblies: HashMap<(SocketAddrV4, Vec<u8>), Assembly>,
    handed: HashMap<SocketAddrV4, Handed>,
}

impl<H: Handoff> Router<H> {
    pub(super) fn new(service: Arc<Service>, handoff: H) -> Self {
        Self { service, handoff, assemblies: HashMap::new(), handed: HashMap::new() }
    }

    fn counters(&self) -> &QuicCounters {
        self.service.quic.as_ref().expect("a QUIC router serves a QUIC proxy")
    }

    /// One datagram from `client`.
    pub(super) fn datagram(&mut self, client: SocketAddrV4, datagram: &[u8], now: Instant) {
        let counters = self.counters();
        counters.datagrams.fetch_add(1, Ordering::Relaxed);
        if let Some(handed) = self.handed.get(&client).filter(|h| now < h.until) {
            let server = handed.server;
            self.relay(client, server, datagram);
            return;
        }
        let parsed = match parse_datagram(datagram) {
            Ok(parsed) => parsed,
            Err(e) => {
                counters.ignored.fetch_add(1, Ordering::Relaxed);
                tracing::trace!("proxy {}: quic datagram from {client} ignored: {e}", self.service.name());
                return;
            }
        };
        let key = (client, parsed.dcid.clone());
        if !self.assemblies.contains_key(&key) {
            let current = self.service.current();
            if self.assemblies.len() >= current.proxy.max_connections as usize {
                self.service.refuse(client.into(), &Refusal::MaxConnections);
                return;
            }
            counters.assembling.fetch_add(1, Ordering::Relaxed);
            let assembly = Assembly { assembler: QuicClientHelloAssembler::new(AssemblerLimits::default()), datagrams: Vec::new(), started: now };
            self.assemblies.insert(key.clone(), assembly);
        }
        let assembly = self.assemblies.get_mut(&key).expect("inserted above");
        assembly.datagrams.push(datagram.to_vec());
        let outcome = assembly.assembler.push_datagram(&parsed);
        let hello = match outcome {
            Ok(None) => return,
            Ok(Some(hello)) => hello,
            Err(e) => {
                self.finish(&key);
                self.service.refuse(client.into(), &Refusal::BadHello(e.to_string()));
                return;
            }
        };
        let assembly = self.finish(&key).expect("present above");
        let current = self.service.current();
        let server = match current.routes.for_name(hello.sni.as_deref()).and_then(|set| current.routes.candidates(set)) {
            Ok(candidates) => {
                let backend = candidates[0];
                backend.total.fetch_add(1, Ordering::Relaxed);
                backend.addr
            }
            Err(refusal) => {
                self.service.refuse(client.into(), &refusal);
                return;
            }
        };
        if let Err(why) = self.handoff.pin(client, server) {
            self.service.refuse(client.into(), &Refusal::Local(format!("filing the flow to {server}: {why}")));
            return;
        }
        self.counters().routed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("proxy {}: quic {client} ({:?}) -> {server}, handed to the datapath", self.service.name(), hello.sni);
        for datagram in &assembly.datagrams {
            self.relay(client, server, datagram);
        }
        self.handed.insert(client, Handed { server, until: now + HANDOFF_GRACE });
    }

    /// Ends an assembly (routed, refused or expired).
    fn finish(&mut self, key: &(SocketAddrV4, Vec<u8>)) -> Option<Assembly> {
        let assembly = self.assemblies.remove(key)?;
        self.counters().assembling.fetch_sub(1, Ordering::Relaxed);
        Some(assembly)
    }

    fn relay(&mut self, client: SocketAddrV4, server: SocketAddrV4, datagram: &[u8]) {
        match self.handoff.send(client, server, datagram) {
            Ok(()) => {
                self.counters().relayed.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => tracing::warn!("proxy {}: sending {client}'s quic datagram to {server}: {why}", self.service.name()),
        }
    }

    /// Drops ClientHellos not whole within `hello_timeout`, and routed
    /// clients past `HANDOFF_GRACE`.
    pub(super) fn sweep(&mut self, now: Instant) {
        let timeout = self.service.current().proxy.hello_timeout;
        let late: Vec<(SocketAddrV4, Vec<u8>)> =
            self.assemblies.iter().filter(|(_, a)| now.duration_since(a.started) >= timeout).map(|(key, _)| key.clone()).collect();
        for key in late {
            self.finish(&key);
            self.service.refuse(SocketAddr::V4(key.0), &Refusal::HelloTimeout);
        }
        self.handed.retain(|_, handed| now < handed.until);
    }
}

/// Serves one QUIC proxy's socket until natd stops.
pub(super) async fn serve(service: Arc<Service>, socket: UdpSocket, handoff: KernelHandoff) {
    let mut router = Router::new(service, handoff);
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let mut sweep = time::interval(SWEEP);
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buffer) => match received {
                Ok((len, SocketAddr::V4(client))) => router.datagram(client, &buffer[..len], Instant::now()),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("proxy {}: reading its quic socket: {e}", router.service.name());
                    time::sleep(SWEEP).await;
                }
            },
            _ = sweep.tick() => router.sweep(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        config::{HealthCheck, HealthKind, Proxy, ProxyKind, ProxyRoute},
        proxy::{quic::tests::client_initials, service::QuicView},
    };

    /// What the router did, in order.
    #[derive(Default)]
    struct Record {
        pins: Vec<(SocketAddrV4, SocketAddrV4)>,
        sent: Vec<(SocketAddrV4, SocketAddrV4, Vec<u8>)>,
        refuse_pins: bool,
    }

    impl Handoff for Record {
        fn pin(&mut self, client: SocketAddrV4, server: SocketAddrV4) -> Result<(), String> {
            if self.refuse_pins {
                return Err("not installed".into());
            }
            self.pins.push((client, server));
            Ok(())
        }

        fn send(&mut self, client: SocketAddrV4, server: SocketAddrV4, datagram: &[u8]) -> Result<(), String> {
            self.sent.push((client, server, datagram.to_vec()));
            Ok(())
        }
    }

    const BLUE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 10), 443);
    const DEFAULT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 14), 443);
    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 50000);

    fn router(default: bool, max_connections: u32) -> Router<Record> {
        let proxy = Proxy {
            name: "tls/443".into(),
            kind: ProxyKind::Tls,
            port: 443,
            external_ip: None,
            routes: vec![ProxyRoute { pattern: "blue.example".into(), servers: vec![BLUE] }],
            default: default.then(|| vec![DEFAULT]),
            proxy_protocol: None,
            server_protocol: Default::default(),
            hello_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_connections,
            quic: true,
            health: HealthCheck::of_kind(HealthKind::None),
        };
        Router::new(Arc::new(Service::detached(&proxy)), Record::default())
    }

    fn refused(router: &Router<Record>, key: &str) -> u64 {
        router.service.view().refused_by[key]
    }

    #[test]
    fn a_hello_over_several_initials_is_routed_once_whole_and_every_initial_goes_on_in_order() {
        let mut router = router(false, 10);
        let initials = client_initials("Blue.Example", &[7; 8], true);
        assert!(initials.len() > 3, "a large ClientHello spans several Initials");
        let now = Instant::now();
        for (i, initial) in initials.iter().enumerate() {
            router.datagram(CLIENT, initial, now);
            let routed = i + 1 == initials.len();
            assert_eq!(router.handoff.pins.len(), usize::from(routed), "pinned only once the ClientHello is whole (after {} of {})", i + 1, initials.len());
        }
        assert_eq!(router.handoff.pins, [(CLIENT, BLUE)]);
        let sent: Vec<&Vec<u8>> = router.handoff.sent.iter().map(|(c, s, d)| {
            assert_eq!((*c, *s), (CLIENT, BLUE), "sent from the client's address to its server");
            d
        }).collect();
        assert_eq!(sent, initials.iter().collect::<Vec<_>>(), "every Initial, as the client sent it, in order");
        let view = router.counters().view();
        assert_eq!(view, QuicView { datagrams: initials.len() as u64, routed: 1, relayed: initials.len() as u64, ignored: 0, assembling: 0 });

        // A datagram of the client queued before the datapath had the flow
        // follows the Initials; after the grace natd reads it as a stranger.
        router.datagram(CLIENT, b"\x40short header", now + Duration::from_millis(100));
        assert_eq!(router.handoff.sent.last().unwrap().2, b"\x40short header");
        router.sweep(now + HANDOFF_GRACE);
        router.datagram(CLIENT, b"\x40short header", now + HANDOFF_GRACE);
        assert_eq!(router.counters().view().ignored, 1, "not a client Initial: ignored");
        assert_eq!(router.handoff.sent.len(), initials.len() + 1);
    }

    #[test]
    fn unknown_names_go_to_the_default_or_are_refused_without_a_pin() {
        let mut with_default = router(true, 10);
        with_default.datagram(CLIENT, &client_initials("red.example", &[1; 8], false)[0], Instant::now());
        assert_eq!(with_default.handoff.pins, [(CLIENT, DEFAULT)]);

        let mut without = router(false, 10);
        without.datagram(CLIENT, &client_initials("red.example", &[1; 8], false)[0], Instant::now());
        assert!(without.handoff.pins.is_empty() && without.handoff.sent.is_empty());
        assert_eq!(refused(&without, "unknown_name"), 1);

        let mut unfiled = router(false, 10);
        unfiled.handoff.refuse_pins = true;
        unfiled.datagram(CLIENT, &client_initials("blue.example", &[1; 8], false)[0], Instant::now());
        assert!(unfiled.handoff.sent.is_empty(), "nothing is sent for a flow the datapath does not have");
        assert_eq!((refused(&unfiled, "local_error"), unfiled.counters().view().routed), (1, 0));
    }

    #[test]
    fn unfinished_hellos_expire_and_are_bounded_by_max_connections() {
        let mut router = router(false, 2);
        let now = Instant::now();
        for (i, port) in [1000u16, 1001, 1002].into_iter().enumerate() {
            let first = &client_initials("blue.example", &[i as u8; 8], true)[0];
            router.datagram(SocketAddrV4::new(*CLIENT.ip(), port), first, now);
        }
        assert_eq!(router.counters().view().assembling, 2, "max_connections ClientHellos at a time");
        assert_eq!(refused(&router, "max_connections"), 1);
        router.sweep(now + Duration::from_secs(4));
        assert_eq!(router.counters().view().assembling, 2, "within hello_timeout");
        router.sweep(now + Duration::from_secs(5));
        assert_eq!((router.counters().view().assembling, refused(&router, "hello_timeout")), (0, 2));
        router.datagram(CLIENT, b"garbage", now);
        assert_eq!(router.counters().view().ignored, 1);
        assert!(router.handoff.pins.is_empty());
    }
}
