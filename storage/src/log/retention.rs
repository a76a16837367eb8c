//! Deleting from the front of the log: retention by `retention.ms` and `retention.bytes`, and
//! DeleteRecords. Only whole segments go, oldest first (an expired active segment is rolled
//! first, as in Kafka), and never one holding offsets at or above the high watermark (a
//! consumer may not have been allowed to read them yet). Both only move the log start offset up, and never past the high watermark.

use std::path::PathBuf;

use super::{LogState, PartitionLog};
use crate::checkpoint;
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::offset::Offset;
use crate::segment::{Segment, NO_TIMESTAMP};

impl PartitionLog {
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
        self.delete_front(&mut state, doomed, &config, crate::log::now_ms())?;
        self.cut_epochs(state.log_start_offset, state.log_end_offset())?;
        state.debug_check_offsets();
        drop(state);
        self.write_checkpoint(false)?;
        Ok(offset)
    }

    /// Deletes the `count` oldest segments (never the active one), raising the log start.
    /// Under `file.delete.delay.ms` their files are renamed and removed by a later
    /// [`PartitionLog::maintain`].
    fn delete_front(&self, state: &mut LogState, count: usize, config: &LogConfig, now_ms: i64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        for segment in state.segments.drain(..count) {
            tracing::info!(segment = %segment.paths.log.display(), "deleting segment");
            if config.file_delete_delay_ms == 0 {
                segment.delete(&self.inner.cache)?;
            } else {
                let due = now_ms.saturating_add(config.file_delete_delay_ms as i64);
                let renamed = segment.delete_later(&self.inner.cache)?;
                self.inner.doomed_files.lock().extend(renamed.into_iter().map(|path| (due, path)));
            }
        }
        let first = state.segments[0].base_offset;
        state.log_start_offset = state.log_start_offset.max(first);
        self.cut_epochs(state.log_start_offset, state.log_end_offset())?;
        state.high_watermark = state.high_watermark.max(state.log_start_offset);
        state.aborted.retain(|a| a.last_offset >= first);
        state.debug_check_offsets();
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
        let count = deletable_prefix(&state.segments, &config, state.high_watermark, now_ms);
        if count == state.segments.len() {
            // The active segment has expired too: roll, so that the log keeps an (empty)
            // active segment at the end, as Kafka does.
            self.roll(&mut state, &config)?;
        }
        self.delete_front(&mut state, count, &config, now_ms)?;
        drop(state);
        if count > 0 {
            self.write_checkpoint(false)?;
        }
        Ok(count)
    }
}

/// How many segments from the front of `segments` retention deletes.
fn deletable_prefix(segments: &[Segment], config: &LogConfig, high_watermark: i64, now_ms: i64) -> usize {
    if !config.delete {
        // cleanup.policy=compact alone: nothing goes by age or size.
        return 0;
    }
    let total_bytes: u64 = segments.iter().map(|s| s.size).sum();
    let mut remaining_bytes = total_bytes;
    let mut count = 0;
    for segment in segments {
        // An empty active segment stays; a non-empty one may go (after a roll) once all of
        // it is below the high watermark.
        if (segment.active && segment.size == 0) || segment.next_offset > high_watermark {
            break;
        }
        let expired = match config.retention_ms {
            // A segment without timestamps never expires by time, rather than at once.
            Some(retention_ms) => {
                segment.max_timestamp_ms != NO_TIMESTAMP
                    && now_ms.saturating_sub(segment.max_timestamp_ms) > retention_ms as i64
            }
            None => false,
        };
        let oversize = match config.retention_bytes {
            Some(retention_bytes) => remaining_bytes.saturating_sub(segment.size) >= retention_bytes,
            None => false,
        };
        if !(expired || oversize) {
            break;
        }
        remaining_bytes -= segment.size;
        count += 1;
    }
    count
}

impl PartitionLog {
    /// Removes the files of deleted segments whose `file.delete.delay.ms` has run out.
    pub(super) fn remove_doomed_files(&self, now_ms: i64) -> Result<()> {
        let due: Vec<PathBuf> = {
            let mut doomed = self.inner.doomed_files.lock();
            let (due, waiting): (Vec<_>, Vec<_>) = doomed.drain(..).partition(|(at, _)| *at <= now_ms);
            *doomed = waiting;
            due.into_iter().map(|(_, path)| path).collect()
        };
        for path in due {
            match std::fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("delete segment file", &path)(err))
                }
                _ => {}
            }
        }
        Ok(())
    }
}
