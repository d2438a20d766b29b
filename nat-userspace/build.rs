//! Builds the XDP programs (nat-ebpf) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker; `src/ebpf.rs` embeds the object.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../nat-ebpf");
    if which_bpf_linker().is_none() && std::env::var_os("AYA_BUILD_SKIP").is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH. Run `cargo xtask build` or `cargo xtask test`: \
             they install rust-src and build bpf-linker against the nightly's LLVM."
        ));
    }
    aya_build::build_ebpf(
        [Package { name: "nat-ebpf", root_dir: root, ..Default::default() }],
        Toolchain::Nightly,
    )
    .context("building the XDP programs (nat-ebpf) failed; the compiler output is above")
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
}
