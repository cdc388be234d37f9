//! Errors that stop a configuration from being read: each names the file, line and column.

use crate::spec::SpecError;

/// A configuration that cannot be read, with where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: error: {kind}")]
pub struct ConfigError {
    /// The file name as given to [`crate::parse`], or `<command line>`.
    pub file: String,
    /// 1-based line (for command-line overrides: the override's number).
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// What was found and what was expected.
    pub kind: ConfigErrorKind,
}

/// What went wrong, and what was expected instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigErrorKind {
    /// A character that xl.cfg does not allow outside strings.
    #[error("unexpected character `{found}`{hint}")]
    UnexpectedChar {
        /// The character.
        found: char,
        /// Extra advice (may be empty).
        hint: &'static str,
    },
    /// A backslash that is not right before a newline.
    #[error(
        "stray `\\`: outside strings a backslash may only end a line (continuing it on the next)"
    )]
    StrayBackslash,
    /// A key that is not `[a-z][._0-9a-z]*`.
    #[error("invalid key `{key}`: {why}")]
    BadKey {
        /// The key as written.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A number token followed by letters (`512M`, `1.5`).
    #[error("malformed number `{text}`: expected a plain integer (decimal, 0x hex or 0-prefixed octal) without unit suffix or fraction")]
    MalformedNumber {
        /// The text.
        text: String,
    },
    /// A string that is not closed on its line.
    #[error("unterminated string: expected the closing {quote} before the end of the line (strings cannot span lines)")]
    UnterminatedString {
        /// The quote character that opened it.
        quote: char,
    },
    /// An unknown or malformed backslash escape inside a string.
    #[error("invalid escape `{escape}` in string: {why}; expected \\\" \\' \\\\ \\a \\b \\f \\n \\r \\t \\v \\xHH or \\NNN (decimal)")]
    BadEscape {
        /// The escape as written.
        escape: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Escapes that produce bytes which are not UTF-8 text.
    #[error("string escapes produce bytes that are not UTF-8 text")]
    NotUtf8,
    /// A token where another was expected.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What the grammar expected.
        expected: &'static str,
        /// What was there.
        found: String,
    },
    /// A `[` never closed.
    #[error(
        "unterminated list: the `[` at line {line}, column {column} is never closed; expected `]`"
    )]
    UnterminatedList {
        /// Line of the `[`.
        line: u32,
        /// Column of the `[`.
        column: u32,
    },
    /// Lists nested deeper than rxen reads.
    #[error("lists nested more than {max} deep; expected a flatter value")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// `+=` mixing a list and a single value.
    #[error("can't add [list] to \"string\" or vice versa: `{key} +=` must add the same kind of value that `{key}` has")]
    AddMismatch {
        /// The key.
        key: String,
    },
    /// No `name`.
    #[error("Domain name must be specified: expected name = \"...\"")]
    MissingName,
    /// A `name` xl or rxen refuses.
    #[error("invalid domain name \"{name}\": {why}")]
    BadName {
        /// The name.
        name: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// A value that must be a number and is not.
    #[error("`{key}` must be {expected}, found {found}")]
    NotANumber {
        /// The key.
        key: String,
        /// What it must be.
        expected: &'static str,
        /// What was there.
        found: String,
    },
    /// A number outside the key's range.
    #[error("`{key}` = {value} is out of range; expected {expected}")]
    OutOfRange {
        /// The key.
        key: String,
        /// The value.
        value: i64,
        /// The allowed range, in words.
        expected: String,
    },
    /// A list where a single value belongs.
    #[error("`{key}` is a list but should be a single value ({expected})")]
    ExpectedSingleValue {
        /// The key.
        key: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A single value (or nested list) where a list of strings belongs.
    #[error("`{key}` should be {expected}, found {found}")]
    ExpectedList {
        /// The key.
        key: String,
        /// What it should be.
        expected: &'static str,
        /// What was there.
        found: String,
    },
    /// A value outside the key's allowed set.
    #[error("invalid `{key}` value \"{value}\"; expected {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What is allowed.
        expected: String,
    },
    /// An `on_*` action xl does not know.
    #[error("Unknown {key} action \"{value}\" specified; expected one of destroy, restart, rename-restart, preserve, coredump-destroy, coredump-restart, soft-reset")]
    UnknownAction {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// A `disk` entry that does not parse.
    #[error("disk entry {index} (\"{spec}\"): {source}")]
    Disk {
        /// 1-based position in the list.
        index: usize,
        /// The spec.
        spec: String,
        /// Why.
        source: SpecError,
    },
    /// A `vif` entry that does not parse.
    #[error("vif entry {index} (\"{spec}\"): {source}")]
    Vif {
        /// 1-based position in the list.
        index: usize,
        /// The spec.
        spec: String,
        /// Why.
        source: SpecError,
    },
    /// A `cpus` value that does not parse.
    #[error("cpus \"{spec}\": {source}")]
    Cpus {
        /// The CPU list.
        spec: String,
        /// Why.
        source: SpecError,
    },
    /// Two disks with the same vdev.
    #[error("duplicate vdev `{vdev}`: disk entry {index} uses the vdev of entry {first}; expected each disk to have its own vdev")]
    DuplicateVdev {
        /// The vdev.
        vdev: String,
        /// 1-based index of the duplicate.
        index: usize,
        /// 1-based index of the first use.
        first: usize,
    },
    /// maxvcpus < vcpus.
    #[error(
        "maxvcpus < vcpus: maxvcpus = {maxvcpus} but vcpus = {vcpus}; expected maxvcpus >= vcpus"
    )]
    MaxvcpusBelowVcpus {
        /// vcpus.
        vcpus: u32,
        /// maxvcpus.
        maxvcpus: u32,
    },
    /// maxmem < memory.
    #[error("maxmem ({maxmem} MiB) is below memory ({memory} MiB); expected maxmem >= memory")]
    MaxmemBelowMemory {
        /// memory, MiB.
        memory: u64,
        /// maxmem, MiB.
        maxmem: u64,
    },
    /// `builder` and `type` disagree.
    #[error("Contradicting \"builder\" and \"type\" options specified (builder means {builder}, type is {domain_type})")]
    BuilderTypeConflict {
        /// What builder means.
        builder: &'static str,
        /// What type says.
        domain_type: &'static str,
    },
    /// A PV/PVH guest with neither kernel nor bootloader.
    #[error("a {domain_type} guest needs `kernel` (or `bootloader`); expected e.g. kernel = \"/boot/vmlinuz\"")]
    NoKernel {
        /// pv or pvh.
        domain_type: &'static str,
    },
    /// A `uuid` that is not 8-4-4-4-12 hex digits.
    #[error("Failed to parse UUID \"{value}\": expected 8-4-4-4-12 hex digits")]
    BadUuid {
        /// The text.
        value: String,
    },
}
