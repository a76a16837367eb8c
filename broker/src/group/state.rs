//! One group as the coordinator holds it: its membership, which is one of two kinds (a
//! classic group, run by JoinGroup/SyncGroup, or a KIP-848 consumer group, run by
//! ConsumerGroupHeartbeat), its committed offsets, and offsets committed inside
//! transactions that wait for their marker.
//!
//! Invariants: a group changes kind only while it has no members, except that a stable
//! classic consumer group converts into a consumer group keeping its members (the rolling
//! upgrade); generations only grow, across changes of kind too; a dead group is never used
//! again (the coordinator replaces it, and whoever still holds it is refused).

use std::collections::HashMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;

use super::classic::{ClassicGroup, ClassicState};
use super::consumer::ConsumerGroup;
use super::offsets::{CommittedOffset, GroupOffsets};
use super::record::GroupValue;
use crate::clock::Now;
use crate::config::GroupConfig;
use crate::metadata::ClusterMetadata;
use crate::topic_partition::TopicPartition;

/// How a group's members coordinate.
#[derive(Debug)]
pub enum Membership {
    Classic(ClassicGroup),
    /// A KIP-848 group. `emptied` is the classic group it was (a new one if it never was),
    /// without members: its generation and protocol carry on if the group switches back,
    /// and it is what the group's record says, since consumer-group membership is not
    /// persisted.
    Consumer {
        group: ConsumerGroup,
        emptied: ClassicGroup,
    },
}

#[derive(Debug)]
pub struct Group {
    pub id: Arc<str>,
    pub membership: Membership,
    pub offsets: GroupOffsets,
    /// A group metadata record exists for it (deletion must write a tombstone).
    pub(super) has_record: bool,
    dead: bool,
    /// Offsets committed inside transactions (TxnOffsetCommit), by producer id, until the
    /// transaction's marker applies (commit) or drops (abort) them.
    pub pending_txn: HashMap<i64, Vec<(TopicPartition, CommittedOffset)>>,
}

impl Group {
    pub(super) fn new(id: Arc<str>, now_ms: i64) -> Group {
        Group {
            id,
            membership: Membership::Classic(ClassicGroup::new(now_ms)),
            offsets: GroupOffsets::default(),
            has_record: false,
            dead: false,
            pending_txn: HashMap::new(),
        }
    }

    pub fn consumer(&self) -> Option<&ConsumerGroup> {
        match &self.membership {
            Membership::Consumer { group, .. } => Some(group),
            Membership::Classic(_) => None,
        }
    }

    pub fn consumer_mut(&mut self) -> Option<&mut ConsumerGroup> {
        match &mut self.membership {
            Membership::Consumer { group, .. } => Some(group),
            Membership::Classic(_) => None,
        }
    }

