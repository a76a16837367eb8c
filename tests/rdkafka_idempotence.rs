//! Idempotent producers end to end. librdkafka writes through a proxy that cuts connections at
//! random moments (also after the broker has appended a batch but before its response reaches
//! the client, so the client retries what is already in the log), and across SIGKILLs of a
//! broker that fsyncs before every acknowledgement. Either way each acknowledged record must be
//! in its partition exactly once, in send order, at the offset its delivery report gave. Raw
//! Produce requests then show the broker still recognises retries after a clean restart and
//! after a SIGKILL, and refuses sequence gaps and old epochs.

#[allow(dead_code)]
mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use common::clients::{admin, create_topic, now_ms, REQUEST_DEADLINE};
use common::records::{consume_to_end, send, test_record, verify_all, DeliveryLog};
use common::TestBroker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic};
use kafka_protocol::messages::list_offsets_response::ListOffsetsResponse;
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, ProduceResponse};
use kafka_protocol::messages::{ApiKey, BrokerId, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{Producer, ThreadedProducer};
use sluice_storage::RecordBatchBuilder;

/// Bound on producing a whole data set and on waiting for a broker to come back: well under
/// the minute a test file may take, and longer than librdkafka's own `message.timeout.ms`, so
/// a record that cannot be delivered fails with librdkafka's reason first.
const RUN_DEADLINE: Duration = Duration::from_secs(50);
const MESSAGE_TIMEOUT_MS: &str = "45000";

/// An idempotent librdkafka producer that retries quickly: small batches so that a run has
/// hundreds of Produce requests to lose, and short back-offs so reconnecting after each cut or
/// restart takes milliseconds, not librdkafka's default of up to ten seconds.
fn idempotent_producer(bootstrap: &str) -> ThreadedProducer<DeliveryLog> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "5")
        .set("batch.num.messages", "50")
        .set("retries", "2147483647")
        .set("retry.backoff.ms", "10")
        .set("retry.backoff.max.ms", "100")
        .set("reconnect.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "100")
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS);
    config.create_with_context(DeliveryLog::default()).expect("create an idempotent producer")
}

/// Waits for every delivery report and returns where each record `0..count` was acknowledged.
/// A failed delivery or a fatal idempotence error fails the test, naming it.
fn wait_for_deliveries(producer: &ThreadedProducer<DeliveryLog>, count: u64) -> Vec<(i32, i64)> {
    let flushed = producer.flush(RUN_DEADLINE);
    if let Some((code, reason)) = producer.client().fatal_error() {
        panic!("librdkafka raised a fatal error: {code:?}: {reason}");
    }
    flushed.unwrap_or_else(|err| panic!("not every record was delivered within {RUN_DEADLINE:?}: {err}"));
    let reports = std::mem::take(&mut *producer.context().reports.lock().unwrap());
    assert_eq!(reports.len() as u64, count, "a delivery report for every record");
    reports
        .into_iter()
        .map(|(seq, report)| report.unwrap_or_else(|err| panic!("record {seq} was not acknowledged: {err}")))
        .collect()
}

// ---------------------------------------------------------------------------------------
// A proxy that cuts connections

/// xorshift64: cheap randomness for the proxy's choices (the seed is printed with each run).
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// One Produce response in every 2 to 12 (drawn anew each time) is withheld and its connection
/// cut: the case idempotence exists for. The broker has appended the batches, the client never
/// hears so, and sends them again on a new connection.
const WITHHOLD_EVERY_PRODUCE_RESPONSES: (u64, u64) = (2, 12);
/// One frame in this many (each direction) is forwarded only in part before the cut.
const TEAR_ONE_FRAME_IN: u64 = 150;
/// Besides, some connection is cut wherever its bytes are, at random intervals in this range.
const TIMED_CUT_INTERVAL_MS: (u64, u64) = (30, 300);
/// Far above any frame these tests send; bounds what the proxy buffers.
const MAX_FRAME_BYTES: usize = 64 << 20;

#[derive(Default)]
struct CutCounts {
    produce_responses_withheld: AtomicU64,
    requests_torn: AtomicU64,
    responses_torn: AtomicU64,
    timed: AtomicU64,
}

