//! The in-broker stream processor. A job is a [`Dataflow`]: a step over each batch of a
//! source partition's records (parse, filter, event time, `key_by`) and keyed state per key
//! group, composed of generic [`operators`]. Jobs are written with the Rust [`builder`],
//! declared as an [`AggregationSpec`], or built in ([`clickstream`]); the [`runtime`] runs
//! any of them with exactly-once checkpoints, and the [`JobHost`] keeps a broker's jobs
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

// What a job is, as the runtime runs it.
pub use dataflow::{
    is_absurd, key_group, Dataflow, EventTime, KeyGroup, OutputRecord, Rejection, Routed, SourceRecord, StateRecord,
    MAX_FUTURE_MS,
};
pub use error::{DefinitionError, Error, Result};
// The jobs a broker runs, and the host that runs them.
pub use aggregation_spec::{AggregateDefinition, AggregationSpec, Condition, Function, WindowDefinition};
pub use host::{HostConfig, HostError, JobHost};
pub use jobs::aggregation::AggregationDataflow;
pub use jobs::clickstream;
pub use jobs::definition::JobDefinition;
