//! KIP-848 consumer groups end to end with librdkafka (`group.protocol=consumer`) against a
//! real `sluice` broker process. The broker computes the assignment (the default `uniform`
//! assignor, sticky) and members converge on it through heartbeats: members sharing a topic
//! while records keep coming, a SIGKILLed member whose partitions move once its session times
//! out, a member that closes and leaves at once, `sluice groups describe` on such a group, and
//! committed offsets across a broker SIGKILL.

// Each test binary uses a different part of the shared harness.
#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::clients::{admin, client_config, create_topic, now_ms, REQUEST_DEADLINE};
use common::groups::{
    self, check_every_record_handled, committed, log_end_offsets, offset_list, standalone_consumer, wait_for,
    wait_for_balance, ChildMember, ContinuousProducer, GroupEvent, GroupLog, Member, MemberSpec,
};
use common::records::produce_all;
use common::TestBroker;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;

/// What the broker tells members: heartbeat every 500 ms, so that a change in the group reaches
/// every member within about half a second.
const HEARTBEAT_INTERVAL_MS: u64 = 500;
/// Kafka's default KIP-848 session timeout, for the tests that never wait one out.
const DEFAULT_SESSION_TIMEOUT_MS: u64 = 45_000;
/// Bound on a group settling after a member joins or leaves, on a busy two-core machine.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

fn start_broker(session_timeout_ms: u64) -> TestBroker {
    let heartbeat = format!("group.consumer.heartbeat.interval.ms={HEARTBEAT_INTERVAL_MS}");
    let session = format!("group.consumer.session.timeout.ms={session_timeout_ms}");
    TestBroker::start(&[&heartbeat, &session])
}

/// A member of `group` on the KIP-848 protocol. librdkafka refuses `heartbeat.interval.ms`,
/// `session.timeout.ms` and `partition.assignment.strategy` with it (the broker decides
/// them), so the shared spec's classic heartbeat setting goes.
fn member_spec(broker: &TestBroker, topic: &str, group: &str) -> MemberSpec {
    let mut spec = MemberSpec::new(broker, topic, group, &[("group.protocol", "consumer")]);
    spec.settings.retain(|(key, _)| key != "heartbeat.interval.ms");
    spec
}

/// Not a test: the body of a group member that other tests run in a child process, so that
/// they can SIGKILL it (`ChildMember`).
#[test]
#[ignore = "run by other tests as a child process"]
fn group_member_child_process() {
    groups::run_child_member();
}

