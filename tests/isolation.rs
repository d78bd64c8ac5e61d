//! Weighted fairness and isolation limits over gRPC: tenant and environment
//! weights, per-tenant and per-queue in-flight limits, enqueue rate limits,
//! queue weights for multi-queue workers, and policies surviving restarts.

mod common;

use common::*;
use fairway::pb;
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;

async fn policy(s: &TestServer, req: pb::SetTenantPolicyRequest) -> Result<pb::TenantPolicy, tonic::Status> {
    s.admin().set_tenant_policy(req).await.map(|r| r.into_inner())
}

fn weight(queue: &str, tenant: &str, w: u32) -> pb::SetTenantPolicyRequest {
    pb::SetTenantPolicyRequest { queue: queue.into(), tenant: tenant.into(), weight: w, ..Default::default() }
}

async fn fill(s: &TestServer, queue: &str, groups: &[(&str, &str)], n: usize) {
    for (t, e) in groups {
        let jobs = (0..n).map(|i| job(queue, t, e, &format!("{t}-{e}-{i}"))).collect();
        s.jobs().enqueue_batch(pb::EnqueueBatchRequest { jobs }).await.unwrap();
    }
}

async fn lease_counts(s: &TestServer, queue: &str, total: usize) -> HashMap<(String, String), usize> {
    let mut n = HashMap::new();
    let mut got = 0;
    while got < total {
        let d = s.lease(queue, (total - got).min(50) as u32, Duration::ZERO, Some(Duration::from_secs(300))).await;
        assert!(!d.is_empty(), "ran dry after {got}");
        for d in d {
            let j = d.job.unwrap();
            *n.entry((j.tenant, j.environment)).or_default() += 1;
            got += 1;
        }
    }
    n
}

#[tokio::test]
async fn tenant_weights_split_leases_and_show_in_stats() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    policy(&s, weight("q", "b", 2)).await.unwrap();
    let p = policy(&s, weight("q", "c", 4)).await.unwrap();
    assert_eq!((p.tenant.as_str(), p.weight), ("c", 4));
    fill(&s, "q", &[("a", "e"), ("b", "e"), ("c", "e")], 400).await;
    let n = lease_counts(&s, "q", 700).await;
    let get = |t: &str| n.get(&(t.to_string(), "e".to_string())).copied().unwrap_or(0);
    assert_eq!((get("a"), get("b"), get("c")), (100, 200, 400));
    let st = s.stats("q").await;
    let shown: Vec<_> = st.tenant_policies.iter().map(|p| (p.tenant.as_str(), p.weight, p.leased)).collect();
    assert_eq!(shown, [("b", 2, 200), ("c", 4, 400)]);
    s.stop().await;
}

#[tokio::test]
async fn environment_weights_split_a_tenants_share_not_more() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    let mut r = weight("q", "a", 3);
    r.environment = "prod".into();
    let p = policy(&s, r).await.unwrap();
    assert_eq!(p.weight, 1, "the tenant's own weight is unchanged");
    assert_eq!(p.environment_weights["prod"], 3);
    fill(&s, "q", &[("a", "prod"), ("a", "dev"), ("b", "x")], 300).await;
    let n = lease_counts(&s, "q", 400).await;
    let get = |t: &str, e: &str| n.get(&(t.to_string(), e.to_string())).copied().unwrap_or(0);
    assert_eq!(get("b", "x"), 200);
    assert_eq!((get("a", "prod"), get("a", "dev")), (150, 50));
    s.stop().await;
}

