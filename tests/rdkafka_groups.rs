//! Consumer groups end to end with librdkafka (the `rdkafka` crate) against a real `sluice`
//! broker process: members sharing a topic through joins, a SIGKILLed member and continuous
//! produce (eager and cooperative rebalancing), static members coming back without a
//! rebalance, committed offsets across a clean restart and a SIGKILL of the broker, and the
//! errors a client gets for commits it should not make.

// Each test binary uses a different part of the shared harness.
#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::clients::{admin, all_topics, client_config, create_topic, now_ms, REQUEST_DEADLINE};
use common::groups::{
    self, check_every_record_handled, committed, log_end_offsets, offset_list, standalone_consumer, wait_for,
    wait_for_balance, ChildMember, ContinuousProducer, GroupEvent, GroupLog, Member, MemberSpec,
};
use common::records::produce_all;
use common::TestBroker;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// Kafka waits `group.initial.rebalance.delay.ms` (3 s) for more members before a new group's
/// first rebalance, and refuses session timeouts under 6 s; these tests want neither wait.
const GROUP_SETTINGS: [&str; 2] = ["group.initial.rebalance.delay.ms=0", "group.min.session.timeout.ms=1000"];
/// A member that stops heartbeating is removed after this; the tests wait it out once.
const SESSION_TIMEOUT_MS: u64 = 6000;
/// Bound on a group settling after a member joins or leaves (heartbeat, rejoin, sync), on a
/// busy two-core machine.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

/// Not a test: the body of a group member that other tests run in a child process, so that
/// they can SIGKILL it (`ChildMember`).
#[test]
#[ignore = "run by other tests as a child process"]
fn group_member_child_process() {
    groups::run_child_member();
}

// ---------------------------------------------------------------------------------------
// 1. Members sharing a topic while records keep coming

/// What `share_a_topic_through_joins_and_a_kill` saw: who owned what once three, four and
/// (after the kill) three members shared the topic, and where in the log each phase began.
struct SharingRun {
    log: Arc<GroupLog>,
    three: BTreeMap<String, BTreeSet<i32>>,
    four: BTreeMap<String, BTreeSet<i32>>,
    survivors: BTreeMap<String, BTreeSet<i32>>,
    /// Log positions: three members balanced (d about to join), four balanced (c about to be
    /// killed), three survivors balanced.
    marks: [usize; 3],
}

