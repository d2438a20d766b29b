//! The loaded XDP object: programs, and typed access to its maps.
//!
//! Everything that touches the kernel side goes through here, so the daemon
//! and the tests share one set of rules (pair insertion order, rollback).

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, Map, MapData, MapInfo, PerCpuArray, PerCpuValues, ProgramArray, Queue, RingBuf, lpm_trie::{Key as LpmKey, LpmTrie}},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use nat_common::{
    Endpoint, FragKey, FragState, FreePort, crc32c, GatewayConfig, HostKey, INBOUND_PORTS, InboundPort, Liveness, proto, free_queue_name, MAX_PERMITS, MAX_SESSIONS, Mapping, PermitKey, Prefix, Reason, map_names, program_names, sctp_program_index, esp_program_index,
    esp::{EspKey, EspTarget},
};

use crate::EBPF_OBJECT;

mod forwards;
pub use forwards::{FlowTable, ForwardTables, StaticMapping};
mod pins;
pub use pins::{FlowPins, PinRefusal};
mod state;
pub use state::{OWN_BPFFS, PinRoot, STATE_LAYOUT, StateDir, XdpLinkInfo, link_info, netns_cookie, open_pinned, remove_handover_file};

/// How often a program load is tried when the verifier answers EAGAIN.
const LOAD_ATTEMPTS: u32 = 5;

/// The entries of one ESP SA map (`esp_sas`).
pub type EspSaEntries = Vec<(EspKey, EspTarget)>;

/// Every program of the object, in load order: the main ones, then those
/// they hand SCTP and ESP packets to (`file_tail_called_programs`).
pub const PROGRAMS: [&str; 6] = [program_names::LAN, program_names::WAN, program_names::LAN_SCTP, program_names::WAN_SCTP, program_names::LAN_ESP, program_names::WAN_ESP];

/// `BPF_NOEXIST`: the update fails if the key is already there.
const BPF_NOEXIST: u64 = 1;

/// Which of the two programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Lan,
    Wan,
}

impl Side {
    pub const fn program_name(self) -> &'static str {
        match self {
            Side::Lan => program_names::LAN,
            Side::Wan => program_names::WAN,
        }
    }
}

type MappingMap<'a> = HashMap<&'a mut MapData, Endpoint, Mapping>;

pub struct Datapath {
    ebpf: Ebpf,
    liveness: SharedArray<Liveness>,
    /// `INBOUND`'s entries as the u64s they are stored as (`InboundPort::bits`).
    inbound: SharedArray<u64>,
    /// `DAEMON_ASLEEP`'s one entry.
    asleep: SharedArray<u32>,
    /// The settings in CONFIG: where `INBOUND`'s entries are (the pool).
    config: GatewayConfig,
    /// Entries the PERMITS table was made with: 1 when no protocol filtered
    /// by remote at load (the table takes no memory then).
    permits: u32,
    /// Entries `OUTBOUND` and `LIVENESS` were made with: the sessions the
    /// datapath holds.
    sessions: u32,
    /// Where the maps and links are pinned, when they outlive natd.
    state: Option<StateDir>,
    /// Links attached without a pin, which go with `self`.
    unpinned: [Option<XdpLinkId>; 2],
    /// Whether the pins stay when `self` goes: from the start for an
    /// adopted datapath, once natd serves for a new one (a start that fails
    /// before leaves nothing behind).
    pins_kept: bool,
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if self.state.is_some()
            && !self.pins_kept
            && let Err(e) = self.unpin_all()
        {
            tracing::warn!("removing the pins of a datapath that never served: {e:#}");
        }
    }
}

/// What `Datapath::attach` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link, in this mode ("native" or "generic").
    New(&'static str),
    /// The program of the pinned link already attached to the interface was
    /// replaced (`bpf_link_update`): no packet met the interface without a
    /// program. The link keeps the mode it was made in.
    Replaced(&'static str),
}

impl Attached {
    pub const fn mode(self) -> &'static str {
        match self {
            Attached::New(mode) | Attached::Replaced(mode) => mode,
        }
    }
}

const fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Skb => "generic",
        _ => "native",
    }
}

const fn side_index(side: Side) -> usize {
    match side {
        Side::Lan => 0,
        Side::Wan => 1,
    }
}

impl Datapath {
    /// Loads the object and both programs into the kernel (nothing attached
    /// yet), with room for filtering permits whatever the configuration.
    pub fn load() -> Result<Self> {
        Self::load_with(MAX_PERMITS, MAX_SESSIONS, None, false)
    }

    /// Loads for `config`: the PERMITS map takes memory only if a protocol
    /// filters by remote. With `state`, every map is pinned there, so the
    /// datapath outlives natd; with `adopt`, the maps pinned there already
    /// (checked against this build's layout) are the ones the new
    /// programs use: sessions, free-port queues, clock and counters carry
    /// over. `sessions`: the size of `OUTBOUND` and `LIVENESS`
    /// (`max_sessions`); an adopted datapath keeps the size it was made
    /// with (`session_capacity` says which).
    pub fn load_for(config: &GatewayConfig, sessions: u32, state: Option<StateDir>, adopt: bool) -> Result<Self> {
        Self::load_with(if config.filters_by_remote() { MAX_PERMITS } else { 1 }, sessions, state, adopt)
    }