#[tokio::test]
async fn a_hung_tenant_holds_only_its_own_slots() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    policy(
        &s,
        pb::SetTenantPolicyRequest { queue: "q".into(), tenant: "hung".into(), max_in_flight: 2, ..Default::default() },
    )
    .await
    .unwrap();
    fill(&s, "q", &[("hung", "e"), ("ok", "e")], 10).await;
    let first = s.lease("q", 100, Duration::ZERO, None).await;
    let hung: Vec<_> = first.iter().filter(|d| d.job.as_ref().unwrap().tenant == "hung").collect();
    assert_eq!((hung.len(), first.len()), (2, 12), "the hung tenant gets 2 slots, everyone else flows");
    assert!(s.lease("q", 100, Duration::ZERO, None).await.is_empty());
    let st = s.stats("q").await;
    assert_eq!(st.tenant_policies[0].leased, 2);
    assert_eq!(st.ready, 8);
    // A slot frees: the tenant rejoins the rotation.
    s.ack("q", hung[0]).await.unwrap();
    let next = s.lease("q", 100, Duration::from_secs(5), None).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].job.as_ref().unwrap().tenant, "hung");
    // Raising the limit lets more through at once.
    policy(
        &s,
        pb::SetTenantPolicyRequest { queue: "q".into(), tenant: "hung".into(), max_in_flight: 5, ..Default::default() },
    )
    .await
    .unwrap();
    assert_eq!(s.lease("q", 100, Duration::ZERO, None).await.len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn queue_and_default_tenant_in_flight_limits() {
    let s = TestServer::start().await;
    s.create_queue("q", pb::QueueConfig { max_in_flight: Some(3), ..Default::default() }).await;
    fill(&s, "q", &[("a", "e"), ("b", "e")], 5).await;
    let d = s.lease("q", 100, Duration::ZERO, None).await;
    assert_eq!(d.len(), 3, "queue-wide limit");
    s.ack("q", &d[0]).await.unwrap();
    assert_eq!(s.lease("q", 100, Duration::ZERO, None).await.len(), 1);
    // Lift the queue limit, set a per-tenant default of 4.
    s.admin()
        .update_queue(pb::UpdateQueueRequest {
            queue: "q".into(),
            config: Some(pb::QueueConfig {
                max_in_flight: Some(0),
                tenant_max_in_flight: Some(4),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let more = s.lease("q", 100, Duration::ZERO, None).await;
    let st = s.stats("q").await;
    assert_eq!(st.leased, 3 + more.len() as u64);
    for g in &st.groups {
        assert!(g.leased <= 4, "{g:?}");
    }
    assert_eq!(more.len(), 5, "a and b each capped at 4 in flight");
    s.stop().await;
}

#[tokio::test]
async fn enqueue_rate_limits_answer_resource_exhausted_with_a_hint() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    let p = policy(
        &s,
        pb::SetTenantPolicyRequest {
            queue: "q".into(),
            tenant: "noisy".into(),
            enqueue_rate: 1.0,
            enqueue_burst: 3,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((p.enqueue_rate, p.enqueue_burst), (1.0, 3));
    for i in 0..3 {
        s.enqueue(job("q", "noisy", "e", &i.to_string())).await;
    }
    let err = s.jobs().enqueue(job("q", "noisy", "e", "over")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("retry in"), "{}", err.message());
    let hint: u64 = err.metadata().get("retry-after-ms").unwrap().to_str().unwrap().parse().unwrap();
    assert!(hint > 0 && hint <= 1000, "{hint}");
    let big = (0..5).map(|i| job("q", "noisy", "e", &i.to_string())).collect();
    let err = s.jobs().enqueue_batch(pb::EnqueueBatchRequest { jobs: big }).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("split"), "{}", err.message());
    // Others are unaffected, and nothing stored was dropped.
    for i in 0..20 {
        s.enqueue(job("q", "quiet", "e", &i.to_string())).await;
    }
    let st = s.stats("q").await;
    assert_eq!((st.enqueued_total, st.ready), (23, 23));
    s.stop().await;
}

#[tokio::test]
async fn multi_queue_workers_follow_queue_weights() {
    let s = TestServer::start().await;
    s.create_queue("bulk", pb::QueueConfig { weight: 1, ..Default::default() }).await;
    s.create_queue("notify", pb::QueueConfig { weight: 3, ..Default::default() }).await;
    fill(&s, "bulk", &[("t", "e")], 500).await;
    fill(&s, "notify", &[("t", "e")], 500).await;
    let d = s
        .workers()
        .lease(pb::LeaseRequest { queues: vec!["bulk".into(), "notify".into()], max_jobs: 400, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    let notify = d.iter().filter(|d| d.job.as_ref().unwrap().queue == "notify").count();
    assert_eq!((d.len() - notify, notify), (100, 300));
    s.stop().await;
}

#[tokio::test]
async fn policies_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(tmp.path()).await;
    s.create_queue("q", Default::default()).await;
    policy(&s, weight("q", "b", 3)).await.unwrap();
    policy(
        &s,
        pb::SetTenantPolicyRequest { queue: "q".into(), tenant: "c".into(), max_in_flight: 1, ..Default::default() },
    )
    .await
    .unwrap();
    s.stop().await;
    let s = TestServer::start_in(tmp.path()).await;
    let st = s.stats("q").await;
    let shown: Vec<_> = st.tenant_policies.iter().map(|p| (p.tenant.as_str(), p.weight, p.max_in_flight)).collect();
    assert_eq!(shown, [("b", 3, 0), ("c", 1, 1)]);
    fill(&s, "q", &[("a", "e"), ("b", "e")], 100).await;
    let n = lease_counts(&s, "q", 80).await;
    assert_eq!(n[&("b".to_string(), "e".to_string())], 60);
    // Resetting to defaults removes the policy.
    policy(&s, weight("q", "b", 1)).await.unwrap();
    assert_eq!(s.stats("q").await.tenant_policies.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn bad_policies_are_refused() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    let e = policy(&s, weight("q", "a", 20_000)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = policy(&s, weight("missing", "a", 2)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = policy(&s, weight("q", "Bad Tenant", 2)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = policy(
        &s,
        pb::SetTenantPolicyRequest { queue: "q".into(), tenant: "a".into(), enqueue_rate: -1.0, ..Default::default() },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = s
        .admin()
        .create_queue(pb::CreateQueueRequest {
            name: "w".into(),
            config: Some(pb::QueueConfig { weight: 20_000, ..Default::default() }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    s.stop().await;
}

/// Dedup under fairness: many tenants x environments enqueue the same keys
/// concurrently while workers lease and ack. Every scope gets exactly its own
/// job per key, and every dedup hit is counted.
#[tokio::test]
async fn dedup_never_crosses_scopes_under_concurrent_load() {
    let s = TestServer::start().await;
    s.create_queue("q", Default::default()).await;
    policy(&s, weight("q", "t0", 3)).await.unwrap();
    let (tenants, envs, keys, copies) = (4, 3, 5, 4);
    // Workers lease and ack other work all along.
    fill(&s, "q", &[("busy", "e")], 300).await;
    let worker = spawn_busy_worker(s.channel.clone(), "q", "busy", 300);
    let mut tasks = Vec::new();
    for t in 0..tenants {
        for e in 0..envs {
            for k in 0..keys {
                for _ in 0..copies {
                    let mut c = s.jobs();
                    tasks.push(tokio::spawn(async move {
                        let mut r = job("q", &format!("t{t}"), &format!("e{e}"), "x");
                        r.dedup_key = format!("key-{k}");
                        let r = c.enqueue(r).await.unwrap().into_inner();
                        ((t, e, k), r.job_id, r.deduplicated)
                    }));
                }
            }
        }
    }
    let mut ids: HashMap<(i32, i32, i32), std::collections::HashSet<String>> = HashMap::new();
    let mut hits = 0;
    for task in tasks {
        let (scope, id, dedup) = task.await.unwrap();
        ids.entry(scope).or_default().insert(id);
        hits += u64::from(dedup);
    }
    worker.await.unwrap();
    assert_eq!(ids.len(), (tenants * envs * keys) as usize);
    assert!(ids.values().all(|s| s.len() == 1), "one job per (tenant, env, key)");
    let distinct: std::collections::HashSet<_> = ids.values().flatten().collect();
    assert_eq!(distinct.len(), ids.len(), "no two scopes share a job");
    let st = s.stats("q").await;
    assert_eq!(hits, ((tenants * envs * keys) * (copies - 1)) as u64);
    assert_eq!(st.deduplicated_total, hits, "every dedup hit is counted");
    assert_eq!(st.enqueued_total, 300 + ids.len() as u64);
    s.stop().await;
}
