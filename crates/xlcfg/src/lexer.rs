//! The xl.cfg tokenizer (Xen's libxlu_cfg_l.l, plus the `\`-newline of old xm files).

use crate::error::ConfigErrorKind;

/// A position in one source: `src` indexes the list of source names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    /// Which source (0 = the file, 1.. = command-line overrides).
    pub src: usize,
    /// 1-based line.
    pub line: u32,
    /// 1-based column in characters.
    pub col: u32,
}

/// A token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    /// A key.
    Ident(String),
    /// `[0-9][0-9a-fx]*`, kept as text.
    Number(String),
    /// A quoted string, escapes resolved.
    Str(String),
    /// `,`
    Comma,
    /// `[`
    LBracket,
    /// `]`
    RBracket,
    /// `=`
    Eq,
    /// `+=`
    PlusEq,
    /// `;`
    Semi,
    /// A newline (or a comment that ends one).
    Newline,
    /// End of input.
    Eof,
}

impl Tok {
    /// How the token reads in a message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Number(s) => format!("number {s}"),
            Tok::Str(s) => format!("string \"{}\"", s.escape_debug()),
            Tok::Comma => "`,`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Eq => "`=`".into(),
            Tok::PlusEq => "`+=`".into(),
            Tok::Semi => "`;`".into(),
            Tok::Newline => "end of line".into(),
            Tok::Eof => "end of file".into(),
        }
    }
}

/// A token and where it starts.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    /// The token.
    pub tok: Tok,
    /// Where it starts.
    pub pos: Pos,
}

/// A lexical error and where.
pub(crate) type LexError = (Pos, ConfigErrorKind);

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    src: usize,
    line: u32,
    col: u32,
}