impl CutCounts {
    fn total(&self) -> u64 {
        [&self.produce_responses_withheld, &self.requests_torn, &self.responses_torn, &self.timed]
            .iter()
            .map(|count| count.load(Ordering::SeqCst))
            .sum()
    }
}

impl std::fmt::Display for CutCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} Produce responses withheld, {} requests torn, {} responses torn, {} cut at random times",
            self.produce_responses_withheld.load(Ordering::SeqCst),
            self.requests_torn.load(Ordering::SeqCst),
            self.responses_torn.load(Ordering::SeqCst),
            self.timed.load(Ordering::SeqCst)
        )
    }
}

struct ProxiedConnection {
    client: TcpStream,
    upstream: TcpStream,
    /// API key of each forwarded request not yet answered, by correlation id.
    in_flight: Mutex<HashMap<i32, i16>>,
}

struct Chaos {
    random: Random,
    produce_responses_until_withhold: u64,
}

impl Chaos {
    fn between(&mut self, (low, high): (u64, u64)) -> u64 {
        low + self.random.below(high - low + 1)
    }
}

enum ResponseFate {
    Forward,
    Withhold,
    Tear(usize),
}

struct ProxyShared {
    upstream: String,
    cutting: AtomicBool,
    stopping: AtomicBool,
    connections: Mutex<HashMap<u64, Arc<ProxiedConnection>>>,
    chaos: Mutex<Chaos>,
    counts: CutCounts,
}

impl ProxyShared {
    /// Shuts both sides of a connection down; true if this call did it (it was still open).
    fn cut(&self, id: u64) -> bool {
        let Some(connection) = self.connections.lock().unwrap().remove(&id) else { return false };
        connection.client.shutdown(Shutdown::Both).ok();
        connection.upstream.shutdown(Shutdown::Both).ok();
        true
    }

    /// How much of a request frame to forward before cutting, if this one is to be torn.
    fn tear_request(&self, frame_len: usize) -> Option<usize> {
        if !self.cutting.load(Ordering::SeqCst) {
            return None;
        }
        let mut chaos = self.chaos.lock().unwrap();
        (chaos.random.below(TEAR_ONE_FRAME_IN) == 0).then(|| 1 + chaos.random.below(frame_len as u64 - 1) as usize)
    }

    fn response_fate(&self, api_key: Option<i16>, frame_len: usize) -> ResponseFate {
        if !self.cutting.load(Ordering::SeqCst) {
            return ResponseFate::Forward;
        }
        let mut chaos = self.chaos.lock().unwrap();
        if api_key == Some(ApiKey::Produce as i16) {
            chaos.produce_responses_until_withhold -= 1;
            if chaos.produce_responses_until_withhold == 0 {
                chaos.produce_responses_until_withhold = chaos.between(WITHHOLD_EVERY_PRODUCE_RESPONSES);
                return ResponseFate::Withhold;
            }
        }
        if chaos.random.below(TEAR_ONE_FRAME_IN) == 0 {
            return ResponseFate::Tear(1 + chaos.random.below(frame_len as u64 - 1) as usize);
        }
        ResponseFate::Forward
    }
}

/// A Kafka frame: its 4-byte size and the body, as one buffer. `None` once the stream ends, or
/// if the body is shorter than the header the caller reads from it.
fn read_frame(stream: &mut TcpStream, header_len: usize) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let body_len =
        usize::try_from(i32::from_be_bytes(size)).ok().filter(|&n| n >= header_len && n <= MAX_FRAME_BYTES)?;
    let mut frame = vec![0u8; 4 + body_len];
    frame[..4].copy_from_slice(&size);
    stream.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

