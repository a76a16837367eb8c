//! The broker as an in-process client sees it: what a stream-processing job may do (read a
//! partition, ensure a topic, produce, read committed offsets, and run transactions that
//! carry records and offsets together), with none of the broker's internals in reach. It is
//! the one seam between jobs and the broker: on a cluster, a partition led elsewhere is
//! reached through these same calls.
//!
//! Every call may block (appends wait for durability, the coordinators fsync): call them
//! from the job's own threads, not from async tasks.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use sluice_storage::{AbortedTxn, Offset};

use crate::broker::Broker;
use crate::clock::Clock;
pub use crate::group::OffsetCommit;

use crate::group::{GroupCoordinator, MemberClaim};
use crate::partition::Partition;
use crate::topic_partition::TopicPartition;

/// Why an in-process call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker refused a step with a Kafka error.
    #[error("{step} failed: {code:?}")]
    Refused { step: &'static str, code: ResponseError },
    /// An admin step (creating a topic) was refused, with the broker's reason.
    #[error("{step} failed: {message}")]
    Admin { step: String, message: String },
    #[error("no partition {0}")]
    UnknownPartition(TopicPartition),
    #[error(transparent)]
    Storage(#[from] sluice_storage::Error),
}

fn refused(step: &'static str) -> impl FnOnce(ResponseError) -> ClientError {
    move |code| ClientError::Refused { step, code }
}

/// The committed position of one partition for a consumer group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedPosition {
    pub offset: i64,
    pub metadata: String,
}

#[derive(Clone)]
pub struct InProcessClient {
    broker: Arc<Broker>,
}

impl InProcessClient {
    pub fn new(broker: Arc<Broker>) -> InProcessClient {
        InProcessClient { broker }
    }

