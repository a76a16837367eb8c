//! Event-time windows: tumbling and sliding windows aligned to the epoch (start inclusive,
//! end exclusive), and session windows that grow while events keep arriving within the gap
//! and merge when an event bridges two of them.
//!
//! A window is complete, and its result is emitted once, when the watermark reaches its end
//! (for a session: its last event plus the gap).

use crate::dataflow::EventTime;
use crate::error::DefinitionError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    pub start: EventTime,
    /// Exclusive.
    pub end: EventTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowSpec {
    Tumbling {
        size_ms: i64,
    },
    /// Windows of `size_ms` starting every `slide_ms`: each event is in `size / slide` of them.
    Sliding {
        size_ms: i64,
        slide_ms: i64,
    },
    Session {
        gap_ms: i64,
    },
}

/// More windows per event than this is a definition error (sliding 1 ms over a day would
/// put every event in 86 million windows).
pub const MAX_WINDOWS_PER_EVENT: i64 = 1_000;

impl WindowSpec {
    /// Checks the definition; the message names what is wrong.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        match *self {
            WindowSpec::Tumbling { size_ms } if size_ms <= 0 => Err(DefinitionError::WindowSize(size_ms)),
            WindowSpec::Sliding { size_ms, slide_ms } if size_ms <= 0 || slide_ms <= 0 => {
                Err(DefinitionError::WindowSizeOrSlide { size_ms, slide_ms })
            }
            WindowSpec::Sliding { size_ms, slide_ms } if size_ms % slide_ms != 0 => {
                Err(DefinitionError::SlideNotDivisor { size_ms, slide_ms })
            }
            WindowSpec::Sliding { size_ms, slide_ms } if size_ms / slide_ms > MAX_WINDOWS_PER_EVENT => {
                Err(DefinitionError::TooManyWindows { size_ms, slide_ms, max: MAX_WINDOWS_PER_EVENT })
            }
            WindowSpec::Session { gap_ms } if gap_ms <= 0 => Err(DefinitionError::SessionGap(gap_ms)),
            _ => Ok(()),
        }
    }

    /// The tumbling or sliding windows holding an event at `time` (none for sessions, which
    /// [`Sessions`] tracks), earliest first. Allocates nothing: it runs once per event.
    pub fn windows(&self, time: EventTime) -> impl Iterator<Item = Window> {
        let (size_ms, slide_ms, count) = match *self {
            WindowSpec::Tumbling { size_ms } => (size_ms, size_ms, 1),
            WindowSpec::Sliding { size_ms, slide_ms } => (size_ms, slide_ms, size_ms / slide_ms),
            WindowSpec::Session { .. } => (1, 1, 0),
        };
        let last_start = time - time.rem_euclid(slide_ms);
        (0..count).rev().map(move |i| {
            let start = last_start - i * slide_ms;
            Window { start, end: start.saturating_add(size_ms) }
        })
    }

    /// [`WindowSpec::windows`], collected.
    pub fn assign(&self, time: EventTime) -> Vec<Window> {
        self.windows(time).collect()
    }
}

/// One key's open sessions, each with its accumulated state.
#[derive(Clone, Debug)]
pub struct Sessions<S> {
    gap_ms: i64,
    /// Sorted by start; never overlapping (within the gap).
    open: Vec<(EventTime, EventTime, S)>,
}

impl<S> Sessions<S> {
    pub fn new(gap_ms: i64) -> Sessions<S> {
        Sessions { gap_ms, open: Vec::new() }
    }

    /// Sessions from a checkpoint: (start, last event, state), as [`Sessions::open`] gave them.
    /// They must be apart (each ends before the next starts, by more than the gap), as every
    /// checkpoint writes them; anything else is damaged state, refused.
    pub fn from_open(gap_ms: i64, mut open: Vec<(EventTime, EventTime, S)>) -> crate::error::Result<Sessions<S>> {
        open.sort_by_key(|(start, _, _)| *start);
        if let Some((start, last, _)) = open.iter().find(|(start, last, _)| start > last) {
            return Err(crate::error::Error::SessionsOverlap(format!("a session from {start} ends at {last}")));
        }
        if let Some(w) = open.windows(2).find(|w| w[0].1.saturating_add(gap_ms) >= w[1].0) {
            let (a, b) = (w[0].0, w[1].0);
            return Err(crate::error::Error::SessionsOverlap(format!("sessions from {a} and {b} are within the gap")));
        }
        Ok(Sessions { gap_ms, open })
    }

    /// The open sessions, by start: (start, last event, state).
    pub fn open(&self) -> &[(EventTime, EventTime, S)] {
        &self.open
    }

