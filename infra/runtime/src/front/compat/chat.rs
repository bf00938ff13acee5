//! OpenAI's `POST /v1/chat/completions`, over a function with `generate`'s contract.
//!
//! `model` names the function, or a snapshot one of the functions serves (a `generate`
//! with several models is asked for that one). Sampling maps one to one: `temperature`,
//! `top_p`, `seed`, `stop`, `max_tokens` (or `max_completion_tokens`). What thaw does not
//! do is refused, never ignored: `n` above 1, tools, logprobs, penalties, response
//! formats other than text, `stream_options` without `stream`, and two different token
//! limits. Only a function with generate's contract is reached (see `Compat::target`).
//!
//! `stream: true` asks generate to stream (Lambda response streaming from the instance)
//! and answers in server-sent events as the SDK reads them, each piece of text in its own
//! chunk as the model produces it ([`super::sse`]).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::sse::{Chunker, GenerateOutput};
use super::{call, json, parse, Compat, CompatError, Role};
use crate::front::streaming::{self, Answer};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatRequest {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    /// OpenAI takes any 64-bit integer; generate's seeds are its bits.
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    /// An end-user id for abuse tracking; thaw has no use for it.
    #[serde(default, rename = "user")]
    _user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: Content,
    /// The SDK's optional participant name; templates have no place for it.
    #[serde(default, rename = "name")]
    _name: Option<String>,
}

/// A message's content: a string, or the SDK's list of parts (text parts only).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// `generate`'s input, as this adapter sends it.
#[derive(Debug, Serialize)]
struct GenerateInput<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    messages: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

/// Refuses what thaw does not do, naming the parameter.
fn refuse_unsupported(req: &ChatRequest) -> Result<(), CompatError> {
    let bad = |what: &str| Err(CompatError::BadRequest(what.to_owned()));
    if req.n.is_some_and(|n| n != 1) {
        return bad("n: thaw generates one choice per request; send several requests");
    }
    if req.tools.is_some() {
        return bad("tools: thaw's generate does not call tools");
    }
    if req.logprobs == Some(true) {
        return bad("logprobs: not offered; generate's return_logits gives the prompt's logits");
    }
    if req.frequency_penalty.is_some_and(|p| p != 0.0)
        || req.presence_penalty.is_some_and(|p| p != 0.0)
    {
        return bad("frequency_penalty and presence_penalty are not offered");
    }
    if req.stream_options.is_some() && req.stream != Some(true) {
        return bad("stream_options: only allowed when stream is true");
    }
    if let (Some(a), Some(b)) = (req.max_tokens, req.max_completion_tokens) {
        if a != b {
            return bad("max_tokens and max_completion_tokens differ; send one");
        }
    }
    if let Some(format) = &req.response_format {
        if format.get("type").and_then(Value::as_str) != Some("text") {
            return bad("response_format: only {\"type\": \"text\"} is offered");
        }
    }
    Ok(())
}

fn message_text(i: usize, m: ChatMessage) -> Result<Value, CompatError> {
    let content = match m.content {
        Content::Text(t) => t,
        Content::Parts(parts) => {
            // Text parts are paragraphs of one message, joined as vLLM and TGI join them.
            let mut texts = Vec::with_capacity(parts.len());
            for p in parts {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => texts.push(t),
                    (kind, _) => {
                        return Err(CompatError::BadRequest(format!(
                            "messages[{i}]: content parts of type {kind:?} are not accepted (text only)"
                        )))
                    }
                }
            }
            texts.join("\n")
        }
    };
    let role = match m.role.as_str() {
        // OpenAI's newer name for the system role.
        "developer" => "system",
        other => other,
    };
    Ok(json!({"role": role, "content": content}))
}

pub(super) async fn completions(
    c: &Compat,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, CompatError> {
    let req: ChatRequest = parse(body)?;
    refuse_unsupported(&req)?;
    if req.messages.is_empty() {
        return Err(CompatError::BadRequest("messages is empty".into()));
    }
    let pool = c.target(Role::Chat, req.model.as_deref(), headers)?;
    // A model that is not the function's name is one of its snapshots.
    let inner_model = req
        .model
        .as_deref()
        .filter(|m| *m != pool.plan().name.as_str() && !m.is_empty());
    let stream = req.stream.unwrap_or(false);
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let messages = req
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| message_text(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let input = GenerateInput {
        model: inner_model,
        messages,
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed.map(|s| s as u64),
        stop: req.stop.as_ref(),
        stream,
    };
    let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if !stream {
        let out: GenerateOutput = call(&pool, input).await?;
        return Ok(json(&json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": out.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": out.text},
                "finish_reason": out.finish_reason,
                "logprobs": null,
            }],
            "usage": out.usage,
        })));
    }
    let payload = serde_json::to_vec(&input)
        .map_err(|e| CompatError::BadRequest(format!("cannot encode the input: {e}")))?;
    let model = req.model.unwrap_or_else(|| pool.plan().name.to_string());
    let chunker = Chunker::new(id, created, model, include_usage);
    let body = match streaming::invoke(pool, payload.into()).await? {
        Answer::Whole(Err(d)) => return Err(CompatError::Function(d)),
        // A function on the chat route that does not stream: the same events at once.
        Answer::Whole(Ok(bytes)) => {
            let out: GenerateOutput = serde_json::from_slice(&bytes).map_err(|e| {
                CompatError::BadReply(format!(
                    "the function answered outside generate's contract: {e}"
                ))
            })?;
            Body::from(chunker.whole(out))
        }
        Answer::Streaming(s) if (200..300).contains(&s.head.status) => {
            Body::from_stream(chunker.stream(s.body))
        }
        Answer::Streaming(s) => {
            return Err(CompatError::BadReply(format!(
                "the function streamed a reply with status {}",
                s.head.status
            )))
        }
    };
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_the_sdk_sends_them_and_unsupported_options_are_refused() {
        let req: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .expect("parses");
        assert!(refuse_unsupported(&req).is_ok());
        let m = req.messages.into_iter().next().expect("one");
        assert_eq!(message_text(0, m).expect("text")["content"], "hi");
        for bad in [
            r#"{"messages":[],"n":2}"#,
            r#"{"messages":[],"tools":[]}"#,
            r#"{"messages":[],"logprobs":true}"#,
            r#"{"messages":[],"presence_penalty":0.5}"#,
            r#"{"messages":[],"response_format":{"type":"json_object"}}"#,
            r#"{"messages":[],"stream_options":{"include_usage":true}}"#,
            r#"{"messages":[],"max_tokens":5,"max_completion_tokens":6}"#,
        ] {
            let req: ChatRequest = serde_json::from_str(bad).expect("parses");
            assert!(refuse_unsupported(&req).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<ChatRequest>(r#"{"messages":[],"nope":1}"#).is_err());
    }
}
