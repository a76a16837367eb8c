//! The metadata log of a Sluice from before the quorum: plain JSON records in
//! `__cluster_metadata-0`, with no Raft entries around them and no partition assignments (every
//! partition was the one node's). At the first start with the quorum the directory is set
//! aside as `__cluster_metadata-0.pre-quorum`, its records are replayed, and their image is
//! proposed to the quorum as one batch; the old directory goes once that has landed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sluice_storage::{HandleCache, LogConfig, Offset, PartitionLog, RecordBatch};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::metadata::{ClusterMetadata, MetadataRecord, PartitionAssignment, METADATA_LOG_DIR};

const SET_ASIDE_SUFFIX: &str = ".pre-quorum";

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LegacyRecord {
    Cluster { cluster_id: String },
    Topic { name: String, id: Uuid, partitions: i32, configs: BTreeMap<String, String> },
    Partitions { id: Uuid, partitions: i32 },
    TopicConfigs { id: Uuid, configs: BTreeMap<String, String> },
    RemoveTopic { id: Uuid },
    BrokerConfigs { configs: BTreeMap<String, String> },
    ProducerIds { next: i64 },
}

fn set_aside(data_dir: &Path) -> PathBuf {
    data_dir.join(format!("{METADATA_LOG_DIR}{SET_ASIDE_SUFFIX}"))
}

fn values(log: &PartitionLog) -> Result<Vec<bytes::Bytes>> {
    let mut values = Vec::new();
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
                values.push(record?.value.unwrap_or_default());
            }
            next = Offset(batch.last_offset() + 1);
        }
    }
    Ok(values)
}

fn open(dir: &Path, cache: Arc<HandleCache>) -> Result<PartitionLog> {
    Ok(PartitionLog::open(dir, LogConfig { retention_ms: None, ..LogConfig::default() }, cache)?)
}

/// Sets a legacy metadata log aside (if `dir` holds one) and returns the records that rebuild
/// its image with every partition on `node_id`; None if there is nothing to migrate.
pub fn take_legacy_log(
    data_dir: &Path,
    dir: &Path,
    node_id: i32,
    cache: Arc<HandleCache>,
) -> Result<Option<Vec<MetadataRecord>>> {
    let aside = set_aside(data_dir);
    if dir.exists() && !aside.exists() {
        let log = open(dir, cache.clone())?;
        let first = values(&log)?.into_iter().next();
        log.close()?;
        let is_legacy = first.is_some_and(|value| serde_json::from_slice::<LegacyRecord>(&value).is_ok());
        if !is_legacy {
            return Ok(None);
        }
        tracing::info!(dir = %dir.display(), "setting aside a metadata log from before the quorum");
        std::fs::rename(dir, &aside)?;
        crate::data_dir::write_durably(&aside.join(".set-aside"), b"")?;
    }
    if !aside.exists() {
        return Ok(None);
    }
    let log = open(&aside, cache)?;
    let mut image = ClusterMetadata::default();
    let on_this_node = |count: i32| (0..count).map(|_| PartitionAssignment::new(vec![node_id])).collect::<Vec<_>>();
    for value in values(&log)? {
        let legacy: LegacyRecord = serde_json::from_slice(&value)
            .map_err(|err| Error::Metadata(format!("unreadable record in the old metadata log: {err}")))?;
        let record = match legacy {
            LegacyRecord::Cluster { cluster_id } => MetadataRecord::Cluster { cluster_id },
            LegacyRecord::Topic { name, id, partitions, configs } => {
                MetadataRecord::Topic { name, id, partitions, configs, assignments: on_this_node(partitions) }
            }
            LegacyRecord::Partitions { id, partitions } => {
                let had = image.topic_by_id(&id).map_or(0, |t| t.partitions);
                MetadataRecord::Partitions { id, partitions, assignments: on_this_node(partitions - had) }
            }
            LegacyRecord::TopicConfigs { id, configs } => MetadataRecord::TopicConfigs { id, configs },
            LegacyRecord::RemoveTopic { id } => MetadataRecord::RemoveTopic { id },
            LegacyRecord::BrokerConfigs { configs } => MetadataRecord::BrokerConfigs { configs },
            LegacyRecord::ProducerIds { next } => MetadataRecord::ProducerIds { next },
        };
        image.apply_all(&[record]).map_err(|rejected| {
            Error::Metadata(format!("the old metadata log is inconsistent: {}", rejected.message))
        })?;
    }
    log.close()?;
    Ok(Some(image.to_records()))
}

pub fn remove_legacy_log(data_dir: &Path) -> Result<()> {
    let aside = set_aside(data_dir);
    if aside.exists() {
        std::fs::remove_dir_all(&aside)?;
    }
    Ok(())
}
