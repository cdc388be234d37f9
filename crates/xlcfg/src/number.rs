//! Numbers as Xen reads them: C `strtol(text, &end, 0)` that must consume the whole text.

/// Why a text is not a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// The text is not (entirely) a decimal, `0x` hex or leading-zero octal integer.
    #[error("not a number")]
    NotANumber,
    /// The value does not fit a signed 64-bit integer.
    #[error("number out of range")]
    Overflow,
}

/// Reads `text` as C's `strtol(text, &end, 0)` does and requires `*end == 0`:
/// optional leading white space, an optional sign, then `0x`/`0X` hex, `0` octal or decimal.
pub fn parse_c_long(text: &str) -> Result<i64, NumberError> {
    let s = text.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let bytes = s.as_bytes();
    let (radix, digits) = if bytes.len() > 2
        && bytes[0] == b'0'
        && (bytes[1] == b'x' || bytes[1] == b'X')
        && bytes[2].is_ascii_hexdigit()
    {
        (16, &s[2..])
    } else if bytes.len() > 1 && bytes[0] == b'0' {
        (8, &s[1..])
    } else {
        (10, s)
    };
    if digits.is_empty() && radix != 8 {
        return Err(NumberError::NotANumber);
    }
    let mut value: i128 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix).ok_or(NumberError::NotANumber)?;
        value = value * i128::from(radix) + i128::from(d);
        if value > i128::from(i64::MAX) + 1 {
            return Err(NumberError::Overflow);
        }
    }
    let value = if negative { -value } else { value };
    i64::try_from(value).map_err(|_| NumberError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_strtol_base_0() {
        assert_eq!(parse_c_long("512"), Ok(512));
        assert_eq!(parse_c_long("0x200"), Ok(512));
        assert_eq!(parse_c_long("0X1f"), Ok(31));
        assert_eq!(parse_c_long("01000"), Ok(512));
        assert_eq!(parse_c_long("0"), Ok(0));
        assert_eq!(parse_c_long("  -7"), Ok(-7));
        assert_eq!(parse_c_long("+7"), Ok(7));
        assert_eq!(parse_c_long("08"), Err(NumberError::NotANumber));
        assert_eq!(parse_c_long("0x"), Err(NumberError::NotANumber));
        assert_eq!(parse_c_long(""), Err(NumberError::NotANumber));
        assert_eq!(parse_c_long("-"), Err(NumberError::NotANumber));
        assert_eq!(parse_c_long("512M"), Err(NumberError::NotANumber));
        assert_eq!(parse_c_long("1 "), Err(NumberError::NotANumber));
        assert_eq!(
            parse_c_long("99999999999999999999"),
            Err(NumberError::Overflow)
        );
        assert_eq!(parse_c_long("-9223372036854775808"), Ok(i64::MIN));
    }
}
