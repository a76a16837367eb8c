//! The partition log: an ordered list of segments, the last one active, behind one lock.
//!
//! Invariants: offsets are dense and increasing; `log_start_offset <= high_watermark <=
//! log_end_offset`; readers never see bytes past the committed end of a segment; an
//! append either lands whole or leaves the log unchanged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::checkpoint::{self, Checkpoint};
use crate::config::{FlushPolicy, LogConfig};
use crate::error::{Error, Result};
use crate::flush::{Flusher, SyncError, SyncTarget};
use crate::format::{self, BatchInfo, TimestampType};
use crate::handle_cache::HandleCache;
use crate::producer_state::{self, MarkerKind, ProducerBatch, ProducerId, ProducerState, SequenceCheck};
use crate::recovery;
use crate::retention;
use crate::segment::{Segment, NO_TIMESTAMP};

mod transactions;
use crate::offset::{LeaderEpoch, Offset};
use crate::txn_index::{self, AbortedTxn};

/// How often `maintain` rewrites the checkpoint (Kafka's
/// `log.flush.offset.checkpoint.interval.ms`).
const CHECKPOINT_INTERVAL_MS: i64 = 60_000;

/// Milliseconds since the Unix epoch, the unit of every Kafka timestamp.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The result of an append: where the batch landed, and a handle to wait for durability.
#[derive(Clone)]
pub struct AppendOutcome {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// The broker's timestamp for the batch under `LogAppendTime`; None under `CreateTime`.
    pub log_append_time_ms: Option<i64>,
    pub info: BatchInfo,
    /// The batch was an idempotent producer's retry of one already in the log: nothing was
    /// appended, and the offsets are the original batch's.
    pub duplicate: bool,
    durable: DurableHandle,
}

impl AppendOutcome {
    /// Blocks until the batch is as durable as the log's flush policy promises.
    pub fn wait_durable(&self) -> Result<()> {
        self.durable.wait()
    }

    pub fn durable_handle(&self) -> DurableHandle {
        self.durable.clone()
    }
}

/// Completes when an append is durable under the flush policy it was made with: at once for
/// `Os` and `IntervalMs` (the data is in the page cache and survives a process crash), after
/// a (shared) fsync for `EveryAppend`.
#[derive(Clone)]
pub struct DurableHandle {
    log: PartitionLog,
    end_offset: i64,
    needs_fsync: bool,
}

impl DurableHandle {
    /// Whether `wait` has an fsync to wait for (the log's policy is `EveryAppend`).
    pub fn needs_fsync(&self) -> bool {
        self.needs_fsync
    }

    /// The offset after the append this handle is for.
    pub fn end_offset(&self) -> Offset {
        Offset(self.end_offset)
    }

    pub fn wait(&self) -> Result<()> {
        if !self.needs_fsync {
            return Ok(());
        }
        self.log.sync_to(self.end_offset)
    }
}

#[derive(Clone, Debug)]
pub struct ReadResult {
    /// Whole batches, as stored; empty when there is nothing at the offset yet.
    pub records: Bytes,
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
    pub log_end_offset: Offset,
}

