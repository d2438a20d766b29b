//! The datapath's state that outlives natd (DESIGN.md, "State that outlives
//! natd"): where its maps and links are pinned, whose they are, whether a
//! new natd may adopt them, and removing them (`natd down`, stale pins).
//!
//! Layout of the pins, under a bpffs (`PinRoot`):
//!
//! ```text
//! <root>/natd/netns-<cookie>/<lan>+<wan>/layout-<N>/
//!     OUTBOUND, INBOUND, LIVENESS, ...   every map of the object, by name
//!     link-lan-native, link-wan-native   the XDP links (mode in the name)
//! ```
//!
//! - `netns-<cookie>`: the network namespace's cookie (`SO_NETNS_COOKIE`),
//!   unique for the machine's uptime and never reused, so a natd never
//!   takes another namespace's pins for its own, even when the interface
//!   names are the same.
//! - `layout-<N>`: `STATE_LAYOUT`, the meaning of the maps' keys and values.
//!   Sizes are checked map by map as well (`check_layout`).
//! - A pair directory is in use while a natd holds its lock (`flock`), or
//!   while its links are attached to an interface. Pins whose interfaces
//!   are gone (their namespace was deleted) are stale: any natd, and
//!   `natd down`, removes them, and none adopts them.

use std::{
    ffi::CString,
    fs::File,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::datapath::Side;

/// The meaning of the pinned maps' keys and values. Bump it whenever a map
/// keeps its sizes but changes what they mean: a natd never adopts state of
/// another layout (it refuses, and says how to start clean).
/// 2: INBOUND is an array of `InboundPort`s by pool position, protocol and
/// port, and LIVENESS holds the inside address (was: a hash map).
pub const STATE_LAYOUT: u32 = 2;

/// `BPF_FS_MAGIC`, the f_type `statfs` reports for a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where natd mounts a bpffs of its own when it finds none (see `PinRoot::find`).
pub const OWN_BPFFS: &str = "/run/natd/bpffs";

/// The standard bpffs mount (systemd mounts it at boot).
const SYS_BPFFS: &str = "/sys/fs/bpf";

/// A bpffs natd pins in, held open: `path` stays valid even when it was
/// reached through another mount namespace (`/proc/PID/root/...`).
pub struct PinRoot {
    _dir: File,
    path: PathBuf,
    /// Where it is, as an operator would look for it.
    pub shown: String,
}

impl PinRoot {
    /// The bpffs to pin in, in this order:
    /// 1. `explicit` (`pin_root`), which must be a bpffs;
    /// 2. `/sys/fs/bpf`, when it is one (natd started by systemd);
    /// 3. `/run/natd/bpffs`, when it is one;
    /// 4. under `ip netns exec`, which remounts /sys and gives natd a mount
    ///    namespace that dies with it: the namespace natd was started from
    ///    (its parent's), through `/proc/PPID/root`: its `/sys/fs/bpf` or
    ///    `/run/natd/bpffs`, or a bpffs natd mounts at `/run/natd/bpffs`
    ///    there (with nsenter). Every later `ip netns exec` sees that one.
    /// 5. natd's own namespace is the one it was started from: it mounts a
    ///    bpffs at `/run/natd/bpffs`.
    ///
    /// `Ok(None)` when there is none and none could be mounted: the
    /// datapath then goes with natd, and the reason is logged.
    pub fn find(explicit: Option<&Path>, may_mount: bool) -> Result<Option<Self>> {
        if let Some(path) = explicit {
            if !is_bpffs(path) {
                bail!(
                    "pin_root {} is not a bpffs: mount one there (`mount -t bpf bpf {}`), or leave pin_root out and natd finds or mounts one",
                    path.display(),
                    path.display()
                );
            }
            return Self::open(path, path.display().to_string()).map(Some);
        }
        for path in [SYS_BPFFS, OWN_BPFFS] {
            if is_bpffs(Path::new(path)) {
                return Self::open(Path::new(path), path.to_string()).map(Some);
            }
        }
        let parent = std::os::unix::process::parent_id();
        let started_elsewhere = std::fs::read_link(format!("/proc/{parent}/ns/mnt")).ok() != std::fs::read_link("/proc/self/ns/mnt").ok();
        if started_elsewhere {
            for path in [SYS_BPFFS, OWN_BPFFS] {
                let through = PathBuf::from(format!("/proc/{parent}/root{path}"));
                if is_bpffs(&through) {
                    return Self::open(&through, format!("{path} of the mount namespace natd was started from")).map(Some);
                }
            }
            if !may_mount {
                return Ok(None);
            }
            let mounted = Command::new("nsenter")
                .arg(format!("--mount=/proc/{parent}/ns/mnt"))
                // Under a lock, and only if none is there yet: two natds
                // starting at once must not stack two mounts.
                .args([
                    "--",
                    "sh",
                    "-c",
                    &format!(
                        "mkdir -p {OWN_BPFFS} && flock /run/natd/.mount.lock sh -c \
                         '[ \"$(stat -f -c %T {OWN_BPFFS})\" = bpf_fs ] || mount -t bpf natd {OWN_BPFFS}'"
                    ),
                ])
                .output();
            match mounted {
                Ok(out) if out.status.success() => {
                    let through = PathBuf::from(format!("/proc/{parent}/root{OWN_BPFFS}"));
                    tracing::info!("mounted a bpffs at {OWN_BPFFS} in the mount namespace natd was started from, for the datapath's pins");
                    return Self::open(&through, format!("{OWN_BPFFS} of the mount namespace natd was started from")).map(Some);
                }
                Ok(out) => tracing::warn!("mounting a bpffs at {OWN_BPFFS} with nsenter failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
                Err(e) => tracing::warn!("running nsenter to mount a bpffs at {OWN_BPFFS}: {e}"),
            }
            return Ok(None);
        }
        if !may_mount {
            return Ok(None);
        }
        std::fs::create_dir_all(OWN_BPFFS).with_context(|| format!("creating {OWN_BPFFS}"))?;
        let (source, target, fstype) = (c"natd", CString::new(OWN_BPFFS)?, c"bpf");
        // SAFETY: NUL-terminated strings; no data argument.
        if unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
            tracing::warn!("mounting a bpffs at {OWN_BPFFS}: {}", std::io::Error::last_os_error());
            return Ok(None);
        }
        tracing::info!("mounted a bpffs at {OWN_BPFFS} for the datapath's pins");
        Self::open(Path::new(OWN_BPFFS), OWN_BPFFS.to_string()).map(Some)
    }

    fn open(path: &Path, shown: String) -> Result<Self> {
        let dir = File::open(path).with_context(|| format!("opening the bpffs at {shown}"))?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        Ok(Self { _dir: dir, path, shown })
    }

    /// The bpffs, as a path this process can use.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<root>/natd`: every natd's pins.
    fn natd_dir(&self) -> PathBuf {
        self.path.join("natd")
    }

    /// Removes the pins of gateways whose interfaces are gone (a deleted
    /// namespace), of every namespace. Returns what was removed.
    pub fn remove_stale(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(namespaces) = std::fs::read_dir(self.natd_dir()) else { return removed };
        for netns in namespaces.flatten() {
            let Ok(pairs) = std::fs::read_dir(netns.path()) else { continue };
            for pair in pairs.flatten() {
                let Ok(lock) = DirLock::try_take(&pair.path()) else { continue };
                if pair_is_stale(&pair.path()) {
                    let shown = format!("{}/{}", netns.file_name().to_string_lossy(), pair.file_name().to_string_lossy());
                    remove_handover_file(&handover_file(&netns.file_name().to_string_lossy(), &pair.file_name().to_string_lossy()));
                    match remove_tree(&pair.path()) {
                        Ok(()) => removed.push(shown),
                        Err(e) => tracing::warn!("removing the stale pins {shown}: {e:#}"),
                    }
                }
                drop(lock);
            }
            // Empty once its pairs are gone; a directory in use is not.
            let _ = std::fs::remove_dir(netns.path());
        }
        removed
    }
}

/// One gateway's pins: this namespace, these interfaces, this layout.
/// Holding it holds the pair's lock.
pub struct StateDir {
    pair: PathBuf,
    dir: PathBuf,
    /// Where, for messages.
    pub shown: String,
    handover_file: PathBuf,
    _lock: DirLock,
    /// Last: the paths above go through its fd.
    _root: PinRoot,
}

impl StateDir {
    /// The pins of the gateway on `lan` and `wan` in this namespace,
    /// created if absent, locked. State of another layout that still
    /// serves is refused; state of another layout that serves nothing is
    /// removed.
    pub fn open(root: PinRoot, lan: &str, wan: &str) -> Result<Self> {
        let pair_name = format!("{lan}+{wan}");
        let netns = format!("netns-{}", netns_cookie()?);
        let handover_file = handover_file(&netns, &pair_name);
        let pair = root.natd_dir().join(&netns).join(&pair_name);
        std::fs::create_dir_all(&pair).with_context(|| format!("creating {}/natd/{netns}/{pair_name}", root.shown))?;
        let lock = DirLock::try_take(&pair).map_err(|_| anyhow!("another natd holds the pins of {lan} and {wan} in this namespace; stop it first"))?;
        let own = format!("layout-{STATE_LAYOUT}");
        for entry in std::fs::read_dir(&pair)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == own {
                continue;
            }
            if links_attached(&entry.path()) {
                bail!(
                    "the datapath serving {lan} and {wan} was left by a natd whose map layout is {name}, and this natd's is {own}: \
                     it cannot adopt those sessions. Either run the natd version that made them, or stop the gateway with \
                     `natd down --lan {lan} --wan {wan}` (every session is dropped) and start this one"
                );
            }
            remove_tree(&entry.path()).with_context(|| format!("removing the unused pins {name}"))?;
        }
        let dir = pair.join(&own);
        std::fs::create_dir_all(&dir)?;
        let shown = format!("{}/natd/{netns}/{pair_name}/{own}", root.shown);
        Ok(Self { pair, dir, shown, handover_file, _lock: lock, _root: root })
    }

    /// An existing pair's pins, without creating anything (`natd down`).
    pub fn existing(root: PinRoot, lan: &str, wan: &str) -> Result<Option<Self>> {
        let pair_name = format!("{lan}+{wan}");
        let netns = format!("netns-{}", netns_cookie()?);
        let handover_file = handover_file(&netns, &pair_name);
        let pair = root.natd_dir().join(&netns).join(&pair_name);
        if !pair.is_dir() {
            return Ok(None);
        }
        let lock = DirLock::try_take(&pair).map_err(|_| anyhow!("a natd is serving {lan} and {wan} in this namespace: stop it first (SIGTERM), then run natd down"))?;
        let shown = format!("{}/natd/{netns}/{pair_name}", root.shown);
        Ok(Some(Self { dir: pair.join(format!("layout-{STATE_LAYOUT}")), pair, shown, handover_file, _lock: lock, _root: root }))
    }

    /// Where a natd that stops with the datapath serving leaves what the
    /// next one needs besides the maps (`handover::Handover`).
    pub fn handover_file(&self) -> &Path {
        &self.handover_file
    }

    /// Where map `name` is pinned.
    pub fn map_pin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where the link of `side` in `mode` ("native" or "generic") is pinned.
    pub fn link_pin(&self, side: Side, mode: &str) -> PathBuf {
        self.dir.join(format!("link-{}-{mode}", side_name(side)))
    }

    /// The pinned link of `side`, if one is attached to `ifindex`: its pin
    /// and its mode. A link whose interface is gone or another is unpinned.
    pub fn live_link(&self, side: Side, ifindex: u32) -> Option<(PathBuf, &'static str)> {
        for mode in ["native", "generic"] {
            let pin = self.link_pin(side, mode);
            if !pin.exists() {
                continue;
            }
            if link_ifindex(&pin) == Some(ifindex) {
                return Some((pin, mode));
            }
            let _ = std::fs::remove_file(&pin);
        }
        None
    }

    /// Whether both links are pinned and attached: a datapath that serves,
    /// whose maps a new natd adopts.
    pub fn serves(&self, lan_ifindex: u32, wan_ifindex: u32) -> bool {
        self.live_link(Side::Lan, lan_ifindex).is_some() && self.live_link(Side::Wan, wan_ifindex).is_some()
    }

    /// Whether any map is pinned.
    pub fn has_maps(&self) -> bool {
        std::fs::read_dir(&self.dir).is_ok_and(|mut entries| entries.any(|e| e.is_ok_and(|e| !e.file_name().to_string_lossy().starts_with("link-"))))
    }

    /// Removes this layout's pins (maps and links), leaving an empty
    /// directory: what a fresh start pins into.
    pub fn clear(&self) -> Result<()> {
        remove_tree(&self.dir)?;
        std::fs::create_dir_all(&self.dir)?;
        Ok(())
    }

    /// Removes every pin of this pair, every layout: unpinning a link
    /// nothing else holds detaches its program, and unpinned maps are freed
    /// with the last program using them. Returns what was pinned.
    pub fn remove(self) -> Result<Vec<String>> {
        let mut pins = Vec::new();
        collect_names(&self.pair, &self.pair, &mut pins);
        remove_tree(&self.pair)?;
        remove_handover_file(&self.handover_file);
        if let Some(netns) = self.pair.parent() {
            let _ = std::fs::remove_dir(netns);
        }
        Ok(pins)
    }
}

