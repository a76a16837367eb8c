//! A job's transactional output, written in-process through the broker's own transaction
//! coordinator: the same machinery external transactional producers use. Each commit
//! writes, as one transaction, the records sent since the last one and the job's source
//! offsets (into its consumer group's committed offsets), so `read_committed` readers see
//! a commit's results exactly when its input counts as consumed.
//!
//! Opening a sink under a transactional id fences any earlier instance and aborts what it
//! left open, so a restarted task cannot have its predecessor's output slip in.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_broker::group::{GroupCoordinator, MemberClaim, OffsetCommit};
use sluice_broker::replica_manager::Partition;
use sluice_broker::Broker;
use sluice_storage::{LeaderEpoch, RecordBatchBuilder};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The broker refused a step of the transaction (its Kafka error, by name).
    #[error("transaction {transactional_id}: {step} failed: {error}")]
    Transaction { transactional_id: String, step: &'static str, error: String },
    #[error("no partition {partition} of topic {topic}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error(transparent)]
    Storage(#[from] sluice_storage::Error),
}

pub struct TransactionalSink {
    broker: Arc<Broker>,
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    /// Records of the open transaction, in batches per partition.
    batches: BTreeMap<(String, i32), Vec<RecordBatchBuilder>>,
}

/// A batch is closed at this size, below the default `max.message.bytes` (1 MiB) of the
/// topics a job writes; a larger single record gets a batch of its own.
const BATCH_BYTES: usize = 900 * 1024;

impl TransactionalSink {
    /// Takes over `transactional_id`: the previous holder is fenced and its open
    /// transaction aborted. Blocks (the coordinator fsyncs).
    pub fn open(broker: Arc<Broker>, transactional_id: &str, timeout_ms: i32) -> Result<TransactionalSink, SinkError> {
        let fail = |step, error: String| SinkError::Transaction {
            transactional_id: transactional_id.to_string(),
            step,
            error,
        };
        broker.txns.ensure_state_topic(&broker).map_err(|e| fail("creating __transaction_state", format!("{e:?}")))?;
        broker
            .groups
            .ensure_offsets_topic(&broker)
            .map_err(|e| fail("creating __consumer_offsets", format!("{e:?}")))?;
        let (producer_id, producer_epoch) = broker
            .txns
            .init_producer_id(&broker, transactional_id, timeout_ms, None)
            .map_err(|e| fail("InitProducerId", format!("{e:?}")))?;
        Ok(TransactionalSink {
            broker,
            transactional_id: transactional_id.to_string(),
            producer_id,
            producer_epoch,
            batches: BTreeMap::new(),
        })
    }

    fn fail(&self, step: &'static str, error: impl std::fmt::Debug) -> SinkError {
        SinkError::Transaction { transactional_id: self.transactional_id.clone(), step, error: format!("{error:?}") }
    }

    /// Adds a record (a tombstone when `value` is `None`) to the open transaction.
    pub fn send(&mut self, topic: &str, partition: i32, key: Option<&[u8]>, value: Option<&[u8]>, timestamp_ms: i64) {
        let (producer_id, epoch) = (self.producer_id, self.producer_epoch);
        let size = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        let batches = match self.batches.get_mut(&(topic.to_string(), partition)) {
            Some(batches) => batches,
            None => self.batches.entry((topic.to_string(), partition)).or_default(),
        };
        if batches.last().is_none_or(|b| !b.is_empty() && b.records_size() + size > BATCH_BYTES) {
            // Sequence -1: written in-process, never retried over a network, so there is
            // nothing to deduplicate (the coordinator's own appends do the same).
            batches.push(RecordBatchBuilder::new(timestamp_ms).producer(producer_id, epoch, -1).transactional(true));
        }
        if let Some(batch) = batches.last_mut() {
            batch.push(timestamp_ms, key, value, &[]);
        }
    }

    /// Records waiting for the next commit.
    pub fn pending(&self) -> usize {
        self.batches.values().flatten().map(RecordBatchBuilder::len).sum()
    }

    /// Commits the records sent since the last commit together with `offsets` (each the
    /// next offset to read) committed for consumer group `group`. On an error the
    /// transaction's records are gone from the sink and whatever part of it reached the
    /// broker is aborted (by its timeout, or when the next instance opens the sink): the
    /// caller starts again from the last committed offsets.
    pub fn commit(&mut self, group: &str, offsets: &[OffsetCommit]) -> Result<(), SinkError> {
        let broker = self.broker.clone();
        let txns = &broker.txns;
        let (producer_id, epoch) = (self.producer_id, self.producer_epoch);
        let batches = std::mem::take(&mut self.batches);
        let mut partitions: Vec<(String, i32)> = batches.keys().cloned().collect();
        let offsets_partition =
            broker.groups.offsets_partition_for(group).ok_or_else(|| self.fail("offsets", "no __consumer_offsets"))?;
        if !offsets.is_empty() {
            partitions.push(offsets_partition.clone());
        }
        if partitions.is_empty() {
            return Ok(());
        }
        txns.add_partitions(&broker, &self.transactional_id, producer_id, epoch, partitions)
            .map_err(|e| self.fail("AddPartitionsToTxn", e))?;
        for ((topic, index), builders) in batches {
            let partition: Arc<Partition> = broker
                .replicas
                .partition(&topic, index)
                .ok_or_else(|| SinkError::UnknownPartition { topic: topic.clone(), partition: index })?;
            for builder in builders {
                let batch = builder.build()?;
                let now = sluice_storage::now_ms();
                txns.in_transaction(producer_id, epoch, &topic, index, || {
                    partition.log.append(&batch, LeaderEpoch(Partition::LEADER_EPOCH), now)
                })
                .map_err(|e| self.fail("Produce", e))??;
            }
        }
        if !offsets.is_empty() {
            let pending = txns
                .in_offsets_transaction(&self.transactional_id, producer_id, epoch, offsets_partition.1, || {
                    let claim = MemberClaim { generation_id: -1, member_id: "", group_instance_id: None };
                    broker.groups.commit_offsets(&broker, group, claim, -1, offsets, Some((producer_id, epoch)))
                })
                .map_err(|e| self.fail("TxnOffsetCommit", e))?;
            if let Some(error) = GroupCoordinator::complete_commit_blocking(pending).into_iter().flatten().next() {
                return Err(self.fail("TxnOffsetCommit", error));
            }
        }
        txns.end_txn(&broker, &self.transactional_id, producer_id, epoch, true).map_err(|e| self.fail("EndTxn", e))
    }

    /// Drops the records sent since the last commit; nothing of them was written.
    pub fn discard(&mut self) {
        self.batches.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Isolation, LogSource};
    use sluice_broker::BrokerConfig;
    use sluice_storage::Offset;

    fn read_committed(broker: &Broker, topic: &str, partition: i32) -> Vec<String> {
        let log = broker.replicas.partition(topic, partition).unwrap().log.clone();
        let mut source = LogSource::new(log, Offset(0), Isolation::ReadCommitted);
        let mut values = Vec::new();
        // A poll reads within one segment (these 1970 timestamps roll one per batch).
        for _ in 0..100 {
            let records = source.poll(1 << 20).unwrap();
            if records.is_empty() {
                break;
            }
            values.extend(records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()));
        }
        values
    }

    fn offset(offset: i64) -> OffsetCommit {
        OffsetCommit { topic: "in".into(), partition: 0, offset, leader_epoch: -1, metadata: None }
    }

    fn committed(broker: &Broker, group: &str) -> Option<i64> {
        broker.groups.group(group)?.lock().offsets.get("in", 0).map(|c| c.offset)
    }

    #[test]
    fn a_commit_makes_records_and_offsets_visible_together_and_a_successor_fences() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
        config.apply("offsets.topic.num.partitions", "1").unwrap();
        config.apply("transaction.state.log.num.partitions", "1").unwrap();
        let broker = Broker::open(config).unwrap();
        broker.create_topic("in", 1, Default::default(), false).unwrap();
        broker.create_topic("out", 2, Default::default(), false).unwrap();

        let mut sink = TransactionalSink::open(broker.clone(), "job-a-0", 60_000).unwrap();
        sink.send("out", 0, Some(b"k"), Some(b"one"), 1);
        sink.send("out", 1, None, Some(b"two"), 1);
        sink.send("out", 0, None, Some(b"three"), 1);
        assert_eq!(read_committed(&broker, "out", 0), Vec::<String>::new(), "nothing before the commit");
        sink.commit("job-a", &[offset(42)]).unwrap();
        assert_eq!(read_committed(&broker, "out", 0), ["one", "three"]);
        assert_eq!(read_committed(&broker, "out", 1), ["two"]);
        assert_eq!(committed(&broker, "job-a"), Some(42));

        // An instance that wrote but never committed is fenced by its successor, and what
        // it wrote is aborted.
        sink.send("out", 0, None, Some(b"zombie"), 1);
        let batches = std::mem::take(&mut sink.batches);
        let txns = &broker.txns;
        txns.add_partitions(&broker, "job-a-0", sink.producer_id, sink.producer_epoch, vec![("out".into(), 0)])
            .unwrap();
        for ((topic, index), builder) in
            batches.into_iter().flat_map(|(k, v)| v.into_iter().map(move |b| (k.clone(), b)))
        {
            let partition = broker.replicas.partition(&topic, index).unwrap();
            let batch = builder.build().unwrap();
            txns.in_transaction(sink.producer_id, sink.producer_epoch, &topic, index, || {
                partition.log.append(&batch, LeaderEpoch(0), 1)
            })
            .unwrap()
            .unwrap();
        }
        let mut successor = TransactionalSink::open(broker.clone(), "job-a-0", 60_000).unwrap();
        sink.send("out", 0, None, Some(b"late"), 1);
        assert!(sink.commit("job-a", &[offset(99)]).is_err(), "the fenced instance cannot commit");
        successor.send("out", 0, None, Some(b"four"), 1);
        successor.commit("job-a", &[offset(50)]).unwrap();
        assert_eq!(read_committed(&broker, "out", 0), ["one", "three", "four"]);
        assert_eq!(committed(&broker, "job-a"), Some(50));
    }
}
