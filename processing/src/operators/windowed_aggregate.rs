//! The keyed windowed aggregation operator: events go into the windows of their event
//! time, per key; each window's result is emitted exactly once, when the watermark passes
//! its end plus the allowed lateness. An event for a window that has already fired is late:
//! dropped and counted, never a changed result.
//!
//! Invariants: a (key, window) pair is emitted at most once; results come out in window-end
//! order, then by window start and key, so the output is deterministic; the watermark never
//! goes back.
//!
//! A checkpoint writes, through the job's [`StateCodec`], the windows and sessions changed
//! since the last one, and the removal of fired ones an earlier checkpoint had written. A
//! window's changelog key is its end and start (big-endian, so keys sort by time), then the
//! key; a key's sessions are one record under the key.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::dataflow::EventTime;
use crate::error::{DefinitionError, Error, Result};
use crate::operators::aggregate_functions::Aggregate;
use crate::operators::state::StateMap;
use crate::operators::watermark::NO_WATERMARK;
use crate::operators::window_assigner::{Sessions, Window, WindowSpec};
use crate::operators::{ChangelogWriter, KeyedEvent, Operator};

/// How an event's value goes into the aggregate of each window it falls in.
pub trait Fold<V, A>: Send {
    fn fold(&self, aggregate: &mut A, value: &V);
}

/// Folds with the aggregate's own [`Aggregate::add`].
pub struct AddInput;

impl<V, A: Aggregate<Input = V>> Fold<V, A> for AddInput {
    fn fold(&self, aggregate: &mut A, value: &V) {
        aggregate.add(value);
    }
}

/// A function folding a value into an aggregate.
pub type FoldFn<V, A> = Arc<dyn Fn(&mut A, &V) + Send + Sync>;

/// Folds with a function of the aggregate and the value (the builder's `aggregate`).
pub struct FoldWith<V, A>(pub FoldFn<V, A>);

impl<V, A> Fold<V, A> for FoldWith<V, A> {
    fn fold(&self, aggregate: &mut A, value: &V) {
        (self.0)(aggregate, value)
    }
}

/// A key's open sessions as a checkpoint sees them: (start, last event, state).
pub type OpenSessions<A> = [(EventTime, EventTime, A)];

/// How a windowed aggregate's keys and states are written to its changelog and read back.
/// A codec implements the kind of state its operator keeps (windows or sessions); the other
/// pair of methods is never called.
pub trait StateCodec<K, A>: Send {
    /// What keys and states are written through: the key group's dictionary of interned
    /// names, say.
    type Context: ?Sized;

    fn encode_key(&self, context: &Self::Context, key: &K, out: &mut Vec<u8>) -> Result<()>;
    fn decode_key(&self, context: &mut Self::Context, key: &[u8]) -> Result<K>;
    fn encode_window(&self, context: &Self::Context, state: &A) -> Result<Vec<u8>>;
    fn decode_window(&self, context: &mut Self::Context, value: &[u8]) -> Result<A>;
    fn encode_sessions(&self, context: &Self::Context, open: &OpenSessions<A>) -> Result<Vec<u8>>;
    fn decode_sessions(&self, context: &mut Self::Context, value: &[u8]) -> Result<Vec<(EventTime, EventTime, A)>>;
}

/// Keys and states as JSON through serde (the builder's jobs); `what` names the state in
/// the error a record that does not decode gives.
pub struct JsonState {
    pub what: &'static str,
}

impl<K: Serialize + DeserializeOwned, A: Serialize + DeserializeOwned> StateCodec<K, A> for JsonState {
    type Context = ();

    fn encode_key(&self, _: &(), key: &K, out: &mut Vec<u8>) -> Result<()> {
        serde_json::to_writer(out, key).map_err(Error::EncodeState)
    }

    fn decode_key(&self, _: &mut (), key: &[u8]) -> Result<K> {
        serde_json::from_slice(key).map_err(|source| Error::DecodeState { what: self.what, source })
    }

    fn encode_window(&self, _: &(), state: &A) -> Result<Vec<u8>> {
        serde_json::to_vec(state).map_err(Error::EncodeState)
    }

    fn decode_window(&self, _: &mut (), value: &[u8]) -> Result<A> {
        serde_json::from_slice(value).map_err(|source| Error::DecodeState { what: self.what, source })
    }

