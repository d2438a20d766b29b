//! `cargo xtask`: orchestration only (bootstrap, build, test, bench). The
//! eBPF object itself is built by nat-userspace/build.rs through aya-build.

mod bench;
mod bootstrap;
mod hit_steps;
mod install;
mod lab;

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and benchmark the XDP NAT gateway")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build needs (rust-src, bpf-linker) and nothing else.
    Bootstrap,
    /// Build everything in release.
    Build,
    /// With no arguments: a lab of network namespaces showing the gateway at
    /// work (root). With arguments: natd itself, e.g.
    /// `cargo xtask run -- run --lan eth1 --wan eth0`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: host unit and property tests, kernel (BPF_PROG_TEST_RUN)
    /// tests and namespace tests. Kernel and namespace tests need root; without
    /// it they report SKIPPED.
    Test {
        /// Extra arguments for `cargo test` (a test name filter, `--nocapture`...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The benchmark suite (../shared/BENCHMARK.md): fast-path cost, packets
    /// per second against nftables masquerade, kernel forwarding and bare XDP
    /// redirect, new flows and TCP through natd and conntrack, sessions at
    /// scale; inbound forwards against nftables DNAT, HAProxy and bare
    /// redirect (packets/s, connections/s, failover; reported, never a
    /// failure). Writes target/bench/results.{json,md}. Needs root.
    Bench {
        /// The same figures from fewer runs (under 3 minutes).
        #[arg(long)]
        quick: bool,
        /// Instead of the suite: the hit path timed step by step, with
        /// programs cut down after each step (target/bench/hit-steps.md;
        /// about 10 minutes, the builds in target/hit-steps).
        #[arg(long, conflicts_with = "quick")]
        hit_steps: bool,
    },
    /// Build the release natd and install it with its systemd unit
    /// (PREFIX/lib/systemd/system/natd.service), the README, and the
    /// example configuration as SYSCONFDIR/natd/natd.toml when none is
    /// there. Starts nothing.
    Install {
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        #[arg(long, default_value = "/etc")]
        sysconfdir: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Bootstrap => bootstrap::toolchain(),
        Cmd::Build => {
            bootstrap::toolchain()?;
            run(Command::new("cargo").args(["build", "--release", "--workspace", "--exclude", "nat-ebpf"]))
        }
        Cmd::Run { args } => {
            bootstrap::toolchain()?;
            run(Command::new("cargo").args(["build", "--release", "-p", "nat-userspace", "--bin", "natd"]))?;
            let natd = root.join("target/release/natd");
            if args.is_empty() {
                bootstrap::test_tools()?;
                lab::run(&natd)
            } else {
                run(Command::new(&natd).args(&args))
            }
        }
        Cmd::Test { args } => {
            bootstrap::toolchain()?;
            bootstrap::test_tools()?;
            // The end-to-end tests run the real natd of the profile `cargo test` uses.
            run(Command::new("cargo").args(["build", "-p", "nat-userspace", "--bin", "natd"]))?;
            test(&args)
        }
        Cmd::Install { prefix, sysconfdir } => {
            bootstrap::toolchain()?;
            install::build_and_install(&root, &install::Layout { prefix, sysconfdir })
        }
        Cmd::Bench { quick, hit_steps } => {
            bootstrap::toolchain()?;
            bootstrap::test_tools()?;
            if hit_steps { hit_steps::run_all() } else { bench::suite(&bench::Plan::new(quick)) }
        }
    }
}

/// Runs `cargo test`, streaming its output, and closes with one line that sums
/// every test binary's result (cargo's own last line is the doc-tests', which
/// says nothing about the rest).
fn test(args: &[String]) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut child = Command::new("cargo")
        .arg("test")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("spawning cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(label), Some(count)) = (words.next(), words.next()) else { continue };
                let count: u64 = count.parse().unwrap_or(0);
                match label {
                    "passed" => passed += count,
                    "failed" => failed += count,
                    "ignored" => ignored += count,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    if bootstrap::euid() != 0 {
        println!("note: not root, so the kernel and namespace tests skipped themselves (they pass as no-ops)");
    }
    println!("summary: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

fn workspace_root() -> Result<std::path::PathBuf> {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest.parent().context("xtask has no parent directory")?.to_path_buf())
}

/// Runs a command with inherited output; fails naming the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails with its stderr.
pub fn command_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
