//! `sluice groups reset-offsets`: moves a group's committed offsets on one topic to the log
//! start or end, a time, or an offset clamped into the log, as Kafka's tool does. The plan is
//! printed first and committed only with --execute, as one member-less ("simple") commit,
//! which a coordinator accepts only while the group has no members; a group with members is
//! refused before anything is looked up.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail};
use clap::Args;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;

use super::{committed_offsets, describe_group, group_id, offset_cell, on_coordinator, print_table, Connect};
use crate::client::{error_name, is_coordinator_error, Client, TopicPartition, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};

const OFFSET_COMMIT_VERSION: i16 = 8;

#[derive(Args)]
pub struct ResetOffsetsArgs {
    /// The group id.
    group: String,
    /// The topic whose offsets to reset.
    #[arg(long)]
    topic: String,
    /// Only these partitions (default: all), e.g. --partitions 0,1,2
    #[arg(long, value_delimiter = ',')]
    partitions: Vec<i32>,
    #[command(flatten)]
    target: ResetTargetArgs,
    /// Commit the new offsets; without it nothing changes (a dry run).
    #[arg(long)]
    execute: bool,
    #[command(flatten)]
    connect: Connect,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct ResetTargetArgs {
    /// The log start offset of each partition.
    #[arg(long)]
    to_earliest: bool,
    /// The log end offset of each partition.
    #[arg(long)]
    to_latest: bool,
    /// The first offset whose record's timestamp is at or after this time (milliseconds since
    /// the epoch); the log end offset where there is none.
    #[arg(long, value_name = "EPOCH_MS")]
    to_datetime: Option<i64>,
    /// This offset, moved into [log start offset, log end offset] where it falls outside.
    #[arg(long, value_name = "OFFSET")]
    to_offset: Option<i64>,
}

#[derive(Clone, Copy)]
enum ResetTarget {
    Earliest,
    Latest,
    Datetime { timestamp_ms: i64 },
    Offset(i64),
}

impl ResetTargetArgs {
    fn target(&self) -> anyhow::Result<ResetTarget> {
        Ok(match (self.to_earliest, self.to_latest, self.to_datetime, self.to_offset) {
            (true, _, _, _) => ResetTarget::Earliest,
            (_, true, _, _) => ResetTarget::Latest,
            (_, _, Some(timestamp_ms), _) if timestamp_ms >= 0 => ResetTarget::Datetime { timestamp_ms },
            (_, _, Some(_), _) => bail!("--to-datetime takes milliseconds since the epoch, e.g. 1700000000000"),
            (_, _, _, Some(offset)) => ResetTarget::Offset(offset),
            _ => bail!("say where to reset to: --to-earliest, --to-latest, --to-datetime or --to-offset"),
        })
    }
}

/// The partitions of `topic` to reset: `requested`, or every one when empty; each must exist.
fn reset_partitions(client: &mut Client, topic: &str, requested: &[i32]) -> anyhow::Result<Vec<TopicPartition>> {
    let cluster = client.metadata(Some(&[topic.to_string()]))?;
    let metadata = cluster.topics.get(topic).ok_or_else(|| anyhow!("topic {topic} does not exist"))?;
    match ResponseError::try_from_code(metadata.error_code) {
        None => {}
        Some(ResponseError::UnknownTopicOrPartition) => bail!("topic {topic} does not exist"),
        Some(_) => bail!("cannot look up topic {topic}: {}", error_name(metadata.error_code)),
    }
    let existing: BTreeSet<i32> = metadata.leaders.keys().copied().collect();
    let chosen: BTreeSet<i32> =
        if requested.is_empty() { existing.clone() } else { requested.iter().copied().collect() };
    if let Some(missing) = chosen.iter().find(|p| !existing.contains(p)) {
        bail!("topic {topic} has no partition {missing} (it has {} partitions)", existing.len());
    }
    Ok(chosen.into_iter().map(|partition| TopicPartition { topic: topic.to_string(), partition }).collect())
}

/// The offset each partition is reset to, from ListOffsets on the partitions' leaders.
fn new_offsets(
    client: &mut Client,
    partitions: &[TopicPartition],
    target: ResetTarget,
) -> anyhow::Result<BTreeMap<TopicPartition, i64>> {
    let cluster = client.metadata_of(partitions)?;
    let earliest = client.list_offsets(&cluster, partitions, EARLIEST_TIMESTAMP)?;
    let latest = client.list_offsets(&cluster, partitions, LATEST_TIMESTAMP)?;
    let at_time = match target {
        ResetTarget::Datetime { timestamp_ms } => Some(client.list_offsets(&cluster, partitions, timestamp_ms)?),
        _ => None,
    };
    let lookup =
        |offsets: &BTreeMap<TopicPartition, Result<i64, String>>, partition: &TopicPartition, what: &str| match offsets
            .get(partition)
        {
            Some(Ok(offset)) => Ok(*offset),
            Some(Err(reason)) => Err(anyhow!("cannot find the {what} offset of {partition}: {reason}")),
            None => Err(anyhow!("cannot find the {what} offset of {partition}: no answer")),
        };
    let mut offsets = BTreeMap::new();
    for partition in partitions {
        let log_start_offset = lookup(&earliest, partition, "earliest")?;
        let log_end_offset = lookup(&latest, partition, "latest")?;
        let offset = match target {
            ResetTarget::Earliest => log_start_offset,
            ResetTarget::Latest => log_end_offset,
            ResetTarget::Offset(offset) => offset.clamp(log_start_offset, log_end_offset.max(log_start_offset)),
            ResetTarget::Datetime { .. } => {
                let found = lookup(at_time.as_ref().expect("looked up for Datetime"), partition, "timestamp's")?;
                // -1: no record at or after the time; Kafka's tool then resets to the end.
                if found < 0 {
                    log_end_offset
                } else {
                    found
                }
            }
        };
        offsets.insert(partition.clone(), offset);
    }
    Ok(offsets)
}

pub fn run(args: &ResetOffsetsArgs) -> anyhow::Result<()> {
    let target = args.target.target()?;
    let group = args.group.as_str();
    let mut client = Client::connect(&args.connect.bootstrap)?;
    let described = describe_group(&mut client, group)?;
    let state = described.group_state.as_str();
    if !matches!(state, "Empty" | "Dead") || !described.members.is_empty() {
        bail!("group {group} has active members (state {state}); stop its consumers first");
    }
    let partitions = reset_partitions(&mut client, &args.topic, &args.partitions)?;
    let offsets = new_offsets(&mut client, &partitions, target)?;
    let fetch_topic = OffsetFetchRequestTopic::default()
        .with_name(TopicName(StrBytes::from_string(args.topic.clone())))
        .with_partition_indexes(partitions.iter().map(|p| p.partition).collect());
    let current = committed_offsets(&mut client, group, Some(vec![fetch_topic]))?;
    let rows = offsets
        .iter()
        .map(|(partition, offset)| {
            vec![
                group.to_string(),
                partition.topic.clone(),
                partition.partition.to_string(),
                offset_cell(current.get(partition).copied()),
                offset.to_string(),
            ]
        })
        .collect();
    print_table(&["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"], rows);
    if !args.execute {
        println!("\nDry run: nothing was committed. Add --execute to commit these offsets.");
        return Ok(());
    }
    let failed = commit_offsets(&mut client, group, &offsets)?;
    for (partition, code) in &failed {
        eprintln!("cannot reset {partition}: {}", error_name(*code));
    }
    if !failed.is_empty() {
        bail!("{} of {} partitions of group {group} were not reset", failed.len(), offsets.len());
    }
    println!("\nCommitted the new offsets of {} partition(s) for group {group}.", offsets.len());
    Ok(())
}

/// Commits `offsets` as a member-less ("simple") commit, which a coordinator accepts only for a
/// group without members; returns the partitions that failed, with their error codes.
fn commit_offsets(
    client: &mut Client,
    group: &str,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> anyhow::Result<Vec<(TopicPartition, i16)>> {
    let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for (partition, &offset) in offsets {
        topics.entry(&partition.topic).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(partition.partition)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(StrBytes::from_static_str(""))),
        );
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_group_instance_id(None)
        .with_topics(
            topics
                .into_iter()
                .map(|(topic, partitions)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let (_, failed) = on_coordinator(client, group, |client, coordinator| {
        let response = client.call(coordinator, OFFSET_COMMIT_VERSION, &request)?;
        let mut failed = Vec::new();
        let mut answered = BTreeSet::new();
        for topic in &response.topics {
            for partition in &topic.partitions {
                let topic_partition =
                    TopicPartition { topic: topic.name.to_string(), partition: partition.partition_index };
                answered.insert(topic_partition.clone());
                if partition.error_code != 0 {
                    failed.push((topic_partition, partition.error_code));
                }
            }
        }
        for partition in offsets.keys().filter(|p| !answered.contains(*p)) {
            failed.push((partition.clone(), ResponseError::UnknownServerError.code()));
        }
        // A coordinator error is the same for every partition: it decides whether to retry.
        let code = failed.iter().map(|(_, code)| *code).find(|&code| is_coordinator_error(code)).unwrap_or(0);
        Ok((code, failed))
    })?;
    Ok(failed)
}
