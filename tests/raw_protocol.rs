//! The protocol over a raw socket, where client libraries would hide it. Bad input (garbage,
//! absurd frame sizes, truncated requests, unknown APIs and versions, corrupt batches, missing
//! partitions, absurd element counts) gets the protocol's error or a closed connection while
//! the broker keeps serving everyone else and stores nothing; and the protocol rules clients
//! rely on without saying so (fetch byte budgets, acks=0 errors, ordering) hold.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::FetchResponse;
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData};
use kafka_protocol::messages::produce_response::ProduceResponse;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_storage::RecordBatchBuilder;

const DEADLINE: Duration = Duration::from_secs(20);

/// A broker process on an ephemeral port with its own data directory.
struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["broker", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut seen = String::new();
        let deadline = Instant::now() + DEADLINE;
        let port = loop {
            let mut byte = [0u8; 1];
            assert!(Instant::now() < deadline, "broker did not start: {seen}");
            match stdout.read(&mut byte) {
                Ok(1) => seen.push(byte[0] as char),
                _ => panic!("broker exited before listening: {seen}"),
            }
            if let Some(line) = seen.lines().find(|l| l.contains("listening on") && seen.ends_with('\n')) {
                break line.rsplit(':').next().unwrap().trim().parse().unwrap();
            }
        };
        Broker { child, port, _dir: dir }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream
    }

    fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the broker process died");
        let versions: ApiVersionsResponse =
            call(&mut self.connect(), ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default());
        assert_eq!(versions.error_code, 0);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn frame<T: Encodable>(api_key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("bad-input-test")));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, api_key.request_header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap();
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

fn read_frame(stream: &mut TcpStream) -> Option<Bytes> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(Bytes::from(body))
}

fn decode<R: Decodable>(api_key: ApiKey, version: i16, mut body: Bytes) -> (i32, R) {
    let header_version = if api_key == ApiKey::ApiVersions { 0 } else { api_key.response_header_version(version) };
    let header = ResponseHeader::decode(&mut body, header_version).unwrap();
    (header.correlation_id, R::decode(&mut body, version).unwrap())
}

fn call<T: Encodable, R: Decodable>(
    stream: &mut TcpStream,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> R {
    stream.write_all(&frame(api_key, version, correlation_id, body)).unwrap();
    let (id, response) = decode(api_key, version, read_frame(stream).expect("no response"));
    assert_eq!(id, correlation_id);
    response
}

/// The broker closed the connection (EOF or reset) instead of answering.
fn assert_closed(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: expected the connection to close, got {n} bytes"),
        Err(err) if matches!(err.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        Err(err) => panic!("{what}: expected the connection to close, got {err}"),
    }
}

fn create_topic(stream: &mut TcpStream, name: &'static str) {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str(name))))
        ]))
        .with_allow_auto_topic_creation(true);
    let response: MetadataResponse = call(stream, ApiKey::Metadata, 9, 7, &request);
    assert_eq!(response.topics[0].error_code, 0);
}

fn produce(stream: &mut TcpStream, topic: &'static str, partition: i32, records: Bytes) -> ProduceResponse {
    let request =
        ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![TopicProduceData::default(
        )
        .with_name(TopicName(StrBytes::from_static_str(topic)))
        .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(records))])]);
    call(stream, ApiKey::Produce, 9, 11, &request)
}

fn produce_with_acks(stream: &mut TcpStream, acks: i16, topic: &'static str, partition: i32, records: Bytes) {
    let request = ProduceRequest::default().with_acks(acks).with_timeout_ms(5000).with_topic_data(vec![
        TopicProduceData::default().with_name(TopicName(StrBytes::from_static_str(topic))).with_partition_data(vec![
            PartitionProduceData::default().with_index(partition).with_records(Some(records)),
        ]),
    ]);
    stream.write_all(&frame(ApiKey::Produce, 9, 21, &request)).unwrap();
}

