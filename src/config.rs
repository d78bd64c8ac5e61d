//! Settings of `fairway serve`, from flags or `FAIRWAY_*` environment variables.

use crate::storage::Durability;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Where RocksDB keeps the jobs.
    #[arg(long, env = "FAIRWAY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Partitions of a new data dir (fixed when the dir is made; each has
    /// its own writer thread and RocksDB). Unset: what an existing data dir
    /// holds, and one per CPU core for a new one ([`machine_partitions`]).
    /// Asking an existing data dir for another number is refused. See
    /// docs/partitions.md.
    #[arg(long, env = "FAIRWAY_PARTITIONS")]
    pub partitions: Option<u32>,
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long, env = "FAIRWAY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// strict: every acknowledged write is fsynced (group commit).
    /// relaxed: written to the WAL but not fsynced; an OS crash or power loss
    /// can lose the most recent writes (a broker crash cannot).
    #[arg(long, env = "FAIRWAY_DURABILITY", value_enum, default_value = "strict")]
    pub durability: Durability,
    /// Log line format.
    #[arg(long, env = "FAIRWAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::telemetry::LogFormat,
    /// OTLP/gRPC collector to send traces to, e.g. http://127.0.0.1:4317.
    /// Unset: tracing is off and costs nothing.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// HTTP address of `/metrics` (Prometheus) and the dashboard (`/`);
    /// `off` disables it. Port 0 picks a free port.
    #[arg(long, env = "FAIRWAY_METRICS_LISTEN", default_value = "127.0.0.1:9090")]
    pub metrics_listen: Listen,
    /// Request and connection limits of the gRPC transport.
    #[command(flatten)]
    pub limits: crate::conn_limits::ConnLimits,
    /// PEM certificate chain: serves TLS on the gRPC port and the metrics
    /// port. Needs --tls-key.
    #[arg(long, env = "FAIRWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FAIRWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate signed by
    /// one of them (mutual TLS), on both ports. Needs --tls-cert.
    #[arg(long, env = "FAIRWAY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// TOML file of bearer tokens and their roles, queues and tenants.
    /// Unset: every caller may do everything.
    #[arg(long, env = "FAIRWAY_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Runs this broker as a node of the cluster this file declares (see
    /// docs/cluster.md): every partition is a Raft group over the nodes.
    /// Needs --node-id. Unset: a single node, as always.
    #[arg(long, env = "FAIRWAY_CLUSTER", requires = "node_id")]
    pub cluster: Option<PathBuf>,
    /// Which of the cluster file's nodes this is (its `id`).
    #[arg(long, env = "FAIRWAY_NODE_ID", requires = "cluster")]
    pub node_id: Option<String>,
    /// Tests only: the writer waits this long before recovering, so a test
    /// can watch a broker that is still starting. Not a flag.
    #[arg(skip)]
    pub recovery_hold: std::time::Duration,
}

/// Partitions a new data dir gets when `--partitions` is unset: one per CPU
/// core (each partition's writer is one thread, so more than the cores only
/// adds hand-offs), at least 1 and at most what a broker holds. Pure, so
/// the rule is tested apart from the machine it runs on.
pub fn new_dir_partitions(cores: usize) -> u32 {
    cores.clamp(1, crate::partition::placement::MAX_PARTITIONS as usize) as u32
}

/// [`new_dir_partitions`] of this machine's cores (what the scheduler lets
/// this process use, so a container's CPU limit counts).
pub fn machine_partitions() -> u32 {
    new_dir_partitions(std::thread::available_parallelism().map_or(1, usize::from))
}

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        s.parse().map(Listen::At).map_err(|e| format!("{s:?} is not `off` or an address like 127.0.0.1:9090: {e}"))
    }
}

impl ServeConfig {
    /// Settings for tests and embedding: a data dir, any free local port.
    pub fn for_dir(data_dir: impl Into<PathBuf>) -> ServeConfig {
        ServeConfig {
            data_dir: data_dir.into(),
            partitions: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            durability: Durability::Strict,
            log_format: crate::telemetry::LogFormat::Text,
            metrics_listen: Listen::At(SocketAddr::from(([127, 0, 0, 1], 0))),
            otlp_endpoint: None,
            limits: Default::default(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            auth_file: None,
            recovery_hold: std::time::Duration::ZERO,
            cluster: None,
            node_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::placement::MAX_PARTITIONS;

    #[test]
    fn a_new_data_dir_gets_one_partition_per_core_within_bounds() {
        assert_eq!(new_dir_partitions(0), 1, "a machine that reports no cores still gets a partition");
        assert_eq!(new_dir_partitions(1), 1);
        assert_eq!(new_dir_partitions(2), 2);
        assert_eq!(new_dir_partitions(16), 16);
        assert_eq!(new_dir_partitions(100_000), MAX_PARTITIONS);
        assert!((1..=MAX_PARTITIONS).contains(&machine_partitions()));
    }
}
