//! Keyed state changelogs: one topic per stateful operator of a job
//! (`<job>-<operator>-changelog`, as Kafka Streams names them), one partition per key
//! group. A checkpoint writes each changed key's latest state, or a tombstone once the
//! state is gone, in the same transaction as the outputs and source offsets; a restart
//! reads the committed records back, the latest per key winning.
//!
//! Changelogs are compacted topics: the broker's log cleaner keeps the latest record of each
//! key, and drops tombstones once `delete.retention.ms` has passed, so a changelog holds
//! about the live state (plus what has not been cleaned yet).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use sluice_broker::InProcessClient;

use crate::error::{Error, Result};
use crate::runtime::source::{Isolation, LogSource};

/// Changelog records may hold a large state (a popular page's distinct users in a window).
pub const CHANGELOG_MAX_MESSAGE_BYTES: u32 = 16 * 1024 * 1024;

pub fn topic(job: &str, operator: &str) -> String {
    format!("{job}-{operator}-changelog")
}

/// Creates an operator's changelog with `groups` partitions, or returns the partition
/// count it already has (which then decides the job's key groups). A changelog made by an
/// older Sluice (not compacted) is given the configs it has now.
pub fn ensure(client: &InProcessClient, topic: &str, groups: i32) -> Result<i32> {
    let configs: BTreeMap<String, String> =
        [("cleanup.policy", "compact".to_string()), ("max.message.bytes", CHANGELOG_MAX_MESSAGE_BYTES.to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    let failed = |source| Error::CreateTopic { role: "changelog", topic: topic.to_string(), source };
    let partitions = client.ensure_topic(topic, groups, configs.clone()).map_err(failed)?;
    client.ensure_topic_configs(topic, &configs).map_err(failed)?;
    Ok(partitions)
}

/// The committed state of one changelog partition: the latest value of every live key,
/// and how many records the partition holds.
pub struct Restored {
    pub entries: HashMap<Bytes, Bytes>,
    pub records: u64,
}

/// Reads a changelog partition from its start with read_committed.
pub fn read(client: &InProcessClient, topic: &str, partition: i32) -> Result<Restored> {
    let log =
        client.reader(topic, partition).map_err(|source| Error::OpenChangelog { topic: topic.to_string(), source })?;
    let (start, end) = (log.log_start_offset(), log.last_stable_offset());
    let mut source = LogSource::new(log, start, Isolation::ReadCommitted);
    let mut entries = HashMap::new();
    let mut records = 0u64;
    // Each poll makes progress (or returns nothing), so this ends at the LSO.
    while source.position() < end {
        let batch = source.poll(4 << 20).map_err(|source| Error::ReadChangelog {
            topic: topic.to_string(),
            partition,
            source,
        })?;
        if batch.is_empty() {
            break;
        }
        for record in batch {
            records += 1;
            let Some(key) = record.key else { continue };
            match record.value {
                Some(value) => entries.insert(key, value),
                None => entries.remove(&key),
            };
        }
    }
    Ok(Restored { entries, records })
}
