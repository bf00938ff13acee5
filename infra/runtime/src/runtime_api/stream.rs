//! Lambda response streaming, as a runtime posts it: `POST .../invocation/{id}/response`
//! with `Lambda-Runtime-Function-Response-Mode: streaming` and a chunked body.
//!
//! - **Prelude.** With `Content-Type: application/vnd.awslambda.http-integration-response`
//!   (what `lambda_runtime`'s and `lambda_http`'s streaming responses send) the body
//!   opens with a JSON metadata prelude, `{statusCode, headers, cookies}`, ended by eight
//!   NUL bytes: it becomes the [`StreamHead`]. Any other content type streams its body as
//!   it is, under a `200` with that content type.
//! - **Errors mid-stream** arrive as the HTTP trailers `Lambda-Runtime-Function-Error-Type`
//!   and `Lambda-Runtime-Function-Error-Body` (base64 of an error document, or of plain
//!   text), as AWS documents them; `lambda_runtime` writes the same two lines into the
//!   body as its last chunk instead, which is read the same way (body bytes that could
//!   begin it are held back until the stream ends, since a chunk may arrive in pieces).
//!   Either ends the invocation as [`Outcome::Error`] after the chunks already delivered.
//!   A post that breaks off is left, as a buffered one is, to the instance's exit or the
//!   timeout, so a crash mid-stream is reported as a crash.
//! - **Delivery.** An invocation whose caller gave a [`StreamSink`] gets [`StreamPart`]s
//!   as they arrive, with the instance's post held back by the sink's bound (a slow
//!   reader slows the function, as a socket would), up to [`MAX_STREAMED`] bytes; the
//!   invocation then ends as [`Outcome::Streamed`]. A caller that went away stops
//!   delivery, not the post, which is read to its end. Any other caller (Invoke, durable
//!   calls) gets the body collected into one [`Outcome::Response`] under the buffered
//!   limit, as AWS buffers a streaming function invoked without streaming.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::BytesMut;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use thaw_protocol::Diagnostic;
use tokio::sync::mpsc;

use super::post::{diagnostic_of, too_large};
use super::{accepted, finish, unknown_id, Outcome, Refused, Shared, MAX_DRAIN, MAX_RESPONSE};

/// The header that puts a response in streaming mode, and its value.
const RESPONSE_MODE: &str = "lambda-runtime-function-response-mode";
/// The content type of a body that opens with a metadata prelude.
const HTTP_INTEGRATION: &str = "application/vnd.awslambda.http-integration-response";
/// The error trailers (and `lambda_runtime`'s in-body form of them).
const ERROR_TYPE: &str = "lambda-runtime-function-error-type";
const ERROR_BODY: &str = "lambda-runtime-function-error-body";
/// Ends the prelude.
const PRELUDE_END: [u8; 8] = [0; 8];
/// The longest prelude read: headers and cookies, not a body.
const MAX_PRELUDE: usize = 64 << 10;

/// The most one streamed response may deliver: AWS's original quota for a streamed
/// function response (now 200 MB there); thaw keeps the smaller bound.
pub const MAX_STREAMED: usize = 20 << 20;

/// How a streamed response opens: its HTTP status, headers and cookies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHead {
    /// The HTTP status.
    pub status: u16,
    /// Headers, in order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// `Set-Cookie` values.
    pub cookies: Vec<String>,
}

/// What a streamed response delivers, in order: one head, then its body's chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamPart {
    /// The status and headers.
    Head(StreamHead),
    /// The next chunk of the body.
    Data(Bytes),
}

/// Where a caller that wants a response as it is produced receives it.
pub type StreamSink = mpsc::Sender<StreamPart>;

/// Whether a response post is in streaming mode.
pub(super) fn is_streaming(headers: &HeaderMap) -> bool {
    headers
        .get(RESPONSE_MODE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("streaming"))
}

