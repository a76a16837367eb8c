//! The controller: the only writer of cluster metadata (topics with their ids, partitions
//! and where they live, configs, brokers, producer-id blocks). Each change is checked against
//! the image, proposed to the metadata quorum and takes effect once committed, so what the log
//! says is what every broker does after any restart. Any broker takes admin requests; the
//! proposal goes to the active controller (the quorum's leader). The active controller also
//! keeps brokers' liveness: heartbeats register and unfence brokers, and a broker silent for
//! `broker.session.timeout.ms` is fenced and its partitions get other leaders
//! ([`crate::liveness`]).
//!
//! Coordinators reach it only through the narrow handles at the end of this file
//! ([`InternalTopics`], [`ProducerIdBlocks`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use parking_lot::{Mutex, RwLock};
use sluice_storage::LogConfig;
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::error::Result;
use crate::internal_topics;
use crate::liveness::Liveness;
use crate::metadata::{ClusterMetadata, MetadataRecord, PartitionAssignment, TopicMetadata};
use crate::publisher::Reconciled;
use crate::quorum::{ControllerRequest, ControllerResponse, MetadataQuorum, ProposeError};
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

impl From<ProposeError> for AdminError {
    fn from(err: ProposeError) -> AdminError {
        match err {
            ProposeError::Refused(code, message) => AdminError::new(code, message),
            ProposeError::Unavailable(why) => {
                AdminError::new(ResponseError::RequestTimedOut, format!("no active controller answered: {why}"))
            }
        }
    }
}

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
    quorum: Arc<MetadataQuorum>,
    /// Topic defaults: the static config with the dynamic broker configs applied.
    log_defaults: RwLock<LogConfig>,
    /// How far this broker has acted on the metadata: a change is done here once it has.
    reconciled: Arc<Reconciled>,
    /// The next producer id to hand out, and the end of the block reserved for this broker.
    producer_ids: Mutex<(i64, i64)>,
    /// Serialises this broker's read-modify-write changes (config alters), so two concurrent
    /// alters through it cannot lose one another's changes.
    alter_lock: Mutex<()>,
    /// Brokers' heartbeats, as the active controller has seen them.
    liveness: Liveness,
    /// When this controller last looked for preferred and for unclean elections.
    last_rebalance: Mutex<std::time::Instant>,
    last_unclean_check: Mutex<std::time::Instant>,
}

