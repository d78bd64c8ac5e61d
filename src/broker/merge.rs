//! One view from many partitions: a queue's stats, the metrics snapshot,
//! the list of workers and RocksDB's figures, each merged from what every
//! partition reports. Pure.
//!
//! Counts add up (each job lives in one partition); a tenant's groups live
//! in one partition, so groups are concatenated; what every partition holds
//! alike (pause, policies, workers connected, quarantines) is taken once;
//! ages and alerts take the worst (the oldest job, the earliest start).

use super::monitor::{MetricsSnapshot, QueueMetrics, TenantLoad, WriterMetrics, TOP_TENANTS};
use super::observe::Histogram;
use crate::pb;
use crate::storage::figures::{CfFigures, StoreFigures};
use crate::storage::records::QueueCounters;
use std::collections::BTreeMap;

/// Most groups a merged `QueueStats` lists (as one partition's does).
const GROUPS_SHOWN: usize = 1000;

fn add_counters(a: &mut QueueCounters, b: &QueueCounters) {
    a.scheduled += b.scheduled;
    a.dead += b.dead;
    a.enqueued_total += b.enqueued_total;
    a.acked_total += b.acked_total;
    a.nacked_total += b.nacked_total;
    a.expired_total += b.expired_total;
    a.deduplicated_total += b.deduplicated_total;
    a.dead_lettered_total += b.dead_lettered_total;
    a.leased_total += b.leased_total;
    a.quarantines_total += b.quarantines_total;
    a.released_total += b.released_total;
}

fn add_histogram(a: &mut Histogram, b: &Histogram) {
    if a.counts.len() != b.counts.len() {
        return;
    }
    for (x, y) in a.counts.iter_mut().zip(&b.counts) {
        *x += y;
    }
    a.sum = a.sum.saturating_add(b.sum);
}

fn longer(a: Option<prost_types::Duration>, b: Option<prost_types::Duration>) -> Option<prost_types::Duration> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if (y.seconds, y.nanos) > (x.seconds, x.nanos) { y } else { x }),
        (x, y) => x.or(y),
    }
}

fn earlier(a: Option<prost_types::Timestamp>, b: Option<prost_types::Timestamp>) -> Option<prost_types::Timestamp> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if (y.seconds, y.nanos) < (x.seconds, x.nanos) { y } else { x }),
        (x, y) => x.or(y),
    }
}

/// A queue's stats over all its partitions (partition 0's first).
pub fn stats(mut parts: Vec<pb::QueueStats>) -> Option<pb::QueueStats> {
    if parts.len() <= 1 {
        return parts.pop();
    }
    let mut rest = parts.split_off(1);
    let mut out = parts.pop()?;
    let mut alerts: BTreeMap<String, pb::QueueAlert> = out.alerts.drain(..).map(|a| (a.kind.clone(), a)).collect();
    let mut versions: BTreeMap<String, pb::WorkerVersionStats> =
        out.worker_versions.drain(..).map(|v| (v.worker_version.clone(), v)).collect();
    let mut quarantined: BTreeMap<String, pb::WorkerVersionQuarantine> =
        out.quarantined_versions.drain(..).map(|q| (q.worker_version.clone(), q)).collect();
    let mut policies: BTreeMap<String, pb::TenantPolicy> =
        out.tenant_policies.drain(..).map(|p| (p.tenant.clone(), p)).collect();
    for s in rest.drain(..) {
        out.scheduled += s.scheduled;
        out.ready += s.ready;
        out.leased += s.leased;
        out.dead += s.dead;
        out.oldest_ready_age = longer(out.oldest_ready_age, s.oldest_ready_age);
        out.groups.extend(s.groups);
        out.enqueued_total += s.enqueued_total;
        out.acked_total += s.acked_total;
        out.nacked_total += s.nacked_total;
        out.expired_total += s.expired_total;
        out.deduplicated_total += s.deduplicated_total;
        out.dead_lettered_total += s.dead_lettered_total;
        out.leased_total += s.leased_total;
        out.quarantines_total += s.quarantines_total;
        out.released_total += s.released_total;
        out.connected_workers = out.connected_workers.max(s.connected_workers);
        for a in s.alerts {
            match alerts.get_mut(&a.kind) {
                Some(have) => have.since = earlier(have.since, a.since),
                None => {
                    alerts.insert(a.kind.clone(), a);
                }
            }
        }
        for v in s.worker_versions {
            let e = versions.entry(v.worker_version.clone()).or_insert_with(|| pb::WorkerVersionStats {
                worker_version: v.worker_version.clone(),
                ..Default::default()
            });
            e.deliveries += v.deliveries;
            e.failures += v.failures;
            e.quarantined |= v.quarantined;
        }
        for q in s.quarantined_versions {
            match quarantined.get_mut(&q.worker_version) {
                Some(have) => {
                    have.returned_leases += q.returned_leases;
                    have.refunded_attempts += q.refunded_attempts;
                    have.since = earlier(have.since, q.since);
                }
                None => {
                    quarantined.insert(q.worker_version.clone(), q);
                }
            }
        }
        for p in s.tenant_policies {
            match policies.get_mut(&p.tenant) {
                Some(have) => have.leased += p.leased,
                None => {
                    policies.insert(p.tenant.clone(), p);
                }
            }
        }
    }
    out.groups.sort_by(|a, b| (b.ready + b.leased).cmp(&(a.ready + a.leased)).then(a.tenant.cmp(&b.tenant)));
    out.groups.truncate(GROUPS_SHOWN);
    out.alerts = alerts.into_values().collect();
    out.worker_versions = versions.into_values().collect();
    out.quarantined_versions = quarantined.into_values().collect();
    out.tenant_policies = policies.into_values().collect();
    Some(out)
}

