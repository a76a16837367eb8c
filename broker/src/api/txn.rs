//! Producer ids and transactions: InitProducerId (a fresh id for an idempotent producer; for
//! a transactional id, the coordinator's id and a new epoch that fences older instances),
//! AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and TxnOffsetCommit. The coordinators'
//! work blocks on fsyncs, so it runs off the async threads.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_offsets_to_txn_request::AddOffsetsToTxnRequest;
use kafka_protocol::messages::add_offsets_to_txn_response::AddOffsetsToTxnResponse;
use kafka_protocol::messages::add_partitions_to_txn_request::{AddPartitionsToTxnRequest, AddPartitionsToTxnTopic};
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResponse, AddPartitionsToTxnResult,
    AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::end_txn_request::EndTxnRequest;
use kafka_protocol::messages::end_txn_response::EndTxnResponse;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::txn_offset_commit_request::TxnOffsetCommitRequest;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponse, TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ProducerId, RequestHeader};

use super::coordinator::ensure_group_coordinator;
use crate::broker::Broker;
use crate::group::{GroupCoordinator, MemberClaim, OffsetCommit};
use crate::topic_partition::TopicPartition;

/// PRODUCER_FENCED exists from these versions on (KIP-588); older clients get
/// INVALID_PRODUCER_EPOCH for the same situation.
fn fencing_code(error: ResponseError, version: i16, since: i16) -> ResponseError {
    if error == ResponseError::ProducerFenced && version < since {
        ResponseError::InvalidProducerEpoch
    } else {
        error
    }
}

/// Runs coordinator work on a blocking thread; a panic there is a bug, reported as
/// UNKNOWN_SERVER_ERROR.
async fn blocking<T: Send + 'static>(
    broker: &Arc<Broker>,
    op: impl FnOnce(&Broker) -> Result<T, ResponseError> + Send + 'static,
) -> Result<T, ResponseError> {
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || op(&broker)).await.unwrap_or_else(|join| {
        tracing::error!(%join, "a transaction handler panicked");
        Err(ResponseError::UnknownServerError)
    })
}

pub async fn init_producer_id(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let transactional_id = request.transactional_id.as_ref().map(|id| id.0.as_str().to_string());
    // Kafka refuses an empty transactional id.
    if transactional_id.as_deref() == Some("") {
        return InitProducerIdResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    let timeout_ms = request.transaction_timeout_ms;
    // v3+ (KIP-360): a client bumping its own epoch names its current producer id and epoch.
    let expected = (request.producer_id.0 >= 0).then_some((request.producer_id.0, request.producer_epoch));
    let version = header.request_api_version;
    // A producer without a transactional id always gets a new id (also when it asks for an
    // epoch bump after an error, KIP-360): nothing can fence it, so nothing is lost.
    let result = blocking(broker, move |broker| match transactional_id {
        None => broker.txns.new_producer_id().map(|id| (id, 0)),
        Some(id) => broker.txns.init_producer_id(&id, timeout_ms, expected),
    })
    .await
    .map_err(|error| fencing_code(error, version, 4));
    match result {
        Ok((producer_id, epoch)) => {
            InitProducerIdResponse::default().with_producer_id(ProducerId(producer_id)).with_producer_epoch(epoch)
        }
        Err(error) => InitProducerIdResponse::default()
            .with_error_code(error.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}

fn topic_results(
    topics: &[AddPartitionsToTxnTopic],
    result: &Result<(), ResponseError>,
) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|&index| {
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(index)
                        .with_partition_error_code(result.as_ref().err().map_or(0, |e| e.code()))
                })
                .collect();
            AddPartitionsToTxnTopicResult::default().with_name(topic.name.clone()).with_results_by_partition(partitions)
        })
        .collect()
}

/// One transaction's AddPartitionsToTxn: unknown partitions fail the whole request (as in
/// Kafka, the others get OPERATION_NOT_ATTEMPTED).
fn add_partitions(
    broker: &Broker,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    topics: &[AddPartitionsToTxnTopic],
    verify_only: bool,
    version: i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let partitions: Vec<TopicPartition> = topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |&p| TopicPartition::new(t.name.0.as_str(), p)))
        .collect();
    let unknown = |tp: &TopicPartition| !broker.replicas.partition_exists(&tp.topic, tp.partition);
    if partitions.iter().any(unknown) {
        return topics
            .iter()
            .map(|topic| {
                let results = topic
                    .partitions
                    .iter()
                    .map(|&index| {
                        let code = if unknown(&TopicPartition::new(topic.name.0.as_str(), index)) {
                            ResponseError::UnknownTopicOrPartition
                        } else {
                            ResponseError::OperationNotAttempted
                        };
                        AddPartitionsToTxnPartitionResult::default()
                            .with_partition_index(index)
                            .with_partition_error_code(code.code())
                    })
                    .collect();
                AddPartitionsToTxnTopicResult::default()
                    .with_name(topic.name.clone())
                    .with_results_by_partition(results)
            })
            .collect();
    }
    let result = if verify_only {
        partitions
            .iter()
            .try_for_each(|tp| broker.txns.verify_produce(producer_id, producer_epoch, &tp.topic, tp.partition))
    } else {
        broker.txns.add_partitions(transactional_id, producer_id, producer_epoch, partitions)
    };
    topic_results(topics, &result.map_err(|error| fencing_code(error, version, 2)))
}

