//! The broker: the composition root that opens a data directory and wires its parts. It
//! owns the controller (cluster metadata), the partitions it holds, and the group and
//! transaction coordinators; each part gets the narrow handles it needs from here, never
//! the whole broker. Request handlers and the server's timers reach the parts through it.

use std::sync::Arc;

use sluice_storage::{HandleCache, LogConfig};
use uuid::Uuid;

use crate::clock::{self, Clock};
use crate::config::BrokerConfig;
use crate::controller::{Controller, InternalTopics, ProducerIdBlocks};
use crate::data_dir::{DataDirLock, MetaProperties};
use crate::error::Result;
use crate::fetch_session::FetchSessionCache;
use crate::group::GroupCoordinator;
use crate::internal_topics::{OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC};
use crate::metadata::{ClusterMetadata, Endpoint, MetadataRecord};
use crate::publisher::{self, MetadataPublisher, Reconciled};
use crate::quorum::{BrokerHeartbeat, ControllerRequest, ControllerResponse, MetadataQuorum};
use crate::replica_manager::ReplicaManager;
use crate::topic_config;
use crate::txn::{MarkerWriter, TransactionCoordinator};

pub struct Broker {
    /// The static config this broker was started with.
    pub(crate) config: BrokerConfig,
    _data_dir_lock: DataDirLock,
    pub(crate) controller: Arc<Controller>,
    pub(crate) replicas: Arc<ReplicaManager>,
    pub(crate) groups: Arc<GroupCoordinator>,
    pub(crate) txns: Arc<TransactionCoordinator>,
    /// The clock every state machine of the broker reads.
    pub(crate) clock: Arc<dyn Clock>,
    /// When retention last ran over every log (wall ms).
    last_retention_ms: std::sync::atomic::AtomicI64,
    /// Incremental fetch sessions (KIP-227).
    pub(crate) fetch_sessions: FetchSessionCache,
    /// Applies metadata images to this broker's parts.
    publisher: MetadataPublisher,
    /// This process's registration with the controller: a new one at every start.
    pub(crate) incarnation: Uuid,
    /// The incarnation of the process before this one on the same data directory.
    replaces: Option<Uuid>,
    /// When the active controller last answered this broker's heartbeat, in ms since
    /// `opened`: read on every produce and fetch, so an atomic rather than a lock.
    heard_from_controller_ms: std::sync::atomic::AtomicU64,
    opened: std::time::Instant,
    /// A runtime of the broker's own, for a broker opened outside one (tools and tests); the
    /// server's runtime otherwise.
    _runtime: Option<tokio::runtime::Runtime>,
}

impl Broker {
    /// Opens the broker on the current tokio runtime (a multi-threaded one), or on a small
    /// one of its own when called outside any.
    pub fn open(config: BrokerConfig) -> Result<Arc<Broker>> {
        Broker::open_with_clock(config, clock::system())
    }

