//! Bad flags, config and interfaces: clear errors, nothing left attached.

use nat_tests::{natlab::NatLab, require_root};

/// Bad input: each a clear error naming what to fix, and nothing left attached.
#[test]
fn bad_input_is_a_clear_error_and_leaves_nothing_attached() {
    require_root!();
    let mut lab = NatLab::new(1, false).unwrap();
    let failures: [(&[&str], &str); 4] = [
        (&["--lan", "nosuch0", "--wan", "wan0"], "lan = nosuch0: no such interface"),
        (&["--lan", "lan0", "--wan", "wan0", "--port-range", "100-50"], "--port-range (port_range) = \"100-50\""),
        (&["--lan", "lan0", "--wan", "wan0", "--port-range", "40000-40100"], "overlaps the kernel's ephemeral ports"),
        (&["--lan", "lan0", "--wan", "wan0", "--xdp-mode", "turbo"], "xdp_mode"),
    ];
    for (args, expected) in failures {
        let full = [&["run"], args].concat();
        let out = lab.natd_cli(&full).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "natd {full:?}: expected {expected:?} in:\n{err}");
        assert!(!lab.xdp_attached().unwrap(), "natd {full:?} failed but left a program attached");
    }

    let bad = lab.config_file("lan = \"lan0\"\nwan = \"wan0\"\nport_rnage = \"20000-20100\"\n[timeouts]\nudp = \"soon\"\n").unwrap();
    let out = lab.natd_cli(&["check", "--config", bad.to_str().unwrap()]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("port_rnage: unknown setting") && err.contains("timeouts.udp = \"soon\""), "{err}");
    let out = lab.natd_cli(&["run", "--config", bad.to_str().unwrap()]).unwrap();
    assert!(!out.status.success() && !lab.xdp_attached().unwrap());

    // A WAN interface without an IPv4 address and no external_ip.
    lab.gw.ip(&["addr", "flush", "dev", "wan0"]).unwrap();
    let out = lab.natd_cli(&["run", "--lan", "lan0", "--wan", "wan0"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("wan = wan0: has no IPv4 address"), "{err}");
    lab.gw.ip(&["addr", "add", "203.0.113.1/24", "dev", "wan0"]).unwrap();

    // A second daemon on the same interfaces.
    lab.start_natd(&[]).unwrap();
    let out = lab.natd_cli(&["run", "--lan", "lan0", "--wan", "wan0"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("already served by another natd"), "{err}");
    assert!(lab.natd_cli(&["status"]).unwrap().status.success(), "the first natd must keep serving");
    lab.stop_natd().unwrap();
    assert!(!lab.xdp_attached().unwrap(), "programs left attached after SIGINT");
}
