//! The classic group membership APIs (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) and the
//! group admin APIs (ListGroups, DescribeGroups, DeleteGroups). The state machine lives in
//! `group::classic`; these functions translate versions and wait for rebalances.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_groups_response::{DeletableGroupResult, DeleteGroupsResponse};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::join_group_request::JoinGroupRequest;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::messages::{GroupId, RequestHeader};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;

use super::coordinator::ensure_group_coordinator;
use super::str_bytes;
use crate::broker::Broker;
use crate::connection::ConnectionState;
use crate::group::classic::{ClassicState, JoinRequest, JoinResult, Reply, SyncResult};
use crate::group::consumer::ClassicJoin;
use crate::group::{Group, Membership};
use crate::partition::PendingAppend;

/// DescribeGroups v3+ without `include_authorized_operations`.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;
/// Beyond the rebalance timeout a waiting JoinGroup or SyncGroup is answered anyway: the
/// coordinator's timers end every rebalance phase by then, so this only guards a bug.
const REPLY_SLACK: Duration = Duration::from_secs(5);

/// Waits until a deletion's tombstones are durable.
pub(super) fn wait_tombstones(tombstones: Option<PendingAppend>) -> Result<(), ResponseError> {
    match tombstones.map(PendingAppend::wait_committed) {
        Some(Err(err)) => {
            tracing::error!(%err, "group tombstones not durable");
            Err(ResponseError::KafkaStorageError)
        }
        _ => Ok(()),
    }
}

fn text(s: &StrBytes) -> String {
    s.as_str().to_string()
}

/// Waits for a reply the rebalance will send; a dropped sender means the member is gone.
async fn wait_reply<T>(reply: Reply<T>, timeout: Duration, gone: impl FnOnce() -> T) -> T {
    match reply {
        Reply::Now(result) => result,
        Reply::Later(rx) => wait_rx(rx, timeout).await.unwrap_or_else(gone),
    }
}

async fn wait_rx<T>(rx: oneshot::Receiver<T>, timeout: Duration) -> Option<T> {
    tokio::time::timeout(timeout + REPLY_SLACK, rx).await.ok().and_then(Result::ok)
}

fn join_response(version: i16, result: JoinResult) -> JoinGroupResponse {
    // Before v7 the protocol name is not nullable.
    let protocol_name = if version < 7 { Some(result.protocol_name.unwrap_or_default()) } else { result.protocol_name };
    let members = result
        .members
        .into_iter()
        .map(|m| {
            JoinGroupResponseMember::default()
                .with_member_id(str_bytes(m.member_id.to_string()))
                .with_group_instance_id(m.group_instance_id.map(|id| str_bytes(id.to_string())))
                .with_metadata(m.metadata)
        })
        .collect();
    JoinGroupResponse::default()
        .with_error_code(result.error.map_or(0, |e| e.code()))
        .with_generation_id(result.generation_id)
        .with_protocol_type(result.protocol_type.map(str_bytes))
        .with_protocol_name(protocol_name.map(str_bytes))
        .with_leader(str_bytes(result.leader))
        .with_skip_assignment(version >= 9 && result.skip_assignment)
        .with_member_id(str_bytes(result.member_id))
        .with_members(members)
}