struct LogState {
    /// Never empty; sorted by base offset; only the last is active.
    segments: Vec<Segment>,
    log_start_offset: i64,
    high_watermark: i64,
    last_flush_ms: i64,
    /// Set by a clean shutdown; later appends are refused so the clean marker stays true.
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
        let found = checkpoint::read(&dir)?;
        let loaded = recovery::load(&dir, &config, &cache, found)?;
        let segments = loaded.segments;
        let first_base = segments.first().map_or(0, |s| s.base_offset);
        let log_end_offset = segments.last().map_or(0, |s| s.next_offset);
        let log_start_offset = found.map_or(first_base, |c| c.log_start_offset).clamp(first_base, log_end_offset);
        let high_watermark =
            found.map_or(log_start_offset, |c| c.high_watermark).clamp(log_start_offset, log_end_offset);
        // Offsets below the recovery point were acknowledged as durable: if the files end
        // before it, acknowledged data is gone, which must not pass for a torn tail.
        if let Some(expected) = found.map(|c| c.recovery_point).filter(|point| *point > log_end_offset) {
            let last = segments.last().expect("a log always has an active segment");
            return Err(Error::CorruptSegment {
                path: last.paths.log.clone(),
                position: last.size,
                reason: format!("the log ends at offset {log_end_offset}, but offsets up to {expected} were durable"),
            });
        }
        // Everything loaded was either trusted as flushed or scanned and fsynced by recovery.
        let recovery_point = log_end_offset;
        if loaded.recovered {
            tracing::info!(dir = %dir.display(), log_end_offset, "recovered log after an unclean shutdown");
        }
        let mut aborted = Vec::new();
        for segment in &segments {
            let (entries, whole) = txn_index::read_checked(&segment.paths.txn_index)?;
            let kept: Vec<AbortedTxn> = entries.iter().copied().filter(|a| a.last_offset < log_end_offset).collect();
            // A torn entry, or entries past a log end that recovery cut back: rewrite the
            // file, so later appends stay aligned and reused offsets meet no stale entry.
            if !whole || kept.len() != entries.len() {
                txn_index::rewrite(&segment.paths.txn_index, &kept)?;
            }
            aborted.extend(kept);
        }
        aborted.sort_by_key(|a| a.last_offset);
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
            }),
        };
        log.rebuild_producers()?;
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

    /// Replaces the configuration; it applies from the next append (and retention run).
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        *self.inner.config.write() = config;
        Ok(())
    }

    /// Appends one batch exactly as a producer sent it, at `now_ms`. Validates it completely
    /// before taking the log's lock; an invalid batch leaves the log unchanged.
    pub fn append(&self, batch: &[u8], leader_epoch: LeaderEpoch, now_ms: i64) -> Result<AppendOutcome> {
        self.append_batch(batch, leader_epoch, now_ms, None)
    }

    fn append_batch(
        &self,
        batch: &[u8],
        leader_epoch: LeaderEpoch,
        now_ms: i64,
        marker: Option<(ProducerId, i16, MarkerKind)>,
    ) -> Result<AppendOutcome> {
        let config = self.inner.config.read().clone();
        let max = config.max_message_bytes as usize;
        if batch.len() > max {
            return Err(Error::BatchTooLarge { size: batch.len(), max });
        }
        let info = format::validate(batch, config.max_decompressed_batch_bytes)?;
        if info.is_control && marker.is_none() {
            return Err(Error::InvalidRecord("control batches are written only by the transaction coordinator".into()));
        }
        if let Some(reason) = self.inner.flusher.failure() {
            return Err(Error::LogFailed { path: self.inner.dir.clone(), reason });
        }
        let (stored_max_timestamp_ms, log_append_time_ms) = match config.message_timestamp_type {
            TimestampType::CreateTime => (info.max_timestamp_ms, None),
            TimestampType::LogAppendTime => (now_ms, Some(now_ms)),
        };

        let mut state = self.inner.state.write();
        if state.closed {
            return Err(Error::LogFailed { path: self.inner.dir.clone(), reason: "the log was closed".into() });
        }
        let producer_batch = ProducerBatch::from(&info);
        if let Some((producer_id, epoch, _)) = marker {
            state.producers.check_marker(producer_id, epoch)?;
        }
        if let SequenceCheck::Duplicate(original) = state.producers.check(&producer_batch)? {
            drop(state);
            return Ok(AppendOutcome {
                base_offset: Offset(original.first_offset),
                last_offset: Offset(original.last_offset),
                log_append_time_ms,
                info,
                duplicate: true,
                durable: DurableHandle {
                    log: self.clone(),
                    end_offset: original.last_offset + 1,
                    needs_fsync: config.flush_policy == FlushPolicy::EveryAppend,
                },
            });
        }
        let base_offset = state.log_end_offset();
        let active = state.active().handle(&self.inner.cache, &config)?;
        if state.active().should_roll(&active, &info, base_offset, &config, now_ms) {
            self.roll(&mut state, &config)?;
        }
        let header = format::stamp_header(
            batch,
            base_offset,
            leader_epoch.0,
            stored_max_timestamp_ms,
            config.message_timestamp_type,
        );
        drop(active);
        let appended = state.active_mut().append(
            &self.inner.cache,
            &config,
            &header,
            &batch[format::HEADER_SIZE..],
            &info,
            base_offset,
            stored_max_timestamp_ms,
            now_ms,
        );
        if let Err(Error::LogFailed { reason, .. }) = &appended {
            self.inner.flusher.fail(reason.clone());
        }
        appended?;
        if producer_batch.producer_id >= 0 {
            state.producers.update(&producer_batch, base_offset, now_ms);
            state.producers_version += 1;
        }
        if let Some((producer_id, epoch, kind)) = marker {
            let stable_before = state.producers.first_unstable_offset().unwrap_or(state.high_watermark);
            if let Some((first_offset, last_offset)) =
                state.producers.complete_txn(producer_id, epoch, kind, base_offset, now_ms)
            {
                let entry = AbortedTxn {
                    producer_id: producer_id.0,
                    first_offset,
                    last_offset,
                    last_stable_offset: stable_before,
                };
                self.record_aborted(&mut state, entry)?;
            }
            state.producers_version += 1;
        }
        let end_offset = state.log_end_offset();
        drop(state);

        Ok(AppendOutcome {
            base_offset: Offset(base_offset),
            last_offset: Offset(end_offset - 1),
            log_append_time_ms,
            info,
            duplicate: false,
            durable: DurableHandle {
                log: self.clone(),
                end_offset,
                needs_fsync: config.flush_policy == FlushPolicy::EveryAppend,
            },
        })
    }

    /// Closes the active segment and starts a new one at the log end offset.
    /// No fsync or msync happens here, on the append path: the sealed segment and the new
    /// one's directory entry are made durable by the flusher's next round, before any offset
    /// in them counts as durable.
    fn roll(&self, state: &mut LogState, config: &LogConfig) -> Result<()> {
        let new_base = state.log_end_offset();
        let rolled = state.active_mut().seal(&self.inner.cache, config)?;
        self.inner.flusher.push_rolled(rolled);
        let segment = Segment::create(&self.inner.dir, new_base)?;
        tracing::debug!(dir = %self.inner.dir.display(), base_offset = new_base, "rolled a new segment");
        state.segments.push(segment);
        Ok(())
    }

    /// Makes every offset below `offset` durable, sharing fsyncs with concurrent callers.
    fn sync_to(&self, offset: i64) -> Result<()> {
        let result = self.inner.flusher.sync_to(offset, || {
            let state = self.inner.state.read();
            let config = self.inner.config.read();
            let active = state.active().handle(&self.inner.cache, &config)?;
            let rolled = self.inner.flusher.take_rolled();
            Ok(SyncTarget { end_offset: state.log_end_offset(), rolled, active, dir: self.inner.dir.clone() })
        });
        result.map_err(|err| match err {
            SyncError::Failed(reason) => Error::LogFailed { path: self.inner.dir.clone(), reason },
            SyncError::Truncated => Error::AppendTruncated { offset: Offset(offset - 1) },
            SyncError::Target(err) => err,
        })
    }

    /// fsyncs everything appended so far.
    pub fn flush(&self) -> Result<()> {
        let end = self.log_end_offset().0;
        self.sync_to(end)?;
        self.inner.state.write().last_flush_ms = now_ms();
        Ok(())
    }

    /// Number of fsyncs the log has issued for appends (a group commit counts once).
    pub fn fsync_count(&self) -> u64 {
        self.inner.flusher.fsync_count()
    }

    /// Whole batches from the one containing `offset`, up to `max_bytes` (but at least one
    /// batch) and only batches below `max_offset` (the high watermark or last stable offset
    /// for consumers). Reads do not cross segments, as in Kafka: the next read continues.
    pub fn read(&self, offset: Offset, max_bytes: usize, max_offset: Offset) -> Result<ReadResult> {
        let state = self.inner.state.read();
        let log_end_offset = state.log_end_offset();
        let result = |records| ReadResult {
            records,
            high_watermark: Offset(state.high_watermark),
            log_start_offset: Offset(state.log_start_offset),
            log_end_offset: Offset(log_end_offset),
        };
        if offset.0 < state.log_start_offset || offset.0 > log_end_offset {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start_offset: Offset(state.log_start_offset),
                log_end_offset: Offset(log_end_offset),
            });
        }
        if offset.0 >= log_end_offset || offset.0 >= max_offset.0 {
            return Ok(result(Bytes::new()));
        }
        let config = self.inner.config.read().clone();
        let segment = &state.segments[state.segment_for(offset.0)];
        let handle = segment.handle(&self.inner.cache, &config)?;
        let records = segment.read(&handle, offset.0, max_bytes, max_offset.0)?;
        Ok(result(records))
    }

    /// ListOffsets by timestamp: the first offset at or after the log start, and below
    /// `max_offset`, whose record timestamp is at least `timestamp_ms`, with that timestamp.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64, max_offset: Offset) -> Result<Option<(Offset, i64)>> {
        let state = self.inner.state.read();
        let config = self.inner.config.read().clone();
        for segment in &state.segments {
            if segment.next_offset <= state.log_start_offset || segment.max_timestamp_ms < timestamp_ms {
                continue;
            }
            if segment.base_offset >= max_offset.0 {
                break;
            }
            let handle = segment.handle(&self.inner.cache, &config)?;
            if let Some((offset, ts)) =
                segment.find_timestamp(&handle, timestamp_ms, state.log_start_offset, max_offset.0)?
            {
                return Ok(Some((Offset(offset), ts)));
            }
        }
        Ok(None)
    }

    /// ListOffsets MAX_TIMESTAMP (KIP-734): the record with the largest timestamp (the first
    /// one to carry it), as (offset, timestamp).
    pub fn max_timestamp(&self) -> Option<(Offset, i64)> {
        let state = self.inner.state.read();
        let mut best: Option<(Offset, i64)> = None;
        for segment in &state.segments {
            if segment.max_timestamp_ms != NO_TIMESTAMP && best.is_none_or(|(_, ts)| segment.max_timestamp_ms > ts) {
                best = Some((
                    Offset(segment.offset_of_max_timestamp.max(state.log_start_offset)),
                    segment.max_timestamp_ms,
                ));
            }
        }
        best
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
        Offset(clamped)
    }

    /// Moves the high watermark up to `offset` (never down, never past the log end offset);
    /// returns it. Concurrent committers can each advance it to their own append's end.
    pub fn advance_high_watermark(&self, offset: Offset) -> Offset {
        let mut state = self.inner.state.write();
        let advanced = offset.0.min(state.log_end_offset()).max(state.high_watermark);
        state.high_watermark = advanced;
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

    /// Removes every batch at or after the one containing `offset` (a replica following a new
    /// leader). The log end offset becomes the base offset of that batch.
    pub fn truncate_to(&self, offset: Offset) -> Result<Offset> {
        self.refuse_if_deleted()?;
        // Rolled segments finish first: the flusher trims a sealed segment's index files,
        // which truncation may make active (and written) again.
        if self.inner.flusher.has_rolled() {
            self.flush()?;
        }
        let config = self.inner.config.read().clone();
        // The recovery point on disk must not be above the new end before any file changes, or
        // a crash mid-truncation would look like acknowledged data gone missing.
        let new_end = {
            let state = self.inner.state.read();
            if offset.0 >= state.log_end_offset() {
                return Ok(Offset(state.log_end_offset()));
            }
            if offset.0 <= state.log_start_offset {
                offset.0.max(0)
            } else {
                let segment = &state.segments[state.segment_for(offset.0)];
                let handle = segment.handle(&self.inner.cache, &config)?;
                let cut =
                    segment.locate(&handle, offset.0)?.map_or(segment.next_offset, |(_, header)| header.base_offset);
                // A cut below the log start empties the log, which restarts at the log start.
                cut.max(state.log_start_offset)
            }
        };
        self.inner.flusher.truncate(new_end);
        self.write_checkpoint(false)?;
        let mut state = self.inner.state.write();
        if state.closed {
            return Err(Error::LogFailed { path: self.inner.dir.clone(), reason: "the log was closed".into() });
        }
        if offset.0 >= state.log_end_offset() {
            return Ok(Offset(state.log_end_offset()));
        }
        let cache = &self.inner.cache;
        if offset.0 > state.log_start_offset {
            let keep = state.segment_for(offset.0);
            for segment in state.segments.drain(keep + 1..) {
                segment.delete(cache)?;
            }
            state.active_mut().truncate_to(cache, &config, offset.0)?;
        }
        // Truncating at or below the log start (the batch holding the offset may begin below
        // it) keeps nothing: start over, empty, at the lower of the two.
        if offset.0 <= state.log_start_offset || state.log_end_offset() < state.log_start_offset {
            for segment in state.segments.drain(..) {
                segment.delete(cache)?;
            }
            let start = offset.0.min(state.log_start_offset).max(0);
            state.segments.push(Segment::create(&self.inner.dir, start)?);
            state.log_start_offset = start;
        }
        let end = state.log_end_offset();
        if state.aborted.iter().any(|a| a.last_offset >= end) {
            state.aborted.retain(|a| a.last_offset < end);
            let active = state.active();
            let kept: Vec<AbortedTxn> =
                state.aborted.iter().filter(|a| a.last_offset >= active.base_offset).copied().collect();
            txn_index::rewrite(&active.paths.txn_index, &kept)?;
        }
        checkpoint::sync_dir(&self.inner.dir)?;
        state.high_watermark = state.high_watermark.min(end);
        self.inner.flusher.truncate(end);
        drop(state);
        self.write_checkpoint(false)?;
        self.rebuild_producers()?;
        // A snapshot from before the truncation may cover offsets the log is about to reuse:
        // it goes (the next checkpoint writes a new one; until then a reopen replays the log).
        let snapshot = self.inner.dir.join(producer_state::SNAPSHOT_FILE);
        match std::fs::remove_file(&snapshot) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("remove producer snapshot", snapshot)(err))
            }
            _ => {}
        }
        Ok(Offset(end))
    }

    /// DeleteRecords: moves the log start offset up to `offset` (at most the high watermark)
    /// and deletes segments wholly below it. Returns the new log start offset, which is
    /// persisted before this returns.
    pub fn delete_records_before(&self, offset: Offset) -> Result<Offset> {
        let config = self.inner.config.read().clone();
        let mut state = self.inner.state.write();
        if state.closed {
            return Err(Error::LogFailed { path: self.inner.dir.clone(), reason: "the log was closed".into() });
        }
        if offset.0 < 0 || offset.0 > state.high_watermark {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start_offset: Offset(state.log_start_offset),
                log_end_offset: Offset(state.high_watermark),
            });
        }
        if offset.0 <= state.log_start_offset {
            return Ok(Offset(state.log_start_offset));
        }
        state.log_start_offset = offset.0;
        if state.active().next_offset <= offset.0 && state.active().size > 0 {
            self.roll(&mut state, &config)?;
        }
        let doomed = state.segments.iter().take_while(|s| !s.active && s.next_offset <= offset.0).count();
        self.delete_front(&mut state, doomed)?;
        drop(state);
        self.write_checkpoint(false)?;
        Ok(offset)
    }

    /// Deletes the `count` oldest segments (never the active one), raising the log start.
    fn delete_front(&self, state: &mut LogState, count: usize) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        for segment in state.segments.drain(..count) {
            tracing::info!(segment = %segment.paths.log.display(), "deleting segment");
            segment.delete(&self.inner.cache)?;
        }
        let first = state.segments[0].base_offset;
        state.log_start_offset = state.log_start_offset.max(first);
        state.high_watermark = state.high_watermark.max(state.log_start_offset);
        state.aborted.retain(|a| a.last_offset >= first);
        checkpoint::sync_dir(&self.inner.dir)
    }

    /// Applies `retention.ms` and `retention.bytes`; returns how many segments were deleted.
    pub fn apply_retention(&self, now_ms: i64) -> Result<usize> {
        if self.is_deleted() {
            return Ok(0);
        }
        let config = self.inner.config.read().clone();
        let mut state = self.inner.state.write();
        if state.closed {
            return Ok(0);
        }
        let count = retention::deletable_prefix(&state.segments, &config, state.high_watermark, now_ms);
        self.delete_front(&mut state, count)?;
        drop(state);
        if count > 0 {
            self.write_checkpoint(false)?;
        }
        Ok(count)
    }

    /// Stops the log for good before its directory is deleted: appends, truncations, record
    /// deletions, retention and checkpoints are refused or skipped from now on.
    pub fn mark_deleted(&self) {
        let _checkpoint_writers = self.inner.checkpoint.lock();
        let mut state = self.inner.state.write();
        state.closed = true;
        self.inner.deleted.store(true, std::sync::atomic::Ordering::Release);
    }

    fn is_deleted(&self) -> bool {
        self.inner.deleted.load(std::sync::atomic::Ordering::Acquire)
    }

    fn refuse_if_deleted(&self) -> Result<()> {
        if self.is_deleted() {
            return Err(Error::LogFailed { path: self.inner.dir.clone(), reason: "the log was deleted".into() });
        }
        Ok(())
    }

    /// Periodic upkeep, for the owner to call every second or so: the `flush.ms` flush, the
    /// fsync of rolled segments, retention, and the checkpoint.
    pub fn maintain(&self, now_ms: i64) -> Result<()> {
        if self.is_deleted() {
            return Ok(());
        }
        let config = self.inner.config.read().clone();
        let flush_due = match config.flush_policy {
            FlushPolicy::IntervalMs(interval) => now_ms - self.inner.state.read().last_flush_ms >= interval as i64,
            FlushPolicy::EveryAppend | FlushPolicy::Os => false,
        };
        if flush_due || self.inner.flusher.has_rolled() {
            self.flush()?;
        }
        self.apply_retention(now_ms)?;
        // Two fsyncs per write: with thousands of partitions a checkpoint every tick would be
        // a storm of them. A stale recovery point only means more rescanning after a crash.
        let due = {
            let last = self.inner.checkpoint.lock();
            last.is_none_or(|(_, written_ms)| now_ms - written_ms >= CHECKPOINT_INTERVAL_MS || now_ms < written_ms)
        };
        if due {
            let cutoff = now_ms.saturating_sub(config.producer_id_expiration_ms);
            let mut state = self.inner.state.write();
            if state.producers.expire(cutoff) > 0 {
                state.producers_version += 1;
            }
            drop(state);
            self.write_checkpoint(false)?;
            self.snapshot_producers()?;
        }
        Ok(())
    }

    /// Writes the checkpoint now (recovery point, log start offset, high watermark) and the
    /// producer snapshot.
    pub fn checkpoint(&self) -> Result<()> {
        self.write_checkpoint(false)?;
        self.snapshot_producers()
    }

    fn write_checkpoint(&self, clean_shutdown: bool) -> Result<()> {
        let mut last = self.inner.checkpoint.lock();
        if self.is_deleted() {
            return Ok(());
        }
        let now = now_ms();
        let checkpoint = {
            let state = self.inner.state.read();
            Checkpoint {
                clean_shutdown,
                recovery_point: self.inner.flusher.durable_offset(),
                log_start_offset: state.log_start_offset,
                high_watermark: state.high_watermark,
            }
        };
        if last.is_none_or(|(written, _)| written != checkpoint) {
            checkpoint::write(&self.inner.dir, &checkpoint)?;
        }
        *last = Some((checkpoint, now));
        Ok(())
    }

    /// Clean shutdown: flushes the log and its indexes and marks the shutdown clean, so the
    /// next open trusts the files without scanning them.
    pub fn close(self) -> Result<()> {
        // Stop appends first: anything appended after the flush would be covered by the clean
        // marker without having been fsynced.
        self.inner.state.write().closed = true;
        self.flush()?;
        self.snapshot_producers()?;
        let config = self.inner.config.read().clone();
        let mut state = self.inner.state.write();
        let active = state.active_mut();
        // Final time index entry, indexes trimmed and flushed, as at a roll; the segment stays
        // the active one for whoever opens the log next.
        active.close(&self.inner.cache, &config)?;
        active.active = true;
        drop(state);
        self.write_checkpoint(true)
    }

    /// Checks every batch's framing and CRC-32C in every segment; the first problem is
    /// returned as an error naming the file and byte position.
    pub fn verify(&self) -> Result<()> {
        let state = self.inner.state.read();
        let config = self.inner.config.read().clone();
        for segment in &state.segments {
            let handle = segment.handle(&self.inner.cache, &config)?;
            let mut expected = segment.base_offset;
            for item in segment.headers_from(&handle, 0) {
                let (position, header) = item?;
                format::check_crc(&handle.slice(position, header.size))
                    .map_err(|err| segment.corrupt(position, err.to_string()))?;
                if header.base_offset != expected {
                    let reason =
                        format!("batch base offset {} where offset {expected} was expected", header.base_offset);
                    return Err(segment.corrupt(position, reason));
                }
                expected = header.next_offset();
            }
            if expected != segment.next_offset {
                let reason = format!("segment ends at offset {expected}, not {}", segment.next_offset);
                return Err(segment.corrupt(segment.size, reason));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::RecordBatchBuilder;

    fn batch(size: usize) -> Vec<u8> {
        let mut builder = RecordBatchBuilder::new(0);
        builder.push(0, None, Some(&vec![1u8; size]), &[]);
        builder.build().unwrap()
    }

    /// What `sync_to` snapshots, taken after `interleave` runs (what another thread does while
    /// the round's leader waits for the state lock).
    fn snapshot_after(log: &PartitionLog, interleave: impl FnOnce()) -> Result<SyncTarget> {
        interleave();
        let state = log.inner.state.read();
        let config = log.inner.config.read();
        let active = state.active().handle(&log.inner.cache, &config)?;
        let rolled = log.inner.flusher.take_rolled();
        Ok(SyncTarget { end_offset: state.log_end_offset(), rolled, active, dir: log.inner.dir.clone() })
    }

    #[test]
    fn a_segment_rolled_during_a_round_is_fsynced_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { segment_bytes: 1024, flush_policy: FlushPolicy::EveryAppend, ..LogConfig::default() };
        let log = PartitionLog::open(dir.path(), config, HandleCache::new(16)).unwrap();
        let first = log.append(&batch(900), LeaderEpoch(0), 0).unwrap();
        let covered = log.inner.flusher.sync_to(first.last_offset.0 + 1, || {
            snapshot_after(&log, || {
                log.append(&batch(900), LeaderEpoch(0), 0).unwrap(); // rolls the segment
            })
        });
        assert!(covered.is_ok());
        assert_eq!(log.segment_count(), 2);
        assert!(!log.inner.flusher.has_rolled(), "the rolled segment was left unsynced");
    }

    #[test]
    fn a_truncation_during_a_round_keeps_later_appends_unacknowledged_until_fsynced() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { flush_policy: FlushPolicy::EveryAppend, ..LogConfig::default() };
        let log = PartitionLog::open(dir.path(), config, HandleCache::new(16)).unwrap();
        for _ in 0..10 {
            log.append(&batch(100), LeaderEpoch(0), 0).unwrap();
        }
        // On its own thread with a deadline: the bug this guards against is a waiter that
        // never returns.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let waiter = log.clone();
        std::thread::spawn(move || {
            let synced = waiter.inner.flusher.sync_to(10, || {
                let target = snapshot_after(&waiter, || {});
                waiter.truncate_to(Offset(5)).unwrap();
                target
            });
            done_tx.send(matches!(synced, Err(SyncError::Truncated))).unwrap();
        });
        let failed = done_rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the waiter never returned");
        assert!(failed, "a waiter whose offsets were truncated away must fail");
        assert!(log.inner.flusher.durable_offset() <= 5);
        let fsyncs = log.fsync_count();
        log.append(&batch(100), LeaderEpoch(0), 0).unwrap().wait_durable().unwrap();
        assert!(log.fsync_count() > fsyncs, "an append at a reused offset was acknowledged without an fsync");
    }
}
