//! A broker holding jobs in every state takes a bounded storm of garbage:
//! random bytes as protobuf bodies on every RPC path, broken gRPC framing,
//! wrong content types and methods, oversized and lying length prefixes,
//! streams reset mid-body, raw TCP junk, and real messages full of random
//! values. Afterwards it must answer health, and every stored job, the
//! listings and the counters must be exactly as before.

mod common;

use bytes::Bytes;
use common::*;
use fairway::pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

/// The queue holding the jobs that must survive. Random names never hit it.
const VAULT: &str = "vault-7c1f9e";
/// A queue the storm may write to freely.
const SCRATCH: &str = "scratch";
/// How long the storm lasts.
const STORM: Duration = Duration::from_secs(6);
/// Garbage callers running at once.
const CALLERS: usize = 6;

const PATHS: &[&str] = &[
    "/fairway.v1.JobService/Enqueue",
    "/fairway.v1.JobService/EnqueueBatch",
    "/fairway.v1.JobService/GetJob",
    "/fairway.v1.JobService/CancelJob",
    "/fairway.v1.JobService/EnqueueStream",
    "/fairway.v1.WorkerService/Work",
    "/fairway.v1.WorkerService/Lease",
    "/fairway.v1.WorkerService/Ack",
    "/fairway.v1.WorkerService/Nack",
    "/fairway.v1.WorkerService/ExtendLease",
    "/fairway.v1.AdminService/CreateQueue",
    "/fairway.v1.AdminService/GetQueue",
    "/fairway.v1.AdminService/ListQueues",
    "/fairway.v1.AdminService/UpdateQueue",
    "/fairway.v1.AdminService/DeleteQueue",
    "/fairway.v1.AdminService/PauseQueue",
    "/fairway.v1.AdminService/ResumeQueue",
    "/fairway.v1.AdminService/GetQueueStats",
    "/fairway.v1.AdminService/ListJobs",
    "/fairway.v1.AdminService/RedriveDeadLetters",
    "/fairway.v1.AdminService/PurgeQueue",
    "/fairway.v1.AdminService/SetTenantPolicy",
    "/fairway.v1.AdminService/LiftQuarantine",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

fn bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| rng.random()).collect()
}

/// A string with the characters validation finds interesting.
fn text(rng: &mut StdRng) -> String {
    const POOL: &[&str] = &["a", "z", "0", "-", ".", "_", "A", " ", "/", "\0", "é", "\u{202e}", "ff", "%", "\n"];
    let n = match rng.random_range(0..10) {
        0 => rng.random_range(100..3000),
        1 => 0,
        _ => rng.random_range(1..40),
    };
    (0..n).map(|_| POOL[rng.random_range(0..POOL.len())]).collect()
}

fn dur(rng: &mut StdRng) -> Option<prost_types::Duration> {
    rng.random_bool(0.7).then(|| prost_types::Duration {
        seconds: match rng.random_range(0..4) {
            0 => rng.random(),
            1 => -rng.random_range(0..10),
            _ => rng.random_range(0..100),
        },
        nanos: if rng.random_bool(0.8) { rng.random_range(0..1_000_000_000) } else { rng.random() },
    })
}

/// A gRPC length-prefixed frame; `flag` 1 claims compression.
fn frame(flag: u8, declared: u32, body: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(5 + body.len());
    b.push(flag);
    b.extend_from_slice(&declared.to_be_bytes());
    b.extend_from_slice(body);
    b.into()
}

