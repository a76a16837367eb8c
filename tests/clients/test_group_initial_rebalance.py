"""A new group's first rebalance with Kafka's default initial delay (group.initial.rebalance.delay.ms
= 3000), as kafka-python 3.0.12 sees it when one thread drives two consumers of the group, polling
each in turn.

kafka-python 3.0.12 drops a JoinGroup/SyncGroup round trip that completes while the application is
not inside that consumer's poll(), and joins again. A follower that joins a stable group again is
simply told its generation; a leader that does forces a rebalance (as in Kafka), and that one ends
when the other consumer rejoins, inside the other consumer's poll(): the leader's result is dropped
again, for ever. Kafka ends the first rebalance a whole number of delays after the first member
(the leader) joined, inside the leader's poll() here; ending it one delay after the last member
joined, inside the follower's poll(), started that loop: one consumer held [] for good.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer

PARTITIONS = 4
# Each consumer's turn: the poll(timeout_ms=300) of the report.
TURN_S = 0.3
DEADLINE_S = 60.0


def create_topic(broker, name):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "client.id": "sluice-test-admin"})
    admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])[name].result(timeout=30)


def test_kafka_python_consumers_polled_in_turn_in_one_thread_share_the_partitions(broker):
    """The default broker settings (the initial delay is the point) and kafka-python's defaults."""
    topic = f"turns-{uuid.uuid4().hex[:8]}"
    group = f"turns-{uuid.uuid4().hex[:8]}"
    create_topic(broker, topic)
    consumers = [
        KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group, client_id=f"turns-{i}")
        for i in range(2)
    ]
    try:
        start = time.monotonic()
        turn = 0
        assignments = [set(), set()]
        while not (all(assignments) and sorted(assignments[0] | assignments[1]) == list(range(PARTITIONS))):
            assert time.monotonic() - start < DEADLINE_S, (
                f"the two consumers did not share the {PARTITIONS} partitions within {DEADLINE_S:.0f}s: "
                f"they hold {[sorted(a) for a in assignments]}"
            )
            # Turns are kept on a fixed 300 ms schedule instead of drifting with each poll's
            # overhead, so that where a rebalance ends (whose turn it is) does not depend on how
            # busy the machine is.
            consumer = consumers[turn % 2]
            turn_end = start + (turn + 1) * TURN_S
            consumer.poll(timeout_ms=max(1, int((turn_end - time.monotonic()) * 1000)))
            assignments[turn % 2] = {tp.partition for tp in consumer.assignment()}
            turn += 1
        assert not assignments[0] & assignments[1], f"a partition is held twice: {assignments}"
    finally:
        for consumer in consumers:
            consumer.close()
