//! Sluice's partition log: Kafka-style segmented logs on disk. A [`PartitionLog`] stores record
//! batches exactly as producers sent them (magic 2), with only the base offset and partition
//! leader epoch rewritten, and serves them back as zero-copy [`bytes::Bytes`] slices of
//! memory-mapped segment files. It knows nothing of the network. The public API is what the
//! broker and the stream processor use: the log and its configuration, the record format
//! ([`format`]), the checkpoint file ([`checkpoint`]) and the types these hand out.

pub mod checkpoint;
mod config;
mod epoch_cache;
mod error;
mod flush;
pub mod format;
mod handle_cache;
mod index;
mod log;
mod offset;
mod producer_state;
mod recovery;
mod segment;
mod segment_files;
mod txn_index;

pub use config::{Durability, FlushPolicy, LogConfig};
pub use error::{Error, Result};
pub use format::{BatchInfo, Compression, Header, Record, RecordBatch, RecordBatchBuilder, Records, TimestampType};
pub use handle_cache::HandleCache;
pub use log::{now_ms, AppendOutcome, CleanStats, DurableHandle, PartitionLog, ReadBounds, ReadResult};
pub use offset::{LeaderEpoch, Offset};
pub use producer_state::{BatchMetadata, MarkerKind, ProducerEntry, ProducerId, ProducerState};
pub use txn_index::AbortedTxn;
