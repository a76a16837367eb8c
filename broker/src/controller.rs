//! The controller: the only writer of cluster metadata (topics with their ids, partition
//! counts and configs, the dynamic broker configs, producer-id blocks). Each change is
//! checked, recorded in the metadata log and only then takes effect, so that what the log
//! says is what the broker does after any restart. On one node it appends to the local
//! metadata log; the cluster issue puts a Raft quorum of controllers under it.
//!
//! Coordinators reach it only through the narrow handles at the end of this file
//! ([`InternalTopics`], [`ProducerIdBlocks`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use parking_lot::{Mutex, RwLock};
use sluice_storage::LogConfig;
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::error::Result;
use crate::internal_topics;
use crate::metadata::{ClusterMetadata, MetadataLog, MetadataRecord, TopicMetadata};
use crate::replica_manager::ReplicaManager;
use crate::topic_config;

/// A refused admin operation: the Kafka error code and a message for the client.
#[derive(Debug)]
pub struct AdminError {
    pub code: ResponseError,
    pub message: String,
}

impl AdminError {
    pub fn new(code: ResponseError, message: impl Into<String>) -> AdminError {
        AdminError { code, message: message.into() }
    }
}

impl From<crate::error::Error> for AdminError {
    fn from(err: crate::error::Error) -> AdminError {
        let code = match &err {
            crate::error::Error::Storage(storage) => crate::error::storage_error_code(storage),
            _ => ResponseError::UnknownServerError,
        };
        AdminError::new(code, err.to_string())
    }
}

/// Producer ids are reserved in blocks, one metadata write per block (as Kafka's KIP-730).
const PRODUCER_ID_BLOCK: i64 = 1000;