/// One malformed or random call over raw HTTP/2. Returns false when the
/// connection is gone and a new one is needed.
async fn raw_call(rng: &mut StdRng, client: &mut h2::client::SendRequest<Bytes>, addr: SocketAddr) -> bool {
    let path = if rng.random_ratio(1, 12) {
        format!("/{}/{}", rng.random_range(0..1000u32), rng.random_range(0..1000u32))
    } else {
        PATHS[rng.random_range(0..PATHS.len())].to_string()
    };
    let content_type = match rng.random_range(0..12) {
        0 => Some("text/plain"),
        1 => Some("application/json"),
        2 => None,
        3 => Some("application/grpc+json"),
        _ => Some("application/grpc"),
    };
    let method = if rng.random_ratio(1, 12) { "GET" } else { "POST" };
    let mut req = http::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if rng.random_bool(0.8) {
        req = req.header("te", "trailers");
    }
    match rng.random_range(0..10) {
        0 => req = req.header("grpc-encoding", "gzip"),
        1 => req = req.header("grpc-timeout", ["1n", "xx", "99999999999H", "5S"][rng.random_range(0..4)]),
        2 => req = req.header("traceparent", "00-zz-zz-zz"),
        _ => {}
    }
    let Ok(req) = req.body(()) else { return true };
    let client = match client.clone().ready().await {
        Ok(c) => c,
        Err(_) => return false,
    };
    let mut client = client;
    let Ok((response, mut body)) = client.send_request(req, false) else { return false };
    let random = bytes(rng, 512);
    let chunks: Vec<Bytes> = match rng.random_range(0..9) {
        // Random bytes as a well-framed message.
        0..=2 => vec![frame(0, random.len() as u32, &random)],
        // Raw bytes, no framing.
        3 => vec![random.into()],
        // Claims compression nobody negotiated.
        4 => vec![frame(1, random.len() as u32, &random)],
        // Declares far more than it sends (past the message limit, too).
        5 => vec![frame(0, [u32::MAX, 64 << 20, 1 << 30][rng.random_range(0..3)], &random)],
        // Several messages, split across DATA frames at odd places.
        6 => {
            let mut all = Vec::new();
            for _ in 0..rng.random_range(1..5) {
                let m = bytes(rng, 64);
                all.extend_from_slice(&frame(0, m.len() as u32, &m));
            }
            all.chunks(rng.random_range(1..7)).map(Bytes::copy_from_slice).collect()
        }
        // A declared length that is a bit short or long.
        7 => vec![frame(0, (random.len() as u32).wrapping_add(rng.random_range(0..3)).wrapping_sub(1), &random)],
        _ => vec![],
    };
    let reset_midway = rng.random_ratio(1, 5);
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        let last = i + 1 == n && !reset_midway;
        if body.send_data(c, last).is_err() {
            return true;
        }
    }
    if reset_midway {
        body.send_reset(h2::Reason::CANCEL);
        return true;
    }
    if n == 0 {
        let _ = body.send_data(Bytes::new(), true);
    }
    // Read whatever comes back, briefly; streams may never end.
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        if let Ok(resp) = response.await {
            let mut recv = resp.into_body();
            while let Some(Ok(d)) = recv.data().await {
                let _ = recv.flow_control().release_capacity(d.len());
            }
            let _ = recv.trailers().await;
        }
    })
    .await;
    true
}

async fn h2_connect(addr: SocketAddr) -> Option<h2::client::SendRequest<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (client, conn) = h2::client::handshake(tcp).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(client)
}

/// Raw HTTP/2 garbage until `until`.
async fn raw_storm(seed: u64, addr: SocketAddr, until: Instant) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut calls = 0;
    let mut client = h2_connect(addr).await.expect("h2 connect");
    while Instant::now() < until {
        if !raw_call(&mut rng, &mut client, addr).await {
            client = h2_connect(addr).await.expect("h2 reconnect");
        }
        calls += 1;
    }
    calls
}

/// Raw TCP junk: random bytes, a preface then junk frames, HTTP/1, or a
/// connection opened and dropped mid-handshake.
async fn tcp_junk(seed: u64, addr: SocketAddr, until: Instant) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0;
    while Instant::now() < until {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { continue };
        let junk = bytes(&mut rng, 256);
        let out: Vec<u8> = match rng.random_range(0..4) {
            0 => junk,
            1 => [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(), &junk].concat(),
            2 => b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            // A SETTINGS frame claiming an absurd length.
            _ => [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(), &[0xff, 0xff, 0xff, 4, 0, 0, 0, 0, 0]].concat(),
        };
        let _ = s.write_all(&out).await;
        if rng.random_bool(0.5) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
        }
        drop(s);
        n += 1;
    }
    n
}

