//! The programs' share of the verifier's instruction budget.

use nat_tests::require_root;
use nat_userspace::datapath::Side;

use super::gateway;

/// The verifier walks every path of a program up to 1,000,000 instructions;
/// a change that multiplies paths (one state per queue, per pool address...)
/// fails to load long after it compiles. Half the limit is the budget.
#[test]
fn programs_stay_within_half_the_verifier_budget() {
    require_root!();
    let gw = gateway("verified").unwrap();
    for side in [Side::Lan, Side::Wan] {
        let info = gw.datapath.program(side).unwrap().info().unwrap();
        let verified = info.verified_instruction_count().expect("the kernel reports verified instructions (5.16+)");
        eprintln!("{}: {verified} instructions verified", side.program_name());
        assert!(verified < 500_000, "{}: {verified} instructions verified", side.program_name());
    }
}
