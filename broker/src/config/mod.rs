//! Broker configuration: where to listen, what to advertise, where data lives, and the
//! defaults new topics get. Every value is checked at start with a message naming the key.

use std::net::SocketAddr;
use std::path::PathBuf;

use sluice_storage::LogConfig;

use crate::error::{Error, Result};
use crate::metadata::Endpoint;
use crate::topic_config;

mod listeners;
pub use listeners::BrokerListener;

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `listeners`: the address the first broker listener binds (its name is
    /// `cluster.listener_name`).
    pub listener: SocketAddr,
    /// The further broker listeners `listeners` names, e.g. one for inter-broker traffic.
    pub other_listeners: Vec<BrokerListener>,
    /// `advertised.listeners`: the host and port each broker listener is advertised as. The
    /// server adds the bound address of a listener this does not name, as Kafka advertises
    /// `listeners` by default.
    pub advertised_listeners: Vec<Endpoint>,
    /// `log.dirs`: one data directory.
    pub data_dir: PathBuf,
    /// `node.id`.
    pub node_id: i32,
    /// `num.partitions`: partitions of a topic created without a count (or auto-created).
    pub num_partitions: i32,
    /// `auto.create.topics.enable`.
    pub auto_create_topics_enable: bool,
    /// `socket.request.max.bytes`: the largest request frame accepted; checked before any
    /// buffer is allocated.
    pub socket_request_max_bytes: usize,
    /// Defaults for every topic's log (`log.segment.bytes`, `log.retention.ms`, flush policy...).
    pub log_defaults: LogConfig,
    /// Open segment handles (files and mappings) shared by all partitions.
    pub max_open_segments: usize,
    /// `log.retention.check.interval.ms`: how often retention looks for segments to delete.
    pub log_retention_check_interval_ms: u64,
    /// `max.incremental.fetch.session.cache.slots`: fetch sessions (KIP-227) held at once.
    pub fetch_session_cache_slots: usize,
    /// The log cleaner (compaction): `log.cleaner.enable`, `log.cleaner.threads`,
    /// `log.cleaner.dedupe.buffer.size` (shared by the threads) and `log.cleaner.backoff.ms`
    /// (the pause between rounds over the compacted logs).
    pub cleaner_enable: bool,
    pub cleaner_threads: usize,
    pub cleaner_dedupe_buffer_size: usize,
    pub cleaner_backoff_ms: u64,
    /// The group coordinator's limits and timers.
    pub groups: GroupConfig,
    /// The transaction coordinator's settings.
    pub transactions: TransactionConfig,
    /// The cluster: roles, the controller quorum, replication defaults, liveness.
    pub cluster: ClusterConfig,
    /// The keys set when the broker was started (config file and `--set`), as given: what
    /// DescribeConfigs reports as static broker configs.
    pub static_settings: std::collections::BTreeMap<String, String>,
}

