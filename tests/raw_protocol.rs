//! The protocol over a raw socket, where client libraries would hide it. Bad input (garbage,
//! absurd frame sizes, truncated requests, unknown APIs and versions, corrupt batches, missing
//! partitions, absurd element counts) gets the protocol's error or a closed connection while
//! the broker keeps serving everyone else and stores nothing; and the protocol rules clients
//! rely on without saying so (fetch byte budgets, acks=0 errors, ordering) hold.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::FetchResponse;
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::produce_request::{PartitionProduceData, ProduceRequest, TopicProduceData};
use kafka_protocol::messages::produce_response::ProduceResponse;
use kafka_protocol::messages::{ApiKey, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_storage::RecordBatchBuilder;

#[path = "common/wire.rs"]
mod wire;
use wire::{call, decode, frame, read_frame};

const DEADLINE: Duration = Duration::from_secs(20);

/// A broker process on an ephemeral port with its own data directory.
struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// A broker with extra configs, each `key=value` (passed as `--set`).
    fn start_with(settings: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(["broker", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"));
        for setting in settings {
            command.arg("--set").arg(setting);
        }
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
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
            if let Some(line) =
                seen.lines().find(|l| l.starts_with("sluice broker listening on") && seen.ends_with('\n'))
            {
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
        .args(["broker", "--listen", "0.0.0.0:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
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

// ---------------------------------------------------------------------------------------
// Consumer groups (classic protocol)

mod group {
    use super::*;
    use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
    use kafka_protocol::messages::find_coordinator_response::FindCoordinatorResponse;
    use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
    use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_commit_response::OffsetCommitResponse;
    use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequest, OffsetFetchRequestTopic};
    use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponse;
    use kafka_protocol::messages::sync_group_request::{SyncGroupRequest, SyncGroupRequestAssignment};
    use kafka_protocol::messages::GroupId;

    pub const NONE: i16 = 0;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    /// Kafka's `offset.metadata.max.bytes` default.
    pub const OFFSET_METADATA_MAX_BYTES: usize = 4096;

    fn text(value: &str) -> StrBytes {
        StrBytes::from_string(value.to_string())
    }

    pub fn join(group: &str, member_id: &str, session_timeout_ms: i32, metadata: &Bytes) -> JoinGroupRequest {
        JoinGroupRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_session_timeout_ms(session_timeout_ms)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(text(member_id))
            .with_protocol_type(text("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(text("range"))
                .with_metadata(metadata.clone())])
    }

    pub fn sync(group: &str, generation_id: i32, member_id: &str, assignment: &Bytes) -> SyncGroupRequest {
        SyncGroupRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_generation_id(generation_id)
            .with_member_id(text(member_id))
            .with_assignments(vec![SyncGroupRequestAssignment::default()
                .with_member_id(text(member_id))
                .with_assignment(assignment.clone())])
    }

    pub fn heartbeat(group: &str, generation_id: i32, member_id: &str) -> HeartbeatRequest {
        HeartbeatRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_generation_id(generation_id)
            .with_member_id(text(member_id))
    }

    /// Commits `(partition, offset, metadata)` of one topic as a member of a generation.
    pub fn commit(
        group: &str,
        generation_id: i32,
        member_id: &str,
        topic: &str,
        partitions: &[(i32, i64, &str)],
    ) -> OffsetCommitRequest {
        let partitions = partitions
            .iter()
            .map(|(partition, offset, metadata)| {
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*partition)
                    .with_committed_offset(*offset)
                    .with_committed_metadata(Some(text(metadata)))
            })
            .collect();
        OffsetCommitRequest::default()
            .with_group_id(GroupId(text(group)))
            .with_generation_id_or_member_epoch(generation_id)
            .with_member_id(text(member_id))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(text(topic)))
                .with_partitions(partitions)])
    }

    pub fn commit_errors(response: &OffsetCommitResponse) -> Vec<(i32, i16)> {
        response.topics.iter().flat_map(|t| t.partitions.iter().map(|p| (p.partition_index, p.error_code))).collect()
    }

    /// The committed (offset, metadata) of each listed partition.
    pub fn fetch(stream: &mut TcpStream, group: &str, topic: &str, partitions: &[i32]) -> Vec<(i32, i64, String)> {
        let request = OffsetFetchRequest::default().with_group_id(GroupId(text(group))).with_topics(Some(vec![
            OffsetFetchRequestTopic::default()
                .with_name(TopicName(text(topic)))
                .with_partition_indexes(partitions.to_vec()),
        ]));
        let response: OffsetFetchResponse = call(stream, ApiKey::OffsetFetch, 5, 40, &request);
        assert_eq!(response.error_code, NONE, "OffsetFetch");
        response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| {
                assert_eq!(p.error_code, NONE, "OffsetFetch of partition {}", p.partition_index);
                (p.partition_index, p.committed_offset, p.metadata.as_ref().map(|m| m.to_string()).unwrap_or_default())
            })
            .collect()
    }

    pub fn find_coordinator(stream: &mut TcpStream, group: &str) -> (FindCoordinatorResponse, FindCoordinatorResponse) {
        let single: FindCoordinatorResponse =
            call(stream, ApiKey::FindCoordinator, 1, 41, &FindCoordinatorRequest::default().with_key(text(group)));
        let batched: FindCoordinatorResponse = call(
            stream,
            ApiKey::FindCoordinator,
            4,
            42,
            &FindCoordinatorRequest::default().with_coordinator_keys(vec![text(group)]),
        );
        (single, batched)
    }
}

#[test]
fn group_protocol_errors_are_answered_and_the_group_keeps_working() {
    use group::*;
    use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
    use kafka_protocol::messages::join_group_response::JoinGroupResponse;
    use kafka_protocol::messages::offset_commit_response::OffsetCommitResponse;
    use kafka_protocol::messages::sync_group_response::SyncGroupResponse;

    let mut broker = Broker::start_with(&["group.initial.rebalance.delay.ms=0", "num.partitions=2"]);
    let mut stream = broker.connect();
    create_topic(&mut stream, "group-offsets");
    let group = "raw-group";

    // This broker coordinates every group, under the address clients bootstrap with.
    let (single, batched) = find_coordinator(&mut stream, group);
    assert_eq!((single.error_code, single.node_id.0, single.port), (NONE, 0, i32::from(broker.port)), "v1");
    assert_eq!(batched.coordinators.len(), 1, "v4 answers each key");
    let coordinator = &batched.coordinators[0];
    assert_eq!(coordinator.key.as_str(), group);
    assert_eq!((coordinator.error_code, coordinator.node_id.0, coordinator.port), (NONE, 0, i32::from(broker.port)));

    // KIP-394: a first JoinGroup without a member id is answered MEMBER_ID_REQUIRED with an id.
    // The protocol metadata is not a valid consumer subscription: the classic protocol passes
    // it to the leader untouched, whatever it holds.
    let metadata = Bytes::from_static(&[0xff, 0xfe, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef, 0x7f, 0x01]);
    let first: JoinGroupResponse = call(&mut stream, ApiKey::JoinGroup, 5, 1, &join(group, "", 30_000, &metadata));
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    assert!(!first.member_id.is_empty(), "MEMBER_ID_REQUIRED comes with the id to rejoin with");
    let member = first.member_id.to_string();

    // Rejoining with that id, the sole member gets a generation and leads it.
    let joined: JoinGroupResponse =
        call(&mut stream, ApiKey::JoinGroup, 5, 2, &join(group, &member, 30_000, &metadata));
    assert_eq!(joined.error_code, NONE);
    assert!(joined.generation_id >= 1, "generation {}", joined.generation_id);
    assert_eq!((joined.leader.as_str(), joined.member_id.as_str()), (member.as_str(), member.as_str()));
    assert_eq!(joined.protocol_name.as_deref(), Some("range"));
    assert_eq!(joined.members.len(), 1);
    assert_eq!(joined.members[0].member_id.as_str(), member);
    assert_eq!(joined.members[0].metadata, metadata, "the leader gets the metadata byte for byte");
    let generation = joined.generation_id;

    // SyncGroup for a generation that is not the group's: ILLEGAL_GENERATION. Then the right
    // one, whose assignment (garbage as well) comes back as the leader wrote it.
    let assignment = Bytes::from_static(b"\x00\x01not-a-consumer-assignment\xff");
    let wrong: SyncGroupResponse =
        call(&mut stream, ApiKey::SyncGroup, 3, 3, &sync(group, generation + 1, &member, &assignment));
    assert_eq!(wrong.error_code, ILLEGAL_GENERATION, "SyncGroup with the wrong generation");
    let synced: SyncGroupResponse =
        call(&mut stream, ApiKey::SyncGroup, 3, 4, &sync(group, generation, &member, &assignment));
    assert_eq!((synced.error_code, &synced.assignment), (NONE, &assignment));

    let stranger: HeartbeatResponse =
        call(&mut stream, ApiKey::Heartbeat, 3, 5, &heartbeat(group, generation, "no-such-member"));
    assert_eq!(stranger.error_code, UNKNOWN_MEMBER_ID, "a heartbeat from a member the group does not know");
    let beat: HeartbeatResponse = call(&mut stream, ApiKey::Heartbeat, 3, 6, &heartbeat(group, generation, &member));
    assert_eq!(beat.error_code, NONE);

    // The leader rejoining starts a new generation; commits from the old one are refused.
    let rejoined: JoinGroupResponse =
        call(&mut stream, ApiKey::JoinGroup, 5, 7, &join(group, &member, 30_000, &metadata));
    assert_eq!(rejoined.error_code, NONE);
    assert!(rejoined.generation_id > generation, "a new generation: {} after {generation}", rejoined.generation_id);
    let current = rejoined.generation_id;
    let synced: SyncGroupResponse =
        call(&mut stream, ApiKey::SyncGroup, 3, 8, &sync(group, current, &member, &assignment));
    assert_eq!(synced.error_code, NONE);
    let stale: OffsetCommitResponse = call(
        &mut stream,
        ApiKey::OffsetCommit,
        7,
        9,
        &commit(group, generation, &member, "group-offsets", &[(0, 1, ""), (1, 1, "")]),
    );
    assert_eq!(commit_errors(&stale), vec![(0, ILLEGAL_GENERATION), (1, ILLEGAL_GENERATION)], "a stale generation");

    // Metadata over offset.metadata.max.bytes fails its own partition; the limit itself is fine.
    let too_long = "m".repeat(OFFSET_METADATA_MAX_BYTES + 1);
    let longest = "k".repeat(OFFSET_METADATA_MAX_BYTES);
    let response: OffsetCommitResponse = call(
        &mut stream,
        ApiKey::OffsetCommit,
        7,
        10,
        &commit(group, current, &member, "group-offsets", &[(0, 5, &too_long), (1, 7, &longest)]),
    );
    assert_eq!(commit_errors(&response), vec![(0, OFFSET_METADATA_TOO_LARGE), (1, NONE)]);
    assert_eq!(
        fetch(&mut stream, group, "group-offsets", &[0, 1]),
        vec![(0, -1, String::new()), (1, 7, longest.clone())],
        "only the accepted commit is stored"
    );

    // Session timeouts outside the broker's bounds, and an empty group id, are refused.
    let short: JoinGroupResponse =
        call(&mut stream, ApiKey::JoinGroup, 5, 11, &join("another-group", "", 10, &metadata));
    assert_eq!(short.error_code, INVALID_SESSION_TIMEOUT, "a 10 ms session timeout");
    let long: JoinGroupResponse =
        call(&mut stream, ApiKey::JoinGroup, 5, 12, &join("another-group", "", i32::MAX, &metadata));
    assert_eq!(long.error_code, INVALID_SESSION_TIMEOUT, "a 24-day session timeout");
    let nameless: JoinGroupResponse = call(&mut stream, ApiKey::JoinGroup, 5, 13, &join("", "", 30_000, &metadata));
    assert_eq!(nameless.error_code, INVALID_GROUP_ID, "an empty group id");

    // After all that, the group still works: heartbeat, a new generation, a commit.
    let beat: HeartbeatResponse = call(&mut stream, ApiKey::Heartbeat, 3, 14, &heartbeat(group, current, &member));
    assert_eq!(beat.error_code, NONE);
    let again: JoinGroupResponse =
        call(&mut stream, ApiKey::JoinGroup, 5, 15, &join(group, &member, 30_000, &metadata));
    assert_eq!((again.error_code, again.leader.as_str()), (NONE, member.as_str()));
    assert_eq!(again.members[0].metadata, metadata);
    let synced: SyncGroupResponse =
        call(&mut stream, ApiKey::SyncGroup, 3, 16, &sync(group, again.generation_id, &member, &assignment));
    assert_eq!((synced.error_code, &synced.assignment), (NONE, &assignment));
    let beat: HeartbeatResponse =
        call(&mut stream, ApiKey::Heartbeat, 3, 17, &heartbeat(group, again.generation_id, &member));
    assert_eq!(beat.error_code, NONE);
    let response: OffsetCommitResponse = call(
        &mut stream,
        ApiKey::OffsetCommit,
        7,
        18,
        &commit(group, again.generation_id, &member, "group-offsets", &[(0, 9, "done")]),
    );
    assert_eq!(commit_errors(&response), vec![(0, NONE)]);
    assert_eq!(fetch(&mut stream, group, "group-offsets", &[0]), vec![(0, 9, "done".to_string())]);
    broker.assert_alive();
}

#[test]
fn a_static_leader_coming_back_keeps_the_assignment_at_every_join_group_version() {
    use group::*;
    use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
    use kafka_protocol::messages::join_group_response::JoinGroupResponse;
    use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
    const FENCED_INSTANCE_ID: i16 = 82;

    let broker = Broker::start_with(&["group.initial.rebalance.delay.ms=0"]);
    let mut stream = broker.connect();
    let group = "static-raw";
    let metadata = Bytes::from_static(b"subscription");
    let assignment = Bytes::from_static(b"partitions 0-5");
    let static_join = |member_id: &str| {
        join(group, member_id, 30_000, &metadata).with_group_instance_id(Some(StrBytes::from_static_str("instance-0")))
    };

    // A static member joins without MEMBER_ID_REQUIRED (KIP-345), leads, and assigns.
    let joined: JoinGroupResponse = call(&mut stream, ApiKey::JoinGroup, 5, 1, &static_join(""));
    assert_eq!(joined.error_code, NONE);
    let first_id = joined.member_id.to_string();
    assert_eq!(joined.leader.as_str(), first_id);
    let generation = joined.generation_id;
    let synced: SyncGroupResponse =
        call(&mut stream, ApiKey::SyncGroup, 3, 2, &sync(group, generation, &first_id, &assignment));
    assert_eq!((synced.error_code, &synced.assignment), (NONE, &assignment));

    // It restarts and comes back with the same instance id. Before JoinGroup v9 there is no
    // SkipAssignment, so Kafka names the old member id as leader: the member must not think it
    // leads, or it would compute an assignment a stable group never hands out.
    let back: JoinGroupResponse = call(&mut stream, ApiKey::JoinGroup, 5, 3, &static_join(""));
    assert_eq!((back.error_code, back.generation_id), (NONE, generation), "no rebalance for a static member's return");
    let second_id = back.member_id.to_string();
    assert_ne!(second_id, first_id, "a new member id");
    assert_ne!(back.leader.as_str(), second_id, "a v5 member back in a stable group is not told it leads");
    let synced: SyncGroupResponse =
        call(&mut stream, ApiKey::SyncGroup, 3, 4, &sync(group, generation, &second_id, &Bytes::new()));
    assert_eq!((synced.error_code, &synced.assignment), (NONE, &assignment), "the assignment it had");
    let fenced: HeartbeatResponse = call(
        &mut stream,
        ApiKey::Heartbeat,
        3,
        5,
        &heartbeat(group, generation, &first_id).with_group_instance_id(Some(StrBytes::from_static_str("instance-0"))),
    );
    assert_eq!(fenced.error_code, FENCED_INSTANCE_ID, "the old member id is fenced");

    // From v9 the leader is told it leads, and to skip the assignment (KIP-814).
    let back: JoinGroupResponse = call(&mut stream, ApiKey::JoinGroup, 9, 6, &static_join(""));
    assert_eq!((back.error_code, back.generation_id), (NONE, generation));
    let third_id = back.member_id.to_string();
    assert_eq!((back.leader.as_str(), back.skip_assignment), (third_id.as_str(), true));
    let synced: SyncGroupResponse = call(
        &mut stream,
        ApiKey::SyncGroup,
        5,
        7,
        &sync(group, generation, &third_id, &Bytes::new())
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_static_str("range"))),
    );
    assert_eq!((synced.error_code, &synced.assignment), (NONE, &assignment));
}

