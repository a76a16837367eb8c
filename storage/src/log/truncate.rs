//! Truncation of the log's tail, as a replica following a new leader does: everything from
//! the batch holding the given offset on goes. The recovery point on disk is lowered before
//! any file changes, and the kept prefix of the affected segment is written as a new file
//! (never cut in place), so readers' mappings keep their pages. The high watermark and the
//! durable offset follow the log end down; the log start offset never passes it.

use std::path::Path;

use super::{LogState, PartitionLog};
use crate::checkpoint;
use crate::config::LogConfig;
use crate::error::{Error, Result};
use crate::offset::Offset;
use crate::producer_state;
use crate::segment::Segment;

impl PartitionLog {
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
            self.end_after_truncation(&state, &config, offset.0)?
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
        self.cut_segments(&mut state, &config, offset.0)?;
        let end = state.log_end_offset();
        state.forget_aborted_from(end)?;
        checkpoint::sync_dir(&self.inner.dir)?;
        state.high_watermark = state.high_watermark.min(end);
        state.debug_check_offsets();
        self.cut_epochs(state.log_start_offset, end)?;
        self.inner.flusher.truncate(end);
        drop(state);
        self.write_checkpoint(false)?;
        self.rebuild_producers()?;
        // A snapshot from before the truncation may cover offsets the log is about to reuse:
        // it goes (the next checkpoint writes a new one; until then a reopen replays the log).
        remove_producer_snapshot(&self.inner.dir)?;
        Ok(Offset(end))
    }

    /// Empties the log and restarts it at `start` (Kafka's truncate-fully-and-start-at): a
    /// replica whose log is behind the leader's log start, or a Raft follower that installed a
    /// snapshot past its log end, keeps nothing and continues from there.
    pub fn restart_at(&self, start: Offset) -> Result<()> {
        self.refuse_if_deleted()?;
        if self.inner.flusher.has_rolled() {
            self.flush()?;
        }
        let start = start.0.max(0);
        // The recovery point goes to zero first: a crash between here and the new checkpoint
        // recovers whatever files remain by scanning them, never trusting a stale point.
        self.inner.flusher.truncate(0);
        self.write_checkpoint(false)?;
        let mut state = self.inner.state.write();
        if state.closed {
            return Err(Error::LogFailed { path: self.inner.dir.clone(), reason: "the log was closed".into() });
        }
        for segment in state.segments.drain(..) {
            segment.delete(&self.inner.cache)?;
        }
        state.segments.push(Segment::create(&self.inner.dir, start)?);
        state.log_start_offset = start;
        state.high_watermark = start;
        state.aborted.clear();
        checkpoint::sync_dir(&self.inner.dir)?;
        state.debug_check_offsets();
        self.inner.flusher.restart_at(start);
        {
            let mut epochs = self.inner.epochs.lock();
            *epochs = Default::default();
            epochs.write(&self.inner.dir)?;
        }
        drop(state);
        self.write_checkpoint(false)?;
        self.rebuild_producers()?;
        remove_producer_snapshot(&self.inner.dir)?;
        Ok(())
    }

    /// Where the log will end once truncated at `offset` (below the log end): the base
    /// offset of the batch holding it, or the log start if that is higher.
    fn end_after_truncation(&self, state: &LogState, config: &LogConfig, offset: i64) -> Result<i64> {
        if offset <= state.log_start_offset {
            return Ok(offset.max(0));
        }
        let segment = &state.segments[state.segment_for(offset)];
        let handle = segment.handle(&self.inner.cache, config)?;
        let cut = segment.locate(&handle, offset)?.map_or(segment.next_offset, |(_, header)| header.base_offset);
        // A cut below the log start empties the log, which restarts at the log start.
        Ok(cut.max(state.log_start_offset))
    }

    /// Deletes the segments after the one holding `offset` and cuts that one back; a log cut
    /// back to nothing starts over with one empty segment.
    fn cut_segments(&self, state: &mut LogState, config: &LogConfig, offset: i64) -> Result<()> {
        let cache = &self.inner.cache;
        if offset > state.log_start_offset {
            let keep = state.segment_for(offset);
            for segment in state.segments.drain(keep + 1..) {
                segment.delete(cache)?;
            }
            state.active_mut().truncate_to(cache, config, offset)?;
        }
        // Truncating at or below the log start (the batch holding the offset may begin below
        // it) keeps nothing: start over, empty, at the lower of the two.
        if offset <= state.log_start_offset || state.log_end_offset() < state.log_start_offset {
            for segment in state.segments.drain(..) {
                segment.delete(cache)?;
            }
            let start = offset.min(state.log_start_offset).max(0);
            state.segments.push(Segment::create(&self.inner.dir, start)?);
            state.log_start_offset = start;
        }
        Ok(())
    }
}

fn remove_producer_snapshot(dir: &Path) -> Result<()> {
    let snapshot = dir.join(producer_state::SNAPSHOT_FILE);
    match std::fs::remove_file(&snapshot) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("remove producer snapshot", snapshot)(err))
        }
        _ => Ok(()),
    }
}
