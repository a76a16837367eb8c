//! A keyed windowed aggregation: events go into the windows of their event time, per key;
//! each window's result is emitted exactly once, when the watermark passes its end plus the
//! allowed lateness. An event for a window that has already fired is late: dropped and
//! counted, never a changed result.
//!
//! Invariant: a (key, window) pair is emitted at most once; results come out in window-end
//! order, then by window start and key, so the output is deterministic.
//!
//! For checkpoints it tracks which state changed since the last one ([`drain_changes`]):
//! the changed windows and sessions, and the fired ones that a checkpoint had written, so a
//! changelog gets their removal. State comes back with the `restore_*` functions.
//!
//! [`drain_changes`]: WindowedAggregation::drain_changes

use std::collections::BTreeMap;
use std::hash::Hash;

use crate::error::DefinitionError;
use crate::operators::aggregate_functions::Aggregate;
use crate::operators::state::StateMap;
use crate::operators::watermark::{EventTime, NO_WATERMARK};
use crate::operators::window_assigner::{Sessions, Window, WindowSpec};

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

/// A change since the last checkpoint, as [`WindowedAggregation::drain_changes`] reports it.
pub enum StateChange<'a, A> {
    /// A window's state; `None` once the window has fired and its state is gone.
    Window(Window, Option<&'a A>),
    /// A key's open sessions as (start, last event, state); empty once none is open.
    Sessions(&'a [(EventTime, EventTime, A)]),
}

pub struct WindowedAggregation<K, A: Aggregate> {
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
    late_dropped: u64,
}

impl<K: Hash + Eq + Ord + Clone, A: Aggregate> WindowedAggregation<K, A> {
    pub fn new(spec: WindowSpec, allowed_lateness_ms: i64) -> Result<Self, DefinitionError> {
        spec.validate()?;
        if allowed_lateness_ms < 0 {
            return Err(DefinitionError::NegativeLateness(allowed_lateness_ms));
        }
        Ok(WindowedAggregation {
            spec,
            allowed_lateness_ms,
            windows: BTreeMap::new(),
            sessions: StateMap::default(),
            removed: Vec::new(),
            next_session_close: EventTime::MAX,
            watermark: NO_WATERMARK,
            late_dropped: 0,
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

    /// Adds an event; false if it was late and dropped.
    pub fn add(&mut self, key: K, time: EventTime, value: &A::Input) -> bool {
        self.add_with(key, time, |state| state.add(value))
    }

    /// Adds an event through `update`, applied to the state of each window it falls in;
    /// false if it was late and dropped.
    pub fn add_with(&mut self, key: K, time: EventTime, update: impl Fn(&mut A)) -> bool {
        if let WindowSpec::Session { gap_ms } = self.spec {
            // Late only if it would start a session that has already closed; joining an
            // open session is fine. Checked before any state is made for the key.
            let closes_at = time.saturating_add(gap_ms);
            let closed =
                self.watermark != NO_WATERMARK && closes_at.saturating_add(self.allowed_lateness_ms) <= self.watermark;
            if closed && !self.sessions.get(&key).is_some_and(|s| s.state.touches(time)) {
                self.late_dropped += 1;
                return false;
            }
            let slot = self.sessions.entry(key).or_insert_with(|| Slot::new(Sessions::new(gap_ms)));
            slot.dirty = true;
            update(slot.state.add(time, A::default, |a, b| a.merge(b)));
            self.next_session_close = self.next_session_close.min(closes_at);
            return true;
        }
        let mut placed = false;
        for window in self.spec.windows(time) {
            if self.fired(window.end) {
                continue;
            }
            let slot = self
                .windows
                .entry((window.end, window.start))
                .or_default()
                .entry(key.clone())
                .or_insert_with(|| Slot::new(A::default()));
            slot.dirty = true;
            update(&mut slot.state);
            placed = true;
        }
        if !placed {
            self.late_dropped += 1;
        }
        placed
    }

    /// Moves the watermark (never backwards) and returns the results it completes.
    pub fn advance(&mut self, watermark: EventTime) -> Vec<(K, Window, A::Output)> {
        self.watermark = self.watermark.max(watermark);
        let mut out = Vec::new();
        if let WindowSpec::Session { .. } = self.spec {
            let close_before = self.watermark.saturating_sub(self.allowed_lateness_ms);
            if self.next_session_close > close_before {
                return out;
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
        } else {
            while let Some((&(end, start), _)) = self.windows.first_key_value() {
                if !self.fired(end) {
                    break;
                }
                let Some((_, states)) = self.windows.pop_first() else { break };
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
        out.sort_by(|a, b| (a.1.end, a.1.start).cmp(&(b.1.end, b.1.start)).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// Keys with open state (for memory figures and inspection).
    pub fn open_state(&self) -> usize {
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

    /// Reports the state changed since the last call (with `everything`, all open state) and
    /// the removals of state an earlier call reported, then counts it all as checkpointed.
    pub fn drain_changes(&mut self, everything: bool, mut report: impl FnMut(&K, StateChange<'_, A>)) {
        for (key, window) in self.removed.drain(..) {
            match window {
                Some(window) => report(&key, StateChange::Window(window, None)),
                None => report(&key, StateChange::Sessions(&[])),
            }
        }
        for (&(end, start), states) in self.windows.iter_mut() {
            for (key, slot) in states.iter_mut().filter(|(_, slot)| slot.dirty || everything) {
                report(key, StateChange::Window(Window { start, end }, Some(&slot.state)));
                slot.dirty = false;
                slot.persisted = true;
            }
        }
        for (key, slot) in self.sessions.iter_mut().filter(|(_, slot)| slot.dirty || everything) {
            report(key, StateChange::Sessions(slot.state.open()));
            slot.dirty = false;
            slot.persisted = true;
        }
    }

    /// The watermark a checkpoint recorded, before its state is restored.
    pub fn restore_watermark(&mut self, watermark: EventTime) {
        self.watermark = self.watermark.max(watermark);
    }

    /// A window's state from a checkpoint.
    pub fn restore_window(&mut self, key: K, window: Window, state: A) {
        let slot = Slot { state, dirty: false, persisted: true };
        self.windows.entry((window.end, window.start)).or_default().insert(key, slot);
    }

    /// A key's open sessions from a checkpoint, as (start, last event, state).
    pub fn restore_sessions(&mut self, key: K, open: Vec<(EventTime, EventTime, A)>) {
        let WindowSpec::Session { gap_ms } = self.spec else { return };
        let sessions = Sessions::from_open(gap_ms, open);
        if let Some(close) = sessions.next_close() {
            self.next_session_close = self.next_session_close.min(close);
        }
        self.sessions.insert(key, Slot { state: sessions, dirty: false, persisted: true });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::aggregate_functions::Count;

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
            let mut op: WindowedAggregation<u32, Count> = WindowedAggregation::new(spec, 0).unwrap();
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
                results.extend(op.advance(max_seen - bound));
            }
            results.extend(op.advance(i64::MAX));
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
            assert_eq!(op.open_state(), 0);
        }
    }

    #[test]
    fn late_events_are_dropped_and_counted_never_changing_a_result() {
        let mut op: WindowedAggregation<&str, Count> =
            WindowedAggregation::new(WindowSpec::Tumbling { size_ms: 10 }, 5).unwrap();
        op.add("a", 3, &());
        assert!(op.advance(12).is_empty(), "allowed lateness delays the firing");
        assert!(op.add("a", 7, &()), "still within the allowed lateness");
        assert_eq!(op.advance(15), vec![("a", Window { start: 0, end: 10 }, 2)]);
        assert!(!op.add("a", 8, &()));
        assert_eq!(op.late_dropped(), 1);
        assert!(op.advance(100).is_empty());
    }

    #[test]
    fn sessions_are_emitted_when_their_gap_has_passed() {
        let mut op: WindowedAggregation<&str, Count> =
            WindowedAggregation::new(WindowSpec::Session { gap_ms: 30 }, 0).unwrap();
        for t in [100, 110, 150, 105] {
            op.add("u", t, &());
        }
        op.add("v", 120, &());
        assert_eq!(op.advance(140), vec![("u", Window { start: 100, end: 110 }, 3)]);
        assert!(op.add("u", 125, &()), "joins the open session at 150");
        assert!(!op.add("u", 50, &()), "would start a session that already closed");
        let out = op.advance(1_000);
        assert_eq!(out, vec![("v", Window { start: 120, end: 120 }, 1), ("u", Window { start: 125, end: 150 }, 2)]);
    }
}
