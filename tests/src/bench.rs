//! What the benchmark binaries share: where results go, CPU pinning, and
//! order statistics.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::Result;

/// target/bench, where every benchmark writes `<name>.json` and `<name>.md`.
pub fn results_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench")
}

/// Writes `<name>.json` and `<name>.md` to target/bench and prints the table.
pub fn write_results(name: &str, json: &str, md: &str) -> Result<()> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{name}.json")), json)?;
    std::fs::write(dir.join(format!("{name}.md")), md)?;
    let mut out = String::from(md);
    writeln!(out, "written to {}", dir.join(format!("{name}.{{json,md}}")).display())?;
    print!("{out}");
    Ok(())
}

/// Pins the calling thread to one CPU, so a figure is one core's work.
pub fn pin_to_cpu(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The p-th percentile (nearest rank) of `values`, which it sorts.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let index = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[index]
}

pub fn median(values: &mut [f64]) -> f64 {
    percentile(values, 50.0)
}
