//! Loading the coordinator's state from `__consumer_offsets`: at start, and whenever this
//! broker comes to lead one of its partitions (a coordinator failover), that partition's
//! records are replayed in log order (the last one per key wins, tombstones delete),
//! transactional offsets wait for their markers, and an unreadable batch is reported and
//! skipped. A partition this broker no longer leads has its groups dropped here.

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
use crate::internal_topics::{partition_for, OFFSETS_TOPIC};

impl GroupCoordinator {
    /// Rebuilds the groups of every `__consumer_offsets` partition this broker leads.
    pub(crate) fn load(&self, partitions: i32) -> crate::Result<()> {
        self.offsets_partitions.store(partitions, Ordering::Release);
        self.follow_leadership()
    }

    /// Loads the groups of the offsets partitions this broker has come to lead and drops those
    /// of the partitions it no longer leads. Blocking (it replays logs); called as metadata
    /// changes.
    pub(crate) fn follow_leadership(&self) -> crate::Result<()> {
        let Some(topic) = self.replicas.image().topic(OFFSETS_TOPIC).cloned() else { return Ok(()) };
        self.offsets_partitions.store(topic.partitions, Ordering::Release);
        let led: Vec<i32> = (0..topic.partitions)
            .filter(|&i| self.replicas.partition(OFFSETS_TOPIC, i).is_some_and(|p| p.is_leader()))
            .collect();
        let loaded = self.loaded.lock().clone();
        let lost: Vec<i32> = loaded.iter().copied().filter(|i| !led.contains(i)).collect();
        if !lost.is_empty() {
            self.groups.lock().retain(|id, _| !lost.contains(&partition_for(id, topic.partitions)));
            self.loaded.lock().retain(|i| !lost.contains(i));
            tracing::info!(partitions = ?lost, "dropped the groups of offsets partitions led elsewhere now");
        }
        let gained: Vec<i32> = led.into_iter().filter(|i| !loaded.contains(i)).collect();
        if !gained.is_empty() {
            self.load_partitions(&gained)?;
            self.loaded.lock().extend(gained);
        }
        Ok(())
    }

    /// Rebuilds the groups of these `__consumer_offsets` partitions: the last record per key
    /// wins and tombstones delete. A record that does not decode is logged and skipped.
    fn load_partitions(&self, indexes: &[i32]) -> crate::Result<()> {
        let started = Instant::now();
        let mut groups: HashMap<String, Group> = HashMap::new();
        let mut records = 0u64;
        for &index in indexes {
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
        tracing::info!(
            partitions = indexes.len(),
            groups = map.len(),
            records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "groups loaded"
        );
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
