//! Produce: each partition's record batch is validated and appended exactly as the client
//! sent it (the log stamps only the base offset and leader epoch). acks=0 gets no response;
//! acks=1 and -1 wait until the append is as durable as the topic's flush policy promises
//! (on one node the ISR is this broker alone, so -1 and 1 wait for the same thing).

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, ProduceResponse,
    TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, RequestHeader};
use sluice_storage::format;

use super::str_bytes;
use crate::broker::Broker;
use crate::error::storage_error_code;
use crate::partition::{Partition, PendingAppend};

fn partition_error(index: i32, code: ResponseError, message: Option<String>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code.code())
        .with_base_offset(-1)
        .with_error_message(message.map(str_bytes))
}

/// Appends one partition's records; returns the response and the append to wait on.
fn append(
    broker: &Broker,
    partition: &Arc<Partition>,
    index: i32,
    records: Option<&[u8]>,
    transactional_id: Option<&str>,
    now_ms: i64,
) -> (PartitionProduceResponse, Option<PendingAppend>) {
    let Some(records) = records.filter(|r| !r.is_empty()) else {
        return (partition_error(index, ResponseError::CorruptMessage, Some("no record batch".into())), None);
    };
    // Produce v3+ carries exactly one batch per partition (as Kafka requires).
    if let Ok(size) = format::check_framing(records) {
        if size < records.len() {
            let message = "a produce request must carry exactly one record batch per partition".to_string();
            return (partition_error(index, ResponseError::InvalidRecord, Some(message)), None);
        }
    }
    let append = || partition.append(records, now_ms);
    let appended = match format::peek_producer(records) {
        Some((producer_id, true)) => {
            // KIP-890: a transactional batch only goes into a partition of its producer's
            // ongoing transaction, checked and appended under the transaction's lock, so a
            // late or retried write cannot slip past the transaction's end.
            let epoch = format::peek_producer_epoch(records).unwrap_or(-1);
            let checked = match transactional_id.filter(|id| !broker.txns.coordinates(id)) {
                // Another broker coordinates the transaction: it is asked (blocking this
                // worker for a round trip, once per transaction and partition).
                Some(id) => tokio::task::block_in_place(|| {
                    broker.txns.verify_remotely(id, producer_id, epoch, &partition.topic, index)
                })
                .map(|()| append()),
                None => broker.txns.in_transaction(producer_id, epoch, &partition.topic, index, append),
            };
            match checked {
                Ok(appended) => appended,
                Err(code) => {
                    let message =
                        format!("producer {producer_id} epoch {epoch} has no ongoing transaction with this partition");
                    return (partition_error(index, code, Some(message)), None);
                }
            }
        }
        _ => append(),
    };
    match appended {
        Ok(pending) => {
            let log_start_offset = partition.log.log_start_offset().0;
            let response = PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(pending.base_offset().0)
                .with_log_append_time_ms(pending.log_append_time_ms().unwrap_or(-1))
                .with_log_start_offset(log_start_offset);
            (response, Some(pending))
        }
        Err(err) => {
            let code = storage_error_code(&err);
            tracing::debug!(topic = %partition.topic, partition = index, %err, "produce refused");
            let mut response = partition_error(index, code, Some(err.to_string()));
            // KIP-467: which record of the batch was refused (read from v8).
            if let Some(record) = err.record_index() {
                response.record_errors = vec![BatchIndexAndErrorMessage::default()
                    .with_batch_index(record)
                    .with_batch_index_error_message(Some(str_bytes(err.to_string())))];
            }
            (response, None)
        }
    }
}

/// An append still waiting to be durable, and where its response sits.
struct PendingDurability {
    topic_index: usize,
    partition_index: usize,
    append: PendingAppend,
}

/// What a produce request gets back.
pub enum ProduceReply {
    Respond(ProduceResponse),
    /// acks=0: no response at all.
    NoResponse,
    /// acks=0 with a refused batch.
    Close(String),
    /// acks=all waiting for the ISR: the response once it has the appends. The connection
    /// reads its next requests meanwhile (as Kafka's purgatory lets it), so a producer's
    /// pipelined requests each wait one replication round trip, not the sum of them.
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = ProduceResponse> + Send>>),
}

