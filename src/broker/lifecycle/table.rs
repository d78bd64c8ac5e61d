//! The lifecycle as a table: what each event does to a job in each state.
//! It is the specification the transitions are tested against
//! (`table_tests.rs` drives every row through an engine) and the table in
//! `docs/lifecycle.md` (kept equal to [`table_markdown`]).

use crate::model::JobState;

/// Something that happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    /// Its run time comes (a timer).
    Promote,
    /// A worker with room asks for work (dispatch).
    Lease,
    /// Its worker acks it.
    Ack,
    /// Its worker nacks it, attempts left (no retry_after: the queue's backoff).
    Nack,
    /// Its worker nacks it with `dead`, or it was its last attempt.
    NackLast,
    /// Its worker extends its lease.
    Extend,
    /// Its worker gives it back unstarted (Release, or a drain).
    Release,
    /// Its lease runs out (a timer), attempts left.
    Expire,
    /// Its Work stream ends without settling it, attempts left.
    Disconnect,
    /// Its delivery never left the broker (the stream or call was gone).
    Undeliver,
    /// An operator cancels it (CancelJob).
    Cancel,
    /// An operator redrives it (RedriveDeadLetters).
    Redrive,
    /// An operator purges the queue (PurgeQueue).
    Purge,
    /// The circuit breaker quarantines the worker version that leased it,
    /// or that failed it before.
    Quarantine,
}

/// What an event does to a job in a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// It moves to this state.
    To(JobState),
    /// It leaves the broker.
    Gone,
    /// The caller is refused (the job is not in a state the call applies
    /// to); nothing changes.
    Refused,
    /// The event does not concern a job in this state; nothing changes.
    Unchanged,
}

use Event as E;
use JobState::{Dead, Leased, Ready, Scheduled};
use Outcome::{Gone, Refused, To, Unchanged};

/// Every state × event, and what the event does. Attempts: `Nack`,
/// `NackLast`, `Expire` and `Disconnect` spend the lease's attempt;
/// `Release`, `Undeliver` and `Quarantine` do not (a quarantine also gives
/// back attempts its version's failures spent on ready and scheduled jobs);
/// `Redrive` starts the attempts afresh.
pub(super) const TABLE: &[(JobState, Event, Outcome)] = &[
    (Scheduled, E::Promote, To(Ready)),
    (Scheduled, E::Lease, Unchanged),
    (Scheduled, E::Ack, Refused),
    (Scheduled, E::Nack, Refused),
    (Scheduled, E::NackLast, Refused),
    (Scheduled, E::Extend, Refused),
    (Scheduled, E::Release, Refused),
    (Scheduled, E::Expire, Unchanged),
    (Scheduled, E::Disconnect, Unchanged),
    (Scheduled, E::Undeliver, Unchanged),
    (Scheduled, E::Cancel, Gone),
    (Scheduled, E::Redrive, Refused),
    (Scheduled, E::Purge, Gone),
    (Scheduled, E::Quarantine, Unchanged),
    (Ready, E::Promote, Unchanged),
    (Ready, E::Lease, To(Leased)),
    (Ready, E::Ack, Refused),
    (Ready, E::Nack, Refused),
    (Ready, E::NackLast, Refused),
    (Ready, E::Extend, Refused),
    (Ready, E::Release, Refused),
    (Ready, E::Expire, Unchanged),
    (Ready, E::Disconnect, Unchanged),
    (Ready, E::Undeliver, Unchanged),
    (Ready, E::Cancel, Gone),
    (Ready, E::Redrive, Refused),
    (Ready, E::Purge, Gone),
    (Ready, E::Quarantine, Unchanged),
    (Leased, E::Promote, Unchanged),
    (Leased, E::Lease, Unchanged),
    (Leased, E::Ack, Gone),
    (Leased, E::Nack, To(Scheduled)),
    (Leased, E::NackLast, To(Dead)),
    (Leased, E::Extend, To(Leased)),
    (Leased, E::Release, To(Ready)),
    (Leased, E::Expire, To(Ready)),
    (Leased, E::Disconnect, To(Ready)),
    (Leased, E::Undeliver, To(Ready)),
    (Leased, E::Cancel, Refused),
    (Leased, E::Redrive, Refused),
    (Leased, E::Purge, Unchanged),
    (Leased, E::Quarantine, To(Ready)),
    (Dead, E::Promote, Unchanged),
    (Dead, E::Lease, Unchanged),
    (Dead, E::Ack, Refused),
    (Dead, E::Nack, Refused),
    (Dead, E::NackLast, Refused),
    (Dead, E::Extend, Refused),
    (Dead, E::Release, Refused),
    (Dead, E::Expire, Unchanged),
    (Dead, E::Disconnect, Unchanged),
    (Dead, E::Undeliver, Unchanged),
    (Dead, E::Cancel, Gone),
    (Dead, E::Redrive, To(Ready)),
    (Dead, E::Purge, Gone),
    (Dead, E::Quarantine, Unchanged),
];

/// [`TABLE`] as the Markdown table in `docs/lifecycle.md`: a row per state,
/// a column per event.
pub(super) fn table_markdown() -> String {
    const EVENTS: [Event; 14] = [
        E::Promote,
        E::Lease,
        E::Ack,
        E::Nack,
        E::NackLast,
        E::Extend,
        E::Release,
        E::Expire,
        E::Disconnect,
        E::Undeliver,
        E::Cancel,
        E::Redrive,
        E::Purge,
        E::Quarantine,
    ];
    let name = |s: JobState| match s {
        Scheduled => "scheduled",
        Ready => "ready",
        Leased => "leased",
        Dead => "dead",
    };
    let mut out = String::from("| state \\ event |");
    for e in EVENTS {
        out.push_str(&format!(" {} |", event_name(e)));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(EVENTS.len()));
    out.push('\n');
    for state in [Scheduled, Ready, Leased, Dead] {
        out.push_str(&format!("| **{}** |", name(state)));
        for e in EVENTS {
            let cell = match outcome(state, e) {
                Some(To(s)) => format!("→ {}", name(s)),
                Some(Gone) => "gone".to_string(),
                Some(Refused) => "refused".to_string(),
                Some(Unchanged) | None => "·".to_string(),
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

/// The event's name in the docs.
pub(super) fn event_name(e: Event) -> &'static str {
    match e {
        E::Promote => "promote",
        E::Lease => "lease",
        E::Ack => "ack",
        E::Nack => "nack",
        E::NackLast => "nack (last)",
        E::Extend => "extend",
        E::Release => "release",
        E::Expire => "expire",
        E::Disconnect => "disconnect",
        E::Undeliver => "undeliver",
        E::Cancel => "cancel",
        E::Redrive => "redrive",
        E::Purge => "purge",
        E::Quarantine => "quarantine",
    }
}

/// What [`TABLE`] says `event` does to a job in `state`.
pub(super) fn outcome(state: JobState, event: Event) -> Option<Outcome> {
    TABLE.iter().find(|(s, e, _)| *s == state && *e == event).map(|(_, _, o)| *o)
}
