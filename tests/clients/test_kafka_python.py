"""kafka-python (pure Python, its own protocol code) against a real broker: create and describe
topics and configs, produce keyed records with headers under every codec, consume them back by
assignment, and look offsets up (earliest, latest, by time, max timestamp)."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, OffsetSpec, OffsetTimestamp
from kafka.errors import TopicAlreadyExistsError

CODECS = [None, "gzip", "snappy", "lz4", "zstd"]
RECORDS_PER_CODEC = 300
PARTITIONS = 4
# Record timestamps are set explicitly so that the test can check them exactly. They must be
# recent: time-based retention (7 days by default) deletes segments by record timestamp, as in
# Kafka, and would delete a log written with 2023 timestamps while the test reads it.
BASE_TIMESTAMP_MS = (int(time.time()) - 60) * 1000
CONSUME_DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def admin(broker):
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="sluice-test-admin")
    yield client
    client.close()


def make_producer(broker, codec):
    # Idempotent, as kafka-python 3 is by default. linger_ms makes each batch hold many
    # records, so the codec compresses real multi-record batches.
    return KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        client_id="sluice-test-producer",
        acks="all",
        compression_type=codec,
        linger_ms=50,
    )


def make_consumer(broker):
    # No group: partitions are assigned by hand and nothing is committed.
    return KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        client_id="sluice-test-consumer",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


def consume(consumer, expected_count):
    records = []
    deadline = time.monotonic() + CONSUME_DEADLINE_S
    while len(records) < expected_count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    assert len(records) == expected_count, f"consumed {len(records)} of {expected_count} records"
    return records


def create_topic(admin, name, partitions, configs=None):
    admin.create_topics(
        {name: {"num_partitions": partitions, "replication_factor": 1, "configs": configs or {}}},
        wait_for_metadata=True,
    )


def test_create_and_describe_topic(broker, admin):
    topic = broker.topic("kp-describe")
    create_topic(admin, topic, PARTITIONS, {"retention.ms": "3600000", "segment.bytes": "1048576"})
    # No partition count: the broker's num.partitions applies (CreateTopics v4+ sends -1).
    default_topic = broker.topic("kp-default")
    admin.create_topics({default_topic: {}}, wait_for_metadata=True)

    assert {topic, default_topic} <= set(admin.list_topics())
    described = {t["name"]: t for t in admin.describe_topics([topic, default_topic])}
    for name, count in [(topic, PARTITIONS), (default_topic, broker.default_partitions)]:
        assert described[name]["error_code"] == 0
        partitions = sorted(described[name]["partitions"], key=lambda p: p["partition_index"])
        assert [p["partition_index"] for p in partitions] == list(range(count))
        for partition in partitions:
            assert partition["error_code"] == 0
            assert partition["leader_id"] == broker.node_id
            assert partition["replica_nodes"] == [broker.node_id]
            assert partition["isr_nodes"] == [broker.node_id]

    with pytest.raises(TopicAlreadyExistsError):
        create_topic(admin, topic, PARTITIONS)

    cluster = admin.describe_cluster()
    host, port = broker.bootstrap.rsplit(":", 1)
    assert cluster["controller_id"] == broker.node_id
    assert [(b["broker_id"], b["host"], b["port"]) for b in cluster["brokers"]] == [(broker.node_id, host, int(port))]


def test_describe_configs(broker, admin):
    topic = broker.topic("kp-configs")
    create_topic(admin, topic, 1, {"retention.ms": "3600000", "max.message.bytes": "200000"})

    configs = admin.describe_configs([ConfigResource("TOPIC", topic)], config_filter="all")["topic"][topic]
    assert configs["retention.ms"]["value"] == "3600000"
    assert configs["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    assert configs["max.message.bytes"]["value"] == "200000"
    assert configs["cleanup.policy"]["value"] == "delete"
    assert configs["cleanup.policy"]["config_source"] == "DEFAULT_CONFIG"
    assert "segment.bytes" in configs

    # The default filter ("modified") keeps only what the topic overrides.
    modified = admin.describe_configs([ConfigResource("TOPIC", topic)])["topic"][topic]
    assert set(modified) == {"retention.ms", "max.message.bytes"}

    broker_configs = admin.describe_configs(
        [ConfigResource("BROKER", str(broker.node_id))], config_filter="all"
    )["broker"][str(broker.node_id)]
    assert broker_configs["num.partitions"]["value"] == str(broker.default_partitions)
    assert broker_configs["node.id"]["value"] == str(broker.node_id)


def expected_records(codec):
    label = codec or "none"
    records = []
    for i in range(RECORDS_PER_CODEC):
        # 23 distinct keys: each key's records land in one partition, in send order.
        key = f"key-{i % 23}".encode()
        value = f"{label}-{i:05d}-".encode() + b"payload " * (i % 40)
        headers = [("seq", str(i).encode()), ("codec", label.encode()), ("empty", b"")]
        records.append((key, value, headers, BASE_TIMESTAMP_MS + i))
    return records


@pytest.mark.parametrize("codec", CODECS, ids=[c or "none" for c in CODECS])
def test_produce_and_consume(broker, admin, codec):
    topic = broker.topic(f"kp-{codec or 'none'}")
    create_topic(admin, topic, PARTITIONS)
    sent = expected_records(codec)

    producer = make_producer(broker, codec)
    futures = [
        producer.send(topic, key=key, value=value, headers=headers, timestamp_ms=timestamp)
        for key, value, headers, timestamp in sent
    ]
    producer.flush(timeout=30)
    acked = [future.get(timeout=30) for future in futures]
    producer.close(timeout=10)

    expected = defaultdict(list)
    partition_of_key = {}
    for (key, value, headers, timestamp), metadata in zip(sent, acked):
        assert metadata.topic == topic
        # The default partitioner hashes the key: one key, one partition.
        assert partition_of_key.setdefault(key, metadata.partition) == metadata.partition
        expected[metadata.partition].append((metadata.offset, key, value, headers, timestamp))
    assert len(expected) > 1, "records should spread over several partitions"
    for partition, records in expected.items():
        # Offsets are dense from 0 in each partition, in send order.
        assert [r[0] for r in records] == list(range(len(records))), f"partition {partition}"

    consumer = make_consumer(broker)
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    records = consume(consumer, len(sent))
    consumed = defaultdict(list)
    for record in records:
        assert record.topic == topic
        consumed[record.partition].append(
            (record.offset, record.key, record.value, list(record.headers), record.timestamp)
        )
    assert dict(consumed) == dict(expected)
    assert consumer.end_offsets(partitions) == {tp: len(expected.get(tp.partition, [])) for tp in partitions}
    consumer.close(autocommit=False)
    # Batches are stored as sent: this shows the client really used the codec.
    assert set(broker.stored_codecs(topic)) == {codec or "none"}


def test_list_offsets(broker, admin):
    """ListOffsets through the consumer and the admin client, and a fetch that starts in the
    middle of a compressed batch (the broker returns the whole batch; the client skips)."""
    topic = broker.topic("kp-offsets")
    create_topic(admin, topic, 2)
    by_time = TopicPartition(topic, 0)
    max_time = TopicPartition(topic, 1)
    # Partition 0: timestamps rise by a second per record. Partition 1: the largest timestamp
    # sits in the middle, at offset 6, so "max timestamp" differs from "latest".
    times_0 = [BASE_TIMESTAMP_MS + 1000 * i for i in range(10)]
    times_1 = [BASE_TIMESTAMP_MS + 1000 * i for i in range(10)]
    times_1[6] = BASE_TIMESTAMP_MS + 60_000

    producer = make_producer(broker, "gzip")
    for partition, times in [(0, times_0), (1, times_1)]:
        for i, timestamp in enumerate(times):
            producer.send(topic, key=b"k", value=f"v{i}".encode(), partition=partition, timestamp_ms=timestamp)
    producer.flush(timeout=30)
    producer.close(timeout=10)

    consumer = make_consumer(broker)
    assert consumer.beginning_offsets([by_time, max_time]) == {by_time: 0, max_time: 0}
    assert consumer.end_offsets([by_time, max_time]) == {by_time: 10, max_time: 10}
    found = consumer.offsets_for_times({by_time: BASE_TIMESTAMP_MS + 3500})[by_time]
    assert (found.offset, found.timestamp) == (4, BASE_TIMESTAMP_MS + 4000)
    found = consumer.offsets_for_times({by_time: BASE_TIMESTAMP_MS - 1})[by_time]
    assert (found.offset, found.timestamp) == (0, BASE_TIMESTAMP_MS)
    # Nothing at or after this time.
    assert consumer.offsets_for_times({by_time: BASE_TIMESTAMP_MS + 10_000})[by_time] is None

    offsets = admin.list_partition_offsets(
        {by_time: OffsetSpec.EARLIEST, max_time: OffsetSpec.LATEST}
    )
    assert (offsets[by_time].offset, offsets[max_time].offset) == (0, 10)
    offsets = admin.list_partition_offsets(
        {by_time: OffsetTimestamp(BASE_TIMESTAMP_MS + 7000), max_time: OffsetSpec.MAX_TIMESTAMP}
    )
    assert (offsets[by_time].offset, offsets[by_time].timestamp) == (7, BASE_TIMESTAMP_MS + 7000)
    assert (offsets[max_time].offset, offsets[max_time].timestamp) == (6, BASE_TIMESTAMP_MS + 60_000)

    # The ten records of each partition went out in one gzip batch; start inside it.
    consumer.assign([by_time])
    consumer.seek(by_time, 4)
    records = consume(consumer, 6)
    assert [(r.offset, r.value, r.timestamp) for r in records] == [
        (i, f"v{i}".encode(), times_0[i]) for i in range(4, 10)
    ]
    consumer.close(autocommit=False)
