//! The append path: a batch is validated whole before the log's lock is taken, checked
//! against the producer state, stamped with its base offset and written at the log end (the
//! segment rolled first if it is full or old), and the caller gets a handle to wait until it
//! is as durable as the flush policy promises. Offsets are dense and increasing: each batch
//! starts at the log end offset; an invalid or refused batch leaves the log unchanged.

use super::transactions::Marker;
use super::{now_ms, LogState, PartitionLog};
use crate::config::{FlushPolicy, LogConfig};
use crate::error::{Error, Result};
use crate::flush::{SyncError, SyncTarget};
use crate::format::{self, BatchInfo, TimestampType};
use crate::offset::{LeaderEpoch, Offset};
use crate::producer_state::{ProducerBatch, SequenceCheck};
use crate::segment::Segment;

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
    pub(super) durable: DurableHandle,
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
    pub(super) log: PartitionLog,
    pub(super) end_offset: i64,
    pub(super) needs_fsync: bool,
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

impl PartitionLog {
    /// Appends one batch exactly as a producer sent it, at `now_ms`. Validates it completely
    /// before taking the log's lock; an invalid batch leaves the log unchanged.
    pub fn append(&self, batch: &[u8], leader_epoch: LeaderEpoch, now_ms: i64) -> Result<AppendOutcome> {
        self.append_batch(batch, leader_epoch, now_ms, None)
    }

    /// Appends a producer's batch or, with `marker`, the coordinator's transaction marker (a
    /// control batch: only this way may one be written).
    pub(super) fn append_batch(
        &self,
        batch: &[u8],
        leader_epoch: LeaderEpoch,
        now_ms: i64,
        marker: Option<Marker>,
    ) -> Result<AppendOutcome> {
        let config = self.inner.config.read().clone();
        let mut info = self.check_append(batch, &config, marker.is_some())?;
        let conformed = conform(batch, &info, &config, now_ms)?;
        let batch: &[u8] = match &conformed {
            Some(recompressed) => {
                info = self.check_append(recompressed, &config, marker.is_some())?;
                recompressed
            }
            None => batch,
        };
        let (stored_max_timestamp_ms, log_append_time_ms) = match config.message_timestamp_type {
            TimestampType::CreateTime => (info.max_timestamp_ms, None),
            TimestampType::LogAppendTime => (now_ms, Some(now_ms)),
        };
        let outcome = |base_offset: i64, end_offset: i64, duplicate: bool| AppendOutcome {
            base_offset: Offset(base_offset),
            last_offset: Offset(end_offset - 1),
            log_append_time_ms,
            info,
            duplicate,
            durable: DurableHandle {
                log: self.clone(),
                end_offset,
                needs_fsync: config.flush_policy == FlushPolicy::EveryAppend,
            },
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
            return Ok(outcome(original.first_offset, original.last_offset + 1, true));
        }
        let base_offset = state.log_end_offset();
        self.roll_if_due(&mut state, &config, &info, now_ms)?;
        let header = format::stamp_header(
            batch,
            base_offset,
            leader_epoch.0,
            stored_max_timestamp_ms,
            config.message_timestamp_type,
        );
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
        debug_assert_eq!(state.log_end_offset(), base_offset + i64::from(info.last_offset_delta) + 1);
        self.update_producers(&mut state, &producer_batch, marker, base_offset, now_ms)?;
        self.note_epoch(leader_epoch, base_offset)?;
        let end_offset = state.log_end_offset();
        drop(state);
        Ok(outcome(base_offset, end_offset, false))
    }

    /// What can be checked of a batch before the log's lock is taken: its size, its format
    /// (fully), that control batches come only from the coordinator, and that the log still
    /// takes writes.
    pub(super) fn check_append(&self, batch: &[u8], config: &LogConfig, is_marker: bool) -> Result<BatchInfo> {
        let max = config.max_message_bytes as usize;
        if batch.len() > max {
            return Err(Error::BatchTooLarge { size: batch.len(), max });
        }
        let info = format::validate(batch, config.max_decompressed_batch_bytes)?;
        if info.is_control && !is_marker {
            return Err(Error::InvalidRecord("control batches are written only by the transaction coordinator".into()));
        }
        if let Some(reason) = self.inner.flusher.failure() {
            return Err(Error::LogFailed { path: self.inner.dir.clone(), reason });
        }
        Ok(info)
    }