/// The prelude as runtimes write it; a header's value is a string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Prelude {
    #[serde(default = "ok_status")]
    status_code: u16,
    #[serde(default)]
    headers: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    multi_value_headers: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    cookies: Vec<String>,
}

fn ok_status() -> u16 {
    200
}

/// Parses a prelude (without its NUL terminator).
fn parse_prelude(bytes: &[u8]) -> Result<StreamHead, String> {
    let p: Prelude = serde_json::from_slice(bytes)
        .map_err(|e| format!("the metadata prelude is not valid JSON: {e}"))?;
    // A final status only: an informational one would switch the client's protocol or
    // be followed by a second head.
    if !(200..=599).contains(&p.status_code) {
        return Err(format!(
            "the metadata prelude's statusCode {} is not a final HTTP status",
            p.status_code
        ));
    }
    let mut headers = Vec::new();
    for (name, value) in p.headers.into_iter().chain(p.multi_value_headers) {
        match value {
            serde_json::Value::String(v) => headers.push((name, v)),
            serde_json::Value::Array(vs) => headers.extend(
                vs.into_iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .map(|v| (name.clone(), v)),
            ),
            other => headers.push((name, other.to_string())),
        }
    }
    Ok(StreamHead {
        status: p.status_code,
        headers,
        cookies: p.cookies,
    })
}

/// An error reported by trailer (or `lambda_runtime`'s in-body form of it): the type,
/// and the body, base64 of an error document or of plain text.
fn stream_error(error_type: Option<&str>, body: Option<&str>) -> Diagnostic {
    let error_type = error_type.map_or("Runtime.StreamError", str::trim);
    let body = body.map(str::trim).unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap_or_else(|_| body.as_bytes().to_vec());
    diagnostic_of(error_type, &decoded)
}

/// `lambda_runtime`'s in-body error: a chunk of `Name: value\r\n` lines naming the two
/// error trailers. `None` for any other chunk.
fn in_body_error(chunk: &[u8]) -> Option<Diagnostic> {
    if !starts_like_error(chunk) || chunk.len() < ERROR_TYPE.len() {
        return None;
    }
    let text = std::str::from_utf8(chunk).ok()?;
    let mut error_type = None;
    let mut body = None;
    for line in text.lines() {
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            ERROR_TYPE => error_type = Some(value),
            ERROR_BODY => body = Some(value),
            _ => return None,
        }
    }
    Some(stream_error(error_type, body))
}

/// Whether `bytes` begin the way `lambda_runtime`'s in-body error does (or are a prefix
/// of that beginning).
fn starts_like_error(bytes: &[u8]) -> bool {
    let prefix = ERROR_TYPE.as_bytes();
    let n = bytes.len().min(prefix.len());
    n > 0 && bytes[..n].eq_ignore_ascii_case(&prefix[..n])
}

/// The most body held back because it may be `lambda_runtime`'s in-body error: the error
/// document of a message, not a stream.
const MAX_SUSPECT: usize = 64 << 10;

/// The media type of a `Content-Type` value, without its parameters.
fn media_type(value: &str) -> &str {
    value.split(';').next().unwrap_or_default().trim()
}

/// Where the body's bytes go.
enum Delivery {
    /// To the caller, as they come.
    Sink(StreamSink),
    /// The caller went away: read and dropped.
    Gone,
    /// Collected for a caller that wants one response.
    Collect(BytesMut),
}

/// One streamed post being read.
struct Reader<'a> {
    shared: &'a Shared,
    id: &'a str,
    delivery: Delivery,
    /// The most body delivered.
    limit: usize,
    /// Content type of a body without a prelude.
    content_type: String,
    /// The prelude read so far, while it has not ended.
    prelude: Option<BytesMut>,
    head_sent: bool,
    /// Body bytes that may be `lambda_runtime`'s in-body error, held until the stream
    /// ends (the error is its last chunk) or they grow past [`MAX_SUSPECT`].
    suspect: Option<BytesMut>,
    /// Body bytes seen.
    seen: usize,
    /// Past the limit: the rest is read and dropped.
    over: bool,
    error: Option<Diagnostic>,
}

