//! Makes a fresh machine able to build and test: rust-src for the nightly,
//! bpf-linker built against the nightly's own LLVM, and (as root) the Debian
//! tools the namespace tests drive. Idempotent and fast when already done.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{command_output, run};

/// The toolchain aya-build compiles the eBPF crate with.
pub const NIGHTLY: &str = "nightly";

/// Debian packages the tests use, with the command (or, for an absolute
/// path, the file) that proves each is there.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("ping", "iputils-ping"),
    ("ethtool", "ethtool"),
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("nginx", "nginx-light"),
    ("iperf3", "iperf3"),
    ("tcpdump", "tcpdump"),
    ("nft", "nftables"),
    // RFC 5780 NAT behaviour discovery: the client and a STUN server.
    ("turnutils_natdiscovery", "coturn"),
    ("traceroute", "traceroute"),
    ("tracepath", "iputils-tracepath"),
    // A DHCP server on the gateway and a client on a LAN host (dnsmasq-base
    // has no service to start).
    ("dnsmasq", "dnsmasq-base"),
    ("busybox", "busybox"),
    // Inbound forwards: load from the WAN, and the reference L4 balancer
    // the benchmarks measure against (policy-rc.d keeps its service off).
    ("wrk", "wrk"),
    ("haproxy", "haproxy"),
    // The name-based proxy's TLS servers and their certificates.
    ("openssl", "openssl"),
    // The proxy benchmark's nginx stream (ssl_preread): a module, so its
    // file is what proves it is there.
    ("/usr/lib/nginx/modules/ngx_stream_module.so", "libnginx-mod-stream"),
    // NAT-T with a real IKE stack: charon (run in the foreground by the
    // tests, one per namespace; policy-rc.d keeps strongswan-starter's
    // service off), swanctl, and kernel-libipsec (user-space ESP over TUN:
    // this kernel has no ESP), a plugin, so its file proves it.
    ("/usr/lib/ipsec/charon", "strongswan-charon"),
    ("swanctl", "strongswan-swanctl"),
    ("/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so", "libcharon-extra-plugins"),
    // The metrics test validates natd's exposition with `promtool check
    // metrics`, run as a command only (policy-rc.d keeps the prometheus
    // server's service off).
    ("promtool", "prometheus"),
    // SCTP with a real stack: usrsctp's example programs (client,
    // echo_server) run over raw IPv4, since this kernel has no SCTP; tshark
    // checks every SCTP packet's CRC32c in the captures.
    ("/usr/lib/usrsctp/client", "libusrsctp-examples"),
    ("tshark", "tshark"),
];

/// Debian's policy hook: while it exits 101, package scripts start no
/// services (coturn would otherwise start a TURN server in the machine's own
/// namespace; the tests start their own inside a test namespace).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn toolchain() -> Result<()> {
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    Ok(())
}

