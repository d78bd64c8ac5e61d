//! The real `fairway` binary as a child process, for tests that kill it,
//! restart it, or read its own RSS and open files from /proc. Included by
//! the tests that need it (`#[path = "common/process.rs"] mod process;`).
#![allow(dead_code)]

use fairway::pb;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// A broker process started from the built binary.
pub struct BrokerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub channel: Channel,
}

impl BrokerProcess {
    /// Starts `fairway serve` on `dir`, listening on `listen` (port 0 = any).
    pub async fn spawn_at(dir: &Path, listen: &str, extra: &[&str]) -> BrokerProcess {
        BrokerProcess::spawn_env(dir, listen, extra, &[]).await
    }

    /// [`spawn_at`](Self::spawn_at) with extra environment variables.
    pub async fn spawn_env(dir: &Path, listen: &str, extra: &[&str], envs: &[(&str, &str)]) -> BrokerProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fairway"));
        cmd.envs(envs.iter().copied());
        cmd.args(["serve", "--listen", listen, "--metrics-listen", "off", "--data-dir"])
            .arg(dir)
            .args(extra)
            // FAIRWAY_TEST_LOG picks the brokers' log filter when debugging a
            // test. openraft's own logs are off by default: it logs every
            // failed call to a killed or cut-off peer, hundreds of MB a run.
            .env("RUST_LOG", std::env::var("FAIRWAY_TEST_LOG").unwrap_or_else(|_| "warn,openraft=off".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // CI runs the guarantees' suites again with 4 partitions.
        if let Ok(n) = std::env::var("FAIRWAY_TEST_PARTITIONS") {
            cmd.env("FAIRWAY_PARTITIONS", n);
        }
        let mut child = cmd.spawn().expect("spawn fairway");
        let stdout = child.stdout.take().expect("stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let mut out = BufReader::new(stdout);
            out.read_line(&mut line).expect("read stdout");
            // Keep draining, so later lines never block the broker.
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
            line
        })
        .await
        .expect("join");
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("fairway listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        BrokerProcess { child, addr, channel }
    }

    pub async fn spawn(dir: &Path) -> BrokerProcess {
        BrokerProcess::spawn_at(dir, "127.0.0.1:0", &[]).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reaps the process.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Sends `signal` (e.g. `-TERM`) through the shell's `kill`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.pid().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {signal} {}: {status:?}", self.pid());
    }

    /// Waits up to `within` for the process to end, and reaps it.
    pub async fn wait_exit(mut self, within: Duration) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + within;
            loop {
                if let Some(s) = self.child.try_wait().expect("try_wait") {
                    return s;
                }
                assert!(Instant::now() < deadline, "broker did not exit within {within:?}");
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .await
        .expect("join")
    }

    /// The overall gRPC health status (SERVING = 1, NOT_SERVING = 2).
    pub async fn health(&self) -> Result<i32, tonic::Status> {
        let mut h = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
        Ok(h.check(req).await?.into_inner().status)
    }

    /// Waits until the broker answers health SERVING.
    pub async fn wait_serving(&self) {
        let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.health().await.ok() == Some(serving) {
                return;
            }
            assert!(Instant::now() < deadline, "broker at {} not SERVING within 15s", self.addr);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident set size of the broker process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// File descriptors the broker process has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).expect("read /proc fd").count()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every job stored in `queue`, by paging ListJobs (every state) to the end.
pub async fn scan_all(channel: &Channel, queue: &str) -> Vec<pb::Job> {
    // A page of 1000 big payloads is far over tonic's 4 MiB default.
    let mut admin =
        pb::admin_service_client::AdminServiceClient::new(channel.clone()).max_decoding_message_size(usize::MAX);
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_jobs(pb::ListJobsRequest {
                queue: queue.into(),
                // Pages of big payloads must stay under the 64 MiB message limit.
                page_size: 100,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list jobs")
            .into_inner();
        out.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Per-state counts of a scan, in the order of `QueueStats`:
/// (scheduled, ready, leased, dead).
pub fn count_states(jobs: &[pb::Job]) -> (u64, u64, u64, u64) {
    let mut c = (0, 0, 0, 0);
    for j in jobs {
        match pb::JobState::try_from(j.state) {
            Ok(pb::JobState::Scheduled) => c.0 += 1,
            Ok(pb::JobState::Ready) => c.1 += 1,
            Ok(pb::JobState::Leased) => c.2 += 1,
            Ok(pb::JobState::Dead) => c.3 += 1,
            other => panic!("job {} in unexpected state {other:?}", j.id),
        }
    }
    c
}
