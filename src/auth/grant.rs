//! What a caller may do: a token's role and the queues and tenants it
//! covers, and the checks the handlers make against them. Every refusal
//! names the token (never its secret), what it covers and what to change.

use crate::error::BrokerError;
use crate::model::validate_name;
use std::sync::Arc;

/// What a token is for (the auth file's `role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: AdminService, the HTTP port, and producing and working
    /// within its queues and tenants.
    Admin,
    /// JobService: enqueue, get and cancel jobs.
    Producer,
    /// WorkerService: lease, ack, nack and extend.
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Producer => "producer",
            Role::Worker => "worker",
        }
    }
}

/// The names a token covers: a list, or every name (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Only(Vec<String>),
}

impl Scope {
    /// The auth file's list for `kind` ("queue" or "tenant"): `["*"]` is
    /// every name; otherwise each entry must be a valid name.
    pub fn from_list(kind: &str, list: Vec<String>) -> Result<Scope, String> {
        if list.is_empty() {
            return Err(format!("`{kind}s` is empty: list the {kind}s the token covers, or [\"*\"] for all"));
        }
        if list.iter().any(|n| n == "*") {
            if list.len() > 1 {
                return Err(format!("`{kind}s`: \"*\" already means every {kind}; list it alone"));
            }
            return Ok(Scope::All);
        }
        for name in &list {
            validate_name(kind, name).map_err(|e| format!("`{kind}s`: {e}"))?;
        }
        let mut names = list;
        names.sort();
        names.dedup();
        Ok(Scope::Only(names))
    }

    pub fn allows(&self, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(names) => names.iter().any(|n| n == name),
        }
    }

    fn describe(&self, kind: &str) -> String {
        match self {
            Scope::All => format!("every {kind}"),
            Scope::Only(names) => format!("{kind}s {names:?}"),
        }
    }
}

/// One token's rights, from the auth file. Shared by every request made
/// with the token.
#[derive(Debug)]
pub struct Grant {
    /// The token's name in the auth file: what logs and error messages
    /// show, so the secret itself never appears anywhere.
    pub name: String,
    /// Which services it may call.
    pub role: Role,
    /// Queues it may touch.
    pub queues: Scope,
    /// Tenants whose jobs it may enqueue, receive, settle or manage.
    pub tenants: Scope,
}

/// What a service asks of a caller before any handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// JobService: producer or admin.
    Produce,
    /// WorkerService: worker or admin.
    Work,
    /// AdminService: admin.
    Admin,
    /// Reflection: any valid token (it only describes the API).
    AnyToken,
}

impl Need {
    fn met_by(self, role: Role) -> bool {
        match self {
            Need::Produce => matches!(role, Role::Producer | Role::Admin),
            Need::Work => matches!(role, Role::Worker | Role::Admin),
            Need::Admin => role == Role::Admin,
            Need::AnyToken => true,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Need::Produce => "JobService needs a producer or admin token",
            Need::Work => "WorkerService needs a worker or admin token",
            Need::Admin => "AdminService needs an admin token",
            Need::AnyToken => "this service needs a token",
        }
    }
}

/// Who is calling, as the gate established it; every request of the three
/// Fairway services carries one in its extensions.
#[derive(Debug, Clone)]
pub enum Access {
    /// The broker runs without an auth file: everything is allowed.
    Open,
    /// A token from the auth file.
    Token(Arc<Grant>),
}

fn denied(m: String) -> BrokerError {
    BrokerError::PermissionDenied(m)
}

impl Grant {
    fn who(&self) -> String {
        format!("token {:?} ({})", self.name, self.role.as_str())
    }

    /// The service-level check the gate makes.
    pub fn meets(&self, need: Need) -> Result<(), BrokerError> {
        if need.met_by(self.role) {
            Ok(())
        } else {
            Err(denied(format!("{}; {} is not allowed to call it", need.what(), self.who())))
        }
    }

    fn queue(&self, action: &str, queue: &str) -> Result<(), BrokerError> {
        if self.queues.allows(queue) {
            return Ok(());
        }
        Err(denied(format!(
            "{} may not {action} queue {queue:?}: it covers {}; use a token whose `queues` include {queue:?} in the \
             broker's auth file",
            self.who(),
            self.queues.describe("queue")
        )))
    }

