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

use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::dataflow::{
    encode_state, is_absurd, Dataflow, KeyGroup, OutputRecord, Rejection, Routed, SourceRecord, StateRecord,
};
use crate::error::{DefinitionError, Error};
use crate::operators::windowed_aggregate::{StateChange, WindowedAggregation};

mod process;

pub use crate::operators::aggregate_functions::{Aggregate, Average, Count, DistinctCount, Max, Min, Sum, TopN};
pub use crate::operators::watermark::EventTime;
pub use crate::operators::window_assigner::{Window, WindowSpec};
pub use process::{Context, ProcessFunction, ProcessGroup, ProcessJob, Processed};

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

/// What a key must be: hashable and ordered for the state, serde for the changelog.
pub trait Key: Hash + Eq + Ord + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<K: Hash + Eq + Ord + Clone + Serialize + DeserializeOwned + Send + Sync + 'static> Key for K {}

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
        out: &mut Routed<KeyedElement<K, T>>,
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
            out.send(group, KeyedElement { key, ts, value });
        })?;
        if absurd && max_ts.is_none() {
            return Err(Rejection::AbsurdTimestamp);
        }
        Ok(max_ts)
    }
}

/// An element on its way to its key group.
pub struct KeyedElement<K, T> {
    key: K,
    ts: EventTime,
    value: T,
}

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
type Update<A, T> = Arc<dyn Fn(&mut A, &T) + Send + Sync>;
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
    type Event = KeyedElement<K, T>;
    type Result = OutputRecord;
    type Group = WindowGroup<K, T, A, O>;

    fn operators(&self) -> &'static [&'static str] {
        &["window"]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.topic.to_string()]
    }

    fn parse(&self, records: &[SourceRecord], now_ms: i64, out: &mut Routed<KeyedElement<K, T>>) {
        for record in records {
            let outcome = self.stage.windowed.keyed.route(record, now_ms, out);
            out.record(outcome);
        }
    }

    fn new_group(&self) -> Self::Group {
        let windowed = &self.stage.windowed;
        WindowGroup {
            windows: WindowedAggregation::new(windowed.spec, windowed.allowed_lateness_ms)
                .expect("validated when the job was built"),
            update: self.stage.update.clone(),
            result: self.stage.result.clone(),
            topic: self.topic.clone(),
            format: self.format.clone(),
            session: matches!(windowed.spec, WindowSpec::Session { .. }),
        }
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

pub struct WindowGroup<K, T, A: Aggregate, O> {
    windows: WindowedAggregation<K, A>,
    update: Update<A, T>,
    result: WindowResult<K, A, O>,
    topic: Arc<str>,
    format: Arc<dyn SinkFormat<O>>,
    session: bool,
}

impl<K, T, A, O> KeyGroup for WindowGroup<K, T, A, O>
where
    K: Key,
    T: Send + 'static,
    A: Aggregate + Serialize + DeserializeOwned + Send + 'static,
    O: Send + 'static,
{
    type Event = KeyedElement<K, T>;
    type Result = OutputRecord;

    fn process(&mut self, events: &mut Vec<KeyedElement<K, T>>, late: &mut [u64]) {
        for event in events.drain(..) {
            let (update, value) = (&self.update, &event.value);
            if !self.windows.add_with(event.key, event.ts, |state| update(state, value)) {
                late[0] += 1;
            }
        }
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Vec<OutputRecord>) {
        for (key, window, result) in self.windows.advance(watermark) {
            let output = (self.result)(&key, window, result);
            out.push(OutputRecord {
                topic: self.topic.clone(),
                key: key_bytes(&key),
                value: self.format.encode(&output),
                timestamp_ms: if self.session { window.end } else { window.end - 1 },
            });
        }
    }

    fn checkpoint(&mut self, everything: bool, out: &mut Vec<StateRecord>) -> Result<(), Error> {
        let mut error = None;
        self.windows.drain_changes(everything, |key, change| {
            let key_json = encode_state(key, &mut error);
            let (key, value) = match change {
                StateChange::Window(window, state) => {
                    let mut bytes = Vec::with_capacity(16 + key_json.len());
                    bytes.extend_from_slice(&window.end.to_be_bytes());
                    bytes.extend_from_slice(&window.start.to_be_bytes());
                    bytes.extend_from_slice(&key_json);
                    (bytes, state.map(|s| encode_state(s, &mut error)))
                }
                StateChange::Sessions(open) => (key_json, (!open.is_empty()).then(|| encode_state(open, &mut error))),
            };
            out.push(StateRecord { operator: 0, key, value });
        });
        error.map_or(Ok(()), Err)
    }

    fn restore(&mut self, _operator: usize, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let bad = |source| Error::DecodeState { what: "window", source };
        if self.session {
            let key: K = serde_json::from_slice(key).map_err(bad)?;
            self.windows.restore_sessions(key, serde_json::from_slice(value).map_err(bad)?);
            return Ok(());
        }
        if key.len() < 16 {
            return Err(Error::ShortWindowKey(key.len()));
        }
        let time = |b: &[u8]| i64::from_be_bytes(b.try_into().unwrap_or_default());
        let window = Window { end: time(&key[..8]), start: time(&key[8..16]) };
        let key: K = serde_json::from_slice(&key[16..]).map_err(bad)?;
        self.windows.restore_window(key, window, serde_json::from_slice(value).map_err(bad)?);
        Ok(())
    }

    fn restore_watermark(&mut self, watermark: EventTime) {
        self.windows.restore_watermark(watermark);
    }

    fn state_entries(&self) -> usize {
        self.windows.open_state()
    }
}
