//! Job definitions: what a user submits (JSON, over the admin API or from a file) and what
//! the host persists. A definition is plain data naming a job kind and its parameters, so
//! that other front ends (a SQL planner) can produce one; it is checked in full before a
//! job starts, and each problem is reported as one sentence naming the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregation_spec::AggregationSpec;
use crate::dataflow::fnv1a;
use crate::error::DefinitionError;
use crate::jobs::clickstream::{OUTPUT_TOPICS, WATERMARK_BOUND_MS};
use crate::runtime::RunSpec;

pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 1_000;
/// A partition with no records for this long stops holding the watermark back.
pub const DEFAULT_IDLE_TIMEOUT_MS: i64 = 30_000;
/// Commits must finish well inside the job's 60 s transaction timeout.
const MAX_COMMIT_INTERVAL_MS: u64 = 30_000;
const MAX_NAME_LEN: usize = 64;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDefinition {
    pub name: String,
    /// `clickstream` (the built-in job) or `aggregation` (defined by `aggregation`).
    pub kind: String,
    /// The input topic (the clickstream job reads `clicks` unless told otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// What an `aggregation` job computes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<AggregationSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<i64>,
    /// Topic configs for the output topics the job creates, over
    /// [`default_output_configs`](crate::runtime::default_output_configs).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub output_configs: BTreeMap<String, String>,
}

impl JobDefinition {
    /// The built-in clickstream job under its own name.
    pub fn clickstream() -> JobDefinition {
        JobDefinition {
            name: "clickstream".into(),
            kind: "clickstream".into(),
            input: None,
            aggregation: None,
            commit_interval_ms: None,
            idle_timeout_ms: None,
            output_configs: BTreeMap::new(),
        }
    }

    /// Parses and checks a submitted definition.
    pub fn parse(text: &[u8]) -> Result<JobDefinition, DefinitionError> {
        let definition: JobDefinition = serde_json::from_slice(text).map_err(DefinitionError::NotJson)?;
        definition.validate()?;
        Ok(definition)
    }

    pub fn validate(&self) -> Result<(), DefinitionError> {
        let name = &self.name;
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(DefinitionError::NameLength { length: name.len(), max: MAX_NAME_LEN });
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return Err(DefinitionError::NameCharacters(name.clone()));
        }
        match (self.kind.as_str(), &self.aggregation) {
            ("clickstream", None) => {}
            ("clickstream", Some(_)) => return Err(DefinitionError::ClickstreamWithAggregation),
            ("aggregation", Some(spec)) => {
                spec.validate().map_err(|e| DefinitionError::Aggregation(Box::new(e)))?;
                if self.input.is_none() {
                    return Err(DefinitionError::NoInput);
                }
                if self.input() == spec.output {
                    return Err(DefinitionError::OutputIsInput);
                }
            }
            ("aggregation", None) => return Err(DefinitionError::NoAggregation),
            (other, _) => return Err(DefinitionError::UnknownKind(other.to_string())),
        }
        if let Some(input) = &self.input {
            if input.is_empty() || input.len() > 249 || input.starts_with("__") {
                return Err(DefinitionError::BadInputTopic(input.clone()));
            }
            if self.kind == "clickstream" && OUTPUT_TOPICS.contains(&input.as_str()) {
                return Err(DefinitionError::ReadsItsOutput(input.clone()));
            }
        }
        if let Some(ms) = self.commit_interval_ms {
            if !(10..=MAX_COMMIT_INTERVAL_MS).contains(&ms) {
                return Err(DefinitionError::CommitInterval { value: ms, max: MAX_COMMIT_INTERVAL_MS });
            }
        }
        if let Some(ms) = self.idle_timeout_ms {
            if ms < 1 {
                return Err(DefinitionError::IdleTimeout(ms));
            }
        }
        Ok(())
    }

    pub fn input(&self) -> &str {
        self.input.as_deref().unwrap_or("clicks")
    }

    /// Identifies what the job computes (kind, input, aggregation), not how often it
    /// commits: state checkpointed under one fingerprint means nothing under another.
    pub fn fingerprint(&self) -> String {
        let semantic = serde_json::json!({"kind": self.kind, "input": self.input(), "aggregation": self.aggregation});
        format!("{:016x}", fnv1a(semantic.to_string().as_bytes()))
    }

    pub fn run_spec(&self) -> RunSpec {
        RunSpec {
            name: self.name.clone(),
            input: self.input().to_string(),
            commit_interval_ms: self.commit_interval_ms.unwrap_or(DEFAULT_COMMIT_INTERVAL_MS),
            watermark_bound_ms: self.aggregation.as_ref().map_or(WATERMARK_BOUND_MS, |a| a.watermark_bound_ms),
            idle_timeout_ms: self.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS),
            fingerprint: self.fingerprint(),
            output_configs: self.output_configs.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_with_errors_are_refused_with_the_reason() {
        let ok = JobDefinition::parse(br#"{"name":"clicks-1","kind":"clickstream","commit_interval_ms":200}"#).unwrap();
        assert_eq!(ok.run_spec().commit_interval_ms, 200);
        assert_eq!(ok.input(), "clicks");
        let error = |text: &str| JobDefinition::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(error("{").contains("not valid"));
        assert!(error(r#"{"name":"a","kind":"clickstream","colour":"red"}"#).contains("unknown field `colour`"));
        assert!(error(r#"{"kind":"clickstream"}"#).contains("missing field `name`"));
        assert!(error(r#"{"name":"a b","kind":"clickstream"}"#).contains("may only use"));
        assert!(error(r#"{"name":"a","kind":"wordcount"}"#).contains("unknown job kind"));
        assert!(error(r#"{"name":"a","kind":"clickstream","commit_interval_ms":0}"#).contains("commit_interval_ms"));
        assert!(error(r#"{"name":"a","kind":"clickstream","input":"__consumer_offsets"}"#).contains("input topic"));
    }
}