    /// A datapath whose session tables hold `sessions` (benchmarks of the
    /// table's size).
    #[cfg(feature = "testing")]
    pub fn load_with_sessions(sessions: u32) -> Result<Self> {
        Self::load_with(MAX_PERMITS, sessions, None, false)
    }

    fn load_with(mut permits: u32, mut sessions: u32, state: Option<StateDir>, adopt: bool) -> Result<Self> {
        let object = aya_obj::Object::parse(EBPF_OBJECT).context("parsing the embedded eBPF object")?;
        // The object's own sections (.rodata, .bss) belong to its build.
        let names: Vec<&String> = object.maps.keys().filter(|name| !name.starts_with('.')).collect();
        let mut loader = EbpfLoader::new();
        let mut carried_counters = None;
        if let Some(state) = &state {
            if adopt {
                check_layout(&object, state)?;
                carried_counters = carry_counters(state)?;
                // As made by the natd that pinned it.
                permits = MapInfo::from_pin(state.map_pin(map_names::PERMITS))?.max_entries();
                sessions = MapInfo::from_pin(state.map_pin(map_names::LIVENESS))?.max_entries();
            }
            for name in &names {
                loader.map_pin_path(name.as_str(), state.map_pin(name));
            }
        }
        // The test seam of the upgrade test (nat-ebpf's PROGRAM_MARK).
        let mark = std::env::var("NATD_PROGRAM_MARK").ok().and_then(|text| text.parse::<u32>().ok());
        if let Some(mark) = &mark {
            loader.override_global("PROGRAM_MARK", mark, true);
        }
        let mut ebpf = loader
            .map_max_entries(map_names::PERMITS, permits)
            // The forwards' static mappings (one per server, no session
            // slot) share OUTBOUND with the sessions, as at the default size.
            // Not more than `sessions`: the kernel gives a hash map a bucket
            // array of the next power of two, and its spread over memory is
            // what a packet pays at many flows (issue 16).
            .map_max_entries(map_names::OUTBOUND, sessions)
            .map_max_entries(map_names::LIVENESS, sessions)
            .load(EBPF_OBJECT)
            .context("loading the eBPF object into the kernel (needs root or CAP_BPF + CAP_NET_ADMIN)")?;
        if let Some(counters) = carried_counters {
            let mut array: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(ebpf.map_mut(map_names::COUNTERS).ok_or_else(|| anyhow!("COUNTERS missing from the eBPF object"))?)?;
            for (reason, values) in counters.into_iter().enumerate() {
                array.set(reason as u32, values, 0).context("writing the carried counters back")?;
            }
        }
        let liveness = SharedArray::map(&ebpf, map_names::LIVENESS, sessions)?;
        let inbound = SharedArray::map(&ebpf, map_names::INBOUND, INBOUND_PORTS)?;
        let asleep = SharedArray::map(&ebpf, map_names::DAEMON_ASLEEP, 1)?;
        // An adopted datapath's settings: its INBOUND entries are where its pool put them.
        let configs: Array<&MapData, GatewayConfig> = Array::try_from(ebpf.map(map_names::CONFIG).ok_or_else(|| anyhow!("CONFIG missing from the eBPF object"))?)?;
        let config = configs.get(&0, 0).context("reading CONFIG")?;
        let mut datapath = Self { ebpf, liveness, inbound, asleep, config, permits, sessions, state, unpinned: [None, None], pins_kept: adopt };
        datapath.fill_sctp_tables()?;
        for name in PROGRAMS {
            let program = datapath.named_program_mut(name)?;
            // The verifier gives up with EAGAIN when a signal is pending for
            // the loading thread; libbpf retries such loads, and so does this.
            let mut attempts = 0;
            let loaded = loop {
                attempts += 1;
                match program.load() {
                    Err(ProgramError::LoadError { io_error, .. })
                        if io_error.raw_os_error() == Some(libc::EAGAIN) && attempts < LOAD_ATTEMPTS => {}
                    other => break other,
                }
            };
            loaded.map_err(verifier_error).with_context(|| format!("the kernel verifier rejected program {name}"))?;
        }
        datapath.file_tail_called_programs()?;
        Ok(datapath)
    }

    fn program_mut(&mut self, side: Side) -> Result<&mut Xdp> {
        self.named_program_mut(side.program_name())
    }

