//! End-to-end load harness on librdkafka, for Sluice or any Kafka-compatible broker.
//!
//!   cargo bench --bench load -- produce --record-size 1024 --acks 1 --batch-size 1048576
//!   cargo bench --bench load -- consume --records 2000000
//!   cargo bench --bench load -- latency --rate-mb 50 --seconds 20
//!   cargo bench --bench load -- rebalance --consumers 10 --partitions 100 [--protocol consumer]
//!   cargo bench --bench load -- produce --commits-per-sec 1000   (offset commits alongside)
//!   cargo bench --bench load -- transactions --records-per-txn 10
//!   cargo bench --bench load -- clickstream-latency --rate 20000 --seconds 300
//!   cargo bench --bench load -- footprint --partitions 1000   (disk per idle partition)
//!   cargo bench --bench load -- fetch-sessions --partitions 1000   (broker CPU per fetch, KIP-227)
//!   cargo bench --bench load -- --bootstrap host:9092 produce ...   (any broker)
//!   cargo bench --bench load -- --bootstrap 127.0.0.1:19092 produce --replication-factor 3
//!       --acks -1   (a cluster from `sluice cluster up --brokers 3`)
//!   cargo bench --bench load -- --set group.initial.rebalance.delay.ms=0 rebalance ...
//!
//! Without `--bootstrap` it starts a release-built `sluice` broker of its own in a temporary
//! directory. Each run prints one summary line; nothing is asserted.

#[path = "load/clickstream.rs"]
mod clickstream;
#[path = "load/fetch_sessions.rs"]
mod fetch_sessions;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Parser)]
struct Cli {
    /// Broker to load; omitted, the harness starts its own sluice broker.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Broker configs (`key=value`) for the harness's own broker.
    #[arg(long = "set", global = true)]
    settings: Vec<String>,
    /// The admin HTTP API of the broker given with --bootstrap (jobs).
    #[arg(long, default_value = "127.0.0.1:9644")]
    admin: String,
    /// Ignored: cargo passes it to every bench target.
    #[arg(long, hide = true, global = true)]
    bench: bool,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Producer throughput.
    Produce(ProduceArgs),
    /// Fills a topic, then measures consumer throughput reading it back.
    Consume(ProduceArgs),
    /// Produce-to-consume latency percentiles at a fixed offered rate.
    Latency(LatencyArgs),
    /// Time for a consumer group to settle: all members subscribe at once, until every
    /// partition is assigned exactly once and the group is balanced.
    Rebalance(RebalanceArgs),
    /// Committed transactions per second from one transactional producer.
    Transactions(TransactionsArgs),
    /// Latency from append to visible result of the in-broker clickstream job.
    ClickstreamLatency(clickstream::ClickstreamLatencyArgs),
    /// Disk taken by idle partitions: one record in each partition of a new topic and one
    /// committed offset, then the bytes allocated under each partition directory (own broker
    /// only).
    Footprint(FootprintArgs),
    /// Broker CPU per Fetch of many idle partitions, with and without an incremental fetch
    /// session (own broker only).
    FetchSessions(fetch_sessions::FetchSessionsArgs),
}

#[derive(Args, Clone)]
struct FootprintArgs {
    #[arg(long, default_value_t = 1000)]
    partitions: i32,
}

#[derive(Args, Clone)]
struct TransactionsArgs {
    #[arg(long, default_value_t = 10)]
    records_per_txn: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    #[arg(long, default_value_t = 8)]
    partitions: i32,
}

#[derive(Args, Clone)]
struct RebalanceArgs {
    #[arg(long, default_value_t = 10)]
    consumers: usize,
    #[arg(long, default_value_t = 100)]
    partitions: i32,
    /// classic (JoinGroup/SyncGroup) or consumer (KIP-848).
    #[arg(long, default_value = "classic")]
    protocol: String,
    /// Classic protocol only: range, roundrobin or cooperative-sticky.
    #[arg(long, default_value = "range")]
    strategy: String,
}

#[derive(Args, Clone)]
struct ProduceArgs {
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// 0, 1 or -1 (all).
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    acks: i32,
    /// librdkafka `batch.size` in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    batch_size: usize,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// librdkafka `enable.idempotence` (needs acks -1).
    #[arg(long)]
    idempotent: bool,
    /// Replicas of the topic (a cluster, e.g. `sluice cluster up`, given with --bootstrap).
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    /// Offset commits per second (synchronous, one partition each) made alongside the
    /// measured phase, to show what group traffic costs data traffic.
    #[arg(long, default_value_t = 0.0)]
    commits_per_sec: f64,
}

