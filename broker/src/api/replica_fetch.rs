//! Fetch from a follower (a request with a replica id): the leader's side of replication.
//! A follower reads past the high watermark, up to the leader's log end; its fetch offset
//! tells the leader what it has (which moves the high watermark and keeps it in the ISR);
//! a fetch whose last fetched epoch the leader's log does not end the same way is answered
//! with the diverging epoch and its end (KIP-320), so the follower truncates before it
//! appends. Followers are sessionless, and long-poll on the log end, not the high watermark.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest};
use kafka_protocol::messages::fetch_response::{EpochEndOffset, FetchResponse, FetchableTopicResponse, PartitionData};
use sluice_storage::{LeaderEpoch, Offset};

use super::check_leader_epoch;
use crate::broker::Broker;
use crate::error::storage_error_code;
use crate::partition::Partition;

/// A follower's long poll is bounded even if it asks for longer.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// The replica a fetch comes from, if it comes from one (v15+ name it in the replica state).
pub fn replica_of(request: &FetchRequest, version: i16) -> Option<i32> {
    let id = if version >= 15 { request.replica_state.replica_id.0 } else { request.replica_id.0 };
    (id >= 0).then_some(id)
}

pub async fn handle(
    broker: &Arc<Broker>,
    version: i16,
    replica: i32,
    request: FetchRequest,
) -> (FetchResponse, Vec<Bytes>) {
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (response, records, bytes, waiting_on) = read_once(broker, version, replica, &request);
        let now = tokio::time::Instant::now();
        if bytes > 0 || request.min_bytes <= 0 || now >= deadline || waiting_on.is_empty() {
            return (response, records);
        }
        // Wait for any of the partitions to grow, then read again (recording the follower's
        // offsets again does no harm).
        let waits =
            waiting_on.iter().map(|(partition, offset)| Box::pin(partition.wait_for_data(*offset, deadline - now)));
        futures::future::select_all(waits).await;
    }
}

type Read = (FetchResponse, Vec<Bytes>, usize, Vec<(Arc<Partition>, i64)>);

fn read_once(broker: &Broker, version: i16, replica: i32, request: &FetchRequest) -> Read {
    let metadata = broker.metadata();
    let now_ms = broker.clock.now_ms();
    let mut records = Vec::new();
    let mut total = 0usize;
    let mut waiting_on = Vec::new();
    let mut budget = if request.max_bytes > 0 { request.max_bytes as usize } else { usize::MAX };
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let name = if version >= 13 {
                metadata.topic_by_id(&topic.topic_id).map(|t| t.name.clone())
            } else {
                Some(topic.topic.0.as_str().to_string())
            };
            let partitions = topic
                .partitions
                .iter()
                .map(|wanted| {
                    let data = PartitionData::default()
                        .with_partition_index(wanted.partition)
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_log_start_offset(-1)
                        .with_records(Some(Bytes::new()));
                    let partition = match name.as_deref().map(|n| leader_for(broker, n, replica, wanted)) {
                        Some(Ok(partition)) => partition,
                        Some(Err(code)) => return data.with_error_code(code.code()),
                        None => return data.with_error_code(ResponseError::UnknownTopicId.code()),
                    };
                    let (data, read) = read_partition(&partition, replica, wanted, data, budget, now_ms);
                    if let Some(read) = read {
                        budget = budget.saturating_sub(read.len());
                        total += read.len();
                        records.push(read);
                    } else if data.error_code == 0 && data.diverging_epoch.epoch < 0 {
                        waiting_on.push((partition.clone(), wanted.fetch_offset));
                    }
                    data
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    (FetchResponse::default().with_responses(topics), records, total, waiting_on)
}

/// The partition, if this broker leads it at the follower's epoch and the follower is one
/// of its replicas.
fn leader_for(
    broker: &Broker,
    topic: &str,
    replica: i32,
    wanted: &FetchPartition,
) -> Result<Arc<Partition>, ResponseError> {
    let partition = super::leader_partition(broker, topic, wanted.partition, -1)?;
    if !partition.is_replica(replica) {
        return Err(ResponseError::NotLeaderOrFollower);
    }
    check_leader_epoch(partition.leader_epoch(), wanted.current_leader_epoch)?;
    Ok(partition)
}

fn read_partition(
    partition: &Partition,
    replica: i32,
    wanted: &FetchPartition,
    data: PartitionData,
    budget: usize,
    now_ms: i64,
) -> (PartitionData, Option<Bytes>) {
    let log = &partition.log;
    let (log_start, log_end) = (log.log_start_offset().0, log.log_end_offset().0);
    let data = data.with_log_start_offset(log_start).with_high_watermark(log.high_watermark().0);
    if wanted.last_fetched_epoch >= 0 {
        let (epoch, end) = log.end_offset_for_epoch(LeaderEpoch(wanted.last_fetched_epoch));
        if epoch.0 != wanted.last_fetched_epoch || end.0 < wanted.fetch_offset {
            // The follower's log goes on past where this one's epoch ends: it must truncate.
            let diverging = EpochEndOffset::default().with_epoch(epoch.0).with_end_offset(end.0);
            return (data.with_diverging_epoch(diverging), None);
        }
    }
    if wanted.fetch_offset < log_start || wanted.fetch_offset > log_end {
        return (data.with_error_code(ResponseError::OffsetOutOfRange.code()), None);
    }
    partition.record_follower_fetch(replica, wanted.fetch_offset, now_ms);
    let data = data.with_high_watermark(log.high_watermark().0);
    if wanted.fetch_offset == log_end || budget == 0 {
        return (data, None);
    }
    let max_bytes = (wanted.partition_max_bytes.max(0) as usize).min(budget);
    match log.read(Offset(wanted.fetch_offset), max_bytes, Offset(log_end)) {
        Ok(read) if read.records.is_empty() => (data, None),
        Ok(read) => (data.with_records(Some(read.records.clone())), Some(read.records)),
        Err(err) => (data.with_error_code(storage_error_code(&err).code()), None),
    }
}
