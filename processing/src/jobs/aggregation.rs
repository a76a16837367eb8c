//! A job defined as data rather than code: JSON records in, filtered, keyed by fields,
//! windowed by event time, aggregated, and written as JSON, the shape a query such as
//! `SELECT page, COUNT(*) AS views, COUNT(DISTINCT user_id) AS users FROM clicks
//! WHERE page LIKE '/products/%' GROUP BY page, TUMBLE(ts, INTERVAL '1' MINUTE)` plans to.
//! It is the `aggregation` job kind: an [`AggregationSpec`] planned onto the windowed aggregate.
//!
//! Output: one record per key and window, value = `{<key fields>, "window_start",
//! "window_end", <aggregates by name>}` (for a session, `window_end` is its last event, as
//! in the clickstream job); record key = the key field's value when it is one string, else
//! the key fields' values as a JSON array.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::aggregation_spec::{AggregationSpec, Function};
use crate::dataflow::EventTime;
use crate::dataflow::{is_absurd, Dataflow, OutputRecord, Rejection, Routed, SourceRecord};
use crate::error::{DefinitionError, Error};
use crate::operators::aggregate_functions::{Aggregate, Average, Count, DistinctCount, Max, Min, Sum, TopN};
use crate::operators::window_assigner::{Window, WindowSpec};
use crate::operators::windowed_aggregate::{AddInput, OpenSessions, StateCodec, WindowedAggregate};
use crate::operators::{KeyedEvent, OperatorGroup};

pub const TOP_N: usize = 10;

/// One aggregate's state.
#[derive(Serialize, Deserialize)]
enum Accumulator {
    Count(Count),
    Sum(Sum),
    Min(Min),
    Max(Max),
    Average(Average),
    DistinctCount(DistinctCount<String>),
    Top(TopN<String, TOP_N>),
}

impl Accumulator {
    fn new(function: Function) -> Accumulator {
        match function {
            Function::Count => Accumulator::Count(Count::default()),
            Function::Sum => Accumulator::Sum(Sum::default()),
            Function::Min => Accumulator::Min(Min::default()),
            Function::Max => Accumulator::Max(Max::default()),
            Function::Average => Accumulator::Average(Average::default()),
            Function::DistinctCount => Accumulator::DistinctCount(DistinctCount::default()),
            Function::Top => Accumulator::Top(TopN::default()),
        }
    }

    fn add(&mut self, value: &Value) {
        let number = value.as_f64();
        let text = || match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match self {
            Accumulator::Count(a) => a.add(&()),
            Accumulator::Sum(a) => number.into_iter().for_each(|n| a.add(&n)),
            Accumulator::Min(a) => number.into_iter().for_each(|n| a.add(&n)),
            Accumulator::Max(a) => number.into_iter().for_each(|n| a.add(&n)),
            Accumulator::Average(a) => number.into_iter().for_each(|n| a.add(&n)),
            Accumulator::DistinctCount(a) if !value.is_null() => a.add(&text()),
            Accumulator::Top(a) if !value.is_null() => a.add(&text()),
            _ => {}
        }
    }

    fn merge(&mut self, other: Accumulator) {
        match (self, other) {
            (Accumulator::Count(a), Accumulator::Count(b)) => a.merge(b),
            (Accumulator::Sum(a), Accumulator::Sum(b)) => a.merge(b),
            (Accumulator::Min(a), Accumulator::Min(b)) => a.merge(b),
            (Accumulator::Max(a), Accumulator::Max(b)) => a.merge(b),
            (Accumulator::Average(a), Accumulator::Average(b)) => a.merge(b),
            (Accumulator::DistinctCount(a), Accumulator::DistinctCount(b)) => a.merge(b),
            (Accumulator::Top(a), Accumulator::Top(b)) => a.merge(b),
            _ => {}
        }
    }

    fn result(&self) -> Value {
        match self {
            Accumulator::Count(a) => a.result().into(),
            Accumulator::Sum(a) => a.result().into(),
            Accumulator::Min(a) => a.result().into(),
            Accumulator::Max(a) => a.result().into(),
            Accumulator::Average(a) => a.result().into(),
            Accumulator::DistinctCount(a) => a.result().into(),
            Accumulator::Top(a) => a
                .result()
                .into_iter()
                .map(|(value, count)| serde_json::json!({"value": value, "count": count}))
                .collect(),
        }
    }
}