/// Kafka's rule for topic names.
pub fn validate_topic_name(name: &str) -> Result<(), AdminError> {
    let invalid =
        |why: &str| Err(AdminError::new(ResponseError::InvalidTopicException, format!("topic name \"{name}\" {why}")));
    if name.is_empty() {
        return invalid("is empty");
    }
    if name == "." || name == ".." {
        return invalid("cannot be \".\" or \"..\"");
    }
    // The metadata log lives in `__cluster_metadata-0`, where this topic's partition 0 would.
    if name == "__cluster_metadata" {
        return Err(AdminError::new(
            ResponseError::InvalidRequest,
            "creation of internal topic __cluster_metadata is prohibited",
        ));
    }
    if name.len() > 249 {
        return invalid("is longer than 249 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return invalid("may only contain ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

fn refuse_internal(name: &str, action: &str) -> Result<(), AdminError> {
    if internal_topics::is_internal_topic(name) {
        return Err(AdminError::new(
            ResponseError::InvalidTopicException,
            format!("internal topic {name} cannot be {action}"),
        ));
    }
    Ok(())
}

pub struct Controller {
    /// The static broker config (dynamic topic defaults are in `log_defaults`).
    config: BrokerConfig,
    metadata_log: Mutex<MetadataLog>,
    /// The latest metadata, cheap to snapshot for every request.
    metadata: RwLock<Arc<ClusterMetadata>>,
    /// Topic defaults: the static config with the dynamic broker configs applied.
    log_defaults: RwLock<LogConfig>,
    /// Topics are opened here before their record publishes them, and closed after.
    replicas: Arc<ReplicaManager>,
    /// The next producer id to hand out, and the end of the block the metadata log has
    /// reserved.
    producer_ids: Mutex<(i64, i64)>,
}

impl Controller {
    /// Takes over the opened metadata log, with the topic defaults in force and the
    /// partitions it describes opened.
    pub(crate) fn new(
        config: BrokerConfig,
        metadata_log: MetadataLog,
        log_defaults: LogConfig,
        replicas: Arc<ReplicaManager>,
    ) -> Controller {
        let metadata = Arc::new(metadata_log.state().clone());
        let next = metadata.producer_ids_next;
        Controller {
            config,
            metadata_log: Mutex::new(metadata_log),
            metadata: RwLock::new(metadata),
            log_defaults: RwLock::new(log_defaults),
            replicas,
            producer_ids: Mutex::new((next, next)),
        }
    }

    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.metadata.read().clone()
    }

    /// The log config of a topic with these overrides.
    pub fn topic_log_config(&self, overrides: &BTreeMap<String, String>) -> Result<LogConfig, AdminError> {
        topic_config::resolve(&self.log_defaults.read(), overrides)
            .map_err(|msg| AdminError::new(ResponseError::InvalidConfig, msg))
    }

    /// The broker config in force: the static one with the dynamic configs applied.
    pub fn effective_config(&self) -> BrokerConfig {
        let mut config = self.config.clone();
        config.log_defaults = self.log_defaults.read().clone();
        config
    }

    /// Changes the dynamic broker configs to what `alter` makes of the current ones, under
    /// the metadata lock (see `alter_topic_configs`).
    pub fn alter_broker_configs(
        &self,
        alter: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, AdminError>,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let invalid = |msg: String| AdminError::new(ResponseError::InvalidConfig, msg);
        let mut log = self.metadata_log.lock();
        let configs = alter(&log.state().broker_configs)?;
        let effective = self.config.with_dynamic(&configs).map_err(invalid)?;
        let mut resolved = Vec::new();
        for topic in log.state().topics() {
            let config = topic_config::resolve(&effective.log_defaults, &topic.configs)
                .map_err(|msg| invalid(format!("topic {}: {msg}", topic.name)))?;
            resolved.push((topic.name.clone(), config));
        }
        if validate_only {
            return Ok(());
        }
        self.commit(&mut log, vec![MetadataRecord::BrokerConfigs { configs }])?;
        *self.log_defaults.write() = effective.log_defaults;
        for (name, config) in resolved {
            self.replicas.set_config(&name, &config)?;
        }
        Ok(())
    }

    fn commit(&self, log: &mut MetadataLog, records: Vec<MetadataRecord>) -> Result<(), AdminError> {
        log.append(records)?;
        *self.metadata.write() = Arc::new(log.state().clone());
        Ok(())
    }

    /// Creates an internal topic the first time its coordinator needs it (as Kafka does), and
    /// returns its partition count. Blocking: metadata is fsynced.
    fn ensure_internal_topic(&self, name: &str, partitions: i32, segment_bytes: u32) -> Result<i32, ResponseError> {
        match self.create_topic(name, partitions, internal_topics::configs(segment_bytes), false) {
            Ok(topic) => Ok(topic.partitions),
            Err(err) if err.code == ResponseError::TopicAlreadyExists => {
                self.compact_internal_topic(name, segment_bytes);
                Ok(self.metadata().topic(name).map(|t| t.partitions).unwrap_or(0))
            }
            Err(err) => {
                tracing::error!(error = %err.message, "cannot create {name}");
                Err(ResponseError::CoordinatorNotAvailable)
            }
        }
    }

    /// Gives an internal topic made before it was compacted (by an older Sluice, whose
    /// coordinators rewrote their live state instead) the configs it has now.
    pub(crate) fn compact_internal_topic(&self, name: &str, segment_bytes: u32) {
        let Some(topic) = self.metadata().topic(name).cloned() else { return };
        if topic.configs.get("cleanup.policy").is_some_and(|p| p.split(',').any(|p| p.trim() == "compact")) {
            return;
        }
        let wanted = internal_topics::configs(segment_bytes);
        match self.alter_topic_configs(name, |_| Ok(wanted), false) {
            Ok(()) => tracing::info!(topic = name, "internal topic is compacted from now on"),
            Err(err) => tracing::error!(topic = name, error = %err.message, "cannot make the internal topic compacted"),
        }
    }

    /// A producer id no producer has had, reserving a new block in the metadata log when
    /// the current one is used up. Blocking: the reservation is fsynced.
    fn allocate_producer_id(&self) -> Result<i64, AdminError> {
        let mut ids = self.producer_ids.lock();
        if ids.0 >= ids.1 {
            let end = ids.0 + PRODUCER_ID_BLOCK;
            let mut log = self.metadata_log.lock();
            self.commit(&mut log, vec![MetadataRecord::ProducerIds { next: end }])?;
            ids.1 = end;
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// Creates a topic (or, with `validate_only`, only checks that it could be created).
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<TopicMetadata>, AdminError> {
        validate_topic_name(name)?;
        let partitions = if partitions == -1 { self.config.num_partitions } else { partitions };
        if partitions < 1 {
            return Err(AdminError::new(
                ResponseError::InvalidPartitions,
                format!("a topic needs at least one partition, got {partitions}"),
            ));
        }
        if partitions > 100_000 {
            return Err(AdminError::new(
                ResponseError::InvalidPartitions,
                format!("{partitions} partitions is more than the 100000 allowed"),
            ));
        }
        let log_config = self.topic_log_config(&configs)?;
        let mut log = self.metadata_log.lock();
        if log.state().topic(name).is_some() {
            return Err(AdminError::new(ResponseError::TopicAlreadyExists, format!("topic \"{name}\" already exists")));
        }
        let topic = TopicMetadata { name: name.to_string(), id: Uuid::new_v4(), partitions, configs };
        if validate_only {
            return Ok(Arc::new(topic));
        }
        // Logs first, record second: once the topic is published its partitions are there.
        self.replicas.add_partitions(&topic, &log_config)?;
        let record = MetadataRecord::Topic {
            name: topic.name.clone(),
            id: topic.id,
            partitions,
            configs: topic.configs.clone(),
        };
        if let Err(err) = self.commit(&mut log, vec![record]) {
            self.replicas.remove_topic(name)?;
            return Err(err);
        }
        tracing::info!(topic = name, partitions, "created topic");
        Ok(Arc::new(topic))
    }

    pub fn delete_topic(&self, name: &str) -> Result<Uuid, AdminError> {
        refuse_internal(name, "deleted")?;
        let mut log = self.metadata_log.lock();
        let Some(topic) = log.state().topic(name).cloned() else {
            return Err(AdminError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("topic \"{name}\" does not exist"),
            ));
        };
        self.commit(&mut log, vec![MetadataRecord::RemoveTopic { id: topic.id }])?;
        self.replicas.remove_topic(name)?;
        tracing::info!(topic = name, "deleted topic");
        Ok(topic.id)
    }

    pub fn create_partitions(&self, name: &str, count: i32, validate_only: bool) -> Result<(), AdminError> {
        refuse_internal(name, "given more partitions")?;
        let mut log = self.metadata_log.lock();
        let Some(topic) = log.state().topic(name).cloned() else {
            return Err(AdminError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("topic \"{name}\" does not exist"),
            ));
        };
        if count <= topic.partitions {
            return Err(AdminError::new(
                ResponseError::InvalidPartitions,
                format!(
                    "topic \"{name}\" has {} partitions; the new count must be larger, got {count}",
                    topic.partitions
                ),
            ));
        }
        if count > 100_000 {
            return Err(AdminError::new(
                ResponseError::InvalidPartitions,
                format!("{count} partitions is more than the 100000 allowed"),
            ));
        }
        if validate_only {
            return Ok(());
        }
        let log_config = self.topic_log_config(&topic.configs)?;
        // The new partitions' logs are opened before the record publishes them. Should the
        // record fail, they stay unpublished, and the next start removes their directories.
        let grown = TopicMetadata { partitions: count, ..(*topic).clone() };
        self.replicas.add_partitions(&grown, &log_config)?;
        self.commit(&mut log, vec![MetadataRecord::Partitions { id: topic.id, partitions: count }])?;
        Ok(())
    }

    /// Changes a topic's config overrides to what `alter` makes of the current ones. The
    /// read, the change and the write happen under the metadata lock, so two concurrent
    /// alters cannot lose one another's changes.
    pub fn alter_topic_configs(
        &self,
        name: &str,
        alter: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, AdminError>,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let mut log = self.metadata_log.lock();
        let Some(topic) = log.state().topic(name).cloned() else {
            return Err(AdminError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("topic \"{name}\" does not exist"),
            ));
        };
        let configs = alter(&topic.configs)?;
        let log_config = self.topic_log_config(&configs)?;
        if validate_only {
            return Ok(());
        }
        self.commit(&mut log, vec![MetadataRecord::TopicConfigs { id: topic.id, configs }])?;
        self.replicas.set_config(name, &log_config)?;
        Ok(())
    }

    /// Closes the metadata log cleanly (the last step of a clean shutdown).
    pub(crate) fn close(&self) {
        if let Err(err) = self.metadata_log.lock().close() {
            tracing::error!(%err, "closing the metadata log failed");
        }
    }
}

/// What a coordinator may ask of the controller about its internal topic: to create it
/// the first time it is needed, as Kafka does.
#[derive(Clone)]
pub struct InternalTopics {
    controller: Arc<Controller>,
}

impl InternalTopics {
    pub(crate) fn new(controller: Arc<Controller>) -> InternalTopics {
        InternalTopics { controller }
    }

    /// Creates `name` with `partitions` partitions unless it exists; returns its partition
    /// count. Blocking: the metadata record is fsynced.
    pub fn ensure(&self, name: &str, partitions: i32, segment_bytes: u32) -> Result<i32, ResponseError> {
        self.controller.ensure_internal_topic(name, partitions, segment_bytes)
    }
}

/// What the transaction coordinator may ask of the controller: producer ids no producer
/// has had.
#[derive(Clone)]
pub struct ProducerIdBlocks {
    controller: Arc<Controller>,
}

impl ProducerIdBlocks {
    pub(crate) fn new(controller: Arc<Controller>) -> ProducerIdBlocks {
        ProducerIdBlocks { controller }
    }

    /// A fresh producer id. Blocking when a new block is reserved (fsynced).
    pub fn allocate(&self) -> Result<i64, AdminError> {
        self.controller.allocate_producer_id()
    }
}
