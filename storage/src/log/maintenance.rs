//! The rest of a log's life: periodic upkeep (the `flush.ms` flush, the fsync of rolled
//! segments, retention, producer expiry and the checkpoint), clean shutdown, and the stop
//! before its directory is deleted. The checkpoint has one writer at a time
//! (`write_checkpoint`), and none once the log is marked deleted.

use super::{now_ms, PartitionLog};
use crate::checkpoint::{self, Checkpoint};
use crate::config::FlushPolicy;
use crate::error::{Error, Result};

/// How often `maintain` rewrites the checkpoint (Kafka's
/// `log.flush.offset.checkpoint.interval.ms`).
const CHECKPOINT_INTERVAL_MS: i64 = 60_000;

impl PartitionLog {
    /// Stops the log for good before its directory is deleted: appends, truncations, record
    /// deletions, retention and checkpoints are refused or skipped from now on.
    pub fn mark_deleted(&self) {
        let _checkpoint_writers = self.inner.checkpoint.lock();
        let mut state = self.inner.state.write();
        state.closed = true;
        self.inner.deleted.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the log was deleted (its topic deleted): nothing may read or write it any more.
    pub fn is_deleted(&self) -> bool {
        self.inner.deleted.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn refuse_if_deleted(&self) -> Result<()> {
        if self.is_deleted() {
            return Err(Error::LogFailed { path: self.inner.dir.clone(), reason: "the log was deleted".into() });
        }
        Ok(())
    }

    /// Periodic upkeep, for the owner to call every second or so: the `flush.ms` flush, the
    /// fsync of rolled segments, and the checkpoint. Retention is the owner's to schedule
    /// ([`PartitionLog::apply_retention`], every `log.retention.check.interval.ms` in Kafka).
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
        self.remove_doomed_files(now_ms)?;
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

    pub(super) fn write_checkpoint(&self, clean_shutdown: bool) -> Result<()> {
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
}
