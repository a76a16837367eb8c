//! What a job computes, in the two shapes the runtime runs it in: a step over each batch of
//! a source partition's records, run by one task per partition (parse, filter, event time,
//! `key_by`: route each event to the key group that owns its key, into a [`Routed`]), and
//! keyed state run by one task per key group ([`KeyGroup`], made of operators), whose
//! results a last step combines per round (e.g. a ranking over every key).
//!
//! Invariant: a key always routes to the same key group (the routing hash is fixed), so a
//! key's state lives in exactly one task and one changelog partition.

use bytes::Bytes;

use crate::error::Result;

/// Event time in epoch milliseconds.
pub type EventTime = i64;

/// Event times this far past the wall clock are absurd: one would move the watermark past
/// every real event and make them all late.
pub const MAX_FUTURE_MS: i64 = 24 * 60 * 60_000;

/// Whether an event time cannot be right: negative, or more than [`MAX_FUTURE_MS`] past the
/// processing time `now_ms`.
pub fn is_absurd(event_time: EventTime, now_ms: i64) -> bool {
    event_time < 0 || event_time > now_ms.saturating_add(MAX_FUTURE_MS)
}

/// One record for a job: slices of the log, never copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
}

/// Why a record was skipped before it reached any operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not the format the job reads, or fields missing.
    Malformed,
    /// An event time that cannot be right (negative, or a day past the wall clock).
    AbsurdTimestamp,
}

/// A record a job writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRecord {
    pub topic: std::sync::Arc<str>,
    pub key: Bytes,
    pub value: Bytes,
    pub timestamp_ms: EventTime,
}

/// One change of keyed state for an operator's changelog: `None` removes the key.
pub struct StateRecord {
    pub operator: usize,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

pub trait Dataflow: Send + Sync + 'static {
    type Event: Send + 'static;
    type Result: Send + 'static;
    type Group: KeyGroup<Event = Self::Event, Result = Self::Result>;

    /// The stateful operators, one changelog each, in the order [`StateRecord::operator`]
    /// numbers them.
    fn operators(&self) -> &'static [&'static str];

    /// The topics the job writes.
    fn output_topics(&self) -> Vec<String>;

    /// Turns a batch of a partition's records into events, each sent to its key group, and
    /// counts every record's outcome (its event time, or why it was skipped) in `out`.
    fn parse(&self, records: &[SourceRecord], now_ms: i64, out: &mut Routed<Self::Event>);

    fn new_group(&self) -> Self::Group;

    /// The results every key group produced in one round, combined into records.
    fn finish(&self, results: Vec<Self::Result>, out: &mut Vec<OutputRecord>);
}

pub trait KeyGroup: Send + 'static {
    type Event;
    type Result;

    /// Applies a batch of events, leaving `events` empty (its capacity is kept for the next
    /// batch); adds to `late[i]` the events that operator `i` dropped as late.
    fn process(&mut self, events: &mut Vec<Self::Event>, late: &mut [u64]);

    /// Moves the watermark (it never goes back) and appends the results it completes.
    fn on_watermark(&mut self, watermark: EventTime, out: &mut Vec<Self::Result>);

    /// The state changed since the last checkpoint; an error if some state cannot be
    /// written (the checkpoint then fails rather than lose it).
    fn checkpoint(&mut self, out: &mut Vec<StateRecord>) -> Result<()>;

    /// Applies one changelog record (the latest for its key) and the checkpoint's watermark.
    fn restore(&mut self, operator: usize, key: &[u8], value: &[u8]) -> Result<()>;
    fn restore_watermark(&mut self, watermark: EventTime);

    /// Keyed state entries held (windows per key, and keys with sessions).
    fn state_entries(&self) -> usize;
}

/// What a batch of one partition's records became: the events for each key group, the
/// highest event time among them, and the records skipped, by reason.
pub struct Routed<E> {
    groups: Vec<Vec<E>>,
    max_event_time: Option<EventTime>,
    malformed: u64,
    absurd_timestamps: u64,
}

impl<E> Routed<E> {
    pub fn new(groups: usize) -> Routed<E> {
        Routed {
            groups: (0..groups).map(|_| Vec::new()).collect(),
            max_event_time: None,
            malformed: 0,
            absurd_timestamps: 0,
        }
    }

    /// How many key groups events are routed among.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// The key group of `key` ([`key_group`]).
    pub fn group_of(&self, key: &[u8]) -> usize {
        key_group(key, self.groups.len())
    }

    /// Sends an event to key group `group` (below [`Routed::groups`]).
    pub fn send(&mut self, group: usize, event: E) {
        debug_assert!(group < self.groups.len(), "key group {group} of {}", self.groups.len());
        if let Some(events) = self.groups.get_mut(group) {
            events.push(event);
        }
    }

    /// Counts one record: the event time it moves the watermark by (none when it had no
    /// events to time), or why it was skipped.
    pub fn record(&mut self, outcome: Result<Option<EventTime>, Rejection>) {
        match outcome {
            Ok(Some(time)) => self.max_event_time = Some(self.max_event_time.map_or(time, |max| max.max(time))),
            Ok(None) => {}
            Err(Rejection::Malformed) => self.malformed += 1,
            Err(Rejection::AbsurdTimestamp) => self.absurd_timestamps += 1,
        }
    }

    pub fn max_event_time(&self) -> Option<EventTime> {
        self.max_event_time
    }

    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    pub fn absurd_timestamps(&self) -> u64 {
        self.absurd_timestamps
    }

    /// The events, per key group.
    pub fn into_groups(self) -> Vec<Vec<E>> {
        self.groups
    }
}

/// The key group of a key: FNV-1a, fixed forever because it decides where state lives.
pub fn key_group(key: &[u8], groups: usize) -> usize {
    (fnv1a(key) % groups.max(1) as u64) as usize
}

/// FNV-1a, 64 bits: stable across processes and versions (unlike the std hasher).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_groups_are_stable_and_in_range() {
        assert_eq!(key_group(b"/products/7", 8), key_group(b"/products/7", 8));
        assert!((0..8).all(|g| (0..1000).any(|i| key_group(format!("k{i}").as_bytes(), 8) == g)));
    }
}
