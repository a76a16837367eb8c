//! Consumer-group members driven by librdkafka, and what they saw. A member subscribes, handles
//! records, commits after each batch (and on revocation) and reports every assignment,
//! revocation and handled record to a shared `GroupLog`; a member can also run in a child process
//! (this test binary re-executed) so that a test can SIGKILL it. Events carry CLOCK_MONOTONIC
//! times, which one machine's processes share, so the log can tell whether a partition was ever
//! owned by two members at once. Every wait has a deadline.

// Each test binary that includes `common` uses a different part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::clients::{client_config, BULK_DEADLINE, REQUEST_DEADLINE};
use super::records::{producer, received_record, send, test_record, DeliveryLog};
use super::TestBroker;

/// The `#[test]` that runs a child member: a test binary using `ChildMember` must define it as
/// `#[test] #[ignore] fn group_member_child_process() { groups::run_child_member() }`.
pub const CHILD_MEMBER_TEST: &str = "group_member_child_process";
/// What a child member is: bootstrap, topic, group and `key=value` client settings, tab-separated.
const CHILD_MEMBER_ENV: &str = "SLUICE_TEST_GROUP_MEMBER";
/// Prefix of the child's event lines on stdout (libtest prints its own lines there too).
const CHILD_EVENT_PREFIX: &str = "group-event";
/// A child member exits by itself after this, should its parent never kill it.
const CHILD_LIFETIME: Duration = Duration::from_secs(120);
/// A member commits what it handled after this many records or this long, whichever is first.
const COMMIT_EVERY_RECORDS: usize = 50;
const COMMIT_EVERY: Duration = Duration::from_millis(200);

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process on the machine, unlike
/// `Instant`, which cannot leave its process.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a pointer to our own local.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(result, 0, "clock_gettime(CLOCK_MONOTONIC): {}", std::io::Error::last_os_error());
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[derive(Clone, Debug, PartialEq)]
pub enum GroupEvent {
    /// Partitions handed to the member (all of them under eager rebalancing, the added ones
    /// under cooperative), seen when its rebalance callback starts: before it handles a record.
    Assigned(BTreeSet<i32>),
    /// Partitions taken away, seen in the rebalance callback after the member committed what it
    /// handled of them and before it gives them up (and so before it can rejoin the group).
    Revoked(BTreeSet<i32>),
    /// A record the member handled (before committing past it).
    Consumed { partition: i32, offset: i64, seq: u64 },
    /// The member's process was SIGKILLed and reaped: it owns nothing from here on.
    Died,
}

#[derive(Clone, Debug)]
pub struct LoggedEvent {
    pub at_ns: u64,
    pub member: String,
    pub event: GroupEvent,
}

/// Everything the members of one test reported, in arrival order.
#[derive(Default)]
pub struct GroupLog {
    events: Mutex<Vec<LoggedEvent>>,
}

impl GroupLog {
    pub fn record(&self, member: &str, at_ns: u64, event: GroupEvent) {
        self.events.lock().unwrap().push(LoggedEvent { at_ns, member: member.to_string(), event });
    }

