//! `cargo run -p xlcfg --example check -- FILE [KEY=VALUE...]`: parse a config as `rxl create -n`
//! would, print the diagnostics to stderr and the resolved config as JSON.

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: check FILE [KEY=VALUE...]");
        std::process::exit(2);
    };
    let overrides: Vec<String> = args.collect();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    match xlcfg::parse(&text, &path, &overrides) {
        Ok(p) => {
            for d in &p.diagnostics {
                eprintln!("{d}");
            }
            match serde_json::to_string_pretty(&p.config) {
                Ok(j) => println!("{j}"),
                Err(e) => eprintln!("{e}"),
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
