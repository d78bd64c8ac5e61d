//! Logging (`tracing` with `RUST_LOG` filters, as text or JSON lines) and
//! OpenTelemetry trace export.

use crate::api::trace::Tracer;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::time::Duration;
use tracing_subscriber::{fmt, EnvFilter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber (once; later calls are no-ops). Logs go to
/// stderr so stdout stays for command output.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = use_colour(std::io::IsTerminal::is_terminal(&std::io::stderr()), std::env::var_os("NO_COLOR"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Colour codes only on a terminal, and not even there when `NO_COLOR` is
/// set to anything but the empty string (no-color.org): in a file or a pipe
/// they are noise.
fn use_colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// How long shutdown waits for the last spans to reach the collector.
const EXPORT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint:?}: {reason}")]
pub struct TraceExportError {
    /// The configured `--otlp-endpoint`, so the operator sees what to fix.
    endpoint: String,
    /// What the exporter refused.
    reason: String,
}

/// OTLP/gRPC trace export, running while the server runs.
pub struct TraceExport {
    /// Owns the batch span processor; shut down to flush it.
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// Starts exporting to an OTLP/gRPC collector: spans are batched and sent
    /// from the SDK's own thread, never from request handlers. Must run
    /// inside the tokio runtime, where the exporter's tonic client lives.
    pub fn start(endpoint: &str) -> Result<(TraceExport, Tracer), TraceExportError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| TraceExportError { endpoint: endpoint.to_string(), reason: e.to_string() })?;
        let provider = SdkTracerProvider::builder()
            .with_resource(Resource::builder().with_service_name("fairway").build())
            .with_batch_exporter(exporter)
            .build();
        let scope = InstrumentationScope::builder("fairway").with_version(env!("CARGO_PKG_VERSION")).build();
        let tracer = Tracer::new(provider.tracer_with_scope(scope));
        tracing::info!(endpoint, "exporting traces over OTLP");
        Ok((TraceExport { provider }, tracer))
    }

    /// Sends the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        // Blocking: it waits on the SDK's export thread, which in turn needs
        // the runtime to drive the tonic client.
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(EXPORT_SHUTDOWN_TIMEOUT)).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "trace export did not shut down cleanly"),
            Err(e) => tracing::warn!(error = %e, "trace export shutdown failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".into())), "an empty NO_COLOR does not count");
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None), "a file or a pipe");
    }
}