/// What one frame means for the post.
enum Step {
    Continue,
    /// Answer the instance with this, now.
    Respond(Response),
}

/// Reads a streamed response for invocation `id` to its end and completes the
/// invocation from it.
pub(super) async fn receive(
    shared: &Shared,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    // An unknown id's post is read (and dropped) under the buffered limit, as a
    // buffered post's is, so its connection stays usable.
    let (known, sink, buffered_limit) = match shared.in_flight.lock() {
        Ok(mut m) => match m.get_mut(id) {
            Some(f) => (true, f.sink.take(), f.limit),
            None => (false, None, MAX_RESPONSE),
        },
        Err(_) => (false, None, MAX_RESPONSE),
    };
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let streamed = sink.is_some();
    let mut r = Reader {
        shared,
        id,
        limit: if streamed {
            MAX_STREAMED
        } else {
            buffered_limit
        },
        delivery: match sink {
            Some(s) => Delivery::Sink(s),
            None if known => Delivery::Collect(BytesMut::new()),
            None => Delivery::Gone,
        },
        prelude: media_type(&content_type)
            .eq_ignore_ascii_case(HTTP_INTEGRATION)
            .then(BytesMut::new),
        content_type,
        head_sent: false,
        suspect: None,
        seen: 0,
        over: false,
        error: None,
    };
    let mut body = body;
    while let Some(frame) = body.frame().await {
        // A post that breaks off is the instance going away (or dropping its
        // connection): as for a buffered post, its exit (or the timeout) ends the call,
        // with its stderr, so a crash is reported as one. What was delivered stays
        // delivered; the sink closes here.
        let Ok(frame) = frame else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let get = |n: &str| trailers.get(n).and_then(|v| v.to_str().ok());
                    if get(ERROR_TYPE).is_some() || get(ERROR_BODY).is_some() {
                        r.error = Some(stream_error(get(ERROR_TYPE), get(ERROR_BODY)));
                    }
                }
                continue;
            }
        };
        if let Step::Respond(resp) = r.frame(data).await {
            return resp;
        }
    }
    r.end().await
}

