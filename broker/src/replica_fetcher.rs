//! The follower's side of replication: one fetcher per leader broker, fetching every partition
//! this broker follows from it in one Fetch request (with this broker's replica id, v12: the
//! last fetched epoch lets the leader say where the logs diverge). Each batch is appended as
//! the leader stored it; a diverging epoch truncates the log to where the leader's epoch ends
//! first (KIP-101/KIP-279: never to the high watermark alone); a log behind the leader's log
//! start restarts there. The fetcher ends when it follows nothing on that leader any more.
//!
//! Invariant: what a follower holds at every offset below its log end is what the leader
//! held there when it was fetched; nothing is appended past a divergence.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::FetchResponse;
use kafka_protocol::messages::{ApiKey, BrokerId, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_storage::{Offset, RecordBatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::partition::Partition;

/// Fetch v12: flexible, with replica ids in the body and diverging epochs in the answer.
const FETCH_VERSION: i16 = 12;
/// How long the leader may hold a fetch with nothing new.
const MAX_WAIT_MS: i32 = 500;
const PARTITION_MAX_BYTES: i32 = 1 << 20;
const RESPONSE_MAX_BYTES: i32 = 16 << 20;
/// After a failed fetch (the leader down, the link cut) the fetcher tries again after this.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// A response frame larger than this is refused (a broken or hostile peer).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Starts and ends the fetchers as the partitions this broker follows change.
pub async fn run(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let mut fetchers: HashMap<i32, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => {
                for (_, fetcher) in fetchers.drain() {
                    fetcher.abort();
                }
                return;
            }
        }
        fetchers.retain(|_, fetcher| !fetcher.is_finished());
        for (leader, _) in broker.replicas.followed() {
            fetchers.entry(leader).or_insert_with(|| tokio::spawn(fetch_from(broker.clone(), leader)));
        }
    }
}

/// One leader's fetcher: fetches until this broker follows nothing there.
async fn fetch_from(broker: Arc<Broker>, leader: i32) {
    let mut connection: Option<TcpStream> = None;
    let mut correlation_id = 0i32;
    loop {
        let partitions: Vec<Arc<Partition>> =
            broker.replicas.followed().into_iter().filter(|(l, _)| *l == leader).map(|(_, p)| p).collect();
        if partitions.is_empty() {
            return;
        }
        if connection.is_none() {
            connection = connect(&broker, leader).await;
            if connection.is_none() {
                tokio::time::sleep(RETRY_BACKOFF).await;
                continue;
            }
        }
        correlation_id = correlation_id.wrapping_add(1);
        let request = fetch_request(broker.config.node_id, &partitions);
        let exchange = exchange(connection.as_mut().expect("connected above"), correlation_id, &request);
        let answer = tokio::time::timeout(Duration::from_millis(MAX_WAIT_MS as u64 + 5_000), exchange).await;
        match answer {
            Ok(Ok(response)) => {
                let broker = broker.clone();
                let applied = tokio::task::spawn_blocking(move || apply(&broker, &partitions, response)).await;
                if !matches!(applied, Ok(true)) {
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
            }
            Ok(Err(err)) => {
                tracing::debug!(leader, %err, "fetching from the leader failed");
                connection = None;
                tokio::time::sleep(RETRY_BACKOFF).await;
            }
            Err(_) => {
                tracing::debug!(leader, "the leader did not answer a fetch in time");
                connection = None;
            }
        }
    }
}

async fn connect(broker: &Broker, leader: i32) -> Option<TcpStream> {
    let metadata = broker.replicas.image();
    let listener = broker.config.inter_broker_listener();
    let endpoint = metadata.brokers.get(&leader)?.endpoint(listener)?.clone();
    let address = format!("{}:{}", endpoint.host, endpoint.port);
    match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(&address)).await {
        Ok(Ok(stream)) => {
            stream.set_nodelay(true).ok();
            Some(stream)
        }
        _ => None,
    }
}

fn fetch_request(node_id: i32, partitions: &[Arc<Partition>]) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for partition in partitions {
        let wanted = FetchPartition::default()
            .with_partition(partition.index)
            .with_current_leader_epoch(-1)
            .with_fetch_offset(partition.log.log_end_offset().0)
            .with_last_fetched_epoch(partition.log.latest_epoch().0)
            .with_log_start_offset(partition.log.log_start_offset().0)
            .with_partition_max_bytes(PARTITION_MAX_BYTES);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == &*partition.topic) {
            Some(topic) => topic.partitions.push(wanted),
            None => topics.push(
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(partition.topic.to_string())))
                    .with_topic_id(partition.topic_id)
                    .with_partitions(vec![wanted]),
            ),
        }
    }
    FetchRequest::default()
        .with_replica_id(BrokerId(node_id))
        .with_max_wait_ms(MAX_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(RESPONSE_MAX_BYTES)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics)
}

