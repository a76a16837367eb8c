//! Moving replicas and leaders, and what each broker holds: AlterPartitionReassignments and
//! ListPartitionReassignments (KIP-455; the metadata side is [`crate::metadata::reassignment`]),
//! ElectLeaders (KIP-460: preferred and unclean) and DescribeLogDirs. Changes go to the
//! metadata log through the controller; errors are per partition, as the protocol carries them.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_request::AlterPartitionReassignmentsRequest;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    AlterPartitionReassignmentsResponse, ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::describe_log_dirs_request::DescribeLogDirsRequest;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResponse, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::elect_leaders_request::ElectLeadersRequest;
use kafka_protocol::messages::elect_leaders_response::{ElectLeadersResponse, PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsRequest;
use kafka_protocol::messages::list_partition_reassignments_response::{
    ListPartitionReassignmentsResponse, OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{BrokerId, RequestHeader};

use super::{admin_blocking, str_bytes, topic_name};
use crate::broker::Broker;
use crate::controller::AdminError;
use crate::metadata::{ClusterMetadata, MetadataRecord, PartitionAssignment, NO_LEADER};

/// ElectLeaders' election types.
const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;

fn ids(replicas: &[i32]) -> Vec<BrokerId> {
    replicas.iter().map(|r| BrokerId(*r)).collect()
}

fn error_of(result: Result<(), AdminError>) -> (i16, Option<kafka_protocol::protocol::StrBytes>) {
    match result {
        Ok(()) => (0, None),
        Err(err) => (err.code.code(), Some(str_bytes(err.message))),
    }
}

/// The record that moves (or with `target` None, stops moving) one partition.
fn reassignment(
    metadata: &ClusterMetadata,
    topic: &str,
    partition: i32,
    target: Option<Vec<i32>>,
    allow_replication_factor_change: bool,
) -> Result<MetadataRecord, AdminError> {
    let unknown =
        || AdminError::new(ResponseError::UnknownTopicOrPartition, format!("{topic}-{partition} does not exist"));
    let found = metadata.topic(topic).ok_or_else(unknown)?;
    let assignment = found.assignment(partition).ok_or_else(unknown)?;
    if let Some(target) = &target {
        let factor = assignment.original_replicas().len();
        if !allow_replication_factor_change && target.len() != factor {
            return Err(AdminError::new(
                ResponseError::InvalidReplicationFactor,
                format!("{topic}-{partition} has {factor} replicas; the target names {}", target.len()),
            ));
        }
    }
    Ok(MetadataRecord::ReassignPartition { topic_id: found.id, partition, target })
}

pub async fn alter_partition_reassignments(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    request: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    // v0 had no such flag: a change of replication factor was allowed.
    let allow_change = header.request_api_version == 0 || request.allow_replication_factor_change;
    let responses = admin_blocking(broker, move |broker| {
        request
            .topics
            .into_iter()
            .map(|topic| {
                let name = topic.name.0.to_string();
                let partitions = topic
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let target = p.replicas.map(|r| r.into_iter().map(|id| id.0).collect());
                        let record =
                            reassignment(&broker.metadata(), &name, p.partition_index, target, allow_change);
                        let result = record.and_then(|record| broker.controller.commit(vec![record]).map(|_| ()));
                        if result.is_ok() {
                            tracing::info!(topic = %name, partition = p.partition_index, "reassignment started (or cancelled)");
                        }
                        let (code, message) = error_of(result);
                        ReassignablePartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(code)
                            .with_error_message(message)
                    })
                    .collect();
                ReassignableTopicResponse::default().with_name(topic.name).with_partitions(partitions)
            })
            .collect()
    })
    .await;
    AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(allow_change)
        .with_responses(responses)
}

pub fn list_partition_reassignments(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let metadata = broker.metadata();
    let ongoing = |a: &PartitionAssignment, index: i32| {
        a.reassigning().then(|| {
            OngoingPartitionReassignment::default()
                .with_partition_index(index)
                .with_replicas(ids(&a.replicas))
                .with_adding_replicas(ids(&a.adding_replicas))
                .with_removing_replicas(ids(&a.removing_replicas))
        })
    };
    let topics = match request.topics {
        // Every partition being moved.
        None => metadata
            .topics()
            .filter_map(|topic| {
                let partitions: Vec<_> =
                    topic.assignments.iter().enumerate().filter_map(|(i, a)| ongoing(a, i as i32)).collect();
                (!partitions.is_empty()).then(|| {
                    OngoingTopicReassignment::default().with_name(topic_name(&topic.name)).with_partitions(partitions)
                })
            })
            .collect(),
        // The named partitions that are being moved (others, or unknown ones, are left out).
        Some(wanted) => wanted
            .into_iter()
            .filter_map(|wanted| {
                let topic = metadata.topic(wanted.name.0.as_str())?;
                let partitions: Vec<_> = wanted
                    .partition_indexes
                    .iter()
                    .filter_map(|&i| topic.assignment(i).and_then(|a| ongoing(a, i)))
                    .collect();
                (!partitions.is_empty())
                    .then(|| OngoingTopicReassignment::default().with_name(wanted.name).with_partitions(partitions))
            })
            .collect(),
    };
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}

