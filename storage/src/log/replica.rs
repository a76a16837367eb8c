//! The follower's append: batches exactly as the leader stored them (offsets, leader epochs,
//! timestamps, producer fields all kept), each starting at this log's end. Producer state,
//! aborted transactions and the epoch cache follow them as they do a leader's appends, so a
//! follower that becomes leader deduplicates and reads transactions as the old leader did.

use super::append::{AppendOutcome, DurableHandle};
use super::transactions::marker_kind;
use super::PartitionLog;
use crate::config::FlushPolicy;
use crate::error::{Error, Result};
use crate::format::{self, RecordBatch, HEADER_SIZE};
use crate::offset::{LeaderEpoch, Offset};
use crate::producer_state::ProducerBatch;
use crate::ProducerId;

impl PartitionLog {
    /// Appends one batch the leader sent a follower. Its base offset must be this log's end
    /// offset (the fetch asked from there); an invalid batch leaves the log unchanged.
    pub fn append_replicated(&self, batch: &[u8], now_ms: i64) -> Result<AppendOutcome> {
        let config = self.inner.config.read().clone();
        let info = self.check_append(batch, &config, true)?;
        let stored = format::read_stored_header(batch)?;
        let leader_epoch = LeaderEpoch(format::read_leader_epoch(batch));
        let marker = if info.is_control {
            let parsed = RecordBatch::iter_batches(bytes::Bytes::copy_from_slice(batch)).next().transpose()?;
            parsed.as_ref().and_then(marker_kind).map(|kind| (ProducerId(info.producer_id), info.producer_epoch, kind))
        } else {
            None
        };
        let mut state = self.inner.state.write();
        if state.closed {
            return Err(Error::LogFailed { path: self.inner.dir.clone(), reason: "the log was closed".into() });
        }
        let base_offset = stored.base_offset;
        if base_offset != state.log_end_offset() {
            return Err(Error::InvalidRecord(format!(
                "a replicated batch starts at offset {base_offset}, but the log ends at {}",
                state.log_end_offset()
            )));
        }
        self.roll_if_due(&mut state, &config, &info, now_ms)?;
        let mut header = [0u8; HEADER_SIZE];
        header.copy_from_slice(&batch[..HEADER_SIZE]);
        let appended = state.active_mut().append(
            &self.inner.cache,
            &config,
            &header,
            &batch[HEADER_SIZE..],
            &info,
            base_offset,
            stored.max_timestamp_ms,
            now_ms,
        );
        if let Err(Error::LogFailed { reason, .. }) = &appended {
            self.inner.flusher.fail(reason.clone());
        }
        appended?;
        self.update_producers(&mut state, &ProducerBatch::from(&info), marker, base_offset, now_ms)?;
        self.note_epoch(leader_epoch, base_offset)?;
        let end_offset = state.log_end_offset();
        drop(state);
        Ok(AppendOutcome {
            base_offset: Offset(base_offset),
            last_offset: Offset(end_offset - 1),
            log_append_time_ms: None,
            info,
            duplicate: false,
            durable: DurableHandle {
                log: self.clone(),
                end_offset,
                needs_fsync: config.flush_policy == FlushPolicy::EveryAppend,
            },
        })
    }

    /// The latest leader epoch this log has batches of (-1: none), what a follower's fetch
    /// names so the leader can tell whether their logs diverged.
    pub fn latest_epoch(&self) -> LeaderEpoch {
        LeaderEpoch(self.inner.epochs.lock().latest_epoch().unwrap_or(-1))
    }
}
