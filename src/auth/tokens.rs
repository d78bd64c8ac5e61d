//! The auth file (`--auth-file`, TOML): bearer tokens and what each may do.
//!
//! Only SHA-256 digests of the tokens are kept in memory. A presented token
//! is hashed and compared with every digest in constant time, so neither an
//! early exit nor a byte-by-byte compare tells an attacker how close a guess
//! came. Tokens never reach a log line or an error message: the entry's
//! `name` stands in for them.

use super::grant::{Grant, Role, Scope};
use crate::error::BrokerError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Shortest plaintext token accepted: shorter ones can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read the auth file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("auth file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("auth file {path}: token {index} ({name:?}): {message}")]
    Entry { path: PathBuf, index: usize, name: String, message: String },
    #[error(
        "auth file {0}: no [[tokens]]: every request would be refused (run without --auth-file for an open broker)"
    )]
    Empty(PathBuf),
}

/// One `[[tokens]]` table, as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// Shown in logs and errors in place of the token.
    name: String,
    /// The token itself; or give `sha256` instead, so the file holds no secret.
    token: Option<String>,
    /// Hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    sha256: Option<String>,
    /// admin, producer or worker.
    role: Role,
    /// Queues it covers; `["*"]` = all.
    queues: Vec<String>,
    /// Tenants it covers; `["*"]` = all.
    tenants: Vec<String>,
}

/// The whole file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// `[[tokens]]` tables, in file order.
    #[serde(default)]
    tokens: Vec<Entry>,
}

/// A token's digest and the rights it carries.
#[derive(Debug)]
struct Known {
    /// SHA-256 of the token.
    digest: [u8; 32],
    /// What the token may do.
    grant: Arc<Grant>,
}

/// Every token of the auth file.
#[derive(Debug)]
pub struct Tokens {
    /// In file order; all of them are compared on every lookup.
    known: Vec<Known>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn digest_of(e: &Entry) -> Result<[u8; 32], String> {
    match (&e.token, &e.sha256) {
        (Some(t), None) => {
            if t.len() < MIN_TOKEN_LEN {
                return Err(format!("the token is shorter than {MIN_TOKEN_LEN} characters; use a long random one"));
            }
            if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err("the token holds whitespace or control characters, which a header cannot carry".into());
            }
            Ok(sha256(t.as_bytes()))
        }
        (None, Some(h)) => {
            let raw = hex::decode(h.trim()).map_err(|_| "`sha256` is not hex".to_string())?;
            raw.try_into().map_err(|_| "`sha256` must be 64 hex digits (a SHA-256 digest)".to_string())
        }
        _ => Err("give exactly one of `token` and `sha256`".into()),
    }
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, AuthFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| AuthFileError::Read { path: path.to_path_buf(), source })?;
        Tokens::parse(path, &text)
    }

    /// Parses and checks the file's text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Tokens, AuthFileError> {
        let file: File = toml::from_str(text)
            .map_err(|e| AuthFileError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        if file.tokens.is_empty() {
            return Err(AuthFileError::Empty(path.to_path_buf()));
        }
        let mut known: Vec<Known> = Vec::with_capacity(file.tokens.len());
        for (index, e) in file.tokens.into_iter().enumerate() {
            let fail = |message: String| AuthFileError::Entry {
                path: path.to_path_buf(),
                index,
                name: e.name.clone(),
                message,
            };
            if e.name.trim().is_empty() {
                return Err(fail("`name` is empty; logs and errors show it in place of the token".into()));
            }
            if known.iter().any(|k| k.grant.name == e.name) {
                return Err(fail("another token has the same name; names tell tokens apart in logs".into()));
            }
            let digest = digest_of(&e).map_err(&fail)?;
            if known.iter().any(|k| k.digest == digest) {
                return Err(fail("the same token appears twice; each token must have one entry".into()));
            }
            let queues = Scope::from_list("queue", e.queues.clone()).map_err(&fail)?;
            let tenants = Scope::from_list("tenant", e.tenants.clone()).map_err(&fail)?;
            let grant = Arc::new(Grant { name: e.name.clone(), role: e.role, queues, tenants });
            known.push(Known { digest, grant });
        }
        Ok(Tokens { known })
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The grant of `token`, comparing its digest with every known one in
    /// constant time.
    pub fn resolve(&self, token: &str) -> Option<Arc<Grant>> {
        let presented = sha256(token.as_bytes());
        let mut found = None;
        // No early exit: every digest is compared whatever matched.
        for k in &self.known {
            if bool::from(k.digest.ct_eq(&presented)) {
                found = Some(k.grant.clone());
            }
        }
        found
    }

    /// The grant of a request's `authorization` value (`Bearer <token>`).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Arc<Grant>, BrokerError> {
        let Some(value) = authorization else {
            return Err(BrokerError::Unauthenticated(
                "this broker requires a token: send `authorization: Bearer <token>` metadata (the CLI: --token or \
                 FAIRWAY_TOKEN)"
                    .into(),
            ));
        };
        let token = bearer(value).ok_or_else(|| {
            BrokerError::Unauthenticated("the authorization metadata must be `Bearer <token>`".into())
        })?;
        self.resolve(token).ok_or_else(|| {
            BrokerError::Unauthenticated(
                "the bearer token is not in the broker's auth file (check for typos, or ask for one to be added)"
                    .into(),
            )
        })
    }
}

