//! The partition log: an ordered list of segments, the last one active, behind one lock; its
//! paths are `append`, `read`, `truncate`, `retention`, `maintenance` and `transactions`.
//! Invariants: offsets are dense and increasing; `log_start_offset <= high_watermark <=
//! log_end_offset`, and the last stable offset never passes the high watermark; readers never
//! see bytes past the committed end of a segment; an append lands whole or leaves the log
//! unchanged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::checkpoint::{self, Checkpoint};
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::flush::Flusher;
use crate::handle_cache::HandleCache;
use crate::offset::{LeaderEpoch, Offset};
use crate::producer_state::ProducerState;
use crate::recovery;
use crate::segment::Segment;
use crate::txn_index::AbortedTxn;

mod append;
mod compaction;
mod maintenance;
mod read;
mod replica;
mod retention;
mod transactions;
mod truncate;

pub use append::{AppendOutcome, DurableHandle};
pub use compaction::CleanStats;
pub use read::ReadResult;
pub use transactions::ReadBounds;

/// Milliseconds since the Unix epoch, the unit of every Kafka timestamp.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

struct LogState {
    /// Never empty; sorted by base offset; only the last is active.
    segments: Vec<Segment>,
    log_start_offset: i64,
    high_watermark: i64,
    last_flush_ms: i64,
    /// Set by a clean shutdown (later appends are refused, so the clean marker stays true) and
    /// by `mark_deleted`.
    closed: bool,
    /// Idempotent producers' sequence state, as of the log end offset.
    producers: ProducerState,
    /// Bumped by every change to `producers`, so unchanged state is not snapshotted again.
    producers_version: u64,
    /// Aborted transactions (from every segment's `.txnindex`), by marker offset.
    aborted: Vec<AbortedTxn>,
    /// Segments (by base offset) whose `.txnindex` was written since the last snapshot.
    txn_index_dirty: std::collections::BTreeSet<i64>,
}

impl LogState {
    fn active(&self) -> &Segment {
        self.segments.last().expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("a log always has an active segment")
    }

    fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// The segment holding `offset`: the last one whose base offset is at or below it.
    fn segment_for(&self, offset: i64) -> usize {
        self.segments.partition_point(|s| s.base_offset <= offset).saturating_sub(1)
    }

    /// The order of the log's offsets, checked (in debug builds) after each change to one.
    fn debug_check_offsets(&self) {
        debug_assert!(
            self.log_start_offset <= self.high_watermark && self.high_watermark <= self.log_end_offset(),
            "offsets out of order: log start {}, high watermark {}, log end {}",
            self.log_start_offset,
            self.high_watermark,
            self.log_end_offset()
        );
    }
}

struct LogInner {
    dir: PathBuf,
    config: RwLock<LogConfig>,
    state: RwLock<LogState>,
    flusher: Flusher,
    cache: Arc<HandleCache>,
    /// Set when the log's directory is being deleted: nothing may touch its files again,
    /// since a new log (a topic recreated under the same name) may take the directory.
    deleted: std::sync::atomic::AtomicBool,
    /// Serialises checkpoint writers (outside the state lock, so appends never wait on the
    /// checkpoint's fsyncs) and remembers what was last written and when.
    checkpoint: Mutex<Option<(Checkpoint, i64)>>,
    /// The `producers_version` the last producer snapshot holds; also serialises writers.
    snapshot_version: Mutex<u64>,
    /// Files of deleted segments waiting out `file.delete.delay.ms`, with when they go (ms).
    doomed_files: Mutex<Vec<(i64, PathBuf)>>,
    /// The offset below which compaction has cleaned the log; held by a cleaning pass.
    clean_point: Mutex<i64>,
    /// Where each leader epoch starts (KIP-101). Locked after `state` when both are held.
    epochs: Mutex<crate::epoch_cache::EpochCache>,
}

/// One partition's log. Cheap to clone: clones share the same log.
#[derive(Clone)]
pub struct PartitionLog {
    inner: Arc<LogInner>,
}

impl PartitionLog {
    /// Opens the log in `dir` (creating it if needed), recovering it if it was not closed
    /// cleanly.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig, cache: Arc<HandleCache>) -> Result<PartitionLog> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(Error::io("create log directory", &dir))?;
        compaction::finish_interrupted(&dir)?;
        let found = checkpoint::read(&dir)?;
        let loaded = recovery::load(&dir, &config, &cache, found)?;
        let segments = loaded.segments;
        let first_base = segments.first().map_or(0, |s| s.base_offset);
        let log_end_offset = segments.last().map_or(0, |s| s.next_offset);
        let log_start_offset = found.map_or(first_base, |c| c.log_start_offset).clamp(first_base, log_end_offset);
        let high_watermark =
            found.map_or(log_start_offset, |c| c.high_watermark).clamp(log_start_offset, log_end_offset);
        check_recovery_point(found, &segments, log_end_offset)?;
        // Everything loaded was either trusted as flushed or scanned and fsynced by recovery.
        let recovery_point = log_end_offset;
        if loaded.recovered {
            tracing::info!(dir = %dir.display(), log_end_offset, "recovered log after an unclean shutdown");
        }
        let aborted = transactions::load_aborted(&segments, log_end_offset)?;
        let clean_point = checkpoint::read_clean_point(&dir);
        let log = PartitionLog {
            inner: Arc::new(LogInner {
                dir,
                config: RwLock::new(config),
                state: RwLock::new(LogState {
                    segments,
                    log_start_offset,
                    high_watermark,
                    last_flush_ms: now_ms(),
                    closed: false,
                    producers: ProducerState::default(),
                    producers_version: 0,
                    aborted,
                    txn_index_dirty: Default::default(),
                }),
                flusher: Flusher::new(recovery_point),
                cache,
                checkpoint: Mutex::new(None),
                deleted: std::sync::atomic::AtomicBool::new(false),
                snapshot_version: Mutex::new(0),
                doomed_files: Mutex::new(Vec::new()),
                clean_point: Mutex::new(clean_point),
                epochs: Mutex::new(Default::default()),
            }),
        };
        log.rebuild_producers()?;
        log.load_epochs()?;
        // From here on the log is open for writes: the clean marker must be gone from disk
        // before the first append, or a crash would make the next open trust a torn tail.
        log.write_checkpoint(false)?;
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn config(&self) -> LogConfig {
        self.inner.config.read().clone()
    }

