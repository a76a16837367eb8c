//! The in-broker stream processor. Event-time building blocks, each usable and tested on
//! its own: watermarks with bounded out-of-orderness and idle partitions (`watermark`),
//! epoch-aligned tumbling and sliding windows and merging session windows (`window`), the
//! window aggregates (`aggregate`) and the keyed windowed aggregation that emits each result
//! once (`windowed`). A job is a `dataflow` (per-record step, keyed state per key group),
//! written with the Rust `builder` API, declared as an `aggregation`, or built in
//! (`clickstream`); the `runtime` runs it: sources read partition logs in-process (`source`), tasks run on
//! a bounded `pool`, and every commit interval a checkpoint writes outputs, state changes
//! (`changelog`) and source offsets in one transaction (`sink`). The `host` keeps the
//! broker's jobs (`job` definitions) running across restarts; `clickstream` is the built-in
//! job.

pub mod aggregate;
pub mod aggregation;
pub mod builder;
pub mod changelog;
pub mod clickstream;
pub mod dataflow;
pub mod host;
pub mod job;
pub mod pool;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod state;
#[cfg(test)]
mod test_broker;
pub mod watermark;
pub mod window;
pub mod windowed;
