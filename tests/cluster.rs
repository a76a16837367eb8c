//! Several real `sluice` processes as one cluster: the metadata quorum forms over the
//! controller listeners (each behind the harness's fault proxy), every broker serves the
//! whole cluster's metadata, partitions are led by different brokers and librdkafka produces
//! to and consumes from each leader. A SIGKILLed broker is fenced and its partitions go
//! without a leader; the quorum goes on without it (a new controller if it was the one), and
//! when it comes back it leads them again with nothing acknowledged lost. A bad cluster
//! config stops a node with one sentence naming the key.
//!

#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::proxy::{Direction, FaultProxy};
use common::TestBroker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const NODES: i32 = 3;

/// Free ports, distinct: each is held until all are chosen (and the proxies have bound
/// theirs), so none is handed out twice.
fn free_ports(count: usize) -> (Vec<u16>, Vec<TcpListener>) {
    let held: Vec<TcpListener> = (0..count).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    (held.iter().map(|l| l.local_addr().unwrap().port()).collect(), held)
}

/// Three nodes. Clients reach each node's PLAINTEXT listener directly; everything between
/// nodes goes through fault proxies: each node's REPLICATION listener (its
/// `inter.broker.listener.name`: followers' fetches, transaction markers) is advertised as a
/// proxy in front of it, and each node's `controller.quorum.voters` names a proxy of its own
/// for every other voter (Raft and heartbeats), so one node's links can be cut both ways
/// while the other two keep theirs. A node's own fetches from other leaders share those
/// leaders' proxies and stay up when it is isolated; cut off from the quorum it is fenced,
/// and a fenced broker joins no ISR, so they cannot acknowledge anything.
struct Cluster {
    nodes: BTreeMap<i32, TestBroker>,
    links: Links,
}

/// The fault proxies between nodes.
struct Links {
    /// In front of each node's REPLICATION listener.
    replication: BTreeMap<i32, FaultProxy>,
    /// (from, to): what node `from` dials for voter `to`.
    controller: BTreeMap<(i32, i32), FaultProxy>,
}

impl Links {
    /// Every link into or out of `node`.
    fn of(&self, node: i32) -> impl Iterator<Item = &FaultProxy> {
        let controller = self.controller.iter().filter(move |((from, to), _)| *from == node || *to == node);
        controller.map(|(_, proxy)| proxy).chain(self.replication.get(&node))
    }

    /// Cuts `node` off from the other nodes, both ways (bytes wait, as on a partitioned link).
    fn isolate(&self, node: i32) {
        self.of(node).for_each(|proxy| proxy.cut(Direction::Both));
    }

    fn heal(&self, node: i32) {
        self.of(node).for_each(FaultProxy::heal);
    }
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// [`Cluster::start`] with extra broker configs for every node.
    fn start_with(extra: &[&str]) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (free, held) = free_ports(3 * NODES as usize);
        // Per node: its client, replication and controller ports.
        let ports: BTreeMap<i32, [u16; 3]> = (1..=NODES)
            .map(|id| {
                let at = 3 * (id - 1) as usize;
                (id, [free[at], free[at + 1], free[at + 2]])
            })
            .collect();
        let local = |port: u16| -> std::net::SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
        let replication: BTreeMap<i32, FaultProxy> =
            ports.iter().map(|(&id, p)| (id, FaultProxy::start(local(p[1])))).collect();
        let mut controller = BTreeMap::new();
        for from in 1..=NODES {
            for (&to, p) in ports.iter().filter(|(&to, _)| to != from) {
                controller.insert((from, to), FaultProxy::start(local(p[2])));
            }
        }
        drop(held);
        let starting: Vec<_> = ports
            .iter()
            .map(|(&id, &[client, replicated, control])| {
                let voters: Vec<String> = (1..=NODES)
                    .map(|to| match controller.get(&(id, to)) {
                        Some(proxy) => format!("{to}@{}", proxy.addr()),
                        None => format!("{to}@127.0.0.1:{control}"),
                    })
                    .collect();
                let advertised = format!("PLAINTEXT://127.0.0.1:{client},REPLICATION://{}", replication[&id].addr());
                let extra = extra.clone();
                std::thread::spawn(move || {
                    let listen = format!(
                        "PLAINTEXT://127.0.0.1:{client},REPLICATION://127.0.0.1:{replicated},CONTROLLER://127.0.0.1:{control}"
                    );
                    let settings = vec![
                        format!("node.id={id}"),
                        format!("controller.quorum.voters={}", voters.join(",")),
                        format!("advertised.listeners={advertised}"),
                        "inter.broker.listener.name=REPLICATION".to_string(),
                        "num.partitions=6".to_string(),
                        "group.initial.rebalance.delay.ms=0".to_string(),
                    ];
                    let settings: Vec<String> = settings.into_iter().chain(extra).collect();
                    (id, TestBroker::start_node(&listen, &settings))
                })
            })
            .collect();
        let nodes = starting.into_iter().map(|t| t.join().expect("a node started")).collect();
        let cluster = Cluster { nodes, links: Links { replication, controller } };
        cluster.wait_for_brokers(NODES as usize);
        cluster
    }

    fn bootstrap(&self) -> String {
        let running: Vec<String> = self.nodes.values().filter(|n| n.is_running()).map(|n| n.bootstrap()).collect();
        running.join(",")
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap()).set("topic.metadata.refresh.interval.ms", "500");
        config
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        self.client().create().expect("admin client")
    }

    /// Waits until Metadata (from any live broker) lists `count` brokers.
    fn wait_for_brokers(&self, count: usize) {
        let admin = self.admin();
        wait_for(&format!("{count} brokers in the metadata"), Duration::from_secs(60), || {
            let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(2)).ok()?;
            (metadata.brokers().len() == count).then_some(())
        });
    }

    /// Each partition's (leader, ISR), as Metadata says (leader -1: none).
    fn partitions(&self, topic: &str) -> Vec<(i32, Vec<i32>)> {
        let admin = self.admin();
        let Ok(metadata) = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(5)) else { return Vec::new() };
        let Some(topic) = metadata.topics().first() else { return Vec::new() };
        let mut partitions: Vec<_> =
            topic.partitions().iter().map(|p| (p.id(), p.leader(), p.isr().to_vec())).collect();
        partitions.sort();
        partitions.into_iter().map(|(_, leader, isr)| (leader, isr)).collect()
    }

    /// Each partition's replicas, as Metadata says.
    fn replicas(&self, topic: &str) -> Vec<Vec<i32>> {
        let admin = self.admin();
        let Ok(metadata) = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(5)) else { return Vec::new() };
        let Some(topic) = metadata.topics().first() else { return Vec::new() };
        let mut partitions: Vec<_> = topic.partitions().iter().map(|p| (p.id(), p.replicas().to_vec())).collect();
        partitions.sort();
        partitions.into_iter().map(|(_, replicas)| replicas).collect()
    }

    /// Each partition's leader, as Metadata says (-1: none).
    fn leaders(&self, topic: &str) -> Vec<i32> {
        let admin = self.admin();
        let metadata = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(5)).expect("metadata");
        let topic = &metadata.topics()[0];
        let mut leaders: Vec<(i32, i32)> = topic.partitions().iter().map(|p| (p.id(), p.leader())).collect();
        leaders.sort();
        leaders.into_iter().map(|(_, leader)| leader).collect()
    }
}

fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn create_topic(cluster: &Cluster, name: &str, partitions: i32) {
    create_replicated_topic(cluster, name, partitions, 1);
}

fn create_replicated_topic(cluster: &Cluster, name: &str, partitions: i32, replicas: i32) {
    let admin = cluster.admin();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replicas));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = common::clients::block_on(admin.create_topics([&topic], &options)).expect("create topics");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("creating {topic} failed: {code:?}"));
    }
}

/// Produces `count` records round robin over the partitions, acks=all, idempotent, and
/// returns (partition, offset) of each acknowledgement.
fn produce(cluster: &Cluster, topic: &str, partitions: i32, from: usize, count: usize) -> Vec<(i32, i64)> {
    let producer: FutureProducer = cluster
        .client()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    let sends: Vec<_> = (from..from + count)
        .map(|i| {
            let value = format!("record-{i}");
            let partition = (i % partitions as usize) as i32;
            let record = FutureRecord::to(topic).partition(partition).key("k").payload(&value);
            producer.send_result(record).expect("queue a record")
        })
        .collect();
    sends
        .into_iter()
        .map(|send| {
            let delivery =
                common::clients::block_on(send).expect("delivery").unwrap_or_else(|(err, _)| panic!("produce: {err}"));
            (delivery.partition, delivery.offset)
        })
        .collect()
}

/// Reads every partition of `topic` from the start up to its end, as values by partition.
fn consume_all(cluster: &Cluster, topic: &str, partitions: i32, expected: usize) -> BTreeMap<i32, Vec<String>> {
    let consumer: BaseConsumer = cluster.client().set("group.id", "checker").create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let mut seen: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.values().map(Vec::len).sum::<usize>() < expected {
        assert!(Instant::now() < deadline, "consumed {} of {expected}", seen.values().map(Vec::len).sum::<usize>());
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            seen.entry(message.partition()).or_default().push(value);
        }
    }
    seen
}

/// Sends Produce v10 for `partition` to `node`, which does not lead it; returns the leader the
/// NOT_LEADER_OR_FOLLOWER answer names and the endpoints it gives.
fn misdirected_produce(node: &TestBroker, topic: &str, partition: i32) -> (i32, Vec<(i32, String)>) {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData};
    use kafka_protocol::messages::produce_response::ProduceResponse;
    use kafka_protocol::messages::{ApiKey, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let mut builder = sluice_storage::RecordBatchBuilder::new(1_000);
    builder.push(1_000, None, Some(b"misdirected"), &[]);
    let records = bytes::Bytes::from(builder.build().unwrap());
    let data = PartitionProduceData::default().with_index(partition).with_records(Some(records));
    let topic = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partition_data(vec![data]);
    let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![topic]);
    let mut stream = std::net::TcpStream::connect(node.bootstrap()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let response: ProduceResponse = common::wire::call(&mut stream, ApiKey::Produce, 10, 1, &request);
    let answer = &response.responses[0].partition_responses[0];
    assert_eq!(answer.error_code, 6, "NOT_LEADER_OR_FOLLOWER");
    let endpoints = response.node_endpoints.iter().map(|e| (e.node_id.0, format!("{}:{}", e.host, e.port))).collect();
    (answer.current_leader.leader_id.0, endpoints)
}

