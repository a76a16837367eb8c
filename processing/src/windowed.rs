//! A keyed windowed aggregation: events go into the windows of their event time, per key;
//! each window's result is emitted exactly once, when the watermark passes its end plus the
//! allowed lateness. An event for a window that has already fired is late: dropped and
//! counted, never a changed result.
//!
//! Invariant: a (key, window) pair is emitted at most once; results come out in window-end
//! order, then by window start and key, so the output is deterministic.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use crate::aggregate::Aggregate;
use crate::watermark::{EventTime, NO_WATERMARK};
use crate::window::{Sessions, Window, WindowSpec};

pub struct WindowedAggregation<K, A: Aggregate> {
    spec: WindowSpec,
    allowed_lateness_ms: i64,
    /// Tumbling and sliding windows still open, by (end, start).
    windows: BTreeMap<(EventTime, EventTime), HashMap<K, A>>,
    sessions: HashMap<K, Sessions<A>>,
    /// No session closes before this: advances below it skip the scan of every key.
    next_session_close: EventTime,
    watermark: EventTime,
    late_dropped: u64,
}

impl<K: Hash + Eq + Ord + Clone, A: Aggregate> WindowedAggregation<K, A> {
    pub fn new(spec: WindowSpec, allowed_lateness_ms: i64) -> Result<Self, String> {
        spec.validate()?;
        if allowed_lateness_ms < 0 {
            return Err(format!("allowed lateness cannot be negative, got {allowed_lateness_ms} ms"));
        }
        Ok(WindowedAggregation {
            spec,
            allowed_lateness_ms,
            windows: BTreeMap::new(),
            sessions: HashMap::new(),
            next_session_close: EventTime::MAX,
            watermark: NO_WATERMARK,
            late_dropped: 0,
        })
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
        if let WindowSpec::Session { gap_ms } = self.spec {
            let sessions = self.sessions.entry(key).or_insert_with(|| Sessions::new(gap_ms));
            // Late only if it would start a session that has already closed; joining an
            // open session is fine.
            let closes_at = time.saturating_add(gap_ms);
            if !sessions.touches(time)
                && self.watermark != NO_WATERMARK
                && closes_at.saturating_add(self.allowed_lateness_ms) <= self.watermark
            {
                self.late_dropped += 1;
                return false;
            }
            sessions.add(time, A::default, |a, b| a.merge(b)).add(value);
            self.next_session_close = self.next_session_close.min(closes_at);
            return true;
        }
        let mut placed = false;
        for window in self.spec.assign(time) {
            if self.fired(window.end) {
                continue;
            }
            self.windows.entry((window.end, window.start)).or_default().entry(key.clone()).or_default().add(value);
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
            for (key, sessions) in self.sessions.iter_mut() {
                for (start, last, state) in sessions.close(close_before) {
                    // A session's window ends at its last event; it closed at last + gap.
                    out.push((key.clone(), Window { start, end: last }, state.result()));
                }
            }
            self.sessions.retain(|_, s| !s.is_empty());
            self.next_session_close =
                self.sessions.values().filter_map(Sessions::next_close).min().unwrap_or(EventTime::MAX);
        } else {
            while let Some((&(end, start), _)) = self.windows.first_key_value() {
                if !self.fired(end) {
                    break;
                }
                let Some((_, states)) = self.windows.pop_first() else { break };
                let mut keyed: Vec<(K, A)> = states.into_iter().collect();
                keyed.sort_by(|a, b| a.0.cmp(&b.0));
                out.extend(keyed.into_iter().map(|(key, state)| (key, Window { start, end }, state.result())));
            }
        }
        out.sort_by(|a, b| (a.1.end, a.1.start).cmp(&(b.1.end, b.1.start)).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// Keys with open state (for memory figures and inspection).
    pub fn open_state(&self) -> usize {
        self.windows.values().map(HashMap::len).sum::<usize>() + self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Count;

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