/// Client to broker, frame by frame, noting each request's API key by correlation id.
fn forward_requests(shared: &ProxyShared, id: u64, connection: &ProxiedConnection) {
    let (Ok(mut from), Ok(mut to)) = (connection.client.try_clone(), connection.upstream.try_clone()) else { return };
    while let Some(frame) = read_frame(&mut from, 8) {
        // Request header: api key (2), api version (2), correlation id (4).
        let api_key = i16::from_be_bytes([frame[4], frame[5]]);
        let correlation_id = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
        connection.in_flight.lock().unwrap().insert(correlation_id, api_key);
        if let Some(prefix) = shared.tear_request(frame.len()) {
            to.write_all(&frame[..prefix]).ok();
            if shared.cut(id) {
                shared.counts.requests_torn.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
        if to.write_all(&frame).is_err() {
            break;
        }
    }
    shared.cut(id);
}

/// Broker to client, frame by frame: withholds some Produce responses, tears some others.
fn forward_responses(shared: &ProxyShared, id: u64, connection: &ProxiedConnection) {
    let (Ok(mut from), Ok(mut to)) = (connection.upstream.try_clone(), connection.client.try_clone()) else { return };
    while let Some(frame) = read_frame(&mut from, 4) {
        let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let api_key = connection.in_flight.lock().unwrap().remove(&correlation_id);
        match shared.response_fate(api_key, frame.len()) {
            ResponseFate::Forward => {
                if to.write_all(&frame).is_err() {
                    break;
                }
            }
            ResponseFate::Withhold => {
                if shared.cut(id) {
                    shared.counts.produce_responses_withheld.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
            ResponseFate::Tear(prefix) => {
                to.write_all(&frame[..prefix]).ok();
                if shared.cut(id) {
                    shared.counts.responses_torn.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
        }
    }
    shared.cut(id);
}

fn accept_connections(shared: Arc<ProxyShared>, listener: TcpListener) {
    for (id, incoming) in (0u64..).zip(listener.incoming()) {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = incoming else { continue };
        // Refused (the broker is down): dropping the client's socket tells it so.
        let Ok(upstream) = TcpStream::connect(&shared.upstream) else { continue };
        client.set_nodelay(true).ok();
        upstream.set_nodelay(true).ok();
        let connection = Arc::new(ProxiedConnection { client, upstream, in_flight: Mutex::new(HashMap::new()) });
        shared.connections.lock().unwrap().insert(id, connection.clone());
        let (requests_shared, requests_connection) = (shared.clone(), connection.clone());
        std::thread::spawn(move || forward_requests(&requests_shared, id, &requests_connection));
        let responses_shared = shared.clone();
        std::thread::spawn(move || forward_responses(&responses_shared, id, &connection));
    }
}

fn cut_at_random_times(shared: Arc<ProxyShared>, stop: mpsc::Receiver<()>) {
    loop {
        let pause = shared.chaos.lock().unwrap().between(TIMED_CUT_INTERVAL_MS);
        if stop.recv_timeout(Duration::from_millis(pause)) != Err(mpsc::RecvTimeoutError::Timeout) {
            return;
        }
        if !shared.cutting.load(Ordering::SeqCst) {
            continue;
        }
        let victim = {
            let connections = shared.connections.lock().unwrap();
            let ids: Vec<u64> = connections.keys().copied().collect();
            let pick = shared.chaos.lock().unwrap().random.below(ids.len().max(1) as u64) as usize;
            ids.get(pick).copied()
        };
        if victim.is_some_and(|id| shared.cut(id)) {
            shared.counts.timed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Forwards Kafka frames between clients and the broker and, while cutting is on, shuts down
/// both sides of connections at random moments. Frame-aware only to choose its moments.
struct CuttingProxy {
    port: u16,
    shared: Arc<ProxyShared>,
    stop_timer: Option<mpsc::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl CuttingProxy {
    fn start(listener: TcpListener, upstream: String, seed: u64) -> CuttingProxy {
        let port = listener.local_addr().expect("proxy address").port();
        let mut chaos = Chaos { random: Random(seed | 1), produce_responses_until_withhold: 0 };
        chaos.produce_responses_until_withhold = chaos.between(WITHHOLD_EVERY_PRODUCE_RESPONSES);
        let shared = Arc::new(ProxyShared {
            upstream,
            cutting: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            chaos: Mutex::new(chaos),
            counts: CutCounts::default(),
        });
        let (stop_timer, stop) = mpsc::channel();
        let accept_shared = shared.clone();
        let timer_shared = shared.clone();
        let threads = vec![
            std::thread::spawn(move || accept_connections(accept_shared, listener)),
            std::thread::spawn(move || cut_at_random_times(timer_shared, stop)),
        ];
        CuttingProxy { port, shared, stop_timer: Some(stop_timer), threads }
    }

    fn set_cutting(&self, on: bool) {
        self.shared.cutting.store(on, Ordering::SeqCst);
    }

    fn counts(&self) -> &CutCounts {
        &self.shared.counts
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.stop_timer.take();
        // Wakes the accept loop, which then sees `stopping`.
        TcpStream::connect(("127.0.0.1", self.port)).ok();
        for thread in self.threads.drain(..) {
            thread.join().ok();
        }
        let ids: Vec<u64> = self.shared.connections.lock().unwrap().keys().copied().collect();
        for id in ids {
            self.shared.cut(id);
        }
    }
}

fn seed() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as u64
}

#[test]
fn idempotent_producer_through_a_cutting_proxy_writes_each_record_once() {
    const TOPIC: &str = "cut-connections";
    const PARTITIONS: i32 = 4;
    const RECORDS: u64 = 30_000;
    const TAG: &str = "cut";
    // Clients connect where Metadata points them: the broker advertises the proxy.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let proxy_port = listener.local_addr().expect("proxy address").port();
    let broker = TestBroker::start(&[&format!("advertised.listeners=127.0.0.1:{proxy_port}")]);
    let seed = seed();
    eprintln!("proxy seed {seed}");
    let proxy = CuttingProxy::start(listener, broker.bootstrap(), seed);
    create_topic(&admin(&broker), TOPIC, PARTITIONS, &[]);

    proxy.set_cutting(true);
    let started = Instant::now();
    let base_timestamp_ms = now_ms();
    let producer = idempotent_producer(&format!("127.0.0.1:{proxy_port}"));
    for seq in 0..RECORDS {
        send(&producer, TOPIC, seq, &test_record(seq, TAG, base_timestamp_ms));
    }
    let deliveries = wait_for_deliveries(&producer, RECORDS);
    proxy.set_cutting(false);
    eprintln!("{RECORDS} records produced in {:?} with {}", started.elapsed(), proxy.counts());

    // Read back through the proxy, now forwarding faithfully.
    let messages = consume_to_end(&broker, TOPIC, PARTITIONS);
    verify_all(&messages, &deliveries, TAG, base_timestamp_ms);
    let counts = proxy.counts();
    assert!(
        counts.produce_responses_withheld.load(Ordering::SeqCst) >= 20 && counts.total() >= 40,
        "the proxy cut too few connections to show anything: {counts}"
    );
}

// ---------------------------------------------------------------------------------------
// SIGKILLs mid-stream

#[test]
fn idempotent_producer_across_broker_sigkills_writes_each_acknowledged_record_once() {
    const TOPIC: &str = "sigkilled";
    const PARTITIONS: i32 = 4;
    const RECORDS: u64 = 20_000;
    const TAG: &str = "sigkill";
    let mut broker = TestBroker::start(&["log.flush.interval.messages=1"]);
    create_topic(&admin(&broker), TOPIC, PARTITIONS, &[]);

    // Everything is queued at once, so the producer keeps the broker busy: at almost any
    // moment its connection has one request in the broker (appended, waiting for its fsync, or
    // answered but not yet read) and more behind it, so a kill catches batches that are in the
    // log but not acknowledged. librdkafka resends them to the restarted broker.
    let base_timestamp_ms = now_ms();
    let producer = idempotent_producer(&broker.bootstrap());
    for seq in 0..RECORDS {
        send(&producer, TOPIC, seq, &test_record(seq, TAG, base_timestamp_ms));
    }
    for kill in 1..=3 {
        let threshold = RECORDS * kill / 4;
        let deadline = Instant::now() + RUN_DEADLINE;
        let acked = loop {
            if let Some((code, reason)) = producer.client().fatal_error() {
                panic!("librdkafka raised a fatal error before kill {kill}: {code:?}: {reason}");
            }
            let acked = producer.context().acked.load(Ordering::SeqCst);
            if acked >= threshold {
                break acked;
            }
            assert!(Instant::now() < deadline, "{threshold} records acknowledged within {RUN_DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(1));
        };
        broker.kill9_and_restart();
        eprintln!("SIGKILLed the broker after {acked} of {RECORDS} acknowledgements");
    }
    let deliveries = wait_for_deliveries(&producer, RECORDS);

    let messages = consume_to_end(&broker, TOPIC, PARTITIONS);
    verify_all(&messages, &deliveries, TAG, base_timestamp_ms);
}

// ---------------------------------------------------------------------------------------
// Raw Produce retries across restarts

/// A minimal Kafka client over one socket, to send exactly the bytes a test chooses.
struct RawClient {
    stream: TcpStream,
    next_correlation_id: i32,
}

impl RawClient {
    fn connect(broker: &TestBroker) -> RawClient {
        let stream = TcpStream::connect(broker.bootstrap()).expect("connect to the broker");
        stream.set_read_timeout(Some(REQUEST_DEADLINE)).expect("set a read timeout");
        RawClient { stream, next_correlation_id: 1 }
    }

    fn call<T: Encodable, R: Decodable>(&mut self, api_key: ApiKey, version: i16, body: &T) -> R {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("idempotence-test")));
        let mut buf = BytesMut::new();
        header.encode(&mut buf, api_key.request_header_version(version)).expect("encode the header");
        body.encode(&mut buf, version).expect("encode the request");
        let mut frame = (buf.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&buf);
        self.stream.write_all(&frame).expect("send the request");

        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).unwrap_or_else(|err| panic!("no {api_key:?} response: {err}"));
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body).unwrap_or_else(|err| panic!("{api_key:?} response cut short: {err}"));
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, api_key.response_header_version(version)).expect("header");
        assert_eq!(header.correlation_id, correlation_id, "{api_key:?} response to this request");
        R::decode(&mut body, version).expect("decode the response")
    }

    /// Creates the topic by asking for it (auto-creation); it gets `num.partitions` partitions.
    fn create_topic(&mut self, topic: &'static str) {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str(topic))))
            ]))
            .with_allow_auto_topic_creation(true);
        let response: MetadataResponse = self.call(ApiKey::Metadata, 9, &request);
        assert_eq!(response.topics[0].error_code, 0, "auto-create {topic}");
    }

    /// A fresh producer id and epoch for an idempotent producer (no transactional id).
    fn init_producer_id(&mut self) -> (i64, i16) {
        // Java's idempotent producer sends the largest timeout; there is no transaction to time.
        let request =
            InitProducerIdRequest::default().with_transactional_id(None).with_transaction_timeout_ms(i32::MAX);
        let response: InitProducerIdResponse = self.call(ApiKey::InitProducerId, 4, &request);
        assert_eq!(response.error_code, 0, "InitProducerId");
        (response.producer_id.0, response.producer_epoch)
    }

    fn produce(&mut self, topic: &'static str, batch: &Bytes) -> PartitionProduceResponse {
        let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
            TopicProduceData::default().with_name(TopicName(StrBytes::from_static_str(topic))).with_partition_data(
                vec![PartitionProduceData::default().with_index(0).with_records(Some(batch.clone()))],
            ),
        ]);
        let mut response: ProduceResponse = self.call(ApiKey::Produce, 9, &request);
        response.responses.remove(0).partition_responses.remove(0)
    }

    fn log_end_offset(&mut self, topic: &'static str) -> i64 {
        let request =
            ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str(topic)))
                .with_partitions(vec![ListOffsetsPartition::default().with_partition_index(0).with_timestamp(-1)])]);
        let response: ListOffsetsResponse = self.call(ApiKey::ListOffsets, 7, &request);
        let partition = &response.topics[0].partitions[0];
        assert_eq!(partition.error_code, 0, "ListOffsets latest of {topic}");
        partition.offset
    }
}