pub async fn join_group(
    broker: &Arc<Broker>,
    conn: &ConnectionState,
    header: &RequestHeader,
    request: JoinGroupRequest,
) -> JoinGroupResponse {
    let version = header.request_api_version;
    let member_id = text(&request.member_id);
    let fail = |error| join_response(version, JoinResult::error(error, &member_id));
    let group_id = text(&request.group_id.0);
    // Empty, or too long for the 16-bit length of Kafka's group records.
    if group_id.is_empty() || group_id.len() > i16::MAX as usize {
        return fail(ResponseError::InvalidGroupId);
    }
    let config = &broker.groups.config;
    if request.session_timeout_ms < config.min_session_timeout_ms
        || request.session_timeout_ms > config.max_session_timeout_ms
    {
        return fail(ResponseError::InvalidSessionTimeout);
    }
    if let Err(error) = ensure_group_coordinator(broker).await {
        return fail(error);
    }
    let group = match broker.groups.group(&group_id) {
        Some(group) => group,
        // A member id for a group that does not exist is an id we never gave out.
        None if !member_id.is_empty() => return fail(ResponseError::UnknownMemberId),
        None => broker.groups.group_or_create(&group_id),
    };
    // v0 had one timeout for both.
    let rebalance_timeout_ms = if version >= 1 { request.rebalance_timeout_ms } else { request.session_timeout_ms };
    let join = JoinRequest {
        member_id: member_id.clone(),
        group_instance_id: request.group_instance_id.as_ref().map(text),
        client_id: header.client_id.as_ref().map(text).unwrap_or_default(),
        client_host: conn.peer.map(|peer| format!("/{}", peer.ip())).unwrap_or_default(),
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms,
        protocol_type: text(&request.protocol_type),
        protocols: request.protocols.into_iter().map(|p| (text(&p.name), p.metadata)).collect(),
        require_known_member_id: version >= 4,
        supports_skip_assignment: version >= 9,
    };
    let reply = {
        let mut group = group.lock();
        let now = broker.clock.now();
        let reply = match group.as_classic_group(now) {
            Some(classic) => classic.join(join, now, config),
            None => Reply::Now(join_consumer_group(broker, &mut group, join, version)),
        };
        broker.groups.persist_if_dirty(&mut group);
        reply
    };
    let timeout = Duration::from_millis(rebalance_timeout_ms.max(request.session_timeout_ms).max(0) as u64);
    let result = wait_reply(reply, timeout, || JoinResult::error(ResponseError::RebalanceInProgress, &member_id)).await;
    join_response(version, result)
}

/// A classic member joining a KIP-848 group during a rolling upgrade: answered at once,
/// with no leader (the coordinator assigns).
fn join_consumer_group(broker: &Broker, group: &mut Group, join: JoinRequest, version: i16) -> JoinResult {
    let Some(consumer) = group.consumer_mut() else {
        return JoinResult::error(ResponseError::CoordinatorNotAvailable, &join.member_id);
    };
    if join.protocol_type != "consumer" {
        return JoinResult::error(ResponseError::InconsistentGroupProtocol, &join.member_id);
    }
    if join.member_id.is_empty() && version >= 4 && join.group_instance_id.is_none() {
        let member_id = format!("{}-{}", join.client_id, uuid::Uuid::new_v4());
        return JoinResult::error(ResponseError::MemberIdRequired, &member_id);
    }
    let member_id = if join.member_id.is_empty() {
        format!("{}-{}", join.client_id, uuid::Uuid::new_v4())
    } else {
        join.member_id.clone()
    };
    let classic_join = ClassicJoin {
        member_id: member_id.clone(),
        instance_id: join.group_instance_id,
        client_id: join.client_id,
        client_host: join.client_host,
        session_timeout_ms: join.session_timeout_ms,
        rebalance_timeout_ms: join.rebalance_timeout_ms,
        protocols: join.protocols,
    };
    let metadata = broker.metadata();
    match consumer.classic_join(classic_join, broker.clock.now(), &metadata, &broker.groups.config) {
        Ok((generation_id, protocol_name)) => JoinResult {
            error: None,
            generation_id,
            protocol_type: Some("consumer".into()),
            protocol_name: Some(protocol_name),
            leader: String::new(),
            member_id,
            members: Vec::new(),
            skip_assignment: false,
        },
        Err(error) => JoinResult::error(error, &member_id),
    }
}

fn sync_response(result: SyncResult) -> SyncGroupResponse {
    SyncGroupResponse::default()
        .with_error_code(result.error.map_or(0, |e| e.code()))
        .with_protocol_type(result.protocol_type.map(str_bytes))
        .with_protocol_name(result.protocol_name.map(str_bytes))
        .with_assignment(result.assignment)
}

