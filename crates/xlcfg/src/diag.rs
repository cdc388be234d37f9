//! Diagnostics: what was read but deserves a word (unknown, unsupported, deprecated keys).

use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of a diagnostic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiagnosticKind {
    /// A key neither xl nor rxen knows; kept in `other_keys`.
    Unknown,
    /// Something Xen supports and rxen does not (yet); `rxl create` refuses it unless told to ignore it.
    Unsupported,
    /// An old (xm-era or deprecated xl) spelling, accepted.
    Deprecated,
    /// Anything else worth saying (ignored settings, Xen's own warnings).
    Warning,
}

/// One diagnostic about a setting, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// The file name as given to [`crate::parse`], or `<command line>`.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// What kind.
    pub kind: DiagnosticKind,
    /// The key concerned.
    pub key: String,
    /// The message.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.kind {
            DiagnosticKind::Unsupported => "unsupported",
            _ => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {label}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}
