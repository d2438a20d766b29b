//! The forwarded flows and the backend pick: a flow stays on its backend
//! for its life; a new one picks from the forward's Maglev table (katran,
//! cilium `lb4_local`); half-open flows live in a bounded LRU and move to
//! the non-evicting table once the remote answers the server.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use nat_common::{
    Endpoint, tcp_flags,
    forward::{Backend, Flow, FlowKey, ForwardPort, MAGLEV_SIZE, static_backend, MAX_BACKENDS, MAX_FORWARD_FLOWS, MAX_FORWARD_PORTS, MAX_FORWARDS, MAX_PENDING_FLOWS, NO_BACKEND, Signals, backend_state},
    proto,
};

use crate::atomic::atomic_add;

/// External endpoint -> the forward it belongs to (one entry per port of a
/// range).
#[map]
static FORWARDS: HashMap<Endpoint, ForwardPort> = HashMap::with_max_entries(MAX_FORWARD_PORTS, 0);

/// The backends of every forward, `forward * MAX_BACKENDS + slot`.
#[map]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_FORWARDS * MAX_BACKENDS, 0);

/// Every forward's Maglev table, `forward * MAGLEV_SIZE + slot`: a backend
/// slot, or `NO_BACKEND`. Built by natd over the backends that are up.
#[map]
static MAGLEV: Array<u32> = Array::with_max_entries(MAX_FORWARDS * MAGLEV_SIZE, 0);

/// Established forwarded flows: never evicted.
#[map]
static FLOWS: HashMap<FlowKey, Flow> = HashMap::with_max_entries(MAX_FORWARD_FLOWS, 0);

/// Half-open forwarded flows: a SYN or a datagram the server has not been
/// answered past yet. LRU, so a flood of spoofed sources evicts only these.
#[map]
static PENDING: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(MAX_PENDING_FLOWS, 0);

/// Passive health signals per backend, as `BACKENDS`.
#[map]
static SIGNALS: Array<Signals> = Array::with_max_entries(MAX_FORWARDS * MAX_BACKENDS, 0);

/// `Flow::tcp_flags_out` bit for "the server has sent on this flow", kept
/// beside the TCP flags (it is not one of `tcp_flags::TRACKED`): what a UDP
/// flow is promoted on.
const SERVER_SPOKE: u8 = 0x80;

/// The forward an external endpoint belongs to, if any.
#[inline(always)]
pub fn forward_port(external: &Endpoint) -> Option<ForwardPort> {
    // SAFETY: a value of the map, copied.
    FORWARDS.get_ptr(*external).map(|port| unsafe { *port })
}

/// A backend, by forward and slot.
#[inline(always)]
pub fn backend(forward: u32, slot: u32) -> Option<Backend> {
    if forward >= MAX_FORWARDS || slot >= MAX_BACKENDS {
        return None;
    }
    BACKENDS.get(forward * MAX_BACKENDS + slot).copied()
}

/// Where a forwarded packet goes: its flow's backend, picked now or before.
pub struct Routed {
    pub backend: Backend,
    /// The flow's port offset into the forward's range.
    pub offset: u16,
    /// The flow is new: its backend was just picked.
    pub new: bool,
    /// The flow's backend was down and it moved to another.
    pub moved: bool,
}

/// The backend a forward's Maglev table gives the remote of `key`, if it is
/// up.
#[inline(always)]
fn pick(key: &FlowKey, forward: u32) -> Option<(u32, Backend)> {
    let index = forward * MAGLEV_SIZE + key.pick_hash() % MAGLEV_SIZE;
    let slot = *MAGLEV.get(index)?;
    if slot == NO_BACKEND {
        return None;
    }
    let backend = backend(forward, slot)?;
    (backend.state == backend_state::UP).then_some((slot, backend))
}

/// What an inbound packet of a flow to a forwarded port gets.
pub enum Inbound {
    /// Its backend.
    Routed(Routed),
    /// No backend of its forward is up.
    NoBackend,
    /// No flow is tracked and the port is not forwarded.
    NotForwarded,
}

