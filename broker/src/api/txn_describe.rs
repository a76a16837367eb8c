//! Operator views of transactions: DescribeProducers (each partition's active producers
//! and the start of their open transaction), DescribeTransactions and ListTransactions
//! (the coordinator's state per transactional id).

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_producers_request::DescribeProducersRequest;
use kafka_protocol::messages::describe_producers_response::{
    DescribeProducersResponse, PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::describe_transactions_request::DescribeTransactionsRequest;
use kafka_protocol::messages::describe_transactions_response::{
    DescribeTransactionsResponse, TopicData, TransactionState,
};
use kafka_protocol::messages::list_transactions_request::ListTransactionsRequest;
use kafka_protocol::messages::list_transactions_response::{self, ListTransactionsResponse};
use kafka_protocol::messages::{ProducerId, RequestHeader, TransactionalId};

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::txn::state::TxnState;

pub fn describe_producers(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partition_indexes
                .iter()
                .map(|&index| {
                    let response = PartitionResponse::default().with_partition_index(index);
                    let Some(partition) = broker.replicas.partition(topic.name.0.as_str(), index) else {
                        return response.with_error_code(ResponseError::UnknownTopicOrPartition.code());
                    };
                    let producers = partition
                        .log
                        .producers()
                        .iter()
                        .map(|(id, entry)| {
                            ProducerState::default()
                                .with_producer_id(ProducerId(id.0))
                                .with_producer_epoch(i32::from(entry.epoch))
                                .with_last_sequence(entry.batches.back().map_or(-1, |b| b.last_sequence))
                                .with_last_timestamp(entry.last_append_ms)
                                .with_coordinator_epoch(0)
                                .with_current_txn_start_offset(entry.current_txn_first_offset.unwrap_or(-1))
                        })
                        .collect();
                    response.with_active_producers(producers)
                })
                .collect();
            TopicResponse::default().with_name(topic.name).with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}

/// Off the async threads: a transaction's lock can be held across marker fsyncs.
pub async fn describe_transactions(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    super::admin_blocking(broker, move |broker| describe_transactions_now(broker, request)).await
}

fn describe_transactions_now(broker: &Broker, request: DescribeTransactionsRequest) -> DescribeTransactionsResponse {
    let states = request
        .transactional_ids
        .into_iter()
        .map(|id| {
            let base = TransactionState::default().with_transactional_id(id.clone());
            let Some(txn) = broker.txns.get(id.0.as_str()) else {
                return base.with_error_code(ResponseError::TransactionalIdNotFound.code());
            };
            let meta = txn.lock();
            let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
            for (topic, partition) in &meta.partitions {
                by_topic.entry(topic).or_default().push(*partition);
            }
            let topics = by_topic
                .into_iter()
                .map(|(topic, partitions)| {
                    TopicData::default().with_topic(topic_name(topic)).with_partitions(partitions)
                })
                .collect();
            base.with_transaction_state(str_bytes(meta.state.name()))
                .with_transaction_timeout_ms(meta.timeout_ms)
                .with_transaction_start_time_ms(if meta.state == TxnState::Ongoing { meta.start_ms } else { -1 })
                .with_producer_id(ProducerId(meta.producer_id))
                .with_producer_epoch(meta.producer_epoch)
                .with_topics(topics)
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

const STATES: [TxnState; 8] = [
    TxnState::Empty,
    TxnState::Ongoing,
    TxnState::PrepareCommit,
    TxnState::PrepareAbort,
    TxnState::CompleteCommit,
    TxnState::CompleteAbort,
    TxnState::Dead,
    TxnState::PrepareEpochFence,
];

/// Off the async threads, as DescribeTransactions.
pub async fn list_transactions(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: ListTransactionsRequest,
) -> ListTransactionsResponse {
    super::admin_blocking(broker, move |broker| list_transactions_now(broker, request)).await
}

fn list_transactions_now(broker: &Broker, request: ListTransactionsRequest) -> ListTransactionsResponse {
    let (known, unknown): (Vec<_>, Vec<_>) =
        request.state_filters.iter().partition(|f| STATES.iter().any(|s| s.name() == f.as_str()));
    let now = sluice_storage::now_ms();
    let mut states: Vec<list_transactions_response::TransactionState> = broker
        .txns
        .all()
        .iter()
        .filter_map(|txn| {
            let meta = txn.lock();
            let state_ok = request.state_filters.is_empty() || known.iter().any(|f| f.as_str() == meta.state.name());
            let producer_ok = request.producer_id_filters.is_empty()
                || request.producer_id_filters.iter().any(|p| p.0 == meta.producer_id);
            // v1: only transactions running longer than this (ongoing ones).
            let duration_ok = request.duration_filter < 0
                || (meta.state == TxnState::Ongoing && now - meta.start_ms >= request.duration_filter);
            (state_ok && producer_ok && duration_ok).then(|| {
                list_transactions_response::TransactionState::default()
                    .with_transactional_id(TransactionalId(str_bytes(meta.transactional_id.clone())))
                    .with_producer_id(ProducerId(meta.producer_id))
                    .with_transaction_state(str_bytes(meta.state.name()))
            })
        })
        .collect();
    states.sort_by(|a, b| a.transactional_id.0.as_str().cmp(b.transactional_id.0.as_str()));
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown.into_iter().cloned().collect())
        .with_transaction_states(states)
}