/// `/run/natd/handover/<netns>/<pair>.json`: /run is the same in every `ip
/// netns exec` of the namespace (only /sys is remounted).
fn handover_file(netns: &str, pair: &str) -> PathBuf {
    PathBuf::from(format!("/run/natd/handover/{netns}/{pair}.json"))
}

/// Removes a handover file, and its namespace's directory once empty.
pub fn remove_handover_file(path: &Path) {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Lan => "lan",
        Side::Wan => "wan",
    }
}

/// An exclusive `flock` on a directory, released on drop.
struct DirLock {
    _file: File,
}

impl DirLock {
    fn try_take(dir: &Path) -> std::io::Result<Self> {
        let file = File::open(dir)?;
        // SAFETY: a valid fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { _file: file })
    }
}

/// Whether a pair directory serves nothing: no layout holds a link that is
/// still attached to an interface.
fn pair_is_stale(pair: &Path) -> bool {
    std::fs::read_dir(pair).is_ok_and(|layouts| !layouts.flatten().any(|layout| links_attached(&layout.path())))
}

/// Whether a layout directory holds a pinned link still attached to an
/// interface.
fn links_attached(layout: &Path) -> bool {
    std::fs::read_dir(layout).is_ok_and(|entries| {
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("link-"))
            .any(|e| link_ifindex(&e.path()).is_some_and(|ifindex| ifindex != 0))
    })
}

