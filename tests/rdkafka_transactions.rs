//! Transactions end to end with librdkafka (the `rdkafka` crate) against a real `sluice` broker
//! process: exactly which records read_committed and read_uncommitted consumers see of committed,
//! aborted and still-open transactions (several transactional producers interleaved on the same
//! partitions, non-transactional records among them), where ListOffsets puts the end under each
//! isolation level (the last stable offset), an open transaction across a broker SIGKILL (ended
//! by a successor's InitProducerId or by its timeout), zombie fencing, a stalled producer's
//! timeout, and exactly-once consume-transform-produce across repeated SIGKILLs of the worker.

// Each test binary uses a different part of the shared harness.
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::clients::{admin, client_config, create_topic};
use common::groups::{committed, standalone_consumer};
use common::records::producer;
use common::transactions::{
    abort, assert_commit_fenced, check, check_reads_from_inside_aborted_transactions, commit, end_offsets,
    isolated_consumer, transactional_producer, unready_transactional_producer, wait_until_stable, Fate, Isolation,
    Ledger, Reader, RUN_DEADLINE,
};
use common::TestBroker;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// Small internal topics (Kafka creates 50 partitions of each, which a debug build takes a
/// while to create and fsync) and no 3 s wait before a new group's first rebalance.
const BROKER_SETTINGS: [&str; 3] =
    ["offsets.topic.num.partitions=3", "transaction.state.log.num.partitions=3", "group.initial.rebalance.delay.ms=0"];

// ---------------------------------------------------------------------------------------
// a. Committed and aborted transactions among non-transactional records

#[test]
fn read_committed_skips_aborted_transactions_that_read_uncommitted_sees() {
    const TOPIC: &str = "visibility";
    const PARTITIONS: i32 = 3;
    let broker = TestBroker::start(&BROKER_SETTINGS);
    create_topic(&admin(&broker), TOPIC, PARTITIONS, &[]);
    let plain = producer(&broker, &[("linger.ms", "1")]);
    let txn = transactional_producer(&broker, "visibility", 60_000);
    let mut ledger = Ledger::default();
    // The log ends with an aborted transaction, and the aborted ones come in a row.
    for (round, commits) in [true, false, false, true, true, false].into_iter().enumerate() {
        // Each transaction spans two of the three partitions, a different pair each round.
        let spanned: Vec<i32> = (0..PARTITIONS).filter(|p| (p + round as i32) % 3 != 0).collect();
        ledger.produce_to(&plain, TOPIC, &[0, 1, 2], &format!("plain-{round}a"), 2, Fate::Plain);
        txn.begin_transaction().expect("begin a transaction");
        let mut records = ledger.produce_to(&txn, TOPIC, &spanned, &format!("txn-{round}a"), 3, Fate::Open);
        // Non-transactional records land between the transaction's own.
        ledger.produce_to(&plain, TOPIC, &[0, 1, 2], &format!("plain-{round}b"), 1, Fate::Plain);
        records.extend(ledger.produce_to(&txn, TOPIC, &spanned, &format!("txn-{round}b"), 2, Fate::Open));
        if round == 1 {
            // read_committed stops at the open transaction, also for the plain records after it.
            check(&broker, TOPIC, PARTITIONS, &ledger, "transaction 1 open");
        }
        if commits {
            commit(&txn, &format!("transaction {round}"));
            ledger.settle(&records, Fate::Committed);
        } else {
            abort(&txn, &format!("transaction {round}"));
            ledger.settle(&records, Fate::Aborted);
        }
    }
    check(&broker, TOPIC, PARTITIONS, &ledger, "after six transactions");
    check_reads_from_inside_aborted_transactions(&broker, TOPIC, PARTITIONS, &ledger);
}

// ---------------------------------------------------------------------------------------
// b. Several transactional producers interleaved on the same partitions

