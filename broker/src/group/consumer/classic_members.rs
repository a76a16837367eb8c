//! Classic-protocol members inside a KIP-848 consumer group, for rolling upgrades: when the
//! first `group.protocol=consumer` member joins a stable classic consumer group, the group
//! converts (its members keep their partitions and generation) and consumers still on
//! JoinGroup/SyncGroup/Heartbeat get their share of the server-side assignment:
//! - JoinGroup is answered at once, with no leader (nobody runs a client-side assignor);
//!   the partitions a rejoining member lists as owned are what it still holds, so
//!   partitions it gave up are released to their new owners;
//! - SyncGroup returns the member's current assignment in the classic format;
//! - Heartbeat answers REBALANCE_IN_PROGRESS whenever that assignment must change, which
//!   makes the member rejoin.
//!
//! A member's generation is its member epoch.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_protocol_assignment::{self, ConsumerProtocolAssignment};
use kafka_protocol::messages::{ConsumerProtocolSubscription, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::{ConsumerGroup, ConsumerMember, MemberIdentity};
use crate::clock::Now;
use crate::config::GroupConfig;
use crate::group::assignor::Assignment;
use crate::group::classic::ClassicGroup;
use crate::metadata::ClusterMetadata;

/// What the coordinator keeps of a classic member beyond what every member has.
#[derive(Clone, Debug)]
pub struct ClassicMemberInfo {
    pub session_timeout_ms: i32,
    /// The protocols it offered, in its order of preference; the first is the one used.
    pub protocols: Vec<(String, Bytes)>,
    /// The assignment it last received in SyncGroup.
    synced: Option<Assignment>,
}

impl ClassicMemberInfo {
    pub fn protocol_name(&self) -> String {
        self.protocols.first().map(|(name, _)| name.clone()).unwrap_or_default()
    }
}

/// A classic member's JoinGroup, as the consumer group needs it.
pub struct ClassicJoin {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
}

/// Partitions by topic name, as the classic consumer protocol lists them.
pub type NamedPartitions = Vec<(String, Vec<i32>)>;

/// The topics a consumer-protocol member subscribes to and the partitions it says it owns
/// (ConsumerProtocolSubscription v1+), or `None` if the metadata does not decode.
pub fn decode_subscription(metadata: &Bytes) -> Option<(Vec<String>, NamedPartitions)> {
    let mut buf = metadata.clone();
    if buf.len() < 2 {
        return None;
    }
    let version = buf.get_i16();
    let subscription = ConsumerProtocolSubscription::decode(&mut buf, version.clamp(0, 3)).ok()?;
    let topics = subscription.topics.iter().map(|t| t.as_str().to_string()).collect();
    let owned = subscription
        .owned_partitions
        .iter()
        .map(|tp| (tp.topic.0.as_str().to_string(), tp.partitions.clone()))
        .collect();
    Some((topics, owned))
}

/// Partitions by topic name, resolved to topic ids (unknown topics are dropped).
fn by_topic_id(partitions: &[(String, Vec<i32>)], metadata: &ClusterMetadata) -> Assignment {
    let mut assignment = Assignment::new();
    for (name, parts) in partitions {
        if let Some(topic) = metadata.topic(name) {
            assignment.entry(topic.id).or_default().extend(parts.iter().copied().filter(|&p| p < topic.partitions));
        }
    }
    assignment.retain(|_, parts| !parts.is_empty());
    assignment
}

/// A classic member's assignment bytes, decoded to topic ids (empty if they do not decode).
fn decode_assignment(bytes: &Bytes, metadata: &ClusterMetadata) -> Assignment {
    let mut buf = bytes.clone();
    if buf.len() < 2 {
        return Assignment::new();
    }
    let version = buf.get_i16();
    let Ok(assignment) = ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3)) else {
        return Assignment::new();
    };
    let partitions: NamedPartitions = assignment
        .assigned_partitions
        .iter()
        .map(|tp| (tp.topic.0.as_str().to_string(), tp.partitions.clone()))
        .collect();
    by_topic_id(&partitions, metadata)
}

