//! Sluice's partition log: Kafka-style segmented logs on disk.
//!
//! A [`PartitionLog`] stores record batches exactly as producers sent them (magic 2), with only
//! the base offset and partition leader epoch rewritten, and serves them back as zero-copy
//! [`bytes::Bytes`] slices of memory-mapped segment files. This crate knows nothing of the
//! network: the broker and the stream processor both build on it.

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod flush;
pub mod format;
pub mod handle_cache;
pub mod index;
pub mod log;
mod offset;
pub mod producer_state;
pub mod recovery;
pub mod segment;
mod segment_files;
pub mod txn_index;

pub use config::{FlushPolicy, LogConfig};
pub use error::{Error, Result};
pub use format::{BatchInfo, Compression, Header, Record, RecordBatch, RecordBatchBuilder, Records, TimestampType};
pub use handle_cache::HandleCache;
pub use log::{AppendOutcome, DurableHandle, PartitionLog, ReadResult};
pub use offset::{LeaderEpoch, Offset};
pub use producer_state::{MarkerKind, ProducerId};
pub use txn_index::AbortedTxn;