/// All of a key's aggregates in one window. Empty until its first event, which says which
/// functions to start (windows are created by `Default`).
#[derive(Default, Serialize, Deserialize)]
pub struct Accumulators(Vec<Accumulator>);

/// An event's inputs to each aggregate, with the functions they feed.
pub struct Inputs {
    functions: Arc<[Function]>,
    values: Vec<Value>,
}

impl Aggregate for Accumulators {
    type Input = Inputs;
    type Output = Vec<Value>;
    fn add(&mut self, inputs: &Inputs) {
        if self.0.is_empty() {
            self.0 = inputs.functions.iter().map(|f| Accumulator::new(*f)).collect();
        }
        for (accumulator, value) in self.0.iter_mut().zip(&inputs.values) {
            accumulator.add(value);
        }
    }
    fn merge(&mut self, other: Accumulators) {
        if self.0.is_empty() {
            *self = other;
            return;
        }
        for (a, b) in self.0.iter_mut().zip(other.0) {
            a.merge(b);
        }
    }
    fn result(&self) -> Vec<Value> {
        self.0.iter().map(Accumulator::result).collect()
    }
}

/// A record's key (the key fields' values as a JSON array) and inputs to the aggregates.
pub type AggregationEvent = KeyedEvent<String, Inputs>;
/// One key's aggregates in one window: the key, the window, each aggregate's result.
pub type AggregationResult = (String, Window, Vec<Value>);
/// A key group of the aggregation: the windowed aggregate of every key it owns.
pub type AggregationGroup =
    OperatorGroup<WindowedAggregate<String, Inputs, Accumulators, AggregationState>, AggregationResult>;

pub struct AggregationDataflow {
    spec: AggregationSpec,
    window: WindowSpec,
    functions: Arc<[Function]>,
    output: Arc<str>,
}

impl AggregationDataflow {
    pub fn new(spec: AggregationSpec) -> Result<AggregationDataflow, DefinitionError> {
        spec.validate()?;
        let window = spec.window.spec()?;
        let functions: Arc<[Function]> = spec.aggregates.iter().map(|a| a.function).collect();
        let output = spec.output.as_str().into();
        Ok(AggregationDataflow { spec, window, functions, output })
    }

    /// One record: its events routed, its event time or why it is skipped.
    fn parse_record(
        &self,
        record: &SourceRecord,
        now_ms: i64,
        out: &mut Routed<AggregationEvent>,
    ) -> Result<Option<EventTime>, Rejection> {
        let value = record.value.as_ref().ok_or(Rejection::Malformed)?;
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(value) else {
            return Err(Rejection::Malformed);
        };
        let ts = fields.get(&self.spec.timestamp_field).and_then(Value::as_i64).ok_or(Rejection::Malformed)?;
        if is_absurd(ts, now_ms) {
            return Err(Rejection::AbsurdTimestamp);
        }
        if self.passes(&fields) {
            // A JSON array of the values: unambiguous, whatever the values hold.
            let key: Vec<&Value> = self.spec.key_by.iter().map(|f| fields.get(f).unwrap_or(&Value::Null)).collect();
            let key = serde_json::to_string(&key).map_err(|_| Rejection::Malformed)?;
            let values = self
                .spec
                .aggregates
                .iter()
                .map(|a| a.field.as_ref().and_then(|f| fields.get(f)).cloned().unwrap_or(Value::Null))
                .collect();
            let group = out.group_of(key.as_bytes());
            let inputs = Inputs { functions: self.functions.clone(), values };
            out.send(group, KeyedEvent { key, time: ts, value: inputs });
        }
        Ok(Some(ts))
    }