async fn exchange(
    stream: &mut TcpStream,
    correlation_id: i32,
    request: &FetchRequest,
) -> std::io::Result<FetchResponse> {
    let invalid = |e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(FETCH_VERSION)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sluice-replica-fetcher")));
    let mut body = BytesMut::new();
    header.encode(&mut body, ApiKey::Fetch.request_header_version(FETCH_VERSION)).map_err(|e| invalid(&e))?;
    request.encode(&mut body, FETCH_VERSION).map_err(|e| invalid(&e))?;
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await?;
    let len = stream.read_i32().await?;
    if len < 0 || len as usize > MAX_RESPONSE_BYTES {
        return Err(invalid(&format!("a {len}-byte fetch response")));
    }
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf).await?;
    let mut bytes = Bytes::from(buf);
    let header = ResponseHeader::decode(&mut bytes, ApiKey::Fetch.response_header_version(FETCH_VERSION))
        .map_err(|e| invalid(&e))?;
    if header.correlation_id != correlation_id {
        return Err(invalid(&"a response to another request"));
    }
    let response = FetchResponse::decode(&mut bytes, FETCH_VERSION).map_err(|e| invalid(&e))?;
    if bytes.has_remaining() {
        tracing::debug!(left = bytes.remaining(), "bytes after a fetch response");
    }
    Ok(response)
}

/// Applies a leader's answer to the followed partitions (blocking: appends and fsyncs).
/// Returns whether it made progress or may fetch again at once.
fn apply(broker: &Broker, partitions: &[Arc<Partition>], response: FetchResponse) -> bool {
    if response.error_code != 0 {
        return false;
    }
    let now_ms = broker.clock.now_ms();
    let mut fine = true;
    for topic in response.responses {
        for data in topic.partitions {
            let Some(partition) =
                partitions.iter().find(|p| *p.topic == *topic.topic.0.as_str() && p.index == data.partition_index)
            else {
                continue;
            };
            if let Err(why) = apply_partition(partition, &data, now_ms) {
                tracing::debug!(topic = %partition.topic, partition = partition.index, %why, "replication paused");
                fine = false;
            }
        }
    }
    fine
}

fn apply_partition(
    partition: &Partition,
    data: &kafka_protocol::messages::fetch_response::PartitionData,
    now_ms: i64,
) -> Result<(), String> {
    let log = &partition.log;
    if data.error_code == ResponseError::OffsetOutOfRange.code() && data.log_start_offset > log.log_end_offset().0 {
        // The leader no longer has what this log would continue with (retention ran there).
        tracing::info!(topic = %partition.topic, partition = partition.index, start = data.log_start_offset, "restarting the follower's log at the leader's log start");
        return log.restart_at(Offset(data.log_start_offset)).map_err(|e| e.to_string());
    }
    if data.error_code != 0 {
        return Err(format!("error code {}", data.error_code));
    }
    if data.diverging_epoch.epoch >= 0 || data.diverging_epoch.end_offset >= 0 {
        let end = data.diverging_epoch.end_offset.min(log.log_end_offset().0).max(0);
        tracing::info!(topic = %partition.topic, partition = partition.index, end, epoch = data.diverging_epoch.epoch, "truncating a diverged follower");
        return log.truncate_to(Offset(end)).map(drop).map_err(|e| e.to_string());
    }
    let mut last = None;
    if let Some(records) = &data.records {
        for batch in RecordBatch::iter_batches(records.clone()) {
            // A response may end with part of a batch (a size limit): the rest comes next time.
            let Ok(batch) = batch else { break };
            if batch.last_offset() < log.log_end_offset().0 {
                continue;
            }
            last = Some(log.append_replicated(batch.as_bytes(), now_ms).map_err(|e| e.to_string())?);
        }
    }
    if let Some(outcome) = last {
        outcome.wait_durable().map_err(|e| e.to_string())?;
    }
    let high_watermark = data.high_watermark.min(log.log_end_offset().0);
    if high_watermark > log.high_watermark().0 {
        log.advance_high_watermark(Offset(high_watermark));
    }
    Ok(())
}