    fn named_program_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
            .try_into()?)
    }

    pub fn program(&self, side: Side) -> Result<&Xdp> {
        self.named_program(side.program_name())
    }

    /// A program by its name (`nat_common::program_names`).
    pub fn named_program(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?)
    }

    /// Attaches one program to an interface. Without pins the link lives
    /// as long as `self`. With pins: a pinned link already attached to
    /// `ifindex` gets this program in place of its own, atomically
    /// (`bpf_link_update`: an upgrade under traffic); otherwise a new
    /// link is made and pinned, and outlives natd.
    pub fn attach(&mut self, side: Side, ifindex: u32, mode: XdpMode) -> Result<Attached> {
        let what = || format!("attaching {} to ifindex {ifindex} in {} mode", side.program_name(), mode_name(mode));
        let Some(state) = &self.state else {
            let link = self.program_mut(side)?.attach_to_if_index(ifindex, mode).with_context(what)?;
            self.unpinned[side_index(side)] = Some(link);
            return Ok(Attached::New(mode_name(mode)));
        };
        if let Some((pin, pinned_mode)) = state.live_link(side, ifindex) {
            let link = XdpLink::try_from(FdLink::from(PinnedLink::from_pin(&pin)?))?;
            self.program_mut(side)?
                .attach_to_link(link)
                .with_context(|| format!("replacing the program of the pinned link {} (bpf_link_update)", pin.display()))?;
            return Ok(Attached::Replaced(pinned_mode));
        }
        let pin = state.link_pin(side, mode_name(mode));
        let program = self.program_mut(side)?;
        let link = program.attach_to_if_index(ifindex, mode).with_context(what)?;
        let link = FdLink::try_from(program.take_link(link)?)
            .map_err(|e| anyhow!("{e}: this kernel attached XDP through netlink, which has no link to pin (Linux 5.9 has bpf_link for XDP)"))?;
        // The pin holds the link from here: dropping the fd leaves it attached.
        link.pin(&pin).with_context(|| format!("pinning the {} link at {}", side.program_name(), pin.display()))?;
        Ok(Attached::New(mode_name(mode)))
    }

    /// Detaches a side's program attached by `attach` (its pin removed).
    pub fn detach(&mut self, side: Side) -> Result<()> {
        if let Some(state) = &self.state {
            for mode in ["native", "generic"] {
                let _ = std::fs::remove_file(state.link_pin(side, mode));
            }
        }
        if let Some(link) = self.unpinned[side_index(side)].take() {
            self.program_mut(side)?.detach(link).with_context(|| format!("detaching {}", side.program_name()))?;
        }
        Ok(())
    }

    /// From now on the pins stay when natd stops: the datapath serves on.
    pub fn keep_pins(&mut self) {
        self.pins_kept = true;
    }

    /// Where the datapath is pinned, if it outlives natd.
    pub fn state(&self) -> Option<&StateDir> {
        self.state.as_ref()
    }

    /// Gives up the pins, so that the datapath goes with `self` (SIGINT,
    /// and a start that failed before serving): the links are unpinned
    /// and detach when natd's last fd of them closes. Returns what was pinned.
    pub fn unpin_all(&mut self) -> Result<Vec<String>> {
        match self.state.take() {
            Some(state) => state.remove(),
            None => Ok(Vec::new()),
        }
    }

    /// The clock the programs stamp with, as the previous natd last
    /// published it (0 if none did).
    pub fn clock(&self) -> Result<u64> {
        let array: Array<&MapData, u64> = Array::try_from(self.map(map_names::CLOCK)?)?;
        Ok(array.get(&0, 0)?)
    }

    /// Empties the free-port queues (an adopted datapath's, whose ports the
    /// new natd's allocator does not know). Returns how many were queued.
    pub fn drain_free_queues(&mut self) -> Result<usize> {
        let mut drained = 0;
        for proto_nr in nat_common::proto::ALL {
            for parity in [0u16, 1] {
                let name = free_queue_name(proto_nr, parity);
                let mut queue: Queue<&mut MapData, FreePort> = Queue::try_from(self.map_mut(name)?)?;
                // Bounded: a queue holds at most its capacity.
                for _ in 0..nat_common::FREE_QUEUE_CAPACITY {
                    if queue.pop(0).is_err() {
                        break;
                    }
                    drained += 1;
                }
            }
        }
        Ok(drained)
    }

    /// natd's side of the quota count, as the previous natd left it.
    pub fn host_returns(&self) -> Result<Vec<(HostKey, u64)>> {
        let map: HashMap<&MapData, HostKey, u64> = HashMap::try_from(self.map(map_names::HOST_RETURNS)?)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Whether the PERMITS table has room for filtering by remote: it was
    /// made with room when the settings at load filtered by remote.
    pub const fn can_filter_by_remote(&self) -> bool {
        self.permits > 1
    }

    /// The sessions `OUTBOUND` and `LIVENESS` hold (`max_sessions` when
    /// they were made).
    pub const fn session_capacity(&self) -> u32 {
        self.sessions
    }

    /// Writes the settings the programs read, with the WAN source screen
    /// derived from them (`GatewayConfig::with_source_screen`).
    ///
    /// A pool other than the one the entries of `INBOUND` were placed by
    /// (an adopted datapath's, started with another `external_ip` list)
    /// moves them to their new places; a session whose external address
    /// left the pool is removed (no entry can hold it).
    pub fn set_config(&mut self, config: GatewayConfig) -> Result<()> {
        let config = config.with_source_screen();
        let moved = self.config.external_addrs_be[..self.config.pool_len as usize] != config.external_addrs_be[..config.pool_len as usize];
        let mut array: Array<&mut MapData, GatewayConfig> = Array::try_from(self.map_mut(map_names::CONFIG)?)?;
        array.set(0, config, 0).context("writing CONFIG")?;
        let old = std::mem::replace(&mut self.config, config);
        if moved && old.pool_len > 0 {
            self.replace_inbound_entries(&old)?;
        }
        Ok(())
    }

    /// Moves every `INBOUND` entry from where the pool of `old` put it to
    /// where the current pool puts it (all taken out first: two addresses
    /// may have swapped places), removing the sessions of addresses the
    /// pool lost.
    fn replace_inbound_entries(&mut self, old: &GatewayConfig) -> Result<()> {
        let mut sessions = Vec::new();
        for entry in self.outbound()?.iter() {
            let (inside, mapping) = entry.context("reading OUTBOUND")?;
            // Forwards' static mappings have no INBOUND entry (the forwards
            // are re-applied from the settings).
            if mapping.flags & nat_common::forward::mapping_flags::FORWARD != 0 {
                continue;
            }
            let external = mapping.target(inside.proto);
            let Some(at) = old.inbound_index(&external) else { continue };
            let bits = self.inbound.get(at)?;
            if InboundPort::from_bits(bits).in_use() && InboundPort::from_bits(bits).session == mapping.session {
                sessions.push((inside, external, bits));
                self.inbound.set(at, 0)?;
            }
        }
        for (inside, external, bits) in sessions {
            match self.config.inbound_index(&external) {
                Some(at) => self.inbound.set(at, bits)?,
                None => {
                    let mut outbound: MappingMap<'_> = HashMap::try_from(self.map_mut(map_names::OUTBOUND)?)?;
                    outbound.remove(&inside).with_context(|| format!("removing the session of {inside:?}, whose external address left the pool"))?;
                }
            }
        }
        Ok(())
    }

    /// Where `external`'s entry is in `INBOUND`, or why it has none.
    fn inbound_index(&self, external: &Endpoint) -> Result<u32> {
        self.config
            .inbound_index(external)
            .ok_or_else(|| anyhow!("{}:{} ({}) is not an external endpoint of the pool in CONFIG", external.addr(), external.port(), proto::name(external.proto)))
    }

    /// Files the loaded SCTP and ESP programs where the main programs hand
    /// those packets to them (tail calls), before anything is attached.
    fn file_tail_called_programs(&mut self) -> Result<()> {
        let arrays = [
            (map_names::SCTP_PROGRAMS, [(sctp_program_index::LAN, program_names::LAN_SCTP), (sctp_program_index::WAN, program_names::WAN_SCTP)]),
            (map_names::ESP_PROGRAMS, [(esp_program_index::LAN, program_names::LAN_ESP), (esp_program_index::WAN, program_names::WAN_ESP)]),
        ];
        for (array, entries) in arrays {
            let mut fds = Vec::new();
            for (index, name) in entries {
                let fd = self.named_program(name)?.fd().with_context(|| format!("program {name} is not loaded"))?.try_clone()?;
                fds.push((index, name, fd));
            }
            let mut programs: ProgramArray<&mut MapData> = ProgramArray::try_from(self.map_mut(array)?)?;
            for (index, name, fd) in &fds {
                programs.set(*index, fd, 0).with_context(|| format!("filing {name} in {array}"))?;
            }
        }
        Ok(())
    }

    /// Fills the table SCTP's O(1) CRC32c update reads
    /// (`crc32c::fill_nibble_table`, 2 MiB), before a program can run: an
    /// entry left zero would leave a rewritten packet's CRC unchanged, so
    /// wrong. A few milliseconds.
    fn fill_sctp_tables(&mut self) -> Result<()> {
        // On the heap, and handed over by reference (a `Box` borrows as its
        // content): 2 MiB would overflow a test thread's stack.
        let mut table: Box<[u32; crc32c::NIBBLE_TABLE_LEN]> =
            vec![0u32; crc32c::NIBBLE_TABLE_LEN].into_boxed_slice().try_into().map_err(|_| anyhow!("nibble table length"))?;
        crc32c::fill_nibble_table(&mut table[..]);
        let mut array: Array<&mut MapData, [u32; crc32c::NIBBLE_TABLE_LEN]> = Array::try_from(self.map_mut(map_names::SCTP_NIBBLES)?)?;
        array.set(0, table, 0).with_context(|| format!("writing {}", map_names::SCTP_NIBBLES))
    }

    /// Publishes the time (CLOCK_MONOTONIC_COARSE, ns) the programs stamp
    /// mappings with and expire cached next hops by.
    pub fn set_clock(&mut self, now_ns: u64) -> Result<()> {
        let mut array: Array<&mut MapData, u64> = Array::try_from(self.map_mut(map_names::CLOCK)?)?;
        array.set(0, now_ns, 0).context("writing CLOCK")?;
        Ok(())
    }

    /// The operator's `wan_drop_sources`: WAN packets from these prefixes are
    /// dropped (the datapath looks only when `GatewayConfig::wan_drop_listed`).
    pub fn set_wan_drop_sources(&mut self, prefixes: &[Prefix]) -> Result<()> {
        let mut trie: LpmTrie<&mut MapData, u32, u8> = LpmTrie::try_from(self.map_mut(map_names::WAN_DROP_SOURCES)?)?;
        for prefix in prefixes {
            // The key's bytes are compared first to last: the address as it
            // sits in the packet, network order.
            trie.insert(&LpmKey::new(u32::from(prefix.len()), prefix.addr_be), 1, 0)
                .with_context(|| format!("adding {}/{} to WAN_DROP_SOURCES", prefix.network(), prefix.len()))?;
        }
        Ok(())
    }

    /// Allows the programs to redirect out of `ifindex`.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<()> {
        let mut ports: DevMapHash<&mut MapData> = DevMapHash::try_from(self.map_mut(map_names::TX_PORTS)?)?;
        ports
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding ifindex {ifindex} to TX_PORTS"))?;
        Ok(())
    }

    /// Stops the programs redirecting out of `ifindex` (an interface that
    /// went away): packets routed there are dropped and counted
    /// (`drop_redirect_failed`).
    pub fn remove_tx_port(&mut self, ifindex: u32) -> Result<()> {
        let mut ports: DevMapHash<&mut MapData> = DevMapHash::try_from(self.map_mut(map_names::TX_PORTS)?)?;
        ports.remove(ifindex).with_context(|| format!("removing ifindex {ifindex} from TX_PORTS"))?;
        Ok(())
    }

    /// Inserts both directions of a mapping: `inside` is translated to
    /// `external` outbound, and back inbound, with their liveness in slot
    /// `session` of LIVENESS (which must not belong to a live session).
    ///
    /// The reverse entry goes in first with NOEXIST, so two inside endpoints can
    /// never claim one external endpoint; if the forward entry then fails, the
    /// reverse one is removed again and nothing is left half-made.
    pub fn insert_pair(&mut self, inside: Endpoint, external: Endpoint, session: u32, now_ns: u64) -> Result<()> {
        let at = self.inbound_index(&external)?;
        if InboundPort::from_bits(self.inbound.get(at)?).in_use() {
            return Err(anyhow!("external endpoint {external:?} is taken"));
        }
        // The liveness holds the inside address the INBOUND entry completes:
        // written before the entry names it.
        self.liveness.set(session, Liveness::of_inside(now_ns, inside.addr_be))?;
        self.inbound.set(at, InboundPort::new(&inside, session).bits())?;
        let mut outbound: MappingMap<'_> = HashMap::try_from(self.map_mut(map_names::OUTBOUND)?)?;
        if let Err(e) = outbound.insert(inside, Mapping::new(external, session), BPF_NOEXIST) {
            self.inbound.set(at, 0)?;
            return Err(e).with_context(|| format!("inside endpoint {inside:?} is mapped already or OUTBOUND is full"));
        }
        Ok(())
    }

    /// Records that an inside endpoint sent to a remote at `now_ns`, as the
    /// LAN program does for the packets it translates: for a first packet
    /// natd translates itself, so the reply passes address(-and-port)-
    /// dependent filtering.
    pub fn remember_remote(&mut self, key: PermitKey, now_ns: u64) -> Result<()> {
        self.put(map_names::PERMITS, key, now_ns)
    }

    /// What the first fragment of datagram `key` was translated to, if the
    /// datapath (or natd) recorded it and the LRU still holds it.
    pub fn fragment_state(&self, key: &FragKey) -> Result<Option<FragState>> {
        self.get(map_names::FRAGS, key)
    }

    /// Records the translation of a first fragment natd sent itself, as the
    /// datapath does for the ones it translates.
    pub fn record_fragment(&mut self, key: FragKey, state: FragState) -> Result<()> {
        self.put(map_names::FRAGS, key, state)
    }

    /// Tells the datapath that natd parks fragments of datagram `key`, so the
    /// translation of its first fragment is reported through the ring.
    pub fn mark_parked(&mut self, key: FragKey, now_ns: u64) -> Result<()> {
        self.put(map_names::PARKED, key, now_ns)
    }

    /// The datagram `key` is no longer parked (released or expired).
    pub fn unmark_parked(&mut self, key: &FragKey) -> Result<()> {
        let mut parked: HashMap<&mut MapData, FragKey, u64> = HashMap::try_from(self.map_mut(map_names::PARKED)?)?;
        // ENOENT: not marked (the mark failed, or is gone already).
        let _ = parked.remove(key);
        Ok(())
    }

    /// When the inside endpoint of `key` last sent to its remote (the
    /// clock of the permit), if it has a permit.
    pub fn permit(&self, key: &PermitKey) -> Result<Option<u64>> {
        self.get(map_names::PERMITS, key)
    }

    /// Mappings the datapath has claimed for a host and protocol (the
    /// datapath's side of the quota count; 0 before its first claim).
    pub fn host_claims(&self, key: HostKey) -> Result<u64> {
        Ok(self.get(map_names::HOST_CLAIMS, &key)?.unwrap_or(0))
    }

    /// natd's side of the quota count for a host and protocol.
    pub fn set_host_returns(&mut self, key: HostKey, returns: u64) -> Result<()> {
        self.put(map_names::HOST_RETURNS, key, returns)
    }

    /// Queues a free port (and session slot) for the datapath to claim for a
    /// new flow of `proto` (in the queue of the port's parity).
    pub fn push_free_port(&mut self, proto_nr: u8, free: FreePort) -> Result<()> {
        let name = free_queue_name(proto_nr, free.port);
        let mut queue: Queue<&mut MapData, FreePort> = Queue::try_from(self.map_mut(name)?)?;
        queue.push(free, 0).with_context(|| format!("pushing to {name}"))?;
        Ok(())
    }

    /// Takes the next queued free port of `proto` and `parity` back from
    /// the datapath (the head of its queue), if one is queued.
    pub fn pop_free_port(&mut self, proto_nr: u8, parity: u16) -> Result<Option<FreePort>> {
        let name = free_queue_name(proto_nr, parity);
        let mut queue: Queue<&mut MapData, FreePort> = Queue::try_from(self.map_mut(name)?)?;
        Ok(queue.pop(0).ok())
    }

    /// Installs an outbound ESP SA (`key`: inside address, peer, SPI) with
    /// its external address and session slot, the slot's liveness set to
    /// `now_ns`. NOEXIST: an SA is learned once.
    pub fn insert_esp_out(&mut self, key: EspKey, target: EspTarget, now_ns: u64) -> Result<()> {
        self.liveness.set(target.session, Liveness::new(now_ns))?;
        let mut map: HashMap<&mut MapData, EspKey, EspTarget> = HashMap::try_from(self.map_mut(map_names::ESP_OUT)?)?;
        map.insert(key, target, BPF_NOEXIST).with_context(|| format!("the outbound ESP SA {key:?} is installed already or {} is full", map_names::ESP_OUT))
    }

    /// Binds an inbound ESP SA (`key`: external address, peer, SPI) to its
    /// inside host and the session slot of the pair (its liveness is the
    /// outbound SA's, left as it is).
    pub fn insert_esp_in(&mut self, key: EspKey, target: EspTarget) -> Result<()> {
        let mut map: HashMap<&mut MapData, EspKey, EspTarget> = HashMap::try_from(self.map_mut(map_names::ESP_IN)?)?;
        map.insert(key, target, BPF_NOEXIST).with_context(|| format!("the inbound ESP SA {key:?} is bound already or {} is full", map_names::ESP_IN))
    }

    /// Whether an SA from `key.local_be` (an external address) to
    /// `key.peer_be` awaits its first answer (`ESP_AWAITED`; the SPI is 0).
    pub fn set_esp_awaited(&mut self, key: EspKey, awaited: bool) -> Result<()> {
        if awaited {
            self.put(map_names::ESP_AWAITED, key, 1u32)
        } else {
            self.remove::<EspKey, u32>(map_names::ESP_AWAITED, &key)
        }
    }

    /// Removes an outbound ESP SA; an absent one is no error.
    pub fn remove_esp_out(&mut self, key: &EspKey) -> Result<()> {
        self.remove::<EspKey, EspTarget>(map_names::ESP_OUT, key)
    }

    /// Removes an inbound ESP SA; an absent one is no error.
    pub fn remove_esp_in(&mut self, key: &EspKey) -> Result<()> {
        self.remove::<EspKey, EspTarget>(map_names::ESP_IN, key)
    }

    /// Every ESP SA installed, (outbound, inbound): an adopted datapath's.
    pub fn esp_sas(&self) -> Result<(EspSaEntries, EspSaEntries)> {
        let read = |name| -> Result<EspSaEntries> {
            let map: HashMap<&MapData, EspKey, EspTarget> = HashMap::try_from(self.map(name)?)?;
            map.iter().collect::<Result<_, _>>().with_context(|| format!("reading {name}"))
        };
        Ok((read(map_names::ESP_OUT)?, read(map_names::ESP_IN)?))
    }

    /// The liveness of a session slot, read in place.
    pub fn liveness(&self, session: u32) -> Result<Liveness> {
        self.liveness.get(session)
    }

    /// Writes one entry of one direction, bypassing the pairing rules. For
    /// benchmarks that need entries for a packet's rewritten form too.
    #[cfg(feature = "testing")]
    pub fn insert_raw(&mut self, side: Side, key: Endpoint, value: Mapping) -> Result<()> {
        if side == Side::Wan {
            // The inside address goes in the slot's liveness, as insert_pair puts it.
            let at = self.inbound_index(&key)?;
            let live = self.liveness.get(value.session)?;
            self.liveness.set(value.session, Liveness { inside_addr_be: value.addr_be, ..live })?;
            let inside = Endpoint::from_be(value.addr_be, value.port_be, key.proto);
            return self.inbound.set(at, InboundPort { flags: InboundPort::IN_USE | value.flags, ..InboundPort::new(&inside, value.session) }.bits());
        }
        let mut map: HashMap<&mut MapData, Endpoint, Mapping> = HashMap::try_from(self.map_mut(map_names::OUTBOUND)?)?;
        map.insert(key, value, 0).context("inserting into OUTBOUND")?;
        Ok(())
    }

    /// Removes both directions of the mapping of `inside`. Returns the external
    /// endpoint it had, if any.
    pub fn remove_pair(&mut self, inside: Endpoint) -> Result<Option<Endpoint>> {
        let mut outbound: MappingMap<'_> = HashMap::try_from(self.map_mut(map_names::OUTBOUND)?)?;
        let Ok(forward) = outbound.get(&inside, 0) else {
            return Ok(None);
        };
        let external = forward.target(inside.proto);
        // Forward first: once it is gone no new packet can use the port.
        outbound.remove(&inside).context("removing the OUTBOUND entry")?;
        // The entry of this session only: a port it does not name is another's.
        if let Some(at) = self.config.inbound_index(&external)
            && InboundPort::from_bits(self.inbound.get(at)?).session == forward.session
        {
            self.inbound.set(at, 0)?;
        }
        Ok(Some(external))
    }

    /// Every outbound mapping, to read (the tests and benchmarks count and
    /// look entries up with it).
    pub fn outbound(&self) -> Result<HashMap<&MapData, Endpoint, Mapping>> {
        Ok(HashMap::try_from(self.map(map_names::OUTBOUND)?)?)
    }


    /// The mapping of an inside endpoint, if it has one.
    pub fn outbound_mapping(&self, inside: &Endpoint) -> Result<Option<Mapping>> {
        self.get(map_names::OUTBOUND, inside)
    }

    /// The mapping of an external endpoint, if it has one.
    pub fn inbound_mapping(&self, external: &Endpoint) -> Result<Option<Mapping>> {
        let Some(at) = self.config.inbound_index(external) else { return Ok(None) };
        let port = InboundPort::from_bits(self.inbound.get(at)?);
        if !port.in_use() {
            return Ok(None);
        }
        Ok(Some(port.mapping(self.liveness.get(port.session)?.inside_addr_be)))
    }

    /// The inside endpoint of session `slot`, whose external endpoint is
    /// `external`: from that endpoint's `INBOUND` entry (the inside port),
    /// if it names the slot, and the slot's liveness (the inside address).
    /// Both are mapped into natd: no syscall. natd's session table keeps
    /// no inside endpoints (`SessionTable`).
    pub fn session_inside(&self, slot: u32, external: &Endpoint) -> Result<Option<Endpoint>> {
        Ok(self
            .inbound_mapping(external)?
            .filter(|mapping| mapping.session == slot)
            .map(|mapping| mapping.target(external.proto)))
    }

    /// Tells the programs whether natd sleeps until the ring wakes it
    /// (`true`) or reads it: asleep, a record natd must act on forces the
    /// wake-up even behind unread claims, which wake no one (nat-ebpf's
    /// `handoff::wakeup_flags`). The store is fenced: a read of the ring
    /// that follows it is not done before it (else a record written in
    /// between could find natd awake and natd find the ring empty).
    pub fn set_daemon_asleep(&self, asleep: bool) {
        // Index 0 exists: the array has one entry.
        let _ = self.asleep.set(0, u32::from(asleep));
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// The per-reason counters, summed over CPUs, indexed by `Reason`.
    pub fn counters(&self) -> Result<Vec<(Reason, u64)>> {
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(map_names::COUNTERS)?)?;
        Reason::ALL
            .iter()
            .map(|&reason| {
                let per_cpu = array.get(&(reason as u32), 0)?;
                Ok((reason, per_cpu.iter().sum()))
            })
            .collect()
    }

    pub fn counter(&self, reason: Reason) -> Result<u64> {
        Ok(self.counters()?[reason as usize].1)
    }

    /// The ring the programs hand missed packets to. Can be taken once.
    pub fn take_miss_ring(&mut self) -> Result<RingBuf<aya::maps::MapData>> {
        let map = self
            .ebpf
            .take_map(map_names::MISSES)
            .ok_or_else(|| anyhow!("MISSES ring missing or already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// `name[key]` of a hash map, `None` when the key is absent.
    fn get<K: aya::Pod, V: aya::Pod>(&self, name: &str, key: &K) -> Result<Option<V>> {
        let map: HashMap<&MapData, K, V> = HashMap::try_from(self.map(name)?)?;
        match map.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {name}")),
        }
    }

    /// `name[key] = value` in a hash map.
    fn put<K: aya::Pod, V: aya::Pod>(&mut self, name: &str, key: K, value: V) -> Result<()> {
        let mut map: HashMap<&mut MapData, K, V> = HashMap::try_from(self.map_mut(name)?)?;
        map.insert(key, value, 0).with_context(|| format!("writing {name}"))?;
        Ok(())
    }

    /// Removes `name[key]` from a hash map; an absent key is no error.
    /// (`V`: the map's value type, which aya checks the map against.)
    fn remove<K: aya::Pod, V: aya::Pod>(&mut self, name: &str, key: &K) -> Result<()> {
        let mut map: HashMap<&mut MapData, K, V> = HashMap::try_from(self.map_mut(name)?)?;
        match map.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing from {name}")),
        }
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
    }
}

