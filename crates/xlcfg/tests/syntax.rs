//! The xl.cfg grammar: values, strings, lists, comments, `+=`, overrides, and syntax errors
//! with their file, line and column.

use xlcfg::{parse, ConfigError, ConfigErrorKind, CpuAffinity, DiagnosticKind, Parsed};

const BASE: &str = "name = \"t\"\nkernel = \"/boot/vmlinuz\"\n";

fn ok(text: &str) -> Parsed {
    parse(text, "t.cfg", &[]).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn with_base(extra: &str) -> Parsed {
    ok(&format!("{BASE}{extra}"))
}

fn err(text: &str) -> ConfigError {
    match parse(text, "t.cfg", &[]) {
        Ok(p) => panic!("{text:?} parsed: {:?}", p.config),
        Err(e) => e,
    }
}

fn err_base(extra: &str) -> ConfigError {
    err(&format!("{BASE}{extra}"))
}

#[test]
fn numbers_are_read_by_strtol_base_0() {
    assert_eq!(with_base("memory = 512").config.memory_mib, 512);
    assert_eq!(with_base("memory = 0x200").config.memory_mib, 512);
    assert_eq!(with_base("memory = 01000").config.memory_mib, 512);
    // a quoted number is a number too
    assert_eq!(with_base("memory = \"512\"").config.memory_mib, 512);
    assert_eq!(with_base("memory = '0x100'").config.memory_mib, 256);
}

#[test]
fn separators_comments_and_last_assignment_wins() {
    let p = ok("name='a'; kernel='/k' ; memory=64 # a comment\n# whole-line comment\nmemory = 128\nvcpus=2;");
    assert_eq!(p.config.name, "a");
    assert_eq!(p.config.memory_mib, 128);
    assert_eq!(p.config.vcpus, 2);
    // no newline at the end, a comment at the end of the file without a newline
    assert_eq!(ok("name='a'\nkernel='/k'").config.name, "a");
    assert_eq!(ok("name='a'\nkernel='/k' # end").config.name, "a");
    // CRLF line ends are tolerated
    assert_eq!(
        ok("name='a'\r\nkernel='/k'\r\nmemory=64\r\n")
            .config
            .memory_mib,
        64
    );
}

#[test]
fn strings_and_escapes() {
    let p = with_base(r#"extra = "a\"b\'c\\d\te\x41\065""#);
    assert_eq!(p.config.cmdline.as_deref(), Some("a\"b'c\\d\teAA"));
    let p = with_base(r"extra = 'single \'quoted\' \n'");
    assert_eq!(p.config.cmdline.as_deref(), Some("single 'quoted' \n"));
    // the other quote needs no escape
    assert_eq!(
        with_base(r#"extra = 'say "hi"'"#).config.cmdline.as_deref(),
        Some("say \"hi\"")
    );
    // \a \b \f \r \v
    assert_eq!(
        with_base(r"extra = '\a\b\f\r\v'").config.cmdline.as_deref(),
        Some("\x07\x08\x0c\r\x0b")
    );
    // UTF-8 passes through
    assert_eq!(
        with_base("extra = 'café'").config.cmdline.as_deref(),
        Some("café")
    );
}

#[test]
fn bad_escapes_are_errors() {
    for (s, col) in [
        (r"extra = 'a\qb'", 11),
        (r"extra = '\xZZ'", 10),
        (r"extra = '\0'", 10),
        (r"extra = '\300'", 10),
    ] {
        let e = err_base(s);
        assert!(
            matches!(e.kind, ConfigErrorKind::BadEscape { .. }),
            "{s}: {e}"
        );
        assert_eq!((e.line, e.column), (3, col), "{s}: {e}");
    }
}

#[test]
fn lists_span_lines_nest_and_take_trailing_commas() {
    let p = with_base(
        "disk = [\n  'phy:/dev/vg/a,xvda,w',   # root\n\n  'phy:/dev/vg/b,xvdb,w',\n]\nvif = []\ncpus = [ \"0\",\n 2 , ]\nvcpus = 2\n",
    );
    assert_eq!(p.config.disks.len(), 2);
    assert_eq!(p.config.disks[1].vdev, "xvdb");
    assert!(p.config.vifs.is_empty());
    assert_eq!(
        p.config.cpus,
        Some(CpuAffinity::PerVcpu(vec![vec![0], vec![2]]))
    );
    // nested lists parse (and are kept for keys rxen does not know)
    let p = with_base("foo = [ [1, 'a'], [], 'b' ]");
    assert_eq!(
        p.config.other_keys["foo"],
        serde_json::json!([[1, "a"], [], "b"])
    );
}

#[test]
fn backslash_newline_joins_lines() {
    let p = with_base("disk = [ 'phy:/dev/vg/a,xvda,w', \\\n 'phy:/dev/vg/b,xvdb,w' ]\nextra = \"root=/dev/xvda1 \\\nro\"\nmemory = \\\n 256\n");
    assert_eq!(p.config.disks.len(), 2);
    assert_eq!(p.config.cmdline.as_deref(), Some("root=/dev/xvda1 ro"));
    assert_eq!(p.config.memory_mib, 256);
    let e = err_base("memory = 256 \\ # no\n");
    assert_eq!(e.kind, ConfigErrorKind::StrayBackslash);
    assert_eq!((e.line, e.column), (3, 14));
}

#[test]
fn plus_equals_appends_lists_and_concatenates_strings() {
    let p = with_base("extra = 'console=hvc0'\nextra += ' quiet'\ndisk = ['/dev/vg/a,,xvda']\ndisk += ['/dev/vg/b,,xvdb']\nnewkey += 'x'\n");
    assert_eq!(p.config.cmdline.as_deref(), Some("console=hvc0 quiet"));
    assert_eq!(p.config.disks.len(), 2);
    assert_eq!(p.config.other_keys["newkey"], serde_json::json!("x"));
    let e = err_base("disk = ['/dev/vg/a,,xvda']\ndisk += 'x'\n");
    assert!(matches!(e.kind, ConfigErrorKind::AddMismatch { .. }), "{e}");
    assert_eq!((e.line, e.column), (4, 9));
}

#[test]
fn xen_shell_hyphenated_key() {
    let p = with_base("xen-shell = 'alice'\n");
    assert_eq!(p.config.xen_shell, vec!["alice"]);
    assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
    let p = with_base("xen_shell = [ 'alice', 'bob carol' ]\n");
    assert_eq!(p.config.xen_shell, vec!["alice", "bob", "carol"]);
}

#[test]
fn overrides_come_after_the_file() {
    let p = parse(
        &format!("{BASE}memory = 128\nvif = ['bridge=br0']\n"),
        "t.cfg",
        &[
            "memory=256".to_string(),
            "vif+=['bridge=br1']".to_string(),
            "bogus=1".to_string(),
        ],
    )
    .expect("parses");
    assert_eq!(p.config.memory_mib, 256);
    assert_eq!(p.config.vifs.len(), 2);
    let d = p
        .diagnostics
        .iter()
        .find(|d| d.key == "bogus")
        .expect("bogus warned");
    assert_eq!((d.file.as_str(), d.line), ("<command line>", 3));
    let e = parse(BASE, "t.cfg", &["memory=lots".to_string()]).expect_err("not a number");
    assert_eq!(e.file, "<command line>");
    assert_eq!((e.line, e.column), (1, 8));
    assert!(
        e.to_string().starts_with("<command line>:1:8: error: "),
        "{e}"
    );
}

#[test]
fn syntax_errors_name_line_column_and_expectation() {
    // unterminated list
    let e = err_base("disk = [ 'a,,xvda',\n  'b,,xvdb'\n");
    assert_eq!(
        e.kind,
        ConfigErrorKind::UnterminatedList { line: 3, column: 8 }
    );
    assert_eq!((e.file.as_str(), e.line, e.column), ("t.cfg", 3, 8));
    assert!(
        e.to_string()
            .starts_with("t.cfg:3:8: error: unterminated list"),
        "{e}"
    );
    // a key where the list should go on
    let e = err_base("disk = [ 'a,,xvda'\nmemory = 5\n");
    assert!(matches!(e.kind, ConfigErrorKind::Expected { .. }), "{e}");
    assert_eq!((e.line, e.column), (4, 1));
    // unterminated string
    let e = err_base("extra = 'abc\nmemory = 5\n");
    assert_eq!(e.kind, ConfigErrorKind::UnterminatedString { quote: '\'' });
    assert_eq!((e.line, e.column), (3, 9));
    // missing value, missing '='
    let e = err_base("memory = \n");
    assert!(matches!(e.kind, ConfigErrorKind::Expected { .. }));
    assert_eq!((e.line, e.column), (3, 10));
    let e = err_base("memory 5\n");
    assert_eq!((e.line, e.column), (3, 8));
    // two values on a line
    let e = err_base("memory = 5 6\n");
    assert_eq!((e.line, e.column), (3, 12));
    // python syntax
    let e = err_base("memory = (5)\n");
    assert!(matches!(
        e.kind,
        ConfigErrorKind::UnexpectedChar { found: '(', .. }
    ));
    // bad keys
    let e = err_base("Memory = 5\n");
    assert!(matches!(e.kind, ConfigErrorKind::BadKey { .. }));
    assert_eq!((e.line, e.column), (3, 1));
    let e = err_base("cpu-weight = 5\n");
    assert!(matches!(e.kind, ConfigErrorKind::BadKey { .. }));
    // units on numbers
    let e = err_base("memory = 512M\n");
    assert!(matches!(e.kind, ConfigErrorKind::MalformedNumber { .. }));
    assert_eq!((e.line, e.column), (3, 10));
}

#[test]
fn dotted_keys_are_keys() {
    let p = with_base("vif.default.bridge = 'xenbr1'\n");
    assert_eq!(
        p.config.other_keys["vif.default.bridge"],
        serde_json::json!("xenbr1")
    );
    assert_eq!(p.diagnostics[0].kind, DiagnosticKind::Unknown);
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("{BASE}x = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let e = err(&deep);
    assert!(matches!(e.kind, ConfigErrorKind::TooDeep { .. }), "{e}");
    // 32 levels are fine
    let ok_deep = format!("{BASE}x = {}{}\n", "[".repeat(32), "]".repeat(32));
    assert!(parse(&ok_deep, "t.cfg", &[]).is_ok());
}

#[test]
fn many_keys_parse_quickly() {
    let mut text = String::from(BASE);
    for i in 0..50_000 {
        text.push_str(&format!("key{i} = {i}\n"));
    }
    let p = ok(&text);
    assert_eq!(p.config.other_keys.len(), 50_000);
}

#[test]
fn escapes_build_utf8_or_fail_clearly() {
    assert_eq!(
        with_base(r"extra = '\195\169'").config.cmdline.as_deref(),
        Some("é")
    );
    let e = err_base(r"extra = 'x\200'");
    assert_eq!(e.kind, ConfigErrorKind::NotUtf8);
    assert_eq!((e.line, e.column), (3, 9));
}

#[test]
fn hashes_inside_strings_are_not_comments() {
    assert_eq!(
        with_base("extra = \"a # b\" # c").config.cmdline.as_deref(),
        Some("a # b")
    );
}

#[test]
fn unquoted_words_get_a_hint() {
    let e = err_base("type = hvm\n");
    assert!(
        e.to_string()
            .contains("strings must be quoted, e.g. \"hvm\""),
        "{e}"
    );
    assert_eq!((e.line, e.column), (3, 8));
}

#[test]
fn a_byte_order_mark_is_skipped() {
    assert_eq!(ok("\u{feff}name = 'a'\nkernel = '/k'\n").config.name, "a");
    // elsewhere it is an error with its position
    let e = err_base("memory = 5\u{feff}\n");
    assert!(
        matches!(
            e.kind,
            ConfigErrorKind::UnexpectedChar {
                found: '\u{feff}',
                ..
            }
        ),
        "{e}"
    );
    assert_eq!((e.line, e.column), (3, 11));
}