/// Real messages full of random values, on real clients. Calls that could
/// change the vault only ever name other queues or carry wrong leases.
async fn typed_storm(seed: u64, s: &TestServer, jobs_in_vault: Vec<String>, until: Instant) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let ch = s.fresh_channel().await;
    let mut jobs = pb::job_service_client::JobServiceClient::new(ch.clone());
    let mut workers = pb::worker_service_client::WorkerServiceClient::new(ch.clone());
    let mut admin = pb::admin_service_client::AdminServiceClient::new(ch.clone());
    let mut n = 0;
    while Instant::now() < until {
        let other = if rng.random_bool(0.5) { SCRATCH.to_string() } else { text(&mut rng) };
        let vault_id = jobs_in_vault[rng.random_range(0..jobs_in_vault.len())].clone();
        let wrong_lease = hex::encode(rng.random::<[u8; 16]>());
        let _ = match rng.random_range(0..14) {
            0 => {
                let r = pb::EnqueueRequest {
                    queue: other,
                    tenant: text(&mut rng),
                    environment: text(&mut rng),
                    payload: bytes(&mut rng, 2048).into(),
                    headers: (0..rng.random_range(0..4)).map(|_| (text(&mut rng), text(&mut rng))).collect(),
                    priority: rng.random(),
                    schedule: dur(&mut rng).map(pb::enqueue_request::Schedule::Delay),
                    dedup_key: text(&mut rng),
                    max_attempts: rng.random(),
                    lease_duration: dur(&mut rng),
                    traceparent: text(&mut rng),
                };
                jobs.enqueue(r).await.map(|_| ())
            }
            1 => jobs.get_job(pb::GetJobRequest { queue: VAULT.into(), job_id: text(&mut rng) }).await.map(|_| ()),
            2 => jobs.cancel_job(pb::CancelJobRequest { queue: other, job_id: vault_id }).await.map(|_| ()),
            3 => workers
                .ack(pb::AckRequest { queue: VAULT.into(), job_id: vault_id, lease_id: wrong_lease })
                .await
                .map(|_| ()),
            4 => workers
                .nack(pb::NackRequest {
                    queue: VAULT.into(),
                    job_id: vault_id,
                    lease_id: if rng.random_bool(0.5) { wrong_lease } else { text(&mut rng) },
                    error: text(&mut rng),
                    retry_after: dur(&mut rng),
                    dead: rng.random(),
                })
                .await
                .map(|_| ()),
            5 => workers
                .extend_lease(pb::ExtendLeaseRequest {
                    queue: VAULT.into(),
                    job_id: vault_id,
                    lease_id: wrong_lease,
                    lease_duration: dur(&mut rng),
                })
                .await
                .map(|_| ()),
            6 => workers
                .lease(pb::LeaseRequest {
                    queues: vec![other],
                    max_jobs: rng.random_range(0..20_000),
                    wait: Some(prost_types::Duration { seconds: 0, nanos: rng.random_range(0..50_000_000) }),
                    lease_duration: dur(&mut rng),
                    worker_id: text(&mut rng),
                    worker_version: text(&mut rng),
                })
                .await
                .map(|_| ()),
            7 => admin
                .list_jobs(pb::ListJobsRequest {
                    queue: VAULT.into(),
                    state: rng.random_range(-2..7),
                    tenant: text(&mut rng),
                    environment: text(&mut rng),
                    page_size: rng.random(),
                    page_token: if rng.random_bool(0.5) { hex::encode(bytes(&mut rng, 40)) } else { text(&mut rng) },
                })
                .await
                .map(|_| ()),
            8 => admin
                .create_queue(pb::CreateQueueRequest {
                    name: text(&mut rng),
                    config: Some(pb::QueueConfig {
                        default_lease_duration: dur(&mut rng),
                        max_attempts: rng.random(),
                        backoff_initial: dur(&mut rng),
                        backoff_max: dur(&mut rng),
                        dedup_window: dur(&mut rng),
                        max_payload_bytes: rng.random(),
                        weight: rng.random(),
                        ..Default::default()
                    }),
                })
                .await
                .map(|_| ()),
            9 => admin
                .set_tenant_policy(pb::SetTenantPolicyRequest {
                    queue: other,
                    tenant: text(&mut rng),
                    weight: rng.random(),
                    max_in_flight: rng.random(),
                    enqueue_rate: f64::from_bits(rng.random()),
                    enqueue_burst: rng.random(),
                    environment: text(&mut rng),
                })
                .await
                .map(|_| ()),
            10 => admin
                .purge_queue(pb::PurgeQueueRequest { queue: other, state: rng.random(), ..Default::default() })
                .await
                .map(|_| ()),
            11 => {
                // A producer stream dropped mid-flight.
                let reqs: Vec<pb::EnqueueRequest> = (0..rng.random_range(1..50))
                    .map(|i| pb::EnqueueRequest {
                        queue: if i % 3 == 0 { text(&mut rng) } else { SCRATCH.into() },
                        payload: bytes(&mut rng, 64).into(),
                        ..Default::default()
                    })
                    .collect();
                let stream = tokio_stream::iter(reqs).chain(tokio_stream::pending());
                if let Ok(resp) = jobs.enqueue_stream(stream).await {
                    let mut resp = resp.into_inner();
                    let _ = tokio::time::timeout(Duration::from_millis(20), resp.next()).await;
                }
                Ok(())
            }
            12 => {
                // A worker that leases from the scratch queue and vanishes.
                let sub = pb::Subscribe {
                    queues: vec![SCRATCH.into()],
                    worker_id: text(&mut rng),
                    max_in_flight: rng.random_range(0..64),
                    ..Default::default()
                };
                let first = pb::WorkRequest { request: Some(pb::work_request::Request::Subscribe(sub)) };
                let junk = pb::WorkRequest {
                    request: Some(pb::work_request::Request::Ack(pb::AckRequest {
                        queue: VAULT.into(),
                        job_id: vault_id,
                        lease_id: text(&mut rng),
                    })),
                };
                let stream = tokio_stream::iter(vec![first, junk]).chain(tokio_stream::pending());
                if let Ok(resp) = workers.work(stream).await {
                    let mut resp = resp.into_inner();
                    let _ = tokio::time::timeout(Duration::from_millis(20), resp.next()).await;
                }
                Ok(())
            }
            _ => admin.get_queue_stats(pb::GetQueueStatsRequest { queue: text(&mut rng) }).await.map(|_| ()),
        };
        n += 1;
    }
    n
}

