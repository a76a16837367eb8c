//! What a built job is up to its `key_by`, compiled into one step per record: the stateless
//! steps from a source record to elements, each element's event time, and its key, which
//! routes it to the key group that holds the key's state. An element whose time cannot be
//! right (`dataflow::is_absurd`) is skipped, and a record all of whose elements were is
//! counted as an absurd timestamp.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::dataflow::EventTime;
use crate::dataflow::{is_absurd, OutputRecord, Rejection, Routed, SourceRecord};
use crate::operators::state::Key;
use crate::operators::KeyedEvent;

/// The stateless steps from a record to its elements, each handed to the closure.
pub(crate) type Step<T> = Arc<dyn Fn(&SourceRecord, &mut dyn FnMut(T)) -> Result<(), Rejection> + Send + Sync>;
/// An element's event time.
pub(crate) type TimeFn<T> = Arc<dyn Fn(&T) -> EventTime + Send + Sync>;
/// An element's key.
pub(crate) type KeyFn<K, T> = Arc<dyn Fn(&T) -> K + Send + Sync>;

/// A built job's input side: the topic it reads and where each record's elements go.
pub struct KeyBy<K, T> {
    pub(crate) input: String,
    pub(crate) step: Step<T>,
    pub(crate) time: TimeFn<T>,
    pub(crate) watermark_bound_ms: i64,
    pub(crate) key: KeyFn<K, T>,
}

impl<K: Key, T: Send + 'static> KeyBy<K, T> {
    /// Routes a batch of records' elements to their key groups.
    pub(crate) fn parse(&self, records: &[SourceRecord], now_ms: i64, out: &mut Routed<KeyedEvent<K, T>>) {
        for record in records {
            let outcome = self.route(record, now_ms, out);
            out.record(outcome);
        }
    }

    /// One record: its elements routed; its highest event time or why it is skipped.
    fn route(
        &self,
        record: &SourceRecord,
        now_ms: i64,
        out: &mut Routed<KeyedEvent<K, T>>,
    ) -> Result<Option<EventTime>, Rejection> {
        let mut max_ts = None;
        let mut absurd = false;
        (self.step)(record, &mut |value| {
            let ts = (self.time)(&value);
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

/// A key as a record key: a string as its text, anything else as JSON.
pub(crate) fn key_bytes<K: Serialize>(key: &K) -> Bytes {
    match serde_json::to_value(key) {
        Ok(serde_json::Value::String(s)) => Bytes::from(s),
        Ok(other) => Bytes::from(other.to_string()),
        Err(_) => Bytes::new(),
    }
}

/// A round's results from every key group, by timestamp then key: the output order does
/// not depend on which group finished first.
pub(crate) fn in_time_order(mut results: Vec<OutputRecord>, out: &mut Vec<OutputRecord>) {
    results.sort_by(|a, b| (a.timestamp_ms, &a.key).cmp(&(b.timestamp_ms, &b.key)));
    out.extend(results);
}
