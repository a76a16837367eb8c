//! The builder's keyed process function job: `key_by(..).process(function)` ends at a
//! sink like a windowed aggregation does, its state the [`KeyedProcess`] operator's.

use std::sync::Arc;

use super::{in_time_order, key_bytes, Keyed, SinkFormat};
use crate::dataflow::{Dataflow, OutputRecord, Routed, SourceRecord};
use crate::error::DefinitionError;
use crate::operators::process_function::{KeyedProcess, ProcessFunction};
use crate::operators::state::Key;
use crate::operators::{KeyedEvent, OperatorGroup};

pub struct Processed<K, T, P> {
    pub(super) keyed: Keyed<K, T>,
    pub(super) function: Arc<P>,
    pub(super) allowed_lateness_ms: i64,
}

impl<K: Key, T: Send + 'static, P: ProcessFunction<K, T>> Processed<K, T, P> {
    /// Elements up to this far behind the watermark are still processed; further behind
    /// they are dropped and counted as late.
    pub fn allowed_lateness(mut self, ms: i64) -> Self {
        self.allowed_lateness_ms = ms;
        self
    }

    pub fn sink(self, topic: &str, format: impl SinkFormat<P::Output>) -> Result<ProcessJob<K, T, P>, DefinitionError> {
        if self.allowed_lateness_ms < 0 {
            return Err(DefinitionError::NegativeLateness(self.allowed_lateness_ms));
        }
        Ok(ProcessJob { processed: self, topic: topic.into(), format: Arc::new(format) })
    }
}

/// A keyed process function built with the API, as a [`Dataflow`].
pub struct ProcessJob<K, T, P: ProcessFunction<K, T>> {
    processed: Processed<K, T, P>,
    topic: Arc<str>,
    format: Arc<dyn SinkFormat<P::Output>>,
}

impl<K, T, P: ProcessFunction<K, T>> ProcessJob<K, T, P> {
    pub fn input(&self) -> &str {
        &self.processed.keyed.timed.stream.input
    }

    pub fn watermark_bound_ms(&self) -> i64 {
        self.processed.keyed.timed.bound_ms
    }
}

impl<K: Key, T: Send + 'static, P: ProcessFunction<K, T>> Dataflow for ProcessJob<K, T, P> {
    type Event = KeyedEvent<K, T>;
    type Result = OutputRecord;
    type Group = ProcessGroup<K, T, P>;

    fn operators(&self) -> &'static [&'static str] {
        &["process"]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.topic.to_string()]
    }

    fn parse(&self, records: &[SourceRecord], now_ms: i64, out: &mut Routed<KeyedEvent<K, T>>) {
        for record in records {
            let outcome = self.processed.keyed.route(record, now_ms, out);
            out.record(outcome);
        }
    }

    fn new_group(&self) -> Self::Group {
        let operator = KeyedProcess::new(self.processed.function.clone(), self.processed.allowed_lateness_ms);
        let (topic, format) = (self.topic.clone(), self.format.clone());
        OperatorGroup::new(
            operator,
            Box::new(move |(key, time, output)| OutputRecord {
                topic: topic.clone(),
                key: key_bytes(&key),
                value: format.encode(&output),
                timestamp_ms: time,
            }),
        )
    }

    fn finish(&self, results: Vec<OutputRecord>, out: &mut Vec<OutputRecord>) {
        in_time_order(results, out);
    }
}

/// The keyed state of a process function job built with the API.
pub type ProcessGroup<K, T, P> = OperatorGroup<KeyedProcess<K, T, P>, OutputRecord>;
