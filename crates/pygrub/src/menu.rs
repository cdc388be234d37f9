//! Boot menus as GRUB writes them: GRUB 2's `grub.cfg` (menu entries, submenus flattened in
//! order, `set default=`) and GRUB legacy's `menu.lst` (`default`, `title`, `kernel`,
//! `initrd`). Only what picks a kernel is read; every other command is skipped.

/// One boot entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// Its title.
    pub title: String,
    /// The kernel's path in the file system.
    pub kernel: String,
    /// The kernel's command line.
    pub args: String,
    /// The initrd's path, if any.
    pub initrd: Option<String>,
}

/// A parsed menu: its entries (those with a kernel) and the default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Menu {
    /// Entries in menu order, submenus flattened where they stand.
    pub entries: Vec<Entry>,
    /// The default entry's index, or its title (GRUB 2 allows either).
    pub default: Option<Default>,
}

/// How a menu names its default entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Default {
    /// By position.
    Index(usize),
    /// By title (or GRUB 2's `id`).
    Title(String),
}

impl Menu {
    /// The index of the entry to boot: `wanted` if given, else the menu's default, else the
    /// first. `None` when the menu has no such entry.
    pub fn pick(&self, wanted: Option<usize>) -> Option<usize> {
        let i = match (wanted, &self.default) {
            (Some(i), _) => i,
            (None, Some(Default::Index(i))) => *i,
            (None, Some(Default::Title(t))) => {
                self.entries.iter().position(|e| &e.title == t).unwrap_or(0)
            }
            (None, None) => 0,
        };
        (i < self.entries.len()).then_some(i)
    }
}

