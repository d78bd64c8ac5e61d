//! Long admin operations (redrive of dead letters, purge), done a chunk per
//! writer turn so a huge one never stalls enqueues or leases.

use super::engine::Engine;
use super::reply_after;
use super::{GroupScope, Redrive, Reply};
use crate::error::{BrokerError, Result};
use crate::model::JobState;
use crate::storage::keys;
use crate::storage::Entry;

/// Most index entries a redrive or purge handles per turn, so a huge one
/// never stalls other work.
const TASK_CHUNK: usize = 2_000;

/// A long admin operation, done a chunk per turn.
pub(super) enum Task {
    Redrive {
        queue: String,
        generation: u64,
        prefix: Vec<u8>,
        env: Option<String>,
        remaining: u64,
        done: u64,
        resume: Option<Vec<u8>>,
        reply: Reply<u64>,
    },
    Purge {
        queue: String,
        generation: u64,
        /// Index tags still to sweep (S, R, X).
        tags: Vec<u8>,
        /// Only jobs of these tenants and environments.
        scope: GroupScope,
        resume: Option<Vec<u8>>,
        done: u64,
        reply: Reply<u64>,
    },
}

impl Task {
    pub(super) fn fail(self, e: BrokerError) {
        let reply = match self {
            Task::Redrive { reply, .. } | Task::Purge { reply, .. } => reply,
        };
        let _ = reply.send(Err(e));
    }
}

impl Engine {
    pub(super) fn start_redrive(&mut self, queue: String, which: Redrive, reply: Reply<u64>) {
        let generation = or_reply!(self.queue_mut(&queue), reply).generation;
        let (GroupScope { tenant, environment: env }, limit) = match which {
            Redrive::Matching { scope, limit } => (scope, limit),
            Redrive::Job(id) => return self.redrive_job(&queue, id, reply),
        };
        let (prefix, env) = match (&tenant, &env) {
            (Some(t), Some(e)) => (keys::group_prefix(keys::DEAD, t, e), None),
            (Some(t), None) => (keys::tenant_prefix(keys::DEAD, t), None),
            (None, e) => (vec![keys::DEAD], e.clone()),
        };
        let remaining = if limit == 0 { u64::MAX } else { limit };
        self.tasks.push_back(Task::Redrive { queue, generation, prefix, env, remaining, done: 0, resume: None, reply });
    }

    pub(super) fn start_purge(&mut self, queue: String, state: Option<JobState>, scope: GroupScope, reply: Reply<u64>) {
        let generation = or_reply!(self.queue_mut(&queue), reply).generation;
        let tags = match state {
            None => vec![keys::SCHEDULED, keys::READY, keys::DEAD],
            Some(JobState::Scheduled) => vec![keys::SCHEDULED],
            Some(JobState::Ready) => vec![keys::READY],
            Some(JobState::Dead) => vec![keys::DEAD],
            Some(JobState::Leased) => {
                let _ = reply.send(Err(BrokerError::FailedPrecondition(
                    "leased jobs can't be purged: they end with ack or nack, or when their lease expires".into(),
                )));
                return;
            }
        };
        self.tasks.push_back(Task::Purge { queue, generation, tags, scope, resume: None, done: 0, reply });
    }

    /// One chunk of each long task.
    pub(super) fn run_tasks(&mut self) {
        for _ in 0..self.tasks.len() {
            let Some(task) = self.tasks.pop_front() else { break };
            if let Some(task) = self.step_task(task) {
                self.tasks.push_back(task);
            }
        }
    }

    fn step_task(&mut self, task: Task) -> Option<Task> {
        let (queue, generation) = match &task {
            Task::Redrive { queue, generation, .. } | Task::Purge { queue, generation, .. } => {
                (queue.clone(), *generation)
            }
        };
        if self.queues.get(&queue).map(|q| q.generation) != Some(generation) {
            let reply = match task {
                Task::Redrive { reply, .. } | Task::Purge { reply, .. } => reply,
            };
            let _ = reply.send(Err(BrokerError::QueueNotFound(queue)));
            return None;
        }
        match task {
            Task::Redrive { queue, generation, prefix, env, mut remaining, mut done, resume, reply } => {
                let want = (remaining.min(TASK_CHUNK as u64)) as usize;
                let (entries, more) = or_reply!(self.scan_index(&queue, &prefix, resume.as_deref(), want), reply, None);
                let last = entries.last().map(|(k, _)| k.clone());
                for (k, _) in entries {
                    let Some((_, e)) = keys::group_of(&k) else { continue };
                    if env.as_deref().is_some_and(|want| want != e) {
                        continue;
                    }
                    let Some(id) = keys::trailing_id(&k) else { continue };
                    match self.redrive_one(&queue, id) {
                        Ok(true) => {
                            done += 1;
                            remaining -= 1;
                        }
                        Ok(false) => {}
                        Err(e) => self.w.poison(e),
                    }
                }
                if more && remaining > 0 {
                    return Some(Task::Redrive {
                        queue,
                        generation,
                        prefix,
                        env,
                        remaining,
                        done,
                        resume: last,
                        reply,
                    });
                }
                if done > 0 {
                    tracing::info!(queue = %queue, redriven = done, "dead letters redriven");
                }
                self.w.after(reply_after(reply, done));
                None
            }
            Task::Purge { queue, generation, mut tags, scope, resume, mut done, reply } => {
                let Some(&tag) = tags.first() else {
                    self.w.after(reply_after(reply, done));
                    return None;
                };
                let prefix = purge_prefix(tag, &scope);
                let (entries, more) =
                    or_reply!(self.scan_index(&queue, &prefix, resume.as_deref(), TASK_CHUNK), reply, None);
                let last = entries.last().map(|(k, _)| k.clone());
                for (k, _) in entries {
                    let id = if tag == keys::SCHEDULED {
                        keys::scheduled_parts(&k).map(|(_, id)| id)
                    } else {
                        keys::trailing_id(&k)
                    };
                    let Some(id) = id else { continue };
                    match self.purge_one(&queue, id, &scope) {
                        Ok(true) => done += 1,
                        Ok(false) => {}
                        Err(e) => self.w.poison(e),
                    }
                }
                let resume = if more {
                    last
                } else {
                    tags.remove(0);
                    None
                };
                if tags.is_empty() {
                    tracing::info!(queue = %queue, purged = done, "queue purged");
                    self.w.after(reply_after(reply, done));
                    return None;
                }
                Some(Task::Purge { queue, generation, tags, scope, resume, done, reply })
            }
        }
    }

    /// Up to `limit` committed index entries under `prefix`, after `resume`.
    fn scan_index(
        &self,
        queue: &str,
        prefix: &[u8],
        resume: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool)> {
        let start = resume.map(keys::successor).unwrap_or_else(|| prefix.to_vec());
        let scan = self.w.store.scan(queue, &start, &keys::prefix_end(prefix), limit)?;
        Ok((scan.entries, scan.more))
    }
}

/// The part of index `tag` a purge of `scope` sweeps: the ready and dead
/// indexes are keyed by tenant and environment, so a tenant's share is one
/// key range; the schedule is keyed by time, so it is swept whole and each
/// job checked.
fn purge_prefix(tag: u8, scope: &GroupScope) -> Vec<u8> {
    match (tag, &scope.tenant, &scope.environment) {
        (keys::READY | keys::DEAD, Some(t), Some(e)) => keys::group_prefix(tag, t, e),
        (keys::READY | keys::DEAD, Some(t), None) => keys::tenant_prefix(tag, t),
        _ => vec![tag],
    }
}
