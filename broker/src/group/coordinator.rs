//! The group coordinator: every consumer group's membership and committed offsets, kept in
//! memory and written to `__consumer_offsets` (Kafka's record format), from which they are
//! rebuilt at start. A group lives in the partition Kafka would choose for it
//! (`internal_topics::partition_for`); on one node this broker coordinates them all.
//!
//! Locking: the group map's lock is taken before a group's, never the other way round, and
//! neither is held across an await. Offset commits are acknowledged only once their record
//! is durable ([`GroupCoordinator::complete_commit`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;
use sluice_storage::RecordBatchBuilder;

use super::offsets::CommittedOffset;
use super::record::RecordKey;
use super::state::{Group, Membership};
use crate::clock::Clock;
use crate::config::GroupConfig;
use crate::controller::InternalTopics;
use crate::internal_topics::{partition_for, OFFSETS_TOPIC};
use crate::partition::{Partition, PendingAppend};
use crate::replica_manager::ReplicaManager;
use crate::topic_partition::TopicPartition;

/// How often group timers (sessions, rebalance deadlines) are checked: the precision of
/// every group timeout.
pub const TICK_INTERVAL: Duration = Duration::from_millis(50);

/// Who an offset commit says it comes from.
pub struct MemberClaim<'a> {
    /// -1 for a commit from outside the group (admin tools, manually assigned consumers).
    pub generation_id: i32,
    pub member_id: &'a str,
    pub group_instance_id: Option<&'a str>,
}

/// One partition's commit as requested.
#[derive(Clone, Debug)]
pub struct OffsetCommit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// Commits written to the log (and visible to OffsetFetch), waiting for durability before
/// they are acknowledged.
pub struct PendingCommit {
    append: Option<PendingAppend>,
    /// One per requested partition, in request order.
    pub results: Vec<Option<ResponseError>>,
}

pub struct GroupCoordinator {
    pub config: GroupConfig,
    /// Creates `__consumer_offsets` when it is first needed.
    topics: InternalTopics,
    /// The offsets partitions, and the partitions commits name.
    pub(super) replicas: Arc<ReplicaManager>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) groups: Mutex<HashMap<Arc<str>, Arc<Mutex<Group>>>>,
    /// Partitions of `__consumer_offsets`; 0 until the topic exists.
    pub(super) offsets_partitions: AtomicI32,
    /// The `__consumer_offsets` partitions whose groups are loaded here: those this broker
    /// leads, once their records are replayed.
    pub(super) loaded: Mutex<std::collections::BTreeSet<i32>>,
    next_expiry_check: Mutex<Instant>,
}

impl GroupCoordinator {
    pub(crate) fn new(
        config: GroupConfig,
        topics: InternalTopics,
        replicas: Arc<ReplicaManager>,
        clock: Arc<dyn Clock>,
    ) -> GroupCoordinator {
        let first_check = clock.now().instant + Duration::from_millis(config.offsets_retention_check_interval_ms);
        GroupCoordinator {
            config,
            topics,
            replicas,
            clock,
            groups: Mutex::new(HashMap::new()),
            offsets_partitions: AtomicI32::new(0),
            loaded: Mutex::new(Default::default()),
            next_expiry_check: Mutex::new(first_check),
        }
    }

    /// Creates `__consumer_offsets` the first time a group needs it (as Kafka does), with
    /// `offsets.topic.num.partitions` partitions. Blocking: metadata is fsynced.
    pub fn ensure_offsets_topic(&self) -> Result<(), ResponseError> {
        if self.offsets_partitions.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        let partitions = self.topics.ensure(
            OFFSETS_TOPIC,
            self.config.offsets_topic_partitions,
            self.config.offsets_topic_segment_bytes,
        )?;
        self.offsets_partitions.store(partitions, Ordering::Release);
        if let Err(err) = self.follow_leadership() {
            tracing::error!(%err, "loading groups failed");
        }
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        self.offsets_partitions.load(Ordering::Acquire) > 0
    }

    pub fn group(&self, id: &str) -> Option<Arc<Mutex<Group>>> {
        self.groups.lock().get(id).cloned()
    }

