//! Sluice's partition log: Kafka-style segmented logs on disk.
//!
//! A [`PartitionLog`] stores record batches exactly as producers sent them (magic 2), with only
//! the base offset and partition leader epoch rewritten, and serves them back as zero-copy
//! [`bytes::Bytes`] slices of memory-mapped segment files. This crate knows nothing of the
//! network: the broker and the stream processor both build on it.

pub mod batch;
pub mod batch_builder;
pub mod checkpoint;
pub mod compression;
pub mod config;
pub mod error;
pub mod flush;
pub mod handle_cache;
pub mod index;
pub mod log;
pub mod producer_state;
pub mod record;
pub mod recovery;
pub mod retention;
pub mod segment;
pub mod txn_index;

pub use batch::{BatchInfo, Compression, TimestampType};
pub use batch_builder::RecordBatchBuilder;
pub use config::{FlushPolicy, LogConfig};
pub use error::{Error, Result};
pub use handle_cache::HandleCache;
pub use log::{AppendOutcome, DurableHandle, PartitionLog, ReadResult};
pub use producer_state::{MarkerKind, ProducerId};
pub use record::{Header, Record, RecordBatch, Records};
pub use txn_index::AbortedTxn;

/// A position in a partition's log. Offsets are dense: every record gets the next one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub i64);

impl Offset {
    pub const ZERO: Offset = Offset(0);

    pub fn value(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The epoch of the partition leader that appended a batch, stamped into each batch header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaderEpoch(pub i32);

impl LeaderEpoch {
    /// Kafka's "no epoch" value.
    pub const NONE: LeaderEpoch = LeaderEpoch(-1);
}
