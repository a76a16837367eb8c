//! KIP-848 consumer groups: the coordinator assigns partitions itself and each member
//! converges on its target assignment through heartbeats. Any change (a member joins or
//! leaves, a subscription or a subscribed topic's partition count changes) bumps the group
//! epoch and recomputes the target; each member then first revokes what it must give up,
//! and only then gets partitions nobody else still owns, with the new epoch.
//!
//! Invariant: a partition is owned (assigned or awaiting revocation) by at most one member.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use uuid::Uuid;

mod classic_members;

pub use classic_members::{decode_subscription, encode_assignment, ClassicJoin, ClassicMemberInfo};

use super::assignor::{self, Assignment, AssignorMember};
use crate::clock::Now;
use crate::config::GroupConfig;
use crate::metadata::ClusterMetadata;

/// One ConsumerGroupHeartbeat, decoded. `None` fields did not change since the last one.
#[derive(Clone, Debug, Default)]
pub struct HeartbeatRequest {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Clone, Debug, Default)]
pub struct HeartbeatResult {
    pub error: Option<(ResponseError, String)>,
    pub member_id: String,
    pub member_epoch: i32,
    /// Sent when it changed (and on joining); `None` means "keep what you have".
    pub assignment: Option<Assignment>,
}

impl HeartbeatResult {
    fn error(error: ResponseError, message: impl Into<String>, member_id: &str, member_epoch: i32) -> HeartbeatResult {
        HeartbeatResult {
            error: Some((error, message.into())),
            member_id: member_id.to_string(),
            member_epoch,
            assignment: None,
        }
    }
}

/// Epochs with meaning in a heartbeat.
const JOIN_EPOCH: i32 = 0;
const LEAVE_EPOCH: i32 = -1;
const STATIC_LEAVE_EPOCH: i32 = -2;

#[derive(Debug)]
pub struct ConsumerMember {
    pub member_id: Arc<str>,
    pub instance_id: Option<Arc<str>>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub member_epoch: i32,
    previous_member_epoch: i32,
    pub subscribed_topic_names: Vec<String>,
    pub server_assignor: Option<String>,
    rebalance_timeout_ms: i32,
    /// What the member has been told it owns.
    pub assigned: Assignment,
    /// Partitions the member must give up before anyone else gets them.
    pending_revocation: Assignment,
    session_deadline: Instant,
    revocation_deadline: Option<Instant>,
    /// The assignment changed since the member last heard it.
    send_assignment: bool,
    /// A static member that said it will be back (epoch -2): its partitions wait for it.
    left_temporarily: bool,
    /// Set for a member speaking the classic protocol (JoinGroup/SyncGroup) during a
    /// rolling upgrade: the coordinator assigns it like the others.
    pub classic: Option<ClassicMemberInfo>,
}

/// Who a member is, as its client says when it joins.
pub struct MemberIdentity {
    pub member_id: Arc<str>,
    pub instance_id: Option<Arc<str>>,
    pub client_id: String,
    pub client_host: String,
}

impl ConsumerMember {
    /// A member entering the group at `epoch`: no subscription, nothing assigned, nothing to
    /// revoke; its session runs until `session_deadline`.
    pub fn new(
        identity: MemberIdentity,
        epoch: i32,
        rebalance_timeout_ms: i32,
        session_deadline: Instant,
    ) -> ConsumerMember {
        let MemberIdentity { member_id, instance_id, client_id, client_host } = identity;
        ConsumerMember {
            member_id,
            instance_id,
            rack_id: None,
            client_id,
            client_host,
            member_epoch: epoch,
            previous_member_epoch: epoch,
            subscribed_topic_names: Vec::new(),
            server_assignor: None,
            rebalance_timeout_ms,
            assigned: Assignment::new(),
            pending_revocation: Assignment::new(),
            session_deadline,
            revocation_deadline: None,
            send_assignment: false,
            left_temporarily: false,
            classic: None,
        }
    }
}

fn contains(assignment: &Assignment, topic: &Uuid, partition: i32) -> bool {
    assignment.get(topic).is_some_and(|parts| parts.contains(&partition))
}

