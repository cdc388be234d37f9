//! rxend, the rxen host daemon: it owns the domain registry, assigns domain
//! IDs, persists every domain's record, spawns and supervises one `rxen-vmm`
//! per running domain, applies the `on_*` policies and decides who may do
//! what. Clients (`rxl`, `rxen-shell`) talk to it over a Unix socket.

pub mod accept;
pub mod auth;
pub mod cfgfile;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod cpupools;
pub mod cpuset;
pub mod daemon;
pub mod failpoint;
pub mod hostinfo;
pub mod iocgroup;
pub mod ioprio;
pub mod known;
pub mod log;
pub mod metrics;
pub mod migration;
pub mod network;
pub mod paths;
pub mod pool;
pub mod procfs;
pub mod record;
pub mod sched;
pub mod schedparams;
pub mod server;
pub mod statelock;
pub mod storage;
pub mod topology;
pub mod vmm;
