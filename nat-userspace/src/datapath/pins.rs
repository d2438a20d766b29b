//! Flows natd routes itself and hands to the datapath: a QUIC proxy's
//! connections (`port_flags::PINNED`). The proxies' thread holds its own
//! handles to the forward maps (duplicated descriptors), so pinning a flow
//! never waits for the packet loop.

use std::{
    net::SocketAddrV4,
    os::fd::AsFd as _,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{Array, HashMap, Map, MapData};
use nat_common::{
    Endpoint, map_names,
    forward::{Backend, Flow, FlowKey, ForwardPort, MAX_BACKENDS, backend_state},
};

use super::Datapath;

/// natd's handles to `FORWARDS`, `BACKENDS` and `PENDING`.
pub struct FlowPins {
    forwards: HashMap<MapData, Endpoint, ForwardPort>,
    backends: Array<MapData, Backend>,
    pending: HashMap<MapData, FlowKey, Flow>,
}

/// Why a flow could not be pinned.
#[derive(Debug, PartialEq, Eq)]
pub enum PinRefusal {
    /// `FORWARDS` has no pinned entry for the endpoint: natd has not applied
    /// the forwards yet (start-up), or the proxy is gone.
    NotInstalled,
    /// The server is no backend of the endpoint's forward.
    UnknownServer,
}

impl std::fmt::Display for PinRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinRefusal::NotInstalled => write!(f, "the port's forward is not installed (yet)"),
            PinRefusal::UnknownServer => write!(f, "the server is not a backend of the port's forward"),
        }
    }
}

impl Datapath {
    /// Handles of their own on the forward maps, for a thread that pins
    /// flows.
    pub fn flow_pins(&self) -> Result<FlowPins> {
        let duplicate = |name: &str| -> Result<MapData> {
            let data = match self.map(name)? {
                Map::HashMap(data) | Map::LruHashMap(data) | Map::Array(data) => data,
                _ => bail!("map {name} is not a hash map or an array"),
            };
            let fd = data.fd().as_fd().try_clone_to_owned().with_context(|| format!("duplicating the descriptor of {name}"))?;
            MapData::from_fd(fd).with_context(|| format!("opening {name} again"))
        };
        Ok(FlowPins {
            forwards: HashMap::try_from(Map::HashMap(duplicate(map_names::FORWARDS)?))?,
            backends: Array::try_from(Map::Array(duplicate(map_names::BACKENDS)?))?,
            pending: HashMap::try_from(Map::LruHashMap(duplicate(map_names::PENDING)?))?,
        })
    }
}

impl FlowPins {
    /// Files the flow from `remote` to the pinned port `external` as going
    /// to `server`, half-open (`PENDING`): from the next packet on, the
    /// datapath translates it both ways, and promotes it to the established
    /// flows once the remote answers the server, as it does for flows it
    /// picks itself. `now_ns`: the clock natd publishes to the datapath.
    pub fn pin(&mut self, remote: &Endpoint, external: &Endpoint, server: SocketAddrV4, now_ns: u64) -> Result<Result<(), PinRefusal>> {
        let port = match self.forwards.get(external, 0) {
            Ok(port) if port.is_pinned() => port,
            Ok(_) | Err(aya::maps::MapError::KeyNotFound) => return Ok(Err(PinRefusal::NotInstalled)),
            Err(e) => return Err(e).context("reading FORWARDS"),
        };
        let wanted = (u32::from_ne_bytes(server.ip().octets()), server.port().wrapping_sub(port.offset));
        let mut found = None;
        for slot in 0..MAX_BACKENDS {
            let backend = self.backends.get(&(port.forward * MAX_BACKENDS + slot), 0).context("reading BACKENDS")?;
            if backend.state != backend_state::EMPTY && (backend.addr_be, backend.base_port) == wanted {
                found = Some(slot);
                break;
            }
        }
        let Some(slot) = found else { return Ok(Err(PinRefusal::UnknownServer)) };
        let flow = Flow { last_seen_ns: now_ns, forward: port.forward as u16, backend: slot as u16, offset: port.offset, tcp_flags_in: 0, tcp_flags_out: 0 };
        self.pending
            .insert(FlowKey::new(remote, external), flow, 0)
            .map_err(|e| anyhow!("writing PENDING: {e}"))?;
        Ok(Ok(()))
    }
}