/// Sends Fetch v12 for `partition` to `node`, which does not lead it; returns the leader the
/// NOT_LEADER_OR_FOLLOWER answer names.
fn misdirected_fetch(node: &TestBroker, topic: &str, partition: i32) -> i32 {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
    use kafka_protocol::messages::fetch_response::FetchResponse;
    use kafka_protocol::messages::{ApiKey, BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let wanted = FetchPartition::default()
        .with_partition(partition)
        .with_fetch_offset(0)
        .with_current_leader_epoch(-1)
        .with_partition_max_bytes(1 << 20);
    let topic = FetchTopic::default()
        .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partitions(vec![wanted]);
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![topic]);
    let mut stream = std::net::TcpStream::connect(node.bootstrap()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let response: FetchResponse = common::wire::call(&mut stream, ApiKey::Fetch, 12, 1, &request);
    let answer = &response.responses[0].partitions[0];
    assert_eq!(answer.error_code, 6, "NOT_LEADER_OR_FOLLOWER");
    answer.current_leader.leader_id.0
}

#[test]
fn three_nodes_form_a_cluster_whose_partitions_live_on_different_brokers() {
    let cluster = Cluster::start();
    create_topic(&cluster, "spread", 6);
    let leaders = cluster.leaders("spread");
    let distinct: std::collections::BTreeSet<i32> = leaders.iter().copied().collect();
    assert_eq!(distinct.len(), NODES as usize, "six partitions on three brokers, each leading some: {leaders:?}");

    // A produce to a broker that does not lead the partition names the leader (KIP-951).
    let elsewhere = cluster.nodes.keys().copied().find(|id| *id != leaders[0]).unwrap();
    let (leader_id, endpoints) = misdirected_produce(&cluster.nodes[&elsewhere], "spread", 0);
    assert_eq!(leader_id, leaders[0]);
    assert_eq!(endpoints, vec![(leaders[0], cluster.nodes[&leaders[0]].bootstrap())]);
    assert_eq!(misdirected_fetch(&cluster.nodes[&elsewhere], "spread", 0), leaders[0]);

    let acknowledged = produce(&cluster, "spread", 6, 0, 600);
    assert_eq!(acknowledged.len(), 600);
    let seen = consume_all(&cluster, "spread", 6, 600);
    for (partition, values) in &seen {
        assert_eq!(values.len(), 100, "partition {partition}");
        let expected: Vec<String> =
            (0..600).filter(|i| i % 6 == *partition as usize).map(|i| format!("record-{i}")).collect();
        assert_eq!(values, &expected, "partition {partition} in order, once each");
    }

    // A group works across the cluster: its coordinator is the leader of its offsets
    // partition, and it commits offsets of partitions other brokers lead.
    let consumer: BaseConsumer = cluster
        .client()
        .set("group.id", "readers")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["spread"]).unwrap();
    let mut values = std::collections::BTreeSet::new();
    wait_for("the group reads everything", Duration::from_secs(60), || {
        // Everything that is there now, before the next check's pause.
        while let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            values.insert(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
        }
        (values.len() == 600).then_some(())
    });
    consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync).expect("commit to the group's coordinator");
    let committed = consumer.committed(Duration::from_secs(10)).expect("committed offsets");
    for element in committed.elements() {
        assert_eq!(element.offset(), Offset::Offset(100), "partition {}", element.partition());
    }
}

#[test]
fn a_killed_broker_is_fenced_and_leads_its_partitions_again_when_back() {
    let mut cluster = Cluster::start();
    create_topic(&cluster, "fenced", 6);
    let acknowledged = produce(&cluster, "fenced", 6, 0, 300);
    assert_eq!(acknowledged.len(), 300);

    // Kill the broker leading partition 0, and with it, whatever it coordinated.
    let victim = cluster.leaders("fenced")[0];
    cluster.nodes.get_mut(&victim).unwrap().kill9();
    wait_for("the killed broker's partitions to lose their leader", Duration::from_secs(30), || {
        let leaders = cluster.leaders("fenced");
        (leaders[0] == -1 && !leaders.contains(&victim)).then_some(())
    });
    cluster.wait_for_brokers(NODES as usize - 1);
    let live = cluster.nodes.values().find(|n| n.is_running()).unwrap().bootstrap();
    let status = common::run_sluice(&["cluster", "status", "--bootstrap", &live], Duration::from_secs(30))
        .success("cluster status");
    assert!(status.stdout.contains("(controller)"), "{}", status.stdout);
    // DescribeQuorum: the two live voters are caught up, the dead one's log end is not.
    let voters: Vec<&str> = status.stdout.lines().filter(|l| l.trim_start().starts_with("voter ")).collect();
    assert!(status.stdout.contains("metadata quorum: leader"), "{}", status.stdout);
    assert_eq!(voters.len(), NODES as usize, "{}", status.stdout);
    assert!(voters.iter().filter(|l| l.ends_with("lag 0")).count() >= 2, "{}", status.stdout);
    assert!(
        status.stdout.contains("offline fenced-"),
        "the killed broker's partitions show offline: {}",
        status.stdout
    );

    // The two left are a majority: metadata still changes (a new controller if need be).
    create_topic(&cluster, "while-one-is-down", 2);
    assert!(cluster.leaders("while-one-is-down").iter().all(|l| *l != victim && *l != -1));

    cluster.nodes.get_mut(&victim).unwrap().start_again();
    cluster.wait_for_brokers(NODES as usize);
    wait_for("the returning broker to lead partition 0 again", Duration::from_secs(30), || {
        (cluster.leaders("fenced")[0] == victim).then_some(())
    });
    let more = produce(&cluster, "fenced", 6, 300, 300);
    assert_eq!(more.len(), 300);
    let seen = consume_all(&cluster, "fenced", 6, 600);
    for (partition, values) in &seen {
        let expected: Vec<String> =
            (0..600).filter(|i| i % 6 == *partition as usize).map(|i| format!("record-{i}")).collect();
        assert_eq!(values, &expected, "partition {partition}: every acknowledged record, once, in order");
    }
}

