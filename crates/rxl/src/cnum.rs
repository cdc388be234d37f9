//! Numbers read as xl reads them with C's `strtol`/`atoi`: leading blanks, an optional sign,
//! then the digits that follow; whatever comes after is ignored.

/// The sign and the leading digits of `text` (empty when there are none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leading<'a> {
    /// A `-` came before the digits.
    pub negative: bool,
    /// The digits (ASCII 0-9 only), possibly empty.
    pub digits: &'a str,
}

/// Splits `text` as `strtol` would read it.
pub fn leading(text: &str) -> Leading<'_> {
    let t = text.trim_start();
    let (negative, rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let end = rest
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    Leading {
        negative,
        digits: &rest[..end],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_strtol() {
        assert_eq!(
            leading("  -12abc"),
            Leading {
                negative: true,
                digits: "12"
            }
        );
        assert_eq!(leading("+7").digits, "7");
        assert_eq!(leading("x1").digits, "");
        assert_eq!(leading("").digits, "");
    }
}
