//! The VM as a whole, one file per concern:
//!
//! - `build.rs`: building it from a [`VmSpec`](rxen_proto::vmspec::VmSpec):
//!   memory, the kernel (or a save file or migration stream), vCPUs, devices;
//! - `running.rs`: the running [`Vm`]: its parts are private to this module,
//!   and the event loop and the migration code drive it through methods;
//! - `control.rs`: what the control socket asks of it (the handlers behind
//!   [`crate::control::ControlTarget`]);
//! - `error.rs`: [`VmmError`];
//! - `launch.rs`: the process's life around it ([`run`]): sockets, the jail,
//!   an incoming migration's handshake, then [`crate::event_loop`].
//!
//! `event_loop` does not know this module: it serves any
//! [`crate::event_loop::Served`], which [`Vm`] implements.

mod build;
mod control;
mod error;
mod launch;
mod running;

pub use build::read_spec;
pub use error::VmmError;
pub use launch::{bind_socket, run};
pub(crate) use launch::{open_progress, take_fd};
pub use running::{Com1, Vm};
