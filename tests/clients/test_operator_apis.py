"""Operator APIs through kafka-python's admin client (the one Python client that has them):
OffsetDelete (a group's offsets for some partitions removed; refused with
GROUP_SUBSCRIBED_TO_TOPIC while members subscribe to the topic), and ListTransactions,
DescribeTransactions and DescribeProducers while a confluent-kafka transaction is open and
after it commits, together with `sluice transactions list|describe` on the same broker."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import GroupSubscribedToTopicError, NoError
from kafka.structs import OffsetAndMetadata

from conftest import REPO_ROOT

TIMEOUT_S = 15
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def broker_settings():
    return ["group.initial.rebalance.delay.ms=0", "group.min.session.timeout.ms=1000"]


@pytest.fixture()
def admin(broker):
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=TIMEOUT_S * 1000)
    yield client
    client.close()


def sluice(broker, *args):
    binary = Path(os.environ.get("SLUICE_BIN", REPO_ROOT / "target" / "debug" / "sluice"))
    done = subprocess.run(
        [str(binary), *args, "--bootstrap", broker.bootstrap], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_offset_delete_removes_offsets_and_spares_subscribed_topics(broker, admin):
    kept, dropped = broker.topic("kept"), broker.topic("dropped")
    admin.create_topics([NewTopic(kept, 1, 1), NewTopic(dropped, 2, 1)])
    group = f"od-{uuid.uuid4().hex[:8]}"
    offsets = {
        TopicPartition(kept, 0): OffsetAndMetadata(7, "", -1),
        TopicPartition(dropped, 0): OffsetAndMetadata(3, "", -1),
        TopicPartition(dropped, 1): OffsetAndMetadata(4, "", -1),
    }
    assert set(admin.alter_group_offsets(group, offsets).values()) == {NoError}
    result = admin.delete_group_offsets(group, [TopicPartition(dropped, 0), TopicPartition(dropped, 1)])
    assert set(result.values()) == {NoError}
    assert admin.list_group_offsets({group: None})[group] == {TopicPartition(kept, 0): offsets[TopicPartition(kept, 0)]}

    # A member subscribed to the topic: its offsets stay.
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "session.timeout.ms": 6000})
    consumer.subscribe([kept])
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not consumer.assignment():
            assert time.monotonic() < deadline, "the consumer never got its partition"
            consumer.poll(0.1)
        result = admin.delete_group_offsets(group, [TopicPartition(kept, 0)])
        assert result == {TopicPartition(kept, 0): GroupSubscribedToTopicError}
    finally:
        consumer.close()
    assert TopicPartition(kept, 0) in admin.list_group_offsets({group: None})[group]


def test_transactions_are_listed_and_described_while_open_and_after_commit(broker, admin):
    topic = broker.topic("op-txn")
    admin.create_topics([NewTopic(topic, 2, 1)])
    transactional_id = f"op-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": transactional_id})
    producer.init_transactions(TIMEOUT_S)
    producer.begin_transaction()
    producer.produce(topic, value=b"in-transaction", partition=1)
    assert producer.flush(TIMEOUT_S) == 0

    listed = [t for ts in admin.list_transactions().values() for t in ts if t.transactional_id == transactional_id]
    assert [t.state.value for t in listed] == ["Ongoing"]
    described = admin.describe_transactions([transactional_id])[transactional_id]
    assert described.state.value == "Ongoing"
    assert described.topic_partitions == {TopicPartition(topic, 1)}
    producers = admin.describe_producers([TopicPartition(topic, 1)])[TopicPartition(topic, 1)].active_producers
    ours = [p for p in producers if p.producer_id == described.producer_id]
    assert len(ours) == 1 and ours[0].current_transaction_start_offset >= 0
    text = sluice(broker, "transactions", "describe", transactional_id)
    assert "state Ongoing" in text and topic in text, text

    producer.commit_transaction(TIMEOUT_S)
    committed = admin.list_transactions(state_filters=["CompleteCommit"])
    assert transactional_id in {t.transactional_id for ts in committed.values() for t in ts}
    assert not any(
        t.transactional_id == transactional_id for ts in admin.list_transactions(state_filters=["Ongoing"]).values()
        for t in ts
    )
    producers = admin.describe_producers([TopicPartition(topic, 1)])[TopicPartition(topic, 1)].active_producers
    assert all(p.current_transaction_start_offset == -1 for p in producers if p.producer_id == described.producer_id)
    assert transactional_id in sluice(broker, "transactions", "list", "--state", "CompleteCommit")
