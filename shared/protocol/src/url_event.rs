//! Function URL events and responses, payload format version 2.0.
//!
//! `lambda_http` and AWS recognise a v2.0 event by `requestContext.http.method`; a top-level
//! `httpMethod` would mean API Gateway v1. thaw's front builds [`UrlEvent`]s and functions
//! answer [`UrlResponse`]s, exactly as behind an AWS Lambda function URL.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A function URL request (payload format 2.0).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlEvent {
    /// Always `"2.0"`.
    pub version: String,
    /// `"$default"` for function URLs.
    pub route_key: String,
    /// The path after the function's URL prefix, starting with `/`.
    pub raw_path: String,
    /// The query string without `?`.
    pub raw_query_string: String,
    /// Request cookies, one `name=value` per entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<String>,
    /// Lower-cased header names; repeated headers are joined with commas.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Parsed query parameters; repeated keys are joined with commas.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_string_parameters: BTreeMap<String, String>,
    /// Who asked, how, and when.
    pub request_context: RequestContext,
    /// The body, base64-encoded when `is_base64_encoded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Whether `body` is base64.
    #[serde(default)]
    pub is_base64_encoded: bool,
}

/// `requestContext` of a [`UrlEvent`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestContext {
    /// HTTP details.
    pub http: HttpContext,
    /// The platform's request id.
    #[serde(default)]
    pub request_id: String,
    /// `"$default"`.
    #[serde(default)]
    pub route_key: String,
    /// `"$default"`.
    #[serde(default)]
    pub stage: String,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub time_epoch: u64,
    /// Host header of the request.
    #[serde(default)]
    pub domain_name: String,
}

/// `requestContext.http` of a [`UrlEvent`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpContext {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Same as `rawPath`.
    pub path: String,
    /// `HTTP/1.1`.
    #[serde(default)]
    pub protocol: String,
    /// The client's address.
    #[serde(default)]
    pub source_ip: String,
    /// The `user-agent` header.
    #[serde(default)]
    pub user_agent: String,
}

impl UrlEvent {
    /// Whether a raw event has the v2.0 function URL shape.
    pub fn matches(event: &Value) -> bool {
        event
            .get("requestContext")
            .and_then(|c| c.get("http"))
            .and_then(|h| h.get("method"))
            .is_some()
    }

    /// The body's bytes, decoding base64 where flagged.
    pub fn body_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match (&self.body, self.is_base64_encoded) {
            (None, _) => Ok(Vec::new()),
            (Some(b), false) => Ok(b.as_bytes().to_vec()),
            (Some(b), true) => base64::engine::general_purpose::STANDARD.decode(b),
        }
    }

    /// Sets the body, base64-encoding it unless it is UTF-8 text.
    pub fn set_body(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            self.body = None;
            self.is_base64_encoded = false;
            return;
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                self.body = Some(text.to_owned());
                self.is_base64_encoded = false;
            }
            Err(_) => {
                self.body = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
                self.is_base64_encoded = true;
            }
        }
    }
}

/// A function URL response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlResponse {
    /// HTTP status.
    pub status_code: u16,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Body, base64 when `is_base64_encoded`.
    #[serde(default)]
    pub body: String,
    /// Whether `body` is base64.
    #[serde(default)]
    pub is_base64_encoded: bool,
    /// `Set-Cookie` values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<String>,
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
mod tests {
    use super::*;

    #[test]
    fn binary_bodies_travel_as_base64_and_text_as_text() {
        let mut e = UrlEvent::default();
        e.set_body(&[0, 159, 146, 150]);
        assert!(e.is_base64_encoded);
        assert_eq!(e.body_bytes().ok(), Some(vec![0, 159, 146, 150]));
        e.set_body(b"{\"a\":1}");
        assert!(!e.is_base64_encoded);
        assert_eq!(e.body.as_deref(), Some("{\"a\":1}"));
    }

    #[test]
    fn recognises_v2_shape_only() {
        assert!(UrlEvent::matches(
            &serde_json::json!({"requestContext": {"http": {"method": "GET"}}})
        ));
        assert!(!UrlEvent::matches(
            &serde_json::json!({"httpMethod": "GET"})
        ));
        assert!(!UrlEvent::matches(&serde_json::json!({"text": "hi"})));
    }
}
