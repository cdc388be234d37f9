//! Save, restore and live migration in rxend: what moves a domain out of this host (to a
//! file or to another host) and back in. The VMM moves the bytes (`rxen_vmm`'s
//! migration code); rxend decides, authenticates and reserves.
//!
//! - [`ops`]: the daemon's operations (an `impl Daemon` block): `rxl save` (a save file
//!   through [`savefile`]), `rxl restore`, `rxl migrate` (the source's side) and, on the
//!   target, checking a reservation and starting the receiving VMM.
//! - [`handshake`]: the relocation wire protocol, both sides, and nothing of the daemon:
//!   the HMAC-SHA256 proof that both peers hold the shared key, the [`Reservation`] the
//!   source sends before a single page, xl's ready line on the ssh transport, key files
//!   and `hosts-allow`.
//! - [`relocation`]: the relocation server (TCP, xend's `xend-relocation-server`) and
//!   `rxl migrate-receive`: admit the peer, run the target's handshake, have the daemon
//!   reserve and receive.
//! - [`storage`]: storage migration (`--copy-storage`): the source's list of disks, the
//!   target's new images in its `storage-dir` (removed if the domain does not arrive).
//! - [`savefile`]: save and core files written to an unnamed file and named only once
//!   complete.
//!
//! The `[relocation]` section of rxend's config file is
//! [`crate::config::RelocationConfig`].

pub mod handshake;
pub mod ops;
pub mod relocation;
pub mod savefile;
pub mod storage;

pub use handshake::{Reservation, RuntimeSettings};
pub use ops::MigrateOptions;
