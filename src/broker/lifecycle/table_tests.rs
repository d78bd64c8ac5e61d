//! Every row of [`TABLE`], driven through an engine: a job is
//! put in the row's state, the row's event happens to it, and the job's
//! state is read back from what the batch committed (the same read
//! `GetJob` makes). The engine's time is set by the test throughout.

use super::table::{event_name, outcome, table_markdown, Event, Outcome, TABLE};
use crate::broker::clock::Clock;
use crate::broker::engine::Engine;
use crate::broker::{Command, GroupScope, LeaseSpec, Registry, SettleAction, SettleReply};
use crate::error::BrokerError;
use crate::model::{BreakerConfig, JobId, JobState, LeaseId, Millis, NewJob, QueueConfig};
use crate::storage::{Durability, Store};
use std::time::Duration;
use tokio::sync::oneshot;

const T0: Millis = 1_000_000;
/// Leases in these tests last this long: no lease runs out unless a test
/// moves the time past it.
const LEASE: Duration = Duration::from_secs(36_000);
/// A scheduled job runs this long after T0.
const DELAY: Millis = 3_600_000;

struct Harness {
    e: Engine,
    _dir: tempfile::TempDir,
}

fn config() -> QueueConfig {
    QueueConfig {
        max_attempts: 5,
        default_lease: LEASE,
        // A version failing half of its deliveries or more, after 2, trips
        // against a baseline with 2 successes.
        breaker: BreakerConfig { failure_percent: 50, min_deliveries: 2, window: 4, ..BreakerConfig::default() },
        ..QueueConfig::default()
    }
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
    let (_tx, rx) = flume::bounded::<Command>(1);
    let (clock, _) = Clock::manual(T0);
    let shared = std::sync::Arc::new(crate::broker::shared::Shared::with_clock(1, clock));
    let mut e =
        Engine::recover(store, Registry::default(), rx, 0, shared, crate::broker::turn_log::TurnLog::Local).unwrap();
    assert_eq!(e.now, T0, "the engine reads the time from its clock");
    let (tx, _rx) = oneshot::channel();
    e.create_queue("q".into(), config(), tx);
    e.commit();
    Harness { e, _dir: dir }
}

fn job(priority: i32, run_at: Option<Millis>, max_attempts: u32) -> NewJob {
    NewJob { priority, max_attempts, ..crate::broker::engine_tests::new_job(run_at) }
}

impl Harness {
    fn enqueue(&mut self, job: NewJob) -> JobId {
        let (tx, mut rx) = oneshot::channel();
        self.e.enqueue(vec![job], false, tx);
        self.e.commit();
        rx.try_recv().unwrap().unwrap()[0].id
    }

    /// Leases up to `max` jobs for a unary worker of `version`, as a turn
    /// does (dispatch, commit, answer).
    fn lease(&mut self, version: &str, max: u32) -> Vec<(JobId, LeaseId)> {
        let (tx, mut rx) = oneshot::channel();
        let spec = LeaseSpec {
            queues: vec!["q".into()],
            max_jobs: max,
            wait: Duration::ZERO,
            lease_duration: Some(LEASE),
            worker_id: format!("w-{version}"),
            worker_version: version.into(),
            tenants: None,
        };
        let window = std::sync::Arc::new(crate::partition::window::Window::new(max));
        self.e.add_waiter(spec, window, tx);
        self.e.dispatch();
        self.e.commit();
        self.e.finish_waiters();
        let got = rx.try_recv().unwrap().unwrap();
        got.iter()
            .map(|d| (JobId::parse(&d.job.as_ref().unwrap().id).unwrap(), LeaseId::parse(&d.lease_id).unwrap()))
            .collect()
    }

    fn settle(&mut self, job: JobId, lease: LeaseId, action: SettleAction) -> Result<(), BrokerError> {
        let (tx, mut rx) = oneshot::channel();
        self.e.settle("q".into(), job, lease, action, SettleReply::Unary(tx));
        self.e.commit();
        rx.try_recv().unwrap().map(|_| ())
    }

