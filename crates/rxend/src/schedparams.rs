//! The pool parameters of `xl sched-credit -s` and `xl sched-credit2 -s` (`tslice`,
//! `ratelimit`, `migration-delay`), as Linux's CFS has them under rxen:
//!
//! - `tslice_ms` is the CFS bandwidth period rxen sets on every domain's cgroup
//!   ([`crate::cgroup::CAP_PERIOD_US`]): the window over which a cap is accounted, as a credit
//!   time slice is the period over which Xen's credit scheduler debits and caps;
//! - `ratelimit_us` is `kernel.sched_cfs_bandwidth_slice_us`: the run time a CPU takes from a
//!   capped domain's quota at a time, the least a vCPU runs before its cap is looked at again;
//! - `vcpu_migr_delay_us` is CFS's migration cost (`sched_migration_cost_ns`, in
//!   `/proc/sys/kernel` on older kernels, in debugfs on newer ones): how long a task counts as
//!   cache-hot and is not moved to another CPU. Where neither is readable, the kernel's
//!   default of 500 us.

use rxen_proto::api::SchedPoolParams;

use crate::cgroup::CAP_PERIOD_US;

/// The kernel's default `sched_migration_cost_ns` (500 us), since Linux 2.6.
const DEFAULT_MIGRATION_COST_US: u32 = 500;

/// The kernel's default `sched_cfs_bandwidth_slice_us`.
const DEFAULT_BANDWIDTH_SLICE_US: u32 = 5000;

const BANDWIDTH_SLICE: &str = "/proc/sys/kernel/sched_cfs_bandwidth_slice_us";
const MIGRATION_COST: [&str; 2] = [
    "/proc/sys/kernel/sched_migration_cost_ns",
    "/sys/kernel/debug/sched/migration_cost_ns",
];

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The parameters from what the files say (`None`: unreadable).
pub fn from_values(
    bandwidth_slice_us: Option<u64>,
    migration_cost_ns: Option<u64>,
) -> SchedPoolParams {
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    SchedPoolParams {
        tslice_ms: clamp(CAP_PERIOD_US / 1000),
        ratelimit_us: bandwidth_slice_us.map_or(DEFAULT_BANDWIDTH_SLICE_US, clamp),
        migration_delay_us: migration_cost_ns
            .map_or(DEFAULT_MIGRATION_COST_US, |ns| clamp(ns / 1000)),
    }
}

/// The parameters on this host now.
pub fn current() -> SchedPoolParams {
    from_values(
        read_number(BANDWIDTH_SLICE),
        MIGRATION_COST.iter().find_map(|p| read_number(p)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_parameters_come_from_cfs() {
        let p = from_values(Some(5000), Some(500_000));
        assert_eq!(
            p,
            SchedPoolParams {
                tslice_ms: 100,
                ratelimit_us: 5000,
                migration_delay_us: 500
            }
        );
        let p = from_values(Some(3000), None);
        assert_eq!((p.ratelimit_us, p.migration_delay_us), (3000, 500));
        // This host's own values are readable (the bandwidth slice is in /proc).
        let here = current();
        assert_eq!(here.tslice_ms, 100);
        assert!(here.ratelimit_us > 0);
    }
}