    /// `min.insync.replicas`, read without copying the whole config (every acks=all produce
    /// asks).
    pub fn min_insync_replicas(&self) -> i32 {
        self.inner.config.read().min_insync_replicas
    }

    /// Replaces the configuration; it applies from the next append (and retention run).
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        *self.inner.config.write() = config;
        Ok(())
    }

    pub fn log_start_offset(&self) -> Offset {
        Offset(self.inner.state.read().log_start_offset)
    }

    pub fn log_end_offset(&self) -> Offset {
        Offset(self.inner.state.read().log_end_offset())
    }

    pub fn high_watermark(&self) -> Offset {
        Offset(self.inner.state.read().high_watermark)
    }

    /// Sets the high watermark, clamped to `[log_start_offset, log_end_offset]`; returns it.
    pub fn set_high_watermark(&self, offset: Offset) -> Offset {
        let mut state = self.inner.state.write();
        let clamped = offset.0.clamp(state.log_start_offset, state.log_end_offset());
        state.high_watermark = clamped;
        state.debug_check_offsets();
        Offset(clamped)
    }

    /// Moves the high watermark up to `offset` (never down, never past the log end offset);
    /// returns it. Concurrent committers can each advance it to their own append's end.
    pub fn advance_high_watermark(&self, offset: Offset) -> Offset {
        let mut state = self.inner.state.write();
        let advanced = offset.0.min(state.log_end_offset()).max(state.high_watermark);
        state.high_watermark = advanced;
        state.debug_check_offsets();
        Offset(advanced)
    }

    /// Total bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.inner.state.read().segments.iter().map(|s| s.size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.inner.state.read().segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<Offset> {
        self.inner.state.read().segments.iter().map(|s| Offset(s.base_offset)).collect()
    }
}

/// Offsets below the recovery point were acknowledged as durable: if the files end before it,
/// acknowledged data is gone, which must not pass for a torn tail.
fn check_recovery_point(found: Option<Checkpoint>, segments: &[Segment], log_end_offset: i64) -> Result<()> {
    if let Some(expected) = found.map(|c| c.recovery_point).filter(|point| *point > log_end_offset) {
        let last = segments.last().expect("a log always has an active segment");
        return Err(Error::CorruptSegment {
            path: last.paths.log.clone(),
            position: last.size,
            reason: format!("the log ends at offset {log_end_offset}, but offsets up to {expected} were durable"),
        });
    }
    Ok(())
}

impl PartitionLog {
    /// Loads the leader epoch cache, cut to the log as it is; rebuilt from the batches'
    /// epochs if its file is missing or damaged.
    fn load_epochs(&self) -> Result<()> {
        let (start, end) = (self.log_start_offset().0, self.log_end_offset().0);
        let (mut cache, mut changed) = match crate::epoch_cache::EpochCache::read(&self.inner.dir) {
            Some(cache) => (cache, false),
            None => (self.epochs_from_batches(start, end)?, end > start),
        };
        changed |= cache.truncate_from_end(end);
        changed |= cache.truncate_from_start(start);
        if changed {
            cache.write(&self.inner.dir)?;
        }
        *self.inner.epochs.lock() = cache;
        Ok(())
    }

    fn epochs_from_batches(&self, start: i64, end: i64) -> Result<crate::epoch_cache::EpochCache> {
        let mut cache = crate::epoch_cache::EpochCache::default();
        let mut offset = start;
        while offset < end {
            let read = self.read(Offset(offset), 1 << 20, Offset(end))?;
            if read.records.is_empty() {
                break;
            }
            for batch in crate::format::RecordBatch::iter_batches(read.records) {
                let batch = batch?;
                cache.assign(batch.partition_leader_epoch(), batch.base_offset());
                offset = batch.last_offset() + 1;
            }
        }
        Ok(cache)
    }

    /// Records the epoch of a batch appended at `base_offset` (the caller holds the state
    /// lock, so epochs are assigned in offset order).
    pub(super) fn note_epoch(&self, epoch: LeaderEpoch, base_offset: i64) -> Result<()> {
        let mut epochs = self.inner.epochs.lock();
        if epochs.assign(epoch.0, base_offset) {
            epochs.write(&self.inner.dir)?;
        }
        Ok(())
    }

    /// The log was cut at either end: the epoch cache follows.
    pub(super) fn cut_epochs(&self, start: i64, end: i64) -> Result<()> {
        let mut epochs = self.inner.epochs.lock();
        let changed = epochs.truncate_from_end(end) | epochs.truncate_from_start(start);
        if changed {
            epochs.write(&self.inner.dir)?;
        }
        Ok(())
    }

    /// OffsetForLeaderEpoch: the largest epoch at or below `epoch` this log knows and the
    /// offset where it ends (the log end for the latest); (-1, -1) if it cannot say.
    pub fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> (LeaderEpoch, Offset) {
        let end = self.log_end_offset().0;
        let (found, offset) = self.inner.epochs.lock().end_offset_for(epoch.0, end);
        (LeaderEpoch(found), Offset(offset))
    }
}
