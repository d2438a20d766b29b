//! strongSwan's charon in a lab namespace, for IPsec tests with a real IKE
//! stack nobody in this project wrote.
//!
//! This kernel has no ESP (no CONFIG_INET_ESP), so charon runs with the
//! kernel-libipsec plugin: ESP in user space over a TUN device (`ipsec0`)
//! in its namespace, carried in UDP 4500 (RFC 3948), which is what NAT
//! traversal uses anyway. Each charon runs in the foreground as the test's
//! child, never as a system service, with its own strongswan.conf
//! (`STRONGSWAN_CONF`), its own vici socket, and its own /run: the pid file
//! /run/charon.pid is fixed, so two charons on one machine need a /run each.
//! `ip netns exec` gives the command a mount namespace of its own (mounts
//! made in it do not propagate back), where the fixture binds its directory
//! over /run.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::Netns;

pub const CHARON: &str = "/usr/lib/ipsec/charon";

/// How long charon gets to open its vici socket, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Only the plugins a PSK tunnel with user-space ESP needs: no openssl,
/// gcm or curve25519 plugin here (Debian ships them in other packages), so
/// AES-CBC, SHA-2 and MODP groups (gmp). kernel-netlink still does the
/// addresses and routes; kernel-libipsec, loaded before it, the SAs.
const PLUGINS: &str = "random nonce aes sha1 sha2 hmac kdf gmp kernel-libipsec kernel-netlink socket-default vici";

/// One charon in a namespace, stopped (SIGTERM, then SIGKILL) and its
/// directory removed on drop.
pub struct Charon {
    pub name: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Charon {
    /// Starts charon in `ns` with NAT-T keepalives every `keep_alive`,
    /// waits (bounded) for its vici socket, and loads `swanctl_conf`
    /// (swanctl.conf syntax: connections, pools, secrets).
    ///
    /// Roam events are off: an interface's IPv6 link-local address leaving
    /// DAD a second or two after the namespace came up made charon send a
    /// MOBIKE address update on every IKE_SA (an INFORMATIONAL exchange),
    /// at a moment that depends on how fast the test got there. The tests
    /// need IKE quiet once the SAs are up.
    pub fn start(ns: &Netns, name: &str, keep_alive: Duration, swanctl_conf: &str) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!("{}-charon-{}", ns.name, N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(dir.join("run"))?;
        let conf = format!(
            "charon {{\n\
               load = {PLUGINS}\n\
               keep_alive = {keep_alive}s\n\
               plugins {{ vici {{ socket = unix://{d}/charon.vici }} kernel-netlink {{ roam_events = no }} }}\n\
               filelog {{ log {{ path = {d}/charon.log\n\
                 time_format = %H:%M:%S\n ike_name = yes\n default = 1\n append = no\n flush_line = yes }} }}\n\
               syslog {{ daemon {{ default = -1 }} }}\n\
             }}\n\
             swanctl {{ load = nonce }}\n",
            keep_alive = keep_alive.as_secs(),
            d = dir.display()
        );
        std::fs::write(dir.join("strongswan.conf"), conf)?;
        std::fs::write(dir.join("swanctl.conf"), swanctl_conf)?;
        let mut charon = Self { name: name.to_string(), dir, child: None };
        let run_dir = charon.dir.join("run");
        // `ip netns exec` execs sh, which execs charon: the child's pid is charon's.
        let script = format!("mount --bind {} /run && exec {CHARON}", run_dir.display());
        let child = ns
            .command(&["sh", "-c", &script])
            .env("STRONGSWAN_CONF", charon.dir.join("strongswan.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(charon.dir.join("stderr"))?)
            .spawn()
            .context("starting charon (Debian strongswan-charon; `cargo xtask test` installs it)")?;
        charon.child = Some(child);
        let socket = charon.dir.join("charon.vici");
        let deadline = Instant::now() + START_TIMEOUT;
        while !socket.exists() {
            if let Some(status) = charon.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("charon {name} exited during start-up ({status}):\n{}", charon.diagnostics());
            }
            if Instant::now() > deadline {
                bail!("charon {name} opened no vici socket within {START_TIMEOUT:?}:\n{}", charon.diagnostics());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let file = charon.dir.join("swanctl.conf");
        charon.swanctl(ns, &["--load-all", "--noprompt", "--file", file.to_str().context("swanctl.conf path")?])?;
        Ok(charon)
    }

    /// Runs `swanctl ARGS` against this charon (bounded by `timeout` 30 s)
    /// and returns its stdout; an error with both outputs and charon's log
    /// when it fails.
    pub fn swanctl(&self, ns: &Netns, args: &[&str]) -> Result<String> {
        let out = self.swanctl_command(ns, args).output().context("running swanctl")?;
        let Output { status, stdout, stderr } = out;
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        if !status.success() {
            bail!(
                "swanctl {args:?} for {} failed ({status}):\n{stdout}\n{}\n--- charon log ---\n{}",
                self.name,
                String::from_utf8_lossy(&stderr),
                self.log()
            );
        }
        Ok(stdout)
    }

    /// The command `swanctl` would run, to run it on another thread.
    pub fn swanctl_command(&self, ns: &Netns, args: &[&str]) -> Command {
        let uri = format!("unix://{}", self.dir.join("charon.vici").display());
        let mut cmd = ns.command(&["timeout", "30", "swanctl"]);
        cmd.args(args).args(["--uri", &uri]).env("STRONGSWAN_CONF", self.dir.join("strongswan.conf"));
        cmd
    }

    /// `swanctl --list-sas --raw`: one `IkeSa` per IKE SA.
    pub fn sas(&self, ns: &Netns) -> Result<Vec<IkeSa>> {
        let raw = self.swanctl(ns, &["--list-sas", "--raw"])?;
        Ok(raw.split("list-sa event").skip(1).map(|event| IkeSa { raw: event.to_string() }).collect())
    }

    /// charon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }

    fn diagnostics(&self) -> String {
        let stderr = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
        format!("stderr: {stderr}\nlog:\n{}", self.log())
    }
}

impl Drop for Charon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_TIMEOUT;
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One IKE SA of `swanctl --list-sas --raw` (vici's key=value form, child
/// SAs nested in it).
#[derive(Debug, Clone)]
pub struct IkeSa {
    pub raw: String,
}

impl IkeSa {
    /// The first value of `key` (the IKE SA's own keys come before its
    /// child SAs').
    pub fn get(&self, key: &str) -> Option<&str> {
        let needle = format!(" {key}=");
        let start = self.raw.find(&needle)? + needle.len();
        let rest = &self.raw[start..];
        Some(&rest[..rest.find([' ', '}']).unwrap_or(rest.len())])
    }

    /// The first CHILD_SA of this IKE SA.
    pub fn child(&self) -> Option<IkeSa> {
        let start = self.raw.find("child-sas {")?;
        Some(IkeSa { raw: self.raw[start..].to_string() })
    }

    pub fn is(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }

    /// A numeric value (a child SA's `packets-in`, the IKE SA's `remote-port`).
    pub fn number(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }
}
