//! The leader's side of replication for one partition: what it knows of each follower (its
//! log end offset as of its last fetch, and when it was last caught up), the high watermark
//! that follows from the ISR, the ISR changes it asks the controller for (Kafka's
//! AlterPartition), and the waits of acks=all produces and of followers' long polls.
//!
//! Invariant: the high watermark never passes what every ISR member (the leader included,
//! durably per its flush policy) has; it only moves forward.

use std::time::Duration;

use kafka_protocol::error::ResponseError;
use sluice_storage::Offset;

use crate::metadata::PartitionAssignment;
use crate::partition::{Follower, IsrChange, Partition};

/// How often an acks=all wait looks whether this broker was cut off from the quorum.
const CUT_OFF_CHECK: Duration = Duration::from_millis(250);

impl Partition {
    /// Takes what the metadata says of this partition: its replicas, ISR and leader.
    pub(crate) fn apply_assignment(&self, node_id: i32, assignment: &PartitionAssignment, now_ms: i64) {
        let is_leader = assignment.leader == node_id;
        let new_leadership = !self.is_leader() || self.leader_epoch() != assignment.leader_epoch;
        {
            let mut replication = self.replication.lock();
            replication.node_id = node_id;
            replication.replicas = assignment.replicas.clone();
            replication.isr = assignment.isr.clone();
            if is_leader {
                // A new leadership starts knowing nothing of the followers, and a replica new
                // to this leader (a partition just created here, a reassignment adding one) is
                // unknown too: each gets a full lag window to fetch before it counts as out of
                // sync. (A partition opens as its own leader at epoch 0, so "new leadership"
                // alone missed the followers of a partition created led by this broker, and the
                // ISR shrank to the leader right after every topic creation.)
                if new_leadership {
                    replication.followers.clear();
                }
                for &replica in assignment.replicas.iter().filter(|&&r| r != node_id) {
                    replication
                        .followers
                        .entry(replica)
                        .or_insert(Follower { log_end_offset: -1, last_caught_up_ms: now_ms });
                }
                replication.followers.retain(|replica, _| assignment.replicas.contains(replica));
            }
        }
        self.set_leadership(is_leader, assignment.leader_epoch);
        if is_leader {
            self.update_high_watermark();
        }
    }

    /// The in-sync replicas as the metadata last said.
    pub fn isr_len(&self) -> usize {
        self.replication.lock().isr.len()
    }

    /// Whether acks=all must wait for followers (an ISR beyond the leader).
    pub fn has_insync_followers(&self) -> bool {
        self.replication.lock().isr.len() > 1
    }

    pub fn is_replica(&self, node_id: i32) -> bool {
        self.replication.lock().replicas.contains(&node_id)
    }

    /// A follower fetched from `fetch_offset`: it has everything below it. Moves the high
    /// watermark if the ISR now has more.
    pub(crate) fn record_follower_fetch(&self, replica: i32, fetch_offset: i64, now_ms: i64) {
        {
            let mut replication = self.replication.lock();
            let leader_end = self.log.log_end_offset().0;
            let follower = replication
                .followers
                .entry(replica)
                .or_insert(Follower { log_end_offset: -1, last_caught_up_ms: now_ms });
            follower.log_end_offset = fetch_offset;
            if fetch_offset >= leader_end {
                follower.last_caught_up_ms = now_ms;
            }
        }
        self.update_high_watermark();
    }

