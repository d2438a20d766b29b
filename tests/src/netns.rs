//! Network namespaces for tests: created with unique names, removed on drop
//! (also when the test fails), entered per thread with setns(2).

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// True when the tests may create namespaces and load BPF programs.
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Skips the calling test with a visible note when not root. Plain `cargo test`
/// as a user passes; CI runs as root and runs everything.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::netns::is_root() {
            eprintln!("SKIPPED {}: needs root (BPF and network namespaces)", module_path!());
            return;
        }
    };
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace named `nt-<tag>-<pid>-<n>`: unique across parallel test
    /// threads and parallel runs.
    pub fn new(tag: &str) -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("nt-{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        run(&mut self.command(args))
    }

    /// A command that will run inside the namespace (for spawning servers).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    pub fn sysctl(&self, key_value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", key_value]).map(drop)
    }

    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let out = self.ip(&["-o", "link", "show", "dev", ifname])?;
        out.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no ifindex for {ifname} in {}: {out}", self.name))
    }

    /// Switches the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> Result<NsGuard> {
        let original = File::open("/proc/thread-self/ns/net").context("opening own netns")?;
        let target = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening netns {}", self.name))?;
        setns(&target)?;
        Ok(NsGuard { original })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its interfaces (and both ends of any
        // veth pair) and detaches the programs on them.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

pub struct NsGuard {
    original: File,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = setns(&self.original);
    }
}

fn setns(file: &File) -> Result<()> {
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The ifindex of `ifname` in the calling thread's network namespace.
pub fn ifindex_here(ifname: &str) -> Result<u32> {
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no interface {ifname} here: {}", std::io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// Runs a command, failing with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let Output { status, stdout, stderr } =
        cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status}): {}", String::from_utf8_lossy(&stderr).trim());
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}
