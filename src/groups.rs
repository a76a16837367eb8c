//! `sluice groups list|describe|reset-offsets|delete`: consumer-group operator tooling in the
//! manner of Kafka's `kafka-consumer-groups.sh`, over the wire protocol, so it works against any
//! Kafka-compatible cluster. Offsets are only ever reset for a group without members (a "simple"
//! commit: generation -1, no member id), and only with --execute; without it the plan is printed.

mod reset_offsets;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_protocol_assignment::ConsumerProtocolAssignment;
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequest, OffsetFetchRequestTopic};
use kafka_protocol::messages::GroupId;
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::client::{
    error_name, is_coordinator_error, Client, TopicPartition, LATEST_TIMESTAMP, RETRY_BACKOFF, RETRY_DEADLINE,
};

const LIST_GROUPS_VERSION: i16 = 4;
const DESCRIBE_GROUPS_VERSION: i16 = 5;
const OFFSET_FETCH_VERSION: i16 = 7;
const DELETE_GROUPS_VERSION: i16 = 2;

/// The classic protocol's group states (and the consumer protocol's two more), as ListGroups
/// filters on them: by exact name.
const GROUP_STATES: [&str; 7] =
    ["PreparingRebalance", "CompletingRebalance", "Stable", "Dead", "Empty", "Assigning", "Reconciling"];

