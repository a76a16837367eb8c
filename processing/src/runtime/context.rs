//! What the runtime runs a job from: the runtime settings of its definition ([`RunSpec`]),
//! and for a running job, the dataflow with the broker client, the worker pool and the
//! clock it runs on ([`JobContext`]), the same through every restart.

use std::sync::Arc;

use sluice_broker::clock::Clock;
use sluice_broker::InProcessClient;

use crate::runtime::pool::WorkerPool;

/// What a job's runtime needs from its definition.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub name: String,
    pub input: String,
    pub commit_interval_ms: u64,
    pub watermark_bound_ms: i64,
    pub idle_timeout_ms: i64,
    /// Changelog records a key group may write beyond twice its live state before its
    /// changelogs are rewritten ([`REWRITE_SLACK_RECORDS`](crate::runtime::REWRITE_SLACK_RECORDS)).
    pub changelog_slack_records: u64,
    /// Identifies the job's definition; a checkpoint made by another one is refused (empty:
    /// not checked).
    pub fingerprint: String,
}

impl RunSpec {
    pub fn transactional_id(&self) -> String {
        format!("sluice-job-{}", self.name)
    }

    /// The consumer group whose committed offsets are the job's source positions (so
    /// `sluice groups describe` shows its lag like any consumer's).
    pub fn group(&self) -> String {
        format!("sluice-job-{}", self.name)
    }
}

/// A job as its driver runs it.
pub(crate) struct JobContext<D> {
    pub(crate) spec: RunSpec,
    pub(crate) dataflow: Arc<D>,
    pub(crate) client: InProcessClient,
    pub(crate) pool: Arc<WorkerPool>,
    /// The broker's clock: every time the job acts on (commit intervals, idle partitions,
    /// backoff, changelog timestamps) is read from it, so tests can drive it by hand.
    pub(crate) clock: Arc<dyn Clock>,
}
