//! Transactional producers, and what each isolation level must read of what they wrote: a
//! ledger of every acknowledged record with its transaction's fate, from which follow the last
//! stable offset of each partition and exactly what a read_committed and a read_uncommitted
//! consumer read from any start. Every wait has a deadline.

// Each test binary that includes `common` uses a different part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::clients::{client_config, consumer_config, REQUEST_DEADLINE};
use super::records::DeliveryLog;
use super::TestBroker;

/// Bound on reading a topic to its end, on a transaction's commit or abort, and on waiting for
/// a broker or a worker to get somewhere, on a busy two-core machine.
pub const RUN_DEADLINE: Duration = Duration::from_secs(30);

/// A transactional producer that reconnects within milliseconds after a broker restart
/// instead of librdkafka's default of up to ten seconds.
pub fn unready_transactional_producer(
    broker: &TestBroker,
    transactional_id: &str,
    timeout_ms: u32,
) -> ThreadedProducer<DeliveryLog> {
    client_config(broker)
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", timeout_ms.to_string())
        .set("linger.ms", "1")
        .set("reconnect.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "100")
        .set("retry.backoff.ms", "10")
        .set("retry.backoff.max.ms", "100")
        .create_with_context(DeliveryLog::default())
        .expect("create a transactional producer")
}

/// A transactional producer that has run InitProducerId.
pub fn transactional_producer(
    broker: &TestBroker,
    transactional_id: &str,
    timeout_ms: u32,
) -> ThreadedProducer<DeliveryLog> {
    let producer = unready_transactional_producer(broker, transactional_id, timeout_ms);
    producer
        .init_transactions(RUN_DEADLINE)
        .unwrap_or_else(|err| panic!("InitProducerId for {transactional_id}: {err}"));
    producer
}

pub fn commit(producer: &ThreadedProducer<DeliveryLog>, what: &str) {
    producer.commit_transaction(RUN_DEADLINE).unwrap_or_else(|err| panic!("commit {what}: {err}"));
}

pub fn abort(producer: &ThreadedProducer<DeliveryLog>, what: &str) {
    producer.abort_transaction(RUN_DEADLINE).unwrap_or_else(|err| panic!("abort {what}: {err}"));
}

/// A producer whose transaction the coordinator aborted under a newer epoch cannot commit it:
/// librdkafka reports it fenced, a fatal error (the instance is unusable from then on).
pub fn assert_commit_fenced(producer: &ThreadedProducer<DeliveryLog>, who: &str) {
    match producer.commit_transaction(RUN_DEADLINE) {
        Ok(()) => panic!("{who} committed a transaction the coordinator had aborted"),
        Err(KafkaError::Transaction(err)) => assert!(err.is_fatal(), "{who}'s commit failed, not fatally: {err}"),
        Err(err) => panic!("{who}'s commit failed oddly: {err}"),
    }
    let fatal = producer.client().fatal_error();
    assert!(matches!(fatal, Some((RDKafkaErrorCode::Fenced, _))), "{who}'s fatal error is fencing: {fatal:?}");
}

// ---------------------------------------------------------------------------------------
// What was written, and what each isolation level must see of it

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fate {
    /// Not transactional: visible to both isolation levels (below the last stable offset).
    Plain,
    /// In a transaction that has not ended yet.
    Open,
    Committed,
    Aborted,
}

#[derive(Clone)]
struct Entry {
    partition: i32,
    offset: i64,
    value: String,
    fate: Fate,
}

/// Every acknowledged record of one topic, where it landed and what became of its transaction.
#[derive(Clone, Default)]
pub struct Ledger {
    entries: Vec<Entry>,
    /// Per aborted transaction and partition: the offsets of its first and last record.
    aborted_spans: Vec<(i32, i64, i64)>,
}

/// What a consumer read of a topic: per partition, each record's offset and value in order.
pub type Contents = BTreeMap<i32, Vec<(i64, String)>>;

impl Ledger {
    /// Produces records `{label}-p{partition}-{i}` (the value is also the key) to one partition
    /// and waits for their acknowledgements; returns their indices in the ledger.
    pub fn produce(
        &mut self,
        producer: &ThreadedProducer<DeliveryLog>,
        topic: &str,
        partition: i32,
        label: &str,
        count: usize,
        fate: Fate,
    ) -> Vec<usize> {
        let values: Vec<String> = (0..count).map(|i| format!("{label}-p{partition}-{i}")).collect();
        for (i, value) in values.iter().enumerate() {
            let record = BaseRecord::with_opaque_to(topic, i).partition(partition).key(value).payload(value);
            producer.send(record).unwrap_or_else(|(err, _)| panic!("queue {value}: {err}"));
        }
        producer.flush(RUN_DEADLINE).unwrap_or_else(|err| panic!("deliver {label} to {topic}/{partition}: {err}"));
        let reports = std::mem::take(&mut *producer.context().reports.lock().unwrap());
        assert_eq!(reports.len(), count, "a delivery report for every record of {label}");
        let first = self.entries.len();
        for (i, value) in values.into_iter().enumerate() {
            let report = reports[&(i as u64)].clone();
            let (landed, offset) = report.unwrap_or_else(|err| panic!("{value} was not acknowledged: {err}"));
            assert_eq!(landed, partition, "{value} landed in the partition it was sent to");
            self.entries.push(Entry { partition, offset, value, fate });
        }
        (first..self.entries.len()).collect()
    }

    /// Produces to each of `partitions`.
    pub fn produce_to(
        &mut self,
        producer: &ThreadedProducer<DeliveryLog>,
        topic: &str,
        partitions: &[i32],
        label: &str,
        count: usize,
        fate: Fate,
    ) -> Vec<usize> {
        partitions.iter().flat_map(|&p| self.produce(producer, topic, p, label, count, fate)).collect()
    }

    /// A transaction has ended: its records are committed or aborted.
    pub fn settle(&mut self, records: &[usize], fate: Fate) {
        let mut spans: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for &index in records {
            let entry = &mut self.entries[index];
            assert_eq!(entry.fate, Fate::Open, "{} settled twice", entry.value);
            entry.fate = fate;
            let span = spans.entry(entry.partition).or_insert((entry.offset, entry.offset));
            *span = (span.0.min(entry.offset), span.1.max(entry.offset));
        }
        if fate == Fate::Aborted {
            self.aborted_spans.extend(spans.into_iter().map(|(partition, (first, last))| (partition, first, last)));
        }
    }

    /// Per partition with an open transaction, the offset of its first open record: the last
    /// stable offset (elsewhere it is the high watermark).
    pub fn last_stable_offsets(&self) -> BTreeMap<i32, i64> {
        let mut stable = BTreeMap::new();
        for e in self.entries.iter().filter(|e| e.fate == Fate::Open) {
            let offset = stable.entry(e.partition).or_insert(e.offset);
            *offset = (*offset).min(e.offset);
        }
        stable
    }

    /// What a consumer of `isolation` reading every partition from the start to its end must
    /// get: read_uncommitted every record; read_committed the non-transactional and committed
    /// records below the last stable offset.
    pub fn expected(&self, isolation: Isolation, partitions: i32) -> Contents {
        let stable = self.last_stable_offsets();
        let mut contents: Contents = (0..partitions).map(|p| (p, Vec::new())).collect();
        for e in &self.entries {
            let visible = match isolation {
                Isolation::ReadUncommitted => true,
                Isolation::ReadCommitted => {
                    matches!(e.fate, Fate::Plain | Fate::Committed)
                        && stable.get(&e.partition).is_none_or(|&lso| e.offset < lso)
                }
            };
            if visible {
                contents.entry(e.partition).or_default().push((e.offset, e.value.clone()));
            }
        }
        for records in contents.values_mut() {
            records.sort();
        }
        contents
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Isolation {
    ReadCommitted,
    ReadUncommitted,
}

impl Isolation {
    pub fn name(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// A consumer of `isolation` that reports reaching each partition's end (the last stable offset
/// under read_committed, the high watermark otherwise). Its ListOffsets requests (watermarks)
/// carry the same isolation level.
pub fn isolated_consumer(broker: &TestBroker, isolation: Isolation) -> BaseConsumer {
    consumer_config(broker)
        .set("isolation.level", isolation.name())
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("create a consumer")
}

/// A consumer assigned partitions of a topic, and what it has read of them.
pub struct Reader {
    consumer: BaseConsumer,
    topic: String,
    isolation: Isolation,
    seen: Contents,
}

impl Reader {
    pub fn from_beginning(broker: &TestBroker, topic: &str, partitions: i32, isolation: Isolation) -> Reader {
        let starts: Vec<(i32, Offset)> = (0..partitions).map(|p| (p, Offset::Beginning)).collect();
        Reader::from_offsets(broker, topic, &starts, isolation)
    }

    /// Assigned the given partitions only, each from its own start.
    pub fn from_offsets(broker: &TestBroker, topic: &str, starts: &[(i32, Offset)], isolation: Isolation) -> Reader {
        let consumer = isolated_consumer(broker, isolation);
        let mut assignment = TopicPartitionList::new();
        for (partition, start) in starts {
            assignment.add_partition_offset(topic, *partition, *start).expect("a valid offset");
        }
        consumer.assign(&assignment).expect("assign");
        let seen = starts.iter().map(|(p, _)| (*p, Vec::new())).collect();
        Reader { consumer, topic: topic.to_string(), isolation, seen }
    }

    /// Takes in one record or event; returns the partition whose end was reached, if that was it.
    fn poll_once(&mut self) -> Option<i32> {
        match self.consumer.poll(Duration::from_millis(100))? {
            Err(KafkaError::PartitionEOF(partition)) => Some(partition),
            Err(err) => panic!("{} consumer of {}: {err}", self.isolation.name(), self.topic),
            Ok(message) => {
                let value = String::from_utf8(message.payload().unwrap_or_default().to_vec()).expect("UTF-8 value");
                let records = self.seen.entry(message.partition()).or_default();
                if let Some((last, _)) = records.last() {
                    assert!(*last < message.offset(), "{}/{} goes forward", self.topic, message.partition());
                }
                records.push((message.offset(), value));
                None
            }
        }
    }

    /// Reads until every partition has reported its end after its last record.
    pub fn read_to_end(&mut self) -> &Contents {
        let mut at_end = BTreeSet::new();
        let deadline = Instant::now() + RUN_DEADLINE;
        while at_end.len() < self.seen.len() {
            assert!(
                Instant::now() < deadline,
                "{} consumer of {} reached the end of only {at_end:?} within {RUN_DEADLINE:?}",
                self.isolation.name(),
                self.topic
            );
            let before: BTreeMap<i32, usize> = self.seen.iter().map(|(p, records)| (*p, records.len())).collect();
            let end = self.poll_once();
            // A record came: its partition is no longer known to be at its end.
            at_end.retain(|p| self.seen[p].len() == before[p]);
            at_end.extend(end);
        }
        &self.seen
    }

    /// Reads until it has seen `expected` (anything else first fails the test); returns when.
    pub fn read_until(&mut self, expected: &Contents, what: &str) -> Instant {
        let deadline = Instant::now() + RUN_DEADLINE;
        loop {
            let seen = self.seen.values().map(Vec::len).sum::<usize>();
            let wanted = expected.values().map(Vec::len).sum::<usize>();
            if seen >= wanted {
                assert_eq!(&self.seen, expected, "{what}: what the {} consumer read", self.isolation.name());
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "{what}: read {:?} of {expected:?} within {RUN_DEADLINE:?}", self.seen);
            self.poll_once();
        }
    }
}

/// Each partition's end as ListOffsets (latest) gives it under `isolation`.
pub fn end_offsets(consumer: &BaseConsumer, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    (0..partitions)
        .map(|p| {
            let (_, end) = consumer.fetch_watermarks(topic, p, REQUEST_DEADLINE).expect("ListOffsets");
            (p, end)
        })
        .collect()
}

/// Waits until no transaction is open in the topic: the last stable offset of every partition
/// is its high watermark.
pub fn wait_until_stable(broker: &TestBroker, topic: &str, partitions: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    let committed_reader = isolated_consumer(broker, Isolation::ReadCommitted);
    let uncommitted_reader = isolated_consumer(broker, Isolation::ReadUncommitted);
    loop {
        let stable = end_offsets(&committed_reader, topic, partitions);
        let high_watermarks = end_offsets(&uncommitted_reader, topic, partitions);
        if stable == high_watermarks {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} still has open transactions after {limit:?}: stable offsets {stable:?}, high watermarks \
             {high_watermarks:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks, with fresh consumers, that ListOffsets under read_committed ends each partition at
/// its last stable offset (the first record of its earliest open transaction, else the high
/// watermark), and that each isolation level reads exactly what the ledger says.
pub fn check(broker: &TestBroker, topic: &str, partitions: i32, ledger: &Ledger, when: &str) {
    let high_watermarks = end_offsets(&isolated_consumer(broker, Isolation::ReadUncommitted), topic, partitions);
    let mut wanted = high_watermarks.clone();
    wanted.extend(ledger.last_stable_offsets());
    let stable = end_offsets(&isolated_consumer(broker, Isolation::ReadCommitted), topic, partitions);
    assert_eq!(stable, wanted, "{when}: ListOffsets latest under read_committed (high watermarks {high_watermarks:?})");
    for isolation in [Isolation::ReadCommitted, Isolation::ReadUncommitted] {
        let mut reader = Reader::from_beginning(broker, topic, partitions, isolation);
        let read = reader.read_to_end();
        assert_eq!(read, &ledger.expected(isolation, partitions), "{when}: what a {} consumer reads", isolation.name());
    }
}

/// A read_committed consumer that starts inside an aborted transaction (after its first record,
/// up to its last) still skips the rest of it and sees everything else from there: the broker
/// lists the aborted transactions that overlap the fetched range, not only those that begin
/// in it.
pub fn check_reads_from_inside_aborted_transactions(
    broker: &TestBroker,
    topic: &str,
    partitions: i32,
    ledger: &Ledger,
) {
    let expected = ledger.expected(Isolation::ReadCommitted, partitions);
    let starts: BTreeSet<(i32, i64)> = ledger
        .aborted_spans
        .iter()
        .filter(|(_, first, last)| first < last)
        .flat_map(|&(partition, first, last)| [(partition, first + 1), (partition, last)])
        .collect();
    assert!(!starts.is_empty(), "{topic} has an aborted transaction of more than one record");
    for (partition, start) in starts {
        let mut reader =
            Reader::from_offsets(broker, topic, &[(partition, Offset::Offset(start))], Isolation::ReadCommitted);
        let read = &reader.read_to_end()[&partition];
        let wanted: Vec<(i64, String)> = expected[&partition].iter().filter(|(o, _)| *o >= start).cloned().collect();
        assert_eq!(read, &wanted, "a read_committed consumer of {topic}/{partition} from offset {start}");
    }
}