#[derive(Args, Clone)]
struct LatencyArgs {
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Offered load in MB/s.
    #[arg(long, default_value_t = 50.0)]
    rate_mb: f64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    acks: i32,
    /// Producer `linger.ms`: 0 sends each record at once (many tiny requests), 1 lets a
    /// millisecond's records share a request.
    #[arg(long, default_value_t = 1)]
    linger_ms: u64,
    /// Replicas of the topic (a cluster given with --bootstrap).
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
}

/// The harness's own broker, killed on drop.
struct OwnBroker {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Starts the harness's broker; returns it with its Kafka and admin addresses.
fn start_own_broker(settings: &[String]) -> (OwnBroker, String, String) {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["broker", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(settings.iter().flat_map(|s| ["--set", s.as_str()]))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut admin = String::new();
    let address = loop {
        let line = lines.next().expect("sluice exited before listening").expect("read stdout");
        if let Some(address) = line.strip_prefix("sluice admin API listening on ") {
            admin = address.to_string();
        }
        if let Some(address) = line.strip_prefix("sluice broker listening on ") {
            break address.to_string();
        }
    };
    // Keep draining stdout so the broker never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (OwnBroker { child, _dir: dir }, address, admin)
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    create_replicated_topic(bootstrap, topic, partitions, 1)
}

fn create_replicated_topic(bootstrap: &str, topic: &str, partitions: i32, replication_factor: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(replication_factor))],
            &AdminOptions::new(),
        ))
        .expect("create topic");
    for result in results {
        if let Err((name, code)) = result {
            assert_eq!(code, RDKafkaErrorCode::TopicAlreadyExists, "creating {name} failed: {code}");
        }
    }
}

#[derive(Default)]
struct Counting {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn producer_config(bootstrap: &str, acks: i32, batch_size: usize, linger_ms: u64, compression: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", acks.to_string())
        .set("batch.size", batch_size.to_string())
        .set("linger.ms", linger_ms.to_string())
        .set("compression.type", compression)
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", "false");
    config
}

/// Produces `args.records` records from `args.producers` producers; returns the seconds taken.
fn produce(bootstrap: &str, topic: &str, args: &ProduceArgs) -> f64 {
    let value = vec![b'x'; args.record_size];
    let per_producer = args.records / args.producers as u64;
    let start = Instant::now();
    let threads: Vec<_> = (0..args.producers)
        .map(|p| {
            let mut config = producer_config(bootstrap, args.acks, args.batch_size, args.linger_ms, &args.compression);
            config.set("enable.idempotence", args.idempotent.to_string());
            let (topic, value, partitions) = (topic.to_string(), value.clone(), args.partitions);
            std::thread::spawn(move || {
                let producer: ThreadedProducer<Counting> =
                    config.create_with_context(Counting::default()).expect("producer");
                for i in 0..per_producer {
                    let key = (i % 1024).to_be_bytes();
                    let mut record = BaseRecord::to(&topic)
                        .key(&key[..])
                        .payload(&value[..])
                        .partition(((i + p as u64) % partitions as u64) as i32);
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                                record = back;
                                std::thread::sleep(Duration::from_micros(200));
                            }
                            Err((err, _)) => panic!("send failed: {err}"),
                        }
                    }
                }
                producer.flush(Duration::from_secs(120)).expect("flush");
                let failed = producer.context().failed.load(Ordering::Relaxed);
                assert_eq!(failed, 0, "{failed} records failed");
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("producer thread");
    }
    start.elapsed().as_secs_f64()
}

fn assign_all(consumer: &BaseConsumer, topic: &str, partitions: i32) {
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
}

fn consumer(bootstrap: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sluice-load")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "4194304")
        .set("queued.max.messages.kbytes", "1048576");
    for (key, value) in extra {
        config.set(*key, *value);
    }
    config.create().expect("consumer")
}

/// Reads `records` records back from the start; returns (seconds, bytes).
fn consume(bootstrap: &str, topic: &str, partitions: i32, records: u64) -> (f64, u64) {
    let consumer = consumer(bootstrap, &[]);
    assign_all(&consumer, topic, partitions);
    let (mut seen, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(600);
    while seen < records && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("consume");
            bytes += message.payload_len() as u64;
            seen += 1;
        }
    }
    assert_eq!(seen, records, "consumer timed out");
    (start.elapsed().as_secs_f64(), bytes)
}

