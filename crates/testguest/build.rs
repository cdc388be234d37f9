//! Builds the no_std test guest in `guest/` with a nested cargo and leaves
//! its ELF image in `OUT_DIR/testguest.elf` for `include_bytes!`.

use std::env;
use std::error::Error;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target the guest is built for (the only one the toolchain has).
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The guest's binary name (from guest/Cargo.toml).
const GUEST_BIN: &str = "rxen-guest";
/// Code-generation flags for the guest; the link flags live in guest/build.rs.
///
/// SSE is off: under the PVM flavour of KVM on this project's machines, the
/// host emulates the instructions that follow a trapping one (port I/O, MSR
/// writes, ...) and its emulator cannot run SSE arithmetic such as `xorps`
/// (KVM_EXIT_INTERNAL_ERROR). rustc warns that x86_64's float ABI needs SSE2;
/// the guest uses no floating point, so that does not apply.
///
/// No red zone: an NMI (`rxl trigger DOMAIN nmi`) can arrive at any instruction, and the
/// CPU pushes its frame on the current stack, below RSP, where a red zone would be.
const GUEST_RUSTFLAGS: &[&str] = &[
    "-C",
    "relocation-model=static",
    "-C",
    "target-cpu=x86-64",
    "-C",
    "target-feature=-sse,-sse2",
    "-C",
    "no-redzone=yes",
];

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR unset")?);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR unset")?);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let guest_dir = manifest_dir.join("../../guest").canonicalize()?;

    for path in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "linker.ld",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(path).display());
    }

    let target_dir = out_dir.join("guest-target");
    let mut command = Command::new(cargo);
    command
        .current_dir(&guest_dir)
        .arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target")
        .arg(GUEST_TARGET)
        .arg("--target-dir")
        .arg(&target_dir);
    scrub_env(&mut command);
    command.env("CARGO_ENCODED_RUSTFLAGS", GUEST_RUSTFLAGS.join("\x1f"));

    let output = command.output()?;
    if !output.status.success() {
        return Err(format!(
            "building the test guest failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }

    let built = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join(GUEST_BIN);
    copy_if_changed(&built, &out_dir.join("testguest.elf"))?;
    Ok(())
}

/// Removes the variables the outer cargo set (or inherited) that would leak
/// into the guest's build: flags, targets, profiles and compiler wrappers.
fn scrub_env(command: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leaks = (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_MAKEFLAGS")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
            );
        if leaks {
            command.env_remove(key);
        }
    }
}

/// Copies `from` to `to` unless `to` already holds the same bytes.
fn copy_if_changed(from: &Path, to: &Path) -> Result<(), Box<dyn Error>> {
    let bytes = std::fs::read(from)?;
    if std::fs::read(to).ok().as_deref() != Some(bytes.as_slice()) {
        std::fs::write(to, bytes)?;
    }
    Ok(())
}
