//! The terminal client: every command except `serve` and `bench` talks gRPC
//! to a running broker.
//!
//! One file per command family; `format.rs` holds the pure text helpers
//! (tables, ages, times) they share, so layout is unit-tested without a
//! broker.

mod cluster;
mod confirm;
mod dead;
mod enqueue;
mod format;
mod health;
mod jobs;
mod listing;
mod quarantine;
mod queue;
mod remote;
mod stats;
mod tenant;
mod workers;

pub use cluster::{cluster, ClusterCmd};
pub use dead::{dead, DeadCmd};
pub use enqueue::{enqueue, EnqueueArgs};
pub use fairway::client::Conn;
pub use health::health;
pub use jobs::{jobs, JobsCmd};
pub use queue::{queue, QueueCmd};
pub use remote::Remote;
pub use stats::{stats, StatsArgs};
pub use tenant::{tenant, TenantCmd};
pub use workers::{workers, WorkersArgs};

use std::io::IsTerminal;
use std::time::Duration;

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn d(x: Duration) -> prost_types::Duration {
    fairway::broker::view::duration(x)
}

/// Where output goes and how much of it fits.
#[derive(Debug, Clone, Copy)]
struct Screen {
    /// Stdout is a terminal (not a pipe or file).
    tty: bool,
    /// Columns and rows, when stdout is a terminal that reports them.
    size: Option<(usize, usize)>,
}

impl Screen {
    fn stdout() -> Screen {
        let stdout = std::io::stdout();
        let tty = stdout.is_terminal();
        let size = tty
            .then(|| terminal_size::terminal_size_of(&stdout))
            .flatten()
            .map(|(w, h)| (usize::from(w.0), usize::from(h.0)));
        Screen { tty, size }
    }

    fn width(&self) -> Option<usize> {
        self.size.map(|(w, _)| w)
    }

    fn height(&self) -> Option<usize> {
        self.size.map(|(_, h)| h)
    }
}

/// The text main.rs prints for an error, so a watch loop that keeps going
/// after one shows the same words.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    match e.downcast_ref::<tonic::Status>() {
        // A transport failure says what went wrong only in its causes (e.g.
        // the broker wanted a client certificate).
        Some(status) => match std::error::Error::source(status) {
            Some(cause) => {
                format!("error: {:?}: {}: {}", status.code(), status.message(), fairway::client::chain(cause))
            }
            None => format!("error: {:?}: {}", status.code(), status.message()),
        },
        None => format!("error: {e}"),
    }
}

/// `r`, except that a closed stdout (`fairway ... | head`) counts as done:
/// the reader has all it wanted.
fn ok_if_closed(r: CliResult) -> CliResult {
    match r {
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            Ok(())
        }
        r => r,
    }
}

/// Writes `text` to stdout now. Unlike `print!` it returns a closed pipe as
/// an error instead of panicking; see [`ok_if_closed`].
fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}
