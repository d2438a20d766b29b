//! Builds the XDP programs (nat-ebpf) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker; `src/lib.rs` embeds the object.
//!
//! aya-build replays the nested cargo's every line ("Compiling ...") as a
//! build-script warning, and cargo replays those on every later build, even
//! when nothing changed: forty lines of noise per `cargo build`. So the
//! build runs in a child (this script again), and only what matters is
//! passed on: everything when the eBPF build failed, its compiler
//! diagnostics when it succeeded, never the progress lines.
use std::{env, process::Command};

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

/// Set in the child that does the build.
const CHILD: &str = "NAT_EBPF_BUILD_CHILD";

fn main() -> anyhow::Result<()> {
    if env::var_os(CHILD).is_some() {
        return build();
    }
    if which_bpf_linker().is_none() && env::var_os("AYA_BUILD_SKIP").is_none() {
        bail!(
            "bpf-linker is not on PATH. Run `cargo xtask build` or `cargo xtask test`: \
             they install rust-src and build bpf-linker against the nightly's LLVM."
        );
    }
    let me = env::current_exe().context("locating the build script")?;
    let out = Command::new(me).env(CHILD, "1").output().context("running the eBPF build")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        match line.strip_prefix("cargo:warning=") {
            // The nested cargo's progress says nothing a user needs.
            Some(text) if out.status.success() && is_progress(text) => {}
            _ => println!("{line}"),
        }
    }
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("building the XDP programs (nat-ebpf) failed; the compiler output is above");
    }
    Ok(())
}

/// The build itself (in the child).
fn build() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../nat-ebpf");
    aya_build::build_ebpf([Package { name: "nat-ebpf", root_dir: root, ..Default::default() }], Toolchain::Nightly)
        .map_err(|e| anyhow!("{e:#}"))
}

/// A line of cargo's progress report, not a diagnostic.
fn is_progress(text: &str) -> bool {
    const PROGRESS: &[&str] = &["Compiling", "Finished", "Fresh", "Updating", "Downloading", "Downloaded", "Locking", "Adding", "Blocking", "Building"];
    PROGRESS.iter().any(|word| text.trim_start().starts_with(word))
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join("bpf-linker")).find(|candidate| candidate.is_file())
}
