//! Fetch: whole stored batches from each partition, as `Bytes` slices of the mapped segments
//! (spliced into the response without a copy), bounded by the high watermark, or for
//! read_committed by the last stable offset with the aborted transactions listed. Long polling:
//! when less than `min_bytes` is available the request waits, woken by appends, until
//! `max_wait_ms`. Incremental fetch sessions (KIP-227) are in `fetch_session`: a session's
//! request is read as the full set of partitions it holds, and the response cut to those with
//! something new.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchResponse, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{BrokerId, ProducerId, RequestHeader};
use sluice_storage::Offset;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::check_leader_epoch;
use crate::broker::Broker;
use crate::error::storage_error_code;
use crate::fetch_session::{FetchContext, READ_COMMITTED};
use crate::partition::Partition;

/// Fetch waits are bounded even if a client asks for longer.
const MAX_WAIT_MS: i32 = 300_000;

pub async fn handle(
    broker: &Arc<Broker>,
    listener: &str,
    header: &RequestHeader,
    request: FetchRequest,
) -> (FetchResponse, Vec<Bytes>) {
    let version = header.request_api_version;
    if let Some(replica) = super::replica_fetch::replica_of(&request, version) {
        return super::replica_fetch::handle(broker, version, replica, request).await;
    }
    let metadata = broker.metadata();
    let resolve = |topic: &FetchTopic, partition: i32| {
        let name = if version >= 13 {
            metadata.topic_by_id(&topic.topic_id).map(|t| t.name.clone())
        } else {
            Some(topic.topic.0.to_string())
        };
        broker.replicas.partition(&name?, partition)
    };
    let context = match broker.fetch_sessions.context(&request, version, &resolve) {
        Ok(context) => context,
        // The client answers these with a full fetch that opens a new session.
        Err(code) => return (FetchResponse::default().with_error_code(code.code()), Vec::new()),
    };
    let (read, response, records) = poll(broker, listener, version, &request, &context).await;
    let read = read.as_ref().unwrap_or(&request);
    (context.finish(&broker.fetch_sessions, read, response, version, &resolve), records)
}

/// Reads the request's partitions (those of its session that are not quiet), long polling
/// until `min_bytes` are there or `max_wait_ms` has passed. Returns what it read last (None:
/// the request as it is), and the response.
async fn poll(
    broker: &Arc<Broker>,
    listener: &str,
    version: i16,
    request: &FetchRequest,
    context: &FetchContext,
) -> (Option<FetchRequest>, FetchResponse, Vec<Bytes>) {
    let deadline = Instant::now() + Duration::from_millis(request.max_wait_ms.clamp(0, MAX_WAIT_MS) as u64);
    let min_bytes = request.min_bytes.max(0) as usize;
    // One wake-up for this request, registered with each partition it reads before every
    // read, so a commit in between leaves a permit and is not missed.
    let committed = Arc::new(Notify::new());
    loop {
        let wake = (min_bytes > 0).then_some(&committed);
        let read = context.effective_request(request, wake);
        let (response, records, bytes, errors) =
            read_once(broker, listener, version, read.as_ref().unwrap_or(request), wake);
        if bytes >= min_bytes || errors || Instant::now() >= deadline {
            return (read, response, records);
        }
        if tokio::time::timeout_at(deadline, committed.notified()).await.is_err() {
            let read = context.effective_request(request, None);
            let (response, records, ..) = read_once(broker, listener, version, read.as_ref().unwrap_or(request), None);
            return (read, response, records);
        }
    }
}

/// One pass over the requested partitions: the response, the record sets in it, their total
/// size, and whether any partition reported an error (which ends a long poll at once).
fn read_once(
    broker: &Broker,
    listener: &str,
    version: i16,
    request: &FetchRequest,
    wake: Option<&Arc<Notify>>,
) -> (FetchResponse, Vec<Bytes>, usize, bool) {
    let metadata = broker.metadata();
    let mut pass = Pass {
        broker,
        version,
        read_committed: request.isolation_level == READ_COMMITTED,
        wake,
        budget: if request.max_bytes > 0 { request.max_bytes as usize } else { usize::MAX },
        records: Vec::new(),
        total: 0,
        any_error: false,
        hinted: Vec::new(),
    };
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            // From v13 topics are named by id.
            let name = if version >= 13 {
                metadata.topic_by_id(&topic.topic_id).map(|t| t.name.clone())
            } else {
                Some(topic.topic.0.as_str().to_string())
            };
            let partitions =
                topic.partitions.iter().map(|wanted| pass.read_partition(name.as_deref(), topic, wanted)).collect();
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    let node_endpoints = super::hinted_endpoints(broker, listener, &pass.hinted)
        .into_iter()
        .map(|(id, e)| {
            NodeEndpoint::default()
                .with_node_id(BrokerId(id))
                .with_host(super::str_bytes(e.host))
                .with_port(i32::from(e.port))
        })
        .collect();
    let response = FetchResponse::default().with_responses(topics).with_node_endpoints(node_endpoints);
    (response, pass.records, pass.total, pass.any_error)
}