#[test]
fn interleaved_transactions_of_several_producers_end_the_stable_offset_at_the_first_open_one() {
    const TOPIC: &str = "interleaved";
    const PARTITIONS: i32 = 2;
    const BOTH: [i32; 2] = [0, 1];
    let broker = TestBroker::start(&BROKER_SETTINGS);
    create_topic(&admin(&broker), TOPIC, PARTITIONS, &[]);
    let [a, b, c] =
        ["interleaved-a", "interleaved-b", "interleaved-c"].map(|id| transactional_producer(&broker, id, 60_000));
    let mut ledger = Ledger::default();

    c.begin_transaction().expect("begin C0");
    let c0 = ledger.produce_to(&c, TOPIC, &BOTH, "c0", 2, Fate::Open);
    commit(&c, "C0");
    ledger.settle(&c0, Fate::Committed);

    a.begin_transaction().expect("begin A");
    let mut a1 = ledger.produce_to(&a, TOPIC, &BOTH, "a1", 2, Fate::Open);
    b.begin_transaction().expect("begin B1");
    let mut b1 = ledger.produce_to(&b, TOPIC, &BOTH, "b1", 2, Fate::Open);
    check(&broker, TOPIC, PARTITIONS, &ledger, "A and B open");
    // A read_committed consumer that has read up to the stable offset waits there until the
    // transactions in its way end.
    let mut parked = Reader::from_beginning(&broker, TOPIC, PARTITIONS, Isolation::ReadCommitted);
    assert_eq!(parked.read_to_end(), &ledger.expected(Isolation::ReadCommitted, PARTITIONS), "parked at A's start");

    a1.extend(ledger.produce(&a, TOPIC, 0, "a2", 2, Fate::Open));
    // B's transaction goes on after A's records: A's are inside B's span.
    b1.extend(ledger.produce(&b, TOPIC, 0, "b1-late", 1, Fate::Open));
    c.begin_transaction().expect("begin C1");
    let c1 = ledger.produce_to(&c, TOPIC, &BOTH, "c1", 2, Fate::Open);
    abort(&b, "B1");
    ledger.settle(&b1, Fate::Aborted);
    check(&broker, TOPIC, PARTITIONS, &ledger, "A open, B aborted, C open");

    commit(&a, "A");
    ledger.settle(&a1, Fate::Committed);
    check(&broker, TOPIC, PARTITIONS, &ledger, "A committed, C still open");

    b.begin_transaction().expect("begin B2");
    let b2 = ledger.produce(&b, TOPIC, 1, "b2", 3, Fate::Open);
    commit(&b, "B2");
    ledger.settle(&b2, Fate::Committed);
    check(&broker, TOPIC, PARTITIONS, &ledger, "B2 committed behind C's open transaction");

    abort(&c, "C1");
    ledger.settle(&c1, Fate::Aborted);
    check(&broker, TOPIC, PARTITIONS, &ledger, "every transaction ended");
    parked.read_until(&ledger.expected(Isolation::ReadCommitted, PARTITIONS), "the parked consumer");
    check_reads_from_inside_aborted_transactions(&broker, TOPIC, PARTITIONS, &ledger);
}

// ---------------------------------------------------------------------------------------
// c. A transaction open when the broker is SIGKILLed

#[derive(Clone, Copy, PartialEq)]
enum OpenTxnEnd {
    /// A new producer with the same transactional id runs InitProducerId.
    Successor,
    /// Nobody comes back: the coordinator aborts it when its timeout passes.
    Timeout,
}