#[derive(Subcommand)]
pub enum GroupsCommand {
    /// List every broker's groups with their state and protocol type (ListGroups).
    List {
        /// Only groups in this state: Stable, Empty, PreparingRebalance, CompletingRebalance, Dead.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// Show a group's state and members, and each partition's committed offset, log end offset and lag.
    Describe {
        /// The group id.
        group: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Move a group's committed offsets on one topic; prints the plan unless --execute is given.
    /// The group must have no members.
    ResetOffsets(reset_offsets::ResetOffsetsArgs),
    /// Delete a group that has no members, with its committed offsets.
    Delete {
        /// The group id.
        group: String,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Args)]
pub struct Connect {
    /// Any broker of the cluster, as HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    bootstrap: String,
}

impl Connect {
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

pub fn run(command: GroupsCommand) -> anyhow::Result<()> {
    match command {
        GroupsCommand::List { state, connect } => list(&connect.bootstrap, state.as_deref()),
        GroupsCommand::Describe { group, connect } => describe(&connect.bootstrap, &group),
        GroupsCommand::ResetOffsets(args) => reset_offsets::run(&args),
        GroupsCommand::Delete { group, connect } => delete(&connect.bootstrap, &group),
    }
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_string()))
}

/// Runs `request` on the group's coordinator. While the error code it returns says the
/// coordinator moved, is starting or is loading the group, finds the coordinator again and
/// retries, for up to `RETRY_DEADLINE`; any other code is the caller's to handle.
fn on_coordinator<T>(
    client: &mut Client,
    group: &str,
    mut request: impl FnMut(&mut Client, &str) -> anyhow::Result<(i16, T)>,
) -> anyhow::Result<(i16, T)> {
    let deadline = Instant::now() + RETRY_DEADLINE;
    loop {
        let coordinator = client.find_coordinator(group)?;
        let (code, value) = request(client, &coordinator)?;
        if !is_coordinator_error(code) || Instant::now() >= deadline {
            return Ok((code, value));
        }
        std::thread::sleep(RETRY_BACKOFF);
    }
}

fn list(bootstrap: &str, state: Option<&str>) -> anyhow::Result<()> {
    let states_filter = match state {
        None => Vec::new(),
        Some(state) => {
            let known = GROUP_STATES.iter().find(|known| known.eq_ignore_ascii_case(state));
            let known =
                known.ok_or_else(|| anyhow!("unknown group state {state}; use one of {}", GROUP_STATES.join(", ")))?;
            vec![StrBytes::from_static_str(known)]
        }
    };
    let mut client = Client::connect(bootstrap)?;
    let cluster = client.metadata(Some(&[]))?;
    let mut brokers: Vec<String> = cluster.brokers.into_values().collect();
    if brokers.is_empty() {
        brokers.push(bootstrap.to_string());
    }
    // Each broker lists only the groups it coordinates.
    let mut groups = BTreeMap::new();
    for broker in brokers {
        let request = ListGroupsRequest::default().with_states_filter(states_filter.clone());
        let response = client.call(&broker, LIST_GROUPS_VERSION, &request)?;
        if response.error_code != 0 {
            bail!("the broker at {broker} cannot list its groups: {}", error_name(response.error_code));
        }
        for listed in response.groups {
            let state = listed.group_state.to_string();
            groups.insert(listed.group_id.to_string(), (state, dash_if_empty(&listed.protocol_type)));
        }
    }
    let rows = groups.into_iter().map(|(group, (state, protocol_type))| vec![group, state, protocol_type]).collect();
    print_table(&["GROUP", "STATE", "PROTOCOL TYPE"], rows);
    Ok(())
}

/// DescribeGroups of one group; a group the coordinator does not know is `Dead` with no members,
/// which is how DescribeGroups before v6 reports it.
fn describe_group(client: &mut Client, group: &str) -> anyhow::Result<DescribedGroup> {
    let (code, described) = on_coordinator(client, group, |client, coordinator| {
        let request = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
        let response = client.call(coordinator, DESCRIBE_GROUPS_VERSION, &request)?;
        let described = response.groups.into_iter().find(|described| described.group_id.as_str() == group);
        let described = described.ok_or_else(|| anyhow!("the coordinator at {coordinator} left group {group} out"))?;
        Ok((described.error_code, described))
    })?;
    match ResponseError::try_from_code(code) {
        None => Ok(described),
        Some(ResponseError::GroupIdNotFound) => Ok(DescribedGroup::default()
            .with_group_id(group_id(group))
            .with_group_state(StrBytes::from_static_str("Dead"))),
        Some(_) => bail!("cannot describe group {group}: {}", error_name(code)),
    }
}

/// The group's committed offsets (OffsetFetch) for `topics`, or for every topic when `None`;
/// partitions without a committed offset are left out.
fn committed_offsets(
    client: &mut Client,
    group: &str,
    topics: Option<Vec<OffsetFetchRequestTopic>>,
) -> anyhow::Result<BTreeMap<TopicPartition, i64>> {
    let request =
        OffsetFetchRequest::default().with_group_id(group_id(group)).with_topics(topics).with_require_stable(false);
    let (code, response) = on_coordinator(client, group, |client, coordinator| {
        let response = client.call(coordinator, OFFSET_FETCH_VERSION, &request)?;
        Ok((response.error_code, response))
    })?;
    if code != 0 {
        bail!("cannot fetch the committed offsets of group {group}: {}", error_name(code));
    }
    let mut offsets = BTreeMap::new();
    for topic in &response.topics {
        for partition in &topic.partitions {
            let topic_partition =
                TopicPartition { topic: topic.name.to_string(), partition: partition.partition_index };
            if partition.error_code != 0 {
                bail!("cannot fetch the committed offset of {topic_partition}: {}", error_name(partition.error_code));
            }
            if partition.committed_offset >= 0 {
                offsets.insert(topic_partition, partition.committed_offset);
            }
        }
    }
    Ok(offsets)
}

/// A member's assignment in the consumer protocol's encoding (an i16 version, then the
/// version's fields), or `None` if the bytes are not one. As Kafka's `ConsumerProtocol` does, a
/// version newer than ours is read with the newest schema we know: newer ones only add fields.
/// An absurd element count costs only address space (see `allocator`) and fails to decode.
fn decode_assignment(assignment: &Bytes) -> Option<Vec<TopicPartition>> {
    let version_bytes: [u8; 2] = assignment.get(..2)?.try_into().ok()?;
    let version = i16::from_be_bytes(version_bytes);
    if version < 0 {
        return None;
    }
    let mut body = assignment.slice(2..);
    let decoded = ConsumerProtocolAssignment::decode(&mut body, version.min(3)).ok()?;
    let mut partitions = Vec::new();
    for topic in decoded.assigned_partitions {
        for partition in topic.partitions {
            partitions.push(TopicPartition { topic: topic.topic.to_string(), partition });
        }
    }
    Some(partitions)
}

/// `clicks(0,1,2),orders(3)`; `-` for no partitions.
fn format_assignment(partitions: &[TopicPartition]) -> String {
    let mut by_topic: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for partition in partitions {
        by_topic.entry(&partition.topic).or_default().push(partition.partition.to_string());
    }
    let topics: Vec<String> =
        by_topic.into_iter().map(|(topic, partitions)| format!("{topic}({})", partitions.join(","))).collect();
    if topics.is_empty() {
        "-".to_string()
    } else {
        topics.join(",")
    }
}

fn dash_if_empty(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

fn offset_cell(offset: Option<i64>) -> String {
    offset.map_or_else(|| "-".to_string(), |offset| offset.to_string())
}

fn describe(bootstrap: &str, group: &str) -> anyhow::Result<()> {
    let mut client = Client::connect(bootstrap)?;
    let described = describe_group(&mut client, group)?;
    let committed = committed_offsets(&mut client, group, None)?;
    if described.group_state.as_str() == "Dead" && committed.is_empty() {
        bail!("group {group} does not exist");
    }
    println!(
        "Group {group}: state {}, protocol type {}, protocol {}, {} member(s)",
        described.group_state.as_str(),
        dash_if_empty(&described.protocol_type),
        dash_if_empty(&described.protocol_data),
        described.members.len()
    );
    let mut partitions: BTreeMap<TopicPartition, PartitionState> = committed
        .into_iter()
        .map(|(partition, offset)| (partition, PartitionState { committed: Some(offset), member: None }))
        .collect();
    let member_rows = member_rows(&described, &mut partitions);
    if !member_rows.is_empty() {
        println!();
        print_table(&["MEMBER-ID", "GROUP-INSTANCE-ID", "CLIENT-ID", "HOST", "ASSIGNMENT"], member_rows);
    }
    if partitions.is_empty() {
        println!("\nNo committed or assigned partitions.");
        return Ok(());
    }
    let rows = partition_rows(&mut client, &partitions)?;
    println!();
    print_table(&["TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "MEMBER"], rows);
    Ok(())
}

/// What `describe` knows of a partition before looking up its log end offset.
#[derive(Default)]
struct PartitionState {
    committed: Option<i64>,
    /// The member it is assigned to.
    member: Option<String>,
}

/// One row per member, its assignment decoded when the group uses the consumer protocol; each
/// assigned partition is added to `partitions` with its member.
fn member_rows(
    described: &DescribedGroup,
    partitions: &mut BTreeMap<TopicPartition, PartitionState>,
) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for member in &described.members {
        let assignment = if member.member_assignment.is_empty() {
            "-".to_string()
        } else if described.protocol_type.as_str() != "consumer" {
            format!("<{} bytes>", member.member_assignment.len())
        } else {
            match decode_assignment(&member.member_assignment) {
                Some(assigned) => {
                    for partition in &assigned {
                        partitions.entry(partition.clone()).or_default().member = Some(member.member_id.to_string());
                    }
                    format_assignment(&assigned)
                }
                None => format!("<undecodable {} bytes>", member.member_assignment.len()),
            }
        };
        rows.push(vec![
            member.member_id.to_string(),
            member.group_instance_id.as_deref().map_or_else(|| "-".to_string(), dash_if_empty),
            dash_if_empty(&member.client_id),
            dash_if_empty(&member.client_host),
            assignment,
        ]);
    }
    rows
}

/// One row per partition with its log end offset (ListOffsets on its leader) and lag.
fn partition_rows(
    client: &mut Client,
    partitions: &BTreeMap<TopicPartition, PartitionState>,
) -> anyhow::Result<Vec<Vec<String>>> {
    let keys: Vec<TopicPartition> = partitions.keys().cloned().collect();
    let cluster = client.metadata_of(&keys)?;
    let log_end_offsets = client.list_offsets(&cluster, &keys, LATEST_TIMESTAMP)?;
    let mut rows = Vec::new();
    for (partition, state) in partitions {
        let log_end_offset = match log_end_offsets.get(partition) {
            Some(Ok(offset)) => Some(*offset),
            Some(Err(reason)) => {
                eprintln!("warning: no log end offset for {partition}: {reason}");
                None
            }
            None => None,
        };
        let lag = state.committed.zip(log_end_offset).map(|(committed, end)| end - committed);
        rows.push(vec![
            partition.topic.clone(),
            partition.partition.to_string(),
            offset_cell(state.committed),
            offset_cell(log_end_offset),
            offset_cell(lag),
            state.member.clone().unwrap_or_else(|| "-".to_string()),
        ]);
    }
    Ok(rows)
}

fn delete(bootstrap: &str, group: &str) -> anyhow::Result<()> {
    let mut client = Client::connect(bootstrap)?;
    let (code, ()) = on_coordinator(&mut client, group, |client, coordinator| {
        let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]);
        let response = client.call(coordinator, DELETE_GROUPS_VERSION, &request)?;
        let result = response.results.iter().find(|result| result.group_id.as_str() == group);
        let result = result.ok_or_else(|| anyhow!("the coordinator at {coordinator} left group {group} out"))?;
        Ok((result.error_code, ()))
    })?;
    match ResponseError::try_from_code(code) {
        None => {
            println!("Deleted group {group}.");
            Ok(())
        }
        Some(ResponseError::NonEmptyGroup) => {
            bail!("cannot delete group {group}: NON_EMPTY_GROUP (it has active members; stop its consumers first)")
        }
        Some(ResponseError::GroupIdNotFound) => {
            bail!("cannot delete group {group}: GROUP_ID_NOT_FOUND (it does not exist)")
        }
        Some(_) => bail!("cannot delete group {group}: {}", error_name(code)),
    }
}

/// Prints `rows` under `headers` in left-aligned columns two spaces apart, as Kafka's tools do.
fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let print_row = |cells: &mut dyn Iterator<Item = &str>| {
        let line: Vec<String> =
            cells.zip(&widths).map(|(cell, width)| format!("{cell:<width$}", width = *width)).collect();
        println!("{}", line.join("  ").trim_end());
    };
    print_row(&mut headers.iter().copied());
    for row in &rows {
        print_row(&mut row.iter().map(String::as_str));
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::Encodable;

    use super::*;

    fn encoded(version: i16, assignment: &ConsumerProtocolAssignment) -> Bytes {
        let mut buf = bytes::BytesMut::new();
        buf.extend_from_slice(&version.to_be_bytes());
        assignment.encode(&mut buf, version.min(3)).unwrap();
        buf.freeze()
    }

    #[test]
    fn assignments_decode_and_malformed_ones_do_not_panic() {
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            AssignedPartitions::default()
                .with_topic(TopicName(StrBytes::from_static_str("clicks")))
                .with_partitions(vec![0, 2]),
            AssignedPartitions::default()
                .with_topic(TopicName(StrBytes::from_static_str("orders")))
                .with_partitions(vec![1]),
        ]);
        for version in [0, 1, 3, 7] {
            let decoded = decode_assignment(&encoded(version, &assignment)).expect("a well-formed assignment");
            assert_eq!(format_assignment(&decoded), "clicks(0,2),orders(1)", "version {version}");
        }
        let whole = encoded(1, &assignment);
        for cut in 0..whole.len() {
            assert_eq!(decode_assignment(&whole.slice(..cut)), None, "cut at {cut} of {}", whole.len());
        }
        assert_eq!(decode_assignment(&Bytes::from_static(&[0xff, 0xff, 0, 0, 0, 0])), None, "negative version");
        // A count of two billion topics in 10 bytes: fails at the first missing topic.
        let absurd = Bytes::from_static(&[0, 1, 0x7f, 0xff, 0xff, 0xff, 0, 3, b'a', b'b']);
        assert_eq!(decode_assignment(&absurd), None);
    }
}
