//! One group as the coordinator holds it: its membership, which is one of two kinds (a
//! classic group, run by JoinGroup/SyncGroup, or a KIP-848 consumer group, run by
//! ConsumerGroupHeartbeat), its committed offsets, and offsets committed inside
//! transactions that wait for their marker.
//!
//! Invariants: a group changes kind only while it has no members, except that a stable
//! classic consumer group converts into a consumer group keeping its members (the rolling
//! upgrade); a dead group is never used again (the coordinator replaces it).

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
    Consumer(ConsumerGroup),
}

#[derive(Debug)]
pub struct Group {
    pub id: Arc<str>,
    pub membership: Membership,
    pub offsets: GroupOffsets,
    /// A group metadata record exists for it (deletion must write a tombstone).
    pub(super) has_record: bool,
    /// The group's record no longer says what its membership is: it is written at the next
    /// persist.
    record_stale: bool,
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
            record_stale: false,
            dead: false,
            pending_txn: HashMap::new(),
        }
    }

    pub fn consumer(&self) -> Option<&ConsumerGroup> {
        match &self.membership {
            Membership::Consumer(consumer) => Some(consumer),
            Membership::Classic(_) => None,
        }
    }

    pub fn consumer_mut(&mut self) -> Option<&mut ConsumerGroup> {
        match &mut self.membership {
            Membership::Consumer(consumer) => Some(consumer),
            Membership::Classic(_) => None,
        }
    }

    pub fn state_name(&self) -> &'static str {
        match &self.membership {
            _ if self.dead => ClassicState::Dead.name(),
            Membership::Consumer(consumer) => consumer.state_name(),
            Membership::Classic(classic) => classic.state.name(),
        }
    }

    pub fn group_type(&self) -> &'static str {
        match &self.membership {
            Membership::Consumer(_) => "consumer",
            Membership::Classic(_) => "classic",
        }
    }

    pub fn protocol_type(&self) -> &str {
        match &self.membership {
            Membership::Consumer(_) => "consumer",
            Membership::Classic(classic) => classic.protocol_type.as_deref().unwrap_or(""),
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.membership {
            Membership::Consumer(consumer) => consumer.is_empty(),
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
            Membership::Consumer(consumer) => consumer.empty_since_ms,
            Membership::Classic(classic) => {
                (classic.state == ClassicState::Empty).then_some(classic.state_timestamp_ms)
            }
        }
    }

    /// Deletion: whoever still waits on the group is told the coordinator moved on.
    pub(super) fn mark_dead(&mut self, now_ms: i64) {
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
        if let Membership::Classic(classic) = &self.membership {
            let consumer = if classic.is_empty() {
                ConsumerGroup::default()
            } else if classic.protocol_type.as_deref() != Some("consumer") {
                return Err(ResponseError::GroupIdNotFound);
            } else if classic.state != ClassicState::Stable {
                return Err(ResponseError::CoordinatorNotAvailable);
            } else {
                tracing::info!(group = %self.id, members = classic.members().count(), "classic group upgraded to the consumer protocol");
                // The record still lists the classic members: rewritten as an empty group.
                self.record_stale = true;
                ConsumerGroup::from_classic(classic, metadata, now)
            };
            self.membership = Membership::Consumer(consumer);
        }
        self.consumer_mut().ok_or(ResponseError::GroupIdNotFound)
    }

    /// Makes this a classic group again, if it has no members; `None` while it is a
    /// consumer group with members (whose classic members go through its consumer group).
    pub fn as_classic_group(&mut self, now: Now) -> Option<&mut ClassicGroup> {
        if let Membership::Consumer(consumer) = &self.membership {
            if !consumer.is_empty() {
                return None;
            }
            // Generations keep growing across the switch back, as members were fenced by
            // the consumer group's epoch.
            self.membership = Membership::Classic(ClassicGroup::empty_after(consumer.group_epoch, now.wall_ms));
        }
        match &mut self.membership {
            Membership::Classic(classic) => Some(classic),
            Membership::Consumer(_) => None,
        }
    }

    /// Runs the membership's timers (sessions, rebalance deadlines).
    pub(super) fn tick(&mut self, now: Now, config: &GroupConfig) {
        match &mut self.membership {
            Membership::Classic(classic) => classic.tick(now, config),
            Membership::Consumer(consumer) => consumer.tick(now),
        }
    }

    /// The group's record if it has changed since it was last written (the classic
    /// membership's, or an empty group's for a consumer group, whose membership is not
    /// persisted).
    pub(super) fn take_changed_record(&mut self) -> Option<GroupValue> {
        let changed = match &mut self.membership {
            Membership::Classic(classic) => classic.take_dirty(),
            Membership::Consumer(_) => false,
        };
        if !(changed || std::mem::take(&mut self.record_stale)) {
            return None;
        }
        Some(self.record())
    }

    /// The record that describes the group now.
    pub(super) fn record(&self) -> GroupValue {
        match &self.membership {
            Membership::Classic(classic) => classic.snapshot(),
            Membership::Consumer(consumer) => {
                GroupValue::empty("consumer", consumer.group_epoch, consumer.empty_since_ms.unwrap_or(-1))
            }
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
            Membership::Consumer(consumer) => {
                if generation_id < 0 && consumer.is_empty() {
                    return Ok(());
                }
                return consumer.validate_member_epoch(member_id, generation_id);
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
