//! Framing: one JSON value per line, over any byte stream.

use std::io::{BufRead, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Longest line accepted from a peer, so that a bad peer cannot exhaust memory.
pub const MAX_LINE: usize = 4 * 1024 * 1024;

/// Errors while reading or writing a JSON line.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream before sending a full line.
    #[error("connection closed by peer")]
    Closed,
    /// The line was longer than [`MAX_LINE`].
    #[error("message longer than {MAX_LINE} bytes")]
    TooLong,
    /// The line was not the JSON value expected.
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Writes `value` as one line of JSON and flushes. A value longer than [`MAX_LINE`], which no
/// peer would accept, is refused before anything is written.
pub fn write<W: Write, T: Serialize>(w: &mut W, value: &T) -> Result<(), FrameError> {
    let mut buf = serde_json::to_vec(value)?;
    if buf.len() > MAX_LINE {
        return Err(FrameError::TooLong);
    }
    buf.push(b'\n');
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one line and decodes it as `T`.
pub fn read<R: BufRead, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    let mut line = Vec::new();
    let n = std::io::Read::take(&mut *r, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(FrameError::Closed);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_LINE {
            FrameError::TooLong
        } else {
            FrameError::Closed
        });
    }
    Ok(serde_json::from_slice(&line)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn a_line_no_peer_would_take_is_not_sent() {
        let mut buf = Vec::new();
        let big = "x".repeat(MAX_LINE);
        assert!(matches!(write(&mut buf, &big), Err(FrameError::TooLong)));
        assert!(buf.is_empty());
        let fits = "x".repeat(MAX_LINE - 2);
        write(&mut buf, &fits).expect("a line of MAX_LINE bytes");
        let back: String = read(&mut Cursor::new(buf)).expect("read back");
        assert_eq!(back.len(), MAX_LINE - 2);
    }

    #[test]
    fn round_trip_and_errors() {
        let mut buf = Vec::new();
        write(&mut buf, &vec![1u32, 2, 3]).expect("write");
        write(&mut buf, &"x").expect("write");
        let mut cur = Cursor::new(buf);
        let v: Vec<u32> = read(&mut cur).expect("first");
        assert_eq!(v, vec![1, 2, 3]);
        let s: String = read(&mut cur).expect("second");
        assert_eq!(s, "x");
        assert!(matches!(
            read::<_, String>(&mut cur),
            Err(FrameError::Closed)
        ));
        let mut half = Cursor::new(b"{\"a\":".to_vec());
        assert!(matches!(
            read::<_, String>(&mut half),
            Err(FrameError::Closed)
        ));
        let mut bad = Cursor::new(b"nope\n".to_vec());
        assert!(matches!(
            read::<_, String>(&mut bad),
            Err(FrameError::Json(_))
        ));
    }
}