    /// The broker's clock: what a client's own timeouts and timestamps should read.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.broker.clock.clone()
    }

    /// Where the broker keeps its data; a client may keep its own files beside it.
    pub fn data_dir(&self) -> &Path {
        &self.broker.config.data_dir
    }

    pub fn partition_count(&self, topic: &str) -> Option<i32> {
        self.broker.metadata().topic(topic).map(|t| t.partitions)
    }

    /// The topic's partition count, creating it first (with `partitions`, -1 for the broker's
    /// default, and these config overrides) if it does not exist. A topic created meanwhile by
    /// someone else counts as existing.
    pub fn ensure_topic(
        &self,
        topic: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<i32, ClientError> {
        if let Some(count) = self.partition_count(topic) {
            return Ok(count);
        }
        match self.broker.controller.create_topic(topic, partitions, configs, false) {
            Ok(created) => Ok(created.partitions),
            Err(err) => self
                .partition_count(topic)
                .ok_or_else(|| ClientError::Admin { step: format!("creating topic {topic}"), message: err.message }),
        }
    }

    /// Sets `configs` on an existing topic where its own differ (keeping its other
    /// configs).
    pub fn ensure_topic_configs(&self, topic: &str, configs: &BTreeMap<String, String>) -> Result<(), ClientError> {
        let current = self.broker.metadata().topic(topic).map(|t| t.configs.clone()).unwrap_or_default();
        if configs.iter().all(|(k, v)| current.get(k) == Some(v)) {
            return Ok(());
        }
        let merged = |current: &BTreeMap<String, String>| {
            let mut merged = current.clone();
            merged.extend(configs.iter().map(|(k, v)| (k.clone(), v.clone())));
            Ok(merged)
        };
        self.broker
            .controller
            .alter_topic_configs(topic, merged, false)
            .map_err(|err| ClientError::Admin { step: format!("setting the configs of {topic}"), message: err.message })
    }

    fn partition(&self, topic: &str, partition: i32) -> Result<Arc<Partition>, ClientError> {
        self.broker
            .replicas
            .partition(topic, partition)
            .ok_or_else(|| ClientError::UnknownPartition(TopicPartition::new(topic, partition)))
    }

    pub fn reader(&self, topic: &str, partition: i32) -> Result<PartitionReader, ClientError> {
        Ok(PartitionReader { partition: self.partition(topic, partition)? })
    }

    /// Appends a (non-transactional) batch and waits until it is durable; returns its base
    /// offset.
    pub fn produce(&self, topic: &str, partition: i32, batch: &[u8]) -> Result<Offset, ClientError> {
        let partition = self.partition(topic, partition)?;
        Ok(partition.append_durable(batch, self.broker.clock.now_ms())?.base_offset)
    }

    /// Removes the records of a partition below `offset`, once everything above it is on
    /// disk whatever the topic's flush policy (what a compacting writer does after rewriting
    /// the records it removes).
    pub fn delete_records_before(&self, topic: &str, partition: i32, offset: Offset) -> Result<(), ClientError> {
        let partition = self.partition(topic, partition)?;
        partition.log.flush()?;
        partition.log.delete_records_before(offset)?;
        Ok(())
    }

    /// What `group` has committed for each of the topic's first `partitions` partitions.
    pub fn committed_offsets(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<CommittedPosition>> {
        let group = self.broker.groups.group(group);
        let group = group.as_ref().map(|g| g.lock());
        (0..partitions)
            .map(|p| {
                let committed = group.as_ref()?.offsets.get(topic, p)?;
                Some(CommittedPosition { offset: committed.offset, metadata: committed.metadata.clone() })
            })
            .collect()
    }

    /// Takes over `transactional_id` (InitProducerId): an earlier holder is fenced and its
    /// open transaction completed or aborted before this returns.
    pub fn transactional_producer(
        &self,
        transactional_id: &str,
        timeout_ms: i32,
    ) -> Result<TransactionalProducer, ClientError> {
        let broker = &self.broker;
        broker.txns.ensure_state_topic().map_err(refused("creating __transaction_state"))?;
        broker.groups.ensure_offsets_topic().map_err(refused("creating __consumer_offsets"))?;
        let (producer_id, producer_epoch) =
            broker.txns.init_producer_id(transactional_id, timeout_ms, None).map_err(refused("InitProducerId"))?;
        Ok(TransactionalProducer {
            client: self.clone(),
            transactional_id: transactional_id.to_string(),
            producer_id,
            producer_epoch,
        })
    }
}

/// Reads one partition's log: whole batches as zero-copy slices, never past the bound given.
pub struct PartitionReader {
    partition: Arc<Partition>,
}

impl PartitionReader {
    pub fn log_start_offset(&self) -> Offset {
        self.partition.log.log_start_offset()
    }

    pub fn log_end_offset(&self) -> Offset {
        self.partition.log.log_end_offset()
    }

    pub fn high_watermark(&self) -> Offset {
        self.partition.log.high_watermark()
    }

    pub fn last_stable_offset(&self) -> Offset {
        self.partition.log.last_stable_offset()
    }

    /// Batches from the one holding `offset`, about `max_bytes` of them (at least one), none
    /// reaching `bound`.
    pub fn read(&self, offset: Offset, max_bytes: usize, bound: Offset) -> sluice_storage::Result<Bytes> {
        Ok(self.partition.log.read(offset, max_bytes, bound)?.records)
    }

    /// Aborted transactions overlapping [start, bound).
    pub fn aborted_transactions(&self, start: Offset, bound: Offset) -> Vec<AbortedTxn> {
        self.partition.log.aborted_transactions(start, bound)
    }
}

/// One transactional id's producer: the same transactions an external transactional
/// producer runs (AddPartitionsToTxn, Produce, TxnOffsetCommit, EndTxn), in-process.
pub struct TransactionalProducer {
    client: InProcessClient,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
}

impl TransactionalProducer {
    /// (producer id, epoch): what the transaction's batches carry.
    pub fn producer(&self) -> (i64, i16) {
        (self.producer_id, self.producer_epoch)
    }

    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// Adds partitions to the transaction, and `offsets_group`'s offsets partition when the
    /// transaction will commit offsets for it: one coordinator write for all of them.
    pub fn add_to_transaction(
        &self,
        partitions: &[TopicPartition],
        offsets_group: Option<&str>,
    ) -> Result<(), ClientError> {
        let broker = &self.client.broker;
        let mut pairs = partitions.to_vec();
        if let Some(group) = offsets_group {
            let offsets = broker.groups.offsets_partition_for(group).ok_or(ClientError::Refused {
                step: "AddOffsetsToTxn",
                code: ResponseError::CoordinatorNotAvailable,
            })?;
            pairs.push(offsets);
        }
        if pairs.is_empty() {
            return Ok(());
        }
        broker
            .txns
            .add_partitions(&self.transactional_id, self.producer_id, self.producer_epoch, pairs)
            .map_err(refused("AddPartitionsToTxn"))
    }

    /// Appends one of this producer's transactional batches to a partition of its
    /// transaction. It is readable (read_committed) once the transaction commits, and it is
    /// durable by then at the latest: the transaction's marker comes after it in the same
    /// log, and the commit waits for the marker to be durable.
    pub fn append(&self, topic: &str, partition: i32, batch: &[u8]) -> Result<(), ClientError> {
        let target = self.client.partition(topic, partition)?;
        let now = self.client.broker.clock.now_ms();
        let appended = self
            .client
            .broker
            .txns
            .in_transaction(self.producer_id, self.producer_epoch, topic, partition, || target.append(batch, now))
            .map_err(refused("Produce"))??;
        // Not waited for: waiting here would fsync each partition once for its records and
        // again for its marker, where the marker's fsync covers both.
        drop(appended);
        Ok(())
    }

    /// Commits `offsets` for consumer group `group` inside the transaction (TxnOffsetCommit):
    /// they count once the transaction commits.
    pub fn commit_offsets(&self, group: &str, offsets: &[OffsetCommit]) -> Result<(), ClientError> {
        let broker = &self.client.broker;
        let offsets_partition = broker
            .groups
            .offsets_partition_for(group)
            .ok_or(ClientError::Refused { step: "TxnOffsetCommit", code: ResponseError::CoordinatorNotAvailable })?
            .partition;
        let producer = (self.producer_id, self.producer_epoch);
        let pending = broker
            .txns
            .in_offsets_transaction(&self.transactional_id, producer.0, producer.1, offsets_partition, || {
                let claim = MemberClaim { generation_id: -1, member_id: "", group_instance_id: None };
                broker.groups.commit_offsets(group, claim, -1, offsets, Some(producer))
            })
            .map_err(refused("TxnOffsetCommit"))?;
        match GroupCoordinator::complete_commit_blocking(pending).into_iter().flatten().next() {
            Some(code) => Err(ClientError::Refused { step: "TxnOffsetCommit", code }),
            None => Ok(()),
        }
    }

    /// Commits the transaction (EndTxn): its records and offsets become visible together.
    pub fn commit(&self) -> Result<(), ClientError> {
        self.end(true)
    }

    /// Aborts the transaction (EndTxn): read_committed readers never see its records, and
    /// its offsets never count.
    pub fn abort(&self) -> Result<(), ClientError> {
        self.end(false)
    }

    fn end(&self, commit: bool) -> Result<(), ClientError> {
        let broker = &self.client.broker;
        broker
            .txns
            .end_txn(&self.transactional_id, self.producer_id, self.producer_epoch, commit)
            .map_err(refused("EndTxn"))
    }
}
