"""In-broker jobs driven from Python: a declarative `aggregation` job (the shape a SQL query
plans to) submitted over the admin HTTP API, fed by a kafka-python producer, its output read
by a confluent-kafka read_committed consumer and compared with the same aggregation computed
here. Also: a definition with an error is refused with a message naming the field.

Every wait is bounded: HTTP requests have timeouts and polling loops have deadlines.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, TopicPartition
from kafka import KafkaProducer

DEADLINE_S = 60.0


def admin(broker, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{broker.admin}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def wait_for(broker, name: str, what: str, done) -> dict:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status, job = admin(broker, "GET", f"/v1/jobs/{name}")
        assert status == 200, job
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job {name}: {what} within {DEADLINE_S}s; status {job}"
        time.sleep(0.1)


def read_committed(broker, topic: str, partitions: int) -> list[dict]:
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": f"reader-{topic}",
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "enable.auto.commit": False,
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    at_end: set[int] = set()
    values = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"read {topic} to its end"
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                at_end.add(message.partition())
                continue
            at_end.discard(message.partition())
            values.append(json.loads(message.value()))
    finally:
        consumer.close()
    return values


def test_an_aggregation_job_computes_what_the_query_says(broker):
    source, output, name = broker.topic("orders"), broker.topic("revenue"), broker.topic("revenue-job")
    definition = {
        "name": name, "kind": "aggregation", "input": source, "commit_interval_ms": 100,
        "aggregation": {
            "output": output,
            "timestamp_field": "at",
            "watermark_bound_ms": 2000,
            "filter": [{"field": "status", "equals": "paid"}],
            "key_by": ["country"],
            "window": {"tumbling_ms": 10_000},
            "aggregates": [
                {"name": "orders", "function": "count"},
                {"name": "revenue", "function": "sum", "field": "amount"},
                {"name": "largest", "function": "max", "field": "amount"},
                {"name": "buyers", "function": "distinct_count", "field": "user"},
            ],
        },
    }
    status, job = admin(broker, "POST", "/v1/jobs", definition)
    assert status == 201, job

    base = int(time.time() * 1000) - 600_000
    base -= base % 10_000
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    expected: dict[tuple[str, int], dict] = defaultdict(lambda: {"orders": 0, "revenue": 0.0, "largest": None, "buyers": set()})
    for i in range(3_000):
        order = {
            "user": f"u-{i * 7 % 50}", "country": ["de", "fr", "jp"][i % 3], "amount": (i * 13) % 97 + 1,
            "status": "paid" if i % 4 else "cancelled", "at": base + i * 100 - (i * 31) % 1_500,
        }
        producer.send(source, value=json.dumps(order).encode(), partition=i % broker.default_partitions)
        if order["status"] == "paid":
            window = order["at"] - order["at"] % 10_000
            entry = expected[(order["country"], window)]
            entry["orders"] += 1
            entry["revenue"] += order["amount"]
            entry["largest"] = max(entry["largest"] or 0, order["amount"])
            entry["buyers"].add(order["user"])
    producer.send(source, value=b'{"not": "an order"}', partition=0)
    # Far ahead on every partition: every window closes.
    for partition in range(broker.default_partitions):
        producer.send(source, value=json.dumps({"status": "flush", "at": base + 3_600_000}).encode(), partition=partition)
    producer.flush(timeout=30)
    producer.close(timeout=30)

    final = base + 3_600_000 - 2_000
    job = wait_for(broker, name, "commit the final watermark", lambda j: (j.get("last_commit") or {}).get("watermark") == final)
    assert job["malformed_records"] == 1, job
    got = sorted(read_committed(broker, output, broker.default_partitions), key=lambda v: (v["country"], v["window_start"]))
    want = sorted(
        ({"country": country, "window_start": window, "window_end": window + 10_000, "orders": e["orders"],
          "revenue": e["revenue"], "largest": float(e["largest"]), "buyers": len(e["buyers"])}
         for (country, window), e in expected.items()),
        key=lambda v: (v["country"], v["window_start"]),
    )
    assert got == want

    status, stopped = admin(broker, "DELETE", f"/v1/jobs/{name}")
    assert status == 200 and stopped["state"] == "stopped", stopped


def test_a_definition_with_an_error_is_refused_naming_the_field(broker):
    status, answer = admin(broker, "POST", "/v1/jobs", {
        "name": "broken", "kind": "aggregation", "input": "orders",
        "aggregation": {"output": "x", "window": {"tumbling_ms": 1000}, "aggregates": [{"name": "s", "function": "sum"}]},
    })
    assert status == 400
    assert "needs a \"field\"" in answer["error"], answer
    status, answer = admin(broker, "POST", "/v1/jobs", {"name": "broken", "kind": "aggregation", "input": "orders"})
    assert status == 400 and "aggregation" in answer["error"], answer
    status, jobs = admin(broker, "GET", "/v1/jobs")
    assert status == 200 and all(j["name"] != "broken" for j in jobs)