    fn tenant(&self, action: &str, queue: &str, tenant: &str) -> Result<(), BrokerError> {
        if self.tenants.allows(tenant) {
            return Ok(());
        }
        Err(denied(format!(
            "{} may not {action} jobs of tenant {tenant:?} in queue {queue:?}: it covers {}; use a token whose \
             `tenants` include {tenant:?}",
            self.who(),
            self.tenants.describe("tenant")
        )))
    }

    fn all_tenants(&self, action: &str, queue: &str) -> Result<(), BrokerError> {
        if self.tenants == Scope::All {
            return Ok(());
        }
        Err(denied(format!(
            "{} may not {action} queue {queue:?}: that touches every tenant's jobs and it covers only {}; name a \
             tenant where the request has one, or use an admin token with tenants [\"*\"]",
            self.who(),
            self.tenants.describe("tenant")
        )))
    }
}

impl Access {
    fn grant(&self) -> Option<&Grant> {
        match self {
            Access::Open => None,
            Access::Token(g) => Some(g),
        }
    }

    /// The token's name, for logs; `None` when the broker is open.
    pub fn name(&self) -> Option<&str> {
        self.grant().map(|g| g.name.as_str())
    }

    /// Enqueue into `queue` for `tenant` (the tenant after defaulting).
    pub fn produce(&self, queue: &str, tenant: &str) -> Result<(), BrokerError> {
        let Some(g) = self.grant() else { return Ok(()) };
        g.meets(Need::Produce)?;
        g.queue("enqueue to", queue)?;
        g.tenant("enqueue", queue, tenant)
    }

