//! The benchmark's errors: each becomes a `failed: ...` cell, never a crash.

use std::time::Duration;

/// Why one measurement could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A wait ran out of time.
    #[error("no {what} within {:.0} s", .after.as_secs_f64())]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it waited.
        after: Duration,
    },
    /// A command reported failure.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command.
        command: String,
        /// Its error output or status.
        detail: String,
    },
    /// A monitor answered something unexpected.
    #[error("{0}")]
    Unexpected(String),
    /// QEMU's QMP answered with an error.
    #[error("QMP {command}: {detail}")]
    Qmp {
        /// The QMP command.
        command: String,
        /// QEMU's error description.
        detail: String,
    },
}

impl BenchError {
    /// An I/O error with a description of what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }

    /// A timeout while waiting for `what`.
    pub fn timeout(what: impl Into<String>, after: Duration) -> BenchError {
        BenchError::Timeout {
            what: what.into(),
            after,
        }
    }
}

/// Result of one measurement step.
pub type Result<T> = std::result::Result<T, BenchError>;
