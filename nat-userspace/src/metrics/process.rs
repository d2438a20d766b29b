//! natd's own CPU time, memory and descriptors, read from /proc/self at
//! scrape time on the metrics thread (prometheus-client has no process
//! collector). The fields and units are proc(5)'s.

use anyhow::{Context as _, Result, bail};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system time.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub threads: u64,
}

impl ProcessStats {
    /// This process, now.
    pub fn read() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
        let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
        let boot = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let open_fds = std::fs::read_dir("/proc/self/fd").context("reading /proc/self/fd")?.count() as u64;
        // SAFETY: sysconf and getrlimit only write what they are given.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur } else { 0 };
        let mut stats = parse(&stat, &statm, &boot, ticks.max(1) as u64, page.max(1) as u64)?;
        stats.open_fds = open_fds;
        stats.max_fds = max_fds;
        Ok(stats)
    }
}

/// The figures of /proc/self/stat, /proc/self/statm and /proc/stat's
/// `btime`, with the clock ticks per second and the page size.
pub fn parse(stat: &str, statm: &str, proc_stat: &str, ticks_per_s: u64, page_bytes: u64) -> Result<ProcessStats> {
    // The command name (field 2) may hold spaces and parentheses: the
    // fields that follow start after its last ')'.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).context("/proc/self/stat without a command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // proc(5) numbers fields from 1; `rest` starts at field 3 (state).
    let field = |n: usize| -> Result<u64> {
        let text = fields.get(n - 3).with_context(|| format!("/proc/self/stat has no field {n}"))?;
        text.parse().with_context(|| format!("/proc/self/stat field {n}: {text:?}"))
    };
    let (utime, stime, threads, start_ticks, vsize) = (field(14)?, field(15)?, field(20)?, field(22)?, field(23)?);
    let resident_pages: u64 = match statm.split_whitespace().nth(1).map(str::parse) {
        Some(Ok(pages)) => pages,
        _ => bail!("/proc/self/statm without a resident size: {statm:?}"),
    };
    let boot_time: u64 = proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|t| t.trim().parse().ok())
        .context("/proc/stat without btime")?;
    Ok(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / ticks_per_s as f64,
        resident_bytes: resident_pages * page_bytes,
        virtual_bytes: vsize,
        start_time_seconds: boot_time as f64 + start_ticks as f64 / ticks_per_s as f64,
        open_fds: 0,
        max_fds: 0,
        threads,
    })
}
