"""confluent-kafka (librdkafka 2.16) against a real broker: create and describe topics, describe
and alter configs, produce keyed records with headers under every codec, consume them back by
assignment, and look offsets up (watermarks, by time, AdminClient list_offsets)."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
RECORDS_PER_CODEC = 300
PARTITIONS = 4
# Recent, because time-based retention deletes segments by record timestamp (as in Kafka).
BASE_TIMESTAMP_MS = (int(time.time()) - 60) * 1000
CONSUME_DEADLINE_S = 30.0
TIMEOUT_S = 15


class Closable:
    """AdminClient has no close(): it lives until its last reference goes, and pytest keeps
    the last test's arguments until after the module's broker has stopped, so the client
    would log "Connection refused" while reconnecting. Dropping it here closes it in time."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def close(self):
        self._client = None


@pytest.fixture(scope="module")
def admin(broker):
    client = Closable(AdminClient({"bootstrap.servers": broker.bootstrap, "client.id": "sluice-test-admin"}))
    yield client
    client.close()


def create_topic(admin, name, partitions, config=None):
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=TIMEOUT_S,
    )
    futures[name].result(timeout=TIMEOUT_S)


def make_producer(broker, codec):
    # linger.ms makes each batch hold many records, so the codec compresses real batches.
    return Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "client.id": "sluice-test-producer",
            "acks": "all",
            "compression.type": codec,
            "linger.ms": 50,
        }
    )


def make_consumer(broker):
    # The Python binding insists on a group.id, but with assign() and no commits librdkafka never
    # talks to a group coordinator (which this broker does not have yet).
    return Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "client.id": "sluice-test-consumer",
            "group.id": "sluice-test-unused",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
    )


def consume(consumer, expected_count):
    messages = []
    deadline = time.monotonic() + CONSUME_DEADLINE_S
    while len(messages) < expected_count and time.monotonic() < deadline:
        # consume() waits for the full count or the timeout, so ask for exactly what is left.
        for message in consumer.consume(num_messages=expected_count - len(messages), timeout=0.1):
            assert message.error() is None, message.error()
            messages.append(message)
    assert len(messages) == expected_count, f"consumed {len(messages)} of {expected_count} messages"
    return messages


def produce(producer, topic, records):
    """Produces (key, value, headers, timestamp, partition) tuples; returns their delivery
    reports as (partition, offset) in send order."""
    reports = [None] * len(records)

    def delivered(index):
        def callback(err, message):
            reports[index] = err if err is not None else (message.partition(), message.offset())

        return callback

    for index, (key, value, headers, timestamp, partition) in enumerate(records):
        extra = {} if partition is None else {"partition": partition}
        producer.produce(
            topic, value=value, key=key, headers=headers, timestamp=timestamp, on_delivery=delivered(index), **extra
        )
        producer.poll(0)
    assert producer.flush(TIMEOUT_S) == 0, "messages still queued after flush"
    errors = [r for r in reports if not isinstance(r, tuple)]
    assert not errors, f"delivery failed: {errors[:5]}"
    return reports


def test_create_and_describe_topic(broker, admin):
    topic = broker.topic("ck-describe")
    create_topic(admin, topic, PARTITIONS, {"retention.ms": "3600000"})
    # No partition count: the broker's num.partitions applies.
    default_topic = broker.topic("ck-default")
    admin.create_topics([NewTopic(default_topic)])[default_topic].result(timeout=TIMEOUT_S)

    with pytest.raises(KafkaException) as raised:
        create_topic(admin, topic, PARTITIONS)
    assert raised.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

    metadata = admin.list_topics(timeout=TIMEOUT_S)
    host, port = broker.bootstrap.rsplit(":", 1)
    assert [(b.id, b.host, b.port) for b in metadata.brokers.values()] == [(broker.node_id, host, int(port))]
    for name, count in [(topic, PARTITIONS), (default_topic, broker.default_partitions)]:
        described = metadata.topics[name]
        assert described.error is None
        assert sorted(described.partitions) == list(range(count))
        for partition in described.partitions.values():
            assert partition.error is None
            assert partition.leader == broker.node_id
            assert partition.replicas == [broker.node_id]
            assert partition.isrs == [broker.node_id]

    description = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout=TIMEOUT_S)
    assert description.name == topic
    assert [p.id for p in description.partitions] == list(range(PARTITIONS))
    assert {p.leader.id for p in description.partitions} == {broker.node_id}

    cluster = admin.describe_cluster().result(timeout=TIMEOUT_S)
    assert cluster.controller.id == broker.node_id
    assert [(n.id, n.host, n.port) for n in cluster.nodes] == [(broker.node_id, host, int(port))]