pub async fn sync_group(broker: &Arc<Broker>, _header: &RequestHeader, request: SyncGroupRequest) -> SyncGroupResponse {
    let fail = |error| sync_response(SyncResult::error(error));
    let group_id = text(&request.group_id.0);
    if group_id.is_empty() {
        return fail(ResponseError::InvalidGroupId);
    }
    let Some(group) = broker.groups.group(&group_id) else { return fail(ResponseError::UnknownMemberId) };
    let member_id = text(&request.member_id);
    let instance = request.group_instance_id.as_ref().map(text);
    let protocol_type = request.protocol_type.as_ref().map(text);
    let protocol_name = request.protocol_name.as_ref().map(text);
    let assignments = request.assignments.into_iter().map(|a| (text(&a.member_id), a.assignment)).collect();
    let (reply, timeout) = {
        let mut group = group.lock();
        let classic = match &mut group.membership {
            Membership::Consumer { group: consumer, .. } => {
                let metadata = broker.metadata();
                return sync_response(match consumer.classic_sync(&member_id, request.generation_id, &metadata) {
                    Ok((assignment, protocol_name)) => SyncResult {
                        error: None,
                        protocol_type: Some("consumer".into()),
                        protocol_name: Some(protocol_name),
                        assignment,
                    },
                    Err(error) => SyncResult::error(error),
                });
            }
            Membership::Classic(classic) => classic,
        };
        let reply = classic.sync(
            &member_id,
            instance.as_deref(),
            request.generation_id,
            (protocol_type.as_deref(), protocol_name.as_deref()),
            assignments,
            broker.clock.now(),
        );
        let timeout = classic
            .members()
            .find(|m| *m.member_id == member_id)
            .map_or(0, |m| m.rebalance_timeout_ms.max(m.session_timeout_ms));
        broker.groups.persist_if_dirty(&mut group);
        (reply, Duration::from_millis(timeout.max(0) as u64))
    };
    sync_response(wait_reply(reply, timeout, || SyncResult::error(ResponseError::RebalanceInProgress)).await)
}

pub fn heartbeat(broker: &Arc<Broker>, _header: &RequestHeader, request: HeartbeatRequest) -> HeartbeatResponse {
    let group_id = text(&request.group_id.0);
    let result = match broker.groups.group(&group_id) {
        _ if group_id.is_empty() => Err(ResponseError::InvalidGroupId),
        None => Err(ResponseError::UnknownMemberId),
        Some(group) => {
            let instance = request.group_instance_id.as_ref().map(text);
            let mut group = group.lock();
            let now = broker.clock.now();
            let result = match &mut group.membership {
                Membership::Consumer { group: consumer, .. } => {
                    return HeartbeatResponse::default().with_error_code(
                        consumer
                            .classic_heartbeat(request.member_id.as_str(), request.generation_id, now)
                            .err()
                            .map_or(0, |e| e.code()),
                    );
                }
                Membership::Classic(classic) => {
                    classic.heartbeat(request.member_id.as_str(), instance.as_deref(), request.generation_id, now)
                }
            };
            broker.groups.persist_if_dirty(&mut group);
            result
        }
    };
    HeartbeatResponse::default().with_error_code(result.err().map_or(0, |e| e.code()))
}

pub fn leave_group(broker: &Arc<Broker>, header: &RequestHeader, request: LeaveGroupRequest) -> LeaveGroupResponse {
    let version = header.request_api_version;
    // v0-v2 name one member; v3+ a batch, static members by instance id.
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        request.members.iter().map(|m| (text(&m.member_id), m.group_instance_id.as_ref().map(text))).collect()
    } else {
        vec![(text(&request.member_id), None)]
    };
    let group_id = text(&request.group_id.0);
    let group = broker.groups.group(&group_id);
    let top_level = match &group {
        _ if group_id.is_empty() => Some(ResponseError::InvalidGroupId),
        None => Some(ResponseError::UnknownMemberId),
        Some(_) => None,
    };
    let mut results = Vec::with_capacity(leaving.len());
    if let (Some(group), None) = (&group, top_level) {
        let mut group = group.lock();
        let config = &broker.groups.config;
        let now = broker.clock.now();
        for (member_id, instance) in &leaving {
            let result = match &mut group.membership {
                Membership::Consumer { group: consumer, .. } => {
                    consumer.classic_leave(member_id, instance.as_deref(), now)
                }
                Membership::Classic(classic) => classic.leave(member_id, instance.as_deref(), now, config),
            };
            if result.is_ok() {
                tracing::info!(group = group_id, member = member_id, "member left the group");
            }
            results.push(result.err());
        }
        broker.groups.persist_if_dirty(&mut group);
    }
    if version < 3 {
        let error = top_level.or(results.first().copied().flatten());
        return LeaveGroupResponse::default().with_error_code(error.map_or(0, |e| e.code()));
    }
    let members = leaving
        .into_iter()
        .zip(results)
        .map(|((member_id, instance), error)| {
            MemberResponse::default()
                .with_member_id(str_bytes(member_id))
                .with_group_instance_id(instance.map(str_bytes))
                .with_error_code(error.map_or(0, |e| e.code()))
        })
        .collect();
    LeaveGroupResponse::default().with_error_code(top_level.map_or(0, |e| e.code())).with_members(members)
}

