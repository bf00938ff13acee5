//! The URL event builder: AWS's decoding rules, and a property test that any request
//! builds an event that serialises and reads back unchanged.

use aws_lambda_events::http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use proptest::prelude::*;

use super::*;

fn request<'a>(
    method: &'a Method,
    raw_path: &'a str,
    raw_query: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
) -> HttpRequest<'a> {
    HttpRequest {
        method,
        version: Version::HTTP_11,
        raw_path,
        raw_query,
        headers,
        body,
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).expect("valid header"));
    }
    h
}

#[test]
fn query_values_are_percent_decoded_and_repeats_joined() {
    let h = HeaderMap::new();
    let e = build(
        &request(
            &Method::GET,
            "/",
            "a=hello%20world&b=x+y&a=2&c=%2F%ff",
            &h,
            b"",
        ),
        Origin::default(),
    );
    let q = &e.query_string_parameters;
    assert_eq!(q.get("a").map(String::as_str), Some("hello world,2"));
    assert_eq!(q.get("b").map(String::as_str), Some("x y"));
    assert_eq!(q.get("c").map(String::as_str), Some("/\u{fffd}"));
    assert_eq!(
        e.raw_query_string.as_deref(),
        Some("a=hello%20world&b=x+y&a=2&c=%2F%ff"),
        "the raw query is as sent"
    );
}

#[test]
fn raw_path_keeps_encoded_slashes() {
    let h = HeaderMap::new();
    let e = build(
        &request(&Method::GET, "/a%2Fb/c", "", &h, b""),
        Origin::default(),
    );
    assert_eq!(e.raw_path.as_deref(), Some("/a%2Fb/c"));
    assert_eq!(e.request_context.http.path.as_deref(), Some("/a%2Fb/c"));
    let e = build(&request(&Method::GET, "", "", &h, b""), Origin::default());
    assert_eq!(e.raw_path.as_deref(), Some("/"));
}

#[test]
fn utf8_octet_stream_is_base64_and_json_is_text() {
    let octet = headers(&[("content-type", "application/octet-stream")]);
    let e = build(
        &request(&Method::POST, "/", "", &octet, b"plain ascii"),
        Origin::default(),
    );
    assert!(e.is_base64_encoded, "octet-stream travels as base64");
    assert_eq!(body_bytes(&e).ok(), Some(b"plain ascii".to_vec()));
    let json = headers(&[("content-type", "application/json; charset=utf-8")]);
    let e = build(
        &request(&Method::POST, "/", "", &json, b"{\"a\":1}"),
        Origin::default(),
    );
    assert!(!e.is_base64_encoded);
    assert_eq!(e.body.as_deref(), Some("{\"a\":1}"));
    // Text that is not UTF-8 cannot travel as a JSON string.
    let text = headers(&[("content-type", "text/plain")]);
    let e = build(
        &request(&Method::POST, "/", "", &text, &[0xff, 0xfe]),
        Origin::default(),
    );
    assert!(e.is_base64_encoded);
    assert_eq!(body_bytes(&e).ok(), Some(vec![0xff, 0xfe]));
    let e = build(
        &request(&Method::POST, "/", "", &text, b""),
        Origin::default(),
    );
    assert_eq!(e.body, None);
}

#[test]
fn cookies_move_out_of_headers_and_repeated_headers_join() {
    let h = headers(&[
        ("cookie", "x=1; y=2"),
        ("cookie", "z=3"),
        ("x-many", "a"),
        ("x-many", "b"),
        ("host", "abc.lambda-url.local"),
    ]);
    let e = build(&request(&Method::GET, "/", "", &h, b""), Origin::default());
    assert_eq!(
        e.cookies,
        Some(vec!["x=1".into(), "y=2".into(), "z=3".into()])
    );
    assert!(e.headers.get("cookie").is_none());
    assert_eq!(
        e.headers.get("x-many").map(HeaderValue::as_bytes),
        Some(&b"a,b"[..])
    );
    assert_eq!(e.request_context.domain_prefix.as_deref(), Some("abc"));
}

#[test]
fn a_response_may_leave_out_or_null_every_field_but_the_status() {
    let r: UrlResponse = serde_json::from_value(serde_json::json!({
        "statusCode": 201, "headers": null, "body": null, "isBase64Encoded": null, "cookies": null
    }))
    .expect("nulls are absent fields");
    assert_eq!(r.status_code, 201);
    assert!(r.cookies.is_empty() && r.headers.is_empty() && r.body.is_empty());
    let r: UrlResponse =
        serde_json::from_value(serde_json::json!({"statusCode": 204})).expect("minimal");
    assert_eq!(r.status_code, 204);
}

#[test]
fn recognises_v2_shape_only() {
    assert!(is_url_event(
        &serde_json::json!({"requestContext": {"http": {"method": "GET"}}})
    ));
    assert!(!is_url_event(&serde_json::json!({"httpMethod": "GET"})));
    assert!(!is_url_event(&serde_json::json!({"text": "hi"})));
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::DELETE),
        "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,16}"
            .prop_filter_map("a token", |m| Method::from_bytes(m.as_bytes()).ok()),
    ]
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    let name = prop_oneof![
        Just("cookie".to_owned()),
        Just("content-type".to_owned()),
        Just("host".to_owned()),
        Just("user-agent".to_owned()),
        "[a-z][a-z0-9-]{0,15}",
    ];
    // Any bytes a header value may hold, obs-text (>= 0x80) included.
    let value =
        proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..40);
    proptest::collection::vec((name, value), 0..12).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(n), HeaderValue::from_bytes(&v)) {
                h.append(n, v);
            }
        }
        h
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        any::<String>().prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any request builds an event that serialises, reads back equal, and carries the
    /// body, path and query as sent.
    #[test]
    fn any_request_builds_an_event_that_round_trips(
        method in method(),
        version in prop_oneof![Just(Version::HTTP_10), Just(Version::HTTP_11), Just(Version::HTTP_2)],
        raw_path in any::<String>(),
        raw_query in any::<String>(),
        headers in header_map(),
        body in body(),
        request_id in "[a-z0-9-]{0,40}",
        time in any::<i64>(),
    ) {
        let req = HttpRequest { method: &method, version, raw_path: &raw_path, raw_query: &raw_query, headers: &headers, body: &body };
        let event = build(&req, Origin { request_id, time_epoch_ms: time, source_ip: "127.0.0.1".into() });
        let text = serde_json::to_string(&event).expect("serialises");
        let value: Value = serde_json::from_str(&text).expect("is JSON");
        prop_assert!(is_url_event(&value));
        let back: UrlEvent = serde_json::from_str(&text).expect("reads back");
        prop_assert_eq!(&back, &event);
        prop_assert_eq!(body_bytes(&back).expect("body decodes"), body);
        prop_assert_eq!(back.raw_query_string.as_deref(), Some(raw_query.as_str()));
        let path = back.raw_path.unwrap_or_default();
        prop_assert!(path.starts_with('/'));
        prop_assert!(path.ends_with(raw_path.as_str()));
    }
}