    pub fn state_name(&self) -> &'static str {
        match &self.membership {
            _ if self.dead => ClassicState::Dead.name(),
            Membership::Consumer { group, .. } => group.state_name(),
            Membership::Classic(classic) => classic.state.name(),
        }
    }

    pub fn group_type(&self) -> &'static str {
        match &self.membership {
            Membership::Consumer { .. } => "consumer",
            Membership::Classic(_) => "classic",
        }
    }

    pub fn protocol_type(&self) -> &str {
        match &self.membership {
            Membership::Consumer { .. } => "consumer",
            Membership::Classic(classic) => classic.protocol_type.as_deref().unwrap_or(""),
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.membership {
            Membership::Consumer { group, .. } => group.is_empty(),
            Membership::Classic(classic) => classic.is_empty(),
        }
    }

    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// A simple group: offsets committed from outside any membership protocol.
    pub fn is_simple(&self) -> bool {
        matches!(&self.membership, Membership::Classic(classic) if classic.protocol_type.is_none())
    }

    /// Since when (wall clock) the group has had no members, if it has none: its offsets
    /// expire from then.
    pub fn empty_since_ms(&self) -> Option<i64> {
        match &self.membership {
            Membership::Consumer { group, .. } => group.empty_since_ms,
            Membership::Classic(classic) => {
                (classic.state == ClassicState::Empty).then_some(classic.state_timestamp_ms)
            }
        }
    }

    /// Deletion: whoever still waits on the group is told the coordinator moved on, and
    /// whoever still holds it finds a dead classic group, which refuses every request.
    pub(super) fn mark_dead(&mut self, now_ms: i64) {
        if let Membership::Consumer { emptied, .. } = &mut self.membership {
            self.membership = Membership::Classic(std::mem::replace(emptied, ClassicGroup::new(now_ms)));
        }
        if let Membership::Classic(classic) = &mut self.membership {
            classic.mark_dead(now_ms);
        }
        self.dead = true;
    }

    /// Makes this a KIP-848 consumer group. A classic group with members converts only as a
    /// stable consumer-protocol group (its members stay, on the classic protocol); one in
    /// the middle of a rebalance asks the caller to retry.
    pub fn as_consumer_group(
        &mut self,
        metadata: &ClusterMetadata,
        now: Now,
    ) -> Result<&mut ConsumerGroup, ResponseError> {
        if self.dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if let Membership::Classic(classic) = &mut self.membership {
            let group = if classic.is_empty() {
                ConsumerGroup::default()
            } else if classic.protocol_type.as_deref() != Some("consumer") {
                return Err(ResponseError::GroupIdNotFound);
            } else if classic.state != ClassicState::Stable {
                return Err(ResponseError::CoordinatorNotAvailable);
            } else {
                tracing::info!(group = %self.id, members = classic.members().count(), "classic group upgraded to the consumer protocol");
                let group = ConsumerGroup::from_classic(classic, metadata, now);
                // Its record then says the classic group is empty.
                classic.clear_members(now.wall_ms);
                group
            };
            let emptied = std::mem::replace(classic, ClassicGroup::new(now.wall_ms));
            self.membership = Membership::Consumer { group, emptied };
        }
        self.consumer_mut().ok_or(ResponseError::GroupIdNotFound)
    }

    /// Makes this a classic group again, if it has no members; `None` while it is a
    /// consumer group with members (whose classic members go through its consumer group).
    pub fn as_classic_group(&mut self, now: Now) -> Option<&mut ClassicGroup> {
        if let Membership::Consumer { group, emptied } = &mut self.membership {
            if !group.is_empty() {
                return None;
            }
            self.membership = Membership::Classic(std::mem::replace(emptied, ClassicGroup::new(now.wall_ms)));
        }
        match &mut self.membership {
            Membership::Classic(classic) => Some(classic),
            Membership::Consumer { .. } => None,
        }
    }

    /// Runs the membership's timers (sessions, rebalance deadlines).
    pub(super) fn tick(&mut self, now: Now, config: &GroupConfig) {
        match &mut self.membership {
            Membership::Classic(classic) => classic.tick(now, config),
            Membership::Consumer { group, .. } => group.tick(now),
        }
    }

    /// The group's record if it has changed since it was last written.
    pub(super) fn take_changed_record(&mut self) -> Option<GroupValue> {
        let classic = match &mut self.membership {
            Membership::Classic(classic) => classic,
            Membership::Consumer { emptied, .. } => emptied,
        };
        classic.take_dirty().then(|| classic.snapshot())
    }

    /// The record that describes the group now: its classic membership, or for a consumer
    /// group (whose membership is not persisted) the classic group it emptied.
    #[cfg(test)]
    pub(super) fn record(&self) -> GroupValue {
        match &self.membership {
            Membership::Classic(classic) => classic.snapshot(),
            Membership::Consumer { emptied, .. } => emptied.snapshot(),
        }
    }

    /// A group record read back at start: a classic group as it left it (a tombstone: an
    /// empty one).
    pub(super) fn restore_record(&mut self, value: Option<GroupValue>, now: Now) {
        self.has_record = value.is_some();
        let classic = match value {
            Some(value) => ClassicGroup::restore(value, now),
            None => ClassicGroup::new(now.wall_ms),
        };
        self.membership = Membership::Classic(classic);
    }

    /// Checks an offset commit's claim to membership (Kafka's rules for classic groups):
    /// generation -1 commits only into an empty group; otherwise the member must be known
    /// and on the current generation, and not in the middle of a sync.
    pub(super) fn validate_commit(
        &self,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        if self.dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let classic = match &self.membership {
            Membership::Consumer { group, .. } => {
                if generation_id < 0 && group.is_empty() {
                    return Ok(());
                }
                return group.validate_member_epoch(member_id, generation_id);
            }
            Membership::Classic(classic) => classic,
        };
        if generation_id < 0 && classic.state == ClassicState::Empty {
            return Ok(());
        }
        classic.validate_member(member_id, group_instance_id)?;
        if generation_id != classic.generation_id {
            return Err(ResponseError::IllegalGeneration);
        }
        if classic.state == ClassicState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};
    use crate::group::classic::{JoinRequest, Reply};
    use crate::group::record::GroupValue;

    fn join(member_id: &str) -> JoinRequest {
        JoinRequest {
            member_id: member_id.to_string(),
            group_instance_id: None,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 20_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Default::default())],
            require_known_member_id: false,
            supports_skip_assignment: true,
        }
    }

    fn group_at_generation(generation_id: i32, now: Now) -> Group {
        let mut group = Group::new(Arc::from("g"), now.wall_ms);
        let record = GroupValue { protocol_type: "consumer".into(), generation_id, ..GroupValue::default() };
        group.restore_record(Some(record), now);
        group
    }

    #[test]
    fn generations_carry_on_across_a_switch_to_the_consumer_protocol_and_back() {
        let now = SystemClock.now();
        let metadata = ClusterMetadata::default();
        let mut group = group_at_generation(50, now);
        group.as_consumer_group(&metadata, now).unwrap();
        assert_eq!(group.group_type(), "consumer");
        assert_eq!(group.record().generation_id, 50, "the record keeps the classic generation");
        let classic = group.as_classic_group(now).expect("an empty consumer group switches back");
        assert_eq!(classic.protocol_type.as_deref(), Some("consumer"));
        let config = GroupConfig { initial_rebalance_delay_ms: 0, ..GroupConfig::default() };
        let Reply::Later(mut joined) = classic.join(join(""), now, &config) else { panic!("the join waits") };
        assert_eq!(joined.try_recv().unwrap().generation_id, 51, "generations only grow");
    }

    #[test]
    fn a_deleted_group_refuses_whoever_still_holds_it() {
        let now = SystemClock.now();
        let mut group = Group::new(Arc::from("g"), now.wall_ms);
        group.as_consumer_group(&ClusterMetadata::default(), now).unwrap();
        group.mark_dead(now.wall_ms);
        assert!(group.is_dead());
        assert!(group.as_consumer_group(&ClusterMetadata::default(), now).is_err());
        let config = GroupConfig::default();
        let classic = group.as_classic_group(now).expect("a dead classic group");
        let Reply::Now(refused) = classic.join(join(""), now, &config) else { panic!("answered at once") };
        assert_eq!(refused.error, Some(ResponseError::CoordinatorNotAvailable));
    }
}