fn an_open_transaction_across_a_broker_sigkill(end: OpenTxnEnd) {
    const TOPIC: &str = "crash";
    const PARTITIONS: i32 = 2;
    const BOTH: [i32; 2] = [0, 1];
    const OPEN_ID: &str = "crash-open";
    let timeout_ms = match end {
        OpenTxnEnd::Successor => 60_000,
        OpenTxnEnd::Timeout => 5_000,
    };
    let mut settings = BROKER_SETTINGS.to_vec();
    settings.push("log.flush.interval.messages=1");
    let mut broker = TestBroker::start(&settings);
    create_topic(&admin(&broker), TOPIC, PARTITIONS, &[]);
    let mut ledger = Ledger::default();
    let other = transactional_producer(&broker, "crash-other", 60_000);
    other.begin_transaction().expect("begin");
    let before = ledger.produce_to(&other, TOPIC, &BOTH, "before", 2, Fate::Open);
    commit(&other, "before");
    ledger.settle(&before, Fate::Committed);
    // An aborted transaction from before the crash stays hidden after it: its entry in the
    // aborted-transaction index must survive the SIGKILL too.
    other.begin_transaction().expect("begin");
    let aborted = ledger.produce_to(&other, TOPIC, &BOTH, "aborted", 2, Fate::Open);
    abort(&other, "aborted");
    ledger.settle(&aborted, Fate::Aborted);

    let opened = Instant::now();
    let open = transactional_producer(&broker, OPEN_ID, timeout_ms);
    open.begin_transaction().expect("begin the transaction left open");
    let open_records = ledger.produce_to(&open, TOPIC, &BOTH, "open", 3, Fate::Open);
    // The producer goes away without ending its transaction (librdkafka sends no EndTxn when
    // it is destroyed), then the broker dies; every acknowledged record was fsynced.
    drop(open);
    broker.kill9_and_restart();

    // A transaction committed after the restart waits behind the open one.
    other.begin_transaction().expect("begin");
    let after = ledger.produce_to(&other, TOPIC, &BOTH, "after", 2, Fate::Open);
    commit(&other, "after");
    ledger.settle(&after, Fate::Committed);

    match end {
        OpenTxnEnd::Successor => {
            check(&broker, TOPIC, PARTITIONS, &ledger, "after the restart, the transaction still open");
            let successor = transactional_producer(&broker, OPEN_ID, 60_000);
            ledger.settle(&open_records, Fate::Aborted);
            check(&broker, TOPIC, PARTITIONS, &ledger, "the successor's InitProducerId aborted the transaction");
            successor.begin_transaction().expect("begin");
            let records = ledger.produce_to(&successor, TOPIC, &BOTH, "successor", 2, Fate::Open);
            commit(&successor, "the successor's transaction");
            ledger.settle(&records, Fate::Committed);
        }
        OpenTxnEnd::Timeout => {
            wait_until_stable(&broker, TOPIC, PARTITIONS, Duration::from_millis(timeout_ms.into()) + RUN_DEADLINE);
            // The coordinator counts from the transaction's first AddPartitionsToTxn, which came
            // after `opened`: seeing it ended any sooner means it was aborted before its time.
            let ended_after = opened.elapsed();
            assert!(
                ended_after >= Duration::from_millis(timeout_ms.into()),
                "the transaction ended {ended_after:?} after it began, before its {timeout_ms} ms timeout"
            );
            ledger.settle(&open_records, Fate::Aborted);
        }
    }
    check(&broker, TOPIC, PARTITIONS, &ledger, "at the end");
}

#[test]
fn a_transaction_open_at_a_broker_sigkill_is_aborted_by_its_successor() {
    an_open_transaction_across_a_broker_sigkill(OpenTxnEnd::Successor);
}

#[test]
fn a_transaction_open_at_a_broker_sigkill_is_aborted_at_its_timeout() {
    an_open_transaction_across_a_broker_sigkill(OpenTxnEnd::Timeout);
}

// ---------------------------------------------------------------------------------------
// d. Zombie fencing