/// An array map mapped into this process (BPF_F_MMAPABLE): LIVENESS,
/// which the programs write and natd reads and initialises, and INBOUND,
/// which natd writes and the programs read, without a syscall an entry.
/// Every access is a volatile read or write of a whole entry (one store
/// for the u64 entries of INBOUND).
struct SharedArray<T> {
    base: *mut T,
    entries: u32,
    len: usize,
    name: &'static str,
}

impl<T: Copy> SharedArray<T> {
    fn map(ebpf: &Ebpf, name: &'static str, entries: u32) -> Result<Self> {
        let Some(aya::maps::Map::Array(data)) = ebpf.map(name) else {
            return Err(anyhow!("{name} array missing from the eBPF object"));
        };
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = (entries as usize * std::mem::size_of::<T>()).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's own memory, unmapped on drop;
        // the kernel keeps the map alive while it is mapped.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, data.fd().as_fd().as_raw_fd(), 0) };
        if base == libc::MAP_FAILED {
            return Err(anyhow!("mapping {name} into memory: {}", std::io::Error::last_os_error()));
        }
        Ok(Self { base: base.cast(), entries, len, name })
    }

    fn slot(&self, index: u32) -> Result<*mut T> {
        if index >= self.entries {
            return Err(anyhow!("index {index} out of range ({} holds {})", self.name, self.entries));
        }
        // SAFETY: in bounds, checked above.
        Ok(unsafe { self.base.add(index as usize) })
    }