/// What must not change: every job as GetJob shows it, each state's
/// listing, and the counters.
#[derive(Debug, PartialEq)]
struct Vault {
    jobs: BTreeMap<String, pb::Job>,
    listings: BTreeMap<i32, Vec<String>>,
    counts: [u64; 11],
    groups: Vec<(String, String, u64, u64)>,
}

async fn vault_snapshot(s: &TestServer, ids: &[String]) -> Vault {
    let mut jobs_client = pb::job_service_client::JobServiceClient::new(s.fresh_channel().await);
    let mut jobs = BTreeMap::new();
    for id in ids {
        let j = jobs_client
            .get_job(pb::GetJobRequest { queue: VAULT.into(), job_id: id.clone() })
            .await
            .unwrap_or_else(|e| panic!("job {id} must still exist: {e}"))
            .into_inner();
        jobs.insert(id.clone(), j);
    }
    let mut admin = pb::admin_service_client::AdminServiceClient::new(s.fresh_channel().await);
    let mut listings = BTreeMap::new();
    for state in [pb::JobState::Scheduled, pb::JobState::Ready, pb::JobState::Leased, pb::JobState::Dead] {
        let r = admin
            .list_jobs(pb::ListJobsRequest {
                queue: VAULT.into(),
                state: state as i32,
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        assert!(r.next_page_token.is_empty());
        let mut listed: Vec<String> = r.jobs.into_iter().map(|j| j.id).collect();
        listed.sort();
        listings.insert(state as i32, listed);
    }
    let st = admin.get_queue_stats(pb::GetQueueStatsRequest { queue: VAULT.into() }).await.expect("stats").into_inner();
    let mut groups: Vec<_> =
        st.groups.iter().map(|g| (g.tenant.clone(), g.environment.clone(), g.ready, g.leased)).collect();
    groups.sort();
    Vault {
        jobs,
        listings,
        counts: [
            st.scheduled,
            st.ready,
            st.leased,
            st.dead,
            st.enqueued_total,
            st.acked_total,
            st.nacked_total,
            st.expired_total,
            st.deduplicated_total,
            st.dead_lettered_total,
            st.leased_total,
        ],
        groups,
    }
}

/// Jobs in every state: ready (various tenants, priorities, headers and
/// payloads), scheduled an hour out, leased for an hour, and dead.
async fn fill_vault(s: &TestServer, rng: &mut StdRng) -> (Vec<String>, Vec<pb::Delivery>) {
    s.create_queue(VAULT, pb::QueueConfig { max_payload_bytes: 64 * 1024, ..Default::default() }).await;
    s.create_queue(SCRATCH, pb::QueueConfig::default()).await;
    let mut ids = Vec::new();
    for i in 0..45 {
        let payload: Vec<u8> = (0..rng.random_range(0..8192)).map(|_| rng.random()).collect();
        let r = pb::EnqueueRequest {
            queue: VAULT.into(),
            tenant: format!("t{}", i % 3),
            environment: ["prod", "staging"][i % 2].into(),
            payload: payload.into(),
            headers: (0..i % 4).map(|h| (format!("h{h}"), format!("value {i}/{h} é"))).collect(),
            priority: (i as i32 % 5) - 2,
            schedule: (i >= 40).then_some(pb::enqueue_request::Schedule::Delay(common::dur(Duration::from_secs(3600)))),
            dedup_key: if i % 5 == 0 { format!("key-{i}") } else { String::new() },
            ..Default::default()
        };
        ids.push(s.enqueue(r).await.job_id);
    }
    let held = s.lease(VAULT, 5, Duration::from_secs(1), Some(Duration::from_secs(3600))).await;
    assert_eq!(held.len(), 5);
    for d in s.lease(VAULT, 3, Duration::from_secs(1), None).await {
        let job = d.job.expect("job");
        s.workers()
            .nack(pb::NackRequest {
                queue: VAULT.into(),
                job_id: job.id,
                lease_id: d.lease_id,
                error: "poison".into(),
                dead: true,
                ..Default::default()
            })
            .await
            .expect("nack to dead");
    }
    (ids, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_path_leaves_the_broker_serving_and_the_jobs_intact() {
    let s = TestServer::start().await;
    let mut rng = StdRng::seed_from_u64(0x0068_6f73_7469_6c65);
    let (ids, held) = fill_vault(&s, &mut rng).await;
    let before = vault_snapshot(&s, &ids).await;
    assert_eq!(before.counts[..4], [5, 32, 5, 3], "scheduled, ready, leased, dead before the storm");

    let until = Instant::now() + STORM;
    let addr = s.addr;
    let mut tasks = Vec::new();
    for i in 0..CALLERS as u64 {
        tasks.push(tokio::spawn(raw_storm(rng.random::<u64>() ^ i, addr, until)));
    }
    tasks.push(tokio::spawn(tcp_junk(rng.random(), addr, until)));
    // Messages past the wire limit, and one just under the header limit.
    let big = async {
        let mut jobs = s.jobs();
        for _ in 0..2 {
            let r = pb::EnqueueRequest {
                queue: VAULT.into(),
                payload: vec![0u8; fairway::conn_limits::MAX_MESSAGE + 10].into(),
                ..Default::default()
            };
            let st = jobs.enqueue(r).await.expect_err("oversized");
            assert!(matches!(st.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted), "{st:?}");
        }
    };
    let typed = typed_storm(rng.random(), &s, ids.clone(), until);
    let (typed_calls, ()) = tokio::join!(typed, big);
    let mut raw_calls = 0;
    for t in tasks {
        raw_calls += t.await.expect("storm task");
    }
    eprintln!("storm: {raw_calls} raw calls and connections, {typed_calls} typed calls");
    assert!(raw_calls > 100 && typed_calls > 100, "the storm was too weak to mean anything");

    s.assert_serving().await;
    let after = vault_snapshot(&s, &ids).await;
    for (id, job) in &before.jobs {
        assert_eq!(after.jobs.get(id), Some(job), "job {id} changed");
    }
    assert_eq!(after, before);

    // The leases held through the storm still settle.
    for d in &held {
        s.ack(VAULT, d).await.expect("a held lease still acks");
    }
    let st = s.stats(VAULT).await;
    assert_eq!((st.leased, st.acked_total), (0, before.counts[5] + 5));
    s.stop().await;
}
