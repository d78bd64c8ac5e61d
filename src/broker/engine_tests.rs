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
    Engine::recover(store, Registry::default(), rx, tokio::sync::watch::channel(Default::default()).0).unwrap()
}

fn new_job(run_at: Option<Millis>) -> NewJob {
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
        tenants: None,
    };
    e.add_waiter(spec, tx);
    e.dispatch();
    e.commit();
    e.finish_waiters();
    let leased = rx.try_recv().expect("answered").expect("leased");
    assert_eq!(leased.len(), 2, "both jobs are leased, the staged one included");
    assert_eq!(e.queues["q"].ready_total(), 0);
}