#[test]
fn a_fenced_producer_can_neither_produce_nor_commit() {
    const TOPIC: &str = "zombie";
    const PARTITIONS: i32 = 2;
    const BOTH: [i32; 2] = [0, 1];
    let broker = TestBroker::start(&BROKER_SETTINGS);
    create_topic(&admin(&broker), TOPIC, PARTITIONS, &[]);
    let mut ledger = Ledger::default();
    let zombie = transactional_producer(&broker, "zombie", 60_000);
    zombie.begin_transaction().expect("begin");
    let zombie_records = ledger.produce_to(&zombie, TOPIC, &BOTH, "zombie", 2, Fate::Open);

    let successor = transactional_producer(&broker, "zombie", 60_000);
    ledger.settle(&zombie_records, Fate::Aborted);
    check(&broker, TOPIC, PARTITIONS, &ledger, "the successor's InitProducerId aborted the zombie's transaction");

    // The zombie writes on into a partition of its (aborted) transaction: the broker refuses
    // the old epoch (KIP-890), so nothing of it reaches the log. Then it tries to commit.
    let late = BaseRecord::with_opaque_to(TOPIC, 0).partition(0).key("zombie-late").payload("zombie-late");
    zombie.send(late).unwrap_or_else(|(err, _)| panic!("queue the zombie's late record: {err}"));
    zombie.flush(RUN_DEADLINE).ok();
    let reports = std::mem::take(&mut *zombie.context().reports.lock().unwrap());
    let report = reports.get(&0).expect("a delivery report for the zombie's late record");
    let refused = report.as_ref().err().and_then(KafkaError::rdkafka_error_code);
    assert!(
        matches!(refused, Some(RDKafkaErrorCode::InvalidProducerEpoch | RDKafkaErrorCode::ProducerFenced)),
        "the broker refuses the fenced zombie's late record for its old epoch: {report:?}"
    );
    assert_commit_fenced(&zombie, "the zombie");

    successor.begin_transaction().expect("begin");
    let records = ledger.produce_to(&successor, TOPIC, &BOTH, "successor", 2, Fate::Open);
    commit(&successor, "the successor's transaction");
    ledger.settle(&records, Fate::Committed);
    // read_uncommitted shows the zombie's late record never reached the log.
    check(&broker, TOPIC, PARTITIONS, &ledger, "the successor committed");
}

// ---------------------------------------------------------------------------------------
// e. A stalled producer's transaction times out

#[test]
fn a_stalled_transaction_is_aborted_at_its_timeout_and_cannot_commit() {
    const TOPIC: &str = "stall";
    const PARTITIONS: i32 = 1;
    const TIMEOUT_MS: u32 = 3000;
    let mut settings = BROKER_SETTINGS.to_vec();
    settings.push("transaction.max.timeout.ms=60000");
    let broker = TestBroker::start(&settings);
    create_topic(&admin(&broker), TOPIC, PARTITIONS, &[]);
    // The broker refuses a longer timeout than its `transaction.max.timeout.ms`.
    let refused = unready_transactional_producer(&broker, "greedy", 60_001).init_transactions(RUN_DEADLINE);
    let code = refused.as_ref().err().and_then(KafkaError::rdkafka_error_code);
    assert_eq!(code, Some(RDKafkaErrorCode::InvalidTransactionTimeout), "InitProducerId over the maximum: {refused:?}");
    let mut ledger = Ledger::default();
    let opened = Instant::now();
    let stalled = transactional_producer(&broker, "stalled", TIMEOUT_MS);
    stalled.begin_transaction().expect("begin");
    let stalled_records = ledger.produce(&stalled, TOPIC, 0, "stalled", 3, Fate::Open);

    let live = transactional_producer(&broker, "live", 60_000);
    live.begin_transaction().expect("begin");
    let live_records = ledger.produce(&live, TOPIC, 0, "live", 3, Fate::Open);
    commit(&live, "the live transaction");
    ledger.settle(&live_records, Fate::Committed);

    // A read_committed consumer waits at the stalled transaction until the coordinator aborts it.
    let mut parked = Reader::from_beginning(&broker, TOPIC, PARTITIONS, Isolation::ReadCommitted);
    let mut after_abort = ledger.clone();
    after_abort.settle(&stalled_records, Fate::Aborted);
    let expected = after_abort.expected(Isolation::ReadCommitted, PARTITIONS);
    let seen_at = parked.read_until(&expected, "the stalled transaction timed out");
    let waited = seen_at.duration_since(opened);
    assert!(
        waited >= Duration::from_millis(TIMEOUT_MS.into()),
        "the live records were readable {waited:?} after the stalled transaction began, before its timeout"
    );
    ledger.settle(&stalled_records, Fate::Aborted);

    assert_commit_fenced(&stalled, "the stalled producer");
    check(&broker, TOPIC, PARTITIONS, &ledger, "the stalled transaction was aborted");
}

