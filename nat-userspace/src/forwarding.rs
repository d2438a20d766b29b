//! IPv4 forwarding on the gateway's interfaces, on only while the programs
//! guard them.
//!
//! `bpf_fib_lookup` answers FWD_DISABLED unless forwarding is on for the
//! ingress interface (kernel `net/core/filter.c`), so natd turns it on. But
//! with forwarding on and no program attached the kernel forwards LAN
//! traffic to the WAN itself, untranslated, inside source addresses and all.
//! So natd turns it on only after both programs are attached, and puts back
//! what it found before it detaches them. A natd killed with SIGKILL cannot:
//! its programs go with it and forwarding stays on (the README's nftables
//! guard closes that gap).

use anyhow::{Context as _, Result};

/// The forwarding sysctls natd changed, with the values it found.
pub struct Forwarding {
    changed: Vec<(String, String)>,
}

impl Forwarding {
    /// Turns IPv4 forwarding on for each interface, remembering what was there.
    /// On an error, what was changed already is put back.
    pub fn enable(interfaces: &[&str]) -> Result<Self> {
        let mut forwarding = Self { changed: Vec::new() };
        for ifname in interfaces {
            let path = sysctl_path(ifname);
            let before = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            if before.trim() != "1" {
                std::fs::write(&path, "1").with_context(|| format!("enabling IPv4 forwarding ({path})"))?;
                forwarding.changed.push((path, before.trim().to_string()));
            }
        }
        Ok(forwarding)
    }

    /// Turns forwarding on for an interface that came back (its sysctls are
    /// new), to be put back with the others.
    pub fn enable_also(&mut self, ifname: &str) -> Result<()> {
        let mut more = Self::enable(&[ifname])?;
        self.changed.append(&mut more.changed);
        Ok(())
    }

    /// Forwarding stays on for the datapath that serves on without natd:
    /// the values to put back go to whoever removes it (`handover`).
    pub fn hand_over(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.changed)
    }

    /// Takes on what the previous natd handed over: its values are the
    /// ones to put back (forwarding is on already, as it left it).
    pub fn adopt(&mut self, handed_over: Vec<(String, String)>) {
        for (path, before) in handed_over {
            self.changed.retain(|(p, _)| *p != path);
            self.changed.push((path, before));
        }
    }

    /// Puts values handed over back (`natd down`). Returns the paths that
    /// could not be restored.
    pub fn restore_handed_over(handed_over: Vec<(String, String)>) -> Vec<String> {
        Self { changed: handed_over }.restore()
    }

    /// Puts every value back; an interface that is gone has nothing to put
    /// back. Returns the paths that could not be restored.
    pub fn restore(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        for (path, before) in self.changed.drain(..).rev() {
            if std::fs::write(&path, &before).is_err() && std::path::Path::new(&path).exists() {
                failed.push(path);
            }
        }
        failed
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        for path in self.restore() {
            tracing::warn!("could not restore {path}: the kernel may forward LAN traffic untranslated");
        }
    }
}

fn sysctl_path(ifname: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding")
}
