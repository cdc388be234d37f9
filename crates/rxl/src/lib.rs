//! The pieces of `rxl`, the xl-compatible command line of rxen: talking to
//! rxend, printing in xl's formats, and attaching to consoles.

pub mod client;
pub mod console;
pub mod format;
pub mod sched;
pub mod top;