fn partitions(assignment: &Assignment) -> impl Iterator<Item = (Uuid, i32)> + '_ {
    assignment.iter().flat_map(|(topic, parts)| parts.iter().map(move |p| (*topic, *p)))
}

fn is_subset(small: &Assignment, big: &Assignment) -> bool {
    partitions(small).all(|(t, p)| contains(big, &t, p))
}

#[derive(Debug, Default)]
pub struct ConsumerGroup {
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    members: BTreeMap<Arc<str>, ConsumerMember>,
    static_members: HashMap<Arc<str>, Arc<str>>,
    targets: BTreeMap<Arc<str>, Assignment>,
    owners: HashMap<(Uuid, i32), Arc<str>>,
    /// Subscribed topics (name -> id, partition count) the targets were computed from.
    topics_seen: BTreeMap<String, (Uuid, i32)>,
    /// Wall-clock time the last member left: offsets of an empty group expire from it.
    pub empty_since_ms: Option<i64>,
}

impl ConsumerGroup {
    pub fn members(&self) -> impl Iterator<Item = &ConsumerMember> {
        self.members.values()
    }

    pub fn target(&self, member_id: &str) -> Option<&Assignment> {
        self.targets.get(member_id)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kafka's consumer group states: Empty, Reconciling (some member has not caught up
    /// with the target), Stable.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.members.values().any(|m| {
            m.member_epoch != self.assignment_epoch
                || !m.pending_revocation.is_empty()
                || self.targets.get(&m.member_id).is_some_and(|t| t != &m.assigned)
        }) {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// The assignor most members ask for (ties by name); `uniform` by default.
    pub fn assignor(&self) -> &str {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for name in self.members.values().filter_map(|m| m.server_assignor.as_deref()) {
            *votes.entry(name).or_default() += 1;
        }
        let best = votes.values().copied().max().unwrap_or(0);
        votes.into_iter().find(|(_, v)| *v == best && best > 0).map_or(assignor::UNIFORM, |(name, _)| name)
    }

    /// OffsetCommit and OffsetFetch from a member must carry its current epoch (its
    /// generation, for a classic member).
    pub fn validate_member_epoch(&self, member_id: &str, member_epoch: i32) -> Result<(), ResponseError> {
        let member = self.members.get(member_id).ok_or(ResponseError::UnknownMemberId)?;
        if member_epoch != member.member_epoch {
            return Err(if member.classic.is_some() {
                ResponseError::IllegalGeneration
            } else {
                ResponseError::StaleMemberEpoch
            });
        }
        Ok(())
    }

    pub fn heartbeat(
        &mut self,
        mut request: HeartbeatRequest,
        now: Now,
        metadata: &ClusterMetadata,
        config: &GroupConfig,
    ) -> HeartbeatResult {
        let epoch = request.member_epoch;
        // A full request (after a lost response, say) gets the assignment whatever changed,
        // as in Kafka: the member may have missed the last one.
        let full_request =
            request.rebalance_timeout_ms != -1 && request.subscribed_topic_names.is_some() && request.owned.is_some();
        if let Some(assignor) = request.server_assignor.as_deref() {
            if !assignor::is_known(assignor) {
                let message = format!("unknown server assignor \"{assignor}\"; use uniform or range");
                return HeartbeatResult::error(ResponseError::UnsupportedAssignor, message, &request.member_id, epoch);
            }
        }
        if request.subscribed_topic_regex.as_deref().is_some_and(|r| !r.is_empty()) {
            let message = "regular expression subscriptions are not supported yet";
            return HeartbeatResult::error(ResponseError::InvalidRequest, message, &request.member_id, epoch);
        }
        if request.member_id.is_empty() {
            if epoch != JOIN_EPOCH {
                return HeartbeatResult::error(ResponseError::InvalidRequest, "member id is required", "", epoch);
            }
            // Version 0 let the coordinator choose the id.
            request.member_id = Uuid::new_v4().to_string();
        }
        let member_id: Arc<str> = Arc::from(request.member_id.as_str());
        match epoch {
            LEAVE_EPOCH => return self.leave(&member_id, now, config),
            STATIC_LEAVE_EPOCH => return self.leave_temporarily(&member_id, now, config),
            JOIN_EPOCH => {
                if let Err(result) = self.join(&member_id, &request, now, config) {
                    return result;
                }
            }
            _ => {
                let Some(member) = self.members.get(&member_id) else {
                    return HeartbeatResult::error(ResponseError::UnknownMemberId, "unknown member", &member_id, epoch);
                };
                let behind_ok = epoch == member.previous_member_epoch
                    && request.owned.as_ref().is_none_or(|owned| is_subset(owned, &member.assigned));
                if epoch > member.member_epoch || (epoch < member.member_epoch && !behind_ok) {
                    let message = format!("member epoch {epoch} is fenced; the member is at {}", member.member_epoch);
                    return HeartbeatResult::error(ResponseError::FencedMemberEpoch, message, &member_id, epoch);
                }
            }
        }
        let mut changed = self.update_member(&member_id, &mut request, now, config);
        changed |= epoch == JOIN_EPOCH;
        changed |= self.refresh_topics(metadata);
        if changed {
            self.bump_epoch();
        }
        let owned = request.owned.take();
        self.reconcile(&member_id, owned.as_ref(), now);
        debug_assert!(self.ownership_is_consistent(), "a partition is owned by two members");
        let Some(member) = self.members.get_mut(&member_id) else {
            return HeartbeatResult::error(ResponseError::UnknownMemberId, "unknown member", &member_id, epoch);
        };
        let send = std::mem::take(&mut member.send_assignment) || epoch == JOIN_EPOCH || full_request;
        HeartbeatResult {
            error: None,
            member_id: member_id.to_string(),
            member_epoch: member.member_epoch,
            assignment: send.then(|| member.assigned.clone()),
        }
    }

    /// Takes what a heartbeat says of its member (its session goes on; timeouts, rack,
    /// subscription and assignor as given); true if the target assignment must change.
    fn update_member(
        &mut self,
        member_id: &str,
        request: &mut HeartbeatRequest,
        now: Now,
        config: &GroupConfig,
    ) -> bool {
        let Some(member) = self.members.get_mut(member_id) else { return false };
        let mut changed = false;
        member.session_deadline = now.instant + Duration::from_millis(config.consumer_session_timeout_ms as u64);
        if request.rebalance_timeout_ms >= 0 {
            member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        }
        if let Some(rack) = request.rack_id.take() {
            member.rack_id = Some(rack);
        }
        if let Some(mut topics) = request.subscribed_topic_names.take() {
            topics.sort();
            topics.dedup();
            changed |= topics != member.subscribed_topic_names;
            member.subscribed_topic_names = topics;
        }
        if let Some(assignor) = request.server_assignor.take() {
            changed |= member.server_assignor.as_deref() != Some(assignor.as_str());
            member.server_assignor = Some(assignor);
        }
        changed
    }

    fn join(
        &mut self,
        member_id: &Arc<str>,
        request: &HeartbeatRequest,
        now: Now,
        config: &GroupConfig,
    ) -> Result<(), HeartbeatResult> {
        let invalid =
            |message: &str| Err(HeartbeatResult::error(ResponseError::InvalidRequest, message, member_id, JOIN_EPOCH));
        if request.subscribed_topic_names.is_none() {
            return invalid("subscribed topic names must be set when joining");
        }
        if request.owned.as_ref().is_some_and(|owned| !owned.is_empty()) {
            return invalid("owned partitions must be empty when joining");
        }
        if let Some(instance) = request.instance_id.as_deref() {
            if let Some(previous) = self.static_members.get(instance).cloned() {
                if previous != *member_id {
                    let away = self.members.get(&previous).is_some_and(|m| m.left_temporarily);
                    if !away {
                        let message = format!("static member {instance} is still active as {previous}");
                        return Err(HeartbeatResult::error(
                            ResponseError::UnreleasedInstanceId,
                            message,
                            member_id,
                            JOIN_EPOCH,
                        ));
                    }
                    self.replace_static_member(&previous, member_id.clone(), instance);
                    return Ok(());
                }
            }
        }
        if let Some(existing) = self.members.get_mut(member_id) {
            // Rejoining (after being fenced, say): whatever it owned, it has given up.
            let released: Vec<(Uuid, i32)> =
                partitions(&existing.assigned).chain(partitions(&existing.pending_revocation)).collect();
            existing.assigned.clear();
            existing.pending_revocation.clear();
            existing.revocation_deadline = None;
            existing.member_epoch = JOIN_EPOCH;
            existing.previous_member_epoch = JOIN_EPOCH;
            for key in released {
                self.owners.remove(&key);
            }
            return Ok(());
        }
        if self.members.len() >= config.max_size {
            return Err(HeartbeatResult::error(
                ResponseError::GroupMaxSizeReached,
                "the group is full",
                member_id,
                JOIN_EPOCH,
            ));
        }
        self.empty_since_ms = None;
        let instance_id: Option<Arc<str>> = request.instance_id.as_deref().map(Arc::from);
        if let Some(instance) = &instance_id {
            self.static_members.insert(instance.clone(), member_id.clone());
        }
        let identity = MemberIdentity {
            member_id: member_id.clone(),
            instance_id,
            client_id: request.client_id.clone(),
            client_host: request.client_host.clone(),
        };
        let mut member = ConsumerMember::new(identity, JOIN_EPOCH, request.rebalance_timeout_ms.max(0), now.instant);
        member.send_assignment = true;
        self.members.insert(member_id.clone(), member);
        Ok(())
    }

    /// A static member back under a new member id takes over its predecessor's place,
    /// epoch and partitions.
    fn replace_static_member(&mut self, previous: &Arc<str>, member_id: Arc<str>, instance: &str) {
        let Some(mut member) = self.members.remove(previous) else { return };
        member.member_id = member_id.clone();
        member.left_temporarily = false;
        member.send_assignment = true;
        for owner in self.owners.values_mut().filter(|owner| *owner == previous) {
            *owner = member_id.clone();
        }
        if let Some(target) = self.targets.remove(previous) {
            self.targets.insert(member_id.clone(), target);
        }
        self.static_members.insert(Arc::from(instance), member_id.clone());
        self.members.insert(member_id, member);
    }

    fn leave(&mut self, member_id: &Arc<str>, now: Now, _config: &GroupConfig) -> HeartbeatResult {
        if self.remove_member(member_id, now.wall_ms) {
            self.bump_epoch();
            HeartbeatResult {
                error: None,
                member_id: member_id.to_string(),
                member_epoch: LEAVE_EPOCH,
                assignment: None,
            }
        } else {
            HeartbeatResult::error(ResponseError::UnknownMemberId, "unknown member", member_id, LEAVE_EPOCH)
        }
    }

    fn leave_temporarily(&mut self, member_id: &Arc<str>, now: Now, config: &GroupConfig) -> HeartbeatResult {
        match self.members.get_mut(member_id) {
            Some(member) if member.instance_id.is_some() => {
                member.left_temporarily = true;
                member.session_deadline =
                    now.instant + Duration::from_millis(config.consumer_session_timeout_ms as u64);
                HeartbeatResult {
                    error: None,
                    member_id: member_id.to_string(),
                    member_epoch: STATIC_LEAVE_EPOCH,
                    assignment: None,
                }
            }
            Some(_) => HeartbeatResult::error(
                ResponseError::InvalidRequest,
                "only static members may leave with epoch -2",
                member_id,
                STATIC_LEAVE_EPOCH,
            ),
            None => {
                HeartbeatResult::error(ResponseError::UnknownMemberId, "unknown member", member_id, STATIC_LEAVE_EPOCH)
            }
        }
    }

    fn remove_member(&mut self, member_id: &str, now_ms: i64) -> bool {
        let Some(member) = self.members.remove(member_id) else { return false };
        if let Some(instance) = &member.instance_id {
            if self.static_members.get(instance).is_some_and(|id| &**id == member_id) {
                self.static_members.remove(instance);
            }
        }
        self.owners.retain(|_, owner| &**owner != member_id);
        self.targets.remove(member_id);
        if self.members.is_empty() {
            self.empty_since_ms = Some(now_ms);
        }
        true
    }

    /// Re-reads the subscribed topics' ids and partition counts; true if they changed.
    fn refresh_topics(&mut self, metadata: &ClusterMetadata) -> bool {
        let names: BTreeSet<&String> = self.members.values().flat_map(|m| &m.subscribed_topic_names).collect();
        let seen: BTreeMap<String, (Uuid, i32)> = names
            .into_iter()
            .filter_map(|name| metadata.topic(name).map(|t| (name.clone(), (t.id, t.partitions))))
            .collect();
        if seen == self.topics_seen {
            return false;
        }
        self.topics_seen = seen;
        true
    }

    /// A new group epoch and the target assignment for it.
    fn bump_epoch(&mut self) {
        self.group_epoch = self.group_epoch.wrapping_add(1).max(1);
        let partitions: BTreeMap<Uuid, i32> = self.topics_seen.values().copied().collect();
        let members: Vec<AssignorMember> = self
            .members
            .values()
            .map(|m| AssignorMember {
                member_id: m.member_id.clone(),
                topics: m
                    .subscribed_topic_names
                    .iter()
                    .filter_map(|n| self.topics_seen.get(n))
                    .map(|(id, _)| *id)
                    .collect(),
                current: self.targets.get(&m.member_id),
            })
            .collect();
        let targets = assignor::assign(self.assignor(), &members, &partitions);
        self.targets = targets;
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves one member towards its target: first it revokes what it must give up (and the
    /// epoch waits); once it confirms, it gets what is free and the new epoch.
    fn reconcile(&mut self, member_id: &Arc<str>, owned: Option<&Assignment>, now: Now) {
        let target = self.targets.get(member_id).cloned().unwrap_or_default();
        let assignment_epoch = self.assignment_epoch;
        let Some(member) = self.members.get_mut(member_id) else { return };
        if !member.pending_revocation.is_empty() {
            let revoked =
                owned.is_some_and(|owned| partitions(&member.pending_revocation).all(|(t, p)| !contains(owned, &t, p)));
            if !revoked {
                return;
            }
            for key in partitions(&member.pending_revocation) {
                self.owners.remove(&key);
            }
            member.pending_revocation.clear();
            member.revocation_deadline = None;
        }
        let revoke: Vec<(Uuid, i32)> =
            partitions(&member.assigned).filter(|(t, p)| !contains(&target, t, *p)).collect();
        if !revoke.is_empty() {
            for (topic, partition) in revoke {
                if let Some(parts) = member.assigned.get_mut(&topic) {
                    parts.remove(&partition);
                    if parts.is_empty() {
                        member.assigned.remove(&topic);
                    }
                }
                member.pending_revocation.entry(topic).or_default().insert(partition);
            }
            member.revocation_deadline =
                Some(now.instant + Duration::from_millis(member.rebalance_timeout_ms.max(0) as u64));
            member.send_assignment = true;
            return;
        }
        for (topic, partition) in partitions(&target) {
            if contains(&member.assigned, &topic, partition) {
                continue;
            }
            let owner = self.owners.entry((topic, partition)).or_insert_with(|| member_id.clone());
            if owner == member_id {
                member.assigned.entry(topic).or_default().insert(partition);
                member.send_assignment = true;
            }
        }
        if member.member_epoch != assignment_epoch {
            member.previous_member_epoch = member.member_epoch;
            member.member_epoch = assignment_epoch;
            member.send_assignment = true;
        }
    }

    /// The invariant: every partition a member holds (assigned or awaiting revocation) is
    /// owned by that member, and by no other.
    fn ownership_is_consistent(&self) -> bool {
        self.members.values().all(|m| {
            partitions(&m.assigned)
                .chain(partitions(&m.pending_revocation))
                .all(|key| self.owners.get(&key).is_some_and(|owner| **owner == *m.member_id))
        })
    }

    /// Expires members whose session lapsed and fences those that did not revoke in time.
    pub fn tick(&mut self, now: Now) {
        let gone: Vec<Arc<str>> = self
            .members
            .values()
            .filter(|m| m.session_deadline <= now.instant || m.revocation_deadline.is_some_and(|d| d <= now.instant))
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in &gone {
            tracing::info!(member = %member_id, "consumer group member expired or failed to revoke in time");
            self.remove_member(member_id, now.wall_ms);
        }
        if !gone.is_empty() {
            self.bump_epoch();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};
    use crate::metadata::MetadataRecord;

    fn metadata(partitions: i32) -> (ClusterMetadata, Uuid) {
        let id = Uuid::new_v4();
        let assignments = (0..partitions).map(|_| crate::metadata::PartitionAssignment::new(vec![0])).collect();
        let record =
            MetadataRecord::Topic { name: "t".into(), id, partitions, configs: Default::default(), assignments };
        (ClusterMetadata::from_records(vec![record]), id)
    }

    fn join(id: &str) -> HeartbeatRequest {
        HeartbeatRequest {
            member_id: id.into(),
            member_epoch: 0,
            rebalance_timeout_ms: 10_000,
            subscribed_topic_names: Some(vec!["t".into()]),
            owned: Some(Assignment::new()),
            ..HeartbeatRequest::default()
        }
    }

    fn beat(id: &str, epoch: i32, owned: Option<Assignment>) -> HeartbeatRequest {
        HeartbeatRequest {
            member_id: id.into(),
            member_epoch: epoch,
            owned,
            rebalance_timeout_ms: -1,
            ..Default::default()
        }
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    #[test]
    fn a_second_member_gets_partitions_only_after_the_first_revokes_them() {
        let (metadata, _) = metadata(4);
        let config = GroupConfig::default();
        let now = SystemClock.now();
        let mut group = ConsumerGroup::default();
        let a = group.heartbeat(join("a"), now, &metadata, &config);
        assert_eq!((a.error, a.member_epoch), (None, 1));
        let a_owned = a.assignment.unwrap();
        assert_eq!(count(&a_owned), 4);
        let b = group.heartbeat(join("b"), now, &metadata, &config);
        assert_eq!(b.member_epoch, 2);
        assert_eq!(count(b.assignment.as_ref().unwrap()), 0, "a still owns everything");
        let a2 = group.heartbeat(beat("a", 1, Some(a_owned)), now, &metadata, &config);
        assert_eq!(a2.member_epoch, 1, "the epoch waits for the revocation");
        let kept = a2.assignment.unwrap();
        assert_eq!(count(&kept), 2);
        let a3 = group.heartbeat(beat("a", 1, Some(kept.clone())), now, &metadata, &config);
        assert_eq!(a3.member_epoch, 2);
        let b2 = group.heartbeat(beat("b", 2, Some(Assignment::new())), now, &metadata, &config);
        let b_owned = b2.assignment.unwrap();
        assert_eq!(count(&b_owned), 2);
        assert!(partitions(&b_owned).all(|(t, p)| !contains(&kept, &t, p)));
        assert_eq!(group.state_name(), "Stable");
        // A stale epoch is fenced; the previous one with a subset is tolerated.
        let stale = group.heartbeat(beat("b", 7, None), now, &metadata, &config);
        assert_eq!(stale.error.map(|e| e.0), Some(ResponseError::FencedMemberEpoch));
    }

    #[test]
    fn a_member_that_leaves_or_expires_frees_its_partitions() {
        let (metadata, _) = metadata(2);
        let config = GroupConfig::default();
        let now = SystemClock.now();
        let mut group = ConsumerGroup::default();
        group.heartbeat(join("a"), now, &metadata, &config);
        group.heartbeat(join("b"), now, &metadata, &config);
        let left = group.heartbeat(beat("b", -1, None), now, &metadata, &config);
        assert_eq!(left.member_epoch, -1);
        let later = now.after(Duration::from_millis(config.consumer_session_timeout_ms as u64 + 1));
        group.tick(later);
        assert!(group.is_empty());
    }
}
