//! The xl.cfg grammar (Xen's libxlu_cfg_y.y): assignments, `+=`, values and lists.

use crate::error::ConfigErrorKind;
use crate::lexer::{tokenize, LexError, Pos, Tok, Token};
use std::collections::HashMap;

/// How deeply lists may nest (Xen has no limit; this keeps the parser's stack bounded).
pub(crate) const MAX_DEPTH: usize = 32;

/// A value as written: atoms (strings and numbers, both kept as text) and lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// A string or number; `quoted` tells which.
    Atom {
        /// The text (escapes resolved).
        text: String,
        /// Written as a quoted string rather than a number.
        quoted: bool,
    },
    /// `[ ... ]`.
    List(Vec<Spanned>),
}

/// A value and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spanned {
    /// The value.
    pub value: Value,
    /// Where it starts.
    pub pos: Pos,
}

/// The current value of one key.
#[derive(Debug, Clone)]
pub(crate) struct Setting {
    /// The key (canonical spelling).
    pub key: String,
    /// Where the key was last assigned.
    pub key_pos: Pos,
    /// The value.
    pub value: Spanned,
}

/// Every key's last value, in order of first appearance.
#[derive(Debug, Default)]
pub(crate) struct Settings {
    /// The settings.
    pub list: Vec<Setting>,
    /// Key → index in `list`.
    by_key: HashMap<String, usize>,
}

impl Settings {
    fn index(&self, key: &str) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    /// The setting of `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<&Setting> {
        self.index(key).and_then(|i| self.list.get(i))
    }

    fn assign(
        &mut self,
        key: String,
        key_pos: Pos,
        value: Spanned,
        add: bool,
    ) -> Result<(), LexError> {
        let Some(i) = self.index(&key) else {
            self.by_key.insert(key.clone(), self.list.len());
            self.list.push(Setting {
                key,
                key_pos,
                value,
            });
            return Ok(());
        };
        let Some(slot) = self.list.get_mut(i) else {
            return Ok(());
        };
        if !add {
            slot.key_pos = key_pos;
            slot.value = value;
            return Ok(());
        }
        match (&mut slot.value.value, value.value) {
            (
                Value::Atom { text, quoted },
                Value::Atom {
                    text: t2,
                    quoted: q2,
                },
            ) => {
                text.push_str(&t2);
                *quoted = *quoted || q2;
            }
            (Value::List(items), Value::List(more)) => items.extend(more),
            _ => return Err((value.pos, ConfigErrorKind::AddMismatch { key })),
        }
        slot.key_pos = key_pos;
        Ok(())
    }
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        // tokenize always ends with Eof, and next() never moves past it
        self.toks
            .get(self.i)
            .or_else(|| self.toks.last())
            .unwrap_or(&EOF)
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.i + 1 < self.toks.len() {
            self.i += 1;
        }
        t
    }

    fn skip_newlines(&mut self) {
        while self.peek().tok == Tok::Newline {
            self.next();
        }
    }

    fn value(&mut self) -> Result<Spanned, LexError> {
        let t = self.next();
        let value = match t.tok {
            Tok::Str(text) => Value::Atom { text, quoted: true },
            Tok::Number(text) => Value::Atom {
                text,
                quoted: false,
            },
            Tok::LBracket => {
                if self.depth >= MAX_DEPTH {
                    return Err((t.pos, ConfigErrorKind::TooDeep { max: MAX_DEPTH }));
                }
                self.depth += 1;
                let list = self.list(t.pos);
                self.depth -= 1;
                return list;
            }
            other => {
                let found = match &other {
                    Tok::Ident(s) => format!("`{s}` (strings must be quoted, e.g. \"{s}\")"),
                    o => o.describe(),
                };
                return Err((
                    t.pos,
                    ConfigErrorKind::Expected {
                        expected: "a value (a number, a quoted string or a `[` list)",
                        found,
                    },
                ));
            }
        };
        Ok(Spanned { value, pos: t.pos })
    }

    fn list(&mut self, open: Pos) -> Result<Spanned, LexError> {
        let unterminated = |_: &Token| {
            (
                open,
                ConfigErrorKind::UnterminatedList {
                    line: open.line,
                    column: open.col,
                },
            )
        };
        let mut items = Vec::new();
        self.skip_newlines();
        loop {
            let t = self.peek().clone();
            match t.tok {
                Tok::RBracket => {
                    self.next();
                    break;
                }
                Tok::Eof => return Err(unterminated(&t)),
                Tok::Str(_) | Tok::Number(_) | Tok::LBracket => {
                    items.push(self.value()?);
                    self.skip_newlines();
                    let t = self.next();
                    match t.tok {
                        Tok::Comma => self.skip_newlines(),
                        Tok::RBracket => break,
                        Tok::Eof => return Err(unterminated(&t)),
                        other => {
                            return Err((
                                t.pos,
                                ConfigErrorKind::Expected {
                                    expected: "`,` or `]` after a list item",
                                    found: other.describe(),
                                },
                            ))
                        }
                    }
                }
                other => {
                    return Err((
                        t.pos,
                        ConfigErrorKind::Expected {
                            expected: "a list item or `]`",
                            found: other.describe(),
                        },
                    ))
                }
            }
        }
        Ok(Spanned {
            value: Value::List(items),
            pos: open,
        })
    }

    fn file(&mut self, settings: &mut Settings) -> Result<(), LexError> {
        loop {
            let t = self.next();
            match t.tok {
                Tok::Eof => return Ok(()),
                Tok::Newline | Tok::Semi => continue,
                Tok::Ident(key) => {
                    let op = self.next();
                    let add = match op.tok {
                        Tok::Eq => false,
                        Tok::PlusEq => true,
                        other => {
                            return Err((
                                op.pos,
                                ConfigErrorKind::Expected {
                                    expected: "`=` or `+=` after the key",
                                    found: other.describe(),
                                },
                            ))
                        }
                    };
                    let value = self.value()?;
                    let end = self.next();
                    match end.tok {
                        Tok::Newline | Tok::Semi | Tok::Eof => {}
                        other => {
                            return Err((
                                end.pos,
                                ConfigErrorKind::Expected {
                                    expected: "end of line or `;` after the value",
                                    found: other.describe(),
                                },
                            ))
                        }
                    }
                    settings.assign(key, t.pos, value, add)?;
                    if end.tok == Tok::Eof {
                        return Ok(());
                    }
                }
                other => {
                    return Err((
                        t.pos,
                        ConfigErrorKind::Expected {
                            expected: "a key (`key = value`)",
                            found: other.describe(),
                        },
                    ))
                }
            }
        }
    }
}

static EOF: Token = Token {
    tok: Tok::Eof,
    pos: Pos {
        src: 0,
        line: 1,
        col: 1,
    },
};

/// Parses one source (number `src`) into `settings`, later assignments overriding earlier ones.
pub(crate) fn parse_into(text: &str, src: usize, settings: &mut Settings) -> Result<(), LexError> {
    let toks = tokenize(text, src)?;
    Parser {
        toks,
        i: 0,
        depth: 0,
    }
    .file(settings)
}
