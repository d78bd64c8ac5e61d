//! Engine-level tests that drive the writer directly with a controlled
//! clock, for orderings too narrow to hit reliably over gRPC.

use super::engine::Engine;
use super::{Command, Registry};
use crate::model::{Millis, NewJob, QueueConfig};
use crate::storage::{Durability, Store};
use tokio::sync::oneshot;

fn engine(dir: &std::path::Path) -> Engine {
    let store = Store::open(dir, Durability::Relaxed).unwrap();
    let (_tx, rx) = flume::bounded::<Command>(1);
    let shared = std::sync::Arc::new(super::shared::Shared::new(1));
    Engine::recover(store, Registry::default(), rx, 0, shared, super::turn_log::TurnLog::Local).unwrap()
}

/// A job of tenant `t`, environment `e` in queue `q` (shared with the
/// lifecycle table tests).
pub(super) fn new_job(run_at: Option<Millis>) -> NewJob {
    NewJob {
        queue: "q".into(),
        tenant: "t".into(),
        environment: "e".into(),
        payload: bytes::Bytes::from_static(b"x"),
        headers: Default::default(),
        priority: 0,
        run_at,
        dedup_key: String::new(),
        max_attempts: 0,
        lease_duration: None,
        traceparent: String::new(),
    }
}

fn setup(e: &mut Engine) {
    let (tx, _rx) = oneshot::channel();
    e.create_queue("q".into(), QueueConfig::default(), tx);
    e.commit();
}

fn enqueue(e: &mut Engine, run_at: Option<Millis>) {
    let (tx, _rx) = oneshot::channel();
    e.enqueue(vec![new_job(run_at)], false, tx);
}

#[test]
fn a_job_scheduled_in_the_turn_a_promotion_completes_is_not_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path());
    setup(&mut e);
    e.now = 1_000;
    enqueue(&mut e, Some(1_500));
    e.commit();
    // Next turn: Y (1_500) is due, and X (2_500) is staged in the same turn.
    e.now = 2_000;
    enqueue(&mut e, Some(2_500));
    e.run_timers();
    assert_eq!(e.queues["q"].next_due, Some(2_500), "the staged job must stay due");
    e.commit();
    e.now = 2_600;
    e.run_timers();
    e.commit();
    let q = &e.queues["q"];
    assert_eq!((q.ready_total(), q.counters.scheduled), (2, 0));
}

#[test]
fn promotion_looks_back_when_the_clock_steps_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path());
    setup(&mut e);
    e.now = 10_000;
    enqueue(&mut e, Some(10_500));
    e.commit();
    e.now = 11_000;
    e.run_timers();
    e.commit();
    assert_eq!(e.queues["q"].ready_total(), 1);
    // The wall clock steps back; a job delayed from the new "now" must still run.
    e.now = 5_000;
    enqueue(&mut e, Some(5_030));
    e.commit();
    e.now = 5_040;
    e.run_timers();
    e.commit();
    let q = &e.queues["q"];
    assert_eq!((q.ready_total(), q.counters.scheduled), (2, 0));
}

#[test]
fn counters_and_leases_survive_recovery() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut e = engine(dir.path());
        setup(&mut e);
        e.now = crate::model::now_millis();
        for _ in 0..5 {
            enqueue(&mut e, None);
        }
        let later = e.now + 3_600_000;
        enqueue(&mut e, Some(later));
        e.commit();
    }
    let e = engine(dir.path());
    let q = &e.queues["q"];
    assert_eq!((q.ready_total(), q.counters.scheduled, q.counters.enqueued_total), (5, 1, 6));
    assert!(q.next_due.is_some());
    assert!(e.next_id > 6, "ids never repeat after a restart");
}

#[test]
fn a_job_enqueued_in_the_turn_alerts_peek_at_a_group_is_still_leased() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut e = engine(dir.path());
        setup(&mut e);
        e.now = crate::model::now_millis();
        enqueue(&mut e, None);
        e.commit();
    }
    // After a restart the group's buffer is empty and must be refilled from
    // disk. A second job is staged, then the alert check peeks at the group
    // before the turn commits: the disk holds only the first job.
    let mut e = engine(dir.path());
    e.now = crate::model::now_millis();
    enqueue(&mut e, None);
    e.check_alerts();
    e.commit();
    let (tx, mut rx) = oneshot::channel();
    let spec = super::LeaseSpec {
        queues: vec!["q".into()],
        max_jobs: 10,
        wait: std::time::Duration::ZERO,
        lease_duration: None,
        worker_id: "w".into(),
        worker_version: String::new(),
        tenants: None,
    };
    let window = std::sync::Arc::new(crate::partition::window::Window::new(spec.max_jobs));
    e.add_waiter(spec, window, tx);
    e.dispatch();
    e.commit();
    e.finish_waiters();
    let leased = rx.try_recv().expect("answered").expect("leased");
    assert_eq!(leased.len(), 2, "both jobs are leased, the staged one included");
    assert_eq!(e.queues["q"].ready_total(), 0);
}