fn fetch_all(stream: &mut TcpStream, topic: &'static str) -> (i64, Bytes) {
    let request =
        FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str(topic)))
            .with_partitions(vec![FetchPartition::default().with_partition(0).with_partition_max_bytes(1 << 20)])]);
    let response: FetchResponse = call(stream, ApiKey::Fetch, 12, 12, &request);
    let partition = &response.responses[0].partitions[0];
    (partition.high_watermark, partition.records.clone().unwrap_or_default())
}

fn one_record_batch() -> Bytes {
    let mut builder = RecordBatchBuilder::new(1_000);
    builder.push(1_000, Some(b"key"), Some(b"value"), &[]);
    Bytes::from(builder.build().unwrap())
}

#[test]
fn garbage_and_absurd_frames_close_the_connection_and_nothing_else() {
    let mut broker = Broker::start();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("2 GiB frame length", i32::MAX.to_be_bytes().to_vec()),
        ("negative frame length", (-1i32).to_be_bytes().to_vec()),
        ("unknown api key", [&12i32.to_be_bytes()[..], &[0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]].concat()),
        ("frame shorter than a header", [&3i32.to_be_bytes()[..], &[0, 3, 0]].concat()),
        (
            "random bytes",
            [
                &16i32.to_be_bytes()[..],
                &[0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c],
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut stream = broker.connect();
        stream.write_all(&bytes).unwrap();
        assert_closed(&mut stream, what);
        broker.assert_alive();
    }
}

#[test]
fn truncated_and_malformed_requests_are_refused() {
    let mut broker = Broker::start();
    // A Metadata request cut short inside its body.
    let full = frame(
        ApiKey::Metadata,
        9,
        1,
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str("some-topic"))))
        ])),
    );
    let body_len = full.len() - 4 - 6;
    let mut cut = (body_len as i32).to_be_bytes().to_vec();
    cut.extend_from_slice(&full[4..4 + body_len]);
    let mut stream = broker.connect();
    stream.write_all(&cut).unwrap();
    assert_closed(&mut stream, "truncated body");

    // A frame that promises more bytes than it sends, then the client goes away.
    let mut stream = broker.connect();
    stream.write_all(&1000i32.to_be_bytes()).unwrap();
    stream.write_all(&full[4..]).unwrap();
    drop(stream);

    // A Metadata v1 request whose topic array claims two billion entries: the decoder sizes a
    // vector from that count, which must not take the broker down.
    let header = frame(ApiKey::Metadata, 1, 2, &MetadataRequest::default().with_topics(Some(vec![])));
    let mut bogus = header[4..header.len() - 4].to_vec();
    bogus.put_i32(i32::MAX);
    let mut stream = broker.connect();
    stream.write_all(&(bogus.len() as i32).to_be_bytes()).unwrap();
    stream.write_all(&bogus).unwrap();
    assert_closed(&mut stream, "two billion topics");
    broker.assert_alive();
}