    /// Rolls the active segment before a batch that would overfill it, or when it is older
    /// than `segment.ms`, or an index of it is full.
    pub(super) fn roll_if_due(
        &self,
        state: &mut LogState,
        config: &LogConfig,
        info: &BatchInfo,
        now_ms: i64,
    ) -> Result<()> {
        let active = state.active().handle(&self.inner.cache, config)?;
        if state.active().should_roll(&active, info, state.log_end_offset(), config, now_ms) {
            self.roll(state, config)?;
        }
        Ok(())
    }

    /// Closes the active segment and starts a new one at the log end offset.
    /// No fsync or msync happens here, on the append path: the sealed segment and the new
    /// one's directory entry are made durable by the flusher's next round, before any offset
    /// in them counts as durable.
    pub(super) fn roll(&self, state: &mut LogState, config: &LogConfig) -> Result<()> {
        let new_base = state.log_end_offset();
        // The new segment first: if it cannot be made (a full disk, a preallocation that does
        // not fit), the log keeps its active segment and stays as it was.
        let segment = Segment::create_with(&self.inner.dir, new_base, config)?;
        let rolled = state.active_mut().seal(&self.inner.cache, config)?;
        self.inner.flusher.push_rolled(rolled);
        tracing::debug!(dir = %self.inner.dir.display(), base_offset = new_base, "rolled a new segment");
        state.segments.push(segment);
        Ok(())
    }

    /// Makes every offset below `offset` durable, sharing fsyncs with concurrent callers.
    pub(super) fn sync_to(&self, offset: i64) -> Result<()> {
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
}

/// Applies the topic's rules on what a batch holds before it is stored: CreateTime
/// timestamps within `message.timestamp.before.max.ms` / `after.max.ms` of the broker's
/// clock, and the topic's `compression.type`. Returns the batch recompressed when its codec
/// is not the topic's; None when it is stored as sent. Control batches are the coordinator's
/// and pass as they are.
fn conform(batch: &[u8], info: &BatchInfo, config: &LogConfig, now_ms: i64) -> Result<Option<Vec<u8>>> {
    if info.is_control {
        return Ok(None);
    }
    if let (true, Some(record)) = (config.compact, info.first_keyless_record) {
        // KIP-467: the record's index goes back to the producer.
        return Err(Error::RefusedRecord { record, reason: "a compacted topic takes only records with a key".into() });
    }
    if config.message_timestamp_type == TimestampType::CreateTime {
        let behind = now_ms.saturating_sub(info.min_timestamp_ms);
        within(behind, config.message_timestamp_before_max_ms, "behind", "before")
            .map_err(|reason| timestamp_error(info.offset_delta_of_min_timestamp, info.min_timestamp_ms, reason))?;
        let ahead = info.max_timestamp_ms.saturating_sub(now_ms);
        within(ahead, config.message_timestamp_after_max_ms, "ahead of", "after")
            .map_err(|reason| timestamp_error(info.offset_delta_of_max_timestamp, info.max_timestamp_ms, reason))?;
    }
    match config.compression {
        Some(target) if target != info.compression => {
            let levels =
                format::Levels { gzip: Some(config.compression_gzip_level), zstd: Some(config.compression_zstd_level) };
            format::recompress(batch, target, levels, config.max_decompressed_batch_bytes).map(Some)
        }
        _ => Ok(None),
    }
}

/// Whether a record `distance` ms from the broker's clock is within `max`; if not, why not.
fn within(distance: i64, max: i64, side: &str, bound: &str) -> std::result::Result<(), String> {
    if distance > max {
        return Err(format!(
            "{distance} ms {side} the broker's clock, more than message.timestamp.{bound}.max.ms ({max})"
        ));
    }
    Ok(())
}

fn timestamp_error(record: i32, timestamp_ms: i64, reason: String) -> Error {
    Error::InvalidTimestamp { record, timestamp_ms, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::RecordBatchBuilder;
    use crate::handle_cache::HandleCache;

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
