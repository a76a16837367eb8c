//! `sluice groups list|describe|reset-offsets|delete` end to end: a real broker, a librdkafka
//! consumer in the group, and the CLI binary run as an operator would. Checks what an operator
//! relies on: the group's state, committed offsets and lag per partition (assigned but never
//! committed partitions too), that a dry run changes nothing, that --execute commits what the
//! plan said (as librdkafka then reads it back), and that a group with members is left alone.

// Each test file uses a different part of the shared harness.
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::clients::{admin, consumer_config, create_topic, now_ms, REQUEST_DEADLINE};
use common::records::produce_all;
use common::{run_sluice, CliRun, TestBroker};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "clicks";
const PARTITIONS: i32 = 3;
const GROUP: &str = "cli-group";
const RECORDS: u64 = 60;
/// Bound on one CLI run, on the consumer joining and leaving, and on the group settling.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `sluice groups <args> --bootstrap <broker>`.
fn sluice_groups(broker: &TestBroker, args: &[&str]) -> CliRun {
    run_groups(&broker.bootstrap(), args)
}

/// Runs `sluice groups <args> --bootstrap <bootstrap>` within `DEADLINE`.
fn run_groups(bootstrap: &str, args: &[&str]) -> CliRun {
    let mut full = vec!["groups"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--bootstrap", bootstrap]);
    run_sluice(&full, DEADLINE)
}

/// Runs `sluice groups list` until `done` holds for its rows (group -> (state, protocol type)).
fn wait_for_list(broker: &TestBroker, what: &str, done: impl Fn(&BTreeMap<String, (String, String)>) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let run = sluice_groups(broker, &["list"]).success("groups list");
        let groups = listed_groups(&run.stdout);
        if done(&groups) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} within {DEADLINE:?}; the last list:\n{}", run.stdout);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn listed_groups(stdout: &str) -> BTreeMap<String, (String, String)> {
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["GROUP", "STATE", "PROTOCOL", "TYPE"], "list header:\n{stdout}");
    lines
        .map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            [group, state, protocol_type] => (group.to_string(), (state.to_string(), protocol_type.to_string())),
            _ => panic!("unexpected list row {line:?}:\n{stdout}"),
        })
        .collect()
}

/// The partition rows of `describe`: partition -> [current offset, log end offset, lag, member].
fn described_partitions(stdout: &str) -> BTreeMap<i32, [String; 4]> {
    let mut rows = BTreeMap::new();
    for line in stdout.lines() {
        if let [TOPIC, partition, current, log_end, lag, member] = line.split_whitespace().collect::<Vec<_>>()[..] {
            let partition = partition.parse().unwrap_or_else(|_| panic!("partition in {line:?}"));
            rows.insert(partition, [current, log_end, lag, member].map(str::to_string));
        }
    }
    rows
}