/// Commits offsets at `rate` per second (group `sluice-load-commits`, generation -1) until
/// `stop` is set; returns how many it made.
fn start_committer(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    rate: f64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let consumer = consumer(bootstrap, &[("group.id", "sluice-load-commits")]);
    let topic = topic.to_string();
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut made = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut offsets = TopicPartitionList::new();
            offsets
                .add_partition_offset(&topic, (made % partitions as u64) as i32, Offset::Offset(made as i64))
                .expect("offset");
            consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync).expect("commit");
            made += 1;
            let due = start + Duration::from_secs_f64(made as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        made
    })
}

/// Runs `measured` with a committer alongside when `rate` > 0; returns its result and the
/// commits per second achieved.
fn with_commits<T>(bootstrap: &str, topic: &str, partitions: i32, rate: f64, measured: impl FnOnce() -> T) -> (T, f64) {
    if rate <= 0.0 {
        return (measured(), 0.0);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committer = start_committer(bootstrap, topic, partitions, rate, stop.clone());
    let start = Instant::now();
    let result = measured();
    stop.store(true, Ordering::Relaxed);
    let made = committer.join().expect("committer thread");
    (result, made as f64 / start.elapsed().as_secs_f64())
}

/// One 100-byte record in each partition and one committed offset (which creates the offsets
/// topic), then the allocated bytes under `data_dir`, summed by topic.
fn footprint(bootstrap: &str, topic: &str, partitions: i32, data_dir: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let args = ProduceArgs {
        record_size: 100,
        records: partitions as u64,
        acks: -1,
        batch_size: 1_000_000,
        linger_ms: 5,
        compression: "none".into(),
        partitions,
        producers: 1,
        idempotent: false,
        replication_factor: 1,
        commits_per_sec: 0.0,
    };
    produce(bootstrap, topic, &args);
    let group = format!("footprint-{}", now_ns());
    let committer = consumer(bootstrap, &[("group.id", group.as_str())]);
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(topic, 0, Offset::Offset(1)).expect("offset");
    committer.commit(&offsets, rdkafka::consumer::CommitMode::Sync).expect("commit");
    // Sums every file under each directory whose name is `<topic>-<partition>`.
    let mut by_topic: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read data dir") {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            if entry.file_type().expect("file type").is_dir() {
                stack.push(path);
                continue;
            }
            let parent = path.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("");
            let Some((name, partition)) = parent.rsplit_once('-') else { continue };
            if partition.parse::<u32>().is_err() {
                continue;
            }
            by_topic.entry(name.to_string()).or_default().0 += entry.metadata().expect("stat").blocks() * 512;
        }
    }
    for entry in std::fs::read_dir(data_dir).expect("read data dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((topic, partition)) = name.rsplit_once('-') {
            if partition.parse::<u32>().is_ok() && entry.path().is_dir() {
                by_topic.entry(topic.to_string()).or_default().1 += 1;
            }
        }
    }
    for (name, (bytes, partitions)) in by_topic {
        let label = if name == topic { "the new topic" } else { name.as_str() };
        println!(
            "footprint {label}: {partitions} partitions -> {bytes} bytes allocated, {:.1} KiB per partition",
            bytes as f64 / partitions.max(1) as f64 / 1024.0
        );
    }
}

/// Subscribes `consumers` members at once and polls them until the group is balanced;
/// returns the seconds that took.
fn rebalance(bootstrap: &str, topic: &str, args: &RebalanceArgs) -> f64 {
    let group = format!("rebalance-{}", now_ns());
    let mut extra = vec![("group.id", group.as_str())];
    if args.protocol == "consumer" {
        extra.push(("group.protocol", "consumer"));
    } else {
        extra.push(("partition.assignment.strategy", args.strategy.as_str()));
    }
    let members: Vec<BaseConsumer> = (0..args.consumers).map(|_| consumer(bootstrap, &extra)).collect();
    let start = Instant::now();
    for member in &members {
        member.subscribe(&[topic]).expect("subscribe");
    }
    let share = args.partitions as usize / args.consumers;
    let deadline = start + Duration::from_secs(300);
    loop {
        for member in &members {
            if let Some(Err(err)) = member.poll(Duration::from_millis(1)) {
                panic!("consumer error: {err}");
            }
        }
        let counts: Vec<usize> = members.iter().map(|m| m.assignment().map_or(0, |a| a.count())).collect();
        let balanced = counts.iter().all(|&c| c == share || c == share + 1);
        if balanced && counts.iter().sum::<usize>() == args.partitions as usize {
            return start.elapsed().as_secs_f64();
        }
        assert!(Instant::now() < deadline, "the group did not settle: {counts:?}");
    }
}

