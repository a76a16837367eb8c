//! The storage crate's one error type. Errors about a batch say what is wrong with it in
//! terms a producer's author can act on; the broker maps each variant to a Kafka error code.

use std::path::PathBuf;

use crate::offset::Offset;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes do not form a well-framed magic-2 batch, or its CRC-32C does not match:
    /// Kafka's CORRUPT_MESSAGE.
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),

    /// The batch is well framed but its records break the format's rules (counts, offset
    /// deltas, a truncated record): Kafka's INVALID_RECORD.
    #[error("invalid record batch: {0}")]
    InvalidRecord(String),

    /// A record's CreateTime timestamp lies further in the past or future than
    /// `message.timestamp.before.max.ms` / `message.timestamp.after.max.ms` allow (Kafka's
    /// INVALID_TIMESTAMP, KIP-937). `record` is its index in the batch.
    #[error("record {record} has timestamp {timestamp_ms}, {reason}")]
    InvalidTimestamp { record: i32, timestamp_ms: i64, reason: String },

    /// A record breaks a rule of the topic (a record without a key on a compacted topic):
    /// Kafka's INVALID_RECORD, naming the record's index in the batch (KIP-467).
    #[error("record {record} is refused: {reason}")]
    RefusedRecord { record: i32, reason: String },

    /// The batch uses a magic other than 2 (Kafka's UNSUPPORTED_FOR_MESSAGE_FORMAT).
    #[error("record batch magic {0} is not supported; only magic 2 (Kafka 0.11+) is")]
    UnsupportedMagic(i8),

    /// The batch is larger than `max.message.bytes` (Kafka's MESSAGE_TOO_LARGE).
    #[error("record batch of {size} bytes exceeds max.message.bytes ({max})")]
    BatchTooLarge { size: usize, max: usize },

    /// The compressed payload could not be decoded, or decoded to more than the limit.
    #[error("cannot decompress {codec} record batch: {reason}")]
    Decompression { codec: &'static str, reason: String },

    /// Building a compressed batch failed (an encoder error; never caused by input bytes).
    #[error("cannot compress a {codec} record batch: {reason}")]
    Compression { codec: &'static str, reason: String },

    #[error("offset {offset} is out of range: the log holds [{log_start_offset}, {log_end_offset})")]
    OffsetOutOfRange { offset: Offset, log_start_offset: Offset, log_end_offset: Offset },

    /// Stored data failed its checks somewhere we cannot repair by truncating a torn tail.
    #[error("corrupt log segment {path} at byte {position}: {reason}")]
    CorruptSegment { path: PathBuf, position: u64, reason: String },

    /// An fsync failed: the kernel may have dropped dirty pages, so the log refuses all further
    /// writes until it is reopened and recovered.
    #[error("log {path} refuses writes after an fsync failure: {reason}")]
    LogFailed { path: PathBuf, reason: String },

    /// The log was truncated (a new leader) before the append became durable; the append
    /// is not acknowledged.
    #[error("the log was truncated below offset {offset} before the append was durable")]
    AppendTruncated { offset: Offset },

    /// An idempotent producer's batch does not follow its previous one (Kafka's
    /// OUT_OF_ORDER_SEQUENCE_NUMBER): a batch in between was lost, or the producer is confused.
    #[error("producer {producer_id}: expected sequence {expected}, got {got}")]
    OutOfOrderSequence { producer_id: i64, expected: i32, got: i32 },

    /// A batch from an older epoch of a producer id (Kafka's INVALID_PRODUCER_EPOCH): a
    /// zombie instance, fenced by a newer one.
    #[error("producer {producer_id}: epoch {epoch} is older than the current epoch {current}")]
    InvalidProducerEpoch { producer_id: i64, epoch: i16, current: i16 },

    #[error("invalid log config: {0}")]
    InvalidConfig(String),

    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
}

impl Error {
    /// The index in its batch of the record this error is about, when it is about one.
    pub fn record_index(&self) -> Option<i32> {
        match self {
            Error::InvalidTimestamp { record, .. } | Error::RefusedRecord { record, .. } => Some(*record),
            _ => None,
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { action, path, source }
    }
}
