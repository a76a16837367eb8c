//! Offsets committed inside transactions (TxnOffsetCommit): written to `__consumer_offsets`
//! as a transactional batch of the producer, held as pending in the group until the
//! transaction coordinator's marker lands in that partition, then applied (commit) or
//! dropped (abort). On load the same happens from the log: transactional batches wait for
//! their producer's marker; those still open at the end stay pending.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_storage::RecordBatch;

use super::coordinator::GroupCoordinator;
use super::offsets::CommittedOffset;
use super::record::{OffsetValue, RecordKey};
use super::state::Group;
use crate::clock::Now;
use crate::internal_topics::{partition_for, OFFSETS_TOPIC};
use crate::topic_partition::TopicPartition;

/// Transactional offset records read so far in one partition, by producer id.
#[derive(Default)]
pub(super) struct OpenTxns {
    /// (group, partition, offset) of each transactional commit read.
    by_producer: HashMap<i64, Vec<(String, TopicPartition, CommittedOffset)>>,
}

/// Whether a control batch is a commit marker (`None` if it is not a marker).
fn marker_is_commit(batch: &RecordBatch) -> Option<bool> {
    let record = batch.records().ok()?.next()?.ok()?;
    let key = record.key?;
    match i16::from_be_bytes([*key.get(2)?, *key.get(3)?]) {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

fn group_entry<'a>(groups: &'a mut HashMap<String, Group>, id: &str, now: Now) -> &'a mut Group {
    groups.entry(id.to_string()).or_insert_with(|| Group::new(Arc::from(id), now.wall_ms))
}

impl OpenTxns {
    /// A transactional batch or a marker, read back at load.
    pub(super) fn replay(
        &mut self,
        groups: &mut HashMap<String, Group>,
        batch: &RecordBatch,
        now: Now,
    ) -> crate::Result<()> {
        let producer_id = batch.producer_id();
        if batch.is_control() {
            let Some(commit) = marker_is_commit(batch) else { return Ok(()) };
            for (group, tp, committed) in self.by_producer.remove(&producer_id).unwrap_or_default() {
                if commit {
                    group_entry(groups, &group, now).offsets.apply(&tp.topic, tp.partition, committed);
                }
            }
            return Ok(());
        }
        for record in batch.records()? {
            let record = record?;
            let key = record.key.as_deref().map(RecordKey::decode);
            let Some(Ok(Some(RecordKey::Offset { group, topic, partition }))) = key else { continue };
            let Some(Ok(value)) = record.value.as_deref().map(OffsetValue::decode) else { continue };
            let committed = CommittedOffset::from_value(value, record.offset);
            self.by_producer.entry(producer_id).or_default().push((
                group,
                TopicPartition::new(topic, partition),
                committed,
            ));
        }
        Ok(())
    }

    /// Transactions still open at the end of the log stay pending in their groups.
    pub(super) fn leave_pending(self, groups: &mut HashMap<String, Group>, now: Now) {
        for (producer_id, entries) in self.by_producer {
            for (group, tp, committed) in entries {
                group_entry(groups, &group, now).pending_txn.entry(producer_id).or_default().push((tp, committed));
            }
        }
    }
}

impl GroupCoordinator {
    /// The transaction coordinator wrote `producer_id`'s marker to offsets partition
    /// `partition`: its pending offsets in the groups there are applied or dropped.
    pub fn complete_txn_offsets(&self, partition: i32, producer_id: i64, commit: bool) {
        let partitions = self.offsets_partitions.load(std::sync::atomic::Ordering::Acquire);
        for group in self.groups() {
            let mut group = group.lock();
            if partition_for(&group.id, partitions) != partition {
                continue;
            }
            let Some(entries) = group.pending_txn.remove(&producer_id) else { continue };
            if commit {
                for (tp, committed) in entries {
                    group.offsets.apply(&tp.topic, tp.partition, committed);
                }
            }
        }
    }

    /// The offsets partition a group's transactional offsets go to (AddOffsetsToTxn).
    pub fn offsets_partition_for(&self, group_id: &str) -> Option<TopicPartition> {
        let partitions = self.offsets_partitions.load(std::sync::atomic::Ordering::Acquire);
        (partitions > 0).then(|| TopicPartition::new(OFFSETS_TOPIC, partition_for(group_id, partitions)))
    }
}