impl SharingRun {
    /// The partitions `member` had revoked between two marks.
    fn revoked_between(&self, member: &str, from: usize, to: usize) -> BTreeSet<i32> {
        let events = self.log.since(self.marks[from]);
        let events = &events[..self.marks[to] - self.marks[from]];
        GroupLog::rebalances_of(events, member)
            .into_iter()
            .filter_map(|event| match event {
                GroupEvent::Revoked(partitions) => Some(partitions),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

/// Three members (two threads here, one child process) share a 12-partition topic 4/4/4; a
/// fourth joins and they share it 3/3/3/3; the child is SIGKILLed (no LeaveGroup) and, once
/// its session times out, the other three share it 4/4/4. Records are produced throughout,
/// and each member commits after handling each batch. At the end every record produced was
/// handled at least once, the committed offsets are the log end offsets, and no partition was
/// ever owned by two members at once.
fn share_a_topic_through_joins_and_a_kill(strategy: &str) -> SharingRun {
    const PARTITIONS: i32 = 12;
    let broker = TestBroker::start(&GROUP_SETTINGS);
    let topic = "clicks";
    let group = format!("clicks-{strategy}");
    create_topic(&admin(&broker), topic, PARTITIONS, &[]);
    let spec = MemberSpec::new(
        &broker,
        topic,
        &group,
        &[("partition.assignment.strategy", strategy), ("session.timeout.ms", &SESSION_TIMEOUT_MS.to_string())],
    );
    let log = Arc::new(GroupLog::default());
    let producer = ContinuousProducer::start(&broker, topic, "clicks", now_ms());

    let a = Member::start(&spec, "a", &log);
    let b = Member::start(&spec, "b", &log);
    let mut c = ChildMember::spawn(&spec, "c", &log);
    let three = wait_for_balance(&log, &["a", "b", "c"], PARTITIONS, SETTLE_DEADLINE);
    let three_mark = log.len();
    eprintln!("three members: {three:?}");

    let d = Member::start(&spec, "d", &log);
    let four = wait_for_balance(&log, &["a", "b", "c", "d"], PARTITIONS, SETTLE_DEADLINE);
    let four_mark = log.len();
    eprintln!("four members: {four:?}");
    assert!(
        log.consumed().iter().any(|(member, ..)| member == "c"),
        "the child member handled records before it was killed"
    );

    c.kill();
    let killed_at = Instant::now();
    let survivors = wait_for_balance(&log, &["a", "b", "d"], PARTITIONS, SETTLE_DEADLINE);
    let moved_after = killed_at.elapsed();
    let survivors_mark = log.len();
    eprintln!("after the kill ({moved_after:?}): {survivors:?}");
    // A member that vanishes without LeaveGroup is removed when its session times out, not
    // before (Kafka does not remove members when a connection drops).
    assert!(
        moved_after >= Duration::from_millis(SESSION_TIMEOUT_MS / 2),
        "the killed member's partitions moved {moved_after:?} after the kill, before its {SESSION_TIMEOUT_MS} ms \
         session could time out"
    );

    let deliveries = producer.stop();
    let reader = standalone_consumer(&broker, &group);
    let log_end = log_end_offsets(&reader, topic, PARTITIONS);
    let caught_up: BTreeMap<i32, Option<i64>> = log_end.iter().map(|(p, o)| (*p, Some(*o))).collect();
    wait_for("the members commit up to the log end offsets", SETTLE_DEADLINE, || {
        (committed(&reader, topic, PARTITIONS) == caught_up).then_some(())
    });
    for member in [&a, &b, &d] {
        member.request_stop();
    }
    for member in [a, b, d] {
        member.stop();
    }
    assert_eq!(committed(&reader, topic, PARTITIONS), caught_up, "committed offsets after the members closed");

    check_every_record_handled(&log, &deliveries, &log_end);
    let doubles = log.double_ownership();
    assert!(doubles.is_empty(), "partitions owned by two members at once:\n{}", doubles.join("\n"));
    SharingRun { log, three, four, survivors, marks: [three_mark, four_mark, survivors_mark] }
}

#[test]
fn eager_members_share_a_topic_through_joins_and_a_kill() {
    let run = share_a_topic_through_joins_and_a_kill("range");
    // Eager rebalancing: when d joined, a and b gave up everything before being reassigned.
    for member in ["a", "b"] {
        let revoked = run.revoked_between(member, 0, 1);
        assert!(revoked.is_superset(&run.three[member]), "{member} revoked all it owned when d joined: {revoked:?}");
    }
}

#[test]
fn cooperative_members_keep_their_partitions_through_joins_and_a_kill() {
    let run = share_a_topic_through_joins_and_a_kill("cooperative-sticky");
    // When d joins, each of a, b and c keeps three of its four partitions, and the only ones
    // revoked are those that move to d.
    for member in ["a", "b", "c"] {
        let (before, after) = (&run.three[member], &run.four[member]);
        assert!(after.is_subset(before), "{member} kept its partitions when d joined: {before:?} then {after:?}");
        let given_up: BTreeSet<i32> = before.difference(after).copied().collect();
        assert_eq!(run.revoked_between(member, 0, 1), given_up, "{member} revoked only what moved to d");
    }
    // After the kill, a, b and d keep theirs (nothing revoked) and take over c's.
    for member in ["a", "b", "d"] {
        let (before, after) = (&run.four[member], &run.survivors[member]);
        assert!(before.is_subset(after), "{member} kept its partitions after the kill: {before:?} then {after:?}");
        assert_eq!(run.revoked_between(member, 1, 2), BTreeSet::new(), "{member} revoked nothing after the kill");
    }
}

// ---------------------------------------------------------------------------------------
// 2. Static membership (KIP-345)

#[test]
fn static_members_back_within_their_session_get_their_partitions_without_a_rebalance() {
    const PARTITIONS: i32 = 6;
    // Heartbeats every 500 ms: a rebalance reaches every member within one interval.
    const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
    let broker = TestBroker::start(&GROUP_SETTINGS);
    let (topic, group) = ("pages", "pages-static");
    create_topic(&admin(&broker), topic, PARTITIONS, &[]);
    let spec = MemberSpec::new(
        &broker,
        topic,
        group,
        &[
            ("partition.assignment.strategy", "range"),
            ("session.timeout.ms", "20000"),
            ("heartbeat.interval.ms", &HEARTBEAT_INTERVAL.as_millis().to_string()),
        ],
    );
    let static_spec = |instance: &str| spec.clone().with("group.instance.id", instance);
    let log = Arc::new(GroupLog::default());
    // m0 joins the empty group alone, so it leads it (Kafka keeps the leader across rebalances
    // while it stays); then m1 and m2 join.
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    members.insert("m0".into(), Member::start(&static_spec("pages-0"), "m0", &log));
    wait_for_balance(&log, &["m0"], PARTITIONS, SETTLE_DEADLINE);
    for i in 1..3 {
        members.insert(format!("m{i}"), Member::start(&static_spec(&format!("pages-{i}")), &format!("m{i}"), &log));
    }
    let owners = wait_for_balance(&log, &["m0", "m1", "m2"], PARTITIONS, SETTLE_DEADLINE);

    // A follower, then the leader, closes and comes back under the same instance id. librdkafka
    // closes a static member without LeaveGroup (KIP-345), so the group keeps its place until
    // the session times out; back in time, it gets its partitions again and nobody else
    // rebalances. A leader coming back must not compute a new assignment.
    for (round, (name, instance)) in [("m2", "pages-2"), ("m0", "pages-0")].into_iter().enumerate() {
        let mark = log.len();
        members.remove(name).expect("a running member").stop();
        let back = format!("{name}-back");
        members.insert(back.clone(), Member::start(&static_spec(instance), &back, &log));
        let returned =
            wait_for(&format!("{back} gets an assignment"), SETTLE_DEADLINE, || log.ownership().get(&back).cloned());
        assert_eq!(returned, owners[name], "{back} got its old partitions back");
        let back_at = Instant::now();

        // Records to every partition are handled by their owners, and for several heartbeat
        // intervals nobody else hears of a rebalance.
        let tag = if round == 0 { "pages-0" } else { "pages-1" };
        let deliveries = produce_all(&broker, topic, &[("linger.ms", "5")], 60, tag, now_ms());
        let produced: BTreeSet<(i32, i64)> = deliveries.iter().copied().collect();
        wait_for(&format!("the records produced after {back} came are handled"), SETTLE_DEADLINE, || {
            let handled: BTreeSet<(i32, i64)> = log
                .since(mark)
                .iter()
                .filter_map(|e| match e.event {
                    GroupEvent::Consumed { partition, offset, .. } => Some((partition, offset)),
                    _ => None,
                })
                .collect();
            (handled.is_superset(&produced) && back_at.elapsed() >= 4 * HEARTBEAT_INTERVAL).then_some(())
        });
        let later = log.since(mark);
        for other in members.keys().filter(|m| **m != back) {
            assert_eq!(
                GroupLog::rebalances_of(&later, other),
                vec![],
                "{other} saw no rebalance when {name} came back"
            );
        }
        for event in &later {
            if let GroupEvent::Consumed { partition, .. } = event.event {
                let was = event.member.strip_suffix("-back").unwrap_or(&event.member);
                assert!(owners[was].contains(&partition), "{} handled partition {partition}", event.member);
            }
        }
    }

    // The coordinator describes one stable group of three.
    let (state, protocol, size) = describe_group(&broker, group);
    assert_eq!((state.as_str(), protocol.as_str(), size), ("Stable", "range", 3), "DescribeGroups");
    let members: Vec<Member> = members.into_values().collect();
    for member in &members {
        member.request_stop();
    }
    for member in members {
        member.stop();
    }
    let doubles = log.double_ownership();
    assert!(doubles.is_empty(), "partitions owned by two members at once:\n{}", doubles.join("\n"));
}

/// DescribeGroups through librdkafka: the group's state, protocol and member count.
fn describe_group(broker: &common::TestBroker, group: &str) -> (String, String, usize) {
    let consumer: BaseConsumer = client_config(broker).create().expect("create a consumer");
    let list = consumer.fetch_group_list(Some(group), REQUEST_DEADLINE).expect("DescribeGroups");
    let found = list.groups().iter().find(|g| g.name() == group).unwrap_or_else(|| panic!("{group} is described"));
    (found.state().to_string(), found.protocol().to_string(), found.members().len())
}

// ---------------------------------------------------------------------------------------
// 3. Committed offsets across restarts

/// A new member of `group` (subscribed to `topic`), once it has received a record from each
/// partition, and the first offset it received from each: where the group made it start.
fn member_reading_every_partition(
    broker: &TestBroker,
    group: &str,
    topic: &str,
    partitions: i32,
) -> (BaseConsumer, BTreeMap<i32, i64>) {
    let consumer: BaseConsumer = client_config(broker)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("create a group member");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut first_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + SETTLE_DEADLINE;
    // Until the member is assigned, poll serves the rebalance.
    while first_offsets.len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "a record from each partition within {SETTLE_DEADLINE:?}: {first_offsets:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                first_offsets.entry(message.partition()).or_insert(message.offset());
            }
            Some(Err(err)) => panic!("consume {topic}: {err}"),
            None => {}
        }
    }
    (consumer, first_offsets)
}

/// Commits `offsets`, each with `metadata`.
fn commit_with_metadata(member: &BaseConsumer, topic: &str, offsets: &BTreeMap<i32, i64>, metadata: &str) {
    let list = offset_list(topic, offsets);
    for mut element in list.elements() {
        element.set_metadata(metadata);
    }
    member.commit(&list, CommitMode::Sync).expect("OffsetCommit");
}

/// The group's committed offsets and their metadata, as librdkafka reads them back.
fn committed_with_metadata(consumer: &BaseConsumer, topic: &str, partitions: i32) -> BTreeMap<i32, (Offset, String)> {
    let mut list = TopicPartitionList::new();
    list.add_partition_range(topic, 0, partitions - 1);
    let committed = consumer.committed_offsets(list, REQUEST_DEADLINE).expect("OffsetFetch");
    committed.elements().iter().map(|e| (e.partition(), (e.offset(), e.metadata().to_string()))).collect()
}

#[test]
fn committed_offsets_survive_a_clean_restart_and_a_sigkill() {
    const PARTITIONS: i32 = 4;
    let mut broker = TestBroker::start(&GROUP_SETTINGS);
    let (topic, group) = ("ledger", "ledger-readers");
    create_topic(&admin(&broker), topic, PARTITIONS, &[]);
    let deliveries = produce_all(&broker, topic, &[("linger.ms", "5")], 400, "ledger", now_ms());
    let mut log_end: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, offset) in &deliveries {
        let end = log_end.entry(*partition).or_default();
        *end = (*end).max(offset + 1);
    }
    assert_eq!(log_end.len(), PARTITIONS as usize, "records in every partition: {log_end:?}");
    let at_fraction = |num: i64, den: i64| -> BTreeMap<i32, i64> {
        log_end.iter().map(|(p, end)| (*p, (end * num / den).max(1))).collect()
    };
    let expect = |offsets: &BTreeMap<i32, i64>, metadata: &str| -> BTreeMap<i32, (Offset, String)> {
        offsets.iter().map(|(p, o)| (*p, (Offset::Offset(*o), metadata.to_string()))).collect()
    };

