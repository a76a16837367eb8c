//! Request handlers, one module per Kafka API family. Each handler is a plain function from a
//! request to its response over the broker's state; errors are per topic or partition, as
//! the protocol carries them.

pub mod api_versions;
pub mod cluster;
pub mod configs;
pub mod consumer_group;
pub mod coordinator;
pub mod fetch;
pub mod group;
pub mod list_offsets;
pub mod metadata;
pub mod offsets;
pub mod produce;
pub mod records;
pub mod replica_fetch;
pub mod replicas;
pub mod topics;
pub mod txn;
pub mod txn_describe;
pub mod txn_markers;

use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;

pub(crate) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Runs an admin handler's work (metadata writes and fsyncs block) off the async threads.
/// A panic there is a bug of ours: it is logged loudly and the request gets the default
/// (empty) result list, which clients report as missing results rather than success.
pub(crate) async fn admin_blocking<T: Default + Send + 'static>(
    broker: &std::sync::Arc<crate::broker::Broker>,
    op: impl FnOnce(&crate::broker::Broker) -> T + Send + 'static,
) -> T {
    let broker = broker.clone();
    match tokio::task::spawn_blocking(move || op(&broker)).await {
        Ok(result) => result,
        Err(err) => {
            tracing::error!(%err, "an admin request handler panicked");
            T::default()
        }
    }
}

/// The partition a request names, if this broker leads it at the epoch the client expects
/// (-1: any epoch).
pub(crate) fn leader_partition(
    broker: &crate::broker::Broker,
    topic: &str,
    index: i32,
    current_leader_epoch: i32,
) -> Result<std::sync::Arc<crate::partition::Partition>, kafka_protocol::error::ResponseError> {
    match broker.replicas.partition(topic, index) {
        Some(partition) if partition.is_leader() && !broker.cut_off_from_quorum() => {
            check_leader_epoch(partition.leader_epoch(), current_leader_epoch)?;
            Ok(partition)
        }
        _ => Err(not_led_here(broker, topic, index)),
    }
}

/// KIP-951: where a partition this broker does not lead is led now (leader, epoch), for the
/// client to go there without asking for metadata first. None when unknown, or when this
/// broker's view is stale (cut off from the quorum).
pub(crate) fn new_leader(broker: &crate::broker::Broker, topic: &str, index: i32) -> Option<(i32, i32)> {
    if broker.cut_off_from_quorum() {
        return None;
    }
    let metadata = broker.metadata();
    let assignment = metadata.topic(topic)?.assignment(index)?;
    let elsewhere = assignment.leader != broker.config.node_id && metadata.is_live(assignment.leader);
    elsewhere.then_some((assignment.leader, assignment.leader_epoch))
}

/// The endpoints, on the client's listener, of the brokers a response names as new leaders;
/// nothing is looked up when it names none (the common case of every produce and fetch).
pub(crate) fn hinted_endpoints(
    broker: &crate::broker::Broker,
    listener: &str,
    hinted: &[i32],
) -> Vec<(i32, crate::metadata::Endpoint)> {
    if hinted.is_empty() {
        return Vec::new();
    }
    let metadata = broker.metadata();
    broker.live_brokers(&metadata, listener).into_iter().filter(|(id, _)| hinted.contains(id)).collect()
}

/// The error for a partition this broker does not lead: NOT_LEADER_OR_FOLLOWER if it exists
/// (the client looks up the leader and retries there), UNKNOWN_TOPIC_OR_PARTITION if not.
pub(crate) fn not_led_here(
    broker: &crate::broker::Broker,
    topic: &str,
    index: i32,
) -> kafka_protocol::error::ResponseError {
    use kafka_protocol::error::ResponseError;
    match broker.metadata().topic(topic).and_then(|t| t.assignment(index)) {
        Some(_) => ResponseError::NotLeaderOrFollower,
        None => ResponseError::UnknownTopicOrPartition,
    }
}

/// The leader epoch check every partition request carries: -1 means "do not check".
pub(crate) fn check_leader_epoch(current: i32, requested: i32) -> Result<(), kafka_protocol::error::ResponseError> {
    use kafka_protocol::error::ResponseError;
    match requested {
        -1 => Ok(()),
        e if e == current => Ok(()),
        e if e > current => Err(ResponseError::UnknownLeaderEpoch),
        _ => Err(ResponseError::FencedLeaderEpoch),
    }
}
