//! `fairway tenant set-policy`: a tenant's share and limits in a queue.

use super::{CliResult, Remote};
use fairway::pb;

#[derive(Debug, clap::Subcommand)]
pub enum TenantCmd {
    /// Set a tenant's share, in-flight limit and enqueue rate in a queue
    /// (replaces its previous policy), or with --env one environment's weight.
    SetPolicy {
        queue: String,
        tenant: String,
        /// Share relative to the queue's other tenants (1..10000).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Most jobs of the tenant leased at once (0 = the queue default).
        #[arg(long, default_value_t = 0)]
        max_in_flight: u32,
        /// Sustained enqueues per second (0 = unlimited).
        #[arg(long, default_value_t = 0.0)]
        enqueue_rate: f64,
        /// Largest enqueue burst (0 = max(1, rate)).
        #[arg(long, default_value_t = 0)]
        enqueue_burst: u32,
        /// Set this environment's weight inside the tenant instead.
        #[arg(long = "env")]
        environment: Option<String>,
    },
}

pub async fn tenant(remote: &Remote, cmd: TenantCmd) -> CliResult {
    let mut admin = remote.connect().await?.admin();
    match cmd {
        TenantCmd::SetPolicy { queue, tenant, weight, max_in_flight, enqueue_rate, enqueue_burst, environment } => {
            let p = admin
                .set_tenant_policy(pb::SetTenantPolicyRequest {
                    queue,
                    tenant,
                    weight,
                    max_in_flight,
                    enqueue_rate,
                    enqueue_burst,
                    environment: environment.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let envs: Vec<String> = p.environment_weights.iter().map(|(e, w)| format!("{e}={w}")).collect();
            println!(
                "{} weight={} max_in_flight={} enqueue_rate={} enqueue_burst={} env_weights=[{}]",
                p.tenant,
                p.weight,
                p.max_in_flight,
                p.enqueue_rate,
                p.enqueue_burst,
                envs.join(",")
            );
        }
    }
    Ok(())
}
