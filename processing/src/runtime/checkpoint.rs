//! What a checkpoint records of each input partition besides its offset: the watermark
//! state and counters, as the JSON metadata of the offset commit (`PartitionCheckpoint`),
//! so that a restarted job resumes its watermark and reports what its committed outputs
//! reflect. The format is stored: fields are only ever added, with defaults.

use serde::{Deserialize, Serialize};
use sluice_broker::InProcessClient;

use crate::dataflow::EventTime;
use crate::runtime::context::RunSpec;

/// Counters carried in the checkpoint (the offset commit metadata of each partition).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct PartitionCheckpoint {
    pub(crate) max_ts: Option<EventTime>,
    pub(crate) watermark: Option<EventTime>,
    pub(crate) records_in: u64,
    pub(crate) malformed: u64,
    pub(crate) absurd: u64,
    /// Job-wide, on partition 0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) job: Option<JobCounters>,
    /// The fingerprint of the definition that made this checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) definition: Option<String>,
}

/// The job's own counters: records written, and events dropped as late per operator.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct JobCounters {
    pub(crate) records_out: u64,
    pub(crate) late: Vec<u64>,
}

/// Per input partition, the offset the job's group committed and the checkpoint in its
/// metadata (none when there is no commit, or its metadata is not a checkpoint).
pub(crate) fn committed(
    client: &InProcessClient,
    spec: &RunSpec,
    partitions: i32,
) -> Vec<(Option<i64>, Option<PartitionCheckpoint>)> {
    client
        .committed_offsets(&spec.group(), &spec.input, partitions)
        .into_iter()
        .map(|committed| match committed {
            Some(committed) => (Some(committed.offset), serde_json::from_str(&committed.metadata).ok()),
            None => (None, None),
        })
        .collect()
}
