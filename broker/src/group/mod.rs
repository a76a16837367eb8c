//! The group coordinator: every consumer group's membership and committed offsets, kept in
//! memory and written to `__consumer_offsets` (Kafka's record format), from which they are
//! rebuilt at start. A group lives in the partition Kafka would choose for it
//! (`record::partition_for`); on one node this broker coordinates them all.
//!
//! Locking: the group map's lock is taken before a group's, never the other way round, and
//! neither is held across an await. Offset commits are acknowledged only once their record
//! is as durable as the offsets topic's flush policy promises.

pub mod assignor;
pub mod classic;
mod cleanup;
pub mod consumer;
mod load;
pub mod offsets;
pub mod record;
mod txn_offsets;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;
use sluice_storage::{LeaderEpoch, RecordBatchBuilder};

use crate::broker::Broker;
use crate::config::GroupConfig;
use crate::replica_manager::Partition;
use classic::{ClassicGroup, ClassicState};
use consumer::ConsumerGroup;
use offsets::{CommittedOffset, GroupOffsets};
use record::RecordKey;

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// How often group timers (sessions, rebalance deadlines) are checked: the precision of
/// every group timeout.
pub const TICK_INTERVAL: Duration = Duration::from_millis(50);

/// How often the offsets topic's partitions are checked for cleanup.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// One group: its membership protocol's state and its committed offsets. A group is a
/// classic group unless `consumer` is set (KIP-848); it can switch only while it is empty.
#[derive(Debug)]
pub struct Group {
    pub id: Arc<str>,
    pub classic: ClassicGroup,
    pub consumer: Option<ConsumerGroup>,
    pub offsets: GroupOffsets,
    /// A group metadata record exists for it (deletion must write a tombstone).
    has_record: bool,
    /// Offsets committed inside transactions (TxnOffsetCommit), by producer id, until the
    /// transaction's marker applies (commit) or drops (abort) them.
    pub pending_txn: HashMap<i64, Vec<(String, i32, CommittedOffset)>>,
}

impl Group {
    fn new(id: Arc<str>) -> Group {
        Group {
            id,
            classic: ClassicGroup::new(),
            consumer: None,
            offsets: GroupOffsets::default(),
            has_record: false,
            pending_txn: HashMap::new(),
        }
    }

    pub fn state_name(&self) -> &'static str {
        match &self.consumer {
            Some(consumer) => consumer.state_name(),
            None => self.classic.state.name(),
        }
    }

    pub fn group_type(&self) -> &'static str {
        if self.consumer.is_some() {
            "consumer"
        } else {
            "classic"
        }
    }

    pub fn protocol_type(&self) -> &str {
        match &self.consumer {
            Some(_) => "consumer",
            None => self.classic.protocol_type.as_deref().unwrap_or(""),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.classic.is_empty() && self.consumer.as_ref().is_none_or(ConsumerGroup::is_empty)
    }

    /// Makes this a KIP-848 consumer group. A classic group with members converts only as a
    /// stable consumer-protocol group (its members stay, on the classic protocol); one in
    /// the middle of a rebalance asks the caller to retry.
    pub fn as_consumer_group(
        &mut self,
        metadata: &crate::metadata::ClusterMetadata,
        now: Instant,
    ) -> Result<&mut ConsumerGroup, ResponseError> {
        if self.consumer.is_none() {
            if self.is_dead() {
                return Err(ResponseError::CoordinatorNotAvailable);
            }
            if self.classic.is_empty() {
                self.consumer = Some(ConsumerGroup::default());
            } else if self.classic.protocol_type.as_deref() != Some("consumer") {
                return Err(ResponseError::GroupIdNotFound);
            } else if self.classic.state != ClassicState::Stable {
                return Err(ResponseError::CoordinatorNotAvailable);
            } else {
                tracing::info!(group = %self.id, members = self.classic.members().count(), "classic group upgraded to the consumer protocol");
                self.consumer = Some(ConsumerGroup::from_classic(&self.classic, metadata, now));
                self.classic.clear_members();
            }
        }
        self.consumer.as_mut().ok_or(ResponseError::GroupIdNotFound)
    }

    /// Makes this a classic group again, if it has no members; `None` while it is a
    /// consumer group with members (whose classic members go through `consumer`).
    pub fn as_classic_group(&mut self) -> Option<&mut ClassicGroup> {
        if self.consumer.as_ref().is_some_and(|c| !c.is_empty()) {
            return None;
        }
        self.consumer = None;
        Some(&mut self.classic)
    }

    pub fn is_dead(&self) -> bool {
        self.classic.state == ClassicState::Dead
    }

    /// Checks an offset commit's claim to membership (Kafka's rules for classic groups):
    /// generation -1 commits only into an empty group; otherwise the member must be known
    /// and on the current generation, and not in the middle of a sync.
    fn validate_commit(
        &self,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        let classic = &self.classic;
        if classic.state == ClassicState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if let Some(consumer) = &self.consumer {
            if generation_id < 0 && consumer.is_empty() {
                return Ok(());
            }
            return consumer.validate_member_epoch(member_id, generation_id);
        }
        if generation_id < 0 && classic.state == ClassicState::Empty {
            return Ok(());
        }
        classic.validate_member(member_id, group_instance_id)?;
        if generation_id != classic.generation_id {
            return Err(ResponseError::IllegalGeneration);
        }
        if classic.state == ClassicState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }
}

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
    partition: Option<Arc<Partition>>,
    durable: Option<sluice_storage::DurableHandle>,
    /// One per requested partition, in request order.
    pub results: Vec<Option<ResponseError>>,
}