impl Lexer<'_> {
    fn pos(&self) -> Pos {
        Pos {
            src: self.src,
            line: self.line,
            col: self.col,
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.line = self.line.saturating_add(1);
            self.col = 1;
        } else {
            self.col = self.col.saturating_add(1);
        }
        Some(c)
    }

    /// After a backslash: true (and consumed) if a newline (optionally after `\r`) follows.
    fn continuation(&mut self) -> bool {
        let mut look = self.chars.clone();
        match look.next() {
            Some('\n') => {
                self.bump();
                true
            }
            Some('\r') if look.next() == Some('\n') => {
                self.bump();
                self.bump();
                true
            }
            _ => false,
        }
    }

    fn string(&mut self, quote: char, start: Pos) -> Result<Tok, LexError> {
        let mut bytes: Vec<u8> = Vec::new();
        let unterminated = (start, ConfigErrorKind::UnterminatedString { quote });
        loop {
            let at = self.pos();
            let Some(c) = self.bump() else {
                return Err(unterminated);
            };
            if c == quote {
                break;
            }
            match c {
                '\n' => return Err(unterminated),
                '\\' => {
                    if self.continuation() {
                        continue;
                    }
                    let Some(e) = self.bump() else {
                        return Err(unterminated);
                    };
                    let simple = match e {
                        '"' | '\'' | '\\' => Some(e as u8),
                        'a' => Some(7),
                        'b' => Some(8),
                        'f' => Some(12),
                        'n' => Some(b'\n'),
                        'r' => Some(b'\r'),
                        't' => Some(b'\t'),
                        'v' => Some(11),
                        _ => None,
                    };
                    if let Some(b) = simple {
                        bytes.push(b);
                    } else if e == 'x' {
                        let mut v = 0u32;
                        let mut text = String::from("\\x");
                        for _ in 0..2 {
                            match self.peek().and_then(|d| d.to_digit(16).map(|n| (d, n))) {
                                Some((d, n)) => {
                                    self.bump();
                                    text.push(d);
                                    v = v * 16 + n;
                                }
                                None => {
                                    return Err((
                                        at,
                                        ConfigErrorKind::BadEscape {
                                            escape: text,
                                            why: "\\x needs two hex digits",
                                        },
                                    ))
                                }
                            }
                        }
                        bytes.push(escape_byte(v, &text, at)?);
                    } else if ('0'..='7').contains(&e) {
                        // Xen reads up to three digits with strtoul base 10
                        let mut text = format!("\\{e}");
                        let mut v = e.to_digit(10).unwrap_or(0);
                        for _ in 0..2 {
                            match self.peek().and_then(|d| d.to_digit(10).map(|n| (d, n))) {
                                Some((d, n)) => {
                                    self.bump();
                                    text.push(d);
                                    v = v * 10 + n;
                                }
                                None => break,
                            }
                        }
                        bytes.push(escape_byte(v, &text, at)?);
                    } else {
                        return Err((
                            at,
                            ConfigErrorKind::BadEscape {
                                escape: format!("\\{e}"),
                                why: "unknown escape",
                            },
                        ));
                    }
                }
                c => {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        String::from_utf8(bytes)
            .map(Tok::Str)
            .map_err(|_| (start, ConfigErrorKind::NotUtf8))
    }
}

/// A numeric escape's byte: NUL and values above 255 are refused.
fn escape_byte(v: u32, text: &str, at: Pos) -> Result<u8, LexError> {
    match u8::try_from(v) {
        Ok(0) => Err((
            at,
            ConfigErrorKind::BadEscape {
                escape: text.to_string(),
                why: "a NUL character would cut the string short",
            },
        )),
        Ok(b) => Ok(b),
        Err(_) => Err((
            at,
            ConfigErrorKind::BadEscape {
                escape: text.to_string(),
                why: "the value is above 255",
            },
        )),
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'
}

/// Splits `text` (source number `src`) into tokens, ending with `Eof`.
pub(crate) fn tokenize(text: &str, src: usize) -> Result<Vec<Token>, LexError> {
    let mut lx = Lexer {
        chars: text.chars().peekable(),
        src,
        line: 1,
        col: 1,
    };
    let mut out = Vec::new();
    loop {
        let pos = lx.pos();
        let Some(c) = lx.peek() else {
            out.push(Token { tok: Tok::Eof, pos });
            return Ok(out);
        };
        let tok = match c {
            ' ' | '\t' | '\r' => {
                lx.bump();
                continue;
            }
            '\\' => {
                lx.bump();
                if lx.continuation() {
                    continue;
                }
                return Err((pos, ConfigErrorKind::StrayBackslash));
            }
            '#' => {
                while lx.peek().is_some_and(|c| c != '\n') {
                    lx.bump();
                }
                continue;
            }
            '\n' => {
                lx.bump();
                Tok::Newline
            }
            ',' | '[' | ']' | '=' | ';' => {
                lx.bump();
                match c {
                    ',' => Tok::Comma,
                    '[' => Tok::LBracket,
                    ']' => Tok::RBracket,
                    '=' => Tok::Eq,
                    _ => Tok::Semi,
                }
            }
            '+' => {
                lx.bump();
                if lx.peek() == Some('=') {
                    lx.bump();
                    Tok::PlusEq
                } else {
                    return Err((
                        pos,
                        ConfigErrorKind::UnexpectedChar {
                            found: '+',
                            hint:
                                " (this looks like Python/xm syntax; xl.cfg has only `=` and `+=`)",
                        },
                    ));
                }
            }
            '"' | '\'' => {
                lx.bump();
                lx.string(c, pos)?
            }
            '0'..='9' => {
                let mut s = String::new();
                while let Some(d) = lx.peek().filter(|d| is_word_char(*d)) {
                    lx.bump();
                    s.push(d);
                }
                if !s
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'x')
                {
                    return Err((pos, ConfigErrorKind::MalformedNumber { text: s }));
                }
                Tok::Number(s)
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut s = String::new();
                while let Some(d) = lx.peek().filter(|d| is_word_char(*d) || d.is_alphabetic()) {
                    lx.bump();
                    s.push(d);
                }
                Tok::Ident(check_key(s, pos)?)
            }
            _ => {
                let hint = match c {
                    '(' | ')' | ':' | '-' | '.' | '{' | '}' => {
                        " (this looks like Python/xm syntax, which xl.cfg does not accept)"
                    }
                    _ => "; expected a key, `=`, a value, `[`, `]`, `,`, `;` or `#`",
                };
                return Err((pos, ConfigErrorKind::UnexpectedChar { found: c, hint }));
            }
        };
        out.push(Token { tok, pos });
    }
}

/// Keys are `[a-z][._0-9a-z]*`; `xen-shell` is accepted as `xen_shell`.
fn check_key(s: String, pos: Pos) -> Result<String, LexError> {
    if s == "xen-shell" {
        return Ok("xen_shell".into());
    }
    let why = if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("keys start with a lower-case letter a-z")
    } else if s.contains(|c: char| c.is_uppercase()) {
        Some("keys are lower-case in xl.cfg")
    } else if s.contains('-') {
        Some("`-` is not allowed in keys (write `_`; only `xen-shell` is accepted as a synonym of `xen_shell`)")
    } else if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_')
    {
        Some("keys may contain only a-z, 0-9, `.` and `_`")
    } else {
        None
    };
    match why {
        Some(why) => Err((pos, ConfigErrorKind::BadKey { key: s, why })),
        None => Ok(s),
    }
}
