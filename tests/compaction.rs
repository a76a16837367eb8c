//! Compacted topics end to end, with librdkafka against a real broker: the cleaner keeps
//! the latest value of every key (offsets and order kept, each record exactly as produced),
//! a record without a key is refused (INVALID_RECORD), and SIGKILLs while the cleaner works
//! (many, with SLUICE_LONG_TESTS=1) leave every latest value readable.

#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::clients::{admin, consumer, create_topic, BULK_DEADLINE, REQUEST_DEADLINE};
use common::records::producer;
use common::TestBroker;
use rdkafka::consumer::Consumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const KEYS: usize = 200;
const VALUE_SIZE: usize = 1_000;

fn value(key: usize, round: usize) -> Vec<u8> {
    let mut value = format!("{key}:{round}:").into_bytes();
    value.resize(VALUE_SIZE, b'.');
    value
}

/// Produces `rounds` values for every key; returns offset -> (key, round).
fn produce_rounds(broker: &TestBroker, rounds: std::ops::Range<usize>) -> BTreeMap<i64, (usize, usize)> {
    let producer = producer(broker, &[("linger.ms", "20"), ("compression.type", "none")]);
    for round in rounds {
        for key in 0..KEYS {
            let (k, v) = (key.to_string(), value(key, round));
            let record =
                BaseRecord::with_opaque_to("compacted", key * 1_000_000 + round).key(&k).payload(&v).partition(0);
            producer.send(record).map_err(|(err, _)| err).expect("queue a record");
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(BULK_DEADLINE).expect("every record delivered");
    let reports = std::mem::take(&mut *producer.context().reports.lock().unwrap());
    reports
        .into_iter()
        .map(|(opaque, report)| {
            let (_, offset) = report.unwrap_or_else(|err| panic!("record {opaque} not acknowledged: {err}"));
            (offset, ((opaque / 1_000_000) as usize, (opaque % 1_000_000) as usize))
        })
        .collect()
}

/// Every record of the partition, by offset, as (key, value).
fn read_all(broker: &TestBroker) -> BTreeMap<i64, (usize, Vec<u8>)> {
    let consumer = consumer(broker);
    let (_, high) = consumer.fetch_watermarks("compacted", 0, REQUEST_DEADLINE).expect("watermarks");
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset("compacted", 0, Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + BULK_DEADLINE;
    while out.keys().next_back().is_none_or(|&last| last + 1 < high) {
        assert!(Instant::now() < deadline, "read up to {high} within the deadline");
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = message.expect("consume");
        let key: usize = std::str::from_utf8(message.key().expect("a key")).unwrap().parse().unwrap();
        out.insert(message.offset(), (key, message.payload().unwrap().to_vec()));
    }
    out
}

/// Every record held is what was produced at its offset, and the latest of each key is there.
fn check(held: &BTreeMap<i64, (usize, Vec<u8>)>, produced: &BTreeMap<i64, (usize, usize)>) {
    for (offset, (key, held_value)) in held {
        let &(sent_key, round) = produced.get(offset).unwrap_or_else(|| panic!("offset {offset} was never produced"));
        assert_eq!((*key, held_value.clone()), (sent_key, value(sent_key, round)), "record at {offset}");
    }
    let mut latest = BTreeMap::new();
    for (offset, (key, _)) in produced {
        latest.insert(*key, *offset);
    }
    for (key, offset) in latest {
        assert!(held.contains_key(&offset), "the latest value of key {key} (offset {offset}) is gone");
    }
}

#[test]
fn the_cleaner_keeps_the_latest_value_of_every_key_even_when_killed_mid_clean() {
    let mut broker = TestBroker::start(&["log.cleaner.backoff.ms=100"]);
    create_topic(
        &admin(&broker),
        "compacted",
        1,
        &[("cleanup.policy", "compact"), ("segment.bytes", "1048576"), ("min.cleanable.dirty.ratio", "0.01")],
    );
    // A record without a key is refused, naming why (KIP-467).
    let keyless = producer(&broker, &[("retries", "0"), ("enable.idempotence", "false")]);
    keyless
        .send(BaseRecord::<(), [u8], usize>::with_opaque_to("compacted", 0).payload(&b"no key"[..]).partition(0))
        .unwrap();
    keyless.flush(BULK_DEADLINE).unwrap();
    let refused = keyless.context().reports.lock().unwrap().remove(&0).expect("a report");
    assert_eq!(refused.err().and_then(|e| e.rdkafka_error_code()), Some(RDKafkaErrorCode::InvalidRecord));

    let mut produced = produce_rounds(&broker, 0..20);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let held = read_all(&broker);
        check(&held, &produced);
        if held.len() < produced.len() / 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cleaner did not compact the topic ({} of {} records left)",
            held.len(),
            produced.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // More rounds, and SIGKILLs while the cleaner rewrites them.
    let kills = if std::env::var("SLUICE_LONG_TESTS").is_ok_and(|v| v == "1") { 40 } else { 6 };
    let mut round = 20;
    for kill in 0..kills {
        produced.extend(produce_rounds(&broker, round..round + 5));
        round += 5;
        std::thread::sleep(Duration::from_millis(50 + (kill as u64 * 97) % 400));
        broker.kill9_and_restart();
        check(&read_all(&broker), &produced);
    }
}
