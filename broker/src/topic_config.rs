//! Topic configs: every key Kafka 4.x defines for a topic, with Kafka's types, defaults,
//! validation and broker-level synonyms ([`CONFIGS`]); how the ones with an effect here turn
//! into a log's [`LogConfig`]; and how all of them are described back. Unknown keys and bad
//! values are refused with one sentence naming the key and what is allowed.
//!
//! Keys whose effect needs what Sluice does not have (a replica set, tiered storage) are
//! stored and described like any other; where a value would need the missing part to mean
//! anything (`remote.storage.enable=true`) it is refused instead of silently ignored.

use std::collections::BTreeMap;

use sluice_storage::{Compression, FlushPolicy, LogConfig, TimestampType};

/// A config's type, as DescribeConfigs reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    String,
    Int,
    Long,
    Double,
    List,
}

impl ConfigType {
    /// The code DescribeConfigs v3+ gives the type.
    pub fn code(self) -> i8 {
        match self {
            ConfigType::Boolean => 1,
            ConfigType::String => 2,
            ConfigType::Int => 3,
            ConfigType::Long => 5,
            ConfigType::Double => 6,
            ConfigType::List => 7,
        }
    }
}

/// What values a config takes, beyond its type.
#[derive(Clone, Copy, Debug)]
enum Rule {
    Any,
    AtLeast(i64),
    Between(i64, i64),
    /// One of these strings (exact, as Kafka's `ValidString`).
    OneOf(&'static [&'static str]),
    /// A comma-separated list of these.
    ListOf(&'static [&'static str]),
    /// 1..=9, or -1 (gzip's levels).
    GzipLevel,
    /// A double in [0, 1].
    Ratio,
    /// `*`, or `partition:broker` pairs separated by commas.
    ThrottledReplicas,
}

/// One topic config as Kafka defines it.
#[derive(Debug)]
pub struct ConfigDef {
    pub name: &'static str,
    pub kind: ConfigType,
    /// Kafka's default, as DescribeConfigs prints it.
    pub default: &'static str,
    rule: Rule,
    /// The broker configs that set the default for every topic, in Kafka's order of
    /// precedence (`log.retention.ms` before `log.retention.hours`).
    pub broker_synonyms: &'static [&'static str],
}

const fn def(
    name: &'static str,
    kind: ConfigType,
    default: &'static str,
    rule: Rule,
    broker_synonyms: &'static [&'static str],
) -> ConfigDef {
    ConfigDef { name, kind, default, rule, broker_synonyms }
}

const LONG_MAX: &str = "9223372036854775807";
const CODECS: &[&str] = &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];

use ConfigType::{Boolean, Double, Int, List, Long, String as Str};