    /// [`Broker::open`] with a clock of the caller's (a test's).
    pub fn open_with_clock(config: BrokerConfig, clock: Arc<dyn Clock>) -> Result<Arc<Broker>> {
        config.validate()?;
        // The quorum's tasks need worker threads of their own while this thread blocks on
        // them: a current-thread runtime (a plain #[tokio::test]) cannot give them that.
        let current = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let (own_runtime, runtime) = match current {
            Some(handle) => (None, handle),
            None => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("sluice-broker")
                    .enable_all()
                    .build()?;
                let handle = runtime.handle().clone();
                (Some(runtime), handle)
            }
        };
        let data_dir_lock = DataDirLock::acquire(&config.data_dir)?;
        let incarnation = Uuid::new_v4();
        let previous = MetaProperties::claim(&config.data_dir, config.node_id, incarnation)?;
        let cache = HandleCache::new(config.max_open_segments);
        let (images, published) = publisher::channel();
        let voters = config.cluster.quorum_voters(config.node_id);
        let publish = Arc::new(move |image: Arc<ClusterMetadata>| {
            images.send(image).ok();
        });
        let quorum = MetadataQuorum::open(&config.data_dir, config.node_id, &voters, cache.clone(), runtime, publish)?;
        let metadata = quorum.image();
        let defaults = crate::controller::log_defaults(&config, &metadata);
        let config_for = |defaults: &LogConfig, topic: &crate::metadata::TopicMetadata| {
            topic_config::resolve(defaults, &topic.configs).unwrap_or_else(|err| {
                tracing::error!(topic = %topic.name, %err, "stored topic config is invalid; using broker defaults");
                defaults.clone()
            })
        };
        let replicas = Arc::new(ReplicaManager::open(&config.data_dir, cache, &metadata, config.node_id, |topic| {
            config_for(&defaults, topic)
        })?);
        let reconciled = Arc::new(Reconciled::new(metadata.offset));
        // The coordinators follow leadership of their topics' partitions; they exist after the
        // publisher starts.
        let coordinators: Arc<std::sync::OnceLock<(Arc<GroupCoordinator>, Arc<TransactionCoordinator>)>> =
            Default::default();
        let controller = Arc::new(Controller::new(config.clone(), quorum.clone(), defaults, reconciled.clone()));
        let publisher = {
            let (controller, replicas, coordinators) = (controller.clone(), replicas.clone(), coordinators.clone());
            MetadataPublisher::start(
                published,
                move |image| {
                    let defaults = controller.refresh_defaults(image);
                    if let Err(err) = replicas.apply_image(image, |topic| config_for(&defaults, topic)) {
                        tracing::error!(%err, offset = image.offset, "applying metadata to this broker's partitions failed");
                    }
                    if let Some((groups, txns)) = coordinators.get() {
                        if let Err(err) = groups.follow_leadership() {
                            tracing::error!(%err, "loading the groups of newly led offsets partitions failed");
                        }
                        if let Err(err) = txns.follow_leadership(true) {
                            tracing::error!(%err, "loading the transactions of newly led state partitions failed");
                        }
                    }
                },
                reconciled,
            )
        };
        quorum.service.set(controller.clone()).ok();
        let replaces = previous.incarnation;
        if voters.len() == 1 {
            // A quorum of one elects itself at once: register before serving, so the first
            // request already finds a broker to place partitions on.
            register(&controller, heartbeat_of(&config, incarnation, replaces, false));
        }
        let internal_topics = InternalTopics::new(controller.clone());
        let groups = Arc::new(GroupCoordinator::new(
            config.groups.clone(),
            internal_topics.clone(),
            replicas.clone(),
            clock.clone(),
        ));
        if let Some(offsets_topic) = metadata.topic(OFFSETS_TOPIC) {
            controller.compact_internal_topic(OFFSETS_TOPIC, config.groups.offsets_topic_segment_bytes);
            groups.load(offsets_topic.partitions)?;
        }
        let txns = Arc::new(TransactionCoordinator::new(
            config.transactions.clone(),
            internal_topics,
            ProducerIdBlocks::new(controller.clone()),
            replicas.clone(),
            MarkerWriter::new(replicas.clone(), groups.clone(), config.inter_broker_listener().to_string()),
            clock.clone(),
        ));
        if let Some(state_topic) = metadata.topic(TRANSACTION_STATE_TOPIC) {
            controller.compact_internal_topic(TRANSACTION_STATE_TOPIC, config.transactions.state_segment_bytes);
            txns.load(state_topic.partitions)?;
        }
        tracing::info!(
            data_dir = %config.data_dir.display(),
            cluster_id = %metadata.cluster_id,
            topics = metadata.topics().count(),
            "broker state loaded"
        );
        txns.complete_prepared();
        coordinators.set((groups.clone(), txns.clone())).ok();
        let last_retention_ms = clock.now_ms().into();
        let fetch_sessions = FetchSessionCache::new(config.fetch_session_cache_slots);
        Ok(Arc::new(Broker {
            config,
            _data_dir_lock: data_dir_lock,
            controller,
            replicas,
            groups,
            txns,
            clock,
            last_retention_ms,
            fetch_sessions,
            publisher,
            incarnation,
            replaces,
            heard_from_controller_ms: std::sync::atomic::AtomicU64::new(0),
            opened: std::time::Instant::now(),
            _runtime: own_runtime,
        }))
    }

    /// What this broker tells the controller when it heartbeats.
    pub(crate) fn heartbeat(&self, shutting_down: bool) -> BrokerHeartbeat {
        heartbeat_of(&self.config, self.incarnation, self.replaces, shutting_down)
    }

    /// Records that the active controller answered a heartbeat.
    pub(crate) fn heard_from_controller(&self) {
        let now_ms = self.opened.elapsed().as_millis() as u64;
        self.heard_from_controller_ms.store(now_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this broker is cut off from the controller quorum: no heartbeat answered for
    /// twice `broker.session.timeout.ms`, by when the controller has fenced it and its
    /// partitions have other leaders. It then acts as fenced (its leaderships answer
    /// NOT_LEADER_OR_FOLLOWER, so nothing is written to them, not even acks=1) and sends
    /// clients that ask it for metadata elsewhere, since all it has is stale: without that,
    /// a client asking only this broker would never learn of the new leaders. Twice the
    /// session, so that a controller election (under a second) never sets it off.
    pub(crate) fn cut_off_from_quorum(&self) -> bool {
        if self.config.cluster.voters.len() <= 1 {
            return false;
        }
        let heard_ms = self.heard_from_controller_ms.load(std::sync::atomic::Ordering::Relaxed);
        let silent_ms = (self.opened.elapsed().as_millis() as u64).saturating_sub(heard_ms);
        silent_ms > self.config.cluster.broker_session_timeout_ms * 2
    }

    /// The live brokers and their endpoints on `listener` (the one a client connected on, as
    /// Kafka answers); this broker itself even before its registration lands, so a client
    /// always has somewhere to go.
    pub(crate) fn live_brokers(&self, metadata: &ClusterMetadata, listener: &str) -> Vec<(i32, Endpoint)> {
        let listener = if listener.is_empty() { &self.config.cluster.listener_name } else { listener };
        let mut brokers: Vec<(i32, Endpoint)> =
            metadata.live_brokers().filter_map(|b| b.endpoint(listener).map(|e| (b.node_id, e.clone()))).collect();
        if !brokers.iter().any(|(id, _)| *id == self.config.node_id) {
            if let Some(own) = self.config.advertised(listener) {
                brokers.push((self.config.node_id, own.clone()));
                brokers.sort_by_key(|(id, _)| *id);
            }
        }
        brokers
    }

    /// Proposes the ISR changes this broker's led partitions want (one proposal each).
    pub(crate) async fn propose_isr_changes(&self) {
        let now_ms = self.clock.now_ms();
        let lag_max_ms = self.config.cluster.replica_lag_time_max_ms as i64;
        let metadata = self.replicas.image();
        for partition in self.replicas.all_partitions() {
            let eligible = |replica| metadata.is_live(replica);
            let Some(change) = partition.wanted_isr_change(now_ms, lag_max_ms, eligible) else { continue };
            tracing::info!(topic = %partition.topic, partition = partition.index, isr = ?change.isr, "asking for an ISR change");
            let record = MetadataRecord::PartitionChange {
                topic_id: partition.topic_id,
                partition: partition.index,
                leader: self.config.node_id,
                leader_epoch: change.leader_epoch,
                isr: change.isr,
            };
            let quorum = self.controller.quorum().clone();
            if let Err(err) = quorum.propose(vec![record]).await {
                tracing::debug!(?err, "the ISR change was not made");
            }
        }
    }

    /// The active controller (this broker if none is known).
    pub(crate) fn controller_id(&self) -> i32 {
        self.controller.quorum().leader().unwrap_or(self.config.node_id)
    }

    /// Checks that the quorum's cluster is the one this data directory belongs to, recording
    /// it the first time; the sentence names the mismatch if not.
    pub(crate) fn check_cluster_id(&self) -> std::result::Result<(), String> {
        let cluster_id = self.metadata().cluster_id.clone();
        if cluster_id.is_empty() {
            return Ok(());
        }
        let mut meta = MetaProperties::read(&self.config.data_dir).map_err(|e| e.to_string())?;
        match &meta.cluster_id {
            Some(stored) if *stored == cluster_id => Ok(()),
            Some(stored) => Err(format!(
                "log.dirs {} belongs to cluster {stored}, but controller.quorum.voters is cluster {cluster_id}; \
                 use an empty directory to join this cluster",
                self.config.data_dir.display()
            )),
            None => {
                meta.cluster_id = Some(cluster_id);
                meta.write(&self.config.data_dir).map_err(|e| e.to_string())
            }
        }
    }

    /// Whether the controller has this broker registered and unfenced.
    pub fn is_registered(&self) -> bool {
        self.metadata()
            .brokers
            .get(&self.config.node_id)
            .is_some_and(|b| b.incarnation == self.incarnation && !b.fenced)
    }

    /// The latest cluster metadata.
    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.controller.metadata()
    }

    /// Periodic upkeep of every log: flushes due under `flush.ms` and checkpoints; retention
    /// once every `log.retention.check.interval.ms`, as in Kafka (records past `retention.ms`
    /// stay readable until the next check).
    pub fn maintain_logs(&self) {
        use std::sync::atomic::Ordering;
        let now = self.clock.now_ms();
        let last = self.last_retention_ms.load(Ordering::Relaxed);
        let retention_due = now.saturating_sub(last) >= self.config.log_retention_check_interval_ms as i64;
        if retention_due {
            self.last_retention_ms.store(now, Ordering::Relaxed);
        }
        for partition in self.replicas.all_partitions() {
            let upkeep = partition.log.maintain(now);
            let retention = if retention_due { partition.log.apply_retention(now).map(drop) } else { Ok(()) };
            if let Err(err) = upkeep.and(retention) {
                tracing::error!(topic = %partition.topic, partition = partition.index, %err, "log maintenance failed");
            }
        }
    }

    /// One round of the log cleaner over every compacted log, `log.cleaner.threads` at a time,
    /// each thread with its share of the dedupe buffer. Returns how many passes ran (a log
    /// that needs several gets them in later rounds).
    pub fn clean_logs(&self) -> usize {
        let logs: Vec<_> = self.replicas.all_partitions().into_iter().filter(|p| p.log.config().compact).collect();
        let threads = self.config.cleaner_threads.max(1);
        let budget = self.config.cleaner_dedupe_buffer_size / threads;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let passes = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..threads.min(logs.len()) {
                scope.spawn(|| {
                    while let Some(partition) = logs.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        match partition.log.clean(self.clock.now_ms(), budget) {
                            Ok(Some(stats)) => {
                                passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tracing::info!(
                                    topic = %partition.topic,
                                    partition = partition.index,
                                    segments = stats.segments_rewritten,
                                    bytes_before = stats.bytes_before,
                                    bytes_after = stats.bytes_after,
                                    records_removed = stats.records_removed,
                                    "log cleaned"
                                );
                            }
                            Ok(None) => {}
                            Err(err) => {
                                tracing::error!(topic = %partition.topic, partition = partition.index, %err, "log cleaning failed")
                            }
                        }
                    }
                });
            }
        });
        passes.into_inner()
    }

    /// Clean shutdown: every log flushed and marked clean.
    pub fn shutdown(&self) {
        self.publisher.stop();
        self.replicas.close_all();
        self.controller.close();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A broker may be dropped on an async thread, where a runtime cannot be dropped.
        if let Some(runtime) = self._runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn heartbeat_of(
    config: &BrokerConfig,
    incarnation: Uuid,
    replaces: Option<Uuid>,
    shutting_down: bool,
) -> BrokerHeartbeat {
    // The server has advertised every broker listener by the time the broker opens.
    let endpoints =
        config.broker_listeners().iter().filter_map(|listener| config.advertised(&listener.name).cloned()).collect();
    BrokerHeartbeat { node_id: config.node_id, incarnation, endpoints, replaces, shutting_down }
}

/// Registers this broker with the controller (blocking, bounded by the propose timeout).
fn register(controller: &Arc<Controller>, heartbeat: BrokerHeartbeat) {
    let quorum = controller.quorum().clone();
    let (tx, rx) = std::sync::mpsc::channel();
    quorum.runtime().spawn({
        let quorum = quorum.clone();
        async move {
            let answer = quorum.call_controller(ControllerRequest::Heartbeat(heartbeat)).await;
            if let Ok(ControllerResponse::Alive) = answer {
                // The registration is applied here too before anything is placed on it.
                quorum.wait_for_offset(quorum.committed_offset(), crate::quorum::PROPOSE_TIMEOUT).await;
            }
            tx.send(answer).ok();
        }
    });
    match rx.recv_timeout(crate::quorum::PROPOSE_TIMEOUT * 2) {
        Ok(Ok(ControllerResponse::Alive)) => {}
        other => tracing::warn!(answer = ?other, "registering with the controller failed; the heartbeat retries"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::error::ResponseError;
    use std::collections::BTreeMap;

    fn config(dir: &std::path::Path) -> BrokerConfig {
        BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() }
    }

    #[test]
    fn internal_topics_an_older_sluice_made_become_compacted_keeping_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(config(dir.path())).unwrap();
        // As a Sluice before compaction made it: retention off, delete policy.
        let old: BTreeMap<String, String> = [("retention.ms", "-1"), ("retention.bytes", "-1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        broker.controller.create_topic(OFFSETS_TOPIC, 2, old, false).unwrap();
        broker.groups.load(2).unwrap();
        let claim = crate::group::MemberClaim { generation_id: -1, member_id: "", group_instance_id: None };
        broker.controller.create_topic("t", 1, BTreeMap::new(), false).unwrap();
        let commit =
            crate::group::OffsetCommit { topic: "t".into(), partition: 0, offset: 42, leader_epoch: 0, metadata: None };
        let pending = broker.groups.commit_offsets("g", claim, -1, &[commit], None);
        assert_eq!(pending.results, vec![None]);
        broker.shutdown();
        drop(broker);

        let broker = Broker::open(config(dir.path())).unwrap();
        let topic = broker.metadata().topic(OFFSETS_TOPIC).cloned().unwrap();
        assert_eq!(topic.configs.get("cleanup.policy").map(String::as_str), Some("compact"));
        assert!(broker.replicas.partition(OFFSETS_TOPIC, 0).unwrap().log.config().compact);
        let group = broker.groups.group("g").expect("the group's commit was kept");
        assert_eq!(group.lock().offsets.get("t", 0).map(|c| c.offset), Some(42));
    }

    #[test]
    fn dynamic_broker_configs_apply_to_live_topics_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(config(dir.path())).unwrap();
        broker.controller.create_topic("clicks", 2, BTreeMap::new(), false).unwrap();
        let pinned = BTreeMap::from([("retention.ms".to_string(), "5000".to_string())]);
        broker.controller.create_topic("pinned", 1, pinned, false).unwrap();

        let dynamic = BTreeMap::from([("log.retention.ms".to_string(), "1000".to_string())]);
        broker.controller.alter_broker_configs(|_| Ok(dynamic), false).unwrap();
        let retention = |topic: &str| broker.replicas.partition(topic, 0).unwrap().log.config().retention_ms;
        assert_eq!(retention("clicks"), Some(1000));
        assert_eq!(retention("pinned"), Some(5000), "a topic override still wins");

        let err = broker
            .controller
            .alter_broker_configs(|_| Ok(BTreeMap::from([("listeners".into(), "127.0.0.1:1".into())])), false)
            .unwrap_err();
        assert!(err.message.contains("listeners"), "{}", err.message);
        let err = broker
            .controller
            .alter_broker_configs(|_| Ok(BTreeMap::from([("log.segment.bytes".into(), "tiny".into())])), false)
            .unwrap_err();
        assert!(err.message.contains("log.segment.bytes"), "{}", err.message);
        assert_eq!(retention("clicks"), Some(1000), "a refused change changes nothing");

        broker.shutdown();
        drop(broker);
        let broker = Broker::open(config(dir.path())).unwrap();
        assert_eq!(broker.replicas.partition("clicks", 1).unwrap().log.config().retention_ms, Some(1000));
        assert_eq!(broker.controller.effective_config().log_defaults.retention_ms, Some(1000));
    }

    #[test]
    fn the_metadata_log_cannot_be_reached_as_a_topic() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(config(dir.path())).unwrap();
        let err = broker.controller.create_topic("__cluster_metadata", 1, BTreeMap::new(), false).unwrap_err();
        assert_eq!(err.code, ResponseError::InvalidRequest);
    }

    #[test]
    fn startup_removes_only_directories_it_can_prove_are_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("backup-2024");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("keep-me"), b"x").unwrap();
        let broker = Broker::open(config(dir.path())).unwrap();
        broker.controller.create_topic("gone", 1, BTreeMap::new(), false).unwrap();
        // A deletion whose directory removal never happened (a crash after the record).
        let gone = dir.path().join("gone-0");
        let kept = dir.path().join("gone-0-kept-by-crash");
        broker.shutdown();
        drop(broker);
        std::fs::rename(&gone, &kept).unwrap();
        let broker = Broker::open(config(dir.path())).unwrap();
        broker.controller.delete_topic("gone").unwrap();
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
        broker.controller.create_topic("t", 1, BTreeMap::new(), false).unwrap();
        let old = broker.replicas.partition("t", 0).unwrap();
        broker.controller.delete_topic("t").unwrap();
        broker.controller.create_topic("t", 1, BTreeMap::new(), false).unwrap();
        let mut builder = sluice_storage::RecordBatchBuilder::new(0);
        builder.push(0, None, Some(b"late"), &[]);
        let batch = builder.build().unwrap();
        assert!(old.append(&batch, 0).is_err(), "an append to a deleted topic landed");
        old.log.maintain(i64::MAX / 2).unwrap();
        let new = broker.replicas.partition("t", 0).unwrap();
        assert_eq!(new.log.log_end_offset().0, 0);
        broker.shutdown();
        drop(broker);
        let broker = Broker::open(config(dir.path())).unwrap();
        assert_eq!(broker.replicas.partition("t", 0).unwrap().log.log_end_offset().0, 0);
    }
}