    /// Events so far in arrival order; `since(len())` later gives what came after.
    pub fn len(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    pub fn since(&self, index: usize) -> Vec<LoggedEvent> {
        self.events.lock().unwrap()[index..].to_vec()
    }

    /// Events in the order they happened (a child's arrive late, stamped when they happened).
    pub fn in_time_order(&self) -> Vec<LoggedEvent> {
        let mut events = self.events.lock().unwrap().clone();
        events.sort_by_key(|e| e.at_ns);
        events
    }

    /// Who owns which partitions now, as far as the members have reported; members that own
    /// nothing are left out.
    pub fn ownership(&self) -> BTreeMap<String, BTreeSet<i32>> {
        let mut owned: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
        for e in self.in_time_order() {
            match &e.event {
                GroupEvent::Assigned(partitions) => owned.entry(e.member).or_default().extend(partitions),
                GroupEvent::Revoked(partitions) => {
                    owned.entry(e.member).or_default().retain(|p| !partitions.contains(p));
                }
                GroupEvent::Died => {
                    owned.remove(&e.member);
                }
                GroupEvent::Consumed { .. } => {}
            }
        }
        owned.retain(|_, partitions| !partitions.is_empty());
        owned
    }

    /// Every moment a partition was assigned to one member while another still owned it.
    pub fn double_ownership(&self) -> Vec<String> {
        let events = self.in_time_order();
        let start = events.first().map_or(0, |e| e.at_ns);
        let ms = |at_ns: u64| (at_ns - start) as f64 / 1e6;
        let mut owner: BTreeMap<i32, (String, u64)> = BTreeMap::new();
        let mut found = Vec::new();
        for e in &events {
            match &e.event {
                GroupEvent::Assigned(partitions) => {
                    for partition in partitions {
                        if let Some((other, since)) = owner.get(partition).filter(|(other, _)| *other != e.member) {
                            found.push(format!(
                                "partition {partition} assigned to {} at {:.1} ms while {other} owned it (since {:.1} ms)",
                                e.member,
                                ms(e.at_ns),
                                ms(*since)
                            ));
                        }
                        owner.insert(*partition, (e.member.clone(), e.at_ns));
                    }
                }
                GroupEvent::Revoked(partitions) => {
                    for partition in partitions {
                        if owner.get(partition).is_some_and(|(member, _)| *member == e.member) {
                            owner.remove(partition);
                        }
                    }
                }
                GroupEvent::Died => owner.retain(|_, (member, _)| *member != e.member),
                GroupEvent::Consumed { .. } => {}
            }
        }
        found
    }

    /// Every record handled: (member, partition, offset, seq).
    pub fn consumed(&self) -> Vec<(String, i32, i64, u64)> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e.event {
                GroupEvent::Consumed { partition, offset, seq } => Some((e.member.clone(), partition, offset, seq)),
                _ => None,
            })
            .collect()
    }

    /// The assignments and revocations of `member` among `events`.
    pub fn rebalances_of(events: &[LoggedEvent], member: &str) -> Vec<GroupEvent> {
        events
            .iter()
            .filter(|e| e.member == member && matches!(e.event, GroupEvent::Assigned(_) | GroupEvent::Revoked(_)))
            .map(|e| e.event.clone())
            .collect()
    }
}

/// The ownership once exactly `members` own partitions `0..partitions` between them, each
/// partition once and as evenly as possible (sizes differ by at most one).
pub fn balanced(
    ownership: &BTreeMap<String, BTreeSet<i32>>,
    members: &[&str],
    partitions: i32,
) -> Option<BTreeMap<String, BTreeSet<i32>>> {
    let names: BTreeSet<&str> = ownership.keys().map(String::as_str).collect();
    if names != members.iter().copied().collect() {
        return None;
    }
    let sizes: Vec<usize> = ownership.values().map(BTreeSet::len).collect();
    let union: BTreeSet<i32> = ownership.values().flatten().copied().collect();
    let (smallest, largest) = (sizes.iter().min()?, sizes.iter().max()?);
    let exact = sizes.iter().sum::<usize>() == partitions as usize && union == (0..partitions).collect();
    (exact && largest - smallest <= 1).then(|| ownership.clone())
}