    /// The open sessions' states, to rewrite in place.
    pub fn states_mut(&mut self) -> impl Iterator<Item = &mut S> {
        self.open.iter_mut().map(|(_, _, state)| state)
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// When the earliest open session closes (its last event + gap).
    pub fn next_close(&self) -> Option<EventTime> {
        self.open.iter().map(|(_, last, _)| last.saturating_add(self.gap_ms)).min()
    }

    /// Whether an event at `time` would join (or bridge) an open session.
    pub fn touches(&self, time: EventTime) -> bool {
        let gap = self.gap_ms;
        self.open.iter().any(|(start, last, _)| start.saturating_sub(gap) <= time && time <= last.saturating_add(gap))
    }

    /// Adds an event: it joins the session it falls within the gap of, starts a new one, or
    /// bridges two sessions, which `merge` then combines. Returns the state to update.
    pub fn add(&mut self, time: EventTime, new: impl FnOnce() -> S, merge: impl Fn(&mut S, S)) -> &mut S {
        let gap = self.gap_ms;
        // Sessions this event touches: [start - gap, last + gap] contains it.
        let first = self.open.partition_point(|(_, last, _)| last.saturating_add(gap) < time);
        let mut end = first;
        while end < self.open.len() && self.open[end].0.saturating_sub(gap) <= time {
            end += 1;
        }
        if first == end {
            self.open.insert(first, (time, time, new()));
            return &mut self.open[first].2;
        }
        let mut merged = self.open.drain(first..end);
        let (mut start, mut last, mut state) = merged.next().expect("at least one session is touched");
        for (s, l, other) in merged {
            start = start.min(s);
            last = last.max(l);
            merge(&mut state, other);
        }
        start = start.min(time);
        last = last.max(time);
        self.open.insert(first, (start, last, state));
        &mut self.open[first].2
    }

    /// Removes and returns the sessions the watermark has closed (last event + gap at or
    /// below it), as (start, last event, state).
    pub fn close(&mut self, watermark: EventTime) -> Vec<(EventTime, EventTime, S)> {
        let gap = self.gap_ms;
        if !self.open.iter().any(|(_, last, _)| last.saturating_add(gap) <= watermark) {
            return Vec::new();
        }
        let (closed, open): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.open).into_iter().partition(|(_, last, _)| last.saturating_add(gap) <= watermark);
        self.open = open;
        debug_assert!(self.open.windows(2).all(|w| w[0].0 < w[1].0), "open sessions are sorted and apart");
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_and_sliding_windows_are_aligned_to_the_epoch() {
        let minute = 60_000;
        let tumbling = WindowSpec::Tumbling { size_ms: minute };
        assert_eq!(tumbling.assign(125_000), vec![Window { start: 120_000, end: 180_000 }]);
        assert_eq!(tumbling.assign(120_000), vec![Window { start: 120_000, end: 180_000 }], "start is inclusive");
        assert_eq!(tumbling.assign(-1), vec![Window { start: -60_000, end: 0 }]);
        let sliding = WindowSpec::Sliding { size_ms: 5 * minute, slide_ms: minute };
        let windows = sliding.assign(125_000);
        assert_eq!(windows.len(), 5);
        assert_eq!(windows[0], Window { start: -120_000, end: 180_000 });
        assert_eq!(windows[4], Window { start: 120_000, end: 420_000 });
        assert!(windows.iter().all(|w| w.start <= 125_000 && 125_000 < w.end));
    }

    #[test]
    fn bad_definitions_are_refused_with_a_reason() {
        assert!(WindowSpec::Tumbling { size_ms: 0 }.validate().unwrap_err().to_string().contains("positive"));
        assert!(WindowSpec::Sliding { size_ms: 10, slide_ms: 3 }
            .validate()
            .unwrap_err()
            .to_string()
            .contains("multiple"));
        assert!(WindowSpec::Sliding { size_ms: 86_400_000, slide_ms: 1 }.validate().is_err());
        assert!(WindowSpec::Session { gap_ms: -5 }.validate().is_err());
        assert!(WindowSpec::Session { gap_ms: 1_800_000 }.validate().is_ok());
    }

    #[test]
    fn sessions_grow_merge_and_close_after_the_gap() {
        let mut sessions: Sessions<u32> = Sessions::new(10);
        let merge = |a: &mut u32, b: u32| *a += b;
        *sessions.add(100, || 0, merge) += 1;
        *sessions.add(125, || 0, merge) += 1;
        *sessions.add(105, || 0, merge) += 1;
        assert_eq!(sessions.open.len(), 2);
        // 115 is within the gap of both (105 + 10 and 125 - 10): the two sessions merge.
        *sessions.add(115, || 0, merge) += 1;
        assert_eq!(sessions.open, vec![(100, 125, 4)]);
        assert!(sessions.close(134).is_empty(), "closes only at last event + gap");
        assert_eq!(sessions.close(135), vec![(100, 125, 4)]);
        assert!(sessions.is_empty());
    }

    #[test]
    fn sessions_from_a_damaged_checkpoint_are_refused() {
        assert!(Sessions::from_open(10, vec![(100, 125, 1u32), (200, 210, 1)]).is_ok());
        assert!(Sessions::from_open(10, vec![(130, 140, 1u32), (100, 125, 1)]).is_err(), "within the gap");
        assert!(Sessions::from_open(10, vec![(100, 90, 1u32)]).is_err(), "ends before it starts");
    }
}
