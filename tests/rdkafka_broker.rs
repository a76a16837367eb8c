//! End-to-end tests with librdkafka (the `rdkafka` crate) against a real `sluice` broker
//! process: admin operations, 100k keyed records per compression codec read back byte for
//! byte, ListOffsets by time, long polling, topic auto-creation, and durability across a
//! clean restart and a SIGKILL. Consumers use explicit assignment: consumer groups do not
//! exist yet.

#[allow(dead_code)]
mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::clients::{
    admin, admin_options, all_topics, alter_topic_configs, block_on, consumer, consumer_config, create_topic,
    describe_topic_configs, incremental_alter_configs, now_ms, partition_count, AdminMode, AlterOp, BULK_DEADLINE,
    REQUEST_DEADLINE,
};
use common::records::{
    consume_partition, consume_to_end, produce_all, producer, received_record, send, test_record, verify_all,
};
use common::{run_sluice, TestBroker};
use rdkafka::admin::{ConfigSource, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, Timestamp, TopicPartitionList};

// ---------------------------------------------------------------------------------------
// 1. Admin

#[test]
fn admin_creates_grows_and_deletes_topics() {
    let broker = TestBroker::start(&["num.partitions=2"]);
    let admin = admin(&broker);

    // validate_only checks the request and creates nothing.
    let orders = NewTopic::new("orders", 3, TopicReplication::Fixed(1)).set("retention.ms", "3600000");
    let validated =
        block_on(admin.create_topics([&orders], &admin_options().validate_only(true))).expect("CreateTopics");
    assert_eq!(validated, vec![Ok("orders".to_string())]);
    assert!(!all_topics(admin.inner()).contains(&"orders".to_string()), "validate_only created the topic");

    create_topic(&admin, "orders", 3, &[("retention.ms", "3600000"), ("segment.bytes", "1048576")]);
    assert_eq!(partition_count(admin.inner(), "orders"), Ok(3));

    // CreatePartitions grows a topic and refuses to shrink it.
    let grow = NewPartitions::new("orders", 5);
    let grown = block_on(admin.create_partitions([&grow], &admin_options())).expect("CreatePartitions");
    assert_eq!(grown, vec![Ok("orders".to_string())]);
    assert_eq!(partition_count(admin.inner(), "orders"), Ok(5));
    let shrink = NewPartitions::new("orders", 2);
    let shrunk = block_on(admin.create_partitions([&shrink], &admin_options())).expect("CreatePartitions");
    assert_eq!(shrunk, vec![Err(("orders".to_string(), RDKafkaErrorCode::InvalidPartitions))]);

    // A topic created without a partition count gets num.partitions.
    let defaulted = NewTopic::new("defaulted", -1, TopicReplication::Fixed(-1));
    let created = block_on(admin.create_topics([&defaulted], &admin_options())).expect("CreateTopics");
    assert_eq!(created, vec![Ok("defaulted".to_string())]);
    assert_eq!(partition_count(admin.inner(), "defaulted"), Ok(2));

    let deliveries = produce_all(&broker, "orders", &[("linger.ms", "0")], 10, "orders", now_ms());
    assert_eq!(deliveries.len(), 10);
    let deleted = block_on(admin.delete_topics(&["orders", "no-such-topic"], &admin_options())).expect("DeleteTopics");
    assert_eq!(
        deleted,
        vec![Ok("orders".to_string()), Err(("no-such-topic".to_string(), RDKafkaErrorCode::UnknownTopicOrPartition))]
    );
    let topics = all_topics(admin.inner());
    assert!(!topics.contains(&"orders".to_string()) && topics.contains(&"defaulted".to_string()), "{topics:?}");
    // The name is free again, and the new topic starts empty: nothing of the old one's data.
    create_topic(&admin, "orders", 5, &[]);
    let consumer = consumer(&broker);
    for partition in 0..5 {
        let watermarks = consumer.fetch_watermarks("orders", partition, REQUEST_DEADLINE).expect("watermarks");
        assert_eq!(watermarks, (0, 0), "partition {partition} of the re-created topic is empty");
    }
}

