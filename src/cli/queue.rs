//! `fairway queue ...`: create, change, list, inspect, pause and delete
//! queues.

use super::{d, CliResult, Remote};
use fairway::pb;
use std::time::Duration;

#[derive(Debug, clap::Subcommand)]
pub enum QueueCmd {
    /// Create a queue (unset options take the defaults).
    Create {
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Change a queue's settings (unset options stay as they are).
    Update {
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List queues.
    List,
    /// Show a queue's counts, age and groups.
    Stats { name: String },
    /// Stop leasing from a queue (enqueues still accepted).
    Pause { name: String },
    /// Resume leasing.
    Resume { name: String },
    /// Delete a queue; refuses a non-empty one without --force.
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Delete the jobs of a queue in one state, or in every state but
    /// leased (asks first unless --yes). Leased jobs are never purged.
    Purge {
        name: String,
        /// Which jobs: ready, scheduled, dead, or all (every state but leased).
        #[arg(long, value_enum)]
        state: PurgeState,
        /// Only this tenant's jobs.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this environment's jobs.
        #[arg(long = "env")]
        environment: Option<String>,
        /// Don't ask: delete at once (for scripts).
        #[arg(long)]
        yes: bool,
    },
    /// Worker versions the circuit breaker quarantined: list or lift.
    Quarantine {
        #[command(subcommand)]
        cmd: super::quarantine::QuarantineCmd,
    },
}

/// What `queue purge` deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PurgeState {
    Ready,
    Scheduled,
    Dead,
    /// Ready, scheduled and dead.
    All,
}

impl PurgeState {
    fn proto(self) -> pb::JobState {
        match self {
            PurgeState::Ready => pb::JobState::Ready,
            PurgeState::Scheduled => pb::JobState::Scheduled,
            PurgeState::Dead => pb::JobState::Dead,
            PurgeState::All => pb::JobState::Unspecified,
        }
    }

    /// How many jobs the stats say are in this state (before filters).
    fn count(self, s: &pb::QueueStats) -> u64 {
        match self {
            PurgeState::Ready => s.ready,
            PurgeState::Scheduled => s.scheduled,
            PurgeState::Dead => s.dead,
            PurgeState::All => s.ready + s.scheduled + s.dead,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            PurgeState::Ready => "ready",
            PurgeState::Scheduled => "scheduled",
            PurgeState::Dead => "dead",
            PurgeState::All => "ready, scheduled and dead",
        }
    }
}

/// Queue settings; each unset one takes the default (create) or stays as
/// it is (update).
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Lease length when neither worker nor job sets one, e.g. 30s, 5m.
    #[arg(long, value_parser = humantime::parse_duration)]
    lease: Option<Duration>,
    /// Deliveries before a job is dead-lettered (default 10).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// First retry delay after a nack (default 1s).
    #[arg(long, value_parser = humantime::parse_duration)]
    backoff_initial: Option<Duration>,
    /// Longest retry delay (default 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    backoff_max: Option<Duration>,
    /// How long a dedup key stays held after its job ends (default 0).
    #[arg(long, value_parser = humantime::parse_duration)]
    dedup_window: Option<Duration>,
    /// Largest payload accepted (default 1 MiB).
    #[arg(long)]
    max_payload_bytes: Option<u32>,
    /// Share of workers that serve several queues (default 1).
    #[arg(long)]
    weight: Option<u32>,
    /// Most jobs leased at once from the queue (default: no limit).
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// Most jobs leased at once per tenant unless its policy says otherwise.
    #[arg(long)]
    tenant_max_in_flight: Option<u32>,
    /// Alert "aging" when the oldest ready job waited this long (0 = off; default 15m).
    #[arg(long, value_parser = humantime::parse_duration)]
    alert_oldest_ready_age: Option<Duration>,
    /// Alert "backlog" at this many ready jobs (0 = off, the default).
    #[arg(long)]
    alert_backlog: Option<u64>,
    /// Alert "stalled" after ready jobs saw no lease, ack or nack this long (0 = off; default 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    alert_stalled_after: Option<Duration>,
    /// Alert "unattended" after ready jobs had no worker this long (0 = off; default 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    alert_unattended_after: Option<Duration>,
    /// Alert "dead_lettering" while a job was dead-lettered this recently (0 = off; default 15m).
    #[arg(long, value_parser = humantime::parse_duration)]
    alert_dead_letter_window: Option<Duration>,
    /// Quarantine a worker version whose recent deliveries fail at this % (1-100, 0 = off; default 50).
    #[arg(long)]
    breaker_failure_percent: Option<u32>,
    /// Deliveries a version and its healthy baseline need before the breaker judges (default 20).
    #[arg(long)]
    breaker_min_deliveries: Option<u32>,
    /// Recent deliveries remembered per worker version (1-1000; default 100).
    #[arg(long)]
    breaker_window: Option<u32>,
    /// How recent a healthy version's newest outcome must be to count as the breaker's baseline (0 = no limit; default 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    breaker_baseline_max_age: Option<Duration>,
}