    pub fn group_or_create(&self, id: &str) -> Arc<Mutex<Group>> {
        let mut groups = self.groups.lock();
        if let Some(group) = groups.get(id) {
            if !group.lock().is_dead() {
                return group.clone();
            }
        }
        let id: Arc<str> = Arc::from(id);
        let group = Arc::new(Mutex::new(Group::new(id.clone(), self.clock.now_ms())));
        groups.insert(id, group.clone());
        group
    }

    pub fn groups(&self) -> Vec<Arc<Mutex<Group>>> {
        self.groups.lock().values().cloned().collect()
    }

    fn offsets_partition(&self, group: &str) -> Result<Arc<Partition>, ResponseError> {
        let partitions = self.offsets_partitions.load(Ordering::Acquire);
        if partitions == 0 {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let index = partition_for(group, partitions);
        let partition = self
            .replicas
            .partition(OFFSETS_TOPIC, index)
            .filter(|p| p.is_leader())
            .ok_or(ResponseError::NotCoordinator)?;
        if !self.loaded.lock().contains(&index) {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        Ok(partition)
    }

    /// Appends a group's records to its `__consumer_offsets` partition, one batch.
    pub(super) fn append(
        &self,
        group: &str,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<PendingAppend, ResponseError> {
        self.append_batch(group, records, None)
    }

    /// [`Self::append`], as a transactional batch of `producer` (id, epoch) when given.
    fn append_batch(
        &self,
        group: &str,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
        producer: Option<(i64, i16)>,
    ) -> Result<PendingAppend, ResponseError> {
        let partition = self.offsets_partition(group)?;
        let now_ms = self.clock.now_ms();
        let mut builder = RecordBatchBuilder::new(now_ms);
        if let Some((producer_id, producer_epoch)) = producer {
            builder = builder.producer(producer_id, producer_epoch, -1).transactional(true);
        }
        for (key, value) in records {
            builder.push(now_ms, Some(key), value.as_deref(), &[]);
        }
        let batch = builder.build().map_err(|err| {
            tracing::error!(%err, "cannot build a {OFFSETS_TOPIC} batch");
            ResponseError::UnknownServerError
        })?;
        match partition.append(&batch, now_ms) {
            Ok(pending) => Ok(pending),
            Err(err) => {
                tracing::error!(group, %err, "cannot write to {OFFSETS_TOPIC}");
                Err(match err {
                    sluice_storage::Error::BatchTooLarge { .. } => ResponseError::RecordListTooLarge,
                    sluice_storage::Error::InvalidProducerEpoch { .. } => ResponseError::ProducerFenced,
                    _ => ResponseError::CoordinatorNotAvailable,
                })
            }
        }
    }

    /// Writes the group's record if its membership changed. Membership records are not
    /// waited for (nobody is answered on them; a lost one only makes members rejoin after a
    /// crash): the high watermark passes them with the next append that is.
    pub fn persist_if_dirty(&self, group: &mut Group) {
        let Some(record) = group.take_changed_record() else { return };
        let key = RecordKey::Group { group: group.id.to_string() }.encode();
        let value = record.encode();
        if self.append(&group.id, &[(key, Some(value))]).is_ok() {
            group.has_record = true;
        }
    }

    /// Validates and writes an offset commit; the caller waits with [`Self::complete_commit`].
    pub fn commit_offsets(
        &self,
        group_id: &str,
        claim: MemberClaim,
        retention_time_ms: i64,
        commits: &[OffsetCommit],
        transaction: Option<(i64, i16)>,
    ) -> PendingCommit {
        let fail = |error| PendingCommit { append: None, results: vec![Some(error); commits.len()] };
        // Kafka's records hold the group id as a 16-bit-length string.
        if group_id.len() > i16::MAX as usize {
            return fail(ResponseError::InvalidGroupId);
        }
        let group = if claim.generation_id < 0 { Some(self.group_or_create(group_id)) } else { self.group(group_id) };
        // A member of a generation the coordinator does not know.
        let Some(group) = group else { return fail(ResponseError::IllegalGeneration) };
        let mut locked = group.lock();
        if locked.is_dead() {
            return fail(ResponseError::CoordinatorNotAvailable);
        }
        // A transactional commit without member details (TxnOffsetCommit before v3, or a
        // producer outside any group) is not checked against the membership, as in Kafka.
        let unchecked = transaction.is_some() && claim.generation_id < 0;
        if !unchecked {
            if let Err(error) = locked.validate_commit(claim.generation_id, claim.member_id, claim.group_instance_id) {
                return fail(error);
            }
        }
        let now = self.clock.now();
        if let Membership::Classic(classic) = &mut locked.membership {
            classic.touch(claim.member_id, now);
        }
        let expire_timestamp_ms = (retention_time_ms >= 0).then(|| now.wall_ms.saturating_add(retention_time_ms));
        let mut results = Vec::with_capacity(commits.len());
        let mut entries = Vec::new();
        for commit in commits {
            let error = self.check_commit(commit);
            results.push(error);
            if error.is_none() {
                let committed = CommittedOffset {
                    offset: commit.offset,
                    leader_epoch: commit.leader_epoch,
                    metadata: commit.metadata.clone().unwrap_or_default(),
                    commit_timestamp_ms: now.wall_ms,
                    expire_timestamp_ms,
                    record_offset: 0,
                };
                entries.push((TopicPartition::new(commit.topic.clone(), commit.partition), committed));
            }
        }
        if entries.is_empty() {
            return PendingCommit { append: None, results };
        }
        match self.write_commits(&mut locked, entries, transaction) {
            Ok(append) => PendingCommit { append: Some(append), results },
            Err(error) => {
                for result in results.iter_mut().filter(|r| r.is_none()) {
                    *result = Some(error);
                }
                PendingCommit { append: None, results }
            }
        }
    }

    /// Why one partition's commit is refused, if it is.
    fn check_commit(&self, commit: &OffsetCommit) -> Option<ResponseError> {
        if commit.metadata.as_ref().is_some_and(|m| m.len() > self.config.offset_metadata_max_bytes) {
            Some(ResponseError::OffsetMetadataTooLarge)
        } else if !self.replicas.partition_exists(&commit.topic, commit.partition) {
            Some(ResponseError::UnknownTopicOrPartition)
        } else {
            None
        }
    }

    /// Appends the commits' records and applies them in log order, under the group's lock,
    /// so that the cache always matches what the log holds (which the offsets topic's cleanup
    /// relies on). Transactional commits wait for their marker.
    fn write_commits(
        &self,
        group: &mut Group,
        entries: Vec<(TopicPartition, CommittedOffset)>,
        transaction: Option<(i64, i16)>,
    ) -> Result<PendingAppend, ResponseError> {
        let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = entries
            .iter()
            .map(|(tp, committed)| {
                let key =
                    RecordKey::Offset { group: group.id.to_string(), topic: tp.topic.clone(), partition: tp.partition };
                (key.encode(), Some(committed.to_value().encode()))
            })
            .collect();
        let append = self.append_batch(&group.id, &records, transaction)?;
        let base_offset = append.base_offset().0;
        for (i, (tp, mut committed)) in entries.into_iter().enumerate() {
            committed.record_offset = base_offset + i as i64;
            match transaction {
                Some((producer_id, _)) => group.pending_txn.entry(producer_id).or_default().push((tp, committed)),
                None => group.offsets.apply(&tp.topic, tp.partition, committed),
            }
        }
        Ok(append)
    }

    /// Waits for a commit's record to be durable (on a blocking thread when that means an
    /// fsync), so that it can be acknowledged.
    pub async fn complete_commit(pending: PendingCommit) -> Vec<Option<ResponseError>> {
        if pending.append.as_ref().is_some_and(PendingAppend::must_wait_committed) {
            let count = pending.results.len();
            return tokio::task::spawn_blocking(move || GroupCoordinator::complete_commit_blocking(pending))
                .await
                .unwrap_or_else(|join| {
                    // Nothing can be acknowledged when the wait itself died.
                    tracing::error!(%join, "offset commit wait panicked");
                    vec![Some(ResponseError::KafkaStorageError); count]
                });
        }
        GroupCoordinator::complete_commit_blocking(pending)
    }

    /// [`Self::complete_commit`] for callers on their own threads (in-broker jobs).
    pub fn complete_commit_blocking(mut pending: PendingCommit) -> Vec<Option<ResponseError>> {
        let Some(append) = pending.append.take() else { return pending.results };
        if let Err(err) = append.wait_committed() {
            tracing::error!(%err, "offset commit not durable in the ISR");
            for result in pending.results.iter_mut().filter(|r| r.is_none()) {
                *result = Some(ResponseError::KafkaStorageError);
            }
        }
        pending.results
    }

    /// Deletes an empty group with its offsets (tombstones for everything), or says why not
    /// (GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP). The tombstones' append is returned to be waited
    /// for outside the locks before the deletion is acknowledged.
    pub fn delete_group(&self, group_id: &str) -> Result<Option<PendingAppend>, ResponseError> {
        let mut groups = self.groups.lock();
        let Some(group) = groups.get(group_id).cloned() else { return Err(ResponseError::GroupIdNotFound) };
        let mut locked = group.lock();
        if locked.is_dead() {
            return Err(ResponseError::GroupIdNotFound);
        }
        if !locked.is_empty() || !locked.pending_txn.is_empty() {
            return Err(ResponseError::NonEmptyGroup);
        }
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = locked
            .offsets
            .iter()
            .map(|(tp, _)| {
                let key =
                    RecordKey::Offset { group: group_id.to_string(), topic: tp.topic.clone(), partition: tp.partition };
                (key.encode(), None)
            })
            .collect();
        if locked.has_record {
            records.push((RecordKey::Group { group: group_id.to_string() }.encode(), None));
        }
        let tombstones = if records.is_empty() { None } else { Some(self.append(group_id, &records)?) };
        locked.mark_dead(self.clock.now_ms());
        drop(locked);
        groups.remove(group_id);
        Ok(tombstones)
    }

    /// Removes offsets (OffsetDelete); the caller has checked the group allows it. The
    /// tombstones' append is returned to be waited for outside the group's lock.
    pub fn delete_offsets(
        &self,
        group: &mut Group,
        partitions: &[TopicPartition],
    ) -> Result<Option<PendingAppend>, ResponseError> {
        let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = partitions
            .iter()
            .filter(|tp| group.offsets.get(&tp.topic, tp.partition).is_some())
            .map(|tp| {
                let key =
                    RecordKey::Offset { group: group.id.to_string(), topic: tp.topic.clone(), partition: tp.partition };
                (key.encode(), None)
            })
            .collect();
        if records.is_empty() {
            return Ok(None);
        }
        let tombstones = self.append(&group.id, &records)?;
        for tp in partitions {
            group.offsets.remove_now(&tp.topic, tp.partition);
        }
        Ok(Some(tombstones))
    }

    /// Runs every group's timers, writes what changed, and (every
    /// `offsets.retention.check.interval.ms`) expires old offsets and empty groups.
    pub fn tick(&self) {
        let now = self.clock.now();
        for group in self.groups() {
            let mut group = group.lock();
            group.tick(now, &self.config);
            self.persist_if_dirty(&mut group);
        }
        let due = {
            let mut next = self.next_expiry_check.lock();
            let due = *next <= now.instant;
            if due {
                *next = now.instant + Duration::from_millis(self.config.offsets_retention_check_interval_ms);
            }
            due
        };
        if due {
            self.expire_offsets();
        }
    }

    pub fn expire_offsets(&self) {
        let now_ms = self.clock.now_ms();
        let mut emptied = Vec::new();
        let mut expired_total = 0;
        for group in self.groups() {
            let mut group = group.lock();
            let empty_since = group.empty_since_ms();
            let simple = group.is_simple();
            let expired = group.offsets.expired(now_ms, self.config.offsets_retention_ms, empty_since, simple);
            // Expiry answers nobody, so its tombstones are not waited for: the high
            // watermark passes them with the next append to the partition that is.
            if !expired.is_empty() && self.delete_offsets(&mut group, &expired).is_ok() {
                expired_total += expired.len();
            }
            if group.offsets.is_empty() && group.pending_txn.is_empty() && empty_since.is_some() {
                emptied.push(group.id.clone());
            }
        }
        for id in &emptied {
            let _ = self.delete_group(id);
        }
        if expired_total > 0 || !emptied.is_empty() {
            tracing::info!(offsets = expired_total, groups = emptied.len(), "expired committed offsets");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Broker;
    use crate::BrokerConfig;
    use std::collections::BTreeMap;

    fn open(dir: &std::path::Path) -> Arc<Broker> {
        let mut config = BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() };
        config.apply("offsets.topic.num.partitions", "2").unwrap();
        config.apply("offsets.topic.segment.bytes", "65536").unwrap();
        Broker::open(config).unwrap()
    }

    fn commit(broker: &Broker, group: &str, partition: i32, offset: i64) {
        let claim = MemberClaim { generation_id: -1, member_id: "", group_instance_id: None };
        let commit = OffsetCommit { topic: "t".into(), partition, offset, leader_epoch: 0, metadata: Some("m".into()) };
        let pending = broker.groups.commit_offsets(group, claim, -1, &[commit], None);
        assert_eq!(pending.results, vec![None]);
        assert!(!pending.append.as_ref().is_some_and(PendingAppend::must_wait));
    }

    fn committed(broker: &Broker, group: &str, partition: i32) -> Option<i64> {
        broker.groups.group(group)?.lock().offsets.get("t", partition).map(|c| c.offset)
    }

    #[test]
    fn commits_survive_reopening_and_compaction_keeps_only_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open(dir.path());
        broker.controller.create_topic("t", 4, BTreeMap::new(), false).unwrap();
        broker.groups.ensure_offsets_topic().unwrap();
        for round in 0..3_000i64 {
            for (g, group) in ["alpha", "beta", "gamma"].iter().enumerate() {
                commit(&broker, group, (round % 4) as i32, round * 10 + g as i64);
            }
        }
        let size_before: u64 =
            (0..2).map(|p| broker.replicas.partition(OFFSETS_TOPIC, p).unwrap().log.size_bytes()).sum();
        // Compaction, as the broker's cleaner runs it: rolled segments flushed first.
        broker.maintain_logs();
        assert!(broker.clean_logs() > 0, "the offsets topic was due for cleaning");
        let size_after: u64 =
            (0..2).map(|p| broker.replicas.partition(OFFSETS_TOPIC, p).unwrap().log.size_bytes()).sum();
        assert!(size_after * 2 < size_before, "compaction freed space: {size_before} -> {size_after}");
        // A group deleted before the reopen stays deleted.
        broker.groups.delete_group("gamma").unwrap().unwrap().wait_durable().unwrap();
        commit(&broker, "beta", 0, 123_456);
        broker.shutdown();
        drop(broker);

        let broker = open(dir.path());
        assert_eq!(committed(&broker, "alpha", 3), Some(29_990));
        assert_eq!(committed(&broker, "alpha", 0), Some(29_960));
        assert_eq!(committed(&broker, "beta", 0), Some(123_456));
        assert_eq!(committed(&broker, "beta", 1), Some(29_971));
        assert!(broker.groups.group("gamma").is_none());
    }

    #[test]
    fn commits_are_checked_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open(dir.path());
        broker.controller.create_topic("t", 1, BTreeMap::new(), false).unwrap();
        broker.groups.ensure_offsets_topic().unwrap();
        let end = |b: &Broker| {
            (0..2).map(|p| b.replicas.partition(OFFSETS_TOPIC, p).unwrap().log.log_end_offset().0).sum::<i64>()
        };
        let before = end(&broker);
        let claim = MemberClaim { generation_id: 3, member_id: "m", group_instance_id: None };
        let commit = OffsetCommit { topic: "t".into(), partition: 0, offset: 1, leader_epoch: -1, metadata: None };
        let pending = broker.groups.commit_offsets("g", claim, -1, std::slice::from_ref(&commit), None);
        assert_eq!(pending.results, vec![Some(ResponseError::IllegalGeneration)]);
        let claim = MemberClaim { generation_id: -1, member_id: "", group_instance_id: None };
        let big = OffsetCommit { metadata: Some("x".repeat(5000)), ..commit.clone() };
        let unknown = OffsetCommit { topic: "nope".into(), ..commit };
        let pending = broker.groups.commit_offsets("g", claim, -1, &[big, unknown], None);
        assert_eq!(
            pending.results,
            vec![Some(ResponseError::OffsetMetadataTooLarge), Some(ResponseError::UnknownTopicOrPartition)]
        );
        assert_eq!(end(&broker), before, "refused commits write nothing");
    }
}
