//! The partitions this broker holds, each a [`PartitionLog`] in `<topic>-<partition>/` under
//! the data directory. On a single node every partition's leader is this broker, its
//! leader epoch is 0 and its ISR is itself; the replication issue extends this module.
//!
//! Invariant: the high watermark of a partition only moves forward while it is the leader,
//! and never past the log end offset (the log enforces the latter).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use sluice_storage::{HandleCache, LogConfig, PartitionLog};
use uuid::Uuid;

use crate::error::Result;
use crate::metadata::{ClusterMetadata, TopicMetadata, METADATA_LOG_DIR};

pub struct Partition {
    pub topic: Arc<str>,
    pub topic_id: Uuid,
    pub index: i32,
    pub log: PartitionLog,
}

impl Partition {
    /// A single node never changes leaders, so every partition stays at epoch 0.
    pub const LEADER_EPOCH: i32 = 0;
}

pub struct TopicPartitions {
    pub id: Uuid,
    pub partitions: Vec<Arc<Partition>>,
}

pub struct ReplicaManager {
    data_dir: PathBuf,
    cache: Arc<HandleCache>,
    topics: RwLock<HashMap<String, Arc<TopicPartitions>>>,
}

fn partition_dir(data_dir: &Path, topic: &str, index: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{index}"))
}

impl ReplicaManager {
    /// Opens the log of every partition the metadata names, and deletes partition directories
    /// it does not name (left by a deletion interrupted by a crash).
    pub fn open(
        data_dir: &Path,
        cache: Arc<HandleCache>,
        metadata: &ClusterMetadata,
        config_for: impl Fn(&TopicMetadata) -> LogConfig,
    ) -> Result<ReplicaManager> {
        let manager = ReplicaManager { data_dir: data_dir.to_path_buf(), cache, topics: RwLock::new(HashMap::new()) };
        let mut expected = std::collections::HashSet::new();
        for topic in metadata.topics() {
            manager.add_partitions(topic, &config_for(topic))?;
            for index in 0..topic.partitions {
                expected.insert(format!("{}-{index}", topic.name));
            }
        }
        for entry in std::fs::read_dir(data_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_partition_dir =
                name.rsplit_once('-').is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if entry.path().is_dir() && is_partition_dir && name != METADATA_LOG_DIR && !expected.contains(&name) {
                tracing::info!(dir = %entry.path().display(), "removing the directory of a deleted partition");
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(manager)
    }

    pub fn topic(&self, name: &str) -> Option<Arc<TopicPartitions>> {
        self.topics.read().get(name).cloned()
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        let topics = self.topics.read();
        usize::try_from(index).ok().and_then(|i| topics.get(topic)?.partitions.get(i).cloned())
    }

    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.topics.read().values().flat_map(|t| t.partitions.iter().cloned()).collect()
    }

    /// Opens logs for the partitions of `topic` this broker does not have yet.
    pub fn add_partitions(&self, topic: &TopicMetadata, config: &LogConfig) -> Result<()> {
        let existing = self.topic(&topic.name).map(|t| t.partitions.clone()).unwrap_or_default();
        let mut partitions = existing.clone();
        let name: Arc<str> = Arc::from(topic.name.as_str());
        for index in existing.len() as i32..topic.partitions {
            let log = PartitionLog::open(
                partition_dir(&self.data_dir, &topic.name, index),
                config.clone(),
                self.cache.clone(),
            )?;
            // A single node is its own ISR: everything in the log is committed.
            log.set_high_watermark(log.log_end_offset());
            partitions.push(Arc::new(Partition { topic: name.clone(), topic_id: topic.id, index, log }));
        }
        self.topics.write().insert(topic.name.clone(), Arc::new(TopicPartitions { id: topic.id, partitions }));
        Ok(())
    }

    pub fn set_config(&self, topic: &str, config: &LogConfig) -> Result<()> {
        if let Some(topic) = self.topic(topic) {
            for partition in &topic.partitions {
                partition.log.set_config(config.clone())?;
            }
        }
        Ok(())
    }

    /// Closes the topic's logs and deletes their directories.
    pub fn remove_topic(&self, name: &str) -> Result<()> {
        let Some(topic) = self.topics.write().remove(name) else { return Ok(()) };
        for partition in &topic.partitions {
            std::fs::remove_dir_all(partition.log.dir())?;
        }
        Ok(())
    }

    /// Clean shutdown of every log: flushed, indexes trimmed, marked clean.
    pub fn close_all(&self) {
        for (_, topic) in self.topics.write().drain() {
            for partition in &topic.partitions {
                if let Err(err) = partition.log.clone().close() {
                    tracing::error!(topic = %partition.topic, partition = partition.index, %err, "closing log failed");
                }
            }
        }
    }
}