/// The member rows of `describe`: [member id, group instance id, client id, host, assignment].
fn described_members(stdout: &str) -> Vec<Vec<String>> {
    let mut lines = stdout.lines().skip_while(|line| !line.starts_with("MEMBER-ID"));
    lines.next();
    lines
        .take_while(|line| !line.trim().is_empty())
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn group_consumer(broker: &TestBroker, client_id: &str) -> BaseConsumer {
    let consumer: BaseConsumer = consumer_config(broker)
        .set("group.id", GROUP)
        .set("client.id", client_id)
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("create a group consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    consumer
}

/// Leaves the group (LeaveGroup) and closes, bounded: dropping a consumer waits for the close
/// without a limit.
fn close(consumer: BaseConsumer) {
    consumer.close_queue().expect("start closing the consumer");
    let deadline = Instant::now() + DEADLINE;
    while !consumer.closed() {
        assert!(Instant::now() < deadline, "the consumer did not close within {DEADLINE:?}");
        consumer.poll(Duration::from_millis(100));
    }
}

/// The group's committed offsets per partition as librdkafka reads them (OffsetFetch).
fn committed_offsets(broker: &TestBroker) -> Vec<Option<i64>> {
    let consumer: BaseConsumer =
        consumer_config(broker).set("group.id", GROUP).create().expect("create a consumer to read offsets");
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition(TOPIC, partition);
    }
    let committed = consumer.committed_offsets(partitions, REQUEST_DEADLINE).expect("OffsetFetch");
    let offsets = (0..PARTITIONS)
        .map(|partition| match committed.find_partition(TOPIC, partition).expect("asked for it").offset() {
            Offset::Offset(offset) => Some(offset),
            Offset::Invalid => None,
            other => panic!("committed offset of {TOPIC}-{partition}: {other:?}"),
        })
        .collect();
    close(consumer);
    offsets
}

fn reset_offsets(broker: &TestBroker, extra: &[&str]) -> CliRun {
    let mut args = vec!["reset-offsets", GROUP, "--topic", TOPIC];
    args.extend_from_slice(extra);
    sluice_groups(broker, &args)
}

#[test]
fn groups_list_describe_reset_and_delete() {
    let broker = TestBroker::start(&["group.initial.rebalance.delay.ms=0"]);
    create_topic(&admin(&broker), TOPIC, PARTITIONS, &[]);
    let base_timestamp_ms = now_ms() - 60_000;
    let deliveries = produce_all(&broker, TOPIC, &[("linger.ms", "0")], RECORDS, "cli", base_timestamp_ms);
    let mut log_end_offsets = [0i64; PARTITIONS as usize];
    for &(partition, offset) in &deliveries {
        let end = &mut log_end_offsets[partition as usize];
        *end = (*end).max(offset + 1);
    }
    assert!(log_end_offsets.iter().all(|&end| end >= 2), "every partition got records: {log_end_offsets:?}");
    let [end0, end1, end2] = log_end_offsets;

    // A consumer in the group reads everything, then commits partition 0 at its end and
    // partition 1 half-way; partition 2 is assigned but never committed.
    let consumer = group_consumer(&broker, "cli-test-consumer");
    let deadline = Instant::now() + DEADLINE;
    let mut received = 0;
    while received < RECORDS {
        assert!(Instant::now() < deadline, "the group consumer read {received} of {RECORDS} records");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => received += 1,
            Some(Err(err)) => panic!("group consumer: {err}"),
            None => {}
        }
    }
    let mut commit = TopicPartitionList::new();
    commit.add_partition_offset(TOPIC, 0, Offset::Offset(end0)).unwrap();
    commit.add_partition_offset(TOPIC, 1, Offset::Offset(end1 / 2)).unwrap();
    consumer.commit(&commit, CommitMode::Sync).expect("synchronous commit");
    assert_eq!(committed_offsets(&broker), [Some(end0), Some(end1 / 2), None]);

    let listed = listed_groups(&sluice_groups(&broker, &["list"]).success("groups list").stdout);
    assert_eq!(listed.get(GROUP), Some(&("Stable".to_string(), "consumer".to_string())), "{listed:?}");
    let stable = sluice_groups(&broker, &["list", "--state", "stable"]).success("groups list --state stable");
    assert!(listed_groups(&stable.stdout).contains_key(GROUP), "{}", stable.stdout);
    let empty = sluice_groups(&broker, &["list", "--state", "Empty"]).success("groups list --state Empty");
    assert!(!listed_groups(&empty.stdout).contains_key(GROUP), "{}", empty.stdout);

    let described = sluice_groups(&broker, &["describe", GROUP]).success("groups describe");
    assert!(described.stdout.contains("state Stable, protocol type consumer"), "{}", described.stdout);
    let members = described_members(&described.stdout);
    assert_eq!(members.len(), 1, "one member:\n{}", described.stdout);
    let member = members[0][0].clone();
    assert!(member.starts_with("cli-test-consumer-"), "librdkafka's member ids start with the client id: {member}");
    let [instance_id, client_id, host, assignment] = &members[0][1..] else {
        panic!("a member row has five columns:\n{}", described.stdout)
    };
    assert_eq!([instance_id, client_id, assignment], ["-", "cli-test-consumer", "clicks(0,1,2)"]);
    assert!(host.contains("127.0.0.1"), "the member's host: {host}");
    let rows = described_partitions(&described.stdout);
    let expected = BTreeMap::from([
        (0, [end0.to_string(), end0.to_string(), "0".to_string(), member.clone()]),
        (1, [(end1 / 2).to_string(), end1.to_string(), (end1 - end1 / 2).to_string(), member.clone()]),
        (2, ["-".to_string(), end2.to_string(), "-".to_string(), member.clone()]),
    ]);
    assert_eq!(rows, expected, "describe:\n{}", described.stdout);

    // A group with a member is not reset, nor deleted.
    let refused = reset_offsets(&broker, &["--to-earliest", "--execute"]);
    assert!(!refused.status.success(), "reset of an active group succeeded:\n{}", refused.stdout);
    assert!(
        refused.stderr.contains("group cli-group has active members (state Stable); stop its consumers first"),
        "{}",
        refused.stderr
    );
    let refused = sluice_groups(&broker, &["delete", GROUP]);
    assert!(!refused.status.success() && refused.stderr.contains("NON_EMPTY_GROUP"), "{}", refused.stderr);
    assert_eq!(committed_offsets(&broker), [Some(end0), Some(end1 / 2), None], "the refused reset changed offsets");

    close(consumer);
    wait_for_list(&broker, "the group empties once its consumer leaves", |groups| {
        groups.get(GROUP).is_some_and(|(state, _)| state == "Empty")
    });

    // Without --execute: the plan, and nothing changes.
    let plan = reset_offsets(&broker, &["--to-earliest"]).success("dry-run reset");
    let plan_rows: Vec<Vec<&str>> = plan
        .stdout
        .lines()
        .filter(|line| line.starts_with(GROUP))
        .map(|line| line.split_whitespace().collect())
        .collect();
    let current = [end0.to_string(), (end1 / 2).to_string(), "-".to_string()];
    let expected_plan: Vec<Vec<&str>> =
        (0..3).map(|p| vec![GROUP, TOPIC, ["0", "1", "2"][p], current[p].as_str(), "0"]).collect();
    assert_eq!(plan_rows, expected_plan, "plan:\n{}", plan.stdout);
    assert!(plan.stdout.contains("Dry run"), "{}", plan.stdout);
    assert_eq!(committed_offsets(&broker), [Some(end0), Some(end1 / 2), None], "a dry run changed offsets");

    reset_offsets(&broker, &["--to-earliest", "--execute"]).success("reset to earliest");
    assert_eq!(committed_offsets(&broker), [Some(0), Some(0), Some(0)]);
    let described = sluice_groups(&broker, &["describe", GROUP]).success("describe the empty group");
    assert!(described.stdout.contains("state Empty"), "{}", described.stdout);
    let expected: BTreeMap<i32, [String; 4]> = log_end_offsets
        .iter()
        .enumerate()
        .map(|(p, end)| (p as i32, ["0".to_string(), end.to_string(), end.to_string(), "-".to_string()]))
        .collect();
    assert_eq!(described_partitions(&described.stdout), expected, "describe:\n{}", described.stdout);

    // --to-offset is clamped into [log start, log end], and --partitions limits the reset.
    reset_offsets(&broker, &["--to-offset", "1000000", "--partitions", "1", "--execute"]).success("reset to offset");
    assert_eq!(committed_offsets(&broker), [Some(0), Some(end1), Some(0)]);

    // --to-datetime: the first record at or after the time in each partition (record `seq` has
    // timestamp base + seq); past every record, the log end.
    let from_seq = 30;
    reset_offsets(&broker, &["--to-datetime", &(base_timestamp_ms + from_seq).to_string(), "--execute"])
        .success("reset to a time");
    let expected: Vec<Option<i64>> = (0..PARTITIONS)
        .map(|partition| {
            let first =
                deliveries.iter().skip(from_seq as usize).filter(|(p, _)| *p == partition).map(|(_, o)| *o).min();
            Some(first.unwrap_or(log_end_offsets[partition as usize]))
        })
        .collect();
    assert_eq!(committed_offsets(&broker), expected);
    let future = (now_ms() + 3_600_000).to_string();
    reset_offsets(&broker, &["--to-datetime", &future, "--partitions", "0", "--execute"])
        .success("reset to the future");
    assert_eq!(committed_offsets(&broker)[0], Some(end0));

    // A consumer joining again starts from the reset offsets, and the group is refused again.
    let consumer = group_consumer(&broker, "cli-test-consumer-2");
    let deadline = Instant::now() + DEADLINE;
    while consumer.assignment().expect("assignment").count() < PARTITIONS as usize {
        assert!(Instant::now() < deadline, "the second consumer got no assignment within {DEADLINE:?}");
        if let Some(Err(err)) = consumer.poll(Duration::from_millis(100)) {
            panic!("second group consumer: {err}");
        }
    }
    let refused = reset_offsets(&broker, &["--to-latest", "--execute"]);
    assert!(!refused.status.success() && refused.stderr.contains("has active members"), "{}", refused.stderr);
    close(consumer);
    wait_for_list(&broker, "the group empties again", |groups| {
        groups.get(GROUP).is_some_and(|(state, _)| state == "Empty")
    });

    let deleted = sluice_groups(&broker, &["delete", GROUP]).success("groups delete");
    assert!(deleted.stdout.contains("Deleted group cli-group."), "{}", deleted.stdout);
    wait_for_list(&broker, "the deleted group is no longer listed", |groups| !groups.contains_key(GROUP));
    let gone = sluice_groups(&broker, &["describe", GROUP]);
    assert!(!gone.status.success() && gone.stderr.contains("group cli-group does not exist"), "{}", gone.stderr);
    assert_eq!(committed_offsets(&broker), [None, None, None], "the deleted group's offsets are gone");
    let gone = sluice_groups(&broker, &["delete", GROUP]);
    assert!(!gone.status.success() && gone.stderr.contains("GROUP_ID_NOT_FOUND"), "{}", gone.stderr);
}

#[test]
fn an_unreachable_broker_is_one_clear_sentence() {
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let run = run_groups(&format!("127.0.0.1:{port}"), &["list"]);
    assert!(!run.status.success(), "{}", run.stdout);
    assert_eq!(run.stderr.trim(), format!("error: cannot connect to 127.0.0.1:{port}: connection refused"));
}
