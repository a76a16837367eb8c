//! Committed offsets: OffsetCommit (acknowledged once its `__consumer_offsets` record is
//! durable), OffsetFetch (one group before v8, several from v8) and OffsetDelete.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_request::OffsetDeleteRequest;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::RequestHeader;

use super::coordinator::ensure_group_coordinator;
use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::group::consumer::decode_subscription;
use crate::group::offsets::CommittedOffset;
use crate::group::Membership;
use crate::group::{GroupCoordinator, MemberClaim, OffsetCommit};
use crate::topic_partition::TopicPartition;

pub async fn offset_commit(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group_id = request.group_id.0.as_str().to_string();
    let commits: Vec<OffsetCommit> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(|p| OffsetCommit {
                topic: topic.name.0.as_str().to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: p.committed_metadata.as_ref().map(|m| m.as_str().to_string()),
            })
        })
        .collect();
    let results = if group_id.is_empty() {
        vec![Some(ResponseError::InvalidGroupId); commits.len()]
    } else if let Err(error) = ensure_group_coordinator(broker).await {
        vec![Some(error); commits.len()]
    } else {
        let claim = MemberClaim {
            generation_id: request.generation_id_or_member_epoch,
            member_id: request.member_id.as_str(),
            group_instance_id: request.group_instance_id.as_ref().map(|s| s.as_str()),
        };
        let pending = broker.groups.commit_offsets(&group_id, claim, request.retention_time_ms, &commits, None);
        GroupCoordinator::complete_commit(pending).await
    };
    let mut results = results.into_iter();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let error = results.next().flatten();
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error.map_or(0, |e| e.code()))
                })
                .collect();
            OffsetCommitResponseTopic::default().with_name(topic.name).with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// What OffsetFetch reports for one partition: offset, leader epoch and metadata.
type Fetched = (i64, i32, String);
/// Per topic, per partition.
type FetchedTopics = Vec<(String, Vec<(i32, Fetched)>)>;

/// The commit, or -1 with empty metadata.
fn fetched(committed: Option<&CommittedOffset>) -> Fetched {
    committed.map_or((-1, -1, String::new()), |c| (c.offset, c.leader_epoch, c.metadata.clone()))
}

/// Partitions of a group with an offset still in an open transaction: with `require_stable`
/// (KIP-447, read_committed consumers) they get UNSTABLE_OFFSET_COMMIT and retry.
fn unstable_partitions(
    broker: &Broker,
    group_id: &str,
    require_stable: bool,
) -> std::collections::HashSet<TopicPartition> {
    if !require_stable {
        return Default::default();
    }
    let Some(group) = broker.groups.group(group_id) else { return Default::default() };
    let group = group.lock();
    group.pending_txn.values().flatten().map(|(tp, _)| tp.clone()).collect()
}

/// One group's offsets: all of them (`None`) or the partitions asked for.
fn group_offsets(broker: &Broker, group_id: &str, topics: Option<Vec<(String, Vec<i32>)>>) -> FetchedTopics {
    let group = broker.groups.group(group_id);
    let group = group.as_ref().map(|g| g.lock());
    match topics {
        Some(topics) => topics
            .into_iter()
            .map(|(topic, partitions)| {
                let offsets = partitions
                    .into_iter()
                    .map(|p| (p, fetched(group.as_ref().and_then(|g| g.offsets.get(&topic, p)))))
                    .collect();
                (topic, offsets)
            })
            .collect(),
        None => {
            let mut by_topic: FetchedTopics = Vec::new();
            for (tp, committed) in group.iter().flat_map(|g| g.offsets.iter()) {
                if by_topic.last().is_none_or(|(t, _)| *t != tp.topic) {
                    by_topic.push((tp.topic.clone(), Vec::new()));
                }
                if let Some((_, partitions)) = by_topic.last_mut() {
                    partitions.push((tp.partition, fetched(Some(committed))));
                }
            }
            by_topic
        }
    }
}