#[test]
fn unsupported_versions_get_unsupported_version_or_a_closed_connection() {
    let mut broker = Broker::start();
    // ApiVersions newer than ours: a v0 reply with UNSUPPORTED_VERSION listing what we support.
    let mut stream = broker.connect();
    let mut request = frame(ApiKey::ApiVersions, 3, 5, &ApiVersionsRequest::default());
    request[6..8].copy_from_slice(&99i16.to_be_bytes());
    stream.write_all(&request).unwrap();
    let (id, response): (i32, ApiVersionsResponse) = decode(ApiKey::ApiVersions, 0, read_frame(&mut stream).unwrap());
    assert_eq!(id, 5);
    assert_eq!(response.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(response.api_keys.iter().any(|k| k.api_key == ApiKey::Produce as i16));
    // The client then retries with a version it found there, on the same connection.
    let versions: ApiVersionsResponse = call(&mut stream, ApiKey::ApiVersions, 3, 6, &ApiVersionsRequest::default());
    assert_eq!(versions.error_code, 0);

    // Any other API at a version outside the advertised range: the connection is closed.
    let mut stream = broker.connect();
    let mut request = frame(ApiKey::Metadata, 12, 1, &MetadataRequest::default());
    request[6..8].copy_from_slice(&50i16.to_be_bytes());
    stream.write_all(&request).unwrap();
    assert_closed(&mut stream, "Metadata v50");
    broker.assert_alive();
}

#[test]
fn api_versions_v3_writes_no_tagged_fields_that_old_librdkafka_misreads() {
    let broker = Broker::start();
    let mut stream = broker.connect();
    stream.write_all(&frame(ApiKey::ApiVersions, 3, 9, &ApiVersionsRequest::default())).unwrap();
    let mut body = read_frame(&mut stream).unwrap();
    // Header v0 (correlation id only), then the v3 body: its last byte is the tagged field
    // count, which must be 0 (no SupportedFeatures / FinalizedFeatures written).
    assert_eq!(body.get_i32(), 9);
    assert_eq!(*body.last().unwrap(), 0, "ApiVersions v3 carries tagged fields");
}

#[test]
fn corrupt_batches_and_missing_partitions_get_per_partition_errors_and_store_nothing() {
    let mut broker = Broker::start();
    let mut stream = broker.connect();
    create_topic(&mut stream, "bad-input");
    let good = one_record_batch();

    let mut bad_crc = good.to_vec();
    *bad_crc.last_mut().unwrap() ^= 0x01;
    let response = produce(&mut stream, "bad-input", 0, Bytes::from(bad_crc));
    assert_eq!(response.responses[0].partition_responses[0].error_code, 2, "CORRUPT_MESSAGE");

    let mut old_magic = good.to_vec();
    old_magic[16] = 1;
    let response = produce(&mut stream, "bad-input", 0, Bytes::from(old_magic));
    assert_ne!(response.responses[0].partition_responses[0].error_code, 0);

    let two_batches = Bytes::from([&good[..], &good[..]].concat());
    let response = produce(&mut stream, "bad-input", 0, two_batches);
    assert_eq!(response.responses[0].partition_responses[0].error_code, 87, "INVALID_RECORD");

    let response = produce(&mut stream, "bad-input", 5, good.clone());
    assert_eq!(response.responses[0].partition_responses[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    let response = produce(&mut stream, "no-such-topic", 0, good.clone());
    assert_eq!(response.responses[0].partition_responses[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");

    // Nothing was stored; a good batch still lands at offset 0 and reads back as sent.
    let (high_watermark, records) = fetch_all(&mut stream, "bad-input");
    assert_eq!((high_watermark, records.len()), (0, 0));
    let response = produce(&mut stream, "bad-input", 0, good.clone());
    assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    let (high_watermark, records) = fetch_all(&mut stream, "bad-input");
    assert_eq!(high_watermark, 1);
    assert_eq!(&records[16..], &good[16..], "stored bytes differ from what was sent");
    broker.assert_alive();
}

#[test]
fn pipelined_requests_are_answered_in_order_and_many_connections_are_served() {
    let broker = Broker::start();
    let mut stream = broker.connect();
    let mut burst = Vec::new();
    for id in 0..20 {
        burst.extend(frame(ApiKey::ApiVersions, 3, id, &ApiVersionsRequest::default()));
        burst.extend(frame(ApiKey::Metadata, 9, 1000 + id, &MetadataRequest::default().with_topics(None)));
    }
    stream.write_all(&burst).unwrap();
    for id in 0..20 {
        let (first, _): (i32, ApiVersionsResponse) = decode(ApiKey::ApiVersions, 3, read_frame(&mut stream).unwrap());
        let (second, _): (i32, MetadataResponse) = decode(ApiKey::Metadata, 9, read_frame(&mut stream).unwrap());
        assert_eq!((first, second), (id, 1000 + id));
    }

    let mut streams: Vec<TcpStream> = (0..64).map(|_| broker.connect()).collect();
    for (id, stream) in streams.iter_mut().enumerate() {
        stream.write_all(&frame(ApiKey::ApiVersions, 3, id as i32, &ApiVersionsRequest::default())).unwrap();
    }
    for (id, stream) in streams.iter_mut().enumerate() {
        let (got, response): (i32, ApiVersionsResponse) = decode(ApiKey::ApiVersions, 3, read_frame(stream).unwrap());
        assert_eq!((got, response.error_code), (id as i32, 0));
    }
}

fn batch_of(value_size: usize) -> Bytes {
    let mut builder = RecordBatchBuilder::new(1_000);
    builder.push(1_000, None, Some(&vec![7u8; value_size]), &[]);
    Bytes::from(builder.build().unwrap())
}

#[test]
fn only_the_first_partition_with_data_may_exceed_the_fetch_byte_budget() {
    // KIP-74: max_bytes bounds the response, except that the first batch always comes back.
    let broker = Broker::start();
    let mut stream = broker.connect();
    let topics = vec![MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str("budget"))))];
    let _: MetadataResponse =
        call(&mut stream, ApiKey::Metadata, 9, 1, &MetadataRequest::default().with_topics(Some(topics)));
    let create =
        kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest::default().with_topics(vec![
            kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("budget")))
                .with_count(2),
        ]);
    let _: kafka_protocol::messages::create_partitions_response::CreatePartitionsResponse =
        call(&mut stream, ApiKey::CreatePartitions, 3, 2, &create);
    for partition in 0..2 {
        let response = produce(&mut stream, "budget", partition, batch_of(600_000));
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    }
    let partitions =
        (0..2).map(|p| FetchPartition::default().with_partition(p).with_partition_max_bytes(1 << 20)).collect();
    let request =
        FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1_000_000).with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("budget")))
            .with_partitions(partitions)]);
    let response: FetchResponse = call(&mut stream, ApiKey::Fetch, 12, 3, &request);
    let sizes: Vec<usize> =
        response.responses[0].partitions.iter().map(|p| p.records.as_ref().map_or(0, |r| r.len())).collect();
    assert!(sizes[0] > 600_000, "the first batch always comes back: {sizes:?}");
    assert_eq!(sizes[1], 0, "a second 600 kB batch would break the 1 MB budget: {sizes:?}");
}

