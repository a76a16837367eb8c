"""Idempotent producers from Python: confluent-kafka (librdkafka) with enable.idempotence and
kafka-python 3 with enable_idempotence each write a few thousand records to four partitions, and
each record is read back exactly once, in send order, at the offset its delivery report gave.
The stored batches must carry one producer id at epoch 0 and gapless sequence numbers from 0 per
partition: that shows idempotence was really on (a client can turn it off by itself, and every
other check would pass without it)."""

from __future__ import annotations

import struct
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaPythonTopicPartition

RECORDS = 3000
PARTITIONS = 4
DEADLINE_S = 30.0
# Record batch v2 header, up to the record count: base offset, batch length, partition leader
# epoch, magic, CRC, attributes, last offset delta, base timestamp, max timestamp, producer id,
# producer epoch, base sequence, record count.
BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
LOG_OVERHEAD = 12


def create_topic(broker, prefix):
    return broker.create_topic(prefix, PARTITIONS, DEADLINE_S)


def record(tag, seq):
    """Record `seq`: spread over the partitions round robin, its number in key and value."""
    return seq % PARTITIONS, f"key-{seq}".encode(), f"{tag} record {seq}".encode()


def stored_batches(broker, topic, partition):
    """(producer id, producer epoch, base sequence, record count) of each stored batch, in
    offset order, read from the segment files (read-only; safe while the broker runs)."""
    batches = []
    for segment in sorted((broker.data_dir / f"{topic}-{partition}").glob("*.log")):
        data = segment.read_bytes()
        position = 0
        while position + BATCH_HEADER.size <= len(data):
            fields = BATCH_HEADER.unpack_from(data, position)
            batch_length = fields[1]
            if batch_length <= 0:
                break
            batches.append((fields[9], fields[10], fields[11], fields[12]))
            position += LOG_OVERHEAD + batch_length
    return batches


def check_read_back(broker, topic, tag, reports, received):
    """`reports[seq]` is where record `seq` was acknowledged, `received[partition]` the
    (offset, key, value) read from each partition from its start to its end."""
    for partition in range(PARTITIONS):
        sent = [seq for seq in range(RECORDS) if seq % PARTITIONS == partition]
        expected = [(reports[seq][1], record(tag, seq)[1], record(tag, seq)[2]) for seq in sent]
        assert [reports[seq][0] for seq in sent] == [partition] * len(sent), "acknowledged in their partition"
        assert [offset for offset, _, _ in expected] == list(range(len(sent))), (
            f"partition {partition}: acknowledged offsets are 0.. in send order"
        )
        assert received[partition] == expected, f"partition {partition} holds each record once, in send order"

        batches = stored_batches(broker, topic, partition)
        assert sum(count for _, _, _, count in batches) == len(sent)
        producer_ids = {(producer_id, epoch) for producer_id, epoch, _, _ in batches}
        assert len(producer_ids) == 1 and min(producer_ids)[0] >= 0 and min(producer_ids)[1] == 0, (
            f"partition {partition}: one idempotent producer at epoch 0, got {producer_ids}"
        )
        next_sequence = 0
        for _, _, base_sequence, count in batches:
            assert base_sequence == next_sequence, f"partition {partition}: batches {batches}"
            next_sequence += count


def test_confluent_kafka_idempotent_producer(broker):
    topic = create_topic(broker, "ck-idempotent")
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "client.id": "sluice-test-idempotent",
            "enable.idempotence": True,
            "acks": "all",
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 5,
            # Small batches: many sequence ranges for the broker to check.
            "batch.num.messages": 100,
        }
    )
    reports = [None] * RECORDS

    def delivered(seq):
        def callback(err, message):
            reports[seq] = err if err is not None else (message.partition(), message.offset())

        return callback

    for seq in range(RECORDS):
        partition, key, value = record("ck", seq)
        producer.produce(topic, value=value, key=key, partition=partition, on_delivery=delivered(seq))
        producer.poll(0)
    assert producer.flush(DEADLINE_S) == 0, "messages still queued after flush"
    errors = [(seq, r) for seq, r in enumerate(reports) if not isinstance(r, tuple)]
    assert not errors, f"delivery failed: {errors[:5]}"

    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "client.id": "sluice-test-consumer",
            "group.id": "sluice-test-unused",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        received = {p: [] for p in range(PARTITIONS)}
        deadline = time.monotonic() + DEADLINE_S
        while sum(map(len, received.values())) < RECORDS and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=RECORDS, timeout=0.1):
                assert message.error() is None, message.error()
                received[message.partition()].append((message.offset(), message.key(), message.value()))
        # Anything past the expected count (a duplicate) would be in the log already: read on
        # to each partition's high watermark and compare.
        for partition in range(PARTITIONS):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=DEADLINE_S)
            assert high == len(received[partition]), f"partition {partition}: high watermark {high}"
    finally:
        consumer.close()
    check_read_back(broker, topic, "ck", reports, received)


def test_kafka_python_idempotent_producer(broker):
    topic = create_topic(broker, "kp-idempotent")
    # kafka-python 3 turns idempotence on by default; set explicitly, a conflicting setting
    # raises instead of silently turning it off.
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        client_id="sluice-test-idempotent",
        enable_idempotence=True,
        acks="all",
        max_in_flight_requests_per_connection=5,
        linger_ms=5,
        # Small batches: many sequence ranges for the broker to check.
        batch_size=2048,
    )
    try:
        futures = []
        for seq in range(RECORDS):
            partition, key, value = record("kp", seq)
            futures.append(producer.send(topic, value=value, key=key, partition=partition))
        producer.flush(timeout=DEADLINE_S)
        reports = []
        for future in futures:
            metadata = future.get(timeout=DEADLINE_S)
            reports.append((metadata.partition, metadata.offset))
    finally:
        producer.close(timeout=DEADLINE_S)

    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        client_id="sluice-test-consumer",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        partitions = [KafkaPythonTopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        received = {p: [] for p in range(PARTITIONS)}
        deadline = time.monotonic() + DEADLINE_S
        while sum(map(len, received.values())) < RECORDS and time.monotonic() < deadline:
            for tp, messages in consumer.poll(timeout_ms=500).items():
                received[tp.partition].extend((m.offset, m.key, m.value) for m in messages)
        high_watermarks = consumer.end_offsets(partitions)
        for tp in partitions:
            assert high_watermarks[tp] == len(received[tp.partition]), f"partition {tp.partition}"
    finally:
        consumer.close()
    check_read_back(broker, topic, "kp", reports, received)