#[test]
fn a_bad_cluster_config_stops_the_node_with_a_sentence_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (
            &["--set", "node.id=4", "--set", "controller.quorum.voters=1@127.0.0.1:1,2@127.0.0.1:2"],
            "controller.quorum.voters",
        ),
        (&["--set", "controller.quorum.voters=0@127.0.0.1:1,0@127.0.0.1:2"], "controller.quorum.voters"),
        (&["--set", "controller.quorum.voters=0@127.0.0.1:1"], "controller listener"),
        (&["--set", "process.roles=controller"], "process.roles"),
        (&["--set", "inter.broker.listener.name=REPLICATION"], "inter.broker.listener.name"),
        (
            &[
                "--listen",
                "PLAINTEXT://127.0.0.1:0,CONTROLLER://127.0.0.1:1",
                "--set",
                "controller.quorum.voters=0@127.0.0.1:2",
            ],
            "controller.quorum.voters gives this node",
        ),
        (&["--set", "listener.security.protocol.map=PLAINTEXT:SSL"], "listener.security.protocol.map"),
    ];
    for (args, key) in cases {
        let listen = if args.contains(&"--listen") { vec![] } else { vec!["--listen", "127.0.0.1:0"] };
        let mut all = vec!["broker", "--admin-listen", "127.0.0.1:0", "--data-dir", data];
        all.extend(listen);
        all.extend_from_slice(args);
        let run = common::run_sluice(&all, Duration::from_secs(30));
        assert!(!run.status.success(), "{args:?} started");
        assert!(run.stderr.contains(key), "{args:?}: the message does not name {key}: {}", run.stderr);
    }
    // A directory that belongs to another node id.
    let ok = ["broker", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir", data];
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(ok)
        .args(["--set", "node.id=1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("meta.properties", Duration::from_secs(30), || {
        dir.path().join("data/meta.properties").exists().then_some(())
    });
    first.kill().ok();
    first.wait().ok();
    let mut other = ok.to_vec();
    other.extend_from_slice(&["--set", "node.id=2"]);
    let run = common::run_sluice(&other, Duration::from_secs(30));
    assert!(!run.status.success());
    assert!(run.stderr.contains("node.id") && run.stderr.contains("belongs to node 1"), "{}", run.stderr);
}

/// The bytes of every segment of a partition on one node, in offset order.
fn partition_bytes(node: &TestBroker, topic: &str, partition: i32) -> Vec<u8> {
    let dir = node.data_dir().join(format!("{topic}-{partition}"));
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    segments.iter().flat_map(|p| std::fs::read(p).unwrap()).collect()
}

/// An acknowledged record: (partition, offset, value, when).
type Ack = (i32, i64, String, Instant);