/// The partitions `member` had revoked among `events`.
fn revoked(events: &[common::groups::LoggedEvent], member: &str) -> BTreeSet<i32> {
    GroupLog::rebalances_of(events, member)
        .into_iter()
        .filter_map(|event| match event {
            GroupEvent::Revoked(partitions) => Some(partitions),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Once nothing more is produced: waits until the group has committed up to every log end
/// offset, closes the members, and checks the commits stayed there. Returns the log end
/// offsets.
fn stop_once_caught_up(
    broker: &TestBroker,
    topic: &str,
    group: &str,
    partitions: i32,
    members: Vec<Member>,
) -> BTreeMap<i32, i64> {
    let reader = standalone_consumer(broker, group);
    let log_end = log_end_offsets(&reader, topic, partitions);
    let caught_up: BTreeMap<i32, Option<i64>> = log_end.iter().map(|(p, o)| (*p, Some(*o))).collect();
    wait_for("the members commit up to the log end offsets", SETTLE_DEADLINE, || {
        (committed(&reader, topic, partitions) == caught_up).then_some(())
    });
    for member in &members {
        member.request_stop();
    }
    for member in members {
        member.stop();
    }
    assert_eq!(committed(&reader, topic, partitions), caught_up, "committed offsets after the members closed");
    log_end
}

/// Waits until DescribeGroups (through librdkafka) shows `group` as a stable KIP-848 group
/// (the broker's `uniform` assignor as its protocol: a classic group would show the client's
/// assignor) of `members` members.
fn wait_for_stable_consumer_protocol_group(broker: &TestBroker, group: &str, members: usize) {
    let client: BaseConsumer = client_config(broker).create().expect("create a consumer");
    let expected = ("Stable".to_string(), "consumer".to_string(), "uniform".to_string(), members);
    let deadline = Instant::now() + SETTLE_DEADLINE;
    loop {
        let list = client.fetch_group_list(Some(group), REQUEST_DEADLINE).expect("DescribeGroups");
        let found = list.groups().iter().find(|g| g.name() == group).map(|g| {
            (g.state().to_string(), g.protocol_type().to_string(), g.protocol().to_string(), g.members().len())
        });
        if found.as_ref() == Some(&expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{group} was not described as {expected:?} (state, protocol type, protocol, members) within \
             {SETTLE_DEADLINE:?}; last described as {found:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_never_owned_twice(log: &GroupLog) {
    let doubles = log.double_ownership();
    assert!(doubles.is_empty(), "partitions owned by two members at once:\n{}", doubles.join("\n"));
}

// ---------------------------------------------------------------------------------------
// 1. Members converging on the broker's assignment

/// Three members share a 12-partition topic 4/4/4; a fourth joins and they share it 3/3/3/3,
/// the first three keeping three of their four (the uniform assignor is sticky) and revoking
/// only the one that moves. Records are produced throughout and each member commits after
/// handling; at the end every record was handled, the committed offsets are the log end
/// offsets, and no partition was ever owned by two members at once.
#[test]
fn members_converge_on_the_brokers_assignment_as_a_member_joins() {
    const PARTITIONS: i32 = 12;
    let broker = start_broker(DEFAULT_SESSION_TIMEOUT_MS);
    let (topic, group) = ("clicks", "clicks-readers");
    create_topic(&admin(&broker), topic, PARTITIONS, &[]);
    let spec = member_spec(&broker, topic, group);
    let log = Arc::new(GroupLog::default());
    let producer = ContinuousProducer::start(&broker, topic, "clicks", now_ms());

    let mut members: Vec<Member> = ["a", "b", "c"].iter().map(|name| Member::start(&spec, name, &log)).collect();
    let three = wait_for_balance(&log, &["a", "b", "c"], PARTITIONS, SETTLE_DEADLINE);
    let mark = log.len();
    eprintln!("three members: {three:?}");

    members.push(Member::start(&spec, "d", &log));
    let four = wait_for_balance(&log, &["a", "b", "c", "d"], PARTITIONS, SETTLE_DEADLINE);
    eprintln!("four members: {four:?}");
    wait_for_stable_consumer_protocol_group(&broker, group, 4);
    let since_join = log.since(mark);
    for member in ["a", "b", "c"] {
        let (before, after) = (&three[member], &four[member]);
        assert!(after.is_subset(before), "{member} kept its partitions when d joined: {before:?} then {after:?}");
        let moved: BTreeSet<i32> = before.difference(after).copied().collect();
        assert_eq!(revoked(&since_join, member), moved, "{member} revoked only what moved to d");
    }
    wait_for("d handles records of its partitions", SETTLE_DEADLINE, || {
        log.consumed().iter().any(|(member, ..)| member == "d").then_some(())
    });

    let deliveries = producer.stop();
    let log_end = stop_once_caught_up(&broker, topic, group, PARTITIONS, members);
    check_every_record_handled(&log, &deliveries, &log_end);
    assert_never_owned_twice(&log);
}

// ---------------------------------------------------------------------------------------
// 2. Members that go away

/// Three members (two threads here, one child process) share a 6-partition topic; the child
/// is SIGKILLed, so it never leaves. Its partitions stay put until its session times out
/// (Kafka does not remove a member when its connection drops), then the survivors take them
/// over, keeping their own, and resume at the dead member's commits.
#[test]
fn a_killed_members_partitions_move_to_the_survivors_after_its_session_times_out() {
    const PARTITIONS: i32 = 6;
    const SESSION_TIMEOUT_MS: u64 = 6000;
    let broker = start_broker(SESSION_TIMEOUT_MS);
    let (topic, group) = ("orders", "orders-readers");
    create_topic(&admin(&broker), topic, PARTITIONS, &[]);
    let spec = member_spec(&broker, topic, group);
    let log = Arc::new(GroupLog::default());
    let producer = ContinuousProducer::start(&broker, topic, "orders", now_ms());

    let members = vec![Member::start(&spec, "a", &log), Member::start(&spec, "b", &log)];
    let mut child = ChildMember::spawn(&spec, "c", &log);
    let three = wait_for_balance(&log, &["a", "b", "c"], PARTITIONS, SETTLE_DEADLINE);
    wait_for("the child member handles records", SETTLE_DEADLINE, || {
        log.consumed().iter().any(|(member, ..)| member == "c").then_some(())
    });
    let mark = log.len();

    child.kill();
    let killed_at = Instant::now();
    let session_timeout = Duration::from_millis(SESSION_TIMEOUT_MS);
    let survivors = wait_for_balance(&log, &["a", "b"], PARTITIONS, session_timeout + SETTLE_DEADLINE);
    let moved_after = killed_at.elapsed();
    eprintln!("three members: {three:?}; {moved_after:?} after the kill: {survivors:?}");
    // The member's last heartbeat came about one interval before the kill; two seconds allow
    // for heartbeats delayed on a busy machine. A broker that dropped the member with its
    // connection would move the partitions within a heartbeat or two of the kill.
    let earliest = session_timeout - Duration::from_secs(2);
    assert!(
        moved_after >= earliest,
        "the killed member's partitions moved {moved_after:?} after the kill, before its {SESSION_TIMEOUT_MS} ms \
         session could time out"
    );
    wait_for_stable_consumer_protocol_group(&broker, group, 2);
    let since_kill = log.since(mark);
    for member in ["a", "b"] {
        let (before, after) = (&three[member], &survivors[member]);
        assert!(before.is_subset(after), "{member} kept its partitions: {before:?} then {after:?}");
        assert_eq!(revoked(&since_kill, member), BTreeSet::new(), "{member} revoked nothing after the kill");
    }

    let deliveries = producer.stop();
    let log_end = stop_once_caught_up(&broker, topic, group, PARTITIONS, members);
    check_every_record_handled(&log, &deliveries, &log_end);
    assert_never_owned_twice(&log);
}

/// A member that closes leaves the group then and there (a heartbeat with epoch -1): the
/// others have its partitions within a few heartbeats, long before its 30 s session would
/// have timed out, and resume at what it committed when its partitions were revoked.
#[test]
fn a_member_that_closes_leaves_at_once() {
    const PARTITIONS: i32 = 6;
    const SESSION_TIMEOUT_MS: u64 = 30_000;
    let broker = start_broker(SESSION_TIMEOUT_MS);
    let (topic, group) = ("payments", "payments-readers");
    create_topic(&admin(&broker), topic, PARTITIONS, &[]);
    let spec = member_spec(&broker, topic, group);
    let log = Arc::new(GroupLog::default());
    let producer = ContinuousProducer::start(&broker, topic, "payments", now_ms());

    let members = vec![Member::start(&spec, "a", &log), Member::start(&spec, "b", &log)];
    let leaving = Member::start(&spec, "c", &log);
    let three = wait_for_balance(&log, &["a", "b", "c"], PARTITIONS, SETTLE_DEADLINE);
    wait_for("the leaving member handles records", SETTLE_DEADLINE, || {
        log.consumed().iter().any(|(member, ..)| member == "c").then_some(())
    });

    let closing_at = Instant::now();
    leaving.stop();
    // A third of the session: what took longer was the session timing out, not a leave.
    let leave_deadline = Duration::from_millis(SESSION_TIMEOUT_MS / 3);
    let two = wait_for_balance(&log, &["a", "b"], PARTITIONS, leave_deadline);
    eprintln!("three members: {three:?}; {:?} after c closed: {two:?}", closing_at.elapsed());
    wait_for_stable_consumer_protocol_group(&broker, group, 2);
    for member in ["a", "b"] {
        assert!(three[member].is_subset(&two[member]), "{member} kept its partitions: {three:?} then {two:?}");
    }

    let deliveries = producer.stop();
    let log_end = stop_once_caught_up(&broker, topic, group, PARTITIONS, members);
    check_every_record_handled(&log, &deliveries, &log_end);
    assert_never_owned_twice(&log);
}

// ---------------------------------------------------------------------------------------
// 3. Operator tooling

/// Runs `sluice groups describe <group>` within `REQUEST_DEADLINE`.
fn sluice_groups_describe(broker: &TestBroker, group: &str) -> (ExitStatus, String, String) {
    let run = common::run_sluice(&["groups", "describe", group, "--bootstrap", &broker.bootstrap()], REQUEST_DEADLINE);
    (run.status, run.stdout, run.stderr)
}

/// What `describe` printed: the summary line, member rows by client id (member id, host,
/// assignment), and partition rows of `topic` (committed, log end, lag, member id).
struct Described {
    summary: String,
    members: BTreeMap<String, [String; 3]>,
    partitions: BTreeMap<i32, [String; 4]>,
}

fn parse_described(stdout: &str, topic: &str) -> Described {
    let summary = stdout.lines().next().unwrap_or_default().to_string();
    let mut members = BTreeMap::new();
    let mut partitions = BTreeMap::new();
    let mut table = "";
    for line in stdout.lines().skip(1) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        match cells[..] {
            [] => table = "",
            ["MEMBER-ID", ..] | ["TOPIC", ..] => table = cells[0],
            // A KIP-848 member has no group instance id unless it is static.
            [member_id, "-", client_id, host, assignment] if table == "MEMBER-ID" => {
                members.insert(client_id.to_string(), [member_id, host, assignment].map(str::to_string));
            }
            [t, partition, current, log_end, lag, member] if table == "TOPIC" && t == topic => {
                let partition = partition.parse().unwrap_or_else(|_| panic!("partition in {line:?}:\n{stdout}"));
                partitions.insert(partition, [current, log_end, lag, member].map(str::to_string));
            }
            _ => panic!("unexpected line {line:?} in describe:\n{stdout}"),
        }
    }
    Described { summary, members, partitions }
}

/// `pages(0,2)`, as `describe` prints an assignment.
fn assignment_cell(topic: &str, partitions: &BTreeSet<i32>) -> String {
    let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
    format!("{topic}({})", list.join(","))
}

/// `sluice groups describe` on a KIP-848 group (answered through the classic DescribeGroups):
/// its state and assignor, each member with the partitions the broker assigned it, and per
/// partition the committed offset, lag and owner; once the members close, an empty group that
/// keeps its offsets.
#[test]
fn groups_describe_shows_members_and_assignments_of_a_consumer_protocol_group() {
    const PARTITIONS: i32 = 4;
    let broker = start_broker(DEFAULT_SESSION_TIMEOUT_MS);
    let (topic, group) = ("pages", "pages-readers");
    create_topic(&admin(&broker), topic, PARTITIONS, &[]);
    produce_all(&broker, topic, &[("linger.ms", "5")], 80, "pages", now_ms());
    let spec = member_spec(&broker, topic, group);
    let log = Arc::new(GroupLog::default());
    let members: Vec<Member> = ["a", "b"]
        .iter()
        .map(|name| Member::start(&spec.clone().with("client.id", &format!("reader-{name}")), name, &log))
        .collect();
    let owned = wait_for_balance(&log, &["a", "b"], PARTITIONS, SETTLE_DEADLINE);
    let reader = standalone_consumer(&broker, group);
    let log_end = log_end_offsets(&reader, topic, PARTITIONS);
    assert!(log_end.values().all(|end| *end > 0), "records in every partition: {log_end:?}");
    let caught_up: BTreeMap<i32, Option<i64>> = log_end.iter().map(|(p, o)| (*p, Some(*o))).collect();
    wait_for("the members commit up to the log end offsets", SETTLE_DEADLINE, || {
        (committed(&reader, topic, PARTITIONS) == caught_up).then_some(())
    });

    let expected_assignments: BTreeMap<String, String> =
        owned.iter().map(|(name, partitions)| (format!("reader-{name}"), assignment_cell(topic, partitions))).collect();
    // The group is Stable once each member's heartbeat has confirmed its assignment.
    let (stdout, described) = wait_for("describe shows the stable group of two", SETTLE_DEADLINE, || {
        let (status, stdout, stderr) = sluice_groups_describe(&broker, group);
        assert!(status.success(), "groups describe failed ({status}):\n{stdout}\n{stderr}");
        let described = parse_described(&stdout, topic);
        let assignments: BTreeMap<String, String> =
            described.members.iter().map(|(client, [_, _, assignment])| (client.clone(), assignment.clone())).collect();
        (described.summary.contains("state Stable") && assignments == expected_assignments)
            .then_some((stdout, described))
    });
    assert_eq!(
        described.summary,
        format!("Group {group}: state Stable, protocol type consumer, protocol uniform, 2 member(s)"),
        "{stdout}"
    );
    for [member_id, host, _] in described.members.values() {
        assert!(!member_id.is_empty() && member_id != "-", "a member id:\n{stdout}");
        assert!(host.contains("127.0.0.1"), "the member's host:\n{stdout}");
    }
    let expected_partitions: BTreeMap<i32, [String; 4]> = owned
        .iter()
        .flat_map(|(name, partitions)| {
            let member_id = described.members[&format!("reader-{name}")][0].clone();
            partitions.iter().map(move |p| (*p, member_id.clone()))
        })
        .map(|(p, member_id)| (p, [log_end[&p].to_string(), log_end[&p].to_string(), "0".to_string(), member_id]))
        .collect();
    assert_eq!(described.partitions, expected_partitions, "partition rows:\n{stdout}");

    for member in &members {
        member.request_stop();
    }
    for member in members {
        member.stop();
    }
    let (stdout, described) =
        wait_for("describe shows the group empty once its members closed", SETTLE_DEADLINE, || {
            let (status, stdout, stderr) = sluice_groups_describe(&broker, group);
            assert!(status.success(), "groups describe failed ({status}):\n{stdout}\n{stderr}");
            let described = parse_described(&stdout, topic);
            described.summary.contains("state Empty").then_some((stdout, described))
        });
    assert!(described.members.is_empty(), "no members:\n{stdout}");
    let expected_partitions: BTreeMap<i32, [String; 4]> = log_end
        .iter()
        .map(|(p, end)| (*p, [end.to_string(), end.to_string(), "0".to_string(), "-".to_string()]))
        .collect();
    assert_eq!(described.partitions, expected_partitions, "the empty group keeps its offsets:\n{stdout}");
}

// ---------------------------------------------------------------------------------------
// 4. Committed offsets across a broker SIGKILL

/// A KIP-848 member of `group` subscribed to `topic`, with the commits left to the test.
fn subscribed_member(broker: &TestBroker, group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = client_config(broker)
        .set("group.id", group)
        .set("group.protocol", "consumer")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("create a group member");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Polls until the member has read each partition up to its offset in `until` (exclusive);
/// returns the offset of the first record it got from each.
fn read_up_to(consumer: &BaseConsumer, until: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
    let mut first: BTreeMap<i32, i64> = BTreeMap::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + SETTLE_DEADLINE;
    while next != *until {
        assert!(
            Instant::now() < deadline,
            "the member read up to {next:?} of {until:?} within {SETTLE_DEADLINE:?} (first offsets {first:?})"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                first.entry(message.partition()).or_insert(message.offset());
                next.insert(message.partition(), message.offset() + 1);
            }
            Some(Err(err)) => panic!("group member: {err}"),
            None => {}
        }
    }
    first
}

/// Leaves the group and closes, bounded: dropping a consumer waits for the close without a
/// limit.
fn close(consumer: BaseConsumer) {
    consumer.close_queue().expect("start closing the consumer");
    let deadline = Instant::now() + SETTLE_DEADLINE;
    while !consumer.closed() {
        assert!(Instant::now() < deadline, "the consumer did not close within {SETTLE_DEADLINE:?}");
        consumer.poll(Duration::from_millis(100));
    }
}

/// A member commits half-way through each partition (OffsetCommit carrying its member epoch)
/// and leaves; the broker is SIGKILLed and restarted; a new member of the group resumes each
/// partition at the committed offset, and reads the same offsets back.
#[test]
fn committed_offsets_of_a_consumer_protocol_group_survive_a_broker_sigkill() {
    const PARTITIONS: i32 = 4;
    let mut broker = start_broker(DEFAULT_SESSION_TIMEOUT_MS);
    let (topic, group) = ("ledger", "ledger-readers");
    create_topic(&admin(&broker), topic, PARTITIONS, &[]);
    let deliveries = produce_all(&broker, topic, &[("linger.ms", "5")], 400, "ledger", now_ms());
    let mut log_end: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, offset) in &deliveries {
        let end = log_end.entry(*partition).or_default();
        *end = (*end).max(offset + 1);
    }
    assert_eq!(log_end.len(), PARTITIONS as usize, "records in every partition: {log_end:?}");
    let half_way: BTreeMap<i32, i64> = log_end.iter().map(|(p, end)| (*p, (end / 2).max(1))).collect();

    let member = subscribed_member(&broker, group, topic);
    let first = read_up_to(&member, &log_end);
    assert!(first.values().all(|offset| *offset == 0), "a new group reads from the start: {first:?}");
    member.commit(&offset_list(topic, &half_way), CommitMode::Sync).expect("commit as a KIP-848 member");
    close(member);

    broker.kill9_and_restart();
    let member = subscribed_member(&broker, group, topic);
    let resumed = read_up_to(&member, &log_end);
    assert_eq!(resumed, half_way, "after a SIGKILL a new member resumes at the committed offsets");
    let expected: BTreeMap<i32, Option<i64>> = half_way.iter().map(|(p, o)| (*p, Some(*o))).collect();
    assert_eq!(committed(&member, topic, PARTITIONS), expected, "the committed offsets read back after a SIGKILL");
    close(member);
}
