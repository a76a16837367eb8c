"""Transactions from Python against a real broker, with confluent-kafka (librdkafka) and
kafka-python 3.

- Visibility: a transactional producer commits one transaction, aborts a second after its
  records are in the log, and leaves a third open while a plain producer writes behind it. A
  read_committed consumer sees the committed records only, and stops at the last stable offset
  (the open transaction's first record) until it commits; a read_uncommitted consumer sees
  everything. The transaction markers take one offset per partition, as in Kafka.
- Consume-transform-produce: a consumer group's records are transformed and written in
  transactions that also carry the group's offsets (send_offsets_to_transaction); one batch is
  aborted and its consumer replaced. The group's committed offsets end at the input's end, and
  a read_committed reader of the output finds each result exactly once (the aborted batch's
  results are in the log twice, so read_uncommitted shows them twice).
- Zombie fencing (confluent-kafka): a second producer with the same transactional.id fences the
  first, whose open transaction is aborted before the second's init_transactions returns, and
  whose commit then fails with a fatal fenced error.

Every client call that can block is bounded: librdkafka's transactional calls take timeouts,
and kafka-python's commit/abort/send_offsets (which wait without one) run on a helper thread
that is joined with a deadline.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KpTopicPartition
from kafka.structs import OffsetAndMetadata

PARTITIONS = 3
RECORDS = 60  # per transaction in the visibility tests; the input size in the transform tests
BATCH = 10  # records per consume-transform-produce transaction (at most)
DEADLINE_S = 30.0
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 500
FENCED_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


@pytest.fixture(scope="module")
def broker_settings():
    # Kafka waits 3 s for more members before a new group's first rebalance and refuses
    # session timeouts under 6 s; the transform tests want neither.
    return ["group.initial.rebalance.delay.ms=0", "group.min.session.timeout.ms=1000"]


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topic(broker, prefix):
    return broker.create_topic(prefix, PARTITIONS, DEADLINE_S)


def record(tag, seq):
    """Record `seq` of a run: partition round robin, key and value naming it."""
    return seq % PARTITIONS, f"{tag}-{seq}".encode(), f"{tag} value {seq}".encode()


def expected(tags_and_counts):
    """{partition: [(key, value), ...]} for the runs (tag, count), in order."""
    out = {p: [] for p in range(PARTITIONS)}
    for tag, count in tags_and_counts:
        for seq in range(count):
            partition, key, value = record(tag, seq)
            out[partition].append((key, value))
    return out


def without_offsets(received):
    return {p: [(k, v) for _, k, v in rows] for p, rows in received.items()}


def bounded(what, fn, *args, deadline_s=DEADLINE_S):
    """Runs fn(*args) on a helper thread and waits at most deadline_s for it (for client calls
    that wait without a timeout); re-raises what it raised."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn(*args)
        except BaseException as error:  # noqa: BLE001 - re-raised below
            outcome["error"] = error

    thread = threading.Thread(target=run, name=what, daemon=True)
    thread.start()
    thread.join(deadline_s)
    assert not thread.is_alive(), f"{what}: did not return within {deadline_s:.0f}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


# ---------------------------------------------------------------------------------------------
# confluent-kafka helpers


def ck_producer(broker, transactional_id=None):
    config = {"bootstrap.servers": broker.bootstrap, "client.id": "sluice-test-txn", "linger.ms": 5, "acks": "all"}
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
    return Producer(config)


class Deliveries:
    """Delivery reports by key: (partition, offset), or the error."""

    def __init__(self):
        self.reports = {}

    def callback(self, err, message):
        self.reports[message.key()] = err if err is not None else (message.partition(), message.offset())

    def offsets(self, tag, count):
        """{partition: [offset, ...]} of run `tag`, checking every record was delivered."""
        out = {p: [] for p in range(PARTITIONS)}
        for seq in range(count):
            partition, key, _ = record(tag, seq)
            report = self.reports.get(key)
            assert isinstance(report, tuple), f"{key!r} not delivered: {report}"
            assert report[0] == partition
            out[partition].append(report[1])
        return out