    fn encode_sessions(&self, _: &(), open: &OpenSessions<A>) -> Result<Vec<u8>> {
        serde_json::to_vec(open).map_err(Error::EncodeState)
    }

    fn decode_sessions(&self, _: &mut (), value: &[u8]) -> Result<Vec<(EventTime, EventTime, A)>> {
        serde_json::from_slice(value).map_err(|source| Error::DecodeState { what: self.what, source })
    }
}

/// State with what a checkpoint needs to know about it.
struct Slot<S> {
    state: S,
    /// Changed since the last checkpoint.
    dirty: bool,
    /// Written by a checkpoint: its removal must be written too.
    persisted: bool,
}

impl<S> Slot<S> {
    fn new(state: S) -> Slot<S> {
        Slot { state, dirty: true, persisted: false }
    }
}

/// Keyed windowed aggregation of values `V` into aggregates `A`, folded by `F`, its state
/// written by codec `C`.
pub struct WindowedAggregate<K, V, A, C, F = AddInput> {
    spec: WindowSpec,
    allowed_lateness_ms: i64,
    /// Tumbling and sliding windows still open, by (end, start).
    windows: BTreeMap<(EventTime, EventTime), StateMap<K, Slot<A>>>,
    sessions: StateMap<K, Slot<Sessions<A>>>,
    /// Checkpointed state that has fired since: (key, window; none for sessions).
    removed: Vec<(K, Option<Window>)>,
    /// No session closes before this: advances below it skip the scan of every key.
    next_session_close: EventTime,
    watermark: EventTime,
    /// The last tumbling or sliding window fired, as (end, start): they fire in this order.
    last_fired: Option<(EventTime, EventTime)>,
    late_dropped: u64,
    codec: C,
    fold: F,
    _value: PhantomData<fn(&V)>,
}

impl<K: Hash + Eq + Ord + Clone, V, A: Aggregate, C, F: Fold<V, A>> WindowedAggregate<K, V, A, C, F> {
    pub fn new(spec: WindowSpec, allowed_lateness_ms: i64, codec: C, fold: F) -> Result<Self, DefinitionError> {
        spec.validate()?;
        if allowed_lateness_ms < 0 {
            return Err(DefinitionError::NegativeLateness(allowed_lateness_ms));
        }
        Ok(WindowedAggregate {
            spec,
            allowed_lateness_ms,
            windows: BTreeMap::new(),
            sessions: StateMap::default(),
            removed: Vec::new(),
            next_session_close: EventTime::MAX,
            watermark: NO_WATERMARK,
            last_fired: None,
            late_dropped: 0,
            codec,
            fold,
            _value: PhantomData,
        })
    }

    pub fn is_session(&self) -> bool {
        matches!(self.spec, WindowSpec::Session { .. })
    }

    /// Events dropped because every window they belong to had already fired.
    pub fn late_dropped(&self) -> u64 {
        self.late_dropped
    }

    fn fired(&self, close_at: EventTime) -> bool {
        self.watermark != NO_WATERMARK && close_at.saturating_add(self.allowed_lateness_ms) <= self.watermark
    }

    /// Adds an event to the windows of its time; false if it was late and dropped.
    pub fn add(&mut self, key: K, time: EventTime, value: &V) -> bool {
        if let WindowSpec::Session { gap_ms } = self.spec {
            return self.add_to_session(key, time, gap_ms, value);
        }
        let mut placed = false;
        for window in self.spec.windows(time) {
            if self.fired(window.end) {
                continue;
            }
            debug_assert!(self.last_fired < Some((window.end, window.start)), "{window:?} has fired");
            let slot = self
                .windows
                .entry((window.end, window.start))
                .or_default()
                .entry(key.clone())
                .or_insert_with(|| Slot::new(A::default()));
            slot.dirty = true;
            self.fold.fold(&mut slot.state, value);
            placed = true;
        }
        if !placed {
            self.late_dropped += 1;
        }
        placed
    }

