//! `fairway health`: the broker's gRPC health, for scripts and container
//! health checks.

use super::{CliResult, Remote};

/// Exits non-zero unless the broker (or the named service) is SERVING: fit
/// for a container HEALTHCHECK.
pub async fn health(remote: &Remote, service: String) -> CliResult {
    use tonic_health::pb::HealthCheckRequest;
    let mut client = remote.connect().await?.health();
    let r = client.check(HealthCheckRequest { service }).await?.into_inner();
    let status = tonic_health::pb::health_check_response::ServingStatus::try_from(r.status)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| r.status.to_string());
    println!("{status}");
    if status != "SERVING" {
        return Err(format!("broker is {status}").into());
    }
    Ok(())
}