/// `records` records of an idempotent producer, the first with sequence `base_sequence`.
fn idempotent_batch(producer_id: i64, epoch: i16, base_sequence: i32, records: i32) -> Bytes {
    let mut builder = RecordBatchBuilder::new(now_ms()).producer(producer_id, epoch, base_sequence);
    for i in 0..records {
        let value = format!("producer {producer_id} epoch {epoch} sequence {}", base_sequence + i);
        builder.push(now_ms(), Some(b"key"), Some(value.as_bytes()), &[]);
    }
    Bytes::from(builder.build().expect("build a batch"))
}

#[track_caller]
fn assert_appended_at(response: &PartitionProduceResponse, base_offset: i64, what: &str) {
    assert_eq!((response.error_code, response.error_message.as_deref()), (0, None), "{what}");
    assert_eq!(response.base_offset, base_offset, "{what}: base offset");
}

#[track_caller]
fn assert_refused(response: &PartitionProduceResponse, error: ResponseError, what: &str) {
    assert_eq!(response.error_code, error.code(), "{what}: expected {error:?}, got {response:?}");
}

#[derive(Clone, Copy, Debug)]
enum Restart {
    /// SIGTERM: the producer state is snapshotted at shutdown.
    Clean,
    /// SIGKILL: the state is rebuilt from the log's batches.
    Kill9,
}

