//! DescribeConfigs, IncrementalAlterConfigs and the legacy AlterConfigs (which replaces a
//! resource's configs as a whole; the rdkafka crate's admin client still uses it), for topics
//! and for the broker's dynamic configs (the topic defaults).

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_request::AlterConfigsRequest;
use kafka_protocol::messages::alter_configs_response::{
    AlterConfigsResourceResponse as LegacyAlterResponse, AlterConfigsResponse,
};
use kafka_protocol::messages::describe_configs_request::{DescribeConfigsRequest, DescribeConfigsResource};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, IncrementalAlterConfigsRequest,
};
use kafka_protocol::messages::incremental_alter_configs_response::{
    AlterConfigsResourceResponse, IncrementalAlterConfigsResponse,
};
use kafka_protocol::messages::RequestHeader;

use super::{admin_blocking, str_bytes};
use crate::broker::Broker;
use crate::config;
use crate::controller::AdminError;
use crate::topic_config::{self, BrokerSettings, ConfigType};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

const SOURCE_DYNAMIC_BROKER: i8 = 2;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// The type DescribeConfigs gives a config: a topic config's own, or a broker config's
/// (those that set topic defaults have their topic config's type).
fn config_type(key: &str) -> ConfigType {
    if let Some(def) = topic_config::definition(key).or_else(|| topic_config::for_broker_key(key)) {
        // The hour and minute forms of the ms configs are ints in Kafka.
        return if key.ends_with(".hours") || key.ends_with(".minutes") { ConfigType::Int } else { def.kind };
    }
    match key {
        "log.dirs" | "listeners" | "advertised.listeners" => ConfigType::String,
        "num.partitions" | "node.id" | "socket.request.max.bytes" => ConfigType::Int,
        "auto.create.topics.enable" => ConfigType::Boolean,
        _ => ConfigType::Long,
    }
}

fn entry(
    key: &str,
    value: String,
    source: i8,
    read_only: bool,
    synonyms: Vec<DescribeConfigsSynonym>,
) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(key))
        .with_value(Some(str_bytes(value)))
        .with_read_only(read_only)
        .with_config_source(source)
        .with_config_type(config_type(key).code())
        .with_synonyms(synonyms)
}

fn synonym(name: &str, value: &str, source: i8) -> DescribeConfigsSynonym {
    DescribeConfigsSynonym::default().with_name(str_bytes(name)).with_value(Some(str_bytes(value))).with_source(source)
}

fn describe_topic(
    broker: &Broker,
    name: &str,
    synonyms: bool,
) -> Result<Vec<DescribeConfigsResourceResult>, AdminError> {
    let metadata = broker.metadata();
    let topic = metadata.topic(name).ok_or_else(|| {
        AdminError::new(ResponseError::UnknownTopicOrPartition, format!("topic \"{name}\" does not exist"))
    })?;
    let config = broker.controller.topic_log_config(&topic.configs)?;
    let settings =
        BrokerSettings { dynamic: &metadata.broker_configs, static_settings: &broker.config.static_settings };
    Ok(topic_config::describe(&config, &topic.configs, &settings)
        .into_iter()
        .map(|described| {
            let synonym_list = if synonyms {
                described.synonyms.iter().map(|(n, v, source)| synonym(n, v, *source as i8)).collect()
            } else {
                Vec::new()
            };
            entry(described.def.name, described.value, described.source as i8, false, synonym_list)
        })
        .collect())
}

