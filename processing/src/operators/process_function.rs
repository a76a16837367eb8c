//! Keyed process functions: per-key state and event-time timers of the function's own, for
//! logic that windows do not express (custom sessions, alerts, joins by hand). Timers fire in
//! time order once the watermark passes them, each once; an element further behind the
//! watermark than the allowed lateness is dropped and counted. State and timers are
//! checkpointed per key as JSON: key -> `{"state": .., "timers": [..]}`.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::dataflow::EventTime;
use crate::error::{Error, Result};
use crate::operators::state::{Key, StateMap};
use crate::operators::watermark::NO_WATERMARK;
use crate::operators::{ChangelogWriter, KeyedEvent, Operator};

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

/// The operator running a process function over the keys of a key group. It emits
/// (key, record timestamp, output); outputs of elements go out with the next watermark's.
pub struct KeyedProcess<K, T, P: ProcessFunction<K, T>> {
    function: Arc<P>,
    allowed_lateness_ms: i64,
    keys: StateMap<K, KeyState<P::State>>,
    /// Every key's timers, in firing order.
    timers: BTreeSet<(EventTime, K)>,
    /// Keys whose checkpointed state is gone.
    removed: Vec<K>,
    /// Outputs of `process` calls, emitted with the next watermark's.
    pending: Vec<(K, EventTime, P::Output)>,
    watermark: EventTime,
    _element: PhantomData<fn(T)>,
}

impl<K: Key, T: Send + 'static, P: ProcessFunction<K, T>> KeyedProcess<K, T, P> {
    pub fn new(function: Arc<P>, allowed_lateness_ms: i64) -> KeyedProcess<K, T, P> {
        KeyedProcess {
            function,
            allowed_lateness_ms,
            keys: StateMap::default(),
            timers: BTreeSet::new(),
            removed: Vec::new(),
            pending: Vec::new(),
            watermark: NO_WATERMARK,
            _element: PhantomData,
        }
    }

    /// Runs `call` on `key`'s context, then files its timer changes and outputs, and drops
    /// the key if nothing of it is left.
    fn with_key(
        &mut self,
        key: K,
        out: &mut Vec<(K, EventTime, P::Output)>,
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
        out.extend(emitted.into_iter().map(|(time, output)| (key.clone(), time, output)));
    }
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(Error::EncodeState)
}

impl<K: Key, T: Send + 'static, P: ProcessFunction<K, T>> Operator for KeyedProcess<K, T, P> {
    type In = KeyedEvent<K, T>;
    type Out = (K, EventTime, P::Output);
    type Context = ();

    fn process_batch(&mut self, batch: &mut Vec<KeyedEvent<K, T>>) -> u64 {
        let mut late = 0;
        let mut pending = std::mem::take(&mut self.pending);
        for KeyedEvent { key, time, value } in batch.drain(..) {
            if self.watermark != NO_WATERMARK && time.saturating_add(self.allowed_lateness_ms) < self.watermark {
                late += 1;
                continue;
            }
            self.with_key(key, &mut pending, |function, key, context| function.process(key, value, time, context));
        }
        self.pending = pending;
        late
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Vec<Self::Out>) {
        out.append(&mut self.pending);
        debug_assert!(watermark >= self.watermark, "the watermark went back from {} to {watermark}", self.watermark);
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

    fn checkpoint(&mut self, _: &(), out: &mut ChangelogWriter<'_>) -> Result<()> {
        for key in self.removed.drain(..) {
            out.write(encode(&key)?, None);
        }
        for (key, entry) in self.keys.iter_mut().filter(|(_, e)| e.dirty) {
            out.write(encode(key)?, Some(encode(&*entry)?));
            entry.dirty = false;
            entry.persisted = true;
        }
        Ok(())
    }

    fn restore(&mut self, _: &mut (), key: &[u8], value: &[u8]) -> Result<()> {
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
