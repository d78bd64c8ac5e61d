//! `/metrics` in the Prometheus text format, rendered from one engine
//! snapshot plus RocksDB's figures. Series per tenant are bounded (the
//! largest tenants plus `other`), so 100k tenants cost 21 series per queue.

use crate::broker::monitor::MetricsSnapshot;
use crate::broker::observe::{AlertKind, Histogram};
use crate::storage::figures::StoreFigures;
use std::fmt::Write;

/// A metric family read from a `T`: name, help, getter.
type Family<T> = (&'static str, &'static str, fn(&T) -> u64);

/// A Prometheus text-format writer.
struct Out(String);

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(l: &[(&str, &str)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", inner.join(","))
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, l: &[(&str, &str)], v: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{name}{} {v}", labels(l));
    }

    /// `scale` converts the histogram's unit to seconds.
    fn histogram(&mut self, name: &str, l: &[(&str, &str)], h: &Histogram, scale: f64) {
        let mut cumulative = 0;
        for (i, bound) in h.bounds.iter().enumerate() {
            cumulative += h.counts[i];
            let le = format!("{}", *bound as f64 * scale);
            let mut with = l.to_vec();
            with.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &with, cumulative);
        }
        let mut with = l.to_vec();
        with.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &with, h.count());
        // Rounded to the µs: the float product would print 0.006915999999999999.
        self.sample(&format!("{name}_sum"), l, (h.sum as f64 * scale * 1e6).round() / 1e6);
        self.sample(&format!("{name}_count"), l, h.count());
    }
}

