//! The Kafka record format (magic 2), below the log: the batch header layout and the stamping
//! of offsets into it, compression, validation of a batch as a producer sent it, zero-copy
//! reading of stored batches and their records, and the batch builder. It knows nothing of
//! segments or logs. Nothing here trusts its input: every length is checked before use and
//! every decode returns a `Result`.
//!
//! Layers, each using only those before it: `compression` and `header` (leaves), `records`,
//! then `validate` and `builder`.

mod builder;
mod compression;
mod header;
mod records;
mod validate;

pub use builder::RecordBatchBuilder;
pub use compression::Compression;
pub use header::{check_crc, check_framing, peek_producer, peek_producer_epoch, TimestampType, HEADER_SIZE};
pub use records::{BatchIter, Header, Headers, Record, RecordBatch, Records, MAX_DECOMPRESSED_BATCH_BYTES};
pub use validate::BatchInfo;

pub(crate) use header::{read_stored_header, stamp_header, StoredHeader};
pub(crate) use validate::validate;