/// An assignment in the classic consumer protocol's format (version 0), by topic name.
pub fn encode_assignment(assignment: &Assignment, metadata: &ClusterMetadata) -> Bytes {
    let topics = assignment
        .iter()
        .filter_map(|(topic_id, partitions)| {
            let name = metadata.topic_by_id(topic_id)?.name.clone();
            Some(
                consumer_protocol_assignment::TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from_string(name)))
                    .with_partitions(partitions.iter().copied().collect()),
            )
        })
        .collect();
    let mut out = BytesMut::new();
    out.put_i16(0);
    // Encoding our own well-formed message cannot fail; an empty assignment if it did.
    if ConsumerProtocolAssignment::default().with_assigned_partitions(topics).encode(&mut out, 0).is_err() {
        return Bytes::new();
    }
    out.freeze()
}

impl ConsumerGroup {
    /// A stable classic consumer group as a consumer group: every member keeps its
    /// partitions, and its generation becomes its member epoch.
    pub fn from_classic(classic: &ClassicGroup, metadata: &ClusterMetadata, now: Now) -> ConsumerGroup {
        let mut group = ConsumerGroup {
            group_epoch: classic.generation_id,
            assignment_epoch: classic.generation_id,
            ..ConsumerGroup::default()
        };
        let protocol = classic.protocol_name.as_deref();
        for m in classic.members() {
            let topics = decode_subscription(&m.metadata(protocol)).map(|(topics, _)| topics).unwrap_or_default();
            let mut assigned = decode_assignment(&m.assignment, metadata);
            // Partitions claimed twice (a confused assignor) go to the first claimant.
            for (topic, parts) in assigned.iter_mut() {
                parts.retain(|p| !group.owners.contains_key(&(*topic, *p)));
                for p in parts.iter() {
                    group.owners.insert((*topic, *p), m.member_id.clone());
                }
            }
            assigned.retain(|_, parts| !parts.is_empty());
            if let Some(instance) = &m.group_instance_id {
                group.static_members.insert(instance.clone(), m.member_id.clone());
            }
            let mut topics = topics;
            topics.sort();
            topics.dedup();
            group.targets.insert(m.member_id.clone(), assigned.clone());
            let identity = MemberIdentity {
                member_id: m.member_id.clone(),
                instance_id: m.group_instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
            };
            let session_deadline = now.instant + Duration::from_millis(m.session_timeout_ms.max(0) as u64);
            let mut member =
                ConsumerMember::new(identity, classic.generation_id, m.rebalance_timeout_ms, session_deadline);
            member.subscribed_topic_names = topics;
            member.assigned = assigned.clone();
            member.classic = Some(ClassicMemberInfo {
                session_timeout_ms: m.session_timeout_ms,
                protocols: m.protocols.clone(),
                synced: Some(assigned),
            });
            group.members.insert(m.member_id.clone(), member);
        }
        group.refresh_topics(metadata);
        group
    }

    /// JoinGroup from a classic member (new or rejoining). Returns its generation and the
    /// protocol name to answer with.
    pub fn classic_join(
        &mut self,
        join: ClassicJoin,
        now: Now,
        metadata: &ClusterMetadata,
        config: &GroupConfig,
    ) -> Result<(i32, String), ResponseError> {
        let Some((_, first_metadata)) = join.protocols.first() else {
            return Err(ResponseError::InconsistentGroupProtocol);
        };
        let Some((mut topics, owned)) = decode_subscription(first_metadata) else {
            return Err(ResponseError::InconsistentGroupProtocol);
        };
        topics.sort();
        topics.dedup();
        let owned = by_topic_id(&owned, metadata);
        let member_id: Arc<str> = Arc::from(join.member_id.as_str());
        let mut changed = false;
        if !self.members.contains_key(&member_id) {
            if self.members.len() >= config.max_size {
                return Err(ResponseError::GroupMaxSizeReached);
            }
            self.empty_since_ms = None;
            let instance_id: Option<Arc<str>> = join.instance_id.as_deref().map(Arc::from);
            if let Some(instance) = &instance_id {
                // A static member back under a new id replaces its old self, which would
                // otherwise keep its partitions until its session ran out.
                if let Some(previous) = self.static_members.get(instance).cloned() {
                    self.remove_member(&previous, now.wall_ms);
                }
                self.static_members.insert(instance.clone(), member_id.clone());
            }
            let identity = MemberIdentity {
                member_id: member_id.clone(),
                instance_id,
                client_id: join.client_id.clone(),
                client_host: join.client_host.clone(),
            };
            self.members
                .insert(member_id.clone(), ConsumerMember::new(identity, 0, join.rebalance_timeout_ms, now.instant));
            changed = true;
        }
        let member = self.members.get_mut(&member_id).ok_or(ResponseError::UnknownMemberId)?;
        member.session_deadline = now.instant + Duration::from_millis(join.session_timeout_ms.max(0) as u64);
        member.rebalance_timeout_ms = join.rebalance_timeout_ms;
        changed |= member.subscribed_topic_names != topics;
        member.subscribed_topic_names = topics;
        let synced = member.classic.take().and_then(|info| info.synced);
        member.classic =
            Some(ClassicMemberInfo { session_timeout_ms: join.session_timeout_ms, protocols: join.protocols, synced });
        changed |= self.refresh_topics(metadata);
        if changed {
            self.bump_epoch();
        }
        self.reconcile(&member_id, Some(&owned), now);
        let member = self.members.get(&member_id).ok_or(ResponseError::UnknownMemberId)?;
        let protocol = member.classic.as_ref().map(ClassicMemberInfo::protocol_name).unwrap_or_default();
        Ok((member.member_epoch, protocol))
    }