// ---------------------------------------------------------------------------------------
// f. Exactly-once consume-transform-produce across SIGKILLs of the worker

/// Not a test: the body of the consume-transform-produce worker that
/// `consume_transform_produce_is_exactly_once_across_worker_sigkills` runs in a child process.
#[test]
#[ignore = "run by another test as a child process"]
fn eos_worker_child_process() {
    let Ok(spec) = std::env::var(EOS_WORKER_ENV) else {
        eprintln!("{EOS_WORKER_TEST} runs only as a child process of another test");
        return;
    };
    run_eos_worker(&WorkerSpec::from_env(&spec));
}

const EOS_WORKER_TEST: &str = "eos_worker_child_process";
/// What the worker works on: bootstrap, input topic, output topic, group, tab-separated.
const EOS_WORKER_ENV: &str = "SLUICE_TEST_EOS_WORKER";
/// Prefix of the worker's progress lines on stdout (libtest prints its own lines there too).
const EOS_LINE_PREFIX: &str = "eos-worker";
/// A worker exits by itself after this, should its parent never kill it.
const EOS_WORKER_LIFETIME: Duration = Duration::from_secs(120);
/// Both the worker's transactional id and its static group instance id: one worker runs at a
/// time, and each new one takes over from (and fences) the one killed before it.
const EOS_WORKER_ID: &str = "eos-worker-0";

struct WorkerSpec {
    bootstrap: String,
    input: String,
    output: String,
    group: String,
}

impl WorkerSpec {
    fn to_env(&self) -> String {
        [&self.bootstrap, &self.input, &self.output, &self.group].map(String::as_str).join("\t")
    }

    fn from_env(env: &str) -> WorkerSpec {
        let fields: Vec<&str> = env.split('\t').collect();
        let [bootstrap, input, output, group] = fields[..] else { panic!("a bad worker spec: {env:?}") };
        WorkerSpec {
            bootstrap: bootstrap.to_string(),
            input: input.to_string(),
            output: output.to_string(),
            group: group.to_string(),
        }
    }
}

/// The output record for the input record `value` read at `partition`/`offset`.
fn transformed(value: &str, partition: i32, offset: i64) -> String {
    format!("out {value} from {partition}/{offset}")
}

/// Records per transaction: a few dozen, varying so that commits fall at different places.
fn transaction_size(transaction: u64) -> usize {
    20 + (transaction * 7 % 31) as usize
}

