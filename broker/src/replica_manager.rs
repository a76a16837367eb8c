//! The partitions this broker holds (those whose replicas the metadata assigns to it), each a
//! [`PartitionLog`] in `<topic>-<partition>/` under the data directory: opened at start, then
//! added, removed and given their leadership as each new metadata image says.
//!
//! Invariant: startup deletes only directories whose `partition.metadata` proves they are a
//! deleted topic's; a directory without one is never touched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use sluice_storage::{HandleCache, LogConfig, PartitionLog};
use uuid::Uuid;

use crate::error::Result;
use crate::metadata::{ClusterMetadata, TopicMetadata, METADATA_LOG_DIR};
use crate::partition::Partition;

pub struct TopicPartitions {
    pub id: Uuid,
    /// By partition index; None for a partition another broker holds.
    pub partitions: Vec<Option<Arc<Partition>>>,
}

pub struct ReplicaManager {
    data_dir: PathBuf,
    node_id: i32,
    cache: Arc<HandleCache>,
    topics: RwLock<HashMap<String, Arc<TopicPartitions>>>,
    /// The metadata image last applied: which partitions exist in the cluster, here or not.
    image: RwLock<Arc<ClusterMetadata>>,
}

fn partition_dir(data_dir: &Path, topic: &str, index: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{index}"))
}

/// Stops a partition's log (requests still holding it fail from now on) and deletes its
/// directory: renamed first, so a partition that comes back later never shares a directory
/// with this copy, then removed (or swept at the next start).
fn delete_copy(partition: &Partition, topic_id: Uuid) -> Result<()> {
    partition.log.mark_deleted();
    let dir = partition.log.dir().to_path_buf();
    let mut doomed = dir.clone().into_os_string();
    doomed.push(format!(".{}{DELETED_SUFFIX}", topic_id.simple()));
    std::fs::rename(&dir, &doomed)?;
    if let Err(err) = std::fs::remove_dir_all(&doomed) {
        tracing::warn!(dir = ?doomed, %err, "could not remove a deleted partition; it is removed at the next start");
    }
    Ok(())
}

/// Names the topic a partition directory belongs to, as Kafka's file of the same name does,
/// so that startup only ever deletes directories it can prove are its own.
const PARTITION_METADATA: &str = "partition.metadata";
/// Suffix of a deleted partition's directory between its rename and its removal.
const DELETED_SUFFIX: &str = "-delete";

fn read_topic_id(dir: &Path) -> Option<Uuid> {
    let text = std::fs::read_to_string(dir.join(PARTITION_METADATA)).ok()?;
    text.lines().find_map(|line| line.strip_prefix("topic_id: ")).and_then(|id| id.trim().parse().ok())
}

