//! Loading the coordinator's state from `__consumer_offsets` at start: every record is
//! replayed in log order (the last one per key wins, tombstones delete), transactional
//! offsets wait for their markers, and an unreadable batch is reported and skipped.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use sluice_storage::{Offset, RecordBatch};

use super::classic::ClassicGroup;
use super::offsets::CommittedOffset;
use super::record::{GroupValue, OffsetValue, RecordKey};
use super::{txn_offsets, Group, GroupCoordinator, OFFSETS_TOPIC};
use crate::replica_manager::ReplicaManager;

impl GroupCoordinator {
    /// Rebuilds every group from `__consumer_offsets`, if it exists: the last record per key
    /// wins and tombstones delete. A record that does not decode is logged and skipped.
    pub fn load(&self, replicas: &ReplicaManager, partitions: i32) -> crate::Result<()> {
        let started = Instant::now();
        let mut groups: HashMap<String, Group> = HashMap::new();
        let mut records = 0u64;
        for index in 0..partitions {
            let Some(partition) = replicas.partition(OFFSETS_TOPIC, index) else { continue };
            let end = partition.log.log_end_offset();
            let mut offset = partition.log.log_start_offset();
            let mut open_txns = txn_offsets::OpenTxns::default();
            while offset < end {
                let read = partition.log.read(offset, 1 << 20, end)?;
                if read.records.is_empty() {
                    break;
                }
                for batch in RecordBatch::iter_batches(read.records) {
                    // The log was recovered (CRCs checked) before this: a batch that still
                    // does not decode is reported and skipped, not a reason to stay down.
                    let batch = match batch {
                        Ok(batch) => batch,
                        Err(err) => {
                            tracing::error!(partition = index, %err, "unreadable batch in {OFFSETS_TOPIC}; skipping the rest of this partition");
                            self.damaged.lock().insert(index);
                            offset = end;
                            break;
                        }
                    };
                    offset = Offset(batch.last_offset() + 1);
                    let replayed = if batch.is_control() || batch.is_transactional() {
                        open_txns.replay(&mut groups, &batch)
                    } else {
                        batch.records().map_err(crate::Error::from).and_then(|batch_records| {
                            for record in batch_records {
                                let record = record?;
                                records += 1;
                                replay(&mut groups, record.offset, record.key.as_deref(), record.value.as_deref());
                            }
                            Ok(())
                        })
                    };
                    if let Err(err) = replayed {
                        tracing::error!(partition = index, offset = batch.base_offset(), %err, "skipping an unreadable batch of {OFFSETS_TOPIC}");
                        self.damaged.lock().insert(index);
                    }
                }
            }
            open_txns.leave_pending(&mut groups);
            // Everything in this log was written by the coordinator: make it all readable.
            partition.commit(end);
        }
        let now = Instant::now();
        let mut map = self.groups.lock();
        for (id, mut group) in groups {
            if group.has_record || !group.offsets.is_empty() || !group.pending_txn.is_empty() {
                group.classic.tick(now, &self.config);
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
    let group = groups.entry(group_id.clone()).or_insert_with(|| Group::new(Arc::from(group_id.as_str())));
    match (key, value) {
        (RecordKey::Offset { topic, partition, .. }, Some(value)) => match OffsetValue::decode(value) {
            Ok(value) => group.offsets.apply(&topic, partition, CommittedOffset::from_value(value, record_offset)),
            Err(err) => tracing::warn!(record_offset, %err, "skipping a record of {OFFSETS_TOPIC}"),
        },
        (RecordKey::Offset { topic, partition, .. }, None) => group.offsets.remove(&topic, partition, record_offset),
        (RecordKey::Group { .. }, Some(value)) => match GroupValue::decode(value) {
            Ok(value) => {
                group.classic = ClassicGroup::restore(value, Instant::now());
                group.has_record = true;
            }
            Err(err) => tracing::warn!(record_offset, %err, "skipping a record of {OFFSETS_TOPIC}"),
        },
        (RecordKey::Group { .. }, None) => {
            group.classic = ClassicGroup::new();
            group.has_record = false;
        }
    }
}