/// Reads the input as a member of the group (read_committed), writes one transformed record
/// per input record to the same partition of the output and commits the consumer's positions
/// in the same transaction. Any error fails the worker: the parent counts that as a failure.
fn run_eos_worker(spec: &WorkerSpec) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &spec.bootstrap)
        .set("broker.address.family", "v4")
        .set("transactional.id", EOS_WORKER_ID)
        .set("transaction.timeout.ms", "60000")
        .set("linger.ms", "5")
        .create()
        .expect("create the worker's producer");
    // Before the consumer joins: InitProducerId aborts what the killed worker left open, so
    // the offsets it had sent to its transaction are dropped before this one reads them.
    producer.init_transactions(RUN_DEADLINE).expect("InitProducerId");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &spec.bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", &spec.group)
        .set("group.instance.id", EOS_WORKER_ID)
        .set("session.timeout.ms", "10000")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("create the worker's consumer");
    consumer.subscribe(&[&spec.input]).expect("subscribe");
    println!("{EOS_LINE_PREFIX} ready");
    let started = Instant::now();
    let (mut in_transaction, mut transactions) = (0, 0);
    while started.elapsed() < EOS_WORKER_LIFETIME {
        let polled = match consumer.poll(Duration::from_millis(50)) {
            None => false,
            Some(Err(err)) => panic!("consume {}: {err}", spec.input),
            Some(Ok(message)) => {
                if in_transaction == 0 {
                    producer.begin_transaction().expect("begin a transaction");
                    println!("{EOS_LINE_PREFIX} begin");
                }
                let value = std::str::from_utf8(message.payload().unwrap_or_default()).expect("UTF-8 input");
                let out = transformed(value, message.partition(), message.offset());
                let record: BaseRecord<'_, [u8], str> = BaseRecord::to(&spec.output)
                    .partition(message.partition())
                    .key(message.key().unwrap_or_default())
                    .payload(&out);
                producer.send(record).unwrap_or_else(|(err, _)| panic!("queue an output record: {err}"));
                in_transaction += 1;
                true
            }
        };
        if in_transaction > 0 && (in_transaction >= transaction_size(transactions) || !polled) {
            let mut offsets = TopicPartitionList::new();
            for e in consumer.position().expect("positions").elements() {
                if let Offset::Offset(offset) = e.offset() {
                    offsets.add_partition_offset(&spec.input, e.partition(), Offset::Offset(offset)).expect("offset");
                }
            }
            let group = consumer.group_metadata().expect("group metadata");
            producer
                .send_offsets_to_transaction(&offsets, &group, RUN_DEADLINE)
                .expect("send offsets to the transaction");
            producer.commit_transaction(RUN_DEADLINE).expect("commit");
            println!("{EOS_LINE_PREFIX} committed {in_transaction}");
            in_transaction = 0;
            transactions += 1;
        }
    }
}

/// A worker process and its progress lines.
struct EosWorker {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    reader: Option<JoinHandle<()>>,
    /// Whether the last progress line was `begin` (a transaction is open).
    in_transaction: bool,
}

impl EosWorker {
    fn spawn(spec: &WorkerSpec) -> EosWorker {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .args([EOS_WORKER_TEST, "--exact", "--ignored", "--nocapture", "--test-threads=1", "--quiet"])
            .env(EOS_WORKER_ENV, spec.to_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(rest) = line.strip_prefix(EOS_LINE_PREFIX) {
                    if tx.send(rest.trim().to_string()).is_err() {
                        return;
                    }
                }
            }
        });
        EosWorker { child: Some(child), lines, reader: Some(reader), in_transaction: false }
    }

    fn take_line(&mut self, line: &str) {
        if line == "begin" {
            self.in_transaction = true;
        } else if line.starts_with("committed") {
            self.in_transaction = false;
        }
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + RUN_DEADLINE;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line == "ready" => return,
                Ok(line) => self.take_line(&line),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("the worker was not ready within {RUN_DEADLINE:?}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().map(|c| c.wait());
                    panic!("the worker exited before it was ready: {status:?}");
                }
            }
        }
    }

    /// SIGKILLs the worker (it must still be running) and returns whether it had a transaction
    /// open by what it printed.
    fn kill(&mut self) -> bool {
        let mut child = self.child.take().expect("the worker is running");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the worker exited by itself ({status}); its stderr is above");
        }
        child.kill().expect("SIGKILL the worker");
        child.wait().expect("reap the worker");
        // The pipe is at EOF once the process is gone, so the reader ends.
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the worker's reader thread");
        }
        while let Ok(line) = self.lines.try_recv() {
            self.take_line(&line);
        }
        self.in_transaction
    }
}

impl Drop for EosWorker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// xorshift64: cheap randomness for the kill moments (the seed is printed with each run).
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