/// Every topic config of Kafka 4.x, by name.
pub const CONFIGS: &[ConfigDef] = &[
    def("cleanup.policy", List, "delete", Rule::ListOf(&["compact", "delete"]), &["log.cleanup.policy"]),
    def("compression.gzip.level", Int, "-1", Rule::GzipLevel, &["compression.gzip.level"]),
    def("compression.lz4.level", Int, "9", Rule::Between(1, 17), &["compression.lz4.level"]),
    def("compression.type", Str, "producer", Rule::OneOf(CODECS), &["compression.type"]),
    def("compression.zstd.level", Int, "3", Rule::Between(-131_072, 22), &["compression.zstd.level"]),
    def("delete.retention.ms", Long, "86400000", Rule::AtLeast(0), &["log.cleaner.delete.retention.ms"]),
    def("file.delete.delay.ms", Long, "60000", Rule::AtLeast(0), &["log.segment.delete.delay.ms"]),
    def("flush.messages", Long, LONG_MAX, Rule::AtLeast(1), &["log.flush.interval.messages"]),
    def("flush.ms", Long, LONG_MAX, Rule::AtLeast(0), &["log.flush.interval.ms"]),
    def("follower.replication.throttled.replicas", List, "", Rule::ThrottledReplicas, &[]),
    def("index.interval.bytes", Int, "4096", Rule::AtLeast(0), &["log.index.interval.bytes"]),
    def("leader.replication.throttled.replicas", List, "", Rule::ThrottledReplicas, &[]),
    def("local.retention.bytes", Long, "-2", Rule::AtLeast(-2), &["log.local.retention.bytes"]),
    def("local.retention.ms", Long, "-2", Rule::AtLeast(-2), &["log.local.retention.ms"]),
    def("max.compaction.lag.ms", Long, LONG_MAX, Rule::AtLeast(1), &["log.cleaner.max.compaction.lag.ms"]),
    def("max.message.bytes", Int, "1048588", Rule::AtLeast(0), &["message.max.bytes"]),
    def("message.timestamp.after.max.ms", Long, "3600000", Rule::AtLeast(0), &["log.message.timestamp.after.max.ms"]),
    def("message.timestamp.before.max.ms", Long, LONG_MAX, Rule::AtLeast(0), &["log.message.timestamp.before.max.ms"]),
    def(
        "message.timestamp.type",
        Str,
        "CreateTime",
        Rule::OneOf(&["CreateTime", "LogAppendTime"]),
        &["log.message.timestamp.type"],
    ),
    def("min.cleanable.dirty.ratio", Double, "0.5", Rule::Ratio, &["log.cleaner.min.cleanable.ratio"]),
    def("min.compaction.lag.ms", Long, "0", Rule::AtLeast(0), &["log.cleaner.min.compaction.lag.ms"]),
    def("min.insync.replicas", Int, "1", Rule::AtLeast(1), &["min.insync.replicas"]),
    def("preallocate", Boolean, "false", Rule::Any, &["log.preallocate"]),
    def("remote.log.copy.disable", Boolean, "false", Rule::Any, &[]),
    def("remote.log.delete.on.disable", Boolean, "false", Rule::Any, &[]),
    def("remote.storage.enable", Boolean, "false", Rule::Any, &[]),
    def("retention.bytes", Long, "-1", Rule::Any, &["log.retention.bytes"]),
    def(
        "retention.ms",
        Long,
        "604800000",
        Rule::AtLeast(-1),
        &["log.retention.ms", "log.retention.minutes", "log.retention.hours"],
    ),
    def("segment.bytes", Int, "1073741824", Rule::AtLeast(1 << 20), &["log.segment.bytes"]),
    def("segment.index.bytes", Int, "10485760", Rule::AtLeast(4), &["log.index.size.max.bytes"]),
    def("segment.jitter.ms", Long, "0", Rule::AtLeast(0), &["log.roll.jitter.ms", "log.roll.jitter.hours"]),
    def("segment.ms", Long, "604800000", Rule::AtLeast(1), &["log.roll.ms", "log.roll.hours"]),
    def("unclean.leader.election.enable", Boolean, "false", Rule::Any, &["unclean.leader.election.enable"]),
];

/// Kafka's internal override of `segment.bytes`, below its 1 MiB minimum, for tests (and
/// here for internal topics kept in small segments); never described.
pub const INTERNAL_SEGMENT_BYTES: &str = "internal.segment.bytes";

/// The definition of topic config `key`.
pub fn definition(key: &str) -> Option<&'static ConfigDef> {
    CONFIGS.iter().find(|c| c.name == key)
}

/// The topic config a broker config sets the default of, if it is one of the synonyms.
pub fn for_broker_key(broker_key: &str) -> Option<&'static ConfigDef> {
    CONFIGS.iter().find(|c| c.broker_synonyms.contains(&broker_key))
}

fn parse_i64(key: &str, value: &str) -> Result<i64, String> {
    value.trim().parse().map_err(|_| format!("{key} must be an integer, got \"{value}\""))
}