pub struct GroupCoordinator {
    pub config: GroupConfig,
    groups: Mutex<HashMap<Arc<str>, Arc<Mutex<Group>>>>,
    /// Partitions of `__consumer_offsets`; 0 until the topic exists.
    offsets_partitions: AtomicI32,
    next_expiry_check: Mutex<Instant>,
    /// Per offsets partition, the bytes its last cleanup rewrote: the live state's size.
    live_bytes: Mutex<HashMap<i32, u64>>,
    /// Offsets partitions where loading skipped an unreadable batch: never cleaned up, so
    /// what could not be read is not deleted with the rest.
    damaged: Mutex<std::collections::HashSet<i32>>,
}

impl GroupCoordinator {
    pub fn new(config: GroupConfig) -> GroupCoordinator {
        let first_check = Instant::now() + Duration::from_millis(config.offsets_retention_check_interval_ms);
        GroupCoordinator {
            config,
            groups: Mutex::new(HashMap::new()),
            offsets_partitions: AtomicI32::new(0),
            next_expiry_check: Mutex::new(first_check),
            live_bytes: Mutex::new(HashMap::new()),
            damaged: Mutex::new(Default::default()),
        }
    }

    /// Creates `__consumer_offsets` the first time a group needs it (as Kafka does), with
    /// `offsets.topic.num.partitions` partitions. Blocking: metadata is fsynced.
    pub fn ensure_offsets_topic(&self, broker: &Broker) -> Result<(), ResponseError> {
        if self.offsets_partitions.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        let partitions = broker.ensure_internal_topic(
            OFFSETS_TOPIC,
            self.config.offsets_topic_partitions,
            self.config.offsets_topic_segment_bytes,
        )?;
        self.offsets_partitions.store(partitions, Ordering::Release);
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
        let group = Arc::new(Mutex::new(Group::new(id.clone())));
        groups.insert(id, group.clone());
        group
    }

    pub fn groups(&self) -> Vec<Arc<Mutex<Group>>> {
        self.groups.lock().values().cloned().collect()
    }