fn retries_are_recognised_after(restart: Restart) {
    const TOPIC: &str = "retried";
    let mut broker = TestBroker::start(&[]);
    let mut client = RawClient::connect(&broker);
    client.create_topic(TOPIC);
    let (producer_id, epoch) = client.init_producer_id();
    assert_eq!(epoch, 0, "a new idempotent producer starts at epoch 0");
    let first = idempotent_batch(producer_id, 0, 0, 3);
    let last = idempotent_batch(producer_id, 0, 3, 2);
    assert_appended_at(&client.produce(TOPIC, &first), 0, "first batch");
    assert_appended_at(&client.produce(TOPIC, &last), 3, "second batch");
    // Another producer moves to epoch 1 (as after an epoch bump): epoch 0 is fenced from then on.
    let (bumped_id, _) = client.init_producer_id();
    assert_ne!(bumped_id, producer_id, "each InitProducerId hands out a new producer id");
    assert_appended_at(&client.produce(TOPIC, &idempotent_batch(bumped_id, 1, 0, 1)), 5, "bumped epoch");
    assert_eq!(client.log_end_offset(TOPIC), 6);

    match restart {
        Restart::Clean => broker.restart(),
        Restart::Kill9 => broker.kill9_and_restart(),
    }
    let mut client = RawClient::connect(&broker);
    assert_appended_at(&client.produce(TOPIC, &last), 3, &format!("retry of the last batch after {restart:?}"));
    assert_appended_at(&client.produce(TOPIC, &first), 0, &format!("retry of an earlier batch after {restart:?}"));
    assert_eq!(client.log_end_offset(TOPIC), 6, "retries appended nothing");

    let gap = idempotent_batch(producer_id, 0, 6, 1);
    assert_refused(&client.produce(TOPIC, &gap), ResponseError::OutOfOrderSequenceNumber, "sequence 6 after 4");
    let fenced = idempotent_batch(bumped_id, 0, 1, 1);
    assert_refused(&client.produce(TOPIC, &fenced), ResponseError::InvalidProducerEpoch, "epoch 0 after epoch 1");
    assert_eq!(client.log_end_offset(TOPIC), 6, "refused batches appended nothing");

    let next = idempotent_batch(producer_id, 0, 5, 1);
    assert_appended_at(&client.produce(TOPIC, &next), 6, "the next sequence");
    assert_appended_at(&client.produce(TOPIC, &next), 6, "its retry");
    assert_eq!(client.log_end_offset(TOPIC), 7);
}

#[test]
fn a_retry_is_recognised_after_a_clean_restart() {
    retries_are_recognised_after(Restart::Clean);
}

#[test]
fn a_retry_is_recognised_after_a_sigkill() {
    retries_are_recognised_after(Restart::Kill9);
}
