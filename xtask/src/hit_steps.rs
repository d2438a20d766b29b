//! `cargo xtask bench --hit-steps`: where a hit's nanoseconds go (issue 16,
//! "profile it with test runs of cut-down programs"). fastpath-bench is
//! built cut down after each step of the hit path in turn (nat-ebpf's
//! `cut`, `NAT_EBPF_CUT_AFTER`), then whole in the same harness, and run
//! each time; the rows are laid side by side with what each step added,
//! in target/bench/hit-steps.{json,md}.
//!
//! The cut-down builds go to a target directory of their own
//! (target/hit-steps): nothing built cut down can land in target/release.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::run;

/// Each build's `NAT_EBPF_CUT_AFTER` and what the packet has been through
/// when it stops there; "none" is the whole program.
const STEPS: [(&str, &str); 9] = [
    ("1", "parsed: Ethernet, VLAN, IPv4 checks and header checksum, L4 header"),
    ("2", "checked: what comes before the mapping lookup (TTL, special destinations, pool address, ICMP error, fragment, endpoint)"),
    ("3", "looked up: the mapping, a hit"),
    ("4", "routed: filter by remote, clock, next-hop cache"),
    ("5", "refreshed: the session's liveness stamp"),
    ("6", "rewritten: addresses, TTL, ports, both checksums"),
    ("7", "checksum done: the partial-checksum test (cut at 6 it is compiled out)"),
    ("8", "MACs written"),
    ("none", "whole: the devmap redirect and the reason counter"),
];

const ROWS: [&str; 8] = ["tcp_out", "udp_out", "icmp_out", "tcp_in", "udp_in", "icmp_in", "tcp_fwd_in", "udp_fwd_in"];

const TARGET_DIR: &str = "target/hit-steps";

/// fastpath-bench's rounds and epochs for each build (about 6 s a run).
const ROUNDS: &str = "1000";
const EPOCHS: &str = "5";

pub fn run_all() -> Result<()> {
    let dir = Path::new("target/bench");
    let mut figures = Vec::new();
    for (step, _) in STEPS {
        run(Command::new("cargo")
            .args(["build", "--release", "--quiet", "-p", "nat-tests", "--bin", "fastpath-bench"])
            .env("NAT_EBPF_CUT_AFTER", step)
            .env("CARGO_TARGET_DIR", TARGET_DIR))?;
        // What fastpath-bench writes when built cut down.
        let path = dir.join(format!("fastpath-steps-{step}.json"));
        let _ = std::fs::remove_file(&path);
        run(Command::new(Path::new(TARGET_DIR).join("release/fastpath-bench")).args([ROUNDS, EPOCHS]))?;
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        figures.push(serde_json::from_str::<Value>(&text).with_context(|| format!("parsing {}", path.display()))?);
    }
    write(dir, &figures)
}

fn write(dir: &Path, figures: &[Value]) -> Result<()> {
    // The cost of `row` cut after the `step`th step.
    let ns = |step: usize, row: &str| figures[step][row].as_i64();
    let mut md = String::from(
        "Each row: fastpath-bench's cost above the XDP_DROP floor (ns, lowest epoch) of the programs cut down after that step \
         (`cargo xtask bench --hit-steps`); in brackets, what the step added to the one before. \
         Outbound the lookup is OUTBOUND's hash, inbound INBOUND's array, forwarded a flow's entry.\n\n",
    );
    writeln!(md, "| after step | {} |", ROWS.join(" | "))?;
    writeln!(md, "|---|{}", "---|".repeat(ROWS.len()))?;
    let mut steps_json = Vec::new();
    for (i, (step, what)) in STEPS.iter().enumerate() {
        let cells: Vec<String> = ROWS
            .iter()
            .map(|row| match (ns(i, row), i.checked_sub(1).and_then(|p| ns(p, row))) {
                (Some(now), Some(before)) => format!("{now} ({:+})", now - before),
                (Some(now), None) => now.to_string(),
                _ => "-".to_string(),
            })
            .collect();
        writeln!(md, "| {step}: {what} | {} |", cells.join(" | "))?;
        let rows: serde_json::Map<String, Value> = ROWS.iter().map(|row| (row.to_string(), json!(ns(i, row)))).collect();
        steps_json.push(json!({ "cut_after": step, "what": what, "ns": rows }));
    }
    let json = json!({ "rounds": ROUNDS, "epochs": EPOCHS, "steps": steps_json });
    std::fs::write(dir.join("hit-steps.json"), serde_json::to_string_pretty(&json)?)?;
    std::fs::write(dir.join("hit-steps.md"), &md)?;
    print!("{md}");
    println!("written to target/bench/hit-steps.{{json,md}}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each cell is the row's cost at that cut, with what the step added
    /// to the cut before it; the first step has nothing before it.
    #[test]
    fn the_table_shows_each_steps_share() {
        let figures: Vec<Value> = (0..STEPS.len())
            .map(|i| {
                let i = i as i64;
                json!({ "tcp_out": 10 + 3 * i, "udp_out": 10, "icmp_out": 10, "tcp_in": 20 + i, "udp_in": 20, "icmp_in": 20, "tcp_fwd_in": 30, "udp_fwd_in": 30 })
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("hit-steps-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = write(&dir, &figures);
        let md = std::fs::read_to_string(dir.join("hit-steps.md"));
        let json = std::fs::read_to_string(dir.join("hit-steps.json"));
        std::fs::remove_dir_all(&dir).unwrap();
        written.unwrap();
        let (md, json) = (md.unwrap(), serde_json::from_str::<Value>(&json.unwrap()).unwrap());
        let lines: Vec<&str> = md.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| after")).collect();
        assert_eq!(lines.len(), STEPS.len());
        assert!(lines[0].starts_with("| 1: parsed") && lines[0].ends_with("| 10 | 10 | 10 | 20 | 20 | 20 | 30 | 30 |"), "{}", lines[0]);
        assert!(lines[1].contains("| 13 (+3) | 10 (+0) | 10 (+0) | 21 (+1) |"), "{}", lines[1]);
        assert!(lines[8].starts_with("| none: whole") && lines[8].contains("| 34 (+3) |"), "{}", lines[8]);
        assert_eq!(json["steps"][0]["ns"]["tcp_in"], json!(20));
        assert_eq!(json["steps"][8]["ns"]["tcp_out"], json!(34));
    }
}