    // A clean restart: the group's offsets are reloaded from __consumer_offsets.
    let first = at_fraction(1, 3);
    let (member, _) = member_reading_every_partition(&broker, group, topic, PARTITIONS);
    commit_with_metadata(&member, topic, &first, "first pass");
    drop(member);
    broker.restart();
    let (member, resumed) = member_reading_every_partition(&broker, group, topic, PARTITIONS);
    assert_eq!(resumed, first, "after a restart a new member resumes at the committed offsets");
    assert_eq!(committed_with_metadata(&member, topic, PARTITIONS), expect(&first, "first pass"), "after a restart");
    let second = at_fraction(2, 3);
    commit_with_metadata(&member, topic, &second, "second pass");
    drop(member);

    // SIGKILL: no chance to flush anything; an acknowledged commit must still be there.
    broker.kill9_and_restart();
    let (member, resumed) = member_reading_every_partition(&broker, group, topic, PARTITIONS);
    assert_eq!(resumed, second, "after SIGKILL a new member resumes at the committed offsets");
    assert_eq!(committed_with_metadata(&member, topic, PARTITIONS), expect(&second, "second pass"), "after SIGKILL");
}

// ---------------------------------------------------------------------------------------
// 4. Commits a client should not make, and groups that do not exist

#[test]
fn commits_to_unknown_partitions_fail_and_unknown_groups_have_no_offsets() {
    let broker = TestBroker::start(&GROUP_SETTINGS);
    create_topic(&admin(&broker), "known", 2, &[]);
    // Not a member: a standalone consumer commits with no generation, as Kafka allows for a
    // group nobody has joined.
    let consumer = standalone_consumer(&broker, "careless");
    let commit = |entries: &[(&str, i32, i64)]| {
        let mut list = TopicPartitionList::new();
        for (topic, partition, offset) in entries {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset)).unwrap();
        }
        consumer.commit(&list, CommitMode::Sync)
    };
    let unknown = Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::UnknownTopicOrPartition));
    assert_eq!(commit(&[("no-such-topic", 0, 5)]), unknown, "a commit to a topic that does not exist");
    assert_eq!(commit(&[("known", 7, 5)]), unknown, "a commit to a partition that does not exist");
    // One bad partition fails the call, yet the good one in the same request is committed.
    assert_eq!(commit(&[("known", 0, 3), ("known", 9, 3)]), unknown, "a commit with one bad partition");
    assert_eq!(committed(&consumer, "known", 2), BTreeMap::from([(0, Some(3)), (1, None)]));
    assert!(!all_topics(consumer.client()).contains(&"no-such-topic".to_string()), "a commit creates no topic");

    // A group nobody ever used has no offsets: OffsetFetch answers -1 (librdkafka's Invalid).
    let stranger = standalone_consumer(&broker, "never-used");
    assert_eq!(committed(&stranger, "known", 2), BTreeMap::from([(0, None), (1, None)]));
    let mut list = TopicPartitionList::new();
    list.add_partition_range("known", 0, 1);
    let fetched = stranger.committed_offsets(list, REQUEST_DEADLINE).expect("OffsetFetch");
    for element in fetched.elements() {
        assert_eq!((element.offset(), element.error()), (Offset::Invalid, Ok(())), "partition {}", element.partition());
    }
}
