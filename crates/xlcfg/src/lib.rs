//! The xl.cfg domain configuration language and the typed domain model.
//!
//! [`parse`] reads an xl.cfg file (and xl's `KEY=VALUE` command-line overrides) as Xen's xl
//! does and returns a [`DomainConfig`] plus [`Diagnostic`]s for what rxen ignores, lacks or
//! does not know. [`parse_disk_spec`], [`parse_vif_spec`] and [`parse_cpu_list`] read the
//! small languages inside it, for `rxl block-attach`, `network-attach` and `vcpu-pin` too.
//! This crate does no I/O.

// `ConfigError` is returned by value as the crate's contract with rxl and rxend promises; it is
// built once per failed parse, so its size does not matter.
#![allow(clippy::result_large_err)]
#![warn(missing_docs)]

mod cpus;
mod diag;
mod disk;
mod error;
mod interpret;
pub mod keys;
mod lexer;
pub mod model;
mod number;
mod pool;
pub mod reference;
mod render;
mod spec;
mod syntax;
mod vif;

pub use cpus::{parse_cpu_list, CpuAffinity, MAX_CPUS};
pub use diag::{Diagnostic, DiagnosticKind};
pub use disk::{parse_disk_spec, DiskAccess, DiskBackendType, DiskFormat, DiskSpec};
pub use error::{ConfigError, ConfigErrorKind};
pub use interpret::{check_config, check_name, MAX_MEMORY_MIB};
pub use model::{
    Action, DomainConfig, DomainType, UnknownAction, DEFAULT_CPU_WEIGHT, DEFAULT_MEMORY_MIB,
};
pub use number::{parse_c_long, NumberError};
pub use pool::{parse_pool, PoolConfig, PoolCpus};
pub use render::{cpu_ranges, disk_spec_text, quote, rate_text, vif_spec_text};
pub use spec::SpecError;
pub use vif::{parse_rate, parse_vif_spec, MacAddr, Rate, VifSpec};

/// The file name used in messages about command-line overrides.
pub const COMMAND_LINE: &str = "<command line>";

/// A parsed configuration and what was said about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The domain configuration.
    pub config: DomainConfig,
    /// Warnings, unknown, deprecated and unsupported settings, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Parsed {
    /// The [`DiagnosticKind::Unsupported`] diagnostics: what `rxl create` refuses by default.
    pub fn unsupported(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.kind == DiagnosticKind::Unsupported)
    }
}

/// Parses xl.cfg text. `file` is only used in messages. `overrides` are xl's trailing
/// KEY=VALUE command-line arguments, each parsed as one extra config line after the file
/// (diagnostics for them name the file `<command line>`, with the argument's number as line).
///
/// ```
/// let text = "name = 'web'\nkernel = '/boot/vmlinuz'\nmemory = 512\nbootloader = 'pvgrub'\n";
/// let parsed = xlcfg::parse(text, "web.cfg", &["vcpus=2".to_string()]).unwrap();
/// assert_eq!(parsed.config.memory_mib, 512);
/// assert_eq!(parsed.config.vcpus, 2);
/// let refused: Vec<String> = parsed.unsupported().map(|d| d.to_string()).collect();
/// assert!(refused[0].starts_with("web.cfg:4:14: unsupported: bootloader"));
///
/// let err = xlcfg::parse("name = 'web'\nmemory = 'lots'\n", "web.cfg", &[]).unwrap_err();
/// assert_eq!((err.line, err.column), (2, 10));
/// ```
pub fn parse(text: &str, file: &str, overrides: &[String]) -> Result<Parsed, ConfigError> {
    let (settings, files) = read_settings(text, file, overrides)?;
    let (config, diagnostics) = interpret::interpret(&settings, &files)?;
    Ok(Parsed {
        config,
        diagnostics,
    })
}

/// Reads xl.cfg text and its overrides into settings (each key's last value), and the names
/// of the sources (the file, then `<command line>` once per override).
fn read_settings(
    text: &str,
    file: &str,
    overrides: &[String],
) -> Result<(syntax::Settings, Vec<String>), ConfigError> {
    let mut files = vec![file.to_string()];
    let mut settings = syntax::Settings::default();
    let to_error = |files: &[String], (pos, kind): (lexer::Pos, ConfigErrorKind)| ConfigError {
        file: files.get(pos.src).cloned().unwrap_or_default(),
        line: pos.line,
        column: pos.col,
        kind,
    };
    // a UTF-8 byte-order mark, as some editors write, is not part of the text
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    syntax::parse_into(text, 0, &mut settings).map_err(|e| to_error(&files, e))?;
    for (i, o) in overrides.iter().enumerate() {
        files.push(COMMAND_LINE.to_string());
        let src = i + 1;
        syntax::parse_into(o, src, &mut settings).map_err(|e| {
            let mut err = to_error(&files, e);
            // each override is its own "line" of the command line
            err.line = u32::try_from(src).unwrap_or(u32::MAX);
            err
        })?;
    }
    // positions in overrides: line = the override's number
    for s in &mut settings.list {
        renumber(&mut s.key_pos);
        renumber_value(&mut s.value);
    }
    Ok((settings, files))
}

fn renumber(p: &mut lexer::Pos) {
    if p.src > 0 {
        p.line = u32::try_from(p.src).unwrap_or(u32::MAX);
    }
}

fn renumber_value(v: &mut syntax::Spanned) {
    renumber(&mut v.pos);
    if let syntax::Value::List(items) = &mut v.value {
        for i in items {
            renumber_value(i);
        }
    }
}