def ck_send(producer, topic, tag, count, deliveries):
    for seq in range(count):
        partition, key, value = record(tag, seq)
        producer.produce(topic, key=key, value=value, partition=partition, on_delivery=deliveries.callback)
        producer.poll(0)
    assert producer.flush(DEADLINE_S) == 0, f"{tag}: messages still queued after flush"


def ck_read(broker, topic, isolation):
    """Everything a fresh `isolation` consumer reads from each partition's start to its end (the
    last stable offset under read_committed: librdkafka reports EOF there), as
    {partition: [(offset, key, value)]}, and the end offsets the broker gives that consumer."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "client.id": f"sluice-test-{isolation}",
            "group.id": unique("sluice-test-reader"),
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
        }
    )
    try:
        # Asked before fetching starts: a ListOffsets would otherwise queue behind long-polling
        # Fetches on the connection.
        ends = {}
        for p in range(PARTITIONS):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=DEADLINE_S, cached=False)
            ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        received = {p: [] for p in range(PARTITIONS)}
        at_end = set()
        deadline = time.monotonic() + DEADLINE_S
        while len(at_end) < PARTITIONS:
            assert time.monotonic() < deadline, f"{isolation} read of {topic}: only {sorted(at_end)} reached their end"
            for message in consumer.consume(num_messages=500, timeout=0.2):
                error = message.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    at_end.add(message.partition())
                    continue
                received[message.partition()].append((message.offset(), message.key(), message.value()))
        return received, ends
    finally:
        consumer.close()


def ck_committed(broker, group, topic):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "client.id": "sluice-test-admin"})
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], require_stable=True)
    result = futures[group].result(timeout=DEADLINE_S)
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.topic == topic}


# ---------------------------------------------------------------------------------------------
# 1. confluent-kafka: visibility


def test_confluent_kafka_commit_abort_visibility_and_last_stable_offset(broker):
    topic = create_topic(broker, "ck-txn-visibility")
    deliveries = Deliveries()
    producer = ck_producer(broker, unique("ck-txn"))
    producer.init_transactions(DEADLINE_S)

    producer.begin_transaction()
    ck_send(producer, topic, "committed", RECORDS, deliveries)
    producer.commit_transaction(DEADLINE_S)

    # Flushed first, so the records are in the log when the abort marker goes in.
    producer.begin_transaction()
    ck_send(producer, topic, "aborted", RECORDS, deliveries)
    producer.abort_transaction(DEADLINE_S)

    # An open transaction with a record in each partition, and a plain producer's records
    # behind it: the last stable offset is the open transaction's first offset.
    producer.begin_transaction()
    ck_send(producer, topic, "open", PARTITIONS, deliveries)
    plain = ck_producer(broker)
    ck_send(plain, topic, "plain", PARTITIONS, deliveries)

    committed = deliveries.offsets("committed", RECORDS)
    aborted = deliveries.offsets("aborted", RECORDS)
    opened = deliveries.offsets("open", PARTITIONS)
    plain_offsets = deliveries.offsets("plain", PARTITIONS)
    for p in range(PARTITIONS):
        # Each run is contiguous; each ended transaction left one marker in each partition.
        for run in (committed, aborted, opened, plain_offsets):
            assert run[p] == list(range(run[p][0], run[p][0] + len(run[p]))), f"partition {p}: {run[p]}"
        assert committed[p][0] == 0
        assert aborted[p][0] == committed[p][-1] + 2, f"partition {p}: one commit marker after the first run"
        assert opened[p][0] == aborted[p][-1] + 2, f"partition {p}: one abort marker after the second run"
        assert plain_offsets[p][0] == opened[p][-1] + 1

    received, ends = ck_read(broker, topic, "read_committed")
    assert without_offsets(received) == expected([("committed", RECORDS)]), "read_committed during the open txn"
    assert ends == {p: opened[p][0] for p in range(PARTITIONS)}, "read_committed end offset = last stable offset"
    received, ends = ck_read(broker, topic, "read_uncommitted")
    assert without_offsets(received) == expected(
        [("committed", RECORDS), ("aborted", RECORDS), ("open", PARTITIONS), ("plain", PARTITIONS)]
    ), "read_uncommitted sees every record, aborted and open ones included"
    assert ends == {p: plain_offsets[p][-1] + 1 for p in range(PARTITIONS)}

    producer.commit_transaction(DEADLINE_S)

    received, ends = ck_read(broker, topic, "read_committed")
    assert without_offsets(received) == expected(
        [("committed", RECORDS), ("open", PARTITIONS), ("plain", PARTITIONS)]
    ), "read_committed after the last commit: never the aborted records"
    for p in range(PARTITIONS):
        assert [o for o, _, _ in received[p]] == committed[p] + opened[p] + plain_offsets[p]
    # The commit marker of the formerly open transaction is the last offset.
    assert ends == {p: plain_offsets[p][-1] + 2 for p in range(PARTITIONS)}, "no open transaction is left"
    received, uncommitted_ends = ck_read(broker, topic, "read_uncommitted")
    assert uncommitted_ends == ends
    for p in range(PARTITIONS):
        assert [o for o, _, _ in received[p]] == committed[p] + aborted[p] + opened[p] + plain_offsets[p]


# ---------------------------------------------------------------------------------------------
# 1. confluent-kafka: consume-transform-produce


def transformed(value):
    return b"processed " + value


def check_transform_output(broker, output, aborted_keys, read):
    """The output under read_committed holds each input's result exactly once, in input order
    per partition; under read_uncommitted the aborted batch's results are there twice."""
    inputs = expected([("in", RECORDS)])
    want = {p: [(k, transformed(v)) for k, v in rows] for p, rows in inputs.items()}
    received, _ = read(broker, output, "read_committed")
    assert without_offsets(received) == want, "read_committed output: each result once"
    received, _ = read(broker, output, "read_uncommitted")
    keys = [k for rows in received.values() for _, k, _ in rows]
    assert len(keys) == RECORDS + len(aborted_keys)
    assert sorted(k for k in set(keys) if keys.count(k) == 2) == sorted(aborted_keys), (
        "read_uncommitted output: the aborted batch's results twice, the others once"
    )


