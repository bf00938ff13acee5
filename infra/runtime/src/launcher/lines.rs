//! An instance's output, line by line, in constant memory.
//!
//! A function owns its stdout and stderr: it may write a 300 MiB line with no newline,
//! or never end a line at all. [`LineReader`] keeps at most [`KEEP`] bytes of a line:
//! once a line reaches that, it is handed on at once with a marker, and the rest of it is
//! read and dropped up to its newline. A line costs thaw the same memory whatever its
//! length: the pipe's buffer plus [`KEEP`]. (A plain `read_until` grows its buffer to the
//! whole line before any cap can apply.)

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

use crate::logs::{LogRing, MAX_LINE};

/// Bytes of one line kept: the log ring's longest line, less room for the marker.
pub(crate) const KEEP: usize = MAX_LINE - 64;

/// How much is read from the pipe at once.
const PIPE_BUFFER: usize = 64 * 1024;

/// The end of a line cut at [`KEEP`] bytes.
pub(crate) const CUT_MARKER: &str = "…[line cut: the rest was dropped]";

/// Reads lines of at most [`KEEP`] bytes (plus [`CUT_MARKER`]) from a pipe.
#[derive(Debug)]
pub(crate) struct LineReader<R> {
    inner: BufReader<R>,
    line: Vec<u8>,
    /// Inside a line already cut: drop bytes up to its newline.
    skipping: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(crate) fn new(pipe: R) -> Self {
        Self {
            inner: BufReader::with_capacity(PIPE_BUFFER, pipe),
            line: Vec::with_capacity(KEEP),
            skipping: false,
        }
    }

    /// The next line, without its newline; `None` at the end of the stream (or on a
    /// read error: the instance is gone).
    pub(crate) async fn next_line(&mut self) -> Option<String> {
        self.line.clear();
        loop {
            let Ok(buf) = self.inner.fill_buf().await else {
                return self.partial();
            };
            if buf.is_empty() {
                return self.partial();
            }
            let newline = buf.iter().position(|&b| b == b'\n');
            let used = newline.map_or(buf.len(), |i| i + 1);
            if self.skipping {
                self.skipping = newline.is_none();
                self.inner.consume(used);
                continue;
            }
            let text = &buf[..newline.unwrap_or(buf.len())];
            let take = text.len().min(KEEP - self.line.len());
            self.line.extend_from_slice(&text[..take]);
            if take < text.len() {
                // Cut: hand on what is kept now; drop the rest of the line as it comes.
                self.skipping = newline.is_none();
                self.inner.consume(used);
                let mut s = self.text();
                s.push_str(CUT_MARKER);
                return Some(s);
            }
            self.inner.consume(used);
            if newline.is_some() {
                return Some(self.text());
            }
        }
    }

    /// At the end of the stream: what was read of an unterminated last line, if any.
    fn partial(&mut self) -> Option<String> {
        (!self.line.is_empty()).then(|| self.text())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.line).trim_end().to_owned()
    }
}

/// Copies `pipe` into `logs` line by line until it closes, as `instance`'s `stream`.
pub(crate) fn pump_lines<R: AsyncRead + Unpin + Send + 'static>(
    pipe: R,
    instance: String,
    stream: &'static str,
    logs: Arc<LogRing>,
) {
    tokio::spawn(async move {
        let mut reader = LineReader::new(pipe);
        while let Some(line) = reader.next_line().await {
            logs.push(&instance, stream, line);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, ReadBuf};

    use super::*;

    /// A pipe that writes `len` bytes of `x` with no newline, then `tail`, generated on
    /// the fly so the test itself holds no big buffer.
    struct Endless {
        left: u64,
        tail: &'static [u8],
    }

    impl AsyncRead for Endless {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.left > 0 {
                let n = (buf.remaining() as u64).min(self.left) as usize;
                buf.put_slice(&vec![b'x'; n]);
                self.left -= n as u64;
            } else {
                let n = buf.remaining().min(self.tail.len());
                buf.put_slice(&self.tail[..n]);
                self.tail = &self.tail[n..];
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_huge_line_is_cut_in_constant_memory_and_the_next_line_survives() {
        let len = 300u64 << 20;
        let mut r = LineReader::new(Endless {
            left: len,
            tail: b"\nafter\nunterminated",
        });
        let first = r.next_line().await.expect("first line");
        assert_eq!(first, format!("{}{CUT_MARKER}", "x".repeat(KEEP)));
        assert!(first.len() <= MAX_LINE, "{} bytes", first.len());
        assert!(
            r.line.capacity() <= KEEP,
            "the line buffer grew to {}",
            r.line.capacity()
        );
        assert_eq!(r.next_line().await.as_deref(), Some("after"));
        assert_eq!(r.next_line().await.as_deref(), Some("unterminated"));
        assert_eq!(r.next_line().await, None);
    }

    #[tokio::test]
    async fn a_cut_line_is_handed_on_before_its_end_arrives() {
        use tokio::io::AsyncWriteExt as _;
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        let mut r = LineReader::new(rx);
        tx.write_all(&vec![b'y'; KEEP + 100]).await.expect("write");
        // The writer is still open and has sent no newline.
        let cut = tokio::time::timeout(std::time::Duration::from_secs(10), r.next_line())
            .await
            .expect("the cut line waited for its newline");
        assert_eq!(cut, Some(format!("{}{CUT_MARKER}", "y".repeat(KEEP))));
        tx.write_all(b"yyy rest of the long line\nnext\n")
            .await
            .expect("write");
        drop(tx);
        assert_eq!(r.next_line().await.as_deref(), Some("next"));
        assert_eq!(r.next_line().await, None);
    }

    #[tokio::test]
    async fn short_lines_pass_unchanged() {
        let mut r = LineReader::new(&b"one\r\n\ntwo\n"[..]);
        assert_eq!(r.next_line().await.as_deref(), Some("one"));
        assert_eq!(r.next_line().await.as_deref(), Some(""));
        assert_eq!(r.next_line().await.as_deref(), Some("two"));
        assert_eq!(r.next_line().await, None);
    }
}
