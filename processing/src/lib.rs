//! The in-broker stream processor. A job is a [`Dataflow`]: a per-record step run by one
//! task per source partition (parse, filter, event time, `key_by`), and keyed state run by
//! one task per key group, made of generic `operators` (watermarks, window assignment, the
//! windowed aggregate, aggregate functions, process functions). Jobs are written with the
//! Rust `builder` API, declared as an [`AggregationSpec`], or built in (`clickstream`); the
//! `runtime` runs any of them: sources read partition logs in-process, tasks run on a
//! bounded pool, and every commit interval a checkpoint writes outputs, state changes
//! (changelogs) and source offsets in one transaction. The `host` keeps the broker's jobs
//! running across restarts.

mod aggregation_spec;
pub mod builder;
mod dataflow;
mod error;
mod host;
mod jobs;
pub mod operators;
pub mod runtime;
#[cfg(test)]
mod test_broker;

pub use aggregation_spec::{AggregateDefinition, AggregationSpec, Condition, Function, WindowDefinition};
pub use dataflow::{key_group, Dataflow, KeyGroup, OutputRecord, Rejection, SourceRecord, StateRecord, MAX_FUTURE_MS};
pub use error::{DefinitionError, Error};
pub use host::{HostConfig, HostError, JobHost};
pub use jobs::aggregation::AggregationDataflow;
pub use jobs::clickstream;
pub use jobs::definition::JobDefinition;
