//! Keyed process functions: per-key state and event-time timers of the function's own,
//! for logic that windows do not express (custom sessions, alerts, joins by hand). Timers
//! fire in time order once the watermark passes them; state and timers are checkpointed
//! per key like any keyed state.

use std::collections::{BTreeSet, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{in_time_order, key_bytes, Key, Keyed, SinkFormat};
use crate::dataflow::{encode_state, Dataflow, KeyGroup, OutputRecord, Routed, SourceRecord, StateRecord};
use crate::error::{DefinitionError, Error};
use crate::operators::watermark::{EventTime, NO_WATERMARK};
use crate::operators::KeyedEvent;

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

    fn finish(&self, results: Vec<OutputRecord>, out: &mut Vec<OutputRecord>) {
        in_time_order(results, out);
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
    type Event = KeyedEvent<K, T>;
    type Result = OutputRecord;

    fn process(&mut self, events: &mut Vec<KeyedEvent<K, T>>, late: &mut [u64]) {
        for event in events.drain(..) {
            if self.watermark != NO_WATERMARK && event.time.saturating_add(self.allowed_lateness_ms) < self.watermark {
                late[0] += 1;
                continue;
            }
            // Outputs of `process` go out with the round's timer outputs.
            let mut out = Vec::new();
            let KeyedEvent { key, time: ts, value } = event;
            self.with_key(key, &mut out, |function, key, context| function.process(key, value, ts, context));
            self.pending.extend(out);
        }
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Vec<OutputRecord>) {
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

    fn checkpoint(&mut self, everything: bool, out: &mut Vec<StateRecord>) -> Result<(), Error> {
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

    fn restore(&mut self, _operator: usize, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let bad = |source| Error::DecodeState { what: "process", source };
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

    fn state_entries(&self) -> usize {
        self.keys.len()
    }
}
