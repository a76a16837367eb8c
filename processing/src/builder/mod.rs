//! The Rust builder API for jobs: a typed chain from a source topic to a sink topic,
//!
//! ```text
//! source("clicks", Json::<Click>::default())
//!     .filter(|c| !c.page.is_empty())
//!     .timestamps(|c| c.ts, 5_000)            // event time, bounded out-of-orderness
//!     .key_by(|c| c.page.clone())             // reshuffle: each key lives in one key group
//!     .window(WindowSpec::Tumbling { size_ms: 60_000 })
//!     .aggregate(|count: &mut Count, _| count.add(&()), |page, window, views| (page.clone(), window.start, views))
//!     .sink("page-views", Json::default())
//! ```
//!
//! or `.process(function)` after `key_by` for a keyed process function with its own state
//! and event-time timers. What it builds is a [`Dataflow`] the runtime runs like any other:
//! keyed state is checkpointed to a changelog (state, keys and aggregates are serde types),
//! late events are dropped and counted.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::dataflow::{is_absurd, Dataflow, OutputRecord, Rejection, Routed, SourceRecord};
use crate::error::DefinitionError;
use crate::operators::windowed_aggregate::{FoldFn, FoldWith, JsonState, WindowedAggregate};
use crate::operators::{KeyedEvent, OperatorGroup};

mod process;

pub use crate::operators::aggregate_functions::{Aggregate, Average, Count, DistinctCount, Max, Min, Sum, TopN};
pub use crate::operators::process_function::{Context, ProcessFunction};
pub use crate::operators::state::Key;
pub use crate::operators::watermark::EventTime;
pub use crate::operators::window_assigner::{Window, WindowSpec};
pub use process::{ProcessGroup, ProcessJob, Processed};

/// How a source topic's records are read.
pub trait SourceFormat: Send + Sync + 'static {
    type Item: Send + 'static;
    fn decode(&self, record: &SourceRecord) -> Result<Self::Item, Rejection>;
}

/// How a sink topic's values are written.
pub trait SinkFormat<O>: Send + Sync + 'static {
    fn encode(&self, output: &O) -> Bytes;
}

/// JSON values through serde: reading `T` (a record that does not parse is malformed), or
/// writing it.
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T> Default for Json<T> {
    fn default() -> Self {
        Json(PhantomData)
    }
}

impl<T: DeserializeOwned + Send + 'static> SourceFormat for Json<T> {
    type Item = T;
    fn decode(&self, record: &SourceRecord) -> Result<T, Rejection> {
        let value = record.value.as_deref().ok_or(Rejection::Malformed)?;
        serde_json::from_slice(value).map_err(|_| Rejection::Malformed)
    }
}

impl<O: Serialize + 'static> SinkFormat<O> for Json<O> {
    fn encode(&self, output: &O) -> Bytes {
        Bytes::from(serde_json::to_vec(output).unwrap_or_default())
    }
}

/// Records as they are: key, value and timestamp, slices of the log.
pub struct Raw;

#[derive(Clone, Debug)]
pub struct RawRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub timestamp_ms: i64,
}

impl SourceFormat for Raw {
    type Item = RawRecord;
    fn decode(&self, record: &SourceRecord) -> Result<RawRecord, Rejection> {
        Ok(RawRecord { key: record.key.clone(), value: record.value.clone(), timestamp_ms: record.timestamp_ms })
    }
}

impl<O: AsRef<[u8]> + 'static> SinkFormat<O> for Raw {
    fn encode(&self, output: &O) -> Bytes {
        Bytes::copy_from_slice(output.as_ref())
    }
}

type Step<T> = Arc<dyn Fn(&SourceRecord, &mut dyn FnMut(T)) -> Result<(), Rejection> + Send + Sync>;

/// Records of a source topic after the stateless steps so far.
pub struct Stream<T> {
    input: String,
    step: Step<T>,
}

/// Starts a job at `topic`, read in `format`.
pub fn source<F: SourceFormat>(topic: &str, format: F) -> Stream<F::Item> {
    let step: Step<F::Item> = Arc::new(move |record, emit| {
        emit(format.decode(record)?);
        Ok(())
    });
    Stream { input: topic.to_string(), step }
}

