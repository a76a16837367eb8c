//! Metadata: brokers, topics with their ids, and partition leaders; auto-creates topics
//! when the broker allows it and the request asks for it.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, RequestHeader};

use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::controller::validate_topic_name;
use crate::metadata::{ClusterMetadata, TopicMetadata, NO_LEADER};

/// Kafka's "authorized operations not requested" value.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

pub async fn handle(
    broker: &Arc<Broker>,
    listener: &str,
    header: &RequestHeader,
    request: MetadataRequest,
) -> MetadataResponse {
    let version = header.request_api_version;
    // Before v4 the request has no flag and clients expect the broker's default behaviour.
    let auto_create = broker.config.auto_create_topics_enable && (version < 4 || request.allow_auto_topic_creation);
    let metadata = broker.metadata();
    let node = &metadata;

    let topics = match request.topics {
        // v0 uses an empty list for "all topics"; v1+ uses null.
        None => metadata.topics().map(|t| describe_topic(t, node)).collect(),
        Some(requested) if requested.is_empty() && version == 0 => {
            metadata.topics().map(|t| describe_topic(t, node)).collect()
        }
        Some(requested) => {
            let mut topics = Vec::with_capacity(requested.len());
            for wanted in requested {
                let response = match wanted.name {
                    Some(name) => topic_by_name(broker, name.as_str(), auto_create).await,
                    None => match metadata.topic_by_id(&wanted.topic_id) {
                        Some(topic) => describe_topic(topic, node),
                        None => MetadataResponseTopic::default()
                            .with_topic_id(wanted.topic_id)
                            .with_error_code(ResponseError::UnknownTopicId.code()),
                    },
                };
                topics.push(response);
            }
            topics
        }
    };

    let brokers = broker
        .live_brokers(&metadata, listener)
        .into_iter()
        .map(|(id, endpoint)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(str_bytes(endpoint.host))
                .with_port(i32::from(endpoint.port))
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(metadata.cluster_id.clone())))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_topics(topics)
        .with_cluster_authorized_operations(OPERATIONS_NOT_REQUESTED)
}

async fn topic_by_name(broker: &Arc<Broker>, name: &str, auto_create: bool) -> MetadataResponseTopic {
    let metadata = broker.metadata();
    if let Some(topic) = metadata.topic(name) {
        return describe_topic(topic, &metadata);
    }
    let error = |code: ResponseError| {
        MetadataResponseTopic::default().with_name(Some(topic_name(name))).with_error_code(code.code())
    };
    if let Err(err) = validate_topic_name(name) {
        return error(err.code);
    }
    if !auto_create {
        return error(ResponseError::UnknownTopicOrPartition);
    }
    let (creator, owned) = (broker.clone(), name.to_string());
    let created = tokio::task::spawn_blocking(move || {
        let partitions = creator.config.num_partitions;
        creator.controller.create_topic(&owned, partitions, Default::default(), false)
    })
    .await;
    let metadata = broker.metadata();
    match created {
        Ok(Ok(topic)) => describe_topic(&topic, &metadata),
        // Another request created it first.
        Ok(Err(err)) if err.code == ResponseError::TopicAlreadyExists => match metadata.topic(name) {
            Some(topic) => describe_topic(topic, &metadata),
            None => error(ResponseError::UnknownTopicOrPartition),
        },
        Ok(Err(err)) => {
            tracing::warn!(topic = name, message = err.message, "auto-creating topic failed");
            error(err.code)
        }
        Err(_) => error(ResponseError::UnknownServerError),
    }
}

/// A topic's partitions as the metadata has them: each partition's leader (LEADER_NOT_AVAILABLE
/// while it has none), leader epoch, replicas, ISR and the replicas on fenced brokers.
fn describe_topic(topic: &TopicMetadata, metadata: &ClusterMetadata) -> MetadataResponseTopic {
    let ids = |nodes: &[i32]| nodes.iter().map(|&n| BrokerId(n)).collect::<Vec<_>>();
    let partitions = topic
        .assignments
        .iter()
        .enumerate()
        .map(|(index, assignment)| {
            let offline: Vec<i32> = assignment.replicas.iter().copied().filter(|&r| !metadata.is_live(r)).collect();
            let error = if assignment.leader == NO_LEADER { ResponseError::LeaderNotAvailable.code() } else { 0 };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(index as i32)
                .with_leader_id(BrokerId(assignment.leader))
                .with_leader_epoch(assignment.leader_epoch)
                .with_replica_nodes(ids(&assignment.replicas))
                .with_isr_nodes(ids(&assignment.isr))
                .with_offline_replicas(ids(&offline))
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&topic.name)))
        .with_topic_id(topic.id)
        .with_is_internal(crate::internal_topics::is_internal_topic(&topic.name))
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED)
}