/// What a node is and which cluster it belongs to, under Kafka's (KRaft's) names.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `process.roles`: `broker,controller` (the default) or `controller,broker`; a node
    /// without the broker role, or without the controller role, is not supported yet.
    pub controller_role: bool,
    /// `controller.quorum.voters`: node id to the `host:port` of its controller listener.
    /// Empty: this node is a quorum of one on its own.
    pub voters: std::collections::BTreeMap<i32, String>,
    /// `controller.listener.names`: the names in `listeners` that serve controller traffic.
    pub controller_listener_names: Vec<String>,
    /// The controller listener's address, from `listeners` (None: no controller listener).
    pub controller_listener: Option<SocketAddr>,
    /// The first broker listener's name in `listeners` (`PLAINTEXT` unless named otherwise).
    pub listener_name: String,
    /// `listeners` as given, read again when `controller.listener.names` changes.
    listeners_raw: Option<String>,
    /// `inter.broker.listener.name`: the listener brokers reach each other on.
    pub inter_broker_listener_name: Option<String>,
    /// `default.replication.factor`: replicas of a topic created without a factor.
    pub default_replication_factor: i32,
    /// `broker.session.timeout.ms`: a broker the active controller has not heard from for
    /// this long is fenced. Kafka's default is 9000; 1500 here, with heartbeats every 250 ms
    /// (six missed in a row), so a dead leader's partitions move in about two seconds. A live
    /// broker fenced by mistake (a stalled machine) unfences with its next heartbeat.
    pub broker_session_timeout_ms: u64,
    /// `broker.heartbeat.interval.ms`.
    pub broker_heartbeat_interval_ms: u64,
    /// `replica.lag.time.max.ms`: a follower not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: u64,
    /// `auto.leader.rebalance.enable`, `leader.imbalance.check.interval.seconds` (in ms here)
    /// and `leader.imbalance.per.broker.percentage`: preferred leaders back
    /// ([`crate::leader_balance`]).
    pub auto_leader_rebalance_enable: bool,
    pub leader_imbalance_check_interval_ms: u64,
    pub leader_imbalance_per_broker_percentage: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            controller_role: true,
            voters: Default::default(),
            controller_listener_names: vec!["CONTROLLER".into()],
            controller_listener: None,
            listeners_raw: None,
            listener_name: "PLAINTEXT".into(),
            inter_broker_listener_name: None,
            default_replication_factor: 1,
            broker_session_timeout_ms: 1_500,
            broker_heartbeat_interval_ms: 250,
            replica_lag_time_max_ms: 30_000,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_ms: 300_000,
            leader_imbalance_per_broker_percentage: 10,
        }
    }
}

impl ClusterConfig {
    /// The voters, or this node alone when none are configured.
    pub fn quorum_voters(&self, node_id: i32) -> std::collections::BTreeMap<i32, String> {
        if self.voters.is_empty() {
            // A quorum of one never dials anyone: the address is only a label.
            return [(node_id, "local".to_string())].into_iter().collect();
        }
        self.voters.clone()
    }

