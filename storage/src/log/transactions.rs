//! The partition log's producer side: idempotent producers' state (rebuilt at open from the
//! snapshot and the batches after it, snapshotted only over durable offsets), transaction
//! markers, the last stable offset and the aborted-transaction index. Invariants: the last
//! stable offset never passes the high watermark; an aborted transaction's index entry is
//! on disk before any snapshot covers its marker.

use std::path::PathBuf;

use super::{now_ms, AppendOutcome, LogState, PartitionLog};
use crate::error::Result;
use crate::format::{RecordBatch, RecordBatchBuilder};
use crate::offset::{LeaderEpoch, Offset};
use crate::producer_state::{self, MarkerKind, ProducerBatch, ProducerId, ProducerState};
use crate::segment::Segment;
use crate::txn_index::{self, AbortedTxn};

/// A transaction marker being appended: the producer, its epoch, and commit or abort.
pub(super) type Marker = (ProducerId, i16, MarkerKind);

/// The kind of a stored control batch's marker, from its first record's key.
pub(super) fn marker_kind(batch: &RecordBatch) -> Option<MarkerKind> {
    let record = batch.records().ok()?.next()?.ok()?;
    let key = record.key?;
    let kind = i16::from_be_bytes([*key.get(2)?, *key.get(3)?]);
    MarkerKind::from_type(kind)
}

/// The aborted transactions of every segment's `.txnindex` whose marker is below the log end,
/// sorted by marker offset, as a log is opened.
pub(super) fn load_aborted(segments: &[Segment], log_end_offset: i64) -> Result<Vec<AbortedTxn>> {
    let mut aborted = Vec::new();
    for segment in segments {
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
    Ok(aborted)
}

impl LogState {
    /// Forgets the aborted transactions whose marker is at or past `end` (a truncation cut
    /// them off), rewriting the active segment's `.txnindex` if any were there.
    pub(super) fn forget_aborted_from(&mut self, end: i64) -> Result<()> {
        if self.aborted.iter().any(|a| a.last_offset >= end) {
            self.aborted.retain(|a| a.last_offset < end);
            let active = self.active();
            let kept: Vec<AbortedTxn> =
                self.aborted.iter().filter(|a| a.last_offset >= active.base_offset).copied().collect();
            txn_index::rewrite(&active.paths.txn_index, &kept)?;
        }
        Ok(())
    }
}

/// What a reader may read of a log: from the log start, up to the high watermark
/// (read_uncommitted) or the last stable offset (read_committed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadBounds {
    pub log_start_offset: Offset,
    pub high_watermark: Offset,
    pub last_stable_offset: Offset,
}

impl PartitionLog {
    /// Appends a transaction marker (a control batch) ending `producer_id`'s transaction in
    /// this partition: what the transaction coordinator writes at commit or abort.
    pub fn append_marker(
        &self,
        producer_id: ProducerId,
        producer_epoch: i16,
        kind: MarkerKind,
        coordinator_epoch: i32,
        leader_epoch: LeaderEpoch,
        now_ms: i64,
    ) -> Result<AppendOutcome> {
        let mut builder = RecordBatchBuilder::new(now_ms)
            .producer(producer_id.0, producer_epoch, -1)
            .transactional(true)
            .control(true);
        let mut key = [0u8; 4];
        key[2..].copy_from_slice(&kind.to_type().to_be_bytes());
        let mut value = [0u8; 6];
        value[2..].copy_from_slice(&coordinator_epoch.to_be_bytes());
        builder.push(now_ms, Some(&key), Some(&value), &[]);
        self.append_batch(&builder.build()?, leader_epoch, now_ms, Some((producer_id, producer_epoch, kind)))
    }

