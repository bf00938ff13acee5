//! `generate`'s streamed lines as OpenAI's chat-completion chunks, in server-sent events.
//!
//! generate streams `application/x-ndjson`: a `start` line, `delta` lines, a `done` line
//! with the whole reply. Each becomes the chunk the OpenAI SDK reads: the role delta,
//! a content delta per piece of text, the finish reason, then (with `include_usage`) the
//! usage chunk, and `[DONE]`. A function that answered in one piece is the same events at
//! once. A stream that fails after it began ends with an `error` event, which the SDK
//! raises as an `APIError`; one that ends without its `done` line fails the same way.

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::Dialect;
use super::CompatError;
use crate::front::streaming::{StreamBody, StreamFailed};

/// The longest line of generate's stream read: a `done` line holds the whole reply
/// (text, token ids), well under this.
const MAX_LINE: usize = 8 << 20;

/// `generate`'s reply, the parts read here.
#[derive(Debug, Deserialize)]
pub(super) struct GenerateOutput {
    pub model: String,
    pub text: String,
    pub finish_reason: String,
    pub usage: Value,
}

/// One line of generate's stream.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Event {
    Start { model: String },
    Delta { text: String },
    Done(GenerateOutput),
}

/// Writes one completion's chunks.
pub(super) struct Chunker {
    id: String,
    created: u64,
    /// The model until a line names it: what the request asked for.
    model: String,
    include_usage: bool,
    role_sent: bool,
    done: bool,
}

impl Chunker {
    pub(super) fn new(id: String, created: u64, model: String, include_usage: bool) -> Self {
        Self {
            id,
            created,
            model,
            include_usage,
            role_sent: false,
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Value, usage: Option<&Value>) -> String {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if let Some(u) = usage {
            c["choices"] = json!([]);
            c["usage"] = u.clone();
        }
        format!("data: {c}\n\n")
    }

    fn role(&mut self, out: &mut String) {
        if !std::mem::replace(&mut self.role_sent, true) {
            let role = self.chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                None,
            );
            out.push_str(&role);
        }
    }

    fn event(&mut self, event: Event, out: &mut String) {
        match event {
            Event::Start { model } => {
                self.model = model;
                self.role(out);
            }
            Event::Delta { text } => {
                self.role(out);
                if !text.is_empty() {
                    out.push_str(&self.chunk(json!({"content": text}), Value::Null, None));
                }
            }
            Event::Done(reply) => {
                self.model = reply.model;
                self.role(out);
                out.push_str(&self.chunk(json!({}), json!(reply.finish_reason), None));
                if self.include_usage {
                    out.push_str(&self.chunk(Value::Null, Value::Null, Some(&reply.usage)));
                }
                out.push_str("data: [DONE]\n\n");
                self.done = true;
            }
        }
    }

    /// The whole completion's events for a reply that came in one piece.
    pub(super) fn whole(mut self, reply: GenerateOutput) -> String {
        let mut out = String::new();
        self.model = reply.model.clone();
        self.role(&mut out);
        self.event(
            Event::Delta {
                text: reply.text.clone(),
            },
            &mut out,
        );
        self.event(Event::Done(reply), &mut out);
        out
    }

    fn error(&mut self, e: CompatError, out: &mut String) {
        out.push_str(&format!("data: {}\n\n", e.body(Dialect::OpenAi)));
        self.done = true;
    }