    fn classic_member(&mut self, member_id: &str, generation_id: i32) -> Result<&mut ConsumerMember, ResponseError> {
        let member = self.members.get_mut(member_id).ok_or(ResponseError::UnknownMemberId)?;
        if member.classic.is_none() {
            return Err(ResponseError::UnknownMemberId);
        }
        if member.member_epoch != generation_id {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(member)
    }

    /// SyncGroup from a classic member: its assignment, and the protocol name.
    pub fn classic_sync(
        &mut self,
        member_id: &str,
        generation_id: i32,
        metadata: &ClusterMetadata,
    ) -> Result<(Bytes, String), ResponseError> {
        let member = self.classic_member(member_id, generation_id)?;
        let assignment = encode_assignment(&member.assigned, metadata);
        let info = member.classic.as_mut().ok_or(ResponseError::UnknownMemberId)?;
        info.synced = Some(member.assigned.clone());
        Ok((assignment, info.protocol_name()))
    }

    /// Heartbeat from a classic member: alive; REBALANCE_IN_PROGRESS when its assignment
    /// has to change (it must rejoin to give partitions up or to take new ones).
    pub fn classic_heartbeat(&mut self, member_id: &str, generation_id: i32, now: Now) -> Result<(), ResponseError> {
        // Its epoch only moves in JoinGroup, so its commits with its generation stay valid
        // until it rejoins.
        let assignment_epoch = self.assignment_epoch;
        let target = self.targets.get(member_id).cloned().unwrap_or_default();
        let member = self.classic_member(member_id, generation_id)?;
        let session_ms = member.classic.as_ref().map_or(0, |info| info.session_timeout_ms);
        member.session_deadline = now.instant + Duration::from_millis(session_ms.max(0) as u64);
        let synced = member.classic.as_ref().and_then(|info| info.synced.as_ref());
        let settled = member.member_epoch == assignment_epoch
            && member.pending_revocation.is_empty()
            && member.assigned == target
            && synced == Some(&member.assigned);
        if settled {
            Ok(())
        } else {
            Err(ResponseError::RebalanceInProgress)
        }
    }

    /// LeaveGroup for a classic member, by member id or instance id.
    pub fn classic_leave(&mut self, member_id: &str, instance_id: Option<&str>, now: Now) -> Result<(), ResponseError> {
        let target: Arc<str> = match instance_id {
            Some(instance) => self.static_members.get(instance).cloned().ok_or(ResponseError::UnknownMemberId)?,
            None => Arc::from(member_id),
        };
        if self.members.get(&target).is_none_or(|m| m.classic.is_none()) {
            return Err(ResponseError::UnknownMemberId);
        }
        self.remove_member(&target, now.wall_ms);
        self.bump_epoch();
        Ok(())
    }

    /// The topics of every member's subscription (for OffsetDelete).
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members.values().flat_map(|m| m.subscribed_topic_names.iter().cloned()).collect()
    }
}
