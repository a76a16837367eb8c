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
    pub protocol_type: String,
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

/// The join phase of a rebalance that started from an empty group waits this long for more
/// members (extended as they come, up to the rebalance timeout).
#[derive(Debug)]
struct InitialDelay {
    deadline: Instant,
    limit: Instant,
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

fn wall_clock_ms() -> i64 {
    sluice_storage::now_ms()
}

impl ClassicGroup {
    pub fn new() -> ClassicGroup {
        ClassicGroup {
            state: ClassicState::Empty,
            state_timestamp_ms: wall_clock_ms(),
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
    pub fn restore(value: GroupValue, now: Instant) -> ClassicGroup {
        let mut group = ClassicGroup::new();
        group.generation_id = value.generation_id;
        group.protocol_type = Some(value.protocol_type.clone()).filter(|t| !t.is_empty());
        group.protocol_name = value.protocol_name.clone();
        group.state_timestamp_ms =
            if value.current_state_timestamp_ms > 0 { value.current_state_timestamp_ms } else { wall_clock_ms() };
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
                protocol_type: value.protocol_type.clone(),
                protocols,
                assignment: m.assignment,
                awaiting_join: None,
                awaiting_sync: None,
                heartbeat_deadline: now + Duration::from_millis(m.session_timeout_ms.max(0) as u64),
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

    pub fn has_member(&self, member_id: &str) -> bool {
        self.members.contains_key(member_id)
    }

    fn transition(&mut self, state: ClassicState) {
        self.state = state;
        self.state_timestamp_ms = wall_clock_ms();
    }

    /// Deletion: whoever still waits is told the coordinator moved on.
    pub fn mark_dead(&mut self) {
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
        self.transition(ClassicState::Dead);
    }

    /// The members move to a KIP-848 consumer group: this group is left empty (its record
    /// too, once persisted), keeping its generation.
    pub fn clear_members(&mut self) {
        self.members.clear();
        self.static_members.clear();
        self.pending_members.clear();
        self.leader_id = None;
        self.rebalance_deadline = None;
        self.initial_delay = None;
        self.transition(ClassicState::Empty);
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
    fn supported_protocols(&self) -> Vec<&str> {
        let mut members = self.members.values();
        let Some(first) = members.next() else { return Vec::new() };
        let mut names: Vec<&str> = first.protocols.iter().map(|(n, _)| n.as_str()).collect();
        for member in members {
            names.retain(|name| member.protocols.iter().any(|(n, _)| n == name));
        }
        names
    }

    fn check_protocols(&self, request: &JoinRequest) -> Result<(), ResponseError> {
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            return Err(ResponseError::InconsistentGroupProtocol);
        }
        if self.members.is_empty() {
            return Ok(());
        }
        let supported = self.supported_protocols();
        let compatible = self.protocol_type.as_deref() == Some(request.protocol_type.as_str())
            && request.protocols.iter().any(|(name, _)| supported.contains(&name.as_str()));
        if compatible {
            Ok(())
        } else {
            Err(ResponseError::InconsistentGroupProtocol)
        }
    }

    pub fn join(&mut self, request: JoinRequest, now: Instant, config: &GroupConfig) -> Reply<JoinResult> {
        let fail = |error, member_id: &str| Reply::Now(JoinResult::error(error, member_id));
        if self.state == ClassicState::Dead {
            return fail(ResponseError::CoordinatorNotAvailable, &request.member_id);
        }
        if request.session_timeout_ms < config.min_session_timeout_ms
            || request.session_timeout_ms > config.max_session_timeout_ms
        {
            return fail(ResponseError::InvalidSessionTimeout, &request.member_id);
        }
        if request.protocols.iter().map(|(name, metadata)| name.len() + metadata.len()).sum::<usize>()
            > MAX_MEMBER_METADATA_BYTES
        {
            return fail(ResponseError::InvalidRequest, &request.member_id);
        }
        if let Err(error) = self.check_protocols(&request) {
            return fail(error, &request.member_id);
        }
        if request.member_id.is_empty() {
            return self.join_new_member(request, now, config);
        }
        let member_id: Arc<str> = Arc::from(request.member_id.as_str());
        if self.pending_members.remove(&member_id).is_some() {
            return self.add_member_and_join(member_id, request, now, config);
        }
        if let Err(error) = self.validate_member(&member_id, request.group_instance_id.as_deref()) {
            return fail(error, &request.member_id);
        }
        self.join_known_member(member_id, request, now, config)
    }

    fn is_full(&self, config: &GroupConfig) -> bool {
        self.members.len() + self.pending_members.len() >= config.max_size
    }

    fn join_new_member(&mut self, request: JoinRequest, now: Instant, config: &GroupConfig) -> Reply<JoinResult> {
        if let Some(instance) = request.group_instance_id.as_deref() {
            if let Some(old_id) = self.static_members.get(instance).cloned() {
                return self.replace_static_member(old_id, request, now, config);
            }
        }
        if self.is_full(config) {
            return Reply::Now(JoinResult::error(ResponseError::GroupMaxSizeReached, ""));
        }
        let member_id = new_member_id(request.group_instance_id.as_deref().unwrap_or(&request.client_id));
        // Static members are known by their instance id and skip the extra round trip.
        if request.require_known_member_id && request.group_instance_id.is_none() {
            let deadline = now + Duration::from_millis(request.session_timeout_ms as u64);
            self.pending_members.insert(member_id.clone(), deadline);
            return Reply::Now(JoinResult::error(ResponseError::MemberIdRequired, &member_id));
        }
        self.add_member_and_join(member_id, request, now, config)
    }

    fn add_member_and_join(
        &mut self,
        member_id: Arc<str>,
        request: JoinRequest,
        now: Instant,
        config: &GroupConfig,
    ) -> Reply<JoinResult> {
        let group_instance_id: Option<Arc<str>> = request.group_instance_id.as_deref().map(Arc::from);
        if let Some(instance) = &group_instance_id {
            self.static_members.insert(instance.clone(), member_id.clone());
        }
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        let (tx, rx) = oneshot::channel();
        let member = Member {
            member_id: member_id.clone(),
            group_instance_id,
            client_id: request.client_id,
            client_host: request.client_host,
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms: request.rebalance_timeout_ms,
            protocol_type: request.protocol_type,
            protocols: request.protocols,
            assignment: Bytes::new(),
            awaiting_join: Some(tx),
            awaiting_sync: None,
            heartbeat_deadline: now + Duration::from_millis(request.session_timeout_ms as u64),
        };
        self.members.insert(member_id.clone(), member);
        if self.leader_id.is_none() {
            self.leader_id = Some(member_id);
        }
        match self.state {
            ClassicState::PreparingRebalance => {
                if let Some(delay) = &mut self.initial_delay {
                    let delay_ms = Duration::from_millis(config.initial_rebalance_delay_ms);
                    delay.deadline = (now + delay_ms).min(delay.limit);
                }
                self.maybe_complete_join(now);
            }
            _ => self.prepare_rebalance(now, config),
        }
        Reply::Later(rx)
    }

    /// KIP-345: a static member came back under a new member id. The old id is fenced; a
    /// stable group hands the member its assignment without a rebalance.
    fn replace_static_member(
        &mut self,
        old_id: Arc<str>,
        request: JoinRequest,
        now: Instant,
        config: &GroupConfig,
    ) -> Reply<JoinResult> {
        let Some(mut member) = self.members.remove(&old_id) else {
            return Reply::Now(JoinResult::error(ResponseError::UnknownMemberId, ""));
        };
        let instance = member.group_instance_id.clone().unwrap_or_else(|| Arc::from(""));
        let new_id = new_member_id(&instance);
        if let Some(tx) = member.awaiting_join.take() {
            let _ = tx.send(JoinResult::error(ResponseError::FencedInstanceId, &old_id));
        }
        if let Some(tx) = member.awaiting_sync.take() {
            let _ = tx.send(SyncResult::error(ResponseError::FencedInstanceId));
        }
        let protocols_changed = member.protocols != request.protocols;
        let supports_skip_assignment = request.supports_skip_assignment;
        member.member_id = new_id.clone();
        member.client_id = request.client_id.clone();
        member.client_host = request.client_host.clone();
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        member.protocols = request.protocols.clone();
        member.heartbeat_deadline = now + member.session_timeout();
        self.members.insert(new_id.clone(), member);
        self.static_members.insert(instance, new_id.clone());
        if self.leader_id.as_deref() == Some(&*old_id) {
            self.leader_id = Some(new_id.clone());
        }
        self.dirty = true;
        match self.state {
            ClassicState::Stable if !protocols_changed => {
                let is_leader = self.leader_id.as_deref() == Some(&*new_id);
                if is_leader && !supports_skip_assignment {
                    // Before v9 a leader would recompute the assignment: name the old id as
                    // leader, so the member acts as a follower and syncs the stored one.
                    let mut result = self.join_result(&new_id, false, false);
                    result.leader = old_id.to_string();
                    return Reply::Now(result);
                }
                Reply::Now(self.join_result(&new_id, is_leader, is_leader))
            }
            _ => {
                let (tx, rx) = oneshot::channel();
                if let Some(member) = self.members.get_mut(&new_id) {
                    member.awaiting_join = Some(tx);
                }
                if self.state == ClassicState::PreparingRebalance {
                    self.maybe_complete_join(now);
                } else {
                    self.prepare_rebalance(now, config);
                }
                Reply::Later(rx)
            }
        }
    }

    fn join_known_member(
        &mut self,
        member_id: Arc<str>,
        request: JoinRequest,
        now: Instant,
        config: &GroupConfig,
    ) -> Reply<JoinResult> {
        let state = self.state;
        let is_leader = self.leader_id.as_deref() == Some(&*member_id);
        let Some(member) = self.members.get_mut(&member_id) else {
            return Reply::Now(JoinResult::error(ResponseError::UnknownMemberId, &member_id));
        };
        let unchanged = member.protocols == request.protocols;
        match state {
            // A member that lost its join response asks again: same answer, no rebalance.
            ClassicState::CompletingRebalance if unchanged => {
                Reply::Now(self.join_result(&member_id, is_leader, false))
            }
            // A follower rejoining a stable group with the same metadata changes nothing; the
            // leader rejoining means it wants a new assignment (e.g. topics changed).
            ClassicState::Stable if unchanged && !is_leader => Reply::Now(self.join_result(&member_id, false, false)),
            ClassicState::PreparingRebalance | ClassicState::CompletingRebalance | ClassicState::Stable => {
                let (tx, rx) = oneshot::channel();
                member.protocols = request.protocols;
                member.session_timeout_ms = request.session_timeout_ms;
                member.rebalance_timeout_ms = request.rebalance_timeout_ms;
                member.heartbeat_deadline = now + member.session_timeout();
                if let Some(old) = member.awaiting_join.replace(tx) {
                    let _ = old.send(JoinResult::error(ResponseError::UnknownMemberId, &member_id));
                }
                if state == ClassicState::PreparingRebalance {
                    self.maybe_complete_join(now);
                } else {
                    self.prepare_rebalance(now, config);
                }
                Reply::Later(rx)
            }
            ClassicState::Empty | ClassicState::Dead => {
                Reply::Now(JoinResult::error(ResponseError::UnknownMemberId, &member_id))
            }
        }
    }

    /// The current generation as `member_id` sees it.
    fn join_result(&self, member_id: &Arc<str>, with_members: bool, skip_assignment: bool) -> JoinResult {
        JoinResult {
            error: None,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader_id.as_deref().unwrap_or_default().to_string(),
            member_id: member_id.to_string(),
            members: if with_members { self.joined_members() } else { Vec::new() },
            skip_assignment,
        }
    }

    fn joined_members(&self) -> Vec<JoinedMember> {
        self.members
            .values()
            .map(|m| JoinedMember {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                metadata: m.metadata(self.protocol_name.as_deref()),
            })
            .collect()
    }

    fn max_rebalance_timeout(&self) -> Duration {
        let ms = self.members.values().map(|m| m.rebalance_timeout_ms.max(m.session_timeout_ms)).max().unwrap_or(0);
        Duration::from_millis(ms.max(0) as u64)
    }

    fn prepare_rebalance(&mut self, now: Instant, config: &GroupConfig) {
        if self.state == ClassicState::CompletingRebalance {
            for member in self.members.values_mut() {
                if let Some(tx) = member.awaiting_sync.take() {
                    let _ = tx.send(SyncResult::error(ResponseError::RebalanceInProgress));
                }
            }
        }
        let from_empty = self.state == ClassicState::Empty;
        self.transition(ClassicState::PreparingRebalance);
        let timeout = self.max_rebalance_timeout();
        self.rebalance_deadline = Some(now + timeout);
        self.initial_delay = (from_empty && config.initial_rebalance_delay_ms > 0).then(|| InitialDelay {
            deadline: now + Duration::from_millis(config.initial_rebalance_delay_ms).min(timeout),
            limit: now + timeout,
        });
        self.maybe_complete_join(now);
    }

    fn maybe_complete_join(&mut self, now: Instant) {
        let all_joined = self.members.values().all(|m| m.awaiting_join.is_some()) && self.pending_members.is_empty();
        if self.state == ClassicState::PreparingRebalance && self.initial_delay.is_none() && all_joined {
            self.complete_join(now);
        }
    }

    /// Ends the join phase: members that did not rejoin are out, the generation moves on,
    /// a protocol is chosen and every joined member gets its answer (the leader with the
    /// member list to assign).
    fn complete_join(&mut self, now: Instant) {
        let missing: Vec<Arc<str>> =
            self.members.values().filter(|m| m.awaiting_join.is_none()).map(|m| m.member_id.clone()).collect();
        for member_id in missing {
            self.remove_member_entry(&member_id);
        }
        self.initial_delay = None;
        self.generation_id = self.generation_id.wrapping_add(1).max(1);
        if self.members.is_empty() {
            self.protocol_name = None;
            self.leader_id = None;
            self.rebalance_deadline = None;
            self.transition(ClassicState::Empty);
            self.dirty = true;
            return;
        }
        self.protocol_name = self.select_protocol();
        if self.leader_id.as_ref().is_none_or(|leader| !self.members.contains_key(leader)) {
            self.leader_id = self.members.keys().next().cloned();
        }
        self.transition(ClassicState::CompletingRebalance);
        self.rebalance_deadline = Some(now + self.max_rebalance_timeout());
        let leader = self.leader_id.clone();
        let members = self.joined_members();
        let result = JoinResult {
            error: None,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: leader.as_deref().unwrap_or_default().to_string(),
            member_id: String::new(),
            members: Vec::new(),
            skip_assignment: false,
        };
        for member in self.members.values_mut() {
            member.heartbeat_deadline = now + member.session_timeout();
            member.assignment = Bytes::new();
            if let Some(tx) = member.awaiting_join.take() {
                let mut reply = result.clone();
                reply.member_id = member.member_id.to_string();
                if leader.as_ref() == Some(&member.member_id) {
                    reply.members = members.clone();
                }
                let _ = tx.send(reply);
            }
        }
    }

    /// The protocol all members support that most members prefer; ties go to the leader's
    /// (or first member's) order of preference.
    fn select_protocol(&self) -> Option<String> {
        let supported = self.supported_protocols();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member.protocols.iter().find(|(n, _)| supported.contains(&n.as_str())) {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let order = self.leader_id.as_ref().and_then(|l| self.members.get(l)).or_else(|| self.members.values().next());
        let order: Vec<&str> = order.map(|m| m.protocols.iter().map(|(n, _)| n.as_str()).collect()).unwrap_or_default();
        let best = votes.values().copied().max()?;
        order.into_iter().find(|name| votes.get(name) == Some(&best)).map(str::to_string)
    }

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

    fn after_members_removed(&mut self, now: Instant, config: &GroupConfig) {
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
        now: Instant,
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
                member.heartbeat_deadline = now + member.session_timeout();
                let assignment = member.assignment.clone();
                Reply::Now(result(assignment))
            }
            ClassicState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let Some(member) = self.members.get_mut(member_id) else { return fail(ResponseError::UnknownMemberId) };
                member.heartbeat_deadline = now + member.session_timeout();
                member.awaiting_sync = Some(tx);
                if self.leader_id.as_deref() == Some(member_id) {
                    self.complete_sync(assignments);
                }
                Reply::Later(rx)
            }
            ClassicState::Empty | ClassicState::Dead => fail(ResponseError::UnknownMemberId),
        }
    }

    /// The leader's assignment arrived: the group is stable and every member waiting in
    /// SyncGroup gets its share (a member the leader left out gets an empty assignment).
    fn complete_sync(&mut self, assignments: Vec<(String, Bytes)>) {
        let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
        for member in self.members.values_mut() {
            member.assignment = assignments.remove(&*member.member_id).unwrap_or_default();
        }
        self.transition(ClassicState::Stable);
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
        now: Instant,
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
    pub fn touch(&mut self, member_id: &str, now: Instant) {
        if let Some(member) = self.members.get_mut(member_id) {
            member.heartbeat_deadline = now + member.session_timeout();
        }
    }

    /// LeaveGroup for one member (by id, or by instance id for static members).
    pub fn leave(
        &mut self,
        member_id: &str,
        group_instance_id: Option<&str>,
        now: Instant,
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
    pub fn tick(&mut self, now: Instant, config: &GroupConfig) {
        if self.state == ClassicState::Dead {
            return;
        }
        let pending_before = self.pending_members.len();
        self.pending_members.retain(|_, deadline| *deadline > now);
        let expired: Vec<Arc<str>> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && m.awaiting_sync.is_none() && m.heartbeat_deadline <= now)
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
        if self.initial_delay.as_ref().is_some_and(|delay| delay.deadline <= now) {
            self.initial_delay = None;
            self.maybe_complete_join(now);
            if self.state == ClassicState::PreparingRebalance
                && self.members.values().all(|m| m.awaiting_join.is_some())
            {
                self.complete_join(now);
            }
        }
        if self.rebalance_deadline.is_some_and(|deadline| deadline <= now) {
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

impl Default for ClassicGroup {
    fn default() -> Self {
        ClassicGroup::new()
    }
}

#[cfg(test)]
mod tests;