def test_confluent_kafka_consume_transform_produce(broker):
    source = create_topic(broker, "ck-txn-in")
    output = create_topic(broker, "ck-txn-out")
    group = unique("ck-txn-group")
    deliveries = Deliveries()
    ck_send(ck_producer(broker), source, "in", RECORDS, deliveries)
    input_ends = {p: len(offsets) for p, offsets in deliveries.offsets("in", RECORDS).items()}

    producer = ck_producer(broker, unique("ck-txn-transform"))
    producer.init_transactions(DEADLINE_S)
    output_deliveries = Deliveries()

    def new_consumer(name):
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "client.id": name,
                "group.id": group,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
            }
        )
        consumer.subscribe([source])
        return consumer

    done = set()  # (partition, offset) of inputs whose results are committed

    def process_batch(consumer, commit):
        """One transaction over the next batch of records; returns the keys it held."""
        messages = consumer.consume(num_messages=BATCH, timeout=1.0)
        if not messages:
            return []
        for message in messages:
            assert message.error() is None, message.error()
        producer.begin_transaction()
        next_offsets = {}
        for message in messages:
            producer.produce(
                output,
                key=message.key(),
                value=transformed(message.value()),
                partition=message.partition(),
                on_delivery=output_deliveries.callback,
            )
            next_offsets[message.partition()] = message.offset() + 1
        producer.send_offsets_to_transaction(
            [TopicPartition(source, p, o) for p, o in next_offsets.items()],
            consumer.consumer_group_metadata(),
            DEADLINE_S,
        )
        if commit:
            producer.commit_transaction(DEADLINE_S)
            done.update((m.partition(), m.offset()) for m in messages)
        else:
            # Flushed first, so the results are in the log when the abort marker goes in
            # (librdkafka would otherwise drop the unsent ones).
            assert producer.flush(DEADLINE_S) == 0
            producer.abort_transaction(DEADLINE_S)
        return [m.key() for m in messages]

    consumer = new_consumer("ck-transform-1")
    try:
        deadline = time.monotonic() + DEADLINE_S
        while len(done) < RECORDS // 3:
            assert time.monotonic() < deadline, f"first member: {len(done)} records processed"
            process_batch(consumer, commit=True)
        aborted_keys = []
        while not aborted_keys:
            assert time.monotonic() < deadline, "first member: no batch to abort"
            aborted_keys = process_batch(consumer, commit=False)
    finally:
        # Its position is past the aborted batch; a new member must resume at the committed
        # offsets, before it.
        consumer.close()

    consumer = new_consumer("ck-transform-2")
    try:
        deadline = time.monotonic() + DEADLINE_S
        while len(done) < RECORDS:
            assert time.monotonic() < deadline, f"second member: {len(done)} of {RECORDS} records processed"
            process_batch(consumer, commit=True)
    finally:
        consumer.close()

    assert done == {(p, o) for p in range(PARTITIONS) for o in range(input_ends[p])}
    assert ck_committed(broker, group, source) == input_ends, "the group's offsets are those processed"
    check_transform_output(broker, output, aborted_keys, ck_read)