pub fn list_groups(broker: &Arc<Broker>, _header: &RequestHeader, request: ListGroupsRequest) -> ListGroupsResponse {
    let states: Vec<String> = request.states_filter.iter().map(|s| s.as_str().to_ascii_lowercase()).collect();
    let types: Vec<String> = request.types_filter.iter().map(|s| s.as_str().to_ascii_lowercase()).collect();
    let mut groups: Vec<ListedGroup> = broker
        .groups
        .groups()
        .into_iter()
        .filter_map(|group| {
            let group = group.lock();
            let state = group.state_name();
            let group_type = group.group_type();
            let wanted = !group.is_dead()
                && (states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(state)))
                && (types.is_empty() || types.iter().any(|t| t == group_type));
            wanted.then(|| {
                ListedGroup::default()
                    .with_group_id(GroupId(str_bytes(group.id.to_string())))
                    .with_protocol_type(str_bytes(group.protocol_type()))
                    .with_group_state(str_bytes(state))
                    .with_group_type(str_bytes(group_type))
            })
        })
        .collect();
    groups.sort_by(|a, b| a.group_id.0.as_str().cmp(b.group_id.0.as_str()));
    ListGroupsResponse::default().with_groups(groups)
}

pub fn describe_groups(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let described = request
        .groups
        .into_iter()
        .map(|group_id| {
            let operations = OPERATIONS_NOT_REQUESTED;
            let base = DescribedGroup::default().with_group_id(group_id.clone()).with_authorized_operations(operations);
            let id = text(&group_id.0);
            let Some(group) = broker.groups.group(&id) else {
                // Kafka describes an unknown group as Dead, without an error, before v6.
                return base.with_group_state(str_bytes(ClassicState::Dead.name()));
            };
            let group = group.lock();
            let classic = match &group.membership {
                Membership::Consumer { group: consumer, .. } => {
                    let metadata = broker.metadata();
                    return super::consumer_group::describe_as_classic(base, &group, consumer, &metadata);
                }
                Membership::Classic(classic) => classic,
            };
            // Member metadata and assignments are only meaningful once the group is stable.
            let stable = classic.state == ClassicState::Stable;
            let protocol = if stable { classic.protocol_name.clone().unwrap_or_default() } else { String::new() };
            let members = classic
                .members()
                .map(|m| {
                    let member = DescribedGroupMember::default()
                        .with_member_id(str_bytes(m.member_id.to_string()))
                        .with_group_instance_id(m.group_instance_id.as_deref().map(str_bytes))
                        .with_client_id(str_bytes(m.client_id.clone()))
                        .with_client_host(str_bytes(m.client_host.clone()));
                    if stable {
                        member
                            .with_member_metadata(m.metadata(classic.protocol_name.as_deref()))
                            .with_member_assignment(m.assignment.clone())
                    } else {
                        member
                    }
                })
                .collect();
            base.with_group_state(str_bytes(group.state_name()))
                .with_protocol_type(str_bytes(group.protocol_type()))
                .with_protocol_data(str_bytes(protocol))
                .with_members(members)
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(described)
}

pub async fn delete_groups(
    broker: &Arc<Broker>,
    _header: &RequestHeader,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let names = request.groups_names;
    let results = super::admin_blocking(broker, move |broker| {
        names
            .into_iter()
            .map(|group_id| {
                // Acknowledged once the tombstones are durable (this is a blocking thread).
                let result = broker.groups.delete_group(group_id.0.as_str()).and_then(wait_tombstones);
                if result.is_ok() {
                    tracing::info!(group = group_id.0.as_str(), "deleted group");
                }
                DeletableGroupResult::default()
                    .with_group_id(group_id)
                    .with_error_code(result.err().map_or(0, |e| e.code()))
            })
            .collect::<Vec<_>>()
    })
    .await;
    DeleteGroupsResponse::default().with_results(results)
}
