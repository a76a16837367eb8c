//! What a running job reports: its state, per-partition positions and lag, watermark,
//! counts and last commit, as the admin API and `sluice job status` show them.

use serde::Serialize;

use crate::dataflow::EventTime;

/// Where a job is in its life: Starting -> Restoring -> Running -> (Stopped | Failed); a
/// failed job goes back to Restoring after a backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Starting,
    Restoring,
    Running,
    Failed,
    Stopped,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    /// The next offset the job reads.
    pub offset: i64,
    pub committed_offset: i64,
    pub log_end_offset: i64,
    pub lag: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommitStatus {
    pub at_ms: i64,
    pub watermark: Option<EventTime>,
    pub records_out: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    pub name: String,
    pub kind: String,
    pub state: JobState,
    pub error: Option<String>,
    pub input: String,
    pub key_groups: usize,
    /// Event time below which every result has been emitted (none before the first).
    pub watermark: Option<EventTime>,
    pub records_in: u64,
    pub records_out: u64,
    pub malformed_records: u64,
    pub absurd_timestamps: u64,
    /// Events dropped as late, per operator.
    pub late_records: std::collections::BTreeMap<String, u64>,
    /// Keyed state entries held in memory.
    pub state_entries: u64,
    pub partitions: Vec<PartitionStatus>,
    pub last_commit: Option<CommitStatus>,
    pub commits: u64,
    pub restarts: u64,
}

impl JobStatus {
    /// A job that has not started yet.
    pub(crate) fn new(name: &str, kind: &str, input: &str) -> JobStatus {
        JobStatus {
            name: name.to_string(),
            kind: kind.to_string(),
            state: JobState::Starting,
            error: None,
            input: input.to_string(),
            key_groups: 0,
            watermark: None,
            records_in: 0,
            records_out: 0,
            malformed_records: 0,
            absurd_timestamps: 0,
            late_records: Default::default(),
            state_entries: 0,
            partitions: Vec::new(),
            last_commit: None,
            commits: 0,
            restarts: 0,
        }
    }
}
