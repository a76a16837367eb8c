//! The builder's keyed process function job: `key_by(..).process(function)` ending at a
//! sink, its keyed state the [`KeyedProcess`] operator's; a record is stamped with the time
//! the function emitted it at.

use std::sync::Arc;

use crate::builder::formats::SinkFormat;
use crate::builder::key_by::{in_time_order, key_bytes, KeyBy};
use crate::dataflow::{Dataflow, OutputRecord, Routed, SourceRecord};
use crate::operators::process_function::{KeyedProcess, ProcessFunction};
use crate::operators::state::Key;
use crate::operators::{KeyedEvent, OperatorGroup};

/// The keyed state of a process function job built with the API.
pub type ProcessGroup<K, T, P> = OperatorGroup<KeyedProcess<K, T, P>, OutputRecord>;

/// A keyed process function built with the API, as a [`Dataflow`].
pub struct ProcessJob<K, T, P: ProcessFunction<K, T>> {
    pub(crate) source: KeyBy<K, T>,
    pub(crate) function: Arc<P>,
    pub(crate) allowed_lateness_ms: i64,
    pub(crate) topic: Arc<str>,
    pub(crate) format: Arc<dyn SinkFormat<P::Output>>,
}

impl<K, T, P: ProcessFunction<K, T>> ProcessJob<K, T, P> {
    pub fn input(&self) -> &str {
        &self.source.input
    }

    pub fn watermark_bound_ms(&self) -> i64 {
        self.source.watermark_bound_ms
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
        self.source.parse(records, now_ms, out);
    }

    fn new_group(&self) -> Self::Group {
        let operator = KeyedProcess::new(self.function.clone(), self.allowed_lateness_ms);
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
