//! A small blocking Kafka protocol client for the operator commands, speaking to any
//! Kafka-compatible broker as a client would: one connection per broker address, each opened
//! with an ApiVersions exchange so that an API the broker lacks is a clear error rather than a
//! closed socket. Every connect, read and write has a timeout; a response is bounded by
//! `RESPONSE_BYTES_MAX` before anything is allocated, and every decode returns a `Result`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than any broker-side wait these requests can cause (none of them long-polls).
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// A group with thousands of members and partitions describes in a few MiB; anything near
/// this is a broken or hostile peer, refused before the buffer is allocated.
const RESPONSE_BYTES_MAX: usize = 100 << 20;
/// How long a coordinator may be unavailable or loading (a broker that has just started)
/// before the command gives up.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(15);
pub const RETRY_BACKOFF: Duration = Duration::from_millis(100);

pub const METADATA_VERSION: i16 = 9;
pub const LIST_OFFSETS_VERSION: i16 = 7;
pub const FIND_COORDINATOR_VERSION: i16 = 3;
const API_VERSIONS_VERSION: i16 = 3;

/// ListOffsets timestamps with special meanings.
pub const EARLIEST_TIMESTAMP: i64 = -2;
pub const LATEST_TIMESTAMP: i64 = -1;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Kafka's own name for an error code, as its tools print it: `NOT_COORDINATOR`.
pub fn error_name(code: i16) -> String {
    match code.err() {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(code)) => format!("error code {code}"),
        Some(error) => {
            let camel = error.to_string();
            let mut name = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
    }
}

/// The coordinator moved, is starting, or is loading the group: asking again (after finding the
/// coordinator again) succeeds once it settles.
pub fn is_coordinator_error(code: i16) -> bool {
    matches!(
        code.err(),
        Some(
            ResponseError::CoordinatorNotAvailable
                | ResponseError::CoordinatorLoadInProgress
                | ResponseError::NotCoordinator
        )
    )
}

/// The user-facing reason for a socket error: "connection refused", "no response within 30 s".
fn describe_io_error(err: &std::io::Error) -> String {
    match err.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!("no response within {} s", IO_TIMEOUT.as_secs()),
        ErrorKind::UnexpectedEof => "the broker closed the connection".to_string(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => err.kind().to_string(),
        _ => err.to_string(),
    }
}

struct Connection {
    stream: TcpStream,
    /// API key -> (min, max) version the broker advertised.
    versions: HashMap<i16, (i16, i16)>,
}

/// Where the group and partition requests go: the broker addresses and partition leaders.
pub struct Cluster {
    pub brokers: BTreeMap<i32, String>,
    pub topics: BTreeMap<String, TopicMetadata>,
    /// The active controller, as the broker asked says.
    pub controller_id: i32,
}

pub struct TopicMetadata {
    pub error_code: i16,
    /// Partition index -> leader's node id (-1 when it has none).
    pub leaders: BTreeMap<i32, i32>,
    /// Partition index -> (replicas, ISR).
    pub replicas: BTreeMap<i32, (Vec<i32>, Vec<i32>)>,
}

impl Cluster {
    /// The address of the partition's leader, or why there is none.
    pub fn leader(&self, partition: &TopicPartition) -> Result<&str, String> {
        let topic = self.topics.get(&partition.topic).ok_or("UNKNOWN_TOPIC_OR_PARTITION")?;
        if topic.error_code != 0 {
            return Err(error_name(topic.error_code));
        }
        let leader = topic.leaders.get(&partition.partition).ok_or("UNKNOWN_TOPIC_OR_PARTITION")?;
        self.brokers.get(leader).map(String::as_str).ok_or_else(|| "LEADER_NOT_AVAILABLE".to_string())
    }
}

pub struct Client {
    bootstrap: String,
    connections: HashMap<String, Connection>,
    next_correlation_id: i32,
}

impl Client {
    /// Connects to the bootstrap broker at once, so that a wrong address is the first error.
    pub fn connect(bootstrap: &str) -> anyhow::Result<Client> {
        let mut client =
            Client { bootstrap: bootstrap.to_string(), connections: HashMap::new(), next_correlation_id: 1 };
        client.connection(bootstrap)?;
        Ok(client)
    }

