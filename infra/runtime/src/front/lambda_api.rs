//! The AWS Lambda API, as far as boto3, the AWS CLI and the SDKs' users touch it:
//!
//! | operation | route |
//! |---|---|
//! | Invoke | `POST /2015-03-31/functions/{name}/invocations` |
//! | ListFunctions | `GET /2015-03-31/functions/` (`MaxItems`, `Marker`) |
//! | GetFunction | `GET /2015-03-31/functions/{name}` |
//! | GetFunctionConfiguration | `GET /2015-03-31/functions/{name}/configuration` |
//!
//! `{name}` is anything the Lambda API takes as a `FunctionName`: a name, a partial or
//! full ARN, with or without a `:qualifier` ([`thaw_protocol::arn`]). The one version
//! thaw runs is `$LATEST`; another qualifier (in the name or as `?Qualifier=`) is a
//! `ResourceNotFoundException`, not silently the latest code.
//!
//! Every answer on `/2015-03-31/` is in AWS's shape ([`AwsError`]): an unknown operation
//! or method included. On Invoke, a function's error keeps its own `errorType` and
//! `stackTrace`, and `X-Amz-Log-Type: Tail` returns the last 4 KB of the lines the call's
//! instance wrote while it ran, base64, in `X-Amz-Log-Result`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use thaw_protocol::arn::{function_arn, parse_name};
use thaw_protocol::Diagnostic;

use super::{read_body, AwsError, AwsPath, AwsQuery, Shared};
use crate::calls::CallKind;
use crate::logs::LogLine;
use crate::pool::{CallError, FunctionPool};
use crate::runtime_api::Outcome;

/// The one version thaw runs.
const LATEST: &str = "$LATEST";
/// The most of a call's log `LogType=Tail` returns, as on AWS.
const TAIL_BYTES: usize = 4096;
/// `MaxItems` of ListFunctions at most, and its default.
const MAX_ITEMS: usize = 10_000;

/// The Invoke route, which reaches a function (its `url.auth` guards it).
pub(super) fn invoke_routes() -> Router<Shared> {
    Router::new().route(
        "/2015-03-31/functions/{function}/invocations",
        aws_only(post(invoke)),
    )
}

/// The management routes, which read the plan.
pub(super) fn management_routes() -> Router<Shared> {
    Router::new()
        .route("/2015-03-31/functions", aws_only(get(list)))
        .route("/2015-03-31/functions/", aws_only(get(list)))
        .route(
            "/2015-03-31/functions/{function}",
            aws_only(get(get_function)),
        )
        .route(
            "/2015-03-31/functions/{function}/configuration",
            aws_only(get(get_configuration)),
        )
        .route("/2015-03-31", axum::routing::any(unknown_operation))
        .route("/2015-03-31/", axum::routing::any(unknown_operation))
        .route("/2015-03-31/{*rest}", axum::routing::any(unknown_operation))
}

/// A route whose other methods answer in AWS's shape too.
fn aws_only(route: MethodRouter<Shared>) -> MethodRouter<Shared> {
    route.fallback(unknown_operation)
}

async fn unknown_operation() -> AwsError {
    AwsError::UnknownOperation
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QualifierQuery {
    qualifier: Option<String>,
}

/// The pool `given` names, if it names the version thaw runs.
fn resolve<'a>(
    rt: &'a crate::Runtime,
    given: &str,
    query_qualifier: Option<&str>,
) -> Result<&'a Arc<FunctionPool>, AwsError> {
    let reference =
        parse_name(given).map_err(|e| AwsError::InvalidParameterValue(e.to_string()))?;
    if query_qualifier.is_some_and(str::is_empty) {
        return Err(AwsError::InvalidParameterValue(
            "Qualifier is empty: give a version or alias, or leave it out".into(),
        ));
    }
    let qualifier = match (reference.qualifier, query_qualifier) {
        (Some(a), Some(b)) if a != b => {
            return Err(AwsError::InvalidParameterValue(format!(
            "the qualifier in the function name ({a}) does not match the Qualifier parameter ({b})"
        )))
        }
        (a, b) => a.or(b),
    };
    let pool = rt
        .pools
        .get(reference.name)
        .ok_or_else(|| AwsError::ResourceNotFound(function_arn(reference.name)))?;
    match qualifier {
        None | Some(LATEST) => Ok(pool),
        Some(other) => Err(AwsError::ResourceNotFound(format!(
            "{}:{other} (thaw runs {LATEST} only)",
            function_arn(reference.name)
        ))),
    }
}

