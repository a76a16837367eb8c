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

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
use crate::clickstream::MAX_FUTURE_MS;
use crate::dataflow::{encode_state, key_group, Dataflow, KeyGroup, OutputRecord, Rejection, StateRecord};
use crate::source::SourceRecord;
use crate::watermark::{EventTime, NO_WATERMARK};
use crate::window::{Window, WindowSpec};
use crate::windowed::{StateChange, WindowedAggregation};

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
        groups: usize,
        route: &mut dyn FnMut(usize, KeyedElement<K, T>),
    ) -> Result<Option<EventTime>, Rejection> {
        let mut max_ts = None;
        let mut absurd = false;
        (self.timed.stream.step)(record, &mut |value| {
            let ts = (self.timed.time)(&value);
            // Time that cannot be right would move the watermark to the end of time.
            if ts < 0 || ts > now_ms.saturating_add(MAX_FUTURE_MS) {
                absurd = true;
                return;
            }
            max_ts = Some(max_ts.map_or(ts, |m: EventTime| m.max(ts)));
            let key = (self.key)(&value);
            let group = key_group(&serde_json::to_vec(&key).unwrap_or_default(), groups);
            route(group, KeyedElement { key, ts, value });
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
    pub fn sink(self, topic: &str, format: impl SinkFormat<O>) -> Result<WindowJob<K, T, A, O>, String> {
        self.windowed.spec.validate()?;
        if self.windowed.allowed_lateness_ms < 0 {
            return Err("allowed lateness cannot be negative".into());
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

    fn parse(
        &self,
        record: &SourceRecord,
        now_ms: i64,
        groups: usize,
        route: &mut dyn FnMut(usize, KeyedElement<K, T>),
    ) -> Result<Option<EventTime>, Rejection> {
        self.stage.windowed.keyed.route(record, now_ms, groups, route)
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

    fn finish(&self, mut results: Vec<OutputRecord>, out: &mut Vec<OutputRecord>) {
        results.sort_by(|a, b| (a.timestamp_ms, &a.key).cmp(&(b.timestamp_ms, &b.key)));
        out.extend(results);
    }
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

    fn process(&mut self, event: KeyedElement<K, T>) -> u32 {
        let (update, value) = (&self.update, &event.value);
        u32::from(!self.windows.add_with(event.key, event.ts, |state| update(state, value)))
    }

    fn advance(&mut self, watermark: EventTime, out: &mut Vec<OutputRecord>) {
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

    fn checkpoint(&mut self, everything: bool, out: &mut Vec<StateRecord>) -> Result<(), String> {
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

    fn restore(&mut self, _operator: usize, key: &[u8], value: &[u8]) -> Result<(), String> {
        let bad = |e: serde_json::Error| format!("bad window state: {e}");
        if self.session {
            let key: K = serde_json::from_slice(key).map_err(bad)?;
            self.windows.restore_sessions(key, serde_json::from_slice(value).map_err(bad)?);
            return Ok(());
        }
        if key.len() < 16 {
            return Err("a window key needs 16 bytes of times".into());
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

    fn open_state(&self) -> usize {
        self.windows.open_state()
    }
}

/// A keyed process function: called with each element of a key, and for each event-time
/// timer of a key once the watermark passes it.
pub trait ProcessFunction<K, T>: Send + Sync + 'static {
    /// The state kept per key (checkpointed with the key's timers).
    type State: Default + Serialize + DeserializeOwned + Send + 'static;
    type Output: Send + 'static;

    fn process(&self, key: &K, value: T, time: EventTime, context: &mut Context<'_, Self::State, Self::Output>);

    fn on_timer(&self, key: &K, time: EventTime, context: &mut Context<'_, Self::State, Self::Output>);
}

/// What a process function sees of its key: the state, the timers, and where outputs go.
pub struct Context<'a, S, O> {
    pub state: &'a mut S,
    timers: &'a mut BTreeSet<EventTime>,
    out: &'a mut Vec<(EventTime, O)>,
    watermark: EventTime,
    cleared: bool,
}

impl<S: Default, O> Context<'_, S, O> {
    /// Calls `on_timer` once the watermark reaches `time` (once per key and time).
    pub fn register_timer(&mut self, time: EventTime) {
        self.timers.insert(time);
    }

    pub fn delete_timer(&mut self, time: EventTime) {
        self.timers.remove(&time);
    }

    /// Emits an output with record timestamp `time`.
    pub fn emit(&mut self, time: EventTime, output: O) {
        self.out.push((time, output));
    }

    /// Forgets the key's state (its timers stay unless deleted).
    pub fn clear_state(&mut self) {
        *self.state = S::default();
        self.cleared = true;
    }

    /// The watermark as of the last round (`None` before the first).
    pub fn watermark(&self) -> Option<EventTime> {
        (self.watermark != NO_WATERMARK).then_some(self.watermark)
    }
}

pub struct Processed<K, T, P> {
    keyed: Keyed<K, T>,
    function: Arc<P>,
    allowed_lateness_ms: i64,
}

impl<K: Key, T: Send + 'static, P: ProcessFunction<K, T>> Processed<K, T, P> {
    /// Elements up to this far behind the watermark are still processed; further behind
    /// they are dropped and counted as late.
    pub fn allowed_lateness(mut self, ms: i64) -> Self {
        self.allowed_lateness_ms = ms;
        self
    }

    pub fn sink(self, topic: &str, format: impl SinkFormat<P::Output>) -> Result<ProcessJob<K, T, P>, String> {
        if self.allowed_lateness_ms < 0 {
            return Err("allowed lateness cannot be negative".into());
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
    type Event = KeyedElement<K, T>;
    type Result = OutputRecord;
    type Group = ProcessGroup<K, T, P>;

    fn operators(&self) -> &'static [&'static str] {
        &["process"]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.topic.to_string()]
    }

    fn parse(
        &self,
        record: &SourceRecord,
        now_ms: i64,
        groups: usize,
        route: &mut dyn FnMut(usize, KeyedElement<K, T>),
    ) -> Result<Option<EventTime>, Rejection> {
        self.processed.keyed.route(record, now_ms, groups, route)
    }

    fn new_group(&self) -> Self::Group {
        ProcessGroup {
            function: self.processed.function.clone(),
            allowed_lateness_ms: self.processed.allowed_lateness_ms,
            topic: self.topic.clone(),
            format: self.format.clone(),
            keys: HashMap::new(),
            timers: BTreeSet::new(),
            removed: Vec::new(),
            pending: Vec::new(),
            watermark: NO_WATERMARK,
            _element: PhantomData,
        }
    }

    fn finish(&self, mut results: Vec<OutputRecord>, out: &mut Vec<OutputRecord>) {
        results.sort_by(|a, b| (a.timestamp_ms, &a.key).cmp(&(b.timestamp_ms, &b.key)));
        out.extend(results);
    }
}

#[derive(Default, Serialize, Deserialize)]
struct KeyState<S> {
    state: S,
    timers: BTreeSet<EventTime>,
    #[serde(skip)]
    dirty: bool,
    #[serde(skip)]
    persisted: bool,
    /// No state of its own (never set, or cleared): kept only while timers are pending.
    #[serde(skip)]
    empty: bool,
}

pub struct ProcessGroup<K, T, P: ProcessFunction<K, T>> {
    function: Arc<P>,
    allowed_lateness_ms: i64,
    topic: Arc<str>,
    format: Arc<dyn SinkFormat<P::Output>>,
    keys: HashMap<K, KeyState<P::State>>,
    /// Every key's timers, in firing order.
    timers: BTreeSet<(EventTime, K)>,
    /// Keys whose checkpointed state is gone.
    removed: Vec<K>,
    /// Outputs of `process` calls, sent with the round's results.
    pending: Vec<OutputRecord>,
    watermark: EventTime,
    _element: PhantomData<fn(T)>,
}

impl<K: Key, T: Send + 'static, P: ProcessFunction<K, T>> ProcessGroup<K, T, P> {
    /// Runs `call` on `key`'s context, then files its timer changes and outputs, and drops
    /// the key if nothing of it is left.
    fn with_key(
        &mut self,
        key: K,
        out: &mut Vec<OutputRecord>,
        call: impl FnOnce(&P, &K, &mut Context<'_, P::State, P::Output>),
    ) {
        let entry = self.keys.entry(key.clone()).or_insert_with(|| KeyState { empty: true, ..KeyState::default() });
        let before = entry.timers.clone();
        let mut emitted = Vec::new();
        let mut context = Context {
            state: &mut entry.state,
            timers: &mut entry.timers,
            out: &mut emitted,
            watermark: self.watermark,
            cleared: false,
        };
        call(&self.function, &key, &mut context);
        let cleared = context.cleared;
        entry.empty = cleared;
        entry.dirty = true;
        for time in before.difference(&entry.timers) {
            self.timers.remove(&(*time, key.clone()));
        }
        for time in entry.timers.difference(&before) {
            self.timers.insert((*time, key.clone()));
        }
        if entry.empty && entry.timers.is_empty() {
            if entry.persisted {
                self.removed.push(key.clone());
            }
            self.keys.remove(&key);
        }
        for (time, output) in emitted {
            out.push(OutputRecord {
                topic: self.topic.clone(),
                key: key_bytes(&key),
                value: self.format.encode(&output),
                timestamp_ms: time,
            });
        }
    }
}

impl<K: Key, T: Send + 'static, P: ProcessFunction<K, T>> KeyGroup for ProcessGroup<K, T, P> {
    type Event = KeyedElement<K, T>;
    type Result = OutputRecord;

    fn process(&mut self, event: KeyedElement<K, T>) -> u32 {
        if self.watermark != NO_WATERMARK && event.ts.saturating_add(self.allowed_lateness_ms) < self.watermark {
            return 1;
        }
        // Outputs of `process` go out with the round's timer outputs.
        let mut out = Vec::new();
        let KeyedElement { key, ts, value } = event;
        self.with_key(key, &mut out, |function, key, context| function.process(key, value, ts, context));
        self.pending.extend(out);
        0
    }

    fn advance(&mut self, watermark: EventTime, out: &mut Vec<OutputRecord>) {
        out.append(&mut self.pending);
        self.watermark = self.watermark.max(watermark);
        // Only the timers due now: one a callback sets at or below the watermark fires next
        // round, so a timer that keeps re-registering itself cannot stall the job.
        let mut due = Vec::new();
        while self.timers.first().is_some_and(|(time, _)| *time <= self.watermark) {
            due.extend(self.timers.pop_first());
        }
        for (time, key) in due {
            // A callback of this key may have deleted it meanwhile.
            let Some(entry) = self.keys.get_mut(&key) else { continue };
            if !entry.timers.remove(&time) {
                continue;
            }
            self.with_key(key, out, |function, key, context| function.on_timer(key, time, context));
        }
    }

    fn checkpoint(&mut self, everything: bool, out: &mut Vec<StateRecord>) -> Result<(), String> {
        let mut error = None;
        for key in self.removed.drain(..) {
            out.push(StateRecord { operator: 0, key: encode_state(&key, &mut error), value: None });
        }
        for (key, entry) in self.keys.iter_mut().filter(|(_, e)| e.dirty || everything) {
            let value = encode_state(&*entry, &mut error);
            out.push(StateRecord { operator: 0, key: encode_state(key, &mut error), value: Some(value) });
            entry.dirty = false;
            entry.persisted = true;
        }
        error.map_or(Ok(()), Err)
    }

    fn restore(&mut self, _operator: usize, key: &[u8], value: &[u8]) -> Result<(), String> {
        let bad = |e: serde_json::Error| format!("bad process state: {e}");
        let key: K = serde_json::from_slice(key).map_err(bad)?;
        let mut entry: KeyState<P::State> = serde_json::from_slice(value).map_err(bad)?;
        entry.persisted = true;
        for time in &entry.timers {
            self.timers.insert((*time, key.clone()));
        }
        self.keys.insert(key, entry);
        Ok(())
    }

    fn restore_watermark(&mut self, watermark: EventTime) {
        self.watermark = self.watermark.max(watermark);
    }

    fn open_state(&self) -> usize {
        self.keys.len()
    }
}
