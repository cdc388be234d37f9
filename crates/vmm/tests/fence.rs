//! The VMM's fence deadline (`FenceDeadline`, for `ha = 1` domains in a pool): renewed in time,
//! the domain runs on; once it passes, the VMM destroys the domain itself, with the fence's
//! detail in its exit record; a deadline of 0 disarms it.

mod common;

use std::time::{Duration, Instant};

use common::{spec, Domain};
use rxen_proto::vmctl::{VmRequest, VmResponse, FENCE_EXIT_DETAIL};
use rxen_proto::vmspec::{ExitReason, KernelSource};

const BANNER: &str = "rxen testguest: booted on 1 vCPUs with 32 MiB";
const T: Duration = Duration::from_secs(20);

fn booted() -> Domain {
    let d = Domain::start(|dir| spec(dir, KernelSource::Builtin("testguest".into()), 1, 32));
    d.console().wait_text(0, BANNER, T);
    d
}

fn deadline(d: &Domain, ms: u64) {
    assert_eq!(
        d.control().request(&VmRequest::FenceDeadline { ms }),
        VmResponse::Ok
    );
}

#[test]
fn a_renewed_deadline_keeps_the_domain_and_a_passed_one_destroys_it() {
    let mut d = booted();
    // Renewed every 100 ms for 1.5 s with a 600 ms deadline: it runs on.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        deadline(&d, 600);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        d.child.try_wait().expect("wait").is_none(),
        "ended while renewed"
    );
    // Not renewed: it ends as destroyed, saying why.
    let last = Instant::now();
    deadline(&d, 300);
    assert_eq!(d.wait_exit(T), 0);
    assert!(last.elapsed() >= Duration::from_millis(300));
    let rec = d.exit_record();
    assert_eq!(rec.reason, ExitReason::Destroyed, "{rec:?}");
    assert_eq!(rec.detail, FENCE_EXIT_DETAIL);
}

#[test]
fn a_zero_deadline_disarms_the_fence() {
    let mut d = booted();
    deadline(&d, 200);
    deadline(&d, 0);
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        d.child.try_wait().expect("wait").is_none(),
        "fenced though disarmed"
    );
    assert_eq!(d.control().request(&VmRequest::Destroy), VmResponse::Ok);
    assert_eq!(d.wait_exit(T), 0);
    assert_ne!(d.exit_record().detail, FENCE_EXIT_DETAIL);
}
