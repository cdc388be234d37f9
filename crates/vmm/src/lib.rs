//! The rxen virtual machine monitor: one process per domain.
