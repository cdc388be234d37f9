//! Wire formats shared by the rxen parts: the VMM's launch spec, the VMM
//! control protocol, and the rxl/rxend API. Every message is one JSON value
//! on one line (see [`jsonline`]).

pub mod api;
pub mod jsonline;
pub mod stream;
pub mod vmctl;
pub mod vmspec;
