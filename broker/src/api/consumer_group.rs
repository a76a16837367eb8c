//! KIP-848 consumer groups: ConsumerGroupHeartbeat (join, heartbeat, leave, and the
//! assignment the coordinator computes) and ConsumerGroupDescribe. The state machine lives
//! in `group::consumer`.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_group_describe_request::ConsumerGroupDescribeRequest;
use kafka_protocol::messages::consumer_group_describe_response::{self as describe, ConsumerGroupDescribeResponse};
use kafka_protocol::messages::consumer_group_heartbeat_request::ConsumerGroupHeartbeatRequest;
use kafka_protocol::messages::consumer_group_heartbeat_response::{self as heartbeat, ConsumerGroupHeartbeatResponse};
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::RequestHeader;

use super::coordinator::ensure_group_coordinator;
use super::{str_bytes, topic_name};
use crate::broker::Broker;
use crate::connection::ConnectionState;
use crate::group::assignor::Assignment;
use crate::group::consumer::{encode_assignment, ConsumerGroup, HeartbeatRequest};
use crate::group::Group;
use crate::metadata::ClusterMetadata;

/// Without `include_authorized_operations`.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

pub async fn consumer_group_heartbeat(
    broker: &Arc<Broker>,
    conn: &ConnectionState,
    header: &RequestHeader,
    request: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    let config = &broker.groups.config;
    let fail = |error: ResponseError, message: &str| {
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(error.code())
            .with_error_message(Some(str_bytes(message)))
            .with_member_id(Some(request.member_id.clone()))
            .with_member_epoch(request.member_epoch)
    };
    let group_id = request.group_id.0.as_str().to_string();
    if group_id.is_empty() || group_id.len() > i16::MAX as usize {
        return fail(ResponseError::InvalidGroupId, "the group id is empty or too long");
    }
    if let Err(error) = ensure_group_coordinator(broker).await {
        return fail(error, "the group coordinator is not ready");
    }
    let owned: Option<Assignment> = request
        .topic_partitions
        .as_ref()
        .map(|topics| topics.iter().map(|t| (t.topic_id, t.partitions.iter().copied().collect())).collect());
    let beat = HeartbeatRequest {
        member_id: request.member_id.as_str().to_string(),
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.as_ref().map(|s| s.as_str().to_string()),
        rack_id: request.rack_id.as_ref().map(|s| s.as_str().to_string()),
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        subscribed_topic_names: request
            .subscribed_topic_names
            .as_ref()
            .map(|names| names.iter().map(|n| n.0.as_str().to_string()).collect()),
        subscribed_topic_regex: request.subscribed_topic_regex.as_ref().map(|s| s.as_str().to_string()),
        server_assignor: request.server_assignor.as_ref().map(|s| s.as_str().to_string()),
        owned,
        client_id: header.client_id.as_ref().map(|s| s.as_str().to_string()).unwrap_or_default(),
        client_host: conn.peer.map(|peer| format!("/{}", peer.ip())).unwrap_or_default(),
    };
    let group = broker.groups.group_or_create(&group_id);
    let metadata = broker.metadata();
    let result = {
        let mut group = group.lock();
        let now = broker.clock.now();
        let result = match group.as_consumer_group(&metadata, now) {
            Ok(consumer) => consumer.heartbeat(beat, now, &metadata, config),
            Err(error) => {
                return fail(error, &format!("group {group_id} has classic members and cannot switch protocol now"));
            }
        };
        // An upgraded classic group leaves an empty record behind.
        broker.groups.persist_if_dirty(&mut group);
        result
    };
    if let Some((error, message)) = result.error {
        return fail(error, &message);
    }
    let assignment = result.assignment.map(|assignment| {
        let topics = assignment
            .into_iter()
            .map(|(topic_id, partitions)| {
                heartbeat::TopicPartitions::default()
                    .with_topic_id(topic_id)
                    .with_partitions(partitions.into_iter().collect())
            })
            .collect();
        heartbeat::Assignment::default().with_topic_partitions(topics)
    });
    ConsumerGroupHeartbeatResponse::default()
        .with_member_id(Some(str_bytes(result.member_id)))
        .with_member_epoch(result.member_epoch)
        .with_heartbeat_interval_ms(config.consumer_heartbeat_interval_ms)
        .with_assignment(assignment)
}

