//! What the runtime runs a job from: the runtime settings of its definition ([`RunSpec`]),
//! and for a running job, the dataflow with the broker client, the worker pool and the
//! clock it runs on ([`JobContext`]), the same through every restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_broker::clock::Clock;
use sluice_broker::InProcessClient;

use crate::runtime::pool::WorkerPool;

/// What a job-created output topic is given unless the job says otherwise. Results carry
/// event-time timestamps, so a job replaying old input (a backfill of last month) would
/// write results that `retention.ms` deletes at its next check; stamped with the time they
/// are written (`LogAppendTime`), they are kept for `retention.ms` from then. Window bounds
/// stay in the values.
pub fn default_output_configs() -> BTreeMap<String, String> {
    BTreeMap::from([("message.timestamp.type".to_string(), "LogAppendTime".to_string())])
}

/// What a job's runtime needs from its definition.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub name: String,
    pub input: String,
    pub commit_interval_ms: u64,
    pub watermark_bound_ms: i64,
    pub idle_timeout_ms: i64,
    /// Identifies the job's definition; a checkpoint made by another one is refused (empty:
    /// not checked).
    pub fingerprint: String,
    /// Topic configs for the output topics the job creates (an existing topic keeps its own).
    pub output_configs: BTreeMap<String, String>,
}

impl RunSpec {
    /// The configs a created output topic gets: `output_configs` over
    /// [`default_output_configs`].
    pub fn output_topic_configs(&self) -> BTreeMap<String, String> {
        let mut configs = default_output_configs();
        configs.extend(self.output_configs.iter().map(|(k, v)| (k.clone(), v.clone())));
        configs
    }

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
