"""A real Sluice broker process for the cross-client suite.

Each test module gets its own broker (binary from $SLUICE_BIN, default target/debug/sluice)
on an ephemeral port with a fresh data dir, so one client's topics never leak into another's
checks. The broker's stderr goes to a file: its new lines are attached to every failing
test's report, and a test fails if the broker logged a WARN or ERROR while it ran (a real
client should never hit UNSUPPORTED_VERSION or get its connection closed).

Run: `.venv/bin/python -m pytest tests/clients -q` (scripts/test.sh installs the clients and
builds the broker first). SLUICE_TEST_LOG=debug sets the broker's RUST_LOG.
"""

from __future__ import annotations

import ctypes
import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_LINE = re.compile(r"^sluice broker listening on (\S+:\d+)$")
ADMIN_LINE = re.compile(r"^sluice admin API listening on (\S+:\d+)$")
# A debug build on a busy 2-core machine can take a while to open its data dir.
START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 15.0
# Topics auto-created by produce (kcat) or created without a partition count get this many.
DEFAULT_PARTITIONS = 3
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
BAD_LOG_LINE = re.compile(r"\b(WARN|ERROR)\b")
CODEC_NAMES = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def pytest_configure(config):
    # kafka-python 3.0.12 loads its protocol schemas through importlib.resources APIs that
    # Python 3.11 deprecates: a hundred lines of noise per run that say nothing about Sluice.
    config.addinivalue_line("filterwarnings", r"ignore:(read_text|open_text) is deprecated:DeprecationWarning")


# Loaded here, not in the forked child: dlopen after fork in a threaded process can deadlock.
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If pytest itself is killed, the kernel sends the broker SIGTERM instead of leaving it
    # running.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Broker:
    """A running broker: its bootstrap address and its stderr log."""

    def __init__(self, process: subprocess.Popen, bootstrap: str, stderr_path: Path, data_dir: Path):
        self.process = process
        self.bootstrap = bootstrap
        self.stderr_path = stderr_path
        self.data_dir = data_dir
        self.node_id = 0
        self.default_partitions = DEFAULT_PARTITIONS
        # host:port of the admin HTTP API (jobs).
        self.admin = None

    def topic(self, prefix: str) -> str:
        """A topic name no other test uses."""
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def create_topic(self, prefix: str, partitions: int, timeout_s: float = 30.0) -> str:
        """Creates a topic no other test uses (confluent-kafka's admin client) and returns its
        name."""
        name = self.topic(prefix)
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "client.id": "sluice-test-admin"})
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(timeout=timeout_s)
        return name

    def stored_codecs(self, topic: str) -> dict[str, int]:
        """How many stored record batches of `topic` use each codec, read from the segment files.

        Batches are stored as the producer sent them, so this shows whether a client really
        compressed: clients silently fall back to no compression when a broker's ApiVersions
        answer makes them think it cannot decompress. Reading the files is safe while the broker
        runs (read-only; a batch is complete once acknowledged).
        """
        counts: dict[str, int] = {}
        for partition_dir in self.data_dir.glob(f"{topic}-*"):
            if not re.fullmatch(re.escape(topic) + r"-\d+", partition_dir.name):
                continue
            for segment in sorted(partition_dir.glob("*.log")):
                data = segment.read_bytes()
                position = 0
                # Record batch v2: base offset (8), batch length (4), leader epoch (4),
                # magic (1), CRC (4), attributes (2; the low 3 bits are the codec).
                while position + 23 <= len(data):
                    batch_length = int.from_bytes(data[position + 8:position + 12], "big", signed=True)
                    if batch_length <= 0:
                        break
                    attributes = int.from_bytes(data[position + 21:position + 23], "big")
                    codec = CODEC_NAMES.get(attributes & 0x7, f"unknown-{attributes & 0x7}")
                    counts[codec] = counts.get(codec, 0) + 1
                    position += 12 + batch_length
        return counts

    def log_size(self) -> int:
        return self.stderr_path.stat().st_size

    def log_since(self, position: int = 0) -> str:
        with open(self.stderr_path, "rb") as log:
            log.seek(position)
            return ANSI_ESCAPE.sub("", log.read().decode("utf-8", "replace"))