# ---------------------------------------------------------------------------------------------
# 3. confluent-kafka: zombie fencing


def test_confluent_kafka_zombie_is_fenced_and_its_transaction_aborted(broker):
    topic = create_topic(broker, "ck-txn-fencing")
    transactional_id = unique("ck-txn-zombie")
    deliveries = Deliveries()

    zombie = ck_producer(broker, transactional_id)
    zombie.init_transactions(DEADLINE_S)
    zombie.begin_transaction()
    ck_send(zombie, topic, "zombie", RECORDS, deliveries)
    zombie_offsets = deliveries.offsets("zombie", RECORDS)

    successor = ck_producer(broker, transactional_id)
    successor.init_transactions(DEADLINE_S)

    # init_transactions returns once the zombie's transaction is aborted: nothing is open.
    received, committed_ends = ck_read(broker, topic, "read_committed")
    assert received == {p: [] for p in range(PARTITIONS)}, "the zombie's records are aborted"
    _, uncommitted_ends = ck_read(broker, topic, "read_uncommitted")
    assert committed_ends == uncommitted_ends == {p: zombie_offsets[p][-1] + 2 for p in range(PARTITIONS)}, (
        "an abort marker after the zombie's records, and the last stable offset at the end"
    )

    with pytest.raises(KafkaException) as raised:
        zombie.commit_transaction(DEADLINE_S)
    error = raised.value.args[0]
    assert error.fatal() and error.code() in FENCED_CODES, f"the zombie's commit failed with {error}"

    successor.begin_transaction()
    ck_send(successor, topic, "successor", RECORDS, deliveries)
    successor.commit_transaction(DEADLINE_S)

    received, _ = ck_read(broker, topic, "read_committed")
    assert without_offsets(received) == expected([("successor", RECORDS)])
    received, _ = ck_read(broker, topic, "read_uncommitted")
    assert without_offsets(received) == expected([("zombie", RECORDS), ("successor", RECORDS)])


# ---------------------------------------------------------------------------------------------
# 2. kafka-python