    fn passes(&self, record: &Map<String, Value>) -> bool {
        self.spec.filter.iter().all(|condition| {
            let value = record.get(&condition.field);
            match (&condition.equals, &condition.starts_with) {
                (Some(expected), _) => value == Some(expected),
                (None, Some(prefix)) => value.and_then(Value::as_str).is_some_and(|s| s.starts_with(prefix.as_str())),
                (None, None) => true,
            }
        })
    }
}

impl Dataflow for AggregationDataflow {
    type Event = AggregationEvent;
    type Result = AggregationResult;
    type Group = AggregationGroup;

    fn operators(&self) -> &'static [&'static str] {
        &["aggregate"]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.spec.output.clone()]
    }

    fn parse(&self, records: &[SourceRecord], now_ms: i64, out: &mut Routed<AggregationEvent>) {
        for record in records {
            let outcome = self.parse_record(record, now_ms, out);
            out.record(outcome);
        }
    }

    fn new_group(&self) -> AggregationGroup {
        let lateness = self.spec.allowed_lateness_ms;
        let what = if matches!(self.window, WindowSpec::Session { .. }) { "session" } else { "window" };
        let windows = WindowedAggregate::new(self.window, lateness, AggregationState { what }, AddInput)
            .expect("the definition was validated");
        OperatorGroup::new(windows, Box::new(|result| result))
    }

    fn finish(&self, mut results: Vec<AggregationResult>, out: &mut Vec<OutputRecord>) {
        results.sort_by(|a, b| (a.1.end, a.1.start, &a.0).cmp(&(b.1.end, b.1.start, &b.0)));
        for (key, window, values) in results {
            let mut value = Map::new();
            let parts: Vec<Value> = serde_json::from_str(&key).unwrap_or_default();
            let record_key = match parts.as_slice() {
                [Value::String(text)] => text.clone(),
                _ => key.clone(),
            };
            for (field, part) in self.spec.key_by.iter().zip(parts) {
                value.insert(field.clone(), part);
            }
            value.insert("window_start".into(), window.start.into());
            value.insert("window_end".into(), window.end.into());
            for (aggregate, result) in self.spec.aggregates.iter().zip(values) {
                value.insert(aggregate.name.clone(), result);
            }
            let timestamp_ms =
                if matches!(self.window, WindowSpec::Session { .. }) { window.end } else { window.end - 1 };
            out.push(OutputRecord {
                topic: self.output.clone(),
                key: Bytes::from(record_key),
                value: Bytes::from(Value::Object(value).to_string()),
                timestamp_ms,
            });
        }
    }
}

/// How the aggregation's state is written: a key as its text (a JSON array of the key
/// fields' values), an accumulator as JSON; `what` is "window" or "session", the state kept.
pub struct AggregationState {
    what: &'static str,
}

impl StateCodec<String, Accumulators> for AggregationState {
    type Context = ();

    fn encode_key(&self, _: &(), key: &String, out: &mut Vec<u8>) -> Result<(), Error> {
        out.extend_from_slice(key.as_bytes());
        Ok(())
    }

    fn decode_key(&self, _: &mut (), key: &[u8]) -> Result<String, Error> {
        String::from_utf8(key.to_vec()).map_err(|_| Error::KeyNotUtf8(self.what))
    }

