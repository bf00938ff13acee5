//! Who may call what: bearer tokens, checked by tower layers in front of the routes, never
//! inside handlers.
//!
//! Two tokens, both optional, both sent as `Authorization: Bearer <token>` (the scheme is
//! matched case-insensitively, RFC 7235, and the token compared in constant time):
//!
//! - The **control-plane token** (`thaw serve --token`, or `THAW_TOKEN`) guards the
//!   control plane: everything under `/v1`, the Invoke API, and `/metrics` unless
//!   `--public-metrics`. Without one, the control plane is open, which `thaw serve` allows
//!   only on a loopback address (or with `--insecure-no-token`).
//! - The **function token** (`THAW_URL_TOKEN`) opens functions with `url.auth = "token"`.
//!
//! A token function is guarded on every route that reaches it: its URL (`/fn/{f}/...`,
//! or every path under `--single`), the Invoke API, `spawn`, `map` and `spawn_map`. There
//! it accepts the function token *or* the control-plane token: the control-plane token
//! opens everything. On the routes that are also the control plane (all of them but the
//! URL), the control-plane layer runs first, so with a control-plane token configured,
//! the function token alone opens only the function's URL. With neither token configured,
//! a token function answers 401 to everyone: it fails closed.
//!
//! A 401 carries `WWW-Authenticate: Bearer realm="thaw"`, and comes in the shape of the
//! surface that answers it ([`ApiError::Unauthorized`] or [`AwsError::Unauthorized`]).

use std::sync::Arc;

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{RawPathParams, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq as _;
use thaw_manifest::UrlAuth;

use super::{ApiError, AwsError, Shared};

/// A bearer token. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Set, but empty.
    #[error("{name} is set but empty")]
    Empty {
        /// Where it came from (`THAW_TOKEN`, ...).
        name: &'static str,
    },
    /// A character that cannot travel in an `Authorization` header as it is.
    #[error("{name} may hold only visible ASCII characters (no spaces)")]
    Charset {
        /// Where it came from.
        name: &'static str,
    },
}

impl Token {
    /// Validates a token read from `name` (a flag or an environment variable). Any
    /// length is accepted; use a long random one (`openssl rand -hex 32`).
    pub fn new(name: &'static str, value: &str) -> Result<Self, TokenError> {
        if value.is_empty() {
            return Err(TokenError::Empty { name });
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Charset { name });
        }
        Ok(Self(value.into()))
    }

    /// Whether `given` is this token, in time independent of where they differ.
    pub fn matches(&self, given: &str) -> bool {
        self.0.as_bytes().ct_eq(given.as_bytes()).into()
    }

    /// The token itself, for a client that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The front's authentication settings.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Guards `/v1`, the Invoke API and (unless `public_metrics`) `/metrics`.
    pub control: Option<Token>,
    /// Opens functions with `url.auth = "token"`.
    pub functions: Option<Token>,
    /// Serve `/metrics` without the control-plane token.
    pub public_metrics: bool,
}

/// The bearer credentials of a request, if it sent the `Bearer` scheme (any case).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    let credentials = credentials.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
}

/// Which error shape a guard answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// thaw's JSON.
    Thaw,
    /// The AWS Invoke API's.
    Aws,
}

impl Surface {
    fn unauthorized(self) -> Response {
        match self {
            Self::Thaw => ApiError::Unauthorized.into_response(),
            Self::Aws => AwsError::Unauthorized.into_response(),
        }
    }
}

/// The state of a guard layer.
#[derive(Debug, Clone)]
pub struct Guard {
    auth: Arc<Auth>,
    runtime: Shared,
    surface: Surface,
    /// `--single`: the one function every path reaches.
    function: Option<Arc<str>>,
}

impl Guard {
    /// A guard for routes answering on `surface`.
    pub fn new(auth: Arc<Auth>, runtime: Shared, surface: Surface) -> Self {
        Self {
            auth,
            runtime,
            surface,
            function: None,
        }
    }

    /// A guard for routes that all reach `function` (`--single`).
    pub fn for_function(mut self, function: &str) -> Self {
        self.function = Some(function.into());
        self
    }

    fn control_ok(&self, headers: &HeaderMap) -> bool {
        match &self.auth.control {
            None => true,
            Some(token) => bearer(headers).is_some_and(|given| token.matches(given)),
        }
    }

    /// Whether a request with `headers` may call `function`: for routes that name the
    /// function in their body (the compatible routes' `model`), checked by the handler.
    pub(super) fn allows(&self, function: &str, headers: &HeaderMap) -> bool {
        self.function_ok(function, headers)
    }

    fn function_ok(&self, function: &str, headers: &HeaderMap) -> bool {
        // The Lambda API names a function by ARN too: guard the function it reaches.
        let function = thaw_protocol::arn::parse_name(function).map_or(function, |r| r.name);
        let Some(pool) = self.runtime.pools.get(function) else {
            // The handler answers 404.
            return true;
        };
        if pool.plan().spec.url.auth != UrlAuth::Token {
            return true;
        }
        let Some(given) = bearer(headers) else {
            return false;
        };
        // Both compared, so the time taken does not say which token was tried.
        let by_function = self
            .auth
            .functions
            .as_ref()
            .is_some_and(|t| t.matches(given));
        let by_control = self.auth.control.as_ref().is_some_and(|t| t.matches(given));
        by_function | by_control
    }
}

/// Layer: the control-plane token.
pub async fn control_plane(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    if guard.control_ok(req.headers()) {
        next.run(req).await
    } else {
        guard.surface.unauthorized()
    }
}

/// Layer: the `url.auth` of the function a route reaches: the guard's one function
/// (`--single`), else the function segment of a `/fn/...` path (raw, as the handler reads
/// it), else the route's `{function}` parameter. A parameter that does not decode to
/// UTF-8 names no function, and the handler's typed path extractor answers it with a 400
/// before anything runs; a route with no parameter at all is refused (fails closed).
pub async fn function(
    State(guard): State<Guard>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    let name = match (&guard.function, super::url::split(req.uri().path())) {
        (Some(f), _) => Some(f.to_string()),
        (None, Some((f, _))) => Some(f.to_owned()),
        (None, None) => match params {
            Ok(p) => p
                .iter()
                .find(|(k, _)| *k == "function")
                .map(|(_, v)| v.to_owned()),
            Err(RawPathParamsRejection::InvalidUtf8InPathParam(_)) => return next.run(req).await,
            Err(_) => None,
        },
    };
    match name {
        Some(f) if guard.function_ok(&f, req.headers()) => next.run(req).await,
        _ => guard.surface.unauthorized(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(auth).expect("header"),
        );
        h
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR   abc "] {
            assert_eq!(bearer(&with(v)), Some("abc"), "{v}");
        }
        for v in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc"] {
            assert_eq!(bearer(&with(v)), None, "{v}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn tokens_match_exactly() {
        let t = Token::new("THAW_TOKEN", "0123456789abcdef").expect("valid");
        assert!(t.matches("0123456789abcdef"));
        assert!(!t.matches("0123456789abcdeF"));
        assert!(!t.matches("0123456789abcde"));
        assert!(!t.matches("0123456789abcdef0"));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains("0123"), "Debug hides it");
    }

    #[test]
    fn empty_or_unsendable_tokens_are_refused() {
        assert!(matches!(
            Token::new("THAW_TOKEN", ""),
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(
            Token::new("THAW_TOKEN", "has a space in it!!"),
            Err(TokenError::Charset { .. })
        ));
        assert!(matches!(
            Token::new("THAW_TOKEN", "ünïcödé-token-long"),
            Err(TokenError::Charset { .. })
        ));
    }
}
