//! A group's committed offsets, as the coordinator caches them from `__consumer_offsets`.
//! Each entry remembers the log offset of the record that set it, so that whatever order
//! commits and tombstones are applied in (at load, or a retry racing a newer commit), the
//! last one written wins.

use std::collections::BTreeMap;

use super::record::OffsetValue;
use crate::topic_partition::TopicPartition;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Set by OffsetCommit v2-v4's retention time; otherwise the group's rules apply.
    pub expire_timestamp_ms: Option<i64>,
    /// Where in `__consumer_offsets` the record that set this is.
    pub record_offset: i64,
}

impl CommittedOffset {
    pub fn from_value(value: OffsetValue, record_offset: i64) -> CommittedOffset {
        CommittedOffset {
            offset: value.offset,
            leader_epoch: value.leader_epoch,
            metadata: value.metadata,
            commit_timestamp_ms: value.commit_timestamp_ms,
            expire_timestamp_ms: value.expire_timestamp_ms,
            record_offset,
        }
    }

    pub fn to_value(&self) -> OffsetValue {
        OffsetValue {
            offset: self.offset,
            leader_epoch: self.leader_epoch,
            metadata: self.metadata.clone(),
            commit_timestamp_ms: self.commit_timestamp_ms,
            expire_timestamp_ms: self.expire_timestamp_ms,
        }
    }
}

/// Committed offsets by topic and partition, ordered so that "all offsets" reads in order.
#[derive(Debug, Default)]
pub struct GroupOffsets {
    offsets: BTreeMap<TopicPartition, CommittedOffset>,
}

impl GroupOffsets {
    pub fn get(&self, topic: &str, partition: i32) -> Option<&CommittedOffset> {
        self.offsets.get(&TopicPartition::new(topic, partition))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TopicPartition, &CommittedOffset)> {
        self.offsets.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Applies a commit unless a later record already set this partition.
    pub fn apply(&mut self, topic: &str, partition: i32, committed: CommittedOffset) {
        let key = TopicPartition::new(topic, partition);
        match self.offsets.get(&key) {
            Some(existing) if existing.record_offset > committed.record_offset => {}
            _ => {
                self.offsets.insert(key, committed);
            }
        }
    }

    /// Applies a tombstone unless a later record set the partition again.
    pub fn remove(&mut self, topic: &str, partition: i32, record_offset: i64) {
        let key = TopicPartition::new(topic, partition);
        if self.offsets.get(&key).is_some_and(|existing| existing.record_offset <= record_offset) {
            self.offsets.remove(&key);
        }
    }

    pub fn remove_now(&mut self, topic: &str, partition: i32) -> Option<CommittedOffset> {
        self.offsets.remove(&TopicPartition::new(topic, partition))
    }

    /// Offsets past their expiry (KIP-211): an explicit expiry time wins; otherwise a group
    /// empty since `empty_since_ms` keeps its offsets for `retention_ms` from then, and a
    /// group never managed by the coordinator (only "simple" commits) keeps each offset for
    /// `retention_ms` after its commit. A group with members keeps its offsets.
    pub fn expired(
        &self,
        now_ms: i64,
        retention_ms: i64,
        empty_since_ms: Option<i64>,
        simple: bool,
    ) -> Vec<TopicPartition> {
        self.offsets
            .iter()
            .filter(|(_, c)| match (c.expire_timestamp_ms, empty_since_ms) {
                (Some(expire), _) => expire <= now_ms,
                (None, Some(_)) if simple => c.commit_timestamp_ms.saturating_add(retention_ms) <= now_ms,
                (None, Some(since)) => since.saturating_add(retention_ms) <= now_ms,
                (None, None) => false,
            })
            .map(|(key, _)| key.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(offset: i64, record_offset: i64, commit_timestamp_ms: i64) -> CommittedOffset {
        CommittedOffset {
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms,
            expire_timestamp_ms: None,
            record_offset,
        }
    }

    #[test]
    fn the_last_record_written_wins_whatever_order_commits_are_applied_in() {
        let mut offsets = GroupOffsets::default();
        offsets.apply("t", 0, committed(20, 2, 0));
        offsets.apply("t", 0, committed(10, 1, 0));
        assert_eq!(offsets.get("t", 0).unwrap().offset, 20);
        offsets.remove("t", 0, 1);
        assert!(offsets.get("t", 0).is_some(), "an older tombstone does not remove a newer commit");
        offsets.remove("t", 0, 3);
        assert!(offsets.is_empty());
    }

    #[test]
    fn expiry_follows_kip_211() {
        let mut offsets = GroupOffsets::default();
        offsets.apply("t", 0, committed(1, 0, 1_000));
        offsets.apply("t", 1, CommittedOffset { expire_timestamp_ms: Some(5_000), ..committed(1, 1, 1_000) });
        // A group with members keeps offsets without an explicit expiry.
        assert_eq!(offsets.expired(6_000, 100, None, false), vec![TopicPartition::new("t", 1)]);
        // Empty since 2000 with 10s retention: kept until 12000.
        assert_eq!(offsets.expired(11_000, 10_000, Some(2_000), false).len(), 1);
        assert_eq!(offsets.expired(12_000, 10_000, Some(2_000), false).len(), 2);
        // A simple group counts from each commit.
        assert_eq!(offsets.expired(11_000, 10_000, Some(2_000), true).len(), 2);
    }
}
