"""Consumer groups with kafka-python and confluent-kafka against a real broker: two members of a
group split a 6-partition topic, handle every record and commit; a new member of the group
resumes at the committed offsets; and each client's admin API lists, describes, fetches, alters
and deletes the group and its offsets as Kafka would."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition as CkTopicPartition
from confluent_kafka import ConsumerGroupState, KafkaError
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka import ConsumerGroupTopicPartitions
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

PARTITIONS = 6
RECORDS = 300
MORE_RECORDS = 60
DEADLINE_S = 30.0
TIMEOUT_S = 15
# Short sessions and heartbeats so that joins and leaves settle in well under a second.
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 500


@pytest.fixture(scope="module")
def broker_settings():
    # Kafka waits 3 s for more members before a new group's first rebalance and refuses
    # session timeouts under 6 s; these tests want neither.
    return ["group.initial.rebalance.delay.ms=0", "group.min.session.timeout.ms=1000"]


def wait_until(what, condition, deadline_s=DEADLINE_S):
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {deadline_s:.0f}s"
        time.sleep(0.05)


def group_name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------------------
# kafka-python


class KafkaPythonMember(threading.Thread):
    """A kafka-python group member on its own thread (only that thread touches the consumer,
    which is not thread-safe): it handles records, commits after each batch, and publishes what
    it handled and which partitions it holds."""

    def __init__(self, broker, topic, group, name):
        super().__init__(name=name, daemon=True)
        self.config = dict(
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            client_id=name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        )
        self.topic = topic
        self.handled = []  # (partition, offset, value)
        self.assignment = set()
        self.error = None
        self._stopping = threading.Event()

    def run(self):
        try:
            consumer = KafkaConsumer(self.topic, **self.config)
            try:
                while not self._stopping.is_set():
                    # Not shorter: kafka-python 3.0.12 can drop a join that completes just as
                    # a poll times out (the member then never heartbeats again), and short
                    # polls make that likely.
                    batches = consumer.poll(timeout_ms=1000)
                    for records in batches.values():
                        self.handled.extend((r.partition, r.offset, r.value) for r in records)
                    if batches:
                        consumer.commit()
                    self.assignment = {tp.partition for tp in consumer.assignment()}
            finally:
                # Leaves the group (LeaveGroup).
                consumer.close()
        except BaseException as error:  # noqa: BLE001 - reported by stop()
            self.error = error

    def stop(self):
        """Closes the consumer (leaving the group) and re-raises what went wrong on the thread."""
        self._stopping.set()
        self.join(timeout=DEADLINE_S)
        assert not self.is_alive(), f"{self.name} did not close within {DEADLINE_S:.0f}s"
        if self.error is not None:
            raise self.error


def kp_produce(broker, topic, first, count):
    """Records first..first+count to partitions round robin; returns their (partition, offset)."""
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False, acks="all", linger_ms=5)
    try:
        futures = [
            producer.send(topic, key=b"k%d" % seq, value=b"record %d" % seq, partition=seq % PARTITIONS)
            for seq in range(first, first + count)
        ]
        producer.flush(timeout=TIMEOUT_S)
        return [(m.partition, m.offset) for m in (f.get(timeout=TIMEOUT_S) for f in futures)]
    finally:
        producer.close()


def kp_committed(admin, group):
    offsets = admin.list_group_offsets(group)[group]
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


def test_kafka_python_group_splits_commits_resumes_and_is_administered(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="sluice-test-admin")
    running = []  # members to close should the test fail
    try:
        topic = broker.topic("kp-group")
        group = group_name("kp-group")
        admin.create_topics(
            {topic: {"num_partitions": PARTITIONS, "replication_factor": 1}}, wait_for_metadata=True
        )
        produced = set(kp_produce(broker, topic, 0, RECORDS))
        ends = {p: RECORDS // PARTITIONS for p in range(PARTITIONS)}

        members = [KafkaPythonMember(broker, topic, group, f"kp-member-{i}") for i in range(2)]
        newcomer = KafkaPythonMember(broker, topic, group, "kp-member-2")
        running.extend(members)
        for member in members:
            member.start()

        def split_and_done():
            held = [m.assignment for m in members]
            handled = {(p, o) for m in members for p, o, _ in m.handled}
            return (
                all(len(h) == PARTITIONS // 2 for h in held)
                and set().union(*held) == set(range(PARTITIONS))
                and handled >= produced
            )

        wait_until("two members split the topic and handle every record", split_and_done)
        wait_until("the members commit up to the end", lambda: kp_committed(admin, group) == ends)

        # While the members are in it: listed, described as a stable range group of two, and
        # not deletable.
        listed = {g["group_id"]: g for g in admin.list_groups()}
        assert group in listed, listed
        assert listed[group]["protocol_type"] == "consumer"
        described = admin.describe_groups([group])[group]
        assert described["error"] is None
        assert (described["group_state"], described["protocol_type"], described["protocol_data"]) == (
            "Stable",
            "consumer",
            "range",
        )
        assert sorted(m["client_id"] for m in described["members"]) == ["kp-member-0", "kp-member-1"]
        assigned = [
            {p for t in m["member_assignment"]["assigned_partitions"] for p in t["partitions"]}
            for m in described["members"]
        ]
        assert sorted(assigned, key=min) == sorted((m.assignment for m in members), key=min)
        assert admin.delete_groups([group]) == {group: "NonEmptyGroupError"}

        for member in members:
            running.remove(member)
            member.stop()
        described = admin.describe_groups([group])[group]
        assert (described["group_state"], described["members"]) == ("Empty", [])
        assert kp_committed(admin, group) == ends, "closing commits nothing more"

        # A new member resumes at the committed offsets and handles only what came after.
        more = set(kp_produce(broker, topic, RECORDS, MORE_RECORDS))
        running.append(newcomer)
        newcomer.start()
        wait_until(
            "the new member handles the new records",
            lambda: {(p, o) for p, o, _ in newcomer.handled} >= more,
        )
        running.remove(newcomer)
        newcomer.stop()
        first_offsets = {}
        for partition, offset, _ in newcomer.handled:
            first_offsets.setdefault(partition, offset)
        assert first_offsets == ends, "resumed at the committed offsets"
        assert {(p, o) for p, o, _ in newcomer.handled} == more, "handled nothing twice"
        ends = {p: (RECORDS + MORE_RECORDS) // PARTITIONS for p in range(PARTITIONS)}
        assert kp_committed(admin, group) == ends

        # Offsets of an empty group can be set by an admin client.
        rewound = {TopicPartition(topic, p): OffsetAndMetadata(20, "rewound", -1) for p in range(PARTITIONS)}
        results = admin.alter_group_offsets(group, rewound)
        assert {tp.partition: error.__name__ for tp, error in results.items()} == {
            p: "NoError" for p in range(PARTITIONS)
        }
        offsets = admin.list_group_offsets(group)[group]
        assert {tp.partition: (m.offset, m.metadata) for tp, m in offsets.items()} == {
            p: (20, "rewound") for p in range(PARTITIONS)
        }

        # Deleted, the group is gone with its offsets; deleting it again finds nothing.
        assert admin.delete_groups([group]) == {group: "OK"}
        assert group not in {g["group_id"] for g in admin.list_groups()}
        assert admin.list_group_offsets(group) == {group: {}}
        assert admin.delete_groups([group]) == {group: "GroupIdNotFoundError"}
    finally:
        for member in running:
            member._stopping.set()
        for member in running:
            member.join(timeout=DEADLINE_S)
        admin.close()


# ---------------------------------------------------------------------------------------------
# confluent-kafka


def ck_consumer(broker, group, name):
    return Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "client.id": name,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
            "partition.assignment.strategy": "range",
        }
    )


def ck_poll_and_commit(consumer, handled):
    """One poll of one member: handles what came and commits it."""
    messages = consumer.consume(num_messages=100, timeout=0.05)
    for message in messages:
        assert message.error() is None, message.error()
        handled.append((message.partition(), message.offset()))
    if messages:
        consumer.commit(asynchronous=False)


def ck_produce(broker, topic, first, count):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5})
    reports = []

    def delivered(err, message):
        assert err is None, err
        reports.append((message.partition(), message.offset()))

    for seq in range(first, first + count):
        producer.produce(topic, key=b"k%d" % seq, value=b"record %d" % seq, partition=seq % PARTITIONS,
                         on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(TIMEOUT_S) == 0, "messages still queued after flush"
    assert len(reports) == count
    return set(reports)


def ck_committed(admin, group):
    request = [ConsumerGroupTopicPartitions(group)]
    result = admin.list_consumer_group_offsets(request)[group].result(timeout=TIMEOUT_S)
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def ck_listed(admin):
    result = admin.list_consumer_groups(request_timeout=TIMEOUT_S).result(timeout=TIMEOUT_S)
    assert result.errors == []
    return {g.group_id: g for g in result.valid}


def test_confluent_kafka_group_splits_commits_resumes_and_is_administered(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "client.id": "sluice-test-admin"})
    topic = broker.topic("ck-group")
    group = group_name("ck-group")
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(
        timeout=TIMEOUT_S
    )
    produced = ck_produce(broker, topic, 0, RECORDS)
    ends = {p: RECORDS // PARTITIONS for p in range(PARTITIONS)}

    # Both members are polled from this thread in turn; librdkafka heartbeats on its own threads.
    members = [ck_consumer(broker, group, f"ck-member-{i}") for i in range(2)]
    handled = []
    try:
        for member in members:
            member.subscribe([topic])

        def split_and_done():
            for member in members:
                ck_poll_and_commit(member, handled)
            held = [{tp.partition for tp in m.assignment()} for m in members]
            return (
                all(len(h) == PARTITIONS // 2 for h in held)
                and set().union(*held) == set(range(PARTITIONS))
                and set(handled) >= produced
            )

        wait_until("two members split the topic and handle every record", split_and_done)
        wait_until("the members commit up to the end", lambda: ck_committed(admin, group) == ends)

        listing = ck_listed(admin)[group]
        assert (listing.state, listing.is_simple_consumer_group) == (ConsumerGroupState.STABLE, False)
        described = admin.describe_consumer_groups([group])[group].result(timeout=TIMEOUT_S)
        assert (described.state, described.partition_assignor) == (ConsumerGroupState.STABLE, "range")
        assert described.is_simple_consumer_group is False
        assert described.coordinator.id == broker.node_id
        assert sorted(m.client_id for m in described.members) == ["ck-member-0", "ck-member-1"]
        described_assignments = sorted(
            ({tp.partition for tp in m.assignment.topic_partitions} for m in described.members), key=min
        )
        assert described_assignments == sorted(({tp.partition for tp in m.assignment()} for m in members), key=min)

        # An admin client may not move the offsets of a group that has members.
        request = [ConsumerGroupTopicPartitions(group, [CkTopicPartition(topic, 0, 1)])]
        refused = admin.alter_consumer_group_offsets(request)[group].result(timeout=TIMEOUT_S)
        errors = [(tp.partition, tp.error.code() if tp.error else None) for tp in refused.topic_partitions]
        assert errors == [(0, KafkaError.UNKNOWN_MEMBER_ID)]
        assert ck_committed(admin, group) == ends, "the refused change changed nothing"
    finally:
        for member in members:
            # Leaves the group (LeaveGroup).
            member.close()

    listing = ck_listed(admin)[group]
    assert listing.state == ConsumerGroupState.EMPTY
    described = admin.describe_consumer_groups([group])[group].result(timeout=TIMEOUT_S)
    assert (described.state, described.members) == (ConsumerGroupState.EMPTY, [])
    assert ck_committed(admin, group) == ends

    # Offsets of an empty group can be moved; a new member starts where they were moved to.
    rewound = [CkTopicPartition(topic, p, 20) for p in range(PARTITIONS)]
    altered = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, rewound)])[group].result(
        timeout=TIMEOUT_S
    )
    assert {(tp.partition, tp.offset, tp.error) for tp in altered.topic_partitions} == {
        (p, 20, None) for p in range(PARTITIONS)
    }
    assert ck_committed(admin, group) == {p: 20 for p in range(PARTITIONS)}
    more = ck_produce(broker, topic, RECORDS, MORE_RECORDS)
    ends = {p: (RECORDS + MORE_RECORDS) // PARTITIONS for p in range(PARTITIONS)}
    newcomer = ck_consumer(broker, group, "ck-member-2")
    resumed = []
    try:
        newcomer.subscribe([topic])

        def caught_up():
            ck_poll_and_commit(newcomer, resumed)
            return set(resumed) >= more

        wait_until("the new member reads from the moved offsets to the end", caught_up)
        wait_until("it commits up to the end", lambda: ck_committed(admin, group) == ends)
    finally:
        newcomer.close()
    first_offsets = {}
    for partition, offset in resumed:
        first_offsets.setdefault(partition, offset)
    assert first_offsets == {p: 20 for p in range(PARTITIONS)}, "resumed at the moved offsets"
    assert sorted(resumed) == sorted({(p, o) for p in range(PARTITIONS) for o in range(20, ends[p])})

    # Deleted, the group is no longer listed and has no offsets.
    assert admin.delete_consumer_groups([group])[group].result(timeout=TIMEOUT_S) is None
    assert group not in ck_listed(admin)
    assert ck_committed(admin, group) == {}