def describe_topic_configs(admin, topic):
    resource = ConfigResource(ResourceType.TOPIC, topic)
    return admin.describe_configs([resource])[resource].result(timeout=TIMEOUT_S)


def test_describe_and_alter_configs(broker, admin):
    topic = broker.topic("ck-configs")
    create_topic(admin, topic, 1, {"retention.ms": "3600000"})

    configs = describe_topic_configs(admin, topic)
    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["cleanup.policy"].value == "delete"
    assert configs["cleanup.policy"].source == ConfigSource.DEFAULT_CONFIG.value
    default_segment_bytes = configs["segment.bytes"].value

    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
        ],
    )
    admin.incremental_alter_configs([resource])[resource].result(timeout=TIMEOUT_S)
    configs = describe_topic_configs(admin, topic)
    assert configs["segment.bytes"].value == "1048576"
    assert configs["segment.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    assert default_segment_bytes != "1048576"

    broker_resource = ConfigResource(ResourceType.BROKER, str(broker.node_id))
    broker_configs = admin.describe_configs([broker_resource])[broker_resource].result(timeout=TIMEOUT_S)
    assert broker_configs["num.partitions"].value == str(broker.default_partitions)
    assert broker_configs["listeners"].is_read_only


# Every topic config Kafka 4.x defines.
KAFKA_TOPIC_CONFIGS = {
    "cleanup.policy", "compression.gzip.level", "compression.lz4.level", "compression.type",
    "compression.zstd.level", "delete.retention.ms", "file.delete.delay.ms", "flush.messages", "flush.ms",
    "follower.replication.throttled.replicas", "index.interval.bytes", "leader.replication.throttled.replicas",
    "local.retention.bytes", "local.retention.ms", "max.compaction.lag.ms", "max.message.bytes",
    "message.timestamp.after.max.ms", "message.timestamp.before.max.ms", "message.timestamp.type",
    "min.cleanable.dirty.ratio", "min.compaction.lag.ms", "min.insync.replicas", "preallocate",
    "remote.log.copy.disable", "remote.log.delete.on.disable", "remote.storage.enable", "retention.bytes",
    "retention.ms", "segment.bytes", "segment.index.bytes", "segment.jitter.ms", "segment.ms",
    "unclean.leader.election.enable",
}


def test_every_kafka_topic_config_is_accepted_described_and_validated(broker, admin):
    # The configs a user of Kafka sets daily, including ones with no effect on one node.
    topic = broker.topic("ck-all-configs")
    create_topic(admin, topic, 1, {
        "compression.type": "lz4", "delete.retention.ms": "900", "min.cleanable.dirty.ratio": "0.25",
        "unclean.leader.election.enable": "true", "leader.replication.throttled.replicas": "0:0",
        "segment.jitter.ms": "1000", "message.timestamp.after.max.ms": "60000",
    })
    resource = ConfigResource(ResourceType.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=TIMEOUT_S)
    assert set(configs) == KAFKA_TOPIC_CONFIGS
    assert configs["compression.type"].value == "lz4"
    assert configs["delete.retention.ms"].value == "900"
    assert configs["delete.retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["min.cleanable.dirty.ratio"].value == "0.25"
    assert configs["max.compaction.lag.ms"].value == str(2**63 - 1)
    assert configs["max.compaction.lag.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    # Synonyms, most important first, end with Kafka's default under the broker's name.
    synonyms = [(s.name, s.value, s.source) for s in configs["delete.retention.ms"].synonyms.values()]
    assert synonyms == [
        ("delete.retention.ms", "900", ConfigSource.DYNAMIC_TOPIC_CONFIG.value),
        ("log.cleaner.delete.retention.ms", "86400000", ConfigSource.DEFAULT_CONFIG.value),
    ]
    assert configs["retention.ms"].value == "604800000"

    # Wrong values and unknown keys are INVALID_CONFIG naming the key; nothing is created.
    for bad in [
        {"compression.type": "brotli"},
        {"min.cleanable.dirty.ratio": "1.5"},
        {"compression.gzip.level": "12"},
        {"segment.bytes": "1000"},
        {"preallocate": "maybe"},
        {"leader.replication.throttled.replicas": "0-1"},
        {"no.such.config": "1"},
    ]:
        name = broker.topic("ck-bad-config")
        futures = admin.create_topics([NewTopic(name, 1, 1, config=bad)], operation_timeout=TIMEOUT_S)
        with pytest.raises(KafkaException) as raised:
            futures[name].result(timeout=TIMEOUT_S)
        error = raised.value.args[0]
        assert error.code() == KafkaError.INVALID_CONFIG, (bad, error)
        assert next(iter(bad)) in error.str(), (bad, error)

    # A broker default reaches the topic's description with its source and synonym.
    change = ConfigResource(
        ResourceType.BROKER,
        str(broker.node_id),
        incremental_configs=[
            ConfigEntry("log.cleaner.min.compaction.lag.ms", "5000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([change])[change].result(timeout=TIMEOUT_S)
    configs = admin.describe_configs([resource])[resource].result(timeout=TIMEOUT_S)
    assert configs["min.compaction.lag.ms"].value == "5000"
    assert configs["min.compaction.lag.ms"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    undo = ConfigResource(
        ResourceType.BROKER,
        str(broker.node_id),
        incremental_configs=[
            ConfigEntry("log.cleaner.min.compaction.lag.ms", None, incremental_operation=AlterConfigOpType.DELETE)
        ],
    )
    admin.incremental_alter_configs([undo])[undo].result(timeout=TIMEOUT_S)


def test_alter_broker_configs(broker, admin):
    topic = broker.topic("ck-broker-configs")
    create_topic(admin, topic, 1, {})
    node = str(broker.node_id)

    change = ConfigResource(
        ResourceType.BROKER,
        node,
        incremental_configs=[ConfigEntry("log.retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET)],
    )
    admin.incremental_alter_configs([change])[change].result(timeout=TIMEOUT_S)
    described = ConfigResource(ResourceType.BROKER, node)
    broker_configs = admin.describe_configs([described])[described].result(timeout=TIMEOUT_S)
    assert broker_configs["log.retention.ms"].value == "7200000"
    assert broker_configs["log.retention.ms"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    # The new default reaches topics without an override of their own.
    assert describe_topic_configs(admin, topic)["retention.ms"].value == "7200000"

    # A key that needs a restart is refused, with a message naming it.
    static = ConfigResource(
        ResourceType.BROKER,
        node,
        incremental_configs=[ConfigEntry("listeners", "PLAINTEXT://127.0.0.1:1", incremental_operation=AlterConfigOpType.SET)],
    )
    with pytest.raises(KafkaException, match="listeners"):
        admin.incremental_alter_configs([static])[static].result(timeout=TIMEOUT_S)

    undo = ConfigResource(
        ResourceType.BROKER,
        node,
        incremental_configs=[ConfigEntry("log.retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)],
    )
    admin.incremental_alter_configs([undo])[undo].result(timeout=TIMEOUT_S)
    assert describe_topic_configs(admin, topic)["retention.ms"].value != "7200000"


# lz4 included: librdkafka enables it only when ApiVersions lists FindCoordinator v0 (an
# 0.8.2-era feature check), so this also guards that advertisement.
@pytest.mark.parametrize("codec", CODECS)
def test_produce_and_consume(broker, admin, codec):
    topic = broker.topic(f"ck-{codec}")
    create_topic(admin, topic, PARTITIONS)
    sent = []
    for i in range(RECORDS_PER_CODEC):
        # 23 distinct keys: each key's records land in one partition, in send order.
        key = f"key-{i % 23}".encode()
        value = f"{codec}-{i:05d}-".encode() + b"payload " * (i % 40)
        headers = [("seq", str(i).encode()), ("codec", codec.encode()), ("empty", b"")]
        sent.append((key, value, headers, BASE_TIMESTAMP_MS + i, None))

    producer = make_producer(broker, codec)
    reports = produce(producer, topic, sent)

    expected = defaultdict(list)
    partition_of_key = {}
    for (key, value, headers, timestamp, _), (partition, offset) in zip(sent, reports):
        assert partition_of_key.setdefault(key, partition) == partition
        expected[partition].append((offset, key, value, headers, timestamp))
    assert len(expected) > 1, "records should spread over several partitions"
    for partition, records in expected.items():
        assert [r[0] for r in records] == list(range(len(records))), f"partition {partition}"

    consumer = make_consumer(broker)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    consumed = defaultdict(list)
    for message in consume(consumer, len(sent)):
        assert message.topic() == topic
        timestamp_type, timestamp = message.timestamp()
        assert timestamp_type == 1  # CreateTime
        consumed[message.partition()].append(
            (message.offset(), message.key(), message.value(), message.headers(), timestamp)
        )
    assert dict(consumed) == dict(expected)
    # The watermarks the fetch responses carried (a live query would queue behind the
    # consumer's long-polling fetch on the same connection; test_list_offsets covers that).
    for partition in range(PARTITIONS):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        assert (low, high) == (0, len(expected.get(partition, []))), f"partition {partition}"
    consumer.close()
    # librdkafka falls back to no compression silently when it believes the broker cannot take
    # the codec; batches are stored as sent, so the segment files show what it really sent.
    assert set(broker.stored_codecs(topic)) == {codec}


def test_list_offsets(broker, admin):
    """ListOffsets through the consumer and the admin client, and a fetch that starts in the
    middle of a compressed batch."""
    topic = broker.topic("ck-offsets")
    create_topic(admin, topic, 2)
    by_time = TopicPartition(topic, 0)
    max_time = TopicPartition(topic, 1)
    # Partition 0: timestamps rise by a second per record. Partition 1: the largest timestamp
    # sits in the middle, at offset 6, so "max timestamp" differs from "latest".
    times_0 = [BASE_TIMESTAMP_MS + 1000 * i for i in range(10)]
    times_1 = list(times_0)
    times_1[6] = BASE_TIMESTAMP_MS + 60_000
    records = [(b"k", f"v{i}".encode(), None, t, 0) for i, t in enumerate(times_0)]
    records += [(b"k", f"v{i}".encode(), None, t, 1) for i, t in enumerate(times_1)]
    producer = make_producer(broker, "zstd")
    produce(producer, topic, records)

    consumer = make_consumer(broker)
    assert consumer.get_watermark_offsets(by_time, timeout=TIMEOUT_S) == (0, 10)
    found = consumer.offsets_for_times([TopicPartition(topic, 0, BASE_TIMESTAMP_MS + 3500)], timeout=TIMEOUT_S)
    assert [(tp.partition, tp.offset) for tp in found] == [(0, 4)]
    # Nothing at or after this time: librdkafka reports the end offset (-1 from the broker).
    found = consumer.offsets_for_times([TopicPartition(topic, 0, BASE_TIMESTAMP_MS + 10_000)], timeout=TIMEOUT_S)
    assert [(tp.partition, tp.offset) for tp in found] == [(0, -1)]

    def list_offsets(specs):
        futures = admin.list_offsets(specs, request_timeout=TIMEOUT_S)
        return {tp.partition: future.result(timeout=TIMEOUT_S) for tp, future in futures.items()}

    results = list_offsets({by_time: OffsetSpec.earliest(), max_time: OffsetSpec.latest()})
    assert (results[0].offset, results[1].offset) == (0, 10)
    results = list_offsets(
        {by_time: OffsetSpec.for_timestamp(BASE_TIMESTAMP_MS + 7000), max_time: OffsetSpec.max_timestamp()}
    )
    assert (results[0].offset, results[0].timestamp) == (7, BASE_TIMESTAMP_MS + 7000)
    assert (results[1].offset, results[1].timestamp) == (6, BASE_TIMESTAMP_MS + 60_000)

    # The ten records of each partition went out in one zstd batch; start inside it.
    consumer.assign([TopicPartition(topic, 0, 4)])
    messages = consume(consumer, 6)
    assert [(m.offset(), m.value(), m.timestamp()[1]) for m in messages] == [
        (i, f"v{i}".encode(), times_0[i]) for i in range(4, 10)
    ]
    consumer.close()


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated:DeprecationWarning")
def test_legacy_alter_configs_replaces_and_refuses_bad_values(broker, admin):
    # AlterConfigs (the API before IncrementalAlterConfigs) replaces a resource's configs as a
    # whole: keys not listed go back to their defaults.
    topic = broker.topic("ck-legacy-alter")
    create_topic(admin, topic, 1, {"retention.ms": "3600000"})
    replace = ConfigResource(ResourceType.TOPIC, topic, set_config={"segment.bytes": "1048576"})
    admin.alter_configs([replace])[replace].result(timeout=TIMEOUT_S)
    configs = describe_topic_configs(admin, topic)
    assert configs["segment.bytes"].value == "1048576"
    assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value

    bad = ConfigResource(ResourceType.TOPIC, topic, set_config={"segment.bytes": "tiny"})
    with pytest.raises(KafkaException, match="segment.bytes"):
        admin.alter_configs([bad])[bad].result(timeout=TIMEOUT_S)
    assert describe_topic_configs(admin, topic)["segment.bytes"].value == "1048576"