/// The leader change an election makes of one partition, or why it makes none.
fn election(
    metadata: &ClusterMetadata,
    assignment: &PartitionAssignment,
    election_type: i8,
) -> Result<(i32, Vec<i32>), AdminError> {
    let live_in_sync = assignment.isr.iter().copied().find(|r| metadata.is_live(*r));
    match election_type {
        PREFERRED => {
            let preferred = assignment.replicas.first().copied().unwrap_or(NO_LEADER);
            if assignment.leader == preferred {
                return Err(AdminError::new(ResponseError::ElectionNotNeeded, "the preferred replica leads"));
            }
            if !assignment.isr.contains(&preferred) || !metadata.is_live(preferred) {
                return Err(AdminError::new(
                    ResponseError::PreferredLeaderNotAvailable,
                    format!("the preferred replica {preferred} is not a live in-sync replica"),
                ));
            }
            Ok((preferred, assignment.isr.clone()))
        }
        _ => {
            if assignment.leader != NO_LEADER {
                return Err(AdminError::new(ResponseError::ElectionNotNeeded, "the partition has a leader"));
            }
            if let Some(leader) = live_in_sync {
                return Ok((leader, assignment.isr.clone()));
            }
            // Unclean: a live replica outside the ISR leads with what it has; records
            // acknowledged by the lost in-sync replicas and not on it are gone.
            let leader = assignment.replicas.iter().copied().find(|r| metadata.is_live(*r)).ok_or_else(|| {
                AdminError::new(ResponseError::EligibleLeadersNotAvailable, "no replica of the partition is alive")
            })?;
            Ok((leader, vec![leader]))
        }
    }
}

pub async fn elect_leaders(
    broker: &Arc<Broker>,
    header: &RequestHeader,
    request: ElectLeadersRequest,
) -> ElectLeadersResponse {
    // v0 had no election type: preferred.
    let election_type = if header.request_api_version == 0 { PREFERRED } else { request.election_type };
    if !matches!(election_type, PREFERRED | UNCLEAN) {
        return ElectLeadersResponse::default().with_error_code(ResponseError::InvalidRequest.code());
    }
    let results = admin_blocking(broker, move |broker| {
        let metadata = broker.metadata();
        // None: every partition (as Kafka, for a preferred election of the whole cluster).
        let wanted: Vec<(String, Vec<i32>)> = match request.topic_partitions {
            Some(topics) => topics.into_iter().map(|t| (t.topic.0.to_string(), t.partitions)).collect(),
            None => metadata.topics().map(|t| (t.name.clone(), (0..t.partitions).collect())).collect(),
        };
        wanted
            .into_iter()
            .map(|(name, partitions)| {
                let results = partitions
                    .into_iter()
                    .map(|partition| {
                        let result = (|| {
                            let unknown = || {
                                AdminError::new(
                                    ResponseError::UnknownTopicOrPartition,
                                    format!("{name}-{partition} does not exist"),
                                )
                            };
                            let topic = metadata.topic(&name).ok_or_else(unknown)?;
                            let assignment = topic.assignment(partition).ok_or_else(unknown)?;
                            let (leader, isr) = election(&metadata, assignment, election_type)?;
                            let record = MetadataRecord::PartitionChange {
                                topic_id: topic.id,
                                partition,
                                leader,
                                leader_epoch: assignment.leader_epoch + 1,
                                isr,
                            };
                            broker.controller.commit(vec![record])?;
                            tracing::info!(topic = %name, partition, leader, "leader elected");
                            Ok(())
                        })();
                        let (code, message) = error_of(result);
                        PartitionResult::default()
                            .with_partition_id(partition)
                            .with_error_code(code)
                            .with_error_message(message)
                    })
                    .collect();
                ReplicaElectionResult::default().with_topic(topic_name(&name)).with_partition_result(results)
            })
            .collect()
    })
    .await;
    ElectLeadersResponse::default().with_replica_election_results(results)
}

pub fn describe_log_dirs(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    let wanted = |topic: &str, partition: i32| match &request.topics {
        None => true,
        Some(topics) => topics.iter().any(|t| t.topic.0.as_str() == topic && t.partitions.contains(&partition)),
    };
    let mut topics: std::collections::BTreeMap<String, Vec<DescribeLogDirsPartition>> = Default::default();
    for partition in broker.replicas.all_partitions() {
        if !wanted(&partition.topic, partition.index) {
            continue;
        }
        // Lag: how far this copy is behind the partition's high watermark (0 on the leader).
        let lag = (partition.log.high_watermark().0 - partition.log.log_end_offset().0).max(0);
        topics.entry(partition.topic.to_string()).or_default().push(
            DescribeLogDirsPartition::default()
                .with_partition_index(partition.index)
                .with_partition_size(partition.log.size_bytes() as i64)
                .with_offset_lag(lag),
        );
    }
    let topics = topics
        .into_iter()
        .map(|(name, mut partitions)| {
            partitions.sort_by_key(|p| p.partition_index);
            DescribeLogDirsTopic::default().with_name(topic_name(&name)).with_partitions(partitions)
        })
        .collect();
    let (total_bytes, usable_bytes) = volume_bytes(&broker.config.data_dir);
    let dir = broker.config.data_dir.canonicalize().unwrap_or_else(|_| broker.config.data_dir.clone());
    let result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(dir.display().to_string()))
        .with_topics(topics)
        .with_total_bytes(total_bytes)
        .with_usable_bytes(usable_bytes);
    DescribeLogDirsResponse::default().with_results(vec![result])
}

/// The size and free space of the volume holding `dir` (-1 each if unknown, as Kafka says).
fn volume_bytes(dir: &std::path::Path) -> (i64, i64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return (-1, -1) };
    // SAFETY: statvfs(3) writes only into `stat`, which lives across the call; `path` is a
    // NUL-terminated string that outlives it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return (-1, -1);
    }
    let block = stat.f_frsize as i64;
    (stat.f_blocks as i64 * block, stat.f_bavail as i64 * block)
}