#[test]
fn consume_transform_produce_is_exactly_once_across_worker_sigkills() {
    const INPUT: &str = "eos-input";
    const OUTPUT: &str = "eos-output";
    const GROUP: &str = "eos-group";
    const PARTITIONS: i32 = 4;
    const RECORDS: usize = 3000;
    const MIN_KILLS: usize = 20;
    /// A worker runs this long (plus up to `KILL_AFTER_SPREAD_MS`) after it is ready.
    const KILL_AFTER_MIN_MS: u64 = 100;
    const KILL_AFTER_SPREAD_MS: u64 = 500;
    let broker = TestBroker::start(&BROKER_SETTINGS);
    let admin = admin(&broker);
    create_topic(&admin, INPUT, PARTITIONS, &[]);
    create_topic(&admin, OUTPUT, PARTITIONS, &[]);
    let mut input = Ledger::default();
    let loader = producer(&broker, &[("linger.ms", "5")]);
    for partition in 0..PARTITIONS {
        input.produce(&loader, INPUT, partition, "in", RECORDS / PARTITIONS as usize, Fate::Plain);
    }
    let input_end: BTreeMap<i32, Option<i64>> =
        end_offsets(&isolated_consumer(&broker, Isolation::ReadUncommitted), INPUT, PARTITIONS)
            .into_iter()
            .map(|(p, o)| (p, Some(o)))
            .collect();

    let seed = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as u64 | 1;
    eprintln!("kill moments seed {seed}");
    let mut random = Random(seed);
    let spec = WorkerSpec {
        bootstrap: broker.bootstrap(),
        input: INPUT.to_string(),
        output: OUTPUT.to_string(),
        group: GROUP.to_string(),
    };
    // OffsetFetch without require_stable (KIP-447): the stable offsets, also while a killed
    // worker's transaction (holding offsets) stays open until the next worker fences it.
    let offsets_reader: BaseConsumer = client_config(&broker)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("create a consumer");
    let (mut kills, mut kills_in_transaction) = (0, 0);
    while kills < MIN_KILLS {
        let mut worker = EosWorker::spawn(&spec);
        worker.wait_until_ready();
        std::thread::sleep(Duration::from_millis(KILL_AFTER_MIN_MS + random.below(KILL_AFTER_SPREAD_MS)));
        kills_in_transaction += usize::from(worker.kill());
        kills += 1;
        eprintln!("kill {kills}: committed {:?}", committed(&offsets_reader, INPUT, PARTITIONS));
    }
    // The last worker runs until the group has committed the whole input.
    let mut worker = EosWorker::spawn(&spec);
    worker.wait_until_ready();
    let deadline = Instant::now() + RUN_DEADLINE;
    loop {
        let offsets = committed(&offsets_reader, INPUT, PARTITIONS);
        if offsets == input_end {
            break;
        }
        assert!(Instant::now() < deadline, "the group committed {offsets:?} of {input_end:?} within {RUN_DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    worker.kill();
    // A read_committed client asks for stable offsets: nothing of the group is pending.
    assert_eq!(committed(&standalone_consumer(&broker, GROUP), INPUT, PARTITIONS), input_end, "stable offsets");
    // The offsets become visible with the transaction's marker in `__consumer_offsets`; the
    // markers in the output may come a moment later, as in Kafka.
    wait_until_stable(&broker, OUTPUT, PARTITIONS, RUN_DEADLINE);

    // Each input record's result is in the output exactly once, in input order per partition.
    let input = input.expected(Isolation::ReadUncommitted, PARTITIONS);
    let mut output = Reader::from_beginning(&broker, OUTPUT, PARTITIONS, Isolation::ReadCommitted);
    let output = output.read_to_end();
    for partition in 0..PARTITIONS {
        let expected: Vec<String> =
            input[&partition].iter().map(|(offset, value)| transformed(value, partition, *offset)).collect();
        let read: Vec<&String> = output[&partition].iter().map(|(_, value)| value).collect();
        assert_eq!(read, expected.iter().collect::<Vec<_>>(), "committed output of partition {partition}");
    }
    let mut everything = Reader::from_beginning(&broker, OUTPUT, PARTITIONS, Isolation::ReadUncommitted);
    let written = everything.read_to_end().values().map(Vec::len).sum::<usize>();
    eprintln!("{kills} kills ({kills_in_transaction} with a transaction open); {written} output records written");
    assert!(written > RECORDS, "no kill left an aborted transaction's records in the output, so nothing was tested");
}