pub fn offset_fetch(broker: &Arc<Broker>, header: &RequestHeader, request: OffsetFetchRequest) -> OffsetFetchResponse {
    if header.request_api_version >= 8 {
        let groups = request
            .groups
            .into_iter()
            .map(|group| {
                let id = group.group_id.0.as_str().to_string();
                if let Some(error) =
                    check_fetching_member(broker, &id, group.member_id.as_ref().map(|m| m.as_str()), group.member_epoch)
                {
                    return OffsetFetchResponseGroup::default()
                        .with_group_id(group.group_id)
                        .with_error_code(error.code());
                }
                let topics = group.topics.map(|topics| {
                    topics.into_iter().map(|t| (t.name.0.as_str().to_string(), t.partition_indexes)).collect()
                });
                let unstable = unstable_partitions(broker, &id, request.require_stable);
                let topics = group_offsets(broker, &id, topics)
                    .into_iter()
                    .map(|(topic, partitions)| {
                        let partitions = partitions
                            .into_iter()
                            .map(|(index, (offset, epoch, metadata))| {
                                let error = unstable
                                    .contains(&TopicPartition::new(topic.clone(), index))
                                    .then_some(ResponseError::UnstableOffsetCommit);
                                OffsetFetchResponsePartitions::default()
                                    .with_error_code(error.map_or(0, |e| e.code()))
                                    .with_partition_index(index)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(epoch)
                                    .with_metadata(Some(str_bytes(metadata)))
                            })
                            .collect();
                        OffsetFetchResponseTopics::default().with_name(topic_name(&topic)).with_partitions(partitions)
                    })
                    .collect();
                OffsetFetchResponseGroup::default().with_group_id(group.group_id).with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let id = request.group_id.0.as_str().to_string();
    let topics = request
        .topics
        .map(|topics| topics.into_iter().map(|t| (t.name.0.as_str().to_string(), t.partition_indexes)).collect());
    let unstable = unstable_partitions(broker, &id, request.require_stable);
    let topics = group_offsets(broker, &id, topics)
        .into_iter()
        .map(|(topic, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, (offset, epoch, metadata))| {
                    let error = unstable
                        .contains(&TopicPartition::new(topic.clone(), index))
                        .then_some(ResponseError::UnstableOffsetCommit);
                    OffsetFetchResponsePartition::default()
                        .with_error_code(error.map_or(0, |e| e.code()))
                        .with_partition_index(index)
                        .with_committed_offset(offset)
                        .with_committed_leader_epoch(epoch)
                        .with_metadata(Some(str_bytes(metadata)))
                })
                .collect();
            OffsetFetchResponseTopic::default().with_name(topic_name(&topic)).with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// OffsetFetch v9 from a KIP-848 member names it and its epoch, which must be current.
fn check_fetching_member(
    broker: &Broker,
    group_id: &str,
    member_id: Option<&str>,
    member_epoch: i32,
) -> Option<ResponseError> {
    let member_id = member_id?;
    let group = broker.groups.group(group_id)?;
    let group = group.lock();
    let consumer = group.consumer()?;
    consumer.validate_member_epoch(member_id, member_epoch).err()
}

/// The topics a consumer-protocol member subscribes to, from its JoinGroup metadata.
fn subscribed_topics(metadata: &bytes::Bytes) -> Vec<String> {
    decode_subscription(metadata).map(|(topics, _)| topics).unwrap_or_default()
}

pub async fn offset_delete(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let group_id = request.group_id.0.as_str().to_string();
    let Some(group) = broker.groups.group(&group_id) else {
        return OffsetDeleteResponse::default().with_error_code(ResponseError::GroupIdNotFound.code());
    };
    let broker = broker.clone();
    super::admin_blocking(&broker, move |broker| {
        let mut group = group.lock();
        if group.is_dead() {
            return OffsetDeleteResponse::default().with_error_code(ResponseError::GroupIdNotFound.code());
        }
        // A live consumer group keeps the offsets of topics it subscribes to; any other
        // live group keeps all of them.
        let subscribed: Option<Vec<String>> = match &group.membership {
            _ if group.is_empty() => Some(Vec::new()),
            Membership::Consumer { group: consumer, .. } => Some(consumer.subscribed_topics().into_iter().collect()),
            Membership::Classic(classic) if group.protocol_type() == "consumer" => {
                let protocol = classic.protocol_name.as_deref();
                Some(classic.members().flat_map(|m| subscribed_topics(&m.metadata(protocol))).collect())
            }
            Membership::Classic(_) => None,
        };
        let Some(subscribed) = subscribed else {
            return OffsetDeleteResponse::default().with_error_code(ResponseError::NonEmptyGroup.code());
        };
        let mut deletable = Vec::new();
        type Outcomes = Vec<(String, Vec<(i32, Option<ResponseError>)>)>;
        let topics: Outcomes = request
            .topics
            .iter()
            .map(|topic| {
                let name = topic.name.0.as_str().to_string();
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        if subscribed.contains(&name) {
                            (p.partition_index, Some(ResponseError::GroupSubscribedToTopic))
                        } else {
                            deletable.push(TopicPartition::new(name.clone(), p.partition_index));
                            (p.partition_index, None)
                        }
                    })
                    .collect();
                (name, partitions)
            })
            .collect();
        let deleted = broker.groups.delete_offsets(&mut group, &deletable);
        // Acknowledged once the tombstones are durable, waited for outside the group's lock.
        drop(group);
        let failure = deleted.and_then(super::group::wait_tombstones).err();
        let topics = topics
            .into_iter()
            .map(|(name, partitions)| {
                let partitions = partitions
                    .into_iter()
                    .map(|(index, error)| {
                        let error = error.or(failure);
                        OffsetDeleteResponsePartition::default()
                            .with_partition_index(index)
                            .with_error_code(error.map_or(0, |e| e.code()))
                    })
                    .collect();
                OffsetDeleteResponseTopic::default().with_name(topic_name(&name)).with_partitions(partitions)
            })
            .collect();
        OffsetDeleteResponse::default().with_topics(topics)
    })
    .await
}