    fn get(&self, index: u32) -> Result<T> {
        // Volatile: the programs write this memory behind the compiler's back.
        Ok(unsafe { std::ptr::read_volatile(self.slot(index)?) })
    }

    fn set(&self, index: u32, value: T) -> Result<()> {
        unsafe { std::ptr::write_volatile(self.slot(index)?, value) };
        Ok(())
    }
}

// SAFETY: the view is plain shared memory; every access is a volatile
// read or write of a whole entry.
unsafe impl<T> Send for SharedArray<T> {}

impl<T> Drop for SharedArray<T> {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Maps a state pinned by an earlier natd may lack, whose empty state means
/// what that natd did: `DAEMON_ASLEEP` (0, natd awake: the ring's own
/// wake-up rule, as before claims stopped waking natd).
const ADDED_MAPS: [&str; 1] = [map_names::DAEMON_ASLEEP];

/// A pinned `COUNTERS` with fewer entries than `Reason::CAPACITY` (made
/// before reasons had room to grow): its values, read per CPU, and its pin
/// removed, so that the loader makes one of this build's size, into which
/// they are written back. What the old programs count between the read
/// and the swap to the new ones is lost (a few milliseconds of counts);
/// sessions are not touched.
fn carry_counters(state: &StateDir) -> Result<Option<Vec<PerCpuValues<u64>>>> {
    let pin = state.map_pin(map_names::COUNTERS);
    let entries = MapInfo::from_pin(&pin).context("reading the pinned COUNTERS")?.max_entries();
    if entries >= Reason::CAPACITY {
        return Ok(None);
    }
    let array: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(MapData::from_pin(&pin)?))?;
    let values = (0..entries).map(|reason| array.get(&reason, 0)).collect::<Result<Vec<_>, _>>().context("reading the pinned COUNTERS")?;
    std::fs::remove_file(&pin).with_context(|| format!("removing the pin of the old COUNTERS ({} entries) at {}", entries, pin.display()))?;
    tracing::info!("the pinned COUNTERS has {entries} entries, this natd's {}: its counts carried over into a new one", Reason::CAPACITY);
    Ok(Some(values))
}

