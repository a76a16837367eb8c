//! The broker's error type, and the one place where errors become Kafka error codes.

use kafka_protocol::error::ResponseError;
use sluice_storage::Error as StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("invalid broker config: {0}")]
    Config(String),
    #[error("{0}")]
    DataDirInUse(String),
    #[error("metadata log: {0}")]
    Metadata(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The Kafka error code a client should see for a storage error.
pub fn storage_error_code(err: &StorageError) -> ResponseError {
    match err {
        StorageError::CorruptBatch(_) => ResponseError::CorruptMessage,
        StorageError::InvalidRecord(_) | StorageError::RefusedRecord { .. } => ResponseError::InvalidRecord,
        StorageError::InvalidTimestamp { .. } => ResponseError::InvalidTimestamp,
        StorageError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        StorageError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        StorageError::Decompression { .. } => ResponseError::CorruptMessage,
        StorageError::Compression { .. } => ResponseError::UnknownServerError,
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        StorageError::AppendTruncated { .. } => ResponseError::NotLeaderOrFollower,
        StorageError::InvalidConfig(_) => ResponseError::InvalidConfig,
        StorageError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        StorageError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        StorageError::CorruptSegment { .. } | StorageError::LogFailed { .. } | StorageError::Io { .. } => {
            ResponseError::KafkaStorageError
        }
    }
}
