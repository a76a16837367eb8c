//! The broker's shared state: configuration, cluster metadata and the partitions it holds.
//! Admin changes (topics, partitions, configs) go through here so that each is recorded in
//! the metadata log before it takes effect.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use parking_lot::{Mutex, RwLock};
use sluice_storage::{HandleCache, LogConfig};
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::data_dir::DataDirLock;
use crate::error::Result;
use crate::group::{GroupCoordinator, OFFSETS_TOPIC};
use crate::metadata::{ClusterMetadata, MetadataLog, MetadataRecord, TopicMetadata};
use crate::replica_manager::ReplicaManager;
use crate::topic_config;
use crate::txn::{TransactionCoordinator, TRANSACTION_STATE_TOPIC};

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

pub struct Broker {
    pub config: BrokerConfig,
    _data_dir_lock: DataDirLock,
    metadata_log: Mutex<MetadataLog>,
    /// The latest metadata, cheap to snapshot for every request.
    metadata: RwLock<Arc<ClusterMetadata>>,
    /// Topic defaults: the static config with the dynamic broker configs applied.
    log_defaults: RwLock<LogConfig>,
    pub replicas: ReplicaManager,
    pub groups: GroupCoordinator,
    pub txns: TransactionCoordinator,
    /// The next producer id to hand out, and the end of the block the metadata log has
    /// reserved.
    producer_ids: Mutex<(i64, i64)>,
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

/// Topics the broker writes itself (`__consumer_offsets`, `__transaction_state`): clients may read them, but not
/// write, delete or repartition them (a group's partition is a hash modulo their count).
pub fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC || name == TRANSACTION_STATE_TOPIC
}