fn describe_broker(
    broker: &Broker,
    name: &str,
    synonyms: bool,
) -> Result<Vec<DescribeConfigsResourceResult>, AdminError> {
    let config = broker.controller.effective_config();
    let dynamic = broker.metadata().broker_configs.clone();
    if !name.is_empty() && name != config.node_id.to_string() {
        return Err(AdminError::new(
            ResponseError::InvalidRequest,
            format!("this is broker {}, not {name}", config.node_id),
        ));
    }
    let mut listeners: Vec<String> =
        config.broker_listeners().iter().map(|l| format!("{}://{}", l.name, l.address)).collect();
    if let Some(address) = config.cluster.controller_listener {
        let name = config.cluster.controller_listener_names.first().map_or("CONTROLLER", String::as_str);
        listeners.push(format!("{name}://{address}"));
    }
    let listeners = listeners.join(",");
    let advertised: Vec<String> =
        config.advertised_listeners.iter().map(|e| format!("{}://{}:{}", e.listener, e.host, e.port)).collect();
    let advertised = advertised.join(",");
    let mut values: Vec<(String, String)> = vec![
        ("node.id".into(), config.node_id.to_string()),
        ("log.dirs".into(), config.data_dir.display().to_string()),
        ("listeners".into(), listeners),
        ("advertised.listeners".into(), advertised),
        ("num.partitions".into(), config.num_partitions.to_string()),
        ("auto.create.topics.enable".into(), config.auto_create_topics_enable.to_string()),
        ("socket.request.max.bytes".into(), config.socket_request_max_bytes.to_string()),
        ("log.retention.check.interval.ms".into(), config.log_retention_check_interval_ms.to_string()),
    ];
    // Topic defaults, under the broker-level names Kafka gives them (the ms forms).
    let none = BTreeMap::new();
    let settings = BrokerSettings { dynamic: &dynamic, static_settings: &config.static_settings };
    for described in topic_config::describe(&config.log_defaults, &none, &settings) {
        if let Some(broker_key) = described.def.broker_synonyms.first() {
            values.push((broker_key.to_string(), described.value));
        }
    }
    Ok(values
        .into_iter()
        .map(|(key, value)| {
            let source = if dynamic.contains_key(&key) {
                SOURCE_DYNAMIC_BROKER
            } else if config.static_settings.contains_key(&key) {
                SOURCE_STATIC_BROKER
            } else {
                SOURCE_DEFAULT
            };
            let synonym_list = if synonyms { vec![synonym(&key, &value, source)] } else { Vec::new() };
            entry(&key, value, source, !config::is_dynamic(&key), synonym_list)
        })
        .collect())
}

fn describe_resource(broker: &Broker, resource: &DescribeConfigsResource, synonyms: bool) -> DescribeConfigsResult {
    let name = resource.resource_name.as_str();
    let described = match resource.resource_type {
        RESOURCE_TOPIC => describe_topic(broker, name, synonyms),
        RESOURCE_BROKER => describe_broker(broker, name, synonyms),
        other => Err(AdminError::new(ResponseError::InvalidRequest, format!("resource type {other} is not supported"))),
    };
    let result = DescribeConfigsResult::default()
        .with_resource_type(resource.resource_type)
        .with_resource_name(resource.resource_name.clone());
    match described {
        Ok(mut configs) => {
            if let Some(keys) = &resource.configuration_keys {
                configs.retain(|c| keys.iter().any(|k| k.as_str() == c.name.as_str()));
            }
            result.with_configs(configs)
        }
        Err(err) => result.with_error_code(err.code.code()).with_error_message(Some(str_bytes(err.message))),
    }
}

