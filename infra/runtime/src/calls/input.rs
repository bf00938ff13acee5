//! A map's input, split into items as its bytes arrive.
//!
//! The body is a JSON array (`[in0, in1, …]`) or NDJSON (one input per line); the first
//! byte that is not whitespace decides. Items come out one at a time, so memory holds
//! at most one unfinished item, whatever the size of the map.
//!
//! - **NDJSON:** blank lines are skipped; a line that is not JSON is an item error at its
//!   index, and the other items are unaffected.
//! - **JSON array:** elements are split at top-level commas (strings and nesting are
//!   tracked). An element that is not JSON is an item error; an array that cannot be
//!   split (bytes after `]`, or the body ends inside it) is an error of the whole input.

use bytes::{Buf, Bytes, BytesMut};

use super::CallFailure;

/// The largest single item, as for any call.
pub const MAX_ITEM: usize = crate::front::MAX_BODY;

/// A problem with the input as a whole; items before it stand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Unknown,
    Ndjson,
    Array,
    ArrayDone,
}

/// The splitter. Feed it chunks with [`Splitter::push`], take items with
/// [`Splitter::next_item`], and call [`Splitter::finish`] at the end of the body.
#[derive(Debug)]
pub struct Splitter {
    format: Format,
    buf: BytesMut,
    /// How far into `buf` the array scanner has looked.
    scanned: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The current line or element grew past [`MAX_ITEM`]; skip to its end.
    oversized: bool,
    ended: bool,
}

impl Default for Splitter {
    fn default() -> Self {
        Self {
            format: Format::Unknown,
            buf: BytesMut::new(),
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            oversized: false,
            ended: false,
        }
    }
}

/// One item: its input bytes, or why it cannot run.
pub type Item = Result<Bytes, CallFailure>;

fn item(raw: &[u8]) -> Item {
    let raw = raw.trim_ascii();
    match validate_json(raw) {
        Ok(_) => Ok(Bytes::copy_from_slice(raw)),
        Err(e) => Err(CallFailure {
            kind: "InvalidInput".into(),
            message: format!("item is not JSON: {e}"),
        }),
    }
}

fn too_large() -> Item {
    Err(CallFailure {
        kind: "PayloadTooLarge".into(),
        message: format!("item exceeds {MAX_ITEM} bytes"),
    })
}

/// Checks that `bytes` is exactly one JSON value, as a function's deserializer will
/// read it. Unlike `serde::de::IgnoredAny`, which skips over strings without decoding
/// them, every string is decoded: invalid UTF-8 and lone surrogate escapes (`"\ud800"`)
/// are refused. Nothing is allocated for strings without escapes.
pub fn validate_json(bytes: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<Strict>(bytes).map(|_| ())
}

/// Any JSON value, every part of it decoded and then dropped.
struct Strict;

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_key::<Strict>()?.is_some() {
            map.next_value::<Strict>()?;
        }
        Ok(Strict)
    }
}

impl Splitter {
    /// Appends a chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Marks the end of the body; remaining bytes become the last item.
    pub fn finish(&mut self) {
        self.ended = true;
    }

    /// The next complete item, `Ok(None)` if more bytes are needed (or the input is
    /// over), or an error of the whole input.
    pub fn next_item(&mut self) -> Result<Option<Item>, InputError> {
        if self.format == Format::Unknown {
            let start = self.buf.iter().position(|b| !b.is_ascii_whitespace());
            match start {
                None => {
                    self.buf.clear();
                    return Ok(None);
                }
                Some(i) => {
                    self.buf.advance(i);
                    if self.buf[0] == b'[' {
                        self.buf.advance(1);
                        self.format = Format::Array;
                        self.depth = 0;
                    } else {
                        self.format = Format::Ndjson;
                    }
                }
            }
        }
        match self.format {
            Format::Ndjson => Ok(self.next_line()),
            Format::Array => self.next_element(),
            Format::ArrayDone => {
                if self.buf.iter().any(|b| !b.is_ascii_whitespace()) {
                    return Err(InputError(
                        "bytes after the closing ']' of the input array".into(),
                    ));
                }
                self.buf.clear();
                Ok(None)
            }
            Format::Unknown => Ok(None),
        }
    }

