//! Function URL events and responses, payload format version 2.0.
//!
//! The event is AWS's own type, [`aws_lambda_events`]' `LambdaFunctionUrlRequest`
//! ([`UrlEvent`] here), so a function written against AWS reads exactly what it would
//! read behind a Lambda function URL. [`build`] makes one from an HTTP request the way
//! AWS does:
//!
//! - `rawPath` and `requestContext.http.path` are the path *as sent*: `%2F` stays `%2F`,
//!   so a function can tell an encoded slash from a separator.
//! - `rawQueryString` is as sent; `queryStringParameters` are decoded
//!   (`application/x-www-form-urlencoded`: `%XX` and `+`), repeated keys joined by commas.
//! - Headers are lower-case, repeated ones joined by commas; `cookie` moves to `cookies`.
//! - The body is text only when the content type says text (`text/*`, JSON, XML,
//!   form-encoded, NDJSON, JavaScript, or no content type at all) *and* it is UTF-8;
//!   anything else is base64 with `isBase64Encoded`, as AWS sends an
//!   `application/octet-stream` body even when its bytes happen to be UTF-8.
//!
//! `lambda_http` and AWS recognise a v2.0 event by `requestContext.http.method`
//! ([`is_url_event`]); a top-level `httpMethod` would mean API Gateway v1.
//!
//! Responses stay thaw's own [`UrlResponse`]: AWS accepts a response of only
//! `statusCode` and `body`, which the crate's `LambdaFunctionUrlResponse` refuses (its
//! `isBase64Encoded` and `cookies` are required), and the front must read what any
//! function answers.

use std::collections::{BTreeMap, HashMap};

use aws_lambda_events::http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use aws_lambda_events::lambda_function_urls::{
    LambdaFunctionUrlRequest as UrlEvent, LambdaFunctionUrlRequestContext as RequestContext,
    LambdaFunctionUrlRequestContextHttpDescription as HttpContext,
};

/// What [`build`] needs of one HTTP request. Every field may hold anything a client can
/// send; [`build`] never fails and never panics.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The method.
    pub method: &'a Method,
    /// The HTTP version.
    pub version: Version,
    /// The path after the function's URL prefix, as sent (still percent-encoded). An
    /// empty path is `/`.
    pub raw_path: &'a str,
    /// The query string without `?`, as sent.
    pub raw_query: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

/// What the platform adds to an event.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The platform's request id.
    pub request_id: String,
    /// Milliseconds since the Unix epoch.
    pub time_epoch_ms: i64,
    /// The client's address.
    pub source_ip: String,
}

/// A function URL event for `req`, as AWS builds one.
pub fn build(req: &HttpRequest<'_>, origin: Origin) -> UrlEvent {
    let raw_path = if req.raw_path.starts_with('/') {
        req.raw_path.to_owned()
    } else {
        format!("/{}", req.raw_path)
    };
    let (headers, cookies) = headers_and_cookies(req.headers);
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let host = text("host");
    let mut http = HttpContext::default();
    http.method = Some(req.method.as_str().to_owned());
    http.path = Some(raw_path.clone());
    http.protocol = Some(format!("{:?}", req.version));
    http.source_ip = Some(origin.source_ip);
    http.user_agent = text("user-agent");
    let mut context = RequestContext::default();
    context.account_id = Some("anonymous".to_owned());
    context.request_id = Some(origin.request_id);
    context.domain_prefix = host
        .as_deref()
        .map(|h| h.split('.').next().unwrap_or_default().to_owned());
    context.domain_name = host;
    context.time_epoch = origin.time_epoch_ms;
    context.http = http;
    let (body, is_base64_encoded) = encode_body(text("content-type").as_deref(), req.body);
    let mut event = UrlEvent::default();
    event.version = Some("2.0".to_owned());
    event.raw_path = Some(raw_path);
    event.raw_query_string = Some(req.raw_query.to_owned());
    event.cookies = (!cookies.is_empty()).then_some(cookies);
    event.headers = headers;
    event.query_string_parameters = query_parameters(req.raw_query);
    event.request_context = context;
    event.body = body;
    event.is_base64_encoded = is_base64_encoded;
    event
}

