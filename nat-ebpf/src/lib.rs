//! What the eBPF binaries share. Also the library target that lets
//! nat-userspace name this crate as a build dependency.
#![no_std]

/// Never reached: a panic in BPF code fails verification (there is no unwinding),
/// so this only has to exist.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