/// The metrics snapshot over all partitions. Recent percentiles can't be
/// merged exactly from percentiles: each figure is the worst partition's.
pub fn metrics(mut parts: Vec<MetricsSnapshot>) -> MetricsSnapshot {
    if parts.len() == 1 {
        if let Some(only) = parts.pop() {
            return only;
        }
    }
    let mut writer = WriterMetrics::default();
    let mut queues: BTreeMap<String, QueueMetrics> = BTreeMap::new();
    for part in parts {
        let w = &part.writer;
        writer.commits += w.commits;
        writer.writes += w.writes;
        add_histogram(&mut writer.commit_us, &w.commit_us);
        writer.failed_commits += w.failed_commits;
        writer.syncs += w.syncs;
        writer.record_cache_hits += w.record_cache_hits;
        writer.record_cache_misses += w.record_cache_misses;
        writer.record_cache_bytes += w.record_cache_bytes;
        for q in part.queues {
            match queues.get_mut(&q.name) {
                None => {
                    queues.insert(q.name.clone(), q);
                }
                Some(have) => merge_queue(have, q),
            }
        }
    }
    let queues = queues
        .into_values()
        .map(|mut q| {
            q.tenants = top_tenants(std::mem::take(&mut q.tenants));
            q
        })
        .collect();
    MetricsSnapshot { queues, writer }
}

fn merge_queue(have: &mut QueueMetrics, q: QueueMetrics) {
    have.ready += q.ready;
    have.scheduled += q.scheduled;
    have.leased += q.leased;
    have.dead += q.dead;
    have.oldest_ready_age_ms = have.oldest_ready_age_ms.max(q.oldest_ready_age_ms);
    add_counters(&mut have.counters, &q.counters);
    have.workers = have.workers.max(q.workers);
    add_histogram(&mut have.delivery, &q.delivery);
    add_histogram(&mut have.ack, &q.ack);
    let worst = |a: Option<super::observe::Percentiles>, b: Option<super::observe::Percentiles>| match (a, b) {
        (Some(x), Some(y)) => Some(super::observe::Percentiles {
            p50: x.p50.max(y.p50),
            p99: x.p99.max(y.p99),
            max: x.max.max(y.max),
            count: x.count + y.count,
        }),
        (x, y) => x.or(y),
    };
    have.delivery_recent = worst(have.delivery_recent, q.delivery_recent);
    have.ack_recent = worst(have.ack_recent, q.ack_recent);
    for a in q.alerts {
        match have.alerts.iter_mut().find(|h| h.kind == a.kind) {
            Some(h) => h.since = h.since.min(a.since),
            None => have.alerts.push(a),
        }
    }
    have.alerts.sort_by_key(|a| a.kind);
    have.tenants.extend(q.tenants);
    for v in q.quarantined {
        if !have.quarantined.contains(&v) {
            have.quarantined.push(v);
        }
    }
    have.quarantined.sort();
}

/// The [`TOP_TENANTS`] largest by ready + leased, then `other` (the
/// partitions' own `other` entries included).
fn top_tenants(all: Vec<TenantLoad>) -> Vec<TenantLoad> {
    let mut other = TenantLoad { tenant: "other".into(), ready: 0, leased: 0 };
    let mut named: Vec<TenantLoad> = Vec::new();
    for t in all {
        if t.tenant == "other" {
            other.ready += t.ready;
            other.leased += t.leased;
        } else {
            named.push(t);
        }
    }
    let by_load = |a: &TenantLoad, b: &TenantLoad| (b.ready + b.leased).cmp(&(a.ready + a.leased));
    named.sort_by(|a, b| by_load(a, b).then(a.tenant.cmp(&b.tenant)));
    for t in named.split_off(TOP_TENANTS.min(named.len())) {
        other.ready += t.ready;
        other.leased += t.leased;
    }
    if other.ready + other.leased > 0 {
        named.push(other);
    }
    named
}

