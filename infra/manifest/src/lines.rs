//! Where each key of a `[function.*]` table was written, so that a rule checked after
//! parsing (a bound, min ≤ max) can still name the line, as toml's own errors do.
//!
//! The schema's fields are plain values (`u32`, [`crate::Duration`]), which keeps every
//! consumer simple; the positions live beside them. They come from a second, lenient
//! pass over the same text with [`toml::Spanned`], done only when the first pass
//! succeeded, so it cannot fail on its own.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `(function, key) -> (1-based line, the value as written)` for every key of every
/// `[function.*]` table.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyLines(BTreeMap<(String, String), (usize, String)>);

/// Two manifests with the same content are equal wherever their keys were written.
impl PartialEq for KeyLines {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Deserialize)]
struct Located {
    #[serde(default)]
    function: BTreeMap<String, BTreeMap<String, toml::Spanned<toml::Value>>>,
}

impl KeyLines {
    /// The lines of `text`'s function keys; empty if `text` is not TOML.
    pub(crate) fn scan(text: &str) -> Self {
        let Ok(located) = toml::from_str::<Located>(text) else {
            return Self::default();
        };
        let line_of = |offset: usize| {
            let before = text.get(..offset).unwrap_or(text);
            1 + before.bytes().filter(|&b| b == b'\n').count()
        };
        let mut lines = BTreeMap::new();
        for (function, keys) in located.function {
            for (key, value) in keys {
                let span = value.span();
                let written = text.get(span.clone()).unwrap_or_default().trim().to_owned();
                lines.insert((function.clone(), key), (line_of(span.start), written));
            }
        }
        Self(lines)
    }

    /// The line of `key` in `function`'s table. A nested key (`batch.max_size`) is
    /// reported at the line of its table's key (`batch`).
    pub(crate) fn line(&self, function: &str, key: &str) -> Option<usize> {
        let top = key.split('.').next().unwrap_or(key);
        self.0
            .get(&(function.to_owned(), top.to_owned()))
            .map(|(line, _)| *line)
    }

    /// `key`'s value in `function` as the manifest writes it (`"31days"`, `1e9`), for
    /// messages; `None` for a nested key or a manifest built in code.
    pub(crate) fn written(&self, function: &str, key: &str) -> Option<&str> {
        if key.contains('.') {
            return None;
        }
        self.0
            .get(&(function.to_owned(), key.to_owned()))
            .map(|(_, written)| written.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::KeyLines;

    #[test]
    fn keys_are_found_on_their_lines_in_headers_and_inline_tables() {
        let text = "[app]\nname = \"x\"\n\n[function.a]\nbinary = \"a\"\nconcurrency = 3\n\
                    batch = { max_size = 4, wait = \"1ms\" }\n[function]\nb = { binary = \"b\", pids = 9 }\n";
        let lines = KeyLines::scan(text);
        assert_eq!(lines.line("a", "binary"), Some(5));
        assert_eq!(lines.line("a", "concurrency"), Some(6));
        assert_eq!(lines.line("a", "batch.max_size"), Some(7));
        assert_eq!(lines.line("b", "pids"), Some(9));
        assert_eq!(lines.line("a", "pids"), None);
        assert_eq!(lines.written("a", "concurrency"), Some("3"));
        assert_eq!(lines.written("a", "batch.max_size"), None);
        assert_eq!(KeyLines::scan("not toml [").line("a", "binary"), None);
    }
}
