//! Test records and the producing, consuming and checking of them. Each record is a pure
//! function of its sequence number (carried in a `seq` header), so a reader can check every
//! byte, and delivery reports say where the broker acknowledged each one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, Timestamp, TopicPartitionList};

use super::clients::{client_config, consumer, BULK_DEADLINE, REQUEST_DEADLINE};
use super::TestBroker;

#[derive(Debug, PartialEq)]
pub struct TestRecord {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp_ms: i64,
}

/// Record `seq` of a data set tagged `tag`: keys repeat (so each key's records share a
/// partition), values mix compressible text with pseudo-random bytes, and a few values are
/// null or empty, which a broker must keep apart.
pub fn test_record(seq: u64, tag: &str, base_timestamp_ms: i64) -> TestRecord {
    let key = format!("user-{:05}", seq % 7919).into_bytes();
    let value = match seq % 1000 {
        17 => None,
        18 => Some(Vec::new()),
        _ => {
            let mut state = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut value = format!("{tag} record {seq} ").repeat(1 + (seq % 4) as usize).into_bytes();
            for _ in 0..(seq % 97) {
                // xorshift64: cheap bytes that do not compress.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                value.push(state as u8);
            }
            Some(value)
        }
    };
    let mut headers =
        vec![("seq".to_string(), Some(seq.to_be_bytes().to_vec())), ("tag".to_string(), Some(tag.into()))];
    if seq % 3 == 0 {
        headers.push(("empty".to_string(), Some(Vec::new())));
    }
    if seq % 5 == 0 {
        headers.push(("null".to_string(), None));
    }
    TestRecord { key, value, headers, timestamp_ms: base_timestamp_ms + seq as i64 }
}

pub fn owned_headers(record: &TestRecord) -> OwnedHeaders {
    record.headers.iter().fold(OwnedHeaders::new_with_capacity(record.headers.len()), |headers, (key, value)| {
        headers.insert(Header { key, value: value.as_deref() })
    })
}

/// The record a consumer received, in the same shape, and its sequence number.
pub fn received_record(message: &OwnedMessage) -> (u64, TestRecord) {
    let headers: Vec<(String, Option<Vec<u8>>)> = message
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
        .unwrap_or_default();
    let seq = headers
        .iter()
        .find(|(key, _)| key == "seq")
        .and_then(|(_, value)| <[u8; 8]>::try_from(value.as_deref()?).ok())
        .map(u64::from_be_bytes)
        .unwrap_or_else(|| panic!("record at {}/{} has no seq header", message.partition(), message.offset()));
    let timestamp_ms = match message.timestamp() {
        Timestamp::CreateTime(ms) => ms,
        other => panic!("record {seq}: expected a CreateTime timestamp, got {other:?}"),
    };
    let record = TestRecord {
        key: message.key().expect("every record has a key").to_vec(),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
        timestamp_ms,
    };
    (seq, record)
}

/// What the broker said about one record: its (partition, offset), or why it failed.
pub type Delivery = Result<(i32, i64), KafkaError>;

/// Collects delivery reports by sequence number (the delivery opaque).
#[derive(Default)]
pub struct DeliveryLog {
    pub reports: Mutex<BTreeMap<u64, Delivery>>,
    pub acked: AtomicU64,
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let report = match result {
            Ok(message) => {
                self.acked.fetch_add(1, Ordering::SeqCst);
                Ok((message.partition(), message.offset()))
            }
            Err((err, _)) => Err(err.clone()),
        };
        self.reports.lock().unwrap().insert(seq as u64, report);
    }
}

pub fn producer(broker: &TestBroker, settings: &[(&str, &str)]) -> ThreadedProducer<DeliveryLog> {
    let mut config = client_config(broker);
    config.set("acks", "all").set("message.timeout.ms", "60000");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    config.create_with_context(DeliveryLog::default()).expect("create a producer")
}

/// Queues record `seq`, waiting (bounded) while the producer's queue is full.
pub fn send(producer: &ThreadedProducer<DeliveryLog>, topic: &str, seq: u64, record: &TestRecord) {
    let mut base = BaseRecord::with_opaque_to(topic, seq as usize)
        .key(&record.key[..])
        .timestamp(record.timestamp_ms)
        .headers(owned_headers(record));
    base.payload = record.value.as_deref();
    let deadline = Instant::now() + BULK_DEADLINE;
    loop {
        match producer.send(base) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                assert!(Instant::now() < deadline, "the producer queue stayed full for {BULK_DEADLINE:?}");
                base = returned;
                // The producer's own thread drains the queue as the broker acknowledges.
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((err, _)) => panic!("cannot queue record {seq}: {err}"),
        }
    }
}

