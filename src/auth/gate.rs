//! The gRPC gate: a tonic interceptor in front of each Fairway service (and
//! reflection) that turns the request's bearer token into an [`Access`],
//! refuses a missing or unknown token (UNAUTHENTICATED) or a role the
//! service does not admit (PERMISSION_DENIED), and hands the [`Access`] to
//! the handlers in the request's extensions. Checks that need the message
//! body (queue, tenant) happen in the handlers, through [`access`].

use super::grant::{Access, Need};
use super::tokens::Tokens;
use crate::error::BrokerError;
use std::sync::Arc;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// One service's interceptor.
#[derive(Clone)]
pub struct Gate {
    /// The auth file's tokens; `None` = the broker is open.
    tokens: Option<Arc<Tokens>>,
    /// What the service asks of a token's role.
    need: Need,
}

impl Gate {
    pub fn new(tokens: Option<Arc<Tokens>>, need: Need) -> Gate {
        Gate { tokens, need }
    }

    fn admit(&self, authorization: Option<&str>) -> Result<Access, BrokerError> {
        let Some(tokens) = &self.tokens else { return Ok(Access::Open) };
        let grant = tokens.authenticate(authorization)?;
        grant.meets(self.need)?;
        Ok(Access::Token(grant))
    }
}

impl Interceptor for Gate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let authorization = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        match self.admit(authorization) {
            Ok(access) => {
                req.extensions_mut().insert(access);
                Ok(req)
            }
            Err(e) => {
                // The token itself is never logged; the peer helps find a
                // misconfigured client.
                tracing::debug!(peer = ?req.remote_addr(), error = %e, "request refused");
                Err(e.into())
            }
        }
    }
}

/// The caller's [`Access`]. A request that did not pass a [`Gate`] is
/// refused rather than let through: a service wired without one fails
/// closed.
pub fn access<T>(req: &Request<T>) -> Result<Access, BrokerError> {
    req.extensions().get::<Access>().cloned().ok_or_else(|| {
        BrokerError::Unauthenticated("the request passed no credential check (the service has no auth gate)".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tokens() -> Arc<Tokens> {
        let text = "[[tokens]]\nname='w'\ntoken='worker-token-0123456789'\nrole='worker'\nqueues=['*']\ntenants=['*']";
        Arc::new(Tokens::parse(Path::new("auth.toml"), text).unwrap())
    }

    fn call(gate: &mut Gate, authorization: Option<&str>) -> Result<Request<()>, Status> {
        let mut req = Request::new(());
        if let Some(v) = authorization {
            req.metadata_mut().insert("authorization", v.parse().unwrap());
        }
        gate.call(req)
    }

    #[test]
    fn the_gate_admits_known_tokens_of_the_right_role() {
        let mut work = Gate::new(Some(tokens()), Need::Work);
        let req = call(&mut work, Some("Bearer worker-token-0123456789")).unwrap();
        assert!(matches!(access(&req), Ok(Access::Token(g)) if g.name == "w"));
        assert_eq!(call(&mut work, None).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(
            call(&mut work, Some("Bearer wrong-token-0123456789")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut admin = Gate::new(Some(tokens()), Need::Admin);
        let e = call(&mut admin, Some("Bearer worker-token-0123456789")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("admin token"), "{}", e.message());
    }

    #[test]
    fn an_open_broker_admits_everyone_and_an_ungated_request_is_refused() {
        let req = call(&mut Gate::new(None, Need::Admin), None).unwrap();
        assert!(matches!(access(&req), Ok(Access::Open)));
        assert_eq!(access(&Request::new(())).unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
