"""What two users reported of groups, as their clients saw it (librdkafka 2.16 through
confluent-kafka): eight cooperative-sticky consumers whose subscriptions change several
times in a row end with every partition assigned exactly once and evenly; and a group whose
consumers have all closed can be deleted at once (each member left: closing sends LeaveGroup).
Neither report reproduced as a broker fault; these keep them from becoming one."""

from __future__ import annotations

import collections
import time

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

CONVERGE_DEADLINE_S = 90.0
TIMEOUT_S = 15


def test_cooperative_sticky_consumers_changing_subscriptions_converge_and_the_group_deletes(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    main, side = broker.topic("coop-main"), broker.topic("coop-side")
    for name, partitions in [(main, 32), (side, 8)]:
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=TIMEOUT_S)
    group = broker.topic("coop-group")
    consumers = [
        Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": group,
                "client.id": f"coop-{i}",
                "partition.assignment.strategy": "cooperative-sticky",
                "auto.offset.reset": "earliest",
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        for i in range(8)
    ]
    try:
        # Subscriptions change six times in a row, on every member, without polling between.
        for subscription in [[main], [main, side], [main], [f"^{main}$"], [main, side], [main]]:
            for consumer in consumers:
                consumer.subscribe(subscription)

        def assignment():
            held = [[tp.partition for tp in c.assignment() if tp.topic == main] for c in consumers]
            owners = collections.Counter(p for partitions in held for p in partitions)
            return [len(h) for h in held], owners

        deadline = time.monotonic() + CONVERGE_DEADLINE_S
        while time.monotonic() < deadline:
            for consumer in consumers:
                consumer.poll(0.05)
            counts, owners = assignment()
            if len(owners) == 32 and all(n == 1 for n in owners.values()) and counts == [4] * 8:
                break
        counts, owners = assignment()
        assert len(owners) == 32 and all(n == 1 for n in owners.values()), f"assigned: {sorted(owners.items())}"
        assert counts == [4] * 8, f"per member: {counts}"
    finally:
        for consumer in consumers:
            consumer.close()
    # Every member held partitions, so each left as it closed: the group is empty at once.
    assert admin.delete_consumer_groups([group])[group].result(timeout=TIMEOUT_S) is None