/// The backend of an inbound packet of the flow `key` (TCP flags `flags`,
/// 0 for UDP): its flow's, or a new pick from the forward `port()` names.
/// A flow whose backend is down keeps it for the rest of a TCP connection,
/// but a new SYN (the client retrying) or a UDP datagram picks another.
///
/// The established flow is looked up first, and the forward only when there
/// is none, so a packet of an established flow pays one hash lookup, as a
/// mapping's does (natd removes a forward's flows with the forward).
#[inline(always)]
pub fn route_inbound(key: &FlowKey, flags: u8, now: u64, port: impl FnOnce() -> Option<ForwardPort>) -> Inbound {
    let retry = key.proto == proto::UDP || flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    let (flow, established) = match FLOWS.get_ptr_mut(*key) {
        Some(flow) => (flow, true),
        None => {
            // Before the half-open flows: the gateway's own traffic pays two
            // lookups, not three.
            let Some(port) = port() else {
                return Inbound::NotForwarded;
            };
            match PENDING.get_ptr_mut(*key) {
                Some(flow) => (flow, false),
                // natd routes the port's new flows (a QUIC proxy): the
                // packet goes to its socket.
                None if port.is_pinned() => return Inbound::NotForwarded,
                None => return new_flow(key, &port, flags, now),
            }
        }
    };
    // SAFETY: a value of the map; its fields are written racily by design
    // (timestamps, flag bits, a re-pick both CPUs would make alike).
    let flow = unsafe { &mut *flow };
    let forward = u32::from(flow.forward);
    let mut moved = false;
    let (slot, backend) = match backend(forward, u32::from(flow.backend)) {
        // A backend taken out of the forward (EMPTY) loses its flows whatever
        // the packet; one that is down only to a retry.
        Some(backend) if backend.keeps_flows() || (!retry && backend.state != backend_state::EMPTY) => (u32::from(flow.backend), backend),
        _ => {
            let Some((slot, backend)) = pick(key, forward) else {
                return Inbound::NoBackend;
            };
            flow.backend = slot as u16;
            moved = true;
            (slot, backend)
        }
    };
    if now.wrapping_sub(flow.last_seen_ns) >= nat_common::LAST_SEEN_GRANULARITY_NS {
        flow.last_seen_ns = now;
    }
    record_flags(&mut flow.tcp_flags_in, flags);
    // The remote answered the server (a TCP client's ACK of the SYN-ACK,
    // a UDP client's next datagram after a reply): the flow is real, and
    // moves to the table floods cannot reach.
    if !established && flow.tcp_flags_out & SERVER_SPOKE != 0 && (key.proto != proto::TCP || flags & tcp_flags::ACK != 0) {
        let copy = *flow;
        if FLOWS.insert(*key, copy, BPF_NOEXIST as u64).is_ok() {
            let _ = PENDING.remove(*key);
        }
    }
    if moved {
        count(forward, slot, Signal::Flow);
        if key.proto == proto::TCP {
            count(forward, slot, Signal::Syn);
        }
    }
    Inbound::Routed(Routed { backend, offset: flow.offset, new: false, moved })
}

/// A flow's first packet: picks its backend and files it half-open.
#[inline(always)]
fn new_flow(key: &FlowKey, port: &ForwardPort, flags: u8, now: u64) -> Inbound {
    let Some((slot, backend)) = pick(key, port.forward) else {
        return Inbound::NoBackend;
    };
    let mut flow = Flow { last_seen_ns: now, forward: port.forward as u16, backend: slot as u16, offset: port.offset, tcp_flags_in: 0, tcp_flags_out: 0 };
    record_flags(&mut flow.tcp_flags_in, flags);
    // BPF_ANY: another CPU's insert for the same first packet picked alike.
    let _ = PENDING.insert(*key, flow, BPF_ANY as u64);
    count(port.forward, slot, Signal::Flow);
    if flags & tcp_flags::SYN != 0 {
        count(port.forward, slot, Signal::Syn);
    }
    Inbound::Routed(Routed { backend, offset: port.offset, new: true, moved: false })
}

