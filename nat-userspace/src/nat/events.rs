//! What the datapath tells natd through the ring: each item decoded once,
//! by the kind its first `u32` names (`nat_common::miss_kind`).

use anyhow::{Result, bail};
use nat_common::{ClaimEvent, FragEvent, MissEvent, frag_dir, miss_kind};

/// One ring item.
pub enum RingEvent {
    /// The datapath set a new flow up from a queued free port.
    Claimed(ClaimEvent),
    /// A new flow's first packet, untranslated: natd sets the flow up.
    NewFlow(Box<MissEvent>),
    /// A translated packet whose next hop has no neighbour entry yet.
    NoNeighbour(Box<MissEvent>),
    /// A later fragment that came before its first one (`frag_dir::*`).
    Fragment(Box<MissEvent>, u8),
    /// A parked datagram's first fragment was translated.
    FragmentTranslated(FragEvent),
    /// A new flow to a forward with no server up.
    NoServer(Box<MissEvent>),
    /// An ESP packet of no SA the datapath knows, either way.
    Esp(Box<MissEvent>),
    /// A translated packet longer than the egress MTU (the event's `mtu`),
    /// DF clear: natd sends it in fragments.
    TooBig(Box<MissEvent>),
}

impl RingEvent {
    pub fn decode(item: &[u8]) -> Result<Self> {
        let Some(kind) = item.get(..4).map(|k| u32::from_ne_bytes(k.try_into().unwrap())) else {
            bail!("ring item of {} bytes, too short for a kind", item.len());
        };
        Ok(match kind {
            miss_kind::CLAIMED => Self::Claimed(read(item)?),
            miss_kind::NEW_FLOW => Self::NewFlow(handed(item)?),
            miss_kind::NO_NEIGHBOUR => Self::NoNeighbour(handed(item)?),
            miss_kind::FRAGMENT_OUT => Self::Fragment(handed(item)?, frag_dir::OUT),
            miss_kind::FRAGMENT_IN => Self::Fragment(handed(item)?, frag_dir::IN),
            miss_kind::FRAGMENT_TRANSLATED => Self::FragmentTranslated(read(item)?),
            miss_kind::NO_SERVER => Self::NoServer(handed(item)?),
            miss_kind::ESP => Self::Esp(handed(item)?),
            miss_kind::TOO_BIG => Self::TooBig(handed(item)?),
            other => bail!("ring event of kind {other} and {} bytes not understood", item.len()),
        })
    }
}

/// A packet handed over: a record as long as its frame.
fn handed(item: &[u8]) -> Result<Box<MissEvent>> {
    match MissEvent::from_record(item) {
        Some(event) => Ok(Box::new(event)),
        None => bail!("hand-off of {} bytes does not hold the frame its header announces", item.len()),
    }
}

/// A whole `T` from the start of a ring item.
fn read<T: aya::Pod>(item: &[u8]) -> Result<T> {
    if item.len() < size_of::<T>() {
        bail!("ring item of {} bytes, short of the {} of a {}", item.len(), size_of::<T>(), std::any::type_name::<T>());
    }
    // SAFETY: the datapath wrote a whole T (checked above); T is Pod: Copy,
    // and every bit pattern is valid.
    Ok(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const T) })
}
