//! Topic configs: the Kafka keys Sluice honours, how they turn into a log's [`LogConfig`],
//! and how they are described back. Unknown keys and bad values are refused with one
//! sentence naming the key and what is allowed.

use std::collections::BTreeMap;

use sluice_storage::{FlushPolicy, LogConfig, TimestampType};

/// Every topic config key Sluice understands, with Kafka's meaning.
pub const KEYS: &[&str] = &[
    "cleanup.policy",
    "flush.messages",
    "flush.ms",
    "index.interval.bytes",
    "max.message.bytes",
    "message.timestamp.type",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.index.bytes",
    "segment.ms",
];

fn parse_i64(key: &str, value: &str, min: i64, max: i64) -> Result<i64, String> {
    let parsed: i64 = value.trim().parse().map_err(|_| format!("{key} must be an integer, got \"{value}\""))?;
    if parsed < min || parsed > max {
        return Err(format!("{key} must be between {min} and {max}, got {parsed}"));
    }
    Ok(parsed)
}

/// Applies one `key = value` to `config`.
pub fn apply(config: &mut LogConfig, key: &str, value: &str) -> Result<(), String> {
    match key {
        "cleanup.policy" => match value.trim() {
            "delete" => {}
            "compact" | "compact,delete" | "delete,compact" => {
                return Err("cleanup.policy=compact is not supported yet; use delete".into());
            }
            other => return Err(format!("cleanup.policy must be delete, got \"{other}\"")),
        },
        "segment.bytes" => config.segment_bytes = parse_i64(key, value, 14, i32::MAX.into())? as u32,
        "segment.ms" => config.segment_ms = Some(parse_i64(key, value, 1, i64::MAX)? as u64),
        "segment.index.bytes" => config.segment_index_bytes = parse_i64(key, value, 24, i32::MAX.into())? as u32,
        "index.interval.bytes" => config.index_interval_bytes = parse_i64(key, value, 0, i32::MAX.into())? as u32,
        "retention.ms" => {
            let ms = parse_i64(key, value, -1, i64::MAX)?;
            config.retention_ms = (ms >= 0).then_some(ms as u64);
        }
        "retention.bytes" => {
            let bytes = parse_i64(key, value, -1, i64::MAX)?;
            config.retention_bytes = (bytes >= 0).then_some(bytes as u64);
        }
        "max.message.bytes" => config.max_message_bytes = parse_i64(key, value, 0, i32::MAX.into())? as u32,
        "message.timestamp.type" => {
            config.message_timestamp_type = match value.trim() {
                "CreateTime" => TimestampType::CreateTime,
                "LogAppendTime" => TimestampType::LogAppendTime,
                other => {
                    return Err(format!("message.timestamp.type must be CreateTime or LogAppendTime, got \"{other}\""))
                }
            }
        }
        // flush.messages=1 is Kafka's "fsync every append"; any larger value leaves it to
        // flush.ms or the OS (Sluice does not count messages between fsyncs).
        "flush.messages" => {
            if parse_i64(key, value, 1, i64::MAX)? == 1 {
                config.flush_policy = FlushPolicy::EveryAppend;
            } else if config.flush_policy == FlushPolicy::EveryAppend {
                config.flush_policy = FlushPolicy::Os;
            }
        }
        "flush.ms" => {
            let ms = parse_i64(key, value, 0, i64::MAX)?;
            if config.flush_policy != FlushPolicy::EveryAppend {
                // Kafka's default (Long.MAX_VALUE) means "never": leave it to the OS.
                config.flush_policy = if ms == 0 {
                    FlushPolicy::EveryAppend
                } else if ms >= i64::from(i32::MAX) {
                    FlushPolicy::Os
                } else {
                    FlushPolicy::IntervalMs(ms as u64)
                };
            }
        }
        other => return Err(format!("unknown topic config \"{other}\"; supported keys are {}", KEYS.join(", "))),
    }
    Ok(())
}

/// `defaults` with `overrides` applied, checked as a whole.
pub fn resolve(defaults: &LogConfig, overrides: &BTreeMap<String, String>) -> Result<LogConfig, String> {
    let mut config = defaults.clone();
    // flush.messages decides the policy before flush.ms refines it.
    let mut keys: Vec<&String> = overrides.keys().collect();
    keys.sort_by_key(|k| (k.as_str() != "flush.messages", k.as_str()));
    for key in keys {
        apply(&mut config, key, &overrides[key])?;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// The value of every key for `config`, as Kafka would print it.
pub fn describe(config: &LogConfig) -> Vec<(&'static str, String)> {
    let never = i64::MAX.to_string();
    let (flush_messages, flush_ms) = match config.flush_policy {
        FlushPolicy::EveryAppend => ("1".to_string(), never.clone()),
        FlushPolicy::IntervalMs(ms) => (never.clone(), ms.to_string()),
        FlushPolicy::Os => (never.clone(), never.clone()),
    };
    vec![
        ("cleanup.policy", "delete".to_string()),
        ("flush.messages", flush_messages),
        ("flush.ms", flush_ms),
        ("index.interval.bytes", config.index_interval_bytes.to_string()),
        ("max.message.bytes", config.max_message_bytes.to_string()),
        (
            "message.timestamp.type",
            match config.message_timestamp_type {
                TimestampType::CreateTime => "CreateTime".to_string(),
                TimestampType::LogAppendTime => "LogAppendTime".to_string(),
            },
        ),
        ("retention.bytes", config.retention_bytes.map_or(-1, |b| b as i64).to_string()),
        ("retention.ms", config.retention_ms.map_or(-1, |ms| ms as i64).to_string()),
        ("segment.bytes", config.segment_bytes.to_string()),
        ("segment.index.bytes", config.segment_index_bytes.to_string()),
        ("segment.ms", config.segment_ms.map_or(never, |ms| ms.to_string())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_the_key() {
        let mut config = LogConfig::default();
        let err = apply(&mut config, "segment.bytes", "huge").unwrap_err();
        assert!(err.contains("segment.bytes"), "{err}");
        let err = apply(&mut config, "retention.ms", "-5").unwrap_err();
        assert!(err.contains("retention.ms"), "{err}");
        let err = apply(&mut config, "no.such.key", "1").unwrap_err();
        assert!(err.contains("no.such.key") && err.contains("segment.bytes"), "{err}");
    }

    #[test]
    fn overrides_resolve_and_describe_back() {
        let overrides: BTreeMap<String, String> =
            [("retention.ms", "1000"), ("flush.messages", "1"), ("segment.bytes", "4096")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let config = resolve(&LogConfig::default(), &overrides).unwrap();
        assert_eq!(config.retention_ms, Some(1000));
        assert_eq!(config.flush_policy, FlushPolicy::EveryAppend);
        let described = describe(&config);
        assert!(described.contains(&("segment.bytes", "4096".to_string())));
        assert!(described.contains(&("flush.messages", "1".to_string())));
    }
}