    /// Sends `request` at `version` to the broker at `address` and returns its response. An
    /// I/O error drops the connection (the next call reconnects).
    pub fn call<R: Request>(&mut self, address: &str, version: i16, request: &R) -> anyhow::Result<R::Response> {
        let api = ApiKey::try_from(R::KEY).map_err(|()| anyhow!("unknown API key {}", R::KEY))?;
        let connection = self.connection(address)?;
        match connection.versions.get(&R::KEY) {
            Some(&(min, max)) if (min..=max).contains(&version) => {}
            Some(&(min, max)) => {
                bail!("the broker at {address} does not support {api:?} v{version} (it supports v{min} to v{max})")
            }
            None => bail!("the broker at {address} does not support {api:?} (it does not advertise it)"),
        }
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let result = exchange(
            &mut self.connections.get_mut(address).expect("connected above").stream,
            api,
            version,
            correlation_id,
            request,
        );
        if result.is_err() {
            self.connections.remove(address);
        }
        result.with_context(|| format!("{api:?} to {address} failed"))
    }

    fn connection(&mut self, address: &str) -> anyhow::Result<&mut Connection> {
        if !self.connections.contains_key(address) {
            let mut stream = open(address)?;
            let correlation_id = self.next_correlation_id;
            self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
            let request = ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("sluice-cli"))
                .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
            let response = exchange(&mut stream, ApiKey::ApiVersions, API_VERSIONS_VERSION, correlation_id, &request)
                .with_context(|| format!("ApiVersions to {address} failed"))?;
            if response.error_code != 0 {
                bail!("the broker at {address} refused ApiVersions: {}", error_name(response.error_code));
            }
            let versions = response.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
            self.connections.insert(address.to_string(), Connection { stream, versions });
        }
        Ok(self.connections.get_mut(address).expect("inserted above"))
    }

    /// The brokers, and the leaders of `topics`' partitions (`None`: every topic). Never
    /// creates a topic.
    pub fn metadata(&mut self, topics: Option<&[String]>) -> anyhow::Result<Cluster> {
        let request =
            MetadataRequest::default().with_allow_auto_topic_creation(false).with_topics(topics.map(|topics| {
                topics
                    .iter()
                    .map(|t| {
                        MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                    })
                    .collect()
            }));
        let bootstrap = self.bootstrap.clone();
        let response = self.call(&bootstrap, METADATA_VERSION, &request)?;
        let brokers =
            response.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
        let topics = response
            .topics
            .iter()
            .filter_map(|topic| {
                let name = topic.name.as_ref()?.to_string();
                let leaders = topic.partitions.iter().map(|p| (p.partition_index, p.leader_id.0)).collect();
                let ids = |nodes: &[kafka_protocol::messages::BrokerId]| nodes.iter().map(|n| n.0).collect::<Vec<_>>();
                let replicas = topic
                    .partitions
                    .iter()
                    .map(|p| (p.partition_index, (ids(&p.replica_nodes), ids(&p.isr_nodes))))
                    .collect();
                Some((name, TopicMetadata { error_code: topic.error_code, leaders, replicas }))
            })
            .collect();
        Ok(Cluster { brokers, topics, controller_id: response.controller_id.0 })
    }

    /// The brokers, and the leaders of the partitions of every topic among `partitions`.
    pub fn metadata_of(&mut self, partitions: &[TopicPartition]) -> anyhow::Result<Cluster> {
        let topics: BTreeSet<&String> = partitions.iter().map(|p| &p.topic).collect();
        let topics: Vec<String> = topics.into_iter().cloned().collect();
        self.metadata(Some(&topics))
    }

    /// The address of the group's coordinator, asking again while the answer is that it is not
    /// available yet.
    pub fn find_coordinator(&mut self, group: &str) -> anyhow::Result<String> {
        self.find_coordinator_of(group, 0)
    }

    /// [`Client::find_coordinator`] for a group (`key_type` 0) or a transactional id (1).
    pub fn find_coordinator_of(&mut self, key: &str, key_type: i8) -> anyhow::Result<String> {
        let group = key;
        let deadline = Instant::now() + RETRY_DEADLINE;
        let request =
            FindCoordinatorRequest::default().with_key(StrBytes::from_string(key.to_string())).with_key_type(key_type);
        let bootstrap = self.bootstrap.clone();
        loop {
            let response = self.call(&bootstrap, FIND_COORDINATOR_VERSION, &request)?;
            match response.error_code {
                0 => return Ok(format!("{}:{}", response.host.as_str(), response.port)),
                code if is_coordinator_error(code) && Instant::now() < deadline => std::thread::sleep(RETRY_BACKOFF),
                code => bail!("cannot find the coordinator of {group}: {}", error_name(code)),
            }
        }
    }

    /// The offset ListOffsets gives for each partition at `timestamp` (or `EARLIEST_TIMESTAMP`,
    /// `LATEST_TIMESTAMP`), asked of each partition's leader; per partition, the offset or why
    /// there is none. A timestamp past every record gives -1, as in Kafka.
    pub fn list_offsets(
        &mut self,
        cluster: &Cluster,
        partitions: &[TopicPartition],
        timestamp: i64,
    ) -> anyhow::Result<BTreeMap<TopicPartition, Result<i64, String>>> {
        let mut results = BTreeMap::new();
        let mut by_leader: BTreeMap<&str, BTreeMap<&str, Vec<i32>>> = BTreeMap::new();
        for partition in partitions {
            match cluster.leader(partition) {
                Ok(leader) => {
                    by_leader.entry(leader).or_default().entry(&partition.topic).or_default().push(partition.partition)
                }
                Err(reason) => {
                    results.insert(partition.clone(), Err(reason));
                }
            }
        }
        for (leader, topics) in by_leader {
            let request =
                ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_isolation_level(0).with_topics(
                    topics
                        .iter()
                        .map(|(topic, indexes)| {
                            ListOffsetsTopic::default()
                                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                                .with_partitions(
                                    indexes
                                        .iter()
                                        .map(|&index| {
                                            ListOffsetsPartition::default()
                                                .with_partition_index(index)
                                                .with_current_leader_epoch(-1)
                                                .with_timestamp(timestamp)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
            let response = self.call(leader, LIST_OFFSETS_VERSION, &request)?;
            for topic in &response.topics {
                for answer in &topic.partitions {
                    let partition = TopicPartition { topic: topic.name.to_string(), partition: answer.partition_index };
                    let offset =
                        if answer.error_code == 0 { Ok(answer.offset) } else { Err(error_name(answer.error_code)) };
                    results.insert(partition, offset);
                }
            }
            for (topic, indexes) in topics {
                for partition in indexes {
                    results
                        .entry(TopicPartition { topic: topic.to_string(), partition })
                        .or_insert_with(|| Err(format!("no answer from {leader}")));
                }
            }
        }
        Ok(results)
    }
}

fn open(address: &str) -> anyhow::Result<TcpStream> {
    let addresses: Vec<_> = address
        .to_socket_addrs()
        .map_err(|err| anyhow!("cannot resolve {address}: {err}; give the broker as HOST:PORT"))?
        .collect();
    let mut last_error = None;
    for socket_address in addresses {
        match TcpStream::connect_timeout(&socket_address, CONNECT_TIMEOUT) {
            Ok(stream) => {
                let configured = stream
                    .set_read_timeout(Some(IO_TIMEOUT))
                    .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
                    .and_then(|()| stream.set_nodelay(true));
                configured.map_err(|err| anyhow!("cannot configure the socket to {address}: {err}"))?;
                return Ok(stream);
            }
            Err(err) => last_error = Some(err),
        }
    }
    match last_error {
        Some(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            bail!("cannot connect to {address}: no answer within {} s", CONNECT_TIMEOUT.as_secs())
        }
        Some(err) => bail!("cannot connect to {address}: {}", describe_io_error(&err)),
        None => bail!("cannot connect to {address}: it resolves to no address"),
    }
}

/// Writes one request and reads its response on a connection with nothing else in flight.
fn exchange<R: Request>(
    stream: &mut TcpStream,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &R,
) -> anyhow::Result<R::Response> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sluice-cli")));
    let mut frame = BytesMut::new();
    frame.extend_from_slice(&[0; 4]);
    header.encode(&mut frame, R::header_version(version)).context("cannot encode the request header")?;
    request.encode(&mut frame, version).with_context(|| format!("cannot encode {api:?} v{version}"))?;
    let size = i32::try_from(frame.len() - 4).context("the request is larger than 2 GiB")?;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    stream.write_all(&frame).map_err(|err| anyhow!("{}", describe_io_error(&err)))?;

    let mut size = [0u8; 4];
    stream.read_exact(&mut size).map_err(|err| anyhow!("{}", describe_io_error(&err)))?;
    let size = i32::from_be_bytes(size);
    let size = usize::try_from(size)
        .ok()
        .filter(|&size| size <= RESPONSE_BYTES_MAX)
        .ok_or_else(|| anyhow!("the response claims {size} bytes, outside 0 to {RESPONSE_BYTES_MAX}"))?;
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).map_err(|err| anyhow!("{}", describe_io_error(&err)))?;
    let mut body = Bytes::from(body);
    let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
        .map_err(|err| anyhow!("cannot decode the response header: {err}"))?;
    if header.correlation_id != correlation_id {
        bail!("the response has correlation id {}, expected {correlation_id}", header.correlation_id);
    }
    R::Response::decode(&mut body, version).map_err(|err| anyhow!("cannot decode the v{version} response: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(16), "NOT_COORDINATOR");
        assert_eq!(error_name(68), "NON_EMPTY_GROUP");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(9999), "error code 9999");
        assert!(is_coordinator_error(14) && is_coordinator_error(15) && is_coordinator_error(16));
        assert!(!is_coordinator_error(25));
    }
}