pub fn describe_configs(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let results = request.resources.iter().map(|r| describe_resource(broker, r, request.include_synonyms)).collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// The overrides `current` becomes after applying `resource`'s operations.
fn altered_overrides(
    current: &BTreeMap<String, String>,
    resource: &AlterConfigsResource,
) -> Result<BTreeMap<String, String>, AdminError> {
    let mut overrides = current.clone();
    for change in &resource.configs {
        let key = change.name.as_str().to_string();
        let value = change.value.as_ref().map(|v| v.as_str().to_string());
        let invalid = |message: String| AdminError::new(ResponseError::InvalidConfig, message);
        match change.config_operation {
            OP_SET => {
                let value = value.ok_or_else(|| invalid(format!("SET of {key} needs a value")))?;
                overrides.insert(key, value);
            }
            OP_DELETE => {
                overrides.remove(&key);
            }
            OP_APPEND | OP_SUBTRACT if config_type(&key) == ConfigType::List => {
                let value = value.ok_or_else(|| invalid(format!("APPEND or SUBTRACT of {key} needs a value")))?;
                let mut items: Vec<String> =
                    overrides.get(&key).map(|v| v.split(',').map(str::to_string).collect()).unwrap_or_default();
                for item in value.split(',') {
                    items.retain(|existing| existing != item);
                    if change.config_operation == OP_APPEND {
                        items.push(item.to_string());
                    }
                }
                overrides.insert(key, items.join(","));
            }
            OP_APPEND | OP_SUBTRACT => {
                return Err(invalid(format!("{key} is not a list config; APPEND and SUBTRACT apply to lists only")))
            }
            other => {
                return Err(AdminError::new(ResponseError::InvalidRequest, format!("unknown config operation {other}")))
            }
        }
    }
    Ok(overrides)
}

type ConfigChange<'a> = Box<dyn FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, AdminError> + 'a>;

/// Applies `change` to the dynamic configs of one resource: a topic, or this broker (by its
/// id, or by the empty name Kafka uses for the cluster-wide default).
fn alter_resource(
    broker: &Broker,
    resource_type: i8,
    name: &str,
    change: ConfigChange<'_>,
    validate_only: bool,
) -> Result<(), AdminError> {
    match resource_type {
        RESOURCE_TOPIC => broker.controller.alter_topic_configs(name, change, validate_only),
        RESOURCE_BROKER if !name.is_empty() && name != broker.config.node_id.to_string() => Err(AdminError::new(
            ResponseError::InvalidRequest,
            format!("this is broker {}, not {name}", broker.config.node_id),
        )),
        RESOURCE_BROKER => broker.controller.alter_broker_configs(change, validate_only),
        other => Err(AdminError::new(ResponseError::InvalidRequest, format!("resource type {other} is not supported"))),
    }
}

/// The (error code, message) a resource's alter result puts in its response.
fn outcome(result: Result<(), AdminError>) -> (i16, Option<kafka_protocol::protocol::StrBytes>) {
    match result {
        Ok(()) => (0, None),
        Err(err) => (err.code.code(), Some(str_bytes(err.message))),
    }
}

pub async fn incremental_alter_configs(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let validate_only = request.validate_only;
    let responses = admin_blocking(broker, move |broker| {
        request
            .resources
            .iter()
            .map(|resource| {
                let change: ConfigChange<'_> = Box::new(|current| altered_overrides(current, resource));
                let result = alter_resource(
                    broker,
                    resource.resource_type,
                    resource.resource_name.as_str(),
                    change,
                    validate_only,
                );
                let (error_code, error_message) = outcome(result);
                AlterConfigsResourceResponse::default()
                    .with_resource_type(resource.resource_type)
                    .with_resource_name(resource.resource_name.clone())
                    .with_error_code(error_code)
                    .with_error_message(error_message)
            })
            .collect()
    })
    .await;
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// The legacy AlterConfigs: the listed configs replace the resource's dynamic configs as a
/// whole (keys not listed go back to their defaults).
pub async fn alter_configs(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let validate_only = request.validate_only;
    let responses = admin_blocking(broker, move |broker| {
        request
            .resources
            .iter()
            .map(|resource| {
                let replacement: BTreeMap<String, String> = resource
                    .configs
                    .iter()
                    .filter_map(|c| c.value.as_ref().map(|v| (c.name.as_str().to_string(), v.as_str().to_string())))
                    .collect();
                let change: ConfigChange<'_> = Box::new(|_| Ok(replacement));
                let result = alter_resource(
                    broker,
                    resource.resource_type,
                    resource.resource_name.as_str(),
                    change,
                    validate_only,
                );
                let (error_code, error_message) = outcome(result);
                LegacyAlterResponse::default()
                    .with_resource_type(resource.resource_type)
                    .with_resource_name(resource.resource_name.clone())
                    .with_error_code(error_code)
                    .with_error_message(error_message)
            })
            .collect()
    })
    .await;
    AlterConfigsResponse::default().with_responses(responses)
}