impl Reader<'_> {
    async fn frame(&mut self, data: Bytes) -> Step {
        if self.over || self.error.is_some() {
            // Past the limit, or after the error: read to the end, kept nowhere.
            self.seen = self.seen.saturating_add(data.len());
            if self.seen > self.limit.saturating_add(MAX_DRAIN) {
                // Answer the call before giving up on the post: with its error if it
                // reported one (`finish` is a no-op if the limit already answered it).
                if let Some(d) = self.error.take() {
                    finish(self.shared, self.id, Ok(Outcome::Error(d)));
                }
                return Step::Respond(too_large(self.shared, self.id, self.limit, false));
            }
            return Step::Continue;
        }
        let data = match self.prelude.as_mut() {
            None => data,
            Some(buf) => {
                // Only the new bytes, and the 7 before them, can complete the terminator.
                let from = buf.len().saturating_sub(PRELUDE_END.len() - 1);
                buf.extend_from_slice(&data);
                let Some(end) = buf[from..]
                    .windows(PRELUDE_END.len())
                    .position(|w| w == PRELUDE_END)
                    .map(|i| from + i)
                else {
                    if buf.len() > MAX_PRELUDE {
                        return Step::Respond(bad_stream(
                            self.shared,
                            self.id,
                            "the metadata prelude never ends",
                        ));
                    }
                    return Step::Continue;
                };
                let head = match parse_prelude(&buf[..end]) {
                    Ok(h) => h,
                    Err(why) => return Step::Respond(bad_stream(self.shared, self.id, &why)),
                };
                let rest = buf.split_off(end + PRELUDE_END.len()).freeze();
                self.prelude = None;
                deliver(&mut self.delivery, StreamPart::Head(head)).await;
                self.head_sent = true;
                rest
            }
        };
        if data.is_empty() {
            return Step::Continue;
        }
        // `lambda_runtime` writes its error as one last chunk, which may arrive in
        // pieces: hold back anything that could be it until the stream says.
        if let Some(held) = self.suspect.as_mut() {
            held.extend_from_slice(&data);
            if held.len() <= MAX_SUSPECT {
                return Step::Continue;
            }
        } else if starts_like_error(&data) {
            self.suspect = Some(BytesMut::from(&data[..]));
            return Step::Continue;
        }
        let data = match self.suspect.take() {
            Some(held) => held.freeze(),
            None => data,
        };
        self.body(data).await;
        Step::Continue
    }

    /// Delivers body bytes under the limit.
    async fn body(&mut self, data: Bytes) {
        self.seen = self.seen.saturating_add(data.len());
        if self.seen > self.limit {
            self.over = true;
            finish(
                self.shared,
                self.id,
                Err(Refused::TooLarge { limit: self.limit }),
            );
            return;
        }
        if !self.head_sent {
            let head = StreamHead {
                status: 200,
                headers: vec![("content-type".to_owned(), self.content_type.clone())],
                cookies: Vec::new(),
            };
            deliver(&mut self.delivery, StreamPart::Head(head)).await;
            self.head_sent = true;
        }
        deliver(&mut self.delivery, StreamPart::Data(data)).await;
    }

    /// The post ended: completes the invocation from what it said.
    async fn end(mut self) -> Response {
        if let Some(held) = self.suspect.take() {
            match in_body_error(&held) {
                Some(d) => self.error = self.error.take().or(Some(d)),
                None => self.body(held.freeze()).await,
            }
        }
        if self.over {
            return too_large(self.shared, self.id, self.limit, true);
        }
        if self.error.is_none() && self.prelude.as_ref().is_some_and(|b| !b.is_empty()) {
            return bad_stream(
                self.shared,
                self.id,
                "the stream ended inside its metadata prelude",
            );
        }
        let outcome = match (self.error, self.delivery) {
            (Some(d), _) => Outcome::Error(d),
            (None, Delivery::Collect(bytes)) => Outcome::Response(bytes.freeze()),
            (None, Delivery::Sink(_)) => Outcome::Streamed { bytes: self.seen },
            // The caller went away, or the id is unknown (then nobody is answered).
            (None, Delivery::Gone) => Outcome::Streamed { bytes: self.seen },
        };
        if finish(self.shared, self.id, Ok(outcome)) {
            accepted()
        } else {
            unknown_id()
        }
    }
}

/// Hands one part on; a caller that went away gets nothing more.
async fn deliver(delivery: &mut Delivery, part: StreamPart) {
    match delivery {
        Delivery::Sink(sink) => {
            if sink.send(part).await.is_err() {
                *delivery = Delivery::Gone;
            }
        }
        Delivery::Collect(buf) => {
            if let StreamPart::Data(d) = part {
                buf.extend_from_slice(&d);
            }
        }
        Delivery::Gone => {}
    }
}

