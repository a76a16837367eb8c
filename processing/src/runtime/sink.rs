//! A job's transactional output, written in-process through the broker's own transaction
//! coordinator: the same machinery external transactional producers use. Each commit
//! writes, as one transaction, the records sent since the last one and the job's source
//! offsets (into its consumer group's committed offsets), so `read_committed` readers see
//! a commit's results exactly when its input counts as consumed. An output record goes to
//! the partition Kafka's default partitioner gives its key.
//!
//! Opening a sink under a transactional id fences any earlier instance and aborts what it
//! left open, so a restarted task cannot have its predecessor's output slip in.

use std::collections::BTreeMap;

use sluice_broker::in_process::OffsetCommit;
use sluice_broker::in_process::{ClientError, TransactionalProducer};
use sluice_broker::{InProcessClient, TopicPartition};
use sluice_storage::RecordBatchBuilder;

use crate::error::{Error, Result};

pub struct TransactionalSink {
    producer: TransactionalProducer,
    /// Records of the open transaction, in batches per partition.
    batches: BTreeMap<TopicPartition, Vec<RecordBatchBuilder>>,
}

/// A batch is closed at this size, below the default `max.message.bytes` (1 MiB) of the
/// topics a job writes; a larger single record gets a batch of its own.
const BATCH_BYTES: usize = 900 * 1024;

impl TransactionalSink {
    /// Takes over `transactional_id`: the previous holder is fenced and its open
    /// transaction aborted. Blocks (the coordinator fsyncs).
    pub fn open(client: &InProcessClient, transactional_id: &str, timeout_ms: i32) -> Result<TransactionalSink> {
        let producer = client
            .transactional_producer(transactional_id, timeout_ms)
            .map_err(|source| Error::Transaction { transactional_id: transactional_id.to_string(), source })?;
        Ok(TransactionalSink { producer, batches: BTreeMap::new() })
    }

    fn fail(&self, source: ClientError) -> Error {
        Error::Transaction { transactional_id: self.producer.transactional_id().to_string(), source }
    }

    /// Adds a record (a tombstone when `value` is `None`) to the open transaction.
    pub fn send(&mut self, topic: &str, partition: i32, key: Option<&[u8]>, value: Option<&[u8]>, timestamp_ms: i64) {
        let (producer_id, epoch) = self.producer.producer();
        let size = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        let batches = self.batches.entry(TopicPartition::new(topic, partition)).or_default();
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
    pub fn commit(&mut self, group: &str, offsets: &[OffsetCommit]) -> Result<()> {
        let batches = std::mem::take(&mut self.batches);
        if batches.is_empty() && offsets.is_empty() {
            return Ok(());
        }
        let partitions: Vec<TopicPartition> = batches.keys().cloned().collect();
        let offsets_group = (!offsets.is_empty()).then_some(group);
        self.producer.add_to_transaction(&partitions, offsets_group).map_err(|e| self.fail(e))?;
        for (target, builders) in batches {
            for builder in builders {
                let batch = builder.build()?;
                self.producer.append(&target.topic, target.partition, &batch).map_err(|e| self.fail(e))?;
            }
        }
        if !offsets.is_empty() {
            self.producer.commit_offsets(group, offsets).map_err(|e| self.fail(e))?;
        }
        self.producer.commit().map_err(|e| self.fail(e))
    }
}

/// Kafka's default partitioner for keyed records (murmur2 of the key, made positive), so
/// the job's output lands where a Kafka producer would have put it.
pub fn kafka_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) as i32 % partitions.max(1)
}

fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::source::{Isolation, LogSource};
    use crate::test_broker;
    use sluice_storage::Offset;

    fn read_committed(client: &InProcessClient, topic: &str, partition: i32) -> Vec<String> {
        let mut source = LogSource::new(client.reader(topic, partition).unwrap(), Offset(0), Isolation::ReadCommitted);
        let mut values = Vec::new();
        // A poll reads within one segment, and these 1970 timestamps roll one at each
        // transaction marker (stamped now: segment.ms).
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

    fn committed(client: &InProcessClient, group: &str) -> Option<i64> {
        client.committed_offsets(group, "in", 1)[0].as_ref().map(|c| c.offset)
    }

    #[test]
    fn a_commit_makes_records_and_offsets_visible_together_and_a_successor_fences() {
        let dir = tempfile::tempdir().unwrap();
        let (_broker, client) = test_broker::open(dir.path());
        client.ensure_topic("in", 1, Default::default()).unwrap();
        client.ensure_topic("out", 2, Default::default()).unwrap();

        let mut sink = TransactionalSink::open(&client, "job-a-0", 60_000).unwrap();
        sink.send("out", 0, Some(b"k"), Some(b"one"), 1);
        sink.send("out", 1, None, Some(b"two"), 1);
        sink.send("out", 0, None, Some(b"three"), 1);
        assert_eq!(read_committed(&client, "out", 0), Vec::<String>::new(), "nothing before the commit");
        sink.commit("job-a", &[offset(42)]).unwrap();
        assert_eq!(read_committed(&client, "out", 0), ["one", "three"]);
        assert_eq!(read_committed(&client, "out", 1), ["two"]);
        assert_eq!(committed(&client, "job-a"), Some(42));

        // An instance that wrote but never committed is fenced by its successor, and what
        // it wrote is aborted.
        sink.send("out", 0, None, Some(b"zombie"), 1);
        let batches = std::mem::take(&mut sink.batches);
        sink.producer.add_to_transaction(&[TopicPartition::new("out", 0)], None).unwrap();
        for (target, builders) in batches {
            for builder in builders {
                sink.producer.append(&target.topic, target.partition, &builder.build().unwrap()).unwrap();
            }
        }
        let mut successor = TransactionalSink::open(&client, "job-a-0", 60_000).unwrap();
        sink.send("out", 0, None, Some(b"late"), 1);
        assert!(sink.commit("job-a", &[offset(99)]).is_err(), "the fenced instance cannot commit");
        successor.send("out", 0, None, Some(b"four"), 1);
        successor.commit("job-a", &[offset(50)]).unwrap();
        assert_eq!(read_committed(&client, "out", 0), ["one", "three", "four"]);
        assert_eq!(committed(&client, "job-a"), Some(50));
    }

    #[test]
    fn murmur2_partitions_keys_as_kafka_does() {
        // Values from Kafka's own partitioner tests (Utils.murmur2 on these strings).
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58897971);
        assert_eq!(murmur2(b"abc") as i32, 479470107);
        assert!((0..4).contains(&kafka_partition(b"u-42", 4)));
    }
}