async fn invoke(
    State(rt): State<Shared>,
    Target(pool): Target,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AwsError> {
    if !rt.accepting() {
        return Err(AwsError::Service("thaw is shutting down".into()));
    }
    let name = pool.plan().name.to_string();
    let body = read_body(body).await?;
    let header = |h: &str| match headers.get(h).map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(v)) => Ok(Some(v)),
        Some(Err(_)) => Err(AwsError::InvalidParameterValue(format!(
            "the {h} header is not visible ASCII"
        ))),
    };
    let kind = header("x-amz-invocation-type")?.unwrap_or("RequestResponse");
    let tail = match header("x-amz-log-type")? {
        None | Some("None") => false,
        Some("Tail") => true,
        Some(other) => {
            return Err(AwsError::InvalidParameterValue(format!(
                "unknown X-Amz-Log-Type {other:?}: None or Tail"
            )))
        }
    };
    let payload = if body.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    if crate::calls::input::validate_json(&payload).is_err() {
        return Err(AwsError::InvalidRequestContent);
    }
    match kind {
        "DryRun" => Ok(StatusCode::NO_CONTENT.into_response()),
        // Durable before the 202, and retried as the manifest says, as on AWS.
        "Event" => {
            let spawned = rt
                .store
                .spawn(&name, CallKind::Event, payload, None)
                .await?;
            let mut resp = StatusCode::ACCEPTED.into_response();
            if let Ok(v) = HeaderValue::from_str(&spawned.call_id) {
                resp.headers_mut().insert("thaw-call-id", v);
            }
            Ok(resp)
        }
        "RequestResponse" => {
            let (result, log) = if tail {
                pool.invoke_with_log(payload).await
            } else {
                (pool.invoke(payload).await, Vec::new())
            };
            let mut resp = match result.map(Outcome::buffered) {
                Ok(Ok(bytes)) => (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    bytes,
                )
                    .into_response(),
                Ok(Err(d)) => function_error(&d),
                Err(CallError::QueueFull(_)) => return Err(AwsError::TooManyRequests),
                Err(CallError::ShuttingDown) => {
                    return Err(AwsError::Service("thaw is shutting down".into()))
                }
                // As on AWS, a crash, timeout or init failure is the function's error.
                Err(e) => function_error(&Diagnostic::new(e.kind(), e.to_string())),
            };
            let headers = resp.headers_mut();
            headers.insert("x-amz-executed-version", HeaderValue::from_static(LATEST));
            if tail {
                if let Ok(v) = HeaderValue::from_str(&log_result(&log)) {
                    headers.insert("x-amz-log-result", v);
                }
            }
            Ok(resp)
        }
        other => Err(AwsError::InvalidParameterValue(format!(
            "unknown X-Amz-Invocation-Type {other:?}: RequestResponse, Event or DryRun"
        ))),
    }
}

/// A function's error as AWS answers it: 200, `X-Amz-Function-Error`, and the runtime's
/// document with its own type and stack trace.
fn function_error(d: &Diagnostic) -> Response {
    let mut resp = (StatusCode::OK, Json(d)).into_response();
    resp.headers_mut().insert(
        "x-amz-function-error",
        HeaderValue::from_static("Unhandled"),
    );
    resp
}