/// Checks `value` against `def`'s type and rule; the error names the key and what is allowed.
fn check(def: &ConfigDef, value: &str) -> Result<(), String> {
    let key = def.name;
    let trimmed = value.trim();
    match def.kind {
        ConfigType::Boolean if !trimmed.eq_ignore_ascii_case("true") && !trimmed.eq_ignore_ascii_case("false") => {
            return Err(format!("{key} must be true or false, got \"{value}\""))
        }
        ConfigType::Int => {
            let parsed = parse_i64(key, value)?;
            if parsed < i64::from(i32::MIN) || parsed > i64::from(i32::MAX) {
                return Err(format!("{key} must fit in a 32-bit integer, got {parsed}"));
            }
        }
        ConfigType::Long => {
            parse_i64(key, value)?;
        }
        ConfigType::Double if trimmed.parse::<f64>().map_or(true, |d| !d.is_finite()) => {
            return Err(format!("{key} must be a number, got \"{value}\""))
        }
        _ => {}
    }
    match def.rule {
        Rule::Any => Ok(()),
        Rule::AtLeast(min) => {
            let parsed = parse_i64(key, value)?;
            if parsed < min {
                return Err(format!("{key} must be at least {min}, got {parsed}"));
            }
            Ok(())
        }
        Rule::Between(min, max) => {
            let parsed = parse_i64(key, value)?;
            if parsed < min || parsed > max {
                return Err(format!("{key} must be between {min} and {max}, got {parsed}"));
            }
            Ok(())
        }
        Rule::GzipLevel => match parse_i64(key, value)? {
            -1 | 1..=9 => Ok(()),
            other => Err(format!("{key} must be between 1 and 9, or -1 for the default, got {other}")),
        },
        Rule::Ratio => match trimmed.parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(()),
            _ => Err(format!("{key} must be between 0 and 1, got \"{value}\"")),
        },
        Rule::OneOf(allowed) if allowed.contains(&trimmed) => Ok(()),
        Rule::OneOf(allowed) => Err(format!("{key} must be one of {}, got \"{value}\"", allowed.join(", "))),
        Rule::ListOf(allowed) => {
            let items: Vec<&str> = trimmed.split(',').map(str::trim).collect();
            match items.iter().find(|item| !allowed.contains(item)) {
                Some(bad) => Err(format!("{key} must be a list of {}, got \"{bad}\"", allowed.join(", "))),
                None => Ok(()),
            }
        }
        Rule::ThrottledReplicas => {
            let pair_ok = |pair: &str| {
                pair.split_once(':')
                    .is_some_and(|(p, b)| p.trim().parse::<u32>().is_ok() && b.trim().parse::<u32>().is_ok())
            };
            if trimmed.is_empty() || trimmed == "*" || trimmed.split(',').all(pair_ok) {
                Ok(())
            } else {
                Err(format!("{key} must be * or a list of partition:broker pairs, got \"{value}\""))
            }
        }
    }
}

/// Applies one `key = value` to `config`: checked against Kafka's definition of the key,
/// then, for the keys that have an effect here, turned into the log's setting.
pub fn apply(config: &mut LogConfig, key: &str, value: &str) -> Result<(), String> {
    if key == INTERNAL_SEGMENT_BYTES {
        let bytes = parse_i64(key, value)?;
        if !(14..=i64::from(i32::MAX)).contains(&bytes) {
            return Err(format!("{key} must be between 14 and {}, got {bytes}", i32::MAX));
        }
        config.segment_bytes = bytes as u32;
        return Ok(());
    }
    let Some(def) = definition(key) else {
        return Err(format!("unknown topic config \"{key}\"; Kafka's topic configs are {}", names().join(", ")));
    };
    check(def, value)?;
    let value = value.trim();
    let int = || parse_i64(key, value);
    match key {
        "cleanup.policy" => {
            config.compact = value.split(',').any(|p| p.trim() == "compact");
            config.delete = value.split(',').any(|p| p.trim() == "delete");
        }
        "delete.retention.ms" => config.delete_retention_ms = int()?,
        "min.compaction.lag.ms" => config.min_compaction_lag_ms = int()?,
        "max.compaction.lag.ms" => config.max_compaction_lag_ms = int()?,
        "min.cleanable.dirty.ratio" => {
            config.min_cleanable_dirty_ratio = value.parse().map_err(|_| format!("{key} must be a number"))?
        }
        "remote.storage.enable" if value.eq_ignore_ascii_case("true") => {
            return Err("remote.storage.enable=true needs tiered storage, which this broker does not have".into())
        }
        "segment.bytes" => config.segment_bytes = int()? as u32,
        "segment.ms" => config.segment_ms = Some(int()? as u64),
        "segment.jitter.ms" => config.segment_jitter_ms = int()? as u64,
        // Each index needs room for two time index entries.
        "segment.index.bytes" => config.segment_index_bytes = (int()? as u32).max(24),
        "index.interval.bytes" => config.index_interval_bytes = int()? as u32,
        "retention.ms" => config.retention_ms = u64::try_from(int()?).ok(),
        "retention.bytes" => config.retention_bytes = u64::try_from(int()?).ok(),
        "max.message.bytes" => config.max_message_bytes = int()? as u32,
        "message.timestamp.type" => {
            config.message_timestamp_type =
                if value == "LogAppendTime" { TimestampType::LogAppendTime } else { TimestampType::CreateTime }
        }
        "message.timestamp.before.max.ms" => config.message_timestamp_before_max_ms = int()?,
        "message.timestamp.after.max.ms" => config.message_timestamp_after_max_ms = int()?,
        "compression.type" => config.compression = codec(value),
        "compression.gzip.level" => config.compression_gzip_level = int()? as i32,
        "compression.zstd.level" => config.compression_zstd_level = int()? as i32,
        "min.insync.replicas" => config.min_insync_replicas = int()? as i32,
        "preallocate" => config.preallocate = value.eq_ignore_ascii_case("true"),
        "file.delete.delay.ms" => config.file_delete_delay_ms = int()? as u64,
        "flush.messages" => apply_flush_messages(config, int()?),
        "flush.ms" => apply_flush_ms(config, int()?),
        // The rest are kept and described; nothing here acts on them.
        _ => {}
    }
    Ok(())
}