/// One value per header name (repeated ones joined by commas, as AWS does), every value
/// valid UTF-8 so that the event serialises; `cookie` headers become `cookies`.
fn headers_and_cookies(from: &HeaderMap) -> (HeaderMap, Vec<String>) {
    let mut headers = HeaderMap::new();
    let mut cookies = Vec::new();
    for name in from.keys() {
        let values: Vec<String> = from
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if name == "cookie" {
            cookies.extend(
                values
                    .iter()
                    .flat_map(|v| v.split(';'))
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned),
            );
            continue;
        }
        // Lossy UTF-8 of a valid header value is still a valid header value (U+FFFD is
        // three bytes >= 0x80), so this insert fails only on a bug; skip rather than panic.
        if let Ok(value) = HeaderValue::from_str(&values.join(",")) {
            headers.insert(HeaderName::clone(name), value);
        }
    }
    (headers, cookies)
}

/// Decoded query parameters; repeated keys joined by commas.
fn query_parameters(raw_query: &str) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    for (k, v) in form_urlencoded::parse(raw_query.as_bytes()) {
        out.entry(k.into_owned())
            .and_modify(|old| {
                old.push(',');
                old.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    out
}

/// Whether a content type is text that travels as it is.
pub fn is_text_content_type(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "" | "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-www-form-urlencoded"
                | "application/x-ndjson"
                | "application/graphql"
                | "application/yaml"
        )
}

/// The body as the event carries it, and whether that is base64.
fn encode_body(content_type: Option<&str>, body: &[u8]) -> (Option<String>, bool) {
    if body.is_empty() {
        return (None, false);
    }
    if is_text_content_type(content_type) {
        if let Ok(text) = std::str::from_utf8(body) {
            return (Some(text.to_owned()), false);
        }
    }
    (
        Some(base64::engine::general_purpose::STANDARD.encode(body)),
        true,
    )
}

/// Whether a raw event has the v2.0 function URL shape.
pub fn is_url_event(event: &Value) -> bool {
    event
        .get("requestContext")
        .and_then(|c| c.get("http"))
        .and_then(|h| h.get("method"))
        .is_some()
}

/// An event's body bytes, decoding base64 where flagged.
pub fn body_bytes(event: &UrlEvent) -> Result<Vec<u8>, base64::DecodeError> {
    match (&event.body, event.is_base64_encoded) {
        (None, _) => Ok(Vec::new()),
        (Some(b), false) => Ok(b.as_bytes().to_vec()),
        (Some(b), true) => base64::engine::general_purpose::STANDARD.decode(b),
    }
}

/// A function URL response. Every field but `statusCode` may be missing or `null`, as
/// AWS allows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlResponse {
    /// HTTP status.
    pub status_code: u16,
    /// Response headers.
    #[serde(default, deserialize_with = "nullable")]
    pub headers: BTreeMap<String, String>,
    /// Body, base64 when `is_base64_encoded`.
    #[serde(default, deserialize_with = "nullable")]
    pub body: String,
    /// Whether `body` is base64.
    #[serde(default, deserialize_with = "nullable")]
    pub is_base64_encoded: bool,
    /// `Set-Cookie` values.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cookies: Vec<String>,
}

/// `null` read as the default.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl UrlResponse {
    /// A JSON response with the given status.
    pub fn json(status_code: u16, body: &Value) -> Self {
        let mut headers = BTreeMap::new();
        headers.insert("content-type".to_owned(), "application/json".to_owned());
        Self {
            status_code,
            headers,
            body: body.to_string(),
            is_base64_encoded: false,
            cookies: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