    /// Records an appended batch in the producer state: its sequence numbers, and for a
    /// transaction marker the end of its transaction (indexed if it was an abort).
    pub(super) fn update_producers(
        &self,
        state: &mut LogState,
        batch: &ProducerBatch,
        marker: Option<Marker>,
        base_offset: i64,
        now_ms: i64,
    ) -> Result<()> {
        if batch.producer_id >= 0 {
            state.producers.update(batch, base_offset, now_ms);
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
                self.record_aborted(state, entry)?;
            }
            state.producers_version += 1;
        }
        Ok(())
    }

    /// Adds an aborted transaction to the index of the segment holding its marker. Memory
    /// is the reference (fetches read it); the file append is best effort, and the segment's
    /// file is rewritten from memory before any snapshot covers the marker.
    pub(super) fn record_aborted(&self, state: &mut LogState, entry: AbortedTxn) -> Result<()> {
        if state.aborted.iter().any(|a| a.last_offset == entry.last_offset) {
            return Ok(());
        }
        let at = state.aborted.partition_point(|a| a.last_offset < entry.last_offset);
        state.aborted.insert(at, entry);
        let segment = &state.segments[state.segment_for(entry.last_offset)];
        let base = segment.base_offset;
        if let Err(err) = txn_index::append(&segment.paths.txn_index, &entry) {
            tracing::warn!(%err, "cannot append to a txn index; it is rewritten at the next snapshot");
        }
        state.txn_index_dirty.insert(base);
        Ok(())
    }

    /// Rewrites the `.txnindex` of every segment changed since the last snapshot from
    /// memory (atomically, fsynced). The dirty set is taken together with the entries, under
    /// one lock: an abort recorded meanwhile marks its segment dirty again for the next
    /// round. A segment whose rewrite fails stays dirty.
    pub(super) fn sync_txn_indexes(&self) -> Result<()> {
        let rewrites: Vec<(i64, PathBuf, Vec<AbortedTxn>)> = {
            let mut state = self.inner.state.write();
            let dirty = std::mem::take(&mut state.txn_index_dirty);
            dirty
                .into_iter()
                .filter_map(|base| {
                    let i = state.segments.iter().position(|s| s.base_offset == base)?;
                    let end = state.segments.get(i + 1).map_or(i64::MAX, |s| s.base_offset);
                    let entries = state
                        .aborted
                        .iter()
                        .filter(|a| a.last_offset >= base && a.last_offset < end)
                        .copied()
                        .collect();
                    Some((base, state.segments[i].paths.txn_index.clone(), entries))
                })
                .collect()
        };
        for (n, (_, path, entries)) in rewrites.iter().enumerate() {
            if let Err(err) = txn_index::rewrite(path, entries) {
                let mut state = self.inner.state.write();
                state.txn_index_dirty.extend(rewrites[n..].iter().map(|(base, _, _)| *base));
                return Err(err);
            }
        }
        // A segment deleted (by retention) while its file was rewritten leaves no orphan.
        let state = self.inner.state.read();
        for (base, path, _) in &rewrites {
            if !state.segments.iter().any(|s| s.base_offset == *base) {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// The last stable offset: no record at or above it belongs to an open transaction,
    /// and it never passes the high watermark. `read_committed` reads stop here.
    pub fn last_stable_offset(&self) -> Offset {
        self.read_bounds().last_stable_offset
    }

    /// The log start offset, high watermark and last stable offset, read together (one
    /// lock, one consistent view: what a fetch reports for a partition).
    pub fn read_bounds(&self) -> ReadBounds {
        let state = self.inner.state.read();
        let stable =
            state.producers.first_unstable_offset().map_or(state.high_watermark, |f| f.min(state.high_watermark));
        // A transaction whose first records were deleted (DeleteRecords, retention) cannot
        // hold the stable offset below the log start.
        let stable = stable.max(state.log_start_offset);
        debug_assert!(stable <= state.high_watermark, "last stable offset {stable} above the high watermark");
        ReadBounds {
            log_start_offset: Offset(state.log_start_offset),
            high_watermark: Offset(state.high_watermark),
            last_stable_offset: Offset(stable),
        }
    }

    /// Aborted transactions with records in `[from, to)`, for a `read_committed` fetch.
    pub fn aborted_transactions(&self, from: Offset, to: Offset) -> Vec<AbortedTxn> {
        let state = self.inner.state.read();
        let start = state.aborted.partition_point(|a| a.last_offset < from.0);
        state.aborted[start..].iter().filter(|a| a.first_offset < to.0).copied().collect()
    }

    /// Writes the producer state as of the current log end, once everything below that is
    /// durable: a snapshot never covers batches a crash could take back.
    pub(super) fn snapshot_producers(&self) -> Result<()> {
        let mut written = self.inner.snapshot_version.lock();
        if self.is_deleted() {
            return Ok(());
        }
        let (offset, producers, version) = {
            let state = self.inner.state.read();
            (state.log_end_offset(), state.producers.clone(), state.producers_version)
        };
        if version == *written {
            return Ok(());
        }
        self.sync_to(offset)?;
        // The snapshot stands for every marker below `offset`: their index entries must be
        // on disk before it is.
        self.sync_txn_indexes()?;
        producer_state::write_snapshot(&self.inner.dir, offset, &producers)?;
        *written = version;
        Ok(())
    }

    /// Rebuilds the producer state from the snapshot (if it covers no more than the log
    /// holds) and the batches after it, or from the whole log.
    pub(super) fn rebuild_producers(&self) -> Result<()> {
        let end = self.log_end_offset().0;
        let (from, mut producers) = producer_state::read_snapshot(&self.inner.dir)
            .filter(|(offset, _)| *offset <= end)
            .unwrap_or((self.log_start_offset().0, ProducerState::default()));
        let mut offset = from.max(self.log_start_offset().0);
        let now = now_ms();
        let mut replayed = 0u64;
        let mut aborted = Vec::new();
        while offset < end {
            let read = self.read(Offset(offset), 1 << 20, Offset(end))?;
            if read.records.is_empty() {
                break;
            }
            for batch in RecordBatch::iter_batches(read.records) {
                let batch = batch?;
                if batch.last_offset() >= offset {
                    if batch.is_control() {
                        if let Some(kind) = marker_kind(&batch) {
                            let producer_id = ProducerId(batch.producer_id());
                            let stable_before = producers.first_unstable_offset().unwrap_or(batch.base_offset());
                            let marker = batch.base_offset();
                            if let Some((first_offset, last_offset)) =
                                producers.complete_txn(producer_id, batch.producer_epoch(), kind, marker, now)
                            {
                                aborted.push(AbortedTxn {
                                    producer_id: producer_id.0,
                                    first_offset,
                                    last_offset,
                                    last_stable_offset: stable_before,
                                });
                            }
                        }
                    } else {
                        producers.update(&ProducerBatch::from(&batch), batch.base_offset(), now);
                    }
                    replayed += 1;
                }
                offset = batch.last_offset() + 1;
            }
        }
        if replayed > 0 {
            tracing::debug!(dir = %self.inner.dir.display(), from, replayed, "rebuilt producer state");
        }
        let mut state = self.inner.state.write();
        state.producers = producers;
        state.producers_version += 1;
        // Markers after the snapshot whose index entries a crash lost are indexed again.
        for entry in aborted {
            self.record_aborted(&mut state, entry)?;
        }
        Ok(())
    }

    /// The idempotent producers this partition knows (for DescribeProducers).
    pub fn producers(&self) -> ProducerState {
        self.inner.state.read().producers.clone()
    }
}