impl<T: Send + 'static> Stream<T> {
    pub fn input(&self) -> &str {
        &self.input
    }

    pub fn map<U: Send + 'static>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Stream<U> {
        let step = self.step;
        Stream { input: self.input, step: Arc::new(move |record, emit| step(record, &mut |t| emit(f(t)))) }
    }

    pub fn filter(self, f: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<T> {
        let step = self.step;
        let step: Step<T> = Arc::new(move |record, emit| {
            step(record, &mut |t| {
                if f(&t) {
                    emit(t)
                }
            })
        });
        Stream { input: self.input, step }
    }

    pub fn flat_map<U: Send + 'static, I: IntoIterator<Item = U>>(
        self,
        f: impl Fn(T) -> I + Send + Sync + 'static,
    ) -> Stream<U> {
        let step = self.step;
        let step: Step<U> = Arc::new(move |record, emit| step(record, &mut |t| f(t).into_iter().for_each(&mut *emit)));
        Stream { input: self.input, step }
    }

    /// Event time from each element; the watermark allows `bound_ms` of out-of-orderness.
    pub fn timestamps(self, time: impl Fn(&T) -> EventTime + Send + Sync + 'static, bound_ms: i64) -> Timed<T> {
        Timed { stream: self, time: Arc::new(time), bound_ms }
    }
}

pub struct Timed<T> {
    stream: Stream<T>,
    time: Arc<dyn Fn(&T) -> EventTime + Send + Sync>,
    bound_ms: i64,
}

impl<T: Send + 'static> Timed<T> {
    pub fn watermark_bound_ms(&self) -> i64 {
        self.bound_ms
    }

    /// Partitions by key: every element of a key goes to the one task that holds its state.
    pub fn key_by<K: Key>(self, key: impl Fn(&T) -> K + Send + Sync + 'static) -> Keyed<K, T> {
        Keyed { timed: self, key: Arc::new(key) }
    }
}

pub struct Keyed<K, T> {
    timed: Timed<T>,
    key: Arc<dyn Fn(&T) -> K + Send + Sync>,
}

impl<K: Key, T: Send + 'static> Keyed<K, T> {
    pub fn window(self, spec: WindowSpec) -> Windowed<K, T> {
        Windowed { keyed: self, spec, allowed_lateness_ms: 0 }
    }

    /// A keyed process function: per-key state and event-time timers of its own.
    pub fn process<P: ProcessFunction<K, T>>(self, function: P) -> Processed<K, T, P> {
        Processed { keyed: self, function: Arc::new(function), allowed_lateness_ms: 0 }
    }

    /// Parses a record and routes its elements to their key groups.
    fn route(
        &self,
        record: &SourceRecord,
        now_ms: i64,
        out: &mut Routed<KeyedEvent<K, T>>,
    ) -> Result<Option<EventTime>, Rejection> {
        let mut max_ts = None;
        let mut absurd = false;
        (self.timed.stream.step)(record, &mut |value| {
            let ts = (self.timed.time)(&value);
            // Time that cannot be right would move the watermark to the end of time.
            if is_absurd(ts, now_ms) {
                absurd = true;
                return;
            }
            max_ts = Some(max_ts.map_or(ts, |m: EventTime| m.max(ts)));
            let key = (self.key)(&value);
            let group = out.group_of(&serde_json::to_vec(&key).unwrap_or_default());
            out.send(group, KeyedEvent { key, time: ts, value });
        })?;
        if absurd && max_ts.is_none() {
            return Err(Rejection::AbsurdTimestamp);
        }
        Ok(max_ts)
    }
}

/// The keyed state of a windowed aggregation built with the API.
pub type WindowGroup<K, T, A> = OperatorGroup<WindowedAggregate<K, T, A, JsonState, FoldWith<T, A>>, OutputRecord>;

/// A key as a record key: a string as its text, anything else as JSON.
fn key_bytes<K: Serialize>(key: &K) -> Bytes {
    match serde_json::to_value(key) {
        Ok(serde_json::Value::String(s)) => Bytes::from(s),
        Ok(other) => Bytes::from(other.to_string()),
        Err(_) => Bytes::new(),
    }
}

