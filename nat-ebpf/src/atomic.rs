//! Counters in map values that several CPUs add to.

/// `*counter += delta` (wrapping), atomically: a BPF XADD, whose result
/// ISA v1 cannot return. (The host build, for clippy, uses the std atomic.)
#[inline(always)]
pub fn atomic_add(counter: *mut u64, delta: u64) {
    // SAFETY: `counter` is a value of a map, alive while the program runs.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(counter, delta);
    }
    // SAFETY: as above.
    #[cfg(not(target_arch = "bpf"))]
    unsafe { core::sync::atomic::AtomicU64::from_ptr(counter) }.fetch_add(delta, core::sync::atomic::Ordering::Relaxed);
}