/// Refuses pinned maps that this build's programs would misread: each map of
/// the object must be pinned with the same type, key and value sizes and
/// entries (Calico's "parameter mismatch" is what starting over them
/// silently would be). PERMITS is sized by the settings at the first load,
/// and a devmap's value size by aya: those are not compared.
fn check_layout(object: &aya_obj::Object, state: &StateDir) -> Result<()> {
    let mut differences = Vec::new();
    for (name, def) in &object.maps {
        if name.starts_with('.') {
            continue;
        }
        let pinned = match MapInfo::from_pin(state.map_pin(name)) {
            Ok(info) => info,
            // Made empty and pinned on adoption: its empty state is what a
            // state made before it had.
            Err(_) if ADDED_MAPS.contains(&name.as_str()) => continue,
            Err(_) => {
                differences.push(format!("{name}: not pinned (a map this natd has and the one that made the state had not)"));
                continue;
            }
        };
        let pinned_type = pinned.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let mut differ = |what: &str, old: u32, new: u32| {
            if old != new {
                differences.push(format!("{name}: {what} {old} pinned, {new} in this natd"));
            }
        };
        differ("type", pinned_type, def.map_type());
        differ("key size", pinned.key_size(), def.key_size());
        if name != map_names::TX_PORTS {
            differ("value size", pinned.value_size(), def.value_size());
        }
        // Sized by natd's settings when the state was made, and adopted
        // at that size (`load_with`).
        // COUNTERS made with fewer entries is carried over (`carry_counters`).
        let grown_counters = name == map_names::COUNTERS && pinned.max_entries() < def.max_entries();
        if ![map_names::PERMITS, map_names::OUTBOUND, map_names::LIVENESS].contains(&name.as_str()) && !grown_counters {
            differ("entries", pinned.max_entries(), def.max_entries());
        }
    }
    if !differences.is_empty() {
        bail!(
            "the datapath pinned at {} has another map layout than this natd's, and its sessions cannot be adopted:\n  {}\n\
             Either run the natd version that made it, or stop the gateway with `natd down` (every session is dropped) and start this one",
            state.shown,
            differences.join("\n  ")
        );
    }
    Ok(())
}

/// Keeps the verifier's log (the part that says why) in the error.
fn verifier_error(e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            anyhow!("{io_error}\nverifier log:\n{verifier_log}")
        }
        other => other.into(),
    }
}
