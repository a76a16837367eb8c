//! The classic group's join phase: JoinGroup for new, pending (KIP-394), static (KIP-345)
//! and known members, the rebalance it starts (with the initial delay), and its completion
//! with the protocol the members vote for. The sync phase and the timers are in `mod.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;

use super::{
    new_member_id, ClassicGroup, ClassicState, InitialDelay, JoinRequest, JoinResult, JoinedMember, Member, Reply,
    SyncResult, MAX_MEMBER_METADATA_BYTES,
};
use crate::clock::Now;
use crate::config::GroupConfig;

impl ClassicGroup {
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

    pub fn join(&mut self, request: JoinRequest, now: Now, config: &GroupConfig) -> Reply<JoinResult> {
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

    fn join_new_member(&mut self, request: JoinRequest, now: Now, config: &GroupConfig) -> Reply<JoinResult> {
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
            let deadline = now.instant + Duration::from_millis(request.session_timeout_ms as u64);
            self.pending_members.insert(member_id.clone(), deadline);
            return Reply::Now(JoinResult::error(ResponseError::MemberIdRequired, &member_id));
        }
        self.add_member_and_join(member_id, request, now, config)
    }

    fn add_member_and_join(
        &mut self,
        member_id: Arc<str>,
        request: JoinRequest,
        now: Now,
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
            protocols: request.protocols,
            assignment: Bytes::new(),
            awaiting_join: Some(tx),
            awaiting_sync: None,
            heartbeat_deadline: now.instant + Duration::from_millis(request.session_timeout_ms as u64),
        };
        self.members.insert(member_id.clone(), member);
        if self.leader_id.is_none() {
            self.leader_id = Some(member_id);
        }
        match self.state {
            ClassicState::PreparingRebalance => {
                if let Some(delay) = &mut self.initial_delay {
                    delay.member_added = true;
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
        now: Now,
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
        member.heartbeat_deadline = now.instant + member.session_timeout();
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
        now: Now,
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
                member.heartbeat_deadline = now.instant + member.session_timeout();
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

    pub(super) fn prepare_rebalance(&mut self, now: Now, config: &GroupConfig) {
        if self.state == ClassicState::CompletingRebalance {
            for member in self.members.values_mut() {
                if let Some(tx) = member.awaiting_sync.take() {
                    let _ = tx.send(SyncResult::error(ResponseError::RebalanceInProgress));
                }
            }
        }
        let from_empty = self.state == ClassicState::Empty;
        self.transition(ClassicState::PreparingRebalance, now.wall_ms);
        let timeout = self.max_rebalance_timeout();
        self.rebalance_deadline = Some(now.instant + timeout);
        self.initial_delay = (from_empty && config.initial_rebalance_delay_ms > 0).then(|| {
            InitialDelay::new(
                now.instant,
                Duration::from_millis(config.initial_rebalance_delay_ms),
                now.instant + timeout,
            )
        });
        self.maybe_complete_join(now);
    }

    pub(super) fn maybe_complete_join(&mut self, now: Now) {
        let all_joined = self.members.values().all(|m| m.awaiting_join.is_some()) && self.pending_members.is_empty();
        if self.state == ClassicState::PreparingRebalance && self.initial_delay.is_none() && all_joined {
            self.complete_join(now);
        }
    }

    /// Ends the join phase: dynamic members that did not rejoin are out (static ones stay,
    /// with their last metadata, until their session expires, as in Kafka: a static member
    /// restarting across a rebalance keeps its place), the generation moves on, a protocol is
    /// chosen and every joined member gets its answer (the leader with the member list to
    /// assign).
    pub(super) fn complete_join(&mut self, now: Now) {
        let missing: Vec<Arc<str>> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none() && m.group_instance_id.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in missing {
            self.remove_member_entry(&member_id);
        }
        self.initial_delay = None;
        let previous = self.generation_id;
        self.generation_id = self.generation_id.wrapping_add(1).max(1);
        debug_assert!(self.generation_id > previous || previous == i32::MAX, "generations only grow");
        if self.members.is_empty() {
            self.protocol_name = None;
            self.leader_id = None;
            self.rebalance_deadline = None;
            self.transition(ClassicState::Empty, now.wall_ms);
            self.dirty = true;
            return;
        }
        self.protocol_name = self.select_protocol();
        if self.leader_id.as_ref().is_none_or(|leader| !self.members.contains_key(leader)) {
            self.leader_id = self.members.keys().next().cloned();
        }
        self.transition(ClassicState::CompletingRebalance, now.wall_ms);
        self.rebalance_deadline = Some(now.instant + self.max_rebalance_timeout());
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
            member.heartbeat_deadline = now.instant + member.session_timeout();
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
}