impl Controller {
    pub(crate) fn new(
        config: BrokerConfig,
        quorum: Arc<MetadataQuorum>,
        log_defaults: LogConfig,
        reconciled: Arc<Reconciled>,
    ) -> Controller {
        let liveness = Liveness::new(Duration::from_millis(config.cluster.broker_session_timeout_ms));
        Controller {
            config,
            quorum,
            log_defaults: RwLock::new(log_defaults),
            reconciled,
            producer_ids: Mutex::new((0, 0)),
            alter_lock: Mutex::new(()),
            liveness,
            last_rebalance: Mutex::new(std::time::Instant::now()),
            last_unclean_check: Mutex::new(std::time::Instant::now()),
        }
    }

    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.quorum.image()
    }

    pub fn quorum(&self) -> &Arc<MetadataQuorum> {
        &self.quorum
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

    /// Takes the dynamic broker configs of a new image; returns the topic defaults now in force.
    pub(crate) fn refresh_defaults(&self, metadata: &ClusterMetadata) -> LogConfig {
        let defaults = log_defaults(&self.config, metadata);
        *self.log_defaults.write() = defaults.clone();
        defaults
    }

    /// Proposes `records` and waits until this broker has acted on them. Blocking.
    pub(crate) fn commit(&self, records: Vec<MetadataRecord>) -> Result<u64, AdminError> {
        let offset = self.quorum.propose_blocking(records)?;
        if !self.reconciled.wait(offset, crate::quorum::PROPOSE_TIMEOUT) {
            tracing::warn!(offset, "a metadata change landed but this broker has not applied it yet");
        }
        Ok(offset)
    }

    /// Changes the dynamic broker configs to what `alter` makes of the current ones.
    pub fn alter_broker_configs(
        &self,
        alter: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, AdminError>,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let invalid = |msg: String| AdminError::new(ResponseError::InvalidConfig, msg);
        let _serialised = self.alter_lock.lock();
        let metadata = self.metadata();
        let configs = alter(&metadata.broker_configs)?;
        let effective = self.config.with_dynamic(&configs).map_err(invalid)?;
        for topic in metadata.topics() {
            topic_config::resolve(&effective.log_defaults, &topic.configs)
                .map_err(|msg| invalid(format!("topic {}: {msg}", topic.name)))?;
        }
        if validate_only {
            return Ok(());
        }
        self.commit(vec![MetadataRecord::BrokerConfigs { configs }])?;
        Ok(())
    }

    /// Creates an internal topic the first time its coordinator needs it (as Kafka does), and
    /// returns its partition count. Blocking: metadata is fsynced.
    fn ensure_internal_topic(&self, name: &str, partitions: i32, segment_bytes: u32) -> Result<i32, ResponseError> {
        let (factor, min_isr) = if name == internal_topics::TRANSACTION_STATE_TOPIC {
            (self.config.transactions.state_replication_factor, self.config.transactions.state_min_isr)
        } else {
            (self.config.groups.offsets_topic_replication_factor, 1)
        };
        // Kafka's factors (3) assume a cluster of three; a smaller quorum (a single node)
        // gets as many replicas as it has voters, so no configuration is needed to start one.
        let voters = self.config.cluster.quorum_voters(self.config.node_id).len() as i32;
        let factor = factor.min(voters);
        let mut configs = internal_topics::configs(segment_bytes);
        configs.insert("min.insync.replicas".into(), min_isr.min(factor).to_string());
        match self.create_topic_with(name, partitions, factor, None, configs, false) {
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

    /// A producer id no producer has had, reserving a new block in the metadata when the
    /// current one is used up. Blocking when it reserves.
    fn allocate_producer_id(&self) -> Result<i64, AdminError> {
        let mut ids = self.producer_ids.lock();
        // Another broker may reserve the same block first: the loser reads the image again.
        let mut attempts = 0;
        while ids.0 >= ids.1 {
            let from = self.metadata().producer_ids_next;
            let next = from + PRODUCER_ID_BLOCK;
            match self.commit(vec![MetadataRecord::ReserveProducerIds { from, next }]) {
                Ok(_) => *ids = (from, next),
                Err(err) if err.code == ResponseError::ConcurrentTransactions && attempts < 20 => attempts += 1,
                Err(err) => return Err(err),
            }
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// Replicas for `count` new partitions, `replication_factor` each, spread over the live
    /// brokers round robin from a point that differs per topic (as Kafka's placement does).
    fn place(&self, count: i32, replication_factor: i32, seed: usize) -> Result<Vec<PartitionAssignment>, AdminError> {
        let live: Vec<i32> = self.metadata().live_brokers().map(|b| b.node_id).collect();
        if replication_factor < 1 || replication_factor as usize > live.len() {
            return Err(AdminError::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {replication_factor} cannot be reached: {} broker(s) are registered and alive",
                    live.len()
                ),
            ));
        }
        let n = live.len();
        Ok((0..count as usize)
            .map(|i| {
                let start = (seed + i) % n;
                PartitionAssignment::new((0..replication_factor as usize).map(|k| live[(start + k) % n]).collect())
            })
            .collect())
    }

    /// Checks a topic's partition count (Kafka's limits and messages).
    fn check_partition_count(&self, partitions: i32) -> Result<i32, AdminError> {
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
        Ok(partitions)
    }

    /// Creates a topic with the default replication factor and placement.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<TopicMetadata>, AdminError> {
        self.create_topic_with(name, partitions, -1, None, configs, validate_only)
    }

    /// Creates a topic (or, with `validate_only`, only checks that it could be created) with
    /// `replication_factor` replicas per partition (-1: `default.replication.factor`), or on
    /// the replicas `assignments` names.
    pub fn create_topic_with(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i32,
        assignments: Option<Vec<Vec<i32>>>,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<TopicMetadata>, AdminError> {
        validate_topic_name(name)?;
        self.topic_log_config(&configs)?;
        if self.metadata().topic(name).is_some() {
            return Err(AdminError::new(ResponseError::TopicAlreadyExists, format!("topic \"{name}\" already exists")));
        }
        let id = Uuid::new_v4();
        let assignments = match assignments {
            Some(explicit) => self.check_assignments(explicit)?,
            None => {
                let partitions = self.check_partition_count(partitions)?;
                let factor = if replication_factor == -1 {
                    self.config.cluster.default_replication_factor
                } else {
                    replication_factor
                };
                self.place(partitions, factor, id.as_bytes()[0] as usize)?
            }
        };
        let topic =
            TopicMetadata { name: name.to_string(), id, partitions: assignments.len() as i32, configs, assignments };
        if validate_only {
            return Ok(Arc::new(topic));
        }
        self.commit(vec![MetadataRecord::Topic {
            name: topic.name.clone(),
            id: topic.id,
            partitions: topic.partitions,
            configs: topic.configs.clone(),
            assignments: topic.assignments.clone(),
        }])?;
        tracing::info!(topic = name, partitions = topic.partitions, "created topic");
        Ok(self.metadata().topic(name).cloned().unwrap_or_else(|| Arc::new(topic)))
    }

    /// Checks replica lists a client gave for new partitions: each names distinct live
    /// brokers, and all have the same length.
    fn check_assignments(&self, explicit: Vec<Vec<i32>>) -> Result<Vec<PartitionAssignment>, AdminError> {
        let metadata = self.metadata();
        let bad = |message: String| AdminError::new(ResponseError::InvalidReplicaAssignment, message);
        let factor = explicit.first().map_or(0, Vec::len);
        for (index, replicas) in explicit.iter().enumerate() {
            if replicas.is_empty() || replicas.len() != factor {
                return Err(bad(format!(
                    "partition {index} has {} replicas; every partition needs {factor}",
                    replicas.len()
                )));
            }
            let mut seen = replicas.clone();
            seen.sort_unstable();
            seen.dedup();
            if seen.len() != replicas.len() {
                return Err(bad(format!("partition {index} names a broker twice")));
            }
            if let Some(unknown) = replicas.iter().find(|b| !metadata.brokers.contains_key(b)) {
                return Err(bad(format!("partition {index} names broker {unknown}, which is not registered")));
            }
        }
        self.check_partition_count(explicit.len() as i32)?;
        Ok(explicit.into_iter().map(PartitionAssignment::new).collect())
    }

    pub fn delete_topic(&self, name: &str) -> Result<Uuid, AdminError> {
        refuse_internal(name, "deleted")?;
        let Some(topic) = self.metadata().topic(name).cloned() else {
            return Err(AdminError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("topic \"{name}\" does not exist"),
            ));
        };
        self.commit(vec![MetadataRecord::RemoveTopic { id: topic.id }])?;
        tracing::info!(topic = name, "deleted topic");
        Ok(topic.id)
    }

    pub fn create_partitions(&self, name: &str, count: i32, validate_only: bool) -> Result<(), AdminError> {
        refuse_internal(name, "given more partitions")?;
        let Some(topic) = self.metadata().topic(name).cloned() else {
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
        self.check_partition_count(count)?;
        let factor = topic.assignments.first().map_or(1, |a| a.replicas.len() as i32);
        let seed = topic.id.as_bytes()[0] as usize + topic.partitions as usize;
        let assignments = self.place(count - topic.partitions, factor, seed)?;
        if validate_only {
            return Ok(());
        }
        self.commit(vec![MetadataRecord::Partitions { id: topic.id, partitions: count, assignments }])?;
        Ok(())
    }

    /// Changes a topic's config overrides to what `alter` makes of the current ones.
    pub fn alter_topic_configs(
        &self,
        name: &str,
        alter: impl FnOnce(&BTreeMap<String, String>) -> Result<BTreeMap<String, String>, AdminError>,
        validate_only: bool,
    ) -> Result<(), AdminError> {
        let _serialised = self.alter_lock.lock();
        let Some(topic) = self.metadata().topic(name).cloned() else {
            return Err(AdminError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("topic \"{name}\" does not exist"),
            ));
        };
        let configs = alter(&topic.configs)?;
        self.topic_log_config(&configs)?;
        if validate_only {
            return Ok(());
        }
        self.commit(vec![MetadataRecord::TopicConfigs { id: topic.id, configs }])?;
        Ok(())
    }

    /// The active controller's answer to a broker's heartbeat: registers a new incarnation,
    /// unfences a returning one (electing it where its partitions have no leader), or fences
    /// one that is shutting down.
    pub async fn heartbeat(&self, heartbeat: crate::quorum::BrokerHeartbeat) -> ControllerResponse {
        // A leader the other voters have not answered for a session may have been replaced:
        // its answer would keep a broker believing it is not fenced.
        let session = std::time::Duration::from_millis(self.config.cluster.broker_session_timeout_ms);
        if !self.quorum.leads_with_quorum(session) {
            return ControllerResponse::NotController;
        }
        let image = self.quorum.image();
        match self.liveness.on_heartbeat(&image, &heartbeat, self.quorum.term()) {
            Err(message) => ControllerResponse::Refused(ResponseError::DuplicateBrokerRegistration.code(), message),
            Ok(records) if records.is_empty() => ControllerResponse::Alive,
            Ok(records) => match self.quorum.propose_as_leader(records).await {
                ControllerResponse::Proposed(_) => ControllerResponse::Alive,
                other => other,
            },
        }
    }

    /// The active controller's periodic duties: names a new cluster, and fences brokers whose
    /// session expired.
    pub async fn fence_expired_brokers(&self) {
        if !self.quorum.is_leader() {
            return;
        }
        let image = self.quorum.image();
        if image.cluster_id.is_empty() {
            // Only the first Cluster record counts, so two controllers racing here agree.
            let cluster_id = Uuid::new_v4().simple().to_string();
            self.quorum.propose_as_leader(vec![MetadataRecord::Cluster { cluster_id }]).await;
        }
        for records in self.liveness.expired(&image, self.quorum.term()) {
            if let ControllerResponse::Refused(_, message) = self.quorum.propose_as_leader(records).await {
                tracing::warn!(%message, "fencing a broker failed");
            }
        }
        self.elect_on_its_own(&image).await;
    }

    /// Unclean elections (looked for every second) and preferred leaders back (every
    /// `leader.imbalance.check.interval.seconds`), one proposal per partition so that one
    /// that no longer fits does not hold back the others.
    async fn elect_on_its_own(&self, image: &ClusterMetadata) {
        let now = std::time::Instant::now();
        let due = |last: &Mutex<std::time::Instant>, every: Duration| {
            let mut last = last.lock();
            let due = now.duration_since(*last) >= every;
            if due {
                *last = now;
            }
            due
        };
        let mut records = Vec::new();
        if due(&self.last_unclean_check, Duration::from_secs(1)) {
            records.extend(crate::leader_balance::unclean_elections(image, |configs| {
                self.unclean_allowed(configs, image)
            }));
        }
        let cluster = &self.config.cluster;
        let every = Duration::from_millis(cluster.leader_imbalance_check_interval_ms);
        if cluster.auto_leader_rebalance_enable && due(&self.last_rebalance, every) {
            let elections =
                crate::leader_balance::preferred_elections(image, cluster.leader_imbalance_per_broker_percentage);
            if !elections.is_empty() {
                tracing::info!(partitions = elections.len(), "moving leaders back to their preferred replicas");
            }
            records.extend(elections);
        }
        for record in records {
            if let ControllerResponse::Refused(_, message) = self.quorum.propose_as_leader(vec![record]).await {
                tracing::debug!(%message, "a leader election no longer applies");
            }
        }
    }

    /// `unclean.leader.election.enable` for a topic: its override, else the dynamic broker
    /// config, else the static one (false by default, as in Kafka).
    fn unclean_allowed(&self, configs: &BTreeMap<String, String>, image: &ClusterMetadata) -> bool {
        const KEY: &str = "unclean.leader.election.enable";
        let value = configs.get(KEY).or(image.broker_configs.get(KEY)).or(self.config.static_settings.get(KEY));
        value.is_some_and(|v| v.trim() == "true")
    }

    /// Stops the metadata quorum (the last step of a clean shutdown).
    pub(crate) fn close(&self) {
        self.quorum.close();
    }
}

impl crate::quorum::ControllerService for Controller {
    fn handle(
        &self,
        request: ControllerRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ControllerResponse> + Send + '_>> {
        Box::pin(async move {
            match request {
                ControllerRequest::Propose(records) if self.quorum.is_leader() => {
                    self.quorum.propose_as_leader(records).await
                }
                ControllerRequest::Propose(_) => ControllerResponse::NotController,
                ControllerRequest::Heartbeat(heartbeat) => self.heartbeat(heartbeat).await,
                ControllerRequest::DescribeQuorum => match self.quorum.describe() {
                    Some(description) => ControllerResponse::Quorum(description),
                    None => ControllerResponse::NotController,
                },
            }
        })
    }
}

/// Topic defaults: the static ones with the stored dynamic broker configs applied.
pub(crate) fn log_defaults(config: &BrokerConfig, metadata: &ClusterMetadata) -> LogConfig {
    match config.with_dynamic(&metadata.broker_configs) {
        Ok(effective) => effective.log_defaults,
        Err(err) => {
            tracing::error!(%err, "stored dynamic broker configs are invalid; using the static ones");
            config.log_defaults.clone()
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