fn bad_stream(shared: &Shared, id: &str, why: &str) -> Response {
    tracing::warn!(
        request_id = id,
        why,
        "instance posted a malformed response stream"
    );
    finish(shared, id, Err(Refused::BadStream(why.to_owned())));
    (
        StatusCode::BAD_REQUEST,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"errorType": "InvalidStream", "errorMessage": why}).to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::sync::oneshot;

    use super::*;
    use crate::runtime_api::{InstanceApi, Invocation};

    /// Posts a chunked streaming response for `id` over a raw connection: each of
    /// `chunks`, then the terminating chunk with `trailers`. Returns the status line.
    async fn post_chunked(api: &InstanceApi, id: &str, chunks: &[&[u8]], trailers: &str) -> String {
        let addr = api.addr().expect("listening");
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let mut req = format!(
            "POST /2018-06-01/runtime/invocation/{id}/response HTTP/1.1\r\nHost: x\r\n\
             Lambda-Runtime-Function-Response-Mode: streaming\r\n\
             Content-Type: {HTTP_INTEGRATION}\r\nTransfer-Encoding: chunked\r\n\
             Trailer: Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body\r\n\
             Connection: close\r\n\r\n"
        )
        .into_bytes();
        for c in chunks {
            req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            req.extend_from_slice(c);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(format!("0\r\n{trailers}\r\n").as_bytes());
        // A post refused midway may find the connection closed under it: the status
        // line, if any, is what was answered.
        let _ = s.write_all(&req).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_streamed_post_reaches_the_sink_in_parts_and_an_http_trailer_ends_it_as_an_error() {
        let api = InstanceApi::on_host_loopback().await.expect("api");
        let (sink, mut parts) = mpsc::channel(8);
        let answer = taken(&api, "r1", Some(sink)).await;
        let id = "r1";
        let doc = base64::engine::general_purpose::STANDARD
            .encode(r#"{"errorType":"Boom","errorMessage":"it broke"}"#);
        let prelude = br#"{"statusCode":201,"headers":{"content-type":"text/plain"}}"#;
        let status = post_chunked(
            &api,
            id,
            &[prelude, &[0; 8], b"hel", b"lo"],
            &format!("Lambda-Runtime-Function-Error-Type: Boom\r\nLambda-Runtime-Function-Error-Body: {doc}\r\n"),
        )
        .await;
        assert!(status.contains("202"), "{status}");
        let head = parts.recv().await.expect("a head");
        assert!(
            matches!(&head, StreamPart::Head(h) if h.status == 201),
            "{head:?}"
        );
        let mut body = Vec::new();
        while let Some(StreamPart::Data(d)) = parts.recv().await {
            body.extend_from_slice(&d);
        }
        assert_eq!(body, b"hello");
        let outcome = answer.await.expect("answered").expect("accepted");
        assert_eq!(outcome, Outcome::Error(Diagnostic::new("Boom", "it broke")));
    }

    /// Submits invocation `id` (with a sink when `sink`) and takes it as the instance.
    async fn taken(
        api: &InstanceApi,
        id: &str,
        sink: Option<StreamSink>,
    ) -> oneshot::Receiver<crate::runtime_api::Answer> {
        let (reply, answer) = oneshot::channel();
        api.submit(Invocation {
            id: id.into(),
            payload: Bytes::from_static(b"{}"),
            timeout: Duration::from_secs(10),
            limit: MAX_RESPONSE,
            reply,
            taken: None,
            stream: sink,
        })
        .await
        .expect("submits");
        api.next_invocation().await.expect("an invocation");
        answer
    }

    #[tokio::test]
    async fn lambda_runtimes_error_chunk_is_found_when_it_arrives_in_pieces_and_survives_a_flood() {
        let api = InstanceApi::on_host_loopback().await.expect("api");
        let doc = base64::engine::general_purpose::STANDARD
            .encode(r#"{"errorType":"InvalidInput","errorMessage":"late"}"#);
        let error = format!(
            "Lambda-Runtime-Function-Error-Type: Runtime.StreamError\r\nLambda-Runtime-Function-Error-Body: {doc}\r\n"
        );
        let (first, second) = error.as_bytes().split_at(12);
        let (sink, mut parts) = mpsc::channel(8);
        let answer = taken(&api, "split", Some(sink)).await;
        post_chunked(
            &api,
            "split",
            &[b"{}", &[0; 8], b"data\n", first, second],
            "",
        )
        .await;
        let mut body = Vec::new();
        while let Some(part) = parts.recv().await {
            if let StreamPart::Data(d) = part {
                body.extend_from_slice(&d);
            }
        }
        assert_eq!(
            body, b"data\n",
            "the error chunk is never delivered as data"
        );
        assert_eq!(
            answer.await.expect("answered").expect("accepted"),
            Outcome::Error(Diagnostic::new("InvalidInput", "late"))
        );
        // An error chunk followed by more data is data (lambda_runtime's error is the
        // last chunk); past the limit and the drain, the call is answered at once, not
        // left to its timeout.
        let answer = taken(&api, "flood", None).await;
        let flood = vec![b'x'; 1 << 20];
        let mut chunks: Vec<&[u8]> = vec![b"{}", &[0; 8], b"a", error.as_bytes()];
        chunks.extend(std::iter::repeat_n(
            &flood[..],
            (MAX_RESPONSE + MAX_DRAIN) / flood.len() + 2,
        ));
        post_chunked(&api, "flood", &chunks, "").await;
        let got = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("answered at once")
            .expect("answered");
        assert_eq!(
            got,
            Err(Refused::TooLarge {
                limit: MAX_RESPONSE
            })
        );
    }

    #[tokio::test]
    async fn a_prelude_that_never_ends_is_refused_and_an_unknown_id_leaves_the_instance_usable() {
        let api = InstanceApi::on_host_loopback().await.expect("api");
        let answer = taken(&api, "r2", None).await;
        let id = "r2";
        let junk = vec![b'{'; MAX_PRELUDE + 1];
        let status = post_chunked(&api, id, &[&junk], "").await;
        assert!(status.contains("400"), "{status}");
        assert!(matches!(answer.await, Ok(Err(Refused::BadStream(_)))));
        let status = post_chunked(&api, "nobody", &[b"{}", &[0; 8], b"data"], "").await;
        assert!(status.contains("404"), "{status}");
        assert_eq!(
            *api.lifecycle().borrow(),
            crate::runtime_api::Lifecycle::Ready
        );
    }

    #[test]
    fn a_prelude_gives_status_headers_and_cookies() {
        let head = parse_prelude(
            br#"{"statusCode":201,"headers":{"content-type":"application/x-ndjson","x-a":["1","2"]},"cookies":["a=b"]}"#,
        )
        .expect("parses");
        assert_eq!(head.status, 201);
        assert_eq!(
            head.headers,
            vec![
                ("content-type".to_owned(), "application/x-ndjson".to_owned()),
                ("x-a".to_owned(), "1".to_owned()),
                ("x-a".to_owned(), "2".to_owned()),
            ]
        );
        assert_eq!(head.cookies, vec!["a=b".to_owned()]);
        assert_eq!(parse_prelude(b"{}").expect("defaults").status, 200);
        assert!(parse_prelude(b"{\"statusCode\":42}").is_err());
        assert!(parse_prelude(b"not json").is_err());
    }

    #[test]
    fn lambda_runtimes_in_body_error_is_read_like_the_trailers() {
        let body = base64::engine::general_purpose::STANDARD.encode("ModelError: it broke");
        let chunk = format!(
            "Lambda-Runtime-Function-Error-Type: Runtime.StreamError\r\nLambda-Runtime-Function-Error-Body: {body}\r\n"
        );
        let d = in_body_error(chunk.as_bytes()).expect("an error chunk");
        assert_eq!(d.error_type, "Runtime.StreamError");
        assert_eq!(d.error_message, "ModelError: it broke");
        assert!(in_body_error(b"{\"type\":\"delta\"}\n").is_none());
        assert!(
            in_body_error(b"Lambda-Runtime-Function-Error-Type: X\r\nOther: y\r\n").is_none(),
            "a chunk with other lines is data"
        );
        let doc = base64::engine::general_purpose::STANDARD
            .encode(r#"{"errorType":"InvalidInput","errorMessage":"bad"}"#);
        let d = stream_error(Some("Unhandled"), Some(&doc));
        assert_eq!(
            (d.error_type.as_str(), d.error_message.as_str()),
            ("InvalidInput", "bad")
        );
    }
}
