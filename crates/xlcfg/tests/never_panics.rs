//! The parsers return Ok or Err on any input, never panic (random bytes and token soups).

use proptest::prelude::*;
use xlcfg::{parse, parse_cpu_list, parse_disk_spec, parse_rate, parse_vif_spec};

const TOKENS: &[&str] = &[
    "name",
    "kernel",
    "memory",
    "maxmem",
    "vcpus",
    "maxvcpus",
    "cpus",
    "disk",
    "vif",
    "type",
    "builder",
    "pvh",
    "on_crash",
    "cpu_weight",
    "cap",
    "extra",
    "root",
    "cmdline",
    "xen-shell",
    "xen_shell",
    "uuid",
    "serial",
    "vnc",
    "vfb",
    "pci",
    "nics",
    "bootloader",
    "=",
    "+=",
    "[",
    "]",
    ",",
    ";",
    "\n",
    "\\\n",
    "#",
    " ",
    "\t",
    "'",
    "\"",
    "\\",
    "\\x4",
    "\\12",
    "'a'",
    "\"b\"",
    "0",
    "0x",
    "0x1f",
    "08",
    "512",
    "-1",
    "99999999999999999999",
    "'all'",
    "'3,5-8,^6'",
    "'phy:/dev/vg/a,xvda,w'",
    "'mac=00:16:3e:00:00:01,rate=10Mb/s@20ms'",
    "'restart'",
    "é",
    "\r",
];

const SPEC_TOKENS: &[&str] = &[
    ",",
    "=",
    ":",
    "/",
    " ",
    "target=",
    "format=",
    "vdev=",
    "access=",
    "devtype=",
    "cdrom",
    "phy:",
    "file:",
    "tap:",
    "aio:",
    "raw:",
    "qcow2:",
    "iscsi:",
    "foo:",
    "xvda",
    "hdc",
    "w",
    "r",
    "w!",
    "discard",
    "trusted",
    "mac=",
    "rate=",
    "@",
    "Mb/s",
    "B/s",
    "ms",
    "us",
    "s",
    "0",
    "1",
    "4294967296",
    "00:16:3e:00:00:01",
    "^",
    "-",
    "all",
    "nodes:",
    "é",
    "backendtype=",
];

fn soup(tokens: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(tokens), 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text, "fuzz.cfg", &[]);
        let _ = parse("name='x'\nkernel='k'\n", "fuzz.cfg", &[text.to_string()]);
    }

    #[test]
    fn parse_never_panics_on_token_soup(text in soup(TOKENS), o in soup(TOKENS)) {
        if let Err(e) = parse(&text, "fuzz.cfg", &[o]) {
            // every error has a position
            prop_assert!(e.line >= 1 && e.column >= 1);
        }
    }

    #[test]
    fn valid_prefix_plus_soup(text in soup(TOKENS)) {
        let full = format!("name = 'x'\nkernel = 'k'\n{text}");
        if let Ok(p) = parse(&full, "fuzz.cfg", &[]) {
            // whatever parses renders and parses back to the same config
            let again = parse(&p.config.to_xl_cfg(), "r.cfg", &[]);
            prop_assert_eq!(again.map(|a| a.config), Ok(p.config));
        }
    }

    #[test]
    fn specs_never_panic(s in soup(SPEC_TOKENS), raw in ".{0,60}") {
        for spec in [s.as_str(), raw.as_str()] {
            let _ = parse_disk_spec(spec);
            let _ = parse_vif_spec(spec);
            let _ = parse_rate(spec);
            let _ = parse_cpu_list(spec, 8);
        }
    }
}