    /// The ISR change this leader should ask for, if any: followers not caught up for
    /// `lag_max_ms` leave; replicas with everything below the high watermark join.
    /// `eligible`: whether a replica may join the ISR (a fenced broker may not, KIP-841).
    pub(crate) fn wanted_isr_change(
        &self,
        now_ms: i64,
        lag_max_ms: i64,
        eligible: impl Fn(i32) -> bool,
    ) -> Option<IsrChange> {
        if !self.is_leader() {
            return None;
        }
        let replication = self.replication.lock();
        let high_watermark = self.log.high_watermark().0;
        let in_time = |f: &Follower| now_ms - f.last_caught_up_ms <= lag_max_ms;
        let mut isr: Vec<i32> = replication
            .isr
            .iter()
            .copied()
            .filter(|r| *r == replication.node_id || replication.followers.get(r).is_some_and(in_time))
            .collect();
        for (&replica, follower) in &replication.followers {
            let joins = !isr.contains(&replica)
                && replication.replicas.contains(&replica)
                && follower.log_end_offset >= high_watermark
                && in_time(follower)
                && eligible(replica);
            if joins {
                isr.push(replica);
            }
        }
        isr.sort_by_key(|r| replication.replicas.iter().position(|x| x == r));
        (isr != replication.isr).then(|| IsrChange { leader_epoch: self.leader_epoch(), isr })
    }

    /// Moves the high watermark to the most every ISR member has (the leader's durable end
    /// included), never back.
    pub(crate) fn update_high_watermark(&self) {
        let target = {
            let replication = self.replication.lock();
            let mut target = replication.local_end;
            for member in replication.isr.iter().filter(|m| **m != replication.node_id) {
                target = target.min(replication.followers.get(member).map_or(-1, |f| f.log_end_offset));
            }
            target
        };
        if target > self.log.high_watermark().0 {
            self.publish_high_watermark(Offset(target));
        }
    }