pub struct Windowed<K, T> {
    keyed: Keyed<K, T>,
    spec: WindowSpec,
    allowed_lateness_ms: i64,
}

impl<K: Key, T: Send + 'static> Windowed<K, T> {
    /// Events up to this far behind the watermark still count; a window fires when the
    /// watermark passes its end plus this.
    pub fn allowed_lateness(mut self, ms: i64) -> Self {
        self.allowed_lateness_ms = ms;
        self
    }

    /// Aggregates each key's window with `update` per element; `result` turns a fired
    /// window into an output.
    pub fn aggregate<A, O>(
        self,
        update: impl Fn(&mut A, &T) + Send + Sync + 'static,
        result: impl Fn(&K, Window, A::Output) -> O + Send + Sync + 'static,
    ) -> WindowStage<K, T, A, O>
    where
        A: Aggregate + Serialize + DeserializeOwned + Send + 'static,
        O: Send + 'static,
    {
        WindowStage { windowed: self, update: Arc::new(update), result: Arc::new(result) }
    }
}

/// Folds an element into a window's aggregate.
type Update<A, T> = FoldFn<T, A>;
/// Turns a fired window's aggregate into an output.
type WindowResult<K, A, O> = Arc<dyn Fn(&K, Window, <A as Aggregate>::Output) -> O + Send + Sync>;

pub struct WindowStage<K, T, A: Aggregate, O> {
    windowed: Windowed<K, T>,
    update: Update<A, T>,
    result: WindowResult<K, A, O>,
}

impl<K, T, A, O> WindowStage<K, T, A, O>
where
    K: Key,
    T: Send + 'static,
    A: Aggregate + Serialize + DeserializeOwned + Send + 'static,
    O: Send + 'static,
{
    /// Ends the job at `topic`; checks the window definition.
    pub fn sink(self, topic: &str, format: impl SinkFormat<O>) -> Result<WindowJob<K, T, A, O>, DefinitionError> {
        self.windowed.spec.validate()?;
        if self.windowed.allowed_lateness_ms < 0 {
            return Err(DefinitionError::NegativeLateness(self.windowed.allowed_lateness_ms));
        }
        Ok(WindowJob { stage: self, topic: topic.into(), format: Arc::new(format) })
    }
}

/// A windowed aggregation built with the API, as a [`Dataflow`].
pub struct WindowJob<K, T, A: Aggregate, O> {
    stage: WindowStage<K, T, A, O>,
    topic: Arc<str>,
    format: Arc<dyn SinkFormat<O>>,
}

impl<K, T, A: Aggregate, O> WindowJob<K, T, A, O> {
    pub fn input(&self) -> &str {
        &self.stage.windowed.keyed.timed.stream.input
    }

    pub fn watermark_bound_ms(&self) -> i64 {
        self.stage.windowed.keyed.timed.bound_ms
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
        for record in records {
            let outcome = self.stage.windowed.keyed.route(record, now_ms, out);
            out.record(outcome);
        }
    }

    fn new_group(&self) -> Self::Group {
        let windowed = &self.stage.windowed;
        let (codec, fold) = (JsonState { what: "window" }, FoldWith(self.stage.update.clone()));
        let windows = WindowedAggregate::new(windowed.spec, windowed.allowed_lateness_ms, codec, fold)
            .expect("validated when the job was built");
        let (result, topic, format) = (self.stage.result.clone(), self.topic.clone(), self.format.clone());
        // A session's record is stamped with its last event, a window's with its last ms.
        let session = matches!(windowed.spec, WindowSpec::Session { .. });
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

/// A round's results from every key group, by timestamp then key: the output order does
/// not depend on which group finished first.
fn in_time_order(mut results: Vec<OutputRecord>, out: &mut Vec<OutputRecord>) {
    results.sort_by(|a, b| (a.timestamp_ms, &a.key).cmp(&(b.timestamp_ms, &b.key)));
    out.extend(results);
}
