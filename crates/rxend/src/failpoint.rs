//! Named steps at which a debug build of rxend dies on request, as `kill -9` would kill it, so
//! that tests can stop rxend at an exact point of an operation (`RXEN_FAILPOINTS=a,b`).

use std::sync::OnceLock;

/// After the intent record of a domain being started is written, before anything is plugged.
pub const START_RECORDED: &str = "start:recorded";
/// After the domain's TAPs are plugged, before its VMM is spawned.
pub const START_PLUGGED: &str = "start:plugged";
/// After the VMM is spawned, before it says `ready`.
pub const START_SPAWNED: &str = "start:spawned";
/// After the VMM said `ready`, before the domain's record says so.
pub const START_READY: &str = "start:ready";

/// Kills this process with SIGKILL when this is a debug build and `RXEN_FAILPOINTS` names
/// `name`. Release builds ignore the variable.
pub fn hit(name: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    let points = POINTS.get_or_init(|| {
        std::env::var("RXEN_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()
    });
    if points.iter().any(|p| p == name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