/// Produces records `0..count` and returns where each was acknowledged; any failed delivery
/// fails the test.
pub fn produce_all(
    broker: &TestBroker,
    topic: &str,
    settings: &[(&str, &str)],
    count: u64,
    tag: &str,
    base_timestamp_ms: i64,
) -> Vec<(i32, i64)> {
    let producer = producer(broker, settings);
    for seq in 0..count {
        send(&producer, topic, seq, &test_record(seq, tag, base_timestamp_ms));
    }
    producer.flush(BULK_DEADLINE).expect("every record delivered within the deadline");
    let reports = std::mem::take(&mut *producer.context().reports.lock().unwrap());
    assert_eq!(reports.len() as u64, count, "a delivery report for every record");
    reports
        .into_iter()
        .map(|(seq, report)| report.unwrap_or_else(|err| panic!("record {seq} was not acknowledged: {err}")))
        .collect()
}

/// Reads every partition of `topic` from the beginning to its high watermark (as it is when
/// the read starts), checking offsets are dense and in order.
pub fn consume_to_end(broker: &TestBroker, topic: &str, partitions: i32) -> Vec<OwnedMessage> {
    let consumer = consumer(broker);
    let mut assignment = TopicPartitionList::new();
    let mut high_watermarks = Vec::new();
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, REQUEST_DEADLINE).expect("ListOffsets");
        assert_eq!(low, 0, "log start offset of {topic}/{partition}");
        high_watermarks.push(high);
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let mut next_offsets = vec![0i64; partitions as usize];
    let mut messages = Vec::new();
    let deadline = Instant::now() + BULK_DEADLINE;
    while next_offsets != high_watermarks {
        assert!(
            Instant::now() < deadline,
            "consumed up to {next_offsets:?} of {high_watermarks:?} within {BULK_DEADLINE:?}"
        );
        let Some(result) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = result.unwrap_or_else(|err| panic!("consume {topic}: {err}"));
        let partition = message.partition() as usize;
        assert_eq!(message.offset(), next_offsets[partition], "offsets of {topic}/{partition} are dense and in order");
        next_offsets[partition] += 1;
        messages.push(message.detach());
    }
    messages
}

/// Reads one partition from `start` up to offset `end` (exclusive), however many records that
/// is; where `start` lands is the caller's to check.
pub fn consume_partition(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    start: Offset,
    end: i64,
) -> Vec<OwnedMessage> {
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, start).unwrap();
    consumer.assign(&assignment).expect("assign");
    let mut messages: Vec<OwnedMessage> = Vec::new();
    let deadline = Instant::now() + BULK_DEADLINE;
    while messages.last().is_none_or(|last| last.offset() + 1 < end) {
        assert!(Instant::now() < deadline, "{topic}/{partition} read up to {end} within {BULK_DEADLINE:?}");
        let Some(result) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = result.unwrap_or_else(|err| panic!("consume {topic}/{partition}: {err}"));
        if let Some(last) = messages.last() {
            assert_eq!(message.offset(), last.offset() + 1, "offsets of {topic}/{partition} are dense and in order");
        }
        messages.push(message.detach());
    }
    messages
}

/// Checks that `messages` are exactly records `0..deliveries.len()`, byte for byte, each at
/// the (partition, offset) its delivery report gave, and in send order within each partition.
pub fn verify_all(messages: &[OwnedMessage], deliveries: &[(i32, i64)], tag: &str, base_timestamp_ms: i64) {
    assert_eq!(messages.len(), deliveries.len(), "records read back");
    let mut seen = vec![false; deliveries.len()];
    let mut last_seq_by_partition: HashMap<i32, u64> = HashMap::new();
    for message in messages {
        let (seq, record) = received_record(message);
        let index = usize::try_from(seq).ok().filter(|&i| i < seen.len());
        let index = index.unwrap_or_else(|| panic!("unexpected record seq {seq}"));
        assert!(!seen[index], "record {seq} read twice");
        seen[index] = true;
        assert_eq!(record, test_record(seq, tag, base_timestamp_ms), "record {seq} read back intact");
        assert_eq!((message.partition(), message.offset()), deliveries[index], "record {seq} where it was acked");
        if let Some(previous) = last_seq_by_partition.insert(message.partition(), seq) {
            assert!(previous < seq, "partition {} keeps send order: {previous} before {seq}", message.partition());
        }
    }
}
