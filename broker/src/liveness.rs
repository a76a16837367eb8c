//! Brokers' liveness as the active controller sees it, and the leadership changes that follow.
//! A broker heartbeats every `broker.heartbeat.interval.ms`; its first heartbeat in a process
//! registers it (a new incarnation), a heartbeat after a fence unfences it, and one that says
//! it is shutting down fences it at once. A broker not heard from for
//! `broker.session.timeout.ms` is fenced. Fencing moves each partition it leads to another
//! live in-sync replica, or leaves the partition without a leader (never an unclean election);
//! a broker coming back leads the leaderless partitions whose ISR it is in.
//!
//! Heartbeat times live only in the active controller's memory: a newly elected controller
//! gives every broker a full session from its election before fencing anyone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use uuid::Uuid;

use crate::metadata::{ClusterMetadata, MetadataRecord, NO_LEADER};
use crate::quorum::BrokerHeartbeat;

pub struct Liveness {
    session_timeout: Duration,
    state: Mutex<State>,
}

struct State {
    /// The Raft term these times were gathered in; a new term starts them over.
    term: u64,
    term_started: Instant,
    last_heartbeat: HashMap<i32, (Uuid, Instant)>,
}

impl Liveness {
    pub fn new(session_timeout: Duration) -> Liveness {
        Liveness {
            session_timeout,
            state: Mutex::new(State { term: 0, term_started: Instant::now(), last_heartbeat: HashMap::new() }),
        }
    }

    fn state_for(&self, term: u64) -> parking_lot::MutexGuard<'_, State> {
        let mut state = self.state.lock();
        if state.term != term {
            state.term = term;
            state.term_started = Instant::now();
            state.last_heartbeat.clear();
        }
        state
    }

    /// The records a heartbeat calls for (none if nothing changes), or why it is refused.
    pub fn on_heartbeat(
        &self,
        image: &ClusterMetadata,
        heartbeat: &BrokerHeartbeat,
        term: u64,
    ) -> Result<Vec<MetadataRecord>, String> {
        let now = Instant::now();
        let mut state = self.state_for(term);
        let node_id = heartbeat.node_id;
        let registered = image.brokers.get(&node_id);
        let replaced = |r: &crate::metadata::BrokerRegistration| heartbeat.replaces == Some(r.incarnation);
        if let Some(other) = registered.filter(|r| r.incarnation != heartbeat.incarnation && !r.fenced && !replaced(r))
        {
            let heard = state
                .last_heartbeat
                .get(&node_id)
                .filter(|(incarnation, _)| *incarnation == other.incarnation)
                .map_or(state.term_started, |(_, at)| *at);
            if now.duration_since(heard) < self.session_timeout {
                let endpoints: Vec<String> = other.endpoints.iter().map(|e| format!("{}:{}", e.host, e.port)).collect();
                return Err(format!(
                    "node.id {node_id} is already used by a live broker at {}; give each node its own node.id",
                    endpoints.join(", ")
                ));
            }
        }
        state.last_heartbeat.insert(node_id, (heartbeat.incarnation, now));
        drop(state);
        let incarnation = heartbeat.incarnation;
        let records = match registered {
            Some(r) if r.incarnation == incarnation => match (r.fenced, heartbeat.shutting_down) {
                (true, false) => {
                    let mut records = vec![MetadataRecord::UnfenceBroker { node_id, incarnation }];
                    records.extend(elect_leaderless(image, node_id));
                    records
                }
                (false, true) => {
                    let mut records = vec![MetadataRecord::FenceBroker { node_id, incarnation }];
                    records.extend(move_leadership_off(image, node_id));
                    records
                }
                _ => Vec::new(),
            },
            _ => {
                let mut records = vec![MetadataRecord::RegisterBroker {
                    node_id,
                    incarnation,
                    endpoints: heartbeat.endpoints.clone(),
                }];
                // A new process may have lost what the old one had not flushed: what it still
                // leads gets a new epoch, so clients and followers notice.
                records.extend(renew_leadership(image, node_id));
                records.extend(elect_leaderless(image, node_id));
                records
            }
        };
        Ok(records)
    }

    /// For each live broker whose session has expired, the records that fence it.
    pub fn expired(&self, image: &ClusterMetadata, term: u64) -> Vec<Vec<MetadataRecord>> {
        let now = Instant::now();
        let state = self.state_for(term);
        image
            .live_brokers()
            .filter(|broker| {
                let heard = state
                    .last_heartbeat
                    .get(&broker.node_id)
                    .filter(|(incarnation, _)| *incarnation == broker.incarnation)
                    .map_or(state.term_started, |(_, at)| *at);
                now.duration_since(heard) > self.session_timeout
            })
            .map(|broker| {
                tracing::warn!(node_id = broker.node_id, "broker session expired; fencing it");
                let mut records =
                    vec![MetadataRecord::FenceBroker { node_id: broker.node_id, incarnation: broker.incarnation }];
                records.extend(move_leadership_off(image, broker.node_id));
                records
            })
            .collect()
    }
}

