"""kcat against a real broker. This is Debian's kcat 1.7.1 on librdkafka 2.0.2: older than 2.2.0,
it mis-reads unknown tagged fields, and it decides which codecs a broker supports from the
ApiVersions ranges (see KAFKA-NOTES). kcat cannot create topics, so they are auto-created by
the first produce (the broker's num.partitions applies)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import defaultdict

import pytest

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
RECORDS_PER_CODEC = 300
KCAT_DEADLINE_S = 60
# librdkafka log lines look like "%3|1700000000.000|FAIL|...": levels 0-3 are errors or worse.
KCAT_ERROR = re.compile(r"^(%[0-3]\||% ERROR)", re.MULTILINE)

pytestmark = pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed (scripts/test.sh installs it)")


def kcat(broker, *args, input_text=None):
    """Runs kcat against `broker`; fails on a non-zero exit or a librdkafka error line."""
    command = ["kcat", "-b", broker.bootstrap, *args]
    result = subprocess.run(
        command,
        input=input_text,
        capture_output=True,
        text=True,
        timeout=KCAT_DEADLINE_S,
    )
    assert result.returncode == 0 and not KCAT_ERROR.search(result.stderr), (
        f"{' '.join(command)} exited {result.returncode}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def consume_json(broker, topic, *args):
    """`kcat -C -e -J`: every message from the start offset to the current end, as dicts."""
    out = kcat(broker, "-C", "-t", topic, "-e", "-J", "-q", *args)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def now_ms():
    return int(time.time() * 1000)


def test_metadata(broker):
    brokers = json.loads(kcat(broker, "-L", "-J"))
    assert brokers["controllerid"] == broker.node_id
    assert brokers["brokers"] == [{"id": broker.node_id, "name": broker.bootstrap}]

    topic = broker.topic("kc-metadata")
    kcat(broker, "-P", "-t", topic, input_text="hello\n")
    metadata = json.loads(kcat(broker, "-L", "-J", "-t", topic))
    assert [t["topic"] for t in metadata["topics"]] == [topic]
    described = metadata["topics"][0]
    assert "error" not in described, described
    partitions = sorted(described["partitions"], key=lambda p: p["partition"])
    assert [p["partition"] for p in partitions] == list(range(broker.default_partitions))
    for partition in partitions:
        assert partition["leader"] == broker.node_id
        assert partition["replicas"] == [{"id": broker.node_id}]
        assert partition["isrs"] == [{"id": broker.node_id}]


# lz4 included: librdkafka enables it only when ApiVersions lists FindCoordinator v0 (an
# 0.8.2-era feature check), so this also guards that advertisement.
@pytest.mark.parametrize("codec", CODECS)
def test_produce_and_consume(broker, codec):
    topic = broker.topic(f"kc-{codec}")
    lines = []
    for i in range(RECORDS_PER_CODEC):
        # 23 distinct keys: librdkafka's default partitioner hashes the key, so each key's
        # records land in one partition, in send order.
        lines.append(f"key-{i % 23}\t{codec}-{i:05d}-{'payload ' * (i % 40)}")
    # -H applies to every message of the run; an empty value and a null value (no "=") too.
    kcat(
        broker, "-P", "-t", topic, "-K", "\t", "-z", codec,
        "-H", f"codec={codec}", "-H", "trace=abc-123", "-H", "empty=", "-H", "nullvalue",
        "-X", "linger.ms=50",
        input_text="\n".join(lines) + "\n",
    )

    messages = consume_json(broker, topic, "-o", "beginning")
    assert len(messages) == RECORDS_PER_CODEC
    by_partition = defaultdict(list)
    partition_of_key = {}
    for message in messages:
        assert message["topic"] == topic
        assert message["headers"] == ["codec", codec, "trace", "abc-123", "empty", "", "nullvalue", None]
        assert message["tstype"] == "create"
        assert partition_of_key.setdefault(message["key"], message["partition"]) == message["partition"]
        by_partition[message["partition"]].append(message)
    assert len(by_partition) > 1, "records should spread over several partitions"
    consumed_lines = []
    for partition, in_partition in by_partition.items():
        # Dense offsets from 0, and send order within the partition.
        assert [m["offset"] for m in in_partition] == list(range(len(in_partition))), f"partition {partition}"
        sequence = [int(m["payload"].split("-")[1]) for m in in_partition]
        assert sequence == sorted(sequence), f"partition {partition} is out of send order"
        consumed_lines += [(m["key"], m["payload"]) for m in in_partition]
    assert sorted(consumed_lines) == sorted(tuple(line.split("\t")) for line in lines)

    # kcat falls back to no compression silently when it believes the broker cannot take the
    # codec; the stored batches show what it really sent. librdkafka also sends a batch
    # uncompressed when compressing would not shrink it (a small batch of a busy run), so a
    # few uncompressed batches beside the codec's are fine; only the codec's batches count.
    stored = broker.stored_codecs(topic)
    assert set(stored) <= {codec, "none"}, stored
    if codec != "none":
        assert stored.get(codec, 0) > stored.get("none", 0), stored


def test_offsets(broker):
    """-o with absolute, relative and timestamp offsets, e@ stop timestamps, and -Q queries."""
    topic = broker.topic("kc-offsets")
    first = "".join(f"first-{i}\n" for i in range(5))
    kcat(broker, "-P", "-t", topic, "-p", "0", "-z", "gzip", input_text=first)
    first_timestamps = [m["ts"] for m in consume_json(broker, topic, "-p", "0", "-o", "beginning")]
    assert len(first_timestamps) == 5
    # The second run's timestamps must be later than every first-run timestamp.
    split_ms = max(first_timestamps) + 1
    deadline = time.monotonic() + 5
    while now_ms() <= split_ms:
        assert time.monotonic() < deadline, "the wall clock did not advance"
        time.sleep(0.005)
    second = "".join(f"second-{i}\n" for i in range(5))
    kcat(broker, "-P", "-t", topic, "-p", "0", "-z", "zstd", input_text=second)

    def payloads(*args):
        return [(m["offset"], m["payload"]) for m in consume_json(broker, topic, "-p", "0", *args)]

    firsts = [(i, f"first-{i}") for i in range(5)]
    seconds = [(5 + i, f"second-{i}") for i in range(5)]
    assert payloads("-o", "beginning") == firsts + seconds
    # Absolute offsets, including one inside a compressed batch.
    assert payloads("-o", "2") == firsts[2:] + seconds
    assert payloads("-o", "7", "-c", "2") == seconds[2:4]
    # Relative to the end.
    assert payloads("-o", "-3") == seconds[2:]
    # By timestamp: the first offset whose timestamp is at or after the given time.
    assert payloads("-o", f"s@{split_ms}") == seconds
    assert payloads("-o", f"s@{min(first_timestamps)}") == firsts + seconds
    # Stop before the first message at or after the given time.
    assert payloads("-o", "beginning", "-o", f"e@{split_ms}") == firsts

    def query(timestamp):
        out = json.loads(kcat(broker, "-Q", "-J", "-t", f"{topic}:0:{timestamp}"))
        return out[topic]["0"]["offset"]

    assert query(split_ms) == 5
    assert query(-1) == 10  # latest
    assert query(-2) == 0  # earliest
    assert query(now_ms() + 3_600_000) == -1  # nothing that late