/// An idempotent acks=all producer sending to every partition of a topic in rounds until
/// stopped, recording each acknowledgement: (partition, offset, value, when).
struct AckedProducer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<Ack>>>,
    /// How many records have been handed to the client so far (record i is `v{i}`).
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl AckedProducer {
    fn start(cluster: &Cluster, topic: &str, partitions: i32) -> AckedProducer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let producer: FutureProducer = cluster
            .client()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "120000")
            // A request held by a leader that lost its followers (isolated) fails after this and
            // is retried on the new leader; 30 s by default.
            .set("request.timeout.ms", "5000")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let thread = {
            let (stop, acked, queued, topic) = (stop.clone(), acked.clone(), queued.clone(), topic.to_string());
            std::thread::spawn(move || {
                use futures::StreamExt;
                let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
                let mut next = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sends: futures::stream::FuturesUnordered<_> = (next..next + 50)
                        .map(|i| {
                            let value = format!("v{i}");
                            let partition = (i % partitions as usize) as i32;
                            let record = FutureRecord::to(&topic).partition(partition).key("k").payload(&value);
                            let send = producer.send_result(record).expect("queue");
                            // Past message.timeout.ms a record is not acknowledged, whatever happens.
                            async move { (value, tokio::time::timeout(Duration::from_secs(150), send).await) }
                        })
                        .collect();
                    next += 50;
                    queued.store(next, std::sync::atomic::Ordering::SeqCst);
                    // Each acknowledgement is timed as it comes, not in the order sent.
                    runtime.block_on(sends.for_each(|(value, delivery)| {
                        if let Ok(Ok(Ok(delivery))) = delivery {
                            acked.lock().unwrap().push((delivery.partition, delivery.offset, value, Instant::now()));
                        }
                        std::future::ready(())
                    }));
                }
            })
        };
        AckedProducer { stop, acked, queued, thread }
    }

    /// Records handed to the client so far: those after are sent later.
    fn queued(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits for the acknowledgement of a record to `partition` queued after the first
    /// `queued` records, and says when it came.
    fn next_ack(&self, queued: usize, partition: i32, limit: Duration) -> Instant {
        wait_for(&format!("an acknowledgement from partition {partition}"), limit, || {
            let acked = self.acked.lock().unwrap();
            let later = |value: &str| value[1..].parse::<usize>().is_ok_and(|i| i >= queued);
            acked.iter().rev().filter(|(p, _, value, _)| *p == partition && later(value)).map(|(.., at)| *at).min()
        })
    }

    fn finish(self) -> Vec<Ack> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the producer thread");
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// Every acknowledged record is there once, at the offset it was acknowledged at, and every
/// replica ends up holding the same batches (the segment files, not just the API).
fn check_acknowledged(cluster: &Cluster, topic: &str, partitions: i32, acked: &[Ack]) {
    let seen = consume_all(cluster, topic, partitions, acked.len());
    for (partition, values) in &seen {
        let mut unique = std::collections::BTreeSet::new();
        for value in values {
            assert!(unique.insert(value.clone()), "{value} was read twice from partition {partition}");
        }
    }
    let consumer: BaseConsumer = cluster.client().set("group.id", "offsets").create().unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let total: usize = seen.values().map(Vec::len).sum();
    let mut by_offset: BTreeMap<(i32, i64), String> = BTreeMap::new();
    wait_for("every record with its offset", Duration::from_secs(60), || {
        while let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            by_offset.insert((message.partition(), message.offset()), value);
        }
        (by_offset.len() >= total).then_some(())
    });
    for (partition, offset, value, _) in acked {
        assert_eq!(by_offset.get(&(*partition, *offset)), Some(value), "acknowledged {value} at {partition}/{offset}");
    }
    wait_for("every replica back in sync", Duration::from_secs(60), || {
        let (state, replicas) = (cluster.partitions(topic), cluster.replicas(topic));
        let in_sync = state.len() == partitions as usize
            && state.iter().zip(&replicas).all(|((_, isr), replicas)| isr.len() == replicas.len());
        let same = replicas.iter().enumerate().all(|(p, replicas)| {
            let copies: Vec<Vec<u8>> =
                replicas.iter().map(|r| partition_bytes(&cluster.nodes[r], topic, p as i32)).collect();
            copies.windows(2).all(|w| w[0] == w[1])
        });
        (in_sync && same).then_some(())
    });
}

/// Waits until every partition of `topic` has a leader and all three replicas in sync, and
/// returns the leader of `partition`.
fn leader_with_full_isr(cluster: &Cluster, topic: &str, partition: usize) -> i32 {
    wait_for("a leader with every replica in sync", Duration::from_secs(60), || {
        let partitions = cluster.partitions(topic);
        let (leader, _) = partitions.get(partition)?.clone();
        (leader >= 0 && partitions.iter().all(|(leader, isr)| *leader >= 0 && isr.len() == 3)).then_some(leader)
    })
}

fn long_tests() -> bool {
    std::env::var("SLUICE_LONG_TESTS").is_ok_and(|v| v == "1")
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    eprintln!("{what} over {} runs: p50 {:?}, max {:?}", times.len(), times[times.len() / 2], times.last().unwrap());
}

#[test]
fn replicated_partitions_lose_nothing_acknowledged_when_leaders_are_killed() {
    let kills = if long_tests() { 20 } else { 3 };
    let mut cluster = Cluster::start_with(&["default.replication.factor=3", "min.insync.replicas=2"]);
    const PARTITIONS: i32 = 3;
    create_replicated_topic(&cluster, "replicated", PARTITIONS, 3);
    let producer = AckedProducer::start(&cluster, "replicated", PARTITIONS);
    let mut failovers = Vec::new();
    for kill in 0..kills {
        let partition = kill % PARTITIONS as usize;
        let victim = leader_with_full_isr(&cluster, "replicated", partition);
        let queued = producer.queued();
        let killed_at = Instant::now();
        cluster.nodes.get_mut(&victim).unwrap().kill9();
        let recovered = producer.next_ack(queued, partition as i32, Duration::from_secs(60));
        failovers.push(recovered.saturating_duration_since(killed_at));
        cluster.nodes.get_mut(&victim).unwrap().start_again();
        cluster.wait_for_brokers(NODES as usize);
    }
    let acked = producer.finish();
    report("failover (SIGKILL of a leader to its successor's first acks=all acknowledgement)", failovers);
    check_acknowledged(&cluster, "replicated", PARTITIONS, &acked);
}

#[test]
fn an_isolated_leader_acknowledges_nothing_it_loses_and_rejoins_when_healed() {
    let isolations = if long_tests() { 10 } else { 2 };
    let cluster = Cluster::start_with(&["default.replication.factor=3", "min.insync.replicas=2"]);
    const PARTITIONS: i32 = 3;
    create_replicated_topic(&cluster, "isolated", PARTITIONS, 3);
    let producer = AckedProducer::start(&cluster, "isolated", PARTITIONS);
    // Its producer id first: a broker cut off from the quorum cannot hand out new ones.
    for partition in 0..PARTITIONS {
        producer.next_ack(0, partition, Duration::from_secs(60));
    }
    let mut failovers = Vec::new();
    for round in 0..isolations {
        let partition = round % PARTITIONS as usize;
        let victim = leader_with_full_isr(&cluster, "isolated", partition);
        let queued = producer.queued();
        let cut_at = Instant::now();
        cluster.links.isolate(victim);
        // The other two fence it and one of them leads: acks=all goes on without it (the
        // producer finds the new leader through the brokers it can still ask).
        let recovered = producer.next_ack(queued, partition as i32, Duration::from_secs(60));
        failovers.push(recovered.saturating_duration_since(cut_at));
        eprintln!("isolation {round} of broker {victim}: acks=all again after {:?}", recovered - cut_at);
        wait_for("another leader", Duration::from_secs(30), || {
            let leader = cluster.partitions("isolated").get(partition)?.0;
            (leader >= 0 && leader != victim).then_some(())
        });
        cluster.links.heal(victim);
    }
    let acked = producer.finish();
    report("failover (isolation of a leader to its successor's first acks=all acknowledgement)", failovers);
    check_acknowledged(&cluster, "isolated", PARTITIONS, &acked);
}

