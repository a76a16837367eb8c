"""A rolling upgrade of a consumer group from the classic protocol to KIP-848, with
confluent-kafka (librdkafka): two classic members share a topic; a `group.protocol=consumer`
member joins (the group converts, the classic members keep going and give up partitions to
it); a classic member leaves; the last one is replaced by a consumer-protocol member. Records
are produced throughout; every one is handled, no partition is ever held by two members at
once, and the group ends balanced, all on the new protocol."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 6
DEADLINE_S = 30.0
TIMEOUT_S = 15


@pytest.fixture(scope="module")
def broker_settings():
    # No initial rebalance delay, short classic sessions, and quick KIP-848 heartbeats so the
    # steps settle in seconds.
    return [
        "group.initial.rebalance.delay.ms=0",
        "group.min.session.timeout.ms=1000",
        "group.consumer.heartbeat.interval.ms=500",
    ]


class Members:
    """Consumers polled from this thread; records who handled what and checks, at every poll
    round, that no partition is assigned to two members."""

    def __init__(self, broker, topic, group):
        self.broker, self.topic, self.group = broker, topic, group
        self.consumers: dict[str, Consumer] = {}
        self.handled: dict[int, str] = {}

    def add(self, name, protocol):
        config = {
            "bootstrap.servers": self.broker.bootstrap,
            "group.id": self.group,
            "client.id": name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
        if protocol == "consumer":
            config["group.protocol"] = "consumer"
        else:
            config.update(
                {"partition.assignment.strategy": "range", "session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
            )
        consumer = Consumer(config)
        consumer.subscribe([self.topic])
        self.consumers[name] = consumer

    def remove(self, name):
        self.consumers.pop(name).close()

    def assignments(self):
        return {name: {tp.partition for tp in c.assignment()} for name, c in self.consumers.items()}

    def poll_round(self):
        for name, consumer in self.consumers.items():
            message = consumer.poll(0.05)
            if message is not None and message.error() is None:
                self.handled[int(message.value())] = name
                consumer.commit(message, asynchronous=False)
        owners: dict[int, str] = {}
        for name, partitions in self.assignments().items():
            for partition in partitions:
                assert partition not in owners, f"partition {partition} held by {owners[partition]} and {name}"
                owners[partition] = name

    def settle(self, expected_members, records):
        """Polls until every record so far is handled and all partitions are spread over
        `expected_members` (each holding at least one)."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            self.poll_round()
            assignments = self.assignments()
            spread = sorted(assignments) == sorted(expected_members) and all(assignments.values())
            complete = sum(len(p) for p in assignments.values()) == PARTITIONS
            if spread and complete and all(i in self.handled for i in range(records)):
                return assignments
            assert time.monotonic() < deadline, (
                f"not settled within {DEADLINE_S:.0f}s: {assignments}, "
                f"{sum(1 for i in range(records) if i not in self.handled)} records unhandled"
            )

    def close(self):
        for consumer in self.consumers.values():
            consumer.close()


def test_rolling_upgrade_from_classic_to_the_consumer_protocol(broker):
    topic = broker.topic("upgrade")
    group = f"upgrade-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(timeout=TIMEOUT_S)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    produced = 0

    def produce(count):
        nonlocal produced
        for i in range(produced, produced + count):
            producer.produce(topic, key=str(i), value=str(i))
        produced += count
        assert producer.flush(TIMEOUT_S) == 0

    members = Members(broker, topic, group)
    try:
        members.add("classic-a", "classic")
        members.add("classic-b", "classic")
        produce(300)
        assert members.settle(["classic-a", "classic-b"], produced) == {"classic-a": {0, 1, 2}, "classic-b": {3, 4, 5}}

        # The first KIP-848 member converts the group; the classic members give it a share.
        members.add("new-c", "consumer")
        produce(300)
        shares = members.settle(["classic-a", "classic-b", "new-c"], produced)
        assert sorted(len(p) for p in shares.values()) == [2, 2, 2]
        described = admin.describe_consumer_groups([group])[group].result(timeout=TIMEOUT_S)
        assert len(described.members) == 3

        # A classic member leaves; then the last classic member is replaced by an upgraded one.
        members.remove("classic-a")
        produce(300)
        members.settle(["classic-b", "new-c"], produced)
        members.remove("classic-b")
        members.add("new-b", "consumer")
        produce(300)
        final = members.settle(["new-b", "new-c"], produced)
        assert sorted(len(p) for p in final.values()) == [3, 3]
        assert len(members.handled) == produced
    finally:
        members.close()