pub async fn add_partitions_to_txn(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let version = header.request_api_version;
    let response = blocking(broker, move |broker| {
        if version <= 3 {
            let results = add_partitions(
                broker,
                request.v3_and_below_transactional_id.0.as_str(),
                request.v3_and_below_producer_id.0,
                request.v3_and_below_producer_epoch,
                &request.v3_and_below_topics,
                false,
                version,
            );
            return Ok(AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results));
        }
        let results = request
            .transactions
            .iter()
            .map(|txn| {
                let topics = add_partitions(
                    broker,
                    txn.transactional_id.0.as_str(),
                    txn.producer_id.0,
                    txn.producer_epoch,
                    &txn.topics,
                    txn.verify_only,
                    version,
                );
                AddPartitionsToTxnResult::default()
                    .with_transactional_id(txn.transactional_id.clone())
                    .with_topic_results(topics)
            })
            .collect();
        Ok(AddPartitionsToTxnResponse::default().with_results_by_transaction(results))
    })
    .await;
    response.unwrap_or_else(|error| AddPartitionsToTxnResponse::default().with_error_code(error.code()))
}

pub async fn add_offsets_to_txn(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    request: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    if let Err(error) = ensure_group_coordinator(broker).await {
        return AddOffsetsToTxnResponse::default().with_error_code(error.code());
    }
    let result = blocking(broker, move |broker| {
        let partition = broker
            .groups
            .offsets_partition_for(request.group_id.0.as_str())
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        broker.txns.add_partitions(
            request.transactional_id.0.as_str(),
            request.producer_id.0,
            request.producer_epoch,
            vec![partition],
        )
    })
    .await
    .map_err(|error| fencing_code(error, header.request_api_version, 2));
    AddOffsetsToTxnResponse::default().with_error_code(result.err().map_or(0, |e| e.code()))
}

pub async fn end_txn(broker: &Arc<Broker>, header: &RequestHeader, request: EndTxnRequest) -> EndTxnResponse {
    let (producer_id, producer_epoch) = (request.producer_id, request.producer_epoch);
    let result = blocking(broker, move |broker| {
        broker.txns.end_txn(
            request.transactional_id.0.as_str(),
            request.producer_id.0,
            request.producer_epoch,
            request.committed,
        )
    })
    .await
    .map_err(|error| fencing_code(error, header.request_api_version, 2));
    EndTxnResponse::default()
        .with_error_code(result.err().map_or(0, |e| e.code()))
        .with_producer_id(producer_id)
        .with_producer_epoch(producer_epoch)
}

pub async fn txn_offset_commit(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    request: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let commits: Vec<OffsetCommit> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|p| OffsetCommit {
                topic: topic.name.0.as_str().to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.as_str().to_string()),
            })
        })
        .collect();
    let count = commits.len();
    let results = match ensure_group_coordinator(broker).await {
        Err(error) => vec![Some(error); count],
        Ok(()) => {
            let request_for_check = (
                request.transactional_id.0.as_str().to_string(),
                request.group_id.0.as_str().to_string(),
                request.producer_id.0,
                request.producer_epoch,
                request.generation_id,
                request.member_id.as_str().to_string(),
                request.group_instance_id.as_ref().map(|s| s.as_str().to_string()),
            );
            let pending = blocking(broker, move |broker| {
                let (transactional_id, group_id, producer_id, epoch, generation_id, member_id, instance) =
                    request_for_check;
                let partition = broker
                    .groups
                    .offsets_partition_for(&group_id)
                    .ok_or(ResponseError::CoordinatorNotAvailable)?
                    .partition;
                // KIP-890: the group's offsets partition must be in the ongoing transaction,
                // checked and written under the transaction's lock.
                broker.txns.in_offsets_transaction(&transactional_id, producer_id, epoch, partition, || {
                    let claim =
                        MemberClaim { generation_id, member_id: &member_id, group_instance_id: instance.as_deref() };
                    broker.groups.commit_offsets(&group_id, claim, -1, &commits, Some((producer_id, epoch)))
                })
            })
            .await;
            let version = header.request_api_version;
            let results = match pending {
                Ok(pending) => GroupCoordinator::complete_commit(pending).await,
                Err(error) => vec![Some(error); count],
            };
            results.into_iter().map(|r| r.map(|error| fencing_code(error, version, 3))).collect()
        }
    };
    let mut results = results.into_iter();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(results.next().flatten().map_or(0, |e| e.code()))
                })
                .collect();
            TxnOffsetCommitResponseTopic::default().with_name(topic.name).with_partitions(partitions)
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}
