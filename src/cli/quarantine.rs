//! `fairway queue quarantine ...`: the worker versions the circuit breaker
//! quarantined (list), and letting one receive jobs again (lift).

use super::{CliResult, Remote};
use fairway::pb;

#[derive(Debug, clap::Subcommand)]
pub enum QuarantineCmd {
    /// Quarantined worker versions of a queue, why, and every version's recent figures.
    List { queue: String },
    /// Let a quarantined worker version receive the queue's jobs again.
    Lift { queue: String, version: String },
}

/// One line per quarantined version, then the breaker's per-version
/// figures; nothing when no version has been seen.
pub fn lines(s: &pb::QueueStats) -> Vec<String> {
    let mut out = Vec::new();
    if !s.quarantined_versions.is_empty() {
        out.push("quarantined worker versions:".to_string());
        for q in &s.quarantined_versions {
            out.push(format!(
                "  {:?}: {} of {} recent deliveries failed (baseline {:?}: {} of {}); {} leases returned, {} attempts \
                 refunded",
                q.worker_version,
                q.failures,
                q.deliveries,
                q.baseline_version,
                q.baseline_failures,
                q.baseline_deliveries,
                q.returned_leases,
                q.refunded_attempts
            ));
        }
    }
    if !s.worker_versions.is_empty() {
        out.push(format!("{:<26} {:>10} {:>9}  STATE", "WORKER VERSION", "RECENT", "FAILED"));
        for v in &s.worker_versions {
            let name = if v.worker_version.is_empty() { "(none)" } else { &v.worker_version };
            let state = if v.quarantined { "quarantined" } else { "ok" };
            out.push(format!("{name:<26} {:>10} {:>9}  {state}", v.deliveries, v.failures));
        }
    }
    out
}

pub async fn quarantine(remote: &Remote, cmd: QuarantineCmd) -> CliResult {
    let mut admin = remote.connect().await?.admin();
    match cmd {
        QuarantineCmd::List { queue } => {
            let s = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: queue.clone() }).await?.into_inner();
            if s.quarantined_versions.is_empty() {
                println!("no worker version is quarantined in {queue}");
            }
            for line in lines(&s) {
                println!("{line}");
            }
        }
        QuarantineCmd::Lift { queue, version } => {
            let req = pb::LiftQuarantineRequest { queue: queue.clone(), worker_version: version.clone() };
            admin.lift_quarantine(req).await?;
            println!("lifted the quarantine of worker version {version:?} in {queue}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_quarantines_and_versions() {
        let mut s = pb::QueueStats::default();
        assert!(lines(&s).is_empty());
        s.quarantined_versions.push(pb::WorkerVersionQuarantine {
            worker_version: "v2".into(),
            failures: 20,
            deliveries: 20,
            baseline_version: "v1".into(),
            baseline_deliveries: 40,
            ..Default::default()
        });
        s.worker_versions.push(pb::WorkerVersionStats {
            worker_version: "v1".into(),
            deliveries: 40,
            ..Default::default()
        });
        let l = lines(&s);
        assert!(l[1].contains("\"v2\": 20 of 20") && l[1].contains("\"v1\": 0 of 40"), "{l:?}");
        assert!(l[3].starts_with("v1") && l[3].ends_with("ok"), "{l:?}");
    }
}
