//! Runs jobs: any [`Dataflow`](crate::Dataflow), whatever front end planned it. One driver
//! thread per job (`driver`) moves it through its states: Restoring rebuilds it from its
//! last checkpoint (`restore`), Running drives rounds of tasks (`tasks`) on the shared
//! worker `pool`: a source task per input partition reads the log in-process (`source`),
//! parses and routes by key; a task per key group applies the events and fires what the
//! job's watermark completes (`running`). Every commit interval a checkpoint writes, in one
//! transaction (`sink`), the outputs since the last one, the changed keyed state
//! (`changelog`) and the source offsets with the watermark state (`checkpoint`). A job's
//! figures are its `status`.

pub(crate) mod changelog;
pub(crate) mod checkpoint;
pub(crate) mod context;
mod driver;
pub(crate) mod pool;
mod restore;
pub(crate) mod running;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod status;
pub(crate) mod tasks;

pub use context::{default_output_configs, RunSpec};
pub use driver::{spawn, JobHandle};
pub use pool::WorkerPool;
pub use source::{Isolation, LogSource};
pub use status::{CommitStatus, JobState, JobStatus, PartitionStatus};

#[cfg(test)]
mod tests;