    fn validate(&self, node_id: i32) -> Result<()> {
        if !self.controller_role {
            return Err(Error::Config(
                "process.roles without controller (a broker-only node) is not supported yet; use process.roles=broker,controller".into(),
            ));
        }
        if self.voters.is_empty() {
            return Ok(());
        }
        if !self.voters.contains_key(&node_id) {
            let ids: Vec<String> = self.voters.keys().map(i32::to_string).collect();
            return Err(Error::Config(format!(
                "controller.quorum.voters names nodes {} but not this node's node.id {node_id}",
                ids.join(", ")
            )));
        }
        if self.controller_listener.is_none() {
            return Err(Error::Config(format!(
                "listeners has no controller listener: with controller.quorum.voters, listeners needs one named in \
                 controller.listener.names ({}), e.g. CONTROLLER://127.0.0.1:19093",
                self.controller_listener_names.join(",")
            )));
        }
        // The voters dial this node where its own entry says: that must be its controller listener.
        if let (Some(listener), Some(own)) = (self.controller_listener, self.voters.get(&node_id)) {
            let port = own.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok());
            if listener.port() != 0 && port != Some(listener.port()) {
                return Err(Error::Config(format!(
                    "controller.quorum.voters gives this node (node.id {node_id}) the address {own}, but its \
                     controller listener in listeners is {listener}; the two must name the same port"
                )));
            }
        }
        Ok(())
    }

    /// Applies a cluster key; false if `setting` is not one.
    fn apply(&mut self, setting: &Setting) -> std::result::Result<bool, String> {
        match setting.key {
            "process.roles" => {
                let roles: Vec<&str> = setting.value.split(',').map(str::trim).collect();
                if let Some(bad) = roles.iter().find(|r| !matches!(**r, "broker" | "controller")) {
                    return Err(format!("process.roles may name broker and controller, got \"{bad}\""));
                }
                if !roles.contains(&"broker") {
                    return Err("process.roles without broker (a controller-only node) is not supported yet".into());
                }
                self.controller_role = roles.contains(&"controller");
            }
            "controller.quorum.voters" => self.voters = parse_voters(setting.value)?,
            "controller.listener.names" => {
                self.controller_listener_names = setting.value.split(',').map(|n| n.trim().to_string()).collect()
            }
            "inter.broker.listener.name" => self.inter_broker_listener_name = Some(setting.value.trim().to_string()),
            "default.replication.factor" => {
                self.default_replication_factor = setting.int(1, i64::from(i16::MAX))? as i32
            }
            "broker.session.timeout.ms" => {
                self.broker_session_timeout_ms = setting.int(100, i64::from(i32::MAX))? as u64
            }
            "replica.lag.time.max.ms" => self.replica_lag_time_max_ms = setting.int(100, i64::from(i32::MAX))? as u64,
            "auto.leader.rebalance.enable" => self.auto_leader_rebalance_enable = setting.boolean()?,
            "leader.imbalance.check.interval.seconds" => {
                self.leader_imbalance_check_interval_ms = setting.int(1, i64::from(i32::MAX))? as u64 * 1000
            }
            "leader.imbalance.per.broker.percentage" => {
                self.leader_imbalance_per_broker_percentage = setting.int(0, 100)? as u32
            }
            "broker.heartbeat.interval.ms" => {
                self.broker_heartbeat_interval_ms = setting.int(10, i64::from(i32::MAX))? as u64
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// `controller.quorum.voters`: `id@host:port` entries, comma-separated, each id once.
fn parse_voters(value: &str) -> std::result::Result<std::collections::BTreeMap<i32, String>, String> {
    let mut voters = std::collections::BTreeMap::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || format!("controller.quorum.voters entries look like 1@127.0.0.1:19093, got \"{entry}\"");
        let (id, address) = entry.split_once('@').ok_or_else(bad)?;
        let id: i32 = id.trim().parse().map_err(|_| bad())?;
        let (host, port) = listeners::parse_host_port("controller.quorum.voters", address)?;
        if host.is_empty() || id < 0 {
            return Err(bad());
        }
        if voters.insert(id, format!("{host}:{port}")).is_some() {
            return Err(format!("controller.quorum.voters names node {id} twice"));
        }
    }
    Ok(voters)
}

/// The transaction coordinator's settings, under Kafka's names and with Kafka's defaults.
#[derive(Clone, Debug)]
pub struct TransactionConfig {
    /// `transaction.max.timeout.ms`: the longest transaction timeout a producer may ask for.
    pub max_timeout_ms: i32,
    /// `transaction.state.log.num.partitions`: partitions of `__transaction_state`.
    pub state_partitions: i32,
    /// `transaction.state.log.segment.bytes` (16 MiB here, below Kafka's 100 MiB: the topic
    /// is compacted, and only closed segments are cleaned).
    pub state_segment_bytes: u32,
    /// `transaction.state.log.replication.factor` and `transaction.state.log.min.isr`.
    pub state_replication_factor: i32,
    pub state_min_isr: i32,
}

impl Default for TransactionConfig {
    fn default() -> Self {
        TransactionConfig {
            max_timeout_ms: 900_000,
            state_partitions: 50,
            state_segment_bytes: 16 << 20,
            state_replication_factor: 3,
            state_min_isr: 2,
        }
    }
}

/// The group coordinator's settings, under Kafka's names and with Kafka's defaults.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group
    /// waits for more members, so a fleet starting together does not rebalance once per member.
    pub initial_rebalance_delay_ms: u64,
    /// `group.min.session.timeout.ms` and `group.max.session.timeout.ms`: the session
    /// timeouts a classic member may ask for.
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    /// `group.max.size`: members per group.
    pub max_size: usize,
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets` when it is created.
    pub offsets_topic_partitions: i32,
    /// `offsets.topic.replication.factor`: replicas of `__consumer_offsets` (Kafka's 3).
    pub offsets_topic_replication_factor: i32,
    /// `offsets.topic.segment.bytes`: segment size of `__consumer_offsets` (16 MiB here, below
    /// Kafka's 100 MiB: the topic is compacted, and only closed segments are cleaned, so
    /// this bounds the garbage a partition keeps).
    pub offsets_topic_segment_bytes: u32,
    /// `offset.metadata.max.bytes`: the largest metadata string an offset commit may carry.
    pub offset_metadata_max_bytes: usize,
    /// `offsets.retention.minutes`: how long the offsets of an empty group are kept.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval_ms: u64,
    /// `group.consumer.heartbeat.interval.ms` and `group.consumer.session.timeout.ms`: what
    /// KIP-848 consumers are told and held to.
    pub consumer_heartbeat_interval_ms: i32,
    pub consumer_session_timeout_ms: i32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay_ms: 3_000,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            max_size: i32::MAX as usize,
            offsets_topic_partitions: 50,
            offsets_topic_replication_factor: 3,
            offsets_topic_segment_bytes: 16 << 20,
            offset_metadata_max_bytes: 4096,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            consumer_heartbeat_interval_ms: 5_000,
            consumer_session_timeout_ms: 45_000,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listener: SocketAddr::from(([127, 0, 0, 1], 9092)),
            other_listeners: Vec::new(),
            advertised_listeners: Vec::new(),
            data_dir: PathBuf::from("./sluice-data"),
            node_id: 0,
            num_partitions: 1,
            auto_create_topics_enable: true,
            socket_request_max_bytes: 100 << 20,
            // Kafka 4.0's default (KIP-1030): a record at most an hour ahead of the broker.
            log_defaults: LogConfig { message_timestamp_after_max_ms: 3_600_000, ..LogConfig::default() },
            max_open_segments: sluice_storage::HandleCache::DEFAULT_MAX_OPEN,
            log_retention_check_interval_ms: 300_000,
            fetch_session_cache_slots: 1000,
            cleaner_enable: true,
            cleaner_threads: 1,
            cleaner_dedupe_buffer_size: 128 << 20,
            cleaner_backoff_ms: 15_000,
            groups: GroupConfig::default(),
            transactions: TransactionConfig::default(),
            cluster: ClusterConfig::default(),
            static_settings: Default::default(),
        }
    }
}

impl BrokerConfig {
    pub fn validate(&self) -> Result<()> {
        if self.node_id < 0 {
            return Err(Error::Config(format!("node.id must be 0 or more, got {}", self.node_id)));
        }
        if self.num_partitions < 1 {
            return Err(Error::Config(format!("num.partitions must be at least 1, got {}", self.num_partitions)));
        }
        if self.socket_request_max_bytes < 1024 || self.socket_request_max_bytes > i32::MAX as usize {
            return Err(Error::Config(format!(
                "socket.request.max.bytes must be between 1024 and {}, got {}",
                i32::MAX,
                self.socket_request_max_bytes
            )));
        }
        if self.max_open_segments < 16 {
            return Err(Error::Config(format!(
                "max.open.segments must be at least 16, got {}",
                self.max_open_segments
            )));
        }
        let groups = &self.groups;
        if groups.min_session_timeout_ms > groups.max_session_timeout_ms {
            return Err(Error::Config(format!(
                "group.min.session.timeout.ms ({}) is above group.max.session.timeout.ms ({})",
                groups.min_session_timeout_ms, groups.max_session_timeout_ms
            )));
        }
        if groups.consumer_heartbeat_interval_ms >= groups.consumer_session_timeout_ms {
            return Err(Error::Config(format!(
                "group.consumer.heartbeat.interval.ms ({}) must be below group.consumer.session.timeout.ms ({})",
                groups.consumer_heartbeat_interval_ms, groups.consumer_session_timeout_ms
            )));
        }
        self.validate_listeners().map_err(Error::Config)?;
        self.cluster.validate(self.node_id)?;
        self.log_defaults.validate().map_err(|e| Error::Config(e.to_string()))
    }
}

/// Broker config keys, as in Kafka, for the config file and `--set key=value`, besides the
/// topic defaults (every broker synonym of a topic config, see [`topic_config::CONFIGS`]).
pub const KEYS: &[&str] = &[
    "advertised.listeners",
    "auto.create.topics.enable",
    "auto.leader.rebalance.enable",
    "broker.heartbeat.interval.ms",
    "broker.session.timeout.ms",
    "controller.listener.names",
    "controller.quorum.voters",
    "default.replication.factor",
    "inter.broker.listener.name",
    "leader.imbalance.check.interval.seconds",
    "leader.imbalance.per.broker.percentage",
    "process.roles",
    "replica.lag.time.max.ms",
    "group.consumer.heartbeat.interval.ms",
    "group.consumer.session.timeout.ms",
    "group.initial.rebalance.delay.ms",
    "group.max.session.timeout.ms",
    "group.max.size",
    "group.min.session.timeout.ms",
    "listener.security.protocol.map",
    "listeners",
    "log.dirs",
    "log.retention.check.interval.ms",
    "log.cleaner.backoff.ms",
    "log.cleaner.dedupe.buffer.size",
    "log.cleaner.enable",
    "log.cleaner.threads",
    "max.incremental.fetch.session.cache.slots",
    "max.open.segments",
    "node.id",
    "num.partitions",
    "offset.metadata.max.bytes",
    "offsets.retention.check.interval.ms",
    "offsets.retention.minutes",
    "offsets.topic.num.partitions",
    "offsets.topic.replication.factor",
    "offsets.topic.segment.bytes",
    "producer.id.expiration.ms",
    "socket.request.max.bytes",
    "transaction.max.timeout.ms",
    "transaction.state.log.min.isr",
    "transaction.state.log.num.partitions",
    "transaction.state.log.replication.factor",
    "transaction.state.log.segment.bytes",
];

/// Whether a broker config can change while the broker runs (IncrementalAlterConfigs): the
/// defaults of topic configs can. The rest (listeners, directories, ids) need a restart.
pub fn is_dynamic(key: &str) -> bool {
    topic_config::for_broker_key(key).is_some()
}

/// Every broker config key, for messages.
fn all_keys() -> Vec<&'static str> {
    let mut keys: Vec<&str> = KEYS.to_vec();
    keys.extend(topic_config::CONFIGS.iter().flat_map(|c| c.broker_synonyms.iter().copied()));
    keys.sort_unstable();
    keys.dedup();
    keys
}

impl BrokerConfig {
    /// This config with dynamic broker configs applied on top.
    pub fn with_dynamic(
        &self,
        dynamic: &std::collections::BTreeMap<String, String>,
    ) -> std::result::Result<BrokerConfig, String> {
        let mut config = self.clone();
        for (key, value) in dynamic {
            if !is_dynamic(key) {
                return Err(format!(
                    "{key} cannot change while the broker runs; set it in the config file or with --set"
                ));
            }
            config.apply(key, value)?;
        }
        config.log_defaults.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// Applies one `key = value` the broker is started with, and remembers it as a static
    /// setting; the error names the key and what is allowed.
    pub fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        self.apply(key, value)?;
        self.static_settings.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Applies one `key = value` (a Kafka broker config name); the error names the key and
    /// what is allowed.
    pub fn apply(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        let setting = Setting { key, value };
        if self.groups.apply(&setting)?
            || self.transactions.apply(&setting)?
            || self.cluster.apply(&setting)?
            || apply_topic_default(self, &setting)?
        {
            if key == "controller.listener.names" {
                if let Some(listeners) = self.cluster.listeners_raw.clone() {
                    self.apply_listeners(&listeners)?;
                }
            }
            return Ok(());
        }
        match key {
            "listeners" => self.apply_listeners(value)?,
            "advertised.listeners" => self.apply_advertised_listeners(value)?,
            "listener.security.protocol.map" => listeners::check_security_protocol_map(value)?,
            "log.dirs" => {
                if value.contains(',') {
                    return Err("log.dirs takes one directory; several data directories are not supported yet".into());
                }
                self.data_dir = PathBuf::from(value.trim());
            }
            "node.id" => self.node_id = setting.int(0, i64::from(i32::MAX))? as i32,
            "num.partitions" => self.num_partitions = setting.int(1, 100_000)? as i32,
            "auto.create.topics.enable" => self.auto_create_topics_enable = setting.boolean()?,
            "socket.request.max.bytes" => {
                self.socket_request_max_bytes = setting.int(1024, i64::from(i32::MAX))? as usize
            }
            "max.open.segments" => self.max_open_segments = setting.int(16, 1 << 20)? as usize,
            "log.cleaner.enable" => self.cleaner_enable = setting.boolean()?,
            "log.cleaner.threads" => self.cleaner_threads = setting.int(1, 64)? as usize,
            "log.cleaner.dedupe.buffer.size" => {
                self.cleaner_dedupe_buffer_size = setting.int(1 << 10, i64::from(i32::MAX))? as usize
            }
            "log.cleaner.backoff.ms" => self.cleaner_backoff_ms = setting.int(0, i64::from(i32::MAX))? as u64,
            "max.incremental.fetch.session.cache.slots" => {
                self.fetch_session_cache_slots = setting.int(0, i64::from(i32::MAX))? as usize
            }
            "log.retention.check.interval.ms" => {
                self.log_retention_check_interval_ms = setting.int(1, i64::MAX)? as u64
            }
            other => {
                return Err(format!("unknown broker config \"{other}\"; supported keys are {}", all_keys().join(", ")))
            }
        }
        Ok(())
    }
}

/// One `key = value` being applied, parsed with messages that name the key.
struct Setting<'a> {
    key: &'a str,
    value: &'a str,
}

impl Setting<'_> {
    fn int(&self, min: i64, max: i64) -> std::result::Result<i64, String> {
        let (key, value) = (self.key, self.value);
        let parsed: i64 = value.trim().parse().map_err(|_| format!("{key} must be an integer, got \"{value}\""))?;
        if parsed < min || parsed > max {
            return Err(format!("{key} must be between {min} and {max}, got {parsed}"));
        }
        Ok(parsed)
    }

    fn boolean(&self) -> std::result::Result<bool, String> {
        match self.value.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("{} must be true or false, got \"{}\"", self.key, self.value)),
        }
    }
}

impl GroupConfig {
    /// Applies a group coordinator key; false if `setting` is not one.
    fn apply(&mut self, setting: &Setting) -> std::result::Result<bool, String> {
        const I32_MAX: i64 = i32::MAX as i64;
        match setting.key {
            "group.initial.rebalance.delay.ms" => self.initial_rebalance_delay_ms = setting.int(0, 3_600_000)? as u64,
            "group.min.session.timeout.ms" => self.min_session_timeout_ms = setting.int(1, I32_MAX)? as i32,
            "group.max.session.timeout.ms" => self.max_session_timeout_ms = setting.int(1, I32_MAX)? as i32,
            "group.max.size" => self.max_size = setting.int(1, I32_MAX)? as usize,
            "group.consumer.heartbeat.interval.ms" => {
                self.consumer_heartbeat_interval_ms = setting.int(1, I32_MAX)? as i32
            }
            "group.consumer.session.timeout.ms" => self.consumer_session_timeout_ms = setting.int(1, I32_MAX)? as i32,
            "offsets.topic.replication.factor" => {
                self.offsets_topic_replication_factor = setting.int(1, i64::from(i16::MAX))? as i32
            }
            "offsets.topic.num.partitions" => self.offsets_topic_partitions = setting.int(1, 1000)? as i32,
            "offsets.topic.segment.bytes" => self.offsets_topic_segment_bytes = setting.int(64 << 10, I32_MAX)? as u32,
            "offset.metadata.max.bytes" => {
                self.offset_metadata_max_bytes = setting.int(0, i64::from(i16::MAX))? as usize
            }
            "offsets.retention.minutes" => self.offsets_retention_ms = setting.int(1, i64::MAX / 60_000)? * 60_000,
            "offsets.retention.check.interval.ms" => {
                self.offsets_retention_check_interval_ms = setting.int(1, i64::MAX)? as u64
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl TransactionConfig {
    /// Applies a transaction coordinator key; false if `setting` is not one.
    fn apply(&mut self, setting: &Setting) -> std::result::Result<bool, String> {
        match setting.key {
            "transaction.max.timeout.ms" => self.max_timeout_ms = setting.int(1, i64::from(i32::MAX))? as i32,
            "transaction.state.log.num.partitions" => self.state_partitions = setting.int(1, 1000)? as i32,
            "transaction.state.log.replication.factor" => {
                self.state_replication_factor = setting.int(1, i64::from(i16::MAX))? as i32
            }
            "transaction.state.log.min.isr" => self.state_min_isr = setting.int(1, i64::from(i16::MAX))? as i32,
            "transaction.state.log.segment.bytes" => {
                self.state_segment_bytes = setting.int(64 << 10, i64::from(i32::MAX))? as u32
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Applies a topic default (any broker synonym of a topic config, and
/// `producer.id.expiration.ms`); false if `setting` is not one. They share their parsing (and
/// their messages) with the topic configs of the same meaning.
fn apply_topic_default(config: &mut BrokerConfig, setting: &Setting) -> std::result::Result<bool, String> {
    if setting.key == "producer.id.expiration.ms" {
        config.log_defaults.producer_id_expiration_ms = setting.int(1, i64::MAX)?;
        return Ok(true);
    }
    let Some(def) = topic_config::for_broker_key(setting.key) else { return Ok(false) };
    // The hour and minute forms Kafka keeps for a few of them.
    let per_unit = match setting.key {
        "log.retention.hours" | "log.roll.hours" | "log.roll.jitter.hours" => Some(3_600_000),
        "log.retention.minutes" => Some(60_000),
        _ => None,
    };
    let value = match per_unit {
        Some(unit) => {
            let count = setting.int(-1, i64::MAX / unit)?;
            (if count < 0 { -1 } else { count * unit }).to_string()
        }
        None => setting.value.to_string(),
    };
    topic_config::apply(&mut config.log_defaults, def.name, &value)
        .map_err(|msg| msg.replacen(def.name, setting.key, 1))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_apply_and_bad_values_name_the_key() {
        let mut config = BrokerConfig::default();
        config.apply("listeners", "PLAINTEXT://127.0.0.1:19092").unwrap();
        config.apply("log.flush.interval.messages", "1").unwrap();
        config.apply("log.retention.hours", "2").unwrap();
        assert_eq!(config.listener.port(), 19092);
        assert_eq!(config.log_defaults.flush_policy, sluice_storage::FlushPolicy::EveryAppend);
        assert_eq!(config.log_defaults.retention_ms, Some(7_200_000));
        let err = config.apply("num.partitions", "zero").unwrap_err();
        assert!(err.contains("num.partitions"), "{err}");
        let err = config.apply("log.segment.bytes", "3").unwrap_err();
        assert!(err.starts_with("log.segment.bytes"), "{err}");
        let err = config.apply("no.such", "1").unwrap_err();
        assert!(err.contains("no.such") && err.contains("log.dirs"), "{err}");
    }
}
