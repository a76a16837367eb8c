//! The declarative form of a windowed aggregation, what a user submits as an `aggregation`
//! job (and what a SQL front end would produce): the input's event-time field, filters, the
//! key fields, the window and the aggregates, with the checks that name the field at fault.
//! The `aggregation` job (`jobs::aggregation`) plans it onto the generic operators.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DefinitionError;
use crate::operators::window_assigner::WindowSpec;

const MAX_AGGREGATES: usize = 64;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationSpec {
    /// The topic results go to.
    pub output: String,
    /// The field holding the event time, in epoch milliseconds.
    #[serde(default = "default_timestamp_field")]
    pub timestamp_field: String,
    /// Out-of-orderness the watermark allows.
    #[serde(default = "default_watermark_bound")]
    pub watermark_bound_ms: i64,
    /// Every condition must hold for a record to count.
    #[serde(default)]
    pub filter: Vec<Condition>,
    /// Fields whose values form the key; none: one key for everything.
    #[serde(default)]
    pub key_by: Vec<String>,
    pub window: WindowDefinition,
    #[serde(default)]
    pub allowed_lateness_ms: i64,
    pub aggregates: Vec<AggregateDefinition>,
}

fn default_timestamp_field() -> String {
    "ts".into()
}

fn default_watermark_bound() -> i64 {
    5_000
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_with: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowDefinition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tumbling_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_gap_ms: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Function {
    Count,
    Sum,
    Min,
    Max,
    Average,
    DistinctCount,
    /// The 10 most frequent values with their counts, ties by value.
    Top,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateDefinition {
    /// The result's field name.
    pub name: String,
    pub function: Function,
    /// The field aggregated (every function but `count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl WindowDefinition {
    pub fn spec(&self) -> Result<WindowSpec, DefinitionError> {
        let spec = match (self.tumbling_ms, self.sliding_ms, self.slide_ms, self.session_gap_ms) {
            (Some(size_ms), None, None, None) => WindowSpec::Tumbling { size_ms },
            (None, Some(size_ms), Some(slide_ms), None) => WindowSpec::Sliding { size_ms, slide_ms },
            (None, None, None, Some(gap_ms)) => WindowSpec::Session { gap_ms },
            _ => return Err(DefinitionError::WindowShape),
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl AggregationSpec {
    /// Checks the definition; the message names the field at fault.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        if self.output.is_empty() || self.output.len() > 249 || self.output.starts_with("__") {
            return Err(DefinitionError::BadOutputTopic(self.output.clone()));
        }
        self.window.spec().map_err(|e| DefinitionError::Window(Box::new(e)))?;
        if self.watermark_bound_ms < 0 || self.allowed_lateness_ms < 0 {
            return Err(DefinitionError::NegativeBound);
        }
        if self.aggregates.is_empty() || self.aggregates.len() > MAX_AGGREGATES {
            return Err(DefinitionError::AggregateCount { count: self.aggregates.len(), max: MAX_AGGREGATES });
        }
        let reserved = ["window_start", "window_end"];
        for aggregate in &self.aggregates {
            if reserved.contains(&aggregate.name.as_str()) || self.key_by.contains(&aggregate.name) {
                return Err(DefinitionError::AggregateNameTaken(aggregate.name.clone()));
            }
            if aggregate.function != Function::Count && aggregate.field.is_none() {
                return Err(DefinitionError::AggregateWithoutField(aggregate.name.clone()));
            }
        }
        for condition in &self.filter {
            if condition.equals.is_none() == condition.starts_with.is_none() {
                return Err(DefinitionError::Condition(condition.field.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<AggregationSpec, String> {
        let spec: AggregationSpec = serde_json::from_str(text).map_err(|e| e.to_string())?;
        spec.validate().map(|_| spec).map_err(|e| e.to_string())
    }

    #[test]
    fn definitions_are_checked_field_by_field() {
        let ok = r#"{"output":"views","key_by":["page"],"window":{"tumbling_ms":60000},
                     "aggregates":[{"name":"views","function":"count"}]}"#;
        assert!(spec(ok).is_ok());
        let both = r#"{"output":"v","window":{"tumbling_ms":1,"session_gap_ms":5},"aggregates":[{"name":"n","function":"count"}]}"#;
        assert!(spec(both).unwrap_err().contains("window must be one of"));
        let no_field = r#"{"output":"v","window":{"tumbling_ms":1000},"aggregates":[{"name":"s","function":"sum"}]}"#;
        assert!(spec(no_field).unwrap_err().contains("needs a \"field\""));
        let bad_fn = r#"{"output":"v","window":{"tumbling_ms":1000},"aggregates":[{"name":"s","function":"median"}]}"#;
        assert!(spec(bad_fn).unwrap_err().contains("unknown variant `median`"));
        let clash =
            r#"{"output":"v","window":{"tumbling_ms":1000},"aggregates":[{"name":"window_end","function":"count"}]}"#;
        assert!(spec(clash).unwrap_err().contains("already an output field"));
    }
}