/// Runs transactions of `records_per_txn` records (spread over the partitions) back to back
/// for `seconds`; returns (transactions, seconds).
fn transactions(bootstrap: &str, topic: &str, args: &TransactionsArgs) -> (u64, f64) {
    let mut config = producer_config(bootstrap, -1, 1_000_000, 0, "none");
    config.set("enable.idempotence", "true").set("transactional.id", format!("load-{}", now_ns()));
    // A BaseProducer: commit_transaction serves delivery reports itself, where a
    // ThreadedProducer's poll thread (100 ms period) would pace every transaction.
    let producer: rdkafka::producer::BaseProducer<Counting> =
        config.create_with_context(Counting::default()).expect("producer");
    producer.init_transactions(Duration::from_secs(30)).expect("init_transactions");
    let value = vec![b'x'; args.record_size];
    let start = Instant::now();
    let mut committed = 0u64;
    while start.elapsed() < Duration::from_secs(args.seconds) {
        producer.begin_transaction().expect("begin_transaction");
        for i in 0..args.records_per_txn {
            let record = BaseRecord::<(), [u8]>::to(topic).payload(&value[..]).partition((i as i32) % args.partitions);
            producer.send(record).map_err(|(err, _)| err).expect("send");
        }
        // Serve delivery reports until none is outstanding, then commit (which would
        // otherwise wait on them in steps of rdkafka's 100 ms poll).
        let deadline = Instant::now() + Duration::from_secs(30);
        while producer.in_flight_count() > 0 && Instant::now() < deadline {
            producer.poll(Duration::from_millis(1));
        }
        producer.commit_transaction(Duration::from_secs(30)).expect("commit_transaction");
        committed += 1;
    }
    (committed, start.elapsed().as_secs_f64())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * p / 100.0).ceil() as usize).saturating_sub(1).min(sorted.len() - 1);
    sorted[index] as f64 / 1e6
}

fn latency(bootstrap: &str, topic: &str, args: &LatencyArgs) {
    let rate = args.rate_mb * 1e6 / args.record_size as f64;
    let total = (rate * args.seconds as f64) as u64;
    let consumer_thread = {
        let (bootstrap, topic, partitions) = (bootstrap.to_string(), topic.to_string(), args.partitions);
        std::thread::spawn(move || {
            let consumer = consumer(&bootstrap, &[("fetch.wait.max.ms", "100"), ("fetch.min.bytes", "1")]);
            let mut assignment = TopicPartitionList::new();
            for partition in 0..partitions {
                assignment.add_partition_offset(&topic, partition, Offset::End).expect("assignment");
            }
            consumer.assign(&assignment).expect("assign");
            // Wait until the consumer has its positions before the producer starts.
            for _ in 0..20 {
                consumer.poll(Duration::from_millis(100));
            }
            consumer
        })
    };
    let consumer = consumer_thread.join().expect("consumer setup");
    let receiver = std::thread::spawn(move || {
        let mut latencies = Vec::with_capacity(total as usize);
        let deadline = Instant::now() + Duration::from_secs(600);
        while (latencies.len() as u64) < total && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.expect("consume");
                let payload = message.payload().unwrap_or_default();
                if payload.len() >= 8 {
                    let sent = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                    latencies.push(now_ns().saturating_sub(sent));
                }
            }
        }
        latencies
    });
    let producer: ThreadedProducer<Counting> = producer_config(bootstrap, args.acks, 1_000_000, args.linger_ms, "none")
        .create_with_context(Counting::default())
        .expect("producer");
    let mut value = vec![b'x'; args.record_size.max(8)];
    let start = Instant::now();
    for i in 0..total {
        // Paced: record i goes out at start + i / rate.
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        value[..8].copy_from_slice(&now_ns().to_be_bytes());
        let record: BaseRecord<'_, (), [u8]> =
            BaseRecord::to(topic).payload(&value[..]).partition((i % args.partitions as u64) as i32);
        if let Err((err, _)) = producer.send(record) {
            panic!("send failed: {err}");
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    let mut latencies = receiver.join().expect("receiver");
    latencies.sort_unstable();
    println!(
        "latency record_size={} rate={:.0}MB/s offered={:.0}rec/s acks={} linger_ms={} partitions={} received={}/{} -> p50={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
        args.record_size,
        args.rate_mb,
        rate,
        args.acks,
        args.linger_ms,
        args.partitions,
        latencies.len(),
        total,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 99.9),
        percentile(&latencies, 100.0),
    );
}

