//! Produce: each partition's record batch is validated and appended exactly as the client
//! sent it (the log stamps only the base offset and leader epoch). acks=0 gets no response;
//! acks=1 and -1 wait until the append is as durable as the topic's flush policy promises
//! (on one node the ISR is this broker alone, so -1 and 1 wait for the same thing).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, ProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::RequestHeader;
use sluice_storage::{batch, DurableHandle, LeaderEpoch};

use super::str_bytes;
use crate::broker::Broker;
use crate::error::storage_error_code;
use crate::replica_manager::Partition;

fn partition_error(index: i32, code: ResponseError, message: Option<String>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code.code())
        .with_base_offset(-1)
        .with_error_message(message.map(str_bytes))
}

/// Appends one partition's records; returns the response and what to wait on for durability.
fn append(
    partition: &Partition,
    index: i32,
    records: Option<&[u8]>,
    now_ms: i64,
) -> (PartitionProduceResponse, Option<DurableHandle>) {
    let Some(records) = records.filter(|r| !r.is_empty()) else {
        return (partition_error(index, ResponseError::CorruptMessage, Some("no record batch".into())), None);
    };
    // Produce v3+ carries exactly one batch per partition (as Kafka requires).
    if let Ok(size) = batch::check_framing(records) {
        if size < records.len() {
            let message = "a produce request must carry exactly one record batch per partition".to_string();
            return (partition_error(index, ResponseError::InvalidRecord, Some(message)), None);
        }
    }
    if batch::peek_producer(records).is_some_and(|(producer_id, transactional)| producer_id >= 0 || transactional) {
        let message = "idempotent and transactional producers are not supported yet".to_string();
        return (partition_error(index, ResponseError::InvalidRecord, Some(message)), None);
    }
    match partition.log.append(records, LeaderEpoch(Partition::LEADER_EPOCH), now_ms) {
        Ok(outcome) => {
            let log_start_offset = partition.log.log_start_offset().0;
            let response = PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(outcome.base_offset.0)
                .with_log_append_time_ms(outcome.log_append_time_ms.unwrap_or(-1))
                .with_log_start_offset(log_start_offset);
            (response, Some(outcome.durable_handle()))
        }
        Err(err) => {
            let code = storage_error_code(&err);
            tracing::debug!(topic = %partition.topic, partition = index, %err, "produce refused");
            (partition_error(index, code, Some(err.to_string())), None)
        }
    }
}

pub async fn handle(broker: &Arc<Broker>, _header: &RequestHeader, request: ProduceRequest) -> Option<ProduceResponse> {
    let acks = request.acks;
    let now_ms = sluice_storage::log::now_ms();
    let mut responses = Vec::with_capacity(request.topic_data.len());
    let mut waits: Vec<(usize, usize, DurableHandle)> = Vec::new();
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
            } else if request.transactional_id.is_some() {
                partition_error(
                    index,
                    ResponseError::TransactionalIdAuthorizationFailed,
                    Some("transactions are not supported yet".into()),
                )
            } else {
                match broker.replicas.partition(&name, index) {
                    None => partition_error(index, ResponseError::UnknownTopicOrPartition, None),
                    Some(partition) => {
                        let (response, durable) = append(&partition, index, data.records.as_deref(), now_ms);
                        if durable.is_some() {
                            // One node is its own ISR: the append is committed at once.
                            partition.log.set_high_watermark(partition.log.log_end_offset());
                        }
                        if let Some(durable) = durable {
                            waits.push((responses.len(), partitions.len(), durable));
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
    broker.appended.notify_waiters();
    if acks == 0 {
        return None;
    }
    if !waits.is_empty() {
        // fsyncs block; group commit lets concurrent producers share them.
        let positions: Vec<(usize, usize)> = waits.iter().map(|(t, p, _)| (*t, *p)).collect();
        let results = tokio::task::spawn_blocking(move || {
            waits.into_iter().map(|(_, _, d)| d.wait().map_err(|e| e.to_string())).collect()
        })
        .await
        .unwrap_or_else(|join| vec![Err(format!("durability wait failed: {join}")); positions.len()]);
        for ((t, p), result) in positions.into_iter().zip(results) {
            if let Err(err) = result {
                tracing::error!(%err, "append not durable");
                let response = &mut responses[t].partition_responses[p];
                response.error_code = ResponseError::KafkaStorageError.code();
                response.error_message = Some(str_bytes(err));
            }
        }
    }
    Some(ProduceResponse::default().with_responses(responses))
}
