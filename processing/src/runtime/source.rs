//! A job's source: one partition's log read in-process, with no socket and no Kafka request
//! encoding. Records come out as `Bytes` slices of the mapped segments (decompressed into one
//! buffer per batch when the producer compressed). `read_committed` reads stop at the last
//! stable offset and skip aborted transactions' records, as a Kafka consumer does: a
//! producer's batches are dropped from the first offset of an aborted transaction until its
//! abort marker.
//!
//! Invariant: offsets handed out only increase; control batches never reach the job.

use std::collections::{BTreeMap, HashSet};

use sluice_broker::in_process::PartitionReader;
use sluice_storage::{Offset, RecordBatch};

use crate::dataflow::SourceRecord;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    ReadUncommitted,
    ReadCommitted,
}

pub struct LogSource {
    log: PartitionReader,
    next: Offset,
    isolation: Isolation,
}

impl LogSource {
    pub fn new(log: PartitionReader, start: Offset, isolation: Isolation) -> LogSource {
        LogSource { log, next: start, isolation }
    }

    /// The partition read: its offsets, for lag figures.
    pub fn reader(&self) -> &PartitionReader {
        &self.log
    }

    /// The next offset to read (what a checkpoint records as the source position).
    pub fn position(&self) -> Offset {
        self.next
    }

    /// Reads up to about `max_bytes` of batches at the current position (at least one batch
    /// when any is readable) and advances past them. It keeps reading while what it read held
    /// no records for the job (markers, aborted data, segment ends), so an empty result means
    /// nothing new is readable.
    pub fn poll(&mut self, max_bytes: usize) -> sluice_storage::Result<Vec<SourceRecord>> {
        let bound = match self.isolation {
            Isolation::ReadCommitted => self.log.last_stable_offset(),
            Isolation::ReadUncommitted => self.log.high_watermark(),
        };
        let mut out = Vec::new();
        while out.is_empty() && self.next < bound {
            let before = self.next;
            self.read_once(max_bytes, bound, &mut out)?;
            if self.next == before {
                break;
            }
        }
        Ok(out)
    }

    /// One read (within one segment) from the current position up to `bound`.
    fn read_once(
        &mut self,
        max_bytes: usize,
        bound: Offset,
        out: &mut Vec<SourceRecord>,
    ) -> sluice_storage::Result<()> {
        let start = self.next.max(self.log.log_start_offset());
        self.next = start;
        let read = self.log.read(start, max_bytes, bound)?;
        // Aborted transactions overlapping what is read, by first offset.
        let mut aborted: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        if self.isolation == Isolation::ReadCommitted {
            for txn in self.log.aborted_transactions(start, bound) {
                aborted.entry(txn.first_offset).or_default().push(txn.producer_id);
            }
        }
        let mut skipping: HashSet<i64> = HashSet::new();
        for batch in RecordBatch::iter_batches(read) {
            let batch = batch?;
            if batch.last_offset() < self.next.0 {
                continue;
            }
            // Producers whose aborted transaction has begun by this batch.
            while let Some(entry) = aborted.first_entry() {
                if *entry.key() > batch.last_offset() {
                    break;
                }
                skipping.extend(entry.remove());
            }
            let producer_id = batch.producer_id();
            if batch.is_control() {
                // The abort marker ends that producer's aborted transaction.
                skipping.remove(&producer_id);
            } else if !(batch.is_transactional() && skipping.contains(&producer_id)) {
                for record in batch.records()? {
                    let record = record?;
                    if record.offset >= self.next.0 {
                        debug_assert!(
                            out.last().is_none_or(|last: &SourceRecord| last.offset < record.offset),
                            "offsets out of a source only increase"
                        );
                        out.push(SourceRecord {
                            offset: record.offset,
                            timestamp_ms: record.timestamp_ms,
                            key: record.key,
                            value: record.value,
                        });
                    }
                }
            }
            self.next = Offset(batch.last_offset() + 1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_broker;
    use sluice_broker::TopicPartition;
    use sluice_storage::RecordBatchBuilder;

    fn batch(producer: Option<(i64, i16, i32)>, values: &[&str]) -> Vec<u8> {
        // Timestamps of now, as the markers get: a marker a week newer than the batches
        // before it would roll a segment (segment.ms), and a poll reads within one.
        let now = sluice_storage::now_ms();
        let mut builder = RecordBatchBuilder::new(now);
        if let Some((producer_id, epoch, sequence)) = producer {
            builder = builder.producer(producer_id, epoch, sequence).transactional(true);
        }
        for v in values {
            builder.push(now, None, Some(v.as_bytes()), &[]);
        }
        builder.build().unwrap()
    }

    fn values(records: &[SourceRecord]) -> Vec<String> {
        records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()).collect()
    }

    #[test]
    fn read_committed_sees_committed_and_plain_records_only_and_stops_at_the_lso() {
        let dir = tempfile::tempdir().unwrap();
        let (_broker, client) = test_broker::open(dir.path());
        client.ensure_topic("t", 1, Default::default()).unwrap();
        let partition = [TopicPartition::new("t", 0)];
        let (a, b) =
            (client.transactional_producer("a", 60_000).unwrap(), client.transactional_producer("b", 60_000).unwrap());
        let ((a_id, a_epoch), (b_id, b_epoch)) = (a.producer(), b.producer());
        a.add_to_transaction(&partition, None).unwrap();
        b.add_to_transaction(&partition, None).unwrap();
        client.produce("t", 0, &batch(None, &["plain-1"])).unwrap();
        a.append("t", 0, &batch(Some((a_id, a_epoch, 0)), &["a1", "a2"])).unwrap();
        b.append("t", 0, &batch(Some((b_id, b_epoch, 0)), &["b1"])).unwrap();
        a.append("t", 0, &batch(Some((a_id, a_epoch, 2)), &["a3"])).unwrap();
        a.abort().unwrap();
        client.produce("t", 0, &batch(None, &["plain-2"])).unwrap();
        let mut committed = LogSource::new(client.reader("t", 0).unwrap(), Offset(0), Isolation::ReadCommitted);
        let mut uncommitted = LogSource::new(client.reader("t", 0).unwrap(), Offset(0), Isolation::ReadUncommitted);
        assert_eq!(values(&committed.poll(1 << 20).unwrap()), ["plain-1"], "producer b is still open");
        assert_eq!(values(&uncommitted.poll(1 << 20).unwrap()), ["plain-1", "a1", "a2", "b1", "a3", "plain-2"]);
        b.commit().unwrap();
        let rest = committed.poll(1 << 20).unwrap();
        assert_eq!(values(&rest), ["b1", "plain-2"]);
        assert!(rest.windows(2).all(|w| w[0].offset < w[1].offset));
        assert_eq!(committed.position(), client.reader("t", 0).unwrap().log_end_offset());
        assert!(committed.poll(1 << 20).unwrap().is_empty());
    }
}