    fn encode_window(&self, _: &(), state: &Accumulators) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(state).map_err(Error::EncodeState)
    }

    fn decode_window(&self, _: &mut (), value: &[u8]) -> Result<Accumulators, Error> {
        serde_json::from_slice(value).map_err(|source| Error::DecodeState { what: self.what, source })
    }

    fn encode_sessions(&self, _: &(), open: &OpenSessions<Accumulators>) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(open).map_err(Error::EncodeState)
    }

    fn decode_sessions(&self, _: &mut (), value: &[u8]) -> Result<Vec<(EventTime, EventTime, Accumulators)>, Error> {
        serde_json::from_slice(value).map_err(|source| Error::DecodeState { what: self.what, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::KeyGroup;

    fn spec(text: &str) -> Result<AggregationSpec, String> {
        let spec: AggregationSpec = serde_json::from_str(text).map_err(|e| e.to_string())?;
        spec.validate().map(|_| spec).map_err(|e| e.to_string())
    }

    /// Parses a record into `group`: it must parse, and no event may be late.
    fn feed(dataflow: &AggregationDataflow, group: &mut AggregationGroup, record: SourceRecord) {
        let mut routed = Routed::new(1);
        dataflow.parse(&[record], 0, &mut routed);
        assert_eq!((routed.malformed(), routed.absurd_timestamps()), (0, 0));
        let mut late = [0];
        for mut events in routed.into_groups() {
            group.process(&mut events, &mut late);
        }
        assert_eq!(late, [0]);
    }

    #[test]
    fn keys_of_several_fields_never_collide() {
        let spec = spec(
            r#"{"output":"o","key_by":["a","b"],"window":{"tumbling_ms":1000},"aggregates":[{"name":"n","function":"count"}]}"#,
        )
        .unwrap();
        let dataflow = AggregationDataflow::new(spec).unwrap();
        let mut group = dataflow.new_group();
        for text in [r#"{"a":"x|y","b":"z","ts":1}"#, r#"{"a":"x","b":"y|z","ts":2}"#, r#"{"a":1,"ts":3}"#] {
            let record = SourceRecord { offset: 0, timestamp_ms: 0, key: None, value: Some(Bytes::from(text)) };
            feed(&dataflow, &mut group, record);
        }
        let mut results = Vec::new();
        group.on_watermark(1_000, &mut results);
        let mut out = Vec::new();
        dataflow.finish(results, &mut out);
        let values: Vec<Value> = out.iter().map(|r| serde_json::from_slice(&r.value).unwrap()).collect();
        assert_eq!(values.len(), 3, "{values:?}");
        assert!(values.iter().any(|v| v["a"] == 1 && v["b"].is_null()), "key values keep their types: {values:?}");
    }

    #[test]
    fn a_windowed_aggregation_filters_keys_and_aggregates_and_its_state_round_trips() {
        let spec = spec(
            r#"{"output":"sales","key_by":["region"],"window":{"tumbling_ms":1000},
                "filter":[{"field":"kind","equals":"sale"}],
                "aggregates":[{"name":"n","function":"count"},{"name":"total","function":"sum","field":"amount"},
                              {"name":"avg","function":"average","field":"amount"},
                              {"name":"buyers","function":"distinct_count","field":"user"},
                              {"name":"top","function":"top","field":"user"}]}"#,
        )
        .unwrap();
        let dataflow = AggregationDataflow::new(spec).unwrap();
        let mut group = dataflow.new_group();
        let events = [
            r#"{"kind":"sale","region":"eu","amount":10,"user":"a","ts":100}"#,
            r#"{"kind":"sale","region":"eu","amount":20,"user":"b","ts":200}"#,
            r#"{"kind":"view","region":"eu","amount":99,"user":"c","ts":300}"#,
            r#"{"kind":"sale","region":"us","amount":5,"user":"a","ts":400}"#,
            r#"{"kind":"sale","region":"eu","amount":30,"user":"a","ts":900}"#,
        ];
        for (i, text) in events.iter().enumerate() {
            let record = SourceRecord { offset: i as i64, timestamp_ms: 0, key: None, value: Some(Bytes::from(*text)) };
            feed(&dataflow, &mut group, record);
        }
        // The state survives a checkpoint and restore into a fresh group.
        let mut state = Vec::new();
        group.checkpoint(&mut state).unwrap();
        let mut restored = dataflow.new_group();
        for record in &state {
            restored.restore(0, &record.key, record.value.as_deref().unwrap()).unwrap();
        }
        let mut results = Vec::new();
        restored.on_watermark(1_000, &mut results);
        assert_eq!(results.len(), 2, "eu and us, one window each");
        let mut out = Vec::new();
        dataflow.finish(results, &mut out);
        let eu: Value = serde_json::from_slice(&out[0].value).unwrap();
        assert_eq!(&*out[0].topic, "sales");
        assert_eq!(
            eu,
            serde_json::json!({"region":"eu","window_start":0,"window_end":1000,"n":3,"total":60.0,"avg":20.0,
                               "buyers":2,"top":[{"value":"a","count":2},{"value":"b","count":1}]})
        );
    }
}