#[test]
fn an_acks_0_produce_that_fails_closes_the_connection() {
    // With acks=0 there is no response to carry the error: Kafka closes the connection, the
    // client's cue to refresh its metadata.
    let mut broker = Broker::start();
    let mut stream = broker.connect();
    create_topic(&mut stream, "fire-and-forget");
    produce_with_acks(&mut stream, 0, "fire-and-forget", 0, one_record_batch());
    let (high_watermark, _) = fetch_all(&mut stream, "fire-and-forget");
    assert_eq!(high_watermark, 1, "the good acks=0 batch was stored and the connection stayed open");
    produce_with_acks(&mut stream, 0, "fire-and-forget", 7, one_record_batch());
    assert_closed(&mut stream, "acks=0 produce to a missing partition");
    broker.assert_alive();
}

#[test]
fn a_wildcard_listener_needs_an_advertised_address() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["broker", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--advertise"), "{stderr}");
}

#[test]
fn a_topic_named_twice_in_one_create_request_is_refused_for_both() {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
    use kafka_protocol::messages::create_topics_response::CreateTopicsResponse;
    let broker = Broker::start();
    let mut stream = broker.connect();
    let topic = |name: &'static str| {
        CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(name)))
            .with_num_partitions(1)
            .with_replication_factor(1)
    };
    let request = CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![
        topic("twice"),
        topic("once"),
        topic("twice"),
    ]);
    let response: CreateTopicsResponse = call(&mut stream, ApiKey::CreateTopics, 7, 1, &request);
    let codes: Vec<(String, i16)> = response.topics.iter().map(|t| (t.name.0.to_string(), t.error_code)).collect();
    assert_eq!(codes, vec![("twice".into(), 42), ("once".into(), 0), ("twice".into(), 42)], "INVALID_REQUEST for both");
    let metadata: MetadataResponse =
        call(&mut stream, ApiKey::Metadata, 9, 2, &MetadataRequest::default().with_topics(None));
    let names: Vec<String> = metadata.topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect();
    assert_eq!(names, vec!["once".to_string()]);
}
