//! The forward and load-balancer maps (`nat_common::forward`): natd writes
//! the forwarded ports, the backends, their Maglev tables and the backends'
//! static mappings, and reads the forwarded flows and the passive signals.

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, MapData, MapError};
use nat_common::{
    Endpoint, Mapping, map_names,
    forward::{Backend, Flow, FlowKey, ForwardPort, MAGLEV_SIZE, MAX_BACKENDS, Signals, mapping_flags, static_backend_session},
};

use super::Datapath;

/// Which table a forwarded flow is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowTable {
    /// `FLOWS`: the remote answered the server; never evicted.
    Established,
    /// `PENDING`: half-open, in the LRU a flood can churn.
    HalfOpen,
}

impl FlowTable {
    const fn map_name(self) -> &'static str {
        match self {
            FlowTable::Established => map_names::FLOWS,
            FlowTable::HalfOpen => map_names::PENDING,
        }
    }
}

/// A backend's static outbound mapping: packets from `server` leave from
/// `external`, and belong to the forwarded flows of (`forward`, `slot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticMapping {
    pub server: Endpoint,
    pub external: Endpoint,
    pub forward: u32,
    pub slot: u32,
    /// The port's offset into the forward's range.
    pub offset: u16,
}

impl StaticMapping {
    pub const fn mapping(&self) -> Mapping {
        Mapping {
            addr_be: self.external.addr_be,
            port_be: self.external.port_be,
            flags: mapping_flags::FORWARD,
            session: static_backend_session(self.forward, self.slot, self.offset),
        }
    }
}

impl Datapath {
    /// The servers (address, port for the forward's first port) an adopted
    /// datapath has up in BACKENDS.
    pub fn backends_up(&self) -> Result<Vec<(std::net::Ipv4Addr, u16)>> {
        let array: Array<&MapData, Backend> = Array::try_from(self.map(map_names::BACKENDS)?)?;
        Ok(array
            .iter()
            .filter_map(Result::ok)
            .filter(|backend| backend.state == nat_common::forward::backend_state::UP)
            .map(|backend| (std::net::Ipv4Addr::from(backend.addr_be.to_ne_bytes()), backend.base_port))
            .collect())
    }

    /// Removes what forwards no longer configured left in an adopted
    /// datapath: ports in FORWARDS other than `keep_ports`, static mappings
    /// in OUTBOUND other than `keep_statics`. Returns how many went.
    pub fn prune_forwards(&mut self, keep_ports: &std::collections::HashSet<Endpoint>, keep_statics: &[Endpoint]) -> Result<usize> {
        let ports: Vec<Endpoint> = {
            let map: HashMap<&MapData, Endpoint, ForwardPort> = HashMap::try_from(self.map(map_names::FORWARDS)?)?;
            map.keys().filter_map(Result::ok).filter(|port| !keep_ports.contains(port)).collect()
        };
        let statics: Vec<Endpoint> = self
            .outbound()?
            .iter()
            .filter_map(Result::ok)
            .filter(|(server, mapping)| mapping.flags & mapping_flags::FORWARD != 0 && !keep_statics.contains(server))
            .map(|(server, _)| server)
            .collect();
        for port in &ports {
            self.remove_forward_port(port)?;
        }
        for server in &statics {
            self.remove_static_mapping(server)?;
        }
        Ok(ports.len() + statics.len())
    }
}

/// The writes and reads natd's forwards make, apart from the maps
/// themselves so the forward logic is tested without a kernel.
pub trait ForwardTables {
    /// `FORWARDS[external] = port`.
    fn set_forward_port(&mut self, external: Endpoint, port: ForwardPort) -> Result<()>;
    fn remove_forward_port(&mut self, external: &Endpoint) -> Result<()>;
    /// `BACKENDS[forward * MAX_BACKENDS + slot] = backend`.
    fn set_backend(&mut self, forward: u32, slot: u32, backend: Backend) -> Result<()>;
    /// `MAGLEV[forward * MAGLEV_SIZE + index] = backend slot` for each pair.
    fn set_maglev(&mut self, forward: u32, slots: &mut dyn Iterator<Item = (u32, u32)>) -> Result<()>;
    fn signals(&self, forward: u32, slot: u32) -> Result<Signals>;
    /// Zeroes a backend slot's signals (a slot given to a new backend).
    fn reset_signals(&mut self, forward: u32, slot: u32) -> Result<()>;
    /// Installs a backend's static mapping. Refuses to replace a mapping
    /// that is not a static one (natd evicts a dynamic one first).
    fn insert_static_mapping(&mut self, mapping: &StaticMapping) -> Result<()>;
    /// Removes a backend's static mapping, leaving any other mapping alone.
    fn remove_static_mapping(&mut self, server: &Endpoint) -> Result<()>;
    /// Every forwarded flow, established and half-open.
    fn forwarded_flows(&self) -> Result<Vec<(FlowKey, Flow, FlowTable)>>;
    fn remove_forwarded_flow(&mut self, key: &FlowKey, table: FlowTable) -> Result<()>;
}