fn main() {
    let cli = Cli::parse();
    let (own, bootstrap, admin) = match &cli.bootstrap {
        Some(bootstrap) => (None, bootstrap.clone(), cli.admin.clone()),
        None => {
            let (broker, address, admin) = start_own_broker(&cli.settings);
            (Some(broker), address, admin)
        }
    };
    let topic = format!("load-{}", now_ns());
    let _ = cli.bench;
    match &cli.mode {
        Mode::Produce(args) => {
            create_replicated_topic(&bootstrap, &topic, args.partitions, args.replication_factor);
            let (seconds, commits) = with_commits(&bootstrap, &topic, args.partitions, args.commits_per_sec, || {
                produce(&bootstrap, &topic, args)
            });
            let bytes = args.records as f64 * args.record_size as f64;
            println!(
                "produce record_size={} records={} acks={} idempotent={} batch_size={} linger_ms={} compression={} partitions={} producers={} commits/s={commits:.0} -> {:.1} MB/s {:.0} rec/s",
                args.record_size,
                args.records,
                args.acks,
                args.idempotent,
                args.batch_size,
                args.linger_ms,
                args.compression,
                args.partitions,
                args.producers,
                bytes / seconds / 1e6,
                args.records as f64 / seconds
            );
        }
        Mode::Consume(args) => {
            create_topic(&bootstrap, &topic, args.partitions);
            produce(&bootstrap, &topic, args);
            let ((seconds, bytes), commits) =
                with_commits(&bootstrap, &topic, args.partitions, args.commits_per_sec, || {
                    consume(&bootstrap, &topic, args.partitions, args.records)
                });
            println!(
                "consume record_size={} records={} compression={} partitions={} commits/s={commits:.0} -> {:.1} MB/s {:.0} rec/s",
                args.record_size,
                args.records,
                args.compression,
                args.partitions,
                bytes as f64 / seconds / 1e6,
                args.records as f64 / seconds
            );
        }
        Mode::Latency(args) => {
            create_replicated_topic(&bootstrap, &topic, args.partitions, args.replication_factor);
            latency(&bootstrap, &topic, args);
        }
        Mode::Transactions(args) => {
            create_topic(&bootstrap, &topic, args.partitions);
            let (committed, seconds) = transactions(&bootstrap, &topic, args);
            println!(
                "transactions records_per_txn={} record_size={} partitions={} -> {:.0} txn/s {:.0} rec/s",
                args.records_per_txn,
                args.record_size,
                args.partitions,
                committed as f64 / seconds,
                (committed as usize * args.records_per_txn) as f64 / seconds
            );
        }
        Mode::ClickstreamLatency(args) => clickstream::run(&bootstrap, &admin, args),
        Mode::FetchSessions(args) => {
            let own = own.as_ref().expect("fetch-sessions reads the harness's own broker's CPU: drop --bootstrap");
            create_topic(&bootstrap, &topic, args.partitions());
            fetch_sessions::run(&bootstrap, own.child.id(), &topic, args);
        }
        Mode::Footprint(args) => {
            let own = own.as_ref().expect("footprint measures the harness's own broker: drop --bootstrap");
            create_topic(&bootstrap, &topic, args.partitions);
            footprint(&bootstrap, &topic, args.partitions, own._dir.path());
        }
        Mode::Rebalance(args) => {
            create_topic(&bootstrap, &topic, args.partitions);
            let seconds = rebalance(&bootstrap, &topic, args);
            println!(
                "rebalance consumers={} partitions={} protocol={} strategy={} -> settled in {:.3} s",
                args.consumers, args.partitions, args.protocol, args.strategy, seconds
            );
        }
    }
}
