//! Start-up safety: the broker answers health (NOT_SERVING) while its
//! writer rebuilds state from the data dir, calls made meanwhile wait for
//! recovery instead of failing or seeing an empty broker, and health turns
//! SERVING when it is done.

mod common;

use common::{eventually, job, TestServer};
use fairway::config::ServeConfig;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn health_answers_while_recovering_and_early_calls_wait_for_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = TestServer::start_in(dir.path()).await;
    s.create_queue("q", Default::default()).await;
    let id = s.enqueue(job("q", "acme", "", "kept")).await.job_id;
    s.stop().await;

    // Hold the writer before it recovers, so the window is wide enough to see.
    let mut config = ServeConfig::for_dir(dir.path());
    config.recovery_hold = Duration::from_secs(2);
    let s = TestServer::start_config(config).await;
    assert_eq!(s.health().await.expect("health answers while the writer recovers"), ServingStatus::NotServing as i32);
    // Made while recovering: waits, then sees the recovered queue and job
    // (not "queue does not exist").
    let (queues, stats) = tokio::join!(
        async { s.admin().list_queues(fairway::pb::ListQueuesRequest {}).await.expect("list waits").into_inner() },
        s.stats("q")
    );
    assert_eq!(queues.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["q"]);
    assert_eq!(stats.ready, 1);
    let leased = s.lease("q", 1, Duration::from_secs(5), None).await;
    assert_eq!(leased[0].job.as_ref().expect("job").id, id);
    let serving = ServingStatus::Serving as i32;
    eventually(Duration::from_secs(30), || async { (s.health().await.ok() == Some(serving)).then_some(()) }).await;
    s.stop().await;
}
