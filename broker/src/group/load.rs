//! Loading the coordinator's state from `__consumer_offsets` at start: every record is
//! replayed in log order (the last one per key wins, tombstones delete), transactional
//! offsets wait for their markers, and an unreadable batch is reported and skipped.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::coordinator::GroupCoordinator;
use super::offsets::CommittedOffset;
use super::record::{GroupValue, OffsetValue, RecordKey};
use super::state::Group;
use super::txn_offsets;
use crate::clock::Now;
use crate::internal_topics::OFFSETS_TOPIC;

impl GroupCoordinator {
    /// Rebuilds every group from `__consumer_offsets`, if it exists: the last record per key
    /// wins and tombstones delete. A record that does not decode is logged and skipped.
    pub(crate) fn load(&self, partitions: i32) -> crate::Result<()> {
        let started = Instant::now();
        let mut groups: HashMap<String, Group> = HashMap::new();
        let mut records = 0u64;
        for index in 0..partitions {
            let Some(partition) = self.replicas.partition(OFFSETS_TOPIC, index) else { continue };
            let mut open_txns = txn_offsets::OpenTxns::default();
            // The clock is read as each record is applied: a restored member's session runs
            // from when its group was read, however long the whole load takes.
            // Replay reports what it skips. Compaction keeps the latest record of every key,
            // understood here or not, so nothing skipped is lost to the cleaner.
            partition.replay(|batch| {
                if batch.is_control() || batch.is_transactional() {
                    return open_txns.replay(&mut groups, batch, self.clock.now());
                }
                for record in batch.records()? {
                    let record = record?;
                    records += 1;
                    let now = self.clock.now();
                    replay(&mut groups, record.offset, record.key.as_deref(), record.value.as_deref(), now);
                }
                Ok(())
            })?;
            open_txns.leave_pending(&mut groups, self.clock.now());
        }
        let now = self.clock.now();
        let mut map = self.groups.lock();
        for (id, mut group) in groups {
            if group.has_record || !group.offsets.is_empty() || !group.pending_txn.is_empty() {
                group.tick(now, &self.config);
                map.insert(Arc::from(id), Arc::new(Mutex::new(group)));
            }
        }
        self.offsets_partitions.store(partitions, Ordering::Release);
        tracing::info!(groups = map.len(), records, elapsed_ms = started.elapsed().as_millis() as u64, "groups loaded");
        Ok(())
    }
}

/// Applies one `__consumer_offsets` record to the groups being loaded.
pub(crate) fn replay(
    groups: &mut HashMap<String, Group>,
    record_offset: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    now: Now,
) {
    let Some(key) = key else { return };
    let key = match RecordKey::decode(key) {
        Ok(Some(key)) => key,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(record_offset, %err, "skipping a record of {OFFSETS_TOPIC}");
            return;
        }
    };
    let group_id = key.group().to_string();
    let group = groups.entry(group_id.clone()).or_insert_with(|| Group::new(Arc::from(group_id.as_str()), now.wall_ms));
    match (key, value) {
        (RecordKey::Offset { topic, partition, .. }, Some(value)) => match OffsetValue::decode(value) {
            Ok(value) => group.offsets.apply(&topic, partition, CommittedOffset::from_value(value, record_offset)),
            Err(err) => tracing::warn!(record_offset, %err, "skipping a record of {OFFSETS_TOPIC}"),
        },
        (RecordKey::Offset { topic, partition, .. }, None) => group.offsets.remove(&topic, partition, record_offset),
        (RecordKey::Group { .. }, Some(value)) => match GroupValue::decode(value) {
            Ok(value) => group.restore_record(Some(value), now),
            Err(err) => tracing::warn!(record_offset, %err, "skipping a record of {OFFSETS_TOPIC}"),
        },
        (RecordKey::Group { .. }, None) => group.restore_record(None, now),
    }
}
