//! The classic group protocol's membership state machine (JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup), with Kafka's states: Empty -> PreparingRebalance -> CompletingRebalance ->
//! Stable, back to PreparingRebalance on any membership change, and Dead once deleted.
//! Every transition is a method here; time is passed in, so tests drive it.
//!
//! Invariants: the generation only grows; a member is in `members` or `pending_members`,
//! never both; a static member's instance id maps to exactly one member id.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Now;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;

use super::record::{GroupValue, MemberValue};
use crate::config::GroupConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassicState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl ClassicState {
    /// The name DescribeGroups and ListGroups use.
    pub fn name(self) -> &'static str {
        match self {
            ClassicState::Empty => "Empty",
            ClassicState::PreparingRebalance => "PreparingRebalance",
            ClassicState::CompletingRebalance => "CompletingRebalance",
            ClassicState::Stable => "Stable",
            ClassicState::Dead => "Dead",
        }
    }
}

/// A member's protocol metadata beyond this is refused: it is stored in the group's record
/// and handed to the leader in every rebalance. A consumer subscribing to a thousand topics
/// sends tens of kilobytes; a megabyte is far past any real client.
pub const MAX_MEMBER_METADATA_BYTES: usize = 1 << 20;

/// What a JoinGroup asks, decoded from any version.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+ (KIP-394): a new member first gets MEMBER_ID_REQUIRED and an id.
    pub require_known_member_id: bool,
    /// JoinGroup v9+ (KIP-814): the client understands `skip_assignment`.
    pub supports_skip_assignment: bool,
}

#[derive(Clone, Debug)]
pub struct JoinedMember {
    pub member_id: Arc<str>,
    pub group_instance_id: Option<Arc<str>>,
    pub metadata: Bytes,
}

#[derive(Clone, Debug)]
pub struct JoinResult {
    pub error: Option<ResponseError>,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// For the leader only: every member and its metadata for the chosen protocol.
    pub members: Vec<JoinedMember>,
    /// A rejoining static leader of a stable group must not compute a new assignment.
    pub skip_assignment: bool,
}

