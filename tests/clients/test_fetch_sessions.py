"""Incremental fetch sessions (KIP-227) with kafka-python 3, which uses them: a consumer of many
partitions gets a session and keeps reading through it, partitions it stops fetching are
forgotten, and a consumer whose session was evicted (the broker holds one session here) gets
FETCH_SESSION_ID_NOT_FOUND, starts over, and still reads every record exactly once."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def broker_settings() -> list[str]:
    # One session slot, so a second consumer's session evicts the first's (the smaller one).
    return ["max.incremental.fetch.session.cache.slots=1"]


def create_topic(broker, name, partitions):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1}}, wait_for_metadata=True)
    finally:
        admin.close()


def produce(broker, topic, partitions, per_partition, tag):
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    for p in range(partitions):
        for i in range(per_partition):
            producer.send(topic, key=f"{p}".encode(), value=f"{tag}-{p}-{i}".encode(), partition=p)
    producer.flush(timeout=30)
    producer.close()


def consumer_of(broker, topic, partitions):
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    consumer.assign([TopicPartition(topic, p) for p in partitions])
    return consumer


def session_id(consumer):
    """The fetch session the consumer holds with the broker (0: none)."""
    handlers = consumer._fetcher._session_handlers
    return max((h.next_metadata.session_id for h in handlers.values()), default=0)


def read(consumer, expected, seen):
    deadline = time.monotonic() + DEADLINE_S
    while len(seen) < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            for record in records:
                key = (record.topic, record.partition, record.offset)
                assert key not in seen, f"{key} delivered twice"
                seen[key] = record.value
    assert len(seen) == expected, f"read {len(seen)} of {expected}"


def test_a_consumer_whose_session_was_evicted_starts_over_and_loses_nothing(broker):
    # First in this module, so the broker's one session slot is free (sessions outlive the
    # consumers that opened them, until they are evicted).
    topic = broker.topic("evicted")
    create_topic(broker, topic, 12)
    produce(broker, topic, 12, 20, "a")
    small = consumer_of(broker, topic, range(4))
    small_seen = {}
    read(small, 80, small_seen)
    first_session = session_id(small)
    assert first_session != 0
    # A consumer of more partitions takes the only slot: the small one's session is evicted.
    large = consumer_of(broker, topic, range(12))
    large_seen = {}
    read(large, 240, large_seen)
    assert session_id(large) != 0
    produce(broker, topic, 12, 20, "b")
    read(small, 160, small_seen)
    read(large, 480, large_seen)
    assert session_id(small) != first_session, "the small consumer lost its session and started over"
    for seen, partitions in [(small_seen, range(4)), (large_seen, range(12))]:
        for p in partitions:
            offsets = sorted(offset for (_, partition, offset) in seen if partition == p)
            assert offsets == list(range(40)), f"partition {p}: {offsets}"
    small.close()
    large.close()


def test_a_consumer_of_many_partitions_reads_through_a_session(broker):
    topic = broker.topic("sessions")
    create_topic(broker, topic, 40)
    produce(broker, topic, 40, 25, "a")
    consumer = consumer_of(broker, topic, range(40))
    seen = {}
    read(consumer, 1000, seen)
    assert session_id(consumer) != 0, "kafka-python asked for a session and the broker gave one"
    # More records arrive while the consumer fetches incrementally.
    produce(broker, topic, 40, 25, "b")
    read(consumer, 2000, seen)
    assert sorted(v for v in seen.values() if v.startswith(b"b-")) == sorted(
        f"b-{p}-{i}".encode() for p in range(40) for i in range(25)
    )
    # Half the partitions are dropped (the session forgets them): their new records stay unread.
    consumer.assign([TopicPartition(topic, p) for p in range(20)])
    produce(broker, topic, 40, 5, "c")
    read(consumer, 2100, seen)
    time.sleep(1)
    for records in consumer.poll(timeout_ms=500).values():
        assert not records, f"records of forgotten partitions came back: {records[:3]}"
    assert all(partition < 20 for (_, partition, _), value in seen.items() if value.startswith(b"c-"))
    consumer.close()