/// A Fetch v12 request in session `id` at `epoch` for `partitions` of `topic`, each at its
/// offset, forgetting `forgotten`.
fn session_fetch(
    id: i32,
    epoch: i32,
    topic: &'static str,
    partitions: &[(i32, i64)],
    forgotten: &[i32],
) -> FetchRequest {
    use kafka_protocol::messages::fetch_request::ForgottenTopic;
    let name = TopicName(StrBytes::from_static_str(topic));
    let wanted: Vec<FetchPartition> = partitions
        .iter()
        .map(|&(p, offset)| {
            FetchPartition::default().with_partition(p).with_fetch_offset(offset).with_partition_max_bytes(1 << 20)
        })
        .collect();
    let mut request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_id(id)
        .with_session_epoch(epoch)
        .with_topics(if wanted.is_empty() {
            vec![]
        } else {
            vec![FetchTopic::default().with_topic(name.clone()).with_partitions(wanted)]
        });
    if !forgotten.is_empty() {
        request = request.with_forgotten_topics_data(vec![ForgottenTopic::default()
            .with_topic(name)
            .with_partitions(forgotten.to_vec())]);
    }
    request
}

/// (partition, high watermark, record bytes) of each partition in a fetch response.
fn answered(response: &FetchResponse) -> Vec<(i32, i64, usize)> {
    response
        .responses
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (p.partition_index, p.high_watermark, p.records.as_ref().map_or(0, |r| r.len())))
        })
        .collect()
}