/// The token of a `Bearer <token>` header value (scheme case-insensitive).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[tokens]]
        name = "ops"
        token = "admin-token-0123456789"
        role = "admin"
        queues = ["*"]
        tenants = ["*"]

        [[tokens]]
        name = "acme-worker"
        sha256 = "SHA"
        role = "worker"
        queues = ["emails"]
        tenants = ["acme"]
    "#;

    fn file() -> String {
        FILE.replace("SHA", &hex::encode(sha256(b"worker-token-0123456789")))
    }

    #[test]
    fn tokens_resolve_by_plaintext_or_digest() {
        let t = Tokens::parse(Path::new("auth.toml"), &file()).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.resolve("admin-token-0123456789").unwrap().name, "ops");
        let w = t.resolve("worker-token-0123456789").unwrap();
        assert_eq!((w.name.as_str(), w.role), ("acme-worker", Role::Worker));
        assert!(t.resolve("admin-token-012345678").is_none());
        assert!(t.resolve("").is_none());
    }

    #[test]
    fn the_authorization_value_must_be_a_known_bearer_token() {
        let t = Tokens::parse(Path::new("auth.toml"), &file()).unwrap();
        assert!(t.authenticate(Some("Bearer admin-token-0123456789")).is_ok());
        assert!(t.authenticate(Some("bearer   admin-token-0123456789 ")).is_ok());
        for bad in [None, Some("admin-token-0123456789"), Some("Basic abc"), Some("Bearer nope-nope-nope-nope")] {
            let e = t.authenticate(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
            assert!(!e.to_string().contains("nope"), "errors never echo the token: {e}");
        }
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        let p = Path::new("auth.toml");
        let err = |text: &str| Tokens::parse(p, text).unwrap_err().to_string();
        assert!(err("").contains("no [[tokens]]"));
        assert!(
            err("[[tokens]]\nname='a'\ntoken='short'\nrole='admin'\nqueues=['*']\ntenants=['*']").contains("shorter")
        );
        assert!(err("[[tokens]]\nname='a'\ntoken='0123456789abcdefg'\nrole='root'\nqueues=['*']\ntenants=['*']")
            .contains("root"));
        assert!(err("[[tokens]]\nname='a'\nrole='admin'\nqueues=['*']\ntenants=['*']").contains("exactly one"));
        assert!(err("[[tokens]]\nname='a'\ntoken='0123456789abcdefg'\nrole='admin'\ntenants=['*']").contains("queues"));
        let twice = "[[tokens]]\nname='a'\ntoken='0123456789abcdefg'\nrole='admin'\nqueues=['*']\ntenants=['*']\n\
                     [[tokens]]\nname='b'\ntoken='0123456789abcdefg'\nrole='worker'\nqueues=['*']\ntenants=['*']";
        assert!(err(twice).contains("twice"));
    }
}