#[test]
fn admin_describes_and_incrementally_alters_configs() {
    let broker = TestBroker::start(&["num.partitions=2", "log.retention.hours=48"]);
    let admin = admin(&broker);
    create_topic(&admin, "orders", 3, &[("retention.ms", "3600000"), ("segment.bytes", "1048576")]);

    let described = describe_topic_configs(&admin, "orders");
    let retention = described.get("retention.ms").expect("retention.ms is described");
    assert_eq!(retention.value.as_deref(), Some("3600000"));
    assert_eq!(retention.source, ConfigSource::DynamicTopic);
    assert_eq!(described.get("segment.bytes").and_then(|e| e.value.as_deref()), Some("1048576"));
    let retention_bytes = described.get("retention.bytes").expect("retention.bytes is described");
    assert!(retention_bytes.is_default, "a config the topic does not set is a default: {retention_bytes:?}");
    let mut missing = block_on(admin.describe_configs([&ResourceSpecifier::Topic("no-such-topic")], &admin_options()))
        .expect("DescribeConfigs");
    // rdkafka 0.39 drops DescribeConfigs' per-resource error code (it always answers Ok), so
    // all a client sees of an unknown topic is that nothing is described.
    let missing = missing.remove(0).map(|resource| resource.entries);
    assert!(missing.as_ref().is_ok_and(Vec::is_empty), "an unknown topic has no configs: {missing:?}");

    // Broker configs reflect what the broker was started with.
    let mut results = block_on(admin.describe_configs([&ResourceSpecifier::Broker(0)], &admin_options()))
        .expect("DescribeConfigs for the broker");
    let broker_configs = results.remove(0).expect("broker 0 is described");
    assert_eq!(broker_configs.get("num.partitions").and_then(|e| e.value.as_deref()), Some("2"));
    assert_eq!(broker_configs.get("log.retention.ms").and_then(|e| e.value.as_deref()), Some("172800000"));

    // IncrementalAlterConfigs: SET changes one key and leaves the others; DELETE reverts to
    // the broker default.
    alter_topic_configs(&admin, "orders", &[("retention.ms", AlterOp::Set, Some("7200000"))])
        .expect("SET retention.ms");
    let described = describe_topic_configs(&admin, "orders");
    assert_eq!(described.get("retention.ms").and_then(|e| e.value.as_deref()), Some("7200000"));
    assert_eq!(described.get("segment.bytes").and_then(|e| e.value.as_deref()), Some("1048576"));
    alter_topic_configs(&admin, "orders", &[("retention.ms", AlterOp::Delete, None)]).expect("DELETE retention.ms");
    let retention = describe_topic_configs(&admin, "orders");
    let retention = retention.get("retention.ms").expect("retention.ms is described");
    assert_eq!(retention.value.as_deref(), Some("172800000"), "back to log.retention.hours=48");
    assert_ne!(retention.source, ConfigSource::DynamicTopic);
    // validate_only checks a change and applies nothing.
    let checked = incremental_alter_configs(
        &admin,
        ResourceSpecifier::Topic("orders"),
        &[("retention.ms", AlterOp::Set, Some("1000"))],
        AdminMode::ValidateOnly,
    );
    assert_eq!(checked, Ok(()));
    let unchecked = incremental_alter_configs(
        &admin,
        ResourceSpecifier::Topic("orders"),
        &[("retention.ms", AlterOp::Set, Some("soon"))],
        AdminMode::ValidateOnly,
    );
    assert_eq!(unchecked.map_err(|(code, _)| code), Err(RDKafkaErrorCode::InvalidConfig));
    let described = describe_topic_configs(&admin, "orders");
    assert_eq!(described.get("retention.ms").and_then(|e| e.value.as_deref()), Some("172800000"));
    let bad = alter_topic_configs(&admin, "orders", &[("retention.ms", AlterOp::Set, Some("soon"))]);
    assert_eq!(bad.map_err(|(code, _)| code), Err(RDKafkaErrorCode::InvalidConfig));
    let missing = alter_topic_configs(&admin, "no-such-topic", &[("retention.ms", AlterOp::Delete, None)]);
    assert_eq!(missing.map_err(|(code, _)| code), Err(RDKafkaErrorCode::UnknownTopicOrPartition));
}

#[test]
fn broker_config_changes_reach_topics_and_survive_a_restart() {
    let mut broker = TestBroker::start(&["log.retention.hours=48"]);
    let admin = admin(&broker);
    create_topic(&admin, "follows", 1, &[]);
    create_topic(&admin, "own", 1, &[("retention.ms", "3600000")]);
    let retention_ms = |resource: ResourceSpecifier<'_>| {
        let mut results = block_on(admin.describe_configs([&resource], &admin_options())).expect("DescribeConfigs");
        let configs = results.remove(0).expect("the resource is described");
        let key = if matches!(resource, ResourceSpecifier::Broker(_)) { "log.retention.ms" } else { "retention.ms" };
        let entry = configs.get(key).unwrap_or_else(|| panic!("{key} is described"));
        (entry.value.clone().unwrap_or_default(), entry.source == ConfigSource::DynamicBroker)
    };
    let alter_broker = |changes: &[(&str, AlterOp, Option<&str>)]| {
        incremental_alter_configs(&admin, ResourceSpecifier::Broker(0), changes, AdminMode::Apply)
    };

    alter_broker(&[("log.retention.ms", AlterOp::Set, Some("7200000"))]).expect("SET log.retention.ms");
    assert_eq!(retention_ms(ResourceSpecifier::Broker(0)), ("7200000".to_string(), true));
    assert_eq!(retention_ms(ResourceSpecifier::Topic("follows")).0, "7200000", "a topic without an override follows");
    assert_eq!(retention_ms(ResourceSpecifier::Topic("own")).0, "3600000", "a topic's own value wins");
    // Keys that need a restart are refused, and nothing changes.
    let refused = alter_broker(&[("num.partitions", AlterOp::Set, Some("5"))]);
    assert_eq!(refused.map_err(|(code, _)| code), Err(RDKafkaErrorCode::InvalidConfig));

    broker.restart();
    assert_eq!(retention_ms(ResourceSpecifier::Broker(0)), ("7200000".to_string(), true), "kept across a restart");
    assert_eq!(retention_ms(ResourceSpecifier::Topic("follows")).0, "7200000");

    alter_broker(&[("log.retention.ms", AlterOp::Delete, None)]).expect("DELETE log.retention.ms");
    assert_eq!(retention_ms(ResourceSpecifier::Broker(0)), ("172800000".to_string(), false), "back to the flag");
    assert_eq!(retention_ms(ResourceSpecifier::Topic("follows")).0, "172800000");
}