fn ensure_nightly() -> Result<()> {
    let list = command_output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build the eBPF programs (https://rustup.rs)")?;
    if !list.lines().any(|l| l.starts_with(NIGHTLY)) {
        eprintln!("xtask: installing the {NIGHTLY} toolchain (the eBPF crate needs -Z build-std)");
        run(Command::new("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))?;
    }
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let installed = command_output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to {NIGHTLY} (needed for -Z build-std=core)");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    Ok(())
}

/// The LLVM major version of the nightly, from `rustc +nightly -vV`.
fn nightly_llvm_major() -> Result<u32> {
    let vv = command_output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` printed no LLVM version")?;
    version
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .with_context(|| format!("unreadable LLVM version {version:?}"))
}

fn cache_dir() -> PathBuf {
    let home = env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    home.join(".cache/xdp-nat")
}

fn cargo_bin() -> PathBuf {
    match env::var_os("CARGO_HOME") {
        Some(h) => PathBuf::from(h).join("bin"),
        None => env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into()).join(".cargo/bin"),
    }
}

/// bpf-linker must link against the same LLVM major as the nightly's rustc
/// emits bitcode for. It is (re)built when missing, when it no longer runs,
/// or when the nightly's LLVM major moved since it was built.
fn ensure_bpf_linker() -> Result<()> {
    let major = nightly_llvm_major()?;
    let stamp = cache_dir().join("bpf-linker.llvm-major");
    let linker = cargo_bin().join("bpf-linker");
    let runs = Command::new(&linker).arg("--version").output().is_ok_and(|o| o.status.success());
    let built_for = fs::read_to_string(&stamp).ok().and_then(|s| s.trim().parse::<u32>().ok());
    if runs && (built_for == Some(major) || built_for.is_none() && linker_links_llvm(&linker, major)) {
        if built_for.is_none() {
            write_stamp(&stamp, major)?;
        }
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker against the nightly's LLVM {major} (about a minute, once)");
    let sysroot = command_output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    let nightly_lib = Path::new(sysroot.trim()).join("lib");
    let prefix = cache_dir().join("rust-llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    let mut versioned = Vec::new();
    for entry in fs::read_dir(&nightly_lib)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name.starts_with("libLLVM") && name.contains(".so") {
            symlink_force(&path, &prefix_lib.join(&name))?;
            if name.starts_with("libLLVM.so.") {
                versioned.push(path);
            }
        }
    }
    let Some(lib) = versioned.first() else {
        bail!("no libLLVM.so.* in {}: is the nightly toolchain complete?", nightly_lib.display());
    };
    // The name the linker looks for; the binary keeps an rpath to this folder.
    symlink_force(lib, &prefix_lib.join("libLLVM.so"))?;
    run(Command::new("cargo")
        .args(["+stable", "install", "bpf-linker", "--version", "^0.13", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
    .context("building bpf-linker failed; see the cargo output above")?;
    write_stamp(&stamp, major)
}

/// For a bpf-linker installed by hand (no stamp): does it link the right LLVM?
fn linker_links_llvm(linker: &Path, major: u32) -> bool {
    command_output(Command::new("ldd").arg(linker))
        .is_ok_and(|ldd| ldd.contains(&format!("libLLVM.so.{major}")) || ldd.contains(&format!("libLLVM-{major}")))
}

fn write_stamp(stamp: &Path, major: u32) -> Result<()> {
    fs::create_dir_all(stamp.parent().unwrap())?;
    fs::write(stamp, major.to_string())?;
    Ok(())
}

fn symlink_force(target: &Path, link: &Path) -> Result<()> {
    let _ = fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

fn have(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return Path::new(cmd).exists();
    }
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().is_ok_and(|o| o.status.success())
}

/// Installs the missing test tools with apt-get (root only; without root the
/// namespace tests skip themselves anyway).
pub fn test_tools() -> Result<()> {
    python_modules()?;
    let missing: Vec<&str> = TEST_PACKAGES.iter().filter(|(cmd, _)| !have(cmd)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if euid() != 0 {
        eprintln!("xtask: not root, so not installing {missing:?}; the namespace tests will skip");
        return Ok(());
    }
    eprintln!("xtask: installing {missing:?} for the namespace tests");
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    let own_policy = !std::path::Path::new(POLICY_RC_D).exists();
    if own_policy {
        std::fs::write(POLICY_RC_D, "#!/bin/sh\nexit 101\n")?;
        std::fs::set_permissions(POLICY_RC_D, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let installed = run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    if own_policy {
        std::fs::remove_file(POLICY_RC_D)?;
    }
    installed
}

/// Python modules the namespace tests run (PyPI name, import name): the
/// QUIC proxy's client and server (aioquic; Debian's python3-aioquic is too
/// old for the tests' API on some releases), and the ESP end-to-end test's
/// peers (scapy's SecurityAssociation: this kernel has no ESP; it encrypts
/// with the `cryptography` the pip-installed aioquic brings), and the
/// HTTP/2 server that takes WebSocket over HTTP/2 (`h2`, RFC 8441 since 4.0).
const PYTHON_MODULES: &[(&str, &str)] = &[("aioquic>=1.0,<2", "aioquic"), ("scapy>=2.5,<3", "scapy"), ("h2>=4.1,<5", "h2")];

/// Installs the missing Python modules with pip, for the `python3` the
/// tests run (root only, as the packages).
fn python_modules() -> Result<()> {
    let missing: Vec<&str> = PYTHON_MODULES
        .iter()
        .filter(|(_, module)| !Command::new("python3").args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success()))
        .map(|(pypi, _)| *pypi)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if euid() != 0 {
        eprintln!("xtask: not root, so not installing the Python modules {missing:?}; the namespace tests will skip");
        return Ok(());
    }
    if !have("pip3") && Command::new("python3").args(["-m", "pip", "--version"]).output().map_or(true, |o| !o.status.success()) {
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get").args(["install", "-y", "-qq", "--no-install-recommends", "python3-pip"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    eprintln!("xtask: installing the Python modules {missing:?} with pip");
    let pip = |extra: &[&str]| run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(extra).args(&missing));
    // A distribution's own Python refuses user installs (PEP 668) unless told.
    pip(&[]).or_else(|_| pip(&["--break-system-packages"])).context("installing the Python modules the QUIC, ESP and HTTP/2 tests need (aioquic, scapy, h2) with pip")
}

pub fn euid() -> u32 {
    command_output(Command::new("id").arg("-u")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(u32::MAX)
}