    fn next_line(&mut self) -> Option<Item> {
        loop {
            let newline = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
            match newline {
                Some(i) => {
                    let line = self.buf.split_to(self.scanned + i + 1);
                    self.scanned = 0;
                    if std::mem::take(&mut self.oversized) {
                        return Some(too_large());
                    }
                    if line.trim_ascii().is_empty() {
                        continue;
                    }
                    return Some(item(&line));
                }
                None => {
                    if self.buf.len() > MAX_ITEM {
                        // Drop what we have of the line; remember to report it.
                        self.oversized = true;
                        self.buf.clear();
                        self.scanned = 0;
                        return None;
                    }
                    self.scanned = self.buf.len();
                    if self.ended {
                        let rest = self.buf.split();
                        self.scanned = 0;
                        if std::mem::take(&mut self.oversized) {
                            return Some(too_large());
                        }
                        if rest.trim_ascii().is_empty() {
                            return None;
                        }
                        return Some(item(&rest));
                    }
                    return None;
                }
            }
        }
    }

    fn next_element(&mut self) -> Result<Option<Item>, InputError> {
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'[' | b'{' => self.depth += 1,
                    b']' | b'}' if self.depth > 0 => self.depth -= 1,
                    b',' | b']' if self.depth == 0 => {
                        let raw = self.buf.split_to(i);
                        self.buf.advance(1);
                        self.scanned = 0;
                        let closing = b == b']';
                        if closing {
                            self.format = Format::ArrayDone;
                        }
                        if std::mem::take(&mut self.oversized) {
                            return Ok(Some(too_large()));
                        }
                        if raw.trim_ascii().is_empty() {
                            // `[]`, or a trailing `]` after the last element.
                            if closing {
                                return self.next_item();
                            }
                            return Err(InputError("empty element in the input array".into()));
                        }
                        return Ok(Some(item(&raw)));
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        if self.buf.len() > MAX_ITEM {
            self.oversized = true;
            self.buf.clear();
            i = 0;
        }
        self.scanned = i;
        if self.ended {
            return Err(InputError(
                "the input ended inside the JSON array (missing ']')".into(),
            ));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> (Vec<Item>, Option<InputError>) {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for (n, c) in chunks.iter().enumerate() {
            s.push(c);
            if n + 1 == chunks.len() {
                s.finish();
            }
            loop {
                match s.next_item() {
                    Ok(Some(i)) => out.push(i),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    fn oks(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Ok(b) => String::from_utf8_lossy(b).into_owned(),
                Err(e) => format!("ERR {}", e.kind),
            })
            .collect()
    }

    #[test]
    fn ndjson_with_a_bad_line_and_blank_lines_across_chunks() {
        let (items, err) = split(&[b"{\"a\":1}\n\n{\"b\"", b":2}\nnope\n{\"c\":3}"]);
        assert!(err.is_none());
        assert_eq!(
            oks(&items),
            ["{\"a\":1}", "{\"b\":2}", "ERR InvalidInput", "{\"c\":3}"]
        );
    }

    #[test]
    fn json_array_with_nesting_strings_and_commas() {
        let (items, err) = split(&[
            b" [ {\"a\":[1,2]}, \"x,]\\\"\"",
            b", 3 ,{\"b\":{\"c\":\"}\"}} ] ",
        ]);
        assert!(err.is_none());
        assert_eq!(
            oks(&items),
            ["{\"a\":[1,2]}", "\"x,]\\\"\"", "3", "{\"b\":{\"c\":\"}\"}}"]
        );
    }

    #[test]
    fn empty_array_and_bad_element() {
        assert!(split(&[b"[]"]).0.is_empty());
        let (items, err) = split(&[b"[1, tru, 3]"]);
        assert!(err.is_none());
        assert_eq!(oks(&items), ["1", "ERR InvalidInput", "3"]);
    }

    #[test]
    fn invalid_utf8_and_lone_surrogates_are_not_json() {
        assert!(validate_json(br#"{"a": [1, "x", {"b": null}], "c": 1.5e3}"#).is_ok());
        assert!(validate_json(b"\"\xff\xfe\"").is_err());
        assert!(validate_json(b"{\"k\": \"ok \xc3\x28\"}").is_err());
        assert!(validate_json(b"{\"\xff\": 1}").is_err());
        assert!(validate_json(br#""\ud800""#).is_err());
        assert!(validate_json(br#""\ud83d\ude00""#).is_ok());
        assert!(validate_json(b"1 2").is_err());
        // IgnoredAny, which this replaces, lets the first of these through.
        let (items, _) = split(&[b"{\"a\": \"\xff\"}\n{\"b\": 1}\n"]);
        assert_eq!(oks(&items), ["ERR InvalidInput", "{\"b\": 1}"]);
    }

    #[test]
    fn broken_arrays_are_errors_of_the_input() {
        let (items, err) = split(&[b"[1, 2"]);
        assert_eq!(items.len(), 1);
        assert!(err.expect("error").0.contains("missing ']'"));
        let (_, err) = split(&[b"[1] 2"]);
        assert!(err.expect("error").0.contains("after the closing"));
    }
}