/// What one pass over the partitions has gathered so far.
struct Pass<'a> {
    broker: &'a Broker,
    version: i16,
    read_committed: bool,
    wake: Option<&'a Arc<Notify>>,
    /// Bytes the response may still carry (`max_bytes`, KIP-74).
    budget: usize,
    records: Vec<Bytes>,
    total: usize,
    any_error: bool,
    /// Brokers named as new leaders in this response (KIP-951).
    hinted: Vec<i32>,
}

impl Pass<'_> {
    /// The partition a fetch names, if this broker leads it at the epoch the client expects.
    fn partition(
        &self,
        name: Option<&str>,
        topic: &FetchTopic,
        wanted: &FetchPartition,
    ) -> Result<Arc<Partition>, ResponseError> {
        // By id (v13+), the partition must still belong to that topic: a topic deleted and
        // recreated under the same name has a new id.
        let Some(name) = name else {
            return Err(if self.version >= 13 {
                ResponseError::UnknownTopicId
            } else {
                ResponseError::UnknownTopicOrPartition
            });
        };
        let partition = self.broker.replicas.partition(name, wanted.partition);
        let partition = match partition {
            Some(p) if self.version >= 13 && p.topic_id != topic.topic_id => return Err(ResponseError::UnknownTopicId),
            Some(p) if p.is_leader() && !self.broker.cut_off_from_quorum() => p,
            _ => return Err(super::not_led_here(self.broker, name, wanted.partition)),
        };
        check_leader_epoch(partition.leader_epoch(), wanted.current_leader_epoch)?;
        Ok(partition)
    }

    fn read_partition(&mut self, name: Option<&str>, topic: &FetchTopic, wanted: &FetchPartition) -> PartitionData {
        let data = PartitionData::default()
            .with_partition_index(wanted.partition)
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1)
            .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1))
            .with_records(Some(Bytes::new()));
        let partition = match self.partition(name, topic, wanted) {
            Ok(partition) => partition,
            Err(code) => {
                self.any_error = true;
                let mut data = data.with_error_code(code.code());
                // KIP-951: where the partition is led now.
                let moved = name.filter(|_| code == ResponseError::NotLeaderOrFollower);
                if let Some((leader, epoch)) = moved.and_then(|n| super::new_leader(self.broker, n, wanted.partition)) {
                    data.current_leader =
                        LeaderIdAndEpoch::default().with_leader_id(BrokerId(leader)).with_leader_epoch(epoch);
                    self.hinted.push(leader);
                }
                return data;
            }
        };
        if let Some(wake) = self.wake {
            partition.register_fetch_waiter(wake);
        }
        let bounds = partition.log.read_bounds();
        let (high_watermark, last_stable_offset) = (bounds.high_watermark, bounds.last_stable_offset);
        let limit = if self.read_committed { last_stable_offset } else { high_watermark };
        // read_committed consumers drop the records of aborted transactions themselves:
        // they get the list of those overlapping what they may read.
        let aborted = self.read_committed.then(|| {
            let aborted = partition.log.aborted_transactions(Offset(wanted.fetch_offset), limit);
            aborted
                .into_iter()
                .map(|a| {
                    AbortedTransaction::default()
                        .with_producer_id(ProducerId(a.producer_id))
                        .with_first_offset(a.first_offset)
                })
                .collect()
        });
        let data = data
            .with_high_watermark(high_watermark.0)
            .with_last_stable_offset(last_stable_offset.0)
            .with_log_start_offset(bounds.log_start_offset.0)
            .with_aborted_transactions(aborted);
        // KIP-74: once the response is full, later partitions come back empty. A consumer
        // caught up (the common case of an idle partition) has nothing to read.
        if self.budget == 0 || wanted.fetch_offset == limit.0 {
            return data;
        }
        let max_bytes = (wanted.partition_max_bytes.max(0) as usize).min(self.budget);
        match partition.log.read(Offset(wanted.fetch_offset), max_bytes, limit) {
            // KIP-74: only the first partition with data may exceed the response budget (so
            // a large batch can always make progress); later ones wait for the next fetch.
            Ok(read) if !self.records.is_empty() && read.records.len() > self.budget => {
                self.budget = 0;
                data.with_log_start_offset(read.log_start_offset.0)
            }
            Ok(read) => {
                self.budget = self.budget.saturating_sub(read.records.len());
                self.total += read.records.len();
                if !read.records.is_empty() {
                    self.records.push(read.records.clone());
                }
                data.with_log_start_offset(read.log_start_offset.0).with_records(Some(read.records))
            }
            Err(err) => {
                self.any_error = true;
                data.with_error_code(storage_error_code(&err).code())
            }
        }
    }
}
