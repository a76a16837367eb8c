//! The Kafka record format (magic 2), below the log and knowing nothing of segments: the batch
//! header and the stamping of offsets into it (`header`), compression, zero-copy reading of
//! stored batches and their records (`records`), validation of a produced batch, and the
//! batch builder. Each file uses only those before it in that list. Nothing here trusts its
//! input: every length is checked before use and every decode returns a `Result`.

mod builder;
mod compression;
mod header;
mod records;
mod validate;

pub use builder::RecordBatchBuilder;
pub use compression::Compression;
pub use header::{check_framing, peek_producer, peek_producer_epoch, TimestampType, HEADER_SIZE};
pub use records::{BatchIter, Header, Headers, Record, RecordBatch, Records};
pub use validate::BatchInfo;

pub(crate) use builder::recompress;
pub(crate) use compression::Levels;
pub(crate) use header::{check_crc, read_leader_epoch, read_stored_header, stamp_header, StoredHeader};
pub(crate) use records::{filter_batch, Filtered, RecordView, MAX_DECOMPRESSED_BATCH_BYTES};
pub(crate) use validate::validate;