/// The one series every node exports, whatever it serves.
pub fn render_build_info() -> String {
    let mut o = Out(String::new());
    o.family("fairway_build_info", "gauge", "Version of the running broker.");
    o.sample("fairway_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    o.0
}

/// A cluster node's view of its partitions' Raft groups (see
/// `cluster/status.rs`): one set of series per partition.
pub fn render_cluster(c: &crate::pb::ClusterStatus) -> String {
    let mut o = Out(String::with_capacity(4 * 1024));
    let home = if c.home_node_id == c.node_id { 1 } else { 0 };
    o.family("fairway_cluster_home", "gauge", "1 while this node leads every partition and serves every call.");
    o.sample("fairway_cluster_home", &[("node", &c.node_id)], home);
    let per_partition: [Family<crate::pb::PartitionStatus>; 6] = [
        ("fairway_partition_term", "Raft term of the partition's group, as this node knows it.", |p| p.term),
        ("fairway_partition_leader", "1 while this node leads the partition.", |p| u64::from(p.role == "leader")),
        ("fairway_partition_leader_known", "1 while this node knows the partition's leader.", |p| {
            u64::from(!p.leader_node_id.is_empty())
        }),
        ("fairway_partition_last_log_index", "Last entry in this node's log of the partition.", |p| p.last_log_index),
        ("fairway_partition_applied_index", "Last entry applied to this node's store of the partition.", |p| {
            p.applied_index
        }),
        ("fairway_partition_apply_lag", "Entries in this node's log not yet applied to its store.", |p| {
            p.last_log_index.saturating_sub(p.applied_index)
        }),
    ];
    for (name, help, get) in per_partition {
        o.family(name, "gauge", help);
        for p in &c.partitions {
            o.sample(name, &[("partition", &p.partition.to_string())], get(p));
        }
    }
    o.family("fairway_partition_snapshot_index", "gauge", "Last entry this node's snapshot of the partition covers.");
    for p in &c.partitions {
        o.sample("fairway_partition_snapshot_index", &[("partition", &p.partition.to_string())], p.snapshot_index);
    }
    o.family(
        "fairway_partition_leader_changes_total",
        "counter",
        "Changes of the partition's leader seen by this node.",
    );
    for p in &c.partitions {
        o.sample(
            "fairway_partition_leader_changes_total",
            &[("partition", &p.partition.to_string())],
            p.leader_changes,
        );
    }
    o.family(
        "fairway_partition_replication_lag",
        "gauge",
        "On the partition's leader: entries each member has not yet replicated.",
    );
    for p in &c.partitions {
        let mut members: Vec<_> = p.matched_index.iter().collect();
        members.sort();
        for (node, matched) in members {
            let l = [("partition", p.partition.to_string()), ("node", node.clone())];
            let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
            o.sample("fairway_partition_replication_lag", &l, p.last_log_index.saturating_sub(*matched));
        }
    }
    o.family(
        "fairway_partition_quorum_ack_age_seconds",
        "gauge",
        "On the partition's leader: time since a majority last acknowledged it (growing: it is cut off).",
    );
    for p in &c.partitions {
        if let Some(ms) = p.quorum_ack_age_ms {
            let l = [("partition", p.partition.to_string())];
            o.sample("fairway_partition_quorum_ack_age_seconds", &[(l[0].0, &l[0].1)], ms as f64 / 1000.0);
        }
    }
    o.0
}

pub fn render(s: &MetricsSnapshot, f: &StoreFigures) -> String {
    let mut o = Out(String::with_capacity(16 * 1024));
    o.0.push_str(&render_build_info());

    o.family("fairway_queue_jobs", "gauge", "Jobs stored per state.");
    for q in &s.queues {
        for (state, v) in [("ready", q.ready), ("scheduled", q.scheduled), ("leased", q.leased), ("dead", q.dead)] {
            o.sample("fairway_queue_jobs", &[("queue", &q.name), ("state", state)], v);
        }
    }
    o.family(
        "fairway_queue_oldest_ready_age_seconds",
        "gauge",
        "How long the longest-waiting ready job has waited (0 when none is ready).",
    );
    for q in &s.queues {
        let age = q.oldest_ready_age_ms.filter(|_| q.ready > 0).unwrap_or(0) as f64 / 1000.0;
        o.sample("fairway_queue_oldest_ready_age_seconds", &[("queue", &q.name)], age);
    }
    o.family("fairway_queue_paused", "gauge", "1 while leasing is paused.");
    for q in &s.queues {
        o.sample("fairway_queue_paused", &[("queue", &q.name)], u8::from(q.paused));
    }
    o.family("fairway_queue_connected_workers", "gauge", "Work streams subscribed to the queue.");
    for q in &s.queues {
        o.sample("fairway_queue_connected_workers", &[("queue", &q.name)], q.workers);
    }
    let counters: [Family<crate::storage::records::QueueCounters>; 9] = [
        ("fairway_jobs_enqueued_total", "Jobs enqueued (dedup hits excluded).", |c| c.enqueued_total),
        ("fairway_jobs_leased_total", "Deliveries (leases), redeliveries included.", |c| c.leased_total),
        ("fairway_jobs_acked_total", "Jobs acknowledged as done.", |c| c.acked_total),
        ("fairway_jobs_nacked_total", "Nacks (failed attempts).", |c| c.nacked_total),
        ("fairway_jobs_expired_total", "Leases that ran out before an ack.", |c| c.expired_total),
        ("fairway_jobs_deduplicated_total", "Enqueues answered with an existing job (dedup hits).", |c| {
            c.deduplicated_total
        }),
        ("fairway_jobs_dead_lettered_total", "Jobs moved to the dead letters.", |c| c.dead_lettered_total),
        ("fairway_jobs_released_total", "Deliveries given back unstarted (not attempts).", |c| c.released_total),
        ("fairway_worker_version_quarantines_total", "Worker versions quarantined by the circuit breaker.", |c| {
            c.quarantines_total
        }),
    ];
    for (name, help, get) in counters {
        o.family(name, "counter", help);
        for q in &s.queues {
            o.sample(name, &[("queue", &q.name)], get(&q.counters));
        }
    }
    o.family("fairway_queue_alert", "gauge", "1 while a built-in alert is active (QueueConfig.alert_*).");
    for q in &s.queues {
        for kind in AlertKind::ALL {
            let on = q.alerts.iter().any(|a| a.kind == kind);
            o.sample("fairway_queue_alert", &[("queue", &q.name), ("kind", kind.as_str())], u8::from(on));
        }
    }
    o.family(
        "fairway_worker_version_quarantined",
        "gauge",
        "1 per worker version the circuit breaker quarantined (receives no jobs of the queue until lifted).",
    );
    for q in &s.queues {
        for v in &q.quarantined {
            o.sample("fairway_worker_version_quarantined", &[("queue", &q.name), ("version", v)], 1);
        }
    }
    o.family(
        "fairway_enqueue_to_delivery_seconds",
        "histogram",
        "From a job becoming ready (enqueue, or its run_at) to its lease.",
    );
    for q in &s.queues {
        o.histogram("fairway_enqueue_to_delivery_seconds", &[("queue", &q.name)], &q.delivery, 1e-3);
    }
    o.family("fairway_lease_to_ack_seconds", "histogram", "From a lease to its ack.");
    for q in &s.queues {
        o.histogram("fairway_lease_to_ack_seconds", &[("queue", &q.name)], &q.ack, 1e-3);
    }
    o.family(
        "fairway_tenant_jobs",
        "gauge",
        "Ready and leased jobs of the largest tenants by backlog; the rest are summed as tenant=\"other\".",
    );
    for q in &s.queues {
        for t in &q.tenants {
            for (state, v) in [("ready", t.ready), ("leased", t.leased)] {
                o.sample("fairway_tenant_jobs", &[("queue", &q.name), ("tenant", &t.tenant), ("state", state)], v);
            }
        }
    }

    let w = &s.writer;
    o.family("fairway_commits_total", "counter", "Write batches committed by the writer (group commits).");
    o.sample("fairway_commits_total", &[], w.commits);
    o.family(
        "fairway_wal_syncs_total",
        "counter",
        "WAL fsyncs: commits holding enqueues or admin changes, plus catch-up syncs of leases and acks.",
    );
    o.sample("fairway_wal_syncs_total", &[], w.syncs);
    o.family("fairway_committed_writes_total", "counter", "Key writes committed.");
    o.sample("fairway_committed_writes_total", &[], w.writes);
    o.family("fairway_commit_failures_total", "counter", "Commits that failed (disk full, I/O error).");
    o.sample("fairway_commit_failures_total", &[], w.failed_commits);
    o.family("fairway_commit_seconds", "histogram", "Write + fsync time of each commit.");
    o.histogram("fairway_commit_seconds", &[], &w.commit_us, 1e-6);
    o.family(
        "fairway_record_cache_lookups_total",
        "counter",
        "Leases whose job record was in memory (hit) or read from disk (miss).",
    );
    o.sample("fairway_record_cache_lookups_total", &[("result", "hit")], w.record_cache_hits);
    o.sample("fairway_record_cache_lookups_total", &[("result", "miss")], w.record_cache_misses);
    o.family("fairway_record_cache_bytes", "gauge", "Memory held by job records kept from enqueue to lease.");
    o.sample("fairway_record_cache_bytes", &[], w.record_cache_bytes);

    o.family("fairway_rocksdb_write_stopped", "gauge", "1 while RocksDB stops writes (a write stall).");
    o.sample("fairway_rocksdb_write_stopped", &[], u8::from(f.write_stopped));
    o.family("fairway_rocksdb_delayed_write_rate_bytes", "gauge", "Write throttle in bytes/s; 0 = not throttled.");
    o.sample("fairway_rocksdb_delayed_write_rate_bytes", &[], f.delayed_write_rate);
    o.family("fairway_rocksdb_running_compactions", "gauge", "Compactions running now.");
    o.sample("fairway_rocksdb_running_compactions", &[], f.running_compactions);
    o.family("fairway_rocksdb_running_flushes", "gauge", "Memtable flushes running now.");
    o.sample("fairway_rocksdb_running_flushes", &[], f.running_flushes);
    o.family("fairway_rocksdb_background_errors", "gauge", "RocksDB background errors since start.");
    o.sample("fairway_rocksdb_background_errors", &[], f.background_errors);
    let per_cf: [Family<crate::storage::figures::CfFigures>; 3] = [
        ("fairway_rocksdb_pending_compaction_bytes", "Bytes compaction still has to rewrite.", |c| {
            c.pending_compaction_bytes
        }),
        ("fairway_rocksdb_memtable_bytes", "Bytes in memtables.", |c| c.memtable_bytes),
        ("fairway_rocksdb_sst_bytes", "Bytes in SST files.", |c| c.sst_bytes),
    ];
    for (name, help, get) in per_cf {
        o.family(name, "gauge", help);
        for c in &f.queues {
            o.sample(name, &[("queue", &c.queue)], get(c));
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::observe::JOB_LATENCY_MS;

    #[test]
    fn a_cluster_node_exports_each_partitions_role_progress_and_lag() {
        let status = crate::pb::ClusterStatus {
            clustered: true,
            node_id: "n1".into(),
            home_node_id: "n1".into(),
            partitions: vec![crate::pb::PartitionStatus {
                partition: 0,
                role: "leader".into(),
                term: 4,
                leader_node_id: "n1".into(),
                last_log_index: 120,
                applied_index: 118,
                leader_changes: 3,
                matched_index: [("n1".to_string(), 120), ("n2".to_string(), 100)].into(),
                quorum_ack_age_ms: Some(1_500),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render_cluster(&status);
        for line in [
            "fairway_cluster_home{node=\"n1\"} 1",
            "fairway_partition_term{partition=\"0\"} 4",
            "fairway_partition_leader{partition=\"0\"} 1",
            "fairway_partition_apply_lag{partition=\"0\"} 2",
            "fairway_partition_leader_changes_total{partition=\"0\"} 3",
            "fairway_partition_replication_lag{partition=\"0\",node=\"n2\"} 20",
            "fairway_partition_quorum_ack_age_seconds{partition=\"0\"} 1.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("tenant", "a\"b\\c\nd")]), r#"{tenant="a\"b\\c\nd"}"#);
        assert_eq!(labels(&[]), "");
    }

    #[test]
    fn histograms_are_cumulative_and_in_seconds() {
        let mut h = Histogram::new(JOB_LATENCY_MS);
        h.observe(1);
        h.observe(3);
        h.observe(10_000_000);
        let mut o = Out(String::new());
        o.histogram("x", &[("queue", "q")], &h, 1e-3);
        assert!(o.0.contains("x_bucket{queue=\"q\",le=\"0.001\"} 1\n"), "{}", o.0);
        assert!(o.0.contains("x_bucket{queue=\"q\",le=\"0.005\"} 2\n"), "{}", o.0);
        assert!(o.0.contains("x_bucket{queue=\"q\",le=\"+Inf\"} 3\n"), "{}", o.0);
        assert!(o.0.contains("x_count{queue=\"q\"} 3\n"), "{}", o.0);
    }
}