/// The stored codec for a `compression.type`; None for `producer` (keep what was sent).
fn codec(value: &str) -> Option<Compression> {
    match value {
        "uncompressed" => Some(Compression::None),
        "gzip" => Some(Compression::Gzip),
        "snappy" => Some(Compression::Snappy),
        "lz4" => Some(Compression::Lz4),
        "zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// flush.messages=1 is Kafka's "fsync every append"; any larger value leaves it to flush.ms
/// or the OS (Sluice does not count messages between fsyncs).
fn apply_flush_messages(config: &mut LogConfig, messages: i64) {
    if messages == 1 {
        config.flush_policy = FlushPolicy::EveryAppend;
    } else if config.flush_policy == FlushPolicy::EveryAppend {
        config.flush_policy = FlushPolicy::Os;
    }
}

fn apply_flush_ms(config: &mut LogConfig, ms: i64) {
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

fn names() -> Vec<&'static str> {
    CONFIGS.iter().map(|c| c.name).collect()
}

/// `defaults` with `overrides` applied, checked as a whole.
pub fn resolve(defaults: &LogConfig, overrides: &BTreeMap<String, String>) -> Result<LogConfig, String> {
    let mut config = defaults.clone();
    // flush.messages decides the policy before flush.ms refines it; internal.segment.bytes
    // overrides segment.bytes, so it goes last.
    let mut keys: Vec<&String> = overrides.keys().collect();
    keys.sort_by_key(|k| (k.as_str() != "flush.messages", k.as_str() == INTERNAL_SEGMENT_BYTES, k.as_str()));
    for key in keys {
        apply(&mut config, key, &overrides[key])?;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// The value a log config gives `key`, for the keys with an effect here; None for the rest.
fn log_value(config: &LogConfig, key: &str) -> Option<String> {
    let never = i64::MAX.to_string();
    let value = match key {
        "flush.messages" => {
            if config.flush_policy == FlushPolicy::EveryAppend {
                "1".to_string()
            } else {
                never
            }
        }
        "flush.ms" => match config.flush_policy {
            FlushPolicy::IntervalMs(ms) => ms.to_string(),
            FlushPolicy::EveryAppend | FlushPolicy::Os => never,
        },
        "index.interval.bytes" => config.index_interval_bytes.to_string(),
        "max.message.bytes" => config.max_message_bytes.to_string(),
        "message.timestamp.type" => match config.message_timestamp_type {
            TimestampType::CreateTime => "CreateTime".to_string(),
            TimestampType::LogAppendTime => "LogAppendTime".to_string(),
        },
        "message.timestamp.before.max.ms" => config.message_timestamp_before_max_ms.to_string(),
        "message.timestamp.after.max.ms" => config.message_timestamp_after_max_ms.to_string(),
        "retention.bytes" => config.retention_bytes.map_or(-1, |b| b as i64).to_string(),
        "retention.ms" => config.retention_ms.map_or(-1, |ms| ms as i64).to_string(),
        "segment.bytes" => config.segment_bytes.to_string(),
        "segment.index.bytes" => config.segment_index_bytes.to_string(),
        "segment.ms" => config.segment_ms.map_or(never, |ms| ms.to_string()),
        "segment.jitter.ms" => config.segment_jitter_ms.to_string(),
        "compression.type" => match config.compression {
            None => "producer".to_string(),
            Some(Compression::None) => "uncompressed".to_string(),
            Some(codec) => codec.name().to_string(),
        },
        "compression.gzip.level" => config.compression_gzip_level.to_string(),
        "compression.zstd.level" => config.compression_zstd_level.to_string(),
        "min.insync.replicas" => config.min_insync_replicas.to_string(),
        "preallocate" => config.preallocate.to_string(),
        "file.delete.delay.ms" => config.file_delete_delay_ms.to_string(),
        "cleanup.policy" => match (config.compact, config.delete) {
            (true, true) => "compact,delete".to_string(),
            (true, false) => "compact".to_string(),
            _ => "delete".to_string(),
        },
        "delete.retention.ms" => config.delete_retention_ms.to_string(),
        "min.compaction.lag.ms" => config.min_compaction_lag_ms.to_string(),
        "max.compaction.lag.ms" => config.max_compaction_lag_ms.to_string(),
        "min.cleanable.dirty.ratio" => config.min_cleanable_dirty_ratio.to_string(),
        _ => return None,
    };
    Some(value)
}

/// Where a described value comes from (DescribeConfigs' config source codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Topic = 1,
    DynamicBroker = 2,
    StaticBroker = 4,
    Default = 5,
}

/// One described topic config: its value and source, and the synonyms behind it (the
/// topic's own setting, then the broker configs that set the default, then Kafka's
/// default), most important first.
pub struct Described {
    pub def: &'static ConfigDef,
    pub value: String,
    pub source: Source,
    pub synonyms: Vec<(String, String, Source)>,
}

/// The broker configs that set topic defaults: the dynamic ones and those the broker was
/// started with.
pub struct BrokerSettings<'a> {
    pub dynamic: &'a BTreeMap<String, String>,
    pub static_settings: &'a BTreeMap<String, String>,
}

/// Every topic config of a topic with `overrides`, whose resolved log config is `config`.
pub fn describe(config: &LogConfig, overrides: &BTreeMap<String, String>, broker: &BrokerSettings) -> Vec<Described> {
    CONFIGS
        .iter()
        .map(|def| {
            let mut synonyms = Vec::new();
            if let Some(value) = overrides.get(def.name) {
                synonyms.push((def.name.to_string(), value.clone(), Source::Topic));
            }
            for (settings, source) in
                [(broker.dynamic, Source::DynamicBroker), (broker.static_settings, Source::StaticBroker)]
            {
                for synonym in def.broker_synonyms {
                    if let Some(value) = settings.get(*synonym) {
                        synonyms.push((synonym.to_string(), value.clone(), source));
                    }
                }
            }
            let default_name = def.broker_synonyms.first().copied().unwrap_or(def.name);
            synonyms.push((default_name.to_string(), def.default.to_string(), Source::Default));
            let source = synonyms[0].2;
            // A setting as it was given; else what the log runs with (broker defaults given
            // in hours are turned into ms there); else the broker's or Kafka's default.
            let value = match (overrides.get(def.name), log_value(config, def.name)) {
                (Some(value), _) => value.clone(),
                (None, Some(value)) => value,
                (None, None) => synonyms[0].1.clone(),
            };
            Described { def, value, source, synonyms }
        })
        .collect()
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
            [("retention.ms", "1000"), ("flush.messages", "1"), ("segment.bytes", "1048576")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let config = resolve(&LogConfig::default(), &overrides).unwrap();
        assert_eq!(config.retention_ms, Some(1000));
        assert_eq!(config.flush_policy, FlushPolicy::EveryAppend);
        let none = BTreeMap::new();
        let broker = BrokerSettings { dynamic: &none, static_settings: &none };
        let described = describe(&config, &overrides, &broker);
        assert_eq!(described.len(), CONFIGS.len());
        let get = |key: &str| described.iter().find(|d| d.def.name == key).unwrap();
        assert_eq!((get("segment.bytes").value.as_str(), get("segment.bytes").source), ("1048576", Source::Topic));
        assert_eq!(get("flush.messages").value, "1");
        assert_eq!(
            (get("delete.retention.ms").value.as_str(), get("delete.retention.ms").source),
            ("86400000", Source::Default)
        );
        assert_eq!(get("retention.ms").synonyms.last().unwrap().0, "log.retention.ms");
    }
}