/// Partition changes, one per partition `pick` answers for: (partition's topic id, index,
/// assignment) to the new leader and ISR.
fn changes(
    image: &ClusterMetadata,
    mut pick: impl FnMut(&crate::metadata::PartitionAssignment) -> Option<(i32, Vec<i32>)>,
) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for topic in image.topics() {
        for (index, assignment) in topic.assignments.iter().enumerate() {
            if let Some((leader, isr)) = pick(assignment) {
                records.push(MetadataRecord::PartitionChange {
                    topic_id: topic.id,
                    partition: index as i32,
                    leader,
                    leader_epoch: assignment.leader_epoch + 1,
                    isr,
                });
            }
        }
    }
    records
}

/// Moves every partition `node_id` leads to another live in-sync replica, or to no leader.
/// The ISR keeps its last member (the replica with every acknowledged record) when no other
/// can take over, so the partition comes back only with it (no unclean election).
pub fn move_leadership_off(image: &ClusterMetadata, node_id: i32) -> Vec<MetadataRecord> {
    let mut records = changes(image, |assignment| {
        if assignment.leader != node_id {
            return None;
        }
        let successor = assignment.isr.iter().copied().find(|&r| r != node_id && image.is_live(r));
        Some(match successor {
            Some(leader) => (leader, assignment.isr.iter().copied().filter(|&r| r != node_id).collect()),
            None => (NO_LEADER, assignment.isr.clone()),
        })
    });
    // Where it only follows, it leaves the ISR at once (the leader keeps its epoch), so
    // acks=all produces stop waiting for it without waiting out replica.lag.time.max.ms.
    for topic in image.topics() {
        for (index, assignment) in topic.assignments.iter().enumerate() {
            if assignment.leader != node_id && assignment.leader != NO_LEADER && assignment.isr.contains(&node_id) {
                records.push(MetadataRecord::PartitionChange {
                    topic_id: topic.id,
                    partition: index as i32,
                    leader: assignment.leader,
                    leader_epoch: assignment.leader_epoch,
                    isr: assignment.isr.iter().copied().filter(|&r| r != node_id).collect(),
                });
            }
        }
    }
    records
}

/// Gives `node_id` the leaderless partitions whose ISR it is in.
pub fn elect_leaderless(image: &ClusterMetadata, node_id: i32) -> Vec<MetadataRecord> {
    changes(image, |assignment| {
        (assignment.leader == NO_LEADER && assignment.isr.contains(&node_id)).then(|| (node_id, assignment.isr.clone()))
    })
}

