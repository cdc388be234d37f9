//! rxen-shell: a login shell for customers that boots, stops, reboots and
//! reaches the console of their own domains, and nothing else. Every
//! decision is rxend's, from the socket's peer credentials.

pub mod args;
pub mod command;
pub mod repl;
pub mod session;
