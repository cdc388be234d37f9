//! The pieces of `rxl`, the xl-compatible command line of rxen: talking to
//! rxend, printing in xl's formats, and attaching to consoles; and of
//! `rxen-shell`, the customers' restricted login shell.

pub mod bootloader;
pub mod cli;
pub mod client;
pub mod cnum;
pub mod console;
pub mod cpupool;
pub mod docgen;
pub mod domains;
pub mod format;
pub mod libxl;
pub mod migration;
pub mod pci;
pub mod pool;
pub mod power;
pub mod sched;
pub mod shell;
pub mod top;
pub mod trigger;
