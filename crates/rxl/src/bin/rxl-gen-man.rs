//! `rxl-gen-man DIR`: writes rxl's and rxen-shell's manual pages (`DIR/man1/`) and rxl's bash
//! and zsh completion (`DIR/bash-completion/rxl`, `DIR/zsh/_rxl`), generated from the code.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: rxl-gen-man DIR");
        return ExitCode::from(2);
    };
    match rxl::docgen::write_all(&PathBuf::from(dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rxl-gen-man: {e}");
            ExitCode::FAILURE
        }
    }
}
