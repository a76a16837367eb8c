//! Keeping `__consumer_offsets` small until the log cleaner exists: a partition grown past
//! twice its live state gets every group's current state rewritten at its end, and once
//! that is on disk the segments before it are deleted. Invariant: the cache matches the
//! log (commits are applied under the group's lock, in log order), so the rewrite holds
//! everything the deleted records said; partitions with open transactional offsets wait.

use std::sync::atomic::Ordering;

use super::coordinator::GroupCoordinator;
use super::record::RecordKey;
use crate::internal_topics::{partition_for, OFFSETS_TOPIC};
use crate::partition::Partition;

impl GroupCoordinator {
    /// Stands in for log compaction on `__consumer_offsets` until the log cleaner exists: a
    /// partition that has grown past twice its live state (and at least two segments)
    /// gets every group's current state rewritten at its end, and once that is durable the
    /// segments wholly before the rewrite are deleted. The cache always matches the log
    /// (commits are applied under the group's lock in log order), so the rewrite holds
    /// everything the deleted records said. Blocking: it waits for an fsync.
    pub fn clean_offsets_topic(&self) {
        let partitions = self.offsets_partitions.load(Ordering::Acquire);
        for index in 0..partitions {
            let Some(partition) = self.replicas.partition(OFFSETS_TOPIC, index) else { continue };
            if self.damaged.lock().contains(&index) {
                continue;
            }
            let segment_bytes = u64::from(partition.log.config().segment_bytes);
            let live = self.live_bytes.lock().get(&index).copied().unwrap_or(0);
            if partition.log.segment_count() < 2 || partition.log.size_bytes() < 2 * segment_bytes.max(live) {
                continue;
            }
            match self.rewrite_partition(index, &partition) {
                Ok(bytes) => {
                    self.live_bytes.lock().insert(index, bytes);
                }
                Err(err) => tracing::error!(partition = index, %err, "cannot clean up {OFFSETS_TOPIC}"),
            }
        }
    }

    fn rewrite_partition(&self, index: i32, partition: &Partition) -> Result<u64, String> {
        let partitions = self.offsets_partitions.load(Ordering::Acquire);
        let start = partition.log.log_end_offset();
        // Checked after `start` is fixed: a transactional commit appended since is at or
        // above it and stays. Offsets of open transactions exist only as their records.
        if self.has_pending_txn_offsets(index) {
            return Ok(self.live_bytes.lock().get(&index).copied().unwrap_or(0));
        }
        let size_before = partition.log.size_bytes();
        let mut written = 0u64;
        let mut last = None;
        for group in self.groups() {
            let group = group.lock();
            if group.is_dead() || partition_for(&group.id, partitions) != index {
                continue;
            }
            let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
            if group.has_record {
                let key = RecordKey::Group { group: group.id.to_string() }.encode();
                records.push((key, Some(group.record().encode())));
            }
            for (tp, committed) in group.offsets.iter() {
                let key =
                    RecordKey::Offset { group: group.id.to_string(), topic: tp.topic.clone(), partition: tp.partition };
                records.push((key.encode(), Some(committed.to_value().encode())));
            }
            // Batches well under the topic's max.message.bytes.
            for chunk in records.chunks(1000) {
                written += chunk.iter().map(|(k, v)| (k.len() + v.as_ref().map_or(0, Vec::len)) as u64).sum::<u64>();
                last = Some(self.append(&group.id, chunk).map_err(|e| format!("rewrite failed: {e:?}"))?);
            }
        }
        // One log: the last append being durable makes every earlier one durable too.
        if let Some(append) = last {
            append.wait_durable().map_err(|e| e.to_string())?;
        }
        // Whatever the flush policy: the rewrite must be on disk before the only other copy
        // of what it says is deleted.
        partition.log.flush().map_err(|e| e.to_string())?;
        partition.log.delete_records_before(start).map_err(|e| e.to_string())?;
        tracing::info!(
            partition = index,
            live_bytes = written,
            size_before,
            size_after = partition.log.size_bytes(),
            "cleaned up {OFFSETS_TOPIC}"
        );
        Ok(written)
    }
}