    fn add_to_session(&mut self, key: K, time: EventTime, gap_ms: i64, value: &V) -> bool {
        // Late only if it would start a session that has already closed; joining an open
        // session is fine. Checked before any state is made for the key.
        let closes_at = time.saturating_add(gap_ms);
        if self.fired(closes_at) && !self.sessions.get(&key).is_some_and(|s| s.state.touches(time)) {
            self.late_dropped += 1;
            return false;
        }
        let slot = self.sessions.entry(key).or_insert_with(|| Slot::new(Sessions::new(gap_ms)));
        slot.dirty = true;
        self.fold.fold(slot.state.add(time, A::default, |a, b| a.merge(b)), value);
        self.next_session_close = self.next_session_close.min(closes_at);
        true
    }

    /// Moves the watermark (never backwards) and appends the results it completes, in
    /// window-end order, then by window start and key.
    pub fn fire(&mut self, watermark: EventTime, out: &mut Vec<(K, Window, A::Output)>) {
        debug_assert!(watermark >= self.watermark, "the watermark went back from {} to {watermark}", self.watermark);
        self.watermark = self.watermark.max(watermark);
        let from = out.len();
        if self.is_session() {
            self.fire_sessions(out);
        } else {
            self.fire_windows(out);
        }
        out[from..].sort_by(|a, b| (a.1.end, a.1.start).cmp(&(b.1.end, b.1.start)).then_with(|| a.0.cmp(&b.0)));
    }

    fn fire_sessions(&mut self, out: &mut Vec<(K, Window, A::Output)>) {
        let close_before = self.watermark.saturating_sub(self.allowed_lateness_ms);
        if self.next_session_close > close_before {
            return;
        }
        for (key, slot) in self.sessions.iter_mut() {
            let closed = slot.state.close(close_before);
            if closed.is_empty() {
                continue;
            }
            slot.dirty = true;
            for (start, last, state) in closed {
                // A session's window ends at its last event; it closed at last + gap.
                out.push((key.clone(), Window { start, end: last }, state.result()));
            }
        }
        let removed = &mut self.removed;
        self.sessions.retain(|key, slot| {
            if !slot.state.is_empty() {
                return true;
            }
            if slot.persisted {
                removed.push((key.clone(), None));
            }
            false
        });
        self.next_session_close =
            self.sessions.values().filter_map(|s| s.state.next_close()).min().unwrap_or(EventTime::MAX);
    }

    fn fire_windows(&mut self, out: &mut Vec<(K, Window, A::Output)>) {
        while let Some((&(end, start), _)) = self.windows.first_key_value() {
            if !self.fired(end) {
                break;
            }
            let Some((_, states)) = self.windows.pop_first() else { break };
            debug_assert!(self.last_fired < Some((end, start)), "a window fires once");
            self.last_fired = Some((end, start));
            let window = Window { start, end };
            let mut keyed: Vec<(K, Slot<A>)> = states.into_iter().collect();
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, slot) in keyed {
                if slot.persisted {
                    self.removed.push((key.clone(), Some(window)));
                }
                out.push((key, window, slot.state.result()));
            }
        }
    }

    /// Keys with open state (for memory figures and inspection).
    pub fn state_entries(&self) -> usize {
        self.windows.values().map(StateMap::len).sum::<usize>() + self.sessions.len()
    }

    /// Visits every key with state, and every key whose removal a checkpoint has still to
    /// write, with each of its states.
    pub fn for_each(&self, mut visit: impl FnMut(&K, Option<&A>)) {
        for states in self.windows.values() {
            for (key, slot) in states {
                visit(key, Some(&slot.state));
            }
        }
        for (key, slot) in &self.sessions {
            visit(key, None);
            for (_, _, state) in slot.state.open() {
                visit(key, Some(state));
            }
        }
        for (key, _) in &self.removed {
            visit(key, None);
        }
    }

    /// Rewrites every key (keys must stay distinct) and state in place, keeping windows,
    /// sessions and what the next checkpoint owes: for renumbering interned keys.
    pub fn remap(&mut self, key: impl Fn(&K) -> K, mut state: impl FnMut(&mut A)) {
        for states in self.windows.values_mut() {
            let old = std::mem::take(states);
            for (k, mut slot) in old {
                state(&mut slot.state);
                states.insert(key(&k), slot);
            }
        }
        let old = std::mem::take(&mut self.sessions);
        for (k, mut slot) in old {
            slot.state.states_mut().for_each(&mut state);
            self.sessions.insert(key(&k), slot);
        }
        for (k, _) in self.removed.iter_mut() {
            *k = key(k);
        }
    }

    /// A window's state from a checkpoint.
    fn restore_window(&mut self, key: K, window: Window, state: A) {
        let slot = Slot { state, dirty: false, persisted: true };
        self.windows.entry((window.end, window.start)).or_default().insert(key, slot);
    }

    /// A key's open sessions from a checkpoint, as (start, last event, state).
    fn restore_sessions(&mut self, key: K, open: Vec<(EventTime, EventTime, A)>) -> Result<()> {
        let WindowSpec::Session { gap_ms } = self.spec else { return Ok(()) };
        let sessions = Sessions::from_open(gap_ms, open)?;
        if let Some(close) = sessions.next_close() {
            self.next_session_close = self.next_session_close.min(close);
        }
        self.sessions.insert(key, Slot { state: sessions, dirty: false, persisted: true });
        Ok(())
    }
}