/// The last [`TAIL_BYTES`] of a call's log lines, whole lines where they fit, base64.
fn log_result(lines: &[LogLine]) -> String {
    let mut text = String::new();
    for l in lines {
        text.push_str(&l.line);
        text.push('\n');
    }
    let mut start = text.len().saturating_sub(TAIL_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    base64::engine::general_purpose::STANDARD.encode(&text.as_bytes()[start..])
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListQuery {
    max_items: Option<usize>,
    marker: Option<String>,
}

/// ListFunctions: by name; `Marker` is the name the next page starts at.
async fn list(
    State(rt): State<Shared>,
    AwsQuery(q): AwsQuery<ListQuery>,
) -> Result<Response, AwsError> {
    let max = q.max_items.unwrap_or(50);
    if max == 0 || max > MAX_ITEMS {
        return Err(AwsError::InvalidParameterValue(format!(
            "MaxItems must be from 1 to {MAX_ITEMS}"
        )));
    }
    let from = q.marker.unwrap_or_default();
    let mut page = rt.pools.range(from..);
    let functions: Vec<Value> = page
        .by_ref()
        .take(max)
        .map(|(_, pool)| configuration(pool))
        .collect();
    let next = page.next().map(|(name, _)| name.clone());
    Ok(Json(json!({"Functions": functions, "NextMarker": next})).into_response())
}

/// The function a request's `{function}` path segment and `?Qualifier=` name.
struct Target(Arc<FunctionPool>);

impl FromRequestParts<Shared> for Target {
    type Rejection = AwsError;

    async fn from_request_parts(parts: &mut Parts, rt: &Shared) -> Result<Self, AwsError> {
        let AwsPath(function) = AwsPath::<String>::from_request_parts(parts, rt).await?;
        let AwsQuery(query) = AwsQuery::<QualifierQuery>::from_request_parts(parts, rt).await?;
        resolve(rt, &function, query.qualifier.as_deref()).map(|pool| Self(Arc::clone(pool)))
    }
}

async fn get_function(Target(pool): Target) -> Response {
    let spec = &pool.plan().spec;
    Json(json!({
        "Configuration": configuration(&pool),
        // thaw runs the program where it is: there is no package to download.
        "Code": {"RepositoryType": "Local", "Location": pool.plan().binary_path},
        "Concurrency": {"ReservedConcurrentExecutions": spec.max_containers * spec.concurrency},
        "Tags": {},
    }))
    .into_response()
}

async fn get_configuration(Target(pool): Target) -> Response {
    Json(configuration(&pool)).into_response()
}

/// A function's `FunctionConfiguration`, from its plan: the settings the control plane
/// shows on `/v1/functions` too (a command's arguments included). `Environment` is left
/// out: its values are the function's secrets, and nothing that answers HTTP shows them.
fn configuration(pool: &FunctionPool) -> Value {
    let plan = pool.plan();
    let spec = &plan.spec;
    let handler = match (&spec.binary, &spec.command) {
        (Some(binary), _) => binary.clone(),
        (None, Some(command)) => command.join(" "),
        (None, None) => String::new(),
    };
    let file = std::fs::metadata(&plan.binary_path).ok();
    let modified = file.as_ref().and_then(|m| m.modified().ok()).map(|t| {
        humantime::format_rfc3339_millis(t)
            .to_string()
            .replace('Z', "+0000")
    });
    json!({
        "FunctionName": plan.name.as_str(),
        "FunctionArn": function_arn(plan.name.as_str()),
        "Runtime": "provided.al2023",
        "Role": format!("arn:aws:iam::{}:role/thaw", thaw_protocol::arn::ACCOUNT),
        "Handler": handler,
        "CodeSize": file.map_or(0, |m| m.len()),
        "Description": "",
        "Timeout": spec.timeout.0.as_secs().max(1),
        "MemorySize": spec.memory.mebibytes(),
        "LastModified": modified,
        "Version": LATEST,
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": [std::env::consts::ARCH.replace("aarch64", "arm64")],
        "EphemeralStorage": {"Size": spec.tmp.mebibytes()},
        "TracingConfig": {"Mode": "PassThrough"},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> LogLine {
        LogLine {
            ts_ms: 0,
            instance: "f-1".into(),
            stream: "stdout",
            line: text.into(),
        }
    }

    #[test]
    fn the_log_tail_is_the_last_4_kb_on_a_character_boundary() {
        let decode = |s: &str| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .expect("base64");
            String::from_utf8(bytes).expect("utf-8")
        };
        assert_eq!(decode(&log_result(&[line("a"), line("b")])), "a\nb\n");
        let long = "é".repeat(3000);
        let tail = decode(&log_result(&[line("first"), line(&long)]));
        assert!(
            tail.len() <= TAIL_BYTES && tail.ends_with("é\n"),
            "{}",
            tail.len()
        );
        assert!(!tail.contains("first"));
        assert_eq!(log_result(&[]), "");
    }
}