/// Splits a line into words as GRUB's shell does for the commands read here: blanks separate,
/// single quotes keep everything, double quotes keep blanks, a backslash escapes one character.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '#') if !in_word => break,
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
        if quote.is_some() || !cur.is_empty() {
            in_word = true;
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// Parses GRUB 2's `grub.cfg`.
pub fn parse_grub_cfg(text: &str) -> Menu {
    let mut menu = Menu::default();
    let mut current: Option<Entry> = None;
    for line in text.lines() {
        let w = words(line.trim());
        let Some(cmd) = w.first().map(String::as_str) else {
            continue;
        };
        match cmd {
            "menuentry" => {
                if let Some(e) = current.take() {
                    push(&mut menu, e);
                }
                current = Some(Entry {
                    title: w.get(1).cloned().unwrap_or_default(),
                    ..Entry::default()
                });
            }
            // A submenu's own line and braces are left out: its entries follow in order.
            "submenu" => {}
            "}" => {
                if let Some(e) = current.take() {
                    push(&mut menu, e);
                }
            }
            "linux" | "linux16" | "linuxefi" | "kernel" => {
                if let (Some(e), Some(k)) = (current.as_mut(), w.get(1)) {
                    e.kernel = k.clone();
                    e.args = w.get(2..).unwrap_or_default().join(" ");
                }
            }
            "initrd" | "initrd16" | "initrdefi" => {
                if let (Some(e), Some(i)) = (current.as_mut(), w.get(1)) {
                    e.initrd = Some(i.clone());
                }
            }
            "set" if current.is_none() => {
                if let Some(v) = w.get(1).and_then(|a| a.strip_prefix("default=")) {
                    menu.default = default_of(v);
                }
            }
            _ => {}
        }
    }
    if let Some(e) = current.take() {
        push(&mut menu, e);
    }
    menu
}

fn push(menu: &mut Menu, e: Entry) {
    if !e.kernel.is_empty() {
        menu.entries.push(e);
    }
}

/// A `default` value: a number, a title, or a variable (saved_entry: the first entry).
fn default_of(v: &str) -> Option<Default> {
    let v = v.trim();
    if v.is_empty() || v.starts_with('$') {
        return None;
    }
    // GRUB 2 names a submenu's entry "1>2"; flattened, the first number is the closest guess.
    let first = v.split('>').next().unwrap_or(v);
    Some(match first.parse() {
        Ok(i) => Default::Index(i),
        Err(_) => Default::Title(v.to_string()),
    })
}

/// Parses GRUB legacy's `menu.lst` (or `grub.conf`).
pub fn parse_menu_lst(text: &str) -> Menu {
    let mut menu = Menu::default();
    let mut current: Option<Entry> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (cmd, rest) = line
            .split_once(|c: char| c.is_whitespace() || c == '=')
            .map_or((line, ""), |(c, r)| (c, r.trim()));
        match cmd {
            "default" => menu.default = default_of(rest),
            "title" => {
                if let Some(e) = current.take() {
                    push(&mut menu, e);
                }
                current = Some(Entry {
                    title: rest.to_string(),
                    ..Entry::default()
                });
            }
            "kernel" => {
                if let Some(e) = current.as_mut() {
                    let mut w = rest.split_whitespace();
                    e.kernel = w.next().unwrap_or_default().to_string();
                    e.args = w.collect::<Vec<_>>().join(" ");
                }
            }
            "initrd" => {
                if let Some(e) = current.as_mut() {
                    e.initrd = rest.split_whitespace().next().map(str::to_string);
                }
            }
            _ => {}
        }
    }
    if let Some(e) = current.take() {
        push(&mut menu, e);
    }
    menu
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEBIAN: &str = r#"
set default="1"
if [ x"${feature_menuentry_id}" = xy ]; then
  menuentry_id_option="--id"
fi
menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple' {
	load_video
	insmod ext2
	echo	'Loading Linux 6.1.0-18-amd64 ...'
	linux	/boot/vmlinuz-6.1.0-18-amd64 root=UUID=abc ro  quiet
	initrd	/boot/initrd.img-6.1.0-18-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'x' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-18-amd64 (recovery mode)' {
		linux	/boot/vmlinuz-6.1.0-18-amd64 root=UUID=abc ro single
		initrd	/boot/initrd.img-6.1.0-18-amd64
	}
}
"#;

    #[test]
    fn a_debian_grub_cfg_lists_its_entries_and_default() {
        let m = parse_grub_cfg(DEBIAN);
        assert_eq!(m.entries.len(), 2);
        assert_eq!(m.entries[0].title, "Debian GNU/Linux");
        assert_eq!(m.entries[0].kernel, "/boot/vmlinuz-6.1.0-18-amd64");
        assert_eq!(m.entries[0].args, "root=UUID=abc ro quiet");
        assert_eq!(
            m.entries[0].initrd.as_deref(),
            Some("/boot/initrd.img-6.1.0-18-amd64")
        );
        assert!(m.entries[1].args.ends_with("single"));
        assert_eq!(m.pick(None), Some(1));
        assert_eq!(m.pick(Some(0)), Some(0));
        assert_eq!(m.pick(Some(2)), None);
    }

    #[test]
    fn a_default_by_title_or_variable() {
        let m = parse_grub_cfg(
            "set default=\"second\"\nmenuentry 'first' {\nlinux /a\n}\nmenuentry \"second\" {\nlinux /b x=1\n}\n",
        );
        assert_eq!(m.pick(None), Some(1));
        let m = parse_grub_cfg("set default=\"${saved_entry}\"\nmenuentry 'a' {\nlinux /a\n}\n");
        assert_eq!(m.pick(None), Some(0));
    }

    #[test]
    fn a_legacy_menu_lst() {
        let m = parse_menu_lst(
            "default 1\ntimeout 5\n\ntitle Old\n root (hd0,0)\n kernel /vmlinuz-old ro root=/dev/xvda1\n initrd /initrd-old\ntitle New\n kernel /vmlinuz-new ro\n",
        );
        assert_eq!(m.entries.len(), 2);
        assert_eq!(m.entries[0].args, "ro root=/dev/xvda1");
        assert_eq!(m.entries[0].initrd.as_deref(), Some("/initrd-old"));
        assert_eq!(m.pick(None), Some(1));
        assert_eq!(m.entries[1].kernel, "/vmlinuz-new");
    }

    proptest! {
        #[test]
        fn any_text_parses_without_panicking(text in ".{0,400}") {
            let a = parse_grub_cfg(&text);
            let b = parse_menu_lst(&text);
            let _ = (a.pick(None), b.pick(Some(3)));
        }
    }
}