impl ConfigArgs {
    fn to_proto(&self) -> pb::QueueConfig {
        pb::QueueConfig {
            default_lease_duration: self.lease.map(d),
            max_attempts: self.max_attempts.unwrap_or(0),
            backoff_initial: self.backoff_initial.map(d),
            backoff_max: self.backoff_max.map(d),
            dedup_window: self.dedup_window.map(d),
            max_payload_bytes: self.max_payload_bytes.unwrap_or(0),
            weight: self.weight.unwrap_or(0),
            max_in_flight: self.max_in_flight,
            tenant_max_in_flight: self.tenant_max_in_flight,
            alert_oldest_ready_age: self.alert_oldest_ready_age.map(d),
            alert_backlog: self.alert_backlog,
            alert_stalled_after: self.alert_stalled_after.map(d),
            alert_unattended_after: self.alert_unattended_after.map(d),
            alert_dead_letter_window: self.alert_dead_letter_window.map(d),
            breaker_failure_percent: self.breaker_failure_percent,
            breaker_min_deliveries: self.breaker_min_deliveries,
            breaker_window: self.breaker_window,
            breaker_baseline_max_age: self.breaker_baseline_max_age.map(d),
        }
    }
}

fn fmt_age(d: Option<&prost_types::Duration>) -> String {
    d.map(|d| format!("{:.1}s", d.seconds as f64 + d.nanos as f64 / 1e9)).unwrap_or_else(|| "-".into())
}

fn print_queue(q: &pb::Queue) {
    let c = q.config.unwrap_or_default();
    let secs = |d: Option<prost_types::Duration>| d.map(|d| d.seconds).unwrap_or(0);
    println!(
        "{:<24} paused={:<5} lease={}s max_attempts={} backoff={}s..{}s dedup_window={}s max_payload={}B weight={} \
         max_in_flight={} tenant_max_in_flight={} breaker={}",
        q.name,
        q.paused,
        secs(c.default_lease_duration),
        c.max_attempts,
        secs(c.backoff_initial),
        secs(c.backoff_max),
        secs(c.dedup_window),
        c.max_payload_bytes,
        c.weight,
        c.max_in_flight.unwrap_or(0),
        c.tenant_max_in_flight.unwrap_or(0),
        match c.breaker_failure_percent.unwrap_or(0) {
            0 => "off".to_string(),
            p => format!("{p}%/{}of{}", c.breaker_min_deliveries.unwrap_or(0), c.breaker_window.unwrap_or(0)),
        }
    );
}