/// Waits until `members` share `0..partitions` evenly; returns who owns what.
pub fn wait_for_balance(
    log: &GroupLog,
    members: &[&str],
    partitions: i32,
    limit: Duration,
) -> BTreeMap<String, BTreeSet<i32>> {
    let deadline = Instant::now() + limit;
    loop {
        let ownership = log.ownership();
        if let Some(found) = balanced(&ownership, members, partitions) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{members:?} did not share {partitions} partitions evenly within {limit:?}; ownership now {ownership:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` every 50 ms until it gives a value; fails the test after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How to create a member: where, which topic, which group, and its client settings.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub bootstrap: String,
    pub topic: String,
    pub group: String,
    pub settings: Vec<(String, String)>,
}

impl MemberSpec {
    /// Commits are the member's own (after handling), and a partition without a committed
    /// offset is read from its start, so that nothing produced before the first assignment is
    /// skipped.
    pub fn new(broker: &TestBroker, topic: &str, group: &str, settings: &[(&str, &str)]) -> MemberSpec {
        let mut spec = MemberSpec {
            bootstrap: broker.bootstrap(),
            topic: topic.to_string(),
            group: group.to_string(),
            settings: Vec::new(),
        };
        let defaults = [
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("heartbeat.interval.ms", "500"),
            // Also the rebalance timeout: a stuck member holds a rebalance up at most this long.
            ("max.poll.interval.ms", "30000"),
        ];
        for (key, value) in defaults.iter().chain(settings) {
            spec = spec.with(key, value);
        }
        spec
    }

    /// The same spec with `key` set (replacing an earlier value).
    pub fn with(mut self, key: &str, value: &str) -> MemberSpec {
        self.settings.retain(|(k, _)| k != key);
        self.settings.push((key.to_string(), value.to_string()));
        self
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("broker.address.family", "v4")
            .set("group.id", &self.group);
        for (key, value) in &self.settings {
            config.set(key, value);
        }
        config
    }

    fn to_env(&self) -> String {
        let settings = self.settings.iter().map(|(k, v)| format!("{k}={v}"));
        [self.bootstrap.clone(), self.topic.clone(), self.group.clone()]
            .into_iter()
            .chain(settings)
            .collect::<Vec<_>>()
            .join("\t")
    }

    fn from_env(value: &str) -> MemberSpec {
        let mut fields = value.split('\t');
        let mut next = || fields.next().unwrap_or_else(|| panic!("{CHILD_MEMBER_ENV} is short: {value:?}")).to_string();
        let (bootstrap, topic, group) = (next(), next(), next());
        let settings = fields
            .map(|kv| kv.split_once('=').unwrap_or_else(|| panic!("setting without '=': {kv:?}")))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        MemberSpec { bootstrap, topic, group, settings }
    }
}

/// Where a member reports its events: the test's log, or (in a child) stdout.
enum Sink {
    Log { log: Arc<GroupLog>, member: String },
    Stdout,
}

impl Sink {
    fn emit(&self, event: GroupEvent) {
        let at_ns = monotonic_ns();
        match self {
            Sink::Log { log, member } => log.record(member, at_ns, event),
            // One line per event, written whole (stdout is line-buffered), so that what the
            // child printed before it was killed is in the pipe for the parent to read.
            Sink::Stdout => println!("{CHILD_EVENT_PREFIX} {at_ns} {}", encode_event(&event)),
        }
    }
}

fn encode_event(event: &GroupEvent) -> String {
    let list = |partitions: &BTreeSet<i32>| {
        let items: Vec<String> = partitions.iter().map(i32::to_string).collect();
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(",")
        }
    };
    match event {
        GroupEvent::Assigned(partitions) => format!("assigned {}", list(partitions)),
        GroupEvent::Revoked(partitions) => format!("revoked {}", list(partitions)),
        GroupEvent::Consumed { partition, offset, seq } => format!("consumed {partition} {offset} {seq}"),
        GroupEvent::Died => "died".to_string(),
    }
}

fn decode_event(line: &str) -> Option<(u64, GroupEvent)> {
    let mut words = line.strip_prefix(CHILD_EVENT_PREFIX)?.split_whitespace();
    let at_ns = words.next()?.parse().ok()?;
    let list = |word: Option<&str>| -> Option<BTreeSet<i32>> {
        match word? {
            "-" => Some(BTreeSet::new()),
            items => items.split(',').map(|p| p.parse().ok()).collect(),
        }
    };
    let event = match words.next()? {
        "assigned" => GroupEvent::Assigned(list(words.next())?),
        "revoked" => GroupEvent::Revoked(list(words.next())?),
        "consumed" => GroupEvent::Consumed {
            partition: words.next()?.parse().ok()?,
            offset: words.next()?.parse().ok()?,
            seq: words.next()?.parse().ok()?,
        },
        "died" => GroupEvent::Died,
        _ => return None,
    };
    Some((at_ns, event))
}

/// A member's librdkafka context: reports rebalances, and commits what the member handled of
/// revoked partitions before they go, as a Kafka consumer does in `onPartitionsRevoked`.
struct MemberContext {
    sink: Sink,
    topic: String,
    /// Next offset to commit per partition: handled, not yet committed.
    pending: Mutex<BTreeMap<i32, i64>>,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assignment) => self.sink.emit(GroupEvent::Assigned(partitions_of(assignment))),
            Rebalance::Revoke(revoked) => {
                let revoked = partitions_of(revoked);
                let offsets: BTreeMap<i32, i64> = {
                    let mut pending = self.pending.lock().unwrap();
                    let taken = pending.iter().filter(|(p, _)| revoked.contains(p)).map(|(p, o)| (*p, *o)).collect();
                    pending.retain(|p, _| !revoked.contains(p));
                    taken
                };
                // A failed commit (the group already moved on) only means the next owner
                // handles those records again: at least once.
                if !offsets.is_empty() {
                    consumer.commit(&offset_list(&self.topic, &offsets), CommitMode::Sync).ok();
                }
                self.sink.emit(GroupEvent::Revoked(revoked));
            }
            Rebalance::Error(_) => {}
        }
    }
}

fn partitions_of(list: &TopicPartitionList) -> BTreeSet<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

/// `topic`'s partitions at the given offsets.
pub fn offset_list(topic: &str, offsets: &BTreeMap<i32, i64>) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (partition, offset) in offsets {
        list.add_partition_offset(topic, *partition, Offset::Offset(*offset)).expect("a valid offset");
    }
    list
}

/// Subscribes, then handles records (reporting each) and commits after every batch until
/// `keep_going` says stop; closing the consumer on the way out leaves the group (unless the
/// member is static).
fn run_member(spec: &MemberSpec, sink: Sink, keep_going: impl Fn() -> bool) {
    let context = MemberContext { sink, topic: spec.topic.clone(), pending: Mutex::new(BTreeMap::new()) };
    let consumer: BaseConsumer<MemberContext> =
        spec.config().create_with_context(context).expect("create a group member");
    consumer.subscribe(&[&spec.topic]).expect("subscribe");
    let mut handled = 0;
    let mut last_commit = Instant::now();
    while keep_going() {
        // Rebalance callbacks run inside poll, on this thread.
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
            let (partition, offset) = (message.partition(), message.offset());
            let (seq, _) = received_record(&message.detach());
            consumer.context().sink.emit(GroupEvent::Consumed { partition, offset, seq });
            consumer.context().pending.lock().unwrap().insert(partition, offset + 1);
            handled += 1;
        }
        // Errors from poll are transient here (a broker restart, a rebalance): librdkafka
        // retries them itself.
        if handled >= COMMIT_EVERY_RECORDS || last_commit.elapsed() >= COMMIT_EVERY {
            commit_pending(&consumer);
            handled = 0;
            last_commit = Instant::now();
        }
    }
    commit_pending(&consumer);
}

/// Commits what was handled; what fails stays pending for the next try (or goes with a
/// revocation).
fn commit_pending(consumer: &BaseConsumer<MemberContext>) {
    let offsets = consumer.context().pending.lock().unwrap().clone();
    if offsets.is_empty() {
        return;
    }
    if consumer.commit(&offset_list(&consumer.context().topic, &offsets), CommitMode::Sync).is_ok() {
        let mut pending = consumer.context().pending.lock().unwrap();
        pending.retain(|partition, offset| offsets.get(partition) != Some(offset));
    }
}

/// A member running on a thread of the test process.
pub struct Member {
    pub name: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Member {
    pub fn start(spec: &MemberSpec, name: &str, log: &Arc<GroupLog>) -> Member {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (spec, stop) = (spec.clone(), stop.clone());
            let sink = Sink::Log { log: log.clone(), member: name.to_string() };
            std::thread::Builder::new()
                .name(format!("member-{name}"))
                .spawn(move || run_member(&spec, sink, || !stop.load(Ordering::SeqCst)))
                .expect("spawn a member thread")
        };
        Member { name: name.to_string(), stop, thread: Some(thread) }
    }

    /// Asks the member to stop (commit, then close) without waiting for it.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops the member and waits until its consumer is closed; a panic on its thread fails
    /// the test here.
    pub fn stop(mut self) {
        self.request_stop();
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.request_stop();
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

/// A member in a child process (this test binary, running `CHILD_MEMBER_TEST`), whose events
/// reach the log through its stdout.
pub struct ChildMember {
    pub name: String,
    child: Option<Child>,
    reader: Option<JoinHandle<()>>,
    log: Arc<GroupLog>,
}

impl ChildMember {
    pub fn spawn(spec: &MemberSpec, name: &str, log: &Arc<GroupLog>) -> ChildMember {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .args([CHILD_MEMBER_TEST, "--exact", "--ignored", "--nocapture", "--test-threads=1", "--quiet"])
            .env(CHILD_MEMBER_ENV, spec.to_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a child member");
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = {
            let (log, member) = (log.clone(), name.to_string());
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    if let Some((at_ns, event)) = decode_event(&line) {
                        log.record(&member, at_ns, event);
                    }
                }
            })
        };
        ChildMember { name: name.to_string(), child: Some(child), reader: Some(reader), log: log.clone() }
    }

    /// SIGKILLs the member (no LeaveGroup, no commit, nothing), reaps it, takes in whatever it
    /// printed before it died, and records its death.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the child member is running");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("child member {} exited by itself before it was killed: {status}", self.name);
        }
        child.kill().expect("SIGKILL the child member");
        child.wait().expect("reap the child member");
        // The pipe is at EOF once the process is gone, so the reader ends.
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the child member's reader thread");
        }
        self.log.record(&self.name, monotonic_ns(), GroupEvent::Died);
    }
}

impl Drop for ChildMember {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// The body of `CHILD_MEMBER_TEST`: a member that reports its events on stdout until it is
/// killed (or `CHILD_LIFETIME` passes). Does nothing when not started by `ChildMember`.
pub fn run_child_member() {
    let Ok(spec) = std::env::var(CHILD_MEMBER_ENV) else {
        eprintln!("{CHILD_MEMBER_TEST} runs only as a child process of another test");
        return;
    };
    let spec = MemberSpec::from_env(&spec);
    let started = Instant::now();
    run_member(&spec, Sink::Stdout, || started.elapsed() < CHILD_LIFETIME);
}

/// A producer sending test records to a topic at a steady pace on its own thread until
/// stopped.
pub struct ContinuousProducer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<(i32, i64)>>>,
}

/// Records per burst, and the pause between bursts: about 500 records a second, enough to
/// keep every partition busy without swamping a debug-build broker on two cores.
const BURST_RECORDS: u64 = 5;
const BURST_PAUSE: Duration = Duration::from_millis(10);

impl ContinuousProducer {
    pub fn start(broker: &TestBroker, topic: &str, tag: &'static str, base_timestamp_ms: i64) -> ContinuousProducer {
        let producer: ThreadedProducer<DeliveryLog> = producer(broker, &[("linger.ms", "5")]);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, topic) = (stop.clone(), topic.to_string());
            std::thread::spawn(move || {
                let mut seq = 0;
                // Bounded even if the test never says stop.
                while !stop.load(Ordering::SeqCst) && seq < 200_000 {
                    send(&producer, &topic, seq, &test_record(seq, tag, base_timestamp_ms));
                    seq += 1;
                    if seq % BURST_RECORDS == 0 {
                        std::thread::sleep(BURST_PAUSE);
                    }
                }
                producer.flush(BULK_DEADLINE).expect("every record delivered");
                let reports = std::mem::take(&mut *producer.context().reports.lock().unwrap());
                assert_eq!(reports.len() as u64, seq, "a delivery report for every record");
                reports
                    .into_iter()
                    .map(|(seq, report)| {
                        report.unwrap_or_else(|err| panic!("record {seq} was not acknowledged: {err}"))
                    })
                    .collect()
            })
        };
        ContinuousProducer { stop, thread: Some(thread) }
    }

    /// Stops sending and waits for every delivery report: where record `seq` landed is
    /// element `seq`.
    pub fn stop(mut self) -> Vec<(i32, i64)> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("the producer thread");
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for ContinuousProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

/// A consumer of `group` that never joins it: it looks committed offsets up, and commits as
/// a client outside any generation (as an admin tool does).
pub fn standalone_consumer(broker: &TestBroker, group: &str) -> BaseConsumer {
    client_config(broker).set("group.id", group).set("enable.auto.commit", "false").create().expect("create a consumer")
}

/// The group's committed offset per partition of `topic` (`None`: nothing committed).
pub fn committed(reader: &BaseConsumer, topic: &str, partitions: i32) -> BTreeMap<i32, Option<i64>> {
    let mut list = TopicPartitionList::new();
    list.add_partition_range(topic, 0, partitions - 1);
    let committed = reader.committed_offsets(list, REQUEST_DEADLINE).expect("OffsetFetch");
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(offset) => (e.partition(), Some(offset)),
            Offset::Invalid => (e.partition(), None),
            other => panic!("committed offset of {topic}/{}: {other:?}", e.partition()),
        })
        .collect()
}

/// Each partition's log end offset (high watermark; there is one replica).
pub fn log_end_offsets(reader: &BaseConsumer, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    (0..partitions).map(|p| (p, reader.fetch_watermarks(topic, p, REQUEST_DEADLINE).expect("ListOffsets").1)).collect()
}

/// Every record acknowledged was handled at least once, each where it was acknowledged, and
/// every offset below each log end offset was handled. Re-handling (after a rebalance or the
/// kill, of what was handled but not yet committed) is allowed but must stay small: a group
/// that lost its commits would read everything again.
pub fn check_every_record_handled(log: &GroupLog, deliveries: &[(i32, i64)], log_end: &BTreeMap<i32, i64>) {
    let consumed = log.consumed();
    let mut handled_seqs = BTreeSet::new();
    let mut handled_offsets: BTreeSet<(i32, i64)> = BTreeSet::new();
    for (member, partition, offset, seq) in &consumed {
        let acked_at = deliveries.get(*seq as usize).unwrap_or_else(|| panic!("{member} handled unknown record {seq}"));
        assert_eq!((*partition, *offset), *acked_at, "{member} handled record {seq} where it was acknowledged");
        handled_seqs.insert(*seq);
        handled_offsets.insert((*partition, *offset));
    }
    let missing: Vec<u64> = (0..deliveries.len() as u64).filter(|seq| !handled_seqs.contains(seq)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} records were never handled, first {:?}",
        missing.len(),
        deliveries.len(),
        &missing[..missing.len().min(20)]
    );
    for (partition, end) in log_end {
        let gaps = (0..*end).filter(|offset| !handled_offsets.contains(&(*partition, *offset))).count();
        assert_eq!(gaps, 0, "offsets of partition {partition} below {end} never handled");
    }
    let repeats = consumed.len() - handled_seqs.len();
    eprintln!("{} records produced, {} handled, {repeats} of them again", deliveries.len(), consumed.len());
    assert!(
        repeats <= deliveries.len() / 4,
        "{repeats} records handled twice out of {}: members did not resume at the committed offsets",
        deliveries.len()
    );
}