#[test]
fn admin_rejects_duplicate_and_invalid_topics() {
    let broker = TestBroker::start(&[]);
    let admin = admin(&broker);
    create_topic(&admin, "taken", 1, &[]);

    let long_name = "x".repeat(250);
    let cases = [
        (NewTopic::new("taken", 1, TopicReplication::Fixed(1)), RDKafkaErrorCode::TopicAlreadyExists),
        (NewTopic::new("bad/name", 1, TopicReplication::Fixed(1)), RDKafkaErrorCode::InvalidTopic),
        (NewTopic::new("..", 1, TopicReplication::Fixed(1)), RDKafkaErrorCode::InvalidTopic),
        (NewTopic::new(&long_name, 1, TopicReplication::Fixed(1)), RDKafkaErrorCode::InvalidTopic),
        (NewTopic::new("replicated", 1, TopicReplication::Fixed(2)), RDKafkaErrorCode::InvalidReplicationFactor),
        (NewTopic::new("no-partitions", 0, TopicReplication::Fixed(1)), RDKafkaErrorCode::InvalidPartitions),
        (
            NewTopic::new("bad-config", 1, TopicReplication::Fixed(1)).set("retention.ms", "forever"),
            RDKafkaErrorCode::InvalidConfig,
        ),
        (
            NewTopic::new("unknown-config", 1, TopicReplication::Fixed(1)).set("no.such.config", "1"),
            RDKafkaErrorCode::InvalidConfig,
        ),
    ];
    for (topic, expected) in &cases {
        let results = block_on(admin.create_topics([topic], &admin_options())).expect("CreateTopics");
        assert_eq!(results, vec![Err((topic.name.to_string(), *expected))], "creating {:?}", topic.name);
    }
    // One bad topic in a request does not stop the good ones.
    let good = NewTopic::new("good", 2, TopicReplication::Fixed(1));
    let results =
        block_on(admin.create_topics([&cases[4].0, &good], &admin_options())).expect("CreateTopics with two topics");
    assert_eq!(
        results,
        vec![Err(("replicated".to_string(), RDKafkaErrorCode::InvalidReplicationFactor)), Ok("good".to_string())]
    );
    let mut topics = all_topics(admin.inner());
    topics.sort();
    assert_eq!(topics, ["good", "taken"], "only the valid topics exist");
}

// ---------------------------------------------------------------------------------------
// 2. Produce and fetch: 100k keyed records with headers per codec, size limits, batches

const BULK_RECORDS: u64 = 100_000;
const BULK_PARTITIONS: i32 = 8;

fn round_trip_100k(codec: &str) {
    let broker = TestBroker::start(&[]);
    let topic = format!("bulk-{codec}");
    create_topic(&admin(&broker), &topic, BULK_PARTITIONS, &[]);
    // In the past, so no timestamp is in the future; spaced 1 ms apart by seq.
    let base_timestamp_ms = now_ms() - 2 * BULK_RECORDS as i64;
    let started = Instant::now();
    let settings = [
        ("compression.type", codec),
        ("linger.ms", "20"),
        ("batch.num.messages", "10000"),
        ("batch.size", "1000000"),
        ("queue.buffering.max.messages", "200000"),
    ];
    let deliveries = produce_all(&broker, &topic, &settings, BULK_RECORDS, codec, base_timestamp_ms);
    let produced = started.elapsed();
    let used: BTreeSet<i32> = deliveries.iter().map(|(p, _)| *p).collect();
    assert_eq!(used.len(), BULK_PARTITIONS as usize, "keys spread over every partition");
    let messages = consume_to_end(&broker, &topic, BULK_PARTITIONS);
    verify_all(&messages, &deliveries, codec, base_timestamp_ms);
    eprintln!("{codec}: produced {BULK_RECORDS} records in {produced:?}, total {:?}", started.elapsed());
}

#[test]
fn hundred_thousand_records_round_trip_uncompressed() {
    round_trip_100k("none");
}

#[test]
fn hundred_thousand_records_round_trip_gzip() {
    round_trip_100k("gzip");
}

#[test]
fn hundred_thousand_records_round_trip_snappy() {
    round_trip_100k("snappy");
}

#[test]
fn hundred_thousand_records_round_trip_lz4() {
    round_trip_100k("lz4");
}

#[test]
fn hundred_thousand_records_round_trip_zstd() {
    round_trip_100k("zstd");
}

#[test]
fn oversized_batch_is_refused_and_the_topic_keeps_working() {
    let broker = TestBroker::start(&[]);
    create_topic(&admin(&broker), "small", 1, &[("max.message.bytes", "2048")]);
    let producer = producer(&broker, &[("linger.ms", "0")]);
    let mut big = test_record(0, "small", now_ms());
    big.value = Some(vec![7; 10_000]);
    send(&producer, "small", 0, &big);
    producer.flush(REQUEST_DEADLINE).expect("the delivery report arrives");
    send(&producer, "small", 1, &test_record(1, "small", now_ms()));
    producer.flush(REQUEST_DEADLINE).expect("the delivery report arrives");
    let reports = producer.context().reports.lock().unwrap().clone();
    assert_eq!(
        reports.get(&0),
        Some(&Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))),
        "a batch over max.message.bytes is refused"
    );
    assert_eq!(reports.get(&1).map(Result::is_ok), Some(true), "a small record after it is accepted: {reports:?}");
    let watermarks = consumer(&broker).fetch_watermarks("small", 0, REQUEST_DEADLINE).expect("watermarks");
    assert_eq!(watermarks, (0, 1), "only the accepted record is stored");
}