/// A new epoch for every partition `node_id` still leads.
fn renew_leadership(image: &ClusterMetadata, node_id: i32) -> Vec<MetadataRecord> {
    changes(image, |assignment| (assignment.leader == node_id).then(|| (node_id, assignment.isr.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Endpoint, PartitionAssignment};
    use std::collections::BTreeMap;

    fn heartbeat(node_id: i32, incarnation: Uuid, shutting_down: bool) -> BrokerHeartbeat {
        let endpoints = vec![Endpoint { listener: "PLAINTEXT".into(), host: "h".into(), port: node_id as u16 }];
        BrokerHeartbeat { node_id, incarnation, endpoints, replaces: None, shutting_down }
    }

    fn apply(image: &mut ClusterMetadata, records: Vec<MetadataRecord>) {
        image.apply_all(&records).unwrap();
    }

    #[test]
    fn a_fenced_leader_hands_over_to_a_live_isr_member_and_takes_back_what_has_no_leader() {
        let liveness = Liveness::new(Duration::from_secs(60));
        let mut image = ClusterMetadata::default();
        let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
        let records = liveness.on_heartbeat(&image, &heartbeat(1, one, false), 1).unwrap();
        apply(&mut image, records);
        let records = liveness.on_heartbeat(&image, &heartbeat(2, two, false), 1).unwrap();
        apply(&mut image, records);
        let id = Uuid::new_v4();
        apply(
            &mut image,
            vec![MetadataRecord::Topic {
                name: "t".into(),
                id,
                partitions: 2,
                configs: BTreeMap::new(),
                assignments: vec![PartitionAssignment::new(vec![1, 2]), PartitionAssignment::new(vec![1])],
            }],
        );
        let records = liveness.on_heartbeat(&image, &heartbeat(1, one, true), 1).unwrap();
        apply(&mut image, records);
        let topic = image.topic("t").unwrap().clone();
        assert_eq!((topic.assignments[0].leader, topic.assignments[0].leader_epoch), (2, 1));
        assert_eq!(topic.assignments[0].isr, vec![2]);
        assert_eq!((topic.assignments[1].leader, topic.assignments[1].isr.clone()), (NO_LEADER, vec![1]));

        // Broker 1 restarts: a new incarnation takes back the partition only it can lead.
        let again = Uuid::new_v4();
        let records = liveness.on_heartbeat(&image, &heartbeat(1, again, false), 1).unwrap();
        apply(&mut image, records);
        let topic = image.topic("t").unwrap().clone();
        assert_eq!((topic.assignments[1].leader, topic.assignments[1].leader_epoch), (1, 2));
        assert_eq!(topic.assignments[0].leader, 2, "a live leader keeps its partition");
    }

    #[test]
    fn a_second_live_process_with_one_node_id_is_refused() {
        let liveness = Liveness::new(Duration::from_secs(60));
        let mut image = ClusterMetadata::default();
        let records = liveness.on_heartbeat(&image, &heartbeat(1, Uuid::new_v4(), false), 1).unwrap();
        apply(&mut image, records);
        let first = image.brokers[&1].incarnation;
        let err = liveness.on_heartbeat(&image, &heartbeat(1, Uuid::new_v4(), false), 1).unwrap_err();
        assert!(err.contains("node.id 1"), "{err}");
        // The process that took over the first one's data directory replaces it at once.
        let restarted = BrokerHeartbeat { replaces: Some(first), ..heartbeat(1, Uuid::new_v4(), false) };
        assert!(liveness.on_heartbeat(&image, &restarted, 1).is_ok());
    }

    #[test]
    fn a_silent_broker_is_fenced_after_its_session() {
        let liveness = Liveness::new(Duration::from_millis(20));
        let mut image = ClusterMetadata::default();
        let records = liveness.on_heartbeat(&image, &heartbeat(1, Uuid::new_v4(), false), 1).unwrap();
        apply(&mut image, records);
        assert!(liveness.expired(&image, 1).is_empty());
        std::thread::sleep(Duration::from_millis(40));
        let fences = liveness.expired(&image, 1);
        assert_eq!(fences.len(), 1);
        apply(&mut image, fences.into_iter().next().unwrap());
        assert!(!image.is_live(1));
    }
}
