//! FindCoordinator: a key's coordinator is the leader of its partition of `__consumer_offsets`
//! or `__transaction_state`. v0-v3 ask for one key, v4+ for a batch. The first lookup of each kind creates
//! `__consumer_offsets` or `__transaction_state`, as in Kafka.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::{BrokerId, RequestHeader};

use super::str_bytes;
use crate::broker::Broker;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// Makes sure the group coordinator can write (its topic exists), creating the topic off
/// the async threads the first time.
pub(crate) async fn ensure_group_coordinator(broker: &Arc<Broker>) -> Result<(), ResponseError> {
    if broker.groups.is_ready() {
        return Ok(());
    }
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || broker.groups.ensure_offsets_topic())
        .await
        .unwrap_or(Err(ResponseError::CoordinatorNotAvailable))
}

/// Makes sure the transaction coordinator can write (its topic exists).
pub(crate) async fn ensure_transaction_coordinator(broker: &Arc<Broker>) -> Result<(), ResponseError> {
    if broker.txns.is_ready() {
        return Ok(());
    }
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || broker.txns.ensure_state_topic())
        .await
        .unwrap_or(Err(ResponseError::CoordinatorNotAvailable))
}

pub async fn find_coordinator(
    broker: &Arc<Broker>,
    listener: &str,
    header: &RequestHeader,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let version = header.request_api_version;
    let outcome: Result<(), (ResponseError, &str)> = match request.key_type {
        KEY_TYPE_GROUP => ensure_group_coordinator(broker).await.map_err(|e| (e, "the group coordinator is not ready")),
        KEY_TYPE_TRANSACTION => {
            ensure_transaction_coordinator(broker).await.map_err(|e| (e, "the transaction coordinator is not ready"))
        }
        _ => Err((ResponseError::InvalidRequest, "unknown coordinator key type")),
    };
    let metadata = broker.metadata();
    let brokers = broker.live_brokers(&metadata, listener);
    let topic = match request.key_type {
        KEY_TYPE_TRANSACTION => crate::internal_topics::TRANSACTION_STATE_TOPIC,
        _ => crate::internal_topics::OFFSETS_TOPIC,
    };
    let leader_of = |key: &str| -> Result<(i32, crate::metadata::Endpoint), (ResponseError, &'static str)> {
        let topic =
            metadata.topic(topic).ok_or((ResponseError::CoordinatorNotAvailable, "the coordinator is loading"))?;
        let partition = crate::internal_topics::partition_for(key, topic.partitions);
        let leader = topic.assignment(partition).map_or(crate::metadata::NO_LEADER, |a| a.leader);
        brokers
            .iter()
            .find(|(id, _)| *id == leader)
            .cloned()
            .ok_or((ResponseError::CoordinatorNotAvailable, "the coordinator's partition has no leader"))
    };
    let coordinator = |key: kafka_protocol::protocol::StrBytes| match outcome.and_then(|()| leader_of(key.as_str())) {
        Ok((node, endpoint)) => Coordinator::default()
            .with_key(key)
            .with_node_id(BrokerId(node))
            .with_host(str_bytes(endpoint.host))
            .with_port(i32::from(endpoint.port)),
        Err((code, message)) => Coordinator::default()
            .with_key(key)
            .with_node_id(BrokerId(-1))
            .with_port(-1)
            .with_error_code(code.code())
            .with_error_message(Some(str_bytes(message))),
    };
    if version >= 4 {
        let coordinators = request.coordinator_keys.into_iter().map(coordinator).collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let one = coordinator(request.key);
    FindCoordinatorResponse::default()
        .with_error_code(one.error_code)
        .with_error_message(one.error_message)
        .with_node_id(one.node_id)
        .with_host(one.host)
        .with_port(one.port)
}