#[test]
fn fetch_returns_whole_batches_from_any_offset() {
    let broker = TestBroker::start(&[]);
    create_topic(&admin(&broker), "batches", 1, &[]);
    // Ten lz4 batches of 100 records: librdkafka closes a batch at batch.num.messages.
    let settings = [("linger.ms", "1000"), ("batch.num.messages", "100"), ("compression.type", "lz4")];
    let base_timestamp_ms = now_ms() - 10_000;
    let deliveries = produce_all(&broker, "batches", &settings, 1000, "batches", base_timestamp_ms);
    let check = |messages: &[OwnedMessage], first: i64| {
        assert_eq!(messages.first().map(Message::offset), Some(first), "the first record read");
        for message in messages {
            let (seq, record) = received_record(message);
            assert_eq!(record, test_record(seq, "batches", base_timestamp_ms), "record {seq} intact");
            assert_eq!((message.partition(), message.offset()), deliveries[seq as usize], "record {seq} in place");
        }
    };

    // From the middle of the third batch, with a partition fetch size far below one batch:
    // the broker must still return the whole batch holding the offset (KIP-74), and the
    // client skips the records before it.
    let tiny: BaseConsumer =
        consumer_config(&broker).set("max.partition.fetch.bytes", "1").create().expect("create a consumer");
    check(&consume_partition(&tiny, "batches", 0, Offset::Offset(250), 1000), 250);

    // An offset past the end is OFFSET_OUT_OF_RANGE, and the client resets to the earliest.
    let resetting: BaseConsumer =
        consumer_config(&broker).set("auto.offset.reset", "earliest").create().expect("create a consumer");
    check(&consume_partition(&resetting, "batches", 0, Offset::Offset(5000), 1000), 0);
}

#[test]
fn log_append_time_topics_stamp_the_broker_clock() {
    let broker = TestBroker::start(&[]);
    let admin = admin(&broker);
    create_topic(&admin, "stamped", 1, &[("message.timestamp.type", "LogAppendTime")]);
    // CreateTime in 1970, which the broker must replace.
    let create_time_ms = 1_000;
    let before_ms = now_ms();
    let settings = [("linger.ms", "5"), ("compression.type", "zstd")];
    let deliveries = produce_all(&broker, "stamped", &settings, 1000, "stamped", create_time_ms);
    let after_ms = now_ms();
    let messages = consume_partition(&consumer(&broker), "stamped", 0, Offset::Beginning, 1000);
    assert_eq!(messages.len(), deliveries.len());
    for message in &messages {
        // One partition, no retries: records are stored in the order they were sent.
        let seq = message.offset() as u64;
        assert_eq!(deliveries[seq as usize], (0, message.offset()), "record {seq} in place");
        let expected = test_record(seq, "stamped", create_time_ms);
        match message.timestamp() {
            Timestamp::LogAppendTime(ms) => {
                assert!(
                    (before_ms..=after_ms).contains(&ms),
                    "record {seq} stamped at {ms}, produced in [{before_ms}, {after_ms}]"
                )
            }
            other => panic!("record {seq}: expected a LogAppendTime timestamp, got {other:?}"),
        }
        assert_eq!(message.key(), Some(&expected.key[..]), "record {seq} key");
        assert_eq!(message.payload(), expected.value.as_deref(), "record {seq} value");
    }
    // ListOffsets by time goes by the append time, not the producer's.
    let consumer = consumer(&broker);
    assert_eq!(offset_for_time(&consumer, "stamped", 0, create_time_ms + 500), Offset::Offset(0));
    assert_eq!(offset_for_time(&consumer, "stamped", 0, after_ms + 1), Offset::End);
}

/// The earliest offset of a partition, from ListOffsets.
fn earliest_offset(consumer: &BaseConsumer, topic: &str) -> i64 {
    consumer.fetch_watermarks(topic, 0, REQUEST_DEADLINE).expect("watermarks").0
}