impl JoinResult {
    pub fn error(error: ResponseError, member_id: &str) -> JoinResult {
        JoinResult {
            error: Some(error),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SyncResult {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn error(error: ResponseError) -> SyncResult {
        SyncResult { error: Some(error), protocol_type: None, protocol_name: None, assignment: Bytes::new() }
    }
}

/// A reply now, or one that comes when the rebalance gets there.
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

#[derive(Debug)]
pub struct Member {
    pub member_id: Arc<str>,
    pub group_instance_id: Option<Arc<str>>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// In the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    awaiting_join: Option<oneshot::Sender<JoinResult>>,
    awaiting_sync: Option<oneshot::Sender<SyncResult>>,
    heartbeat_deadline: Instant,
}

impl Member {
    pub fn metadata(&self, protocol: Option<&str>) -> Bytes {
        protocol
            .and_then(|name| self.protocols.iter().find(|(n, _)| n == name))
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session_timeout_ms.max(0) as u64)
    }
}

/// The join phase of a rebalance that started from an empty group waits for more members in
/// steps of `group.initial.rebalance.delay.ms` counted from the first member's join, as Kafka
/// does: a step in which a new member joined is followed by another, up to the rebalance
/// timeout; the first step without one ends the phase. (Restarting the delay at each join
/// instead ends the phase one delay after the last joiner, at a different moment than Kafka
/// would: kafka-python 3.0.12 drops a join that completes while its consumer is not inside
/// `poll()`, and two consumers polling in turn in one thread then never settle, see
/// `tests/clients/test_group_initial_rebalance.py`.)
#[derive(Debug)]
struct InitialDelay {
    deadline: Instant,
    limit: Instant,
    step: Duration,
    member_added: bool,
}

impl InitialDelay {
    fn new(now: Instant, step: Duration, limit: Instant) -> InitialDelay {
        InitialDelay { deadline: (now + step).min(limit), limit, step, member_added: false }
    }

    /// Whether the delay is over at `now`; a step that saw a new member is followed by another.
    fn is_over(&mut self, now: Instant) -> bool {
        if self.deadline > now {
            return false;
        }
        if !self.member_added || self.deadline >= self.limit {
            return true;
        }
        self.member_added = false;
        self.deadline = (self.deadline + self.step).min(self.limit);
        false
    }
}

#[derive(Debug)]
pub struct ClassicGroup {
    pub state: ClassicState,
    /// Wall-clock time of the last state change: offsets of an empty group expire from it.
    pub state_timestamp_ms: i64,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader_id: Option<Arc<str>>,
    members: BTreeMap<Arc<str>, Member>,
    static_members: HashMap<Arc<str>, Arc<str>>,
    /// KIP-394: ids handed out with MEMBER_ID_REQUIRED, until they rejoin or time out.
    pending_members: HashMap<Arc<str>, Instant>,
    /// PreparingRebalance: when the join phase ends regardless. CompletingRebalance: when
    /// members that have not sent SyncGroup are removed.
    rebalance_deadline: Option<Instant>,
    initial_delay: Option<InitialDelay>,
    /// Membership changed in a way the group's record must reflect.
    dirty: bool,
}

fn new_member_id(prefix: &str) -> Arc<str> {
    Arc::from(format!("{prefix}-{}", uuid::Uuid::new_v4()))
}

impl ClassicGroup {
    pub fn new(now_ms: i64) -> ClassicGroup {
        ClassicGroup {
            state: ClassicState::Empty,
            state_timestamp_ms: now_ms,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader_id: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            rebalance_deadline: None,
            initial_delay: None,
            dirty: false,
        }
    }

    /// A group as its last record left it: members are given a fresh session to come back.
    pub fn restore(value: GroupValue, now: Now) -> ClassicGroup {
        let mut group = ClassicGroup::new(now.wall_ms);
        group.generation_id = value.generation_id;
        group.protocol_type = Some(value.protocol_type.clone()).filter(|t| !t.is_empty());
        group.protocol_name = value.protocol_name.clone();
        group.state_timestamp_ms =
            if value.current_state_timestamp_ms > 0 { value.current_state_timestamp_ms } else { now.wall_ms };
        for m in value.members {
            let member_id: Arc<str> = Arc::from(m.member_id);
            let group_instance_id: Option<Arc<str>> = m.group_instance_id.map(Arc::from);
            if let Some(instance) = &group_instance_id {
                group.static_members.insert(instance.clone(), member_id.clone());
            }
            let protocols = value.protocol_name.iter().map(|name| (name.clone(), m.subscription.clone())).collect();
            let member = Member {
                member_id: member_id.clone(),
                group_instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout_ms: m.session_timeout_ms,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                protocols,
                assignment: m.assignment,
                awaiting_join: None,
                awaiting_sync: None,
                heartbeat_deadline: now.instant + Duration::from_millis(m.session_timeout_ms.max(0) as u64),
            };
            group.members.insert(member_id, member);
        }
        group.leader_id = value.leader.map(Arc::from).filter(|leader| group.members.contains_key(leader));
        group.state = if group.members.is_empty() { ClassicState::Empty } else { ClassicState::Stable };
        group
    }

    /// The record that describes the group now.
    pub fn snapshot(&self) -> GroupValue {
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation_id: self.generation_id,
            protocol_name: self.protocol_name.clone(),
            leader: self.leader_id.as_deref().map(str::to_string),
            current_state_timestamp_ms: self.state_timestamp_ms,
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    member_id: m.member_id.to_string(),
                    group_instance_id: m.group_instance_id.as_deref().map(str::to_string),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata(self.protocol_name.as_deref()),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Whether the group's record must be rewritten; clears the flag.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    #[cfg(test)]
    pub fn has_member(&self, member_id: &str) -> bool {
        self.members.contains_key(member_id)
    }

    fn transition(&mut self, state: ClassicState, now_ms: i64) {
        self.state = state;
        self.state_timestamp_ms = now_ms;
    }

    /// Deletion: whoever still waits is told the coordinator moved on.
    pub fn mark_dead(&mut self, now_ms: i64) {
        for member in self.members.values_mut() {
            if let Some(tx) = member.awaiting_join.take() {
                let _ = tx.send(JoinResult::error(ResponseError::CoordinatorNotAvailable, &member.member_id));
            }
            if let Some(tx) = member.awaiting_sync.take() {
                let _ = tx.send(SyncResult::error(ResponseError::CoordinatorNotAvailable));
            }
        }
        self.members.clear();
        self.static_members.clear();
        self.pending_members.clear();
        self.transition(ClassicState::Dead, now_ms);
    }

    /// The members moved to a KIP-848 consumer group: this group is left empty (its record
    /// too, once persisted), keeping its generation and protocol.
    pub fn clear_members(&mut self, now_ms: i64) {
        self.members.clear();
        self.static_members.clear();
        self.pending_members.clear();
        self.leader_id = None;
        self.rebalance_deadline = None;
        self.initial_delay = None;
        self.transition(ClassicState::Empty, now_ms);
        self.dirty = true;
    }

    /// Checks the caller is the member it claims to be, static members included.
    pub fn validate_member(&self, member_id: &str, group_instance_id: Option<&str>) -> Result<(), ResponseError> {
        if let Some(instance) = group_instance_id {
            match self.static_members.get(instance) {
                Some(id) if &**id == member_id => return Ok(()),
                Some(_) => return Err(ResponseError::FencedInstanceId),
                None => {}
            }
        }
        if self.members.contains_key(member_id) {
            Ok(())
        } else {
            Err(ResponseError::UnknownMemberId)
        }
    }

    /// Protocol names every current member supports.
    fn remove_member_entry(&mut self, member_id: &str) {
        if let Some(member) = self.members.remove(member_id) {
            if let Some(instance) = &member.group_instance_id {
                if self.static_members.get(instance).is_some_and(|id| &**id == member_id) {
                    self.static_members.remove(instance);
                }
            }
            if let Some(tx) = member.awaiting_join {
                let _ = tx.send(JoinResult::error(ResponseError::UnknownMemberId, member_id));
            }
            if let Some(tx) = member.awaiting_sync {
                let _ = tx.send(SyncResult::error(ResponseError::UnknownMemberId));
            }
        }
        if self.leader_id.as_deref() == Some(member_id) {
            // Prefer a member already waiting in the join phase.
            self.leader_id = self
                .members
                .values()
                .find(|m| m.awaiting_join.is_some())
                .or_else(|| self.members.values().next())
                .map(|m| m.member_id.clone());
        }
    }

    fn after_members_removed(&mut self, now: Now, config: &GroupConfig) {
        match self.state {
            ClassicState::Stable | ClassicState::CompletingRebalance => self.prepare_rebalance(now, config),
            ClassicState::PreparingRebalance => self.maybe_complete_join(now),
            ClassicState::Empty | ClassicState::Dead => {}
        }
    }

    pub fn sync(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        protocol: (Option<&str>, Option<&str>),
        assignments: Vec<(String, Bytes)>,
        now: Now,
    ) -> Reply<SyncResult> {
        let fail = |error| Reply::Now(SyncResult::error(error));
        if self.state == ClassicState::Dead {
            return fail(ResponseError::CoordinatorNotAvailable);
        }
        if let Err(error) = self.validate_member(member_id, group_instance_id) {
            return fail(error);
        }
        if generation_id != self.generation_id {
            return fail(ResponseError::IllegalGeneration);
        }
        let (protocol_type, protocol_name) = protocol;
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|n| Some(n) != self.protocol_name.as_deref())
        {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        let result = |assignment: Bytes| SyncResult {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
        };
        match self.state {
            ClassicState::PreparingRebalance => fail(ResponseError::RebalanceInProgress),
            ClassicState::Stable => {
                let Some(member) = self.members.get_mut(member_id) else { return fail(ResponseError::UnknownMemberId) };
                member.heartbeat_deadline = now.instant + member.session_timeout();
                let assignment = member.assignment.clone();
                Reply::Now(result(assignment))
            }
            ClassicState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let Some(member) = self.members.get_mut(member_id) else { return fail(ResponseError::UnknownMemberId) };
                member.heartbeat_deadline = now.instant + member.session_timeout();
                member.awaiting_sync = Some(tx);
                if self.leader_id.as_deref() == Some(member_id) {
                    self.complete_sync(assignments, now.wall_ms);
                }
                Reply::Later(rx)
            }
            ClassicState::Empty | ClassicState::Dead => fail(ResponseError::UnknownMemberId),
        }
    }

    /// The leader's assignment arrived: the group is stable and every member waiting in
    /// SyncGroup gets its share (a member the leader left out gets an empty assignment).
    fn complete_sync(&mut self, assignments: Vec<(String, Bytes)>, now_ms: i64) {
        let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
        for member in self.members.values_mut() {
            member.assignment = assignments.remove(&*member.member_id).unwrap_or_default();
        }
        self.transition(ClassicState::Stable, now_ms);
        self.rebalance_deadline = None;
        self.dirty = true;
        let (protocol_type, protocol_name) = (self.protocol_type.clone(), self.protocol_name.clone());
        for member in self.members.values_mut() {
            if let Some(tx) = member.awaiting_sync.take() {
                let _ = tx.send(SyncResult {
                    error: None,
                    protocol_type: protocol_type.clone(),
                    protocol_name: protocol_name.clone(),
                    assignment: member.assignment.clone(),
                });
            }
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        now: Now,
    ) -> Result<(), ResponseError> {
        match self.state {
            ClassicState::Dead => return Err(ResponseError::CoordinatorNotAvailable),
            ClassicState::Empty => return Err(ResponseError::UnknownMemberId),
            _ => {}
        }
        self.validate_member(member_id, group_instance_id)?;
        if generation_id != self.generation_id {
            return Err(ResponseError::IllegalGeneration);
        }
        self.touch(member_id, now);
        match self.state {
            ClassicState::PreparingRebalance => Err(ResponseError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// A sign of life from a member (heartbeat, offset commit).
    pub fn touch(&mut self, member_id: &str, now: Now) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.heartbeat_deadline = now.instant + member.session_timeout();
        }
    }

    /// LeaveGroup for one member (by id, or by instance id for static members).
    pub fn leave(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        now: Now,
        config: &GroupConfig,
    ) -> Result<(), ResponseError> {
        if self.state == ClassicState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let target: Arc<str> = match group_instance_id {
            Some(instance) => match self.static_members.get(instance) {
                None => return Err(ResponseError::UnknownMemberId),
                Some(id) if !member_id.is_empty() && &**id != member_id => return Err(ResponseError::FencedInstanceId),
                Some(id) => id.clone(),
            },
            None => {
                if self.pending_members.remove(member_id).is_some() {
                    self.maybe_complete_join(now);
                    return Ok(());
                }
                if !self.members.contains_key(member_id) {
                    return Err(ResponseError::UnknownMemberId);
                }
                Arc::from(member_id)
            }
        };
        self.remove_member_entry(&target);
        self.dirty = true;
        self.after_members_removed(now, config);
        Ok(())
    }

    /// Timers: pending ids and silent members expire, and a join or sync phase that ran out
    /// of time ends with whoever made it.
    pub fn tick(&mut self, now: Now, config: &GroupConfig) {
        if self.state == ClassicState::Dead {
            return;
        }
        let pending_before = self.pending_members.len();
        self.pending_members.retain(|_, deadline| *deadline > now.instant);
        let expired: Vec<Arc<str>> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && m.awaiting_sync.is_none() && m.heartbeat_deadline <= now.instant)
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in &expired {
            tracing::info!(member = %member_id, "group member's session expired");
            self.remove_member_entry(member_id);
        }
        if !expired.is_empty() {
            self.dirty = true;
            self.after_members_removed(now, config);
        } else if self.pending_members.len() != pending_before {
            self.maybe_complete_join(now);
        }
        if self.initial_delay.as_mut().is_some_and(|delay| delay.is_over(now.instant)) {
            self.initial_delay = None;
            self.maybe_complete_join(now);
            if self.state == ClassicState::PreparingRebalance
                && self.members.values().all(|m| m.awaiting_join.is_some())
            {
                self.complete_join(now);
            }
        }
        if self.rebalance_deadline.is_some_and(|deadline| deadline <= now.instant) {
            match self.state {
                ClassicState::PreparingRebalance => self.complete_join(now),
                ClassicState::CompletingRebalance => {
                    let unsynced: Vec<Arc<str>> = self
                        .members
                        .values()
                        .filter(|m| m.awaiting_sync.is_none())
                        .map(|m| m.member_id.clone())
                        .collect();
                    for member_id in &unsynced {
                        self.remove_member_entry(member_id);
                    }
                    self.dirty = true;
                    self.prepare_rebalance(now, config);
                }
                _ => self.rebalance_deadline = None,
            }
        }
    }
}

mod join;

#[cfg(test)]
mod tests;
