//! Every config in the repository's `examples/` parses.

#[test]
fn every_example_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "cfg") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let name = path.display().to_string();
        if let Err(e) = xlcfg::parse(&text, &name, &[]) {
            panic!("{name}: {e}");
        }
        seen += 1;
    }
    assert!(
        seen >= 2,
        "only {seen} example configs found in {}",
        dir.display()
    );
}