/// A packet from a backend on the flow `key` (the server its static
/// mapping's `session` names): refreshes the flow, or files one the server
/// opens itself from its forwarded port, and counts what the passive health
/// checks learn from it (a SYN-ACK answers; an RST before the handshake
/// refuses).
///
/// A BPF subprogram of its own: inlined at each session refresh it
/// multiplied the paths the verifier walks (only backends' packets pay the
/// call), 50k fewer instructions verified in `nat_lan`. Its arguments are
/// scalars and a plain key.
#[inline(never)]
pub fn track_outbound(key: &FlowKey, session: u32, flags: u8, now: u64) {
    let (forward, slot, offset) = static_backend(session);
    let flow = match FLOWS.get_ptr_mut(*key) {
        Some(flow) => flow,
        None => match PENDING.get_ptr_mut(*key) {
            Some(flow) => flow,
            None => {
                let flow = Flow { last_seen_ns: now, forward: forward as u16, backend: slot as u16, offset, tcp_flags_in: 0, tcp_flags_out: SERVER_SPOKE };
                let _ = PENDING.insert(*key, flow, BPF_ANY as u64);
                return;
            }
        },
    };
    // SAFETY: as in `route_inbound`.
    let flow = unsafe { &mut *flow };
    if now.wrapping_sub(flow.last_seen_ns) >= nat_common::LAST_SEEN_GRANULARITY_NS {
        flow.last_seen_ns = now;
    }
    let opening = flow.tcp_flags_in & tcp_flags::ACK == 0;
    if key.proto == proto::TCP && opening {
        if flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN | tcp_flags::ACK {
            count(forward, slot, Signal::SynAck);
        } else if flags & tcp_flags::RST != 0 {
            count(forward, slot, Signal::Reset);
        }
    }
    record_flags(&mut flow.tcp_flags_out, flags | SERVER_SPOKE);
}

/// The flow `key`, if it is tracked (established or half-open), copied.
#[inline(always)]
pub fn flow(key: &FlowKey) -> Option<Flow> {
    // SAFETY: values of the maps, copied.
    let flow = FLOWS.get_ptr(*key).or_else(|| PENDING.get_ptr(*key))?;
    Some(unsafe { *flow })
}

/// A backend refused a flow with an ICMP Destination Unreachable.
#[inline(always)]
pub fn count_unreachable(forward: u32, slot: u32) {
    count(forward, slot, Signal::Unreachable);
}

/// One of the `Signals` counters.
enum Signal {
    Flow,
    Syn,
    SynAck,
    Reset,
    Unreachable,
}

/// Adds one to a backend's `signal` counter.
#[inline(always)]
fn count(forward: u32, slot: u32, signal: Signal) {
    if forward >= MAX_FORWARDS || slot >= MAX_BACKENDS {
        return;
    }
    let Some(signals) = SIGNALS.get_ptr_mut(forward * MAX_BACKENDS + slot) else {
        return;
    };
    // SAFETY: a value of the map; only atomic adds write it.
    let counter = unsafe {
        match signal {
            Signal::Flow => &raw mut (*signals).flows,
            Signal::Syn => &raw mut (*signals).syns,
            Signal::SynAck => &raw mut (*signals).syn_acks,
            Signal::Reset => &raw mut (*signals).resets,
            Signal::Unreachable => &raw mut (*signals).unreachables,
        }
    };
    atomic_add(counter, 1);
}

/// Adds the TCP flags that change a flow's state to `seen`, writing only
/// when one is new.
#[inline(always)]
fn record_flags(seen: &mut u8, flags: u8) {
    let flags = flags & (tcp_flags::TRACKED | SERVER_SPOKE);
    if *seen & flags != flags {
        *seen |= flags;
    }
}