/// Kafka's partition of a coordinator key: `abs(hashCode) % partitions`, Java's String hash.
fn coordinator_partition(key: &str, partitions: i32) -> i32 {
    let hash = key.encode_utf16().fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(i32::from(unit)));
    (hash & 0x7fff_ffff) % partitions
}

#[test]
fn a_group_keeps_its_committed_offsets_when_its_coordinator_is_killed() {
    let mut cluster = Cluster::start_with(&["default.replication.factor=3", "min.insync.replicas=2"]);
    create_replicated_topic(&cluster, "watched", 3, 3);
    produce(&cluster, "watched", 3, 0, 300);
    let commit = |cluster: &Cluster, offset: i64| {
        let consumer: BaseConsumer = cluster.client().set("group.id", "survivor").create().unwrap();
        let mut offsets = TopicPartitionList::new();
        for partition in 0..3 {
            offsets.add_partition_offset("watched", partition, Offset::Offset(offset)).unwrap();
        }
        wait_for("a commit the coordinator takes", Duration::from_secs(60), || {
            consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync).ok()
        });
    };
    commit(&cluster, 42);

    // The coordinator is the leader of the group's partition of __consumer_offsets.
    let offsets_partition = coordinator_partition("survivor", 50) as usize;
    let coordinator = wait_for("the offsets partition's leader", Duration::from_secs(30), || {
        let partitions = cluster.partitions("__consumer_offsets");
        let (leader, isr) = partitions.get(offsets_partition)?.clone();
        (leader >= 0 && isr.len() == 3).then_some(leader)
    });
    cluster.nodes.get_mut(&coordinator).unwrap().kill9();

    let consumer: BaseConsumer = cluster.client().set("group.id", "survivor").create().unwrap();
    let mut wanted = TopicPartitionList::new();
    for partition in 0..3 {
        wanted.add_partition("watched", partition);
    }
    let committed = wait_for("the committed offsets from the new coordinator", Duration::from_secs(60), || {
        let committed = consumer.committed_offsets(wanted.clone(), Duration::from_secs(5)).ok()?;
        committed.elements().iter().all(|e| e.offset() == Offset::Offset(42)).then_some(committed)
    });
    assert_eq!(committed.count(), 3);
    // And it takes new commits.
    commit(&cluster, 43);
    cluster.nodes.get_mut(&coordinator).unwrap().start_again();
}

type Transactional = rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>;