    /// The events for a streaming reply, as its lines arrive.
    pub(super) fn stream(
        self,
        body: StreamBody,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::unfold(
            (self, body, BytesMut::new()),
            |(mut me, mut body, mut pending)| async move {
                if me.done {
                    // Read the call to its end, so it is counted as every call is.
                    while body.next().await.is_some() {}
                    return None;
                }
                let mut out = String::new();
                while out.is_empty() && !me.done {
                    match body.next().await {
                        Some(Ok(bytes)) => {
                            // Only the new bytes can end a line: the ones before had none.
                            let mut from = pending.len();
                            pending.extend_from_slice(&bytes);
                            while let Some(i) = pending[from..].iter().position(|&b| b == b'\n') {
                                let line = pending.split_to(from + i + 1);
                                from = 0;
                                me.line(&line[..line.len() - 1], &mut out);
                                if me.done {
                                    break;
                                }
                            }
                            if pending.len() > MAX_LINE && !me.done {
                                me.error(
                                    CompatError::BadReply(format!(
                                        "the function streamed a line of more than {MAX_LINE} bytes"
                                    )),
                                    &mut out,
                                );
                            }
                        }
                        Some(Err(e)) => me.error(failed(e), &mut out),
                        None if !pending.is_empty() => {
                            let line = std::mem::take(&mut pending);
                            me.line(&line, &mut out);
                            if !me.done {
                                me.error(ended(), &mut out);
                            }
                        }
                        None => me.error(ended(), &mut out),
                    }
                }
                Some((Ok(Bytes::from(out)), (me, body, pending)))
            },
        )
    }

    fn line(&mut self, line: &[u8], out: &mut String) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match serde_json::from_slice::<Event>(line) {
            Ok(event) => self.event(event, out),
            Err(e) => self.error(
                CompatError::BadReply(format!(
                    "the function streamed a line outside generate's contract: {e}"
                )),
                out,
            ),
        }
    }
}

fn failed(e: StreamFailed) -> CompatError {
    match e {
        StreamFailed::Function(d) => CompatError::Function(d),
        StreamFailed::Call(e) => CompatError::Call(e),
    }
}

fn ended() -> CompatError {
    CompatError::BadReply("the function's stream ended before its done line".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(lines: &[&str]) -> StreamBody {
        let parts: Vec<Result<Bytes, StreamFailed>> = lines
            .iter()
            .map(|l| Ok(Bytes::from(l.to_string())))
            .collect();
        Box::pin(futures_util::stream::iter(parts))
    }

    async fn sse(body: StreamBody) -> Vec<Value> {
        let out: Vec<_> = Chunker::new("c".into(), 1, "m".into(), true)
            .stream(body)
            .collect()
            .await;
        let text: String = out
            .into_iter()
            .map(|b| String::from_utf8(b.expect("ok").to_vec()).expect("utf8"))
            .collect();
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap_or(Value::String(d.into())))
            .collect()
    }

    #[tokio::test]
    async fn lines_split_anywhere_become_one_chunk_per_piece_and_a_done() {
        let body = chunks_of(&[
            "{\"type\":\"start\",\"model\":\"q\",\"prompt_tokens\":3}\n{\"type\":\"de",
            "lta\",\"text\":\"Hel\"}\n",
            "{\"type\":\"delta\",\"text\":\"lo\"}\n{\"type\":\"done\",\"model\":\"q\",\"text\":\"Hello\",\"finish_reason\":\"length\",\"usage\":{\"total_tokens\":5}}\n",
        ]);
        let events = sse(body).await;
        let content: Vec<_> = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, vec!["", "Hel", "lo"]);
        assert_eq!(events[0]["model"], "q");
        assert_eq!(events[3]["choices"][0]["finish_reason"], "length");
        assert_eq!(events[4]["usage"]["total_tokens"], 5);
        assert_eq!(events[5], Value::String("[DONE]".into()));
    }

    #[tokio::test]
    async fn a_failure_mid_stream_or_a_missing_done_is_an_error_event() {
        let parts: Vec<Result<Bytes, StreamFailed>> = vec![
            Ok(Bytes::from("{\"type\":\"delta\",\"text\":\"a\"}\n")),
            Err(StreamFailed::Call(crate::pool::CallError::Timeout(
                std::time::Duration::from_secs(1),
            ))),
        ];
        let events = sse(Box::pin(futures_util::stream::iter(parts))).await;
        assert_eq!(events.last().expect("one")["error"]["code"], "Timeout");
        let events = sse(chunks_of(&["{\"type\":\"delta\",\"text\":\"a\"}\n"])).await;
        assert_eq!(events.last().expect("one")["error"]["code"], "BadReply");
        let events = sse(chunks_of(&["not json\n"])).await;
        assert_eq!(events.last().expect("one")["error"]["code"], "BadReply");
    }
}