pub async fn queue(remote: &Remote, cmd: QueueCmd) -> CliResult {
    if let QueueCmd::Quarantine { cmd } = cmd {
        return super::quarantine::quarantine(remote, cmd).await;
    }
    let mut admin = remote.connect().await?.admin();
    match cmd {
        QueueCmd::Create { name, config } => {
            let config = Some(config.to_proto());
            let q = admin.create_queue(pb::CreateQueueRequest { name, config }).await?.into_inner();
            print_queue(&q);
        }
        QueueCmd::Update { name, config } => {
            let config = Some(config.to_proto());
            let q = admin.update_queue(pb::UpdateQueueRequest { queue: name, config }).await?.into_inner();
            print_queue(&q);
        }
        QueueCmd::List => {
            let qs = admin.list_queues(pb::ListQueuesRequest {}).await?.into_inner().queues;
            if qs.is_empty() {
                println!("no queues; create one with `{} queue create NAME`", super::confirm::program());
            }
            for q in &qs {
                print_queue(q);
            }
        }
        QueueCmd::Stats { name } => {
            let s = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: name }).await?.into_inner();
            println!("queue {} (paused: {})", s.queue, s.paused);
            println!(
                "  ready {}  scheduled {}  leased {}  dead {}  oldest ready {}  workers {}",
                s.ready,
                s.scheduled,
                s.leased,
                s.dead,
                fmt_age(s.oldest_ready_age.as_ref()),
                s.connected_workers
            );
            println!(
                "  enqueued {}  acked {}  nacked {}  expired {}  deduplicated {}  dead-lettered {}",
                s.enqueued_total,
                s.acked_total,
                s.nacked_total,
                s.expired_total,
                s.deduplicated_total,
                s.dead_lettered_total
            );
            if !s.tenant_policies.is_empty() {
                println!(
                    "  {:<24} {:>7} {:>14} {:>8} {:>10} {:>7}  ENV WEIGHTS",
                    "POLICY", "WEIGHT", "MAX_IN_FLIGHT", "LEASED", "ENQ/S", "BURST"
                );
                for p in &s.tenant_policies {
                    let envs: Vec<String> = p.environment_weights.iter().map(|(e, w)| format!("{e}={w}")).collect();
                    println!(
                        "  {:<24} {:>7} {:>14} {:>8} {:>10} {:>7}  {}",
                        p.tenant,
                        p.weight,
                        p.max_in_flight,
                        p.leased,
                        p.enqueue_rate,
                        p.enqueue_burst,
                        envs.join(",")
                    );
                }
            }
            for line in super::quarantine::lines(&s) {
                println!("  {line}");
            }
            if !s.groups.is_empty() {
                println!("  {:<24} {:<24} {:>10} {:>10}", "TENANT", "ENVIRONMENT", "READY", "LEASED");
                for g in &s.groups {
                    println!("  {:<24} {:<24} {:>10} {:>10}", g.tenant, g.environment, g.ready, g.leased);
                }
            }
        }
        QueueCmd::Pause { name } => {
            print_queue(&admin.pause_queue(pb::PauseQueueRequest { queue: name }).await?.into_inner())
        }
        QueueCmd::Resume { name } => {
            print_queue(&admin.resume_queue(pb::ResumeQueueRequest { queue: name }).await?.into_inner())
        }
        QueueCmd::Delete { name, force } => {
            admin.delete_queue(pb::DeleteQueueRequest { queue: name.clone(), force }).await?;
            println!("deleted {name}");
        }
        QueueCmd::Purge { name, state, tenant, environment, yes } => {
            let stats = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: name.clone() }).await?.into_inner();
            let n = state.count(&stats);
            let mut which = String::new();
            if let Some(t) = &tenant {
                which.push_str(&format!(" of tenant {t}"));
            }
            if let Some(e) = &environment {
                which.push_str(&format!(" in environment {e}"));
            }
            let question = if which.is_empty() {
                format!("Delete the {} jobs of {name} ({n} now) for good?", state.noun())
            } else {
                format!("Delete the {} jobs{which} in {name} ({n} in the whole queue now) for good?", state.noun())
            };
            if !super::confirm::confirm(&question, yes)? {
                return super::confirm::declined();
            }
            let r = admin
                .purge_queue(pb::PurgeQueueRequest {
                    queue: name.clone(),
                    state: state.proto() as i32,
                    tenant: tenant.unwrap_or_default(),
                    environment: environment.unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!("purged {} of {name}", super::confirm::count(r.purged, "job", "jobs"));
        }
        QueueCmd::Quarantine { .. } => {}
    }
    Ok(())
}