def _start_broker(binary: Path, workdir: Path, settings: list[str]) -> Broker:
    if not binary.is_file():
        raise RuntimeError(f"broker binary {binary} does not exist; run `cargo build` or set SLUICE_BIN")
    data_dir = workdir / "data"
    stderr_path = workdir / "broker.stderr"
    env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("SLUICE_TEST_LOG", "info"))
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [
                str(binary), "broker",
                "--listen", "127.0.0.1:0",
                "--admin-listen", "127.0.0.1:0",
                "--data-dir", str(data_dir),
                "--set", f"num.partitions={DEFAULT_PARTITIONS}",
                *(arg for setting in settings for arg in ("--set", setting)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            preexec_fn=_die_with_parent,
        )
    # Read stdout on a thread so the deadline holds even if the broker prints nothing, and
    # keep draining it afterwards so the broker can never block on a full pipe.
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for raw in process.stdout:
            lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + START_DEADLINE_S
    seen = []
    admin = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(remaining, 0.01)) if remaining > 0 else None
        except queue.Empty:
            line = None
        if line is not None:
            seen.append(line)
            admin_match = ADMIN_LINE.match(line)
            if admin_match:
                admin = admin_match.group(1)
            match = READY_LINE.match(line)
            if match:
                running = Broker(process, match.group(1), stderr_path, data_dir)
                running.admin = admin
                return running
            continue
        # stdout closed or the deadline passed without the ready line.
        _stop_broker(process)
        log = ANSI_ESCAPE.sub("", stderr_path.read_text("utf-8", "replace"))
        raise RuntimeError(
            f"broker did not print its listening line within {START_DEADLINE_S:.0f}s "
            f"(exit code {process.returncode}); stdout: {seen!r}\nstderr:\n{log}"
        )


def _stop_broker(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def broker_settings() -> list[str]:
    """Extra broker configs (`key=value`, each passed as `--set`) for the module's broker. A test
    module that needs other settings defines its own fixture of this name."""
    return []


@pytest.fixture(scope="module")
def broker(tmp_path_factory, broker_settings) -> Broker:
    binary = Path(os.environ.get("SLUICE_BIN", REPO_ROOT / "target" / "debug" / "sluice"))
    if not binary.is_absolute():
        binary = REPO_ROOT / binary
    running = _start_broker(binary, tmp_path_factory.mktemp("broker"), broker_settings)
    try:
        yield running
    finally:
        process = running.process
        still_running = process.poll() is None
        _stop_broker(process)
    # SIGTERM is the documented clean shutdown: exit code 0 and a "shut down cleanly" log line.
    log = running.log_since()
    assert still_running and process.returncode == 0 and "shut down cleanly" in log, (
        f"broker did not shut down cleanly on SIGTERM (exit code {process.returncode})\n{log[-4000:]}"
    )


@pytest.fixture(autouse=True)
def _broker_log_watch(request):
    """Attaches the broker's stderr to failures; fails a test on broker WARN/ERROR lines."""
    if "broker" not in request.fixturenames:
        yield
        return
    running: Broker = request.getfixturevalue("broker")
    start = running.log_size()
    request.node._broker_log = (running, start)
    yield
    new_lines = running.log_since(start).splitlines()
    bad = [line for line in new_lines if BAD_LOG_LINE.search(line)]
    assert not bad, "broker logged warnings or errors during the test:\n" + "\n".join(bad)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    watched = getattr(item, "_broker_log", None)
    if report.failed and watched is not None:
        running, start = watched
        log = running.log_since(start)
        if len(log) > 20_000:
            log = "...\n" + log[-20_000:]
        report.sections.append((f"broker stderr ({running.stderr_path})", log or "(nothing logged)"))

