//! Relink when bpf-linker changes (it is rebuilt when the nightly's LLVM moves),
//! and fail with a pointer to the fix when it is missing.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!(
            "cargo:warning=bpf-linker is not on PATH: run `cargo xtask build` (it bootstraps the toolchain)"
        ),
    }
}
