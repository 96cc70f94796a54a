//! Line framing shared by the server and the client: one JSON object per
//! line, each line at most [`MAX_LINE`] bytes.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Longest request or reply line, without its newline.
pub const MAX_LINE: usize = 64 * 1024;

/// Reading one line failed.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The line exceeded [`MAX_LINE`] bytes.
    #[error("line exceeds {MAX_LINE} bytes")]
    TooLong,
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Read one line without its terminator; `None` at a clean end of stream.
/// A last line without a newline still counts.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, LineError> {
    let mut buf = Vec::new();
    // One byte over the limit tells a line of exactly MAX_LINE from a longer one.
    let limit = (MAX_LINE + 1) as u64;
    let n = (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Some(buf));
    }
    if buf.len() > MAX_LINE {
        return Err(LineError::TooLong);
    }
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        let mut input = b"one\ntwo\r\n".to_vec();
        input.extend(vec![b'x'; MAX_LINE]);
        input.push(b'\n');
        input.extend(b"last");
        let mut r = BufReader::new(input.as_slice());
        assert_eq!(read_line(&mut r).await.unwrap().unwrap(), b"one");
        assert_eq!(read_line(&mut r).await.unwrap().unwrap(), b"two");
        assert_eq!(read_line(&mut r).await.unwrap().unwrap().len(), MAX_LINE);
        assert_eq!(read_line(&mut r).await.unwrap().unwrap(), b"last");
        assert!(read_line(&mut r).await.unwrap().is_none());

        let long = vec![b'y'; MAX_LINE + 1];
        let mut r = BufReader::new(long.as_slice());
        assert!(matches!(read_line(&mut r).await, Err(LineError::TooLong)));
    }
}
