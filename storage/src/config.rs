//! Per-log configuration, with Kafka's topic config names and defaults, and the flush policy
//! that decides what an acknowledged append survives.

use crate::error::{Error, Result};
use crate::format::{Compression, TimestampType, MAX_DECOMPRESSED_BATCH_BYTES};

/// When appended data is forced to disk, and therefore what an acknowledged append survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FlushPolicy {
    /// fsync before an append is acknowledged; concurrent appenders share one fsync (group
    /// commit). Survives power loss.
    EveryAppend,
    /// fsync every `flush.ms` in the background. Survives a process crash; a power loss may
    /// lose up to the interval.
    IntervalMs(u64),
    /// Leave write-back to the OS (Kafka's default). Survives a process crash.
    #[default]
    Os,
}

/// What an acknowledged write is guaranteed to survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durability {
    ProcessCrash,
    PowerLoss,
}

impl FlushPolicy {
    pub fn durability(self) -> Durability {
        match self {
            FlushPolicy::EveryAppend => Durability::PowerLoss,
            FlushPolicy::IntervalMs(_) | FlushPolicy::Os => Durability::ProcessCrash,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment before it would grow past this.
    pub segment_bytes: u32,
    /// `segment.ms`: roll once the active segment's first batch is this old.
    pub segment_ms: Option<u64>,
    /// `segment.index.bytes`: preallocated size of each index; a full index rolls the segment.
    pub segment_index_bytes: u32,
    /// `index.interval.bytes`: log bytes between offset index entries.
    pub index_interval_bytes: u32,
    /// `retention.ms`: delete closed segments whose newest record is older. None = forever.
    pub retention_ms: Option<u64>,
    /// `retention.bytes`: delete the oldest closed segments while the log is larger. None = no limit.
    pub retention_bytes: Option<u64>,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: u32,
    /// `message.timestamp.type`.
    pub message_timestamp_type: TimestampType,
    pub flush_policy: FlushPolicy,
    /// Upper bound on a batch's decompressed size during validation.
    pub max_decompressed_batch_bytes: usize,
    /// `producer.id.expiration.ms`: an idempotent producer idle this long is forgotten.
    pub producer_id_expiration_ms: i64,
    /// `compression.type`: the codec batches are stored with, recompressing those sent with
    /// another; None (`producer`) stores them as sent.
    pub compression: Option<Compression>,
    /// `compression.gzip.level` (-1: the codec's default) and `compression.zstd.level`, used
    /// when recompressing. (`compression.lz4.level` is accepted; the lz4 encoder has one level.)
    pub compression_gzip_level: i32,
    pub compression_zstd_level: i32,
    /// `message.timestamp.before.max.ms` / `message.timestamp.after.max.ms` (KIP-937): how far
    /// a CreateTime record's timestamp may lie behind or ahead of the broker's clock.
    pub message_timestamp_before_max_ms: i64,
    pub message_timestamp_after_max_ms: i64,
    /// `segment.jitter.ms`: up to this much is taken off `segment.ms` for each new segment,
    /// so that partitions created together do not all roll at once.
    pub segment_jitter_ms: u64,
    /// `preallocate`: allocate a new segment's log file to `segment.bytes` up front.
    pub preallocate: bool,
    /// `file.delete.delay.ms`: a deleted segment's files are renamed `*.deleted` and removed
    /// this much later.
    pub file_delete_delay_ms: u64,
    /// `min.insync.replicas`: not the log's to act on; the broker refuses acks=all appends
    /// while fewer replicas are in sync.
    pub min_insync_replicas: i32,
    /// `cleanup.policy`: `delete` (retention by time and size) and/or `compact` (the log
    /// cleaner keeps the latest record of each key).
    pub delete: bool,
    pub compact: bool,
    /// `delete.retention.ms`: how long a tombstone stays once its batch is this old.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`: clean once this share of the cleanable log is dirty.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: records younger than this are not compacted yet.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a dirty record older than this makes the log due for
    /// cleaning whatever its dirty ratio.
    pub max_compaction_lag_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            segment_index_bytes: 10 << 20,
            index_interval_bytes: 4096,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            // Kafka's default: 1 MiB of records plus the 12-byte log overhead.
            max_message_bytes: 1_048_588,
            message_timestamp_type: TimestampType::CreateTime,
            flush_policy: FlushPolicy::Os,
            max_decompressed_batch_bytes: MAX_DECOMPRESSED_BATCH_BYTES,
            producer_id_expiration_ms: 24 * 3600 * 1000,
            compression: None,
            compression_gzip_level: -1,
            compression_zstd_level: 3,
            message_timestamp_before_max_ms: i64::MAX,
            // No limit for the log itself; the broker's default is Kafka 4.0's hour.
            message_timestamp_after_max_ms: i64::MAX,
            segment_jitter_ms: 0,
            preallocate: false,
            file_delete_delay_ms: 60_000,
            min_insync_replicas: 1,
            delete: true,
            compact: false,
            delete_retention_ms: 24 * 3600 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
        }
    }
}

impl LogConfig {
    /// Rejects values the log cannot honour, naming the key and the allowed range.
    pub fn validate(&self) -> Result<()> {
        // Positions in the offset index are 32-bit, as in Kafka.
        if self.segment_bytes < 14 || self.segment_bytes > i32::MAX as u32 {
            return Err(Error::InvalidConfig(format!(
                "segment.bytes must be between 14 and {}, got {}",
                i32::MAX,
                self.segment_bytes
            )));
        }
        if self.segment_index_bytes < 24 {
            return Err(Error::InvalidConfig(format!(
                "segment.index.bytes must be at least 24 (two time index entries), got {}",
                self.segment_index_bytes
            )));
        }
        if self.max_message_bytes > i32::MAX as u32 {
            return Err(Error::InvalidConfig(format!(
                "max.message.bytes must be at most {}, got {}",
                i32::MAX,
                self.max_message_bytes
            )));
        }
        if self.segment_ms == Some(0) {
            return Err(Error::InvalidConfig("segment.ms must be at least 1".into()));
        }
        if let FlushPolicy::IntervalMs(0) = self.flush_policy {
            return Err(Error::InvalidConfig("flush.ms must be at least 1".into()));
        }
        Ok(())
    }
}
