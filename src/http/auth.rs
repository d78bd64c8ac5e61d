//! The HTTP port's login, when the broker has an auth file: every request
//! needs an admin token covering all queues and tenants, because the
//! metrics and the dashboard show all of them.
//!
//! Two ways to present it, both in the `Authorization` header:
//! `Bearer <token>` for Prometheus and scripts, and HTTP Basic with any user
//! name and the token as the password, so a browser asks a person for it
//! (the 401 carries the Basic challenge) and then sends it with every page
//! and the redrive button. No cookie, so no session state and no login form.

use super::HttpError;
use crate::auth::{tokens::bearer, Access, Tokens};
use crate::error::BrokerError;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use std::sync::Arc;

/// What a 401 asks the browser for.
pub const CHALLENGE: &str = "Basic realm=\"fairway\", charset=\"UTF-8\"";

/// Middleware: lets the request through only with an operator's token.
pub async fn require_operator(State(tokens): State<Arc<Tokens>>, req: Request, next: Next) -> Response {
    match check(&tokens, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::debug!(path = %req.uri().path(), error = %e, "metrics port: request refused");
            HttpError(e).into_response()
        }
    }
}

fn check(tokens: &Tokens, headers: &HeaderMap) -> Result<(), BrokerError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| bearer(v).map(str::to_string).or_else(|| basic_password(v)))
        .ok_or_else(|| {
            BrokerError::Unauthenticated(
                "the metrics port needs an admin token: send `Authorization: Bearer <token>`, or log in from a \
                 browser with any user name and the token as the password"
                    .into(),
            )
        })?;
    let grant = tokens
        .resolve(&token)
        .ok_or_else(|| BrokerError::Unauthenticated("that token is not in the broker's auth file".into()))?;
    Access::Token(grant).operator()
}

/// The password of a `Basic base64(user:password)` header value.
fn basic_password(value: &str) -> Option<String> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tokens() -> Tokens {
        let text = "[[tokens]]\nname='ops'\ntoken='admin-token-0123456789'\nrole='admin'\nqueues=['*']\ntenants=['*']\n\
                    [[tokens]]\nname='p'\ntoken='producer-token-0123456789'\nrole='producer'\nqueues=['*']\ntenants=['*']";
        Tokens::parse(Path::new("auth.toml"), text).unwrap()
    }

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_and_basic_both_carry_the_token() {
        let t = tokens();
        assert!(check(&t, &with("Bearer admin-token-0123456789")).is_ok());
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:admin-token-0123456789");
        assert!(check(&t, &with(&format!("Basic {basic}"))).is_ok());
        assert_eq!(check(&t, &HeaderMap::new()).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(check(&t, &with("Bearer nope-0123456789abc")).unwrap_err().code(), tonic::Code::Unauthenticated);
        let producer = check(&t, &with("Bearer producer-token-0123456789")).unwrap_err();
        assert_eq!(producer.code(), tonic::Code::PermissionDenied);
    }
}