    /// The job's state and attempts as committed, `None` once it is gone.
    fn read(&self, id: JobId) -> Option<(JobState, u32)> {
        let cfg = config();
        match crate::broker::reads::get_job(&self.e.w.store, "q", &cfg, id) {
            Ok(j) => {
                let state = match crate::pb::JobState::try_from(j.state).unwrap() {
                    crate::pb::JobState::Scheduled => JobState::Scheduled,
                    crate::pb::JobState::Ready => JobState::Ready,
                    crate::pb::JobState::Leased => JobState::Leased,
                    crate::pb::JobState::Dead => JobState::Dead,
                    other => panic!("unexpected state {other:?}"),
                };
                Some((state, j.attempt))
            }
            Err(BrokerError::JobNotFound { .. }) => None,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Counts kept in memory equal what the store holds.
    fn check_counts(&self) {
        let q = &self.e.queues["q"];
        let store = &self.e.w.store;
        let count = |tag: u8| {
            store.scan("q", &[tag], &crate::storage::keys::prefix_end(&[tag]), usize::MAX).unwrap().entries.len() as u64
        };
        use crate::storage::keys as k;
        assert_eq!(q.ready_total(), count(k::READY), "ready count");
        assert_eq!(q.counters.scheduled, count(k::SCHEDULED), "scheduled count");
        assert_eq!(q.counters.dead, count(k::DEAD), "dead count");
        assert_eq!(q.leases().len() as u64, count(k::LEASE), "leases");
        assert_eq!(q.total_jobs(), count(k::JOB), "every job is in exactly one state");
    }

    /// A job in `state`, and the lease that holds it when leased.
    fn job_in(&mut self, state: JobState) -> (JobId, Option<LeaseId>) {
        match state {
            JobState::Scheduled => (self.enqueue(job(0, Some(T0 + DELAY), 0)), None),
            JobState::Ready => (self.enqueue(job(0, None, 0)), None),
            JobState::Leased => {
                let id = self.enqueue(job(0, None, 0));
                let got = self.lease("bad", 1);
                assert_eq!(got[0].0, id);
                (id, Some(got[0].1))
            }
            JobState::Dead => {
                let id = self.enqueue(job(0, None, 1));
                let got = self.lease("setup", 1);
                let nack = SettleAction::Nack { error: "boom".into(), retry_after: None, dead: false };
                self.settle(id, got[0].1, nack).unwrap();
                (id, None)
            }
        }
    }

    /// Makes `event` happen to `job` (held under `lease`, when leased);
    /// the result of the call when it is one a caller makes.
    fn happen(&mut self, event: Event, id: JobId, lease: Option<LeaseId>) -> Result<(), BrokerError> {
        let lease = lease.unwrap_or_else(LeaseId::random);
        let nack = |dead| SettleAction::Nack { error: "failed".into(), retry_after: None, dead };
        match event {
            Event::Promote => {
                self.e.now = T0 + DELAY + 1;
                self.e.promote("q").unwrap();
                self.e.commit();
                Ok(())
            }
            Event::Lease => {
                self.lease("good", 10);
                Ok(())
            }
            Event::Ack => self.settle(id, lease, SettleAction::Ack),
            Event::Nack => self.settle(id, lease, nack(false)),
            Event::NackLast => self.settle(id, lease, nack(true)),
            Event::Extend => self.settle(id, lease, SettleAction::Extend { duration: Some(LEASE) }),
            Event::Release => self.settle(id, lease, SettleAction::Release),
            Event::Expire => {
                self.e.now = T0 + LEASE.as_millis() as u64 + 1;
                self.e.expire_leases("q");
                self.e.commit();
                Ok(())
            }
            Event::Disconnect => {
                self.e.disconnect([(id, std::sync::Arc::from("q"))], "worker disconnected");
                self.e.commit();
                Ok(())
            }
            Event::Undeliver => {
                self.e.undeliver("q", id);
                self.e.commit();
                Ok(())
            }
            Event::Cancel => {
                let (tx, mut rx) = oneshot::channel();
                self.e.cancel("q".into(), id, tx);
                self.e.commit();
                rx.try_recv().unwrap().map(|_| ())
            }
            Event::Redrive => {
                let (tx, mut rx) = oneshot::channel();
                self.e.redrive_job("q", id, tx);
                self.e.commit();
                rx.try_recv().unwrap().map(|_| ())
            }
            Event::Purge => {
                let (tx, mut rx) = oneshot::channel();
                self.e.start_purge("q".into(), None, GroupScope::default(), tx);
                loop {
                    self.e.run_tasks();
                    self.e.commit();
                    if let Ok(r) = rx.try_recv() {
                        return r.map(|_| ());
                    }
                }
            }
            Event::Quarantine => {
                // Four other jobs, leased before this one (higher priority):
                // "good" acks two, "bad" fails two, and "bad" trips.
                for _ in 0..4 {
                    self.enqueue(job(9, None, 0));
                }
                for (j, l) in self.lease("good", 2) {
                    self.settle(j, l, SettleAction::Ack).unwrap();
                }
                let bad = self.lease("bad", 2);
                assert!(bad.iter().all(|(j, _)| *j != id), "the row's job is not one of the four");
                for (j, l) in bad {
                    self.settle(j, l, SettleAction::Nack { error: "bad".into(), retry_after: None, dead: false })
                        .unwrap();
                }
                assert!(self.e.queues["q"].quarantine.contains_key("bad"), "the breaker tripped");
                Ok(())
            }
        }
    }
}

/// Whether the event spends the lease's attempt, for a leased job.
fn spends_attempt(event: Event) -> bool {
    matches!(event, Event::Nack | Event::NackLast | Event::Expire | Event::Disconnect)
}

#[test]
fn every_state_and_event_does_what_the_table_says() {
    for &(state, event, expected) in TABLE {
        let row = format!("{} + {}", state.name(), event_name(event));
        let mut h = harness();
        let (id, lease) = h.job_in(state);
        let before = h.read(id).unwrap_or_else(|| panic!("{row}: set-up lost the job"));
        assert_eq!(before.0, state, "{row}: set-up");
        let result = h.happen(event, id, lease);
        let after = h.read(id);
        match expected {
            Outcome::Refused => {
                let e = result.expect_err(&row);
                assert!(
                    matches!(
                        e,
                        BrokerError::LeaseNotHeld(_) | BrokerError::FailedPrecondition(_) | BrokerError::NotFound(_)
                    ),
                    "{row}: refused with {e:?}"
                );
                assert_eq!(after, Some(before), "{row}: a refusal changes nothing");
            }
            Outcome::Unchanged => {
                result.unwrap_or_else(|e| panic!("{row}: {e}"));
                assert_eq!(after.map(|a| a.0), Some(state), "{row}");
            }
            Outcome::Gone => {
                result.unwrap_or_else(|e| panic!("{row}: {e}"));
                assert_eq!(after, None, "{row}: the job is gone");
            }
            Outcome::To(next) => {
                result.unwrap_or_else(|e| panic!("{row}: {e}"));
                let (got, attempt) = after.unwrap_or_else(|| panic!("{row}: the job is gone"));
                assert_eq!(got, next, "{row}");
                let expected_attempt = match (state, event) {
                    // A leased job shows its lease's attempt.
                    (JobState::Leased, ev) if spends_attempt(ev) || ev == Event::Extend => 1,
                    (JobState::Ready, Event::Lease) => 1,
                    _ => 0,
                };
                assert_eq!(attempt, expected_attempt, "{row}: attempts");
            }
        }
        h.check_counts();
    }
}

#[test]
fn the_table_covers_every_state_and_event_once() {
    let states = [JobState::Scheduled, JobState::Ready, JobState::Leased, JobState::Dead];
    assert_eq!(TABLE.len(), states.len() * 14);
    for s in states {
        for &(_, e, _) in TABLE.iter().filter(|(st, _, _)| *st == JobState::Ready) {
            assert!(outcome(s, e).is_some(), "{} + {} missing", s.name(), event_name(e));
            assert_eq!(TABLE.iter().filter(|(st, ev, _)| *st == s && *ev == e).count(), 1);
        }
    }
}

#[test]
fn the_docs_show_the_table_the_code_follows() {
    let docs = include_str!("../../../docs/lifecycle.md");
    assert!(
        docs.contains(&table_markdown()),
        "docs/lifecycle.md must hold the table exactly as the code has it:\n{}",
        table_markdown()
    );
}
