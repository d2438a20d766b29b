//! The loaded XDP object: programs, and typed access to its maps.
//!
//! Everything that touches the kernel side goes through here, so the daemon
//! and the tests share one set of rules (pair insertion order, rollback).

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use nat_common::{Endpoint, GatewayConfig, Mapping, Reason, map_names, program_names};

use crate::EBPF_OBJECT;

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
}

impl Datapath {
    /// Loads the object and both programs into the kernel (nothing attached yet).
    pub fn load() -> Result<Self> {
        let ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .context("loading the eBPF object into the kernel (needs root or CAP_BPF + CAP_NET_ADMIN)")?;
        let mut datapath = Self { ebpf };
        for side in [Side::Lan, Side::Wan] {
            datapath
                .program_mut(side)?
                .load()
                .map_err(verifier_error)
                .with_context(|| format!("the kernel verifier rejected program {}", side.program_name()))?;
        }
        Ok(datapath)
    }

    fn program_mut(&mut self, side: Side) -> Result<&mut Xdp> {
        let name = side.program_name();
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
            .try_into()?)
    }

    pub fn program(&self, side: Side) -> Result<&Xdp> {
        let name = side.program_name();
        Ok(self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?)
    }

    /// Attaches one program to an interface. The link lives as long as `self`.
    pub fn attach(&mut self, side: Side, ifindex: u32, mode: XdpMode) -> Result<XdpLinkId> {
        self.program_mut(side)?
            .attach_to_if_index(ifindex, mode)
            .with_context(|| format!("attaching {} to ifindex {ifindex} in {mode:?} mode", side.program_name()))
    }

    /// Detaches a program from an interface it was attached to by `attach`.
    pub fn detach(&mut self, side: Side, link: XdpLinkId) -> Result<()> {
        self.program_mut(side)?
            .detach(link)
            .with_context(|| format!("detaching {}", side.program_name()))
    }

    pub fn set_config(&mut self, config: GatewayConfig) -> Result<()> {
        let mut array: Array<&mut MapData, GatewayConfig> = Array::try_from(self.map_mut(map_names::CONFIG)?)?;
        array.set(0, config, 0).context("writing CONFIG")?;
        Ok(())
    }

    /// Publishes the time (CLOCK_MONOTONIC_COARSE, ns) the programs stamp
    /// mappings with and expire cached next hops by.
    pub fn set_clock(&mut self, now_ns: u64) -> Result<()> {
        let mut array: Array<&mut MapData, u64> = Array::try_from(self.map_mut(map_names::CLOCK)?)?;
        array.set(0, now_ns, 0).context("writing CLOCK")?;
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

    /// Inserts both directions of a mapping: `inside` is translated to
    /// `external` outbound, and back inbound.
    ///
    /// The reverse entry goes in first with NOEXIST, so two inside endpoints can
    /// never claim one external endpoint; if the forward entry then fails, the
    /// reverse one is removed again and nothing is left half-made.
    pub fn insert_pair(&mut self, inside: Endpoint, external: Endpoint, now_ns: u64) -> Result<()> {
        let (mut inbound, mut outbound) = self.mapping_maps()?;
        inbound
            .insert(external, Mapping::new(inside, now_ns), BPF_NOEXIST)
            .with_context(|| format!("external endpoint {external:?} is taken or INBOUND is full"))?;
        if let Err(e) = outbound.insert(inside, Mapping::new(external, now_ns), BPF_NOEXIST) {
            let _ = inbound.remove(&external);
            return Err(e).with_context(|| format!("inside endpoint {inside:?} is mapped already or OUTBOUND is full"));
        }
        Ok(())
    }

    /// Writes one entry of one direction, bypassing the pairing rules. For
    /// benchmarks that need entries for a packet's rewritten form too.
    pub fn insert_raw(&mut self, side: Side, key: Endpoint, value: Mapping) -> Result<()> {
        let name = match side {
            Side::Lan => map_names::OUTBOUND,
            Side::Wan => map_names::INBOUND,
        };
        let mut map: HashMap<&mut MapData, Endpoint, Mapping> = HashMap::try_from(self.map_mut(name)?)?;
        map.insert(key, value, 0).with_context(|| format!("inserting into {name}"))?;
        Ok(())
    }

    /// Removes both directions of the mapping of `inside`. Returns the external
    /// endpoint it had, if any.
    pub fn remove_pair(&mut self, inside: Endpoint) -> Result<Option<Endpoint>> {
        let (mut inbound, mut outbound) = self.mapping_maps()?;
        let Ok(forward) = outbound.get(&inside, 0) else {
            return Ok(None);
        };
        let external = forward.target(inside.proto);
        // Forward first: once it is gone no new packet can use the port.
        outbound.remove(&inside).context("removing the OUTBOUND entry")?;
        inbound.remove(&external).context("removing the INBOUND entry")?;
        Ok(Some(external))
    }

    /// Both mapping maps at once, writable: (INBOUND, OUTBOUND).
    fn mapping_maps(&mut self) -> Result<(MappingMap<'_>, MappingMap<'_>)> {
        let [inbound, outbound] = self
            .ebpf
            .maps_disjoint_mut([map_names::INBOUND, map_names::OUTBOUND]);
        Ok((
            HashMap::try_from(inbound.ok_or_else(|| anyhow!("INBOUND map missing"))?)?,
            HashMap::try_from(outbound.ok_or_else(|| anyhow!("OUTBOUND map missing"))?)?,
        ))
    }

    pub fn outbound(&self) -> Result<HashMap<&MapData, Endpoint, Mapping>> {
        Ok(HashMap::try_from(self.map(map_names::OUTBOUND)?)?)
    }

    pub fn inbound(&self) -> Result<HashMap<&MapData, Endpoint, Mapping>> {
        Ok(HashMap::try_from(self.map(map_names::INBOUND)?)?)
    }

    /// Every entry of one mapping map (`Side::Lan`: OUTBOUND, `Side::Wan`:
    /// INBOUND), read with BPF_MAP_LOOKUP_BATCH: a few hundred syscalls for
    /// a million entries, where per-key lookups take a million.
    pub fn dump(&self, side: Side) -> Result<Vec<(Endpoint, Mapping)>> {
        let name = match side {
            Side::Lan => map_names::OUTBOUND,
            Side::Wan => map_names::INBOUND,
        };
        let data = match self.map(name)? {
            aya::maps::Map::HashMap(data) => data,
            _ => return Err(anyhow!("{name} is not a hash map")),
        };
        batch_dump(data.fd().as_fd().as_raw_fd()).with_context(|| format!("dumping {name}"))
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

    /// The program's fd, for `BPF_PROG_TEST_RUN` re-injection.
    pub fn program_fd(&self, side: Side) -> Result<std::os::fd::BorrowedFd<'_>> {
        Ok(self.program(side)?.fd()?.as_fd())
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

/// Entries per BPF_MAP_LOOKUP_BATCH call.
const DUMP_BATCH: usize = 8192;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn batch_dump(map_fd: i32) -> Result<Vec<(Endpoint, Mapping)>> {
    let mut out = Vec::new();
    let mut keys = vec![Endpoint::default(); DUMP_BATCH];
    let mut values = vec![Mapping::default(); DUMP_BATCH];
    // A hash map's batch token is a bucket index (u32); 8 bytes to spare.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &mut token_in as *mut u64 as u64 },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: DUMP_BATCH as u32,
            map_fd: map_fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at buffers of `count` keys and values that live
        // across the call; the kernel writes at most that many.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>())
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        let n = attr.count as usize;
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match err {
            None => {}
            // ENOENT: the walk is over (the last entries came with it).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) => return Err(e.into()),
        }
        token_in = token_out;
        first = false;
    }
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
