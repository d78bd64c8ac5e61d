//! An `EnqueueBatch` whose jobs live in several partitions is all or
//! nothing: stored whole and answered with every id in request order; a
//! refused job stores none; and a broker killed at each step of storing it
//! (the coordinator's write in, no other part yet; every part in, the
//! intent not yet dropped) holds it whole after the restart, never half
//! and never twice. See `src/broker/batch_intent.rs`.

mod common;
#[path = "common/process.rs"]
mod process;

use common::*;
use fairway::partition::placement::{partition_of_job, Layout};
use fairway::pb;
use fairway::pb::job_service_client::JobServiceClient;
use process::{scan_all, BrokerProcess};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

const P: u32 = 4;

/// One tenant per partition of queue `q`: tenant i lives in partition i.
fn one_tenant_per_partition() -> Vec<String> {
    let layout = Layout::even(P);
    (0..P as u16)
        .map(|p| (0..).map(|i| format!("t{i}")).find(|t| layout.place("q", t).0 == p).expect("a tenant"))
        .collect()
}

/// Batch `n`: two jobs in each partition, payloads `b{n}-{i}`.
fn batch(n: usize, tenants: &[String]) -> pb::EnqueueBatchRequest {
    let jobs =
        (0..2 * tenants.len()).map(|i| job("q", &tenants[i % tenants.len()], "e", &format!("b{n}-{i}"))).collect();
    pb::EnqueueBatchRequest { jobs }
}

/// Every partition's leftovers of batches across partitions: intents held
/// by coordinators, and markers of stored parts.
fn leftovers(dir: &Path) -> (usize, usize) {
    let mut held = (0, 0);
    for p in 0..P {
        let store = fairway::storage::Store::open(&dir.join(format!("p{p:04}")), fairway::storage::Durability::Strict)
            .expect("open partition");
        held.0 += store.load_intents().expect("intents").len();
        held.1 += store.load_applied().expect("markers").len();
    }
    held
}

#[tokio::test]
async fn a_batch_across_partitions_is_stored_whole_and_answered_in_request_order() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut config = fairway::config::ServeConfig::for_dir(tmp.path());
    config.partitions = Some(P);
    let s = TestServer::start_config(config).await;
    s.create_queue("q", pb::QueueConfig::default()).await;
    let tenants = one_tenant_per_partition();
    let req = batch(0, &tenants);
    let results = s.jobs().enqueue_batch(req.clone()).await.expect("batch").into_inner().results;
    assert_eq!(results.len(), req.jobs.len());
    let layout = Layout::even(P);
    for (r, j) in results.iter().zip(&req.jobs) {
        let id = fairway::model::JobId::parse(&r.job_id).expect("an id");
        assert_eq!(
            partition_of_job(id),
            layout.place("q", &j.tenant),
            "job {} stored by its tenant's partition",
            r.job_id
        );
        let got = s
            .jobs()
            .get_job(pb::GetJobRequest { queue: "q".into(), job_id: r.job_id.clone() })
            .await
            .expect("get job")
            .into_inner();
        assert_eq!(got.payload, j.payload, "result {} is the job at its place in the request", r.job_id);
    }
    let st = s.stats("q").await;
    assert_eq!((st.ready, st.enqueued_total), (8, 8));

    // One bad job (a queue that does not exist) stores none of the batch.
    let mut bad = batch(1, &tenants);
    bad.jobs[5].queue = "nope".into();
    let err = s.jobs().enqueue_batch(bad).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("jobs[5]"), "{}", err.message());
    assert_eq!(s.stats("q").await.ready, 8, "nothing of the refused batch was stored");

    // A clean stop leaves no intent and no marker behind.
    s.stop().await;
    assert_eq!(leftovers(tmp.path()), (0, 0));
}

/// Kills the broker (abort at a crash point: no unwinding, no clean close)
/// while it stores the third of a series of batches across partitions, and
/// checks after the restart that every batch is whole, once.
async fn killed_at(point: &str) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("d");
    let parts = P.to_string();
    let args = ["--partitions", parts.as_str()];
    let armed = format!("{point}:3");
    let b = BrokerProcess::spawn_env(&dir, "127.0.0.1:0", &args, &[("FAIRWAY_FAILPOINT", armed.as_str())]).await;
    b.wait_serving().await;
    pb::admin_service_client::AdminServiceClient::new(b.channel.clone())
        .create_queue(pb::CreateQueueRequest { name: "q".into(), config: None })
        .await
        .expect("create queue");
    let tenants = one_tenant_per_partition();
    let mut jobs = JobServiceClient::new(b.channel.clone());
    let mut answered = Vec::new();
    for n in 0..3 {
        match jobs.enqueue_batch(batch(n, &tenants)).await {
            Ok(r) => answered.push((n, r.into_inner().results)),
            Err(e) => {
                assert_eq!(n, 2, "only the third batch meets the crash point: {e}");
                break;
            }
        }
    }
    assert_eq!(answered.len(), 2, "the first two batches were answered");
    let status = b.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success(), "the broker died at {point}");

    // Restarted: the cut batch is completed before the broker serves.
    let b = BrokerProcess::spawn_at(&dir, "127.0.0.1:0", &args).await;
    b.wait_serving().await;
    let stored = scan_all(&b.channel, "q").await;
    let mut by_batch: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for j in &stored {
        let payload = String::from_utf8(j.payload.to_vec()).expect("utf8");
        let (n, _) = payload.split_once('-').expect("tagged payload");
        by_batch.entry(n.to_string()).or_default().push(payload);
    }
    for (n, payloads) in &by_batch {
        let unique: HashSet<&String> = payloads.iter().collect();
        assert_eq!(unique.len(), payloads.len(), "batch {n} stored a job twice: {payloads:?}");
        assert_eq!(payloads.len(), 8, "batch {n} is whole: {payloads:?}");
    }
    // Killed after the coordinator's write: the batch was decided, so it is
    // all there (never a part of it), as are the two answered ones.
    assert_eq!(by_batch.keys().cloned().collect::<Vec<_>>(), ["b0", "b1", "b2"], "{point}");
    for (n, results) in answered {
        let ids: HashSet<String> = stored.iter().map(|j| j.id.clone()).collect();
        for r in results {
            assert!(ids.contains(&r.job_id), "answered job {} of batch {n} is stored", r.job_id);
        }
    }
    b.signal("-TERM");
    assert!(b.wait_exit(Duration::from_secs(20)).await.success());
    assert_eq!(leftovers(&dir), (0, 0), "the restart dropped the intent and every marker");
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_batch_cut_short_after_its_coordinator_stored_it_is_completed_at_restart() {
    killed_at("batch-intent-stored").await;
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_batch_cut_short_after_every_part_was_stored_is_not_stored_twice() {
    killed_at("batch-parts-stored").await;
}