/// Leases up to `max` jobs for a unary worker of `version`, as one turn
/// does (dispatch, commit, answer), and returns (job id, lease id) pairs.
fn lease_as(e: &mut Engine, version: &str, max: u32, lease: std::time::Duration) -> Vec<(crate::model::JobId, String)> {
    let (tx, mut rx) = oneshot::channel();
    let spec = super::LeaseSpec {
        queues: vec!["q".into()],
        max_jobs: max,
        wait: std::time::Duration::ZERO,
        lease_duration: Some(lease),
        worker_id: format!("w-{version}"),
        worker_version: version.into(),
        tenants: None,
    };
    let window = std::sync::Arc::new(crate::partition::window::Window::new(spec.max_jobs));
    e.add_waiter(spec, window, tx);
    e.dispatch();
    e.commit();
    e.finish_waiters();
    let got = rx.try_recv().expect("answered").expect("leased");
    got.iter()
        .map(|d| {
            let id = crate::model::JobId::parse(&d.job.as_ref().unwrap().id).unwrap();
            (id, d.lease_id.clone())
        })
        .collect()
}

#[test]
fn lease_expiries_trip_the_breaker_and_refunds_skip_dead_jobs() {
    use super::{SettleAction, SettleReply};
    use crate::model::{BreakerConfig, LeaseId};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path());
    let config = QueueConfig {
        breaker: BreakerConfig { failure_percent: 50, min_deliveries: 2, window: 4, ..BreakerConfig::default() },
        ..QueueConfig::default()
    };
    let (tx, _rx) = oneshot::channel();
    e.create_queue("q".into(), config, tx);
    e.commit();
    enqueue(&mut e, None);
    enqueue(&mut e, None);
    enqueue(&mut e, None);
    // The fourth job has one attempt: its expiry dead-letters it.
    let (tx, _rx) = oneshot::channel();
    e.enqueue(vec![NewJob { max_attempts: 1, ..new_job(None) }], false, tx);
    e.commit();
    // v1 acks two: a healthy baseline of min_deliveries.
    for (job, lease) in lease_as(&mut e, "v1", 2, Duration::from_secs(60)) {
        let (tx, _rx) = oneshot::channel();
        e.settle("q".into(), job, LeaseId::parse(&lease).unwrap(), SettleAction::Ack, SettleReply::Unary(tx));
    }
    e.commit();
    // v2 lets both of its leases run out.
    let held = lease_as(&mut e, "v2", 2, Duration::from_millis(1));
    assert_eq!(held.len(), 2);
    e.now = crate::model::now_millis() + 60_000;
    e.run_timers();
    e.commit();
    let q = &e.queues["q"];
    let rec = &q.quarantine["v2"];
    assert_eq!((rec.failures, rec.deliveries, rec.baseline_deliveries), (2, 2, 2));
    assert_eq!((rec.returned_leases, rec.refunded_attempts), (0, 1), "the dead job keeps its attempt");
    assert!(q.obs.active.contains_key(&super::observe::AlertKind::BadWorkerVersion));
    assert_eq!((q.counters.expired_total, q.counters.dead), (2, 1));
    let (alive, dead) = (held[0].0, held[1].0);
    assert_eq!(e.w.read_job("q", alive).unwrap().unwrap().attempt, 0, "refunded");
    assert_eq!(e.w.read_job("q", dead).unwrap().unwrap().attempt, 1, "dead letters are not refunded");
    // v2 is fenced; v1 gets the refunded job.
    assert!(lease_as(&mut e, "v2", 5, Duration::from_secs(60)).is_empty());
    assert_eq!(lease_as(&mut e, "v1", 5, Duration::from_secs(60)).len(), 1);
}

/// A Work stream for engine tests: its id, and what the engine sends it.
fn stream(
    e: &mut Engine,
    id: u64,
    max_in_flight: u32,
) -> tokio::sync::mpsc::UnboundedReceiver<Result<crate::pb::WorkResponse, tonic::Status>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sub = super::Subscription {
        queues: vec!["q".into()],
        worker_id: format!("w{id}"),
        worker_version: "v1".into(),
        max_in_flight,
        lease_duration: None,
        tenants: None,
    };
    let window = std::sync::Arc::new(crate::partition::window::Window::new(max_in_flight));
    e.subscribe(id, sub, tx, window);
    rx
}

/// One engine turn after commands: commit, dispatch, commit.
fn turn(e: &mut Engine) {
    e.commit();
    e.dispatch();
    e.commit();
}

/// What arrived on a stream so far: deliveries as (job, lease id), outcomes
/// as their kind.
fn received(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<crate::pb::WorkResponse, tonic::Status>>,
) -> Vec<(String, String)> {
    use crate::pb::work_response::Response;
    let mut out = Vec::new();
    while let Ok(Ok(r)) = rx.try_recv() {
        match r.response {
            Some(Response::Delivery(d)) => out.push((d.job.unwrap().id, d.lease_id)),
            Some(Response::Outcome(o)) => out.push((format!("{}:{}", o.kind, o.ok), o.job_id)),
            None => {}
        }
    }
    out
}

