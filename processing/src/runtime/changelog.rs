//! Keyed state changelogs: one topic per stateful operator of a job
//! (`<job>-<operator>-changelog`, as Kafka Streams names them), one partition per key
//! group. A checkpoint writes each changed key's latest state, or a tombstone once the
//! state is gone, in the same transaction as the outputs and source offsets; a restart
//! reads the committed records back, the latest per key winning.
//!
//! The broker has no log cleaner yet, so a changelog is kept short the way the group
//! coordinator keeps `__consumer_offsets` short: when a key group has written more than
//! twice its live state (plus slack), its next checkpoint writes all of its live state
//! again, and once that commit is durable the records before it are deleted.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use sluice_broker::InProcessClient;
use sluice_storage::Offset;

use crate::error::{Error, Result};
use crate::runtime::source::{Isolation, LogSource};

/// Changelog records may hold a large state (a popular page's distinct users in a window).
pub const CHANGELOG_MAX_MESSAGE_BYTES: u32 = 16 * 1024 * 1024;
/// Records written beyond twice the live state before a group's changelog is rewritten.
pub const REWRITE_SLACK_RECORDS: u64 = 10_000;

pub fn topic(job: &str, operator: &str) -> String {
    format!("{job}-{operator}-changelog")
}

/// Creates an operator's changelog with `groups` partitions, or returns the partition
/// count it already has (which then decides the job's key groups).
pub fn ensure(client: &InProcessClient, topic: &str, groups: i32) -> Result<i32> {
    let configs: BTreeMap<String, String> = [
        ("retention.ms", "-1".to_string()),
        ("retention.bytes", "-1".to_string()),
        ("max.message.bytes", CHANGELOG_MAX_MESSAGE_BYTES.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    client.ensure_topic(topic, groups, configs).map_err(|source| Error::CreateTopic {
        role: "changelog",
        topic: topic.to_string(),
        source,
    })
}

/// The committed state of one changelog partition: the latest value of every live key,
/// and how many records the partition holds (to decide when to rewrite it).
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

/// Per key group: records its changelogs hold, to decide when to rewrite them.
pub struct Growth {
    records: Vec<u64>,
    slack: u64,
}

impl Growth {
    pub fn new(records: Vec<u64>, slack: u64) -> Growth {
        Growth { records, slack }
    }

    /// Whether `group`'s next checkpoint should write all its live state.
    pub fn needs_rewrite(&self, group: usize, live: usize) -> bool {
        self.records.get(group).is_some_and(|&written| written > 2 * live as u64 + self.slack)
    }

    pub fn wrote(&mut self, group: usize, records: u64, rewritten: bool) {
        if let Some(count) = self.records.get_mut(group) {
            *count = if rewritten { records } else { *count + records };
        }
    }
}

/// After a rewrite of `group` is committed: the records before it are superseded. The
/// rewrite is flushed first, so that whatever the topic's flush policy, the old records are
/// never gone while their replacement could still be lost.
pub fn truncate_before(client: &InProcessClient, topics: &[String], group: usize, before: &[Offset]) {
    for (topic, offset) in topics.iter().zip(before) {
        if let Err(err) = client.delete_records_before(topic, group as i32, *offset) {
            tracing::warn!(topic, group, error = %err, "cannot delete rewritten changelog records");
        }
    }
}