    /// Waits until the high watermark passes `end` (the ISR has the append), for up to
    /// `timeout`. NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR is then below
    /// `min.insync.replicas`; REQUEST_TIMED_OUT if it never got there; NOT_LEADER_OR_FOLLOWER
    /// once this broker stops leading or `cut_off` says it is cut off from the quorum (looked
    /// at every [`CUT_OFF_CHECK`]), so that the client retries on the new leader at once.
    pub async fn wait_replicated(
        &self,
        end: Offset,
        timeout: Duration,
        cut_off: impl Fn() -> bool,
    ) -> Result<(), ResponseError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let progressed = self.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if self.log.high_watermark() >= end {
                if (self.isr_len() as i32) < self.log.min_insync_replicas() {
                    return Err(ResponseError::NotEnoughReplicasAfterAppend);
                }
                return Ok(());
            }
            if !self.is_leader() || cut_off() {
                return Err(ResponseError::NotLeaderOrFollower);
            }
            let wake = deadline.min(tokio::time::Instant::now() + CUT_OFF_CHECK);
            if tokio::time::timeout_at(wake, progressed).await.is_err() && wake == deadline {
                return Err(ResponseError::RequestTimedOut);
            }
        }
    }

    /// Waits until the log grows past `offset`, or `timeout` (a follower's long poll).
    pub async fn wait_for_data(&self, offset: i64, timeout: Duration) {
        let progressed = self.progress.notified();
        tokio::pin!(progressed);
        progressed.as_mut().enable();
        if self.log.log_end_offset().0 > offset {
            return;
        }
        tokio::time::timeout(timeout, progressed).await.ok();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use sluice_storage::{HandleCache, LogConfig, PartitionLog, RecordBatchBuilder};
    use uuid::Uuid;

    use super::*;

    fn leader(dir: &std::path::Path) -> Arc<Partition> {
        let log = PartitionLog::open(dir.join("t-0"), LogConfig::default(), HandleCache::new(8)).unwrap();
        let partition = Arc::new(Partition::new(Arc::from("t"), Uuid::nil(), 0, log));
        partition.apply_assignment(1, &PartitionAssignment::new(vec![1, 2, 3]), 0);
        partition
    }

    fn append(partition: &Arc<Partition>) {
        let mut builder = RecordBatchBuilder::new(0);
        builder.push(0, None, Some(b"v"), &[]);
        partition.append(&builder.build().unwrap(), 0).unwrap().wait_durable().unwrap();
    }

    fn isr_of(partition: &Partition, isr: Vec<i32>) {
        let assignment = PartitionAssignment { isr, ..PartitionAssignment::new(vec![1, 2, 3]) };
        partition.apply_assignment(1, &assignment, 0);
    }

    #[test]
    fn a_new_partition_gives_its_followers_a_lag_window_before_the_isr_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let partition = leader(dir.path());
        assert_eq!(partition.wanted_isr_change(50, 100, |_| true), None, "followers that have not fetched yet");
        let change = partition.wanted_isr_change(150, 100, |_| true).expect("a shrink once the window is over");
        assert_eq!(change.isr, vec![1]);
    }

    #[test]
    fn the_high_watermark_waits_for_every_isr_member_and_the_isr_follows_the_followers() {
        let dir = tempfile::tempdir().unwrap();
        let partition = leader(dir.path());
        (0..3).for_each(|_| append(&partition));
        assert_eq!(partition.log.high_watermark().0, 0, "no follower has anything yet");
        partition.record_follower_fetch(2, 3, 10);
        assert_eq!(partition.log.high_watermark().0, 0, "replica 3 is in the ISR and has nothing");
        partition.record_follower_fetch(3, 2, 10);
        assert_eq!(partition.log.high_watermark().0, 2);
        assert_eq!(partition.wanted_isr_change(10, 100, |_| true), None, "both fetched within the lag");

        // Replica 3 stops fetching: after the lag it leaves, and the high watermark moves on.
        partition.record_follower_fetch(2, 3, 200);
        let change = partition.wanted_isr_change(200, 100, |_| true).expect("an ISR shrink");
        assert_eq!(change.isr, vec![1, 2]);
        isr_of(&partition, change.isr);
        assert_eq!(partition.log.high_watermark().0, 3);

        // It catches up to the leader's end: it joins again.
        partition.record_follower_fetch(3, 3, 250);
        assert_eq!(partition.wanted_isr_change(250, 100, |r| r != 3), None, "a fenced replica stays out");
        assert_eq!(partition.wanted_isr_change(250, 100, |_| true).map(|c| c.isr), Some(vec![1, 2, 3]));
    }

    #[derive(Clone, Debug)]
    enum Event {
        Append,
        Fetch { replica: i32, behind: i64 },
        Tick { ms: i64 },
        ApplyIsrChange,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Append),
            (2..4i32, 0..4i64).prop_map(|(replica, behind)| Event::Fetch { replica, behind }),
            (1..80i64).prop_map(|ms| Event::Tick { ms }),
            Just(Event::ApplyIsrChange),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the interleaving of appends, follower fetches, time and ISR changes: the
        /// high watermark never goes back, never passes the log end, and never passes what a
        /// member of the ISR (as the metadata has it) has fetched.
        #[test]
        fn the_high_watermark_never_passes_an_isr_member(events in proptest::collection::vec(event(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let partition = leader(dir.path());
            let mut now = 0i64;
            let mut fetched = std::collections::HashMap::<i32, i64>::new();
            let mut isr = vec![1, 2, 3];
            let mut last_high_watermark = 0;
            for event in events {
                match event {
                    Event::Append => append(&partition),
                    Event::Fetch { replica, behind } => {
                        let end = partition.log.log_end_offset().0;
                        let offset = (end - behind).max(*fetched.get(&replica).unwrap_or(&0));
                        fetched.insert(replica, offset);
                        partition.record_follower_fetch(replica, offset, now);
                    }
                    Event::Tick { ms } => now += ms,
                    Event::ApplyIsrChange => {
                        if let Some(change) = partition.wanted_isr_change(now, 100, |_| true) {
                            isr = change.isr.clone();
                            isr_of(&partition, change.isr);
                        }
                    }
                }
                let high_watermark = partition.log.high_watermark().0;
                prop_assert!(high_watermark >= last_high_watermark, "the high watermark went back");
                prop_assert!(high_watermark <= partition.log.log_end_offset().0);
                for member in isr.iter().filter(|m| **m != 1) {
                    // A member that joined got there with everything below the high
                    // watermark, and fetch offsets only grow.
                    let has = *fetched.get(member).unwrap_or(&0);
                    prop_assert!(high_watermark <= has.max(last_high_watermark),
                        "high watermark {} passed ISR member {} at {}", high_watermark, member, has);
                }
                last_high_watermark = high_watermark;
            }
        }
    }
}