    /// Read or cancel jobs of `queue` through JobService; the job's tenant
    /// is checked with [`job_tenant`](Self::job_tenant) once it is known.
    pub fn jobs_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let Some(g) = self.grant() else { return Ok(()) };
        g.meets(Need::Produce)?;
        g.queue("read or cancel jobs of", queue)
    }

    pub fn job_tenant(&self, queue: &str, tenant: &str) -> Result<(), BrokerError> {
        let Some(g) = self.grant() else { return Ok(()) };
        g.tenant("read or cancel", queue, tenant)
    }

    /// Lease from `queues`: the tenant filter the worker's leases must
    /// honour (`None` = every tenant).
    pub fn work(&self, queues: &[String]) -> Result<crate::broker::TenantFilter, BrokerError> {
        let Some(g) = self.grant() else { return Ok(None) };
        g.meets(Need::Work)?;
        for q in queues {
            g.queue("take jobs from", q)?;
        }
        Ok(match &g.tenants {
            Scope::All => None,
            Scope::Only(names) => Some(names.as_slice().into()),
        })
    }

    /// Ack, nack or extend a lease in `queue`; the job's tenant is checked
    /// with [`settle_tenant`](Self::settle_tenant) when
    /// [`tenant_limited`](Self::tenant_limited).
    pub fn settle(&self, queue: &str) -> Result<(), BrokerError> {
        let Some(g) = self.grant() else { return Ok(()) };
        g.meets(Need::Work)?;
        g.queue("settle jobs of", queue)
    }

    pub fn settle_tenant(&self, queue: &str, tenant: &str) -> Result<(), BrokerError> {
        let Some(g) = self.grant() else { return Ok(()) };
        g.tenant("settle", queue, tenant)
    }

    /// True when only some tenants are covered, so a job's tenant must be
    /// looked up before acting on it by id.
    pub fn tenant_limited(&self) -> bool {
        self.grant().is_some_and(|g| g.tenants != Scope::All)
    }

    /// An admin action on `queue` that concerns only the queue itself
    /// (create, get).
    pub fn admin_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let Some(g) = self.grant() else { return Ok(()) };
        g.meets(Need::Admin)?;
        g.queue("manage", queue)
    }

    /// An admin action on `queue` that reaches every tenant's jobs (update,
    /// delete, pause, stats, purge).
    pub fn admin_whole_queue(&self, action: &str, queue: &str) -> Result<(), BrokerError> {
        let Some(g) = self.grant() else { return Ok(()) };
        g.meets(Need::Admin)?;
        g.queue(action, queue)?;
        g.all_tenants(action, queue)
    }

    /// An admin action on the jobs of `tenant` in `queue`, or of every
    /// tenant when `None` (list jobs, redrive, tenant policy).
    pub fn admin_tenant(&self, action: &str, queue: &str, tenant: Option<&str>) -> Result<(), BrokerError> {
        let Some(g) = self.grant() else { return Ok(()) };
        g.meets(Need::Admin)?;
        g.queue(action, queue)?;
        match tenant {
            Some(t) => g.tenant(action, queue, t),
            None => g.all_tenants(action, queue),
        }
    }

    /// Whether ListQueues shows `queue` to this caller.
    pub fn sees_queue(&self, queue: &str) -> bool {
        self.grant().is_none_or(|g| g.queues.allows(queue))
    }

    /// An admin action over every queue and tenant (listing every worker).
    pub fn admin_all(&self, action: &str) -> Result<(), BrokerError> {
        let Some(g) = self.grant() else { return Ok(()) };
        g.meets(Need::Admin)?;
        if g.queues == Scope::All && g.tenants == Scope::All {
            return Ok(());
        }
        Err(denied(format!(
            "to {action} every queue needs an admin token with queues and tenants [\"*\"]; {} is not one: \
             name one queue it covers instead",
            g.who()
        )))
    }

    /// The HTTP port (metrics and dashboard show every queue and tenant):
    /// an admin token covering everything.
    pub fn operator(&self) -> Result<(), BrokerError> {
        let Some(g) = self.grant() else { return Ok(()) };
        if g.role == Role::Admin && g.queues == Scope::All && g.tenants == Scope::All {
            return Ok(());
        }
        Err(denied(format!(
            "the metrics and the dashboard show every queue and tenant, so they need an admin token with queues and \
             tenants [\"*\"]; {} is not one",
            g.who()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(role: Role, queues: &[&str], tenants: &[&str]) -> Access {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Access::Token(Arc::new(Grant {
            name: "t".into(),
            role,
            queues: Scope::from_list("queue", list(queues)).unwrap(),
            tenants: Scope::from_list("tenant", list(tenants)).unwrap(),
        }))
    }

    #[test]
    fn scopes_take_star_alone_and_valid_names() {
        assert_eq!(Scope::from_list("queue", vec!["*".into()]), Ok(Scope::All));
        assert!(Scope::from_list("queue", vec![]).is_err());
        assert!(Scope::from_list("queue", vec!["*".into(), "a".into()]).is_err());
        assert!(Scope::from_list("tenant", vec!["Bad Name".into()]).unwrap_err().contains("tenant"));
        assert_eq!(
            Scope::from_list("queue", vec!["b".into(), "a".into(), "b".into()]),
            Ok(Scope::Only(vec!["a".into(), "b".into()]))
        );
    }

    #[test]
    fn producers_enqueue_only_within_their_lists() {
        let p = token(Role::Producer, &["emails"], &["acme"]);
        assert!(p.produce("emails", "acme").is_ok());
        let e = p.produce("emails", "globex").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.to_string().contains("\"globex\"") && e.to_string().contains("[\"acme\"]"), "{e}");
        assert!(p.produce("billing", "acme").unwrap_err().to_string().contains("queue \"billing\""));
        assert!(p.work(&["emails".into()]).is_err(), "a producer cannot lease");
        assert!(p.admin_queue("emails").is_err());
    }

    #[test]
    fn workers_get_their_tenants_as_a_filter() {
        let w = token(Role::Worker, &["*"], &["b", "a"]);
        let filter = w.work(&["q".into()]).unwrap().unwrap();
        assert_eq!(&*filter, ["a".to_string(), "b".to_string()]);
        assert!(w.tenant_limited());
        assert!(w.settle_tenant("q", "c").is_err());
        assert_eq!(token(Role::Worker, &["*"], &["*"]).work(&["q".into()]).unwrap(), None);
        assert!(w.produce("q", "a").is_err(), "a worker cannot enqueue");
    }

    #[test]
    fn scoped_admins_manage_only_what_they_cover_entirely() {
        let a = token(Role::Admin, &["emails"], &["acme"]);
        assert!(a.admin_queue("emails").is_ok());
        assert!(a.admin_tenant("list jobs of", "emails", Some("acme")).is_ok());
        assert!(a.admin_tenant("list jobs of", "emails", None).is_err());
        assert!(a.admin_whole_queue("purge", "emails").is_err());
        assert!(a.operator().is_err());
        assert!(!a.sees_queue("billing"));
        let root = token(Role::Admin, &["*"], &["*"]);
        assert!(root.admin_whole_queue("purge", "emails").is_ok() && root.operator().is_ok());
        assert!(Access::Open.operator().is_ok() && Access::Open.produce("x", "y").is_ok());
    }
}
