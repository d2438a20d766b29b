//! A burst of new flows that natd sets up itself: it keeps answering on its
//! control socket meanwhile.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nat_tests::{
    natlab::{NatLab, SERVER, host_addr, in_ns},
    packet::Frame,
    require_root,
};
use nat_userspace::nat::first_packet::KernelSender;

use super::SERVICE_PORT;

/// First packets of the burst: one UDP datagram each from host 0's ports
/// 1024 and up. Inside ports in natd's range are kept when free, which
/// natd decides itself: every one is a hand-off until natd falls behind
/// and the datapath claims queued ports instead.
const FLOWS: u32 = 50_000;
/// The longest `natd stats` may take while the burst is handled: a few
/// batches of hand-offs and the CLI's own start. Draining the whole ring
/// in one go kept it waiting for as long as the burst lasted (seconds).
const MAX_ANSWER: Duration = Duration::from_millis(1500);

/// natd handles the miss ring a batch at a time and serves control requests
/// between batches: `natd stats` answers within `MAX_ANSWER` all through a
/// burst natd sets up itself, and the burst is set up whole and soon, its
/// last flows too, when natd's ports are nearly all taken.
#[test]
fn natd_answers_its_control_socket_while_it_sets_up_a_burst() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    // natd's range below the gateway namespace's own ephemeral ports.
    lab.gw.sysctl("net.ipv4.ip_local_port_range=61000 65000").unwrap();
    lab.start_natd_with_config("port_range = \"1024-60999\"\nports_per_host = 0\n").unwrap();
    let created_before = lab.stats().unwrap().get("mappings_created").unwrap();
    let inside = host_addr(0);
    let packets: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| Frame::udp((inside, 1024 + i as u16), (SERVER, SERVICE_PORT)).build()[14..].to_vec())
        .collect();
    let sending = Arc::new(AtomicBool::new(true));
    let sender = {
        let sending = sending.clone();
        in_ns(&lab.hosts[0], move || {
            let raw = KernelSender::new().unwrap();
            for packet in &packets {
                raw.send_packet(packet).unwrap();
            }
            sending.store(false, Ordering::Relaxed);
        })
    };

    // Ask while the burst comes in and until natd has set all of it up.
    let started = Instant::now();
    let (mut answers, mut slowest, mut during_burst) = (0, Duration::ZERO, 0);
    // About a second here; a port allocator that swept a hash set of the
    // taken ports took 29 s, or more than a minute, in one run of four.
    let deadline = Instant::now() + Duration::from_secs(20);
    let created = loop {
        let asked = Instant::now();
        let stats = lab.stats().unwrap_or_else(|e| panic!("natd stats failed during the burst, after {:?}: {e:#}", asked.elapsed()));
        let took = asked.elapsed();
        answers += 1;
        slowest = slowest.max(took);
        let created = stats.get("mappings_created").unwrap() - created_before;
        if sending.load(Ordering::Relaxed) || created < u64::from(FLOWS) {
            during_burst += 1;
        }
        assert!(took < MAX_ANSWER, "natd stats took {took:?} during the burst ({created} of {FLOWS} flows set up)");
        if created >= u64::from(FLOWS) || Instant::now() > deadline {
            break created;
        }
        thread::sleep(Duration::from_millis(20));
    };
    sender.join().unwrap();
    assert_eq!(created, u64::from(FLOWS), "the burst was not set up whole in 20 s: {:?}", lab.stats().unwrap());
    // Enough answers to have asked while natd was busy, not only after.
    assert!(during_burst >= 3, "only {during_burst} of {answers} answers came before the burst was set up");
    eprintln!("{FLOWS} flows set up in {:?}; {answers} answers, {during_burst} of them during the burst, the slowest in {slowest:?}", started.elapsed());
}