impl ForwardTables for Datapath {
    fn set_forward_port(&mut self, external: Endpoint, port: ForwardPort) -> Result<()> {
        self.put(map_names::FORWARDS, external, port)
    }

    fn remove_forward_port(&mut self, external: &Endpoint) -> Result<()> {
        self.remove::<_, ForwardPort>(map_names::FORWARDS, external)
    }

    fn set_backend(&mut self, forward: u32, slot: u32, backend: Backend) -> Result<()> {
        let mut array: Array<&mut MapData, Backend> = Array::try_from(self.map_mut(map_names::BACKENDS)?)?;
        array.set(forward * MAX_BACKENDS + slot, backend, 0).with_context(|| format!("writing BACKENDS[{forward}/{slot}]"))?;
        Ok(())
    }

    fn set_maglev(&mut self, forward: u32, slots: &mut dyn Iterator<Item = (u32, u32)>) -> Result<()> {
        let mut array: Array<&mut MapData, u32> = Array::try_from(self.map_mut(map_names::MAGLEV)?)?;
        for (index, slot) in slots {
            array.set(forward * MAGLEV_SIZE + index, slot, 0).with_context(|| format!("writing MAGLEV[{forward}/{index}]"))?;
        }
        Ok(())
    }

    fn signals(&self, forward: u32, slot: u32) -> Result<Signals> {
        let array: Array<&MapData, Signals> = Array::try_from(self.map(map_names::SIGNALS)?)?;
        Ok(array.get(&(forward * MAX_BACKENDS + slot), 0)?)
    }

    fn reset_signals(&mut self, forward: u32, slot: u32) -> Result<()> {
        let mut array: Array<&mut MapData, Signals> = Array::try_from(self.map_mut(map_names::SIGNALS)?)?;
        array.set(forward * MAX_BACKENDS + slot, Signals::default(), 0).context("writing SIGNALS")?;
        Ok(())
    }

    fn insert_static_mapping(&mut self, mapping: &StaticMapping) -> Result<()> {
        let server = mapping.server;
        if let Some(existing) = self.outbound_mapping(&server)?
            && existing.flags & mapping_flags::FORWARD == 0
        {
            anyhow::bail!("{}:{} has a dynamic mapping; it must be removed before the forward's static one", server.addr(), server.port());
        }
        self.put(map_names::OUTBOUND, server, mapping.mapping())
            .with_context(|| format!("installing the static mapping of server {}:{} (OUTBOUND full?)", server.addr(), server.port()))
    }

    fn remove_static_mapping(&mut self, server: &Endpoint) -> Result<()> {
        match self.outbound_mapping(server)? {
            Some(existing) if existing.flags & mapping_flags::FORWARD != 0 => self.remove::<_, Mapping>(map_names::OUTBOUND, server),
            _ => Ok(()),
        }
    }

    fn forwarded_flows(&self) -> Result<Vec<(FlowKey, Flow, FlowTable)>> {
        let mut flows = Vec::new();
        for table in [FlowTable::Established, FlowTable::HalfOpen] {
            let map: HashMap<&MapData, FlowKey, Flow> = HashMap::try_from(self.map(table.map_name())?)?;
            for entry in map.iter() {
                match entry {
                    Ok((key, flow)) => flows.push((key, flow, table)),
                    // Removed between the key walk and the read (the LRU, or
                    // another reader): gone, nothing to show.
                    Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(e).with_context(|| format!("reading {}", table.map_name())),
                }
            }
        }
        Ok(flows)
    }

    fn remove_forwarded_flow(&mut self, key: &FlowKey, table: FlowTable) -> Result<()> {
        self.remove::<_, Flow>(table.map_name(), key)
    }
}

impl Datapath {
    /// What `FORWARDS` holds for an external endpoint.
    pub fn forward_port(&self, external: &Endpoint) -> Result<Option<ForwardPort>> {
        self.get(map_names::FORWARDS, external)
    }

    /// A backend slot as the datapath reads it.
    pub fn backend(&self, forward: u32, slot: u32) -> Result<Backend> {
        let array: Array<&MapData, Backend> = Array::try_from(self.map(map_names::BACKENDS)?)?;
        Ok(array.get(&(forward * MAX_BACKENDS + slot), 0)?)
    }

    /// One slot of a forward's Maglev table.
    pub fn maglev_slot(&self, forward: u32, index: u32) -> Result<u32> {
        let array: Array<&MapData, u32> = Array::try_from(self.map(map_names::MAGLEV)?)?;
        Ok(array.get(&(forward * MAGLEV_SIZE + index), 0)?)
    }

    /// A forwarded flow, if the table holds it.
    pub fn forwarded_flow(&self, key: &FlowKey, table: FlowTable) -> Result<Option<Flow>> {
        self.get(table.map_name(), key)
    }

    /// Writes a forwarded flow (tests: a flow the datapath would have made).
    pub fn insert_forwarded_flow(&mut self, key: FlowKey, flow: Flow, table: FlowTable) -> Result<()> {
        self.put(table.map_name(), key, flow)
    }
}