#[test]
fn incremental_fetch_sessions_send_only_what_changed_and_refuse_stale_epochs() {
    let broker = Broker::start();
    let mut stream = broker.connect();
    create_topic(&mut stream, "sessions");
    let create =
        kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest::default().with_topics(vec![
            kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("sessions")))
                .with_count(3),
        ]);
    let _: kafka_protocol::messages::create_partitions_response::CreatePartitionsResponse =
        call(&mut stream, ApiKey::CreatePartitions, 3, 2, &create);
    produce(&mut stream, "sessions", 0, one_record_batch());

    // Epoch 0 opens a session: a full response, and a session id.
    let all = [(0, 0), (1, 0), (2, 0)];
    let opened: FetchResponse = call(&mut stream, ApiKey::Fetch, 12, 1, &session_fetch(0, 0, "sessions", &all, &[]));
    assert_eq!(opened.error_code, 0);
    let id = opened.session_id;
    assert_ne!(id, 0, "a session was created");
    assert_eq!(answered(&opened).len(), 3);

    // Nothing changed: an incremental fetch naming no partitions gets none back.
    let quiet: FetchResponse = call(&mut stream, ApiKey::Fetch, 12, 2, &session_fetch(id, 1, "sessions", &[], &[]));
    assert_eq!((quiet.error_code, quiet.session_id), (0, id));
    assert_eq!(answered(&quiet), vec![(0, 1, answered(&opened)[0].2)], "partition 0 still has its record at offset 0");
    // The client moves past it: now nothing at all comes back.
    let moved: FetchResponse =
        call(&mut stream, ApiKey::Fetch, 12, 3, &session_fetch(id, 2, "sessions", &[(0, 1)], &[]));
    assert_eq!(answered(&moved), vec![]);
    // New records in partition 2 come back, without the session naming it again.
    produce(&mut stream, "sessions", 2, one_record_batch());
    let grown: FetchResponse = call(&mut stream, ApiKey::Fetch, 12, 4, &session_fetch(id, 3, "sessions", &[], &[]));
    let got = answered(&grown);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].0, got[0].1), (2, 1));
    assert!(got[0].2 > 0);

    // A forgotten partition is no longer served.
    let _: FetchResponse = call(&mut stream, ApiKey::Fetch, 12, 5, &session_fetch(id, 4, "sessions", &[(2, 1)], &[]));
    let _: FetchResponse = call(&mut stream, ApiKey::Fetch, 12, 6, &session_fetch(id, 5, "sessions", &[], &[1]));
    produce(&mut stream, "sessions", 1, one_record_batch());
    let forgot: FetchResponse = call(&mut stream, ApiKey::Fetch, 12, 7, &session_fetch(id, 6, "sessions", &[], &[]));
    assert_eq!(answered(&forgot), vec![]);

    // A repeated epoch and an unknown session are refused with the codes clients recover from.
    let stale: FetchResponse = call(&mut stream, ApiKey::Fetch, 12, 8, &session_fetch(id, 6, "sessions", &[], &[]));
    assert_eq!(stale.error_code, kafka_protocol::error::ResponseError::InvalidFetchSessionEpoch.code());
    let unknown: FetchResponse =
        call(&mut stream, ApiKey::Fetch, 12, 9, &session_fetch(id ^ 0x55, 1, "sessions", &[], &[]));
    assert_eq!(unknown.error_code, kafka_protocol::error::ResponseError::FetchSessionIdNotFound.code());
    // A long poll in the session wakes for an append to a partition it left out as quiet,
    // long before its max wait.
    let mut producer = broker.connect();
    let waiting = std::thread::spawn(move || {
        let mut request = session_fetch(id, 7, "sessions", &[], &[]);
        request = request.with_max_wait_ms(60_000).with_min_bytes(1);
        let started = std::time::Instant::now();
        let response: FetchResponse = call(&mut stream, ApiKey::Fetch, 12, 12, &request);
        (response, started.elapsed(), stream)
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    produce(&mut producer, "sessions", 0, one_record_batch());
    let (woken, waited, mut stream) = waiting.join().unwrap();
    assert!(waited < std::time::Duration::from_secs(30), "the poll was not woken ({waited:?})");
    assert_eq!(answered(&woken).iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(), vec![(0, 2)]);
    // Epoch -1 closes the session; it is gone afterwards.
    let closed: FetchResponse = call(&mut stream, ApiKey::Fetch, 12, 10, &session_fetch(id, -1, "sessions", &all, &[]));
    assert_eq!((closed.error_code, closed.session_id), (0, 0));
    let gone: FetchResponse = call(&mut stream, ApiKey::Fetch, 12, 11, &session_fetch(id, 8, "sessions", &[], &[]));
    assert_eq!(gone.error_code, kafka_protocol::error::ResponseError::FetchSessionIdNotFound.code());
}

#[test]
fn offset_for_leader_epoch_answers_from_the_epoch_cache() {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderEpochRequest, OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::offset_for_leader_epoch_response::OffsetForLeaderEpochResponse;
    let broker = Broker::start();
    let mut stream = broker.connect();
    create_topic(&mut stream, "epochs");
    for _ in 0..3 {
        produce(&mut stream, "epochs", 0, one_record_batch());
    }
    let ask = |stream: &mut TcpStream, epoch: i32| {
        let request = OffsetForLeaderEpochRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("epochs")))
                .with_partitions(vec![OffsetForLeaderPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(-1)
                    .with_leader_epoch(epoch)])]);
        let response: OffsetForLeaderEpochResponse = call(stream, ApiKey::OffsetForLeaderEpoch, 4, 1, &request);
        let answer = &response.topics[0].partitions[0];
        (answer.error_code, answer.leader_epoch, answer.end_offset)
    };
    // One node leads every partition at epoch 0: it ends at the log end; later epochs are
    // unknown (a follower asking for one would learn nothing to truncate to).
    assert_eq!(ask(&mut stream, 0), (0, 0, 3));
    assert_eq!(ask(&mut stream, 7), (0, -1, -1));
}