fn describe_assignment(assignment: Option<&Assignment>, metadata: &ClusterMetadata) -> describe::Assignment {
    let topics = assignment
        .into_iter()
        .flatten()
        .map(|(topic_id, partitions)| {
            let name = metadata.topic_by_id(topic_id).map(|t| t.name.clone()).unwrap_or_default();
            describe::TopicPartitions::default()
                .with_topic_id(*topic_id)
                .with_topic_name(topic_name(&name))
                .with_partitions(partitions.iter().copied().collect())
        })
        .collect();
    describe::Assignment::default().with_topic_partitions(topics)
}

pub fn consumer_group_describe(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let metadata = broker.metadata();
    let groups = request
        .group_ids
        .into_iter()
        .map(|group_id| {
            let base = describe::DescribedGroup::default()
                .with_group_id(group_id.clone())
                .with_authorized_operations(OPERATIONS_NOT_REQUESTED);
            let group = broker.groups.group(group_id.0.as_str());
            let group = group.as_ref().map(|g| g.lock());
            let Some(consumer) = group.as_ref().and_then(|g| g.consumer()) else {
                let message = format!("group {} is not a consumer group", group_id.0.as_str());
                return base
                    .with_error_code(ResponseError::GroupIdNotFound.code())
                    .with_error_message(Some(str_bytes(message)));
            };
            let members = consumer
                .members()
                .map(|m| {
                    describe::Member::default()
                        .with_member_id(str_bytes(m.member_id.to_string()))
                        .with_instance_id(m.instance_id.as_deref().map(str_bytes))
                        .with_rack_id(m.rack_id.clone().map(str_bytes))
                        .with_member_epoch(m.member_epoch)
                        .with_client_id(str_bytes(m.client_id.clone()))
                        .with_client_host(str_bytes(m.client_host.clone()))
                        .with_subscribed_topic_names(m.subscribed_topic_names.iter().map(|n| topic_name(n)).collect())
                        .with_assignment(describe_assignment(Some(&m.assigned), &metadata))
                        .with_target_assignment(describe_assignment(consumer.target(&m.member_id), &metadata))
                        .with_member_type(if m.classic.is_some() { 0 } else { 1 })
                })
                .collect();
            base.with_group_state(str_bytes(consumer.state_name()))
                .with_group_epoch(consumer.group_epoch)
                .with_assignment_epoch(consumer.assignment_epoch)
                .with_assignor_name(str_bytes(consumer.assignor()))
                .with_members(members)
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}

/// DescribeGroups (the classic API, which admin tools use) on a KIP-848 group, as Kafka
/// answers it: members with their assignments in the classic consumer format.
pub fn describe_as_classic(
    base: DescribedGroup,
    group: &Group,
    consumer: &ConsumerGroup,
    metadata: &ClusterMetadata,
) -> DescribedGroup {
    let members = consumer
        .members()
        .map(|m| {
            DescribedGroupMember::default()
                .with_member_id(str_bytes(m.member_id.to_string()))
                .with_group_instance_id(m.instance_id.as_deref().map(str_bytes))
                .with_client_id(str_bytes(m.client_id.clone()))
                .with_client_host(str_bytes(m.client_host.clone()))
                .with_member_metadata(
                    m.classic.as_ref().and_then(|c| c.protocols.first()).map(|p| p.1.clone()).unwrap_or_default(),
                )
                .with_member_assignment(encode_assignment(&m.assigned, metadata))
        })
        .collect();
    base.with_group_state(str_bytes(group.state_name()))
        .with_protocol_type(str_bytes("consumer"))
        .with_protocol_data(str_bytes(consumer.assignor()))
        .with_members(members)
}
