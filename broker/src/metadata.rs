//! Cluster metadata: topics (ids, partition counts, config overrides) and dynamic broker
//! configs. Every change is a record appended and fsynced to the metadata log
//! (`__cluster_metadata-0`) before it takes effect, and the log is replayed at start; the
//! replication issue puts this log under a Raft quorum (a single node is a quorum of one).
//! Invariants: names and ids are unique; partition counts only grow.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_storage::{
    FlushPolicy, HandleCache, LeaderEpoch, LogConfig, Offset, PartitionLog, RecordBatch, RecordBatchBuilder,
};
use uuid::Uuid;

use crate::error::{Error, Result};

pub const METADATA_LOG_DIR: &str = "__cluster_metadata-0";

/// One change to the cluster metadata, stored as JSON in the metadata log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetadataRecord {
    Cluster {
        cluster_id: String,
    },
    Topic {
        name: String,
        id: Uuid,
        partitions: i32,
        configs: BTreeMap<String, String>,
    },
    Partitions {
        id: Uuid,
        partitions: i32,
    },
    /// Replaces the topic's config overrides as a whole.
    TopicConfigs {
        id: Uuid,
        configs: BTreeMap<String, String>,
    },
    RemoveTopic {
        id: Uuid,
    },
    /// Replaces the dynamic broker configs (IncrementalAlterConfigs on the broker) as a whole.
    BrokerConfigs {
        configs: BTreeMap<String, String>,
    },
    /// Producer ids below `next` may have been handed out: after a restart, allocation
    /// continues from here, so no id is ever given to two producers.
    ProducerIds {
        next: i64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct TopicMetadata {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
}

/// The metadata state the log's records add up to.
#[derive(Clone, Debug, Default)]
pub struct ClusterMetadata {
    pub cluster_id: String,
    /// Broker configs set at run time; they override the config file and flags.
    pub broker_configs: BTreeMap<String, String>,
    topics: BTreeMap<String, Arc<TopicMetadata>>,
    names_by_id: HashMap<Uuid, String>,
    /// The first producer id never handed out.
    pub producer_ids_next: i64,
}

impl ClusterMetadata {
    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMetadata>> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&Arc<TopicMetadata>> {
        self.names_by_id.get(id).and_then(|name| self.topics.get(name))
    }

    pub fn topics(&self) -> impl Iterator<Item = &Arc<TopicMetadata>> {
        self.topics.values()
    }

    /// State as if these records had been replayed (for tests of code that reads metadata).
    #[cfg(test)]
    pub fn from_records(records: Vec<MetadataRecord>) -> ClusterMetadata {
        let mut metadata = ClusterMetadata::default();
        for record in records {
            metadata.apply(record).expect("consistent test records");
        }
        metadata
    }

    fn apply(&mut self, record: MetadataRecord) -> Result<()> {
        // Records are checked before they are written, so a failure here on replay means the
        // log itself is damaged.
        let unknown = |id: &Uuid| Error::Metadata(format!("record names unknown topic id {id}"));
        match record {
            MetadataRecord::Cluster { cluster_id } => self.cluster_id = cluster_id,
            MetadataRecord::Topic { name, id, partitions, configs } => {
                self.names_by_id.insert(id, name.clone());
                self.topics.insert(name.clone(), Arc::new(TopicMetadata { name, id, partitions, configs }));
            }
            MetadataRecord::Partitions { id, partitions } => {
                let name = self.names_by_id.get(&id).ok_or_else(|| unknown(&id))?;
                let topic = self.topics.get_mut(name).ok_or_else(|| unknown(&id))?;
                Arc::make_mut(topic).partitions = partitions;
            }
            MetadataRecord::TopicConfigs { id, configs } => {
                let name = self.names_by_id.get(&id).ok_or_else(|| unknown(&id))?;
                let topic = self.topics.get_mut(name).ok_or_else(|| unknown(&id))?;
                Arc::make_mut(topic).configs = configs;
            }
            MetadataRecord::RemoveTopic { id } => {
                let name = self.names_by_id.remove(&id).ok_or_else(|| unknown(&id))?;
                self.topics.remove(&name);
            }
            MetadataRecord::BrokerConfigs { configs } => self.broker_configs = configs,
            MetadataRecord::ProducerIds { next } => {
                if next < self.producer_ids_next {
                    return Err(Error::Metadata(format!(
                        "producer ids would go back from {} to {next}",
                        self.producer_ids_next
                    )));
                }
                self.producer_ids_next = next;
            }
        }
        Ok(())
    }
}

/// The metadata log and the state it has been replayed into.
pub struct MetadataLog {
    log: PartitionLog,
    state: ClusterMetadata,
}

impl MetadataLog {
    /// Opens (or creates) the metadata log under `data_dir` and replays it.
    pub fn open(data_dir: &Path, cache: Arc<HandleCache>) -> Result<MetadataLog> {
        // Metadata changes are rare and must survive power loss before they are acknowledged.
        let config = LogConfig { flush_policy: FlushPolicy::EveryAppend, retention_ms: None, ..LogConfig::default() };
        let log = PartitionLog::open(data_dir.join(METADATA_LOG_DIR), config, cache)?;
        let mut state = ClusterMetadata::default();
        let end = log.log_end_offset();
        let mut next = log.log_start_offset();
        while next < end {
            let read = log.read(next, 1 << 20, end)?;
            if read.records.is_empty() {
                break;
            }
            for batch in RecordBatch::iter_batches(read.records) {
                let batch = batch?;
                for record in batch.records()? {
                    let record = record?;
                    let value = record.value.unwrap_or_default();
                    let parsed: MetadataRecord = serde_json::from_slice(&value).map_err(|err| {
                        Error::Metadata(format!("unreadable metadata record at offset {}: {err}", record.offset))
                    })?;
                    state.apply(parsed)?;
                }
                next = Offset(batch.last_offset() + 1);
            }
        }
        log.set_high_watermark(end);
        let mut metadata = MetadataLog { log, state };
        if metadata.state.cluster_id.is_empty() {
            let cluster_id = Uuid::new_v4().simple().to_string();
            metadata.append(vec![MetadataRecord::Cluster { cluster_id }])?;
        }
        Ok(metadata)
    }

    pub fn state(&self) -> &ClusterMetadata {
        &self.state
    }

    /// Checks that `records` apply, appends them as one batch, waits until it is durable, and
    /// only then makes them visible. A change that does not apply is never written.
    pub fn append(&mut self, records: Vec<MetadataRecord>) -> Result<()> {
        let mut next = self.state.clone();
        for record in &records {
            next.apply(record.clone())?;
        }
        let now = sluice_storage::now_ms();
        let mut builder = RecordBatchBuilder::new(now);
        for record in &records {
            let value = serde_json::to_vec(record).map_err(|e| Error::Metadata(e.to_string()))?;
            builder.push(now, None, Some(&value), &[]);
        }
        let outcome = self.log.append(&builder.build()?, LeaderEpoch(0), now)?;
        outcome.wait_durable()?;
        self.log.set_high_watermark(self.log.log_end_offset());
        self.state = next;
        Ok(())
    }

    /// Clean shutdown; later appends fail.
    pub fn close(&self) -> Result<()> {
        Ok(self.log.clone().close()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HandleCache::new(8);
        let id = Uuid::new_v4();
        let cluster_id = {
            let mut log = MetadataLog::open(dir.path(), cache.clone()).unwrap();
            log.append(vec![MetadataRecord::Topic {
                name: "clicks".into(),
                id,
                partitions: 2,
                configs: BTreeMap::new(),
            }])
            .unwrap();
            log.append(vec![MetadataRecord::Partitions { id, partitions: 8 }]).unwrap();
            let cluster_id = log.state().cluster_id.clone();
            drop(log); // not even a clean close: every change was fsynced
            cluster_id
        };
        let log = MetadataLog::open(dir.path(), cache).unwrap();
        assert_eq!(log.state().cluster_id, cluster_id);
        let topic = log.state().topic("clicks").unwrap();
        assert_eq!((topic.id, topic.partitions), (id, 8));
        assert_eq!(log.state().topic_by_id(&id).unwrap().name, "clicks");
    }

    #[test]
    fn a_record_that_does_not_apply_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetadataLog::open(dir.path(), HandleCache::new(8)).unwrap();
        assert!(log.append(vec![MetadataRecord::RemoveTopic { id: Uuid::new_v4() }]).is_err());
        assert_eq!(log.state().topics().count(), 0);
    }
}
