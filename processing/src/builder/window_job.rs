//! The builder's windowed aggregation job: `key_by(..).window(..).aggregate(..)` ending at a
//! sink, its keyed state the generic windowed aggregate with keys and aggregates as JSON.
//! A window's record is stamped with its last millisecond, a session's with its last event.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builder::formats::SinkFormat;
use crate::builder::key_by::{in_time_order, key_bytes, KeyBy};
use crate::dataflow::{Dataflow, OutputRecord, Routed, SourceRecord};
use crate::operators::aggregate_functions::Aggregate;
use crate::operators::state::Key;
use crate::operators::window_assigner::{Window, WindowSpec};
use crate::operators::windowed_aggregate::{FoldFn, FoldWith, JsonState, WindowedAggregate};
use crate::operators::{KeyedEvent, OperatorGroup};

/// Turns a fired window's aggregate into an output.
pub(crate) type WindowResult<K, A, O> = Arc<dyn Fn(&K, Window, <A as Aggregate>::Output) -> O + Send + Sync>;

/// The keyed state of a windowed aggregation built with the API.
pub type WindowGroup<K, T, A> = OperatorGroup<WindowedAggregate<K, T, A, JsonState, FoldWith<T, A>>, OutputRecord>;

/// A windowed aggregation built with the API, as a [`Dataflow`].
pub struct WindowJob<K, T, A: Aggregate, O> {
    pub(crate) source: KeyBy<K, T>,
    pub(crate) spec: WindowSpec,
    pub(crate) allowed_lateness_ms: i64,
    pub(crate) update: FoldFn<T, A>,
    pub(crate) result: WindowResult<K, A, O>,
    pub(crate) topic: Arc<str>,
    pub(crate) format: Arc<dyn SinkFormat<O>>,
}

impl<K, T, A: Aggregate, O> WindowJob<K, T, A, O> {
    pub fn input(&self) -> &str {
        &self.source.input
    }

    pub fn watermark_bound_ms(&self) -> i64 {
        self.source.watermark_bound_ms
    }
}

impl<K, T, A, O> Dataflow for WindowJob<K, T, A, O>
where
    K: Key,
    T: Send + 'static,
    A: Aggregate + Serialize + DeserializeOwned + Send + 'static,
    O: Send + 'static,
{
    type Event = KeyedEvent<K, T>;
    type Result = OutputRecord;
    type Group = WindowGroup<K, T, A>;

    fn operators(&self) -> &'static [&'static str] {
        &["window"]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.topic.to_string()]
    }

    fn parse(&self, records: &[SourceRecord], now_ms: i64, out: &mut Routed<KeyedEvent<K, T>>) {
        self.source.parse(records, now_ms, out);
    }

    fn new_group(&self) -> Self::Group {
        let (codec, fold) = (JsonState { what: "window" }, FoldWith(self.update.clone()));
        let windows = WindowedAggregate::new(self.spec, self.allowed_lateness_ms, codec, fold)
            .expect("validated when the job was built");
        let (result, topic, format) = (self.result.clone(), self.topic.clone(), self.format.clone());
        let session = matches!(self.spec, WindowSpec::Session { .. });
        OperatorGroup::new(
            windows,
            Box::new(move |(key, window, aggregate)| {
                let output = result(&key, window, aggregate);
                OutputRecord {
                    topic: topic.clone(),
                    key: key_bytes(&key),
                    value: format.encode(&output),
                    timestamp_ms: if session { window.end } else { window.end - 1 },
                }
            }),
        )
    }

    fn finish(&self, results: Vec<OutputRecord>, out: &mut Vec<OutputRecord>) {
        in_time_order(results, out);
    }
}