impl<K, V, A, C, F> WindowedAggregate<K, V, A, C, F>
where
    K: Hash + Eq + Ord + Clone,
    A: Aggregate,
    C: StateCodec<K, A>,
    F: Fold<V, A>,
{
    /// The removals of fired state first, then the changed windows, then the sessions.
    fn write_changes(&mut self, context: &C::Context, out: &mut ChangelogWriter<'_>) -> Result<()> {
        let codec = &self.codec;
        for (key, window) in self.removed.drain(..) {
            let key = match window {
                Some(window) => window_key(codec, context, window, &key)?,
                None => session_key(codec, context, &key)?,
            };
            out.write(key, None);
        }
        for (&(end, start), states) in self.windows.iter_mut() {
            for (key, slot) in states.iter_mut().filter(|(_, slot)| slot.dirty) {
                let value = codec.encode_window(context, &slot.state)?;
                out.write(window_key(codec, context, Window { start, end }, key)?, Some(value));
                slot.dirty = false;
                slot.persisted = true;
            }
        }
        for (key, slot) in self.sessions.iter_mut().filter(|(_, slot)| slot.dirty) {
            let open = slot.state.open();
            let value = if open.is_empty() { None } else { Some(codec.encode_sessions(context, open)?) };
            out.write(session_key(codec, context, key)?, value);
            slot.dirty = false;
            slot.persisted = true;
        }
        Ok(())
    }
}

/// A window's changelog key: its end and start, big-endian, then the encoded key.
fn window_key<K, A, C: StateCodec<K, A>>(codec: &C, context: &C::Context, window: Window, key: &K) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(&window.end.to_be_bytes());
    bytes.extend_from_slice(&window.start.to_be_bytes());
    codec.encode_key(context, key, &mut bytes)?;
    Ok(bytes)
}

fn session_key<K, A, C: StateCodec<K, A>>(codec: &C, context: &C::Context, key: &K) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    codec.encode_key(context, key, &mut bytes)?;
    Ok(bytes)
}

