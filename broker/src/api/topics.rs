//! CreateTopics, DeleteTopics and CreatePartitions. Each change is written to the metadata log
//! (and fsynced) on a blocking thread before the response says it happened.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest;
use kafka_protocol::messages::create_partitions_response::{CreatePartitionsResponse, CreatePartitionsTopicResult};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{DeletableTopicResult, DeleteTopicsResponse};
use kafka_protocol::messages::RequestHeader;

use super::{admin_blocking, str_bytes, topic_name};
use crate::broker::Broker;
use crate::controller::AdminError;
use crate::topic_config;

/// Names that appear more than once in one request: Kafka refuses every entry of such a name
/// (INVALID_REQUEST) rather than guess which one the client meant.
fn repeated<'a>(names: impl Iterator<Item = &'a str>) -> std::collections::HashSet<String> {
    let mut seen = std::collections::HashSet::new();
    names.filter(|name| !seen.insert(*name)).map(str::to_string).collect()
}

fn repeated_error(name: &str) -> AdminError {
    AdminError::new(ResponseError::InvalidRequest, format!("topic \"{name}\" appears more than once in the request"))
}

fn create_one(
    broker: &Broker,
    version: i16,
    topic: &CreatableTopic,
    validate_only: bool,
) -> Result<CreatableTopicResult, AdminError> {
    let name = topic.name.0.as_str();
    let mut assignments = None;
    if !topic.assignments.is_empty() {
        if topic.num_partitions != -1 || topic.replication_factor != -1 {
            return Err(AdminError::new(
                ResponseError::InvalidRequest,
                "give either a partition count and replication factor or assignments, not both",
            ));
        }
        let mut explicit: Vec<_> = topic.assignments.iter().collect();
        explicit.sort_by_key(|a| a.partition_index);
        if explicit.iter().enumerate().any(|(i, a)| a.partition_index != i as i32) {
            return Err(AdminError::new(
                ResponseError::InvalidReplicaAssignment,
                "assignments must name partitions 0, 1, 2... each once",
            ));
        }
        assignments = Some(explicit.iter().map(|a| a.broker_ids.iter().map(|b| b.0).collect()).collect());
    }
    let mut configs = BTreeMap::new();
    for config in &topic.configs {
        let Some(value) = &config.value else { continue };
        configs.insert(config.name.as_str().to_string(), value.as_str().to_string());
    }
    let created = broker.controller.create_topic_with(
        name,
        topic.num_partitions,
        topic.replication_factor as i32,
        assignments,
        configs,
        validate_only,
    )?;
    let log_config = broker.controller.topic_log_config(&created.configs)?;
    let metadata = broker.metadata();
    let settings = topic_config::BrokerSettings {
        dynamic: &metadata.broker_configs,
        static_settings: &broker.config.static_settings,
    };
    let described = topic_config::describe(&log_config, &created.configs, &settings)
        .into_iter()
        .map(|described| {
            CreatableTopicConfigs::default()
                .with_name(str_bytes(described.def.name))
                .with_value(Some(str_bytes(described.value)))
                .with_config_source(described.source as i8)
                .with_is_sensitive(false)
        })
        .collect();
    Ok(CreatableTopicResult::default()
        .with_name(topic.name.clone())
        .with_topic_id(created.id)
        .with_num_partitions(created.partitions)
        .with_replication_factor(created.assignments.first().map_or(1, |a| a.replicas.len() as i16))
        // Configs are in the response from v5.
        .with_configs((version >= 5).then_some(described)))
}

pub async fn create_topics(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let validate_only = request.validate_only;
    let version = header.request_api_version;
    let topics = request.topics;
    let repeated = repeated(topics.iter().map(|t| t.name.0.as_str()));
    let results = admin_blocking(broker, move |broker| {
        topics
            .iter()
            .map(|topic| {
                let created = if repeated.contains(topic.name.0.as_str()) {
                    Err(repeated_error(topic.name.0.as_str()))
                } else {
                    create_one(broker, version, topic, validate_only)
                };
                created.unwrap_or_else(|err| {
                    CreatableTopicResult::default()
                        .with_name(topic.name.clone())
                        .with_error_code(err.code.code())
                        .with_error_message(Some(str_bytes(err.message)))
                        .with_num_partitions(-1)
                        .with_replication_factor(-1)
                })
            })
            .collect()
    })
    .await;
    CreateTopicsResponse::default().with_topics(results)
}

pub async fn delete_topics(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let metadata = broker.metadata();
    // Before v6 topics are named in a list of names; from v6 by name or id.
    let wanted: Vec<(Option<String>, uuid::Uuid)> = if header.request_api_version >= 6 {
        request.topics.iter().map(|t| (t.name.as_ref().map(|n| n.0.as_str().to_string()), t.topic_id)).collect()
    } else {
        request.topic_names.iter().map(|n| (Some(n.0.as_str().to_string()), uuid::Uuid::nil())).collect()
    };
    let resolved: Vec<(Option<String>, uuid::Uuid, Option<String>)> = wanted
        .into_iter()
        .map(|(name, id)| {
            let target = match &name {
                Some(name) => Some(name.clone()),
                None => metadata.topic_by_id(&id).map(|t| t.name.clone()),
            };
            (name, id, target)
        })
        .collect();
    let repeated = repeated(resolved.iter().filter_map(|(_, _, target)| target.as_deref()));
    let results = admin_blocking(broker, move |broker| {
        resolved
            .into_iter()
            .map(|(name, id, target)| {
                let result =
                    DeletableTopicResult::default().with_name(name.as_deref().map(topic_name)).with_topic_id(id);
                let Some(target) = target else {
                    return result.with_error_code(ResponseError::UnknownTopicId.code());
                };
                if repeated.contains(&target) {
                    let err = repeated_error(&target);
                    return result.with_error_code(err.code.code()).with_error_message(Some(str_bytes(err.message)));
                }
                match broker.controller.delete_topic(&target) {
                    Ok(id) => result.with_topic_id(id),
                    Err(err) => {
                        result.with_error_code(err.code.code()).with_error_message(Some(str_bytes(err.message)))
                    }
                }
            })
            .collect()
    })
    .await;
    DeleteTopicsResponse::default().with_responses(results)
}

pub async fn create_partitions(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let validate_only = request.validate_only;
    let topics = request.topics;
    let repeated = repeated(topics.iter().map(|t| t.name.0.as_str()));
    let results = admin_blocking(broker, move |broker| {
        topics
            .iter()
            .map(|topic| {
                let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
                let grown = if repeated.contains(topic.name.0.as_str()) {
                    Err(repeated_error(topic.name.0.as_str()))
                } else {
                    broker.controller.create_partitions(topic.name.0.as_str(), topic.count, validate_only)
                };
                match grown {
                    Ok(()) => result,
                    Err(err) => {
                        result.with_error_code(err.code.code()).with_error_message(Some(str_bytes(err.message)))
                    }
                }
            })
            .collect()
    })
    .await;
    CreatePartitionsResponse::default().with_results(results)
}