pub async fn handle(
    broker: &Arc<Broker>,
    listener: &str,
    _header: &RequestHeader,
    request: ProduceRequest,
) -> ProduceReply {
    let acks = request.acks;
    let transactional_id = request.transactional_id.as_ref().map(|id| id.0.as_str());
    let now_ms = broker.clock.now_ms();
    let mut responses = Vec::with_capacity(request.topic_data.len());
    let mut pending = Vec::new();
    let mut replicated = Vec::new();
    let mut hinted = Vec::new();
    for topic in request.topic_data {
        let name = topic.name.0.as_str().to_string();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for data in topic.partition_data {
            let index = data.index;
            let response = if !matches!(acks, -1..=1) {
                partition_error(
                    index,
                    ResponseError::InvalidRequiredAcks,
                    Some(format!("acks must be -1, 0 or 1, got {acks}")),
                )
            } else if crate::internal_topics::is_internal_topic(&name) {
                // Kafka's answer to a client writing the coordinator's own records.
                partition_error(
                    index,
                    ResponseError::InvalidTopicException,
                    Some(format!("cannot append to internal topic {name}")),
                )
            } else {
                match super::leader_partition(broker, &name, index, -1) {
                    Err(code) => {
                        let mut response = partition_error(index, code, None);
                        if code == ResponseError::NotLeaderOrFollower {
                            if let Some((leader, epoch)) = super::new_leader(broker, &name, index) {
                                response.current_leader = LeaderIdAndEpoch::default()
                                    .with_leader_id(BrokerId(leader))
                                    .with_leader_epoch(epoch);
                                hinted.push(leader);
                            }
                        }
                        response
                    }
                    Ok(partition)
                        if acks == -1 && (partition.isr_len() as i32) < partition.log.min_insync_replicas() =>
                    {
                        // acks=all needs min.insync.replicas in sync before it appends (acks 0
                        // and 1 do not).
                        let needed = partition.log.min_insync_replicas();
                        let message = format!(
                            "min.insync.replicas is {needed}, but {} replica(s) are in sync",
                            partition.isr_len()
                        );
                        partition_error(index, ResponseError::NotEnoughReplicas, Some(message))
                    }
                    Ok(partition) => {
                        let (response, appended) =
                            append(broker, &partition, index, data.records.as_deref(), transactional_id, now_ms);
                        if acks == -1 && partition.has_insync_followers() {
                            if let Some(append) = &appended {
                                replicated.push((
                                    responses.len(),
                                    partitions.len(),
                                    partition.clone(),
                                    append.end_offset(),
                                ));
                            }
                        }
                        // An append that needs no wait is durable, and visible, already.
                        if let Some(append) = appended.filter(PendingAppend::must_wait) {
                            pending.push(PendingDurability {
                                topic_index: responses.len(),
                                partition_index: partitions.len(),
                                append,
                            });
                        }
                        response
                    }
                }
            };
            partitions.push(response);
        }
        responses.push(
            TopicProduceResponse::default().with_name(super::topic_name(&name)).with_partition_responses(partitions),
        );
    }
    let node_endpoints: Vec<NodeEndpoint> = super::hinted_endpoints(broker, listener, &hinted)
        .into_iter()
        .map(|(id, e)| {
            NodeEndpoint::default().with_node_id(BrokerId(id)).with_host(str_bytes(e.host)).with_port(i32::from(e.port))
        })
        .collect();
    let refused = responses.iter().flat_map(|t| &t.partition_responses).any(|p| p.error_code != 0);
    let replication_timeout = Duration::from_millis(request.timeout_ms.clamp(0, 300_000) as u64);
    let durability = (!pending.is_empty()).then(|| tokio::spawn(wait_durable(pending)));
    if acks == 0 {
        // No response, but the high watermark still moves once the data is durable. A refused
        // batch closes the connection, as in Kafka: the client's only hint to refresh metadata.
        return if refused { ProduceReply::Close("acks=0 produce refused".into()) } else { ProduceReply::NoResponse };
    }
    let Some(durability) = durability else {
        if replicated.is_empty() {
            return ProduceReply::Respond(
                ProduceResponse::default().with_responses(responses).with_node_endpoints(node_endpoints),
            );
        }
        let broker = broker.clone();
        return ProduceReply::Later(Box::pin(async move {
            wait_replicated(&broker, &mut responses, replicated, replication_timeout).await;
            ProduceResponse::default().with_responses(responses).with_node_endpoints(node_endpoints)
        }));
    };
    let failures = match durability.await {
        Ok(failures) => failures,
        Err(join) => {
            // The waiting task itself died: nothing pending can be acknowledged.
            let reason = format!("durability wait failed: {join}");
            let all =
                responses.iter().enumerate().flat_map(|(t, r)| (0..r.partition_responses.len()).map(move |p| (t, p)));
            all.filter(|(t, p)| responses[*t].partition_responses[*p].error_code == 0)
                .map(|(t, p)| (t, p, reason.clone()))
                .collect()
        }
    };
    for (t, p, err) in failures {
        if let Some(response) = responses.get_mut(t).and_then(|r| r.partition_responses.get_mut(p)) {
            response.error_code = ResponseError::KafkaStorageError.code();
            response.error_message = Some(str_bytes(err));
        }
    }
    wait_replicated(broker, &mut responses, replicated, replication_timeout).await;
    ProduceReply::Respond(ProduceResponse::default().with_responses(responses).with_node_endpoints(node_endpoints))
}

/// acks=all: waits until every in-sync replica has each append (the high watermark passes
/// it), failing those that do not get there in time or whose ISR shrank below
/// `min.insync.replicas`.
async fn wait_replicated(
    broker: &Broker,
    responses: &mut [TopicProduceResponse],
    replicated: Vec<(usize, usize, Arc<crate::partition::Partition>, sluice_storage::Offset)>,
    timeout: Duration,
) {
    for (t, p, partition, end) in replicated {
        let Some(response) = responses.get_mut(t).and_then(|r| r.partition_responses.get_mut(p)) else { continue };
        if response.error_code != 0 {
            continue;
        }
        if let Err(code) = partition.wait_replicated(end, timeout, || broker.cut_off_from_quorum()).await {
            response.error_code = code.code();
            response.error_message =
                Some(str_bytes(format!("the in-sync replicas did not all get the append: {code:?}")));
        }
    }
}

/// Waits (on a blocking thread: fsyncs block; group commit lets concurrent producers share
/// them) until each append is durable, which makes it visible. Returns the appends that
/// failed, with the reason.
async fn wait_durable(pending: Vec<PendingDurability>) -> Vec<(usize, usize, String)> {
    let positions: Vec<(usize, usize)> = pending.iter().map(|p| (p.topic_index, p.partition_index)).collect();
    let waited = tokio::task::spawn_blocking(move || {
        pending
            .into_iter()
            .filter_map(|p| match p.append.wait_durable() {
                Ok(_) => None,
                Err(err) => {
                    tracing::error!(%err, "append not durable");
                    Some((p.topic_index, p.partition_index, err.to_string()))
                }
            })
            .collect()
    })
    .await;
    waited.unwrap_or_else(|join| {
        positions.into_iter().map(|(t, p)| (t, p, format!("durability wait failed: {join}"))).collect()
    })
}