/// The topic configs of an internal topic: never deleted by retention (the coordinator that
/// owns it keeps it small by rewriting its live state), with small indexes because its
/// records are small (50 partitions times Kafka's 10 MiB would preallocate a gigabyte).
fn internal_topic_configs(segment_bytes: u32) -> BTreeMap<String, String> {
    let segment_bytes = segment_bytes.to_string();
    [
        ("retention.ms", "-1"),
        ("retention.bytes", "-1"),
        ("segment.bytes", segment_bytes.as_str()),
        ("segment.index.bytes", "1048576"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn refuse_internal(name: &str, action: &str) -> Result<(), AdminError> {
    if is_internal_topic(name) {
        return Err(AdminError::new(
            ResponseError::InvalidTopicException,
            format!("internal topic {name} cannot be {action}"),
        ));
    }
    Ok(())
}

impl Broker {
    pub fn open(config: BrokerConfig) -> Result<Arc<Broker>> {
        config.validate()?;
        let data_dir_lock = DataDirLock::acquire(&config.data_dir)?;
        let cache = HandleCache::new(config.max_open_segments);
        let metadata_log = MetadataLog::open(&config.data_dir, cache.clone())?;
        let metadata = Arc::new(metadata_log.state().clone());
        let defaults = match config.with_dynamic(&metadata.broker_configs) {
            Ok(effective) => effective.log_defaults,
            Err(err) => {
                tracing::error!(%err, "stored dynamic broker configs are invalid; using the static ones");
                config.log_defaults.clone()
            }
        };
        let replicas = ReplicaManager::open(&config.data_dir, cache, &metadata, |topic| {
            topic_config::resolve(&defaults, &topic.configs).unwrap_or_else(|err| {
                tracing::error!(topic = %topic.name, %err, "stored topic config is invalid; using broker defaults");
                defaults.clone()
            })
        })?;
        let producer_ids_next = metadata.producer_ids_next;
        let groups = GroupCoordinator::new(config.groups.clone());
        if let Some(offsets_topic) = metadata.topic(OFFSETS_TOPIC) {
            groups.load(&replicas, offsets_topic.partitions)?;
        }
        let txns = TransactionCoordinator::default();
        if let Some(state_topic) = metadata.topic(TRANSACTION_STATE_TOPIC) {
            txns.load(&replicas, state_topic.partitions)?;
        }
        tracing::info!(
            data_dir = %config.data_dir.display(),
            cluster_id = %metadata.cluster_id,
            topics = metadata.topics().count(),
            "broker state loaded"
        );
        let broker = Arc::new(Broker {
            config,
            _data_dir_lock: data_dir_lock,
            metadata_log: Mutex::new(metadata_log),
            metadata: RwLock::new(metadata),
            log_defaults: RwLock::new(defaults),
            replicas,
            groups,
            txns,
            producer_ids: Mutex::new((producer_ids_next, producer_ids_next)),
        });
        broker.txns.complete_prepared(&broker);
        Ok(broker)
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

    /// Replaces the dynamic broker configs, and re-applies every topic's config on top of the
    /// new defaults. Every topic must still resolve under them, or nothing changes.
    pub fn set_broker_configs(&self, configs: BTreeMap<String, String>, validate_only: bool) -> Result<(), AdminError> {
        self.alter_broker_configs(|_| Ok(configs), validate_only)
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
    pub fn ensure_internal_topic(&self, name: &str, partitions: i32, segment_bytes: u32) -> Result<i32, ResponseError> {
        match self.create_topic(name, partitions, internal_topic_configs(segment_bytes), false) {
            Ok(topic) => Ok(topic.partitions),
            Err(err) if err.code == ResponseError::TopicAlreadyExists => {
                Ok(self.metadata().topic(name).map(|t| t.partitions).unwrap_or(0))
            }
            Err(err) => {
                tracing::error!(error = %err.message, "cannot create {name}");
                Err(ResponseError::CoordinatorNotAvailable)
            }
        }
    }

    /// A producer id no producer has had, reserving a new block in the metadata log when
    /// the current one is used up. Blocking: the reservation is fsynced.
    pub fn allocate_producer_id(&self) -> Result<i64, AdminError> {
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

    /// Periodic upkeep of every log: flushes due under `flush.ms`, retention, checkpoints.
    pub fn maintain_logs(&self) {
        let now = sluice_storage::now_ms();
        for partition in self.replicas.all_partitions() {
            if let Err(err) = partition.log.maintain(now) {
                tracing::error!(topic = %partition.topic, partition = partition.index, %err, "log maintenance failed");
            }
        }
    }

    /// Clean shutdown: every log flushed and marked clean.
    pub fn shutdown(&self) {
        self.replicas.close_all();
        if let Err(err) = self.metadata_log.lock().close() {
            tracing::error!(%err, "closing the metadata log failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> BrokerConfig {
        BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() }
    }

    #[test]
    fn dynamic_broker_configs_apply_to_live_topics_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(config(dir.path())).unwrap();
        broker.create_topic("clicks", 2, BTreeMap::new(), false).unwrap();
        let pinned = BTreeMap::from([("retention.ms".to_string(), "5000".to_string())]);
        broker.create_topic("pinned", 1, pinned, false).unwrap();

        let dynamic = BTreeMap::from([("log.retention.ms".to_string(), "1000".to_string())]);
        broker.set_broker_configs(dynamic, false).unwrap();
        let retention = |topic: &str| broker.replicas.partition(topic, 0).unwrap().log.config().retention_ms;
        assert_eq!(retention("clicks"), Some(1000));
        assert_eq!(retention("pinned"), Some(5000), "a topic override still wins");

        let err =
            broker.set_broker_configs(BTreeMap::from([("listeners".into(), "127.0.0.1:1".into())]), false).unwrap_err();
        assert!(err.message.contains("listeners"), "{}", err.message);
        let err = broker
            .set_broker_configs(BTreeMap::from([("log.segment.bytes".into(), "tiny".into())]), false)
            .unwrap_err();
        assert!(err.message.contains("log.segment.bytes"), "{}", err.message);
        assert_eq!(retention("clicks"), Some(1000), "a refused change changes nothing");

        broker.shutdown();
        drop(broker);
        let broker = Broker::open(config(dir.path())).unwrap();
        assert_eq!(broker.replicas.partition("clicks", 1).unwrap().log.config().retention_ms, Some(1000));
        assert_eq!(broker.effective_config().log_defaults.retention_ms, Some(1000));
    }

    #[test]
    fn the_metadata_log_cannot_be_reached_as_a_topic() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(config(dir.path())).unwrap();
        let err = broker.create_topic("__cluster_metadata", 1, BTreeMap::new(), false).unwrap_err();
        assert_eq!(err.code, ResponseError::InvalidRequest);
    }

    #[test]
    fn startup_removes_only_directories_it_can_prove_are_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("backup-2024");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("keep-me"), b"x").unwrap();
        let broker = Broker::open(config(dir.path())).unwrap();
        broker.create_topic("gone", 1, BTreeMap::new(), false).unwrap();
        // A deletion whose directory removal never happened (a crash after the record).
        let gone = dir.path().join("gone-0");
        let kept = dir.path().join("gone-0-kept-by-crash");
        broker.shutdown();
        drop(broker);
        std::fs::rename(&gone, &kept).unwrap();
        let broker = Broker::open(config(dir.path())).unwrap();
        broker.delete_topic("gone").unwrap();
        broker.shutdown();
        drop(broker);
        Broker::open(config(dir.path())).unwrap();
        assert!(foreign.join("keep-me").exists(), "a directory that is not Sluice's was deleted");
        assert!(!kept.exists(), "a partition directory of a deleted topic survived");
    }

    #[test]
    fn a_deleted_topic_cannot_write_into_its_recreated_namesake() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(config(dir.path())).unwrap();
        broker.create_topic("t", 1, BTreeMap::new(), false).unwrap();
        let old = broker.replicas.partition("t", 0).unwrap();
        broker.delete_topic("t").unwrap();
        broker.create_topic("t", 1, BTreeMap::new(), false).unwrap();
        let mut builder = sluice_storage::RecordBatchBuilder::new(0);
        builder.push(0, None, Some(b"late"), &[]);
        let batch = builder.build().unwrap();
        assert!(
            old.log.append(&batch, sluice_storage::LeaderEpoch(0), 0).is_err(),
            "an append to a deleted topic landed"
        );
        old.log.maintain(i64::MAX / 2).unwrap();
        let new = broker.replicas.partition("t", 0).unwrap();
        assert_eq!(new.log.log_end_offset().0, 0);
        broker.shutdown();
        drop(broker);
        let broker = Broker::open(config(dir.path())).unwrap();
        assert_eq!(broker.replicas.partition("t", 0).unwrap().log.log_end_offset().0, 0);
    }
}
