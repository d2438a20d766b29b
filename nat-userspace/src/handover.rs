//! What a natd that stops with the datapath serving (SIGTERM) hands to the
//! next natd, or to `natd down`, besides the pinned maps: what a bpffs
//! cannot hold (it holds no plain files), in a file beside it
//! (`StateDir::handover_file`, under /run, which every `ip netns exec` of the
//! namespace shares).
//!
//! - The ports natd held back before reuse: the next natd holds them on.
//! - The forwarding sysctls natd turned on, with what it found: forwarding
//!   stays on while the datapath serves (`bpf_fib_lookup` needs it), and
//!   whoever removes the datapath puts them back.

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{datapath::StateDir, nat::ports::HeldPort};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Handover {
    pub held_ports: Vec<HeldPort>,
    /// (sysctl path, value natd found there).
    pub forwarding: Vec<(String, String)>,
}

impl Handover {
    /// Reads and removes the handover of `state` (an empty one when the
    /// previous natd was killed and wrote none).
    pub fn take(state: &StateDir) -> Self {
        let path = state.handover_file();
        let handover = std::fs::read(path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
        crate::datapath::remove_handover_file(path);
        handover
    }

    pub fn write(&self, state: &StateDir) -> Result<()> {
        let path = state.handover_file();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_vec(self)?).with_context(|| format!("writing {}", path.display()))
    }
}
