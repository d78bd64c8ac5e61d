//! `fairway`: the broker (`serve`) and its terminal client.

use clap::{Parser, Subcommand};
use fairway::{config::ServeConfig, server, telemetry};

/// The terminal client (private to this binary: the library is the broker).
mod cli;
use std::io::Write;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "fairway", version, about = "A durable, fair, multi-tenant job-queue broker")]
struct Args {
    /// Where client commands connect, and with which TLS files and token.
    #[command(flatten)]
    remote: cli::Remote,
    /// What to do.
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the broker.
    Serve(ServeConfig),
    /// Manage queues.
    #[command(subcommand)]
    Queue(cli::QueueCmd),
    /// Tenant policies: weights, in-flight limits, enqueue rates.
    #[command(subcommand)]
    Tenant(cli::TenantCmd),
    /// Live queue figures: every queue, or one in detail; --watch redraws.
    Stats(cli::StatsArgs),
    /// List and inspect jobs.
    #[command(subcommand)]
    Jobs(cli::JobsCmd),
    /// Dead letters: list, redrive or delete them.
    #[command(subcommand)]
    Dead(cli::DeadCmd),
    /// Enqueue one job.
    Enqueue(cli::EnqueueArgs),
    /// The workers connected now, and the jobs they hold.
    Workers(cli::WorkersArgs),
    /// A cluster as the node called sees it: members, the home, partitions.
    #[command(subcommand)]
    Cluster(cli::ClusterCmd),
    /// Check the broker's gRPC health (exit 0 only when SERVING).
    Health {
        /// A service name, e.g. fairway.v1.JobService; empty = the whole broker.
        #[arg(long, default_value = "")]
        service: String,
    },
}

/// Resolves on the first SIGINT/SIGTERM; a second one exits at once.
/// `signals` was registered before the broker started, so no signal is
/// lost (before, or between the first and the second).
async fn shutdown_signal(mut signals: Signals) {
    signals.recv().await;
    tracing::info!("signal received; draining (send another to force exit)");
    tokio::spawn(async move {
        signals.recv().await;
        tracing::warn!("second signal: exiting without draining");
        force_exit(130);
    });
}

/// SIGINT and SIGTERM, as one stream.
struct Signals {
    #[cfg(unix)]
    /// `None` when SIGTERM can't be watched; SIGINT still works.
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals { term: signal(SignalKind::terminate()).ok(), interrupt: signal(SignalKind::interrupt()).ok() }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.term) => {}
                _ = next(&mut self.interrupt) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Ends the process now. Not `std::process::exit`: that runs C++ static
/// destructors while RocksDB is still open (closing it is what draining
/// does), and its background threads then abort the process ("pthread
/// lock: Invalid argument") instead of exiting with `code`. Skipping them
/// loses nothing acknowledged: it is in the WAL, as after a `kill -9`.
fn force_exit(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    #[cfg(unix)]
    // SAFETY: `_exit` has no preconditions; it ends the process without
    // running exit handlers, which is the point.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match args.cmd {
        Cmd::Serve(config) => {
            telemetry::init(config.log_format);
            // Before anything starts: a signal during start-up drains too.
            let signals = Signals::new();
            match server::Listeners::bind(&config).await {
                Ok(listeners) => {
                    // Stable lines on stdout that scripts and tests read.
                    if let Ok(addr) = listeners.grpc.local_addr() {
                        println!("fairway listening on {addr}");
                    }
                    if let Some(addr) = listeners.http.as_ref().and_then(|l| l.local_addr().ok()) {
                        let scheme = if config.tls_cert.is_some() { "https" } else { "http" };
                        println!("fairway metrics and dashboard on {scheme}://{addr}");
                    }
                    let _ = std::io::stdout().flush();
                    server::run(listeners, &config, shutdown_signal(signals)).await.map_err(Into::into)
                }
                Err(e) => Err(e.into()),
            }
        }
        Cmd::Queue(cmd) => cli::queue(&args.remote, cmd).await,
        Cmd::Stats(a) => cli::stats(&args.remote, a).await,
        Cmd::Jobs(cmd) => cli::jobs(&args.remote, cmd).await,
        Cmd::Dead(cmd) => cli::dead(&args.remote, cmd).await,
        Cmd::Enqueue(a) => cli::enqueue(&args.remote, a).await,
        Cmd::Workers(a) => cli::workers(&args.remote, a).await,
        Cmd::Tenant(cmd) => cli::tenant(&args.remote, cmd).await,
        Cmd::Cluster(cmd) => cli::cluster(&args.remote, cmd).await,
        Cmd::Health { service } => cli::health(&args.remote, service).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", cli::describe(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        // Catches clashing names, e.g. a global client flag shadowing one of
        // `serve`'s, which release builds would not report.
        Args::command().debug_assert();
    }

    #[test]
    fn serve_and_client_tls_flags_do_not_mix() {
        let a = Args::try_parse_from(["fairway", "serve", "--tls-cert", "s.pem", "--tls-key", "s.key"]).unwrap();
        let Cmd::Serve(c) = a.cmd else { panic!("serve") };
        assert_eq!(c.tls_cert.as_deref(), Some(std::path::Path::new("s.pem")));
        assert!(a.remote.client_cert.is_none());
        let a = Args::try_parse_from(["fairway", "queue", "list", "--client-cert", "c.pem", "--client-key", "c.key"])
            .unwrap();
        assert_eq!(a.remote.client_cert.as_deref(), Some(std::path::Path::new("c.pem")));
    }
}
