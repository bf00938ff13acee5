//! Per-function log rings: the last lines of every instance's stdout and stderr, tagged
//! with the instance, for `thaw logs` and for crash messages.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::broadcast;

/// Lines kept per function.
const CAPACITY: usize = 2000;
/// Longest line kept; a flood of one endless line cannot grow memory (the launcher's
/// reader cuts lines to this as it reads them).
pub(crate) const MAX_LINE: usize = 8 * 1024;

/// One captured line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The instance that wrote it.
    pub instance: String,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The text.
    pub line: String,
}

/// A bounded ring of log lines with live followers.
#[derive(Debug)]
pub struct LogRing {
    lines: Mutex<VecDeque<LogLine>>,
    follow: broadcast::Sender<LogLine>,
}

impl Default for LogRing {
    fn default() -> Self {
        Self {
            lines: Mutex::new(VecDeque::with_capacity(256)),
            follow: broadcast::channel(1024).0,
        }
    }
}

impl LogRing {
    /// Appends a line, dropping the oldest past capacity.
    pub fn push(&self, instance: &str, stream: &'static str, mut line: String) {
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str("…[truncated]");
        }
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let entry = LogLine {
            ts_ms,
            instance: instance.to_owned(),
            stream,
            line,
        };
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() == CAPACITY {
                lines.pop_front();
            }
            lines.push_back(entry.clone());
        }
        let _ = self.follow.send(entry);
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        self.lines
            .lock()
            .map(|l| l.iter().rev().take(n).rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Instance `instance`'s lines written at or after `from_ms`: one call's log.
    pub fn since(&self, instance: &str, from_ms: u64) -> Vec<LogLine> {
        self.lines
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|e| e.instance == instance && e.ts_ms >= from_ms)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last `n` stderr lines of one instance, joined: the message for a crash.
    pub fn instance_tail(&self, instance: &str, n: usize) -> String {
        let lines = self.lines.lock().map(|l| {
            l.iter()
                .rev()
                .filter(|e| e.instance == instance && e.stream == "stderr")
                .take(n)
                .map(|e| e.line.clone())
                .collect::<Vec<_>>()
        });
        let mut lines = lines.unwrap_or_default();
        lines.reverse();
        lines.join("\n")
    }

    /// New lines as they arrive.
    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.follow.subscribe()
    }
}