/// The workers connected, each stream once (every partition serving it
/// knows it): its in-flight count and leases added up over partitions.
pub fn workers(parts: Vec<Vec<(u64, pb::WorkerInfo)>>, leases_shown: usize) -> Vec<pb::WorkerInfo> {
    let mut by_id: BTreeMap<u64, pb::WorkerInfo> = BTreeMap::new();
    for part in parts {
        for (id, w) in part {
            match by_id.get_mut(&id) {
                None => {
                    by_id.insert(id, w);
                }
                Some(have) => {
                    have.in_flight += w.in_flight;
                    have.draining |= w.draining;
                    have.leases.extend(w.leases);
                }
            }
        }
    }
    let mut out: Vec<pb::WorkerInfo> = by_id
        .into_values()
        .map(|mut w| {
            w.leases.sort_by(|a, b| {
                let at = |l: &pb::WorkerLease| l.leased_at.map(|t| (t.seconds, t.nanos));
                at(a).cmp(&at(b)).then_with(|| a.job_id.cmp(&b.job_id))
            });
            w.leases.truncate(leases_shown);
            w
        })
        .collect();
    let at = |w: &pb::WorkerInfo| w.connected_at.map(|t| (t.seconds, t.nanos));
    out.sort_by(|a, b| at(a).cmp(&at(b)).then_with(|| a.worker_id.cmp(&b.worker_id)));
    out
}

/// RocksDB's figures over all partitions' databases.
pub fn figures(parts: Vec<StoreFigures>) -> StoreFigures {
    let mut out = StoreFigures::default();
    let mut cfs: BTreeMap<String, CfFigures> = BTreeMap::new();
    for f in parts {
        out.write_stopped |= f.write_stopped;
        out.delayed_write_rate = if out.delayed_write_rate == 0 {
            f.delayed_write_rate
        } else if f.delayed_write_rate == 0 {
            out.delayed_write_rate
        } else {
            out.delayed_write_rate.min(f.delayed_write_rate)
        };
        out.running_compactions += f.running_compactions;
        out.running_flushes += f.running_flushes;
        out.background_errors += f.background_errors;
        for c in f.queues {
            let e = cfs
                .entry(c.queue.clone())
                .or_insert_with(|| CfFigures { queue: c.queue.clone(), ..Default::default() });
            e.pending_compaction_bytes += c.pending_compaction_bytes;
            e.memtable_bytes += c.memtable_bytes;
            e.sst_bytes += c.sst_bytes;
        }
    }
    out.queues = cfs.into_values().collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(ready: u64, age_s: i64, alert_since: Option<i64>) -> pb::QueueStats {
        pb::QueueStats {
            queue: "q".into(),
            ready,
            enqueued_total: ready,
            oldest_ready_age: Some(prost_types::Duration { seconds: age_s, nanos: 0 }),
            groups: vec![pb::GroupStats { tenant: format!("t{ready}"), environment: "e".into(), ready, leased: 0 }],
            connected_workers: 2,
            alerts: alert_since
                .map(|s| pb::QueueAlert {
                    kind: "backlog".into(),
                    since: Some(prost_types::Timestamp { seconds: s, nanos: 0 }),
                    message: "m".into(),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn counts_add_up_ages_and_alerts_take_the_worst_and_workers_count_once() {
        let s = stats(vec![st(3, 10, None), st(5, 40, Some(200)), st(1, 5, Some(100))]).unwrap();
        assert_eq!((s.ready, s.enqueued_total, s.connected_workers), (9, 9, 2));
        assert_eq!(s.oldest_ready_age.unwrap().seconds, 40);
        assert_eq!(s.groups.iter().map(|g| g.ready).collect::<Vec<_>>(), [5, 3, 1]);
        assert_eq!(s.alerts.len(), 1);
        assert_eq!(s.alerts[0].since.unwrap().seconds, 100);
    }

    #[test]
    fn one_stream_seen_by_every_partition_is_listed_once_with_its_leases_added() {
        let w = |in_flight: u32, job: &str| pb::WorkerInfo {
            worker_id: "w".into(),
            in_flight,
            max_in_flight: 8,
            leases: vec![pb::WorkerLease { job_id: job.into(), ..Default::default() }],
            ..Default::default()
        };
        let merged = workers(vec![vec![(7, w(2, "a"))], vec![(7, w(3, "b"))]], 100);
        assert_eq!(merged.len(), 1);
        assert_eq!((merged[0].in_flight, merged[0].max_in_flight, merged[0].leases.len()), (5, 8, 2));
    }

    #[test]
    fn tenants_are_cut_to_the_top_with_every_partitions_rest_in_other() {
        let mut all: Vec<TenantLoad> =
            (0..30).map(|i| TenantLoad { tenant: format!("t{i:02}"), ready: i, leased: 0 }).collect();
        all.push(TenantLoad { tenant: "other".into(), ready: 7, leased: 0 });
        let top = top_tenants(all);
        assert_eq!(top.len(), TOP_TENANTS + 1);
        assert_eq!(top[0].tenant, "t29");
        let other = top.last().unwrap();
        assert_eq!(other.tenant, "other");
        assert_eq!(other.ready, 7 + (0..10).sum::<u64>());
    }
}
