//! Who may do what: bearer tokens from the auth file (`--auth-file`), each
//! with a role (admin, producer, worker) limited to lists of queues and
//! tenants.
//!
//! [`tokens`] loads the file and recognises tokens in constant time;
//! [`gate`] is the interceptor that admits a request to a service;
//! [`grant`] holds the per-request checks the handlers make once the body
//! names a queue or tenant. Without an auth file every caller gets
//! [`Access::Open`].

pub mod gate;
pub mod grant;
pub mod tokens;

pub use gate::{access, Gate};
pub use grant::{Access, Grant, Need, Role, Scope};
pub use tokens::{AuthFileError, Tokens};