fn transactional(cluster: &Cluster, id: &str) -> Transactional {
    use rdkafka::producer::Producer;
    let producer: Transactional = cluster
        .client()
        .set("transactional.id", id)
        .set("linger.ms", "1")
        .set("reconnect.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "200")
        .create()
        .expect("transactional producer");
    producer.init_transactions(Duration::from_secs(60)).expect("InitProducerId");
    producer
}

/// One transaction of `count` records, `prefix-N`, spread round robin over the partitions.
fn transaction(producer: &Transactional, prefix: &str, count: usize, commit: bool) {
    use rdkafka::producer::{BaseRecord, Producer};
    producer.begin_transaction().expect("begin");
    for i in 0..count {
        let value = format!("{prefix}-{i}");
        let record = BaseRecord::<str, str>::to("spanning").partition((i % 3) as i32).key("k").payload(&value);
        producer.send(record).expect("queue");
    }
    if commit {
        producer.commit_transaction(Duration::from_secs(60)).expect("commit");
    } else {
        producer.abort_transaction(Duration::from_secs(60)).expect("abort");
    }
}

/// What a read_committed consumer reads of the whole topic, once it has `expected` records.
fn read_committed(cluster: &Cluster, expected: usize) -> Vec<String> {
    let consumer: BaseConsumer =
        cluster.client().set("group.id", "rc").set("isolation.level", "read_committed").create().unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..3 {
        assignment.add_partition_offset("spanning", partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut values = Vec::new();
    wait_for("the committed records", Duration::from_secs(60), || {
        while let Some(Ok(message)) = consumer.poll(Duration::from_millis(300)) {
            values.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
        }
        (values.len() >= expected).then_some(())
    });
    // Nothing more arrives (an aborted record would).
    while let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
        values.push(String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned());
    }
    values.sort();
    values
}

#[test]
fn transactions_span_brokers_and_survive_their_coordinators_death() {
    let mut cluster = Cluster::start_with(&["default.replication.factor=3", "min.insync.replicas=2"]);
    create_replicated_topic(&cluster, "spanning", 3, 3);
    let leaders: std::collections::BTreeSet<i32> = cluster.leaders("spanning").into_iter().collect();
    assert_eq!(leaders.len(), 3, "the transaction's partitions are led by three brokers");

    let producer = transactional(&cluster, "spanning-writer");
    transaction(&producer, "first", 30, true);
    transaction(&producer, "aborted", 30, false);
    transaction(&producer, "second", 30, true);
    let mut expected: Vec<String> =
        (0..30).map(|i| format!("first-{i}")).chain((0..30).map(|i| format!("second-{i}"))).collect();
    expected.sort();
    assert_eq!(read_committed(&cluster, 60), expected);
    drop(producer);

    // Kill the coordinator: the leader of the id's partition of __transaction_state.
    let state_partition = coordinator_partition("spanning-writer", 50) as usize;
    let coordinator = wait_for("the state partition's leader", Duration::from_secs(30), || {
        let partitions = cluster.partitions("__transaction_state");
        let (leader, isr) = partitions.get(state_partition)?.clone();
        (leader >= 0 && isr.len() == 3).then_some(leader)
    });
    cluster.nodes.get_mut(&coordinator).unwrap().kill9();
    cluster.wait_for_brokers(NODES as usize - 1);
    let producer = transactional(&cluster, "spanning-writer");
    transaction(&producer, "third", 30, true);
    expected.extend((0..30).map(|i| format!("third-{i}")));
    expected.sort();
    assert_eq!(read_committed(&cluster, 90), expected);
    cluster.nodes.get_mut(&coordinator).unwrap().start_again();
}

fn sluice(args: &[&str]) -> String {
    common::run_sluice(args, Duration::from_secs(120)).success(&args.join(" ")).stdout
}

/// `sluice cluster reassign` of one partition to `replicas`, waiting for the move.
fn reassign(bootstrap: &str, topic: &str, partition: i32, replicas: &[i32]) -> String {
    let list = replicas.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    let partition = partition.to_string();
    let args = ["cluster", "reassign", "--bootstrap", bootstrap, "--topic", topic, "--partition", &partition];
    sluice(&[&args[..], &["--replicas", &list, "--wait", "60"]].concat())
}

#[test]
fn partitions_move_between_brokers_while_a_producer_keeps_going_and_a_broker_is_decommissioned() {
    let mut cluster = Cluster::start();
    const PARTITIONS: i32 = 3;
    create_replicated_topic(&cluster, "moving", PARTITIONS, 2);
    let producer = AckedProducer::start(&cluster, "moving", PARTITIONS);
    for partition in 0..PARTITIONS {
        producer.next_ack(0, partition, Duration::from_secs(60));
    }
    let bootstrap = cluster.bootstrap();
    let bootstrap = bootstrap.split(',').next().unwrap().to_string();

    // Partition 0 moves to the broker that does not have it, in place of its leader.
    let before = cluster.replicas("moving")[0].clone();
    let newcomer = (1..=NODES).find(|id| !before.contains(id)).unwrap();
    let leaving = cluster.leaders("moving")[0];
    let target: Vec<i32> = before.iter().map(|r| if *r == leaving { newcomer } else { *r }).collect();
    let out = reassign(&bootstrap, "moving", 0, &target);
    assert!(out.contains("is on"), "{out}");
    assert_eq!(cluster.replicas("moving")[0], target);
    wait_for("the old copy deleted", Duration::from_secs(30), || {
        (!cluster.nodes[&leaving].data_dir().join("moving-0").exists()).then_some(())
    });
    let queued = producer.queued();
    producer.next_ack(queued, 0, Duration::from_secs(60));
    let out = sluice(&["cluster", "reassignments", "--bootstrap", &bootstrap]);
    assert!(out.contains("0 reassignment(s) in progress"), "{out}");
    let out = sluice(&["cluster", "log-dirs", "--bootstrap", &bootstrap]);
    assert!(out.lines().any(|l| l.starts_with(&newcomer.to_string()) && l.contains("moving-0")), "{out}");

    // Reordering the replicas moves no data; an election then gives the preferred one the lead.
    let reordered: Vec<i32> = target.iter().rev().copied().collect();
    reassign(&bootstrap, "moving", 0, &reordered);
    if cluster.leaders("moving")[0] != reordered[0] {
        let out = sluice(&["cluster", "elect-leaders", "--bootstrap", &bootstrap, "--topic", "moving"]);
        assert!(out.contains("moving-0: elected"), "{out}");
    }
    wait_for("the preferred leader", Duration::from_secs(30), || {
        (cluster.leaders("moving")[0] == reordered[0]).then_some(())
    });

    // A bad move is refused with the protocol's error, naming the partition.
    let run = common::run_sluice(
        &[
            "cluster",
            "reassign",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "moving",
            "--partition",
            "0",
            "--replicas",
            "1,1",
        ],
        Duration::from_secs(60),
    );
    assert!(!run.status.success() && run.stderr.contains("INVALID_REPLICA_ASSIGNMENT"), "{}", run.stderr);

    // Decommissioning a broker moves everything off it; it can then go.
    let victim = cluster.leaders("moving")[1];
    let out = sluice(&[
        "cluster",
        "decommission",
        "--bootstrap",
        &bootstrap,
        "--broker",
        &victim.to_string(),
        "--wait",
        "60",
    ]);
    assert!(out.contains("holds no replicas"), "{out}");
    assert!(cluster.replicas("moving").iter().all(|r| !r.contains(&victim)));
    wait_for("its copies deleted", Duration::from_secs(30), || {
        (0..PARTITIONS).all(|p| !cluster.nodes[&victim].data_dir().join(format!("moving-{p}")).exists()).then_some(())
    });
    cluster.nodes.get_mut(&victim).unwrap().kill9();
    let queued = producer.queued();
    for partition in 0..PARTITIONS {
        producer.next_ack(queued, partition, Duration::from_secs(60));
    }
    let acked = producer.finish();
    cluster.nodes.remove(&victim);
    check_acknowledged(&cluster, "moving", PARTITIONS, &acked);
}

#[test]
fn a_rolling_restart_under_load_keeps_every_partition_led_and_loses_nothing() {
    let mut cluster = Cluster::start_with(&["default.replication.factor=3", "min.insync.replicas=2"]);
    const PARTITIONS: i32 = 3;
    create_replicated_topic(&cluster, "rolling", PARTITIONS, 3);
    let producer = AckedProducer::start(&cluster, "rolling", PARTITIONS);
    for partition in 0..PARTITIONS {
        producer.next_ack(0, partition, Duration::from_secs(60));
    }
    // Watches Metadata throughout: a partition without a leader is what a client would see
    // as unavailable.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let offline = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (stop, offline) = (stop.clone(), offline.clone());
        let admin: AdminClient<DefaultClientContext> = cluster.client().create().expect("admin client");
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(metadata) = admin.inner().fetch_metadata(Some("rolling"), Duration::from_secs(2)) {
                    for topic in metadata.topics() {
                        for p in topic.partitions().iter().filter(|p| p.leader() < 0) {
                            offline.lock().unwrap().push(format!("rolling-{} at {:?}", p.id(), Instant::now()));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    for id in 1..=NODES {
        leader_with_full_isr(&cluster, "rolling", 0);
        // SIGTERM: the node first asks the controller to move its leaderships away.
        cluster.nodes.get_mut(&id).unwrap().restart();
        cluster.wait_for_brokers(NODES as usize);
    }
    leader_with_full_isr(&cluster, "rolling", 0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().expect("the watcher");
    let acked = producer.finish();
    let mut gaps: Vec<Duration> = acked.windows(2).map(|w| w[1].3.saturating_duration_since(w[0].3)).collect();
    gaps.sort();
    eprintln!(
        "rolling restart of {NODES} nodes: {} acknowledged, longest gap between acknowledgements {:?}",
        acked.len(),
        gaps.last()
    );
    let offline = offline.lock().unwrap().clone();
    assert!(offline.is_empty(), "partitions without a leader during the rolling restart: {offline:?}");
    check_acknowledged(&cluster, "rolling", PARTITIONS, &acked);
}

#[test]
fn leaders_go_back_to_preferred_replicas_and_an_unclean_election_happens_only_where_allowed() {
    let mut cluster = Cluster::start_with(&["leader.imbalance.check.interval.seconds=1"]);
    create_replicated_topic(&cluster, "balanced", 3, 3);
    leader_with_full_isr(&cluster, "balanced", 0);
    let preferred = cluster.replicas("balanced")[0][0];
    cluster.nodes.get_mut(&preferred).unwrap().kill9();
    wait_for("another leader", Duration::from_secs(30), || {
        let leader = cluster.leaders("balanced")[0];
        (leader >= 0 && leader != preferred).then_some(())
    });
    cluster.nodes.get_mut(&preferred).unwrap().start_again();
    // Back in the ISR, the preferred replica leads again within a check or two.
    wait_for("the preferred leader back", Duration::from_secs(60), || {
        (cluster.leaders("balanced")[0] == preferred).then_some(())
    });

    // Two replicas; the ISR shrinks to one, which then dies: the other may lead only if the
    // topic allows an unclean election.
    for (topic, unclean) in [("strict", "false"), ("loose", "true")] {
        let admin = cluster.admin();
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(2)).set("unclean.leader.election.enable", unclean);
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
        for result in common::clients::block_on(admin.create_topics([&new], &options)).expect("create topics") {
            result.expect("the topic is created");
        }
        let replicas = wait_for("both replicas in sync", Duration::from_secs(30), || {
            let (leader, isr) = cluster.partitions(topic).first()?.clone();
            (leader >= 0 && isr.len() == 2).then(|| cluster.replicas(topic)[0].clone())
        });
        let (first, second) = (replicas[0], replicas[1]);
        cluster.nodes.get_mut(&second).unwrap().kill9();
        wait_for("an ISR of one", Duration::from_secs(30), || {
            (cluster.partitions(topic)[0].1 == [first]).then_some(())
        });
        cluster.nodes.get_mut(&first).unwrap().kill9();
        cluster.nodes.get_mut(&second).unwrap().start_again();
        // The dead one fenced (it may have been the controller: an election first).
        cluster.wait_for_brokers(NODES as usize - 1);
        if unclean == "true" {
            wait_for("an unclean leader", Duration::from_secs(30), || {
                (cluster.partitions(topic).first()?.0 == second).then_some(())
            });
        } else {
            // Over a few rounds of the controller's checks (one a second) it stays without one.
            for _ in 0..6 {
                std::thread::sleep(Duration::from_millis(500));
                assert_eq!(cluster.partitions(topic)[0].0, -1, "{topic} got a leader outside its ISR");
            }
        }
        cluster.nodes.get_mut(&first).unwrap().start_again();
        cluster.wait_for_brokers(NODES as usize);
    }
}
