//! The read path: fetches return whole stored batches as zero-copy slices of a segment's
//! mapping, never a byte past the committed end or the caller's bound (the high watermark or
//! last stable offset); timestamp lookups (ListOffsets) go through the time indexes; and
//! `verify` checks every stored batch, for `sluice log verify`.

use bytes::Bytes;

use super::PartitionLog;
use crate::error::{Error, Result};
use crate::format;
use crate::offset::Offset;
use crate::segment::NO_TIMESTAMP;

#[derive(Clone, Debug)]
pub struct ReadResult {
    /// Whole batches, as stored; empty when there is nothing at the offset yet.
    pub records: Bytes,
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
    pub log_end_offset: Offset,
}

impl PartitionLog {
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
        // A compacted segment may end before the offset asked for (its last batches cleaned
        // away): the read continues in the next segment, as Kafka's does.
        for segment in &state.segments[state.segment_for(offset.0)..] {
            let handle = segment.handle(&self.inner.cache, &config)?;
            let records = segment.read(&handle, offset.0, max_bytes, max_offset.0)?;
            if !records.is_empty() {
                return Ok(result(records));
            }
        }
        Ok(result(Bytes::new()))
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

    /// Checks every batch's framing and CRC-32C in every segment; the first problem is
    /// returned as an error naming the file and byte position.
    pub fn verify(&self) -> Result<()> {
        let state = self.inner.state.read();
        let config = self.inner.config.read().clone();
        // A compacted log keeps its offsets in order, with gaps where records were cleaned.
        let gaps = crate::checkpoint::was_compacted(&self.inner.dir);
        for segment in &state.segments {
            let handle = segment.handle(&self.inner.cache, &config)?;
            let mut expected = segment.base_offset;
            for item in segment.headers_from(&handle, 0) {
                let (position, header) = item?;
                format::check_crc(&handle.slice(position, header.size))
                    .map_err(|err| segment.corrupt(position, err.to_string()))?;
                if header.base_offset != expected && !(gaps && header.base_offset > expected) {
                    let reason =
                        format!("batch base offset {} where offset {expected} was expected", header.base_offset);
                    return Err(segment.corrupt(position, reason));
                }
                expected = header.next_offset();
            }
            if expected != segment.next_offset && !(gaps && expected < segment.next_offset) {
                let reason = format!("segment ends at offset {expected}, not {}", segment.next_offset);
                return Err(segment.corrupt(segment.size, reason));
            }
        }
        Ok(())
    }
}