/// The interface a pinned XDP link is attached to; `Some(0)` when it is gone.
pub fn link_ifindex(pin: &Path) -> Option<u32> {
    let file = open_pinned(pin).ok()?;
    link_info(file.as_fd()).map(|info| info.ifindex)
}

/// What the kernel says of a link (`struct bpf_link_info`, the XDP part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpLinkInfo {
    pub link_id: u32,
    pub prog_id: u32,
    /// 0 once the interface is gone.
    pub ifindex: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link. aya's `LinkInfo` has no XDP part.
pub fn link_info(fd: BorrowedFd<'_>) -> Option<XdpLinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then a union aligned to 8
    // whose XDP member is the ifindex.
    let mut info = [0u8; 64];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr { bpf_fd: fd.as_raw_fd() as u32, info_len: info.len() as u32, info: info.as_mut_ptr() as u64 };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: attr and info outlive the call; the kernel writes at most info_len bytes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &mut attr as *mut InfoAttr, std::mem::size_of::<InfoAttr>()) };
    if rc != 0 {
        return None;
    }
    let word = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().expect("4 bytes"));
    Some(XdpLinkInfo { link_id: word(4), prog_id: word(8), ifindex: word(16) })
}

/// `BPF_OBJ_GET`: an fd of a pinned object.
pub fn open_pinned(pin: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let path = CString::new(pin.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    #[repr(C)]
    struct GetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let attr = GetAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    const BPF_OBJ_GET: libc::c_long = 7;
    // SAFETY: attr and path outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &attr as *const GetAttr, std::mem::size_of::<GetAttr>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel handed us.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// This network namespace's cookie: unique for the machine's uptime, never
/// reused (unlike the namespace's inode number).
pub fn netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0")).context("a socket to read the namespace cookie")?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for the call.
    let rc = unsafe { libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14)");
    }
    Ok(cookie)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs writes the struct it is given.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC }
}

/// Removes a directory of pins and everything in it.
fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

fn collect_names(base: &Path, dir: &Path, names: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_names(base, &path, names);
        } else if let Ok(relative) = path.strip_prefix(base) {
            names.push(relative.display().to_string());
        }
    }
}
