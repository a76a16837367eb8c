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
use crate::metadata::TopicMetadata;

/// Kafka's "authorized operations not requested" value.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

pub async fn handle(broker: &Arc<Broker>, header: &RequestHeader, request: MetadataRequest) -> MetadataResponse {
    let version = header.request_api_version;
    let node = BrokerId(broker.config.node_id);
    // Before v4 the request has no flag and clients expect the broker's default behaviour.
    let auto_create = broker.config.auto_create_topics_enable && (version < 4 || request.allow_auto_topic_creation);
    let metadata = broker.metadata();

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
                    Some(name) => topic_by_name(broker, name.as_str(), auto_create, node).await,
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

    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(node)
            .with_host(str_bytes(broker.config.advertised_host.clone()))
            .with_port(i32::from(broker.config.advertised_port))])
        .with_cluster_id(Some(str_bytes(metadata.cluster_id.clone())))
        .with_controller_id(node)
        .with_topics(topics)
        .with_cluster_authorized_operations(OPERATIONS_NOT_REQUESTED)
}

async fn topic_by_name(broker: &Arc<Broker>, name: &str, auto_create: bool, node: BrokerId) -> MetadataResponseTopic {
    if let Some(topic) = broker.metadata().topic(name) {
        return describe_topic(topic, node);
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
    match created {
        Ok(Ok(topic)) => describe_topic(&topic, node),
        // Another request created it first.
        Ok(Err(err)) if err.code == ResponseError::TopicAlreadyExists => match broker.metadata().topic(name) {
            Some(topic) => describe_topic(topic, node),
            None => error(ResponseError::UnknownTopicOrPartition),
        },
        Ok(Err(err)) => {
            tracing::warn!(topic = name, message = err.message, "auto-creating topic failed");
            error(err.code)
        }
        Err(_) => error(ResponseError::UnknownServerError),
    }
}

fn describe_topic(topic: &TopicMetadata, node: BrokerId) -> MetadataResponseTopic {
    let partitions = (0..topic.partitions)
        .map(|index| {
            MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_id(node)
                .with_leader_epoch(crate::partition::Partition::LEADER_EPOCH)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&topic.name)))
        .with_topic_id(topic.id)
        .with_is_internal(crate::internal_topics::is_internal_topic(&topic.name))
        .with_partitions(partitions)
        .with_topic_authorized_operations(OPERATIONS_NOT_REQUESTED)
}