#[test]
fn a_released_delivery_is_ready_again_without_an_attempt() {
    use super::{SettleAction, SettleReply};
    use crate::model::{JobId, LeaseId};
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path());
    setup(&mut e);
    enqueue(&mut e, None);
    let mut rx = stream(&mut e, 1, 1);
    turn(&mut e);
    let got = received(&mut rx);
    assert_eq!(got.len(), 1);
    let (job, lease) = (JobId::parse(&got[0].0).unwrap(), LeaseId::parse(&got[0].1).unwrap());
    let stream_tx = e.consumers[&1].tx.clone();
    let reply = SettleReply::Stream { tx: stream_tx, job_id: job.to_string(), kind: "release" };
    e.settle("q".into(), job, lease, SettleAction::Release, reply);
    // Released in the same turn: the job is ready, the slot free, and the
    // next delivery (to the same stream) is still its first attempt.
    turn(&mut e);
    let got = received(&mut rx);
    assert_eq!(got[0], ("release:true".to_string(), job.to_string()));
    let q = &e.queues["q"];
    assert_eq!((q.counters.released_total, q.counters.leased_total, q.leases().len()), (1, 2, 1));
    let attempt = q.leases().get(&job).unwrap().attempt;
    assert_eq!(attempt, 1, "a release is not an attempt");
    assert_eq!(e.w.read_job("q", job).unwrap().unwrap().attempt, 0);
    // The old lease id is fenced.
    let (tx, rx2) = oneshot::channel();
    e.settle("q".into(), job, lease, SettleAction::Ack, SettleReply::Unary(tx));
    assert_eq!(rx2.blocking_recv().unwrap().unwrap_err().code(), tonic::Code::FailedPrecondition);
}

#[test]
fn a_draining_stream_gets_nothing_more_and_its_answer_keeps_request_order() {
    use super::{SettleAction, SettleReply};
    use crate::model::{JobId, LeaseId};
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path());
    setup(&mut e);
    for _ in 0..4 {
        enqueue(&mut e, None);
    }
    let mut rx = stream(&mut e, 1, 2);
    turn(&mut e);
    let got = received(&mut rx);
    assert_eq!(got.len(), 2, "a window of 2");
    // In one turn: ack the first, then drain.
    let tx = e.consumers[&1].tx.clone();
    let (job, lease) = (JobId::parse(&got[0].0).unwrap(), LeaseId::parse(&got[0].1).unwrap());
    let reply = SettleReply::Stream { tx: tx.clone(), job_id: job.to_string(), kind: "ack" };
    e.settle("q".into(), job, lease, SettleAction::Ack, reply);
    let (done, mut drained) = oneshot::channel();
    e.drain(1, done);
    assert!(drained.try_recv().is_err(), "the drain waits for the ack before it in the same turn");
    turn(&mut e);
    let got2 = received(&mut rx);
    assert_eq!(got2, [("ack:true".to_string(), job.to_string())]);
    assert!(drained.try_recv().is_ok(), "drained once the ack is answered");
    // The freed slot stays empty while it drains; another stream takes the rest.
    let mut other = stream(&mut e, 2, 10);
    turn(&mut e);
    assert!(received(&mut rx).is_empty(), "no delivery after the drain");
    assert_eq!(received(&mut other).len(), 2);
    assert!(e.list_workers(Some("q")).iter().any(|w| w.worker_id == "w1" && w.draining && w.in_flight == 1));
    // Leaving with the second delivery unsettled: that one counts.
    let held = JobId::parse(&got[1].0).unwrap();
    e.unsubscribe(1, "worker disconnected");
    e.commit();
    assert_eq!(e.w.read_job("q", held).unwrap().unwrap().attempt, 1, "an unreleased delivery is an attempt");
}

#[test]
fn the_oldest_ready_age_sees_an_old_low_priority_job_behind_newer_high_priority_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = engine(dir.path());
    setup(&mut e);
    e.now = 1_000;
    enqueue(&mut e, None);
    e.commit();
    // More high-priority jobs than a group keeps in memory: the old job
    // waits on disk behind them.
    e.now = 2_000;
    for _ in 0..(super::queue_state::HEAD_CAP + 10) {
        let (tx, _rx) = oneshot::channel();
        e.enqueue(vec![NewJob { priority: 5, ..new_job(None) }], false, tx);
    }
    e.commit();
    e.now = 3_000;
    let mut budget = 1000;
    assert_eq!(e.oldest_ready_at("q", &mut budget), Some(1_000), "ready since 1000, of priority 0");
    // Read once, then kept until the recheck interval or a cursor move.
    let mut budget = 1000;
    assert_eq!(e.oldest_ready_at("q", &mut budget), Some(1_000));
    assert_eq!(budget, 1000, "no disk read the second time");
}