impl<K, V, A, C, F> Operator for WindowedAggregate<K, V, A, C, F>
where
    K: Hash + Eq + Ord + Clone + Send,
    A: Aggregate + Send,
    C: StateCodec<K, A>,
    F: Fold<V, A>,
{
    type In = KeyedEvent<K, V>;
    type Out = (K, Window, A::Output);
    type Context = C::Context;

    fn process_batch(&mut self, batch: &mut Vec<KeyedEvent<K, V>>) -> u64 {
        let before = self.late_dropped;
        for event in batch.drain(..) {
            self.add(event.key, event.time, &event.value);
        }
        self.late_dropped - before
    }

    fn on_watermark(&mut self, watermark: EventTime, out: &mut Vec<Self::Out>) {
        self.fire(watermark, out);
    }

    fn checkpoint(&mut self, context: &C::Context, out: &mut ChangelogWriter<'_>) -> Result<()> {
        self.write_changes(context, out)
    }

    fn restore(&mut self, context: &mut C::Context, key: &[u8], value: &[u8]) -> Result<()> {
        if self.is_session() {
            let key = self.codec.decode_key(context, key)?;
            let open = self.codec.decode_sessions(context, value)?;
            return self.restore_sessions(key, open);
        }
        if key.len() < 16 {
            return Err(Error::ShortWindowKey(key.len()));
        }
        let (end, rest) = key.split_at(8);
        let (start, key) = rest.split_at(8);
        let time = |b: &[u8]| i64::from_be_bytes(b.try_into().unwrap_or_default());
        let window = Window { start: time(start), end: time(end) };
        let key = self.codec.decode_key(context, key)?;
        let state = self.codec.decode_window(context, value)?;
        self.restore_window(key, window, state);
        Ok(())
    }

    /// The watermark a checkpoint recorded, before its state is restored.
    fn restore_watermark(&mut self, watermark: EventTime) {
        self.watermark = self.watermark.max(watermark);
    }

    fn state_entries(&self) -> usize {
        WindowedAggregate::state_entries(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::aggregate_functions::Count;

    /// Counts per key and window, with no changelog.
    type Counts<K> = WindowedAggregate<K, (), Count, ()>;

    /// Fires what `watermark` completes.
    fn advance<K: Hash + Eq + Ord + Clone>(op: &mut Counts<K>, watermark: EventTime) -> Vec<(K, Window, u64)> {
        let mut out = Vec::new();
        op.fire(watermark, &mut out);
        out
    }

    /// A deterministic pseudo-random sequence (xorshift), for event times with jitter.
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn results_match_a_brute_force_count_with_out_of_order_events() {
        let bound = 4_000;
        for spec in
            [WindowSpec::Tumbling { size_ms: 60_000 }, WindowSpec::Sliding { size_ms: 300_000, slide_ms: 60_000 }]
        {
            let mut op: Counts<u32> = WindowedAggregate::new(spec, 0, (), AddInput).unwrap();
            let mut seed = 42;
            let mut events = Vec::new();
            let mut max_seen = i64::MIN;
            let mut results = Vec::new();
            for i in 0..20_000i64 {
                let jitter = (next(&mut seed) % bound as u64) as i64;
                let time = 1_000_000 + i * 97 - jitter;
                let key = (next(&mut seed) % 7) as u32;
                assert!(op.add(key, time, &()), "no event is late when jitter stays within the bound");
                events.push((key, time));
                max_seen = max_seen.max(time);
                results.extend(advance(&mut op, max_seen - bound));
            }
            results.extend(advance(&mut op, i64::MAX));
            let mut expected: BTreeMap<(i64, i64, u32), u64> = BTreeMap::new();
            for (key, time) in &events {
                for w in spec.assign(*time) {
                    *expected.entry((w.end, w.start, *key)).or_default() += 1;
                }
            }
            let got: BTreeMap<(i64, i64, u32), u64> =
                results.iter().map(|(k, w, c)| ((w.end, w.start, *k), *c)).collect();
            assert_eq!(got.len(), results.len(), "each (key, window) is emitted once");
            assert_eq!(got, expected, "{spec:?}");
            assert_eq!(op.state_entries(), 0);
        }
    }

    #[test]
    fn late_events_are_dropped_and_counted_never_changing_a_result() {
        let mut op: Counts<&str> =
            WindowedAggregate::new(WindowSpec::Tumbling { size_ms: 10 }, 5, (), AddInput).unwrap();
        op.add("a", 3, &());
        assert!(advance(&mut op, 12).is_empty(), "allowed lateness delays the firing");
        assert!(op.add("a", 7, &()), "still within the allowed lateness");
        assert_eq!(advance(&mut op, 15), vec![("a", Window { start: 0, end: 10 }, 2)]);
        assert!(!op.add("a", 8, &()));
        assert_eq!(op.late_dropped(), 1);
        assert!(advance(&mut op, 100).is_empty());
    }

    #[test]
    fn sessions_are_emitted_when_their_gap_has_passed() {
        let mut op: Counts<&str> = WindowedAggregate::new(WindowSpec::Session { gap_ms: 30 }, 0, (), AddInput).unwrap();
        for t in [100, 110, 150, 105] {
            op.add("u", t, &());
        }
        op.add("v", 120, &());
        assert_eq!(advance(&mut op, 140), vec![("u", Window { start: 100, end: 110 }, 3)]);
        assert!(op.add("u", 125, &()), "joins the open session at 150");
        assert!(!op.add("u", 50, &()), "would start a session that already closed");
        let out = advance(&mut op, 1_000);
        assert_eq!(out, vec![("v", Window { start: 120, end: 120 }, 1), ("u", Window { start: 125, end: 150 }, 2)]);
    }
}