fn write_topic_id(dir: &Path, id: Uuid) -> Result<()> {
    let tmp = dir.join(format!("{PARTITION_METADATA}.tmp"));
    std::fs::write(&tmp, format!("version: 0\ntopic_id: {id}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(PARTITION_METADATA))?;
    Ok(())
}

impl ReplicaManager {
    /// Opens the log of every partition the metadata names, and removes what deletions
    /// interrupted by a crash left behind: `-delete` directories, and partition directories
    /// whose `partition.metadata` names a topic id (or partition) the metadata does not have. A directory
    /// without that file is not Sluice's and is left alone.
    pub fn open(
        data_dir: &Path,
        cache: Arc<HandleCache>,
        metadata: &Arc<ClusterMetadata>,
        node_id: i32,
        config_for: impl Fn(&TopicMetadata) -> LogConfig,
    ) -> Result<ReplicaManager> {
        let manager = ReplicaManager {
            data_dir: data_dir.to_path_buf(),
            cache,
            node_id,
            topics: RwLock::new(HashMap::new()),
            image: RwLock::new(metadata.clone()),
        };
        for entry in std::fs::read_dir(data_dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !path.is_dir() || name.starts_with(METADATA_LOG_DIR) {
                continue;
            }
            // A partition index the topic does not have was opened but never published.
            let index = name.rsplit_once('-').and_then(|(_, index)| index.parse::<i32>().ok());
            let stale = name.ends_with(DELETED_SUFFIX)
                || read_topic_id(&path).is_some_and(|id| match metadata.topic_by_id(&id) {
                    None => true,
                    // Or a partition moved to other brokers while this one was down.
                    Some(topic) => {
                        index.is_none_or(|index| topic.assignment(index).is_none_or(|a| !a.replicas.contains(&node_id)))
                    }
                });
            if stale {
                tracing::info!(dir = %path.display(), "removing the directory of a deleted partition");
                std::fs::remove_dir_all(&path)?;
            }
        }
        manager.apply_image(metadata, config_for)?;
        Ok(manager)
    }

    /// Makes this broker's partitions what `metadata` says: partitions of deleted topics go,
    /// new ones assigned here are opened, and each gets its leadership and config.
    pub fn apply_image(
        &self,
        metadata: &Arc<ClusterMetadata>,
        config_for: impl Fn(&TopicMetadata) -> LogConfig,
    ) -> Result<()> {
        *self.image.write() = metadata.clone();
        let gone: Vec<String> = self
            .topics
            .read()
            .iter()
            .filter(|(name, held)| metadata.topic(name).is_none_or(|topic| topic.id != held.id))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.remove_topic(&name)?;
        }
        for topic in metadata.topics() {
            let config = config_for(topic);
            self.add_partitions(topic, &config)?;
            let Some(held) = self.topic(&topic.name) else { continue };
            for partition in held.partitions.iter().flatten() {
                if partition.log.config() != config {
                    partition.log.set_config(config.clone())?;
                }
            }
        }
        Ok(())
    }

    pub fn topic(&self, name: &str) -> Option<Arc<TopicPartitions>> {
        self.topics.read().get(name).cloned()
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        let topics = self.topics.read();
        usize::try_from(index).ok().and_then(|i| topics.get(topic)?.partitions.get(i)?.clone())
    }

    /// The partitions this broker follows, with the leader each follows.
    pub fn followed(&self) -> Vec<(i32, Arc<Partition>)> {
        let image = self.image.read().clone();
        let mut followed = Vec::new();
        for partition in self.all_partitions() {
            let Some(assignment) = image.topic(&partition.topic).and_then(|t| t.assignment(partition.index)) else {
                continue;
            };
            if assignment.leader != self.node_id && assignment.leader >= 0 && image.is_live(assignment.leader) {
                followed.push((assignment.leader, partition));
            }
        }
        followed
    }

    /// The metadata image this broker last applied.
    pub fn image(&self) -> Arc<ClusterMetadata> {
        self.image.read().clone()
    }

    /// Whether the cluster has this partition (on this broker or another).
    pub fn partition_exists(&self, topic: &str, index: i32) -> bool {
        self.image.read().topic(topic).is_some_and(|t| t.assignment(index).is_some())
    }

    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.topics.read().values().flat_map(|t| t.partitions.iter().flatten().cloned()).collect()
    }

    /// Opens logs for the partitions of `topic` assigned to this broker that it does not
    /// have yet, and gives every partition it holds the leadership the metadata says.
    fn add_partitions(&self, topic: &TopicMetadata, config: &LogConfig) -> Result<()> {
        let existing = self.topic(&topic.name).map(|t| t.partitions.clone()).unwrap_or_default();
        let mut partitions = existing.clone();
        partitions.resize(topic.partitions.max(existing.len() as i32) as usize, None);
        let name: Arc<str> = Arc::from(topic.name.as_str());
        let mut opened = false;
        for (index, assignment) in topic.assignments.iter().enumerate() {
            let now_ms = sluice_storage::now_ms();
            if let Some(partition) = &partitions[index] {
                if assignment.replicas.contains(&self.node_id) {
                    partition.apply_assignment(self.node_id, assignment, now_ms);
                } else {
                    // Moved to other brokers (a reassignment completed): this copy goes.
                    tracing::info!(topic = %topic.name, partition = index, "deleting a replica moved off this broker");
                    delete_copy(partition, topic.id)?;
                    partitions[index] = None;
                    opened = true;
                }
                continue;
            }
            if !assignment.replicas.contains(&self.node_id) {
                continue;
            }
            let index = index as i32;
            let dir = partition_dir(&self.data_dir, &topic.name, index);
            assert_ne!(dir, self.data_dir.join(METADATA_LOG_DIR), "a topic partition must never open the metadata log");
            let log = PartitionLog::open(&dir, config.clone(), self.cache.clone())?;
            if read_topic_id(&dir) != Some(topic.id) {
                write_topic_id(&dir, topic.id)?;
            }
            // A partition without followers is its own ISR: everything in its log is committed.
            // With followers the high watermark is the checkpointed one until the ISR says more.
            if assignment.replicas.len() == 1 {
                log.set_high_watermark(log.log_end_offset());
            }
            let partition = Partition::new(name.clone(), topic.id, index, log);
            partition.apply_assignment(self.node_id, assignment, now_ms);
            partitions[index as usize] = Some(Arc::new(partition));
            opened = true;
        }
        if opened || partitions.len() != existing.len() || self.topic(&topic.name).is_none() {
            self.topics.write().insert(topic.name.clone(), Arc::new(TopicPartitions { id: topic.id, partitions }));
        }
        Ok(())
    }

    /// Stops the topic's logs and deletes their directories ([`delete_copy`]).
    pub fn remove_topic(&self, name: &str) -> Result<()> {
        let Some(topic) = self.topics.write().remove(name) else { return Ok(()) };
        for partition in topic.partitions.iter().flatten() {
            delete_copy(partition, topic.id)?;
        }
        Ok(())
    }

    /// Clean shutdown of every log: flushed, indexes trimmed, marked clean.
    pub fn close_all(&self) {
        for (_, topic) in self.topics.write().drain() {
            for partition in topic.partitions.iter().flatten() {
                if let Err(err) = partition.log.clone().close() {
                    tracing::error!(topic = %partition.topic, partition = partition.index, %err, "closing log failed");
                }
            }
        }
    }
}