def kp_producer(broker, transactional_id=None):
    config = dict(
        bootstrap_servers=broker.bootstrap,
        client_id="sluice-test-txn",
        acks="all",
        linger_ms=5,
        max_block_ms=int(DEADLINE_S * 1000),
    )
    if transactional_id is not None:
        config["transactional_id"] = transactional_id
    else:
        config["enable_idempotence"] = False
    return KafkaProducer(**config)


def kp_send(producer, topic, tag, count):
    """Sends run `tag` and waits for it; returns {partition: [offset, ...]}."""
    futures = []
    for seq in range(count):
        partition, key, value = record(tag, seq)
        futures.append(producer.send(topic, key=key, value=value, partition=partition))
    producer.flush(timeout=DEADLINE_S)
    out = {p: [] for p in range(PARTITIONS)}
    for seq, future in enumerate(futures):
        metadata = future.get(timeout=DEADLINE_S)
        assert metadata.partition == record(tag, seq)[0]
        out[metadata.partition].append(metadata.offset)
    return out


def kp_read(broker, topic, isolation):
    """As ck_read, with a kafka-python consumer: reads until its position in each partition
    reaches the end offset the broker gives it (the last stable offset under read_committed;
    kafka-python's position moves past markers and aborted batches)."""
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        client_id=f"sluice-test-{isolation}",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation,
    )
    try:
        partitions = [KpTopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
        received = {p: [] for p in range(PARTITIONS)}
        deadline = time.monotonic() + DEADLINE_S

        def behind():
            # position() answers None if the offset reset has not finished within its timeout.
            positions = {tp: consumer.position(tp, timeout_ms=1000) for tp in partitions}
            return [tp for tp, position in positions.items() if position is None or position < ends[tp.partition]]

        while behind():
            assert time.monotonic() < deadline, f"{isolation} read of {topic}: {behind()} short of {ends}"
            for tp, messages in consumer.poll(timeout_ms=200).items():
                received[tp.partition].extend((m.offset, m.key, m.value) for m in messages)
        return received, ends
    finally:
        consumer.close()


def test_kafka_python_commit_abort_visibility_and_last_stable_offset(broker):
    topic = create_topic(broker, "kp-txn-visibility")
    producer = kp_producer(broker, unique("kp-txn"))
    plain = kp_producer(broker)
    try:
        producer.init_transactions()

        producer.begin_transaction()
        committed = kp_send(producer, topic, "committed", RECORDS)
        bounded("commit_transaction", producer.commit_transaction)

        producer.begin_transaction()
        aborted = kp_send(producer, topic, "aborted", RECORDS)
        bounded("abort_transaction", producer.abort_transaction)

        producer.begin_transaction()
        opened = kp_send(producer, topic, "open", PARTITIONS)
        plain_offsets = kp_send(plain, topic, "plain", PARTITIONS)
        for p in range(PARTITIONS):
            assert aborted[p][0] == committed[p][-1] + 2, f"partition {p}: one commit marker"
            assert opened[p][0] == aborted[p][-1] + 2, f"partition {p}: one abort marker"
            assert plain_offsets[p][0] == opened[p][-1] + 1

        received, ends = kp_read(broker, topic, "read_committed")
        assert ends == {p: opened[p][0] for p in range(PARTITIONS)}, "read_committed end offset = last stable offset"
        assert without_offsets(received) == expected([("committed", RECORDS)]), "read_committed during the open txn"
        received, ends = kp_read(broker, topic, "read_uncommitted")
        assert ends == {p: plain_offsets[p][-1] + 1 for p in range(PARTITIONS)}
        assert without_offsets(received) == expected(
            [("committed", RECORDS), ("aborted", RECORDS), ("open", PARTITIONS), ("plain", PARTITIONS)]
        )

        bounded("commit_transaction", producer.commit_transaction)

        received, ends = kp_read(broker, topic, "read_committed")
        assert ends == {p: plain_offsets[p][-1] + 2 for p in range(PARTITIONS)}, "no open transaction is left"
        assert without_offsets(received) == expected(
            [("committed", RECORDS), ("open", PARTITIONS), ("plain", PARTITIONS)]
        ), "read_committed after the last commit: never the aborted records"
        for p in range(PARTITIONS):
            assert [o for o, _, _ in received[p]] == committed[p] + opened[p] + plain_offsets[p]
        received, uncommitted_ends = kp_read(broker, topic, "read_uncommitted")
        assert uncommitted_ends == ends
        for p in range(PARTITIONS):
            assert [o for o, _, _ in received[p]] == committed[p] + aborted[p] + opened[p] + plain_offsets[p]
    finally:
        producer.close(timeout=DEADLINE_S)
        plain.close(timeout=DEADLINE_S)


def test_kafka_python_consume_transform_produce(broker):
    source = create_topic(broker, "kp-txn-in")
    output = create_topic(broker, "kp-txn-out")
    group = unique("kp-txn-group")
    plain = kp_producer(broker)
    try:
        input_offsets = kp_send(plain, source, "in", RECORDS)
    finally:
        plain.close(timeout=DEADLINE_S)
    input_ends = {p: len(offsets) for p, offsets in input_offsets.items()}

    producer = kp_producer(broker, unique("kp-txn-transform"))
    done = set()

    def new_consumer(name):
        return KafkaConsumer(
            source,
            bootstrap_servers=broker.bootstrap,
            client_id=name,
            group_id=group,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        )

    def process_batch(consumer, commit):
        # Not shorter than 1 s: kafka-python 3.0.12 can drop a join that completes just as a
        # poll times out (see test_groups.py).
        batches = consumer.poll(timeout_ms=1000, max_records=BATCH)
        if not batches:
            return []
        producer.begin_transaction()
        offsets = {}
        futures = []
        for tp, messages in batches.items():
            for m in messages:
                futures.append(producer.send(output, key=m.key, value=transformed(m.value), partition=m.partition))
            offsets[tp] = OffsetAndMetadata(messages[-1].offset + 1, "", -1)
        bounded(
            "send_offsets_to_transaction", producer.send_offsets_to_transaction, offsets, consumer.group_metadata()
        )
        if commit:
            bounded("commit_transaction", producer.commit_transaction)
            for future in futures:
                future.get(timeout=DEADLINE_S)
            done.update((tp.partition, m.offset) for tp, messages in batches.items() for m in messages)
        else:
            # Flushed first, so the results are in the log when the abort marker goes in.
            producer.flush(timeout=DEADLINE_S)
            for future in futures:
                future.get(timeout=DEADLINE_S)
            bounded("abort_transaction", producer.abort_transaction)
        return [m.key for messages in batches.values() for m in messages]

    try:
        producer.init_transactions()
        consumer = new_consumer("kp-transform-1")
        try:
            deadline = time.monotonic() + DEADLINE_S
            while len(done) < RECORDS // 3:
                assert time.monotonic() < deadline, f"first member: {len(done)} records processed"
                process_batch(consumer, commit=True)
            aborted_keys = []
            while not aborted_keys:
                assert time.monotonic() < deadline, "first member: no batch to abort"
                aborted_keys = process_batch(consumer, commit=False)
        finally:
            bounded("consumer close", consumer.close)

        consumer = new_consumer("kp-transform-2")
        try:
            deadline = time.monotonic() + DEADLINE_S
            while len(done) < RECORDS:
                assert time.monotonic() < deadline, f"second member: {len(done)} of {RECORDS} records processed"
                process_batch(consumer, commit=True)
        finally:
            bounded("consumer close", consumer.close)
    finally:
        producer.close(timeout=DEADLINE_S)

    assert done == {(p, o) for p in range(PARTITIONS) for o in range(input_ends[p])}
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="sluice-test-admin")
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    assert {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == source} == input_ends, (
        "the group's offsets are those processed"
    )
    check_transform_output(broker, output, aborted_keys, kp_read)
