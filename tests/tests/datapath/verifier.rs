//! The programs' share of the verifier's instruction budget.

use nat_common::program_names;
use nat_tests::require_root;

use super::gateway;

/// The verifier walks every path of a program up to 1,000,000 instructions;
/// a change that multiplies paths (one state per queue, per pool address...)
/// fails to load long after it compiles. Half the limit is the budget.
#[test]
fn programs_stay_within_half_the_verifier_budget() {
    require_root!();
    let gw = gateway("verified").unwrap();
    // The SCTP and ESP programs (tail-called by the main ones) have budgets
    // of their own.
    for name in [program_names::LAN, program_names::WAN, program_names::LAN_SCTP, program_names::WAN_SCTP, program_names::LAN_ESP, program_names::WAN_ESP] {
        let info = gw.datapath.named_program(name).unwrap().info().unwrap();
        let verified = info.verified_instruction_count().expect("the kernel reports verified instructions (5.16+)");
        eprintln!("{name}: {verified} instructions verified");
        assert!(verified < 500_000, "{name}: {verified} instructions verified");
    }
}
