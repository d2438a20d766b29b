//! `cargo xtask install`: natd, its systemd unit, the example configuration
//! (when none is there yet) and the README, under a prefix. Nothing is
//! started or enabled: the operator runs `systemctl enable --now natd`.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::run;

/// Where things go.
pub struct Layout {
    /// `bin/natd`, `lib/systemd/system/natd.service`, `share/doc/natd/`.
    pub prefix: PathBuf,
    /// `natd/natd.toml` under it.
    pub sysconfdir: PathBuf,
}

impl Layout {
    pub fn bindir(&self) -> PathBuf {
        self.prefix.join("bin")
    }
    pub fn unit(&self) -> PathBuf {
        self.prefix.join("lib/systemd/system/natd.service")
    }
    pub fn docdir(&self) -> PathBuf {
        self.prefix.join("share/doc/natd")
    }
    pub fn config(&self) -> PathBuf {
        self.sysconfdir.join("natd/natd.toml")
    }
}

/// Installs `natd` (a built binary) under `layout`, from the workspace at
/// `root`. Returns what it did, one line each.
pub fn install(root: &Path, natd: &Path, layout: &Layout) -> Result<Vec<String>> {
    let mut done = Vec::new();
    if !natd.exists() {
        bail!("{} does not exist: build natd first (cargo build --release -p nat-userspace --bin natd)", natd.display());
    }
    let bin = layout.bindir().join("natd");
    copy(natd, &bin, 0o755)?;
    done.push(format!("natd -> {}", bin.display()));

    let template = fs::read_to_string(root.join("packaging/natd.service")).context("reading packaging/natd.service")?;
    let unit = template
        .replace("{bindir}", &layout.bindir().display().to_string())
        .replace("{sysconfdir}", &layout.sysconfdir.display().to_string())
        .replace("{docdir}", &layout.docdir().display().to_string());
    write(&layout.unit(), &unit, 0o644)?;
    done.push(format!("unit -> {}", layout.unit().display()));

    copy(&root.join("README.md"), &layout.docdir().join("README.md"), 0o644)?;
    done.push(format!("README -> {}", layout.docdir().display()));

    let config = layout.config();
    if config.exists() {
        done.push(format!("{} exists: left as it is (the example is {})", config.display(), layout.docdir().join("natd.toml").display()));
    } else {
        copy(&root.join("examples/natd.toml"), &config, 0o644)?;
        done.push(format!("example configuration -> {} (set lan and wan, then `natd check --config {0}`)", config.display()));
    }
    copy(&root.join("examples/natd.toml"), &layout.docdir().join("natd.toml"), 0o644)?;
    Ok(done)
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().context("a file has a parent")?)?;
    // Through a temporary name and a rename: a running natd's binary is
    // replaced, not written over (which fails with ETXTBSY).
    let staged = to.with_extension("xtask-new");
    fs::copy(from, &staged).with_context(|| format!("copying {} to {}", from.display(), staged.display()))?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(mode))?;
    fs::rename(&staged, to).with_context(|| format!("moving {} into place", to.display()))
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().context("a file has a parent")?)?;
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Builds the release natd and installs it.
pub fn build_and_install(root: &Path, layout: &Layout) -> Result<()> {
    run(Command::new("cargo").args(["build", "--release", "-p", "nat-userspace", "--bin", "natd"]))?;
    for line in install(root, &root.join("target/release/natd"), layout)? {
        println!("xtask install: {line}");
    }
    println!("xtask install: next: systemctl daemon-reload && systemctl enable --now natd (nothing was started)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
    }

    /// Into a temporary prefix: every file in place with its mode, the unit
    /// names the installed paths and passes `systemd-analyze verify`, an
    /// existing configuration is kept, and the installed natd runs.
    #[test]
    fn install_into_a_temporary_prefix_gives_a_unit_systemd_accepts() {
        let root = workspace();
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let natd = target.join("debug/natd");
        if !natd.exists() {
            eprintln!("SKIPPED: {} not built (cargo xtask test builds it first)", natd.display());
            return;
        }
        let dir = std::env::temp_dir().join(format!("natd-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let layout = Layout { prefix: dir.join("usr"), sysconfdir: dir.join("etc") };
        let done = install(&root, &natd, &layout).unwrap();
        assert!(done.iter().any(|l| l.starts_with("example configuration ->")), "{done:?}");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&layout.bindir().join("natd")), 0o755);
        assert_eq!(mode(&layout.unit()), 0o644);
        assert!(layout.docdir().join("README.md").exists() && layout.config().exists());
        let unit = fs::read_to_string(layout.unit()).unwrap();
        assert!(!unit.contains('{'), "every placeholder filled: {unit}");
        assert!(unit.contains(&format!("ExecStart={}/natd run --config {}", layout.bindir().display(), layout.config().display())), "{unit}");
        assert!(unit.contains("Type=notify") && unit.contains(&format!("ExecReload={}/natd reload", layout.bindir().display())), "{unit}");

        let verify = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(layout.unit()).output().expect("systemd-analyze (systemd) is installed");
        let said = String::from_utf8_lossy(&verify.stderr).into_owned() + &String::from_utf8_lossy(&verify.stdout);
        assert!(verify.status.success() && !said.contains("natd.service:"), "systemd-analyze verify: {said}");

        // Again: the operator's configuration is left alone.
        fs::write(layout.config(), "lan = \"eth9\"\n").unwrap();
        let done = install(&root, &natd, &layout).unwrap();
        assert!(done.iter().any(|l| l.contains("exists: left as it is")), "{done:?}");
        assert_eq!(fs::read_to_string(layout.config()).unwrap(), "lan = \"eth9\"\n");
        let help = Command::new(layout.bindir().join("natd")).arg("--help").output().unwrap();
        assert!(help.status.success(), "the installed natd runs");
        fs::remove_dir_all(&dir).unwrap();
    }
}
