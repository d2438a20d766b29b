//! Builds the XDP programs (nat-ebpf) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker; `src/lib.rs` embeds the object.
//!
//! aya-build replays the nested cargo's every line ("Compiling ...") as a
//! build-script warning, and cargo replays those on every later build, even
//! when nothing changed: forty lines of noise per `cargo build`. So the
//! build runs in a child (this script again), and only what matters is
//! passed on: everything when the eBPF build failed, its compiler
//! diagnostics when it succeeded, never the progress lines.
//!
//! The programs are built for the BPF instruction set v3 (32-bit ALU and
//! jumps, kernel 5.1 and later), not rustc's `generic` (v1). On v1 every
//! 32-bit value is zero-extended by a shift pair and compared in 64 bits;
//! v3 cut the hit path by 1-2 ns and the main programs' verified
//! instructions by 5-7% (see `BPF_CPU`).
use std::{
    env,
    ffi::{OsStr, OsString},
    fs,
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

/// Set in the child that does the build.
const CHILD: &str = "NAT_EBPF_BUILD_CHILD";

/// The BPF instruction set bpf-linker generates code for.
///
/// rustc hands bpf-linker `--cpu generic` unless `-C target-cpu` says
/// otherwise, and nothing here can say so: aya-build sets the nested build's
/// RUSTFLAGS itself, and bpf-linker refuses a second `--cpu`. So the nested
/// build links through this script (`relink`), which passes every argument
/// on with this CPU in place of rustc's.
const BPF_CPU: &str = "v3";

/// Set to a hit-path step, the programs are built cut down after it, for
/// `cargo xtask bench --hit-steps` (nat-ebpf's `cut`).
const CUT_AFTER: &str = "NAT_EBPF_CUT_AFTER";

fn main() -> anyhow::Result<()> {
    // Cargo runs a build script without arguments; rustc runs its linker
    // with them.
    if env::args_os().len() > 1 {
        return relink();
    }
    if env::var_os(CHILD).is_some() {
        return build();
    }
    println!("cargo:rerun-if-env-changed={CUT_AFTER}");
    if let Some(step) = env::var_os(CUT_AFTER) {
        println!(
            "cargo:warning={CUT_AFTER}={}: the XDP programs are cut down to time the hit path; natd refuses to run with them",
            step.to_string_lossy()
        );
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
    let me = env::current_exe().context("locating the build script")?;
    // SAFETY: the child is single-threaded here; the nested cargo inherits
    // the variable and has rustc link through this script (`BPF_CPU`).
    unsafe { env::set_var("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", me) };
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

/// Stands in for bpf-linker in the nested build: the arguments rustc gave,
/// with `BPF_CPU` for the CPU it named. Arguments in a response file
/// (`@path`, which rustc writes when a command line gets too long) are
/// rewritten in the file.
fn relink() -> anyhow::Result<()> {
    let linker = which_bpf_linker().context("bpf-linker is not on PATH")?;
    let args: Vec<OsString> = env::args_os().skip(1).collect();
    for file in args.iter().filter_map(|arg| arg.to_str()?.strip_prefix('@')) {
        let text = fs::read_to_string(file).with_context(|| format!("reading the linker's response file {file}"))?;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        fs::write(file, with_cpu(lines).join("\n")).with_context(|| format!("rewriting {file}"))?;
    }
    let status = Command::new(&linker).args(with_cpu(args)).status().with_context(|| format!("running {}", linker.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// `args` with the value of `--cpu` (or `--cpu=...`) replaced by `BPF_CPU`.
fn with_cpu<A: AsRef<OsStr> + From<String>>(args: Vec<A>) -> Vec<A> {
    let mut out = Vec::with_capacity(args.len());
    let mut value_next = false;
    for arg in args {
        let text = arg.as_ref().to_str().unwrap_or_default();
        if value_next {
            out.push(A::from(BPF_CPU.to_owned()));
            value_next = false;
        } else if text == "--cpu" {
            out.push(arg);
            value_next = true;
        } else if text.starts_with("--cpu=") {
            out.push(A::from(format!("--cpu={BPF_CPU}")));
        } else {
            out.push(arg);
        }
    }
    out
}