    fn offsets_partition(&self, broker: &Broker, group: &str) -> Result<Arc<Partition>, ResponseError> {
        let partitions = self.offsets_partitions.load(Ordering::Acquire);
        if partitions == 0 {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        broker
            .replicas
            .partition(OFFSETS_TOPIC, record::partition_for(group, partitions))
            .ok_or(ResponseError::CoordinatorNotAvailable)
    }

    /// Appends a group's records to its `__consumer_offsets` partition, one batch. Returns
    /// the partition, the base offset and what to wait on for durability.
    fn append(
        &self,
        broker: &Broker,
        group: &str,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(Arc<Partition>, i64, sluice_storage::DurableHandle), ResponseError> {
        self.append_batch(broker, group, records, None)
    }

    /// [`Self::append`], as a transactional batch of `producer` (id, epoch) when given.
    fn append_batch(
        &self,
        broker: &Broker,
        group: &str,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
        producer: Option<(i64, i16)>,
    ) -> Result<(Arc<Partition>, i64, sluice_storage::DurableHandle), ResponseError> {
        let partition = self.offsets_partition(broker, group)?;
        let now_ms = sluice_storage::now_ms();
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
        match partition.log.append(&batch, LeaderEpoch(Partition::LEADER_EPOCH), now_ms) {
            Ok(outcome) => {
                let durable = outcome.durable_handle();
                if !durable.needs_fsync() {
                    partition.commit(durable.end_offset());
                }
                Ok((partition, outcome.base_offset.0, durable))
            }
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

    /// Writes the group's record if its membership changed. Membership records need no
    /// fsync wait: a lost one only makes members rejoin after a crash.
    pub fn persist_if_dirty(&self, broker: &Broker, group: &mut Group) {
        if !group.classic.take_dirty() {
            return;
        }
        let key = RecordKey::Group { group: group.id.to_string() }.encode();
        let value = group.classic.snapshot().encode();
        if self.append(broker, &group.id, &[(key, Some(value))]).is_ok() {
            group.has_record = true;
        }
    }

    /// Validates and writes an offset commit; the caller waits with [`Self::complete_commit`].
    pub fn commit_offsets(
        &self,
        broker: &Broker,
        group_id: &str,
        claim: MemberClaim,
        retention_time_ms: i64,
        commits: &[OffsetCommit],
        transaction: Option<(i64, i16)>,
    ) -> PendingCommit {
        let MemberClaim { generation_id, member_id, group_instance_id } = claim;
        let fail = |error| PendingCommit { partition: None, durable: None, results: vec![Some(error); commits.len()] };
        // Kafka's records hold the group id as a 16-bit-length string.
        if group_id.len() > i16::MAX as usize {
            return fail(ResponseError::InvalidGroupId);
        }
        let group = if generation_id < 0 { Some(self.group_or_create(group_id)) } else { self.group(group_id) };
        // A member of a generation the coordinator does not know.
        let Some(group) = group else { return fail(ResponseError::IllegalGeneration) };
        let mut locked = group.lock();
        // A transactional commit without member details (TxnOffsetCommit before v3, or a
        // producer outside any group) is not checked against the membership, as in Kafka.
        let unchecked = transaction.is_some() && generation_id < 0;
        if locked.is_dead() {
            return fail(ResponseError::CoordinatorNotAvailable);
        }
        if !unchecked {
            if let Err(error) = locked.validate_commit(generation_id, member_id, group_instance_id) {
                return fail(error);
            }
        }
        locked.classic.touch(member_id, Instant::now());
        let now_ms = sluice_storage::now_ms();
        let expire_timestamp_ms = (retention_time_ms >= 0).then(|| now_ms.saturating_add(retention_time_ms));
        let mut results = Vec::with_capacity(commits.len());
        let mut entries = Vec::new();
        let mut records = Vec::new();
        for commit in commits {
            let metadata = commit.metadata.clone().unwrap_or_default();
            let error = if metadata.len() > self.config.offset_metadata_max_bytes {
                Some(ResponseError::OffsetMetadataTooLarge)
            } else if broker.replicas.partition(&commit.topic, commit.partition).is_none() {
                Some(ResponseError::UnknownTopicOrPartition)
            } else {
                None
            };
            results.push(error);
            if error.is_some() {
                continue;
            }
            let committed = CommittedOffset {
                offset: commit.offset,
                leader_epoch: commit.leader_epoch,
                metadata,
                commit_timestamp_ms: now_ms,
                expire_timestamp_ms,
                record_offset: 0,
            };
            let key = RecordKey::Offset {
                group: group_id.to_string(),
                topic: commit.topic.clone(),
                partition: commit.partition,
            };
            records.push((key.encode(), Some(committed.to_value().encode())));
            entries.push((commit.topic.clone(), commit.partition, committed));
        }
        if records.is_empty() {
            drop(locked);
            return PendingCommit { partition: None, durable: None, results };
        }
        match self.append_batch(broker, group_id, &records, transaction) {
            Ok((partition, base_offset, durable)) => {
                // Applied in log order, under the group's lock: the cache always matches what
                // the log holds, which the offsets topic's cleanup relies on. Transactional
                // commits wait for their marker.
                for (i, (topic, partition, mut committed)) in entries.into_iter().enumerate() {
                    committed.record_offset = base_offset + i as i64;
                    match transaction {
                        Some((producer_id, _)) => {
                            locked.pending_txn.entry(producer_id).or_default().push((topic, partition, committed))
                        }
                        None => locked.offsets.apply(&topic, partition, committed),
                    }
                }
                drop(locked);
                PendingCommit { partition: Some(partition), durable: Some(durable), results }
            }
            Err(error) => {
                for result in results.iter_mut().filter(|r| r.is_none()) {
                    *result = Some(error);
                }
                drop(locked);
                PendingCommit { partition: None, durable: None, results }
            }
        }
    }

    /// Waits for a commit's record to be durable (on a blocking thread when that means an
    /// fsync), so that it can be acknowledged.
    pub async fn complete_commit(pending: PendingCommit) -> Vec<Option<ResponseError>> {
        if pending.durable.as_ref().is_some_and(|d| d.needs_fsync()) {
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
        let Some(durable) = pending.durable.take() else { return pending.results };
        if durable.needs_fsync() {
            let waited = durable.wait().map_err(|err| err.to_string());
            if waited.is_ok() {
                if let Some(partition) = &pending.partition {
                    partition.commit(durable.end_offset());
                }
            }
            if let Err(err) = waited {
                tracing::error!(%err, "offset commit not durable");
                for result in pending.results.iter_mut().filter(|r| r.is_none()) {
                    *result = Some(ResponseError::KafkaStorageError);
                }
                return pending.results;
            }
        }
        pending.results
    }

    /// Deletes empty groups with their offsets (tombstones for everything). Per group:
    /// `None` if deleted, else the error (GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP).
    pub fn delete_group(&self, broker: &Broker, group_id: &str) -> Result<(), ResponseError> {
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
            .map(|((topic, partition), _)| {
                let key =
                    RecordKey::Offset { group: group_id.to_string(), topic: topic.clone(), partition: *partition };
                (key.encode(), None)
            })
            .collect();
        if locked.has_record {
            records.push((RecordKey::Group { group: group_id.to_string() }.encode(), None));
        }
        if !records.is_empty() {
            self.append(broker, group_id, &records)?;
        }
        locked.classic.mark_dead();
        drop(locked);
        groups.remove(group_id);
        Ok(())
    }

    /// Removes offsets (OffsetDelete); the caller has checked the group allows it.
    pub fn delete_offsets(
        &self,
        broker: &Broker,
        group: &mut Group,
        partitions: &[(String, i32)],
    ) -> Result<(), ResponseError> {
        let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = partitions
            .iter()
            .filter(|(topic, partition)| group.offsets.get(topic, *partition).is_some())
            .map(|(topic, partition)| {
                let key =
                    RecordKey::Offset { group: group.id.to_string(), topic: topic.clone(), partition: *partition };
                (key.encode(), None)
            })
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        self.append(broker, &group.id, &records)?;
        for (topic, partition) in partitions {
            group.offsets.remove_now(topic, *partition);
        }
        Ok(())
    }

    /// Runs every group's timers, writes what changed, and (every
    /// `offsets.retention.check.interval.ms`) expires old offsets and empty groups.
    pub fn tick(&self, broker: &Broker) {
        let now = Instant::now();
        for group in self.groups() {
            let mut group = group.lock();
            group.classic.tick(now, &self.config);
            if let Some(consumer) = &mut group.consumer {
                consumer.tick(now);
            }
            self.persist_if_dirty(broker, &mut group);
        }
        let due = {
            let mut next = self.next_expiry_check.lock();
            let due = *next <= now;
            if due {
                *next = now + Duration::from_millis(self.config.offsets_retention_check_interval_ms);
            }
            due
        };
        if due {
            self.expire_offsets(broker);
        }
    }

    pub fn expire_offsets(&self, broker: &Broker) {
        let now_ms = sluice_storage::now_ms();
        let mut emptied = Vec::new();
        let mut expired_total = 0;
        for group in self.groups() {
            let mut group = group.lock();
            let classic = &group.classic;
            let empty_since = match &group.consumer {
                Some(consumer) => consumer.empty_since_ms,
                None => (classic.state == ClassicState::Empty).then_some(classic.state_timestamp_ms),
            };
            let simple = classic.protocol_type.is_none() && group.consumer.is_none();
            let expired = group.offsets.expired(now_ms, self.config.offsets_retention_ms, empty_since, simple);
            if !expired.is_empty() && self.delete_offsets(broker, &mut group, &expired).is_ok() {
                expired_total += expired.len();
            }
            if group.offsets.is_empty() && group.pending_txn.is_empty() && empty_since.is_some() {
                emptied.push(group.id.clone());
            }
        }
        for id in &emptied {
            let _ = self.delete_group(broker, id);
        }
        if expired_total > 0 || !emptied.is_empty() {
            tracing::info!(offsets = expired_total, groups = emptied.len(), "expired committed offsets");
        }
    }
}

/// Runs the coordinator's timers until shutdown is signalled.
pub async fn run_timers(broker: Arc<Broker>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_cleanup = Instant::now() + CLEANUP_INTERVAL;
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if !broker.groups.is_ready() {
                    continue;
                }
                broker.groups.tick(&broker);
                if Instant::now() >= next_cleanup {
                    let cleaner = broker.clone();
                    if tokio::task::spawn_blocking(move || cleaner.groups.clean_offsets_topic(&cleaner)).await.is_err() {
                        tracing::error!("{OFFSETS_TOPIC} cleanup panicked");
                    }
                    next_cleanup = Instant::now() + CLEANUP_INTERVAL;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let pending = broker.groups.commit_offsets(broker, group, claim, -1, &[commit], None);
        assert_eq!(pending.results, vec![None]);
        assert!(!pending.durable.as_ref().is_some_and(|d| d.needs_fsync()));
    }

    fn committed(broker: &Broker, group: &str, partition: i32) -> Option<i64> {
        broker.groups.group(group)?.lock().offsets.get("t", partition).map(|c| c.offset)
    }

    #[test]
    fn commits_survive_reopening_and_cleanup_keeps_only_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let broker = open(dir.path());
        broker.create_topic("t", 4, BTreeMap::new(), false).unwrap();
        broker.groups.ensure_offsets_topic(&broker).unwrap();
        for round in 0..3_000i64 {
            for (g, group) in ["alpha", "beta", "gamma"].iter().enumerate() {
                commit(&broker, group, (round % 4) as i32, round * 10 + g as i64);
            }
        }
        let size_before: u64 =
            (0..2).map(|p| broker.replicas.partition(OFFSETS_TOPIC, p).unwrap().log.size_bytes()).sum();
        broker.groups.clean_offsets_topic(&broker);
        let size_after: u64 =
            (0..2).map(|p| broker.replicas.partition(OFFSETS_TOPIC, p).unwrap().log.size_bytes()).sum();
        assert!(size_after * 2 < size_before, "cleanup freed space: {size_before} -> {size_after}");
        // A group deleted before the reopen stays deleted.
        broker.groups.delete_group(&broker, "gamma").unwrap();
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
        broker.create_topic("t", 1, BTreeMap::new(), false).unwrap();
        broker.groups.ensure_offsets_topic(&broker).unwrap();
        let end = |b: &Broker| {
            (0..2).map(|p| b.replicas.partition(OFFSETS_TOPIC, p).unwrap().log.log_end_offset().0).sum::<i64>()
        };
        let before = end(&broker);
        let claim = MemberClaim { generation_id: 3, member_id: "m", group_instance_id: None };
        let commit = OffsetCommit { topic: "t".into(), partition: 0, offset: 1, leader_epoch: -1, metadata: None };
        let pending = broker.groups.commit_offsets(&broker, "g", claim, -1, std::slice::from_ref(&commit), None);
        assert_eq!(pending.results, vec![Some(ResponseError::IllegalGeneration)]);
        let claim = MemberClaim { generation_id: -1, member_id: "", group_instance_id: None };
        let big = OffsetCommit { metadata: Some("x".repeat(5000)), ..commit.clone() };
        let unknown = OffsetCommit { topic: "nope".into(), ..commit };
        let pending = broker.groups.commit_offsets(&broker, "g", claim, -1, &[big, unknown], None);
        assert_eq!(
            pending.results,
            vec![Some(ResponseError::OffsetMetadataTooLarge), Some(ResponseError::UnknownTopicOrPartition)]
        );
        assert_eq!(end(&broker), before, "refused commits write nothing");
    }
}
