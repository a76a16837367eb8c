//! The in-broker stream processor (issue 6, in progress). What exists so far are its
//! event-time building blocks, each usable and tested on its own: watermarks with bounded
//! out-of-orderness and idle partitions (`watermark`), epoch-aligned tumbling and sliding
//! windows and merging session windows (`window`), the window aggregates (`aggregate`),
//! and the keyed windowed aggregation that combines them, emitting each result once
//! (`windowed`); and the source that reads a partition log in-process, zero-copy, honouring
//! read_committed (`source`); the transactional sink that commits a job's output with its
//! source offsets through the broker's transaction coordinator (`sink`); and the
//! clickstream job's operators (`clickstream`). Sources, operators, keyed state, the job runtime and exactly-once sinks
//! come next.

pub mod aggregate;
pub mod clickstream;
pub mod sink;
pub mod source;
pub mod watermark;
pub mod window;
pub mod windowed;