#[test]
fn retention_runs_every_check_interval_and_old_timestamps_stay_readable_until_then() {
    // A producer stamping its records in 1970 (CreateTime): Kafka keeps them until the next
    // retention check (every 5 minutes by default), so a consumer reading soon sees them all.
    let broker = TestBroker::start(&[]);
    let deliveries = produce_all(&broker, "from-1970", &[("linger.ms", "0")], 20, "old", 1_000);
    std::thread::sleep(Duration::from_secs(3));
    let messages = consume_partition(&consumer(&broker), "from-1970", 0, Offset::Beginning, 20);
    verify_all(&messages, &deliveries, "old", 1_000);
    assert_eq!(earliest_offset(&consumer(&broker), "from-1970"), 0);

    // With a short check interval, expired records go, active segment included.
    let broker = TestBroker::start(&["log.retention.check.interval.ms=300"]);
    create_topic(&admin(&broker), "expiring", 1, &[("retention.ms", "60000")]);
    produce_all(&broker, "expiring", &[("linger.ms", "0")], 20, "old", 1_000);
    let consumer = consumer(&broker);
    let deadline = Instant::now() + Duration::from_secs(30);
    while earliest_offset(&consumer, "expiring") < 20 {
        assert!(Instant::now() < deadline, "retention never deleted the expired records");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The log keeps its offsets: the next record lands at 20 and is readable.
    produce_all(&broker, "expiring", &[], 1, "new", now_ms());
    let messages = consume_partition(&consumer, "expiring", 0, Offset::Beginning, 1);
    assert_eq!(messages[0].offset(), 20);
}

/// Sends `count` records to partition 0 of `topic` and returns each one's delivery result.
fn deliveries(
    broker: &TestBroker,
    topic: &str,
    settings: &[(&str, &str)],
    count: u64,
    timestamp_ms: i64,
) -> Vec<common::records::Delivery> {
    let producer = producer(broker, settings);
    for seq in 0..count {
        send(&producer, topic, seq, &test_record(seq, "cfg", timestamp_ms));
    }
    producer.flush(BULK_DEADLINE).expect("every record reported within the deadline");
    let reports = std::mem::take(&mut *producer.context().reports.lock().unwrap());
    reports.into_values().collect()
}

fn error_code(delivery: &common::records::Delivery) -> Option<RDKafkaErrorCode> {
    delivery.as_ref().err().and_then(KafkaError::rdkafka_error_code)
}

#[test]
fn topic_configs_with_an_effect_do_what_kafka_does() {
    let mut broker = TestBroker::start(&[]);
    let admin = admin(&broker);
    create_topic(&admin, "recompressed", 1, &[("compression.type", "zstd"), ("compression.zstd.level", "5")]);
    create_topic(&admin, "guarded", 1, &[("min.insync.replicas", "2")]);
    create_topic(&admin, "recent", 1, &[("message.timestamp.before.max.ms", "3600000")]);
    create_topic(&admin, "preallocated", 1, &[("preallocate", "true"), ("segment.bytes", "1048576")]);

    // compression.type: what producers send uncompressed or with lz4 is stored as zstd and
    // read back unchanged.
    let base = now_ms();
    let sent =
        produce_all(&broker, "recompressed", &[("compression.type", "none"), ("linger.ms", "5")], 300, "z", base);
    let messages = consume_partition(&consumer(&broker), "recompressed", 0, Offset::Beginning, 300);
    verify_all(&messages, &sent, "z", base);

    // min.insync.replicas=2 on one node: acks=all cannot be met, acks=1 can.
    let strict = [("acks", "all"), ("enable.idempotence", "false"), ("retries", "0")];
    let refused = deliveries(&broker, "guarded", &strict, 3, now_ms());
    assert!(refused.iter().all(|d| error_code(d) == Some(RDKafkaErrorCode::NotEnoughReplicas)), "{refused:?}");
    let relaxed = [("acks", "1"), ("enable.idempotence", "false")];
    assert!(deliveries(&broker, "guarded", &relaxed, 3, now_ms()).iter().all(Result::is_ok));

    // message.timestamp.before.max.ms: a record from 1970 is refused, a recent one stored.
    let old = deliveries(&broker, "recent", &strict, 1, 1_000);
    assert_eq!(error_code(&old[0]), Some(RDKafkaErrorCode::InvalidTimestamp), "{old:?}");
    assert!(deliveries(&broker, "recent", &strict, 1, now_ms()).iter().all(Result::is_ok));
    // And the broker's default message.timestamp.after.max.ms (an hour, as in Kafka 4).
    let future = deliveries(&broker, "recent", &strict, 1, now_ms() + 2 * 3_600_000);
    assert_eq!(error_code(&future[0]), Some(RDKafkaErrorCode::InvalidTimestamp), "{future:?}");

    // preallocate: the active segment's file is allocated to segment.bytes up front.
    produce_all(&broker, "preallocated", &[], 1, "p", now_ms());
    let allocated: u64 = std::fs::read_dir(broker.data_dir().join("preallocated-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(p).unwrap()) * 512)
        .sum();
    assert!(allocated >= 1 << 20, "the preallocated segment takes {allocated} bytes");

    broker.stop();
    let dir = broker.data_dir().join("recompressed-0");
    let dump =
        run_sluice(&["log", "dump", dir.to_str().expect("utf-8 path")], REQUEST_DEADLINE).success("sluice log dump");
    let batches: Vec<&str> = dump.stdout.lines().filter(|l| l.starts_with("baseOffset")).collect();
    assert!(!batches.is_empty(), "{}", dump.stdout);
    assert!(batches.iter().all(|l| l.contains("compression: zstd")), "{}", dump.stdout);
}

// ---------------------------------------------------------------------------------------
// 3. ListOffsets

/// The first offset whose timestamp is at least `target`, as Kafka defines the lookup.
fn first_offset_at_or_after(timestamps: &[i64], target: i64) -> Offset {
    timestamps.iter().position(|&t| t >= target).map_or(Offset::End, |i| Offset::Offset(i as i64))
}

fn offset_for_time(consumer: &BaseConsumer, topic: &str, partition: i32, timestamp: i64) -> Offset {
    let mut query = TopicPartitionList::new();
    query.add_partition_offset(topic, partition, Offset::Offset(timestamp)).unwrap();
    let answer = consumer.offsets_for_times(query, REQUEST_DEADLINE).expect("ListOffsets by timestamp");
    let element = answer.find_partition(topic, partition).expect("the partition is answered");
    element.error().unwrap_or_else(|err| panic!("ListOffsets {topic}/{partition} at {timestamp}: {err}"));
    element.offset()
}

#[test]
fn list_offsets_by_timestamp_and_watermarks() {
    let broker = TestBroker::start(&[]);
    let admin = admin(&broker);
    // Small segments and a dense index, so lookups cross segments and index entries.
    create_topic(&admin, "times", 2, &[("internal.segment.bytes", "8192"), ("index.interval.bytes", "512")]);
    let base = now_ms() - 1_000_000;
    // Partition 0: increasing timestamps 10 ms apart, in batches of 100.
    let ordered: Vec<i64> = (0..1000).map(|i| base + 10 * i).collect();
    // Partition 1: out of order, one record per batch.
    let unordered: Vec<i64> = [100, 300, 200, 700, 400, 50, 700, 900].iter().map(|t| base + t).collect();
    let producer = producer(&broker, &[("linger.ms", "0")]);
    let mut sent = 0;
    for (partition, timestamps, batch) in [(0, &ordered, 100), (1, &unordered, 1)] {
        for chunk in timestamps.chunks(batch) {
            for &timestamp in chunk {
                sent += 1;
                let mut record = BaseRecord::with_opaque_to("times", sent).partition(partition).timestamp(timestamp);
                record.payload = Some(&b"tick"[..]);
                producer.send::<(), [u8]>(record).map_err(|(err, _)| err).expect("queue a record");
            }
            producer.flush(REQUEST_DEADLINE).expect("delivered");
        }
    }
    let reports = producer.context().reports.lock().unwrap().clone();
    assert!(reports.len() == sent && reports.values().all(Result::is_ok), "every record acknowledged: {reports:?}");

    let consumer = consumer(&broker);
    assert_eq!(consumer.fetch_watermarks("times", 0, REQUEST_DEADLINE).expect("watermarks"), (0, 1000));
    assert_eq!(consumer.fetch_watermarks("times", 1, REQUEST_DEADLINE).expect("watermarks"), (0, 8));

    let mut targets: Vec<i64> = vec![0, base - 1, base, base + 1, base + 9_989, base + 9_990, base + 9_991];
    targets.extend((0..1000).step_by(37).flat_map(|i| [base + 10 * i, base + 10 * i + 3]));
    for target in targets {
        let expected = first_offset_at_or_after(&ordered, target);
        assert_eq!(offset_for_time(&consumer, "times", 0, target), expected, "partition 0 at {target}");
    }
    for delta in [0, 50, 51, 100, 150, 250, 300, 301, 650, 700, 701, 899, 900, 901] {
        let target = base + delta;
        let expected = first_offset_at_or_after(&unordered, target);
        assert_eq!(offset_for_time(&consumer, "times", 1, target), expected, "partition 1 at base+{delta}");
    }

    // After DeleteRecords the earliest offset moves, and a time before everything answers
    // with the new log start, never an offset that is gone.
    let mut delete = TopicPartitionList::new();
    delete.add_partition_offset("times", 0, Offset::Offset(510)).unwrap();
    let deleted = block_on(admin.delete_records(&delete, &admin_options())).expect("DeleteRecords");
    let element = deleted.find_partition("times", 0).expect("partition 0 answered");
    assert_eq!((element.error(), element.offset()), (Ok(()), Offset::Offset(510)));
    assert_eq!(consumer.fetch_watermarks("times", 0, REQUEST_DEADLINE).expect("watermarks"), (510, 1000));
    assert_eq!(offset_for_time(&consumer, "times", 0, base), Offset::Offset(510));
    assert_eq!(offset_for_time(&consumer, "times", 0, base + 6_001), Offset::Offset(601));
}

// ---------------------------------------------------------------------------------------
// 4. Long poll

/// Counts the consumer's Fetch requests and in-flight requests from librdkafka's statistics.
#[derive(Default)]
struct FetchStats {
    fetch_requests: AtomicI64,
    in_flight: AtomicI64,
    snapshots: AtomicU64,
}

impl ClientContext for FetchStats {
    fn stats(&self, statistics: Statistics) {
        let brokers = statistics.brokers.values().filter(|b| b.nodeid >= 0);
        let (fetches, in_flight) = brokers.fold((0, 0), |(fetches, in_flight), b| {
            (fetches + b.req.get("Fetch").copied().unwrap_or(0), in_flight + b.waitresp_cnt)
        });
        self.fetch_requests.store(fetches, Ordering::SeqCst);
        self.in_flight.store(in_flight, Ordering::SeqCst);
        self.snapshots.fetch_add(1, Ordering::SeqCst);
    }
}

impl ConsumerContext for FetchStats {}

#[test]
fn long_poll_wakes_on_produce() {
    const FETCH_WAIT_MAX_MS: u64 = 5000;
    let broker = TestBroker::start(&[]);
    create_topic(&admin(&broker), "waiting", 1, &[]);
    let consumer: BaseConsumer<FetchStats> = consumer_config(&broker)
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string())
        .set("fetch.min.bytes", "1")
        .set("statistics.interval.ms", "10")
        .create_with_context(FetchStats::default())
        .expect("create a consumer");
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset("waiting", 0, Offset::Beginning).unwrap();
    consumer.assign(&assignment).expect("assign");
    let producer = producer(&broker, &[("linger.ms", "0")]);

    let base_timestamp_ms = now_ms();
    for seq in 0..4u64 {
        // Watch the idle consumer for a second: its fetch must be parked at the broker (one
        // request in flight, at most one new Fetch sent), and nothing may arrive.
        let fetches_before = consumer.context().fetch_requests.load(Ordering::SeqCst);
        let window = Instant::now() + Duration::from_secs(1);
        while Instant::now() < window {
            if let Some(message) = consumer.poll(Duration::from_millis(10)) {
                panic!("nothing was produced, yet the consumer got {:?}", message.map(|m| m.offset()));
            }
        }
        let snapshots = consumer.context().snapshots.load(Ordering::SeqCst);
        assert!(snapshots > 0, "librdkafka statistics arrive (statistics.interval.ms=10)");
        let fetches = consumer.context().fetch_requests.load(Ordering::SeqCst);
        if seq > 0 {
            assert!(
                fetches - fetches_before <= 1,
                "an empty fetch waits: {} Fetch requests in 1 s",
                fetches - fetches_before
            );
        }
        assert_eq!(consumer.context().in_flight.load(Ordering::SeqCst), 1, "one fetch is waiting at the broker");

        let record = test_record(seq, "long-poll", base_timestamp_ms);
        let produced_at = Instant::now();
        send(&producer, "waiting", seq, &record);
        let deadline = produced_at + Duration::from_millis(2 * FETCH_WAIT_MAX_MS);
        let message = loop {
            assert!(Instant::now() < deadline, "record {seq} never arrived");
            if let Some(result) = consumer.poll(Duration::from_millis(10)) {
                break result.expect("consume").detach();
            }
        };
        let latency = produced_at.elapsed();
        assert_eq!(received_record(&message), (seq, record));
        // Without a wake-up the parked fetch would answer only when its 5 s wait ran out.
        assert!(
            latency < Duration::from_millis(2500),
            "record {seq} arrived {latency:?} after it was produced; the waiting fetch was not woken"
        );
        eprintln!("record {seq}: produce to consume {latency:?}");
    }
}

// ---------------------------------------------------------------------------------------
// 5. Auto-create

#[test]
fn auto_create_gives_new_topics_num_partitions() {
    let broker = TestBroker::start(&["num.partitions=3"]);
    let producer = producer(&broker, &[("linger.ms", "0")]);
    // Producing to an unknown topic creates it.
    send(&producer, "produced-into-being", 0, &test_record(0, "auto", now_ms()));
    producer.flush(REQUEST_DEADLINE).expect("delivered");
    let report = producer.context().reports.lock().unwrap().get(&0).cloned();
    assert!(matches!(report, Some(Ok(_))), "the record to a new topic is acknowledged: {report:?}");
    assert_eq!(partition_count(producer.client(), "produced-into-being"), Ok(3));
    // So does a Metadata request that allows it (a producer's does).
    assert_eq!(partition_count(producer.client(), "looked-up"), Ok(3));
    // A consumer's Metadata request does not allow it, and nothing is created.
    let consumer = consumer(&broker);
    assert_eq!(partition_count(consumer.client(), "only-read"), Err(RDKafkaErrorCode::UnknownTopicOrPartition));
    // A consumer with a group.id looks its coordinator up, which creates the internal
    // __consumer_offsets (as in Kafka); only user topics count here.
    let mut topics: Vec<String> = all_topics(consumer.client()).into_iter().filter(|t| !t.starts_with("__")).collect();
    topics.sort();
    assert_eq!(topics, ["looked-up", "produced-into-being"]);
}

#[test]
fn auto_create_disabled_creates_nothing() {
    let broker = TestBroker::start(&["auto.create.topics.enable=false"]);
    // librdkafka fails records to a topic the broker says does not exist once
    // topic.metadata.propagation.max.ms has passed (30 s by default).
    let settings = [("linger.ms", "0"), ("topic.metadata.propagation.max.ms", "200")];
    let producer = producer(&broker, &settings);
    assert_eq!(partition_count(producer.client(), "looked-up"), Err(RDKafkaErrorCode::UnknownTopicOrPartition));
    send(&producer, "never-created", 0, &test_record(0, "auto", now_ms()));
    producer.flush(REQUEST_DEADLINE).expect("the delivery report arrives");
    let report = producer.context().reports.lock().unwrap().get(&0).cloned();
    let unknown = |code| matches!(code, RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic);
    assert!(
        matches!(report, Some(Err(KafkaError::MessageProduction(code))) if unknown(code)),
        "producing to a missing topic fails as unknown: {report:?}"
    );
    assert!(all_topics(producer.client()).is_empty(), "no topic was created");
}

// ---------------------------------------------------------------------------------------
// 6. Durability across restarts

#[test]
fn records_and_topics_survive_a_clean_restart() {
    let mut broker = TestBroker::start(&[]);
    let admin = admin(&broker);
    create_topic(&admin, "kept", 4, &[("retention.ms", "86400000"), ("segment.bytes", "1048576")]);
    alter_topic_configs(&admin, "kept", &[("retention.ms", AlterOp::Set, Some("172800000"))])
        .expect("SET retention.ms");
    let base_timestamp_ms = now_ms() - 100_000;
    let settings = [("linger.ms", "10")];
    let deliveries = produce_all(&broker, "kept", &settings, 20_000, "kept", base_timestamp_ms);

    broker.restart();
    let log = broker.log();
    assert!(log.contains("shut down cleanly"), "the broker logged a clean shutdown");
    assert!(!log.contains("unclean shutdown"), "after a clean shutdown no log needs recovery");
    assert_eq!(partition_count(admin.inner(), "kept"), Ok(4));
    // Both the config given at creation and the one altered later are kept.
    let configs = describe_topic_configs(&admin, "kept");
    assert_eq!(configs.get("segment.bytes").and_then(|e| e.value.as_deref()), Some("1048576"));
    assert_eq!(configs.get("retention.ms").and_then(|e| e.value.as_deref()), Some("172800000"));
    let messages = consume_to_end(&broker, "kept", 4);
    verify_all(&messages, &deliveries, "kept", base_timestamp_ms);

    // Appends after the restart continue each partition's offsets.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for (partition, offset) in &deliveries {
        let end = ends.entry(*partition).or_default();
        *end = (*end).max(offset + 1);
    }
    let more = producer(&broker, &[("linger.ms", "0")]);
    for partition in 0..4 {
        let mut record = BaseRecord::with_opaque_to("kept", partition as usize).partition(partition);
        record.payload = Some(&b"after restart"[..]);
        more.send::<(), [u8]>(record).map_err(|(err, _)| err).expect("queue a record");
    }
    more.flush(REQUEST_DEADLINE).expect("delivered");
    for (partition, report) in more.context().reports.lock().unwrap().iter() {
        let expected = (*partition as i32, ends[&(*partition as i32)]);
        assert_eq!(report.as_ref().ok(), Some(&expected), "the next offset after a restart");
    }
}

#[test]
fn acknowledged_records_survive_sigkill_with_fsync_on_every_append() {
    const PARTITIONS: i32 = 4;
    let mut broker = TestBroker::start(&["log.flush.interval.messages=1"]);
    create_topic(&admin(&broker), "durable", PARTITIONS, &[]);
    let base_timestamp_ms = now_ms() - 1_000_000;
    let producer = Arc::new(producer(
        &broker,
        &[("linger.ms", "2"), ("queue.buffering.max.messages", "20000"), ("message.timeout.ms", "30000")],
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (producer, stop) = (producer.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seq = 0;
            // Bounded even if the test's own stop never comes.
            while !stop.load(Ordering::SeqCst) && seq < 2_000_000 {
                send(&producer, "durable", seq, &test_record(seq, "durable", base_timestamp_ms));
                seq += 1;
            }
            seq
        })
    };
    let wait_for_acks = |at_least: u64| {
        let deadline = Instant::now() + BULK_DEADLINE;
        while producer.context().acked.load(Ordering::SeqCst) < at_least {
            assert!(Instant::now() < deadline, "{at_least} records acknowledged within {BULK_DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for_acks(20_000);
    let acked_before_kill = producer.context().acked.load(Ordering::SeqCst);
    broker.kill9_and_restart();
    // The producer reconnects and carries on; then it stops and drains.
    wait_for_acks(acked_before_kill + 5_000);
    stop.store(true, Ordering::SeqCst);
    let sent = sender.join().expect("the sending thread");
    producer.flush(BULK_DEADLINE).expect("every delivery report within the deadline");
    assert!(
        broker.log().contains("recovered log after an unclean shutdown"),
        "the restarted broker recovered its logs after the SIGKILL"
    );

    let reports = std::mem::take(&mut *producer.context().reports.lock().unwrap());
    assert_eq!(reports.len() as u64, sent, "a delivery report for every record sent");
    let acked: Vec<(u64, (i32, i64))> =
        reports.iter().filter_map(|(seq, report)| report.as_ref().ok().map(|at| (*seq, *at))).collect();
    let messages = consume_to_end(&broker, "durable", PARTITIONS);
    let stored: HashMap<(i32, i64), &OwnedMessage> =
        messages.iter().map(|m| ((m.partition(), m.offset()), m)).collect();
    let mut lost = Vec::new();
    for (seq, at) in &acked {
        match stored.get(at) {
            Some(message) => {
                let (stored_seq, record) = received_record(message);
                assert_eq!(stored_seq, *seq, "the record acknowledged at {at:?}");
                assert_eq!(record, test_record(*seq, "durable", base_timestamp_ms), "record {seq} intact");
            }
            None => lost.push((*seq, *at)),
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged records are missing, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // Whatever else is stored (sent but unacknowledged, or retried) is still a record we sent.
    for message in &messages {
        let (seq, record) = received_record(message);
        assert_eq!(record, test_record(seq, "durable", base_timestamp_ms), "stored record {seq} intact");
    }
    eprintln!(
        "sent {sent}, acknowledged {} ({acked_before_kill} before the kill), failed {}, stored {}",
        acked.len(),
        reports.len() - acked.len(),
        messages.len()
    );
}

#[test]
fn the_rdkafka_admin_alter_configs_replaces_a_topics_configs() {
    // rdkafka's AdminClient::alter_configs speaks the legacy AlterConfigs, which replaces the
    // resource's configs as a whole: keys not listed go back to their defaults.
    use rdkafka::admin::{AlterConfig, OwnedResourceSpecifier};
    let broker = TestBroker::start(&[]);
    let admin = admin(&broker);
    create_topic(&admin, "legacy", 1, &[("retention.ms", "3600000")]);
    let change = AlterConfig::new(ResourceSpecifier::Topic("legacy")).set("segment.bytes", "1048576");
    let results = block_on(admin.alter_configs([&change], &admin_options())).expect("AlterConfigs");
    assert_eq!(results, vec![Ok(OwnedResourceSpecifier::Topic("legacy".into()))]);
    let described = describe_topic_configs(&admin, "legacy");
    assert_eq!(described.get("segment.bytes").and_then(|e| e.value.as_deref()), Some("1048576"));
    let retention = described.get("retention.ms").expect("retention.ms is described");
    assert!(retention.is_default, "a key not listed reverts to its default: {retention:?}");

    // A bad value is refused. rdkafka 0.39 drops AlterConfigs' per-resource error (it always
    // answers Ok), so what a client can see is that nothing changed.
    let bad = AlterConfig::new(ResourceSpecifier::Topic("legacy")).set("segment.bytes", "tiny");
    block_on(admin.alter_configs([&bad], &admin_options())).expect("AlterConfigs");
    let described = describe_topic_configs(&admin, "legacy");
    assert_eq!(described.get("segment.bytes").and_then(|e| e.value.as_deref()), Some("1048576"), "and changes nothing");
}
